"""The strict base of every registry model, and the shape of a cross-reference problem.

An unknown key is an error, never ignored. ``Issue`` is what a strategy's ``check`` returns: the key
path of the problem and what is wrong, which the loader turns into ``file:line: key.path: message``.
``RegistryView`` is what a check reads of the whole registry: the blocks sit below the root model
(``coe.config.schema`` imports them), so they name what they need of it instead of importing it.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Literal, NamedTuple, Protocol

from pydantic import BaseModel, ConfigDict

CONFIG_VERSION: Literal[1] = 1

Loc = tuple[str | int, ...]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class Issue(NamedTuple):
    loc: Loc
    message: str


class RegistryView(Protocol):
    """The registry as a cross-reference check sees it (``CoEConfig`` is one): the experts by name,
    and paths resolved against the registry file."""

    @property
    def experts(self) -> Mapping[str, object]: ...

    def resolve_path(self, value: str) -> Path: ...


def unknown_experts(config: RegistryView, *refs: tuple[Loc, str | None]) -> list[Issue]:
    """One issue per ``(loc, name)`` whose expert is not in the registry (``None`` names nothing)."""
    known = ", ".join(sorted(config.experts))
    return [
        Issue(loc, f"unknown expert {name!r}; expected one of: {known}")
        for loc, name in refs
        if name is not None and name not in config.experts
    ]
