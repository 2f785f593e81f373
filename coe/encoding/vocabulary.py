"""Which of a prompt's words the encoder knows as whole words.

Why: a sentence encoder maps anything to a unit vector, nonsense included, and keyboard mashing such
as "asdfgh qwerty" can land closer to a short generic category ("Everyday questions") than real
prompts land to theirs, so no similarity floor separates it (docs/benchmarks/confidence.md). Its
WordPiece tokens do: every word breaks into sub-word pieces. A prompt none of whose words is in the
vocabulary gives the encoder nothing it learned to read; one known word ("ist", "the", "get") is
enough to trust the vector, so foreign languages, code and jargon keep routing.

Only WordPiece vocabularies (BERT-style encoders: MiniLM, mpnet, bge) are read; with any other
tokenizer every word counts as known and nothing changes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


class Vocabulary:
    """A tokenizer's normaliser, pre-tokeniser and whole-word vocabulary; no network runs."""

    def __init__(self, tokenizer_file: Path) -> None:
        from tokenizers import Tokenizer
        from tokenizers.models import WordPiece

        tokenizer = Tokenizer.from_file(str(tokenizer_file))
        self._normalizer: Any = tokenizer.normalizer
        self._pre_tokenizer: Any = tokenizer.pre_tokenizer
        # A WordPiece vocabulary marks continuation pieces with "##", so a bare entry is a whole word.
        self._words: frozenset[str] = (
            frozenset(tokenizer.get_vocab()) if isinstance(tokenizer.model, WordPiece) else frozenset()
        )

    @property
    def active(self) -> bool:
        return bool(self._words) and self._pre_tokenizer is not None

    def unknown_words(self, text: str) -> list[str]:
        """The prompt's words when each is made of letters only and the vocabulary holds none of
        them; [] otherwise. Digits, formulas ("p↔q") and punctuation are left to the similarity floor."""
        if not self.active:
            return []
        normalized = self._normalizer.normalize_str(text) if self._normalizer is not None else text
        tokens = [
            w for w, _ in self._pre_tokenizer.pre_tokenize_str(normalized) if any(c.isalnum() for c in w)
        ]
        if not tokens or any(not w.isalpha() or w in self._words for w in tokens):
            return []
        return tokens
