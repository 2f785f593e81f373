"""An expert's reply as CoE reads it: whole (``read_reply``) or streamed (``StreamedReply``, chunks
in, StreamEvents out, and the Answer they add up to).

Whatever an engine sends, reading it ends in an answer or a ``BadReply`` naming the expert and what
was wrong (never another exception): the request falls back to the next candidate, or the server
answers 502 in the API's shape. A tool call naming a tool the request did not offer is a bad reply
too (a client cannot run it). Tool arguments that are not JSON are passed on as the text they are:
Chat and Responses carry arguments as a string; the Messages API, which needs an object, says how
it shows them (coe.server.apis.messages)."""

from __future__ import annotations

import json
from typing import Any, NamedTuple

from pydantic import ValidationError

from coe.capabilities.forced import CallStream, new_call_id
from coe.errors import BadReply
from coe.types import Answer, FunctionCall, Request, StreamEvent, ToolCall, ToolCallDelta, Trace, Usage


class Reply(NamedTuple):
    """One whole reply, read."""

    text: str
    tool_calls: list[ToolCall] | None
    finish_reason: str | None
    usage: Usage
    logprobs: list[dict[str, Any]] | None
    reasoning: str | None
    model: str | None


def read_reply(expert: str, data: Any, request: Request) -> Reply:
    """A Chat Completions body as CoE's fields; ``BadReply`` when it is not one."""
    try:
        choices = data.get("choices")
        if not isinstance(choices, list) or not choices:
            raise BadReply(expert, "the reply has no choices")
        choice = choices[0]
        message = choice.get("message")
        if not isinstance(message, dict):
            raise BadReply(expert, "the reply's choice has no message")
        calls = tool_calls_of(expert, message.get("tool_calls"))
        check_names(expert, [c.function.name for c in calls or []], request)
        logprobs = (choice.get("logprobs") or {}).get("content")
        model = data.get("model")
        return Reply(
            text=_text(expert, message.get("content"), "content"),
            tool_calls=calls,
            finish_reason=_str_or_none(choice.get("finish_reason")),
            usage=Usage(**usage_fields(data.get("usage") or {})),
            logprobs=logprobs if isinstance(logprobs, list) else None,
            reasoning=_text(expert, reasoning_of(message), "reasoning_content") or None,
            model=model if isinstance(model, str) else None,
        )
    except (AttributeError, TypeError, ValueError):
        raise BadReply(expert, f"the reply is not a chat completion: {str(data)[:120]}") from None


def reasoning_of(message: dict[str, Any]) -> Any:
    """llama-server and vLLM's reasoning parsers say ``reasoning_content``; newer vLLM ``reasoning``."""
    return message.get("reasoning_content") or message.get("reasoning")


def _text(expert: str, value: Any, field: str) -> str:
    """Content as text: a string, null, or text parts (some engines answer with parts)."""
    if value is None or isinstance(value, str):
        return value or ""
    if isinstance(value, list) and all(isinstance(p, dict) and isinstance(p.get("text"), str) for p in value):
        return "".join(p["text"] for p in value)
    raise BadReply(expert, f"{field} is neither text nor text parts: {str(value)[:120]}")


def _str_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def check_names(expert: str, names: list[str], request: Request, partial: bool = False) -> None:
    """Every call names an offered tool (``partial``: or the start of one's name, mid-stream)."""
    if not names:
        return
    offered = [t.function.name for t in request.tools or []]
    for name in names:
        known = any(t.startswith(name) for t in offered) if partial else name in offered
        if not known:
            what = f"offered: {', '.join(offered)}" if offered else "the request offered no tools"
            raise BadReply(expert, f"a tool call names {name!r}, which is not a tool of the request ({what})")


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
    except (AttributeError, TypeError, ValueError, ValidationError):
        raise BadReply(expert, f"malformed tool_calls in the reply: {str(raw)[:120]}") from None


