"""Ray job entrypoint: sweep the hybrid.

    ray job submit --working-dir . -- python jobs/tune_hybrid.py --preset hybrid-deblur --trials 16 \
        --name my-sweep --resume auto

``--resume auto`` continues the sweep ``--name`` names when it exists (the trial that was running
continues from its own checkpoint), else starts it.

Same flags as `asaptrain tune` (it is that command).
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from asaptrain.cli.tune_cmd import tune_cmd  # noqa: E402

if __name__ == "__main__":
    tune_cmd(prog_name="jobs/tune_hybrid.py")
