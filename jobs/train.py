"""Ray job entrypoint: train one model.

    ray job submit --working-dir . -- python jobs/train.py --preset deblurgan-smoke --store s3://bucket/x \
        --name my-run --resume auto

``--resume auto`` continues the run ``--name`` names when it exists, else starts it: a job that is
submitted again after its driver died picks up from the run's last checkpoint.

Same flags as `asaptrain train` (it is that command).
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from asaptrain.cli.train_cmd import train_cmd  # noqa: E402

if __name__ == "__main__":
    train_cmd(prog_name="jobs/train.py")
