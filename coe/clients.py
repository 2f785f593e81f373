"""Talking to experts over OpenAI-compatible HTTP, plus the litellm path for ``provider:`` experts.

One pooled ``aiohttp.ClientSession`` per CoE (created inside the running loop, never at import time).
Retries with exponential backoff cover connection errors, 429 and 5xx, and, for streams, only what
happens before the first byte: after that a retry would duplicate text the caller already has.
litellm adds milliseconds per call over a reused client (docs/benchmarks), so it is never used for
local experts.

Why aiohttp and not httpx: at high concurrency httpx's connection pool costs many times aiohttp's
CPU per request, and its throughput fell as concurrency rose (measured on a bare ASGI proxy:
docs/benchmarks/line_rate.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from coe.errors import BadReply, ExpertError

if TYPE_CHECKING:
    import aiohttp

RETRY_STATUS = {429, 500, 502, 503, 504}


class StreamBroken(Exception):
    """The expert's stream ended badly (an error event, or cut without an end): retryable before
    the first chunk, a failed answer after it."""


class ChatClient:
    def __init__(self, max_connections: int = 64, backoff_s: float = 0.25) -> None:
        self._http: aiohttp.ClientSession | None = None
        self._http_loop: asyncio.AbstractEventLoop | None = None
        self._max_connections = max_connections
        self.backoff_s = backoff_s

    @property
    def http(self) -> aiohttp.ClientSession:
        loop = asyncio.get_running_loop()
        if self._http is not None and self._http_loop is not loop:
            self._http = None  # a session belongs to the loop it was made in (a library's earlier run)
        if self._http is None or self._http.closed:
            import aiohttp

            # trust_env=False (aiohttp's default): a proxy from the environment must never see
            # loopback expert traffic. Up to max_connections per expert host, kept alive.
            connector = aiohttp.TCPConnector(
                limit=0, limit_per_host=self._max_connections, ttl_dns_cache=None
            )
            self._http = aiohttp.ClientSession(
                connector=connector, trust_env=False, timeout=aiohttp.ClientTimeout(total=None)
            )
            self._http_loop = loop
        return self._http

    async def post_json(self, expert: str, url: str, body: dict[str, Any], timeout_s: float) -> Any:
        """One JSON POST to an engine's own endpoint (llama-server's /apply-template, /tokenize): no
        retries; any failure is an ExpertError, since callers of these have an answer without them."""
        import aiohttp

        try:
            async with asyncio.timeout(timeout_s), self.http.post(url, json=body) as resp:
                resp.raise_for_status()
                return await resp.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            raise ExpertError(expert, f"{url}: {type(exc).__name__}: {exc}") from None

    async def aclose(self) -> None:
        if self._http is not None:
            await self._http.close()
            self._http = None

    async def chat(
        self,
        expert: str,
        base_url: str,
        payload: dict[str, Any],
        *,
        api_key: str | None = None,
        timeout_s: float = 120.0,
        retries: int = 2,
    ) -> dict[str, Any]:
        """POST /chat/completions and return the JSON body; ExpertError names the expert and why."""
        import aiohttp

        url = _chat_url(base_url)
        body = json.dumps({**payload, "stream": False})
        last = "no attempt made"
        for attempt in range(retries + 1):
            try:
                async with asyncio.timeout(timeout_s):
                    async with self.http.post(url, data=body, headers=_headers(api_key)) as resp:
                        raw = await resp.read()
            except TimeoutError:
                raise ExpertError(expert, f"timed out after {timeout_s:g}s ({url})") from None
            except aiohttp.ClientError as exc:
                last = f"cannot reach {url}: {type(exc).__name__}: {exc}".rstrip(": ")
            else:
                if resp.status == 200:
                    try:
                        answer: dict[str, Any] = json.loads(raw)
                        return answer
                    except ValueError:
                        raise BadReply(expert, f"the reply is not JSON ({url})") from None
                last = f"HTTP {resp.status} from {url}: {_snippet(raw.decode(errors='replace'))}"
                if resp.status not in RETRY_STATUS:
                    break
            if attempt < retries:
                await asyncio.sleep(self.backoff_s * 2**attempt)
        raise ExpertError(expert, last)

    async def stream(
        self,
        expert: str,
        base_url: str,
        payload: dict[str, Any],
        *,
        api_key: str | None = None,
        timeout_s: float = 120.0,
        retries: int = 2,
    ) -> AsyncIterator[dict[str, Any]]:
        """Yield the parsed SSE chunks of a streamed completion. ``timeout_s`` bounds the wait for
        the response's head and for each chunk after it."""
        import aiohttp

        url = _chat_url(base_url)
        body = json.dumps({**payload, "stream": True, "stream_options": {"include_usage": True}})
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=timeout_s, sock_read=timeout_s)
        last = "no attempt made"
        for attempt in range(retries + 1):
            started = False
            try:
                async with self.http.post(url, data=body, headers=_headers(api_key), timeout=timeout) as resp:
                    if resp.status != 200:
                        text = (await resp.read()).decode(errors="replace")
                        last = f"HTTP {resp.status} from {url}: {_snippet(text)}"
                        if resp.status not in RETRY_STATUS:
                            break
                    else:
                        async for chunk in _sse_events(resp):
                            started = True
                            yield chunk
                        return
            except TimeoutError:
                raise ExpertError(expert, f"timed out after {timeout_s:g}s ({url})") from None
            except (aiohttp.ClientError, StreamBroken) as exc:
                if started:
                    raise ExpertError(expert, f"stream broke after the first token: {exc}") from None
                last = f"cannot reach {url}: {type(exc).__name__}: {exc}".rstrip(": ")
            if attempt < retries:
                await asyncio.sleep(self.backoff_s * 2**attempt)
        raise ExpertError(expert, last)


