"""A plug-in router: the first keyword found in the prompt picks the expert, else a default.

CoE finds it through ``router: {type: "keyword_router:KeywordRouter"}`` in experts.yaml; the module
only has to be importable (see README.md). Its settings come from ``router.options``::

    options:
      python: coder          # keyword -> expert name (matched case-insensitively, as a whole word)
      default: general       # the expert when no keyword matches
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from coe import CoEConfig, ConfigError, Request, RouteDecision


class KeywordRouter:
    name = "keyword"

    def __init__(self, keywords: dict[str, str], default: str) -> None:
        self.keywords = keywords
        self.default = default
        self._patterns = {kw: re.compile(rf"\b{re.escape(kw)}\b", re.IGNORECASE) for kw in keywords}

    @classmethod
    def from_config(cls, config: CoEConfig) -> KeywordRouter:
        options = dict(config.router.options)
        default = options.pop("default", None)
        problems = []
        if default is None:
            problems.append("router.options.default: required (the expert when no keyword matches)")
        for key, expert in {**options, "default": default}.items():
            if expert is not None and expert not in config.experts:
                known = ", ".join(sorted(config.experts))
                problems.append(f"router.options.{key}: unknown expert {expert!r}; expected one of: {known}")
        if problems:
            raise ConfigError(problems)
        return cls({str(k): str(v) for k, v in options.items()}, str(default))

    def route(self, requests: Sequence[Request]) -> list[RouteDecision]:
        return [self._decide(r.text) for r in requests]

    def _decide(self, text: str) -> RouteDecision:
        for keyword, pattern in self._patterns.items():
            if pattern.search(text):
                expert = self.keywords[keyword]
                return RouteDecision(
                    router=self.name,
                    experts=_unique([expert, self.default]),
                    confidence=1.0,
                    reason=f"keyword {keyword!r} matched: expert {expert!r}",
                )
        return RouteDecision(
            router=self.name,
            experts=[self.default],
            fallback=True,
            reason=f"no keyword matched: default expert {self.default!r}",
        )


def _unique(names: list[str]) -> list[str]:
    return list(dict.fromkeys(names))
