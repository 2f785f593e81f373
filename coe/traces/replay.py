"""Counterfactual replay: route logged requests with a candidate registry, call no expert, and say
what would change.

Each replayed request is routed with ``CoE.decide`` (the router alone: no expert starts, no session
state: every request as if it began a conversation). Its first candidate is where it would go; the
expert that served it is in the trace. ``agreement`` is the share that would go to the same expert,
``moved`` the count that would not, per logged category and per serving expert with where they go.

Predicted quality uses the feedback the traces carry as a model: the mean grade of each (category,
expert) cell. The change for a request is the new cell's mean minus the served cell's mean; requests
whose new cell has no feedback are left out of the estimate and counted (``quality.uncovered``). The
interval is a bootstrap over both the feedback rows (the cell means) and the requests. Cost uses the
candidate's ``cost`` (per million tokens) or ``params_b`` with each request's logged token counts.

Identical routing inputs get identical decisions (``decide`` is stateless), so each distinct prompt is
routed once: replaying a log with repeated prompts costs what its distinct prompts cost.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import BaseModel, Field

from coe.traces.record import Feedback, TraceRecord
from coe.traces.store import TraceStore, mean_scores, read_jsonl

if TYPE_CHECKING:
    import numpy as np

    from coe.config import CoEConfig
    from coe.orchestrator import CoE

NO_TEXT = (
    "the traces hold no prompt text: replay needs traces recorded with traces.store_text: true, or an "
    "export with prompts"
)


class Moves(BaseModel):
    requests: int = 0
    moved: int = 0
    to: dict[str, int] = Field(default_factory=dict, description="expert -> requests that would go there")


class Estimate(BaseModel):
    current: float | None = Field(None, description="mean over covered requests, as served")
    predicted: float | None = Field(None, description="mean over covered requests, as the candidate routes")
    change: float | None = None
    interval: tuple[float, float] | None = Field(None, description="95% bootstrap interval of the change")
    covered: int = 0
    uncovered: int = Field(0, description="requests with no model for their old or new expert")
    model: str = ""


class ReplayReport(BaseModel):
    source: str
    config: str
    requests: int = Field(description="records read")
    replayed: int
    skipped: dict[str, int] = Field(default_factory=dict, description="no_text, pinned (model was not coe)")
    distinct_prompts: int = 0
    agreement: float | None
    moved: int
    per_category: dict[str, Moves]
    per_expert: dict[str, Moves] = Field(description="by the expert that served them")
    quality: Estimate
    cost: Estimate
    mismatches: list[str]
    feedback_rows: int
    elapsed_s: float
    requests_per_s: float


def load(source: Path) -> tuple[list[TraceRecord], list[Feedback]]:
    """Records and feedback from an export (.jsonl) or a store (the SQLite file)."""
    if source.suffix == ".jsonl":
        return read_jsonl(source)
    if not source.is_file():
        raise FileNotFoundError(f"{source}: no such trace store or export")
    store = TraceStore(source)
    try:
        return list(store.records()), store.feedback()
    finally:
        store.close()


def mismatches(records: Sequence[TraceRecord], config: CoEConfig, name: str) -> list[str]:
    """One message per logged category or expert the candidate registry does not have."""
    cats = set(config.router.category_routes())
    experts = set(config.experts)
    seen_cats = Counter(r.decision.category for r in records if r.decision and r.decision.category)
    seen_experts = Counter(r.expert for r in records)
    out = []
    if cats:
        for c, n in sorted(seen_cats.items()):
            if c not in cats:
                out.append(
                    f"category {c!r} ({n} logged requests) is not a category of {name} "
                    f"(its categories: {', '.join(sorted(cats))})"
                )
    for e, n in sorted(seen_experts.items()):
        if e not in experts:
            out.append(
                f"expert {e!r} (served {n} logged requests) is not an expert of {name} "
                f"(its experts: {', '.join(sorted(experts))})"
            )
    return out


def route_all(
    coe: CoE,
    records: Sequence[TraceRecord],
    keys: Sequence[str] | None = None,
    batch: int = 1024,
    workers: int | None = None,
) -> list[str]:
    """The candidate's first choice per record (records must carry prompts), each distinct prompt
    (``keys``: see ``routing_key``) routed once. Chunks of at most ``batch`` prompts are routed on
    ``workers`` threads (default: the CPU count, at most 4): the encoder releases the GIL, and each
    prompt is still encoded exactly as when served (``embedder.batch_size``), so the decisions are the
    same as routing them one after another."""
    from concurrent.futures import ThreadPoolExecutor

    from coe.types import Request

    keys = keys if keys is not None else [routing_key(r) for r in records]
    first: dict[str, int] = {}
    for i, k in enumerate(keys):
        first.setdefault(k, i)
    unique = list(first.items())
    workers = workers or min(4, os.cpu_count() or 1)
    size = max(1, min(batch, -(-len(unique) // workers)))
    parts = [unique[start : start + size] for start in range(0, len(unique), size)]

    def decide(part: list[tuple[str, int]]) -> list[str]:
        requests = [Request.from_input(records[i].prompt or []) for _, i in part]
        return [d.experts[0] for d in coe.decide(requests)]

    chosen: dict[str, str] = {}
    if parts:
        decide(parts[0][:1])  # builds the router and its encoder once, before threads race to
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for part, experts in zip(parts, pool.map(decide, parts), strict=True):
            chosen.update((k, e) for (k, _), e in zip(part, experts, strict=True))
    return [chosen[k] for k in keys]


def routing_key(record: TraceRecord) -> str:
    """Records with the same key get the same decision: the stored messages (or the prompt's hash)."""
    if record.prompt is None:
        return record.prompt_sha256
    return hashlib.sha256(json.dumps(record.prompt, sort_keys=True, default=str).encode()).hexdigest()


def replay(
    records: Sequence[TraceRecord],
    feedback: Sequence[Feedback],
    coe: CoE,
    *,
    source: str = "",
    config_name: str = "",
    seed: int = 0,
    draws: int = 1000,
    history: Sequence[TraceRecord] = (),
) -> ReplayReport:
    """``history``: earlier records whose feedback informs the quality model but that are not
    replayed themselves (fit on one slice of traffic, predict another)."""
    started = time.perf_counter()
    config = coe.config
    pinned = [r for r in records if r.model != "coe"]
    routed = [r for r in records if r.model == "coe"]
    with_text = [r for r in routed if r.prompt]
    no_text = len(routed) - len(with_text)
    if routed and not with_text:
        raise ValueError(NO_TEXT)
    keys = [routing_key(r) for r in with_text]
    new = route_all(coe, with_text, keys) if with_text else []
    per_cat: dict[str, Moves] = {}
    per_exp: dict[str, Moves] = {}
    moved = 0
    for r, e in zip(with_text, new, strict=True):
        cat = (r.decision.category if r.decision else None) or "none"
        for key, table in ((cat, per_cat), (r.expert, per_exp)):
            m = table.setdefault(key, Moves())
            m.requests += 1
            if e != r.expert:
                m.moved += 1
                m.to[e] = m.to.get(e, 0) + 1
        moved += e != r.expert
    elapsed = time.perf_counter() - started
    quality = _quality(with_text, new, feedback, seed, draws, [*history, *records])
    cost = _cost(with_text, new, config)
    return ReplayReport(
        source=source,
        config=config_name,
        requests=len(records),
        replayed=len(with_text),
        skipped={"no_text": no_text, "pinned": len(pinned)},
        distinct_prompts=len(set(keys)),
        agreement=1 - moved / len(with_text) if with_text else None,
        moved=moved,
        per_category=per_cat,
        per_expert=per_exp,
        quality=quality,
        cost=cost,
        mismatches=mismatches(records, config, config_name or "the candidate registry"),
        feedback_rows=len(feedback),
        elapsed_s=round(elapsed, 3),
        requests_per_s=round(len(with_text) / elapsed, 1) if elapsed > 0 else 0.0,
    )


def _quality(
    records: Sequence[TraceRecord],
    new: Sequence[str],
    feedback: Sequence[Feedback],
    seed: int,
    draws: int,
    everything: Sequence[TraceRecord],
) -> Estimate:
    """Cell means of the feedback (on every record, replayed or not) as the quality model; bootstrap
    over feedback rows and requests."""
    import numpy as np

    if not feedback:
        return Estimate(uncovered=len(records), model="none: the traces carry no feedback")
    all_records = {r.id: r for r in everything}
    cells: dict[tuple[str, str], int] = {}
    f_cell, f_score = [], []
    for f in feedback:
        r = all_records.get(f.id)
        if r is None:
            continue
        cat = (r.decision.category if r.decision else None) or "none"
        f_cell.append(cells.setdefault((cat, r.expert), len(cells)))
        f_score.append(f.score)
    old_c, new_c = [], []
    uncovered = 0
    for r, e in zip(records, new, strict=True):
        cat = (r.decision.category if r.decision else None) or "none"
        a, b = cells.get((cat, r.expert)), cells.get((cat, e))
        if a is None or b is None:
            uncovered += 1
            continue
        old_c.append(a)
        new_c.append(b)
    if not old_c:
        return Estimate(uncovered=uncovered, model="feedback cell means (no request covered)")
    fc, fs = np.array(f_cell), np.array(f_score, dtype=np.float64)
    oc, nc = np.array(old_c), np.array(new_c)

    def change(f_idx: np.ndarray, r_idx: np.ndarray) -> tuple[float, float]:
        mu = _means(fc[f_idx], fs[f_idx], len(cells))
        return float(np.nanmean(mu[oc[r_idx]])), float(np.nanmean(mu[nc[r_idx]]))

    cur, pred = change(np.arange(len(fc)), np.arange(len(oc)))
    rng = np.random.default_rng(seed)
    diffs = []
    for _ in range(draws):
        c, p = change(rng.integers(0, len(fc), len(fc)), rng.integers(0, len(oc), len(oc)))
        if not (np.isnan(c) or np.isnan(p)):
            diffs.append(p - c)
    interval = (float(np.percentile(diffs, 2.5)), float(np.percentile(diffs, 97.5))) if diffs else None
    return Estimate(
        current=cur,
        predicted=pred,
        change=pred - cur,
        interval=interval,
        covered=len(oc),
        uncovered=uncovered,
        model="feedback: mean grade per (category, expert)",
    )


def _means(cell: np.ndarray, score: np.ndarray, n: int) -> np.ndarray:
    import numpy as np

    total = np.bincount(cell, weights=score, minlength=n)
    count = np.bincount(cell, minlength=n)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def _cost(records: Sequence[TraceRecord], new: Sequence[str], config: CoEConfig) -> Estimate:
    """The candidate's per-expert price on each request's logged tokens, served vs. routed."""
    experts = config.experts
    usd = all(e.cost is not None for e in experts.values())
    unit = "usd" if usd else "params_b_x_mtok"

    def price(name: str) -> float | None:
        e = experts.get(name)
        if e is None:
            return None
        return e.cost if usd else e.params_b

    old, now = [], []
    uncovered = 0
    for r, e in zip(records, new, strict=True):
        a, b = price(r.expert), price(e)
        if a is None or b is None:
            uncovered += 1
            continue
        tokens = (r.prompt_tokens + r.completion_tokens) / 1e6
        old.append(a * tokens)
        now.append(b * tokens)
    if not old:
        return Estimate(uncovered=uncovered, model=f"{unit}: no expert has a price")
    cur, pred = sum(old) / len(old), sum(now) / len(now)
    return Estimate(
        current=cur,
        predicted=pred,
        change=pred - cur,
        covered=len(old),
        uncovered=uncovered,
        model=f"{unit} per request from the candidate's {'cost' if usd else 'params_b'} and logged tokens",
    )


__all__ = ["NO_TEXT", "ReplayReport", "load", "mean_scores", "mismatches", "replay", "route_all"]
