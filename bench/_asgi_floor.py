"""The Python stack's floor for bench/line_rate.py: a bare ASGI app on the same uvicorn that checks
the bearer key and forwards the body to the canned backend with one pooled HTTP client (``httpx``,
as CoE did, or ``aiohttp``, as it does now). No routing, no validation, no traces: what any Python
gateway on this stack pays.

    python bench/_asgi_floor.py --port 8001 --upstream http://127.0.0.1:8080/whole/v1 --key sk-...
"""

from __future__ import annotations

import argparse
from collections.abc import Awaitable, Callable
from typing import Any

import uvicorn

Post = Callable[[bytes], Awaitable[tuple[int, bytes, bytes]]]


def poster(kind: str, url: str) -> Post:
    """One POST through a client made on first use (inside the running loop)."""
    made: dict[str, Any] = {}
    if kind == "httpx":
        import httpx

        async def post(body: bytes) -> tuple[int, bytes, bytes]:
            client = made.get("c") or made.setdefault("c", httpx.AsyncClient(trust_env=False, timeout=None))
            resp = await client.post(url, content=body)
            return resp.status_code, resp.headers.get("content-type", "").encode(), resp.content

        return post
    import aiohttp

    async def post_aiohttp(body: bytes) -> tuple[int, bytes, bytes]:
        session = made.get("s") or made.setdefault("s", aiohttp.ClientSession())
        async with session.post(url, data=body) as resp:
            return resp.status, resp.headers.get("content-type", "").encode(), await resp.read()

    return post_aiohttp


def make_app(post: Post, key: str) -> Any:
    auth = f"Bearer {key}".encode()

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        status, ctype, content = 200, b"text/plain", b"ok"  # any other path: the readiness probe
        if scope["path"] == "/v1/chat/completions":
            if dict(scope["headers"]).get(b"authorization") != auth:
                status, content = 401, b""
            else:
                status, ctype, content = await post(body)
        await send({"type": "http.response.start", "status": status, "headers": [(b"content-type", ctype)]})
        await send({"type": "http.response.body", "body": content})

    return app


def from_env() -> Any:
    """The app of one worker of ``--workers N``."""
    import os

    client, upstream, key = os.environ["FLOOR_ARGS"].split("|")
    return make_app(poster(client, upstream + "/chat/completions"), key)


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--upstream", required=True)
    p.add_argument("--key", required=True)
    p.add_argument("--client", choices=["httpx", "aiohttp"], default="httpx")
    p.add_argument("--loop", default="auto", help="uvicorn's: auto (uvloop when installed), asyncio, uvloop")
    p.add_argument(
        "--http", default="auto", help="uvicorn's: auto (httptools when installed), h11, httptools"
    )
    p.add_argument("--workers", type=int, default=1)
    a = p.parse_args()
    app = make_app(poster(a.client, a.upstream + "/chat/completions"), a.key)
    if a.workers > 1:  # uvicorn forks workers from an import string, not from an app object
        import os

        os.environ["FLOOR_ARGS"] = f"{a.client}|{a.upstream}|{a.key}"
        uvicorn.run("_asgi_floor:from_env", factory=True, host="127.0.0.1", port=a.port, log_level="warning",
                    loop=a.loop, http=a.http, workers=a.workers)  # fmt: skip
    else:
        uvicorn.run(app, host="127.0.0.1", port=a.port, log_level="warning", loop=a.loop, http=a.http)
