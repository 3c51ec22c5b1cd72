"""Placement groups that a stopped trial's Train run left reserved, found and freed during a sweep.

Ray Train registers a worker group's placement group with its own cleaner only once every worker
has started. When Tune stops a trial, its workers can die before its Train controller does; the
controller then restarts the worker group (``train.max_failures``) and creates a new placement
group just before it is killed itself. Nobody frees that group while the sweep's driver lives
(Ray frees a group once both its job and the actor that created it are gone), and the next
trial's input pipeline waits forever for the CPU the group holds: Ray Data's read tasks need
one whole CPU beside the trial's workers. (A group that a job's actor reserves as that job
ends is Ray's to free and never is: the next driver frees it, ``train/orphan_groups.py``.)

A group of the sweep's own job, made after the sweep began, that holds no live or starting actor
at two looks at least ``confirm_s`` apart runs nothing: it is removed. Left alone: the groups that
existed before the sweep (``spare``: the driver may hold its own), groups of the shape Tune
reserves for a trial's driver (``keep``: Tune reserves them before their trial starts; Ray refuses a
second group of one name, so they cannot be told apart by name), and any group the GCS itself
does not show as created at the moment of removal (the state API's view can lag by seconds).
"""

from __future__ import annotations

import time


class StrayGroups:
    """Finds and removes the placement groups of ``job_id`` that hold no actor (see the module doc)."""

    def __init__(self, job_id: str, state_api_url: str, keep: list[dict[str, float]], spare: set[str],
                 confirm_s: float = 5.0):
        self.job_id, self.url, self.keep, self.spare, self.confirm_s = job_id, state_api_url, keep, spare, confirm_s
        self.empty_since: dict[str, float] = {}
        """Each group found empty at the last look, with the time it was first found so."""

    def empty(self) -> set[str]:
        """The ids of the job's reserved groups, but those spared or shaped as ``keep``, that no actor is in or
        waits for."""
        from ray.util.state import list_actors, list_placement_groups

        groups = list_placement_groups(address=self.url, filters=[("state", "=", "CREATED")], detail=True,
                                       limit=10_000, timeout=30, raise_on_missing_output=False)
        actors = list_actors(address=self.url, filters=[("state", "!=", "DEAD")], detail=True, limit=10_000,
                             timeout=30, raise_on_missing_output=False)
        used = {a.placement_group_id for a in actors if a.placement_group_id}
        return {g.placement_group_id for g in groups
                if g.creator_job_id == self.job_id and not g.is_detached and g.placement_group_id not in used
                and g.placement_group_id not in self.spare and [b["unit_resources"] for b in g.bundles] != self.keep}

    def free(self, now: float | None = None) -> list[str]:
        """Look once; remove the groups found empty at this look and at one ``confirm_s`` or more
        before it. Returns the removed groups' ids."""
        from ray._raylet import PlacementGroupID
        from ray.util.placement_group import PlacementGroup, placement_group_table, remove_placement_group

        now = time.monotonic() if now is None else now
        self.empty_since = {g: self.empty_since.get(g, now) for g in self.empty()}
        stale = [g for g, since in self.empty_since.items() if now - since >= self.confirm_s]
        table = placement_group_table() if stale else {}
        freed = []
        for group in sorted(stale):
            del self.empty_since[group]
            if table.get(group, {}).get("state") == "CREATED":
                remove_placement_group(PlacementGroup(PlacementGroupID(bytes.fromhex(group))))
                freed.append(group)
        return freed


def groups_now() -> set[str]:
    """The ids of every placement group the cluster's GCS holds, whatever its state."""
    from ray.util.placement_group import placement_group_table

    return set(placement_group_table())


__all__ = ["StrayGroups", "groups_now"]
