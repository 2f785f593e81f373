"""The trace store (real SQLite), its background writer, replay, refit and the judge's parser.

Replay routes with the default registry's real encoder and router; no expert is started anywhere in
this file."""

from __future__ import annotations

import json
import logging
import threading
import time
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from coe import CoE, load_config
from coe.cli import app
from coe.config import TracesConfig, parse_config
from coe.errors import ConfigError
from coe.traces import Feedback, TraceDecision, TraceQueue, TraceRecord, TraceStore
from coe.traces.judge import rating
from coe.traces.refit import refit
from coe.traces.replay import NO_TEXT, mismatches, replay
from tests.support.paths import DEFAULT_REGISTRY

runner = CliRunner()
PROMPTS = {
    "math": [
        "What is 12 times 14?",
        "Solve for x: 2x + 3 = 11.",
        "What is the area of a circle of radius 3?",
    ],
    "code": ["Write a Python function that sorts a list.", "How do I reverse a string in JavaScript?"],
    "general": [
        "Tell me a story about a cat.",
        "What is the capital of France?",
        "Write a haiku about rain.",
    ],
}


def _record(
    rid: str, expert: str, category: str | None = "code", t: float | None = None, **kw: object
) -> TraceRecord:
    return TraceRecord(
        id=rid,
        time=t if t is not None else time.time(),
        expert=expert,
        decision=TraceDecision(router="category", category=category, candidates=[expert]),
        prompt_sha256="0" * 64,
        **kw,  # type: ignore[arg-type]
    )


# ------------------------------------------------------------------------------------------- store


def test_records_and_feedback_round_trip_through_sqlite(tmp_path: Path) -> None:
    store = TraceStore(tmp_path / "traces.db")
    store.write([_record("chatcmpl-1", "coder"), _record("msg_2", "general", "general")])
    assert store.get("chatcmpl-1") is not None and store.get("chatcmpl-1").expert == "coder"  # type: ignore[union-attr]
    assert [r.id for r in store.recent(10)][::-1] == [r.id for r in store.records()]
    assert store.add_feedback(Feedback(id="msg_2", score=0.5, label="ok"))
    assert not store.add_feedback(Feedback(id="resp_nope", score=1.0))
    assert [(f.id, f.score, f.label) for f in store.feedback()] == [("msg_2", 0.5, "ok")]
    store.close()
    again = TraceStore(tmp_path / "traces.db")  # a restart keeps them
    assert again.count() == 2 and again.feedback("msg_2")[0].score == 0.5


def test_retention_drops_the_old_and_the_oldest_beyond_the_limits(tmp_path: Path) -> None:
    store = TraceStore(tmp_path / "t.db", max_age_days=1, max_rows=3)
    now = time.time()
    store.write([_record("old", "coder", t=now - 3 * 86_400)])
    store.write([_record(f"r{i}", "coder", t=now - 100 + i) for i in range(5)])
    store.add_feedback(Feedback(id="r0", score=1.0))
    store.trim()
    assert sorted(r.id for r in store.records()) == ["r2", "r3", "r4"]
    assert store.feedback() == []  # the feedback of a deleted record goes with it


def test_a_size_limit_keeps_the_file_under_it(tmp_path: Path) -> None:
    store = TraceStore(tmp_path / "t.db", max_mb=0.25)
    big, now = "x" * 2000, time.time() - 10_000
    for b in range(10):
        store.write([_record(f"r{b}-{i}", "coder", answer=big, t=now + b * 100 + i) for i in range(100)])
    store.trim()
    kept = store.count()
    assert 0 < kept < 1000
    newest = max(store.records(), key=lambda r: r.time)
    assert newest.id == "r9-99"


def test_a_full_queue_drops_the_record_and_counts_it(tmp_path: Path) -> None:
    release = threading.Event()

    class SlowStore(TraceStore):  # fault injection: the disk stalls
        def write(self, records):  # type: ignore[no-untyped-def]
            release.wait(10)
            super().write(records)

    drops: list[tuple[str, int]] = []
    writer = TraceQueue(SlowStore(tmp_path / "t.db"), queue_size=2, on_drop=lambda r, n: drops.append((r, n)))
    results = [writer.submit(_record(f"r{i}", "coder")) for i in range(6)]
    assert results.count(False) >= 3  # the writer holds at most one batch, the queue two: put never waited
    release.set()
    assert writer.flush()
    assert writer.dropped["queue_full"] == results.count(False) == sum(n for _, n in drops)
    assert writer.store.count() == results.count(True)
    writer.close()


def test_an_unwritable_store_drops_counts_and_logs_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    writer = TraceQueue(TraceStore(blocker / "traces.db"))
    with caplog.at_level(logging.WARNING, logger="coe.traces"):
        for i in range(3):
            assert writer.submit(_record(f"r{i}", "coder"))
            writer.flush()
    assert writer.dropped["write_error"] == 3
    assert len([r for r in caplog.records if "cannot be written" in r.message]) == 1
    writer.close()


