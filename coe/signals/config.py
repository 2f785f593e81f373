"""``signals:``: the checks that run on a request before (or instead of) its expert."""

from __future__ import annotations

from pydantic import Field

from coe.config.base import Strict
from coe.signals.cache.config import CacheConfig


class SignalsConfig(Strict):
    """Each signal is off unless its block is present."""

    cache: CacheConfig | None = Field(
        None, description="the semantic response cache (coe.signals.cache); absent: no cache"
    )