class StreamedReply:
    """One expert's streamed reply: chunks in, StreamEvents out, and the Answer they add up to.
    Tool-call fragments are assembled by ``index`` (a call without an id gets one on its first
    fragment, so the client and the Answer see the same id); reasoning deltas are passed on; with
    ``forced``, the text is the forced call's JSON and goes out as tool-call deltas instead
    (coe.capabilities.forced.CallStream). A chunk that is not a chat completion chunk is a BadReply."""

    def __init__(self, expert: str, request: Request, forced: CallStream | None) -> None:
        self.expert = expert
        self.request = request
        self.forced = forced
        self.started = False  # a delta went out: from here a failure cannot fall back
        self.parts: list[str] = []
        self.thoughts: list[str] = []
        self.calls: dict[int, dict[str, Any]] = {}
        self.tool_calls: list[ToolCall] | None = None
        self.logprobs: list[dict[str, Any]] = []
        self.finish: str | None = None
        self.usage = Usage()
        self.model: str | None = None

    def take(self, chunk: Any) -> list[StreamEvent]:
        try:
            return self._take(chunk)
        except (AttributeError, TypeError, ValueError):
            what = f"a stream chunk is not a chat completion chunk: {str(chunk)[:120]}"
            raise BadReply(self.expert, what) from None

    def _take(self, chunk: dict[str, Any]) -> list[StreamEvent]:
        model = chunk.get("model")
        self.model = model if isinstance(model, str) else self.model
        if chunk.get("usage"):
            self.usage = Usage(**usage_fields(chunk["usage"]))
        events = []
        for choice in chunk.get("choices") or []:
            delta = choice.get("delta") or {}
            self.finish = _str_or_none(choice.get("finish_reason")) or self.finish
            text = _text(self.expert, delta.get("content"), "content")
            thought = _text(self.expert, reasoning_of(delta), "reasoning_content")
            deltas = self._deltas(delta.get("tool_calls"))
            if self.forced is not None:
                deltas, text = (self.forced.feed(text) if text else []), ""
            logprobs = (choice.get("logprobs") or {}).get("content") or None
            if text or thought or deltas or logprobs:
                events.append(self._event(text, deltas, logprobs, thought))
        return events

    def close(self) -> list[StreamEvent]:
        """The end of the stream: a forced call is checked whole (ExpertError if it is not one)."""
        if self.forced is None:
            self.tool_calls = [
                ToolCall(id=c["id"], function=FunctionCall(name=c["name"], arguments="".join(c["arguments"])))
                for _, c in sorted(self.calls.items())
            ] or None
            check_names(self.expert, [c.function.name for c in self.tool_calls or []], self.request)
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
            reasoning="".join(self.thoughts) or None,
        )

    def _event(
        self,
        text: str,
        deltas: list[ToolCallDelta],
        logprobs: list[dict[str, Any]] | None,
        thought: str = "",
    ) -> StreamEvent:
        for d in deltas:
            if d.index not in self.calls:
                d.id = d.id or new_call_id()  # the client's id and the Answer's are this one
                d.type = "function"
            else:  # only a call's first fragment carries its id (some engines repeat it)
                d.id, d.type = None, None
            call = self.calls.setdefault(d.index, {"id": d.id, "name": "", "arguments": []})
            call["name"] += d.function.name or ""
            call["arguments"].append(d.function.arguments or "")
            if d.function.name:
                check_names(self.expert, [call["name"]], self.request, partial=True)
        self.started = True
        if text:
            self.parts.append(text)
        if thought:
            self.thoughts.append(thought)
        self.logprobs += logprobs or []
        return StreamEvent(
            type="delta", text=text, reasoning=thought, tool_calls=deltas or None, logprobs=logprobs
        )

    def _deltas(self, raw: Any) -> list[ToolCallDelta]:
        if not raw:
            return []
        try:
            return [ToolCallDelta.model_validate(d) for d in raw]
        except ValidationError:
            raise BadReply(
                self.expert, f"malformed tool_calls delta in the stream: {str(raw)[:120]}"
            ) from None


def usage_fields(usage: dict[str, Any]) -> dict[str, int]:
    return {k: int(usage.get(k) or 0) for k in ("prompt_tokens", "completion_tokens", "total_tokens")}
