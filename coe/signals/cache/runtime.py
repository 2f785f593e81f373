"""The cache on the request path: ``lookup`` after routing (the router has embedded the prompt by
then), ``put`` after the expert answered.

The scope key is a hash of everything but the wording of the last user turn: the conversation before
it (every role, tool calls and results included, as ``coe.sessions.identity`` fingerprints it), the
response format, any non-text part of the last turn (an image), and the parts ``scope`` names: the
model id asked, the system prompt, the tools with their schemas and tool choice, and the generation
params that change the answer. Two requests of different conversations therefore never meet: their
entries are in different scopes. Within one scope an exact match (the same last turn, whitespace
folded) wins; otherwise the nearest neighbour by the router's own embedding, if the matcher allows.

No second encode: the vector is the one the router computed for this request, read from the
request's embedding scope (``Embedder.peek``). A router that embedded nothing (tfidf, a cascade that
stopped early, an LLM classifier) gives exact matches only, and the trace says so.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from coe.clock import ms_since
from coe.config.signals import CacheConfig
from coe.sessions.identity import fingerprint
from coe.signals.cache.store import (
    CacheEntry,
    CacheStore,
    Candidate,
    MemoryCache,
    RedisCache,
    SqliteCache,
    StoreUnavailable,
)
from coe.types import (
    Answer,
    CacheTrace,
    FunctionCallDelta,
    Message,
    Request,
    StreamEvent,
    TextPart,
    ToolCall,
    ToolCallDelta,
    Trace,
    Usage,
)

if TYPE_CHECKING:
    from coe.config import CoEConfig
    from coe.signals.cache.matcher import Matcher

log = logging.getLogger("coe.signals.cache")

# Request params that never change the answer: bookkeeping for the caller or the provider.
NEUTRAL_PARAMS = frozenset(
    {
        "metadata",
        "user",
        "stream",
        "stream_options",
        "safety_identifier",
        "prompt_cache_key",
        "prompt_cache_retention",
        "prompt_cache_options",
        "service_tier",
        "store",
    }
)


@dataclass
class Embedding:
    vector: np.ndarray
    space: str  # the exact vectors (encoder space and truncation): stored vectors compare only within it
    encoder: str  # the encoder space alone: what a verifier was fitted on


@dataclass
class Pending:
    """What a miss needs to store the answer once the expert has given it."""

    scope: str
    entry_id: str
    text: str
    embedding: Embedding | None


def router_embedding(router: Any, request: Request) -> Embedding | None:
    """The router's own vector of this request's prompt, if it computed one (``prompt_embedding``)."""
    method = getattr(router, "prompt_embedding", None)
    found = method(request) if callable(method) else None
    if found is None:
        return None
    vector, space, encoder = found
    return Embedding(vector, space, encoder)


def _last_user(messages: list[Message]) -> int | None:
    return next((i for i in range(len(messages) - 1, -1, -1) if messages[i].role == "user"), None)


def fold(text: str) -> str:
    return " ".join(text.split())


class ScopeIndex:
    """A scope's candidate vectors as one float32 matrix, kept in process: reading and decoding a
    thousand entries from the store on every miss would cost milliseconds; a matrix product over them
    costs microseconds. Rows grow by doubling; the store stays the authority (a winner is read back
    from it, so an entry expired or cleared since is a miss)."""

    def __init__(self, space: str, dim: int) -> None:
        self.space = space
        self.ids: list[str] = []
        self.texts: list[str] = []
        self._rows: set[str] = set()
        self.matrix = np.zeros((8, dim), dtype=np.float32)
        self.read = time.monotonic()
        self.cursor: str | None = None  # a store that lists changes: where its next listing starts

    def extend(self, candidates: list[Candidate]) -> None:
        """Add the candidates (oldest first) that carry a vector of this index's space."""
        for c in candidates:
            if c.vector is not None and c.space == self.space:
                self.add(c.id, c.text, np.frombuffer(c.vector, dtype=np.float16).astype(np.float32))

    def add(self, entry_id: str, text: str, vector: np.ndarray) -> None:
        if entry_id in self._rows:  # the same turn answered again, or listed again: one row
            return
        self._rows.add(entry_id)
        n = len(self.ids)
        if n == len(self.matrix):
            self.matrix = np.concatenate([self.matrix, np.zeros_like(self.matrix)])
        self.matrix[n] = vector
        self.ids.append(entry_id)
        self.texts.append(text)

    def nearest(self, vector: np.ndarray) -> tuple[int, float]:
        sims = self.matrix[: len(self.ids)] @ vector
        best = int(np.argmax(sims))
        return best, float(sims[best])


