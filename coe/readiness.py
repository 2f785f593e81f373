"""What stops a CoE from answering, found before the first request: each strategy object that can
fail to build is built now, and a failure is reported under the registry key that caused it.

Why here and not on the first request: a router artefact that cannot be loaded used to surface as a
500 on every request while /readyz said nothing. ``coe serve`` calls ``problems`` at start-up, so
/readyz and the generating routes answer 503 naming the key instead.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from coe.orchestrator import CoE


def problems(coe: CoE) -> dict[str, str]:
    """Registry key path -> why it cannot be used; empty when every strategy object builds."""
    try:
        coe.router  # noqa: B018 - building it is the check (it loads the artefact and its encoder)
    except Exception as exc:
        key = "router.model" if getattr(coe.config.router, "model", None) else "router"
        return {key: str(exc) or type(exc).__name__}
    return {}
