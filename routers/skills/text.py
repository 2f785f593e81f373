"""What of a prompt names its skills: the question itself, without demonstrations or boilerplate.

Benchmark prompts often carry few-shot demonstrations (RouterBench's ARC and Winogrande rows hold
five solved questions before the real one) and fixed instruction lines ("Print only a single
choice..."). Both are the same for every prompt of a task, so they pull all embeddings together and
say nothing about the skill the question needs.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence

# A solved demonstration ends with "Answer:" and its answer, then a blank line.
_DEMO_END = re.compile(r"Answer:\s*\(?[A-J0-9][^\n]{0,40}\n\s*\n")
_WORD = re.compile(r"[a-z][a-z'-]{2,}")


def strip_demonstrations(prompt: str) -> str:
    """The text after the last solved demonstration; the prompt itself when it has none."""
    parts = _DEMO_END.split(prompt)
    return parts[-1].strip() if len(parts) > 1 and parts[-1].strip() else prompt


def boilerplate_lines(texts: Sequence[str], share: float = 0.2, min_count: int = 5) -> set[str]:
    """Lines that recur in at least ``share`` of the texts: instructions, not content."""
    counts = Counter(line.strip() for t in texts for line in set(t.splitlines()) if line.strip())
    need = max(min_count, int(share * len(texts)))
    return {line for line, c in counts.items() if c >= need}


def drop_lines(text: str, lines: set[str]) -> str:
    kept = [line for line in text.splitlines() if line.strip() not in lines]
    return "\n".join(kept).strip() or text


def question_texts(prompts: Sequence[str], boilerplate: set[str] | None = None) -> tuple[list[str], set[str]]:
    """Questions without demonstrations and without the boilerplate lines (found here when not given,
    so a test set reuses the lines found on its training set)."""
    stripped = [strip_demonstrations(p) for p in prompts]
    lines = boilerplate_lines(stripped) if boilerplate is None else boilerplate
    return [drop_lines(t, lines) for t in stripped], lines


def content_words(text: str, stop: frozenset[str]) -> set[str]:
    return {w.strip("'-") for w in _WORD.findall(text.lower())} - stop
