"""Every route of ``coe serve`` in one table: path, methods, name, who builds its handler (``kind``)
and whether it generates. The app registers the routes from it, the metrics label requests by its
fixed paths (anything else is ``other``), and the observer watches its generating paths; so adding a
route is one row here and one handler under its name.

Kinds: ``generate`` (an ApiAdapter through the Gateway, built by the app), ``api`` and ``probe``
(the app's own), ``dashboard`` (coe/server/dashboard.py).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Literal

from fastapi import FastAPI, Response

from coe.server.apis import chat, completions, messages, responses
from coe.server.apis.policy import EMBEDDINGS
from coe.server.gateway import ApiAdapter

Handler = Callable[..., Awaitable[Response]]
Kind = Literal["generate", "api", "probe", "dashboard"]


@dataclass(frozen=True)
class Route:
    path: str
    methods: tuple[str, ...]
    name: str
    kind: Kind

    @property
    def generates(self) -> bool:
        return self.kind == "generate"


# The generating APIs by name (their field tables name them: chat, responses, messages, completions).
ADAPTERS: dict[str, ApiAdapter] = {
    a.info.name: a for a in (chat.ADAPTER, responses.ADAPTER, messages.ADAPTER, completions.ADAPTER)
}

ROUTES: tuple[Route, ...] = (
    *(Route(a.info.path, (a.info.method,), name, "generate") for name, a in ADAPTERS.items()),
    Route("/v1/messages/count_tokens", ("POST",), "count_tokens", "api"),
    Route(EMBEDDINGS.path, (EMBEDDINGS.method,), "embeddings", "api"),
    Route("/v1/feedback", ("POST",), "feedback", "api"),
    Route("/v1/models", ("GET",), "models", "api"),
    Route("/healthz", ("GET",), "healthz", "probe"),
    Route("/readyz", ("GET",), "readyz", "probe"),
    Route("/metrics", ("GET",), "metrics", "probe"),
    Route("/ui", ("GET",), "ui", "dashboard"),
    Route("/ui/static/{name}", ("GET",), "ui_static", "dashboard"),
    Route("/ui/api/summary", ("GET",), "ui_summary", "dashboard"),
    Route("/ui/api/recent", ("GET",), "ui_recent", "dashboard"),
    Route("/ui/api/trace/{rid}", ("GET",), "ui_trace", "dashboard"),
)

GENERATING = frozenset(r.path for r in ROUTES if r.generates)  # what the observer records
KNOWN = frozenset(r.path for r in ROUTES if "{" not in r.path)  # the metrics' endpoint labels


def names(kind: Kind) -> list[str]:
    return [r.name for r in ROUTES if r.kind == kind]


def register(app: FastAPI, handlers: Mapping[str, Handler]) -> None:
    """Add every route of the table with the handler of its name. A route without a handler, or a
    handler without a route, fails here at start-up rather than as a 404 later. The generating
    routes are Starlette's own: their handlers take the request and nothing else, and FastAPI's
    per-request dependency machinery cost a fifth of a pinned request's time on the event loop
    (docs/benchmarks/line_rate.md)."""
    wanted = {r.name for r in ROUTES}
    if set(handlers) != wanted:
        raise RuntimeError(f"route table and handlers differ: {sorted(set(handlers) ^ wanted)}")
    from starlette.routing import Route as PlainRoute

    for r in ROUTES:
        if r.generates:  # (request) -> Response: no FastAPI dependency solving per request
            app.router.routes.append(
                PlainRoute(r.path, handlers[r.name], methods=list(r.methods), name=r.name)
            )
        else:
            app.add_api_route(r.path, handlers[r.name], methods=list(r.methods), name=r.name)
