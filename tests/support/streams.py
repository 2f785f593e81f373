"""A streamed chat completion read in a background thread, for the shutdown tests: a stream in flight
when the server is told to stop must still run to its end."""

from __future__ import annotations

import json
import threading
from typing import Any

import httpx

# A pinned coder answer long enough to be in flight when the server is stopped.
COUNTING = {
    "model": "coe/expert/coder",
    "messages": [{"role": "user", "content": "Count from one to twenty in words"}],
    "stream": True,
    "max_tokens": 48,
    "temperature": 0.0,
}


class StreamReader(threading.Thread):
    """POSTs ``body`` to ``base``/v1/chat/completions and keeps every SSE data line; ``has_text`` is
    set once a chunk with text has arrived."""

    def __init__(self, base: str, body: dict[str, Any] = COUNTING) -> None:
        super().__init__(daemon=True)
        self.base, self.body = base, body
        self.events: list[str] = []
        self.has_text = threading.Event()
        self.status: int | None = None

    def run(self) -> None:
        with httpx.stream("POST", self.base + "/v1/chat/completions", json=self.body, timeout=120) as resp:
            self.status = resp.status_code
            for line in resp.iter_lines():
                if line.startswith("data: "):
                    self.events.append(line.removeprefix("data: "))
                    if '"content"' in line:
                        self.has_text.set()

    def complete_text(self) -> str:
        """The streamed text, after checking the stream ran to its end: ``[DONE]`` last, a finish
        reason on the last choice, and no error event (nothing was cut)."""
        assert self.status == 200 and self.events and self.events[-1] == "[DONE]", self.events[-3:]
        chunks = [json.loads(e) for e in self.events[:-1]]
        assert not any("error" in c for c in chunks)
        choices = [c["choices"][0] for c in chunks if c["choices"]]
        assert choices[-1].get("finish_reason") in ("stop", "length")
        text = "".join(c["delta"].get("content") or "" for c in choices)
        assert text.strip()
        return text
