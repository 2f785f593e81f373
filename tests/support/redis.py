"""A real Redis server on a free loopback port, for the tests and benches that share sessions.

The binary is Debian's ``redis-server`` (installed by the Makefile's set-up); nothing is persisted
(no RDB, no AOF), so each server starts empty and leaves nothing behind.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager

from coe.experts.process import free_port


def redis_binary() -> str | None:
    return shutil.which("redis-server")


@contextmanager
def redis_server() -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """Yield (url, process); the server is killed on exit."""
    binary = redis_binary()
    if binary is None:
        raise RuntimeError(
            "redis-server is not installed: run `make venv` (it installs Debian's redis-server)"
        )
    port = free_port()
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                    break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"redis-server did not start on port {port}") from None
                time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0", proc
    finally:
        proc.kill()
        proc.wait(timeout=10)
