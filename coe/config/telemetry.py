"""``telemetry``: OpenTelemetry traces of what ``coe serve`` did (coe/server/telemetry.py).

Off unless ``otlp_endpoint`` is set; then each request becomes one span with a child per stage, sent
over OTLP/HTTP (protobuf) to a collector. The opentelemetry packages are the ``telemetry`` extra and
are imported only when this block turns it on.
"""

from __future__ import annotations

from pydantic import Field

from coe.config.base import Strict


class TelemetryConfig(Strict):
    """Where spans go and what they are called. Without ``otlp_endpoint`` nothing is exported and
    opentelemetry is never imported."""

    otlp_endpoint: str | None = Field(
        None,
        description="the OTLP/HTTP traces URL, e.g. http://collector:4318/v1/traces; None: telemetry off",
    )
    service_name: str = Field("coe", min_length=1, description="the service.name resource attribute")
    headers: dict[str, str] = Field(
        default_factory=dict, description="extra HTTP headers on each export (e.g. a collector's auth)"
    )
    timeout_s: float = Field(10.0, gt=0, description="how long one export may take")
    sample_ratio: float = Field(
        1.0, ge=0, le=1, description="share of requests traced (a caller's sampled traceparent wins)"
    )
    resource: dict[str, str] = Field(
        default_factory=dict, description="more resource attributes (deployment.environment, ...)"
    )
