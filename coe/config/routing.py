"""What the engine knows of routing and aggregation: the base of every strategy's settings.

``router.type`` and ``aggregator.type`` name a strategy (``coe.plugins``); the rest of each block is
validated against the settings model that strategy declares (a tagged union on ``type``, resolved when
the registry is read), so the engine never lists a strategy's fields. A strategy's model subclasses
``RouterConfig`` or ``AggregatorConfig`` and checks its own cross-references in ``check``.

``CategoryConfig`` stays here: a category that names an expert is shared vocabulary, read by the
server (``coe/category/NAME`` model ids) and the retrieval gate ``category``, not only by the router.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal, TypeVar

from pydantic import Field

from coe import plugins
from coe.config.base import Issue, RegistryView, Strict
from coe.config.sessions import SessionsConfig
from coe.errors import ConfigError


class CategoryConfig(Strict):
    expert: str = Field(description="the expert that answers prompts of this category")
    description: str = Field("", description="what the category covers; also an example for the router")
    examples: list[str] = Field(default_factory=list, description="prompts of this category")
    retrieve: bool = Field(
        False, description="retrieval gate `category`: fetch documents for prompts of this category"
    )


class FallbackConfig(Strict):
    expert: str = Field(description="the generalist that answers when the router is unsure")
    min_confidence: float = Field(
        0.45,
        ge=0,
        le=1,
        description="below this probability the prompt goes to the fallback expert (the category router's "
        "probabilities are calibrated on the registry's examples: p=0.8 is right about 80% of the time)",
    )
    min_similarity: float | None = Field(
        None,
        ge=0,
        le=1,
        description="out of scope: a prompt whose similarity to every category is below this goes to the "
        "fallback expert, as does one with no word the encoder knows; None: fitted on the examples "
        "(leave-one-out), 0: both checks off. Category router with centroid, knn or logreg on the examples",
    )


class RouterConfig(Strict):
    """The base of every router's settings. ``type`` is a registered router name, an entry point of
    the group ``coe.routers`` or a dotted path ``pkg.module:Class``."""

    type: str = Field("category", description="the router: category, cost, skills, or a plug-in")
    sessions: SessionsConfig = Field(
        default_factory=SessionsConfig, description="conversation-aware routing: follow-ups keep their expert"
    )

    def category_routes(self) -> Mapping[str, CategoryConfig]:
        """The categories this router routes to, by name (none unless the router has categories)."""
        return {}

    def fallback_expert(self) -> str | None:
        """The expert answering when the router is unsure, if the router has one."""
        return None

    def check(self, config: RegistryView) -> list[Issue]:
        """Cross-references no single model can check (an expert name that does not exist)."""
        return []


class PluginRouterConfig(RouterConfig):
    """The settings of a plug-in router that declares no model of its own."""

    options: dict[str, Any] = Field(default_factory=dict, description="settings for the plug-in router")


class AggregatorConfig(Strict):
    """The base of every aggregator's settings; ``type`` as for routers (group ``coe.aggregators``)."""

    type: str = Field("first", description="the aggregator: first, vote, synthesize, rank, or a plug-in")
    timeout_s: float | None = Field(
        None, gt=0, description="when several experts answer: the wait for each, cold start included"
    )

    def check(self, config: RegistryView) -> list[Issue]:
        """Cross-references no single model can check (an expert name that does not exist)."""
        return []


S = TypeVar("S", bound=Strict)


def settings_of(block: RouterConfig | AggregatorConfig, model: type[S]) -> S:
    """``block`` as the settings model a strategy declared. The registry validates each block against
    its type's model, so a mismatch means a strategy was built from another strategy's registry."""
    if not isinstance(block, model):
        key = "router" if isinstance(block, RouterConfig) else "aggregator"
        raise ConfigError([f"{key}: {block.type!r} settings, but {model.__name__} was expected"])
    return block


class PluginAggregatorConfig(AggregatorConfig):
    """The settings of a plug-in aggregator that declares no model of its own."""

    options: dict[str, Any] = Field(default_factory=dict, description="settings for the plug-in aggregator")


def router_config_model(name: str) -> type[RouterConfig]:
    """The settings model a ``router:`` block of this type is validated against."""
    return _config_model("routers", name, RouterConfig, PluginRouterConfig)


def aggregator_config_model(name: str) -> type[AggregatorConfig]:
    """The settings model an ``aggregator:`` block of this type is validated against."""
    return _config_model("aggregators", name, AggregatorConfig, PluginAggregatorConfig)


def _config_model(
    kind: Literal["routers", "aggregators"], name: str, base: type[S], default: type[S]
) -> type[S]:
    """What the strategy declares (``coe.plugins`` finds it), checked to be a ``base``; a plug-in that
    declares none gets ``default`` (its block is ``options:``)."""
    model = plugins.settings_model(kind, name)
    if model is None:
        return default
    if not (isinstance(model, type) and issubclass(model, base)):
        key = "router.type" if kind == "routers" else "aggregator.type"
        raise ConfigError([f"{key}: {name!r} declares Config {model!r}, which is not a {base.__name__}"])
    return model
