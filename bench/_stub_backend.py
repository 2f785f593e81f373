"""A stand-in for llama-server in ``gateway_peers.py --backends stub``: an OpenAI-compatible chat
endpoint that answers ``max_tokens`` words, one every ``--token-ms``, streamed or whole.

It exists so that the bench's harness (process start and stop, rounds, the kill and the restart, the
JSON it writes) can be checked in seconds without models; its latencies say nothing about any gateway.
It also takes llama-server's own command line (``--alias`` names the model, the other flags are
ignored), so that ``COE_LLAMA_SERVER`` pointing at a wrapper that runs it makes every managed
llama.cpp expert a stub (bench/ray_multinode.py, tests/e2e/test_deploy_ray_multinode.py).

    python bench/_stub_backend.py --port 8081 --model smollm2-135m-instruct
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse


def create(model: str, token_s: float) -> FastAPI:
    app = FastAPI()

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Any:
        body = await request.json()
        n = int(body.get("max_tokens") or 8)
        words = [f"w{i}" for i in range(n)]
        usage = {"prompt_tokens": 10, "completion_tokens": n, "total_tokens": 10 + n}
        base = {"id": f"chatcmpl-{uuid.uuid4().hex}", "created": int(time.time()), "model": model}
        if not body.get("stream"):
            await asyncio.sleep(token_s * n)
            message = {"role": "assistant", "content": " ".join(words)}
            choice = {"index": 0, "message": message, "finish_reason": "length"}
            return JSONResponse({**base, "object": "chat.completion", "choices": [choice], "usage": usage})

        async def events() -> AsyncIterator[bytes]:
            for i, word in enumerate(words):
                await asyncio.sleep(token_s)
                finish = "length" if i == n - 1 else None
                delta = {"content": word if i == 0 else " " + word}
                chunk = {"index": 0, "delta": delta, "finish_reason": finish}
                yield _sse({**base, "object": "chat.completion.chunk", "choices": [chunk]})
            yield _sse({**base, "object": "chat.completion.chunk", "choices": [], "usage": usage})
            yield b"data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    return app


def _sse(body: dict[str, Any]) -> bytes:
    return f"data: {json.dumps(body)}\n\n".encode()


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--model", required=True, help="the model id it answers as (llama-server: a path)")
    p.add_argument("--alias", help="llama-server's: the model id, over --model")
    p.add_argument("--token-ms", type=float, default=2.0)
    args, _ = p.parse_known_args()  # llama-server's other flags: --ctx-size, --threads, ...
    uvicorn.run(
        create(args.alias or args.model, args.token_ms / 1000),
        host="127.0.0.1",
        port=args.port,
        log_level="warning",
    )
