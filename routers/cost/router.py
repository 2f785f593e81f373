"""Cost-aware routing (RouterBench-style): pick ``argmax_e (λ * predicted quality_e - cost_e)``.

Each expert's quality on a prompt is predicted from the nearest prompts of an outcome table (which
model got them right), see ``routers.cost.model``; λ says how much cost one unit of quality is worth,
so one number moves the router along its quality-versus-cost curve (``coe eval outcomes`` draws the
curve and ``coe train-cost-router`` recommends a λ). The trace says what was predicted for every
candidate, the utility that decided, and which neighbours the prediction came from.

experts.yaml::

    router:
      type: cost
      cost:
        model: cost-router.npz        # from `coe train-cost-router`
        lam: 0.002                    # optional; default: the artefact's recommended λ
        experts: {coder: meta/code-llama-instruct-34b-chat, general: gpt-4-1106-preview}
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from coe.config.routing import settings_of
from coe.encoding.embedder import Embedder, shared_embedder
from coe.encoding.view import text_view
from coe.errors import ConfigError, ModelNotFoundError
from coe.types import Request, RouteDecision
from routers.cost import model as cost_model
from routers.cost.config import CostRouterConfig, CostSettings

if TYPE_CHECKING:
    from coe.config import CoEConfig

_NEIGHBOURS_SHOWN = 3


class CostRouter:
    name = "cost"
    Config = CostRouterConfig

    def __init__(self, cfg: CostSettings, experts: Sequence[str], embedder: Embedder, path: Path) -> None:
        try:
            self.header, model = cost_model.load(path)
        except ValueError as exc:
            raise ModelNotFoundError(str(exc)) from exc
        space = embedder.space
        if self.header.space != space:
            raise ModelNotFoundError(
                f"{path}: trained on vectors of encoder {self.header.encoder!r} ({self.header.space}), "
                f"but the embedder here makes {space!r} vectors"
            )
        lam = cfg.lam if cfg.lam is not None else self.header.recommended_lam
        if lam is None:
            raise ConfigError(
                [
                    "router.cost.lam: required (the artefact recommends no λ: no point on validation reached "
                    "the best single expert's quality)"
                ]
            )
        self.lam = float(lam)
        if cfg.k is not None:
            model = model.with_params(model.params.model_copy(update={"k": cfg.k}))
        self.model = model
        self.embedder = embedder
        self.cfg = cfg
        self.candidates, self.columns = self._candidates(cfg, experts, path)

    def _candidates(
        self, cfg: CostSettings, experts: Sequence[str], path: Path
    ) -> tuple[list[str], list[int]]:
        """Experts that stand for a model of the table, and that model's column."""
        models = self.header.models
        names, columns = [], []
        for expert in experts:
            model = cfg.experts.get(expert, expert)
            if model in models:
                names.append(expert)
                columns.append(models.index(model))
            elif expert in cfg.experts:
                raise ConfigError(
                    [
                        f"router.cost.experts.{expert}: {model!r} is not a model of {path}; "
                        f"expected one of: {', '.join(models)}"
                    ]
                )
        if not names:
            raise ConfigError(
                [
                    f"router.cost.experts: no expert stands for a model of {path}; map experts to models "
                    f"({', '.join(models)})"
                ]
            )
        return names, columns

    @classmethod
    def from_config(cls, config: CoEConfig) -> CostRouter:
        cfg = settings_of(config.router, CostRouterConfig).cost
        if cfg is None:
            raise ConfigError(["router.cost: the cost router needs a cost block with a model"])
        embedder = shared_embedder(config.embedder, config.base_dir)
        return cls(cfg, list(config.experts), embedder, config.resolve_path(cfg.model))

    def route(self, requests: Sequence[Request]) -> list[RouteDecision]:
        if not requests:
            return []
        texts = [text_view(r.text, self.header.max_chars) for r in requests]
        pred = self.model.predict(self.embedder.encode(texts))
        quality = pred.quality[:, self.columns]
        cost = pred.cost[:, self.columns]
        for j, expert in enumerate(self.candidates):
            if expert in self.cfg.costs:
                cost[:, j] = self.cfg.costs[expert]
        return [self._decide(pred, i, quality[i], cost[i]) for i in range(len(requests))]

    def _decide(
        self, pred: cost_model.Prediction, i: int, quality: np.ndarray, cost: np.ndarray
    ) -> RouteDecision:
        utility = self.lam * quality - cost
        order = sorted(range(len(utility)), key=lambda j: (-utility[j], cost[j]))
        names = [self.candidates[j] for j in order]
        tasks = self.model.tasks
        task_order = np.argsort(-pred.task_probs[i])
        top_task = tasks[task_order[0]]
        unit = self.header.cost_unit
        neighbours = [
            {"similarity": round(float(s), 4), "task": tasks[self.model.task[n]]}
            for s, n in zip(
                pred.similarities[i][:_NEIGHBOURS_SHOWN], pred.neighbours[i][:_NEIGHBOURS_SHOWN], strict=True
            )
        ]
        best = order[0]
        reason = (
            f"expert {names[0]!r} maximises λ·quality − cost (λ={self.lam:g}): predicted quality "
            f"{quality[best]:.2f} at cost {cost[best]:.4g} {unit}"
        )
        if len(order) > 1:
            nxt = order[1]
            reason += (
                f"; next {names[1]!r}: quality {quality[nxt]:.2f} at cost {cost[nxt]:.4g} "
                f"(utility {utility[best]:.4g} vs {utility[nxt]:.4g})"
            )
        reason += (
            f"; from {pred.neighbours.shape[1]} neighbours, mostly {top_task!r} "
            f"(nearest cosine {pred.similarities[i][0]:.2f})"
        )
        return RouteDecision(
            router=self.name,
            experts=names,
            category=top_task,
            confidence=float(quality[best]),
            scores={self.candidates[j]: round(float(quality[j]), 4) for j in order},
            reason=reason,
            details={
                "lambda": self.lam,
                "cost_unit": unit,
                "predicted_quality": {self.candidates[j]: round(float(quality[j]), 4) for j in order},
                "predicted_cost": {self.candidates[j]: float(cost[j]) for j in order},
                "utility": {self.candidates[j]: float(utility[j]) for j in order},
                "task_probs": {tasks[t]: round(float(pred.task_probs[i][t]), 4) for t in task_order[:3]},
                "neighbours": neighbours,
                "k": int(pred.neighbours.shape[1]),
            },
        )
