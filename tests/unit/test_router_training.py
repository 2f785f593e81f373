"""Training a router on labelled prompts, evaluating it and routing through the artefact (real MiniLM)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from coe import Request
from coe.cli import app
from coe.config import load_config
from coe.data.npz import read_npz, write_npz
from routers.category import artefact
from routers.category.router import CategoryRouter
from tests.support.files import write_jsonl

CODE = [
    "Write a Python function that reverses a linked list",
    "How do I read a CSV file with pandas?",
    "Fix this JavaScript TypeError: undefined is not a function",
    "Implement binary search in C++",
    "What does the yield keyword do in Python?",
    "Write a SQL query that joins two tables on user_id",
    "How do I create a REST API endpoint in Flask?",
    "Explain the difference between a list and a tuple in Python",
    "Write a bash script that renames all .txt files in a folder",
    "How can I sort an array of objects by a property in JavaScript?",
    "Implement a stack class in Java with push and pop methods",
    "Why does my Rust code fail with a borrow checker error?",
    "Write a Go function that reads a file line by line",
    "How do I merge two dictionaries in Python?",
]
MATH = [
    "Solve 3x + 7 = 22 for x",
    "What is the derivative of x^3 sin(x)?",
    "Compute the integral of 1/(1+x^2) from 0 to 1",
    "What is 15% of 360?",
    "Find the roots of x^2 - 5x + 6 = 0",
    "Prove that the square root of 2 is irrational",
    "What is the probability of rolling two sixes with two dice?",
    "Calculate the area of a circle with radius 4",
    "What is the sum of the first 100 positive integers?",
    "Simplify (2x^2 * 3x^3) / 6x",
    "Find the determinant of the matrix [[1, 2], [3, 4]]",
    "How many ways can 5 people sit in a row?",
    "What is the least common multiple of 12 and 18?",
    "Convert 0.375 to a fraction in lowest terms",
]
GENERAL = [
    "Tell me a short story about a fox and a crow",
    "What is the capital of Australia?",
    "Write a haiku about autumn rain",
    "Give me tips for a job interview",
    "Who painted the Mona Lisa?",
    "Suggest a vegetarian dinner recipe",
    "What are good places to visit in Japan in spring?",
    "Write a birthday message for my grandmother",
    "Why is the sky blue?",
    "Recommend three classic novels to read",
    "How do I get better sleep at night?",
    "Summarise the plot of Romeo and Juliet",
    "What should I pack for a weekend camping trip?",
    "Write a polite email declining a meeting invitation",
]
HELD_OUT = [
    ("Write a Python class for a binary tree with an insert method", "code"),
    ("How do I fix a segmentation fault in my C program?", "code"),
    ("Solve the system 2x + y = 5 and x - y = 1", "math"),
    ("What is the integral of e^(2x)?", "math"),
    ("Write a poem about the sea at night", "general"),
    ("What is the tallest mountain in Africa?", "general"),
]
CLASSIFIERS = ["knn", "logreg", "centroid", "tfidf", "cascade"]


@pytest.fixture(scope="module")
def train_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    rows = [
        {"text": t, "domain": d}
        for d, ts in (("code", CODE), ("math", MATH), ("general", GENERAL))
        for t in ts
    ]
    return write_jsonl(tmp_path_factory.mktemp("data") / "train.jsonl", rows)


@pytest.fixture(scope="module")
def test_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_jsonl(
        tmp_path_factory.mktemp("data") / "test.jsonl", [{"text": t, "domain": d} for t, d in HELD_OUT]
    )


@pytest.fixture(scope="module")
def artefacts(train_file: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out_dir = tmp_path_factory.mktemp("models")
    paths = {}
    for kind in CLASSIFIERS:
        out = out_dir / f"{kind}.npz"
        result = CliRunner().invoke(
            app, ["train-router", str(train_file), "--classifier", kind, "--out", str(out)]
        )
        assert result.exit_code == 0, result.output
        paths[kind] = out
    return paths


@pytest.mark.parametrize("kind", CLASSIFIERS)
def test_trained_artefact_loads_and_predicts_held_out_prompts(artefacts: dict[str, Path], kind: str) -> None:
    from coe.encoding.embedder import Embedder

    header, model = artefact.load(artefacts[kind])
    assert header.classifier == kind and header.labels == ["code", "general", "math"]
    assert header.train_size == 42 and len(header.train_sha256) == 64
    assert header.format_version == artefact.FORMAT_VERSION
    # tfidf needs no encoder: the artefact says so, and predicting works without one
    assert (header.encoder is None) == (kind == "tfidf")
    embedder = None if kind == "tfidf" else Embedder(backend="onnx", max_tokens=header.max_tokens)
    pred = model.predict([t for t, _ in HELD_OUT], embedder)
    assert pred.probs.shape == pred.scores.shape == (len(HELD_OUT), 3)
    np.testing.assert_allclose(pred.probs.sum(axis=1), 1.0, atol=1e-5)
    assert [header.labels[i] for i in pred.probs.argmax(axis=1)] == [d for _, d in HELD_OUT]


def test_torch_and_onnx_backends_share_a_trained_knn(artefacts: dict[str, Path]) -> None:
    from coe.encoding.embedder import Embedder

    header, model = artefact.load(artefacts["knn"])
    texts = [t for t, _ in HELD_OUT]
    onnx = model.predict(texts, Embedder(backend="onnx", max_tokens=header.max_tokens)).probs
    torch = model.predict(texts, Embedder(backend="torch", max_tokens=header.max_tokens)).probs
    assert (onnx.argmax(axis=1) == torch.argmax(axis=1)).all()
    np.testing.assert_allclose(onnx, torch, atol=0.05)


def test_cascade_skips_the_encoder_when_tfidf_is_sure(artefacts: dict[str, Path]) -> None:
    from coe.encoding.embedder import Embedder

    _, model = artefact.load(artefacts["cascade"])
    texts = [t for t, _ in HELD_OUT]
    model.threshold = 0.0  # every prompt is "sure": no prompt may reach the encoder
    assert set(model.predict(texts, None).stages) == {"tfidf"}
    model.threshold = 1.01  # nothing is sure: every prompt is embedded and the two are combined
    pred = model.predict(texts, Embedder(backend="onnx"))
    assert set(pred.stages) == {"tfidf+knn"}
    np.testing.assert_allclose(pred.probs.sum(axis=1), 1.0, atol=1e-5)


def _noisy_votes(y: np.ndarray, right: float, rng: np.random.Generator) -> np.ndarray:
    """Probabilities over 4 labels that put 0.7 on the truth with probability ``right``, else on
    another label, independently per prompt."""
    wrong = (y + rng.integers(1, 4, len(y))) % 4
    top = np.where(rng.random(len(y)) < right, y, wrong)
    p = np.full((len(y), 4), 0.1)
    p[np.arange(len(y)), top] = 0.7
    return p


def test_cascade_tuning_keeps_an_extra_member_only_when_it_helps() -> None:
    from routers.category.training import tune_cascade

    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, 3000)
    p_fast, p_slow = _noisy_votes(y, 0.7, rng), _noisy_votes(y, 0.8, rng)
    independent = _noisy_votes(y, 0.8, rng)  # errs elsewhere: the vote of three beats any two
    _, share, _, evidence = tune_cascade(p_fast, p_slow, y, [independent])
    assert share > 0 and evidence["holdout_accuracy_both"] > evidence["holdout_accuracy_without_extras"]
    noise = rng.dirichlet(np.ones(4), len(y))  # knows nothing: it can only hurt
    _, share, _, evidence = tune_cascade(p_fast, p_slow, y, [noise])
    assert share == 0.0 == evidence["extra_share"]
    assert evidence["holdout_accuracy_both"] == evidence["holdout_accuracy_without_extras"]


def test_eval_router_json_reports_quality_and_latency(
    artefacts: dict[str, Path], test_file: Path, tmp_path: Path
) -> None:
    plot = tmp_path / "confusion.png"
    args = ["eval", "router", str(test_file), "--model", str(artefacts["knn"]), "--json", "--plot", str(plot)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["accuracy"] == 1.0 and report["macro_f1"] == 1.0
    low, high = report["accuracy_ci95"]  # a perfect score on a few prompts is not proof of perfection
    assert 0.0 < low < 1.0 == high
    assert report["fallback_rate"] == 0.0 and 0.0 <= report["ece"] <= 1.0
    assert 0 < report["latency_ms_p50"] <= report["latency_ms_p99"]
    assert report["classifier"] == "knn" and report["artefact_load_ms"] > 0
    assert report["train_overlap"] == 0 and "warning" not in result.stderr
    assert sum(map(sum, report["confusion"])) == len(HELD_OUT)
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_eval_on_training_prompts_says_the_accuracy_is_not_held_out(
    artefacts: dict[str, Path], tmp_path: Path
) -> None:
    mixed = write_jsonl(
        tmp_path / "mixed.jsonl",
        [{"text": t, "domain": d} for t, d in HELD_OUT] + [{"text": CODE[0], "domain": "code"}],
    )
    args = ["eval", "router", str(mixed), "--model", str(artefacts["cascade"]), "--json"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["train_overlap"] == 1
    assert "1 of 7 prompts (14.3%) are in" in result.stderr and "not held-out estimates" in result.stderr
    # an artefact written before training texts were recorded loads, and cannot tell: None, not a false 0
    raw, arrays = read_npz(artefacts["cascade"], "router artefact")
    del arrays[artefact.TRAINED_ON_KEY]
    old = tmp_path / "old.npz"
    write_npz(old, json.dumps(raw), arrays)
    assert artefact.load(old)[0].classifier == "cascade"
    assert artefact.train_overlap(old, CODE) is None
    assert artefact.train_overlap(artefacts["cascade"], CODE + [t for t, _ in HELD_OUT]) == len(CODE)


def test_accuracy_interval_is_the_wilson_interval() -> None:
    from routers.category.evaluation import wilson_interval

    low, high = wilson_interval(95, 100)  # the textbook value: 0.888 to 0.978
    assert round(low, 3) == 0.888 and round(high, 3) == 0.978
    wide, narrow = wilson_interval(950, 1000), wilson_interval(9500, 10000)
    assert narrow[0] > wide[0] and narrow[1] < wide[1]  # more prompts, a tighter interval
    assert wilson_interval(0, 10)[0] == 0.0 and wilson_interval(10, 10)[1] == 1.0
    assert wilson_interval(0, 0) == (0.0, 1.0)  # no evidence: anything is possible


def test_macro_f1_leaves_out_labels_nobody_has_or_predicts() -> None:
    from routers.category.evaluation import macro_f1

    # labels a, b, c; c has no prompt and is never predicted: it must not drag the mean down
    perfect = np.array([[3, 0, 0], [0, 2, 0], [0, 0, 0]])
    assert macro_f1(perfect) == (1.0, [1.0, 1.0, None])
    # a label with prompts that is never predicted still counts, as 0
    missed = np.array([[3, 0, 0], [0, 2, 0], [1, 0, 0]])
    f1, per_class = macro_f1(missed)
    assert per_class == [pytest.approx(6 / 7), 1.0, 0.0] and f1 == pytest.approx((6 / 7 + 1.0) / 3)


def test_calibration_error_by_hand() -> None:
    import numpy as np

    from routers.category.evaluation import expected_calibration_error as ece

    right = np.array([True] * 8 + [False] * 2)
    assert ece(np.full(10, 0.8), right) == 0.0  # says 0.8, right 8 times in 10
    assert ece(np.ones(10), right) == 0.2  # sure of everything: off by its error rate
    # Two bins of half the prompts each: 0.95 and right 5 of 5, 0.55 and right 3 of 5; both off by 0.05.
    confidence = np.array([0.95] * 5 + [0.55] * 5)
    hits = np.array([True] * 5 + [True] * 3 + [False] * 2)
    assert ece(confidence, hits) == pytest.approx(0.05)


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ({"domain": "code"}, "missing field 'text'"),
        ({"text": "   ", "domain": "code"}, "'text' is empty"),
        ({"text": "Sort a list", "domain": ""}, "'domain' must be a non-empty string"),
    ],
)
def test_bad_rows_name_file_and_line(tmp_path: Path, line: dict[str, str], expected: str) -> None:
    rows = [{"text": "Solve x + 1 = 2", "domain": "math"}, line, {"text": "Write a loop", "domain": "code"}]
    path = write_jsonl(tmp_path / "bad.jsonl", rows)
    result = CliRunner().invoke(app, ["train-router", str(path), "--out", str(tmp_path / "m.npz")])
    assert result.exit_code == 1
    assert f"{path}:2: {expected}" in result.output
    assert not (tmp_path / "m.npz").exists()


def test_eval_rejects_labels_the_artefact_does_not_know(artefacts: dict[str, Path], tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "x.jsonl", [{"text": "Bake a cake", "domain": "cooking"}])
    result = CliRunner().invoke(app, ["eval", "router", str(path), "--model", str(artefacts["knn"])])
    assert result.exit_code == 1
    assert f"{path}:1: unknown label 'cooking'" in result.output


def test_yaml_router_model_routes_through_the_artefact(artefacts: dict[str, Path], tmp_path: Path) -> None:
    model = tmp_path / "models" / "router.npz"
    model.parent.mkdir()
    model.write_bytes(artefacts["logreg"].read_bytes())
    yaml = tmp_path / "experts.yaml"
    yaml.write_text(
        "version: 1\n"
        "experts:\n  a: {endpoint: http://127.0.0.1:9/v1}\n  b: {endpoint: http://127.0.0.1:9/v1}\n"
        "router:\n  model: models/router.npz\n"
        "  categories:\n    code: {expert: a}\n    math: {expert: a}\n    general: {expert: b}\n"
        "  fallback: {expert: b, min_confidence: 0.0}\n"
    )
    router = CategoryRouter.from_config(load_config(yaml))
    decisions = router.route([Request.from_input(t) for t, _ in HELD_OUT])
    assert [d.category for d in decisions] == [d for _, d in HELD_OUT]
    assert [d.expert for d in decisions] == ["a", "a", "a", "a", "b", "b"]


def test_yaml_router_model_must_exist(tmp_path: Path) -> None:
    from coe.errors import ConfigError

    yaml = tmp_path / "experts.yaml"
    yaml.write_text(
        "version: 1\nexperts:\n  a: {endpoint: http://127.0.0.1:9/v1}\n"
        "router:\n  model: nowhere.npz\n  categories:\n    code: {expert: a}\n"
    )
    with pytest.raises(ConfigError, match=r"router\.model"):
        load_config(yaml)


def test_calibrate_meets_the_target_fallback_rate(artefacts: dict[str, Path], train_file: Path) -> None:
    args = ["calibrate", str(train_file), "--model", str(artefacts["centroid"]), "--json"]
    result = CliRunner().invoke(app, [*args, "--target-fallback-rate", "0.2"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["before"]["fallback_rate"] == 0.0
    assert 0 < report["after"]["fallback_rate"] <= 0.2
    assert report["after"]["accuracy"] >= report["before"]["accuracy"]
    # calibrated on the very prompts it was trained on (all 42): the threshold flatters, and it says so
    assert report["train_overlap"] == 42 and "42 of 42 prompts (100.0%)" in result.stderr


def test_calibrate_meets_the_target_accuracy(artefacts: dict[str, Path], train_file: Path) -> None:
    args = ["calibrate", str(train_file), "--model", str(artefacts["centroid"]), "--json"]
    result = CliRunner().invoke(app, [*args, "--target-accuracy", "1.0"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["after"]["accuracy"] == 1.0
    assert report["after"]["fallback_rate"] < 1.0


def test_calibrate_needs_exactly_one_target(artefacts: dict[str, Path], train_file: Path) -> None:
    result = CliRunner().invoke(app, ["calibrate", str(train_file), "--model", str(artefacts["knn"])])
    assert result.exit_code == 1
    assert "exactly one of" in result.output


def test_a_line_that_is_not_json_is_named(tmp_path: Path) -> None:
    path = tmp_path / "broken.jsonl"
    path.write_text('{"text": "Solve x", "domain": "math"}\n{"text": "oops"\n')
    result = CliRunner().invoke(app, ["train-router", str(path), "--out", str(tmp_path / "m.npz")])
    assert result.exit_code == 1
    assert f"{path}:2: not JSON" in result.output


def test_unknown_classifier_and_backend_are_refused(train_file: Path, tmp_path: Path) -> None:
    out = str(tmp_path / "m.npz")
    result = CliRunner().invoke(app, ["train-router", str(train_file), "--out", out, "--classifier", "svm"])
    assert result.exit_code == 1 and "unknown classifier 'svm'" in result.output
    result = CliRunner().invoke(app, ["train-router", str(train_file), "--out", out, "--backend", "tpu"])
    assert result.exit_code == 1 and "unknown backend 'tpu'" in result.output


def _registry(tmp_path: Path, model: str) -> Path:
    yaml = tmp_path / "experts.yaml"
    yaml.write_text(
        "version: 1\n"
        "experts:\n  a: {endpoint: http://127.0.0.1:9/v1}\n  b: {endpoint: http://127.0.0.1:9/v1}\n"
        f"router:\n  model: {model}\n"
        "  categories:\n    code: {expert: a}\n    math: {expert: a}\n    general: {expert: b}\n"
    )
    return yaml


def test_an_artefact_from_another_encoder_is_refused(artefacts: dict[str, Path], tmp_path: Path) -> None:
    from coe.errors import ModelNotFoundError

    header, model = artefact.load(artefacts["knn"])
    artefact.save(tmp_path / "other.npz", header.model_copy(update={"encoder": "bge-small"}), model, [])
    with pytest.raises(ModelNotFoundError, match=r"trained on 'bge-small' embeddings.*retrain"):
        CategoryRouter.from_config(load_config(_registry(tmp_path, "other.npz")))


@pytest.mark.parametrize(
    ("categories", "expected"),
    [
        (["code", "math"], r"labels \['general'\] have no entry in router\.categories"),
        (
            ["code", "math", "general", "travel"],
            r"router\.categories \['travel'\] are not among the labels it was trained on "
            r"\(code, general, math\), so it could never pick them",
        ),
    ],
)
def test_an_artefact_trained_with_another_label_set_is_refused(
    artefacts: dict[str, Path], tmp_path: Path, categories: list[str], expected: str
) -> None:
    from coe.errors import ModelNotFoundError

    header, _ = artefact.load(artefacts["tfidf"])
    assert sorted(header.labels) == ["code", "general", "math"]
    lines = "".join(f"    {name}: {{expert: a}}\n" for name in categories)
    yaml = tmp_path / "experts.yaml"
    yaml.write_text(
        "version: 1\nexperts:\n  a: {endpoint: http://127.0.0.1:9/v1}\n"
        f"router:\n  model: {artefacts['tfidf']}\n  categories:\n{lines}"
    )
    with pytest.raises(ModelNotFoundError, match=expected):
        CategoryRouter.from_config(load_config(yaml))
    exact = _registry(tmp_path, str(artefacts["tfidf"]))  # the same three: loads
    assert sorted(CategoryRouter.from_config(load_config(exact)).labels) == ["code", "general", "math"]


def test_an_old_or_foreign_file_is_refused_with_advice(tmp_path: Path) -> None:
    old = tmp_path / "old.npz"
    header = json.dumps({"format_version": 1, "encoder": "all-MiniLM-L6-v2", "labels": ["a"]})
    with old.open("wb") as f:
        np.savez(f, __header__=np.array(header), centroids=np.zeros((1, 3)))
    with pytest.raises(ValueError, match=r"format version 1.*retrain it with `coe train-router`"):
        artefact.load(old)
    junk = tmp_path / "junk.npz"
    junk.write_text("not a zip")
    with pytest.raises(ValueError, match=r"junk.npz: not a router artefact"):
        artefact.load(junk)


def test_tfidf_router_from_yaml_examples_never_loads_an_encoder(tmp_path: Path) -> None:
    from tests.support.paths import DEFAULT_REGISTRY

    path = tmp_path / "experts.yaml"
    path.write_text(DEFAULT_REGISTRY.read_text().replace("classifier: centroid", "classifier: tfidf"))
    config = load_config(path)
    router = CategoryRouter.from_config(config)
    prompts = ["Write a Python function that reverses a string", "Tell me a short story about a fox"]
    decisions = router.route([Request.from_input(p) for p in prompts])
    assert [d.expert for d in decisions] == ["coder", "general"]
    assert all(d.details["classifier"] == "tfidf" for d in decisions)
    assert router._embedder is None


def test_unicode_line_separators_inside_a_text_do_not_split_the_row(tmp_path: Path) -> None:
    from coe.evaluation.data import read_labelled

    rows = [{"text": "first\u0085part\u2028second", "domain": "general"}, {"text": "x + 1", "domain": "math"}]
    path = tmp_path / "u.jsonl"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    data = read_labelled(path)
    assert data.texts == [r["text"] for r in rows] and data.labels == ["general", "math"]
