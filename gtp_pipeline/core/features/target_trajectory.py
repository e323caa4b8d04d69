"""The target trajectory GTP matches: per checkpoint, the mean over subtasks of the mean unit-norm target row of each
subtask, stacked with the candidates' sqrt(w_t) (docs/ALGORITHMS.md §2.2), checked against the candidates' stores.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from gtp_pipeline.core.features.trajectory import (
    CHECKPOINT_KEYS,
    SHARED_KEYS,
    Trajectories,
    TrajectoryMismatchError,
    check_compatible,
    identity_value,
    inverse_norms,
    normalize_lr_weights,
)
from gtp_pipeline.core.storage.feature_store import FeatureStore

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TargetTrajectory:
    """Target trajectories: one per subtask (LESS scores against each) and their mean (GTP's b)."""

    per_subtask: np.ndarray  # (J, D) float64 sqrt(w_t)-stacked mean unit-norm target row of each subtask
    subtasks: np.ndarray  # (J,) subtask labels, sorted
    counts: np.ndarray  # (J,) valid target rows per subtask

    @property
    def vector(self) -> np.ndarray:
        """(D,) the mean of the per-subtask means: small subtasks count as much as large ones (docs/ALGORITHMS.md §2.2)."""
        return self.per_subtask.mean(axis=0)


def build_target(
    target_stores: Sequence[FeatureStore],
    lr_weights: Sequence[float],
    subtasks: np.ndarray | Sequence | None = None,
    candidates: Trajectories | None = None,
) -> TargetTrajectory:
    """Target trajectories from per-checkpoint target stores (rows = target dev examples).

    Args:
        target_stores: one FeatureStore per checkpoint, same rows and ids, in the candidates' checkpoint order.
        lr_weights: the same learning-rate weights as the candidates.
        subtasks: (n_rows,) subtask label of each target row; None = one subtask.
        candidates: if given, checked for the same checkpoint count, dims and checkpoint/projection identity.
    """
    check_compatible(target_stores, "target")
    w = normalize_lr_weights(lr_weights)
    T, m0 = len(target_stores), target_stores[0].meta
    if len(w) != T:
        raise TrajectoryMismatchError(f"{T} target stores but {len(w)} learning-rate weights")
    if candidates is not None:
        _check_against(candidates, target_stores)
    labels = np.zeros(m0.n_rows, dtype=np.int64) if subtasks is None else np.asarray(subtasks)
    if labels.shape != (m0.n_rows,):
        raise ValueError(f"subtasks must label each of the {m0.n_rows} target rows, got shape {labels.shape}")
    names = np.unique(labels)
    out = np.zeros((names.size, T * m0.dim))  # (J, D)
    counts = np.zeros(names.size, dtype=np.int64)
    for t, st in enumerate(target_stores):
        x = torch.from_numpy(np.concatenate([st.read_chunk(c) for c in range(st.n_chunks)])).float()  # (n, d)
        valid = st.valid_mask()
        inv = inverse_norms(torch.linalg.vector_norm(x, dim=1).numpy(), valid, f"target store {st.path}", 0)
        unit = x.double().numpy() * inv[:, None]  # (n, d) float64, invalid rows 0
        for j, name in enumerate(names):
            sel = (labels == name) & valid
            if not sel.any():
                raise ValueError(f"subtask {name!r} has no valid target rows in {st.path}")
            out[j, t * m0.dim : (t + 1) * m0.dim] = np.sqrt(w[t]) * unit[sel].mean(axis=0)
            counts[j] = sel.sum() if t == 0 else counts[j]
    return TargetTrajectory(out, names, counts)


def _check_against(candidates: Trajectories, target_stores: Sequence[FeatureStore]) -> None:
    T = len(target_stores)
    if candidates.n_checkpoints != T:
        raise TrajectoryMismatchError(f"{candidates.n_checkpoints} candidate checkpoints but {T} target stores")
    if candidates.dim != T * target_stores[0].meta.dim:
        raise TrajectoryMismatchError(
            f"candidate trajectories have dim {candidates.dim}, target stores give {T} x {target_stores[0].meta.dim}"
        )
    metas = candidates.store_metas()
    if metas is None:
        return
    for t, (cm, st) in enumerate(zip(metas, target_stores, strict=True)):
        if cm.dim != st.meta.dim:
            raise TrajectoryMismatchError(
                f"checkpoint {t}: candidate dim {cm.dim} but target store {st.path} dim {st.meta.dim}"
            )
        ck, cv = identity_value(cm, CHECKPOINT_KEYS)
        tk, tv = identity_value(st.meta, CHECKPOINT_KEYS)
        if ck is not None and tk is not None and cv != tv:
            raise TrajectoryMismatchError(
                f"checkpoint {t}: candidate store is checkpoint {cv!r} but target store {st.path} is checkpoint {tv!r}"
            )
        for key in SHARED_KEYS:
            if key in cm.identity and key in st.meta.identity and cm.identity[key] != st.meta.identity[key]:
                raise TrajectoryMismatchError(
                    f"checkpoint {t}: candidate {key}={cm.identity[key]!r} but target store {st.path} "
                    f"has {key}={st.meta.identity[key]!r}"
                )
