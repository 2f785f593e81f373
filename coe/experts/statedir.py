"""The state dir (``serving.state_dir``, else one per registry under the cache): where expert logs,
the ``coe experts up`` record, sessions, the answer cache and traces are kept. A function of the
configuration alone, so that commands needing only a path do not build an expert pool."""

from __future__ import annotations

import hashlib
from pathlib import Path

from coe.config import CoEConfig
from coe.experts.models import cache_dir


def state_dir(config: CoEConfig) -> Path:
    """The registry's state dir, created if missing. Without ``serving.state_dir`` two registries never
    share one: the dir is named after the registry file's path."""
    if config.serving.state_dir:
        path = config.resolve_path(config.serving.state_dir)
    else:
        key = str(config.source.resolve()) if config.source else "<memory>"
        path = cache_dir() / "run" / hashlib.sha1(key.encode()).hexdigest()[:12]
    path.mkdir(parents=True, exist_ok=True)
    return path


def log_path(config: CoEConfig, name: str) -> Path:
    """Where an expert's server process writes its output (crash messages point here)."""
    return state_dir(config) / "logs" / f"{name}.log"
