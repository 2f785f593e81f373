"""A tiny OpenAI-compatible HTTP server for fault injection (timeouts, 500s, dropped streams) and for
capturing exactly what CoE forwarded (``StubState.bodies``).

The real path is always tested against llama-server; this stub exists because a real server cannot
be told to fail on cue, and cannot show what it was sent. ``StubState.tool_calls`` makes it answer
with those tool calls (whole, or streamed as OpenAI tool-call deltas in two argument fragments);
``StubState.reasoning`` with that reasoning_content (no reasoning model ships on PyPI). The fault
modes of ``FAULTS`` answer 200 with a reply that is not a valid chat completion.
"""

from __future__ import annotations

import json
import socket
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Literal

Mode = Literal[
    "ok",
    "500",
    "500-then-ok",
    "400",
    "hang",
    "drop-stream",
    "drop-before-stream",
    # Replies that are no (valid) chat completion, whole and streamed (see FAULTS):
    "no-choices",
    "no-message",
    "null-content",
    "not-json",
    "bad-utf8",
    "no-done",
    "bad-chunk",
]
# What each fault mode sends: whole (the body of a 200) and streamed (the SSE lines of a 200).
FAULTS: dict[str, tuple[bytes, list[bytes]]] = {
    "no-choices": (b'{"id": "x", "choices": []}', [b'data: {"choices": []}', b"data: [DONE]"]),
    "no-message": (
        b'{"choices": [{"index": 0, "finish_reason": "stop"}]}',
        [b'data: {"choices": [{"index": 0}]}', b"data: [DONE]"],
    ),
    "null-content": (
        b'{"choices": [{"index": 0, "message": {"role": "assistant", "content": null},'
        b' "finish_reason": "stop"}]}',
        [
            b'data: {"choices": [{"index": 0, "delta": {"content": null}, "finish_reason": "stop"}]}',
            b"data: [DONE]",
        ],
    ),
    "not-json": (b"<html>upstream error</html>", [b"<html>upstream error</html>"]),
    "bad-utf8": (
        b'{"choices": [{"index": 0, "message": {"role": "assistant", "content": "caf\xe9"},'
        b' "finish_reason": "stop"}]}',
        [
            b'data: {"choices": [{"index": 0, "delta": {"content": "caf\xe9"}, "finish_reason": "stop"}]}',
            b"data: [DONE]",
        ],
    ),
    "no-done": (b"", [b'data: {"choices": [{"index": 0, "delta": {"content": "cut"}}]}']),
    "bad-chunk": (b"", [b"data: {not json", b"data: [DONE]"]),
}


class StubState:
    def __init__(
        self, mode: Mode, text: str = "stub answer", hang_s: float = 5.0, error: str = "injected failure"
    ) -> None:
        self.mode = mode
        self.text = text
        self.error = error  # the message of a "500" (e.g. llama-server's own words)
        self.hang_s = hang_s  # how long "hang" holds a request, unless the stub shuts down first
        self.calls = 0
        self.connections = 0  # TCP connections accepted: a client that reuses its connection opens one
        self.open = 0  # requests being handled right now (a hanging one stays open)
        self.bodies: list[dict[str, Any]] = []
        self.paths: list[str] = []  # the path of each POST
        self.tool_calls: list[dict[str, Any]] | None = None
        self.reasoning: str | None = None  # sent as reasoning_content (a thinking model's)
        self.finish_reason: str | None = None  # instead of stop (length: a reply cut at max_tokens)
        self.released = threading.Event()


