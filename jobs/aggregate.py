"""Ray job entrypoint: aggregate every run in the store into one report.

    ray job submit --address http://HEAD:8265 --working-dir . -- \
        python jobs/aggregate.py --store s3://bucket/asap --s3-endpoint http://minio:9000
    asaptrain submit aggregate --store s3://bucket/asap        # the same, through asaptrain

Flags are those of `asaptrain aggregate` (this file only runs that click command); the
store and endpoint default to $ASAPTRAIN_STORE and $ASAPTRAIN_S3_ENDPOINT. S3 credentials
come from the cluster's environment (AWS_* variables, instance role, or a Kubernetes Secret).
"""

import os
import sys

# `python jobs/aggregate.py` puts jobs/ first on sys.path; the project root holds the package
# when the working_dir is shipped without installing it.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from asaptrain.cli.report_cmd import aggregate_cmd  # noqa: E402

if __name__ == "__main__":
    aggregate_cmd(prog_name="jobs/aggregate.py")
