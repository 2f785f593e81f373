"""No 5xx from anything an expert sends: a stub expert answers 200 with replies that are no valid
chat completion (tests/support/stub_server.py FAULTS, plus tool calls with arguments that are not
JSON or naming a tool the request did not offer), and every API, whole and streamed, answers either
a well-formed reply (checked with the API's own types), a fallback to the next expert, or a 502 in
the API's error shape naming the expert and what was wrong; never a 500 or a traceback. Also here:
reasoning passed through (a stub expert that returns reasoning_content), the Open Responses fields,
and Anthropic's error shape, ids, headers and count_tokens."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import ExitStack
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from coe import load_config
from coe.server import ServerSettings, create_app
from tests.integration.test_server_faults import make_registry
from tests.support.stub_server import StubState, stub_server
from tests.support.wire import (
    check_chat,
    check_chat_chunks,
    check_message,
    check_response,
    check_response_events,
    sse,
)

PARAMS = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
BAD_ARGS = [
    {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "city=Paris"}}
]
UNKNOWN = [{"id": "call_1", "type": "function", "function": {"name": "rm_rf", "arguments": "{}"}}]
APIS = ("chat", "responses", "messages", "completions")
PATHS = {
    "chat": "/v1/chat/completions",
    "responses": "/v1/responses",
    "messages": "/v1/messages",
    "completions": "/v1/completions",
}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[TestClient, StubState]]:
    """One app over two stubs: ``faulty`` (its mode set per test) and ``ok``; the category
    ``to_faulty`` asks faulty, then ok (the fallback)."""
    with ExitStack() as stack:
        faulty_url, faulty = stack.enter_context(stub_server("ok", text="fine"))
        ok_url, _ = stack.enter_context(stub_server("ok", text="answer from ok"))
        experts = {
            "faulty": (faulty_url, "params: {max_tokens: 256, temperature: 0.3}"),
            "ok": (ok_url, ""),
            # no reasoning, no tool_choice: CoE enforces a forced call through a JSON schema
            "plain": (faulty_url, "capabilities: [tools, json_schema]"),
        }
        path = make_registry(tmp_path_factory.mktemp("faults"), experts)
        app = create_app(load_config(path), ServerSettings(warm=False))
        client = stack.enter_context(TestClient(app, raise_server_exceptions=False))
        yield client, faulty


def body(api: str, stream: bool, model: str = "coe/expert/faulty", tools: bool = True) -> dict[str, Any]:
    """A request of ``api`` offering the tool get_weather (completions has no tools)."""
    if api == "chat":
        tool = {"type": "function", "function": {"name": "get_weather", "parameters": PARAMS}}
        out = {
            "model": model,
            "messages": [{"role": "user", "content": "Weather in Paris?"}],
            "tools": [tool],
        }
    elif api == "responses":
        tool = {"type": "function", "name": "get_weather", "parameters": PARAMS}
        out = {"model": model, "input": "Weather in Paris?", "tools": [tool]}
    elif api == "messages":
        tool = {"name": "get_weather", "input_schema": PARAMS}
        out = {
            "model": model,
            "max_tokens": 64,
            "messages": [{"role": "user", "content": "Weather?"}],
            "tools": [tool],
        }
    else:
        out = {"model": model, "prompt": "Weather in Paris?"}
    if not tools:
        out.pop("tools", None)
    return {**out, "stream": stream}


def set_fault(state: StubState, fault: str) -> None:
    state.mode, state.tool_calls, state.text = "ok", None, "fine"  # type: ignore[assignment]
    state.reasoning = state.finish_reason = None
    if fault in ("bad-args", "unknown-tool"):
        state.tool_calls, state.text = (BAD_ARGS if fault == "bad-args" else UNKNOWN), ""
    else:
        state.mode = fault  # type: ignore[assignment]


def assert_502(resp: httpx.Response, api: str) -> None:
    assert resp.status_code == 502, resp.text
    assert "Traceback" not in resp.text
    error = resp.json()
    if api == "messages":
        assert error["type"] == "error" and error["error"]["type"] == "api_error"
        message = error["error"]["message"]
    else:
        assert set(error["error"]) == {"message", "type", "param", "code"}
        assert error["error"]["code"] == "bad_expert_reply"
        message = error["error"]["message"]
    assert "faulty" in message, message


def check_whole(api: str, data: dict[str, Any]) -> str:
    """The reply checked with its API's types; its text and tool-call arguments, for the test."""
    if api == "chat":
        check_chat(data)
        message = data["choices"][0]["message"]
        return (message["content"] or "") + "".join(
            c["function"]["arguments"] for c in message.get("tool_calls") or []
        )
    if api == "responses":
        check_response(data)
        return "".join(
            part["text"] if item["type"] == "message" else item.get("arguments", "")
            for item in data["output"]
            for part in (item.get("content") or [{"text": ""}])
        )
    if api == "messages":
        check_message(data)
        return "".join(b.get("text", "") for b in data["content"])
    return str(data["choices"][0]["text"])


