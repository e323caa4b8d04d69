"""LoRA training: it learns, checkpoints hold what LESS needs, a resumed run ends where an uninterrupted one does."""

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from gtp_pipeline.core.features.per_example_grads import response_losses
from gtp_pipeline.core.training.checkpoints import CheckpointMismatchError, list_checkpoints
from gtp_pipeline.core.training.lora_train import (
    LoraTrainConfig,
    linear_schedule,
    load_lora_model,
    lr_weights,
    train_lora,
    warmup_subset,
)
from gtp_pipeline.core.training.text import collate, encode_example, pad_id

CFG = LoraTrainConfig(lora_r=4, lora_alpha=16, lr=2e-2, epochs=3, batch_size=4, max_len=64, warmup_ratio=0.1, seed=0)
EXAMPLES = [
    (f"ex{i:02d}", f"Count to {i % 5 + 1}.", " ".join(str(k) for k in range(1, i % 5 + 2)) + ".") for i in range(12)
]


class Interrupted(RuntimeError):
    pass


pytestmark = pytest.mark.usefixtures("one_thread")  # fixtures: tests/core/conftest.py


def adapter(ckpt_path):
    return load_file(f"{ckpt_path}/adapter_model.safetensors")


def mean_loss(model, tok, examples):
    encs = [encode_example(tok, p, r, max_len=64) for _, p, r in examples]
    b = collate(encs, pad_id(tok))
    with torch.no_grad():
        return float(response_losses(model.eval(), b["input_ids"], b["labels"]).mean())


def test_training_lowers_the_loss(tmp_path, tiny):
    result = train_lora(tiny.model, tiny.tokenizer, EXAMPLES, tmp_path, replace(CFG, epochs=6), model_id=tiny.model_id)
    before = mean_loss(tiny.model, tiny.tokenizer, EXAMPLES)
    after = mean_loss(load_lora_model(tiny.model, result.checkpoints[-1]), tiny.tokenizer, EXAMPLES)
    assert after < before - 0.5, (before, after)
    assert result.checkpoints[-1].mean_loss < result.checkpoints[0].mean_loss


def test_checkpoints_hold_adapter_moments_and_lr_weight(tmp_path, tiny):
    result = train_lora(tiny.model, tiny.tokenizer, EXAMPLES, tmp_path, CFG, model_id=tiny.model_id)
    steps_per_epoch = 3  # 12 examples / batch 4
    assert [c.step for c in result.checkpoints] == [3, 6, 9] and [c.epoch for c in result.checkpoints] == [1, 2, 3]
    assert [c.path for c in list_checkpoints(tmp_path)] == [c.path for c in result.checkpoints]
    lrs = [CFG.lr * linear_schedule(s, 9, 1) for s in range(9)]  # warmup_ratio 0.1 of 9 steps -> 1 step
    for k, ckpt in enumerate(result.checkpoints):
        assert ckpt.lr_weight == pytest.approx(np.mean(lrs[k * steps_per_epoch : (k + 1) * steps_per_epoch]))
        moments = load_file(f"{ckpt.path}/optimizer.safetensors")
        model = load_lora_model(tiny.model, ckpt)
        names = [n for n, p in model.named_parameters() if p.requires_grad]
        assert sorted(moments) == sorted([f"exp_avg/{n}" for n in names] + [f"exp_avg_sq/{n}" for n in names])
        state = json.loads((tmp_path / f"checkpoint-{ckpt.step:06d}" / "trainer_state.json").read_text())
        assert (
            len(state["losses"]) == ckpt.step and state["config"]["lora_r"] == 4 and state["model_id"] == tiny.model_id
        )
    w = lr_weights(result.checkpoints)
    assert sum(w) == pytest.approx(1) and w[0] > w[-1]  # later epochs run at lower LR
    assert not list(tmp_path.glob(".tmp-*"))


def test_resume_after_interruption_gives_the_same_adapter(tmp_path, tiny):
    whole = train_lora(tiny.model, tiny.tokenizer, EXAMPLES, tmp_path / "whole", CFG, model_id=tiny.model_id)

    def stop_after_step_5(step, total, loss):
        if step == 5:  # the epoch-1 checkpoint (step 3) is on disk, step 4-5 are lost
            raise Interrupted

    with pytest.raises(Interrupted):
        train_lora(
            tiny.model,
            tiny.tokenizer,
            EXAMPLES,
            tmp_path / "resumed",
            CFG,
            model_id=tiny.model_id,
            progress=stop_after_step_5,
        )
    assert [c.step for c in list_checkpoints(tmp_path / "resumed")] == [3]
    resumed = train_lora(tiny.model, tiny.tokenizer, EXAMPLES, tmp_path / "resumed", CFG, model_id=tiny.model_id)
    assert resumed.steps_run == 6
    for a, b in zip(whole.checkpoints, resumed.checkpoints, strict=True):
        assert (a.step, a.lr_weight) == (b.step, b.lr_weight)
        for key, t in adapter(a.path).items():
            torch.testing.assert_close(adapter(b.path)[key], t, rtol=1e-6, atol=1e-7)
        ma, mb = load_file(f"{a.path}/optimizer.safetensors"), load_file(f"{b.path}/optimizer.safetensors")
        for key in ma:
            torch.testing.assert_close(mb[key], ma[key], rtol=1e-6, atol=1e-9)
    again = train_lora(tiny.model, tiny.tokenizer, EXAMPLES, tmp_path / "resumed", CFG, model_id=tiny.model_id)
    assert again.steps_run == 0 and [c.path for c in again.checkpoints] == [c.path for c in resumed.checkpoints]


