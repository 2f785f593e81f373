"""Offline measures of the signals (`coe eval guard`, `coe eval pii`); the runtime never imports this.

Guard: ``f1`` of attack (jailbreak or injection) against benign, ``recall_by_label``,
``false_positive_rate`` (benign flagged), and the same per ``source``. PII: span F1 per type, exact
offsets and type (a span found with the wrong type counts as a miss and a false alarm), micro F1 over
the pattern types and over every type in the file.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

PATTERN_EVAL_TYPES = ("EMAIL_ADDRESS", "PHONE_NUMBER", "CREDIT_CARD", "IBAN_CODE", "IP_ADDRESS", "US_SSN")
PII_VALIDATION_PERCENT = 30


def pii_in_validation(template: str) -> bool:
    """The PII split: whole sentence templates (``template_id``) on one side, 30% of them held out, so
    the recognizers' rules, written against the train side's sentences only, are measured on
    sentence contexts they were never shaped by. Fixed: tuning on the validation side defeats it."""
    digest = hashlib.sha1(f"coe-pii:validation:{template}".encode()).hexdigest()
    return int(digest[:8], 16) % 100 < PII_VALIDATION_PERCENT


def _f1(tp: int, fp: int, fn: int) -> float:
    return round(2 * tp / (2 * tp + fp + fn), 4) if tp + fp + fn else 1.0


def guard_metrics(labels: Sequence[str], sources: Sequence[str], flagged: Sequence[bool]) -> dict[str, Any]:
    def block(idx: list[int]) -> dict[str, Any]:
        attack = [i for i in idx if labels[i] != "benign"]
        benign = [i for i in idx if labels[i] == "benign"]
        tp = sum(flagged[i] for i in attack)
        fp = sum(flagged[i] for i in benign)
        out: dict[str, Any] = {"n": len(idx)}
        if attack:
            out["recall"] = round(tp / len(attack), 4)
        if benign:
            out["false_positive_rate"] = round(fp / len(benign), 4)
        if attack and benign:
            out["f1"] = _f1(tp, fp, len(attack) - tp)
        return out

    everything = list(range(len(labels)))
    overall = block(everything)
    recall = {}
    for label in ("jailbreak", "injection"):
        idx = [i for i in everything if labels[i] == label]
        if idx:
            recall[label] = round(sum(flagged[i] for i in idx) / len(idx), 4)
    by_source: dict[str, list[int]] = defaultdict(list)
    for i, s in enumerate(sources):
        by_source[s].append(i)
    families: dict[str, list[int]] = defaultdict(list)
    for i, s in enumerate(sources):
        families[s.split("/")[0]].append(i)
    attack = [i for i in everything if labels[i] != "benign"]
    benign = [i for i in everything if labels[i] == "benign"]
    tp = sum(flagged[i] for i in attack)
    fp = sum(flagged[i] for i in benign)
    return {
        "n": len(labels),
        "f1": _f1(tp, fp, len(attack) - tp),
        "precision": round(tp / (tp + fp), 4) if tp + fp else 1.0,
        "recall": overall.get("recall"),
        "recall_by_label": recall,
        "false_positive_rate": overall.get("false_positive_rate"),
        "by_family": {k: block(v) for k, v in sorted(families.items())},
        "by_source": {k: block(v) for k, v in sorted(by_source.items())},
    }


def pii_metrics(
    gold: Sequence[Sequence[tuple[int, int, str]]], found: Sequence[Sequence[tuple[int, int, str]]]
) -> dict[str, Any]:
    counts: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])  # tp, fp, fn
    for g, f in zip(gold, found, strict=True):
        gs, fs = set(g), set(f)
        for span in gs & fs:
            counts[span[2]][0] += 1
        for span in fs - gs:
            counts[span[2]][1] += 1
        for span in gs - fs:
            counts[span[2]][2] += 1

    def micro(types: Sequence[str]) -> float:
        tp, fp, fn = (sum(counts[t][k] for t in types if t in counts) for k in range(3))
        return _f1(tp, fp, fn)

    return {
        "n": len(gold),
        "f1_by_type": {t: _f1(*c) for t, c in sorted(counts.items())},
        "counts_by_type": {t: {"tp": c[0], "fp": c[1], "fn": c[2]} for t, c in sorted(counts.items())},
        "f1_pattern_types": micro(PATTERN_EVAL_TYPES),
        "f1_all": micro(sorted(counts)),
    }
