"""The two kinds of Ray Serve replica a CoE deployment runs.

``ExpertReplica``: one replica of a managed expert, or of an adapter group (its experts share the
process, named after the first). It starts the server process through ``ExpertPool`` (the same code
that starts it on one machine: model resolution, adapters, llama-server or ``vllm serve`` command,
readiness, no orphans) and relays OpenAI HTTP to it, streams included, bodies as the ingress sent them
(their ``lora`` or ``model`` picks the adapter). Its ``check_health`` fails when that process has
exited, so Ray replaces the replica.

``IngressReplica``: the ``coe serve`` FastAPI app from ``coe.server.create_app``, unchanged, over the
registry in which managed experts are endpoints on their Serve applications. One addition, for node
loss (``LostExperts``): an expert whose application runs no replica is failed over at once.

Both are ASGI ingresses built at replica start (``__serve_build_asgi_app__``) rather than pickled,
because a CoE holds locks, processes and an HTTP pool that must live in the replica's own process.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import httpx
from ray import serve
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import ASGIApp

from coe.config import CoEConfig
from coe.errors import ExpertError
from coe.experts.pool import ExpertPool
from coe.experts.templates import turn_markers, with_turn_stops
from coe.server import ServerSettings, create_app
from coe.server.errors import error_body
from coe.server.settings import authorized

log = logging.getLogger("coe.deploy")


@serve.ingress()
class ExpertReplica:
    async def __init__(  # type: ignore[misc]  # Ray awaits it
        self, name: str, config: CoEConfig, api_keys: frozenset[str] = frozenset()
    ) -> None:
        self.name = name
        # The ingress's keys: Serve's proxy exposes this application on deploy.ray.host too, so with
        # keys set it must not be an open side door to the expert.
        self.api_keys = api_keys
        self.markers = turn_markers(config.experts[name])
        self._state_dir = tempfile.TemporaryDirectory(prefix=f"coe-ray-{name}-")
        serving = config.serving.model_copy(update={"state_dir": self._state_dir.name})
        self.pool = ExpertPool(config.model_copy(update={"serving": serving}))
        # Started here, on the replica's long-lived event-loop thread: the process's parent-death
        # signal is tied to the thread that spawned it, so it dies with this replica even on SIGKILL.
        self.upstream = (await self.pool.url_for(name)).rstrip("/")
        self.http = httpx.AsyncClient(trust_env=False, timeout=None, limits=httpx.Limits(max_connections=256))

    def __serve_build_asgi_app__(self) -> ASGIApp:
        return Starlette(
            routes=[
                Route("/v1/chat/completions", self._chat, methods=["POST"]),
                Route("/v1/models", self._get("/v1/models"), methods=["GET"]),
                Route("/health", self._get("/health", open_=True), methods=["GET"]),
            ]
        )

    async def check_health(self) -> None:
        if self.name not in self.pool.running:
            raise RuntimeError(f"expert {self.name}: its server process has exited")

    async def __del__(self) -> None:
        await self.http.aclose()
        self.pool.stop_all()
        self._state_dir.cleanup()

    def _refused(self, request: Request) -> Response | None:
        if authorized(request.headers.get("authorization", ""), self.api_keys):
            return None
        return JSONResponse(
            error_body("missing or invalid API key", "authentication_error", code="invalid_api_key"),
            status_code=401,
        )

    async def _chat(self, request: Request) -> Response:
        if (refused := self._refused(request)) is not None:
            return refused
        body = await request.body()
        if self.markers:  # the ingress sees an endpoint: the turn stops of its template are added here
            with contextlib.suppress(ValueError, TypeError, AttributeError):  # not a JSON object:
                body = json.dumps(
                    with_turn_stops(json.loads(body), self.markers)
                ).encode()  # llama-server says so
        upstream = self.http.build_request(
            "POST",
            f"{self.upstream}/chat/completions",
            content=body,
            headers={"content-type": request.headers.get("content-type", "application/json")},
        )
        return await self._relay(upstream)

    def _get(self, path: str, open_: bool = False) -> Callable[[Request], Awaitable[Response]]:
        """A GET passed through; ``open_`` ones (health) need no key, as on ``coe serve``."""
        url = self.upstream.removesuffix("/v1") + path

        async def forward(request: Request) -> Response:
            if not open_ and (refused := self._refused(request)) is not None:
                return refused
            return await self._relay(self.http.build_request("GET", url))

        return forward

    async def _relay(self, upstream: httpx.Request) -> Response:
        """Pass the expert's answer through as it comes: status, body, and SSE chunk by chunk. A
        connection failure is a 503 in OpenAI's error shape, which the ingress retries or falls back on."""
        try:
            resp = await self.http.send(upstream, stream=True)
        except httpx.TransportError as exc:
            message = f"expert {self.name}: its server is not reachable ({type(exc).__name__})"
            return JSONResponse(error_body(message, code="expert_unavailable"), status_code=503)
        media = resp.headers.get("content-type", "application/json")
        if media.startswith("text/event-stream"):
            return StreamingResponse(
                _chunks(resp), status_code=resp.status_code, media_type=media, background=_closer(resp)
            )
        content = await resp.aread()
        await resp.aclose()
        return Response(content, status_code=resp.status_code, media_type=media)


