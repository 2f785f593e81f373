"""Find routers and aggregators by name: built-ins, then entry points, then ``pkg.module:Class``.

``coe`` never imports a concrete strategy; it resolves the name when a registry is read (the
strategy's settings model) and when a CoE is built (the strategy itself), so a plug-in package can add
``[project.entry-points."coe.routers"] mine = "pkg.mod:MyRouter"`` and use ``router: {type: mine}``
in experts.yaml.

A built-in names its settings model separately, so reading a registry imports the small config module
of its strategy, not the runtime (numpy, the encoder). A plug-in declares its model as the class
attribute ``Config``. This module only finds objects by name: ``coe.config.routing`` checks that a
settings model is one (and gives a plug-in without one ``options:``), so the registry imports this
module and never the other way round.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import entry_points
from types import ModuleType
from typing import Any, Literal

from coe.errors import ConfigError
from coe.protocols import AggregatorFactory, OptionsAggregatorFactory, RouterFactory

Kind = Literal["routers", "aggregators"]


@dataclass(frozen=True)
class Builtin:
    target: str  # "pkg.module:Class"
    config: str  # "pkg.module:Model", importable without the runtime


BUILTINS: dict[Kind, dict[str, Builtin]] = {
    "routers": {
        "category": Builtin(
            "routers.category:CategoryRouter", "routers.category.config:CategoryRouterConfig"
        ),
        "cost": Builtin("routers.cost:CostRouter", "routers.cost.config:CostRouterConfig"),
        "skills": Builtin("routers.skills:SkillsRouter", "routers.skills.config:SkillsRouterConfig"),
    },
    "aggregators": {
        "first": Builtin("aggregators.first:FirstAggregator", "coe.config.routing:AggregatorConfig"),
        "vote": Builtin("aggregators.vote:VoteAggregator", "aggregators.vote:VoteConfig"),
        "synthesize": Builtin(
            "aggregators.synthesize:SynthesizeAggregator", "aggregators.support:WriterConfig"
        ),
        "rank": Builtin("aggregators.rank:RankAggregator", "aggregators.support:WriterConfig"),
    },
}

# Modules of the 0.1 layout, for the message when a registry, an artefact or a plug-in still names one.
MOVED: dict[str, str] = {
    "coe.registry": "coe.plugins",
    "coe.batch_io": "coe.batch.files",
    "coe.commands": "coe.cli",
    "coe.embedder": "coe.encoding.embedder",
    "coe.encoders": "coe.encoding.files",
    "coe.encoder_backends": "coe.encoding.backends",
    "coe.encoder_header": "coe.encoding.header",
    "coe.encoder_finetune": "coe.encoding.build.finetune",
    "coe.encoder_distil": "coe.encoding.build.distil",
    "coe.encoder_export": "coe.encoding.build.export",
    "coe.encoder_quantize": "coe.encoding.build.quantize",
    "coe.vector_search": "coe.encoding.search",
    "coe.evaluation.embedding_cache": "coe.encoding.cache",
    "coe.evaluation.router_eval": "routers.category.evaluation",
    "coe.evaluation.runner": "coe.cli.eval_inputs",
    "coe.evaluation.fit_map": "routers.category.fit_map",  # its solver: coe.category_map
    "coe.evaluation.outcome_eval": "routers.cost.evaluation",
    "coe.evaluation.outcome_plot": "routers.cost.plot",
    "coe.evaluation.recruit": "routers.skills.evaluation",
    "coe.index": "coe.retrieval.index",
    "coe.corpus": "coe.retrieval.corpus",
    "coe.gate_data": "coe.retrieval.gate_data",
    "coe.gate_model": "coe.retrieval.gate_model",
    "coe.jsonl": "coe.data.jsonl",
    "coe.npz": "coe.data.npz",
    "coe.splits": "coe.data.splits",
    "coe.serving": "coe.experts",
    "coe.skills": "routers.skills",
    "coe.skills.answers": "coe.answers",
    "routers.artefact": "routers.category.artefact",
    "routers.classifiers": "routers.category.classifiers",
    "routers.llm_classifier": "routers.category.llm_classifier",
    "routers.routing_model": "routers.category.model",
    "routers.text_classifier": "routers.category.text_classifier",
    "routers.text_features": "coe.encoding.char_tfidf",
    "routers.category.text_features": "coe.encoding.char_tfidf",
    "routers.training": "routers.category.training",
    "routers.cost_model": "routers.cost.model",
    "routers.cost_training": "routers.cost.training",
}


def available(kind: Kind) -> list[str]:
    names = set(BUILTINS[kind]) | {ep.name for ep in entry_points(group=f"coe.{kind}")}
    return sorted(names)


def router_factory(name: str) -> RouterFactory[Any]:
    """The router class ``router.type`` names; ConfigError says what is known when it is not one."""
    found = _load("routers", name)
    if not isinstance(found, RouterFactory):
        raise ConfigError([f"router.type: {name!r} is not a router: it has no from_config(config)"])
    return found


def aggregator_factory(name: str) -> AggregatorFactory[Any] | OptionsAggregatorFactory:
    """The aggregator class ``aggregator.type`` names: built from its settings (``from_config``) or,
    for plug-ins written against the options mapping, ``from_options``."""
    found = _load("aggregators", name)
    if not isinstance(found, AggregatorFactory | OptionsAggregatorFactory):
        why = "it has neither from_config(settings) nor from_options(options)"
        raise ConfigError([f"aggregator.type: {name!r} is not an aggregator: {why}"])
    return found


def settings_model(kind: Kind, name: str) -> object:
    """What the strategy ``name`` declares as its settings model: a built-in's (from its small config
    module, never its runtime), a plug-in's ``Config`` attribute, or None when it declares none."""
    builtin = BUILTINS[kind].get(name)
    return _import(kind, builtin.config) if builtin else getattr(_load(kind, name), "Config", None)


