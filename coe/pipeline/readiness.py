"""Readiness that means ready: build every strategy object that can fail, now, without starting any
expert, and say which registry key each failure belongs to.

Why: the router, the aggregator, the retrieval gate and index, the signal checks, the sessions and
the cache are built lazily, on the first request that needs them. A file that cannot be loaded (a
garbage ``router.model``) would otherwise pass ``coe validate``, let ``coe serve`` start and report
ready, and then fail every request. ``coe validate`` prints what ``problems`` returns in the house
error style (``file:line: key.path: message``); ``coe serve`` calls it at start-up and from
``/readyz``.

Loading the files is the point, so the sentence encoder is loaded too (once: it is shared by every
stage, ``coe.encoding.embedder.shared_embedder``); experts are not started.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from pydantic import BaseModel

from coe.errors import CoEError, ConfigError
from coe.protocols import WarmRouter
from coe.types import Request

if TYPE_CHECKING:
    from coe.config import CoEConfig
    from coe.pipeline.parts import Parts

# "router.cost.lam: required ..." or "signals.guard.model: /x/guard.npz: no such file": a message
# that already names its key path.
_KEYED = re.compile(r"^([A-Za-z_][\w-]*(?:\.[\w-]+)+): (.*)$", re.DOTALL)
# Where a path named in a message ends: ``/x/router`` is not named by ``/x/router.npz: ...``.
_END = r"(?![\w\-/]|\.\w)"


def problems(parts: Parts) -> dict[str, str]:
    """Key path (``router.model``, ``retrieval.index``, ``signals.guard.model``...) -> why that part
    cannot be built; empty when everything the registry configures loads. Never raises for a
    strategy's failure, and never starts an expert."""
    found: dict[str, str] = {}
    for check in (_router, _aggregator, _retrieval, _signals, _sessions, _cache):
        check(parts, found)
    return found


def _router(parts: Parts, found: dict[str, str]) -> None:
    with _reported(found, parts.config, "router", _files(parts.config, "router", parts.config.router)):
        router = parts.router
        if isinstance(router, WarmRouter):  # loads what the router loads lazily (encoders, members)
            router.warm()


def _aggregator(parts: Parts, found: dict[str, str]) -> None:
    with _reported(
        found, parts.config, "aggregator", _files(parts.config, "aggregator", parts.config.aggregator)
    ):
        parts.aggregator  # noqa: B018 (building it is the check)


def _retrieval(parts: Parts, found: dict[str, str]) -> None:
    cfg = parts.config.retrieval
    if cfg is None:
        return
    files = _files(parts.config, "retrieval", cfg)
    retriever = None
    with _reported(found, parts.config, "retrieval", files):
        retriever = parts.retriever
    if retriever is None:
        return
    with _reported(found, parts.config, "retrieval.gate", files):
        retriever.gate  # noqa: B018 (loads the gate file)
    if cfg.gate != "never":
        with _reported(found, parts.config, "retrieval.index", {}):
            retriever.index()


def _signals(parts: Parts, found: dict[str, str]) -> None:
    cfg = parts.config.signals
    stage = None
    with _reported(found, parts.config, "signals", {}):
        stage = parts.signals
    if stage is None:
        return
    if cfg.guard is not None:
        with _reported(
            found, parts.config, "signals.guard", _files(parts.config, "signals.guard", cfg.guard)
        ):
            stage.guard_model()
    if cfg.pii is not None:
        with _reported(found, parts.config, "signals.pii", {}):
            stage.redacted(Request.from_input("warm up"))


def _sessions(parts: Parts, found: dict[str, str]) -> None:
    cfg = parts.config.router.sessions
    if cfg.enabled:
        with _reported(found, parts.config, "router.sessions", _files(parts.config, "router.sessions", cfg)):
            parts.sessions  # noqa: B018 (loads the continuation model)


def _cache(parts: Parts, found: dict[str, str]) -> None:
    """A verifier that cannot be loaded does not fail the cache (it answers exact matches only, and
    says so in its note); a semantic cache without its verifier is still a registry to fix."""
    cfg = parts.config.signals.cache
    if cfg is None or not cfg.enabled:
        return
    files = _files(parts.config, "signals.cache", cfg)
    cache = None
    with _reported(found, parts.config, "signals.cache", files):
        cache = parts.cache
    if cache is None or not cfg.semantic:
        return
    with _reported(found, parts.config, "signals.cache", files):
        if cache.note:
            raise CoEError(cache.note)
        verifier = cache.matcher.verifier if cache.matcher is not None else None
        if cfg.verifier is not None and verifier is not None:
            from coe.encoding.embedder import shared_embedder

            space = shared_embedder(parts.config.embedder, parts.config.base_dir).space
            if verifier.encoder != space:
                raise CoEError(
                    f"signals.cache.verifier: fitted on {verifier.encoder!r} cosines, but the embedder "
                    f"makes {space!r} vectors: only exact matches would be replayed; fit one with "
                    "`coe train-cache`"
                )


@contextmanager
def _reported(found: dict[str, str], config: CoEConfig, key: str, files: dict[str, str]) -> Iterator[None]:
    """Record what the block raises under the most precise key path found for it (``_keyed``). Any
    exception counts: whatever a strategy raises while being built would otherwise reach a request
    as a 500."""
    try:
        yield
    except ConfigError as exc:
        for issue in exc.issues:
            _add(found, *_keyed(config, issue, key, files))
    except Exception as exc:  # a plug-in may raise anything; each is reported
        known = isinstance(exc, CoEError | ValueError | OSError)
        text = str(exc) if known else f"{type(exc).__name__}: {exc}"
        _add(found, *_keyed(config, text or type(exc).__name__, key, files))


def _add(found: dict[str, str], key: str, message: str) -> None:
    found[key] = f"{found[key]}; {message}" if key in found else message


def _keyed(config: CoEConfig, message: str, key: str, files: dict[str, str]) -> tuple[str, str]:
    """(key path, message): the key path the message starts with when that is a key of the registry
    under ``key``'s block, else the setting whose file the message names (the longest such path),
    else ``key``."""
    m = _KEYED.match(message)
    if m and m.group(1).split(".")[0] == key.split(".")[0] and _is_key(config, m.group(1).split(".")):
        return m.group(1), m.group(2)
    named = [(len(path), k) for k, path in files.items() if re.search(re.escape(path) + _END, message)]
    return (max(named)[1] if named else key), message


def _is_key(config: CoEConfig, path: list[str]) -> bool:
    """Whether ``path`` names a setting of the registry (``router.npz`` in "router.npz: not a router
    artefact" is a file, not a key)."""
    node: object = config
    for part in path:
        if isinstance(node, BaseModel) and part in type(node).model_fields:
            node = getattr(node, part)
        elif isinstance(node, dict) and part in node:
            node = node[part]
        else:
            return False
    return True


def _files(config: CoEConfig, prefix: str, settings: BaseModel) -> dict[str, str]:
    """Key path -> resolved path of every text setting in ``settings`` (nested blocks included), so a
    failure that names a file can be put on the key that gave it."""
    out: dict[str, str] = {}
    visit: list[tuple[str, BaseModel]] = [(prefix, settings)]
    while visit:
        where, model = visit.pop()
        for name in type(model).model_fields:
            value = getattr(model, name, None)
            if isinstance(value, BaseModel):
                visit.append((f"{where}.{name}", value))
            elif isinstance(value, str) and value and name != "source":
                out[f"{where}.{name}"] = str(config.resolve_path(value))
    return out
