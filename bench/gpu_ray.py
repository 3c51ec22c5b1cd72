"""One local Ray for the stages of ``bench/gpu.sh`` that use Ray (ray, predict, sweep).

Started in the background once setup is done, it starts a Ray of its own (with its dashboard: the
sweep stage asks its state API), writes the GCS address to ADDRESS_FILE (complete or not at
all), and holds the Ray until it gets SIGTERM or its parent (the script) is gone; then it shuts
the Ray down. The stages join it through RAY_ADDRESS instead of each starting and stopping a Ray
of its own: seconds of every such stage on the GPU machine, and tens of seconds of CPU in the
CPU rehearsal.

    python3 bench/gpu_ray.py ADDRESS_FILE &
"""

from __future__ import annotations

import os
import signal
import sys
import threading


def main(address_file: str) -> int:
    import ray

    parent = os.getppid()
    done = threading.Event()
    context = ray.init(address="local", include_dashboard=True, log_to_driver=False)
    signal.signal(signal.SIGTERM, lambda *_: done.set())  # after ray.init, which sets its own
    tmp = f"{address_file}.tmp"
    with open(tmp, "w") as fh:
        fh.write(context.address_info["gcs_address"])
    os.replace(tmp, address_file)
    print(f"Ray up at {context.address_info['gcs_address']} (dashboard {context.dashboard_url})", flush=True)
    while not done.wait(1.0):
        if os.getppid() != parent:  # the script was killed: never outlive it
            break
    ray.shutdown()
    print("Ray shut down", flush=True)
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python3 bench/gpu_ray.py ADDRESS_FILE (the file to write the Ray's GCS address to)")
    sys.exit(main(sys.argv[1]))
