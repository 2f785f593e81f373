"""Capability- and context-aware routing, and forced tool calls on engines that do not force them.

A request needs capabilities (``needs``): tools, a JSON schema, logprobs, image/audio/file parts,
reasoning effort; and room: its estimated prompt plus its answer budget. An expert has capabilities
(``expert_capabilities``: declared in experts.yaml, else detected from the running engine, else the
engine's defaults) and a context window. ``restrict`` narrows a routing decision to the experts that
can serve the request, after the router decided and before any expert is called, so every router
gets the same rule; the trace lists each excluded expert and why.

``forced`` makes ``tool_choice: required`` or a named function hold on an engine that ignores it
(llama-server): the reply is constrained with a JSON schema over the allowed tools' names and
parameters, and turned back into a proper ``tool_calls`` message (or stream deltas).
"""

from coe.capabilities.experts import context_window, expert_capabilities
from coe.capabilities.needs import estimate_tokens, needs
from coe.capabilities.restrict import restrict

__all__ = ["context_window", "estimate_tokens", "expert_capabilities", "needs", "restrict"]
