"""The strict base of every registry model: an unknown key is an error, never ignored."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

CONFIG_VERSION = 1


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())
