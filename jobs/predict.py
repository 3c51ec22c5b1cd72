"""Ray job entrypoint: run a trained generator over a dataset or a prefix of images in the store.

    ray job submit --working-dir . -- python jobs/predict.py --run s3://bucket/store/runs/NAME \
        --images s3://bucket/blurry --out s3://bucket/sharp --workers 4 --s3-endpoint http://minio:9000

Same flags as `asaptrain predict` (it is that command). S3 credentials come from the cluster's
environment (AWS_* variables, instance role, or a Kubernetes Secret), never from the job.
"""

import os
import sys

# `python jobs/predict.py` puts jobs/ first on sys.path; the project root holds the package
# when the working_dir is shipped without installing it.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from asaptrain.cli.predict_cmd import predict_cmd  # noqa: E402

if __name__ == "__main__":
    predict_cmd(prog_name="jobs/predict.py")
