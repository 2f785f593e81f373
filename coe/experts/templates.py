"""Where a chat template's turns begin and end, so that an answer ends where the model starts a new one.

Why: a base model, such as the default ``general`` expert (Gemma-3-270M, served with the Gemma
turns template CoE ships), has learnt the template's turn format but not to stop when its turn is
over: it writes ``<start_of_turn>user`` and carries on with both sides of a conversation. llama.cpp
renders special tokens as empty text by default, so the marker vanished, the words around it
leaked ("...Proceedingusermodel...") and no stop string could ever match it.

So for a llama.cpp expert whose template format is known here (a built-in template name, or a packaged
model whose shipped template's format is known, ``coe.experts.models.KNOWN``):

* llama-server runs with ``--special``: marker tokens come out as their text;
* every request carries the format's markers as stop strings (``with_turn_stops``), which
  llama-server cuts before, streams included (it holds back a partial match);
* markers still in an answer (say, from a request's own ``stop`` list displacing ours on an engine
  that caps the list) are stripped (``strip_markers``).

Everything here is keyed by template format, never by model name, and an expert with a template CoE
does not know (Jinja text of its own, vLLM, an endpoint) is left exactly as it was.
"""

from __future__ import annotations

from typing import Any

from coe.config import ExpertConfig, LlamaCppServe

# Every special string of each format: turn starts, turn ends, end of text. llama.cpp's built-in
# template names (llama-server --chat-template NAME) for the formats they use.
TURN_MARKERS: dict[str, tuple[str, ...]] = {
    "gemma": ("<start_of_turn>", "<end_of_turn>", "<eos>"),
    "chatml": ("<|im_start|>", "<|im_end|>", "<|endoftext|>"),
    "llama3": ("<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>", "<|end_of_text|>"),
    "phi3": ("<|system|>", "<|user|>", "<|assistant|>", "<|end|>", "<|endoftext|>"),
}


def template_format(spec: LlamaCppServe) -> str | None:
    """The turn format llama-server will use for this expert, when CoE knows it."""
    from coe.experts.models import known_model

    if spec.chat_template is not None:
        return spec.chat_template if spec.chat_template in TURN_MARKERS else None
    if spec.chat_template_file is not None:
        return None  # the user's own template: its markers are not known here
    known = known_model(spec.gguf)
    return known.turns if known is not None else None  # the template CoE ships for it


def turn_markers(expert: ExpertConfig | LlamaCppServe | None) -> tuple[str, ...]:
    """The markers to stop at and strip for an expert; empty when its format is unknown here."""
    spec = expert.serve if isinstance(expert, ExpertConfig) else expert
    if not isinstance(spec, LlamaCppServe):
        return ()
    name = template_format(spec)
    return TURN_MARKERS.get(name, ()) if name else ()


def with_turn_stops(payload: dict[str, Any], markers: tuple[str, ...]) -> dict[str, Any]:
    """``payload`` with the markers added to its ``stop`` strings (a request's own come first)."""
    if not markers:
        return payload
    own = payload.get("stop")
    stops = [own] if isinstance(own, str) else list(own or [])
    return {**payload, "stop": list(dict.fromkeys([*stops, *markers]))}


def strip_markers(text: str, markers: tuple[str, ...]) -> str:
    for marker in markers:
        text = text.replace(marker, "")
    return text
