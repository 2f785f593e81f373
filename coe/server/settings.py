"""Server settings: the registry's ``server:`` block, overridden by ``coe serve`` flags, plus keys
from the environment. One frozen object so the app never reads configuration from two places.

It also holds the one rule about exposure: an API without keys is served on loopback only, unless
the operator says ``--allow-unauthenticated``. Why a refusal and not a warning: `coe serve --host
0.0.0.0` with no keys used to start an open API on every interface, and a warning in a start-up log
is easy to miss; a refusal that says how to set keys costs one re-run."""

from __future__ import annotations

import hmac
import ipaddress
import os
import socket
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
    host: str = _YAML["host"].default  # where the API listens; decides whether keys are required
    allow_unauthenticated: bool = False  # serve without keys on a non-loopback host, on purpose
    ui_recent: int = 500  # requests the dashboard's live view keeps (GET /ui/api/recent)

    @classmethod
    def from_config(cls, server: ServerConfig, warm: bool = True, **overrides: Any) -> ServerSettings:
        """YAML values, then flags that were given (None means "not given"), keys from both places."""
        values: dict[str, Any] = {
            "max_body_bytes": server.max_body_bytes,
            "max_tokens_limit": server.max_tokens,
            "max_concurrency": server.max_concurrency,
            "max_queue": server.max_queue,
            "unknown_fields": server.unknown_fields,
            "host": server.host,
        }
        values.update({k: v for k, v in overrides.items() if v is not None})
        keys = {k.get_secret_value() for k in server.api_keys if k.get_secret_value().strip()}
        return cls(api_keys=frozenset(keys) | cls.keys_from_env(), warm=warm, **values)

    @staticmethod
    def keys_from_env(value: str | None = None) -> frozenset[str]:
        """``COE_API_KEYS=key1,key2``; blanks are dropped so a trailing comma opens nothing."""
        raw = os.environ.get("COE_API_KEYS", "") if value is None else value
        return frozenset(k.strip() for k in raw.split(",") if k.strip())

    @property
    def unauthenticated_exposure(self) -> bool:
        """No keys, on an address other machines can reach."""
        return not self.api_keys and not is_loopback(self.host)

    def refusal(self, host_setting: str = "--host") -> str | None:
        """Why this server must not start (an open API on a public address), or None.
        ``host_setting``: where the address came from, so the message says what to change."""
        if not self.unauthenticated_exposure or self.allow_unauthenticated:
            return None
        return (
            f"refusing to serve an API without keys on {self.host!r}, which is not a loopback address: "
            "anyone who can reach it could use every expert. Set keys with server.api_keys in the "
            "registry (e.g. api_keys: ['${COE_API_KEY}']) or COE_API_KEYS=key1,key2 in the environment, "
            f"set {host_setting} to 127.0.0.1, or pass --allow-unauthenticated to serve it open on purpose"
        )

    def exposure_warning(self) -> str | None:
        """What the start-up log and /readyz say about an API served open on purpose."""
        if not self.unauthenticated_exposure:
            return None
        return (
            f"serving without API keys on {self.host!r} (--allow-unauthenticated): anyone who can "
            "reach this address can use every expert"
        )


def authorized(authorization: str, keys: frozenset[str], x_api_key: str = "") -> bool:
    """Whether a request carries one of ``keys``: as a bearer token in ``Authorization``, or in
    Anthropic's ``x-api-key`` header (its SDK sends that one). Any request passes when there are no
    keys. Compared in constant time; the offered key is never logged."""
    if not keys:
        return True
    scheme, _, token = authorization.partition(" ")
    offered = (token.strip() if scheme.lower() == "bearer" else x_api_key.strip()).encode()
    return bool(offered) and any(hmac.compare_digest(offered, key.encode()) for key in keys)


def is_loopback(host: str) -> bool:
    """True when every address ``host`` names is a loopback one. The wildcard ("", 0.0.0.0, ::) is
    every interface; a name that does not resolve counts as exposed (the safe side)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        pass
    if not host:
        return False
    try:
        infos = socket.getaddrinfo(host, None)
    except OSError:
        return False
    addresses = {info[4][0] for info in infos}
    return bool(addresses) and all(ipaddress.ip_address(str(a).split("%")[0]).is_loopback for a in addresses)
