"""Signals through `coe serve` end to end: the official openai SDK against a real uvicorn server whose
experts are real llama.cpp processes (the default experts.yaml) with a guard and PII redaction. A
blocked prompt is a 400 `content_policy` and starts no expert; a prompt with an email address is
answered by a real expert, which got it redacted (the trace says so without the value)."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import openai
import pytest

from coe.config.signals import GuardConfig, PiiConfig, SignalsConfig
from coe.server import ServerSettings, create_app
from tests.e2e.test_server import ServerThread
from tests.support.guard import BLOCKED_PROMPT, train_small_guard

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def served(default_config, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerThread, object]]:  # type: ignore[no-untyped-def]
    guard = train_small_guard(tmp_path_factory.mktemp("guard") / "guard.npz")
    signals = SignalsConfig(guard=GuardConfig(model=str(guard), threshold=0.9), pii=PiiConfig())
    config = default_config.model_copy(update={"signals": signals})
    app = create_app(config, ServerSettings(max_tokens_limit=256, warm=False))
    running = ServerThread(app)
    running.start()
    yield running, app
    running.stop()


def test_a_blocked_prompt_is_a_400_content_policy_and_no_expert_runs(served) -> None:  # type: ignore[no-untyped-def]
    server, app = served
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0, timeout=120)
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="coe", messages=[{"role": "user", "content": BLOCKED_PROMPT}])
    assert info.value.code == "content_policy" and info.value.status_code == 400
    assert app.state.coe.pool.running == {} and sum(app.state.coe.pool.scheduler.loads.values()) == 0
    metrics = httpx.get(server.url + "/metrics").text
    assert 'coe_signal_verdicts_total{action="block",signal="guard",verdict="jailbreak"} 1.0' in metrics


def test_a_prompt_with_an_email_reaches_a_real_expert_redacted(served) -> None:  # type: ignore[no-untyped-def]
    server, _ = served
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0, timeout=300)
    reply = client.chat.completions.create(
        model="coe",
        messages=[
            {"role": "user", "content": "Write one sentence to thank bob.smith@example.org for lunch."}
        ],
        max_tokens=24,
        temperature=0.0,
        extra_headers={"x-coe-trace": "1"},
    )
    assert reply.choices[0].message.content
    trace = (reply.model_extra or {})["coe"]
    assert trace["attempts"][0]["ok"] and trace["signals"]["redacted"] == 1
    assert trace["signals"]["verdicts"][1]["evidence"]["types"] == ["EMAIL_ADDRESS"]
    assert "bob.smith" not in str(trace)
