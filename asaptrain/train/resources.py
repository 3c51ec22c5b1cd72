"""What each Ray Train worker reserves, so that Ray Data can still read beside it.

    per_worker = worker_resources(cfg, use_gpu, cluster_cpus=ray.cluster_resources()["CPU"])

Ray Data runs its read and decode tasks outside the Train workers' placement group, and each
asks for one whole CPU (Ray's default ``num_cpus``); its budget is the cluster minus what the
workers hold. Two workers at Ray's default of 1 CPU each on a 2-CPU machine leave it nothing,
and the run waits forever at 0 rows ("backpressured: tasks (ResourceBudget)"). So on a CPU run:

- with ``scaling.resources_per_worker`` empty, each worker gets ``min(1, free / workers)``
  CPUs, where free = the cluster's CPUs minus one for Ray Data (and minus what a sweep trial's
  own driver holds) — a whole CPU where there is room, a fraction on a small machine;
- with resources given, or when even a fraction cannot fit, a :class:`ResourceError` says at
  once what to set instead of waiting.

GPU runs keep Ray's default (1 GPU, no CPU per worker) or what is given: GPU nodes have CPUs to
spare, and an autoscaling cluster shows only the nodes it has started so far.
"""

from __future__ import annotations

import math

from asaptrain.config.schema import Config
from asaptrain.errors import UserError

DATA_TASK_CPUS = 1.0
"""CPUs one Ray Data read or decode task asks for: what must stay free beside the workers."""
MIN_WORKER_CPUS = 0.05
"""The smallest CPU share a worker is given (Ray refuses a bundle of zero resources)."""


class ResourceError(UserError):
    """A run that cannot get the resources it needs on this cluster; the message says what to set."""


def worker_resources(cfg: Config, use_gpu: bool, cluster_cpus: float | None = None,
                     driver_cpus: float = 0.0) -> dict[str, float] | None:
    """``resources_per_worker`` for Ray Train's ScalingConfig (None: Ray's default).

    ``cluster_cpus``: the cluster's CPUs (read from Ray when None); ``driver_cpus``: CPUs held
    beside the workers by whoever launches them (a sweep trial's driver).
    """
    given = dict(cfg.scaling.resources_per_worker)
    if use_gpu:
        return given or None
    if cluster_cpus is None:
        import ray

        cluster_cpus = float(ray.cluster_resources().get("CPU", 0))
    workers = cfg.scaling.num_workers
    free = cluster_cpus - driver_cpus - DATA_TASK_CPUS
    fix = ("use fewer workers (--workers / scaling.num_workers), or a cluster with more CPUs "
           "(`ray start --num-cpus`)")
    if not given:
        per = min(1.0, math.floor(free / workers * 100) / 100)
        if per < MIN_WORKER_CPUS:
            raise ResourceError(
                f"{workers} CPU worker(s) and Ray Data's reading need more than this cluster's {cluster_cpus:g} "
                f"CPUs: each read task takes {DATA_TASK_CPUS:g} CPU beside the workers"
                + (f" and the sweep trial's driver {driver_cpus:g}" if driver_cpus else "") + f"; {fix}")
        return {"CPU": per}
    cpu = given.get("CPU", 0.0)
    if workers * cpu > free + 1e-9:
        hint = f"scaling.resources_per_worker={{CPU = {math.floor(free / workers * 100) / 100:g}}}" \
            if free / workers >= MIN_WORKER_CPUS else fix
        raise ResourceError(
            f"{workers} worker(s) x {cpu:g} CPU (scaling.resources_per_worker) leave less than the {DATA_TASK_CPUS:g} "
            f"CPU Ray Data needs to read on this cluster of {cluster_cpus:g} CPUs"
            + (f" (a sweep trial's driver holds {driver_cpus:g})" if driver_cpus else "")
            + f", so the run would wait forever; set {hint}, or leave it empty to have it planned")
    return given


def with_planned_resources(cfg: Config, use_gpu: bool, driver_cpus: float = 0.0) -> Config:
    """``cfg`` with ``scaling.resources_per_worker`` set to what :func:`worker_resources` plans."""
    import dataclasses

    planned = worker_resources(cfg, use_gpu, driver_cpus=driver_cpus) or {}
    return dataclasses.replace(cfg, scaling=dataclasses.replace(cfg.scaling, resources_per_worker=planned))
