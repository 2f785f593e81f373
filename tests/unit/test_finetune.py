"""``coe finetune-encoder`` on a few dozen prompts (real MiniLM, one short epoch): the folder loads
through ``Embedder``, pulls same-label prompts together, and routers trained on it insist on it."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from coe.cli import app
from coe.config import load_config
from coe.encoding.embedder import Embedder
from coe.encoding.header import HEADER_FILE, FinetunedEncoder, weights_identity
from coe.errors import ModelNotFoundError
from routers.category import artefact
from routers.category.router import CategoryRouter
from tests.support.files import write_jsonl
from tests.unit.test_router_training import CODE

PROMPTS = {
    "code": CODE[:12],
    "medical": [
        "What are the early symptoms of type 2 diabetes?",
        "Which drug is the first-line treatment for hypertension in adults?",
        "A patient presents with chest pain radiating to the left arm; what is the likely diagnosis?",
        "What is the normal range of blood potassium?",
        "Which nerve is damaged in wrist drop?",
        "What are the side effects of long-term corticosteroid use?",
        "How is iron deficiency anaemia diagnosed?",
        "Which vaccine prevents cervical cancer?",
        "What causes jaundice in newborns?",
        "What is the mechanism of action of aspirin?",
        "Which organism causes tuberculosis?",
        "What is the treatment of anaphylactic shock?",
    ],
    "writing": [
        "Write a short story about a fox and a crow",
        "Write a haiku about autumn rain",
        "Compose a birthday poem for my grandmother",
        "Write the opening paragraph of a mystery novel set in Venice",
        "Write a limerick about a cat who loves jazz",
        "Draft a heartfelt wedding toast for my best friend",
        "Write a fairy tale about a dragon who is afraid of the dark",
        "Write song lyrics about leaving home",
        "Describe a sunset over the sea in vivid prose",
        "Write a dialogue between a robot and a child",
        "Write a sonnet about the city at night",
        "Write a bedtime story about a brave little mouse",
    ],
}


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    rows = [{"text": t, "domain": label} for label, texts in PROMPTS.items() for t in texts]
    return write_jsonl(tmp_path_factory.mktemp("data") / "train.jsonl", rows)


@pytest.fixture(scope="module")
def tuned(data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("enc") / "tuned"
    args = ["finetune-encoder", str(data), "--out", str(out), "--epochs", "1", "--batch-size", "4"]
    result = CliRunner().invoke(app, [*args, "--max-tokens", "32", "--learning-rate", "1e-4"])
    assert result.exit_code == 0, result.output
    assert f"ok {out}" in result.output
    return out


def _margin(vectors: np.ndarray, labels: list[str]) -> float:
    """Mean cosine of same-label pairs minus mean cosine of different-label pairs."""
    sims = vectors @ vectors.T
    same = np.equal.outer(labels, labels)
    off = ~np.eye(len(labels), dtype=bool)
    return float(sims[same & off].mean() - sims[~same].mean())


def test_finetuned_folder_loads_and_pulls_same_label_prompts_together(tuned: Path) -> None:
    texts = [t for ts in PROMPTS.values() for t in ts]
    labels = [label for label, ts in PROMPTS.items() for _ in ts]
    base, mine = Embedder(), Embedder(path=str(tuned))
    after = mine.encode(texts)
    assert after.shape == (len(texts), 384)
    np.testing.assert_allclose(np.linalg.norm(after, axis=1), 1.0, atol=1e-5)
    assert _margin(after, labels) > _margin(base.encode(texts), labels) + 0.02


def test_the_folder_names_its_own_space_from_its_weights(tuned: Path) -> None:
    header = FinetunedEncoder.model_validate_json((tuned / HEADER_FILE).read_text())
    assert header.identity == weights_identity(tuned, "all-MiniLM-L6-v2")
    assert header.weights == {  # the full hash of each file a backend loads, checked before it loads
        name: hashlib.sha256((tuned / name).read_bytes()).hexdigest()
        for name in ("model.safetensors", "onnx/model.onnx")
    }
    assert header.labels == ["code", "medical", "writing"] and header.history[0].epoch == 1
    torch_side, base = Embedder(path=str(tuned)), Embedder()
    assert torch_side.space == header.identity != base.space
    assert torch_side.cache_key != base.cache_key  # cached base vectors are never served as tuned ones


def test_onnx_export_serves_the_tuned_vectors(tuned: Path) -> None:
    texts = PROMPTS["code"][:3] + PROMPTS["writing"][:3]
    onnx, torch_side = Embedder(path=str(tuned), backend="onnx"), Embedder(path=str(tuned))
    assert onnx.space == torch_side.space
    assert (onnx.encode(texts) * torch_side.encode(texts)).sum(axis=1).min() > 0.95


def _router(tmp_path: Path, model: Path, embedder: str) -> CategoryRouter:
    yaml = tmp_path / "experts.yaml"
    yaml.write_text(
        f"version: 1\nembedder: {embedder}\n"
        "experts:\n  a: {endpoint: http://127.0.0.1:9/v1}\n"
        f"router:\n  model: {model}\n"
        "  categories:\n    code: {expert: a}\n    medical: {expert: a}\n    writing: {expert: a}\n"
    )
    return CategoryRouter.from_config(load_config(yaml))


def _train(data: Path, out: Path, *extra: str) -> None:
    args = ["train-router", str(data), "--classifier", "knn", "--out", str(out), *extra]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output


def test_a_router_trained_on_the_tuned_encoder_refuses_another(
    tuned: Path, data: Path, tmp_path: Path
) -> None:
    model = tmp_path / "tuned.npz"
    _train(data, model, "--encoder-path", str(tuned))
    header, _ = artefact.load(model)
    assert header.encoder == Embedder(path=str(tuned)).space and header.encoder_path == str(tuned.resolve())
    with pytest.raises(ModelNotFoundError, match=r"set embedder\.path to the fine-tuned encoder"):
        _router(tmp_path, model, "{model: all-MiniLM-L6-v2, backend: onnx}")
    router = _router(tmp_path, model, f"{{path: {tuned}, backend: onnx}}")
    from coe import Request

    decisions = router.route([Request.from_input(t) for t in (PROMPTS["medical"][0], PROMPTS["code"][0])])
    assert [d.category for d in decisions] == ["medical", "code"]


def test_a_router_trained_on_the_base_encoder_refuses_the_tuned_one(
    tuned: Path, data: Path, tmp_path: Path
) -> None:
    model = tmp_path / "base.npz"
    _train(data, model)
    with pytest.raises(ModelNotFoundError, match=r"trained on 'all-MiniLM-L6-v2' embeddings"):
        _router(tmp_path, model, f"{{path: {tuned}, backend: onnx}}")


def test_eval_router_finds_the_tuned_encoder_from_the_artefact(
    tuned: Path, data: Path, tmp_path: Path
) -> None:
    model = tmp_path / "tuned.npz"
    _train(data, model, "--encoder-path", str(tuned))
    result = CliRunner().invoke(app, ["eval", "router", str(data), "--model", str(model), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["accuracy"] >= 0.9


def _cascade_with_extra(data: Path, tuned: Path, root: Path) -> Path:
    """A cascade on the packaged MiniLM with the tuned folder as its extra member, both under root."""
    import shutil

    shutil.copytree(tuned, root / "encoders" / "tuned")
    out = root / "router.npz"
    extra = ["--classifier", "cascade", "--extra-encoder", str(root / "encoders" / "tuned")]
    result = CliRunner().invoke(app, ["train-router", str(data), "--out", str(out), *extra])
    assert result.exit_code == 0, result.output
    assert "extra encoders: 1 of 1 kept" in result.output
    return out


def test_a_cascade_with_an_extra_encoder_asks_it_and_travels_with_it(
    tuned: Path, data: Path, tmp_path: Path
) -> None:
    import shutil

    model = _cascade_with_extra(data, tuned, tmp_path / "made")
    header, cascade = artefact.load(model)
    (extra,) = header.params["extras"]
    assert extra["encoder"]["path"] == "encoders/tuned"  # relative: the pair can move together
    assert extra["encoder"]["space"] == Embedder(path=str(tuned)).space and extra["share"] > 0
    moved = tmp_path / "moved"
    shutil.move(tmp_path / "made", moved)
    _, cascade = artefact.load(moved / "router.npz")
    cascade.threshold = 1.01  # every prompt goes past tfidf to both encoders
    texts = [PROMPTS["medical"][0], PROMPTS["code"][0], PROMPTS["writing"][0]]
    pred = cascade.predict(texts, Embedder(backend="onnx", max_tokens=header.max_tokens))
    assert set(pred.stages) == {"tfidf+knn+knn"}
    assert [header.labels[i] for i in pred.probs.argmax(axis=1)] == ["medical", "code", "writing"]
    assert set(pred.members[0]) == {"tfidf", "knn", "knn@tuned"}  # each member's own vote, for traces
    assert pred.members[1]["knn@tuned"]["category"] == "code" and 0 < pred.members[1]["knn@tuned"]["p"] <= 1
    loaded = cascade.extras[0].embedder  # on first use, from the moved folder
    assert loaded is not None and loaded.folder == moved / "encoders" / "tuned"
    args = ["eval", "router", str(data), "--model", str(moved / "router.npz"), "--json"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["accuracy"] >= 0.9


def test_warming_the_router_loads_both_encoders_before_the_first_prompt(
    tuned: Path, data: Path, tmp_path: Path
) -> None:
    model = _cascade_with_extra(data, tuned, tmp_path)
    router = _router(tmp_path, model, "{model: all-MiniLM-L6-v2, backend: onnx}")
    (extra,) = router.model.extras
    assert extra.embedder is None  # loading the artefact loads no network
    router.warm()  # what `coe serve` does at start-up
    assert router.embedder.loaded and extra.embedder is not None and extra.embedder.loaded
    from coe import Request

    router.model.threshold = 1.01  # past tfidf: the trace names every member's vote
    (decision,) = router.route([Request.from_input(PROMPTS["writing"][1])])
    assert decision.category == "writing" and decision.details["classifier"] == "tfidf+knn+knn"
    assert decision.details["members"]["knn@tuned"]["category"] == "writing"


def test_concurrent_routes_through_the_extra_encoder_agree_with_one_at_a_time(
    tuned: Path, data: Path, tmp_path: Path
) -> None:
    """The server routes from several threads at once; the extra members share one worker thread."""
    from concurrent.futures import ThreadPoolExecutor

    _, cascade = artefact.load(_cascade_with_extra(data, tuned, tmp_path))
    cascade.threshold = 1.01
    embedder = Embedder(backend="onnx", max_tokens=128)
    texts = [t for ts in PROMPTS.values() for t in ts[:4]]
    alone = [cascade.predict([t], embedder).probs[0] for t in texts]
    with ThreadPoolExecutor(6) as pool:
        together = list(pool.map(lambda t: cascade.predict([t], embedder).probs[0], texts))
    np.testing.assert_allclose(np.stack(together), np.stack(alone), atol=1e-6)


def test_a_missing_or_retrained_extra_encoder_is_named(tuned: Path, data: Path, tmp_path: Path) -> None:
    import shutil

    model = _cascade_with_extra(data, tuned, tmp_path)
    folder = tmp_path / "encoders" / "tuned"
    header_file = folder / HEADER_FILE
    header = json.loads(header_file.read_text())
    header_file.write_text(json.dumps({**header, "identity": "all-MiniLM-L6-v2+ft-0000"}))
    retrained = r"router\.npz: its extra encoder .*tuned holds 'all-MiniLM-L6-v2\+ft-0000'"
    with pytest.raises(ValueError, match=retrained):
        artefact.load(model)
    shutil.rmtree(folder)
    missing = r"router\.npz: its extra encoder is missing: .*encoders/tuned"
    with pytest.raises(ModelNotFoundError, match=missing):
        _router(tmp_path, model, "{model: all-MiniLM-L6-v2, backend: onnx}")


def test_other_weights_under_an_unchanged_header_are_refused_by_name(
    tuned: Path, data: Path, tmp_path: Path
) -> None:
    """The header stays byte for byte what `coe finetune-encoder` wrote; only a weights file changes
    (here: the packaged MiniLM's own files, a real encoder of the same shape)."""
    import shutil

    from coe.encoding.files import resolve_encoder_files

    model = _cascade_with_extra(data, tuned, tmp_path)
    folder = tmp_path / "encoders" / "tuned"
    base = resolve_encoder_files("all-MiniLM-L6-v2", "onnx")  # the packaged MiniLM's files
    assert base.onnx is not None
    shutil.copyfile(base.onnx, folder / "onnx" / "model.onnx")
    onnx_swapped = (
        r"router\.npz: its extra encoder cannot be used: .*tuned: onnx/model\.onnx holds other weights"
    )
    with pytest.raises(ValueError, match=onnx_swapped):
        artefact.load(model)
    with pytest.raises(ModelNotFoundError, match=r"onnx/model\.onnx holds other weights"):
        Embedder(path=str(folder), backend="onnx")
    shutil.copyfile(base.folder / "model.safetensors", folder / "model.safetensors")
    with pytest.raises(ModelNotFoundError, match=r"tuned: model\.safetensors holds other weights"):
        Embedder(path=str(folder))  # the torch backend loads this one


def test_a_header_written_before_weight_hashes_is_checked_or_refused(tuned: Path, tmp_path: Path) -> None:
    """An older header (format 1) has only the identity, whose 16 hex digits hash model.safetensors:
    the torch backend can still be checked and loads; the ONNX file cannot, so it is refused with the
    command that rebuilds the folder."""
    import shutil

    from coe.encoding.files import resolve_encoder_dir

    folder = tmp_path / "old"
    shutil.copytree(tuned, folder)
    header = json.loads((folder / HEADER_FILE).read_text())
    del header["weights"]
    (folder / HEADER_FILE).write_text(json.dumps({**header, "format_version": 1}))
    assert Embedder(path=str(folder)).space == header["identity"]
    with pytest.raises(
        ModelNotFoundError,
        match=r"records no hash of onnx/model\.onnx.*rebuild the folder with `coe finetune",
    ):
        Embedder(path=str(folder), backend="onnx")
    shutil.copyfile(
        resolve_encoder_dir("all-MiniLM-L6-v2") / "model.safetensors", folder / "model.safetensors"
    )
    with pytest.raises(ModelNotFoundError, match=r"model\.safetensors holds other weights"):
        Embedder(path=str(folder))


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (["--classifier", "knn"], "--extra-encoder adds members to a cascade; --classifier is 'knn'"),
        (["--classifier", "cascade", "--backend", "torch"], "not a `coe finetune-encoder` folder"),
        (["--classifier", "cascade"], "needs model.onnx"),  # onnx, the default, needs an export
    ],
)
def test_extra_encoders_are_refused_where_they_cannot_work(
    data: Path, tmp_path: Path, extra: list[str], expected: str
) -> None:
    from coe.encoding.files import resolve_encoder_dir

    base = str(resolve_encoder_dir("all-MiniLM-L6-v2"))  # a real encoder, but no fine-tune names its space
    args = ["train-router", str(data), "--out", str(tmp_path / "r.npz"), "--extra-encoder", base, *extra]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 1 and expected in result.output
    assert not (tmp_path / "r.npz").exists()