@pytest.mark.parametrize(
    "change",
    [{"config": replace(CFG, lr=1e-3)}, {"examples": EXAMPLES[:-1]}, {"model_id": "other"}],
    ids=["config", "data", "model"],
)
def test_rerun_with_other_inputs_in_the_same_folder_is_refused(tmp_path, tiny, change):
    train_lora(tiny.model, tiny.tokenizer, EXAMPLES, tmp_path, replace(CFG, epochs=1), model_id=tiny.model_id)
    kwargs = {"config": replace(CFG, epochs=1), "examples": EXAMPLES, "model_id": tiny.model_id, **change}
    with pytest.raises(CheckpointMismatchError):
        train_lora(
            tiny.model, tiny.tokenizer, kwargs["examples"], tmp_path, kwargs["config"], model_id=kwargs["model_id"]
        )


def test_uniform_weights_of_any_scale_equal_no_weights(tmp_path, tiny):
    cfg = replace(CFG, epochs=1)
    plain = train_lora(tiny.model, tiny.tokenizer, EXAMPLES, tmp_path / "a", cfg).checkpoints[-1]
    scaled = train_lora(tiny.model, tiny.tokenizer, EXAMPLES, tmp_path / "b", cfg, weights=[3.0] * 12).checkpoints[-1]
    skewed = train_lora(
        tiny.model, tiny.tokenizer, EXAMPLES, tmp_path / "c", cfg, weights=[1.0] * 6 + [5.0] * 6
    ).checkpoints[-1]
    for key, t in adapter(plain.path).items():
        torch.testing.assert_close(adapter(scaled.path)[key], t)
    assert any(not torch.allclose(adapter(skewed.path)[k], t) for k, t in adapter(plain.path).items())


def test_stream_mode_follows_the_given_indices(tmp_path, tiny):
    stream = [0, 1, 2, 3, 0, 1, 2, 3, 4, 5]  # ClusterClip-style plan with repeats
    result = train_lora(
        tiny.model, tiny.tokenizer, EXAMPLES, tmp_path, replace(CFG, save_every_steps=2), stream=stream
    )
    assert [c.step for c in result.checkpoints] == [2, 3]  # ceil(10 / 4) = 3 steps; every 2 and at the end
    assert result.checkpoints[-1].epoch == pytest.approx(12 / 12)  # 3 steps x 4 rows over 12 examples


def test_unencodable_examples_are_excluded_and_reported(tmp_path, tiny):
    examples = [*EXAMPLES[:4], ("blank", "question", "   ")]
    result = train_lora(tiny.model, tiny.tokenizer, examples, tmp_path, replace(CFG, epochs=1))
    assert result.excluded == [("blank", "empty_response")]
    assert result.checkpoints[-1].step == 1


def test_warmup_subset_is_a_seeded_fraction():
    a, b, c = warmup_subset(400, 0.05, seed=3), warmup_subset(400, 0.05, seed=3), warmup_subset(400, 0.05, seed=4)
    assert a == b != c and len(a) == 20 and a == sorted(set(a)) and all(0 <= i < 400 for i in a)
    assert len(warmup_subset(10, 0.01)) == 1
    with pytest.raises(ValueError):
        warmup_subset(10, 0.0)


def test_checkpoint_problem_finds_a_swapped_adapter_and_non_finite_weights(tmp_path, tiny):
    import hashlib
    import shutil

    from safetensors.torch import save_file

    from gtp_pipeline.core.training.checkpoints import checkpoint_problem

    result = train_lora(tiny.model, tiny.tokenizer, EXAMPLES, tmp_path / "run", CFG, model_id=tiny.model_id)
    first, last = (Path(c.path) for c in (result.checkpoints[0], result.checkpoints[-1]))
    assert checkpoint_problem(last) is None

    swapped = tmp_path / "swapped"
    shutil.copytree(last, swapped)
    shutil.copy(first / "adapter_model.safetensors", swapped / "adapter_model.safetensors")
    assert "is not the recorded" in checkpoint_problem(swapped)

    poisoned = tmp_path / "poisoned"  # NaN weights whose hash was recorded: the weights themselves are checked
    shutil.copytree(last, poisoned)
    weights = adapter(last)
    name = sorted(weights)[0]
    weights[name][0] = float("nan")
    save_file(weights, str(poisoned / "adapter_model.safetensors"))
    state = json.loads((poisoned / "trainer_state.json").read_text())
    state["checkpoint_id"] = hashlib.sha256((poisoned / "adapter_model.safetensors").read_bytes()).hexdigest()[:16]
    (poisoned / "trainer_state.json").write_text(json.dumps(state))
    assert checkpoint_problem(poisoned) == f"non-finite weights in {name}"

    (poisoned / "trainer_state.json").write_text("{")
    assert checkpoint_problem(poisoned).startswith("unreadable")
