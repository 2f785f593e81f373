"""What OpenTelemetry (``telemetry.otlp_endpoint``) costs `coe serve` per request.

The same app twice, telemetry off and on, exporting to a real OTLP/HTTP receiver process
(tests/support/otlp_receiver.py), in interleaved rounds of sequential non-streamed requests to a stub
expert that answers at once: with nothing else in a request, what telemetry adds is as visible as it
gets (a real expert's generation time dwarfs it). Reports each mode's p50/p99 latency, the p50
difference, and the time the span builder itself takes per request (``Telemetry.__call__``, run after
the response is sent), plus the spans the receiver decoded, and for comparison what the dashboard's
window (coe.server.observe.Recent, on in both modes) takes per request.

    .venv/bin/python bench/telemetry_overhead.py [--requests 400] [--rounds 8] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
from _report import emit, machine  # noqa: E402

from coe import load_config  # noqa: E402
from coe.server import ServerSettings, create_app  # noqa: E402
from tests.support.otlp_receiver import otlp_receiver  # noqa: E402
from tests.support.stub_server import stub_server  # noqa: E402

BODY = {"model": "coe/expert/ok", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8}


def pct(values: list[float], q: float) -> float:
    """Nearest-rank quantile in ms, to the microsecond (the differences here are that small)."""
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 3)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--requests", type=int, default=400, help="per mode, over all rounds")
    p.add_argument("--rounds", type=int, default=8)
    p.add_argument("--json", action="store_true")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "telemetry_overhead.json")
    return p.parse_args()


def app_for(folder: Path, url: str, endpoint: str | None) -> Any:
    block = f"telemetry: {{otlp_endpoint: '{endpoint}'}}\n" if endpoint else ""
    path = folder / ("on.yaml" if endpoint else "off.yaml")
    router = "router:\n  categories:\n    any: {expert: ok, examples: ['anything']}\n"
    path.write_text(f"version: 1\nexperts:\n  ok: {{endpoint: '{url}', retries: 0}}\n{router}{block}")
    return create_app(load_config(path), ServerSettings(warm=False))


async def run(args: argparse.Namespace) -> dict[str, Any]:
    with (
        tempfile.TemporaryDirectory() as tmp,
        stub_server("ok") as (url, _),
        otlp_receiver() as (endpoint, spans),
    ):
        apps = {"off": app_for(Path(tmp), url, None), "on": app_for(Path(tmp), url, endpoint)}
        telemetry = apps["on"].state.telemetry
        clients = {
            m: httpx.AsyncClient(transport=httpx.ASGITransport(app=a), base_url="http://coe")
            for m, a in apps.items()
        }
        latency: dict[str, list[float]] = {"off": [], "on": []}
        per_round = max(1, args.requests // args.rounds)
        for mode in ("off", "on"):  # warm both (first-request imports, connection pools)
            for _ in range(20):
                (await clients[mode].post("/v1/chat/completions", json=BODY)).raise_for_status()
        for _ in range(args.rounds):
            for mode in ("off", "on"):
                for _ in range(per_round):
                    t = time.perf_counter()
                    resp = await clients[mode].post("/v1/chat/completions", json=BODY)
                    latency[mode].append((time.perf_counter() - t) * 1000)
                    resp.raise_for_status()
        for c in clients.values():
            await c.aclose()
        assert telemetry.flush()
        exported = len(spans())
        spent: list[
            float
        ] = []  # the span builder alone, on the requests just served (exported a second time)
        ring: list[float] = []  # the dashboard's window (always on), for comparison
        recent = apps["off"].state.recent
        for seen in apps["on"].state.recent.items():
            t = time.perf_counter()
            telemetry(seen)
            spent.append((time.perf_counter() - t) * 1000)
            t = time.perf_counter()
            recent(seen)
            ring.append((time.perf_counter() - t) * 1000)
        telemetry.shutdown()
    rows = {
        m: {"requests": len(v), "p50_ms": pct(v, 0.5), "p99_ms": pct(v, 0.99)} for m, v in latency.items()
    }
    return {
        "modes": rows,
        "p50_added_ms": round(rows["on"]["p50_ms"] - rows["off"]["p50_ms"], 3),
        "p50_added_pct": round(100 * (rows["on"]["p50_ms"] / rows["off"]["p50_ms"] - 1), 1),
        "span_build_ms_p50": pct(spent, 0.5),
        "span_build_ms_p99": pct(spent, 0.99),
        "spans_received": exported,
        "dashboard_window_ms_p50": pct(ring, 0.5),
        "expert": "stub (answers at once)",
    }


def show(r: dict[str, Any]) -> None:
    print("mode | requests | p50 ms | p99 ms")
    for mode, row in r["modes"].items():
        print(f"{mode:4} | {row['requests']:8} | {row['p50_ms']:6} | {row['p99_ms']}")
    print(
        f"telemetry adds {r['p50_added_ms']} ms at p50 ({r['p50_added_pct']}%) to a request whose "
        f"expert answers at once; building its spans takes {r['span_build_ms_p50']} ms (p50), "
        f"{r['span_build_ms_p99']} ms (p99); {r['spans_received']} spans decoded by the receiver; "
        f"the dashboard's window (on in both modes) takes {r['dashboard_window_ms_p50']} ms per request (p50)"
    )


if __name__ == "__main__":
    args = parse_args()
    started = machine()
    emit(asyncio.run(run(args)), args.out, args.json, show, started)
