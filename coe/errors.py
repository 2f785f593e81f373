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


class AllExpertsFailed(CoEError):
    """Every candidate expert for a request failed; ``errors`` maps expert name to reason."""

    def __init__(self, errors: dict[str, str]) -> None:
        self.errors = errors
        detail = "; ".join(f"{name}: {why}" for name, why in errors.items())
        super().__init__(f"no expert could answer ({detail})")
