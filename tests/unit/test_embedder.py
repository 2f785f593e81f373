"""The encoder backends: same vectors from torch and int8 ONNX, truncation, and clear errors offline."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from coe.config import ConfigError, parse_config
from coe.encoding.embedder import Embedder, request_scope
from coe.errors import ModelNotFoundError

TEXTS = [
    "Write a Python function that reverses a string",
    "What is the derivative of x^3 sin(x)?",
    "Tell me a short story about a fox and a crow",
]


@pytest.fixture(scope="module")
def onnx() -> Embedder:
    return Embedder(backend="onnx")


def test_onnx_int8_gives_the_vectors_of_torch(onnx: Embedder) -> None:
    a, b = onnx.encode(TEXTS), Embedder(backend="torch").encode(TEXTS)
    assert a.shape == b.shape == (3, 384)
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-5)
    assert (a * b).sum(axis=1).min() > 0.99
    assert onnx.space == Embedder(backend="torch").space  # so one trained router serves both


def test_onnx_int8_is_built_once_close_to_torch_and_its_own_space(onnx: Embedder) -> None:
    import onnx as onnx_files

    first = Embedder(backend="onnx-int8")
    derived = first.files.onnx
    assert derived is not None and derived.is_relative_to(os.environ["COE_CACHE_DIR"])
    a = first.encode(TEXTS)
    built = derived.stat().st_mtime_ns
    ops = {n.op_type for n in onnx_files.load(str(derived)).graph.node}
    assert "MatMulInteger" in ops  # int8 matrix products, not int8 storage computed in fp32
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-5)
    assert (a * onnx.encode(TEXTS)).sum(axis=1).min() > 0.97
    assert first.space == "all-MiniLM-L6-v2+int8" != onnx.space  # a router trained on one refuses the other
    again = Embedder(backend="onnx-int8")
    np.testing.assert_allclose(again.encode(TEXTS), a, atol=1e-6)
    assert derived.stat().st_mtime_ns == built  # the second load reused the file


def test_onnx_int8_refuses_a_folder_and_names_the_backend_to_use(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFoundError, match=r"use embedder\.backend: onnx"):
        Embedder(backend="onnx-int8", path=str(tmp_path))


def test_onnx_int8_without_the_onnx_package_says_what_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import importlib.util

    from coe.encoding.build import quantize as encoder_quantize

    real = importlib.util.find_spec
    hide_onnx = lambda name, *a: None if name == "onnx" else real(name, *a)  # noqa: E731
    monkeypatch.setattr(encoder_quantize.importlib.util, "find_spec", hide_onnx)
    source = Embedder(backend="onnx").files.onnx
    assert source is not None
    with pytest.raises(ModelNotFoundError, match=r"pip install 'coe\[onnx\]'"):
        encoder_quantize.ensure_dynamic_int8(source, tmp_path / "model.onnx")
    assert not (tmp_path / "model.onnx").exists()
    monkeypatch.setenv("COE_CACHE_DIR", str(tmp_path))  # nothing built here yet: validate says so
    with pytest.raises(ModelNotFoundError, match=r"needs the onnx package"):
        Embedder(backend="onnx-int8")


def test_max_tokens_reads_only_the_head_of_a_prompt(onnx: Embedder) -> None:
    head = "Write a Python function that reverses a string"
    long = head + " and then" + " tell me about the history of Rome" * 40
    truncated = onnx.encode([long], max_tokens=11)  # [CLS] + the 9 tokens of `head` + [SEP]
    assert float(truncated[0] @ onnx.encode([head])[0]) > 0.999
    assert float(onnx.encode([long])[0] @ onnx.encode([head])[0]) < 0.9


def test_batch_order_is_kept_when_lengths_differ(onnx: Embedder) -> None:
    texts = ["short", "a much longer prompt about sorting algorithms in C++", "mid length text"]
    batch = onnx.encode(texts)
    for i, text in enumerate(texts):
        np.testing.assert_allclose(batch[i], onnx.encode([text])[0], atol=1e-4)


def test_a_request_scope_encodes_each_text_once_and_ends_with_the_request(
    onnx: Embedder, monkeypatch: pytest.MonkeyPatch
) -> None:
    impl = onnx._load()
    real = impl.encode
    calls: list[list[str]] = []
    monkeypatch.setattr(impl, "encode", lambda texts, *a: calls.append(list(texts)) or real(texts, *a))
    with request_scope():
        first = onnx.encode(["route me"])
        with request_scope():  # a nested scope (the server's stream path) shares the outer one
            again = onnx.encode(["route me"])
        onnx.encode(["another prompt"])
    assert again is first and calls == [["route me"], ["another prompt"]]
    with pytest.raises(ValueError):
        first[0, 0] = 1.0  # shared between stages: read-only
    onnx.encode(["route me"])  # after the request: encoded again, nothing is cached
    assert calls[-1] == ["route me"] and len(calls) == 3


def test_a_missing_static_encoder_names_the_command_that_builds_it(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFoundError, match=r"coe distil-encoder"):
        Embedder(backend="static", path=str(tmp_path))


def test_unknown_backend_in_yaml_lists_the_choices() -> None:
    text = "version: 1\nembedder: {backend: gpu}\nexperts:\n  a: {endpoint: http://127.0.0.1:9/v1}\n"
    with pytest.raises(ConfigError, match=r"embedder\.backend.*'torch', 'onnx', 'onnx-int8' or 'static'"):
        parse_config(text)


def test_static_backend_from_a_distilled_folder(tmp_path: Path) -> None:
    """A tiny static table in the distilled format: the backend averages the rows of the tokens."""
    import shutil

    from coe.encoding.files import resolve_encoder_dir

    table = np.zeros((30522, 4), dtype=np.float16)
    table[:, 0] = 1.0
    with (tmp_path / "static.npz").open("wb") as f:
        np.savez(f, embeddings=table)
    shutil.copyfile(resolve_encoder_dir("all-MiniLM-L6-v2") / "tokenizer.json", tmp_path / "tokenizer.json")
    emb = Embedder(backend="static", path=str(tmp_path))
    out = emb.encode(["hello world", ""])
    np.testing.assert_allclose(out[0], [1, 0, 0, 0], atol=1e-6)
    assert emb.space == "all-MiniLM-L6-v2+static" and emb.space != Embedder().space


@pytest.mark.parametrize(
    ("prompt", "unknown"),
    [
        ("asdfgh qwerty", ["asdfgh", "qwerty"]),
        ("Привет, как дела?", ["привет", "как", "дела"]),  # a script the English vocabulary lacks
        ("Wie spät ist es heute in Berlin?", []),  # "ist", "es", "in": one known word is enough
        ("kubectl get pods", []),
        ("Simplify (p↔q)∧(r↔q)", []),  # a formula is left to the similarity floor
        ("2+2 = ?", []),  # no word at all
    ],
)
def test_the_vocabulary_names_a_prompt_s_words_only_when_it_knows_none(
    onnx: Embedder, prompt: str, unknown: list[str]
) -> None:
    vocabulary = onnx.vocabulary
    assert vocabulary is not None and vocabulary.active
    assert vocabulary.unknown_words(prompt) == unknown


def test_a_tokenizer_that_is_not_wordpiece_knows_every_word(tmp_path: Path) -> None:
    """A BPE vocabulary has no whole-word entries to check against: the check stays out of the way."""
    from tokenizers import Tokenizer
    from tokenizers.models import BPE
    from tokenizers.pre_tokenizers import Whitespace

    from coe.encoding.vocabulary import Vocabulary

    tokenizer = Tokenizer(BPE(vocab={"a": 0, "b": 1}, merges=[]))
    tokenizer.pre_tokenizer = Whitespace()
    tokenizer.save(str(tmp_path / "tokenizer.json"))
    vocabulary = Vocabulary(tmp_path / "tokenizer.json")
    assert not vocabulary.active and vocabulary.unknown_words("asdfgh qwerty") == []