def _load(kind: Kind, name: str) -> object:
    builtin = BUILTINS[kind].get(name)
    if builtin is not None:
        return _import(kind, builtin.target)
    found = [ep for ep in entry_points(group=f"coe.{kind}") if ep.name == name]
    if found:
        return found[0].load()
    if ":" not in name:
        key = "router.type" if kind == "routers" else "aggregator.type"
        raise ConfigError([f"{key}: unknown {kind[:-1]} {name!r}; known: {', '.join(available(kind))}"])
    return _import(kind, name)


def _import(kind: Kind, target: str) -> object:
    module_name, _, attr = target.partition(":")
    try:
        return getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        key = "router.type" if kind == "routers" else "aggregator.type"
        raise ConfigError([f"{key}: cannot load {kind[:-1]} {target!r}: {exc}"]) from exc


def lazy_exports(package: str, exports: dict[str, str]) -> Callable[[str], object]:
    """A module ``__getattr__`` for a strategy package: ``routers.category:CategoryRouter`` keeps
    working while importing the package (to read its settings model) does not import its runtime."""

    def __getattr__(name: str) -> object:
        if name in exports:
            return getattr(importlib.import_module(exports[name]), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return __getattr__


class _MovedModules(importlib.abc.MetaPathFinder):
    """Consulted only after every other finder failed: an import of a 0.1 module path fails with a
    message naming where it moved, instead of a bare ModuleNotFoundError."""

    def find_spec(
        self, fullname: str, path: object = None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        new = MOVED.get(fullname)
        if new is not None and new != fullname:
            raise ModuleNotFoundError(f"{fullname} moved to {new}; import it from there", name=fullname)
        return None


def install_moved_modules_hint() -> None:
    if not any(isinstance(f, _MovedModules) for f in sys.meta_path):
        sys.meta_path.append(_MovedModules())
