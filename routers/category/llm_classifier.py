"""``classifier: llm``: a registered expert picks the category, as Arch-Router and Glider do.

The expert sees the categories as lettered options (``A. code: ...``) and must answer with one
letter: the output is constrained by a GBNF grammar (llama.cpp's ``grammar`` request field), so it
cannot ramble or invent a category. Probabilities come from the log-probabilities of the letters at
that one generated token (``logprobs`` / ``top_logprobs``), renormalised over the valid letters, then
sharpened or flattened by a temperature fitted on the categories' own examples (log loss, one call
per example, once per process), so that ``min_confidence`` means what it says. A server that returns
no log-probabilities gives a one-hot vote smoothed by ``_UNSURE``; the trace says so.
"""

from __future__ import annotations

import asyncio
import math
import string
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from coe.types import ExpertAnswer, Message, Request

if TYPE_CHECKING:
    from coe.config import CategoryConfig
    from coe.protocols import CallExpert
    from routers.category.config import LLMClassifierConfig
LETTERS = string.ascii_uppercase
_UNSURE = 0.1  # probability mass spread over the other letters when only the answer text is known
_MISSING_BELOW = 1.0  # a valid letter absent from top_logprobs: this far below the least likely one seen
_TOP_LOGPROBS = 50
_TEMPERATURES = np.geomspace(0.1, 10.0, 41)
_EXAMPLES_PER_CATEGORY = 4


class LLMClassifierError(RuntimeError):
    """The classifying expert failed or answered outside the grammar."""


class LLMClassifier:
    kind = "llm"

    def __init__(
        self, cfg: LLMClassifierConfig, categories: dict[str, CategoryConfig], temperature: float | None
    ) -> None:
        if len(categories) > len(LETTERS):
            raise ValueError(f"classifier llm handles at most {len(LETTERS)} categories")
        self.cfg = cfg
        self.labels = list(categories)
        self.letters = LETTERS[: len(self.labels)]
        self.categories = categories
        self.temperature = temperature
        self._calibration_lock = asyncio.Lock()
        lines = []
        for letter, (name, spec) in zip(self.letters, categories.items(), strict=True):
            hint = spec.description or "; ".join(spec.examples[:2])
            lines.append(f"{letter}. {name}" + (f": {hint}" if hint else ""))
        self.instructions = (
            "Which category fits the request below best?\n"
            + "\n".join(lines)
            + "\nAnswer with the letter of the category only."
        )
        self.grammar = "root ::= " + " | ".join(f'"{letter}"' for letter in self.letters)

    def request(self, text: str) -> Request:
        # One user turn (categories, then the request, then the cue): small instruction-tuned models
        # follow that shape better than a system prompt they may answer instead of obey.
        prompt = f"{self.instructions}\n\nRequest: {text[: self.cfg.max_prompt_chars]}\n\nCategory letter:"
        return Request(
            messages=[Message(role="user", content=prompt)],
            params={
                "max_tokens": 1,
                "temperature": 0.0,
                "grammar": self.grammar,
                "logprobs": True,
                # The server reports the unconstrained distribution: ask deep enough to see every letter.
                "top_logprobs": _TOP_LOGPROBS,
            },
        )

    def letter_logprobs(self, answer: ExpertAnswer) -> tuple[np.ndarray, bool]:
        """Log-probabilities of each letter (renormalised), and whether they came from the model."""
        if not answer.ok:
            raise LLMClassifierError(f"expert {answer.expert!r} failed: {answer.error}")
        chosen = answer.text.strip()[:1].upper()
        seen: dict[str, float] = {}
        for token in (answer.logprobs or [])[:1]:
            for alt in token.get("top_logprobs") or [token]:
                letter = str(alt.get("token", "")).strip().upper()
                if letter in self.letters and len(letter) == 1:
                    logprob = float(alt.get("logprob", -math.inf))
                    seen[letter] = max(seen.get(letter, -math.inf), logprob)
        if seen:
            floor = min(seen.values()) - _MISSING_BELOW
            z = np.array([seen.get(letter, floor) for letter in self.letters])
            return z - np.logaddexp.reduce(z), True
        if chosen not in self.letters:
            raise LLMClassifierError(
                f"expert {answer.expert!r} answered {answer.text[:40]!r}, "
                f"not one of {', '.join(self.letters)}"
            )
        p = np.full(len(self.letters), _UNSURE / max(len(self.letters) - 1, 1))
        p[self.letters.index(chosen)] = 1 - _UNSURE if len(self.letters) > 1 else 1.0
        return np.log(p), False

    async def _logprobs(self, texts: Sequence[str], call_expert: CallExpert) -> list[tuple[np.ndarray, bool]]:
        async def one(text: str) -> tuple[np.ndarray, bool]:
            call = call_expert(self.cfg.expert, self.request(text))
            answer = await (asyncio.wait_for(call, self.cfg.timeout_s) if self.cfg.timeout_s else call)
            return self.letter_logprobs(answer)

        return list(await asyncio.gather(*(one(t) for t in texts)))

    async def _calibrate(self, call_expert: CallExpert) -> float:
        """The temperature minimising log loss on the categories' examples (1.0 without examples)."""
        texts, y = [], []
        for k, spec in enumerate(self.categories.values()):
            for example in spec.examples[:_EXAMPLES_PER_CATEGORY]:
                texts.append(example)
                y.append(k)
        if not texts or not self.cfg.calibrate:
            return 1.0
        z = np.stack([lp for lp, _ in await self._logprobs(texts, call_expert)])
        rows = np.arange(len(y))
        losses = [-np.mean(_log_softmax(z / t)[rows, y]) for t in _TEMPERATURES]
        return float(_TEMPERATURES[int(np.argmin(losses))])

    async def predict(
        self, texts: Sequence[str], call_expert: CallExpert
    ) -> tuple[np.ndarray, np.ndarray, list[bool]]:
        """Probabilities (n, categories), the raw letter log-probabilities, and per prompt whether the
        server gave log-probabilities (False: a smoothed vote)."""
        async with self._calibration_lock:
            if self.temperature is None:
                self.temperature = await self._calibrate(call_expert)
        results = await self._logprobs(texts, call_expert)
        z = np.stack([lp for lp, _ in results])
        return np.exp(_log_softmax(z / self.temperature)), z, [ok for _, ok in results]

    def describe(self) -> dict[str, Any]:
        return {"expert": self.cfg.expert, "temperature": self.temperature}


def _log_softmax(z: np.ndarray) -> np.ndarray:
    return z - np.logaddexp.reduce(z, axis=-1, keepdims=True)
