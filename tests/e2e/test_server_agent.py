"""The agent-grade API end to end: the official `openai` (chat, responses) and `anthropic` SDKs
against `coe serve` with the real llama-server experts of the default registry (SmolLM2 `coder`,
Gemma `general`). Forced tool calls come back as valid calls from both models (CoE enforces them:
llama-server does not), the tool-result turn reaches the model and is answered, streams assemble,
JSON schemas and logprobs hold, and an image finds no capable expert. Real clients run their own
loops: the OpenAI Agents SDK (a function tool forced on the first turn, its output fed back, a final
answer) with both its Chat Completions and its Responses model classes, and the Anthropic SDK with
tools, streaming and count_tokens (exact: the expert's own template and tokenizer)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import anthropic
import httpx
import jsonschema
import openai
import pytest

from coe.server import ServerSettings, create_app
from tests.e2e.test_server import ServerThread

pytestmark = pytest.mark.e2e
WEATHER = {
    "type": "object",
    "properties": {"city": {"type": "string", "maxLength": 24}},
    "required": ["city"],
    "additionalProperties": False,
}
TIME = {
    "type": "object",
    "properties": {"timezone": {"type": "string", "maxLength": 24}},
    "required": ["timezone"],
    "additionalProperties": False,
}
TOOLS: list[Any] = [
    {
        "type": "function",
        "function": {"name": "get_weather", "description": "Weather in a city", "parameters": WEATHER},
    },
    {
        "type": "function",
        "function": {"name": "get_time", "description": "Time in a timezone", "parameters": TIME},
    },
]
SCHEMAS = {"get_weather": WEATHER, "get_time": TIME}
ASK = [{"role": "user", "content": "What is the weather in Paris right now?"}]
NAMED = {"type": "function", "function": {"name": "get_weather"}}


@pytest.fixture(scope="module")
def server(default_config) -> Iterator[ServerThread]:  # type: ignore[no-untyped-def]
    app = create_app(default_config, ServerSettings(max_tokens_limit=512))
    running = ServerThread(app)
    running.start()
    while httpx.get(running.url + "/readyz", timeout=5).status_code != 200:  # warm-up starts the experts
        pass
    running.app = app
    yield running
    running.stop()


@pytest.fixture(scope="module")
def client(server: ServerThread) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0, timeout=180)


def valid_call(name: str, arguments: str) -> dict[str, Any]:
    args = json.loads(arguments)
    jsonschema.validate(args, SCHEMAS[name])
    return args


def test_capabilities_were_detected_from_llama_server(server: ServerThread) -> None:
    detected = server.app.state.coe.pool.supervisor.detected
    for name in ("coder", "general"):
        assert {"tools", "json_schema", "logprobs"} <= detected[name].capabilities
        assert "vision" not in detected[name].capabilities and detected[name].context_window == 2048


@pytest.mark.parametrize("expert", ["coder", "general"])
@pytest.mark.parametrize("choice", ["required", "named"])
def test_forced_calls_are_valid_and_the_tool_result_is_answered(
    client: openai.OpenAI, expert: str, choice: str
) -> None:
    model = f"coe/expert/{expert}"
    tool_choice: Any = NAMED if choice == "named" else "required"
    raw = client.chat.completions.with_raw_response.create(
        model=model,
        messages=ASK,
        tools=TOOLS,
        tool_choice=tool_choice,
        max_tokens=96,
        temperature=0,
        extra_body={"coe": {"trace": True}},
    )
    reply = raw.parse()
    assert raw.headers["x-coe-expert"] == expert
    choice_ = reply.choices[0]
    assert choice_.finish_reason == "tool_calls" and choice_.message.tool_calls
    call = choice_.message.tool_calls[0]
    assert call.function.name in (["get_weather"] if choice == "named" else SCHEMAS)
    valid_call(call.function.name, call.function.arguments)
    assert reply.model_extra["coe"]["capabilities"]["enforced_tool_choice"] is True
    result = '{"temperature_celsius": 18, "sky": "sunny"}'
    turn = [
        *ASK,
        choice_.message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": result},
    ]
    answered = client.chat.completions.create(
        model=model, messages=turn, tools=TOOLS, tool_choice="none", max_tokens=24, temperature=0
    )
    without = client.chat.completions.create(model=model, messages=ASK, max_tokens=1, temperature=0)
    assert (answered.choices[0].message.content or "").strip()
    assert not answered.choices[0].message.tool_calls
    # The call and its result reached the prompt (the tool turn was not dropped on the way).
    assert answered.usage.prompt_tokens > without.usage.prompt_tokens + 20


@pytest.mark.parametrize("expert", ["coder", "general"])
def test_a_streamed_forced_call_assembles_into_valid_arguments(client: openai.OpenAI, expert: str) -> None:
    stream = client.chat.completions.create(
        model=f"coe/expert/{expert}",
        messages=ASK,
        tools=TOOLS,
        tool_choice=NAMED,
        max_tokens=96,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    name, fragments, finish, usage = None, [], None, None
    for chunk in stream:
        usage = chunk.usage or usage
        for c in chunk.choices:
            finish = c.finish_reason or finish
            for d in c.delta.tool_calls or []:
                name = name or d.function.name
                fragments.append(d.function.arguments or "")
    assert name == "get_weather" and finish == "tool_calls" and len(fragments) > 2
    valid_call(name, "".join(fragments))
    assert usage is not None and usage.completion_tokens > 0


def test_a_json_schema_reply_validates(client: openai.OpenAI) -> None:
    schema = {
        "type": "object",
        "properties": {"language": {"type": "string", "maxLength": 20}, "year": {"type": "integer"}},
        "required": ["language", "year"],
        "additionalProperties": False,
    }
    reply = client.chat.completions.create(
        model="coe",
        messages=[
            {
                "role": "user",
                "content": "Which programming language is Python? Name it and the year it appeared.",
            }
        ],
        response_format={"type": "json_schema", "json_schema": {"name": "lang", "schema": schema}},
        max_tokens=64,
        temperature=0,
    )
    jsonschema.validate(json.loads(reply.choices[0].message.content or ""), schema)


def test_logprobs_are_returned(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(
        model="coe/expert/coder",
        messages=[{"role": "user", "content": "Say yes"}],
        max_tokens=4,
        logprobs=True,
        top_logprobs=2,
    )
    tokens = reply.choices[0].logprobs.content
    assert tokens and all(t.logprob <= 0 and len(t.top_logprobs) == 2 for t in tokens)


def test_an_image_without_a_vision_expert_is_no_capable_expert(client: openai.OpenAI) -> None:
    pixel = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
    image = f"data:image/png;base64,{pixel}"  # a 1x1 PNG
    content = [
        {"type": "text", "text": "What is in this picture?"},
        {"type": "image_url", "image_url": {"url": image}},
    ]
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(model="coe", messages=[{"role": "user", "content": content}])
    error = refused.value.body
    assert error["code"] == "no_capable_expert" and error["param"] == "messages.0.content.1"
    assert "coder" in error["message"] and "general" in error["message"] and "vision" in error["message"]


def test_responses_api_forced_call_then_its_output(client: openai.OpenAI) -> None:
    fn = {
        "type": "function",
        "name": "get_weather",
        "description": "Current weather in a city",
        "parameters": WEATHER,
    }
    first = client.responses.create(
        model="coe/expert/coder",
        input="What is the weather in Paris right now?",
        tools=[fn],
        tool_choice={"type": "function", "name": "get_weather"},
        max_output_tokens=96,
        temperature=0,
    )
    call = next(o for o in first.output if o.type == "function_call")
    valid_call(call.name, call.arguments)
    follow = [
        {"role": "user", "content": "What is the weather in Paris right now?"},
        {"type": "function_call", "call_id": call.call_id, "name": call.name, "arguments": call.arguments},
        {"type": "function_call_output", "call_id": call.call_id, "output": "18 C and sunny"},
    ]
    second = client.responses.create(
        model="coe/expert/coder", input=follow, tools=[fn], tool_choice="none", max_output_tokens=24
    )
    assert second.output_text.strip() and second.status in ("completed", "incomplete")
    events = list(
        client.responses.create(
            model="coe/expert/general",
            input="What is the weather in Oslo?",
            tools=[fn],
            tool_choice="required",
            max_output_tokens=96,
            temperature=0,
            stream=True,
        )
    )
    kinds = [e.type for e in events]
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed"
    args = "".join(e.delta for e in events if e.type == "response.function_call_arguments.delta")
    valid_call("get_weather", args)
    # The agent loop of the Responses API: only the tool's output, continuing the stored response.
    streamed = events[-1].response
    call_id = next(o.call_id for o in streamed.output if o.type == "function_call")
    third = client.responses.create(
        model="coe/expert/general",
        previous_response_id=streamed.id,
        input=[{"type": "function_call_output", "call_id": call_id, "output": "-2 C and snowing"}],
        tools=[fn],
        tool_choice="none",
        max_output_tokens=24,
    )
    assert third.previous_response_id == streamed.id and third.output_text.strip()


def test_anthropic_messages_forced_tool_then_result(server: ServerThread) -> None:
    client = anthropic.Anthropic(base_url=server.url, api_key="x", max_retries=0, timeout=180)
    tool = {"name": "get_weather", "description": "Current weather in a city", "input_schema": WEATHER}
    ask = {"role": "user", "content": "What is the weather in Paris right now?"}
    first = client.messages.create(
        model="coe/expert/general",
        max_tokens=96,
        messages=[ask],
        tools=[tool],
        tool_choice={"type": "tool", "name": "get_weather"},
    )
    assert first.stop_reason == "tool_use"
    use = next(b for b in first.content if b.type == "tool_use")
    jsonschema.validate(use.input, WEATHER)
    result = {"type": "tool_result", "tool_use_id": use.id, "content": "18 C and sunny"}
    turn = [
        ask,
        {"role": "assistant", "content": [b.model_dump() for b in first.content]},
        {"role": "user", "content": [result]},
    ]
    second = client.messages.create(
        model="coe/expert/general", max_tokens=24, system="Answer briefly.", messages=turn
    )
    assert second.content[0].type == "text" and second.content[0].text.strip()
    with client.messages.stream(
        model="coe/expert/coder",
        max_tokens=96,
        messages=[ask],
        tools=[tool],
        tool_choice={"type": "any"},
    ) as stream:
        final = stream.get_final_message()
    use = next(b for b in final.content if b.type == "tool_use")
    jsonschema.validate(use.input, WEATHER)


def test_completions_and_embeddings(client: openai.OpenAI) -> None:
    done = client.completions.create(model="coe", prompt="Write a haiku about autumn leaves.", max_tokens=16)
    assert done.model == "coe/expert/general" and done.choices[0].text.strip()
    vectors = client.embeddings.create(model="coe/embedder", input=["a cat", "a kitten", "tax law"])
    a, b, c = (v.embedding for v in vectors.data)
    dot = lambda x, y: sum(i * j for i, j in zip(x, y, strict=True))  # noqa: E731
    assert len(a) == 384 and dot(a, b) > dot(a, c)


def test_agents_sdk_tool_loop_with_both_model_classes(server: ServerThread) -> None:
    """A forced first turn (the tool runs), its output fed back, then a final answer with tool_choice
    none (the hook: the small models call tools again under auto). Chat whole, Responses streamed:
    the SDK reads every event of ours."""
    import dataclasses

    import agents
    from agents import Agent, AgentHooks, ModelSettings, Runner, function_tool

    agents.set_tracing_disabled(True)  # the SDK would export traces to OpenAI
    ran: list[str] = []

    @function_tool
    def get_weather(city: str) -> str:
        """Current weather in a city."""
        ran.append(city)
        return json.dumps({"city": city, "temperature_celsius": 18, "sky": "sunny"})

    class AnswerAfterTheTool(AgentHooks):  # type: ignore[type-arg]
        async def on_tool_end(self, context: Any, agent: Any, tool: Any, result: str) -> None:
            agent.model_settings = dataclasses.replace(agent.model_settings, tool_choice="none")

    async def run(kind: str, cls: Any) -> Any:
        http = openai.AsyncOpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0, timeout=180)
        agent = Agent(
            name="weather",
            instructions="Answer weather questions with the tool.",
            model=cls(model="coe/expert/coder", openai_client=http),
            tools=[get_weather],
            model_settings=ModelSettings(tool_choice="get_weather", temperature=0, max_tokens=96),
            hooks=AnswerAfterTheTool(),
            reset_tool_choice=False,
        )
        if kind == "chat":
            return await Runner.run(agent, "What is the weather in Paris?", max_turns=4)
        streamed = Runner.run_streamed(agent, "What is the weather in Paris?", max_turns=4)
        async for _ in streamed.stream_events():
            pass
        return streamed

    for kind, cls in (
        ("chat", agents.OpenAIChatCompletionsModel),
        ("responses", agents.OpenAIResponsesModel),
    ):
        before = len(ran)
        result = asyncio.run(run(kind, cls))
        assert len(ran) == before + 1 and ran[-1].strip(), (kind, ran)  # the forced call ran the tool
        assert isinstance(result.final_output, str) and result.final_output.strip(), kind


def test_anthropic_sdk_counts_tokens_exactly_and_streams_tools(server: ServerThread) -> None:
    client = anthropic.Anthropic(base_url=server.url, api_key="x", max_retries=0, timeout=180)
    tool = {"name": "get_weather", "description": "Current weather in a city", "input_schema": WEATHER}
    ask: Any = {"model": "coe/expert/coder", "system": "Be brief.", "messages": [ASK[0]], "tools": [tool]}
    counted = client.messages.with_raw_response.count_tokens(**ask)
    assert counted.headers["x-coe-token-count"] == "exact"
    with client.messages.stream(max_tokens=96, tool_choice={"type": "any"}, **ask) as stream:
        final = stream.get_final_message()
    assert counted.parse().input_tokens == final.usage.input_tokens  # the prompt the expert read
    use = next(b for b in final.content if b.type == "tool_use")
    assert use.id.startswith("toolu_") and final.stop_reason == "tool_use"
    jsonschema.validate(use.input, WEATHER)


def test_a_real_experts_responses_are_open_responses(server: ServerThread) -> None:
    from tests.support.wire import check_response, check_response_events, sse

    fn = {"type": "function", "name": "get_weather", "description": "Weather", "parameters": WEATHER}
    ask = {"model": "coe/expert/general", "input": "Weather in Oslo?", "tools": [fn], "max_output_tokens": 96}
    url = server.url + "/v1/responses"
    check_response(httpx.post(url, json={**ask, "tool_choice": "required"}, timeout=180).json())
    streamed = httpx.post(url, json={**ask, "stream": True}, timeout=180)
    check_response_events([d for _, d in sse(streamed.text)])
