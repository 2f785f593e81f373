"""The signals stage (coe/signals): the `signals:` block, PII detection and redaction with Presidio's
pattern recognizers, the guard artefact (refused with another encoder), the split rule, the actions
through the library, and `coe eval guard|pii` with their bad-line reports. Real encoder, real Presidio."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from coe import CoE
from coe.cli import app
from coe.config import ConfigError, parse_config
from coe.config.signals import PATTERN_TYPES, GuardConfig, PiiConfig, SignalsConfig
from coe.data.npz import read_npz, write_npz
from coe.errors import CoEError, RequestBlocked
from coe.pipeline import Flow
from coe.pipeline.stages import Signals
from coe.signals.guard.model import LABELS, load, neighbour_features
from coe.signals.guard.training import GuardRow, split
from coe.signals.pii import find, redact, supported_types
from coe.signals.stage import SignalStage
from coe.types import Request
from tests.support.guard import BLOCKED_PROMPT, train_small_guard
from tests.support.paths import ROOT

runner = CliRunner()
REGISTRY = (ROOT / "experts.yaml").read_text()
PII_TEXT = (
    "Mail jane.doe@example.com or call 212-555-0187; card 4111 1111 1111 1111, "
    "IBAN DE89 3704 0044 0532 0130 00, SSN 536-90-4399, from 192.168.10.7."
)


def registry(tmp_path: Path, signals: str) -> str:
    text = REGISTRY + "\nsignals:\n" + "".join(f"  {line}\n" for line in signals.strip().splitlines())
    (tmp_path / "experts.yaml").write_text(text)
    return text


@pytest.fixture(scope="module")
def guard_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_small_guard(tmp_path_factory.mktemp("guard") / "guard.npz")


# ----------------------------------------------------------------------------------- config


def test_an_unknown_pii_type_is_a_config_error_naming_it_and_its_key_path(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(registry(tmp_path, "pii: {action: redact, types: [EMAIL_ADDRESS, SOCIAL_SECURITY]}"))
    assert "signals.pii" in str(info.value) and "'SOCIAL_SECURITY'" in str(info.value)
    with pytest.raises(ConfigError) as ner:
        parse_config(registry(tmp_path, "pii: {types: [PERSON]}"))
    assert "spaCy NER model" in str(ner.value)


def test_route_names_an_expert_of_the_registry(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(registry(tmp_path, "guard: {model: g.npz, route: nobody}"))
    assert "signals.guard.route" in str(info.value) and "'nobody'" in str(info.value)
    with pytest.raises(ConfigError) as override:
        parse_config(registry(tmp_path, "guard: {model: g.npz, categories: {injection: {route: ghost}}}"))
    assert "signals.guard.categories.injection.route" in str(override.value)
    config = parse_config(registry(tmp_path, "guard: {model: g.npz, route: general}"))
    assert config.signals is not None and config.signals.guard is not None
    assert config.signals.guard.action == "route"  # `route:` alone means action route


def test_the_guard_cannot_redact_and_a_wrong_key_names_its_path(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="only pii can"):
        parse_config(registry(tmp_path, "guard: {model: g.npz, action: redact}"))
    with pytest.raises(ConfigError) as info:
        parse_config(registry(tmp_path, "pii: {acton: redact}"))
    assert "signals.pii.acton" in str(info.value)


def test_the_config_knows_exactly_the_types_presidio_finds_without_nlp() -> None:
    assert set(PATTERN_TYPES) <= supported_types()


# ---------------------------------------------------------------------------------------- PII


def test_pii_finds_the_pattern_types_and_redaction_keeps_the_text_readable() -> None:
    types = ["EMAIL_ADDRESS", "PHONE_NUMBER", "CREDIT_CARD", "IBAN_CODE", "US_SSN", "IP_ADDRESS"]
    spans = find(PII_TEXT, types)
    assert sorted(s.type for s in spans) == sorted(types)
    out = redact(PII_TEXT, spans)
    assert out.startswith("Mail <EMAIL_ADDRESS> or call <PHONE_NUMBER>; card <CREDIT_CARD>")
    assert "jane.doe" not in out and "4111" not in out and "536-90" not in out


def test_the_stage_redacts_before_routing_and_the_trace_keeps_types_and_offsets_not_values() -> None:
    config = parse_config(REGISTRY + "\nsignals:\n  pii: {action: redact}\n")
    stage = SignalStage(config)
    request = Request.from_input(
        [{"role": "system", "content": "mail ops@example.com"}, {"role": "user", "content": PII_TEXT}]
    )
    out, trace = stage.run(request)
    assert out.messages[0].content == "mail ops@example.com"  # system turns are not scanned by default
    assert "<EMAIL_ADDRESS>" in out.messages[1].text and "jane.doe@example.com" not in out.messages[1].text
    assert trace.redacted == 6
    dumped = trace.model_dump_json()
    assert "jane.doe" not in dumped and "4111" not in dumped and "212-555" not in dumped
    first = trace.verdicts[0].evidence["spans"][0]
    assert first == {"message": 1, "type": "EMAIL_ADDRESS", "start": 5, "end": 25, "score": 1.0}


def test_a_per_type_override_blocks_with_the_pii_policy_code() -> None:
    config = parse_config(
        REGISTRY + "\nsignals:\n  pii: {action: redact, categories: {US_SSN: {action: block}}}\n"
    )
    with CoE(config) as coe, pytest.raises(RequestBlocked) as info:
        coe.ask("my SSN is 536-90-4399")
    assert info.value.code == "pii_policy" and "US_SSN" in str(info.value)
    assert coe.pool.running == {}  # no expert was started or called


# -------------------------------------------------------------------------------------- guard


def test_the_split_rule_is_deterministic_and_keeps_an_email_with_its_injected_copies() -> None:
    rows = []
    for i in range(40):
        rows += [
            GuardRow(f"bipia-email-train-{i:02d}", f"email {i}", "benign", "bipia/email-clean"),
            GuardRow(
                f"bipia-email-train-{i:02d}-end", f"email {i}\nDo X.", "injection", "bipia/email-injected-end"
            ),
        ]
    rows += [GuardRow(f"b{i}", f"question number {i}", "benign", "self-instruct/seed") for i in range(50)]
    held = split(rows, 0.2, "validation")
    assert held == split(list(rows), 0.2, "validation")
    assert all(held[2 * i] == held[2 * i + 1] for i in range(40))
    assert sum(held[80:]) == 10 and sum(held[:80:2]) == 8  # 20% of each source's groups


def test_the_guard_blocks_an_attack_and_lets_a_harmless_kill_question_through(guard_file: Path) -> None:
    config = parse_config(
        REGISTRY + f"\nsignals:\n  guard: {{model: '{guard_file}', action: block, threshold: 0.9}}\n"
    )
    stage = SignalStage(config)
    _, trace = stage.run(Request.from_input("How do I kill a Python process that hangs?"))
    assert trace.verdicts[0].verdict == "benign" and trace.blocked_by is None
    with CoE(config) as coe, pytest.raises(RequestBlocked) as info:
        coe.ask(BLOCKED_PROMPT)
    assert info.value.code == "content_policy" and info.value.verdict == "jailbreak"
    assert coe.pool.running == {}


def test_flag_and_route_answer_normally_and_say_so_in_the_trace(guard_file: Path) -> None:
    flag = parse_config(
        REGISTRY + f"\nsignals:\n  guard: {{model: '{guard_file}', action: flag, threshold: 0.9}}\n"
    )
    _, trace = SignalStage(flag).run(Request.from_input(BLOCKED_PROMPT))
    assert trace.flagged == ["guard"] and trace.blocked_by is None
    route = parse_config(
        REGISTRY + f"\nsignals:\n  guard: {{model: '{guard_file}', threshold: 0.9, "
        "action: flag, categories: {jailbreak: {route: general}}}\n"
    )
    coe = CoE(route)
    flow = Flow(Request.from_input(BLOCKED_PROMPT))
    coe.run(Signals(coe.parts).run([flow]))
    assert flow.failure is None and flow.trace.signals is not None
    assert flow.trace.signals.routed_to == "general"
    decision = flow.decision
    assert decision is not None and decision.experts == ["general"] and decision.router == "signals"


def test_the_guard_reads_tool_results_since_the_last_assistant_turn(guard_file: Path) -> None:
    config = parse_config(REGISTRY + f"\nsignals:\n  guard: {{model: '{guard_file}', threshold: 0.9}}\n")
    messages = [
        {"role": "user", "content": BLOCKED_PROMPT},  # an old turn: checked when it was new
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "search", "arguments": "{}"}}
            ],
        },
        {"role": "tool", "tool_call_id": "c1", "content": BLOCKED_PROMPT},
    ]
    _, trace = SignalStage(config).run(Request.from_input(messages))
    verdict = trace.verdicts[0]
    assert verdict.evidence["messages"] == [2] and verdict.evidence["role"] == "tool"
    assert trace.blocked_by == "guard"


def test_a_guard_trained_with_another_encoder_is_refused_by_name(guard_file: Path, tmp_path: Path) -> None:
    header, arrays = read_npz(guard_file, "guard")
    header["encoder"] = "bge-small-en+int8"
    other = tmp_path / "other.npz"
    write_npz(other, json.dumps(header), arrays)
    config = parse_config(REGISTRY + f"\nsignals:\n  guard: {{model: '{other}'}}\n")
    with pytest.raises(CoEError) as info:
        SignalStage(config).run(Request.from_input("hello"))
    assert "'bge-small-en+int8'" in str(info.value) and "'all-MiniLM-L6-v2+int8'" in str(info.value)


def test_the_guard_file_round_trips_and_a_target_fpr_moves_the_threshold(guard_file: Path) -> None:
    model = load(guard_file)
    assert model.header.encoder == "all-MiniLM-L6-v2+int8"
    assert np.all(np.diff(model.calibration_benign) >= 0)
    assert model.threshold_for(0.5) <= model.threshold_for(0.01)
    with np.load(guard_file, allow_pickle=False) as data:  # no pickle anywhere in the file
        assert "__header__" in data.files


def test_a_guard_file_of_the_previous_format_is_refused_with_a_retrain_hint(
    guard_file: Path, tmp_path: Path
) -> None:
    header, arrays = read_npz(guard_file, "guard")
    header["format_version"] = 1  # before the neighbour vectors and the block cosines
    old = tmp_path / "old.npz"
    write_npz(old, json.dumps(header), arrays)
    with pytest.raises(ValueError) as info:
        load(old)
    assert "format version 1" in str(info.value) and "coe train-guard" in str(info.value)


def test_neighbour_features_leave_out_the_rows_own_group() -> None:
    refs = np.eye(4, dtype=np.float32)[[0, 1, 2, 3, 0, 1]]  # rows 0 and 4: one text twice (one group)
    labels = np.array([1, 0, 2, 0, 1, 1], dtype=np.int8)
    groups = np.array([7, 1, 2, 3, 7, 5])
    seen = neighbour_features(refs, labels, refs, k=2)
    unseen = neighbour_features(refs, labels, refs, k=2, exclude=groups[:, None] == groups[None, :])
    jailbreak_max = 2 * LABELS.index("jailbreak")
    assert seen[0, jailbreak_max] == 1.0  # itself and its copy
    assert unseen[0, jailbreak_max] == 0.0  # only the other jailbreak (row 5) counts in training
    assert seen.shape == (6, 2 * len(LABELS))


# ------------------------------------------------------------------------------------ commands


def test_eval_guard_reports_every_bad_line(tmp_path: Path, guard_file: Path) -> None:
    data = tmp_path / "g.jsonl"
    data.write_text('{"text": "hi", "label": "benign"}\nnot json\n{"text": "x", "label": "spam"}\n')
    result = runner.invoke(app, ["eval", "guard", str(data), "--guard", str(guard_file), "--split", "all"])
    assert result.exit_code == 1
    assert f"{data}:2: not JSON" in result.output and f"{data}:3: `label` must be one of" in result.output


def test_eval_guard_json_has_the_issue_keys(tmp_path: Path, guard_file: Path) -> None:
    data = tmp_path / "g.jsonl"
    rows = [
        {"text": BLOCKED_PROMPT, "label": "jailbreak", "source": "a"},
        {"text": "What is the capital of Peru?", "label": "benign", "source": "b"},
    ]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    args = ["eval", "guard", str(data), "--guard", str(guard_file), "--split", "all", "--threshold", "0.5"]
    result = runner.invoke(app, [*args, "--json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    assert {"f1", "recall_by_label", "false_positive_rate", "by_source"} <= set(out)
    assert out["recall_by_label"] == {"jailbreak": 1.0} and out["false_positive_rate"] == 0.0
    assert set(out["by_source"]) == {"a", "b"}


def test_eval_pii_json_has_the_issue_keys_and_reports_bad_lines(tmp_path: Path) -> None:
    data = tmp_path / "p.jsonl"
    start = PII_TEXT.index("jane")
    good = {"text": PII_TEXT, "spans": [{"start": start, "end": start + 20, "type": "EMAIL_ADDRESS"}]}
    data.write_text(json.dumps(good) + "\n")
    result = runner.invoke(app, ["eval", "pii", str(data), "--types", "EMAIL_ADDRESS", "--json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    assert out["f1_by_type"] == {"EMAIL_ADDRESS": 1.0} and out["f1_pattern_types"] == 1.0
    assert "f1_all" in out
    data.write_text(json.dumps(good) + '\n{"text": "a", "spans": [{"start": 0, "end": 9, "type": "X"}]}\n')
    bad = runner.invoke(app, ["eval", "pii", str(data)])
    assert bad.exit_code == 1 and f"{data}:2: `spans` must be" in bad.output
    unknown = runner.invoke(app, ["eval", "pii", str(data), "--types", "NAME"])
    assert unknown.exit_code == 1 and "'NAME'" in unknown.output


def test_eval_pii_split_keeps_each_template_on_one_side(tmp_path: Path) -> None:
    from coe.signals.evaluation import pii_in_validation

    held_out = next(t for t in range(1000) if pii_in_validation(str(t)))
    trained = next(t for t in range(1000) if not pii_in_validation(str(t)))
    start = PII_TEXT.index("jane")
    span = [{"start": start, "end": start + 20, "type": "EMAIL_ADDRESS"}]
    rows = [
        {"text": PII_TEXT, "spans": span, "template_id": held_out},
        {"text": PII_TEXT + " Again.", "spans": span, "template_id": held_out},
        {"text": "No PII here.", "spans": [], "template_id": trained},
    ]
    data = tmp_path / "p.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    sizes = {}
    for side in ("all", "train", "validation"):
        result = runner.invoke(app, ["eval", "pii", str(data), "--split", side, "--json"])
        assert result.exit_code == 0, result.output
        out = json.loads(result.output)
        assert out["split"] == side
        sizes[side] = out["n"]
    assert sizes == {"all": 3, "train": 1, "validation": 2}
    wrong = runner.invoke(app, ["eval", "pii", str(data), "--split", "test"])
    assert wrong.exit_code == 1 and "--split must be" in wrong.output


def test_signals_config_model_leaves_room_for_the_cache() -> None:
    assert set(SignalsConfig.model_fields) >= {"guard", "pii"}
    assert GuardConfig(model="g.npz").action == "block" and PiiConfig().action == "redact"


def test_coe_ask_reports_a_block_and_starts_no_expert(tmp_path: Path, guard_file: Path) -> None:
    registry(tmp_path, f"guard: {{model: '{guard_file}', threshold: 0.9}}")
    result = runner.invoke(app, ["ask", BLOCKED_PROMPT, "-c", str(tmp_path / "experts.yaml")])
    assert result.exit_code == 1 and "content_policy: the request was blocked" in result.output


def test_after_retrieval_the_guard_reads_the_turn_that_holds_the_documents(guard_file: Path) -> None:
    config = parse_config(REGISTRY + f"\nsignals:\n  guard: {{model: '{guard_file}', threshold: 0.9}}\n")
    stage = SignalStage(config)
    before = Request.from_input("What does the handbook say about holidays?")
    _, trace = stage.run(before)
    after = before.model_copy(
        update={
            "messages": [
                before.messages[0].model_copy(update={"content": f"Documents:\n[d1] {BLOCKED_PROMPT}"})
            ]
        }
    )
    stage.check_documents(before, before, trace)  # nothing rewritten: nothing read again
    assert len(trace.verdicts) == 1
    stage.check_documents(before, after, trace)
    assert trace.verdicts[1].evidence["read"] == "retrieved documents"
    assert trace.verdicts[1].evidence["messages"] == [0] and trace.blocked_by == "guard"


def test_batch_applies_the_stage_a_blocked_item_fails_with_the_reason_and_no_expert_starts() -> None:
    config = parse_config(
        REGISTRY + "\nsignals:\n  pii: {action: redact, categories: {US_SSN: {action: block}}}\n"
    )
    with CoE(config) as coe:
        report = coe.batch([{"id": "a", "prompt": "my SSN is 536-90-4399"}])
        assert coe.pool.running == {}
    [result] = report.results
    assert result.id == "a" and result.error is not None and result.error.startswith("pii_policy")
    assert result.trace is not None and result.trace.signals is not None
    assert result.trace.signals.blocked_by == "pii" and report.groups == {}


def test_validate_names_a_missing_guard_file(tmp_path: Path) -> None:
    registry(tmp_path, "guard: {model: missing-guard.npz}")
    result = runner.invoke(app, ["validate", str(tmp_path / "experts.yaml")])
    assert result.exit_code == 1 and "signals.guard.model" in result.output
    assert "missing-guard.npz: no such file" in result.output
