"""What happens to every request field of every API: forwarded to the expert, applied by CoE, or
refused with a 400 that names it. One table per API; request validation (``check_fields``), the
docs page (``python -m coe.server.apis.docs``) and the tests all read these tables, so they cannot
disagree. A field no table lists is unknown: ``server.unknown_fields`` refuses it (the default) or
forwards it unchanged (for engine extensions such as llama.cpp's ``top_k``)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from coe.server.errors import APIError

Handling = Literal["forwarded", "applied", "refused"]
Refusal = Callable[[Any], str | None]


def _never(_: Any) -> str | None:
    return None


@dataclass(frozen=True)
class Rule:
    """``refuse`` says why a given (non-null) value is refused, or None; ``when`` says it for the docs."""

    name: str
    handling: Handling
    note: str
    refuse: Refusal = _never
    when: str = ""


def forwarded(
    name: str, note: str = "sent to the expert unchanged", *, refuse: Refusal = _never, when: str = ""
) -> Rule:
    return Rule(name, "forwarded", note, refuse, when)


def applied(name: str, note: str, *, refuse: Refusal = _never, when: str = "") -> Rule:
    return Rule(name, "applied", note, refuse, when)


def refused(name: str, why: str) -> Rule:
    return Rule(name, "refused", why, lambda _: why, "always")


def refused_unless(name: str, allowed: Callable[[Any], bool], why: str, when: str) -> Rule:
    return Rule(name, "refused", why, lambda v: None if allowed(v) else why, when)


@dataclass(frozen=True)
class Api:
    name: str
    method: str
    path: str
    title: str
    summary: str
    rules: tuple[Rule, ...]
    by_name: Mapping[str, Rule] = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "by_name", {r.name: r for r in self.rules})

    def forwarded_names(self) -> list[str]:
        return [r.name for r in self.rules if r.handling == "forwarded"]


def check_fields(api: Api, data: Mapping[str, Any], unknown: Literal["refuse", "forward"]) -> dict[str, Any]:
    """400 for a refused field or value (``param`` names it); returns the unknown fields to forward."""
    extra: dict[str, Any] = {}
    for key, value in data.items():
        rule = api.by_name.get(key)
        if rule is None:
            if unknown == "refuse":
                raise APIError(
                    400,
                    f"{key}: unknown field; CoE refuses fields it does not know (server.unknown_fields: "
                    "forward sends them to the expert unchanged)",
                    param=key,
                    code="unknown_field",
                )
            extra[key] = value
        elif value is not None and (why := rule.refuse(value)) is not None:
            raise APIError(400, f"{key}: {why}", param=key, code="unsupported_field")
    return extra


def _is(*values: Any) -> Callable[[Any], bool]:
    return lambda v: v in values


def _only_tool_types(*types: str | None) -> Refusal:
    def refuse(tools: Any) -> str | None:
        if not isinstance(tools, list):
            return None  # not a list: the type check names it
        for i, tool in enumerate(tools):
            if isinstance(tool, dict) and tool.get("type") not in types:
                return f"tool {i} has type {tool.get('type')!r}: only client function tools are supported"
        return None

    return refuse


def _stream_options(note: str) -> Rule:
    return applied("stream_options", note, refuse=_no_obfuscation, when="include_obfuscation: true")


def _n_one(v: Any) -> str | None:
    return (
        None
        if v == 1
        else f"CoE returns one choice per request (each expert answers once); send {v} requests"
    )


def _no_obfuscation(v: Any) -> str | None:
    if isinstance(v, dict) and v.get("include_obfuscation"):
        return "include_obfuscation: CoE streams from local experts and adds no obfuscation padding"
    return None


_TIER = "CoE has one service tier; only auto and default are accepted"
_STORE = "CoE stores no completions (store: false only)"
_TRACE = 'CoE\'s own: {"trace": true} adds the routing trace to the reply (as does the header x-coe-trace: 1)'
_MODEL = (
    "routes the request: `coe` (the router), `coe/expert/NAME` (that expert), `coe/category/NAME` "
    "(that category's expert, then the fallback); the expert gets its own model id"
)

# OpenAI's identification and prompt-cache hints, in Chat Completions and Responses alike.
_OPENAI_PASSTHROUGH = (
    forwarded("user"),
    forwarded("safety_identifier"),
    forwarded("metadata"),
    forwarded("prompt_cache_key"),
    forwarded("prompt_cache_retention"),
    forwarded("prompt_cache_options"),
)

CHAT = Api(
    "chat",
    "POST",
    "/v1/chat/completions",
    "Chat Completions",
    "OpenAI's Chat Completions API; every other API is translated to this shape inside CoE.",
    (
        applied("model", _MODEL),
        forwarded(
            "messages",
            "sent as given (content parts, tool calls, tool results); routers read the text of the last user "
            "turn; the expert's `system` prompt is added when there is none; `developer` is sent as `system` "
            "to experts CoE runs. Checked: a tool message must answer an earlier tool call, a data URL must "
            "decode; image, audio and file parts route to experts with vision, audio, file",
        ),
        applied("stream", "server-sent events; tool calls stream as `delta.tool_calls` fragments"),
        _stream_options("`include_usage`: a last chunk with usage"),
        forwarded("max_tokens", "at most `server.max_tokens`; counts in the context-window check"),
        applied(
            "max_completion_tokens",
            "sent as `max_tokens` (what llama.cpp and vLLM read); at most server.max_tokens",
        ),
        forwarded("temperature"),
        forwarded("top_p"),
        forwarded("stop"),
        forwarded("seed"),
        forwarded("presence_penalty"),
        forwarded("frequency_penalty"),
        forwarded("logit_bias"),
        forwarded(
            "tools",
            "function tools; routed only to experts with `tools`; each `parameters` must be a JSON Schema",
            refuse=_only_tool_types("function", None),
            when="a tool whose type is not function",
        ),
        forwarded(
            "tool_choice",
            "`auto` and `none` as given; `required` and a named function are enforced by the engine where it "
            "can (vLLM), else by CoE: the reply is constrained to one call of an allowed tool (JSON schema) "
            "and returned as `tool_calls`",
        ),
        forwarded("parallel_tool_calls", "a forced choice that CoE enforces returns one call"),
        forwarded(
            "response_format",
            "`json_object` and `json_schema` route only to experts with `json_schema`; the schema must be a "
            "JSON Schema",
        ),
        forwarded("logprobs", "routed only to experts with `logprobs`"),
        forwarded("top_logprobs", "needs `logprobs: true`"),
        applied("n", "one choice", refuse=_n_one, when="n > 1"),
        *_OPENAI_PASSTHROUGH,
        forwarded(
            "reasoning_effort",
            "routed only to experts with `reasoning` (llama-server reports it); an expert's reasoning comes "
            "back as `message.reasoning_content` (streamed: `delta.reasoning_content`)",
        ),
        refused_unless("service_tier", _is("auto", "default"), _TIER, "not auto or default"),
        refused_unless("store", _is(False), _STORE, "true"),
        refused("audio", "CoE's experts answer in text; audio output is not supported"),
        refused_unless(
            "modalities",
            _is(["text"]),
            'CoE\'s experts answer in text; modalities must be ["text"]',
            'not ["text"]',
        ),
        refused("prediction", "predicted outputs are not supported"),
        refused("web_search_options", "CoE has no web search"),
        refused("functions", "deprecated by OpenAI; use tools"),
        refused("function_call", "deprecated by OpenAI; use tool_choice"),
        refused("moderation", "CoE runs no moderation"),
        refused("verbosity", "no expert controls verbosity"),
        applied("coe", _TRACE),
    ),
)

RESPONSES = Api(
    "responses",
    "POST",
    "/v1/responses",
    "Responses",
    "OpenAI's Responses API, translated to one chat request (input items become messages).",
    (
        applied("model", _MODEL),
        applied(
            "input",
            "a string (one user turn) or items: messages (input_text, input_image, input_file parts; "
            "output_text for assistant turns), function_call and function_call_output items (a tool call "
            "and its result); reasoning items (an earlier reply's) are accepted and not sent",
        ),
        applied("instructions", "a system message before the input"),
        applied(
            "stream",
            "typed events: response.created, response.output_text.delta, function-call argument events, "
            "response.completed",
        ),
        _stream_options("accepted without obfuscation"),
        applied("max_output_tokens", "sent as `max_tokens`; at most server.max_tokens"),
        forwarded("temperature"),
        forwarded("top_p"),
        applied(
            "tools",
            "function tools, sent as chat tools; other tool types are refused",
            refuse=_only_tool_types("function", None),
            when="a tool whose type is not function",
        ),
        applied("tool_choice", "as for chat (`required` and a named function enforced)"),
        forwarded("parallel_tool_calls"),
        applied(
            "text",
            "`format` (text, json_object, json_schema) sent as `response_format`; `verbosity` is refused",
        ),
        applied("top_logprobs", "sent with `logprobs: true`; the output text's parts carry logprobs"),
        applied(
            "include",
            "`message.output_text.logprobs` asks for logprobs; other values are refused",
            when="another value",
        ),
        applied(
            "reasoning",
            "`effort` sent as `reasoning_effort` (routed only to experts with `reasoning`); an expert's "
            "reasoning comes back as a `reasoning` output item (streamed: `response.reasoning.delta`); other "
            "keys are refused",
            when="a key other than effort",
        ),
        *_OPENAI_PASSTHROUGH,
        applied(
            "previous_response_id",
            "the stored conversation of that response comes before `input`, in its session; 400"
            " `previous_response_not_found` once it expired (`router.sessions.ttl_s`) or was not stored",
        ),
        applied(
            "store",
            "true (the default): the response's conversation is kept in the session store for"
            " `previous_response_id`; false: nothing is kept",
        ),
        refused("conversation", "CoE stores no conversations yet; send the whole conversation as input"),
        refused("background", "background responses are not supported"),
        refused("prompt", "stored prompt templates are not supported"),
        refused_unless(
            "truncation", _is("disabled"), "CoE never truncates the input (truncation: disabled)", "auto"
        ),
        refused("max_tool_calls", "CoE runs no built-in tools"),
        refused_unless("service_tier", _is("auto", "default"), _TIER, "not auto or default"),
        refused("moderation", "CoE runs no moderation"),
        refused("context_management", "not supported"),
        applied("coe", _TRACE),
    ),
)

MESSAGES = Api(
    "messages",
    "POST",
    "/v1/messages",
    "Anthropic Messages",
    "Anthropic's Messages API (errors in Anthropic's shape; `x-api-key` or a bearer key), translated to "
    "one chat request.",
    (
        applied("model", _MODEL),
        applied("max_tokens", "required; sent as `max_tokens`; at most server.max_tokens"),
        applied(
            "messages",
            "text, image (base64 or URL), tool_use and tool_result blocks become chat messages, tool calls "
            "and "
            "tool messages; a tool_result must answer an earlier tool_use",
        ),
        applied("system", "a system message (a string or text blocks)"),
        applied(
            "stop_sequences",
            "sent as `stop`; a reply ended by one has `stop_reason: end_turn` and `stop_sequence: null` (the "
            "engines do not report which sequence matched)",
        ),
        forwarded("temperature"),
        forwarded("top_p"),
        forwarded("top_k", "sent as `top_k` (llama.cpp and vLLM read it)"),
        applied(
            "tools",
            "client tools (`name`, `description`, `input_schema`) sent as function tools; server tools are "
            "refused",
            refuse=_only_tool_types("custom", None),
            when="a server tool (a type other than custom)",
        ),
        applied(
            "tool_choice",
            "auto, any (required), tool (a named function), none; `disable_parallel_tool_use` sent as "
            "`parallel_tool_calls: false`. tool_use ids are `toolu_...` (the expert's own id inside, mapped "
            "back when a tool_result names it); a call whose arguments are no JSON object comes back as a "
            "text block showing it",
        ),
        applied(
            "stream",
            "Anthropic's events: message_start, content_block_start/delta/stop, message_delta, message_stop",
        ),
        applied("metadata", "`user_id` sent as `user`"),
        applied(
            "output_config",
            "`format` (json_schema) sent as `response_format`; `effort` as `reasoning_effort` (max: xhigh)",
        ),
        applied(
            "thinking",
            "`enabled` with `budget_tokens` sent as `reasoning_effort` (under 4096: low, under 16384: "
            "medium, else high; routed only to experts with `reasoning`); `adaptive` leaves it to "
            "`output_config.effort`; `disabled` sends none. An expert's reasoning comes back as a `thinking` "
            'block (`signature: ""`: no Anthropic model signed it); earlier turns\' thinking blocks are '
            "accepted and, as Anthropic does, not sent",
        ),
        refused_unless(
            "service_tier",
            _is("auto", "standard_only"),
            "CoE has one service tier",
            "not auto or standard_only",
        ),
        refused("container", "CoE runs no code containers"),
        refused("mcp_servers", "CoE connects to no MCP servers"),
        refused("cache_control", "prompt caching is automatic in llama.cpp; cache_control is not supported"),
        refused("context_management", "not supported"),
        refused("diagnostics", "not supported"),
        refused("inference_geo", "CoE's experts run where CoE runs"),
        refused("speed", "not supported"),
        refused("user_profile_id", "not supported"),
        refused("workspace_id", "not supported"),
        applied("coe", _TRACE),
    ),
)

COMPLETIONS = Api(
    "completions",
    "POST",
    "/v1/completions",
    "Completions (legacy)",
    "OpenAI's legacy prompt completion, routed on the prompt and answered as one chat turn (the prompt is "
    "the user message, so the expert's chat template applies).",
    (
        applied("model", _MODEL),
        applied(
            "prompt",
            "one string (or a list of one)",
            refuse=lambda v: (
                None
                if isinstance(v, str) or (isinstance(v, list) and len(v) == 1 and isinstance(v[0], str))
                else "one prompt per request, as text (not token ids)"
            ),
            when="several prompts or token ids",
        ),
        applied("stream", "server-sent text_completion chunks"),
        _stream_options("`include_usage`: a last chunk with usage"),
        forwarded("max_tokens", "at most server.max_tokens"),
        forwarded("temperature"),
        forwarded("top_p"),
        forwarded("stop"),
        forwarded("seed"),
        forwarded("presence_penalty"),
        forwarded("frequency_penalty"),
        forwarded("logit_bias"),
        forwarded("user"),
        applied(
            "logprobs", "an integer N: `logprobs: true` and `top_logprobs: N`, returned in the legacy shape"
        ),
        applied("n", "one choice", refuse=_n_one, when="n > 1"),
        refused_unless("best_of", _is(1), "CoE generates one completion per request", "best_of > 1"),
        refused_unless("echo", _is(False), "the prompt is not echoed", "true"),
        refused("suffix", "insertion (suffix) is not supported"),
        applied("coe", _TRACE),
    ),
)

EMBEDDINGS = Api(
    "embeddings",
    "POST",
    "/v1/embeddings",
    "Embeddings",
    "Vectors from the registry's sentence encoder (`embedder:`), model id `coe/embedder`; no expert is "
    "called, so an unknown field is refused whatever server.unknown_fields says.",
    (
        applied("model", "must be `coe/embedder`"),
        applied("input", "a string or a list of strings (token ids are refused)"),
        applied("encoding_format", "float or base64"),
        refused("dimensions", "the encoder's vectors have a fixed size; omit dimensions"),
        applied("user", "accepted; no expert is called and CoE keeps no per-user record"),
    ),
)

APIS = (CHAT, RESPONSES, MESSAGES, COMPLETIONS, EMBEDDINGS)
