"""The memory budget (``serving.memory_budget_gb``): each expert's footprint, known once and kept,
and whether experts fit under the budget together. Pure arithmetic, shared by the scheduler (what
to evict), ``coe experts up`` (what to start) and readiness (what can never load)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from coe.config import CoEConfig
from coe.errors import ExpertError, ModelNotFoundError
from coe.experts.footprint import footprint_gb

SLACK_GB = 1e-9  # float sums of footprints must not turn "exactly fits" into "does not fit"


class MemoryBudget:
    def __init__(self, config: CoEConfig) -> None:
        self.config = config
        self._sizes: dict[str, float] = {}

    @property
    def gb(self) -> float | None:
        """The budget in GB; None: no limit, everything loads on first use."""
        return self.config.serving.memory_budget_gb

    def footprint(self, name: str) -> float:
        """The expert's footprint in GB (reads its model file the first time: call off the loop)."""
        if name not in self._sizes:
            try:
                self._sizes[name] = footprint_gb(name, self.config)
            except (ModelNotFoundError, FileNotFoundError, ValueError) as exc:
                raise ExpertError(name, str(exc)) from None
        return self._sizes[name]

    def known(self, name: str) -> float | None:
        """The footprint if it was already worked out, without reading anything."""
        return self._sizes.get(name)

    def held_gb(self, names: Iterable[str]) -> float:
        """Memory held by these experts, counting only footprints already known (a resident expert's
        always is under a budget)."""
        return sum(self._sizes.get(n, 0.0) for n in set(names))

    def fits(self, names: Sequence[str]) -> bool:
        """Whether these experts can be loaded at the same time under the budget."""
        budget = self.gb
        return budget is None or sum(self.footprint(n) for n in set(names)) <= budget + SLACK_GB

    def never_fits(self, name: str) -> str | None:
        """Why the expert can never load under the memory budget (it needs more than all of it, or its
        size cannot be known), or None: it is loadable, if need be after evictions."""
        if self.gb is None:
            return None
        try:
            need = self.footprint(name)
        except ExpertError as exc:
            return exc.reason
        if need > self.gb + SLACK_GB:
            return f"needs {need:.2f} GB, more than serving.memory_budget_gb ({self.gb:g} GB)"
        return None
