"""Cost-aware routing (RouterBench-style): per prompt, predict each expert's quality and cost from the
nearest prompts of an outcome table and pick ``argmax(lam * quality - cost)``.

The room: ``router`` (the runtime ``CostRouter``), ``model`` (the kNN quality and cost model and its
artefact), ``training`` (``coe train-cost-router``: fit and tune on an outcome table), ``evaluation``
(``coe eval outcomes``: our curve against every baseline) and ``plot`` (its PNG).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from coe.plugins import lazy_exports

if TYPE_CHECKING:
    from routers.cost.router import CostRouter

__all__ = ["CostRouter"]
# The runtime imports numpy and the encoder; reading a registry needs only the settings model.
__getattr__ = lazy_exports(__name__, {"CostRouter": "routers.cost.router"})
