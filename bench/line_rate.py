"""Line rate: how many requests a second one gateway process answers on one core, and at what tail
latency, when the expert behind it costs next to nothing.

1. The canned backend: Debian's nginx (one worker) answering ``return 200 '...'``: a whole chat
   completion under ``/whole/v1`` and a canned SSE stream (role, three deltas, finish, usage,
   ``[DONE]``) under ``/sse/v1``. Why two prefixes: nginx answers without reading the body, so the
   gateway under test is pointed at the one its mode needs (it is restarted between modes).
2. The gateways, each in turn, pinned with ``taskset`` to a core of its own (the first usable one);
   nginx and the load generator share the other one:
   ``coe`` (``coe serve`` on a copy of the default registry whose experts are ``endpoint:``s at
   nginx, API keys on, traces and metrics as by default), ``litellm`` (LiteLLM's proxy from
   ``.venv-gateway``, master key on, one worker), ``floor`` (bench/_asgi_floor.py: the same uvicorn
   and HTTP client with nothing else: what a Python gateway cannot go under) and ``direct`` (nginx
   itself, the load generator's own floor).
3. The load: Debian's ``wrk`` (one thread, C connections, a Lua script with the body and key) for
   ``--duration`` seconds per point after ``--warmup`` seconds not counted, at each concurrency, for
   the paths ``pinned`` (``coe/expert/coder``; LiteLLM's model group ``coder``) and ``routed``
   (``coe``: the router reads the prompt), whole and streamed (to the stream's last byte).
4. Per point: requests a second, p50 / p99 / p99.9 latency (wrk's, to the last byte), non-2xx and
   socket errors, and the gateway's CPU time per request (utime + stime of its process tree from
   /proc before and after the point). Everything it started is stopped, and checked.

    .venv/bin/python bench/line_rate.py            # about 4 minutes
    .venv/bin/python bench/line_rate.py --gateways coe --modes whole --concurrency 1 64 --duration 3
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any

import httpx
import yaml
from _report import descendants, emit, machine  # bench/ is on sys.path when a bench runs as a script

from coe.experts.process import free_port

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
# LiteLLM's proxy: this checkout's, else the one beside the venv running the bench (a worktree's).
GATEWAY_VENV = next(
    (v for v in (REPO / ".venv-gateway", Path(sys.executable).parents[2] / ".venv-gateway") if v.exists()),
    REPO / ".venv-gateway",
)
GATEWAYS = ("coe", "litellm", "floor", "floor_aiohttp", "direct")
PROMPT = "Write a Python function that reverses a string."
TEXT = ["def reverse(s): return s[::-1]", " (slicing with a step of -1", " reverses it)."]
USAGE = {"prompt_tokens": 24, "completion_tokens": 16, "total_tokens": 40}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--gateways", nargs="+", choices=GATEWAYS, default=list(GATEWAYS))
    p.add_argument("--paths", nargs="+", choices=["pinned", "routed"], default=["pinned", "routed"])
    p.add_argument("--modes", nargs="+", choices=["whole", "stream"], default=["whole", "stream"])
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 16, 64, 256])
    p.add_argument("--duration", type=float, default=4.0, help="seconds measured per point")
    p.add_argument("--warmup", type=float, default=1.0, help="seconds not counted before each point")
    p.add_argument("--coe-args", default="", help="extra `coe serve` flags, one string")
    p.add_argument("--floor-args", default="", help="extra floor flags, one string: '--loop asyncio'")
    p.add_argument("--litellm", type=Path, default=GATEWAY_VENV / "bin" / "litellm", help="its executable")
    p.add_argument(
        "--profile",
        nargs="*",
        choices=["pinned", "routed"],
        default=[],
        help="py-spy record coe (whole) at --profile-c",
    )
    p.add_argument("--profile-c", type=int, default=64)
    p.add_argument("--profile-modes", nargs="+", choices=["whole", "stream"], default=["whole"])
    p.add_argument("--profile-out", type=Path, default=HERE / "results" / "line_rate_profile")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--out", type=Path, default=HERE / "results" / "line_rate.json")
    return p.parse_args(argv)


# --------------------------------------------------------------------------- the canned backend


def completion() -> dict[str, Any]:
    message = {"role": "assistant", "content": "".join(TEXT)}
    return {
        "id": "chatcmpl-canned",
        "object": "chat.completion",
        "created": 1700000000,
        "model": "smollm2-135m-instruct",
        "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
        "usage": USAGE,
    }


def sse() -> str:
    """The canned stream; literal newlines in nginx's quoted string end the SSE lines."""
    head = {"id": "chatcmpl-canned", "object": "chat.completion.chunk", "created": 1700000000}
    head["model"] = "smollm2-135m-instruct"
    deltas: list[dict[str, Any]] = [{"role": "assistant", "content": ""}] + [{"content": t} for t in TEXT]
    events = [{**head, "choices": [{"index": 0, "delta": d, "finish_reason": None}]} for d in deltas]
    events.append({**head, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
    events.append({**head, "choices": [], "usage": USAGE})
    lines = [f"data: {json.dumps(e, separators=(',', ':'))}" for e in events] + ["data: [DONE]"]
    return "\n\n".join(lines) + "\n\n"


def nginx_conf(tmp: Path, port: int) -> Path:
    whole = json.dumps(completion(), separators=(",", ":"))
    for body in (whole, sse()):
        assert not set("'$\\") & set(body), "nginx would read these"
    temps = "\n".join(
        f"  {kind}_temp_path {tmp / kind};" for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    conf = f"""worker_processes 1;
daemon off;
pid {tmp / "nginx.pid"};
error_log {tmp / "nginx.err"} warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  keepalive_requests 100000000;
  keepalive_timeout 300s;
{temps}
  server {{
    listen 127.0.0.1:{port};
    location /whole/ {{ default_type application/json; return 200 '{whole}'; }}
    location /sse/ {{ default_type text/event-stream; return 200 '{sse()}'; }}
    location / {{ default_type application/json; return 200 '{{"object":"list","data":[]}}'; }}
  }}
}}
"""
    path = tmp / "nginx.conf"
    path.write_text(conf, encoding="utf-8")
    return path


# ------------------------------------------------------------------------------------ processes


@dataclass
class Proc:
    name: str
    proc: subprocess.Popen[bytes]
    log: Path

    def stop(self) -> int | None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        return self.proc.returncode

    def tail(self, chars: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-chars:] if self.log.exists() else ""


def spawn(name: str, cmd: list[str], core: int | None, tmp: Path, env: dict[str, str] | None = None) -> Proc:
    pinned = ["taskset", "-c", str(core), *cmd] if core is not None else cmd
    log = tmp / f"{name}.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            pinned, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    return Proc(name, proc, log)


def wait_ready(p: Proc, url: str, timeout_s: float = 300.0) -> None:
    deadline = time.monotonic() + timeout_s
    with httpx.Client(trust_env=False) as client:
        while time.monotonic() < deadline:
            if p.proc.poll() is not None:
                raise SystemExit(f"{p.name} exited with {p.proc.returncode}:\n{p.tail()}")
            try:
                if client.get(url, timeout=5).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.25)
    raise SystemExit(f"{p.name} not ready in {timeout_s:g} s:\n{p.tail()}")


def offline_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("COE_API_KEYS", "LITELLM_MASTER_KEY")}
    for key in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "DATABASE_URL"):
        env.pop(key, None)
    return {
        **env,
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",
        "LITELLM_LOG": "ERROR",
        **extra,
    }