def test_an_artefact_beside_its_encoder_moves_with_it(tuned: Path, data: Path, tmp_path: Path) -> None:
    import shutil

    shutil.copytree(tuned, tmp_path / "made" / "encoder")
    _train(data, tmp_path / "made" / "router.npz", "--encoder-path", str(tmp_path / "made" / "encoder"))
    header, _ = artefact.load(tmp_path / "made" / "router.npz")
    assert header.encoder_path == "encoder"  # inside the artefact's folder: recorded relative to it
    shutil.move(tmp_path / "made", tmp_path / "moved")
    args = ["eval", "router", str(data), "--model", str(tmp_path / "moved" / "router.npz"), "--json"]
    result = CliRunner().invoke(app, args)  # finds the encoder from the artefact alone, from any cwd
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["accuracy"] >= 0.9


def test_a_damaged_header_is_named(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / HEADER_FILE).write_text("{not json")
    with pytest.raises(ModelNotFoundError, match=HEADER_FILE):
        Embedder(path=str(tmp_path))


@pytest.mark.parametrize(
    ("rows", "expected"),
    [
        ([{"text": "Sort a list", "domain": "code"}] * 3, "at least two labels"),
        ([{"text": "Sort a list", "domain": "code"}, {"domain": "math"}], ":2: missing field 'text'"),
    ],
)
def test_bad_data_is_refused_with_a_message(
    tmp_path: Path, rows: list[dict[str, str]], expected: str
) -> None:
    path = write_jsonl(tmp_path / "bad.jsonl", rows)
    result = CliRunner().invoke(app, ["finetune-encoder", str(path), "--out", str(tmp_path / "enc")])
    assert result.exit_code == 1 and expected in result.output
    assert not (tmp_path / "enc").exists()