def _handler(state: StubState) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        # Headers and body go out in two writes; with Nagle on, the body waits ~40 ms for the
        # client's delayed ACK of the headers, so every stubbed call took 42 ms instead of 1.
        disable_nagle_algorithm = True

        def log_message(self, *args: object) -> None:
            pass

        def setup(self) -> None:
            state.connections += 1
            super().setup()

        def _send(self, code: int, body: dict[str, object]) -> None:
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            self._send(200, {"status": "ok"})

        def do_POST(self) -> None:
            state.open += 1
            try:
                self._post()
            finally:
                state.open -= 1

        def _post(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
            state.calls += 1
            state.bodies.append(body)
            state.paths.append(self.path)
            mode = state.mode
            if mode == "500-then-ok":
                mode = "500" if state.calls == 1 else "ok"
            if mode == "500":
                return self._send(500, {"error": {"message": state.error}})
            if mode == "400":
                return self._send(400, {"error": {"message": "bad request injected"}})
            if mode == "hang":
                state.released.wait(state.hang_s)
                return self._send(200, _completion(state.text))
            if mode == "drop-before-stream":
                self.connection.shutdown(socket.SHUT_RDWR)
                self.close_connection = True
                return None
            whole, streamed = FAULTS.get(mode, (b"", []))
            if body.get("stream") and streamed:
                return self._raw_stream(streamed)
            if whole:
                return self._raw(whole)
            if body.get("stream"):
                return self._stream(drop=mode == "drop-stream")
            reply = _completion(state.text, state.tool_calls, state.reasoning)
            if state.finish_reason:
                reply["choices"][0]["finish_reason"] = state.finish_reason  # type: ignore[index]
            return self._send(200, reply)

        def _raw(self, data: bytes) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _raw_stream(self, lines: list[bytes]) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for line in lines:
                self._chunk(line + b"\n\n")
            self._chunk(b"")

        def _stream(self, drop: bool) -> None:
            # Chunked, like llama-server: the connection stays open for the next request.
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            if state.reasoning:
                thought = {
                    "model": "stub",
                    "choices": [{"index": 0, "delta": {"reasoning_content": state.reasoning}}],
                }
                self._chunk(f"data: {json.dumps(thought)}\n\n".encode())
            words = state.text.split(" ")
            for i, word in enumerate(words):
                delta = word if i == 0 else " " + word
                chunk = {"model": "stub", "choices": [{"index": 0, "delta": {"content": delta}}]}
                self._chunk(f"data: {json.dumps(chunk)}\n\n".encode())
                if drop and i == 0:
                    self.connection.shutdown(socket.SHUT_RDWR)
                    self.close_connection = True
                    return
            for i, call in enumerate(state.tool_calls or []):
                args = call["function"]["arguments"]
                half = len(args) // 2
                first = {"index": i, "id": call["id"], "type": "function"}
                first["function"] = {"name": call["function"]["name"], "arguments": args[:half]}
                rest = {"index": i, "function": {"arguments": args[half:]}}
                for delta in (first, rest):
                    chunk = {"model": "stub", "choices": [{"index": 0, "delta": {"tool_calls": [delta]}}]}
                    self._chunk(f"data: {json.dumps(chunk)}\n\n".encode())
            if state.tool_calls or state.finish_reason:
                finish = state.finish_reason or "tool_calls"
                done = {"model": "stub", "choices": [{"index": 0, "delta": {}, "finish_reason": finish}]}
                self._chunk(f"data: {json.dumps(done)}\n\n".encode())
            usage = {"prompt_tokens": 3, "completion_tokens": len(words), "total_tokens": 3 + len(words)}
            self._chunk(f"data: {json.dumps({'model': 'stub', 'choices': [], 'usage': usage})}\n\n".encode())
            self._chunk(b"data: [DONE]\n\n")
            self._chunk(b"")  # the last chunk: the body ends here

        def _chunk(self, data: bytes) -> None:
            self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
            self.wfile.flush()

    return Handler


def _completion(
    text: str, tool_calls: list[dict[str, Any]] | None = None, reasoning: str | None = None
) -> dict[str, object]:
    message: dict[str, Any] = {"role": "assistant", "content": None if tool_calls else text}
    if reasoning:
        message["reasoning_content"] = reasoning
    if tool_calls:
        message["tool_calls"] = tool_calls
    return {
        "id": "stub-1",
        "object": "chat.completion",
        "model": "stub",
        "choices": [
            {"index": 0, "message": message, "finish_reason": "tool_calls" if tool_calls else "stop"}
        ],
        "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5},
    }


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: object, client_address: object) -> None:
        # Clients hanging up on purpose (timeouts, dropped streams) are the point of this stub.
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)  # type: ignore[arg-type]


@contextmanager
def stub_server(
    mode: Mode, text: str = "stub answer", hang_s: float = 5.0, error: str = "injected failure"
) -> Iterator[tuple[str, StubState]]:
    state = StubState(mode, text, hang_s, error)
    server = _QuietServer(("127.0.0.1", 0), _handler(state))
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1", state
    finally:
        state.released.set()  # a hanging request returns now instead of holding the shutdown
        server.shutdown()
        server.server_close()
