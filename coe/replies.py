"""An expert's reply as CoE reads it: whole (``tool_calls_of``) or streamed (``StreamedReply``,
chunks in, StreamEvents out, and the Answer they add up to)."""

from __future__ import annotations

import json
from typing import Any

from pydantic import ValidationError

from coe.capabilities.forced import CallStream, new_call_id
from coe.errors import ExpertError
from coe.types import Answer, FunctionCall, Request, StreamEvent, ToolCall, ToolCallDelta, Trace, Usage


def tool_calls_of(expert: str, raw: Any) -> list[ToolCall] | None:
    """An engine's ``message.tool_calls``; arguments given as an object (some engines) become JSON text."""
    if not raw:
        return None
    try:
        calls = []
        for item in raw:
            function = dict(item.get("function") or {})
            if not isinstance(function.get("arguments"), str):
                function["arguments"] = json.dumps(function.get("arguments") or {})
            calls.append(ToolCall(id=item.get("id") or new_call_id(), function=FunctionCall(**function)))
        return calls
    except (AttributeError, TypeError, ValidationError):
        raise ExpertError(expert, f"malformed tool_calls in the reply: {str(raw)[:120]}") from None


class StreamedReply:
    """One expert's streamed reply: chunks in, StreamEvents out, and the Answer they add up to.
    Tool-call fragments are assembled by ``index``; with ``forced``, the text is the forced call's
    JSON and goes out as tool-call deltas instead (coe.capabilities.forced.CallStream)."""

    def __init__(self, expert: str, request: Request, forced: CallStream | None) -> None:
        self.expert = expert
        self.request = request
        self.forced = forced
        self.started = False  # a delta went out: from here a failure cannot fall back
        self.parts: list[str] = []
        self.calls: dict[int, dict[str, Any]] = {}
        self.tool_calls: list[ToolCall] | None = None
        self.logprobs: list[dict[str, Any]] = []
        self.finish: str | None = None
        self.usage = Usage()
        self.model: str | None = None

    def take(self, chunk: dict[str, Any]) -> list[StreamEvent]:
        self.model = chunk.get("model", self.model)
        if chunk.get("usage"):
            self.usage = Usage(**usage_fields(chunk["usage"]))
        events = []
        for choice in chunk.get("choices") or []:
            delta = choice.get("delta") or {}
            self.finish = choice.get("finish_reason") or self.finish
            text = delta.get("content") or ""
            deltas = self._deltas(delta.get("tool_calls"))
            if self.forced is not None:
                deltas, text = (self.forced.feed(text) if text else []), ""
            logprobs = (choice.get("logprobs") or {}).get("content") or None
            if text or deltas or logprobs:
                events.append(self._event(text, deltas, logprobs))
        return events

    def close(self) -> list[StreamEvent]:
        """The end of the stream: a forced call is checked whole (ExpertError if it is not one)."""
        if self.forced is None:
            self.tool_calls = [
                ToolCall(
                    id=c["id"] or new_call_id(),
                    function=FunctionCall(name=c["name"], arguments="".join(c["arguments"])),
                )
                for _, c in sorted(self.calls.items())
            ] or None
            return []
        rest, call = self.forced.finish()
        self.tool_calls, self.finish = [call], "tool_calls"
        return [self._event("", rest, None)] if rest else []

    def answer(self, trace: Trace) -> Answer:
        return Answer(
            text="".join(self.parts),
            expert=self.expert,
            model=self.model,
            usage=self.usage,
            trace=trace,
            tool_calls=self.tool_calls,
            finish_reason=self.finish,
            logprobs=self.logprobs or None,
        )

    def _event(
        self, text: str, deltas: list[ToolCallDelta], logprobs: list[dict[str, Any]] | None
    ) -> StreamEvent:
        self.started = True
        if text:
            self.parts.append(text)
        for d in deltas:
            call = self.calls.setdefault(d.index, {"id": None, "name": "", "arguments": []})
            call["id"] = d.id or call["id"]
            call["name"] += d.function.name or ""
            call["arguments"].append(d.function.arguments or "")
        self.logprobs += logprobs or []
        return StreamEvent(type="delta", text=text, tool_calls=deltas or None, logprobs=logprobs)

    def _deltas(self, raw: Any) -> list[ToolCallDelta]:
        if not raw:
            return []
        try:
            return [ToolCallDelta.model_validate(d) for d in raw]
        except ValidationError:
            raise ExpertError(
                self.expert, f"malformed tool_calls delta in the stream: {str(raw)[:120]}"
            ) from None


def usage_fields(usage: dict[str, Any]) -> dict[str, int]:
    return {k: int(usage.get(k) or 0) for k in ("prompt_tokens", "completion_tokens", "total_tokens")}