async def _chunks(resp: httpx.Response) -> AsyncIterator[bytes]:
    async for chunk in resp.aiter_raw():
        yield chunk


def _closer(resp: httpx.Response) -> BackgroundTask:
    return BackgroundTask(resp.aclose)


class LostExperts:
    """Managed experts whose Serve application runs no replica right now, watched from the ingress.

    Why: when the node that held an expert's only replicas is lost, Ray Serve's proxy does not fail
    requests for it; it queues them until a replica runs again, which for an expert pinned by its
    resources is when a node offering them joins (maybe never). The CoE's fallback would only start
    after the expert's ``timeout_s``. So the ingress asks Serve every ``period_s`` which applications
    have no RUNNING replica, and for those experts (1) a new call fails at its slot, before any HTTP,
    and (2) calls already waiting (queued in the proxy, or retrying after the lost replica's 500) are
    cancelled; both as an ``ExpertError``, so the CoE tries its next candidate exactly as for any failed
    expert. Experts that may scale to zero (``min_replicas: 0``) are not watched: for them no replica
    is normal, and a request waits for the cold start.

    A stream cut after its first token cannot fail over (as on one machine): it ends with an error."""

    def __init__(self, apps: dict[str, str], period_s: float = 0.5) -> None:
        self.apps = apps  # expert name -> its Serve application
        self.period_s = period_s
        self.down: set[str] = set()
        self._waiting: dict[str, set[asyncio.Timeout]] = {name: set() for name in apps}
        self._task: asyncio.Task[None] | None = None

    @asynccontextmanager
    async def slot(self, name: str) -> AsyncIterator[None]:
        """Entered around each expert call, before the server's own per-expert slot (create_app's
        ``guard``): a lost expert fails here, before any HTTP; a waiting call is cancelled."""
        if self._task is None:  # started here: on the event loop that serves requests
            self._task = asyncio.get_running_loop().create_task(self._watch())
        if name in self.down:
            raise ExpertError(name, self._why(name))
        waiting = self._waiting.get(name, set())
        deadline = asyncio.timeout(None)
        try:
            async with deadline:
                waiting.add(deadline)
                yield
        except TimeoutError:
            if deadline.expired():  # ours, not a timeout of the call itself
                raise ExpertError(name, self._why(name)) from None
            raise
        finally:
            waiting.discard(deadline)

    def _why(self, name: str) -> str:
        return (
            f"no replica of its Ray Serve application {self.apps[name]} is running (its node was lost?); "
            "its requests go to the next candidate until Ray places one again"
        )

    async def _watch(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                status = await asyncio.to_thread(serve.status)
            except Exception as exc:  # the controller unreachable (the head lost): keep what we knew
                log.debug("serve.status failed: %s", exc)
            else:
                down = {n for n, app in self.apps.items() if _none_running(status.applications.get(app))}
                for name in down - self.down:
                    log.warning("expert %s: %s", name, self._why(name))
                for name in self.down - down:
                    log.warning("expert %s: a replica runs again", name)
                self.down = down
                for name in down:
                    for deadline in self._waiting[name]:
                        if not deadline.expired():
                            deadline.reschedule(loop.time())
            await asyncio.sleep(self.period_s)


def _none_running(app: Any) -> bool:
    """Deployed and settled once, now without a RUNNING replica in some deployment."""
    if app is None or not app.deployments:
        return False
    return any(d.replica_states.get("RUNNING", 0) == 0 for d in app.deployments.values())


@serve.ingress()
class IngressReplica:
    def __init__(
        self, config: CoEConfig, settings: ServerSettings, watched: dict[str, str] | None = None
    ) -> None:
        self.config = config
        self.settings = settings
        self.lost = LostExperts(watched or {})

    def __serve_build_asgi_app__(self) -> Any:
        # Ray runs the app's lifespan: warm-up (the router's encoder) at start, experts' clients closed
        # at shutdown. The experts themselves are other deployments and stay up.
        return create_app(self.config, self.settings, guard=self.lost.slot)
