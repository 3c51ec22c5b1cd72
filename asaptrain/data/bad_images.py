"""The bad images that a dataset's decode tasks meet, counted across tasks, workers and epochs.

``data.max_bad_images`` holds for a whole dataset, however its rows are split among tasks, and an
image counts once however often it is read. The counts meet in one small ledger actor per cluster
(0 CPUs; named, in the ``asaptrain`` namespace, detached), keyed by each dataset's own id.

The ledger is started by the first decode task that meets a bad image: a dataset without one,
the common case, starts no process. Once started it stays for the cluster's life (one idle
process of Python and Ray, no CPU); a run drops its dataset's entries when it ends
(:meth:`BadImageLog.close`), so what it holds stays small.

    log = BadImageLog.new(limit)              # driver; travels to the decode tasks in fn_kwargs
    over = log.add([{"shard": ..., "key": ..., "reason": ...}])  # a task: None, or all past the limit
    log.entries()                             # what was recorded
    log.close()                               # the run is over
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import ray

LEDGER = "asaptrain-bad-images-v1"
"""The ledger actor's name (in :data:`NAMESPACE`). Its last part is the ledger's own version: a
long-lived cluster may hold a ledger started by another release, so a change to the ledger's
methods takes a new name."""
NAMESPACE = "asaptrain"


@ray.remote(num_cpus=0)
class _Ledger:
    """Distinct bad images (by shard and key) of every dataset in use, by dataset id."""

    def __init__(self):
        self.seen: dict[str, dict[tuple[str, str], dict[str, str]]] = {}

    def add(self, log_id: str, limit: int, entries: list[dict[str, str]]) -> list[dict[str, str]] | None:
        seen = self.seen.setdefault(log_id, {})
        for e in entries:
            seen.setdefault((e["shard"], e["key"]), e)
        return list(seen.values()) if len(seen) > limit else None

    def entries(self, log_id: str) -> list[dict[str, str]]:
        return list(self.seen.get(log_id, {}).values())

    def drop(self, log_id: str) -> None:
        self.seen.pop(log_id, None)


def _ledger(start: bool):
    """The cluster's ledger; started if ``start`` and there is none (else None)."""
    if start:
        return _Ledger.options(name=LEDGER, namespace=NAMESPACE, lifetime="detached", get_if_exists=True).remote()
    try:
        return ray.get_actor(LEDGER, namespace=NAMESPACE)
    except ValueError:
        return None


@dataclass(frozen=True)
class BadImageLog:
    """One dataset's bad-image count: a small value that travels to the tasks, not an actor."""

    id: str
    limit: int
    """How many distinct bad images are allowed (``data.max_bad_images``)."""

    @classmethod
    def new(cls, limit: int) -> BadImageLog:
        return cls(uuid.uuid4().hex, limit)

    def add(self, entries: list[dict[str, str]]) -> list[dict[str, str]] | None:
        """Record entries (dicts with shard, key, reason); all recorded ones once past the limit, else None."""
        return ray.get(_ledger(start=True).add.remote(self.id, self.limit, entries))

    def entries(self) -> list[dict[str, str]]:
        """The bad images recorded so far (none, and no ledger started, when there were none)."""
        ledger = _ledger(start=False)
        return [] if ledger is None else ray.get(ledger.entries.remote(self.id))

    def close(self) -> None:
        """Forget this dataset's entries (its run is over)."""
        ledger = _ledger(start=False)
        if ledger is not None:
            ray.get(ledger.drop.remote(self.id))
