"""Ray job entrypoint: the whole study (train all four models, sweep the hybrid, retrain its
best config, aggregate).

    ray job submit --working-dir . -- python jobs/experiment.py --store s3://bucket/asap --trials 16

Same flags as `asaptrain experiment` (it is that command).
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from asaptrain.cli.experiment_cmd import experiment_cmd  # noqa: E402

if __name__ == "__main__":
    experiment_cmd(prog_name="jobs/experiment.py")
