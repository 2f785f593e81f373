"""Routing latency and throughput of a CoE registry: routing only, no expert is ever started.

Measures, on the prompts of router_mix:

* ``import coe`` wall time (median of 5 fresh interpreters) and whether it pulls in torch;
* router cold start: building ``CoE(config).router`` and warming it as ``coe serve`` does at start-up
  (loads the sentence encoders, fits the centroids);
* single-prompt routing latency (``coe.route(text)`` one at a time): p50, p99, mean;
* batch throughput: one ``coe.route(500 texts)`` call, and batches of 32 in a loop;
* the distribution of chosen experts and categories, and the fallback rate. Accuracy is not reported:
  router_mix has 8 domains, the default registry 3 categories.

Run from the repository root::

    .venv/bin/python bench/route_latency.py --n 500 --single 200
    .venv/bin/python bench/route_latency.py --json          # the JSON object on stdout

The JSON is also written to ``--out`` (bench/results/route_latency.json by default).
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import argparse
import json
import random
import statistics
import subprocess
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from _report import describe, emit, machine  # bench/ is on sys.path when a bench runs as a script

REPO = Path(__file__).resolve().parent.parent
IMPORT_RUNS = 5
WARMUP = 5
BATCH = 32
HEAVY_MODULES = ("torch", "sentence_transformers", "transformers", "litellm", "faiss")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Benchmark CoE routing latency (no expert is started).")
    p.add_argument("--config", type=Path, default=REPO / "experts.yaml", help="registry (experts.yaml)")
    p.add_argument(
        "--data",
        type=Path,
        default=REPO.parent / "shared" / "data" / "router_mix" / "prompts.jsonl",
        help="prompts.jsonl with id, domain and text fields",
    )
    p.add_argument("--n", type=int, default=500, help="prompts for the batch measurements")
    p.add_argument("--single", type=int, default=200, help="prompts routed one at a time")
    p.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "route_latency.json")
    p.add_argument("--json", action="store_true", help="print the JSON object instead of the table")
    p.add_argument(
        "--busy",
        type=int,
        default=0,
        help="processes burning a core each while single prompts are timed (experts generating)",
    )
    p.add_argument(
        "--torch-threads",
        type=int,
        default=None,
        help="torch.set_num_threads before routing (default: leave torch's choice)",
    )
    return p.parse_args(argv)


def load_prompts(path: Path, n: int) -> list[dict[str, Any]]:
    """``n`` prompts, deterministically: sort by id, shuffle with seed 0, take the first ``n``."""
    with path.open(encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    rows.sort(key=lambda r: r["id"])
    random.Random(0).shuffle(rows)
    return rows[:n]


def measure_import() -> tuple[float, bool, list[str]]:
    """Median ``import coe`` time in fresh interpreters, and which heavy modules it imported."""
    code = "import time; t=time.perf_counter(); import coe; print(time.perf_counter()-t)"
    times = []
    for _ in range(IMPORT_RUNS):
        out = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO
        ).stdout
        times.append(float(out.strip().splitlines()[-1]) * 1000)
    check = f"import sys, coe; print(','.join(m for m in {HEAVY_MODULES!r} if m in sys.modules))"
    out = subprocess.run(
        [sys.executable, "-c", check], capture_output=True, text=True, check=True, cwd=REPO
    ).stdout
    heavy = [m for m in out.strip().split(",") if m]
    return statistics.median(times), "torch" in heavy, heavy


def percentile(values: list[float], q: float) -> float:
    """Linear-interpolated percentile (numpy's default method), q in [0, 100]."""
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100
    lo = int(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def run(args: argparse.Namespace) -> dict[str, Any]:
    from coe import CoE, load_config
    from coe.protocols import WarmRouter

    rows = load_prompts(args.data, args.n)
    texts = [r["text"] for r in rows]
    if not texts:
        raise SystemExit(f"no prompts in {args.data}")
    import_ms, pulls_torch, heavy = measure_import()

    if args.torch_threads is not None:
        import torch

        torch.set_num_threads(args.torch_threads)
    coe = CoE(load_config(args.config))
    try:
        t = time.perf_counter()
        router = coe.router  # builds the router: embeds the category examples or reads an artefact
        if isinstance(router, WarmRouter):
            router.warm()  # an artefact's encoders load here, not on the first unsure prompt
        cold_ms = (time.perf_counter() - t) * 1000

        for text in texts[:WARMUP]:
            coe.route(text)
        single: list[float] = []
        burners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(args.busy)]
        try:
            for i in range(args.single):
                text = texts[i % len(texts)]
                t = time.perf_counter()
                coe.route(text)
                single.append((time.perf_counter() - t) * 1000)
        finally:
            for burner in burners:
                burner.kill()
                burner.wait()

        t = time.perf_counter()
        decisions = coe.route(texts)
        batch_s = time.perf_counter() - t

        t = time.perf_counter()
        for start in range(0, len(texts), BATCH):
            coe.route(texts[start : start + BATCH])
        batch32_s = time.perf_counter() - t
    finally:
        coe.close()  # nothing was started; this only closes the (unused) HTTP client

    experts = Counter(d.expert for d in decisions)
    categories = Counter(str(d.category) for d in decisions)
    by_domain: dict[str, Counter[str]] = defaultdict(Counter)
    for row, d in zip(rows, decisions, strict=True):
        by_domain[row.get("domain", "?")][str(d.category)] += 1
    return {
        "config": str(args.config),
        "router": getattr(router, "name", type(router).__name__),
        "import_coe_ms_p50": round(import_ms, 1),
        "import_pulls_torch": pulls_torch,
        "import_heavy_modules": heavy,
        "router_cold_start_ms": round(cold_ms, 1),
        "single_n": len(single),
        "single_busy_processes": args.busy,
        "single_ms_p50": round(percentile(single, 50), 2) if single else None,
        "single_ms_p99": round(percentile(single, 99), 2) if single else None,
        "single_ms_mean": round(statistics.fmean(single), 2) if single else None,
        "batch_prompts_per_s": round(len(texts) / batch_s, 1),
        "batch32_prompts_per_s": round(len(texts) / batch32_s, 1),
        "n_prompts": len(texts),
        "fallback_rate": round(sum(d.fallback for d in decisions) / len(decisions), 4),
        "experts": dict(experts.most_common()),
        "categories": dict(categories.most_common()),
        "categories_by_domain": {k: dict(v.most_common()) for k, v in sorted(by_domain.items())},
        "machine": torch_info(),  # emit adds the cores, load and other busy processes
    }


def torch_info() -> dict[str, Any]:
    info: dict[str, Any] = {}
    try:
        import torch

        info["torch"] = torch.__version__
        info["torch_threads"] = torch.get_num_threads()
    except ImportError:
        pass
    return info


def show(result: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    m = result["machine"]
    table = Table(
        "metric",
        "value",
        title=f"CoE routing ({result['router']}, {result['n_prompts']} prompts, "
        f"{m.get('torch_threads', '?')} torch threads; {describe(m)})",
        title_justify="left",
    )
    table.add_row("import coe (median of 5)", f"{result['import_coe_ms_p50']:.0f} ms")
    table.add_row("import coe pulls torch", str(result["import_pulls_torch"]))
    table.add_row("router cold start", f"{result['router_cold_start_ms']:.0f} ms")
    if result["single_n"]:
        table.add_row(
            f"single prompt ({result['single_n']} calls, {result['single_busy_processes']} busy processes)",
            f"p50 {result['single_ms_p50']:.1f} ms, p99 {result['single_ms_p99']:.1f} ms, "
            f"mean {result['single_ms_mean']:.1f} ms",
        )
    table.add_row(
        f"batch of {result['n_prompts']} (one call)", f"{result['batch_prompts_per_s']:.0f} prompts/s"
    )
    table.add_row(f"batches of {BATCH}", f"{result['batch32_prompts_per_s']:.0f} prompts/s")
    table.add_row("fallback rate", f"{result['fallback_rate']:.1%}")
    table.add_row("experts chosen", ", ".join(f"{k} {v}" for k, v in result["experts"].items()))
    table.add_row("categories", ", ".join(f"{k} {v}" for k, v in result["categories"].items()))
    console.print(table)

    cats = list(result["categories"])
    dom = Table("domain (router_mix)", *cats, title="chosen category by data domain", title_justify="left")
    for domain, counts in result["categories_by_domain"].items():
        dom.add_row(domain, *(str(counts.get(c, 0)) for c in cats))
    console.print(dom)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = machine()
    emit(run(args), args.out, args.json, show, started)
    return 0


if __name__ == "__main__":
    sys.exit(main())
