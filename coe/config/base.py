"""The strict base of every registry model, and the shape of a cross-reference problem.

An unknown key is an error, never ignored. ``Issue`` is what a strategy's ``check`` returns: the key
path of the problem and what is wrong, which the loader turns into ``file:line: key.path: message``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal, NamedTuple

from pydantic import BaseModel, ConfigDict

if TYPE_CHECKING:
    from coe.config.schema import CoEConfig

CONFIG_VERSION: Literal[1] = 1

Loc = tuple[str | int, ...]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class Issue(NamedTuple):
    loc: Loc
    message: str


def unknown_experts(config: CoEConfig, *refs: tuple[Loc, str | None]) -> list[Issue]:
    """One issue per ``(loc, name)`` whose expert is not in the registry (``None`` names nothing)."""
    known = ", ".join(sorted(config.experts))
    return [
        Issue(loc, f"unknown expert {name!r}; expected one of: {known}")
        for loc, name in refs
        if name is not None and name not in config.experts
    ]
