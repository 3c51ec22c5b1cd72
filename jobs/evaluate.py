"""Ray job entrypoint: score a run's generator on a whole dataset split at full size.

    ray job submit --working-dir . -- python jobs/evaluate.py --run s3://bucket/store/runs/NAME \
        --dataset datasets/gopro --split val --fid --workers 4 --s3-endpoint http://minio:9000

Same flags as `asaptrain evaluate` (it is that command). S3 credentials come from the cluster's
environment (AWS_* variables, instance role, or a Kubernetes Secret), never from the job.
"""

import os
import sys

# `python jobs/evaluate.py` puts jobs/ first on sys.path; the project root holds the package
# when the working_dir is shipped without installing it.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from asaptrain.cli.evaluate_cmd import evaluate_cmd  # noqa: E402

if __name__ == "__main__":
    evaluate_cmd(prog_name="jobs/evaluate.py")