def coe_registry(tmp: Path, upstream: str) -> Path:
    """The default registry, each managed expert an ``endpoint:`` at the canned backend."""
    data = yaml.safe_load((REPO / "experts.yaml").read_text(encoding="utf-8"))
    for spec in data["experts"].values():
        spec.pop("serve", None)
        spec["endpoint"] = upstream
    data["server"] = {**(data.get("server") or {}), "max_concurrency": 1024, "max_queue": 1024}
    data["serving"] = {**(data.get("serving") or {}), "state_dir": str(tmp / "coe-state")}
    path = tmp / "experts.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


def litellm_config(tmp: Path, upstream: str) -> Path:
    model = {"model": "openai/smollm2-135m-instruct", "api_base": upstream, "api_key": "none"}
    config = {"model_list": [{"model_name": "coder", "litellm_params": model}], "general_settings": {}}
    path = tmp / "litellm.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return path


def start_gateway(
    kind: str, upstream: str, key: str, core: int | None, tmp: Path, args: argparse.Namespace
) -> tuple[Proc, str]:
    """One gateway on a free loopback port, ready; returns it and its base URL."""
    port = free_port()
    if kind == "coe":
        registry = coe_registry(tmp, upstream)
        cmd = [sys.executable, "-m", "coe", "serve", "-c", str(registry), "--port", str(port)]
        cmd += ["--log-level", "warning", *shlex.split(args.coe_args)]
        proc, ready = spawn("coe", cmd, core, tmp, offline_env(COE_API_KEYS=key)), "/readyz"
    elif kind == "litellm":
        cmd = [str(args.litellm), "--config", str(litellm_config(tmp, upstream)), "--host", "127.0.0.1"]
        cmd += ["--port", str(port), "--num_workers", "1"]
        proc = spawn("litellm", cmd, core, tmp, offline_env(LITELLM_MASTER_KEY=key))
        ready = "/health/liveliness"
    else:
        cmd = [sys.executable, str(HERE / "_asgi_floor.py"), "--port", str(port)]
        cmd += ["--client", "aiohttp" if kind == "floor_aiohttp" else "httpx", *shlex.split(args.floor_args)]
        proc = spawn(kind, [*cmd, "--upstream", upstream, "--key", key], core, tmp, offline_env())
        ready = "/healthz"
    base = f"http://127.0.0.1:{port}"
    wait_ready(proc, base + ready)
    return proc, base


