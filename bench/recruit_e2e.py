"""End-to-end: skill-based recruitment with the local llama.cpp experts on MMLU, MedMCQA and GSM8K.

Methods, each on the same sampled questions:

* ``single:<expert>``: every question to one expert (each expert of the registry);
* ``two-step``: the registry's own category router (SambaNova's two-step routing);
* ``skills+vote``: the skills router over a profile built here, majority vote;
* ``skills+synthesize``: the same recruitment, the profile's aggregator writes the answer;
* the same two with ``min_k: 2``, so that every prompt fans out and the aggregators are measured
  even when the profile recruits one expert (``--no-fanout`` skips them).

The profile comes from separate validation questions (MMLU dev, MedMCQA train, GSM8K train), built
with the same code as ``coe profile`` (``routers.skills.build``). Reported per method: accuracy per data
set and overall, calls per prompt (expert answers plus aggregator calls), wall time and seconds per
prompt. Experts are warmed before timing; questions run ``--concurrency`` at a time.

Run from the repository root (about 10-20 minutes on 2 CPU cores)::

    .venv/bin/python bench/recruit_e2e.py --n 30 --val 20
    .venv/bin/python bench/recruit_e2e.py --json      # the JSON object on stdout

The JSON is also written to ``--out`` (bench/results/recruit_e2e.json by default).
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import argparse
import asyncio
import random
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from _report import emit, machine  # noqa: E402  (bench/ is on sys.path when a bench runs as a script)

from coe import CoE  # noqa: E402
from coe.config import CoEConfig, load_config  # noqa: E402
from coe.config.routing import aggregator_config_model  # noqa: E402
from coe.errors import CoEError  # noqa: E402
from coe.types import Request  # noqa: E402
from routers.skills.config import SkillsConfig, SkillsRouterConfig  # noqa: E402
from routers.skills.profile import SkillProfile, load_profile  # noqa: E402
from routers.skills.qa import QAItem, grade, read_items  # noqa: E402

# name -> (test file, validation file, grader, category label for the profile)
DATASETS = {
    "mmlu": ("mmlu/mmlu_test.jsonl", "mmlu/mmlu_dev.jsonl", "mc", None),
    "medmcqa": ("medmcqa/MedMCQA_test.jsonl", "medmcqa/MedMCQA_train.jsonl", "mc", "medicine"),
    "gsm8k": ("gsm8k/test.jsonl", "gsm8k/train.jsonl", "number", "arithmetic word problems"),
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Skill-based recruitment end to end with the local experts.")
    p.add_argument("--config", type=Path, default=REPO / "experts.yaml")
    p.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    p.add_argument("--n", type=int, default=30, help="test questions per data set")
    p.add_argument("--val", type=int, default=20, help="validation questions per data set (profile)")
    p.add_argument("--mc-tokens", type=int, default=48, help="max_tokens for multiple-choice answers")
    p.add_argument("--number-tokens", type=int, default=160, help="max_tokens for GSM8K answers")
    p.add_argument("--top-p", type=float, default=0.8, help="dynamic k of the skills router")
    p.add_argument("--concurrency", type=int, default=2)
    p.add_argument(
        "--no-fanout",
        dest="fanout",
        action="store_false",
        help="skip the min_k=2 rows (every prompt fans out)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--profile", type=Path, default=None, help="reuse this profile instead of building one")
    p.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "recruit_e2e.json")
    p.add_argument("--json", action="store_true", help="print the JSON object instead of the table")
    return p.parse_args(argv)


Tagged = list[tuple[str, QAItem]]


def sample(args: argparse.Namespace, split: int, n: int) -> Tagged:
    """``n`` random questions of each data set from the test (split 0) or validation (1) file."""
    rng = random.Random(args.seed + split)
    items: Tagged = []
    for name, files in DATASETS.items():
        path, grader, label = args.data / files[split], files[2], files[3]
        pool = read_items([path], grader)  # type: ignore[arg-type]
        for item in rng.sample(pool, min(n, len(pool))):
            items.append((name, item.model_copy(update={"category": label or item.category})))
    return items


def params_for(args: argparse.Namespace) -> Any:
    def params(item: QAItem) -> dict[str, Any]:
        tokens = args.number_tokens if item.grader == "number" else args.mc_tokens
        return {"max_tokens": tokens}

    return params


async def build_profile(
    config: CoEConfig, items: list[QAItem], args: argparse.Namespace, out: Path
) -> dict[str, Any]:
    from coe.encoding.cache import EmbeddingCache
    from coe.encoding.embedder import shared_embedder
    from routers.skills.build import build_profile as build
    from routers.skills.profile import save_profile

    cache = EmbeddingCache(shared_embedder(config.embedder, config.base_dir))
    t = time.perf_counter()
    async with CoE(config) as coe:
        profile = await build(
            coe,
            items,
            "mc+number",
            cache.encode,
            params=params_for(args),
            sources=[str(args.data / f[1]) for f in DATASETS.values()],
            progress=lambda line: print(f"profile: {line}", file=sys.stderr),
        )
    save_profile(profile, out)
    return {**summarize(profile, out), "seconds": round(time.perf_counter() - t, 1)}


def summarize(profile: SkillProfile, path: Path) -> dict[str, Any]:
    return {
        "path": str(path),
        "questions": profile.n_questions,
        "vocabulary": len(profile.vocabulary),
        "accuracy": {n: round(e.accuracy, 4) for n, e in profile.experts.items()},
        "aggregator": profile.aggregator.model_dump(),
    }


def skills_config(
    config: CoEConfig, profile: Path, aggregator: str, args: argparse.Namespace, min_k: int = 1
) -> CoEConfig:
    n = len(config.experts)
    skills = SkillsConfig(profile=str(profile.resolve()), k="dynamic", top_p=args.top_p, min_k=min_k, max_k=n)
    fallback = config.router.fallback_expert()
    router = SkillsRouterConfig(
        type="skills", skills=skills, fallback={"expert": fallback} if fallback else None
    )
    settings = aggregator_config_model(aggregator)(type=aggregator)
    return config.model_copy(update={"router": router, "aggregator": settings})


async def run_method(
    config: CoEConfig, items: Tagged, args: argparse.Namespace, expert: str | None = None
) -> dict[str, Any]:
    params = params_for(args)
    rows: list[dict[str, Any]] = []
    async with CoE(config) as coe:
        await asyncio.to_thread(lambda: coe.router)  # the encoder loads before timing
        for name in config.experts:  # so does every expert: cold starts are not what is measured
            await coe.call_expert(name, Request.from_input("hi", params={"max_tokens": 1}))
        gate = asyncio.Semaphore(args.concurrency)

        async def one(dataset: str, item: QAItem) -> None:
            async with gate:
                t = time.perf_counter()
                try:
                    answer = await coe.aask(item.prompt, expert=expert, **params(item))
                except CoEError as exc:
                    rows.append({"set": dataset, "ok": False, "calls": 0, "error": str(exc), "s": 0.0})
                    return
                trace = answer.trace
                extra = int((trace.aggregation.detail.get("calls", 0) if trace.aggregation else 0) or 0)
                rows.append(
                    {
                        "set": dataset,
                        "ok": grade(item.grader, answer.text, item.gold),
                        "calls": len(trace.attempts) + extra,
                        "k": trace.decision.fanout if trace.decision else 1,
                        "s": time.perf_counter() - t,
                    }
                )

        t0 = time.perf_counter()
        await asyncio.gather(*(one(d, i) for d, i in items))
        wall = time.perf_counter() - t0
    by_set = {name: [r for r in rows if r["set"] == name] for name in DATASETS}
    return {
        "accuracy": round(sum(r["ok"] for r in rows) / len(rows), 4),
        "by_dataset": {n: round(sum(r["ok"] for r in rs) / max(len(rs), 1), 4) for n, rs in by_set.items()},
        "calls_per_prompt": round(sum(r["calls"] for r in rows) / len(rows), 3),
        "recruited_per_prompt": round(sum(r.get("k", 1) for r in rows) / len(rows), 3),
        "errors": sum(1 for r in rows if "error" in r),
        "wall_s": round(wall, 1),
        "s_per_prompt": round(sum(r["s"] for r in rows) / len(rows), 2),
    }


def table(result: dict[str, Any]) -> str:
    sets = list(DATASETS)
    head = f"{'method':<20}" + "".join(f"{s:>9}" for s in sets)
    head += f"{'overall':>9}{'calls/q':>9}{'wall s':>8}{'s/q':>7}"
    lines = [head, "-" * len(head)]
    for name, m in result["methods"].items():
        cells = "".join(f"{m['by_dataset'][s]:>9.3f}" for s in sets)
        tail = (
            f"{m['accuracy']:>9.3f}{m['calls_per_prompt']:>9.2f}{m['wall_s']:>8.0f}{m['s_per_prompt']:>7.1f}"
        )
        lines.append(f"{name:<20}{cells}{tail}")
    return "\n".join(lines)


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    config = load_config(args.config)
    test = sample(args, 0, args.n)
    val = sample(args, 1, args.val)
    profile_path = args.profile or args.out.with_name("recruit_profile.json")
    if args.profile is None:
        profile = await build_profile(config, [item for _, item in val], args, profile_path)
    else:
        profile = {"reused": True, **summarize(load_profile(profile_path), profile_path)}
    methods: dict[str, Any] = {}
    for name in config.experts:
        print(f"running single:{name}", file=sys.stderr)
        methods[f"single:{name}"] = await run_method(config, test, args, expert=name)
    print("running two-step", file=sys.stderr)
    methods["two-step"] = await run_method(config, test, args)
    # As configured (dynamic k), then with min_k 2 so every prompt fans out and the aggregator works.
    for min_k, suffix in ((1, ""), *(((2, " k>=2"),) if args.fanout else ())):
        for aggregator in ("vote", "synthesize"):
            print(f"running skills+{aggregator}{suffix}", file=sys.stderr)
            methods[f"skills+{aggregator}{suffix}"] = await run_method(
                skills_config(config, profile_path, aggregator, args, min_k), test, args
            )
    return {
        "n_per_dataset": args.n,
        "val_per_dataset": args.val,
        "max_tokens": {"mc": args.mc_tokens, "number": args.number_tokens},
        "top_p": args.top_p,
        "concurrency": args.concurrency,
        "profile": profile,
        "methods": methods,
    }


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    started = machine()
    emit(asyncio.run(main_async(args)), args.out, args.json, lambda result: print(table(result)), started)


if __name__ == "__main__":
    main()