def check_stream(api: str, text: str) -> tuple[str, str | None]:
    """(the streamed text and arguments, the in-band error's message or None), every event checked."""
    events = sse(text)
    datas = [d for _, d in events if d != "[DONE]"]
    errors = [d for d in datas if "error" in d and (d.get("type") in (None, "error"))]
    error = None
    if errors:
        e = errors[0]["error"] if isinstance(errors[0].get("error"), dict) else errors[0]
        error = e["message"]
    if api == "chat":
        calls = check_chat_chunks([d for d in datas if "error" not in d])
        said = "".join(d["choices"][0]["delta"].get("content") or "" for d in datas if d.get("choices"))
        return said + "".join(c["arguments"] for c in calls.values()), error
    if api == "responses":
        check_response_events(datas)
        said = [
            d["delta"]
            for d in datas
            if d["type"] in ("response.output_text.delta", "response.function_call_arguments.delta")
        ]
        return "".join(said), error
    if api == "messages":
        blocks: list[dict[str, Any]] = []
        for d in datas:
            if d["type"] == "content_block_start":
                blocks.append(dict(d["content_block"]))
            elif d["type"] == "content_block_delta":
                delta = d["delta"]
                blocks[d["index"]]["text"] = blocks[d["index"]].get("text", "") + delta.get("text", "")
                if delta["type"] == "input_json_delta":
                    json.loads(delta["partial_json"])  # whole: an SDK parses each partial_json
        assert all(b["type"] != "tool_use" or b["id"].startswith("toolu_") for b in blocks)
        return "".join(b.get("text", "") for b in blocks), error
    return "".join(d["choices"][0]["text"] for d in datas if d.get("choices")), error


# (fault, api, stream) -> "502", "error" (in-band, after the first byte), or a text the reply holds.
WHOLE = {
    "no-choices": "502",
    "no-message": "502",
    "null-content": "",
    "not-json": "502",
    "bad-utf8": "502",
    "no-done": "fine",
    "bad-chunk": "fine",
    "unknown-tool": "502",
}
STREAMED = {
    "no-choices": "",
    "no-message": "",
    "null-content": "",
    "not-json": "502",
    "bad-utf8": "caf\ufffd",
    "no-done": "error",
    "bad-chunk": "502",
    "unknown-tool": "502",
}
BAD_ARGS_SHOWN = {
    "chat": "city=Paris",
    "responses": "city=Paris",
    "messages": "not a JSON object: city=Paris",
}