class SemanticCache:
    REFRESH_S = 2.0  # a shared store's scope is re-read this often (other processes add entries)
    REBUILD_S = 60.0  # a store that lists changes: its whole scope re-read this often (drops expired rows)
    MAX_SCOPES = 4096  # scope indexes kept in process; the least recently used go first

    def __init__(self, cfg: CacheConfig, store: CacheStore, matcher: Matcher | None, note: str = "") -> None:
        self.cfg = cfg
        self.store = store
        self.matcher = matcher  # None: exact matches only (``note`` says why)
        self.note = note
        self.errors = 0
        self._indexes: OrderedDict[str, ScopeIndex] = OrderedDict()

    async def _read(
        self, scope: str, entry_id: str, embedding: Embedding | None
    ) -> tuple[CacheEntry | None, ScopeIndex | None]:
        """The exact entry and, when a nearest-neighbour search will follow (``embedding``), the
        scope's index brought up to date: from the same read where the store lists changes, else by
        re-reading the scope when the in-process copy is stale (the memory store's never is)."""
        if embedding is None:
            return await self.store.exact(entry_id), None
        index = self._indexes.get(scope)
        if index is not None and index.space != embedding.space:
            index = None
        now = time.monotonic()
        rebuild = index is None or now - index.read >= self.REBUILD_S
        probe = await self.store.probe(entry_id, scope, None if rebuild or index is None else index.cursor)
        if probe.added is not None:
            if rebuild or index is None:
                index = ScopeIndex(embedding.space, len(embedding.vector))
            index.extend(probe.added)
            index.cursor = probe.cursor
        elif probe.exact is None and (
            index is None or (self.store.kind != "memory" and now - index.read >= self.REFRESH_S)
        ):
            index = ScopeIndex(embedding.space, len(embedding.vector))
            index.extend(list(reversed(await self.store.scope(scope))))
        if index is not None:
            self._indexes[scope] = index
            self._indexes.move_to_end(scope)
            while len(self._indexes) > self.MAX_SCOPES:
                self._indexes.popitem(last=False)
        return probe.exact, index

    # ------------------------------------------------------------------------------ the key

    def scope_key(self, request: Request, asked: str, expert_temperature: float | None) -> str | None:
        """None when the request may not be cached (sampled, several choices, no user turn)."""
        messages = request.messages
        last = _last_user(messages)
        if last is None:
            return None
        temperature = request.params.get("temperature", expert_temperature)
        if isinstance(temperature, int | float) and temperature > 0 and not self.cfg.cache_sampled:
            return None
        n = request.params.get("n")
        if isinstance(n, int) and n > 1:
            return None
        system = [m for m in messages if m.role in ("system", "developer")]
        rest = [m for i, m in enumerate(messages) if i != last and m.role not in ("system", "developer")]
        turn = messages[last]
        media = (
            [p.model_dump(mode="json") for p in turn.content if not isinstance(p, TextPart)]
            if isinstance(turn.content, list)
            else []
        )
        parts: dict[str, Any] = {
            "history": fingerprint(rest),
            "after": last - len([m for m in messages[:last] if m.role in ("system", "developer")]),
            "response_format": _dump(request.response_format),
            "media": media,
        }
        if "model" in self.cfg.scope:
            parts["model"] = asked
        if "system" in self.cfg.scope:
            parts["system"] = fingerprint(system)
        if "tools" in self.cfg.scope:
            parts["tools"] = [_dump(t) for t in request.tools or []]
            parts["tool_choice"] = _dump(request.tool_choice)
            parts["parallel_tool_calls"] = request.parallel_tool_calls
        if "params" in self.cfg.scope:
            parts["params"] = {k: v for k, v in sorted(request.params.items()) if k not in NEUTRAL_PARAMS}
            parts["logprobs"] = [request.logprobs, request.top_logprobs, request.reasoning_effort]
        raw = json.dumps(parts, sort_keys=True, default=str, ensure_ascii=False)
        return hashlib.sha256(raw.encode()).hexdigest()[:32]

    # ------------------------------------------------------------------------------ lookup

    async def lookup(
        self,
        request: Request,
        asked: str,
        embedding: Embedding | None,
        expert_temperature: float | None = None,
    ) -> tuple[CacheTrace, Answer | None, Pending | None]:
        """(trace, the replayed answer or None, what to store after a miss or None)."""
        t = time.perf_counter()
        scope = self.scope_key(request, asked, expert_temperature)
        if scope is None:
            why = "not cacheable: sampled (temperature > 0), several choices, or no user turn"
            return CacheTrace(status="skip", reason=why), None, None
        text = fold(request.text)
        entry_id = hashlib.sha256(f"{scope}\n{text}".encode()).hexdigest()[:24]
        pending = Pending(scope, entry_id, text, embedding)
        refusal = self._refusal(embedding)
        try:
            found, index = await self._read(scope, entry_id, None if refusal else embedding)
            if found is not None:
                trace = CacheTrace(
                    status="hit", match="exact", entry=found.id, matched_text=found.text, similarity=1.0
                )
                trace.reason = "the same last user turn in the same scope"
                trace.lookup_ms = ms_since(t)
                return trace, cached_answer(found), None
            if refusal is not None or index is None or embedding is None:
                trace, entry = CacheTrace(status="miss", reason=refusal or "no entry of this scope"), None
            else:
                trace, entry = await self._nearest(index, text, embedding)
        except StoreUnavailable as exc:
            self.errors += 1
            log.warning("cache store failed, answering uncached: %s", exc)
            trace = CacheTrace(status="error", error=str(exc), reason="store unavailable: answered uncached")
            trace.lookup_ms = ms_since(t)
            return trace, None, None
        trace.lookup_ms = ms_since(t)
        if entry is not None:
            return trace, cached_answer(entry), None
        return trace, None, pending

    def _refusal(self, embedding: Embedding | None) -> str | None:
        """Why no nearest-neighbour search can follow an exact miss, or None."""
        if not self.cfg.semantic:
            return "no exact match (semantic: false)"
        if self.matcher is None:
            return f"no exact match; {self.note}"
        if embedding is None:
            return "no exact match; the router embedded nothing for this prompt: exact matches only"
        verifier = self.matcher.verifier
        if verifier is not None and verifier.encoder != embedding.encoder:
            return (
                f"no exact match; the verifier was fitted on {verifier.encoder!r} cosines, the router "
                f"embeds with {embedding.encoder!r}: exact matches only"
            )
        return None

    async def _nearest(
        self, index: ScopeIndex, text: str, embedding: Embedding
    ) -> tuple[CacheTrace, CacheEntry | None]:
        assert self.matcher is not None  # _refusal said a search may follow
        if not index.ids:
            return CacheTrace(status="miss", reason="no entry of this scope"), None
        best, cosine = index.nearest(embedding.vector)
        found_id, found_text = index.ids[best], index.texts[best]
        verdict = self.matcher.decide(cosine, text, found_text)
        trace = CacheTrace(
            status="hit" if verdict.hit else "miss",
            match="semantic" if verdict.hit else None,
            entry=found_id,
            matched_text=found_text,
            similarity=round(cosine, 4),
            probability=None if verdict.probability is None else round(verdict.probability, 4),
            reason=("nearest entry: " if verdict.hit else "nearest entry refused: ") + verdict.reason,
            refused=verdict.refused,
            candidates=len(index.ids),
        )
        if not verdict.hit:
            return trace, None
        entry = await self.store.exact(found_id)
        if entry is None:  # expired or cleared since it was listed
            trace.status, trace.match = "miss", None
            trace.reason = "the nearest entry expired before it could be read"
        return trace, entry

    # ------------------------------------------------------------------------------ store

    async def put(self, pending: Pending, answer: Answer) -> str | None:
        """Store a good answer; the error (answered anyway) or None."""
        if answer.finish_reason == "content_filter" or not (answer.text or answer.tool_calls):
            return None  # filtered or empty (a "length" answer is kept: max_tokens is in the scope)
        emb = pending.embedding
        entry = CacheEntry(
            id=pending.entry_id,
            scope=pending.scope,
            text=pending.text,
            vector=CacheEntry.pack(emb.vector) if emb is not None else None,
            space=emb.space if emb is not None else None,
            answer={
                "text": answer.text,
                "expert": answer.expert,
                "model": answer.model,
                "usage": answer.usage.model_dump(),
                "finish_reason": answer.finish_reason,
                "tool_calls": [c.model_dump() for c in answer.tool_calls] if answer.tool_calls else None,
            },
        )
        try:
            await self.store.put(entry)
            index = self._indexes.get(pending.scope)
            if emb is not None and index is not None and index.space == emb.space:
                index.add(entry.id, entry.text, np.asarray(emb.vector, dtype=np.float16).astype(np.float32))
        except StoreUnavailable as exc:
            self.errors += 1
            log.warning("cache store failed, answer not cached: %s", exc)
            return str(exc)
        return None

    async def aclose(self) -> None:
        await self.store.aclose()


