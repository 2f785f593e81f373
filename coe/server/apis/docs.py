"""The server's API page, generated from the field tables (coe/server/apis/policy.py), so the page
says what the code does. ``python -m coe.server.apis.docs > docs/server-api.md``; a test fails when
the committed page is stale."""

from __future__ import annotations

from coe.server.apis.policy import APIS, Api

COMMAND = ".venv/bin/python -m coe.server.apis.docs > docs/server-api.md"

INTRO = f"""# The `coe serve` API

<!-- Generated from coe/server/apis/policy.py by `{COMMAND}`; do not edit by hand. -->

`coe serve` speaks OpenAI's Chat Completions, Responses, legacy Completions and Embeddings APIs and
Anthropic's Messages API. Every generating endpoint is translated to one internal chat request and
goes the same way: the router picks the expert (or the model id pins one), candidates that cannot
serve the request are dropped, experts are tried in order until one answers, and the reply is
translated back. So routing, the `x-coe-*` headers, authentication, body and token limits, the
per-expert queue (429), fallbacks and metrics are the same on every endpoint.

Nothing is silently dropped: each request field is **forwarded** to the expert unchanged, **applied**
by CoE (it changes what CoE does, or is translated), or **refused** with a 400 that names it in
`param` (Anthropic's shape on `/v1/messages`). The tables below are the code's own tables.

## Endpoints

| Method | Path | What |
|---|---|---|
"""

