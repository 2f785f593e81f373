"""Skills of a prompt, as keywords of the profile's vocabulary.

Two ways in. The annotator: an expert is asked several times (sampled) for 2-5 keywords naming the
knowledge a question needs; keywords that recur in at least two samples are kept (one sample's
whim is noise), then each is mapped to its nearest vocabulary entry by embedding similarity. The fast
path: the prompt's embedding is compared with the vocabulary's and the nearest entries are its
keywords; one encoder call, no LLM call, which is what routing thousands of prompts needs.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from coe.types import JsonSchemaSpec, ResponseFormat

if TYPE_CHECKING:
    import numpy as np

ANNOTATOR_PROMPT = (
    "Question: {question}\n\n"
    "Which knowledge areas, subjects or skills are needed to answer this question? "
    "Name 2 to 5 short keywords, separated by commas, for example: algebra, organic chemistry, "
    "contract law, python programming, anatomy, probability. Reply with the keywords only, "
    "in this form: Keywords: <keyword>, <keyword>"
)
ANNOTATOR_PARAMS = {"temperature": 0.7, "max_tokens": 48}  # sampled, so recurring keywords mean something
MAX_KEYWORD_CHARS = 32
# Where the annotator's engine enforces JSON schemas, its reply is a keyword list by construction
# (a small model otherwise often writes prose around, or instead of, the list).
KEYWORDS_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "keywords": {
            "type": "array",
            "items": {"type": "string", "minLength": 2, "maxLength": MAX_KEYWORD_CHARS},
            "minItems": 2,
            "maxItems": 5,
        }
    },
    "required": ["keywords"],
    "additionalProperties": False,
}
ANNOTATOR_FORMAT = ResponseFormat(
    type="json_schema", json_schema=JsonSchemaSpec(name="keywords", schema=KEYWORDS_SCHEMA)
)
_SPLIT = re.compile(r"[,;\n]|\s-\s")
# Words, with the few symbols skill names carry ("c++", "c#", "node.js"); code and prose fall out.
_KEYWORD = re.compile(r"^[a-z][a-z0-9 +#./&'-]*$")
_STRIP = re.compile(r"^[\s\-*•\d.)\"'`:\[{]+|[\s.\"'`*\]}]+$")


def parse_keywords(text: str) -> list[str]:
    """Keywords from one annotator reply (``{"keywords": [...]}`` or text); whatever is not a
    plausible short keyword is dropped."""
    parts = _json_keywords(text)
    if parts is None:
        marker = re.search(r"(?i)keywords?\"?\s*:", text)  # "Keywords:", or a JSON reply cut short
        parts = _SPLIT.split(text[marker.end() :] if marker else text)
    found: list[str] = []
    for part in parts:
        word = _STRIP.sub("", part).lower()
        if len(word) < 2 or len(word) > MAX_KEYWORD_CHARS or len(word.split()) > 4:
            continue
        if not _KEYWORD.match(word) or word in ("keywords", "keyword"):
            continue
        if word not in found:
            found.append(word)
    return found


def _json_keywords(text: str) -> list[str] | None:
    try:
        data = json.loads(text)
    except ValueError:
        return None
    words = data.get("keywords") if isinstance(data, dict) else None
    return [w for w in words if isinstance(w, str)] if isinstance(words, list) else None


def recurring(samples: Sequence[Sequence[str]], min_count: int = 2) -> list[str]:
    """Keywords named in at least ``min_count`` samples (all of them when there is one sample),
    most frequent first."""
    need = min(min_count, len(samples)) if samples else 1
    counts = Counter(k for sample in samples for k in dict.fromkeys(sample))
    return [k for k, c in counts.most_common() if c >= need]


@dataclass
class Match:
    keyword: str
    similarity: float
    source: str  # the text that was mapped: the annotator's keyword, or "prompt" on the fast path


class Vocabulary:
    """The profile's keywords and their unit vectors; maps prompts and free keywords onto them."""

    def __init__(self, words: Sequence[str], vectors: np.ndarray) -> None:
        self.words = list(words)
        self.vectors = vectors
        self.index = {w: i for i, w in enumerate(self.words)}

    def nearest(self, prompt_vectors: np.ndarray, n: int) -> list[list[Match]]:
        """The ``n`` vocabulary entries most similar to each prompt."""
        import numpy as np

        sims = prompt_vectors @ self.vectors.T
        top = np.argsort(-sims, axis=1, kind="stable")[:, :n]
        return [
            [Match(self.words[j], round(float(sims[i, j]), 4), "prompt") for j in row]
            for i, row in enumerate(top)
        ]

    def map_keywords(self, keywords: Sequence[str], keyword_vectors: np.ndarray) -> list[Match]:
        """Each free keyword to its nearest vocabulary entry (exact matches win); duplicates merged."""
        import numpy as np

        if not keywords:
            return []
        sims = keyword_vectors @ self.vectors.T
        out: dict[str, Match] = {}
        for i, keyword in enumerate(keywords):
            j = self.index.get(keyword, int(np.argmax(sims[i])))
            sim = 1.0 if keyword in self.index else round(float(sims[i, j]), 4)
            word = self.words[j]
            if word not in out or out[word].similarity < sim:
                out[word] = Match(word, sim, keyword)
        return list(out.values())
