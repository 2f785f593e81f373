"""What one expert can serve, and how much context it has: declared, else detected, else defaults."""

from __future__ import annotations

from typing import get_args

from coe.config import Capability, ExpertConfig, LlamaCppServe, VllmServe
from coe.experts.detect import Detected

ALL: frozenset[str] = frozenset(get_args(Capability))


def expert_capabilities(expert: ExpertConfig, detected: Detected | None) -> tuple[frozenset[str], str]:
    """(capabilities, where that came from: the trace says it when an expert is excluded)."""
    if expert.capabilities is not None:
        return frozenset(expert.capabilities), "capabilities in experts.yaml"
    if detected is not None and detected.capabilities is not None:
        return detected.capabilities, detected.source
    serve = expert.serve
    if isinstance(serve, LlamaCppServe):
        from coe.experts.llamacpp import renders_tools

        caps = {"json_schema", "logprobs"}
        if renders_tools(serve):
            caps.add("tools")
        if {"--mmproj", "-mm"} & set(serve.extra_args):
            caps.add("vision")
        return frozenset(caps), "llama.cpp defaults (detected from /props once it runs)"
    if isinstance(serve, VllmServe):
        # vLLM enforces named and required tool choices itself (guided decoding); `auto` needs its
        # tool parser, switched on by --enable-auto-tool-choice.
        caps = {"json_schema", "logprobs", "tool_choice"}
        if "--enable-auto-tool-choice" in serve.extra_args:
            caps.add("tools")
        return frozenset(caps), "vLLM defaults"
    return ALL, "an endpoint without capabilities: the remote server decides"


def context_window(expert: ExpertConfig, detected: Detected | None) -> int | None:
    if expert.context_window is not None:
        return expert.context_window
    if detected is not None and detected.context_window is not None:
        return detected.context_window
    if isinstance(expert.serve, LlamaCppServe):
        return expert.serve.ctx  # per slot: llama-server gets ctx x parallel
    if isinstance(expert.serve, VllmServe):
        return expert.serve.max_model_len
    return None
