"""A plug-in router: the first keyword found in the prompt picks the expert, else a default.

CoE finds it through ``router: {type: "keyword_router:KeywordRouter"}`` in experts.yaml; the module
only has to be importable (see README.md). Its settings are its own model, ``KeywordRouter.Config``:
``coe validate`` checks them with the same ``file:line: key.path`` errors as the built-ins'::

    options:
      python: coder          # keyword -> expert name (matched case-insensitively, as a whole word)
      default: general       # the expert when no keyword matches
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from pydantic import Field

from coe import CoEConfig, Request, RouteDecision
from coe.config import Issue, RegistryView, RouterConfig, settings_of, unknown_experts


class KeywordRouterConfig(RouterConfig):
    options: dict[str, str] = Field(
        default_factory=dict, description="keyword -> expert; `default` names the expert when none matches"
    )

    def check(self, config: RegistryView) -> list[Issue]:
        problems = unknown_experts(config, *((("router", "options", k), v) for k, v in self.options.items()))
        if "default" not in self.options:
            problems.append(
                Issue(("router", "options", "default"), "required (the expert when no keyword matches)")
            )
        return problems


class KeywordRouter:
    name = "keyword"
    Config = KeywordRouterConfig

    def __init__(self, keywords: dict[str, str], default: str) -> None:
        self.keywords = keywords
        self.default = default
        self._patterns = {kw: re.compile(rf"\b{re.escape(kw)}\b", re.IGNORECASE) for kw in keywords}

    @classmethod
    def from_config(cls, config: CoEConfig) -> KeywordRouter:
        options = dict(settings_of(config.router, KeywordRouterConfig).options)  # checked when loaded
        default = options.pop("default")
        return cls(options, default)

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
