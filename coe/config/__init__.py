"""The registry: experts.yaml as pydantic models, with errors that name file, line and key path.

Why so strict: a typo in a YAML key that is silently ignored routes traffic to the wrong model for
weeks. Unknown keys are errors, experts and categories are mappings keyed by name (order never
matters), and every cross-reference (category -> expert) is checked before anything starts.

Layout: ``schema`` (the root model), ``experts`` and ``routing`` (their blocks), ``loader`` (reading
and checks), ``messages`` (error text). Everything users import is re-exported here.
"""

from coe.config.base import CONFIG_VERSION
from coe.config.experts import (
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
    CostRouterConfig,
    FallbackConfig,
    LLMClassifierConfig,
    RouterConfig,
    SkillsConfig,
)
from coe.config.schema import CoEConfig, EmbedderConfig, RetrievalConfig, ServerConfig, ServingConfig
from coe.errors import ConfigError  # re-exported: callers catch it where they load

__all__ = [
    "CONFIG_VERSION",
    "AggregatorConfig",
    "CategoryConfig",
    "CoEConfig",
    "ConfigError",
    "CostRouterConfig",
    "DeployConfig",
    "EmbedderConfig",
    "ExpertConfig",
    "ExpertDeploy",
    "ExpertRayDeployment",
    "FallbackConfig",
    "GenerationParams",
    "IngressRayDeployment",
    "LLMClassifierConfig",
    "LlamaCppServe",
    "RayAutoscaling",
    "RayDeployment",
    "RetrievalConfig",
    "RouterConfig",
    "ServeSpec",
    "ServerConfig",
    "ServingConfig",
    "SkillsConfig",
    "VllmServe",
    "load_config",
    "parse_config",
]
