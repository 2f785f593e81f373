"""Training and measuring retrieval gates: `coe train-gate`, `coe eval gate`, the split and the
metrics, with the real MiniLM encoder on a small hand-written labelled set."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from coe.cli import app
from coe.config import load_config
from coe.encoding.embedder import shared_embedder
from coe.retrieval.gate_data import best_threshold, binary_metrics, read_gate_data, split_of
from coe.retrieval.gate_model import GateModelError, load_gate
from tests.support import paths

REPO = paths.ROOT
DATA = paths.DATA / "rag"
QUESTIONS = DATA / "questions.jsonl"
runner = CliRunner()


@pytest.fixture(scope="module")
def index(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("gate") / "index"
    assert (
        runner.invoke(app, ["index", "build", str(DATA / "corpus.jsonl"), "--out", str(out)]).exit_code == 0
    )
    return out


@pytest.fixture(scope="module")
def classifier(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("gate") / "classifier.npz"
    result = runner.invoke(
        app, ["train-gate", str(QUESTIONS), "--label-field", "needs_retrieval", "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    assert "trained a classifier gate on 28 questions (14 need retrieval)" in result.output
    return out


def _eval(*args: str) -> dict:  # type: ignore[type-arg]
    result = runner.invoke(app, ["eval", "gate", *args, "--json", "--latency-prompts", "2"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_classifier_gate_file_is_plain_arrays_with_a_header(classifier: Path) -> None:
    header, arrays = load_gate(classifier)  # np.load(allow_pickle=False) inside: no code runs on load
    default_space = shared_embedder(load_config(REPO / "experts.yaml").embedder).space
    assert header.kind == "classifier" and header.encoder == default_space  # trained with it
    assert header.train_size == 28 and header.positives == 14 and 0 < header.threshold < 1
    assert arrays["coef"].shape == (384,) and arrays["coef"].dtype == np.float32
    assert header.validation is not None and header.validation.n == 28  # out-of-fold, not in-sample


def test_eval_gate_reports_the_issue_keys_overall_and_by_source(classifier: Path, index: Path) -> None:
    result = _eval(str(QUESTIONS), "--gate", str(classifier), "--index", str(index))
    for key in ("precision", "recall", "f1", "retrieve_rate", "saved_vs_always"):
        assert isinstance(result[key], float), key
    assert result["gate"] == "classifier" and result["n"] == 28 and result["positives"] == 14
    assert result["saved_vs_always"] == pytest.approx(1 - result["retrieve_rate"])
    assert set(result["by_source"]) == {"facts", "filings", "math", "writing"}
    assert result["by_source"]["math"]["positives"] == 0 and result["by_source"]["filings"]["n"] == 4
    # The questions are separable (fictional facts vs arithmetic and writing): the gate must be good.
    assert result["f1"] >= 0.9 and result["retrieve_rate"] <= 0.6
    assert result["gold_hit_rate"] >= 0.9  # when it retrieves, the answering document is among the chunks
    assert result["search_rate"] == result["retrieve_rate"]  # only the prompts it retrieves for pay a search


def test_baseline_gates_bracket_the_trade_off(index: Path) -> None:
    always = _eval(str(QUESTIONS), "--gate", "always", "--index", str(index))
    never = _eval(str(QUESTIONS), "--gate", "never", "--index", str(index))
    assert (always["retrieve_rate"], always["recall"], always["precision"]) == (1.0, 1.0, 0.5)
    assert (never["retrieve_rate"], never["recall"], never["precision"], never["search_rate"]) == (
        0,
        0,
        None,
        0,
    )


def test_similarity_gate_searches_every_prompt_but_keeps_documents_only_above_threshold(index: Path) -> None:
    strict = _eval(str(QUESTIONS), "--gate", "similarity", "--threshold", "0.99", "--index", str(index))
    assert strict["search_rate"] == 1.0 and strict["retrieve_rate"] == 0.0
    tuned = Path(index).parent / "similarity.npz"
    train = ["train-gate", str(QUESTIONS), "--kind", "similarity", "--index", str(index), "--out", str(tuned)]
    assert runner.invoke(app, train).exit_code == 0
    result = _eval(str(QUESTIONS), "--gate", str(tuned), "--index", str(index))
    assert result["gate"] == "similarity" and result["f1"] >= 0.9 and result["search_rate"] == 1.0


def test_category_gate_routes_with_the_registry_and_uses_its_flags(tmp_path: Path) -> None:
    registry = REPO / "examples" / "rag" / "experts.yaml"
    index = tmp_path / "index"  # built with the registry's own encoder, as the index requires
    built = runner.invoke(
        app, ["index", "build", str(DATA / "corpus.jsonl"), "--out", str(index), "-c", str(registry)]
    )
    assert built.exit_code == 0, built.output
    result = _eval(str(QUESTIONS), "--gate", "category", "--index", str(index), "--config", str(registry))
    assert result["by_source"]["math"]["retrieve_rate"] == 0.0  # math has retrieve: false
    assert result["recall"] > 0.5


def test_string_labels_with_positive_and_file_name_as_source(tmp_path: Path, index: Path) -> None:
    data = tmp_path / "skr_like.jsonl"
    rows = [("Who designed the Kelvor bridge?", "ir_better"), ("What is 2 plus 2?", "same")]
    data.write_text("".join(json.dumps({"question": q, "judgement": j}) + "\n" for q, j in rows))
    args = [str(data), "--gate", "always", "--index", str(index), "--label-field", "judgement"]
    result = _eval(*args, "--positive", "ir_better")
    assert (result["positives"], result["precision"], list(result["by_source"])) == (1, 0.5, ["skr_like"])
    out = runner.invoke(app, ["eval", "gate", *args])  # string labels without --positive
    assert out.exit_code == 1 and f"{data}:1: 'judgement' must be 0/1 or true/false" in out.output


def test_split_is_deterministic_disjoint_and_keyed_on_the_text() -> None:
    texts = [f"Question number {i} about something?" for i in range(400)]
    sides = [split_of(t, 30) for t in texts]
    assert sides == [split_of(t, 30) for t in texts]
    assert 0.2 < sides.count("test") / 400 < 0.4
    assert split_of("What is 2+2?", 30) == split_of("  what is 2 + 2 ", 30)  # case and punctuation
    train = read_gate_data([QUESTIONS], split="train")
    test = read_gate_data([QUESTIONS], split="test")
    assert len(train) + len(test) == 28 and not {r.text for r in train} & {r.text for r in test}


def test_metrics_and_threshold_choice() -> None:
    m = binary_metrics([True, True, False, False, True], [True, False, False, True, True])
    assert (m.tp, m.fp, m.fn, m.tn) == (2, 1, 1, 1)
    assert (m.precision, m.recall, m.retrieve_rate, m.saved_vs_always) == (0.6667, 0.6667, 0.6, 0.4)
    cut = best_threshold([0.1, 0.2, 0.8, 0.9], [False, False, True, True])
    assert 0.2 < cut < 0.8


def test_bad_gate_inputs_give_one_clear_message(tmp_path: Path, index: Path) -> None:
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"not a zip file")
    with pytest.raises(GateModelError, match="not a gate file"):
        load_gate(junk)
    for args, expected in [
        (["eval", "gate", str(QUESTIONS), "--gate", str(junk), "--index", str(index)], "not a gate file"),
        (
            ["eval", "gate", str(QUESTIONS), "--gate", "sometimes", "--index", str(index)],
            "neither a gate kind",
        ),
        (["eval", "gate", str(QUESTIONS), "--gate", "always", "--index", str(tmp_path)], "not an index"),
        (["train-gate", str(QUESTIONS), "--kind", "similarity", "--out", str(junk)], "needs --index"),
        (["train-gate", str(tmp_path / "none.jsonl"), "--out", str(junk)], "no such file"),
    ]:
        result = runner.invoke(app, args)
        assert result.exit_code == 1 and expected in result.output and "Traceback" not in result.output, args
    one_label = tmp_path / "one.jsonl"
    one_label.write_text(
        '{"question": "a?", "needs_retrieval": 1}\n{"question": "b?", "needs_retrieval": 1}\n'
    )
    result = runner.invoke(app, ["train-gate", str(one_label), "--out", str(junk)])
    assert result.exit_code == 1 and "needs both labels" in result.output
