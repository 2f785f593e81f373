"""Where each expert lives and how to reach it: the one place that starts and stops experts.

``url_for(name)`` is the whole contract for the rest of CoE:

* ``endpoint:`` experts are external; their URL is returned as is and they are never managed.
* ``serve:`` experts are started on first use (cold -> starting -> ready) and stopped by ``stop_all``,
  unless ``coe experts up`` already runs them: then the recorded process is reused and left running.

A per-expert lock makes concurrent first requests start one process, not several.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import threading
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import httpx

from coe.config import CoEConfig, LlamaCppServe
from coe.errors import ExpertError, ModelNotFoundError
from coe.serving.llamacpp import LlamaServer, build_command, find_llama_server, free_port, pid_alive, stop_pid
from coe.serving.models import cache_dir, known_model, resolve_model

State = Literal["cold", "starting", "ready", "stopping", "external", "failed"]


@dataclass
class ExpertStatus:
    name: str
    kind: str
    state: State
    url: str | None = None
    pid: int | None = None
    detail: str = ""


class ExpertPool:
    def __init__(self, config: CoEConfig) -> None:
        self.config = config
        self._servers: dict[str, LlamaServer] = {}
        self._adopted: dict[str, str] = {}  # expert -> url of a server `coe experts up` started
        self._locks: dict[str, asyncio.Lock] = {}
        self._state: dict[str, State] = {}
        self._errors: dict[str, str] = {}
        self.starts: dict[str, int] = {}  # processes started per expert, for traces and metrics
        self._guard = threading.Lock()
        # Stop our processes at interpreter exit without keeping every pool alive until then.
        weakref.finalize(self, _stop_servers, self._servers)

    # ------------------------------------------------------------------ where things are recorded

    @property
    def state_dir(self) -> Path:
        if self.config.serving.state_dir:
            path = self.config.resolve_path(self.config.serving.state_dir)
        else:
            key = str(self.config.source.resolve()) if self.config.source else "<memory>"
            path = cache_dir() / "run" / hashlib.sha1(key.encode()).hexdigest()[:12]
        path.mkdir(parents=True, exist_ok=True)
        return path

    @property
    def state_file(self) -> Path:
        return self.state_dir / "experts.json"

    def log_path(self, name: str) -> Path:
        return self.state_dir / "logs" / f"{name}.log"

    # ----------------------------------------------------------------------------- the contract

    async def url_for(self, name: str) -> str:
        expert = self.config.experts.get(name)
        if expert is None:
            raise ExpertError(name, f"no such expert; known: {', '.join(sorted(self.config.experts))}")
        if expert.provider is not None:
            raise ExpertError(name, "provider experts are called through litellm and have no URL")
        if expert.serve is None:
            return expert.endpoint  # type: ignore[return-value]
        if name in self._adopted:
            return self._adopted[name]
        if url := self._ready_url(name):
            return url
        # Whoever holds the lock is starting the server; the others wait here, not at a 503.
        async with self._locks.setdefault(name, asyncio.Lock()):
            if url := self._ready_url(name):
                return url
            adopted = await self._adopt(name, expert.serve)
            if adopted:
                return adopted
            return await self._start(name, expert.serve)

    def _ready_url(self, name: str) -> str | None:
        server = self._servers.get(name)
        alive = server is not None and server.proc is not None and server.proc.poll() is None
        return server.url if alive and self._state.get(name) == "ready" else None  # type: ignore[union-attr]

    async def _start(self, name: str, spec: LlamaCppServe, detach: bool = False) -> str:
        self._state[name] = "starting"
        try:
            command, port = self._command(name, spec)
        except (ModelNotFoundError, FileNotFoundError) as exc:
            self._state[name], self._errors[name] = "failed", str(exc)
            raise ExpertError(name, str(exc)) from None
        server = LlamaServer(name, command, port, self.log_path(name))
        server.spawn(detach=detach)
        with self._guard:
            self._servers[name] = server
        try:
            await server.wait_ready(spec.startup_timeout_s)
        except ExpertError as exc:
            self._state[name], self._errors[name] = "failed", exc.reason
            raise
        self._state[name] = "ready"
        self.starts[name] = self.starts.get(name, 0) + 1
        return server.url

    def _command(self, name: str, spec: LlamaCppServe) -> tuple[list[str], int]:
        model = resolve_model(spec.gguf, self.config.base_dir, spec.sha256)
        if spec.chat_template is None and (known := known_model(spec.gguf)) and known.chat_template:
            spec = spec.model_copy(update={"chat_template": known.chat_template})
        threads = spec.threads or self._default_threads()
        port = free_port()
        expert = self.config.experts[name]
        command = build_command(
            find_llama_server(), model, spec, alias=expert.model or name, port=port, threads=threads
        )
        return command, port

    def _default_threads(self) -> int:
        """Share the cores among the managed experts: on 2 cores, two servers get one thread each."""
        managed = sum(1 for e in self.config.experts.values() if e.serve is not None)
        return max(1, (os.cpu_count() or 1) // max(1, managed))

    # ---------------------------------------------------------- processes kept by `coe experts up`

    def _fingerprint(self, name: str) -> str:
        expert = self.config.experts[name]
        return hashlib.sha1(expert.model_dump_json(exclude={"api_key"}).encode()).hexdigest()[:16]

    def _read_state(self) -> dict[str, dict[str, object]]:
        try:
            return json.loads(self.state_file.read_text())
        except (OSError, ValueError):
            return {}

    def _write_state(self, state: dict[str, dict[str, object]]) -> None:
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=2))
        tmp.replace(self.state_file)

    async def _adopt(self, name: str, spec: LlamaCppServe) -> str | None:
        entry = self._read_state().get(name)
        if not entry or entry.get("fingerprint") != self._fingerprint(name):
            return None
        pid, url = int(entry["pid"]), str(entry["url"])  # type: ignore[call-overload]
        if not pid_alive(pid) or not await _healthy(url):
            return None
        self._adopted[name] = url
        self._state[name] = "ready"
        return url

    async def up(self, names: list[str] | None = None) -> list[ExpertStatus]:
        """Start managed experts detached so they outlive this process (``coe experts up``)."""
        state = self._read_state()
        for name in names or [n for n, e in self.config.experts.items() if e.serve is not None]:
            spec = self.config.experts[name].serve
            if spec is None or await self._adopt(name, spec):
                continue
            url = await self._start(name, spec, detach=True)
            server = self._servers.pop(name)
            state[name] = {"pid": server.pid, "url": url, "fingerprint": self._fingerprint(name)}
            self._write_state(state)
            self._adopted[name] = url
        return await self.status()

    def down(self) -> list[str]:
        """Stop what ``coe experts up`` started (``coe experts down``)."""
        stopped = []
        for name, entry in self._read_state().items():
            pid = int(entry["pid"])  # type: ignore[call-overload]
            if pid_alive(pid):
                stop_pid(pid)
                stopped.append(name)
        self.state_file.unlink(missing_ok=True)
        self._adopted.clear()
        return stopped

    async def status(self) -> list[ExpertStatus]:
        recorded = self._read_state()
        out = []
        for name, expert in self.config.experts.items():
            if expert.serve is None:
                where = expert.endpoint or expert.provider
                healthy = expert.endpoint is not None and await _healthy(expert.endpoint)
                detail = "reachable" if healthy else ("unreachable" if expert.endpoint else "hosted")
                out.append(ExpertStatus(name, expert.kind, "external", where, None, detail))
                continue
            server = self._servers.get(name)
            entry = recorded.get(name)
            if server is not None and server.proc is not None and server.proc.poll() is None:
                out.append(
                    ExpertStatus(name, "serve", self._state.get(name, "ready"), server.url, server.pid)
                )
            elif entry and pid_alive(int(entry["pid"])):  # type: ignore[call-overload]
                url = str(entry["url"])
                state: State = "ready" if await _healthy(url) else "starting"
                out.append(ExpertStatus(name, "serve", state, url, int(entry["pid"]), "up (detached)"))  # type: ignore[call-overload]
            else:
                out.append(
                    ExpertStatus(
                        name, "serve", self._state.get(name, "cold"), detail=self._errors.get(name, "")
                    )
                )
        return out

    # ---------------------------------------------------------------------------------- cleanup

    def stop_all(self) -> None:
        """Stop every process this pool started (not the detached ones of `coe experts up`)."""
        with self._guard:
            names = list(self._servers)
            _stop_servers(self._servers)
        for name in names:
            self._state[name] = "cold"

    @property
    def running(self) -> dict[str, int]:
        return {n: s.pid for n, s in self._servers.items() if s.pid and s.proc and s.proc.poll() is None}


async def _healthy(url: str) -> bool:
    base = url.rstrip("/").removesuffix("/v1")
    try:
        async with httpx.AsyncClient(trust_env=False) as client:
            for path in ("/health", "/v1/models"):
                resp = await client.get(base + path, timeout=2.0)
                if resp.status_code == 200:
                    return True
    except httpx.TransportError:
        return False
    return False


def _stop_servers(servers: dict[str, LlamaServer]) -> None:
    """Stop and forget the given servers (also run by the pool's finalizer at exit)."""
    for name in list(servers):
        servers.pop(name).stop()
