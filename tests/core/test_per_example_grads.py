"""Per-example LoRA gradients: the batched hook path equals one backward per example; the LESS Adam direction."""

import math

import pytest
import torch
from safetensors import safe_open

from gtp_pipeline.core.features.per_example_grads import (
    BatchedGrads,
    LoopGrads,
    UnsupportedModelError,
    adam_direction,
    param_layout,
    prepare_model,
    response_losses,
    set_attention,
)
from gtp_pipeline.core.training.lora_train import (
    LoraTrainConfig,
    load_lora_model,
    load_moments,
    make_lora_model,
    train_lora,
)
from gtp_pipeline.core.training.models import tiny_model
from gtp_pipeline.core.training.text import collate, encode_example, pad_id

LORA = LoraTrainConfig(lora_r=4, lora_alpha=16, max_len=64, batch_size=4, lr=1e-2, epochs=2, seed=0)
TEXTS = [
    ("What is the capital of France?", "Paris."),
    ("Name three colours.", "Red, green and a rather long-winded blue, if you ask me."),
    ("Say hi", "hi"),
    ("Explain gravity in one sentence please, in plain words.", "Mass attracts mass."),
    ("2+2?", "4, and " + "very " * 20 + "sure."),
]


pytestmark = pytest.mark.usefixtures("one_thread")  # fixtures: tests/core/conftest.py


@pytest.fixture(scope="module")
def lora_model(tiny):
    """A LoRA model whose B matrices are non-zero, so both A and B get gradients."""
    model = make_lora_model(tiny.model, LORA).eval()
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(0.05 * torch.randn(p.shape, generator=gen))
    return model


def batch(tok, idx, max_len=64):
    return collate([encode_example(tok, *TEXTS[i], max_len=max_len) for i in idx], pad_id(tok))


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
@pytest.mark.parametrize("idx", [[0, 2, 3], [1, 4], [2], [0, 1, 2, 3, 4]], ids=["mixed", "truncated", "single", "all"])
def test_batched_grads_equal_autograd_loop(tiny, lora_model, idx, attention):
    b = batch(tiny.tokenizer, idx)
    set_attention(lora_model, attention, "cpu")
    fast = BatchedGrads(lora_model).grads(b["input_ids"], b["labels"], b["lengths"])
    set_attention(lora_model, "sdpa", "cpu")
    oracle = LoopGrads(lora_model, less_style=True).grads(b["input_ids"], b["labels"], b["lengths"])
    assert fast.shape == (len(idx), param_layout(lora_model).n_params)
    assert oracle.abs().amax(dim=1).min() > 0  # every example has a real gradient
    torch.testing.assert_close(fast, oracle, rtol=1e-4, atol=1e-6)


def test_per_example_grads_sum_to_the_batch_gradient(tiny, lora_model):
    b = batch(tiny.tokenizer, [0, 1, 3])
    per_example = BatchedGrads(lora_model).grads(b["input_ids"], b["labels"], b["lengths"])
    params = [p for p in lora_model.parameters() if p.requires_grad]
    total = torch.autograd.grad(response_losses(lora_model, b["input_ids"], b["labels"]).sum(), params)
    torch.testing.assert_close(per_example.sum(0), torch.cat([g.reshape(-1) for g in total]), rtol=1e-4, atol=1e-6)


def test_response_losses_equal_the_models_own_loss(tiny, lora_model):
    b = batch(tiny.tokenizer, [0, 1, 4])
    with torch.no_grad():
        ours = response_losses(lora_model, b["input_ids"], b["labels"])
        for i, n in enumerate(b["lengths"].tolist()):
            hf = lora_model(input_ids=b["input_ids"][i : i + 1, :n], labels=b["labels"][i : i + 1, :n]).loss
            torch.testing.assert_close(ours[i], hf, rtol=1e-5, atol=1e-6)


