"""The settings of the cost-aware router (``router.type: cost``) and their checks."""

from __future__ import annotations

from pydantic import Field

from coe.config.base import Issue, RegistryView, Strict, unknown_experts
from coe.config.routing import RouterConfig


class CostSettings(Strict):
    """Per prompt, predict each expert's quality and cost from the nearest prompts of an outcome
    table and pick ``argmax(lam * quality - cost)``."""

    model: str = Field(description="artefact from `coe train-cost-router` (relative to this file)")
    lam: float | None = Field(
        None,
        ge=0,
        description="λ: the cost (in the artefact's unit) one unit of quality is worth; 0 always picks the "
        "cheapest, larger values buy quality; None: the artefact's recommended λ",
    )
    k: int | None = Field(None, ge=1, description="neighbours per prompt; None: the artefact's tuned value")
    experts: dict[str, str] = Field(
        default_factory=dict,
        description="expert name -> the outcome-table model it stands for; an expert named like a model "
        "needs no entry, and models no expert stands for are never picked",
    )
    costs: dict[str, float] = Field(
        default_factory=dict, description="expert -> fixed cost per request, replacing the predicted cost"
    )


class CostRouterConfig(RouterConfig):
    """``router: {type: cost, cost: {...}}``."""

    cost: CostSettings | None = Field(None, description="settings of the cost router (required)")

    def check(self, config: RegistryView) -> list[Issue]:
        cost = self.cost
        if cost is None:
            why = "the cost router needs a cost block with a model (from `coe train-cost-router`)"
            return [Issue(("router", "cost"), why)]
        problems = unknown_experts(
            config,
            *((("router", "cost", "experts", name), name) for name in cost.experts),
            *((("router", "cost", "costs", name), name) for name in cost.costs),
        )
        path = config.resolve_path(cost.model)
        if not path.is_file():
            problems.append(Issue(("router", "cost", "model"), f"no such file: {path}"))
        return problems
