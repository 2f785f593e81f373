"""Find routers and aggregators by name: built-ins, then entry points, then ``pkg.module:Class``.

``coe`` never imports a concrete strategy at module level; it resolves the name when a CoE is built,
so a plug-in package can add ``[project.entry-points."coe.routers"] mine = "pkg.mod:MyRouter"`` and
use ``router: {type: mine}`` in experts.yaml.
"""

from __future__ import annotations

import importlib
from importlib.metadata import entry_points
from typing import Any, Literal

from coe.errors import ConfigError

Kind = Literal["routers", "aggregators"]

BUILTINS: dict[Kind, dict[str, str]] = {
    "routers": {
        "category": "routers.category.router:CategoryRouter",
        "cost": "routers.cost.router:CostRouter",
        "skills": "routers.skills.router:SkillsRouter",
    },
    "aggregators": {
        "first": "aggregators.first:FirstAggregator",
        "vote": "aggregators.vote:VoteAggregator",
        "synthesize": "aggregators.synthesize:SynthesizeAggregator",
        "rank": "aggregators.rank:RankAggregator",
    },
}


def available(kind: Kind) -> list[str]:
    names = set(BUILTINS[kind]) | {ep.name for ep in entry_points(group=f"coe.{kind}")}
    return sorted(names)


def load(kind: Kind, name: str) -> Any:
    """Return the class registered as ``name``; ConfigError says what is known when it is not."""
    target = BUILTINS[kind].get(name)
    if target is None:
        found = [ep for ep in entry_points(group=f"coe.{kind}") if ep.name == name]
        if found:
            return found[0].load()
        if ":" not in name:
            key = "router.type" if kind == "routers" else "aggregator.type"
            raise ConfigError([f"{key}: unknown {kind[:-1]} {name!r}; known: {', '.join(available(kind))}"])
        target = name
    module_name, _, attr = target.partition(":")
    try:
        return getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ConfigError([f"cannot load {kind[:-1]} {target!r}: {exc}"]) from exc
