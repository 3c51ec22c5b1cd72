"""A reporter for the loop that records into a list (the tests' stand-in for Ray's)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class ListReporter:
    """Records each report as ``(metrics, had a checkpoint)`` and keeps the last saved state."""

    reports: list[tuple[dict, bool]] = field(default_factory=list)
    last_state: dict | None = None

    def report(self, metrics: dict, state: dict | None) -> None:
        self.reports.append((metrics, state is not None))
        if state is not None:
            self.last_state = state
