"""One local model server process (llama-server or vllm serve) on a loopback port.

No orphans: a process started for one ``coe ask`` gets PR_SET_PDEATHSIG, so the kernel stops it even
if CoE is killed with SIGKILL; normal exits, Ctrl-C and failing tests stop it through ``stop()``.
Processes started by ``coe experts up`` are detached on purpose and recorded in a state file.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import httpx

from coe.errors import ExpertError


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _die_with_parent() -> None:  # runs in the child between fork and exec
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


class ServerProcess:
    """A running (or about to run) OpenAI-compatible server. ``url`` is its base URL once ready.

    ``can_sleep`` says whether it can give its memory back without exiting (vLLM's sleep mode); the
    pool stops the others when it evicts them."""

    can_sleep = False
    program = "server"

    def __init__(
        self, expert: str, command: list[str], port: int, log_path: Path, env: dict[str, str] | None = None
    ) -> None:
        self.expert = expert
        self.command = command
        self.port = port
        self.log_path = log_path
        self.env = env or {}
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def root(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"{self.root}/v1"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def spawn(self, detach: bool = False) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                self.command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, **self.env} if self.env else None,
                start_new_session=True,  # Ctrl-C goes to CoE, which stops the server in order
                preexec_fn=None if detach else _die_with_parent,
            )

    async def wait_ready(self, timeout_s: float) -> None:
        """Poll /health until the model is loaded; fail fast if the process exits."""
        deadline = time.monotonic() + timeout_s
        health = f"{self.root}/health"
        async with httpx.AsyncClient(trust_env=False) as client:
            while time.monotonic() < deadline:
                if self.proc is not None and self.proc.poll() is not None:
                    raise ExpertError(self.expert, self.exit_reason(self.proc.returncode, "while starting"))
                try:
                    resp = await client.get(health, timeout=2.0)
                    if resp.status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                await asyncio.sleep(0.1)
        self.stop()
        raise ExpertError(
            self.expert, f"{self.program} not healthy after {timeout_s:g}s; log: {self.log_path}"
        )

    def exit_reason(self, code: int, when: str) -> str:
        log = f"last log lines ({self.log_path}):\n{tail(self.log_path)}"
        return f"{self.program} exited with code {code} {when}; {log}"

    async def sleep(self) -> None:
        raise NotImplementedError(f"{self.program} cannot sleep")

    async def wake(self) -> None:
        raise NotImplementedError(f"{self.program} cannot sleep")

    def stop(self, timeout_s: float = 10.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        stop_pid(self.proc.pid, timeout_s)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=1)


def stop_pid(pid: int, timeout_s: float = 10.0) -> None:
    """SIGTERM, wait, then SIGKILL: llama-server finishes in-flight slots on SIGTERM."""
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not pid_alive(pid):
            return
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def pid_alive(pid: int) -> bool:
    try:
        waited, _ = os.waitpid(pid, os.WNOHANG)  # reap our own children so they do not linger as zombies
        if waited == pid:
            return False
    except ChildProcessError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie still answers kill(0); treat it as gone.
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
            return fh.read().split(") ")[-1][:1] != "Z"
    except OSError:
        return True


def tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"