async def _lines(resp: aiohttp.ClientResponse) -> AsyncIterator[str]:
    """The body's lines, without their line ends; bytes that are not UTF-8 become U+FFFD (an expert's
    garbled character must not cost the whole answer)."""
    async for raw in resp.content:
        yield raw.decode(errors="replace").rstrip("\r\n")


async def _sse_events(resp: aiohttp.ClientResponse) -> AsyncIterator[dict[str, Any]]:
    """Parse SSE. A stream that ends with neither ``[DONE]`` nor a finish_reason was cut off: over
    HTTP/1.1 without chunking a dropped connection looks like a normal end of body."""
    data: list[str] = []
    finished = seen = False
    lines = _lines(resp)
    async for line in lines:
        if line.startswith("data:"):
            data.append(line[5:].lstrip())
        elif line == "" and data:
            payload, data = "\n".join(data), []
            if payload == "[DONE]":
                await _read_to_end(lines)
                return
            event = json.loads(payload)
            if isinstance(event, dict) and "error" in event:
                raise StreamBroken(f"error event in stream: {event['error']}")
            finished = finished or any(c.get("finish_reason") for c in event.get("choices") or [])
            seen = True
            yield event
    if data and data != ["[DONE]"]:
        yield json.loads("\n".join(data))
    elif not seen:  # a 200 whose body holds no event at all: an unreadable reply, not a cut one
        raise ValueError("the stream holds no data events")
    elif not finished:
        raise StreamBroken("stream ended without [DONE] or a finish_reason")


async def _read_to_end(lines: AsyncIterator[str], within_s: float = 1.0) -> None:
    """Read what follows ``[DONE]`` (the end of the chunked body): a connection goes back to the
    pool only once its body is read to the end, so returning at ``[DONE]`` would open a new TCP
    connection to the expert for every streamed request. A server that keeps the body open after
    ``[DONE]`` costs at most ``within_s``, and that connection is closed instead."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(within_s):
            async for _ in lines:
                pass


async def provider_chat(
    expert: str,
    provider: str,
    payload: dict[str, Any],
    api_key: str | None,
    timeout_s: float,
    api_base: str | None = None,
) -> dict[str, Any]:
    """Call a hosted model through litellm (imported here, on first use only)."""
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # otherwise it fetches at import
    try:
        import litellm
    except ImportError:
        raise ExpertError(expert, "provider experts need litellm: pip install litellm==1.106.2") from None
    params = {k: v for k, v in payload.items() if k not in {"model", "stream"}}
    try:
        resp = await litellm.acompletion(
            model=provider, api_key=api_key, api_base=api_base, timeout=timeout_s, num_retries=0, **params
        )
    except Exception as exc:  # litellm wraps every provider error in its own hierarchy
        raise ExpertError(expert, f"{provider}: {type(exc).__name__}: {exc}") from None
    answer: dict[str, Any] = resp.model_dump()
    return answer


def _chat_url(base_url: str) -> str:
    base = base_url.rstrip("/")
    return base + "/chat/completions" if base.endswith("/v1") else base + "/v1/chat/completions"


def _headers(api_key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


def _snippet(text: str, limit: int = 200) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit] + "..."
