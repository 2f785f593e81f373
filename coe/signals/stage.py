"""The signals stage: run the configured checks on a request before it is routed, record each verdict
in the trace and apply the registry's action (coe/config/signals.py).

Order: the guard reads the request as sent, then PII redacts it. Of the actions, ``block`` wins
(``RequestBlocked``, no expert is called), then ``route`` (the first signal that routes names the
expert), then ``redact`` and ``flag``, which never stop a request.

What the guard reads: the turns since the last assistant turn (the new user turn and the tool
results that came back since the assistant's last call), since that is where an injection enters;
earlier turns were checked when they were new. After retrieval the orchestrator calls
``check_documents`` with the turn that now holds the retrieved chunks, so an injection inside a
document is caught before the expert reads it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from coe.clock import ms_since
from coe.config.signals import ActionName, ActionSpec, GuardConfig, PiiConfig, SignalsConfig
from coe.errors import CoEError, RequestBlocked
from coe.signals.verdicts import SignalsTrace, SignalVerdict
from coe.types import Message, Request, TextPart

if TYPE_CHECKING:
    from coe.config import CoEConfig
    from coe.encoding.embedder import Embedder
    from coe.signals.guard.model import GuardModel

POLICY_CODES = {"guard": "content_policy", "pii": "pii_policy"}
_RANK: dict[str, int] = {"allow": 0, "flag": 1, "redact": 2, "route": 3, "block": 4}


class SignalStage:
    """Built once per CoE; the guard file and the encoder load on first use (thread-safe)."""

    def __init__(self, config: CoEConfig) -> None:
        self.config = config
        self.signals: SignalsConfig = config.signals
        self._guard: GuardModel | None = None
        self._embedder: Embedder | None = None
        self._threshold: float | None = None
        self._lock = threading.Lock()

    # ----------------------------------------------------------------------------------- guard

    def guard_model(self) -> tuple[GuardModel, Embedder, float]:
        cfg = self.signals.guard
        assert cfg is not None
        with self._lock:
            if self._guard is None:
                from coe.encoding.embedder import shared_embedder
                from coe.signals.guard.model import load

                path = self.config.resolve_path(cfg.model)
                if not path.is_file():
                    raise CoEError(f"signals.guard.model: {path}: no such file (train one: coe train-guard)")
                try:
                    model = load(path)
                    embedder = shared_embedder(self.config.embedder, self.config.base_dir)
                    model.check_encoder(embedder, path)
                except ValueError as exc:
                    raise CoEError(f"signals.guard.model: {exc}") from None
                self._threshold = (
                    cfg.threshold
                    if cfg.threshold is not None
                    else model.threshold_for(cfg.target_fpr)
                    if cfg.target_fpr is not None
                    else model.header.threshold
                )
                self._embedder, self._guard = embedder, model
        assert self._embedder is not None and self._threshold is not None
        return self._guard, self._embedder, self._threshold

    def _guard_verdict(self, texts: Sequence[tuple[int, str, str]], where: str) -> SignalVerdict:
        """``texts``: (message index, role, text) to score; the verdict is that of the highest score."""
        cfg = self.signals.guard
        assert cfg is not None
        t = time.perf_counter()
        model, embedder, threshold = self.guard_model()
        texts = [x for x in texts if x[2].strip()]
        if not texts:
            return SignalVerdict(signal="guard", verdict="benign", score=0.0, threshold=threshold)
        scores = model.score([x[2] for x in texts], embedder)
        best = int(scores.attack.argmax())
        score = float(scores.attack[best])
        label = scores.label(best) if score > threshold else "benign"
        action = _action(cfg, label) if label != "benign" else "allow"
        return SignalVerdict(
            signal="guard",
            verdict=label,
            score=round(score, 4),
            threshold=round(threshold, 4),
            action="none" if action == "allow" else action,
            route=_route(cfg, label) if action == "route" else None,
            evidence={
                "read": where,
                "messages": [x[0] for x in texts],
                "message": texts[best][0],
                "role": texts[best][1],
                "p": {
                    k: round(float(v), 4)
                    for k, v in zip(model.header.labels, scores.probs[best], strict=True)
                },
            },
            latency_ms=ms_since(t),
        )

    # -------------------------------------------------------------------------------------- PII

    def _pii(self, request: Request) -> tuple[Request, SignalVerdict]:
        from coe.signals.pii import find, redact

        cfg = self.signals.pii
        assert cfg is not None
        t = time.perf_counter()
        found: list[dict[str, Any]] = []
        messages = list(request.messages)
        redacted = 0
        plans: list[tuple[int, int | None, str, list[Any]]] = []
        for i, message in enumerate(messages):
            if message.role not in cfg.roles:
                continue
            for j, text in _text_parts(message):
                spans = find(text, cfg.types, cfg.min_score)
                if spans:
                    plans.append((i, j, text, spans))
                    found += [
                        {
                            "message": i,
                            **({"part": j} if j is not None else {}),
                            "type": s.type,
                            "start": s.start,
                            "end": s.end,
                            "score": round(s.score, 3),
                        }
                        for s in spans
                    ]
        types = sorted({str(f["type"]) for f in found})
        action: ActionName = max((_action(cfg, k) for k in types), key=_RANK.__getitem__, default="allow")
        route = None
        if action == "route":
            route = next(r for k in types if _action(cfg, k) == "route" and (r := _route(cfg, k)))
        if action == "redact" or any(_action(cfg, k) == "redact" for k in types):
            for i, j, text, spans in plans:
                keep = [s for s in spans if _action(cfg, s.type) == "redact"]
                if keep:
                    messages[i] = _replace(messages[i], j, redact(text, keep))
                    redacted += len(keep)
            request = request.model_copy(update={"messages": messages})
        verdict = SignalVerdict(
            signal="pii",
            verdict="pii" if found else "clean",
            score=max((float(f["score"]) for f in found), default=None),
            action="none" if action == "allow" else action,
            route=route,
            evidence={"types": types, "spans": found, "redacted": redacted},
            latency_ms=ms_since(t),
        )
        return request, verdict

    # -------------------------------------------------------------------------------- the stage

    def run(self, request: Request) -> tuple[Request, SignalsTrace]:
        """The request to route (redacted where PII says so) and the trace. Raises RequestBlocked."""
        trace = SignalsTrace()
        if self.signals.guard is not None:
            new = _new_turns(request.messages)
            self._record(trace, self._guard_verdict(new, "turns since the last assistant turn"))
        if self.signals.pii is not None and trace.blocked_by is None:
            request, verdict = self._pii(request)
            trace.redacted += int(verdict.evidence.get("redacted", 0))
            self._record(trace, verdict)
        return request, trace

    def warm(self) -> None:
        """Load what the checks need now (the server's start-up), so the first request does not pay
        for it and a bad guard file shows in the log at start."""
        if self.signals.guard is not None:
            self.guard_model()
        if self.signals.pii is not None:
            self._pii(Request.from_input("warm up"))

    def redacted(self, request: Request) -> Request:
        """``request`` as the expert saw it (PII redacted where the registry says so): what a store
        keeps of a conversation (the server's stored responses), so no stored turn holds the values."""
        return self._pii(request)[0] if self.signals.pii is not None else request

    def check_documents(self, before: Request, after: Request, trace: SignalsTrace) -> None:
        """After retrieval: the guard reads the turns the retriever rewrote (they hold the documents)."""
        if self.signals.guard is None:
            return
        changed = [
            (i, m.role, m.text)
            for i, (m, old) in enumerate(zip(after.messages, before.messages, strict=False))
            if m.text != old.text
        ]
        if changed:
            self._record(trace, self._guard_verdict(changed, "retrieved documents"))

    def _record(self, trace: SignalsTrace, verdict: SignalVerdict) -> None:
        trace.verdicts.append(verdict)
        if verdict.action == "block" and trace.blocked_by is None:
            trace.blocked_by = verdict.signal
        elif verdict.action == "route" and trace.routed_to is None:
            trace.routed_to = verdict.route
        elif verdict.action == "flag":
            trace.flagged.append(verdict.signal)

    @staticmethod
    def blocked(trace: SignalsTrace) -> RequestBlocked:
        verdict = next(v for v in trace.verdicts if v.action == "block")
        code = POLICY_CODES.get(verdict.signal, "content_policy")
        what = (
            f"PII ({', '.join(verdict.evidence.get('types', []))})"
            if verdict.signal == "pii"
            else f"a likely {verdict.verdict} (score {verdict.score:.2f} > threshold {verdict.threshold:.2f})"
        )
        return RequestBlocked(
            verdict.signal, verdict.verdict, code, f"{code}: the request was blocked: it contains {what}"
        )


def _action(cfg: GuardConfig | PiiConfig, category: str) -> ActionName:
    spec: ActionSpec | None = cfg.categories.get(category)  # type: ignore[call-overload]
    chosen = spec.action if spec is not None and spec.action is not None else cfg.action
    return chosen or "allow"


def _route(cfg: GuardConfig | PiiConfig, category: str) -> str | None:
    spec: ActionSpec | None = cfg.categories.get(category)  # type: ignore[call-overload]
    return spec.route if spec is not None and spec.action == "route" else cfg.route


def _new_turns(messages: Sequence[Message]) -> list[tuple[int, str, str]]:
    last = max((i for i, m in enumerate(messages) if m.role == "assistant"), default=-1)
    return [(i, m.role, m.text) for i, m in enumerate(messages) if i > last and m.role in ("user", "tool")]


def _text_parts(message: Message) -> list[tuple[int | None, str]]:
    if isinstance(message.content, str):
        return [(None, message.content)]
    if isinstance(message.content, list):
        return [(j, p.text) for j, p in enumerate(message.content) if isinstance(p, TextPart)]
    return []


def _replace(message: Message, part: int | None, text: str) -> Message:
    if part is None:
        return message.model_copy(update={"content": text})
    assert isinstance(message.content, list)
    parts = list(message.content)
    parts[part] = TextPart(text=text)
    return message.model_copy(update={"content": parts})
