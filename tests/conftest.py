"""Shared fixtures. End-to-end tests start real llama-server processes with the real small models;
they are started once per session (starting costs seconds) and must all be gone at the end."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from coe import CoE, load_config
from tests.support import paths
from tests.support.paths import DEFAULT_REGISTRY
from tests.support.procs import llama_server_pids

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session", autouse=True)
def isolated_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """State files and logs of this test run go to a temp dir; assembled models stay in the user
    cache so the 240 MB Gemma file is not rebuilt per run."""
    previous = os.environ.get("COE_CACHE_DIR")
    run_dir = tmp_path_factory.mktemp("coe-cache")
    models = Path(os.path.expanduser("~/.cache/coe/models"))
    models.mkdir(parents=True, exist_ok=True)
    (run_dir / "models").symlink_to(models)
    os.environ["COE_CACHE_DIR"] = str(run_dir)
    yield run_dir
    if previous is None:
        os.environ.pop("COE_CACHE_DIR", None)
    else:
        os.environ["COE_CACHE_DIR"] = previous


@pytest.fixture(scope="session", autouse=True)
def no_orphans() -> Iterator[None]:
    """Fail the run if any llama-server started during it outlives it."""
    before = llama_server_pids()
    yield
    left = llama_server_pids() - before
    assert not left, f"llama-server processes left behind: {sorted(left)}"


@pytest.fixture(scope="session")
def default_config():  # type: ignore[no-untyped-def]
    return load_config(DEFAULT_REGISTRY)


@pytest.fixture(scope="session")
def coe_default(default_config) -> Iterator[CoE]:  # type: ignore[no-untyped-def]
    """The default registry with real llama.cpp experts, shared by the e2e tests."""
    coe = CoE(default_config)
    yield coe
    coe.close()
    assert not coe.pool.running


@pytest.fixture(scope="session")
def router(default_config):  # type: ignore[no-untyped-def]
    return CoE(default_config).router


@pytest.fixture(scope="session")
def rag_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An index of the test corpus and a classifier gate trained on the labelled test questions."""
    from coe.config import EmbedderConfig
    from coe.encoding.embedder import shared_embedder
    from coe.retrieval.corpus import read_corpus
    from coe.retrieval.gate_data import read_gate_data
    from coe.retrieval.gate_model import GateHeader, fit_classifier, save_gate
    from coe.retrieval.index import build_index

    folder = tmp_path_factory.mktemp("rag")
    embedder = shared_embedder(EmbedderConfig())
    build_index(
        read_corpus(paths.DATA / "rag" / "corpus.jsonl").documents,
        embedder,
        folder / "index",
        source="corpus",
    )
    rows = read_gate_data([paths.DATA / "rag" / "questions.jsonl"])
    arrays, threshold, params, validation = fit_classifier(
        embedder.encode([r.text for r in rows]), [r.label for r in rows]
    )
    header = GateHeader(
        kind="classifier",
        encoder="all-MiniLM-L6-v2",
        threshold=threshold,
        label_field="needs_retrieval",
        train_size=len(rows),
        positives=sum(r.label for r in rows),
        train_sha256="-",
        params=params,
        validation=validation,
    )
    save_gate(folder / "gate.npz", header, arrays)
    return folder
