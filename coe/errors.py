"""Exceptions users can catch. Each message says what failed and what to do about it."""

from __future__ import annotations


class CoEError(Exception):
    """Base class for every error CoE raises on purpose."""


class ConfigError(CoEError):
    """experts.yaml is invalid. ``issues`` holds one line per problem: file:line: key.path: message."""

    def __init__(self, issues: list[str]) -> None:
        self.issues = issues
        super().__init__("invalid configuration:\n  " + "\n  ".join(issues))


class ModelNotFoundError(CoEError):
    """A model file could not be resolved offline (missing package, path or failed hash check)."""


class ExpertError(CoEError):
    """An expert could not answer. ``expert`` names it; the message says why."""

    def __init__(self, expert: str, reason: str) -> None:
        self.expert = expert
        self.reason = reason
        super().__init__(f"expert {expert!r} failed: {reason}")


class BadReply(ExpertError):
    """The expert answered, but its reply cannot be read (not JSON, no choices, tool calls that are
    no calls of the offered tools...): the server's 502, where an expert it cannot reach is a 503."""


class AllExpertsFailed(CoEError):
    """Every candidate expert for a request failed; ``errors`` maps expert name to reason, ``bad``
    names those that answered with a reply that cannot be read (``BadReply``)."""

    def __init__(self, errors: dict[str, str], bad: frozenset[str] = frozenset()) -> None:
        self.errors = errors
        self.bad = bad
        detail = "; ".join(f"{name}: {why}" for name, why in errors.items())
        super().__init__(f"no expert could answer ({detail})")


class NoCapableExpert(CoEError):
    """No candidate expert can serve the request: it needs a capability (tools, image parts, a JSON
    schema...) or more context than each of them has. ``needed`` maps capability to the request field
    that needs it, ``excluded`` each considered expert to why it cannot serve it."""

    def __init__(self, needed: dict[str, str], excluded: dict[str, str]) -> None:
        self.needed = needed
        self.excluded = excluded
        self.param = next(iter(needed.values()), None)
        wants = ", ".join(f"{cap} (for {field})" for cap, field in needed.items()) or "nothing special"
        why = "; ".join(f"{name}: {reason}" for name, reason in excluded.items())
        super().__init__(f"no expert can serve this request, which needs {wants}; considered {why}")


class RequestBlocked(CoEError):
    """A signal's verdict (``signals:`` in experts.yaml) blocked the request before any expert was
    called. ``code`` names the policy (``content_policy`` for the guard, ``pii_policy`` for PII), which
    the server returns as the error code of a 400; ``signal`` and ``verdict`` say what fired."""

    def __init__(self, signal: str, verdict: str, code: str, message: str) -> None:
        self.signal = signal
        self.verdict = verdict
        self.code = code
        super().__init__(message)
