"""LoRA adapters as experts with the real llama-server and the packaged SmolLM2: adapters written with
the gguf package share one process with the base, each pinned request is answered by its own adapter
at temperature 0 (scale 0 answers as the base alone), and the answers stay the same whether requests
stay on one adapter, alternate, or run at once; an adapter expert whose process cannot start falls
back to the next candidate; a crash restarts the process once for all of them; a conversation keeps
its adapter expert on its follow-up turns, and two conversations on two adapters of one process stay
apart."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from aggregators.vote import VoteAggregator
from coe import CoE, Request
from coe.config import load_config
from coe.protocols import Context
from coe.types import Message, RouteDecision, Trace
from tests.support.adapters import write_lora
from tests.support.paths import DEFAULT_REGISTRY
from tests.support.procs import wait_gone
from tests.support.registries import SMOLLM

pytestmark = pytest.mark.e2e

SERVE = f"engine: llamacpp, gguf: '{SMOLLM}', ctx: 512, parallel: 2, threads: 1"
PROMPT = "Name a fruit."
SHORT = {"temperature": 0.0, "max_tokens": 16}


@pytest.fixture(scope="module")
def coe(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CoE]:
    """``base`` and three adapters share one process; ``alone`` is the same base in a process of its
    own (another ctx), to compare scale 0 with; ``bad`` has an adapter of another architecture."""
    folder = tmp_path_factory.mktemp("lora-e2e")
    for seed in (1, 2, 3):
        write_lora(folder / f"a{seed}.gguf", seed=seed)
    write_lora(folder / "gemma.gguf", seed=4, architecture="gemma3")  # llama-server refuses it
    experts = "".join(f"  a{s}: {{serve: {{{SERVE}, lora: a{s}.gguf}}}}\n" for s in (1, 2, 3))
    (folder / "experts.yaml").write_text(
        "version: 1\nexperts:\n"
        f"  base: {{serve: {{{SERVE}}}}}\n{experts}"
        f"  alone: {{serve: {{engine: llamacpp, gguf: '{SMOLLM}', ctx: 256, parallel: 1, threads: 1}}}}\n"
        f"  bad: {{serve: {{engine: llamacpp, gguf: '{SMOLLM}', ctx: 384, parallel: 1, lora: gemma.gguf}}}}\n"
        "router:\n  categories:\n    any: {expert: a1, examples: [hi]}\n"
    )
    with CoE(load_config(folder / "experts.yaml")) as coe:
        yield coe


def ask(coe: CoE, expert: str, prompt: str = PROMPT) -> str:
    return coe.ask(prompt, expert=expert, **SHORT).text


def test_each_adapter_answers_as_itself_from_one_process(coe: CoE) -> None:
    answers = {e: ask(coe, e) for e in ("base", "a1", "a2", "a3", "alone")}
    assert answers["base"] == answers["alone"]  # every adapter at scale 0: the base model itself
    assert len({answers[e] for e in ("base", "a1", "a2", "a3")}) == 4  # each adapter changes the answer
    # Alternating adapters request by request changes nothing: every request sets every scale.
    for expert in ("a2", "base", "a1", "a3", "a1", "base"):
        assert ask(coe, expert) == answers[expert], expert
    assert set(coe.pool.running) == {"base", "alone"}  # two processes for five experts
    stats = coe.pool.stats()
    assert stats.starts == {"base": 1, "a1": 1, "a2": 1, "a3": 1, "alone": 1}
    statuses = {s.name: s for s in coe.run(coe.pool.status())}
    assert {statuses[e].pid for e in ("base", "a1", "a2", "a3")} == {coe.pool.running["base"]}
    assert statuses["a2"].detail == "shares base's process"


def test_concurrent_requests_to_different_adapters_keep_their_own(coe: CoE) -> None:
    """Two slots, three adapters at once: llama-server batches only requests with the same scales,
    so each still gets its own adapter; a vote over them sees three different answers."""
    alone = {e: ask(coe, e) for e in ("a1", "a2", "a3")}
    request = Request.from_input(PROMPT, params=SHORT)
    experts = ["a1", "a2", "a3"]

    async def at_once() -> list:  # type: ignore[type-arg]
        return list(await asyncio.gather(*(coe.call_expert(e, request) for e in experts)))

    answers = coe.run(at_once())
    assert {a.expert: a.text for a in answers} == alone
    decision = RouteDecision(router="test", experts=experts, fanout=3, weights=dict.fromkeys(experts, 1.0))
    ctx = Context(decision=decision, trace=Trace(), call_expert=coe.call_expert)
    result = coe.run(VoteAggregator().combine(request, answers, ctx))
    assert ctx.trace.aggregation is not None and sorted(ctx.trace.aggregation.answered) == experts
    assert result.text in alone.values()


def test_an_adapter_expert_that_cannot_start_falls_back_to_the_next(coe: CoE) -> None:
    decision = RouteDecision(router="test", experts=["bad", "a2"], fanout=1)
    answer = coe.ask(PROMPT, decision=decision, **SHORT)
    assert answer.expert == "a2" and answer.text == ask(coe, "a2")
    assert answer.trace.fallback_used and [a.ok for a in answer.trace.attempts] == [False, True]
    assert "bad" not in coe.pool.running and coe.pool.state("base") == "ready"  # the group is untouched


def test_a_crash_restarts_the_shared_process_once_for_all_its_experts(coe: CoE) -> None:
    before = ask(coe, "a2")
    pid = coe.pool.running["base"]
    os.kill(pid, signal.SIGKILL)
    assert not wait_gone({pid})
    answer = coe.ask(PROMPT, expert="a1", **SHORT)
    assert answer.trace.attempts[-1].expert == "a1"  # the trace names the adapter expert that answered
    assert ask(coe, "a2") == before and coe.pool.running["base"] != pid
    stats = coe.pool.stats()
    assert stats.crashes == {"base": 1, "a1": 1, "a2": 1, "a3": 1}  # one crash, seen by each expert
    assert stats.starts["a2"] == stats.starts["base"] == 2  # one restart for all of them


def test_the_cache_keeps_adapter_experts_apart(tmp_path: Path) -> None:
    """The adapter is part of the expert's identity: a pinned adapter expert replays its own cached
    answer, never another adapter's of the same process."""
    write_lora(tmp_path / "a1.gguf", seed=1)
    write_lora(tmp_path / "a2.gguf", seed=2)
    experts = "".join(f"  a{s}: {{serve: {{{SERVE}, lora: a{s}.gguf}}}}\n" for s in (1, 2))
    (tmp_path / "experts.yaml").write_text(
        f"version: 1\nexperts:\n{experts}"
        "router:\n  categories:\n    any: {expert: a1, examples: [hi]}\n"
        "signals: {cache: {semantic: false, store: memory}}\n"
    )
    with CoE(load_config(tmp_path / "experts.yaml")) as coe:
        first = coe.ask(PROMPT, expert="a1", **SHORT)
        again = coe.ask(PROMPT, expert="a1", **SHORT)
        other = coe.ask(PROMPT, expert="a2", **SHORT)
        assert first.trace.cache is not None and first.trace.cache.status == "miss"
        assert again.trace.cache is not None and again.trace.cache.status == "hit"
        assert again.text == first.text
        assert other.trace.cache is not None and other.trace.cache.status == "miss"
        assert other.text != first.text and list(coe.pool.running) == ["a1"]  # one process for both


