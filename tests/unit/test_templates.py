"""Turn markers by template format (coe/experts/templates.py): which experts get them, how they join
a request's own stop strings, and the llama-server flag that makes them visible."""

from __future__ import annotations

from pathlib import Path

import pytest

from coe.config import parse_config
from coe.experts.llamacpp import build_command
from coe.experts.templates import TURN_MARKERS, strip_markers, turn_markers, with_turn_stops
from tests.support.paths import DEFAULT_REGISTRY
from tests.support.registries import GEMMA, SMOLLM

REGISTRY = f"""
version: 1
experts:
  gemma: {{serve: {{engine: llamacpp, gguf: '{GEMMA}', chat_template: gemma}}}}
  smol: {{serve: {{engine: llamacpp, gguf: '{SMOLLM}'}}}}
  llama: {{serve: {{engine: llamacpp, gguf: m.gguf, chat_template: llama3}}}}
  jinja: {{serve: {{engine: llamacpp, gguf: m.gguf, chat_template: "{{{{ messages }}}}"}}}}
  own: {{serve: {{engine: llamacpp, gguf: m.gguf}}}}
  gpu: {{serve: {{engine: vllm, model: /models/x}}}}
  remote: {{endpoint: http://127.0.0.1:9/v1}}
router: {{categories: {{a: {{expert: gemma, examples: [hi]}}}}}}
"""


def test_markers_follow_the_template_format_never_the_model_name() -> None:
    experts = parse_config(REGISTRY).experts
    assert turn_markers(experts["gemma"]) == TURN_MARKERS["gemma"]
    assert turn_markers(experts["smol"]) == TURN_MARKERS["chatml"]  # the packaged GGUF's own template
    assert turn_markers(experts["llama"]) == TURN_MARKERS["llama3"]
    for unknown in ("jinja", "own", "gpu", "remote"):  # left exactly as they were
        assert turn_markers(experts[unknown]) == ()


def test_the_default_experts_both_stop_at_their_turns() -> None:
    experts = parse_config(DEFAULT_REGISTRY.read_text()).experts
    assert "<start_of_turn>" in turn_markers(experts["general"])
    assert "<|im_start|>" in turn_markers(experts["coder"])


@pytest.mark.parametrize(
    ("own", "expected"),
    [
        (None, ["<start_of_turn>", "<end_of_turn>", "<eos>"]),
        ("END", ["END", "<start_of_turn>", "<end_of_turn>", "<eos>"]),
        (["a", "<eos>"], ["a", "<eos>", "<start_of_turn>", "<end_of_turn>"]),  # the request's first, once
    ],
)
def test_turn_stops_join_a_requests_own(own: object, expected: list[str]) -> None:
    payload = {"model": "m", "messages": []} | ({"stop": own} if own is not None else {})
    assert with_turn_stops(payload, TURN_MARKERS["gemma"])["stop"] == expected
    assert with_turn_stops(payload, ()) is payload


def test_markers_left_in_text_are_stripped() -> None:
    assert strip_markers("Hello<end_of_turn>", TURN_MARKERS["gemma"]) == "Hello"
    assert strip_markers("a <b> c", TURN_MARKERS["gemma"]) == "a <b> c"


def test_llama_server_shows_marker_tokens_only_when_asked() -> None:
    spec = parse_config(REGISTRY).experts["gemma"].serve
    args = {"alias": "g", "port": 1, "threads": 1}
    assert "--special" in build_command(Path("llama-server"), Path("m.gguf"), spec, special=True, **args)  # type: ignore[arg-type]
    assert "--special" not in build_command(Path("llama-server"), Path("m.gguf"), spec, **args)  # type: ignore[arg-type]
