"""``GET /ui``: the live dashboard of ``coe serve``, and the JSON endpoints it reads.

The page is static (coe/server/ui/: HTML, JS, CSS, no build step, nothing from a CDN) and polls
``/ui/api/summary`` and ``/ui/api/recent``; ``/ui/api/trace/{id}`` is one request whole. They read the
in-process ring buffer (coe.server.observe.Recent: the live view, which works with the trace store
off), the expert pool and the per-expert limiter; feedback scores come from the trace store
(coe.traces) when the server has one (``app.state.recorder``), else the panel says there is none.

Authentication is the API's: with keys set, every /ui route needs one. A browser cannot send an
``Authorization`` header on a page load, so ``/ui?key=KEY`` checks the key once, sets an HttpOnly,
SameSite=Strict cookie scoped to /ui holding a random session token (never the key itself), and
redirects to /ui so the key leaves the address bar and the history. Tokens live in memory: a
restart asks for the key again. A header (a proxy that adds ``Authorization``) works as well.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Awaitable, Callable
from importlib import resources
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse, RedirectResponse

from coe.orchestrator import CoE
from coe.server.errors import APIError
from coe.server.limits import ExpertLimiter
from coe.server.observe import Observed, Recent
from coe.server.settings import authorized

COOKIE = "coe_ui"
_ASSETS = {"app.js": "text/javascript", "style.css": "text/css", "index.html": "text/html"}


def handlers(
    app: FastAPI, coe: CoE, limiter: ExpertLimiter, recent: Recent, keys: frozenset[str]
) -> dict[str, Callable[..., Awaitable[Response]]]:
    """The handlers of /ui and /ui/api/*, by their name in the route table (coe/server/routes.py)."""
    sessions: set[str] = set()
    feedback_cache = _Every(10.0, feedback_scores)

    def allowed(request: Request) -> bool:
        headers = request.headers
        if authorized(headers.get("authorization", ""), keys, headers.get("x-api-key", "")):
            return True
        token = request.cookies.get(COOKIE, "")
        return bool(token) and any(secrets.compare_digest(token, t) for t in sessions)

    def authorize(request: Request) -> None:
        if not allowed(request):
            raise APIError(
                401,
                "missing or invalid API key: open /ui?key=KEY once, or send Authorization: Bearer KEY",
                code="invalid_api_key",
            )

    async def page(request: Request) -> Response:
        key = request.query_params.get("key")
        if key is not None:
            if not authorized(f"Bearer {key}", keys):
                raise APIError(401, "invalid API key in ?key=", code="invalid_api_key")
            token = secrets.token_urlsafe(32)
            sessions.add(token)
            reply = RedirectResponse("/ui", status_code=303)
            secure = request.url.scheme == "https"
            reply.set_cookie(COOKIE, token, httponly=True, samesite="strict", path="/ui", secure=secure)
            return reply
        authorize(request)
        return _asset("index.html")

    async def static(name: str, request: Request) -> Response:
        authorize(request)
        if name not in _ASSETS or name == "index.html":
            raise APIError(404, f"no dashboard asset {name!r}", code="not_found")
        return _asset(name)

    async def summary(request: Request) -> JSONResponse:
        authorize(request)
        experts = await expert_states(coe, limiter, recent)
        state = app.state
        feedback = await feedback_cache.get(
            getattr(state, "recorder", None), getattr(state, "feedback_taken", 0)
        )
        return JSONResponse(summary_of(recent, experts, feedback))

    async def recent_list(request: Request) -> JSONResponse:
        authorize(request)
        try:
            limit = max(1, min(recent.size, int(request.query_params.get("limit", "50"))))
        except ValueError:
            raise APIError(400, "limit must be an integer", param="limit") from None
        items = recent.items()[-limit:][::-1]
        return JSONResponse({"object": "list", "size": recent.size, "data": [row_of(s) for s in items]})

    async def trace_of(rid: str, request: Request) -> JSONResponse:
        authorize(request)
        seen = recent.get(rid)
        if seen is None:
            raise APIError(
                404, f"no request {rid!r} among the last {recent.size} (the live view)", code="not_found"
            )
        body = row_of(seen)
        body["trace"] = seen.trace.model_dump(mode="json") if seen.trace is not None else None
        body["answer_text_chars"] = len(seen.answer.text) if seen.answer is not None else None
        return JSONResponse(body)

    return {
        "ui": page,
        "ui_static": static,
        "ui_summary": summary,
        "ui_recent": recent_list,
        "ui_trace": trace_of,
    }


def _asset(name: str) -> Response:
    data = resources.files("coe.server").joinpath("ui", name).read_bytes()
    return Response(data, media_type=_ASSETS[name], headers={"Cache-Control": "no-cache"})


def row_of(seen: Observed) -> dict[str, Any]:
    """One request in /ui/api/recent."""
    trace, answer = seen.trace, seen.answer
    decision = trace.decision if trace is not None else None
    return {
        "id": seen.id,
        "time": round(seen.started_ns / 1e9, 3),
        "endpoint": seen.path,
        "model": seen.model,
        "status": seen.status,
        "stream": seen.stream,
        "expert": answer.expert if answer is not None else None,
        "router": decision.router if decision is not None else None,
        "category": decision.category if decision is not None else None,
        "confidence": decision.confidence if decision is not None else None,
        "fallback": trace.fallback_used if trace is not None else False,
        "cache": trace.cache.status if trace is not None and trace.cache is not None else None,
        "duration_ms": seen.duration_ms,
        "prompt_tokens": answer.usage.prompt_tokens if answer is not None else 0,
        "completion_tokens": answer.usage.completion_tokens if answer is not None else 0,
        "error": seen.error,
        "code": seen.code,
    }


def dashboard_state(state: str, detail: str) -> str:
    """The pool's state in the dashboard's words: ready, starting, cold, asleep, or down (a process
    that failed to start or died, an endpoint that does not answer)."""
    if state == "external":
        return "down" if detail == "unreachable" else "ready"
    if state == "failed" or (state == "cold" and detail):
        return "down"
    return state


async def expert_states(coe: CoE, limiter: ExpertLimiter, recent: Recent) -> list[dict[str, Any]]:
    out = []
    for s in await coe.pool.status():
        admitted = limiter.in_flight(s.name)
        limit = limiter.concurrency.get(s.name, 8)
        tried, failed = recent.attempts[s.name], recent.attempt_errors[s.name]
        out.append(
            {
                "name": s.name,
                "state": dashboard_state(s.state, s.detail),
                "pool_state": s.state,
                "detail": s.detail,
                "load": min(admitted, limit),
                "concurrency": limit,
                "queue": max(0, admitted - limit),
                "answered": recent.answered_by[s.name],
                "attempts": tried,
                "errors": failed,
                "error_rate": round(failed / tried, 4) if tried else 0.0,
            }
        )
    return out


def summary_of(
    recent: Recent,
    experts: list[dict[str, Any]],
    feedback: dict[str, Any],
    now: Callable[[], float] = time.time,
) -> dict[str, Any]:
    """The body of /ui/api/summary."""
    return {
        "uptime_s": round(now() - recent.started, 1),
        "requests": {"total": recent.total, "failed": recent.failed, "per_second": recent.rate(now=now())},
        "latency_ms": recent.stage_latency(),
        "categories": dict(recent.categories.most_common()),
        "fallbacks": recent.fallbacks,
        "cache": dict(recent.cache),
        "signals": dict(recent.signals),
        "experts": experts,
        "feedback": feedback,
        "window": recent.size,
    }


class _Every:
    """Recompute at most every ``period_s``, or when ``version`` moved (this server took feedback):
    the page polls each second, and reading feedback joins every row with its record in SQLite.
    The period still matters: another replica, or ``coe judge``, may write the same store."""

    def __init__(self, period_s: float, compute: Callable[[object], dict[str, Any]]) -> None:
        self.period_s = period_s
        self.compute = compute
        self.value: dict[str, Any] | None = None
        self.at = 0.0
        self.version = 0

    async def get(self, source: object, version: int = 0) -> dict[str, Any]:
        stale = self.value is None or version != self.version or time.monotonic() - self.at >= self.period_s
        if stale:
            self.value = await asyncio.to_thread(self.compute, source)
            self.at, self.version = time.monotonic(), version
        assert self.value is not None
        return self.value


def feedback_scores(recorder: object) -> dict[str, Any]:
    """Mean feedback score per expert and per category from the trace store (the latest 5,000
    grades), or why there is none. Read duck-typed from ``recorder.store`` (coe.traces.TraceStore's
    ``feedback_means``), so the server needs the store only when it has one."""
    store = getattr(recorder, "store", None)
    if store is None or not hasattr(store, "feedback_means"):
        return {
            "store": False,
            "reason": "no feedback store (the trace store is off)",
            "experts": {},
            "categories": {},
        }
    table = {
        kind: {
            name: {"mean": round(mean, 4), "count": n}
            for name, (mean, n) in store.feedback_means(column).items()
        }
        for kind, column in (("experts", "expert"), ("categories", "category"))
    }
    return {"store": True, "reason": "", **table}