ENDPOINTS_TAIL = """| POST | `/v1/messages/count_tokens` | Anthropic's token count: the `/v1/messages` body, routed as `/v1/messages` would be (model id, router, capabilities; no session, cache or retrieval), counted with the chosen expert's own chat template and tokenizer (llama-server's `/apply-template` and `/tokenize`), else estimated (UTF-8 bytes / 4 plus turn markers); `{"input_tokens": N}` with `x-coe-token-count: exact\\|estimate` and `x-coe-expert` |
| POST | `/v1/feedback` | grade a response by its id (`chatcmpl-…`, `resp_…`, `msg_…`): `{"id", "score": 0..1}` or `{"id", "thumbs": "up"\\|"down"}`, optional `label`; 404 for an id the trace store does not hold, 400 for a score outside [0, 1] (see [Operations](operations.md)) |
| GET | `/v1/models` | `coe`, `coe/expert/NAME` per expert, `coe/category/NAME` per category, `coe/embedder` |
| GET | `/healthz` | the process is up (no key needed) |
| GET | `/readyz` | 200 once the router and the managed experts are up, else 503 naming those that are not |
| GET | `/metrics` | Prometheus metrics (`coe_requests_total` by endpoint and status, latency, tokens, fallbacks, queue rejections, stream errors, pool loads) |
| GET | `/ui` | the live dashboard; `/ui?key=KEY` once sets an HttpOnly session cookie (see the dashboard page) |
| GET | `/ui/api/summary`, `/ui/api/recent`, `/ui/api/trace/{id}` | the dashboard's JSON: totals and per-expert state, the last requests, one request's trace |

Model ids: `coe` routes; `coe/expert/NAME` pins an expert (no routing); `coe/category/NAME` answers
as if the router had chosen that category (its expert, then the fallback expert). Replies name the
expert that answered as `model: coe/expert/NAME` and in the headers `x-coe-expert`, `x-coe-category`,
`x-coe-confidence`. The routing trace comes back in the body's `coe` key with `"coe": {"trace": true}`
in the request or the header `x-coe-trace: 1`.

Authentication: with `server.api_keys` (or `COE_API_KEYS`) set, every `/v1` route needs a key, as
`Authorization: Bearer KEY` or as `x-api-key: KEY` (what Anthropic's SDK sends).

Anthropic's headers: `anthropic-version` may be absent, `2023-06-01` or a later date (the SDKs send
one); an earlier or malformed one is a 400 naming the header. `anthropic-beta` is ignored (no beta
changes what CoE serves) and the reply says so in `x-coe-ignored-beta`. Every response under
`/v1/messages` (404, 405, 401, 413, 429, 5xx included) is in Anthropic's error shape
`{"type": "error", "error": {"type", "message"}}` with its error types.

## What an expert sends

An expert's reply is read into an answer or refused, never a 500: a reply that is no chat completion
(not JSON, invalid UTF-8, no `choices`, no `message`, a stream chunk that is not JSON or a stream
with no data event) or a tool call naming a tool the request did not offer counts as that expert
failing, so the next candidate is tried; when every candidate answered such a reply the client gets
a 502 (`code: bad_expert_reply`, Anthropic: `api_error`) naming each expert and what was wrong (an
expert that cannot be reached or answers 5xx is a 503). `content: null` without tool calls is an
empty answer. Tool arguments that are not JSON pass through as the string they are (Chat and
Responses carry arguments as text); Anthropic's `tool_use.input` must be an object, so such a call
comes back as a text block `[tool call NAME with arguments that are not a JSON object: ...]` and the
stop reason is not `tool_use`. Streamed, Anthropic tool calls are held until whole and sent as one
`input_json_delta`. After a stream's first byte a broken stream ends with the API's error event.

## Reasoning

An expert's reasoning (`reasoning_content` from llama-server with a reasoning model or vLLM's
reasoning parsers, or `reasoning`) is passed through: Chat `message.reasoning_content` (streamed:
`delta.reasoning_content`), a Responses `reasoning` item with `reasoning_text` content before the
message (streamed: `response.reasoning.delta` / `.done`, the Open Responses events), an Anthropic
`thinking` block (streamed: `thinking_delta`). No reasoning model ships on PyPI, so the suite tests
this with a stub expert that returns `reasoning_content`. The effort (`reasoning_effort`,
`reasoning.effort`, Anthropic `thinking` / `output_config.effort`) routes only to experts with the
`reasoning` capability; when none can, the 400 names the field the caller wrote.

## Responses objects

Response objects and stream events follow the Open Responses spec (the suite validates each with
the `openresponses-types` package). Fields report what applied: `temperature`, `top_p`,
`presence_penalty`, `frequency_penalty` and `max_output_tokens` are the request's, else the expert's
`params:`, else the engine's defaults (llama-server: temperature 0.8, top_p 0.95; any other server:
OpenAI's 1.0 and 1.0; no `max_tokens` anywhere: `max_output_tokens: null`); `completed_at` is set
once answered; `service_tier` is `default` (a local expert has one tier); `background` is false;
`max_tool_calls` is null (CoE runs no built-in tools); `tools[].strict` is as asked, false when not
given (CoE constrains arguments to the schema only for a forced call); `reasoning` is
`{"effort", "summary": null}` when an effort was asked, else null. A reply cut at
`max_output_tokens` is `incomplete`, its last item too, and a stream ends with
`response.incomplete`. The `error` event carries OpenAI's top-level `code`/`message` and the spec's
`error` object.

## Unknown fields

A field that no table below lists is refused with a 400 naming it (`code: unknown_field`), in the
request body and inside messages. `server.unknown_fields: forward` in experts.yaml sends such fields
to the expert unchanged instead, for engine extensions (llama.cpp's `top_k`, `min_p`, `grammar`...);
refusing is the default because a gateway that drops a field leaves the application believing it
was applied. `/v1/embeddings` calls no expert, so it refuses unknown fields either way.

## Capabilities and context

A request that needs something routes only among experts that have it:

| Capability | Needed by |
|---|---|
| `tools` | `tools` with a `tool_choice` other than `none` |
| `tool_choice` | nothing by itself: an expert with it enforces `required` and named choices in its engine; for the others CoE enforces them (below) |
| `json_schema` | `response_format` `json_object` / `json_schema` (Responses: `text.format`; Anthropic: `output_config.format`) |
| `logprobs` | `logprobs: true` |
| `vision` | an `image_url` part (Responses `input_image`, Anthropic `image`) |
| `audio` | an `input_audio` part |
| `file` | a `file` part |
| `reasoning` | `reasoning_effort` (Responses `reasoning.effort`, Anthropic `output_config.effort`) |

An expert's capabilities are its `capabilities:` list in experts.yaml, else what its engine reports
once running (llama-server's `/props`: the chat template's tool support, vision and audio modalities,
reasoning effort), else the engine's defaults (llama.cpp: `json_schema`, `logprobs`, and `tools` with
a template CoE ships; vLLM: `json_schema`, `logprobs`, `tool_choice`, and `tools` with
`--enable-auto-tool-choice`). An endpoint or provider expert without the list is assumed to serve
everything (the remote server decides). Its context window is `context_window:`, else what the
engine reports (llama-server's slot context, vLLM's `max_model_len`), else `serve.ctx` or
`serve.max_model_len`; the request's estimated prompt tokens (UTF-8 bytes / 4 plus each turn's
markers and the tool definitions) plus its `max_tokens` (or the expert's) must fit.

The router's scores are restricted to the experts that can serve the request: candidates that
cannot are dropped from the decision and its fallback chain, and the best-scored capable expert
(then any capable one) takes their place. A pinned model id (`coe/expert/NAME`,
`coe/category/NAME`) is only filtered. The trace's `capabilities` block lists what was needed, the
estimate, and each excluded expert with the reason. When no expert can serve the request: 400 with
`code: no_capable_expert`, `param` naming the field that needs the capability, and a message naming
what is missing and each expert considered.

Several recruited experts (the skills router) and tools: only the top-weighted recruited expert
answers, the others become its fallbacks, because tool calls from several experts cannot be merged
into one assistant turn; the trace names it as `capabilities.tool_answerer`.

## Forced tool calls

`tool_choice: "required"` or a named function must come back as a tool call. llama-server renders
the tools into the prompt (CoE runs it with `--jinja` and, for the packaged models, a chat template
that renders tools: ChatML for SmolLM2, Gemma's turns for Gemma) but does not enforce either
choice. So for an expert without the `tool_choice` capability CoE sends the tools with a
`response_format` JSON schema whose instances are exactly one call of an allowed tool
(`{"name": ..., "arguments": {...}}`, the arguments under the tool's own parameters schema), checks
the reply against the tool's schema, and returns a proper `tool_calls` message with
`finish_reason: "tool_calls"` (streamed: the call's name, then its arguments as fragments). A reply
that is not a valid call (cut off by `max_tokens`) counts as that expert failing: the next candidate
is tried. A forced choice that CoE enforces yields one call. `tool_choice: "auto"` is left to the
model. The trace's `capabilities.enforced_tool_choice` says when CoE did it.

## Streaming

Streams keep the rule of the rest of the server: a candidate that fails before its first byte is
replaced by the next one (with tools too); after the first byte the status is sent, so a failure
ends the stream with the API's error event (Chat and Completions: an `error` data event then
`[DONE]`; Responses: `error` then `response.failed`; Anthropic: an `error` event).
"""


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def endpoints() -> str:
    rows = [f"| {a.method} | `{a.path}` | {a.title}: {_cell(a.summary)} |" for a in APIS]
    return "\n".join(rows) + "\n" + ENDPOINTS_TAIL


def fields(api: Api) -> str:
    lines = [
        f"## `{api.method} {api.path}`: {api.title}",
        "",
        api.summary,
        "",
        "| Field | Handling | What CoE does | Refused when |",
        "|---|---|---|---|",
    ]
    for rule in api.rules:
        when = rule.when if rule.handling != "refused" or rule.when != "always" else "always"
        lines.append(f"| `{rule.name}` | {rule.handling} | {_cell(rule.note)} | {_cell(when) or '-'} |")
    return "\n".join(lines) + "\n"


def render() -> str:
    return INTRO + endpoints() + "\n" + "\n".join(fields(api) for api in APIS)


if __name__ == "__main__":
    print(render(), end="")