def expected(fault: str, api: str, stream: bool) -> str:
    if fault == "bad-args":  # passed through as the string; a text block for Messages; no tools: 502
        return BAD_ARGS_SHOWN.get(api, "502")
    if fault == "unknown-tool" or (api == "completions" and fault == "bad-args"):
        return "502"
    return (STREAMED if stream else WHOLE)[fault]


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("api", APIS)
@pytest.mark.parametrize(
    "fault",
    [
        "bad-args",
        "unknown-tool",
        "no-choices",
        "no-message",
        "null-content",
        "not-json",
        "bad-utf8",
        "no-done",
        "bad-chunk",
    ],
)
def test_an_unreadable_reply_is_an_answer_or_a_502_naming_the_expert(
    server, fault: str, api: str, stream: bool
) -> None:  # type: ignore[no-untyped-def]
    client, state = server
    set_fault(state, fault)
    resp = client.post(PATHS[api], json=body(api, stream))
    assert resp.status_code != 500 and "Traceback" not in resp.text, resp.text
    want = expected(fault, api, stream)
    if want == "502":
        assert_502(resp, api)
        return
    assert resp.status_code == 200, resp.text
    if not stream:
        assert want in check_whole(api, resp.json())
        return
    said, error = check_stream(api, resp.text)
    if want == "error":
        assert error is not None and "faulty" in error, resp.text
    else:
        assert error is None and want in said, resp.text


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("api", APIS)
def test_an_unreadable_reply_falls_back_to_the_next_expert(server, api: str, stream: bool) -> None:  # type: ignore[no-untyped-def]
    client, state = server
    set_fault(state, "not-json")
    resp = client.post(PATHS[api], json=body(api, stream, model="coe/category/to_faulty", tools=False))
    assert resp.status_code == 200, resp.text
    assert resp.headers["x-coe-expert"] == "ok"
    said = check_stream(api, resp.text)[0] if stream else check_whole(api, resp.json())
    assert "answer from ok" in said


# ------------------------------------------------------------------------------------ reasoning


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("api", ["chat", "responses", "messages"])
def test_reasoning_passes_through_in_each_apis_own_shape(server, api: str, stream: bool) -> None:  # type: ignore[no-untyped-def]
    client, state = server
    set_fault(state, "none")
    state.mode, state.reasoning = "ok", "The user wants weather."
    resp = client.post(PATHS[api], json=body(api, stream, tools=False))
    assert resp.status_code == 200, resp.text
    if not stream:
        data = resp.json()
        check_whole(api, data)
        if api == "chat":
            assert data["choices"][0]["message"]["reasoning_content"] == state.reasoning
        elif api == "responses":
            first = data["output"][0]
            assert first["type"] == "reasoning" and first["content"][0]["text"] == state.reasoning
        else:
            assert data["content"][0] == {"type": "thinking", "thinking": state.reasoning, "signature": ""}
        return
    check_stream(api, resp.text)
    datas = [d for _, d in sse(resp.text) if d != "[DONE]"]
    if api == "chat":
        said = "".join(d["choices"][0]["delta"].get("reasoning_content") or "" for d in datas if d["choices"])
    elif api == "responses":
        said = "".join(d["delta"] for d in datas if d["type"] == "response.reasoning.delta")
        done = next(d for d in datas if d["type"] == "response.completed")["response"]
        assert [i["type"] for i in done["output"]] == ["reasoning", "message"]
    else:
        said = "".join(d["delta"].get("thinking", "") for d in datas if d["type"] == "content_block_delta")
    assert said == state.reasoning


@pytest.mark.parametrize(
    ("api", "field", "value", "effort"),
    [
        ("chat", "reasoning_effort", "high", "high"),
        ("responses", "reasoning", {"effort": "low"}, "low"),
        ("messages", "thinking", {"type": "enabled", "budget_tokens": 8000}, "medium"),
        ("messages", "output_config", {"effort": "max"}, "xhigh"),
    ],
)
def test_reasoning_effort_is_forwarded_or_refused_by_name(  # type: ignore[no-untyped-def]
    server, api: str, field: str, value: Any, effort: str
) -> None:
    client, state = server
    set_fault(state, "none")
    state.mode = "ok"
    resp = client.post(PATHS[api], json={**body(api, False, tools=False), field: value})
    assert resp.status_code == 200, resp.text
    assert state.bodies[-1]["reasoning_effort"] == effort
    # An expert that does not reason: 400 naming the field the caller wrote, in the API's shape.
    refused = client.post(
        PATHS[api], json={**body(api, False, model="coe/expert/plain", tools=False), field: value}
    )
    assert refused.status_code == 400, refused.text
    named = {"reasoning": "reasoning.effort", "output_config": "output_config.effort"}.get(field, field)
    if api == "messages":
        assert refused.json()["error"]["message"].startswith(f"{named}: ")
    else:
        assert refused.json()["error"]["param"] == named


