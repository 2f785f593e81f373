"""CoE: composition of experts. Route each prompt to the right expert LLM and say why.

The public surface is small and re-exported here::

    from coe import CoE
    with CoE.from_yaml("experts.yaml") as coe:
        answer = coe.ask("Write a Python function that reverses a string")
        print(answer.expert, answer.trace.decision.reason)

``import coe`` stays light (no torch, no sentence-transformers, no litellm): those load on first use.
"""

from coe.config import CoEConfig, load_config
from coe.errors import AllExpertsFailed, CoEError, ConfigError, ExpertError, ModelNotFoundError
from coe.orchestrator import CoE
from coe.plugins import install_moved_modules_hint
from coe.protocols import Aggregator, Context, Router
from coe.types import Answer, ExpertAnswer, Message, Request, RouteDecision, StreamEvent, Trace, Usage

__version__ = "0.1.0"

install_moved_modules_hint()


def __getattr__(name: str) -> object:
    """``coe.feedback`` loads the trace store only when used (``import coe`` stays light)."""
    if name == "feedback":
        from coe.traces import feedback

        return feedback
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "Aggregator",
    "AllExpertsFailed",
    "Answer",
    "CoE",
    "CoEConfig",
    "CoEError",
    "ConfigError",
    "Context",
    "ExpertAnswer",
    "ExpertError",
    "Message",
    "ModelNotFoundError",
    "Request",
    "RouteDecision",
    "Router",
    "StreamEvent",
    "Trace",
    "Usage",
    "feedback",
    "load_config",
]
