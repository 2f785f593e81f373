"""Does the category router's confidence mean what it says in any registry? And does a prompt close to
no category fall back?

Registries are built as a user would: n CLINC150 domains (2, 5, 10), each a category whose description
is the domain's name and whose k examples (1, 3, 10) are drawn from the shared *train* side; several
draws each. Every registry is scored on the shared *validation* side: the in-scope prompts of its
domains and CLINC's out-of-scope (``oos``) prompts. For each classifier fitted on examples (centroid,
kNN) it compares

* ``old``: the temperature as fitted before (leave-one-out log loss alone; 0.05 when leave-one-out
  was not possible), no floor;
* ``new``: the shipped fit (routers.category.calibration: leave-one-out under a prior, and the
  out-of-scope floor),

at the default ``min_confidence`` (0.45): accuracy, expected calibration error (10 bins), the share
of in-scope prompts that fall back (``floor_only``: the floor's share alone), the share of
out-of-scope prompts that fall back, and the AUROC of the floor's similarity (in-scope vs oos).

``--fit-prior`` instead re-derives the prior the shipped fit uses, on the train side only (registries
from the train side, scored on train prompts never used as examples): the geometric mean of the best
temperature per registry and the spread of its logarithm.

Run from the repository root::

    .venv/bin/python bench/confidence.py                 # the table; JSON in bench/results/confidence.json
    .venv/bin/python bench/confidence.py --fit-prior
    .venv/bin/python bench/confidence.py --no-descriptions   # categories with examples only
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import argparse
import itertools
import json
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from _report import emit, machine  # bench/ is on sys.path when a bench runs as a script

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from routers.category.calibration import PRIORS, TEMPERATURE_GRID, ScopeFloor  # noqa: E402
from routers.category.classifiers import (  # noqa: E402
    CentroidClassifier,
    KNNClassifier,
    _normalise,
    fit_classifier,
    softmax,
)

MIN_CONFIDENCE = 0.45  # FallbackConfig's default
KINDS = ("centroid", "knn")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Calibration and out-of-scope fallback of the category router.")
    p.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "clinc150")
    p.add_argument("--n", type=int, nargs="+", default=[2, 5, 10], help="categories per registry")
    p.add_argument("--k", type=int, nargs="+", default=[1, 3, 10], help="examples per category")
    p.add_argument("--draws", type=int, default=5, help="registries per (n, k)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--no-descriptions", action="store_true", help="categories with examples only (no description)"
    )
    p.add_argument("--fit-prior", action="store_true", help="re-derive the temperature prior (train side)")
    p.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "confidence.json")
    p.add_argument("--json", action="store_true", help="print the JSON object instead of the table")
    return p.parse_args(argv)


@dataclass
class Data:
    domains: list[str]
    train: list[tuple[str, int]]
    val: list[tuple[str, int]]
    oos: list[str]


def load(folder: Path) -> Data:
    def rows(name: str) -> list[dict[str, str]]:
        with (folder / name).open(encoding="utf-8") as f:
            return [json.loads(line) for line in f if line.strip()]

    train, val = rows("data_full_train.jsonl"), rows("data_full_val.jsonl")
    domains = sorted({r["domain"] for r in train})
    index = {d: i for i, d in enumerate(domains)}
    return Data(
        domains,
        [(r["text"], index[r["domain"]]) for r in train],
        [(r["text"], index[r["domain"]]) for r in val],
        [r["text"] for r in rows("data_full_oos_val.jsonl")],
    )


@dataclass
class Registry:
    domains: np.ndarray  # the chosen domain indices, sorted: category j is domains[j]
    rows: list[int]  # train rows used as examples
    vectors: np.ndarray  # descriptions (if any) then examples
    y: np.ndarray
    prompts: np.ndarray  # which rows are examples (a description is never held out)


def registries(
    data: Data,
    train_y: np.ndarray,
    encode: Callable[[list[str]], np.ndarray],
    n: int,
    k: int,
    draws: int,
    seed: int,
    described: bool = True,
) -> Iterator[Registry]:
    rng = np.random.default_rng([seed, n, k])
    for _ in range(draws):
        domains = np.sort(rng.choice(len(data.domains), n, replace=False))
        rows: list[int] = []
        for d in domains:
            rows += [int(i) for i in rng.choice(np.flatnonzero(train_y == d), k, replace=False)]
        names = [data.domains[d].replace("_", " ") for d in domains] if described else []
        y = np.concatenate([np.arange(len(names)), np.repeat(np.arange(n), k)])
        texts = names + [data.train[i][0] for i in rows]
        yield Registry(domains, rows, encode(texts), y, np.arange(len(y)) >= len(names))


def old_temperature(kind: str, vectors: np.ndarray, y: np.ndarray, n: int) -> float:
    """The temperature as the router fitted it before the prior: leave-one-out log loss alone on a
    60-point grid, 0.05 where leave-one-out was skipped (a category with one text; kNN with no more
    texts than k + 1)."""
    grid = np.geomspace(0.005, 1.0, 60)

    def best(probs_at: Callable[[float], np.ndarray]) -> float:
        losses = [-np.mean(np.log(np.maximum(probs_at(float(t))[np.arange(len(y)), y], 1e-12))) for t in grid]
        return float(grid[int(np.argmin(losses))])

    if kind == "centroid":
        clf = CentroidClassifier.fit(vectors, y, [str(i) for i in range(n)], temperature=1.0)
        z = _normalise(vectors - clf.center)
        sums = np.stack([z[y == c].sum(axis=0) for c in range(n)])
        counts = np.bincount(y, minlength=n)
        if len(y) < 2 * n or np.any(counts < 2):
            return 0.05
        sims = np.stack(
            [_normalise(sums - np.eye(n)[label][:, None] * v) @ v for v, label in zip(z, y, strict=True)]
        )
        return best(lambda t: softmax(sims / t))
    knn = KNNClassifier.fit(vectors, y, [str(i) for i in range(n)], temperature=1.0)
    if len(y) <= knn.k + 1:
        return 0.05
    s, idx = knn._exact.search(knn.vectors, knn.k + 1)
    return best(lambda t: knn._vote(s[:, 1:], idx[:, 1:], t))


def ece(conf: np.ndarray, correct: np.ndarray, bins: int = 10) -> float:
    edges = np.linspace(0.0, 1.0, bins + 1)
    total = 0.0
    for lo, hi in itertools.pairwise(edges):
        m = (conf > lo) & (conf <= hi)
        if m.any():
            total += m.mean() * abs(conf[m].mean() - correct[m].mean())
    return float(total)


def auroc(inside: np.ndarray, outside: np.ndarray) -> float:
    """P(an in-scope prompt is closer than an out-of-scope one), ties counted half."""
    ranks = np.concatenate([inside, outside]).argsort(kind="stable").argsort() + 1.0
    return float(
        (ranks[: len(inside)].sum() - len(inside) * (len(inside) + 1) / 2) / (len(inside) * len(outside))
    )


def score(
    kind: str,
    reg: Registry,
    val_v: np.ndarray,
    val_y: np.ndarray,
    oos_v: np.ndarray,
    unread: tuple[np.ndarray, np.ndarray],
) -> dict[str, dict[str, np.ndarray]]:
    """Per prompt, for the old and the new confidence: confidence, correctness, fallback. ``unread``:
    which validation and oos prompts have no word the encoder knows (the scope check's other half)."""
    n = len(reg.domains)
    labels = [str(d) for d in reg.domains]
    mask = np.isin(val_y, reg.domains)
    inside, truth = val_v[mask], np.searchsorted(reg.domains, val_y[mask])
    new = fit_classifier(kind, reg.vectors, reg.y, labels, held_out=reg.prompts)
    scope = ScopeFloor.fit(reg.vectors, reg.y, n, None)
    old = fit_classifier(kind, reg.vectors, reg.y, labels, old_temperature(kind, reg.vectors, reg.y, n))
    out: dict[str, dict[str, np.ndarray]] = {}
    for name, clf, floor in (("old", old, None), ("new", new, scope)):
        p_in, _ = clf.predict_proba(inside)
        p_out, _ = clf.predict_proba(oos_v)
        on = floor is not None and floor.active  # as the router applies it
        far_in = (
            (floor.closeness(inside) < floor.floor) | unread[0][mask] if on else np.zeros(len(inside), bool)
        )
        far_out = (floor.closeness(oos_v) < floor.floor) | unread[1] if on else np.zeros(len(oos_v), bool)
        out[name] = {
            "conf": p_in.max(axis=1),
            "correct": p_in.argmax(axis=1) == truth,
            "fb_in": (p_in.max(axis=1) < MIN_CONFIDENCE) | far_in,
            "fb_floor": far_in,
            "fb_out": (p_out.max(axis=1) < MIN_CONFIDENCE) | far_out,
            "close_in": floor.closeness(inside) if floor else np.zeros(0),
            "close_out": floor.closeness(oos_v) if floor else np.zeros(0),
        }
    return out


def cell(parts: list[dict[str, np.ndarray]], with_floor: bool) -> dict[str, Any]:
    def cat(key: str) -> np.ndarray:
        return np.concatenate([p[key] for p in parts])

    conf, correct = cat("conf"), cat("correct")
    row = {
        "accuracy": round(float(correct.mean()), 3),
        "ece": round(ece(conf, correct), 3),
        "mean_confidence": round(float(conf.mean()), 3),
        "in_scope_fallback": round(float(cat("fb_in").mean()), 3),
        "oos_fallback": round(float(cat("fb_out").mean()), 3),
    }
    if with_floor:
        row["in_scope_fallback_floor_only"] = round(float(cat("fb_floor").mean()), 3)
        row["auroc"] = round(float(np.mean([auroc(p["close_in"], p["close_out"]) for p in parts])), 3)
    return row


PRIOR_POOL = 300  # train prompts per domain that --fit-prior scores on


def _probs_at(clf: Any, vectors: np.ndarray) -> Callable[[float], np.ndarray]:
    """Probabilities at any temperature from one pass over the prompts (the similarities or the
    neighbours do not depend on it)."""
    if isinstance(clf, KNNClassifier):
        sims, idx = clf._exact.search(vectors, clf.k)
        return lambda t: clf._vote(sims, idx, float(t))
    cosines = clf.similarities(vectors)
    return lambda t: softmax(cosines / float(t))


def fit_prior(
    data: Data, train_y: np.ndarray, encode: Callable[[list[str]], np.ndarray], args: argparse.Namespace
) -> dict[str, Any]:
    """Per classifier: the best temperature of each train-side registry on train prompts it was not
    given (up to ``PRIOR_POOL`` per domain; the validation side is never read), summarised as a
    log-normal prior: the geometric mean and the spread of the logarithm."""
    rng = np.random.default_rng(args.seed + 2000)
    pool = np.concatenate(
        [rng.permutation(np.flatnonzero(train_y == d))[:PRIOR_POOL] for d in range(len(data.domains))]
    )
    pool_v = encode([data.train[i][0] for i in pool])
    result: dict[str, Any] = {}
    for kind in KINDS:
        best: list[float] = []
        for n in args.n:
            for k in args.k:
                for reg in registries(data, train_y, encode, n, k, args.draws, args.seed + 1000):
                    mask = np.isin(train_y[pool], reg.domains) & ~np.isin(pool, reg.rows)
                    truth = np.searchsorted(reg.domains, train_y[pool][mask])
                    clf = fit_classifier(kind, reg.vectors, reg.y, [str(d) for d in reg.domains], 1.0)
                    probs_at = _probs_at(clf, pool_v[mask])
                    rows = np.arange(len(truth))
                    losses = [
                        -np.mean(np.log(np.maximum(probs_at(t)[rows, truth], 1e-12)))
                        for t in TEMPERATURE_GRID
                    ]
                    best.append(float(TEMPERATURE_GRID[int(np.argmin(losses))]))
        logs = np.log(best)
        result[kind] = {
            "centre": round(float(np.exp(logs.mean())), 4),
            "spread": round(float(logs.std()), 3),
            "shipped": PRIORS[kind],
        }
    return result


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = machine()
    from coe.encoding.embedder import Embedder

    embedder = Embedder(backend="onnx-int8", threads=1)
    data = load(args.data)
    train_y = np.array([y for _, y in data.train])
    cache: dict[str, np.ndarray] = {}

    def encode(texts: list[str]) -> np.ndarray:
        missing = list(dict.fromkeys(t for t in texts if t not in cache))
        if missing:
            cache.update(zip(missing, embedder.encode(missing), strict=True))
        return np.stack([cache[t] for t in texts])

    result: dict[str, Any] = {
        "encoder": embedder.space,
        "draws": args.draws,
        "min_confidence": MIN_CONFIDENCE,
        "descriptions": not args.no_descriptions,
    }
    if args.fit_prior:
        result["prior"] = fit_prior(data, train_y, encode, args)
        emit(
            result,
            args.out.with_name("confidence_prior.json"),
            args.json,
            lambda r: print(json.dumps(r["prior"], indent=2)),
            started,
        )
        return 0
    val_v = encode([t for t, _ in data.val])
    val_y = np.array([y for _, y in data.val])
    oos_v = encode(data.oos)
    vocabulary = embedder.vocabulary

    def unknown(texts: list[str]) -> np.ndarray:
        return np.array([bool(vocabulary and vocabulary.unknown_words(t)) for t in texts])

    unread = (unknown([t for t, _ in data.val]), unknown(data.oos))
    result["unknown_words"] = {"in_scope": int(unread[0].sum()), "oos": int(unread[1].sum())}
    rows = []
    for kind in KINDS:
        for n in args.n:
            for k in args.k:
                parts = [
                    score(kind, reg, val_v, val_y, oos_v, unread)
                    for reg in registries(
                        data, train_y, encode, n, k, args.draws, args.seed, not args.no_descriptions
                    )
                ]
                for name in ("old", "new"):
                    rows.append(
                        {
                            "classifier": kind,
                            "n": n,
                            "k": k,
                            "confidence": name,
                            **cell([p[name] for p in parts], name == "new"),
                        }
                    )
    result["rows"] = rows
    out = args.out.with_name("confidence_no_descriptions.json") if args.no_descriptions else args.out
    emit(result, out, args.json, show, started)
    return 0


def show(result: dict[str, Any]) -> None:
    draws, floor = result["draws"], result["min_confidence"]
    described = "descriptions and examples" if result["descriptions"] else "examples only"
    print(f"encoder {result['encoder']}, {described}, {draws} draws per cell, min_confidence {floor}")
    print(
        "| classifier | n, k | confidence | accuracy | ECE | in-scope → fallback (floor alone) "
        "| oos → fallback | AUROC |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in result["rows"]:
        floor = f" ({r['in_scope_fallback_floor_only']:.3f})" if "auroc" in r else ""
        print(
            f"| {r['classifier']} | {r['n']}, {r['k']} | {r['confidence']} | {r['accuracy']:.3f} "
            f"| {r['ece']:.3f} | {r['in_scope_fallback']:.3f}{floor} | {r['oos_fallback']:.3f} "
            f"| {r.get('auroc', '–')} |"
        )


if __name__ == "__main__":
    sys.exit(main())
