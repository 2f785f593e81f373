"""The memory budget (``serving.memory_budget_gb``): each expert's footprint, known once and kept,
and whether experts fit under the budget together. Pure arithmetic, shared by the scheduler (what
to evict), ``coe experts up`` (what to start) and readiness (what can never load).

Footprints are per process: experts that share one (LoRA adapters of one base, coe.experts.groups)
weigh the base once plus their adapters, whichever of them is asked about."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from coe.config import CoEConfig
from coe.errors import ExpertError, ModelNotFoundError
from coe.experts.footprint import GB, footprint_gb
from coe.experts.groups import ProcessGroups
from coe.experts.models import adapter_path

SLACK_GB = 1e-9  # float sums of footprints must not turn "exactly fits" into "does not fit"


class MemoryBudget:
    def __init__(self, config: CoEConfig) -> None:
        self.config = config
        self.groups = ProcessGroups(config)
        self._sizes: dict[str, float] = {}  # by process

    @property
    def gb(self) -> float | None:
        """The budget in GB; None: no limit, everything loads on first use."""
        return self.config.serving.memory_budget_gb

    def footprint(self, name: str) -> float:
        """The footprint in GB of the expert's process (reads its model file the first time: call off
        the loop)."""
        host = self.groups.host(name)
        if host not in self._sizes:
            try:
                self._sizes[host] = self._process_gb(host)
            except (ModelNotFoundError, FileNotFoundError, ValueError) as exc:
                raise ExpertError(name, str(exc)) from None
        return self._sizes[host]

    def _process_gb(self, host: str) -> float:
        """A declared ``memory_gb`` (the largest among the experts of a shared process), else the
        estimate: the base, plus a llama.cpp group's adapter files (vLLM's sit inside its share)."""
        experts = [self.config.experts[n] for n in self.groups.members(host)]
        declared = [e.memory_gb for e in experts if e.memory_gb is not None]
        if declared:
            return max(declared)
        group = self.groups.group(host)
        spec = experts[0].serve
        adapters = 0
        if group is not None and spec is not None and spec.engine == "llamacpp":
            adapters = sum(adapter_path(ref, self.config.base_dir).stat().st_size for ref in group.adapters)
        return footprint_gb(host, self.config) + adapters / GB

    def known(self, name: str) -> float | None:
        """The footprint if it was already worked out, without reading anything."""
        return self._sizes.get(self.groups.host(name))

    def held_gb(self, names: Iterable[str]) -> float:
        """Memory held by these experts, counting only footprints already known (a resident expert's
        always is under a budget) and a shared process once."""
        return sum(self._sizes.get(n, 0.0) for n in self.groups.hosts(names))

    def fits(self, names: Sequence[str]) -> bool:
        """Whether these experts can be loaded at the same time under the budget."""
        budget = self.gb
        hosts = self.groups.hosts(names)
        return budget is None or sum(self.footprint(n) for n in hosts) <= budget + SLACK_GB

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
