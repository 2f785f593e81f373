"""Cost-aware routing (RouterBench-style): per prompt, predict each expert's quality and cost from the
nearest prompts of an outcome table and pick ``argmax(lam * quality - cost)``.

The room: ``router`` (the runtime ``CostRouter``), ``model`` (the kNN quality and cost model and its
artefact), ``training`` (``coe train-cost-router``: fit and tune on an outcome table), ``evaluation``
(``coe eval outcomes``: our curve against every baseline) and ``plot`` (its PNG).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from routers.cost.router import CostRouter

__all__ = ["CostRouter"]

# The runtime router imports numpy and the encoder; loading a registry only needs the config.
_LAZY = {"CostRouter": "router"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"routers.cost.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
