"""Placement groups that ended jobs left reserved, freed by the next driver that connects.

Ray frees a placement group once both its job and the actor that created it are gone: the GCS
applies that rule when the job ends and when the actor dies, to the groups registered by then.
A group whose creation reaches the GCS after both, because an actor reserved it while its job
was being killed, is never freed and holds its resources until the cluster stops. Ray Train's
controller does that when a killed driver's workers die before it: it restarts the worker group
(``train.max_failures``) and reserves a new group just as it is killed itself. The killed job's
rerun (KubeRay's ``backoffLimit``, ``--resume auto``) then waits forever on a small cluster: its
Ray Data read tasks need a CPU that the group holds.

:func:`free_orphaned_groups` applies Ray's rule itself, to every group: not detached, its job
ended (the GCS job table) and the actor that created it dead or gone from the actor table (a
driver creates none). Both are final, so one look is enough, and nothing a live job or a
detached actor holds is touched.

    freed = free_orphaned_groups()   # [(group id, its bundles' resources)], after ray.init
"""

from __future__ import annotations

from typing import Any


def orphaned_groups() -> list[tuple[str, list[dict[str, float]]]]:
    """The groups whose lifetime has ended by Ray's rule that are still reserved: (id, bundles)."""
    from ray._private.state import state
    from ray.core.generated import gcs_pb2

    table = gcs_pb2.PlacementGroupTableData
    groups = [table.FromString(raw) for raw in state._connect_and_get_accessor().get_placement_group_table()]
    groups = [g for g in groups if g.state != table.REMOVED and not g.is_detached]
    if not groups:
        return []
    ended_jobs = {job["JobID"] for job in state.job_table() if job.get("IsDead")}
    return [(g.placement_group_id.hex(), [dict(b.unit_resources) for b in g.bundles]) for g in groups
            if g.creator_job_id.hex() in ended_jobs and _actor_gone(g.creator_actor_id.hex())]


def _actor_gone(actor_id: str) -> bool:
    """Whether the actor ``actor_id`` is dead or unknown to the GCS (a driver's groups name none)."""
    from ray._private.state import state

    if set(actor_id) <= {"f"} or set(actor_id) <= {"0"}:  # a nil id: a driver created the group
        return True
    info: dict[str, Any] = state.actor_table(actor_id)
    return not info or info.get("State") == "DEAD"


def free_orphaned_groups() -> list[tuple[str, list[dict[str, float]]]]:
    """Remove the groups :func:`orphaned_groups` finds; returns those removed (id, bundles)."""
    from ray._raylet import PlacementGroupID
    from ray.util.placement_group import PlacementGroup, placement_group_table, remove_placement_group

    freed = []
    for group_id, bundles in orphaned_groups():
        try:
            remove_placement_group(PlacementGroup(PlacementGroupID(bytes.fromhex(group_id))))
        except Exception:
            if placement_group_table().get(group_id, {}).get("state", "REMOVED") != "REMOVED":
                raise
            continue  # removed meanwhile (Ray Train's own cleaner, another driver): not ours to report
        freed.append((group_id, bundles))
    return freed