@pytest.fixture(scope="module")
def routed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CoE]:
    """The default registry's router and encoder (whose continuation model sessions ship with) over
    two adapter experts of one process: coder is adapter 1, general adapter 2."""
    folder = tmp_path_factory.mktemp("lora-sessions")
    _, _, routing = DEFAULT_REGISTRY.read_text().partition("\nrouter:\n")
    experts = "".join(
        f"  {name}: {{serve: {{{SERVE}, lora: {write_lora(folder / f'{name}.gguf', seed=seed).name}}}}}\n"
        for name, seed in (("coder", 1), ("general", 2))
    )
    text = f"version: 1\nembedder: {{backend: onnx-int8}}\nexperts:\n{experts}router:\n{routing}"
    (folder / "experts.yaml").write_text(text)
    with CoE(load_config(folder / "experts.yaml")) as coe:
        yield coe


LONGER = {"temperature": 0.0, "max_tokens": 24}  # long enough that the two adapters' answers part
# Each conversation's turns. Routed alone, the code conversation's follow-up goes to general (the
# CSS question); the conversation keeps it with coder.
TURNS = {
    "coder": (
        "Write a Python function that checks whether a number is prime.",
        "How to use CSS to change the color of the output to red?",
    ),
    "general": ("Tell me a short story about a dragon who is afraid of fire.", "Give the dragon a name."),
}


def test_sessions_keep_a_conversation_on_its_adapter_and_two_on_one_process_apart(routed: CoE) -> None:
    """Sessions are keyed by expert name, and an adapter expert is its name: the follow-up stays with
    the adapter expert that answered, and is answered by that adapter (not the other one the
    process also loads), while another conversation on the other adapter runs in between."""
    history: dict[str, list[Message]] = {name: [] for name in TURNS}
    for turn in range(2):
        for expert, other in (("coder", "general"), ("general", "coder")):
            messages = [*history[expert], Message(role="user", content=TURNS[expert][turn])]
            answer = routed.ask(messages, session=f"lora-{expert}", **LONGER)
            session = answer.trace.session
            assert session is not None and answer.expert == expert
            assert answer.trace.decision is not None and answer.trace.decision.experts[0] == expert
            assert [a.expert for a in answer.trace.attempts] == [expert]
            if turn == 0:
                assert session.action == "new"
            else:
                assert (session.action, session.expert, session.turn) == ("kept", expert, 2)
                if expert == "coder":  # alone, the follow-up would have gone to the other adapter
                    assert session.stateless is not None and session.stateless.expert == "general"
            own, others = (
                routed.run(routed.call_expert(e, Request(messages=messages, params=LONGER))).text
                for e in (expert, other)
            )
            assert answer.text == own != others  # its own adapter's answer, not the other's
            history[expert] = [*messages, Message(role="assistant", content=answer.text)]
    assert list(routed.pool.running) == ["coder"]  # one process served both conversations
