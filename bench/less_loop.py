"""The LESS-style baseline of bench/gradients.py: LESS's collect_grad_reps.py loop, one example at a time.

Batch size 1, `model(**batch).loss` (full logits) and one loss.backward() per example, the Adam direction from
the checkpoint's moments, projection every PROJECT_INTERVAL examples (LESS's project_interval) with the projector
it is given (the materialized matrix on a CPU; the same device-generated projector as ours on a GPU), unit rows.
"""

from __future__ import annotations

import numpy as np
import torch

from gtp_pipeline.core.features.per_example_grads import LoopGrads, adam_direction, prepare_model
from gtp_pipeline.core.features.projection import DenseProjector
from gtp_pipeline.core.training.lora_train import load_lora_model, load_moments
from gtp_pipeline.core.training.text import Encoded, collate

PROJECT_INTERVAL = 16  # LESS projects its loop's gradients 16 at a time


class LessLoop:
    """LESS-style: one example at a time, fp32, full logits; projection every PROJECT_INTERVAL examples."""

    def __init__(self, model, checkpoint, projector, pad: int, device, precision):
        self.lora = prepare_model(load_lora_model(model, checkpoint), precision).to(device).eval()
        self.grads = LoopGrads(self.lora, precision=precision, less_style=True)
        self.m, self.v = (t.to(device) for t in load_moments(checkpoint, self.lora))
        self.projector = projector
        if isinstance(projector, DenseProjector):
            projector.matrix(device)  # materialized once, before timing (LESS builds its projector once)
        self.pad = pad

    def features(self, encoded: list[Encoded]) -> np.ndarray:
        out, pending = [], []
        for e in encoded:
            b = collate([e], self.pad)
            g = self.grads.grads(b["input_ids"], b["labels"], b["lengths"])  # (1, P)
            pending.append(adam_direction(g, self.m, self.v))
            if len(pending) == PROJECT_INTERVAL:
                out.append(self.projector.project(torch.cat(pending)))  # (16, d)
                pending = []
        if pending:
            out.append(self.projector.project(torch.cat(pending)))
        return torch.nn.functional.normalize(torch.cat(out), dim=1).cpu().numpy()  # (n, d)
