"""What a selection picked twice: exact duplicates (same text or same prompt) and near duplicates (same gradient).

LESS's top-k picks every copy of a useful example; GTP's joint fit should pick at most one (docs/ALGORITHMS.md
§2.2). These counts make that visible per method.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import numpy as np

from gtp_pipeline.core.ingest.corpus import prompt_key

NEAR_COSINE = 0.98  # two trajectories this aligned carry the same gradient information


def duplicate_stats(
    rows: np.ndarray, content_hashes: Sequence[str], prompts: Sequence[str], near_cosine: float = NEAR_COSINE
) -> dict[str, int]:
    """Counts over a selection of s examples.

    Args:
        rows: (s, D) their trajectories (unit norm).
        content_hashes: (s,) their text hashes; prompts: (s,) their prompts.
    Returns:
        exact: selected examples whose text or normalized prompt repeats an earlier selected one;
        near: selected examples whose trajectory has cosine >= near_cosine with an earlier selected one.
    """
    seen_text: Counter[str] = Counter()
    exact = 0
    for h, p in zip(content_hashes, prompts, strict=True):
        key_text, key_prompt = f"t:{h}", f"p:{prompt_key(p)}"
        if seen_text[key_text] or seen_text[key_prompt]:
            exact += 1
        seen_text[key_text] += 1
        seen_text[key_prompt] += 1
    x = np.asarray(rows, dtype=np.float32)  # (s, D)
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    near = 0
    for start in range(0, len(x), 1024):  # blocks keep the (block x s) Gram small
        g = x[start : start + 1024] @ x.T  # (b, s)
        for i in range(g.shape[0]):
            j = start + i
            if j and (g[i, :j] >= near_cosine).any():
                near += 1
    return {"exact": exact, "near": near}
