"""Experts that share one engine process: LoRA adapters of one base model.

Experts whose ``serve:`` blocks are identical apart from ``lora`` and ``lora_scale`` (same engine,
base model, context, threads, ...) form a group when at least one of them has an adapter: one
process loads the base once and every adapter of the group, and each request picks its expert's
adapter. An expert of the group without ``lora`` is the base itself (every adapter at scale 0).
Experts without adapters never share: two plain experts on one model stay two processes, as before.

The group is named after its first expert in registry order, and the pool treats that name as the
process: one lease holder, one footprint, one start, one crash, one eviction for all its experts.
Why a name rather than a new kind of key: everything the pool records (states, logs, the records of
``coe experts up``) is keyed by expert name already, and an expert alone is its own group.

Choosing the adapter per request:

* llama.cpp: ``lora: [{"id": k, "scale": s}]`` lists every adapter of the process, the expert's own
  at its ``lora_scale`` and every other at 0. All of them, always: llama-server keeps the scales of
  the previous request otherwise, and ``--lora-init-without-apply`` did not zero them (checked with the
  packaged llama-server: ``GET /lora-adapters`` still said 1.0).
* vLLM: the adapter is chosen by the request's ``model``, which is already the expert's model name:
  each adapter is loaded under that name (``--lora-modules NAME=PATH``), and the experts without an
  adapter are the base's served model names.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from coe.config import CoEConfig, LlamaCppServe


@dataclass(frozen=True)
class Group:
    name: str  # the process's name: its first expert in registry order
    experts: tuple[str, ...]  # every expert it serves, in registry order
    adapters: tuple[str, ...]  # the adapter files (serve.lora) it loads, in load order: llama.cpp's ids


class ProcessGroups:
    """Which experts share a process, worked out once from the registry."""

    def __init__(self, config: CoEConfig) -> None:
        self.config = config
        by_key: dict[str, list[str]] = {}
        for name, expert in config.experts.items():
            if expert.serve is not None:
                key = expert.serve.model_dump_json(exclude={"lora", "lora_scale"})
                by_key.setdefault(key, []).append(name)
        self._groups: dict[str, Group] = {}
        for names in by_key.values():
            loras = [s.lora for n in names if (s := config.experts[n].serve) is not None and s.lora]
            if loras:
                group = Group(names[0], tuple(names), tuple(dict.fromkeys(loras)))
                self._groups.update(dict.fromkeys(names, group))

    def group(self, name: str) -> Group | None:
        """The expert's group, or None: it has a process of its own (or none: endpoint, provider)."""
        return self._groups.get(name)

    def host(self, name: str) -> str:
        """The name the pool knows the expert's process by: its group's, else its own."""
        group = self._groups.get(name)
        return group.name if group is not None else name

    def hosts(self, names: Iterable[str]) -> list[str]:
        """The processes these experts need, each once, in order."""
        return list(dict.fromkeys(self.host(n) for n in names))

    def members(self, name: str) -> tuple[str, ...]:
        """Every expert the process ``name`` (or the process of expert ``name``) serves."""
        group = self._groups.get(name)
        return group.experts if group is not None else (name,)

    def groups(self) -> list[Group]:
        """Every group, once, in registry order."""
        return list({g.name: g for g in self._groups.values()}.values())

    def request_fields(self, name: str) -> dict[str, Any]:
        """What a request to the expert adds to its body to be answered by its own adapter (llama.cpp:
        the scale of every adapter of the process); vLLM needs nothing: ``model`` already names it."""
        group = self._groups.get(name)
        spec = self.config.experts[name].serve
        if group is None or not isinstance(spec, LlamaCppServe):
            return {}
        return {
            "lora": [
                {"id": k, "scale": spec.lora_scale if ref == spec.lora else 0.0}
                for k, ref in enumerate(group.adapters)
            ]
        }

    def describe(self, name: str) -> str:
        """For ``coe experts list``: which process serves the expert, and with what."""
        group = self._groups.get(name)
        if group is None:
            return "own" if self.config.experts[name].serve is not None else "-"
        spec = self.config.experts[name].serve
        adapter = f"adapter {group.adapters.index(spec.lora)}" if spec and spec.lora else "base"
        return f"{group.name} ({adapter}; {len(group.experts)} experts)"
