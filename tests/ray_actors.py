"""The actors of this test process's own Ray, asked through its own dashboard (never another
Ray's on this machine: looking for processes by name would find, and kill, those too).

    before = actors_started("SplitCoordinator")   # every one ever started, dead ones too
    pids = [a.pid for a in actors("RayTrainWorker", alive=True)]
"""

from __future__ import annotations


def actors(class_name: str, alive: bool = False) -> list:
    """The ``ActorState``s of ``class_name`` on this process's Ray (only the live ones with ``alive``)."""
    from ray.util.state import list_actors

    from asaptrain.sweep.tune import this_cluster_state_api

    filters = [("class_name", "=", class_name)] + ([("state", "=", "ALIVE")] if alive else [])
    with this_cluster_state_api() as url:
        return list_actors(address=url, filters=filters, limit=10_000, timeout=10, raise_on_missing_output=False)


def actors_started(class_name: str) -> int:
    """How many actors of ``class_name`` were ever started on this process's Ray."""
    return len(actors(class_name))
