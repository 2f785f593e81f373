"""A forced tool choice on an engine that ignores it: the schema CoE constrains the reply with, the
reply turned back into a call, and the streamed form (however the text is cut into chunks)."""

from __future__ import annotations

import itertools
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from coe.capabilities.forced import CallStream, allowed_tools, call_schema, constrain, parse_call
from coe.errors import ExpertError
from coe.types import Request, Tool

PARAMS = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
TOOLS = [
    Tool.model_validate({"type": "function", "function": {"name": "get_weather", "parameters": PARAMS}}),
    Tool.model_validate(
        {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object"}}}
    ),
]
REQUIRED = Request.from_input("weather?", tools=TOOLS, tool_choice="required")
NAMED = Request.from_input(
    "weather?", tools=TOOLS, tool_choice={"type": "function", "function": {"name": "get_weather"}}
)


def test_the_schema_allows_the_named_tool_or_any_tool_under_its_parameters() -> None:
    assert [t.function.name for t in allowed_tools(NAMED)] == ["get_weather"]
    one = call_schema(allowed_tools(NAMED))
    assert one["properties"]["name"] == {"const": "get_weather"} and one["properties"]["arguments"] == PARAMS
    assert list(one["properties"]) == ["name", "arguments"]  # the name streams first
    assert len(call_schema(allowed_tools(REQUIRED))["anyOf"]) == 2
    payload = constrain(
        {"model": "m", "tool_choice": "required", "tools": [], "parallel_tool_calls": True}, NAMED
    )
    assert "tool_choice" not in payload and "parallel_tool_calls" not in payload and payload["tools"] == []
    assert payload["response_format"]["json_schema"]["schema"] == one


def test_a_reply_becomes_a_call_or_an_expert_error() -> None:
    call = parse_call("e", '{"name": "get_weather", "arguments": {"city": "Paris"}}', NAMED)
    assert call.function.name == "get_weather" and json.loads(call.function.arguments) == {"city": "Paris"}
    assert call.id.startswith("call_")
    with pytest.raises(ExpertError, match="not valid JSON"):
        parse_call("e", '{"name": "get_weather", "argum', NAMED)
    with pytest.raises(ExpertError, match="do not match its schema"):
        parse_call("e", '{"name": "get_weather", "arguments": {"town": "Paris"}}', NAMED)
    with pytest.raises(ExpertError, match="does not allow"):
        parse_call("e", '{"name": "get_time", "arguments": {}}', NAMED)


REPLY = '{\n  "name": "get_weather",\n  "arguments": {\n    "city": "Pa\\"ris }"\n  }\n}'


@given(cuts=st.lists(st.integers(0, len(REPLY)), max_size=12))
def test_streamed_fragments_assemble_into_the_call_however_the_text_is_chunked(cuts: list[int]) -> None:
    points = [0, *sorted(set(cuts)), len(REPLY)]
    stream = CallStream("e", NAMED)
    deltas = []
    for a, b in itertools.pairwise(points):
        deltas += stream.feed(REPLY[a:b])
    rest, call = stream.finish()
    deltas += rest
    assert deltas[0].function.name == "get_weather" and deltas[0].id == call.id and deltas[0].index == 0
    arguments = "".join(d.function.arguments or "" for d in deltas)
    assert json.loads(arguments) == {"city": 'Pa"ris }'} == json.loads(call.function.arguments)
    assert all(d.function.name is None for d in deltas[1:])


def test_a_cut_off_stream_is_an_expert_error() -> None:
    stream = CallStream("e", NAMED)
    stream.feed('{"name": "get_weather", "arguments": {"city": "Par')
    with pytest.raises(ExpertError):
        stream.finish()
