"""A real OTLP/HTTP traces receiver, as its own process, on the official protobuf definitions
(``opentelemetry-proto``): it decodes each ``POST /v1/traces`` body (``ExportTraceServiceRequest``,
gzip or not) exactly as a collector would and keeps the spans; ``GET /spans`` returns them as JSON.

Why not the OpenTelemetry collector: it is a Go binary, not in PyPI or Debian, and nothing else can be
downloaded here. This receiver runs the same wire decoding a collector does, so what the tests
assert is what a collector would see. ``python -m tests.support.otlp_receiver PORT``.
"""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx


def _value(v: Any) -> Any:
    kind = v.WhichOneof("value")
    if kind == "array_value":
        return [_value(x) for x in v.array_value.values]
    return getattr(v, kind) if kind else None


def decode(body: bytes) -> list[dict[str, Any]]:
    """The spans of one ExportTraceServiceRequest, as plain dicts (hex ids, attributes by key)."""
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    req = ExportTraceServiceRequest()
    req.ParseFromString(body)
    out = []
    for rs in req.resource_spans:
        resource = {a.key: _value(a.value) for a in rs.resource.attributes}
        for ss in rs.scope_spans:
            for span in ss.spans:
                out.append(
                    {
                        "name": span.name,
                        "trace_id": span.trace_id.hex(),
                        "span_id": span.span_id.hex(),
                        "parent_span_id": span.parent_span_id.hex(),
                        "kind": int(span.kind),
                        "start_ns": span.start_time_unix_nano,
                        "end_ns": span.end_time_unix_nano,
                        "status": int(span.status.code),
                        "attributes": {a.key: _value(a.value) for a in span.attributes},
                        "resource": resource,
                        "scope": ss.scope.name,
                    }
                )
    return out


def _handler(spans: list[dict[str, Any]]) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:
            pass

        def _reply(self, code: int, data: bytes, ctype: str) -> None:
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            self._reply(200, json.dumps(spans).encode(), "application/json")

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            if self.path != "/v1/traces" or self.headers.get("Content-Type") != "application/x-protobuf":
                self._reply(415, b"want POST /v1/traces, application/x-protobuf", "text/plain")
                return
            if self.headers.get("Content-Encoding") == "gzip":
                body = gzip.decompress(body)
            try:
                spans.extend(decode(body))
            except Exception as exc:  # a body a collector could not decode either
                self._reply(400, str(exc).encode(), "text/plain")
                return
            # An empty ExportTraceServiceResponse: what a collector answers on success.
            self._reply(200, b"", "application/x-protobuf")

    return Handler


def main(port: int) -> None:
    spans: list[dict[str, Any]] = []
    ThreadingHTTPServer(("127.0.0.1", port), _handler(spans)).serve_forever()


@contextmanager
def otlp_receiver() -> Iterator[tuple[str, Any]]:
    """Start the receiver process; yields (the traces endpoint URL, a function returning the spans)."""
    from coe.experts.process import free_port

    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "tests.support.otlp_receiver", str(port)])
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                httpx.get(base + "/spans", timeout=1)
                break
            except httpx.TransportError:
                assert proc.poll() is None and time.monotonic() < deadline, "OTLP receiver did not start"
                time.sleep(0.05)
        yield base + "/v1/traces", lambda: httpx.get(base + "/spans", timeout=5).json()
    finally:
        proc.terminate()
        proc.wait(timeout=10)


if __name__ == "__main__":
    main(int(sys.argv[1]))
