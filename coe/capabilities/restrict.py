"""Narrow a routing decision to the experts that can serve the request.

Candidates that cannot serve it leave the decision (recruited ones and fallbacks alike). A router's
decision is then extended, best score first, with capable experts it scored but did not pick (the
category router scores categories, which map to experts; the cost router scores experts), then with
any other capable expert of the registry; so a request with tools goes to the best-scored expert
that has tools, not to a 400. A pinned decision (``coe/expert/NAME``, ``coe/category/NAME``) is only
filtered: the caller chose. Nothing left: NoCapableExpert.

Several recruited experts and tools: only the top-weighted recruited expert answers (the others
become its fallbacks), because tool calls from several experts cannot be merged into one turn; the
trace names it as ``tool_answerer``.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

from coe.capabilities.experts import context_window, expert_capabilities
from coe.capabilities.needs import estimate_tokens, needs
from coe.config import CoEConfig
from coe.errors import NoCapableExpert
from coe.experts.detect import Detected
from coe.types import CapabilityTrace, Request, RouteDecision

PINNED_ROUTERS = frozenset({"pinned", "category-pinned"})


def unmet(
    request: Request,
    name: str,
    config: CoEConfig,
    detected: Detected | None,
    needed: Mapping[str, str],
    tokens: int,
) -> str | None:
    """Why expert ``name`` cannot serve the request, or None when it can."""
    expert = config.experts[name]
    caps, source = expert_capabilities(expert, detected)
    missing = [cap for cap in needed if cap not in caps]
    if request.forced_tool and "tools" in caps and not {"tool_choice", "json_schema"} & caps:
        missing.append("tool_choice")  # it neither forces the call itself nor takes the schema CoE would
    if missing:
        return f"lacks {', '.join(missing)} ({source})"
    window = context_window(expert, detected)
    if window is not None:
        answer = request.params.get("max_tokens") or expert.params.max_tokens or 0
        budget = int(answer) if isinstance(answer, int | float) else 0
        if tokens + budget > window:
            return (
                f"context: about {tokens} prompt tokens + {budget} answer tokens exceed its {window} "
                "(context_window)"
            )
    return None


def restrict(
    decision: RouteDecision, request: Request, config: CoEConfig, detected: Mapping[str, Detected]
) -> tuple[RouteDecision, CapabilityTrace | None]:
    """(the decision among capable experts, what was needed and excluded; None for a plain request
    every candidate can serve, so its trace stays as it was)."""
    needed = needs(request)
    tokens = estimate_tokens(request)
    excluded: dict[str, str] = {}

    def capable(name: str) -> bool:
        if name in excluded:
            return False
        reason = unmet(request, name, config, detected.get(name), needed, tokens)
        if reason is not None:
            excluded[name] = reason
        return reason is None

    kept = [name for name in decision.experts if capable(name)]
    via: dict[str, tuple[str | None, float]] = {}
    if excluded and decision.router not in PINNED_ROUTERS:
        for name, category, score in _scored(decision, config):
            if name not in kept and capable(name):
                kept.append(name)
                via[name] = (category, score)
        kept += [name for name in config.experts if name not in kept and capable(name)]
    if not kept:
        raise NoCapableExpert(needed or {"context": "messages"}, excluded)
    if not needed and not excluded:
        return decision, None
    trace = CapabilityTrace(needed=needed, prompt_tokens=tokens, excluded=excluded)
    if excluded:
        decision = _narrowed(decision, kept, excluded, via)
    if request.uses_tools and decision.fanout > 1:
        decision = _one_tool_answerer(decision)
        trace.tool_answerer = decision.experts[0]
    return decision, trace


def _scored(decision: RouteDecision, config: CoEConfig) -> Iterator[tuple[str, str | None, float]]:
    """(expert, the category that maps to it or None, score), best score first."""
    routes = config.router.category_routes()
    for key, score in sorted(decision.scores.items(), key=lambda kv: -kv[1]):
        if key in config.experts:
            yield key, None, score
        elif key in routes:
            yield routes[key].expert, key, score


def _narrowed(
    decision: RouteDecision,
    kept: list[str],
    excluded: dict[str, str],
    via: dict[str, tuple[str | None, float]],
) -> RouteDecision:
    recruited = [name for name in decision.recruited if name in kept]
    experts = recruited + [name for name in kept if name not in recruited]
    update: dict[str, object] = {
        "experts": experts,
        "fanout": max(1, len(recruited)),
        "weights": {k: v for k, v in decision.weights.items() if k in kept},
        "reason": decision.reason
        + ("; " if decision.reason else "")
        + "restricted to experts that can serve it ("
        + "; ".join(f"{name} excluded: {why}" for name, why in excluded.items())
        + ")",
    }
    if not recruited and experts[0] in via:  # the answering expert now comes from another score
        category, score = via[experts[0]]
        if category is not None:
            update["category"] = category
        update["confidence"] = score
    return decision.model_copy(update=update)


def _one_tool_answerer(decision: RouteDecision) -> RouteDecision:
    recruited = decision.recruited
    top = max(recruited, key=lambda name: (decision.weights.get(name, 0.0), -recruited.index(name)))
    experts = [top] + [name for name in decision.experts if name != top]
    reason = f"{decision.reason}; tools: only {top!r}, the top-weighted recruited expert, answers"
    return decision.model_copy(update={"experts": experts, "fanout": 1, "reason": reason})
