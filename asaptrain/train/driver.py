"""The driver's side of every command that runs on Ray: connecting to a cluster (or starting a
local one) without waiting forever on a dead one, and running a blocking call (``fit``, a
Tune sweep) beside a progress display.

    ensure_ray()                                   # RAY_ADDRESS, a live local head, or a new local Ray
    result = run_polling(trainer.fit, bar_update)  # bar_update() every second meanwhile
"""

from __future__ import annotations

import os
import socket
import threading
from contextlib import contextmanager
from typing import Any, Callable, Iterator, TypeVar

from asaptrain.train.run_files import RunFiles


def _running_local_cluster() -> str | None:
    """The address of a `ray start` cluster on this machine that answers, else None.

    Ray's own ``ray.init()`` joins whatever /tmp/ray/ray_current_cluster names, and waits
    forever when that cluster is gone (a head that was killed leaves the file behind).
    """
    path = os.path.join(os.environ.get("RAY_TMPDIR", "/tmp"), "ray", "ray_current_cluster")
    try:
        with open(path) as fh:
            address = fh.read().strip()
        host, _, port = address.rpartition(":")
        socket.create_connection((host, int(port)), timeout=2).close()
        return address
    except (OSError, ValueError):
        return None


def ensure_ray(address: str | None = None) -> None:
    """Connect to the cluster (``address``, RAY_ADDRESS, inside a Ray job, or a live local
    `ray start` head), or start a local one."""
    import ray

    if ray.is_initialized():
        return
    given = address or os.environ.get("RAY_ADDRESS")
    found = None if given else _running_local_cluster()
    try:
        ray.init(address=given or found or "local", log_to_driver=True)
    except ConnectionError:
        if given or not found:
            raise
        # The local cluster went away between the check and the connect: start our own.
        print(f"[asaptrain] the Ray cluster at {found} did not answer; starting a local one", flush=True)
        ray.init(address="local", log_to_driver=True)
    _free_orphaned_groups()


def _free_orphaned_groups() -> None:
    """Free what ended jobs left reserved (``train/orphan_groups.py``), and say so; never fails the command."""
    from asaptrain.train.orphan_groups import free_orphaned_groups

    try:
        freed = free_orphaned_groups()
    except Exception as exc:  # a cleanup must never stop the command it runs for
        print(f"[asaptrain] looking for placement groups that ended jobs left reserved: {exc}", flush=True)
        return
    if freed:
        print(f"[asaptrain] freed {len(freed)} placement group(s) that ended jobs left reserved (Ray had not): "
              + ", ".join(f"{group} {bundles}" for group, bundles in freed), flush=True)


T = TypeVar("T")


def run_polling(work: Callable[[], T], poll: Callable[[], None] | None = None, every_s: float = 1.0) -> T:
    """``work()`` in a thread while ``poll()`` runs every ``every_s`` seconds (a progress display);
    returns what ``work`` returned, or raises what it raised.

    ``fit()`` blocks for the whole run: the caller's thread stays free to show progress.
    """
    outcome: dict[str, Any] = {}

    def target() -> None:
        try:
            outcome["value"] = work()
        except BaseException as exc:  # raised again in the caller's thread
            outcome["error"] = exc

    thread = threading.Thread(target=target, name="asaptrain-driver", daemon=True)
    thread.start()
    while thread.is_alive():
        thread.join(timeout=every_s)
        if poll is not None:
            poll()
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


@contextmanager
def _progress_bar(files: RunFiles, steps: int) -> Iterator[Callable[[], None]]:
    """A rich progress bar; the function it yields updates it from the run's progress.json."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    columns = [TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("steps"),
               TimeElapsedColumn(), TimeRemainingColumn(), TextColumn("{task.fields[info]}")]
    with Progress(*columns, refresh_per_second=2) as bar:
        task = bar.add_task(files.name, total=steps, info="starting workers")

        def update() -> None:
            p = files.read_progress()
            if not p:
                return
            losses = "  ".join(f"{k[5:]} {v:.3g}" for k, v in p.items() if k.startswith("loss/") and k[5:] in ("d", "g"))
            val = f"  val PSNR {p['val/psnr']:.2f}" if p.get("val/psnr") is not None else ""
            bar.update(task, completed=p.get("step", 0), info=f"{p.get('images_per_s', 0):.1f} img/s  {losses}{val}")

        yield update


__all__ = ["ensure_ray", "run_polling"]