def cached_answer(entry: CacheEntry) -> Answer:
    a = entry.answer
    calls = [ToolCall.model_validate(c) for c in a.get("tool_calls") or []] or None
    return Answer(
        text=a.get("text") or "",
        expert=a["expert"],
        model=a.get("model"),
        usage=Usage.model_validate(a.get("usage") or {}),
        tool_calls=calls,
        finish_reason=a.get("finish_reason"),
    )


def cached_events(answer: Answer, trace: Trace) -> list[StreamEvent]:
    """A cached answer as a stream: its text in word-sized deltas, each tool call whole, then done."""
    import re

    events = [StreamEvent(type="delta", text=piece) for piece in re.findall(r"\s*\S+\s*", answer.text)]
    for i, call in enumerate(answer.tool_calls or []):
        fn = FunctionCallDelta(name=call.function.name, arguments=call.function.arguments)
        delta = ToolCallDelta(index=i, id=call.id, type="function", function=fn)
        events.append(StreamEvent(type="delta", tool_calls=[delta]))
    answer.trace = trace
    events.append(StreamEvent(type="done", answer=answer))
    return events


def open_cache_store(cfg: CacheConfig, config: CoEConfig, default: str, state_dir: Path) -> CacheStore:
    kind = cfg.store or default
    if kind == "redis":
        assert cfg.url is not None  # checked by CacheConfig
        return RedisCache(cfg.url, cfg.ttl_s, cfg.max_entries, cfg.timeout_s)
    if kind == "sqlite":
        path = config.resolve_path(cfg.path) if cfg.path else state_dir / "cache.db"
        return SqliteCache(path, cfg.ttl_s, cfg.max_entries)
    return MemoryCache(cfg.ttl_s, cfg.max_entries)


def build_cache(config: CoEConfig, default_store: str, state_dir: Path) -> SemanticCache | None:
    """The registry's cache, or None without an enabled ``signals.cache`` block."""
    cfg = config.signals.cache
    if cfg is None or not cfg.enabled:
        return None
    from coe.signals.cache.matcher import SHIPPED, Matcher, Verifier

    path = config.resolve_path(cfg.verifier) if cfg.verifier else SHIPPED
    note = ""
    try:
        verifier: Verifier | None = Verifier.load(path)
    except (ValueError, OSError, KeyError) as exc:
        verifier = None
        note = f"no pair verifier ({exc}): exact matches only"
    matcher = Matcher(verifier, cfg.min_cosine, cfg.threshold) if verifier is not None else None
    return SemanticCache(cfg, open_cache_store(cfg, config, default_store, state_dir), matcher, note)


def _dump(value: Any) -> Any:
    if value is None:
        return None
    if hasattr(value, "model_dump"):
        return value.model_dump(mode="json", exclude_none=True, by_alias=True)
    return value
