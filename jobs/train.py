"""Ray job entrypoint: train one model.

    ray job submit --working-dir . -- python jobs/train.py --preset deblurgan-smoke --store s3://bucket/x

Same flags as `asaptrain train` (it is that command).
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from asaptrain.cli.train_cmd import train_cmd  # noqa: E402

if __name__ == "__main__":
    train_cmd(prog_name="jobs/train.py")
