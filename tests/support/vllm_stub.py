"""A stand-in for ``vllm serve`` on machines without a GPU: same command line, same sleep-mode HTTP
contract (vLLM 0.33.0's /health, /sleep, /wake_up, /is_sleeping; the sleep endpoints only with
VLLM_SERVER_DEV_MODE=1, 503 on completions while asleep), and multi-LoRA as vLLM documents it
(``--enable-lora --lora-modules NAME=PATH ... --max-loras N``: a request's ``model`` names the base's
served name or an adapter, anything else is a 404). It checks the contract CoE relies on, not vLLM
itself.

    python tests/vllm_stub.py serve MODEL --port P [--served-model-name NAME ...]

Writes one JSON line per start (argv and the dev-mode variable) to $COE_VLLM_STUB_LOG if set.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("command", choices=["serve"])
    parser.add_argument("model")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--served-model-name", nargs="+", default=None)
    parser.add_argument("--gpu-memory-utilization", type=float, default=0.9)
    parser.add_argument("--max-num-seqs", type=int, default=256)
    parser.add_argument("--max-model-len", type=int, default=None)
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--enable-sleep-mode", action="store_true")
    parser.add_argument("--enable-lora", action="store_true")
    parser.add_argument("--lora-modules", nargs="+", default=[])
    parser.add_argument("--max-loras", type=int, default=1)
    parser.add_argument("--max-lora-rank", type=int, default=16)
    args = parser.parse_args(argv)
    if args.lora_modules and not args.enable_lora:
        parser.error("--lora-modules needs --enable-lora")
    loras = dict(m.split("=", 1) for m in args.lora_modules)
    if len(loras) > args.max_loras:
        print(f"warning: {len(loras)} adapters, only {args.max_loras} at once", file=sys.stderr)
    dev_mode = os.environ.get("VLLM_SERVER_DEV_MODE") == "1"
    if log := os.environ.get("COE_VLLM_STUB_LOG"):
        with open(log, "a", encoding="utf-8") as fh:
            fh.write(json.dumps({"argv": argv, "dev_mode": dev_mode, "pid": os.getpid()}) + "\n")
    time.sleep(float(os.environ.get("COE_VLLM_STUB_START_S", "0.3")))  # loading weights
    state = {"sleeping": False, "sleeps": 0, "wakes": 0}
    names = args.served_model_name or [args.model]
    name = names[0]

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *a: object) -> None:
            pass

        def _send(self, code: int, body: object) -> None:
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            path = urlparse(self.path).path
            if path == "/health":
                return self._send(200, {})
            if path == "/v1/models":
                models = [{"id": n, "object": "model"} for n in [*names, *loras]]
                return self._send(200, {"object": "list", "data": models})
            if path == "/is_sleeping" and dev_mode:
                return self._send(200, {"is_sleeping": state["sleeping"]})
            if path == "/stub/state":
                return self._send(200, state)
            return self._send(404, {"detail": "Not Found"})

        def do_POST(self) -> None:
            url = urlparse(self.path)
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            if url.path == "/sleep" and dev_mode and args.enable_sleep_mode:
                level = int(parse_qs(url.query).get("level", ["1"])[0])
                state.update(sleeping=True, sleeps=state["sleeps"] + 1)
                return self._send(200, {"status": "sleeping", "level": level})
            if url.path == "/wake_up" and dev_mode and args.enable_sleep_mode:
                state.update(sleeping=False, wakes=state["wakes"] + 1)
                return self._send(200, {"status": "awake", "tags": None})
            if url.path == "/v1/chat/completions":
                if state["sleeping"]:
                    return self._send(503, {"error": {"message": "model is sleeping"}})
                request = json.loads(body or b"{}")
                model = request.get("model", name)
                if model not in names and model not in loras:
                    return self._send(404, {"error": {"message": f"The model `{model}` does not exist."}})
                who = f"{model} (adapter {loras[model]})" if model in loras else name
                text = f"{who} answers: {request['messages'][-1]['content']}"
                return self._send(200, _completion(model, text))
            return self._send(404, {"detail": "Not Found"})

    server = ThreadingHTTPServer((args.host, args.port), Handler)
    server.daemon_threads = True
    server.serve_forever(poll_interval=0.05)


def _completion(model: str, text: str) -> dict[str, object]:
    return {
        "id": "stub",
        "object": "chat.completion",
        "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 5, "completion_tokens": 4, "total_tokens": 9},
    }


if __name__ == "__main__":
    main(sys.argv[1:])
