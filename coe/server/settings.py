"""Server settings: the registry's ``server:`` block, overridden by ``coe serve`` flags, plus keys
from the environment. One frozen object so the app never reads configuration from two places."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Literal

from coe.config import ServerConfig

_YAML = ServerConfig.model_fields  # the defaults live in one place: the registry's server: block


@dataclass(frozen=True)
class ServerSettings:
    api_keys: frozenset[str] = field(default_factory=frozenset)  # empty: no authentication
    max_body_bytes: int = _YAML["max_body_bytes"].default
    max_tokens_limit: int = _YAML["max_tokens"].default
    max_concurrency: int | None = _YAML["max_concurrency"].default  # per expert; None: ExpertConfig.slots
    max_queue: int = _YAML["max_queue"].default  # per expert, waiting beyond the concurrency limit; then 429
    warm: bool = True  # start the router and every managed expert at startup, for /readyz
    unknown_fields: Literal["refuse", "forward"] = _YAML["unknown_fields"].default  # see ServerConfig

    @classmethod
    def from_config(cls, server: ServerConfig, warm: bool = True, **overrides: Any) -> ServerSettings:
        """YAML values, then flags that were given (None means "not given"), keys from both places."""
        values: dict[str, Any] = {
            "max_body_bytes": server.max_body_bytes,
            "max_tokens_limit": server.max_tokens,
            "max_concurrency": server.max_concurrency,
            "max_queue": server.max_queue,
            "unknown_fields": server.unknown_fields,
        }
        values.update({k: v for k, v in overrides.items() if v is not None})
        keys = {k.get_secret_value() for k in server.api_keys if k.get_secret_value().strip()}
        return cls(api_keys=frozenset(keys) | cls.keys_from_env(), warm=warm, **values)

    @staticmethod
    def keys_from_env(value: str | None = None) -> frozenset[str]:
        """``COE_API_KEYS=key1,key2``; blanks are dropped so a trailing comma opens nothing."""
        raw = os.environ.get("COE_API_KEYS", "") if value is None else value
        return frozenset(k.strip() for k in raw.split(",") if k.strip())
