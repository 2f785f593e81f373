"""The registry: experts.yaml as pydantic models, with errors that name file, line and key path.

Why so strict: a typo in a YAML key that is silently ignored routes traffic to the wrong model for
weeks. Unknown keys are errors, experts and categories are mappings keyed by name (order never
matters), and every cross-reference (category -> expert) is checked before anything starts.

Layout: ``schema`` (the root model), ``experts`` (where experts live), ``routing`` (the base of every
strategy's settings; each router and aggregator declares its own model beside its code), ``loader``
(reading and checks), ``messages`` (error text). Everything users import is re-exported here.
"""

from coe.config.base import CONFIG_VERSION, Issue, RegistryView, Strict, unknown_experts
from coe.config.experts import (
    Capability,
    DeployConfig,
    ExpertConfig,
    ExpertDeploy,
    ExpertRayDeployment,
    GenerationParams,
    IngressRayDeployment,
    LlamaCppServe,
    RayAutoscaling,
    RayDeployment,
    ServeSpec,
    VllmServe,
)
from coe.config.loader import load_config, parse_config
from coe.config.routing import (
    AggregatorConfig,
    CategoryConfig,
    FallbackConfig,
    PluginAggregatorConfig,
    PluginRouterConfig,
    RouterConfig,
    settings_of,
)
from coe.config.schema import CoEConfig, EmbedderConfig, RetrievalConfig, ServerConfig, ServingConfig
from coe.config.traces import TracesConfig
from coe.errors import ConfigError  # re-exported: callers catch it where they load

__all__ = [
    "CONFIG_VERSION",
    "AggregatorConfig",
    "Capability",
    "CategoryConfig",
    "CoEConfig",
    "ConfigError",
    "DeployConfig",
    "EmbedderConfig",
    "ExpertConfig",
    "ExpertDeploy",
    "ExpertRayDeployment",
    "FallbackConfig",
    "GenerationParams",
    "IngressRayDeployment",
    "Issue",
    "LlamaCppServe",
    "PluginAggregatorConfig",
    "PluginRouterConfig",
    "RayAutoscaling",
    "RayDeployment",
    "RegistryView",
    "RetrievalConfig",
    "RouterConfig",
    "ServeSpec",
    "ServerConfig",
    "ServingConfig",
    "Strict",
    "TracesConfig",
    "VllmServe",
    "load_config",
    "parse_config",
    "settings_of",
    "unknown_experts",
]

# Strategy settings live with their strategy now (one room per strategy); say where on old imports.
_MOVED = {
    "CostRouterConfig": "routers.cost.config (the cost: block is CostSettings)",
    "LLMClassifierConfig": "routers.category.config",
    "SkillsConfig": "routers.skills.config",
}


def __getattr__(name: str) -> object:
    if name in _MOVED:  # ImportError, not AttributeError: `from coe.config import X` shows this text
        raise ImportError(f"coe.config.{name} moved to {_MOVED[name]}", name=name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
