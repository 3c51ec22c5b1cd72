"""Placement groups that a stopped trial's Train run left reserved, found and freed during a sweep.

Ray Train registers a worker group's placement group with its own cleaner only once every worker
has started. When Tune stops a trial, its workers can die before its Train controller does; the
controller then restarts the worker group (``train.max_failures``) and creates a new placement
group just before it is killed itself. Nobody frees that group while the sweep's driver lives
(Ray frees a group once both its job and the actor that created it are gone), and the next
trial's input pipeline waits forever for the CPU the group holds: Ray Data's read tasks need
one whole CPU beside the trial's workers.

A group of the sweep's own job that holds no live or starting actor at two looks at least
``confirm_s`` apart runs nothing: it is removed. Groups of the shape Tune reserves for a trial's
driver (``keep``) are left to Tune, which reserves them before their trial starts. (Ray refuses a
second group of the same name, so Tune's groups cannot be told apart by name.)
"""

from __future__ import annotations

import time

class StrayGroups:
    """Finds and removes the placement groups of ``job_id`` that hold no actor (see the module doc)."""

    def __init__(self, job_id: str, state_api_url: str, keep: list[dict[str, float]], confirm_s: float = 5.0):
        self.job_id, self.url, self.keep, self.confirm_s = job_id, state_api_url, keep, confirm_s
        self.empty_since: dict[str, float] = {}
        """Each group found empty at the last look, with the time it was first found so."""

    def empty(self) -> set[str]:
        """The ids of the job's reserved groups, but those shaped as ``keep``, that no actor is in or waits for."""
        from ray.util.state import list_actors, list_placement_groups

        groups = list_placement_groups(address=self.url, filters=[("state", "=", "CREATED")], detail=True,
                                       limit=10_000, timeout=30, raise_on_missing_output=False)
        actors = list_actors(address=self.url, filters=[("state", "!=", "DEAD")], detail=True, limit=10_000,
                             timeout=30, raise_on_missing_output=False)
        used = {a.placement_group_id for a in actors if a.placement_group_id}
        return {g.placement_group_id for g in groups
                if g.creator_job_id == self.job_id and not g.is_detached and g.placement_group_id not in used
                and [b["unit_resources"] for b in g.bundles] != self.keep}

    def free(self, now: float | None = None) -> list[str]:
        """Look once; remove the groups found empty at this look and at one ``confirm_s`` or more
        before it. Returns the removed groups' ids."""
        from ray._raylet import PlacementGroupID
        from ray.util.placement_group import PlacementGroup, remove_placement_group

        now = time.monotonic() if now is None else now
        self.empty_since = {g: self.empty_since.get(g, now) for g in self.empty()}
        stale = sorted(g for g, since in self.empty_since.items() if now - since >= self.confirm_s)
        for group in stale:
            remove_placement_group(PlacementGroup(PlacementGroupID(bytes.fromhex(group))))
            del self.empty_since[group]
        return stale


__all__ = ["StrayGroups"]