def test_adam_direction_is_lesss_formula_on_a_real_adamw_state(tmp_path, tiny):
    """A real warm-up (4 AdamW steps), then m'/sqrt(v'+eps) checked two ways: in float64 from the moments read
    by name from the checkpoint file, and against the step a real AdamW takes with that gradient."""
    examples = [(f"e{i}", *TEXTS[i % len(TEXTS)]) for i in range(8)]
    ckpt = train_lora(tiny.model, tiny.tokenizer, examples, tmp_path, LORA, model_id=tiny.model_id).checkpoints[-1]
    assert ckpt.step == 4
    model = load_lora_model(tiny.model, ckpt).eval()
    b = batch(tiny.tokenizer, [3])
    g = BatchedGrads(model).grads(b["input_ids"], b["labels"], b["lengths"])  # (1, P)
    ours = adam_direction(g, *load_moments(ckpt, model))[0]

    # Oracle 1: the formula in float64, parameter by parameter, moments read by name.
    layout = param_layout(model)
    with safe_open(f"{ckpt.path}/optimizer.safetensors", "pt") as f:
        for name, sl, _ in layout.slices():
            m, v = (
                f.get_tensor(f"exp_avg/{name}").double().reshape(-1),
                f.get_tensor(f"exp_avg_sq/{name}").double().reshape(-1),
            )
            gi = g[0, sl].double()
            expected = (0.9 * m + 0.1 * gi) / torch.sqrt(0.999 * v + 0.001 * gi**2 + 1e-8)
            torch.testing.assert_close(ours[sl].double(), expected, rtol=1e-5, atol=1e-7)

    # Oracle 2: a real AdamW step from that state with that gradient moves by -lr m'/bc1 / (sqrt(v'/bc2) + eps).
    # Undoing the bias corrections gives m'/sqrt(v'), which is LESS's direction wherever v' >> 1e-8 (LESS puts eps
    # inside the sqrt, so on near-silent coordinates it damps where AdamW does not): compare there.
    params = [p for p in model.parameters() if p.requires_grad]  # the layout's order
    opt = torch.optim.AdamW(params, lr=1.0, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
    v_next = []
    with safe_open(f"{ckpt.path}/optimizer.safetensors", "pt") as f:
        for (name, sl, shape), p in zip(layout.slices(), params, strict=True):
            state = {"exp_avg": f.get_tensor(f"exp_avg/{name}"), "exp_avg_sq": f.get_tensor(f"exp_avg_sq/{name}")}
            opt.state[p] = {"step": torch.tensor(float(ckpt.step)), **state}
            p.grad = g[0, sl].reshape(shape).clone()
            v_next.append(0.999 * state["exp_avg_sq"].reshape(-1) + 0.001 * g[0, sl] ** 2)
    before = torch.cat([p.detach().reshape(-1).clone() for p in params])
    opt.step()
    moved = before - torch.cat([p.detach().reshape(-1) for p in params])
    t = ckpt.step + 1
    real_direction = moved * (1 - 0.9**t) / math.sqrt(1 - 0.999**t)  # (P,)
    loud = torch.cat(v_next) > 1e-6  # where eps changes LESS's direction by < 0.5%
    assert loud.sum() > 0.05 * len(loud)
    torch.testing.assert_close(ours[loud], real_direction[loud], rtol=1e-2, atol=1e-3)


def test_bf16_gradients_stay_within_cosine_099_of_fp32(tiny, lora_model):
    b = batch(tiny.tokenizer, [0, 1, 2, 3, 4])
    exact = BatchedGrads(lora_model).grads(b["input_ids"], b["labels"], b["lengths"])
    fast_model = prepare_model(make_lora_model(tiny.model, LORA), "bf16").eval()
    fast_model.load_state_dict(lora_model.state_dict(), strict=False)  # same LoRA weights, bf16 base
    head = fast_model.get_base_model().lm_head.weight
    assert (
        head.dtype == torch.bfloat16 and fast_model.get_base_model().model.embed_tokens.weight.dtype == torch.float32
    )
    approx = BatchedGrads(fast_model, "bf16").grads(b["input_ids"], b["labels"], b["lengths"])
    cos = torch.nn.functional.cosine_similarity(exact, approx, dim=1)
    assert (cos > 0.99).all(), cos


def test_models_with_trainable_non_lora_parameters_are_refused(tiny):
    model = make_lora_model(tiny.model, LORA)
    model.get_base_model().model.norm.weight.requires_grad_(True)
    with pytest.raises(UnsupportedModelError, match="norm.weight"):
        BatchedGrads(model)
    with pytest.raises(UnsupportedModelError, match="no trainable"):
        param_layout(tiny_model().model.requires_grad_(False))


@pytest.mark.cuda
def test_batched_grads_on_cuda_equal_the_cpu_loop(tiny, lora_model):
    import copy

    b = batch(tiny.tokenizer, [0, 1, 2, 3, 4])
    oracle = LoopGrads(lora_model).grads(b["input_ids"], b["labels"], b["lengths"])
    gpu = BatchedGrads(copy.deepcopy(lora_model).cuda()).grads(b["input_ids"], b["labels"], b["lengths"]).cpu()
    torch.testing.assert_close(gpu, oracle, rtol=1e-3, atol=1e-5)
