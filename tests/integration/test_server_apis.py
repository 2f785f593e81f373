"""Every API of `coe serve` against capturing stub experts, driven by the official `openai` and
`anthropic` SDKs in-process: each Chat Completions field arrives at the expert unchanged or is
refused by name, capabilities decide who may answer, tool calls pass through whole and streamed,
forced choices are enforced, and the Responses, Messages, Completions and Embeddings endpoints
translate to and from the one chat request. (The same SDK calls run against real llama-server
experts in tests/e2e/test_server_agent.py.)"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import anthropic
import numpy as np
import openai
import pytest
from fastapi.testclient import TestClient

from coe import CoE, load_config
from coe.server.apis.policy import CHAT
from coe.types import RouteDecision
from tests.integration.test_server_faults import assert_openai_error, client_for, make_registry, sse_events
from tests.support.stub_server import StubState, stub_server

USER = [{"role": "user", "content": "hi"}]
PARAMS = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "description": "Weather", "parameters": PARAMS}}
]
CALL = {
    "id": "call_1",
    "type": "function",
    "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
}
PNG = "data:image/png;base64," + base64.b64encode(b"\x89PNG\r\n\x1a\n fake image").decode()

# One value per forwarded Chat Completions field (a test fails when the table gains one without it).
FORWARDED: dict[str, Any] = {
    "messages": [
        {"role": "system", "content": "Be brief."},
        {
            "role": "user",
            "content": [{"type": "text", "text": "Weather in "}, {"type": "text", "text": "Paris?"}],
        },
        {"role": "assistant", "content": None, "tool_calls": [CALL]},
        {"role": "tool", "tool_call_id": "call_1", "content": '{"celsius": 18}'},
        {"role": "user", "content": "And tomorrow?", "name": "ann"},
    ],
    "max_tokens": 32,
    "temperature": 0.5,
    "top_p": 0.9,
    "stop": ["\n\n", "END"],
    "seed": 7,
    "presence_penalty": 0.1,
    "frequency_penalty": 0.2,
    "logit_bias": {"50256": -100},
    "tools": TOOLS,
    "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
    "parallel_tool_calls": False,
    "response_format": {
        "type": "json_schema",
        "json_schema": {"name": "w", "schema": PARAMS, "strict": True},
    },
    "logprobs": True,
    "top_logprobs": 2,
    "user": "user-1",
    "safety_identifier": "safe-1",
    "metadata": {"team": "a"},
    "prompt_cache_key": "key-1",
    "prompt_cache_retention": "24h",
    "prompt_cache_options": {"mode": "implicit"},
    "reasoning_effort": "low",
}
# One refused value per field the table refuses (always, or for some values).
REFUSED: dict[str, Any] = {
    "n": 2,
    "service_tier": "priority",
    "store": True,
    "audio": {"voice": "alloy", "format": "wav"},
    "modalities": ["text", "audio"],
    "prediction": {"type": "content", "content": "x"},
    "web_search_options": {},
    "functions": [{"name": "f"}],
    "function_call": "auto",
    "moderation": {"mode": "block"},
    "verbosity": "low",
    "stream_options": {"include_obfuscation": True},
    "tools": [{"type": "custom", "custom": {"name": "grep"}}],
}


@pytest.fixture
def stubs(tmp_path: Path) -> Iterator[tuple[Path, dict[str, StubState]]]:
    """ok (an endpoint: every capability), eyes (vision only), blind (tools, json_schema: CoE forces
    tool calls for it), bad (500s); categories to_NAME; fallback ok."""
    with ExitStack() as stack:
        experts: dict[str, tuple[str, str]] = {}
        states: dict[str, StubState] = {}
        for name, mode, extra in (
            ("ok", "ok", ""),
            ("eyes", "ok", "capabilities: [vision]"),
            ("blind", "ok", "capabilities: [tools, json_schema]"),
            ("bad", "500", ""),
        ):
            url, state = stack.enter_context(stub_server(mode, text=f"answer from {name}"))
            experts[name], states[name] = (url, extra), state
        yield make_registry(tmp_path, experts), states


def sdk(http: TestClient) -> openai.OpenAI:
    return openai.OpenAI(base_url="http://testserver/v1", api_key="unused", http_client=http, max_retries=0)


# ------------------------------------------------------------------------ the field policy


def test_every_chat_field_arrives_unchanged_or_is_refused_by_name(stubs) -> None:  # type: ignore[no-untyped-def]
    path, states = stubs
    assert set(FORWARDED) == set(CHAT.forwarded_names())
    refusing = {r.name for r in CHAT.rules if r.handling == "refused" or r.when}
    assert refusing == set(REFUSED)
    with client_for(path) as client:
        resp = client.post("/v1/chat/completions", json={"model": "coe/expert/ok", **FORWARDED})
        assert resp.status_code == 200, resp.text
        sent = states["ok"].bodies[-1]
        for name, value in FORWARDED.items():
            assert sent[name] == value, name
        assert sent["model"] == "ok"  # the expert's own model id
        for name, value in REFUSED.items():
            body = {"model": "coe/expert/ok", "messages": USER, name: value}
            if name == "top_logprobs":
                body["logprobs"] = True
            error = assert_openai_error(client.post("/v1/chat/completions", json=body), 400)
            assert error["param"] == name and error["message"].startswith(f"{name}: "), error
        assert states["ok"].calls == 1  # nothing refused reached the expert


def test_applied_chat_fields(stubs) -> None:  # type: ignore[no-untyped-def]
    path, states = stubs
    with client_for(path, max_tokens_limit=64) as client:
        body = {"model": "coe/category/to_ok", "messages": USER, "max_completion_tokens": 20, "n": 1}
        resp = client.post("/v1/chat/completions", json=body, headers={"x-coe-trace": "1"})
        assert resp.status_code == 200 and resp.headers["x-coe-category"] == "to_ok"
        sent = states["ok"].bodies[-1]
        assert sent["max_tokens"] == 20 and "max_completion_tokens" not in sent and "n" not in sent
        assert resp.json()["coe"]["decision"]["category"] == "to_ok"
        too_many = {**body, "max_completion_tokens": 65}
        error = assert_openai_error(client.post("/v1/chat/completions", json=too_many), 400)
        assert error["param"] == "max_completion_tokens"
        stream = {
            "model": "coe/expert/ok",
            "messages": USER,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        events = sse_events(client.post("/v1/chat/completions", json=stream).text)
        assert events[-1] == "[DONE]" and events[-2]["usage"]["total_tokens"] == 3 + 3


def test_unknown_fields_are_refused_by_default_or_forwarded_when_configured(stubs) -> None:  # type: ignore[no-untyped-def]
    path, states = stubs
    body = {
        "model": "coe/expert/ok",
        "messages": [{"role": "user", "content": "hi", "x_note": 1}],
        "top_k": 5,
    }
    with client_for(path) as client:
        error = assert_openai_error(client.post("/v1/chat/completions", json=body), 400)
        assert error["param"] == "top_k" and error["code"] == "unknown_field"
        del body["top_k"]
        error = assert_openai_error(client.post("/v1/chat/completions", json=body), 400)
        assert error["param"] == "messages.0.x_note"
    with client_for(path, unknown_fields="forward") as client:
        body["top_k"] = 5
        assert client.post("/v1/chat/completions", json=body).status_code == 200
        sent = states["ok"].bodies[-1]
        assert sent["top_k"] == 5 and sent["messages"][0]["x_note"] == 1


def image(url: str) -> dict[str, Any]:
    return {"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}}]}


@pytest.mark.parametrize(
    ("change", "param"),
    [
        (
            {"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "objekt"}}}]},
            "tools.0.function.parameters",
        ),
        ({"tools": [{"type": "function", "function": {"name": "bad name!"}}]}, "tools.0.function.name"),
        ({"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice"),
        ({"tool_choice": "required"}, "tool_choice"),
        (
            {"messages": [*USER, {"role": "tool", "tool_call_id": "call_x", "content": "18"}]},
            "messages.1.tool_call_id",
        ),
        ({"messages": [image("data:image/png;base64,@@")]}, "messages.0.content.0.image_url.url"),
        ({"messages": [image("data:text/plain;base64,aGk=")]}, "messages.0.content.0.image_url.url"),
        ({"messages": [image("file:///etc/passwd")]}, "messages.0.content.0.image_url.url"),
        (
            {"messages": [{"role": "user", "content": [{"type": "video", "video": {}}]}]},
            "messages.0.content.0.type",
        ),
        ({"messages": [{"role": "user", "content": 12}]}, "messages.0.content"),
        ({"messages": [{"role": "bot", "content": "x"}]}, "messages.0.role"),
        (
            {
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {"name": "x", "schema": {"type": 12}},
                }
            },
            "response_format.json_schema.schema",
        ),
        ({"response_format": {"type": "json_schema"}}, "response_format.json_schema"),
        ({"top_logprobs": 3}, "top_logprobs"),
        ({"temperature": 3}, "temperature"),
    ],
)
def test_bad_input_is_a_400_naming_the_field(stubs, change: dict[str, Any], param: str) -> None:  # type: ignore[no-untyped-def]
    path, states = stubs
    with client_for(path) as client:
        body = {"model": "coe/expert/ok", "messages": USER, **change}
        error = assert_openai_error(client.post("/v1/chat/completions", json=body), 400)
        assert error["param"] == param, error
    assert states["ok"].calls == 0


# ------------------------------------------------------------------------------ capabilities


def test_an_image_goes_only_to_a_vision_expert_and_arrives_intact(stubs) -> None:  # type: ignore[no-untyped-def]
    path, states = stubs
    image = [
        {"type": "text", "text": "What is this?"},
        {"type": "image_url", "image_url": {"url": PNG, "detail": "low"}},
    ]
    messages = [{"role": "user", "content": image}]
    with client_for(path) as client:
        error = assert_openai_error(
            client.post("/v1/chat/completions", json={"model": "coe/expert/blind", "messages": messages}), 400
        )
        assert error["code"] == "no_capable_expert" and error["param"] == "messages.0.content.1"
        assert "vision" in error["message"] and "blind" in error["message"]
    cfg = load_config(path)
    with CoE(cfg) as coe:  # a routed decision: the vision expert replaces the blind one
        decision = RouteDecision(
            router="category", experts=["blind"], scores={"to_blind": 0.9, "to_eyes": 0.1}
        )
        answer = coe.run(coe.aask(messages, decision=decision))
    assert answer.expert == "eyes" and states["blind"].calls == 0
    assert states["eyes"].bodies[-1]["messages"][0]["content"] == image
    caps = answer.trace.capabilities
    assert caps is not None and caps.needed == {"vision": "messages.0.content.1"}
    assert "lacks vision" in caps.excluded["blind"] and answer.trace.decision.category == "to_eyes"


def test_several_recruited_experts_with_tools_only_the_top_weighted_answers(stubs) -> None:  # type: ignore[no-untyped-def]
    path, states = stubs
    states["ok"].tool_calls = [CALL]
    decision = RouteDecision(
        router="skills", experts=["bad", "ok"], fanout=2, weights={"bad": 0.2, "ok": 0.8}
    )
    with CoE(load_config(path)) as coe:
        answer = coe.run(coe.aask("weather?", decision=decision, tools=TOOLS))
        assert states["bad"].calls == 0  # recruited, but not the top-weighted one: not asked
        states["ok"].tool_calls = None  # a call of no offered tool would be a bad reply
        plain = coe.run(coe.aask("weather?", decision=decision))
    assert answer.tool_calls is not None and answer.tool_calls[0].function.name == "get_weather"
    assert answer.trace.capabilities.tool_answerer == "ok"
    assert answer.trace.decision.fanout == 1 and "only 'ok'" in answer.trace.decision.reason
    assert plain.trace.capabilities is None and states["bad"].calls == 1  # without tools both are asked


# -------------------------------------------------------------------------------- tool calls


def test_tool_calls_pass_through_whole_and_streamed_with_the_sdk(stubs) -> None:  # type: ignore[no-untyped-def]
    path, states = stubs
    states["ok"].tool_calls = [CALL]
    states["ok"].text = ""
    with client_for(path) as http:
        client = sdk(http)
        whole = client.chat.completions.create(model="coe/expert/ok", messages=USER, tools=TOOLS)
        assert whole.choices[0].finish_reason == "tool_calls"
        assert whole.choices[0].message.tool_calls[0].function.arguments == CALL["function"]["arguments"]
        stream = client.chat.completions.create(
            model="coe/expert/ok",
            messages=USER,
            tools=TOOLS,
            stream=True,
            stream_options={"include_usage": True},
        )
        fragments, finish, usage = [], None, None
        for chunk in stream:
            if chunk.usage:
                usage = chunk.usage
            for choice in chunk.choices:
                finish = choice.finish_reason or finish
                for d in choice.delta.tool_calls or []:
                    assert d.index == 0
                    fragments.append(d.function.arguments or "")
        # OpenAI's shape: the header (arguments ""), then each fragment in a chunk of its own
        assert fragments[0] == "" and len(fragments) == 3
        assert json.loads("".join(fragments)) == {"city": "Paris"}
        assert finish == "tool_calls" and usage is not None


def test_fallback_before_the_first_byte_keeps_the_tools(stubs) -> None:  # type: ignore[no-untyped-def]
    path, states = stubs
    states["ok"].tool_calls = [CALL]
    with client_for(path) as client:
        for stream in (False, True):
            body = {"model": "coe/category/to_bad", "messages": USER, "tools": TOOLS, "stream": stream}
            resp = client.post("/v1/chat/completions", json=body)
            assert resp.status_code == 200 and resp.headers["x-coe-expert"] == "ok"
            assert states["bad"].bodies[-1]["tools"] == states["ok"].bodies[-1]["tools"] == TOOLS


def test_coe_forces_the_call_where_the_engine_would_not(stubs) -> None:  # type: ignore[no-untyped-def]
    path, states = stubs
    states["blind"].text = '{"name": "get_weather", "arguments": {"city": "Oslo"}}'
    with client_for(path) as http:
        client = sdk(http)
        for choice in ("required", {"type": "function", "function": {"name": "get_weather"}}):
            raw = client.chat.completions.with_raw_response.create(
                model="coe/expert/blind",
                messages=USER,
                tools=TOOLS,
                tool_choice=choice,
                extra_body={"coe": {"trace": True}},
            )
            reply = raw.parse()
            call = reply.choices[0].message.tool_calls[0]
            assert (
                json.loads(call.function.arguments) == {"city": "Oslo"}
                and reply.choices[0].finish_reason == "tool_calls"
            )
            assert reply.model_extra["coe"]["capabilities"]["enforced_tool_choice"] is True
            sent = states["blind"].bodies[-1]
            assert "tool_choice" not in sent and sent["tools"] == TOOLS
            schema = sent["response_format"]["json_schema"]["schema"]
            assert schema["properties"]["arguments"] == PARAMS
        stream = client.chat.completions.create(
            model="coe/expert/blind",
            messages=USER,
            tools=TOOLS,
            tool_choice="required",
            stream=True,
        )
        deltas = [d for c in stream for ch in c.choices for d in ch.delta.tool_calls or []]
        assert deltas[0].function.name == "get_weather" and deltas[0].id
        assert json.loads("".join(d.function.arguments or "" for d in deltas)) == {"city": "Oslo"}
    states["blind"].text = "I would rather chat."  # not a call: the next candidate answers
    states["ok"].tool_calls = [CALL]
    with CoE(load_config(path)) as coe:
        decision = RouteDecision(router="category", experts=["blind", "ok"])
        answer = coe.run(coe.aask("weather?", decision=decision, tools=TOOLS, tool_choice="required"))
    assert answer.expert == "ok" and "not valid JSON" in (answer.trace.attempts[0].error or "")


# ------------------------------------------------------------------------------ other APIs


def test_responses_api_with_the_sdk(stubs) -> None:  # type: ignore[no-untyped-def]
    path, states = stubs
    fn = {"type": "function", "name": "get_weather", "parameters": PARAMS}
    with client_for(path) as http:
        client = sdk(http)
        raw = client.responses.with_raw_response.create(
            model="coe/category/to_ok", input="hi", instructions="Be brief."
        )
        assert raw.headers["x-coe-expert"] == "ok" and raw.parse().output_text == "answer from ok"
        assert states["ok"].bodies[-1]["messages"] == [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "hi"},
        ]
        turn = [
            {"role": "user", "content": [{"type": "input_text", "text": "Weather?"}]},
            {
                "type": "function_call",
                "call_id": "call_1",
                "name": "get_weather",
                "arguments": '{"city": "Paris"}',
            },
            {"type": "function_call_output", "call_id": "call_1", "output": "18 C"},
        ]
        fmt = {"format": {"type": "json_schema", "name": "w", "schema": PARAMS}}
        client.responses.create(model="coe/expert/ok", input=turn, tools=[fn], text=fmt, max_output_tokens=30)
        sent = states["ok"].bodies[-1]
        assert sent["messages"][1]["tool_calls"][0]["id"] == "call_1"
        assert sent["messages"][2] == {"role": "tool", "tool_call_id": "call_1", "content": "18 C"}
        assert sent["tools"] == [
            {"type": "function", "function": {"name": "get_weather", "parameters": PARAMS}}
        ]
        assert sent["response_format"]["json_schema"]["schema"] == PARAMS and sent["max_tokens"] == 30
        with pytest.raises(openai.BadRequestError) as refused:
            client.responses.create(model="coe/expert/ok", input="hi", previous_response_id="resp_1")
        assert refused.value.body["param"] == "previous_response_id"
        states["ok"].tool_calls = [CALL]
        events = list(client.responses.create(model="coe/expert/ok", input="hi", tools=[fn], stream=True))
        kinds = [e.type for e in events]
        assert kinds[0] == "response.created" and kinds[-1] == "response.completed"
        assert "response.output_text.delta" in kinds and "response.function_call_arguments.delta" in kinds
        args = "".join(e.delta for e in events if e.type == "response.function_call_arguments.delta")
        assert json.loads(args) == {"city": "Paris"}
        final = events[-1].response
        assert [o.type for o in final.output] == ["message", "function_call"] and final.output[
            1
        ].call_id == "call_1"


def test_previous_response_id_continues_the_stored_conversation(stubs) -> None:  # type: ignore[no-untyped-def]
    """A stored response is continued by id, in its session, streamed or not; store: false keeps
    nothing; an unknown id is 400 previous_response_not_found naming the field."""
    path, states = stubs
    with client_for(path) as http:
        client = sdk(http)
        first = client.responses.with_raw_response.create(
            model="coe/expert/ok", input="My name is Ann.", instructions="Be brief."
        )
        resp = first.parse()
        assert resp.store is True and resp.id.startswith("resp_")
        events = list(
            client.responses.create(
                model="coe/expert/ok",
                input="What is my name?",
                instructions="Answer in French.",
                previous_response_id=resp.id,
                stream=True,
            )
        )
        assert states["ok"].bodies[-1]["messages"] == [
            {"role": "system", "content": "Answer in French."},  # instructions are not carried over
            {"role": "user", "content": "My name is Ann."},
            {"role": "assistant", "content": "answer from ok"},
            {"role": "user", "content": "What is my name?"},
        ]
        second = events[-1].response
        assert second.previous_response_id == resp.id
        third = client.responses.with_raw_response.create(
            model="coe/expert/ok", input="Thanks.", previous_response_id=second.id, store=False
        )
        assert [m["content"] for m in states["ok"].bodies[-1]["messages"]] == [
            "My name is Ann.",
            "answer from ok",
            "What is my name?",
            "answer from ok",
            "Thanks.",
        ]
        assert third.headers["x-coe-session"] == first.headers["x-coe-session"]  # one conversation
        assert third.parse().store is False
        for missing in (third.parse().id, "resp_never"):
            with pytest.raises(openai.BadRequestError) as refused:
                client.responses.create(model="coe/expert/ok", input="hi", previous_response_id=missing)
            assert refused.value.body["param"] == "previous_response_id"
            assert refused.value.body["code"] == "previous_response_not_found"


def test_anthropic_messages_with_the_sdk(stubs) -> None:  # type: ignore[no-untyped-def]
    path, states = stubs
    tool = {"name": "get_weather", "description": "Weather", "input_schema": PARAMS}
    with client_for(path, api_keys=frozenset({"sk-1"})) as http:
        client = anthropic.Anthropic(
            base_url="http://testserver", api_key="sk-1", http_client=http, max_retries=0
        )
        reply = client.messages.create(
            model="coe/expert/ok", max_tokens=20, system="Be brief.", messages=USER
        )
        assert reply.content[0].text == "answer from ok" and reply.stop_reason == "end_turn"
        use = {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}}
        result = {"type": "tool_result", "tool_use_id": "toolu_1", "content": "18 C"}
        conversation = [
            {"role": "user", "content": "Weather in Paris?"},
            {"role": "assistant", "content": [use]},
            {"role": "user", "content": [result, {"type": "text", "text": "Thanks"}]},
        ]
        states["ok"].tool_calls = [CALL]
        reply = client.messages.create(
            model="coe/expert/ok",
            max_tokens=20,
            messages=conversation,
            tools=[tool],
            tool_choice={"type": "any"},
            stop_sequences=["END"],
        )
        assert reply.stop_reason == "tool_use" and reply.content[-1].input == {"city": "Paris"}
        sent = states["ok"].bodies[-1]
        assert [m["role"] for m in sent["messages"]] == ["user", "assistant", "tool", "user"]
        assert sent["messages"][1]["tool_calls"][0]["function"]["arguments"] == '{"city": "Paris"}'
        assert sent["tool_choice"] == "required" and sent["stop"] == ["END"] and sent["max_tokens"] == 20
        with client.messages.stream(
            model="coe/expert/ok", max_tokens=20, messages=USER, tools=[tool]
        ) as stream:
            final = stream.get_final_message()
        assert [b.type for b in final.content] == ["text", "tool_use"] and final.content[1].input == {
            "city": "Paris"
        }
        with pytest.raises(anthropic.BadRequestError) as refused:
            client.messages.create(
                model="coe/expert/blind",
                max_tokens=20,
                messages=USER,
                thinking={"type": "enabled", "budget_tokens": 1024},
            )
        assert refused.value.body["error"]["message"].startswith("thinking: ")  # blind does not reason
        with pytest.raises(anthropic.NotFoundError):
            client.messages.create(model="gpt-4", max_tokens=20, messages=USER)
        states["ok"].tool_calls = None  # a call of a tool the request does not offer is a bad reply
        bearer = http.post(
            "/v1/messages",
            json={"model": "coe/expert/ok", "max_tokens": 5, "messages": USER},
            headers={"Authorization": "Bearer sk-1"},
        )
        assert bearer.status_code == 200
        nokey = http.post("/v1/messages", json={"model": "coe/expert/ok", "max_tokens": 5, "messages": USER})
        assert nokey.status_code == 401 and nokey.json()["error"]["type"] == "authentication_error"


def test_completions_and_embeddings(stubs) -> None:  # type: ignore[no-untyped-def]
    path, states = stubs
    with client_for(path) as http:
        client = sdk(http)
        done = client.completions.create(model="coe/expert/ok", prompt="Once upon a time", max_tokens=8)
        assert done.choices[0].text == "answer from ok" and states["ok"].bodies[-1]["messages"] == [
            {"role": "user", "content": "Once upon a time"}
        ]
        text = "".join(
            c.choices[0].text
            for c in client.completions.create(model="coe/expert/ok", prompt="x", stream=True)
            if c.choices
        )
        assert text == "answer from ok"
        with pytest.raises(openai.BadRequestError, match="suffix"):
            client.completions.create(model="coe/expert/ok", prompt="x", suffix="y")
        floats = client.embeddings.create(
            model="coe/embedder", input=["a cat", "a dog"], encoding_format="float"
        )
        vectors = np.array([d.embedding for d in floats.data])
        assert vectors.shape == (2, 384) and np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-4)
        packed = http.post(
            "/v1/embeddings", json={"model": "coe/embedder", "input": "a cat", "encoding_format": "base64"}
        )
        decoded = np.frombuffer(base64.b64decode(packed.json()["data"][0]["embedding"]), dtype="<f4")
        assert np.allclose(decoded, vectors[0], atol=1e-6)
        assert assert_openai_error(http.post("/v1/embeddings", json={"model": "coe", "input": "x"}), 404)
        error = assert_openai_error(
            http.post("/v1/embeddings", json={"model": "coe/embedder", "input": "x", "dimensions": 8}), 400
        )
        assert error["param"] == "dimensions"
        metrics = http.get("/metrics").text
    for endpoint in ("/v1/completions", "/v1/embeddings"):
        assert f'coe_requests_total{{endpoint="{endpoint}",status="200"}}' in metrics


def test_the_library_takes_tools_and_answers_with_tool_calls(stubs) -> None:  # type: ignore[no-untyped-def]
    path, states = stubs
    states["ok"].tool_calls = [CALL]
    with CoE(load_config(path)) as coe:
        answer = coe.ask(
            [{"role": "user", "content": "weather?"}],
            expert="ok",
            tools=TOOLS,
            tool_choice="auto",
            max_tokens=9,
        )
    assert answer.tool_calls is not None and answer.tool_calls[0].id == "call_1"
    assert answer.summary()["tool_calls"][0]["function"]["name"] == "get_weather"
    assert states["ok"].bodies[-1]["tool_choice"] == "auto" and states["ok"].bodies[-1]["max_tokens"] == 9
