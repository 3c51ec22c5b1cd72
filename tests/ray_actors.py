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


def cluster_snapshot() -> str:
    """What this process's Ray holds now, as text for a failure message: free CPUs, the placement
    groups not removed (job, state, bundles) and the live actors (job, group). Never raises."""
    import ray
    from ray.util.state import list_actors, list_placement_groups

    from asaptrain.sweep.tune import this_cluster_state_api

    try:
        lines = [f"available: {ray.available_resources()}  total: {ray.cluster_resources()}"]
        with this_cluster_state_api() as url:
            groups = list_placement_groups(address=url, detail=True, limit=10_000, timeout=10,
                                           raise_on_missing_output=False)
            live = list_actors(address=url, filters=[("state", "!=", "DEAD")], detail=True, limit=10_000,
                               timeout=10, raise_on_missing_output=False)
        lines += [f"group {g.placement_group_id} job {g.creator_job_id} {g.state} "
                  f"{[b['unit_resources'] for b in g.bundles or []]}" for g in groups if g.state != "REMOVED"]
        lines += [f"actor {a.class_name} job {a.job_id} {a.state} group {a.placement_group_id or '-'}" for a in live]
        return "\n".join(lines)
    except Exception as exc:  # a snapshot for a message must not hide the failure it explains
        return f"(no snapshot of the cluster: {exc})"