# ------------------------------------------------------------------------------------- the load

PROMPTS = [PROMPT, "What is 17 times 23?", "Tell me a short story about a dragon."]
# Each request's prompt is one of PROMPTS with a counter after it, so that no cache (the encoder's,
# a semantic one) answers a repeat: every routed request is encoded.
LUA = """local n = 0
local prompts = {{{prompts}}}
local head, tail = [==[{head}]==], [==[{tail}]==]
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
{auth}
request = function()
  n = n + 1
  return wrk.format(nil, nil, nil, head .. prompts[n % #prompts + 1] .. " #" .. n .. tail)
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('LINERATE {{"requests":%d,"duration_us":%d,"non_2xx":%d,"socket_errors":%d,'
    .. '"p50_us":%d,"p99_us":%d,"p999_us":%d,"max_us":%d}}\\n', summary.requests, summary.duration,
    e.status, e.connect + e.read + e.write + e.timeout, latency:percentile(50), latency:percentile(99),
    latency:percentile(99.9), latency.max))
end
"""


def lua(model: str, stream: bool, key: str | None) -> str:
    body = json.dumps(
        {"model": model, "messages": [{"role": "user", "content": "@P@"}], "max_tokens": 32, "stream": stream}
    )
    head, tail = body.split("@P@")
    prompts = ", ".join(json.dumps(p) for p in PROMPTS)
    auth = f'wrk.headers["Authorization"] = "Bearer {key}"' if key else ""
    return LUA.format(prompts=prompts, head=head, tail=tail, auth=auth)


def wrk(url: str, script: str, conc: int, seconds: float, core: int | None, tmp: Path) -> dict[str, Any]:
    path = tmp / "body.lua"
    path.write_text(script, encoding="utf-8")
    cmd = [
        "wrk",
        "-t1",
        f"-c{conc}",
        f"-d{max(1, round(seconds))}s",
        "--timeout",
        "10s",
        "-s",
        str(path),
        url,
    ]
    if core is not None:
        cmd = ["taskset", "-c", str(core), *cmd]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60)
    line = next((ln for ln in out.stdout.splitlines() if ln.startswith("LINERATE ")), None)
    if line is None:
        raise SystemExit(f"wrk said nothing usable:\n{out.stdout}\n{out.stderr}")
    result: dict[str, Any] = json.loads(line[len("LINERATE ") :])
    return result


def cpu_ticks(root: int) -> int:
    """utime + stime of ``root`` and its descendants (a gateway's workers), in clock ticks."""
    tree, total = descendants(root), 0
    for pid in tree:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        total += int(fields[11]) + int(fields[12])
    return total


@dataclass
class Site:
    """Where the load goes: the URL, the Lua script (body and key), the process whose CPU is counted."""

    url: str
    script: str
    pid: int | None


