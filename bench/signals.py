"""What the signals stage (coe/signals) costs per request, one function per signal, so each signal's
rows stand on their own (the semantic cache adds its rows as another function in ``SIGNALS``).

* ``guard``: ``SignalStage.run`` with only the guard, per request, on the validation split of
  guard_prompts (the rows `coe train-guard` never trains on), with the registry's encoder; p50 / p99
  ms overall and for short (< 500 characters) and long prompts, since the guard embeds a long text
  in several windows.
* ``pii``: ``SignalStage.run`` with only PII redaction (the default types), per request, on the
  pii_presidio sentences.

Each request is timed alone after a warm-up (encoder and recognizers loaded), one thread, as a
server runs it.

    .venv/bin/python bench/signals.py --guard guard.npz [--only guard,pii] [--requests N] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from _report import emit, machine, pct  # noqa: E402

from coe import load_config  # noqa: E402
from coe.signals.config import GuardConfig, PiiConfig, SignalsConfig  # noqa: E402
from coe.signals.stage import SignalStage  # noqa: E402
from coe.types import Request  # noqa: E402

DATA = ROOT.parent / "shared" / "data"


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", type=Path, default=ROOT / "experts.yaml", help="registry (its encoder)")
    p.add_argument("--guard", type=Path, default=ROOT / "guard.npz", help="from `coe train-guard`")
    p.add_argument("--guard-data", type=Path, default=DATA / "guard_prompts" / "prompts.jsonl")
    p.add_argument("--pii-data", type=Path, default=DATA / "pii_presidio" / "samples.jsonl")
    p.add_argument("--only", default=",".join(SIGNALS), help="comma-separated signals to measure")
    p.add_argument("--requests", type=int, default=300, help="requests timed per signal")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "signals.json")
    p.add_argument("--json", action="store_true")
    return p.parse_args()


def _time(stage: SignalStage, texts: list[str]) -> list[float]:
    stage.run(Request.from_input("warm up the encoder and the recognizers"))
    out = []
    for text in texts:
        request = Request.from_input(text)
        t = time.perf_counter()
        stage.run(request)
        out.append((time.perf_counter() - t) * 1000)
    return out


def _row(name: str, ms: list[float], **extra: Any) -> dict[str, Any]:
    return {"signal": name, "requests": len(ms), "p50_ms": pct(ms, 0.5), "p99_ms": pct(ms, 0.99), **extra}


def bench_guard(args: argparse.Namespace) -> list[dict[str, Any]]:
    from coe.signals.guard.training import TrainSettings, read_guard_data, validation_split

    if not args.guard.is_file():
        sys.exit(
            f"{args.guard}: no guard file; train one: coe train-guard {args.guard_data} --out {args.guard}"
        )
    config = load_config(args.config)
    config = config.model_copy(
        update={"signals": SignalsConfig(guard=GuardConfig(model=str(args.guard.resolve()), action="flag"))}
    )
    _, validation = validation_split(read_guard_data(args.guard_data), TrainSettings())
    texts = [r.text for r in validation][: args.requests]
    ms = _time(SignalStage(config), texts)
    short = [m for m, t in zip(ms, texts, strict=True) if len(t) < 500]
    long = [m for m, t in zip(ms, texts, strict=True) if len(t) >= 500]
    return [
        _row("guard", ms, prompts="guard_prompts validation split"),
        _row("guard (prompt < 500 chars)", short),
        _row("guard (prompt >= 500 chars)", long),
    ]


def bench_pii(args: argparse.Namespace) -> list[dict[str, Any]]:
    config = load_config(args.config).model_copy(update={"signals": SignalsConfig(pii=PiiConfig())})
    rows = [
        json.loads(line) for line in args.pii_data.read_text(encoding="utf-8").splitlines() if line.strip()
    ]
    texts = [r["text"] for r in rows][: args.requests]
    ms = _time(SignalStage(config), texts)
    return [_row("pii (redact, default types)", ms, prompts="pii_presidio sentences")]


# One function per signal; each returns its table rows.
SIGNALS: dict[str, Callable[[argparse.Namespace], list[dict[str, Any]]]] = {
    "guard": bench_guard,
    "pii": bench_pii,
}


def show(result: dict[str, Any]) -> None:
    print(f"{'signal':<32} {'requests':>8} {'p50 ms':>8} {'p99 ms':>8}")
    for row in result["rows"]:
        print(f"{row['signal']:<32} {row['requests']:>8} {row['p50_ms']:>8} {row['p99_ms']:>8}")


def main() -> None:
    args = parse_args()
    started = machine()
    rows: list[dict[str, Any]] = []
    for name in args.only.split(","):
        if name not in SIGNALS:
            sys.exit(f"unknown signal {name!r}; known: {', '.join(SIGNALS)}")
        rows += SIGNALS[name](args)
    result = {"rows": rows, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    emit(result, args.out, args.json, show, started)


if __name__ == "__main__":
    main()