def test_a_foreign_output_folder_is_never_overwritten(data: Path, tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    result = CliRunner().invoke(app, ["finetune-encoder", str(data), "--out", str(tmp_path)])
    assert result.exit_code == 1 and "holds no fine-tuned encoder" in result.output
    assert (tmp_path / "notes.txt").read_text() == "mine"


def _tiny_mpnet(folder: Path) -> Path:
    """A randomly initialised two-layer MPNet in MiniLM's sentence-transformers folder (its tokenizer,
    mean pooling): another architecture than BERT, built here so that no hub is needed."""
    import shutil

    from transformers import MPNetConfig, MPNetModel

    from coe.encoding.files import resolve_encoder_dir

    shutil.copytree(
        resolve_encoder_dir("all-MiniLM-L6-v2"), folder, ignore=shutil.ignore_patterns("*.safetensors")
    )
    config = MPNetConfig(vocab_size=30527, hidden_size=32, num_hidden_layers=2, num_attention_heads=2)
    MPNetModel(config).save_pretrained(folder)  # writes its own config.json and weights
    pooling = folder / "1_Pooling" / "config.json"
    pooling.write_text(json.dumps({**json.loads(pooling.read_text()), "word_embedding_dimension": 32}))
    return folder


def test_a_local_base_of_another_architecture_is_tuned_and_exported(data: Path, tmp_path: Path) -> None:
    base, out = _tiny_mpnet(tmp_path / "mpnet"), tmp_path / "tuned"
    args = ["finetune-encoder", str(data), "--out", str(out), "--base", str(base), "--epochs", "1"]
    result = CliRunner().invoke(app, [*args, "--batch-size", "4", "--max-tokens", "32"])
    assert result.exit_code == 0, result.output
    header = FinetunedEncoder.model_validate_json((out / HEADER_FILE).read_text())
    assert header.base == str(base) and header.onnx is not None
    texts = PROMPTS["medical"][:3]
    onnx, torch_side = Embedder(path=str(out), backend="onnx"), Embedder(path=str(out))
    assert (onnx.encode(texts) * torch_side.encode(texts)).sum(axis=1).min() > 0.9