def test_the_library_records_when_asked_and_feedback_finds_it(tmp_path: Path) -> None:
    cfg = load_config(DEFAULT_REGISTRY).model_copy(
        update={"traces": TracesConfig(path=str(tmp_path / "t.db"))}
    )
    coe = CoE(cfg, traces=True)
    assert coe.recorder is not None
    from coe.pipeline import Flow
    from coe.types import Answer, Request, RouteDecision, Trace

    answer = Answer(text="4", expert="coder", trace=Trace())
    decision = RouteDecision(router="pinned", experts=["coder"], reason="test")
    coe.run(coe.pipeline.finish(Flow(Request.from_input("What is 2+2?"), decision=decision), answer))
    assert answer.trace.id is not None and answer.trace.id.startswith("coe-")
    coe.feedback(answer.trace.id, thumbs="up")
    coe.close()
    store = TraceStore(tmp_path / "t.db")
    record = store.get(answer.trace.id)
    assert record is not None and record.prompt is None and record.answer is None  # privacy default
    assert store.feedback(answer.trace.id)[0].score == 1.0
    with pytest.raises(KeyError, match="coe-unknown"):
        import coe as coe_module

        coe_module.feedback("coe-unknown", 1.0, config=cfg)


def test_the_traces_block_is_strict() -> None:
    with pytest.raises(ConfigError, match=r"traces\.store_txt"):
        parse_config(DEFAULT_REGISTRY.read_text() + "traces: {store_txt: true}\n")


# ------------------------------------------------------------------------------------------ replay


@pytest.fixture(scope="module")
def logged() -> list[TraceRecord]:
    """Requests as the default registry served them, with their prompts (store_text)."""
    coe = CoE(load_config(DEFAULT_REGISTRY))
    texts = [p for ps in PROMPTS.values() for p in ps]
    decisions = coe.route(texts)
    coe.close()
    return [
        _record(
            f"chatcmpl-{i}",
            d.experts[0],
            d.category,
            prompt=[{"role": "user", "content": t}],
            prompt_tokens=10,
            completion_tokens=20,
        )
        for i, (t, d) in enumerate(zip(texts, decisions, strict=True))
    ]


def test_replay_with_the_same_registry_agrees_everywhere(logged: list[TraceRecord]) -> None:
    coe = CoE(load_config(DEFAULT_REGISTRY))
    report = replay(logged, [], coe)
    assert report.agreement == 1.0 and report.moved == 0 and report.replayed == len(logged)
    assert report.quality.change is None and "no feedback" in report.quality.model


def test_replay_on_threads_decides_as_routing_one_after_another(logged: list[TraceRecord]) -> None:
    from coe.traces.replay import route_all

    coe = CoE(load_config(DEFAULT_REGISTRY))
    assert route_all(coe, logged, workers=3, batch=2) == route_all(coe, logged, workers=1)


def test_replay_with_a_changed_map_moves_that_category(logged: list[TraceRecord], tmp_path: Path) -> None:
    text = DEFAULT_REGISTRY.read_text().replace(
        "    math:\n      expert: coder", "    math:\n      expert: general", 1
    )
    (tmp_path / "candidate.yaml").write_text(text)
    candidate = CoE(load_config(tmp_path / "candidate.yaml"))
    expected = sum(1 for r in logged if r.decision and r.decision.category == "math" and r.expert == "coder")
    assert expected >= 2  # the math prompts were routed to coder
    feedback = [Feedback(id=r.id, score=0.2 if r.expert == "coder" else 0.9) for r in logged]
    report = replay(logged, feedback, candidate, draws=200)
    assert report.moved == expected and report.per_category["math"].to == {"general": expected}
    assert report.per_expert["coder"].moved == expected
    # math had no feedback for general: those requests have no quality model (uncovered)
    assert report.quality.uncovered == expected and report.quality.change == 0.0
    assert report.cost.change is not None and report.cost.change > 0  # general is the larger model


def test_replay_without_prompt_text_says_what_it_needs(logged: list[TraceRecord]) -> None:
    bare = [r.model_copy(update={"prompt": None}) for r in logged]
    with pytest.raises(ValueError, match="store_text"):
        replay(bare, [], CoE(load_config(DEFAULT_REGISTRY)))
    assert "store_text: true" in NO_TEXT


def test_one_message_per_mismatched_category_and_expert(logged: list[TraceRecord]) -> None:
    odd = [*logged, _record("x1", "oracle", "law"), _record("x2", "oracle", "law")]
    messages = mismatches(odd, load_config(DEFAULT_REGISTRY), "cand.yaml")
    assert len(messages) == 2
    assert messages[0].startswith("category 'law' (2 logged requests) is not a category of cand.yaml")
    assert messages[1].startswith("expert 'oracle' (served 2 logged requests) is not an expert of cand.yaml")


# ------------------------------------------------------------------------------------------- refit


