"""`coe serve` as a user runs it: ``python -m coe serve`` in a process of its own with the default
registry (real llama.cpp experts), stopped by a real SIGTERM while a stream is in flight; and the
``--allow-unauthenticated`` path of the binding rule, which this server runs on 0.0.0.0."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from coe.experts.process import free_port
from tests.support.paths import ROOT
from tests.support.procs import llama_server_pids, new_call_mark, wait_gone
from tests.support.streams import StreamReader

pytestmark = pytest.mark.e2e


def _wait_ready(proc: subprocess.Popen[bytes], base: str, log: Path, timeout_s: float = 240) -> dict:  # type: ignore[type-arg]
    deadline = time.monotonic() + timeout_s
    while True:
        assert proc.poll() is None, f"coe serve exited with {proc.returncode}:\n{log.read_text()}"
        try:
            resp = httpx.get(base + "/readyz", timeout=5)
            if resp.status_code == 200:
                return dict(resp.json())
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, f"never ready:\n{log.read_text()}"
        time.sleep(0.25)


def test_sigterm_finishes_the_stream_in_flight_then_stops_every_expert(tmp_path: Path) -> None:
    mark, port, log = new_call_mark(), free_port(), tmp_path / "serve.log"
    args = ["serve", "--port", str(port), "--host", "0.0.0.0", "--allow-unauthenticated"]
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "coe", *args, "--log-level", "info"],
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, **mark},
        )
    try:
        base = f"http://127.0.0.1:{port}"
        ready = _wait_ready(proc, base, log)
        assert ready["status"] == "ready" and ready["unauthenticated"] is True  # served open on purpose
        assert "serving without API keys on '0.0.0.0'" in log.read_text()  # and said so at start-up
        experts = llama_server_pids(mark)
        assert len(experts) == 2, experts  # the warm-up started coder and general

        reader = StreamReader(base)
        reader.start()
        assert reader.has_text.wait(120), f"the stream never produced text:\n{log.read_text()}"
        proc.send_signal(signal.SIGTERM)
        reader.join(timeout=120)
        reader.complete_text()  # the stream ran to its end, nothing cut
        # uvicorn re-raises the signal once its graceful shutdown is done, so the status is -SIGTERM
        # either way; the log tells a shutdown that ran the lifespan (which stops the experts) from a kill.
        assert proc.wait(timeout=90) == -signal.SIGTERM
        assert "Application shutdown complete" in log.read_text()
        assert not wait_gone(experts, timeout_s=30)  # and every expert it started is gone
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