# ----------------------------------------------------------------------------- Open Responses


def test_open_responses_fields_are_the_values_that_applied(server) -> None:  # type: ignore[no-untyped-def]
    """The expert's defaults (max_tokens 256, temperature 0.3) where the request sets none; a cut
    reply is incomplete, its message too, and streams end in response.incomplete."""
    client, state = server
    set_fault(state, "none")
    state.mode = "ok"
    data = client.post(PATHS["responses"], json=body("responses", False, tools=True)).json()
    check_response(data)
    assert (data["max_output_tokens"], data["temperature"], data["top_p"]) == (256, 0.3, 1.0)
    assert data["completed_at"] >= data["created_at"] and data["service_tier"] == "default"
    assert data["tools"][0]["strict"] is False and data["background"] is False
    schema = {"type": "json_schema", "name": "out", "schema": PARAMS, "strict": True}
    formatted = client.post(PATHS["responses"], json={**body("responses", False), "text": {"format": schema}})
    check_response(formatted.json())
    assert formatted.json()["text"]["format"] == {**schema, "description": None}
    asked = {**body("responses", False), "max_output_tokens": 2, "temperature": 0.9, "top_p": 0.5}
    asked |= {"safety_identifier": "u1", "prompt_cache_key": "k1"}
    state.finish_reason = "length"
    cut = client.post(PATHS["responses"], json=asked).json()
    check_response(cut)
    assert (cut["max_output_tokens"], cut["temperature"], cut["top_p"]) == (2, 0.9, 0.5)
    assert cut["status"] == "incomplete" and cut["output"][-1]["status"] == "incomplete"
    assert cut["incomplete_details"] == {"reason": "max_output_tokens"}
    assert (cut["safety_identifier"], cut["prompt_cache_key"]) == ("u1", "k1")
    streamed = client.post(PATHS["responses"], json={**asked, "stream": True})
    events = [d for _, d in sse(streamed.text)]
    check_response_events(events)
    assert events[-1]["type"] == "response.incomplete"
    assert events[-1]["response"]["output"][-1]["status"] == "incomplete"


# -------------------------------------------------------------------------------- chat streams


@pytest.mark.parametrize("model", ["coe/expert/faulty", "coe/expert/plain"])
def test_streamed_tool_calls_read_naively_and_with_the_sdk_give_valid_json(server, model: str) -> None:  # type: ignore[no-untyped-def]
    """faulty streams the engine's own tool-call deltas; for plain CoE enforces the forced call and
    streams it from the JSON text (the path that once put a call's header and first fragment in one
    chunk). A reader of ``delta.tool_calls[0]`` and the SDK's accumulator both get the call."""
    from openai.lib.streaming.chat import ChatCompletionStreamState
    from openai.types.chat import ChatCompletionChunk

    client, state = server
    set_fault(state, "none")
    state.mode = "ok"
    if model.endswith("plain"):
        state.text = '{"name": "get_weather", "arguments": {"city": "Paris"}}'
    else:
        state.tool_calls, state.text = (
            [{**BAD_ARGS[0], "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}],
            "",
        )
    resp = client.post(PATHS["chat"], json={**body("chat", True, model=model), "tool_choice": "required"})
    chunks = [d for _, d in sse(resp.text) if d != "[DONE]"]
    assert resp.status_code == 200, resp.text
    naive = check_chat_chunks(chunks)  # at most one entry per index per chunk
    assert naive[0]["name"] == "get_weather" and json.loads(naive[0]["arguments"]) == {"city": "Paris"}
    accumulated = ChatCompletionStreamState()
    for chunk in chunks:
        accumulated.handle_chunk(ChatCompletionChunk.model_validate(chunk))
    call = accumulated.get_final_completion().choices[0].message.tool_calls[0]  # type: ignore[index]
    assert call.id == naive[0]["id"] and json.loads(call.function.arguments) == {"city": "Paris"}
