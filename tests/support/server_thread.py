"""A real uvicorn `coe serve` app in a background thread, for tests that need real sockets (a browser,
a graceful shutdown, a client library) rather than FastAPI's in-process TestClient."""

from __future__ import annotations

import threading
import time

import uvicorn

from coe.experts.process import free_port


class ServerThread:
    """uvicorn in a background thread on a free loopback port; ``stop`` is a graceful shutdown."""

    def __init__(self, app: object) -> None:
        self.port = free_port()
        config = uvicorn.Config(
            app, host="127.0.0.1", port=self.port, log_level="warning", timeout_graceful_shutdown=30
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert time.monotonic() < deadline and self.thread.is_alive(), "server did not start"
            time.sleep(0.05)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=60)