def point(
    site: Site, conc: int, load_core: int | None, args: argparse.Namespace, tmp: Path
) -> dict[str, Any]:
    if args.warmup > 0:
        wrk(site.url, site.script, conc, args.warmup, load_core, tmp)
    before = cpu_ticks(site.pid) if site.pid else 0
    r = wrk(site.url, site.script, conc, args.duration, load_core, tmp)
    after = cpu_ticks(site.pid) if site.pid else 0
    seconds, n = r["duration_us"] / 1e6, r["requests"]
    cpu = (after - before) / os.sysconf("SC_CLK_TCK") * 1000 / n if site.pid and n else None
    return {
        "rps": round(n / seconds, 1),
        "p50_ms": round(r["p50_us"] / 1000, 2),
        "p99_ms": round(r["p99_us"] / 1000, 2),
        "p999_ms": round(r["p999_us"] / 1000, 2),
        "max_ms": round(r["max_us"] / 1000, 2),
        "requests": n,
        "non_2xx": r["non_2xx"],
        "socket_errors": r["socket_errors"],
        "cpu_ms_per_request": round(cpu, 3) if cpu is not None else None,
    }


def cores() -> tuple[int | None, int | None]:
    """(the gateway's core, the core nginx and wrk share); no pinning on a one-core machine."""
    usable = sorted(os.sched_getaffinity(0))
    return (usable[0], usable[1]) if len(usable) >= 2 else (None, None)


def models(kind: str) -> dict[str, str]:
    """The model id each path sends to this gateway."""
    if kind == "coe":
        return {"pinned": "coe/expert/coder", "routed": "coe"}
    return {"pinned": "coder" if kind == "litellm" else "smollm2-135m-instruct"}


def profile(
    proc: Proc, site: Site, path: str, conc: int, load_core: int | None, args: argparse.Namespace, tmp: Path
) -> dict[str, Any]:
    """py-spy on the gateway while wrk loads it: a flame graph (SVG), then the collapsed stacks
    (raw) of a second run for the top items by own time and by time inside."""
    args.profile_out.mkdir(parents=True, exist_ok=True)
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    found: dict[str, Any] = {}
    for fmt, suffix in (("flamegraph", "svg"), ("raw", "txt")):
        out = args.profile_out / f"{path}_c{conc}.{suffix}"
        cmd = [py_spy, "record", "--nonblocking", "-r", "200", "-d", str(int(args.duration) + 1)]
        cmd += ["-p", str(proc.proc.pid), "-f", fmt, "-o", str(out)]
        if load_core is not None:
            cmd = ["taskset", "-c", str(load_core), *cmd]
        spy = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        time.sleep(0.5)
        found[fmt] = point(site, conc, load_core, argparse.Namespace(**{**vars(args), "warmup": 0}), tmp)
        _, err = spy.communicate(timeout=120)
        if spy.returncode != 0:
            raise SystemExit(f"py-spy failed: {err.decode(errors='replace')}")
        found[f"{fmt}_file"] = str(out)
    found["top"] = top_items(Path(found["raw_file"]))
    return found


def top_items(raw: Path, n: int = 25) -> dict[str, list[tuple[str, float]]]:
    """From py-spy's collapsed stacks: the frames with the most samples at the top of the stack
    (own time) and anywhere in it (inclusive), as shares of all samples."""
    own: dict[str, int] = {}
    inside: dict[str, int] = {}
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames, k = stack.split(";"), int(count)
        total += k
        own[frames[-1]] = own.get(frames[-1], 0) + k
        for frame in set(frames):
            inside[frame] = inside.get(frame, 0) + k

    def share(d: dict[str, int]) -> list[tuple[str, float]]:
        return [(f, round(100 * c / total, 1)) for f, c in sorted(d.items(), key=lambda kv: -kv[1])[:n]]

    return {"own_pct": share(own), "inclusive_pct": share(inside), "samples": total}  # type: ignore[dict-item]