def test_refit_moves_a_category_to_the_better_graded_expert_only_where_it_was_tried() -> None:
    records = [_record(f"m{i}", "coder" if i % 4 else "general", "math") for i in range(20)]
    records += [_record(f"c{i}", "coder", "code") for i in range(10)]
    feedback = [Feedback(id=r.id, score=0.9 if r.expert == "general" else 0.3) for r in records[:20]]
    feedback += [Feedback(id=r.id, score=0.8) for r in records[20:]]
    report = refit(records, feedback, min_feedback=5)
    assert report.categories["math"].expert == "general" and report.changed == ["math"]
    assert report.categories["code"].expert == "coder"  # general never served code: not a choice
    thin = refit(records, feedback[:6] + feedback[20:], min_feedback=5)  # math: 3 grades per expert
    assert (
        thin.categories["math"].expert == thin.categories["math"].was
        and thin.categories["math"].quality is None
    )


def test_fit_map_from_traces_writes_a_fragment_the_registry_loads(tmp_path: Path) -> None:
    store = TraceStore(tmp_path / "t.db")
    records = [_record(f"m{i}", "coder" if i % 2 else "general", "math") for i in range(20)]
    store.write(records)
    for r in records:
        store.add_feedback(Feedback(id=r.id, score=0.9 if r.expert == "general" else 0.3))
    store.close()
    out = tmp_path / "fragment.yaml"
    result = runner.invoke(app, ["fit-map", "--from-traces", str(tmp_path / "t.db"), "-o", str(out)])
    assert result.exit_code == 0, result.output
    fragment = yaml.safe_load(out.read_text())
    assert fragment["router"]["categories"] == {"math": {"expert": "general"}}
    registry = yaml.safe_load(DEFAULT_REGISTRY.read_text())
    for cat, value in fragment["router"]["categories"].items():
        registry["router"]["categories"][cat].update(value)
    (tmp_path / "refit.yaml").write_text(yaml.safe_dump(registry))
    assert load_config(tmp_path / "refit.yaml").router.category_routes()["math"].expert == "general"


def test_fit_map_from_traces_without_feedback_says_so(tmp_path: Path) -> None:
    store = TraceStore(tmp_path / "t.db")
    store.write([_record("a", "coder", "math")])
    store.close()
    result = runner.invoke(app, ["fit-map", "--from-traces", str(tmp_path / "t.db")])
    assert result.exit_code == 1 and "no feedback" in result.output


# --------------------------------------------------------------------------------- commands, judge


def test_traces_commands_list_show_export_and_replay(logged: list[TraceRecord], tmp_path: Path) -> None:
    store = TraceStore(tmp_path / "t.db")
    store.write(logged)
    store.add_feedback(Feedback(id=logged[0].id, score=1.0))
    store.close()
    db = str(tmp_path / "t.db")
    listed = runner.invoke(app, ["traces", "list", "--store", db, "--json"])
    assert listed.exit_code == 0 and len(json.loads(listed.output)) == len(logged)
    shown = runner.invoke(app, ["traces", "show", logged[0].id, "--store", db])
    assert json.loads(shown.output)["feedback"][0]["score"] == 1.0
    missing = runner.invoke(app, ["traces", "show", "chatcmpl-nope", "--store", db])
    assert missing.exit_code == 1 and "chatcmpl-nope" in missing.output
    export = tmp_path / "export.jsonl"
    assert runner.invoke(app, ["traces", "export", "--store", db, "-o", str(export)]).exit_code == 0
    assert len(export.read_text().splitlines()) == len(logged) + 1
    import pyarrow.parquet as pq  # the dev extra installs it

    table_path = tmp_path / "t.parquet"
    parquet = runner.invoke(
        app, ["traces", "export", "--store", db, "-o", str(table_path), "--format", "parquet"]
    )
    assert parquet.exit_code == 0, parquet.output
    table = pq.read_table(table_path)
    assert table.num_rows == len(logged) and set(table.column("id").to_pylist()) == {r.id for r in logged}
    for source in (db, str(export)):
        replayed = runner.invoke(
            app, ["replay", "--traces", source, "--config", str(DEFAULT_REGISTRY), "--json"]
        )
        assert replayed.exit_code == 0, replayed.output
        assert json.loads(replayed.output)["agreement"] == 1.0


def test_replay_refuses_a_mismatched_registry_naming_each_mismatch(tmp_path: Path) -> None:
    store = TraceStore(tmp_path / "t.db")
    store.write([_record("a", "oracle", "law", prompt=[{"role": "user", "content": "hi"}])])
    store.close()
    result = runner.invoke(
        app, ["replay", "--traces", str(tmp_path / "t.db"), "--config", str(DEFAULT_REGISTRY)]
    )
    assert result.exit_code == 1
    assert "category 'law'" in result.output and "expert 'oracle'" in result.output


def test_the_judge_reads_mt_bench_ratings() -> None:
    assert rating("Short and right. Rating: [[8]]") == 0.8
    assert rating("Rating: [7.5]") == 0.75
    assert rating("I would give it a ten") is None
    assert rating("Rating: [[42]]") is None
