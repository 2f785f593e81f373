"""The text an encoder reads of a long prompt, the same for routing, training and evaluation."""

from __future__ import annotations

# Long prompts cost encoder time and MiniLM reads only 256 tokens anyway.
VIEW_CHARS = 512
_HEAD_SHARE = 0.25


def text_view(text: str, max_chars: int | None = VIEW_CHARS) -> str:
    """What the encoder sees of a long prompt: its first quarter and its last three quarters.

    Why not just the head: few-shot prompts (RouterBench's ARC and Winogrande rows) share the same
    demonstrations up front and put the question last; with the head alone every ARC prompt embeds
    to the same vector. Why not just the tail: an instruction such as "Summarise the following" comes
    first. Short prompts are unchanged.
    """
    if not max_chars or len(text) <= max_chars:
        return text
    head = int(max_chars * _HEAD_SHARE)
    return f"{text[:head]}\n...\n{text[len(text) - (max_chars - head) :]}"