def run_mode(
    mode: str, nginx_base: str, nginx_pid: int, key: str, args: argparse.Namespace, tmp: Path
) -> dict[str, Any]:
    """Every gateway and path at every concurrency for one mode (whole or stream)."""
    gw_core, load_core = cores()
    upstream = f"{nginx_base}/{'sse' if mode == 'stream' else 'whole'}/v1"
    out: dict[str, Any] = {}
    for kind in args.gateways:
        proc = None
        if kind == "direct":
            base, pid, auth = upstream[: -len("/v1")], nginx_pid, None
        else:
            proc, base = start_gateway(kind, upstream, key, gw_core, tmp, args)
            pid, auth = proc.proc.pid, key
        try:
            for path, model in models(kind).items():
                if path not in args.paths and kind == "coe":
                    continue
                site = Site(base + "/v1/chat/completions", lua(model, mode == "stream", auth), pid)
                row = out.setdefault(f"{kind}_{path}" if kind == "coe" else kind, {})
                for conc in args.concurrency:
                    row[f"c{conc}"] = point(site, conc, load_core, args, tmp)
                    print(f"  {mode} {kind} {path} c={conc}: {row[f'c{conc}']}", file=sys.stderr)
                if kind == "coe" and path in args.profile and mode in args.profile_modes and proc is not None:
                    name = path if mode == "whole" else f"{path}_{mode}"
                    row["profile"] = profile(proc, site, name, args.profile_c, load_core, args, tmp)
        finally:
            if proc is not None:
                code = proc.stop()
                if code not in (0, None, -signal.SIGTERM):
                    print(f"{kind} exited {code}:\n{proc.tail()}", file=sys.stderr)
    return out


def versions(litellm: Path) -> dict[str, str]:
    found = {"coe": version("coe"), "litellm_proxy": "not installed"}
    if litellm.exists():
        ask = "from importlib.metadata import version as v; print(v('litellm'))"
        got = subprocess.run([str(litellm.parent / "python"), "-c", ask], capture_output=True, text=True)
        found["litellm_proxy"] = got.stdout.strip() or found["litellm_proxy"]
    for dist in ("uvicorn", "fastapi", "httpx", "uvloop", "httptools"):
        try:
            found[dist] = version(dist)
        except Exception:
            found[dist] = "not installed"
    found["nginx"] = subprocess.run(["nginx", "-v"], capture_output=True, text=True).stderr.strip()
    found["python"] = sys.version.split()[0]
    return found


def main(args: argparse.Namespace) -> dict[str, Any]:
    for tool in ("nginx", "wrk"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} not found: `make venv` installs Debian's nginx-light and wrk")
    if "litellm" in args.gateways and not args.litellm.exists():
        raise SystemExit(f"{args.litellm} not found: `make gateway` installs LiteLLM's proxy there")
    key = f"sk-{secrets.token_hex(24)}"
    gw_core, load_core = cores()
    with tempfile.TemporaryDirectory(prefix="coe-line-rate-") as name:
        tmp = Path(name)
        port = free_port()
        nginx = spawn("nginx", ["nginx", "-c", str(nginx_conf(tmp, port)), "-p", str(tmp)], load_core, tmp)
        base = f"http://127.0.0.1:{port}"
        try:
            wait_ready(nginx, base + "/", 30)
            results = {mode: run_mode(mode, base, nginx.proc.pid, key, args, tmp) for mode in args.modes}
        finally:
            nginx.stop()
    return {
        "duration_s": args.duration,
        "warmup_s": args.warmup,
        "concurrency": args.concurrency,
        "cores": {"gateway": gw_core, "nginx_and_wrk": load_core},
        "coe_args": args.coe_args,
        "modes": results,
        "versions": versions(args.litellm),
        "left_running": int(nginx.proc.poll() is None),
    }


def show(result: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    for mode, rows in result["modes"].items():
        table = Table(
            title=f"line rate, {mode} ({result['duration_s']:g} s a point; gateway on core "
            f"{result['cores']['gateway']}, nginx and wrk on {result['cores']['nginx_and_wrk']})"
        )
        for col in ("path", "C", "RPS", "p50 ms", "p99 ms", "p99.9 ms", "non-2xx", "errors", "CPU ms/req"):
            table.add_column(col, justify="left" if col == "path" else "right", no_wrap=True)
        for path, points in rows.items():
            for c in result["concurrency"]:
                p = points.get(f"c{c}")
                if p is None:
                    continue
                cpu = "" if p["cpu_ms_per_request"] is None else f"{p['cpu_ms_per_request']:.2f}"
                table.add_row(
                    path,
                    str(c),
                    f"{p['rps']:,.0f}",
                    f"{p['p50_ms']:.2f}",
                    f"{p['p99_ms']:.2f}",
                    f"{p['p999_ms']:.2f}",
                    str(p["non_2xx"]),
                    str(p["socket_errors"]),
                    cpu,
                )
        console.print(table)
    console.print(", ".join(f"{k} {v}" for k, v in result["versions"].items()))


if __name__ == "__main__":
    args = parse_args()
    started = machine()
    emit(main(args), args.out, args.json, show, started)
