"""The field tables are the one source of what each API does with each field: the request models
type exactly the fields the tables list, and docs/server-api.md is what the tables say today."""

from __future__ import annotations

import pytest
from pydantic import BaseModel

from coe.server.apis import chat, completions, embeddings, messages, responses
from coe.server.apis.docs import COMMAND, render
from coe.server.apis.policy import APIS, CHAT, Api
from tests.support.paths import ROOT

PAGE = ROOT / "docs" / "server-api.md"
BODIES: dict[str, type[BaseModel]] = {
    "chat": chat.ChatBody,
    "responses": responses.ResponsesBody,
    "messages": messages.MessagesBody,
    "completions": completions.CompletionsBody,
    "embeddings": embeddings.EmbeddingsBody,
}
# What the issue requires every Chat Completions request to be able to carry (forwarded, applied or
# refused by name; never dropped).
REQUIRED_CHAT_FIELDS = {
    "tools", "tool_choice", "parallel_tool_calls", "response_format", "logprobs", "top_logprobs", "n", "stop",
    "seed", "presence_penalty", "frequency_penalty", "logit_bias", "user", "metadata", "stream_options",
    "max_completion_tokens", "reasoning_effort",
}  # fmt: skip


@pytest.mark.parametrize("api", APIS, ids=lambda a: a.name)
def test_each_table_lists_exactly_the_fields_its_request_model_types(api: Api) -> None:
    assert [r.name for r in api.rules] == list(dict.fromkeys(r.name for r in api.rules)), (
        "a field listed twice"
    )
    assert set(api.by_name) == set(BODIES[api.name].model_fields)


def test_every_required_chat_field_has_a_rule_and_refusals_say_why() -> None:
    assert set(CHAT.by_name) >= REQUIRED_CHAT_FIELDS
    for api in APIS:
        for rule in api.rules:
            assert rule.note, f"{api.name}.{rule.name} has no note"
            if rule.handling == "refused":
                assert rule.when, f"{api.name}.{rule.name}: say when it is refused"


def test_the_server_api_page_is_not_stale() -> None:
    assert PAGE.read_text(encoding="utf-8") == render(), f"docs/server-api.md is stale: run `{COMMAND}`"


def test_the_page_lists_every_endpoint_and_field() -> None:
    page = render()
    for api in APIS:
        assert f"| {api.method} | `{api.path}` |" in page
        for rule in api.rules:
            assert f"| `{rule.name}` | {rule.handling} |" in page
    assert "/v1/models" in page and "no_capable_expert" in page and "unknown_fields" in page
