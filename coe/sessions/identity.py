"""Which conversation a request continues, read from the request itself.

Stateless clients resend the whole history on every turn, so the history before the new user turn
identifies the conversation: the fingerprint of (role, text) for every message before the last user
turn equals the fingerprint CoE stored after answering the previous turn (its messages plus the
answer). A first turn has no history and starts a new session.

Whitespace is folded before hashing: clients trim or re-wrap the text they send back, and a session
must survive that. Roles are part of the fingerprint, so a user pasting the assistant's words is not
mistaken for the assistant.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence

from coe.types import Message

_HASHED_ROLES = ("system", "developer", "user", "assistant", "tool")


def _text(message: Message) -> str:
    calls = [f"{c.function.name}({c.function.arguments})" for c in message.tool_calls or []]
    return " ".join(" ".join([message.text, *calls]).split())


def fingerprint(messages: Sequence[Message]) -> str:
    rows = [[m.role, _text(m)] for m in messages if m.role in _HASHED_ROLES]
    return hashlib.sha256(json.dumps(rows, ensure_ascii=False).encode()).hexdigest()[:32]


def _last_user_index(messages: Sequence[Message]) -> int | None:
    return next((i for i in range(len(messages) - 1, -1, -1) if messages[i].role == "user"), None)


def history_key(messages: Sequence[Message]) -> str | None:
    """The fingerprint of the conversation before its last user turn; None for a first turn (no
    earlier user or assistant message), which begins a session of its own."""
    last = _last_user_index(messages)
    before = list(messages[:last]) if last is not None else list(messages)
    if not any(m.role in ("user", "assistant") for m in before):
        return None
    return fingerprint(before)


def continued_key(messages: Sequence[Message], answer: Message) -> str:
    """The fingerprint the next turn's history will have: these messages and the answer."""
    return fingerprint([*messages, answer])


def user_turns(messages: Sequence[Message]) -> list[str]:
    """The text of every user turn, oldest first."""
    return [m.text for m in messages if m.role == "user"]


def tool_loop_open(messages: Sequence[Message]) -> bool:
    """The request continues a tool call: it ends with tool results the assistant asked for (or with
    the assistant's call itself), so the expert that asked must read them."""
    return bool(messages) and (messages[-1].role == "tool" or bool(messages[-1].tool_calls))
