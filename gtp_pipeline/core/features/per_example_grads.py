"""Per-example gradients of the mean response-token loss w.r.t. the LoRA parameters, and the LESS directions.

LESS (arXiv 2402.04333, less/data_selection/collect_grad_reps.py) takes, for every single example
(dataloader batch size 1), `model(**batch).loss` (mean cross-entropy over response tokens), one
`loss.backward()`, and the gradient of the LoRA parameters only, flattened in parameter order. Candidates use
the Adam update direction built from the checkpoint's optimizer moments (`adam_direction`, no bias correction,
eps inside the sqrt, as the code does); targets use the plain SGD gradient.

Implementations (TRAK's AbstractGradientComputer split, trak/gradient_computers.py):
  - `LoopGrads`: one forward and one backward per example. The oracle for tests and the LESS-style baseline
    of bench/gradients.py (`less_style=True` takes the loss from `model(input_ids, labels=labels).loss`, full
    logits, exactly as LESS).
  - `BatchedGrads`: one forward and one backward for the whole batch. LoRA's A and B are plain `nn.Linear`s,
    and a linear layer's per-example weight gradient is sum_t g_t a_t^T (g: gradient at its output, a: its
    input; Goodfellow 2015, Opacus' per-sample hooks). Forward hooks keep each LoRA input; a tensor hook on
    each LoRA output receives g during the backward and writes bmm(g^T, a) (`outer_sums`), or a transform of
    it such as the Adam direction, straight into rows of a caller's buffer (`grads_into`: the bf16 projection
    buffer of core/features/featurize.py), so no (B, P) fp32 copy exists.
    Chosen over torch.func vmap(grad): same FLOPs for the model, but one ordinary batched graph (fused
    kernels, any attention implementation) and no per-example weight copies.

Work the features do not need is skipped: logits (the 49k-wide lm_head) are computed only at response
positions (`response_losses`); frozen base weights get no gradient; layers below the lowest LoRA layer record
no graph at all (nothing there requires grad); the batch is right-padded so no attention mask is built.
With `precision="bf16"` (`prepare_model`) frozen linear weights are cast to bf16 once and the forward and
backward run under CPU/CUDA autocast, while an fp32 model's residual stream, the loss and the per-example
products stay fp32: ~3x faster than fp32 on an AVX512-BF16 CPU; the features stay within cosine 0.99 of fp32
(tests on the tiny model; bench/gradients.py measures ~0.999 on SmolLM2). On CPU, eager attention
(`set_attention`) and a tuned allocator (`tune_cpu_allocator`) each save another ~10%.
"""

from __future__ import annotations

import contextlib
import copy
import ctypes
import logging
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F

from gtp_pipeline.core.training.text import IGNORE_INDEX

logger = logging.getLogger(__name__)

Precision = Literal["fp32", "bf16"]
ADAM_BETA1, ADAM_BETA2, ADAM_EPS = 0.9, 0.999, 1e-8  # LESS's adam direction constants (collect_grad_reps.py)
LOGIT_ROWS = 128  # response positions per lm_head slice: 128 x 49k vocab x 4 B = 25 MB < the 32 MB mmap threshold


class UnsupportedModelError(TypeError):
    """The model's trainable parameters are not all LoRA A/B weights of bias-free linear layers."""


@dataclass(frozen=True)
class ParamLayout:
    """Where each trainable (LoRA) parameter sits in the flattened gradient vector."""

    names: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]
    offsets: tuple[int, ...]
    n_params: int  # P

    def slices(self) -> Iterator[tuple[str, slice, tuple[int, ...]]]:
        for name, shape, off in zip(self.names, self.shapes, self.offsets, strict=True):
            yield name, slice(off, off + int(torch.Size(shape).numel())), shape


def param_layout(model: torch.nn.Module) -> ParamLayout:
    """Layout of the trainable parameters in `named_parameters()` order (LESS flattens in the same order)."""
    names, shapes, offsets, off = [], [], [], 0
    for name, p in model.named_parameters():
        if p.requires_grad:
            names.append(name)
            shapes.append(tuple(p.shape))
            offsets.append(off)
            off += p.numel()
    if not names:
        raise UnsupportedModelError("the model has no trainable parameters (expected LoRA A/B weights)")
    return ParamLayout(tuple(names), tuple(shapes), tuple(offsets), off)


def trainable_parameters(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


def causal_lm(model: torch.nn.Module) -> Any:
    """The transformers causal LM inside a PeftModel (LoRA layers injected), or the model itself."""
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


def autocast(precision: Precision, device: torch.device | str) -> contextlib.AbstractContextManager:
    """bf16 autocast on the model's device type, or a no-op for fp32."""
    if precision == "fp32":
        return contextlib.nullcontext()
    if precision == "bf16":
        return torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16)
    raise ValueError(f"precision must be 'fp32' or 'bf16', got {precision!r}")


def tune_cpu_allocator() -> bool:
    """Stop glibc from handing freed heap memory back to the OS (mallopt), so the ~GB of activations of every
    forward/backward reuse their pages instead of faulting fresh ones in: on a 2-core VM this removed ~30k page
    faults (~0.1-0.3 s of kernel time) per example. Process-wide; the heap stays at its peak size (blocks of 32 MiB
    and more are still mmapped and returned). Returns False where glibc is not available."""
    global _ALLOCATOR_TUNED
    if _ALLOCATOR_TUNED is None:
        try:
            libc = ctypes.CDLL("libc.so.6")
            M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3  # glibc malloc.h
            _ALLOCATOR_TUNED = bool(
                libc.mallopt(M_TRIM_THRESHOLD, -1)  # -1: never trim (man mallopt)
                and libc.mallopt(M_MMAP_THRESHOLD, 32 << 20)  # fixed: no dynamic threshold creeping up and down
                and libc.mallopt(M_TOP_PAD, 64 << 20)
            )
        except (OSError, AttributeError):
            _ALLOCATOR_TUNED = False
    return _ALLOCATOR_TUNED


_ALLOCATOR_TUNED: bool | None = None


def set_attention(model: torch.nn.Module, attention: str, device: torch.device | str) -> None:
    """Pick the attention kernel: "auto" is eager on CPU (measured ~12% faster per bf16 gradient than SDPA's CPU
    flash kernel at 128 tokens, whose backward is slow) and the model's own choice elsewhere."""
    if attention == "auto":
        if torch.device(device).type != "cpu":
            return
        attention = "eager"
    causal_lm(model).set_attn_implementation(attention)


def weight_sharing_copy(model: torch.nn.Module) -> torch.nn.Module:
    """A copy of the module tree that holds no weight memory of its own: every parameter of the copy is a new
    Parameter over the same storage, every buffer the same tensor. peft can inject LoRA into it, `requires_grad`,
    dtype casts and device moves change only the copy's Parameter objects, and the caller's model stays as it was
    (nothing writes into frozen weights). A 7B base is therefore never held twice."""
    memo: dict[int, Any] = {id(b): b for b in model.buffers()}
    for p in model.parameters():
        memo.setdefault(id(p), torch.nn.Parameter(p.data, requires_grad=p.requires_grad))  # tied weights stay tied
    return copy.deepcopy(model, memo)


def prepare_model(model: torch.nn.Module, precision: Precision) -> torch.nn.Module:
    """Cast frozen linear weights to bf16 in place (for precision="bf16"); LoRA, norms and embeddings stay as they are.

    Autocast would otherwise re-cast every base weight on every forward. The input embedding keeps its dtype so an
    fp32 model's residual stream stays fp32; a tied lm_head gets its own bf16 copy. The model must be one you own
    (e.g. a `weight_sharing_copy`: then a cast allocates bf16 weights only where they are not bf16 already).
    """
    if precision == "fp32":
        return model
    if precision != "bf16":
        raise ValueError(f"precision must be 'fp32' or 'bf16', got {precision!r}")
    lm = causal_lm(model)
    head = lm.get_output_embeddings()
    embed = lm.get_input_embeddings()
    if head is not None and embed is not None and head.weight is embed.weight:
        head.weight = torch.nn.Parameter(embed.weight.detach().to(torch.bfloat16), requires_grad=False)
    for module in model.modules():
        if isinstance(module, torch.nn.Linear) and not module.weight.requires_grad:
            module.weight.data = module.weight.data.to(torch.bfloat16)
            if module.bias is not None and not module.bias.requires_grad:
                module.bias.data = module.bias.data.to(torch.bfloat16)
    return model


def response_losses(model: torch.nn.Module, input_ids: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-example mean cross-entropy over response tokens, (B,), with logits only at response positions.

    Equals `model(input_ids, labels=labels).loss` for a batch of one (position t predicts token t+1), for a
    right-padded batch without attention mask.
    """
    lm = causal_lm(model)
    hidden = lm.get_decoder()(input_ids=input_ids, use_cache=False).last_hidden_state  # (B, T, H)
    target = labels[:, 1:]  # (B, T-1): token t+1 is predicted at position t
    b_idx, t_idx = (target != IGNORE_INDEX).nonzero(as_tuple=True)  # (N,), (N,): response positions
    h, y, head = hidden[b_idx, t_idx], target[b_idx, t_idx], lm.get_output_embeddings()  # (N, H), (N,)
    # Logits in slices of LOGIT_ROWS positions: each (rows, V) fp32 tensor stays under glibc's mmap threshold, so
    # the allocator reuses heap memory instead of mapping fresh pages (page faults) on every call.
    token_loss = torch.cat(
        [
            F.cross_entropy(head(h[k : k + LOGIT_ROWS]).float(), y[k : k + LOGIT_ROWS], reduction="none")
            for k in range(0, len(y), LOGIT_ROWS)
        ]
    )  # (N,)
    counts = (target != IGNORE_INDEX).sum(dim=1)  # (B,)
    if bool((counts == 0).any()):
        raise ValueError(f"examples {(counts == 0).nonzero().flatten().tolist()} have no response token to score")
    sums = torch.zeros(input_ids.shape[0], dtype=token_loss.dtype, device=token_loss.device)
    return sums.index_add(0, b_idx, token_loss) / counts  # (B,)


def adam_direction(
    grads: torch.Tensor, exp_avg: torch.Tensor, exp_avg_sq: torch.Tensor, out: torch.Tensor | None = None
) -> torch.Tensor:
    """LESS's Adam direction m' / sqrt(v' + eps), m' = b1 m + (1-b1) g, v' = b2 v + (1-b2) g^2 (no bias correction).

    grads (B, P) fp32; exp_avg, exp_avg_sq (P,) from the checkpoint's AdamW state. Computed in fp32; writes
    into `out` (may be `grads` itself) when given.
    """
    g = grads.float()
    m = torch.lerp(exp_avg.unsqueeze(0), g, 1 - ADAM_BETA1)  # (B, P): b1 m + (1 - b1) g
    v = g.square().mul_(1 - ADAM_BETA2).add_(exp_avg_sq.unsqueeze(0), alpha=ADAM_BETA2)  # (B, P)
    direction = m.div_(v.add_(ADAM_EPS).sqrt_())
    if out is not None:
        out.copy_(direction)
        return out
    return direction


def outer_sums(g: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """Per-example sum_t g_t a_t^T of a linear layer's output gradients g (B, T, out) and inputs a (B, T, in): its
    weight gradient per example, (B, out, in) fp32.

    On a GPU under bf16 autocast (g is bf16) the layer multiplied bf16-rounded inputs, so the product runs on the
    tensor cores with bf16 operands and an fp32 result (`out_dtype`): exact products summed in fp32, as the fp32
    product would, at a fraction of its cost. Elsewhere it is computed in fp32."""
    if g.is_cuda and g.dtype == torch.bfloat16 and _BF16_OUT_FP32[0]:
        try:
            if g.shape[-1] <= a.shape[-1]:
                return torch.bmm(g.transpose(1, 2), a.to(g.dtype), out_dtype=torch.float32)
            return torch.bmm(a.to(g.dtype).transpose(1, 2), g, out_dtype=torch.float32).transpose(1, 2)
        except (TypeError, RuntimeError) as err:  # torch without bmm(out_dtype=): fp32 from now on
            logger.warning("bf16 x bf16 -> fp32 bmm unavailable (%s); per-example products in fp32", err)
            _BF16_OUT_FP32[0] = False
    if g.shape[-1] <= a.shape[-1]:  # lora_A (out = r): sum_t g_t a_t^T
        return torch.bmm(g.float().transpose(1, 2), a.float())  # (B, out, in)
    # lora_B (in = r): the same product with the small side first is ~5x faster on CPU
    return torch.bmm(a.float().transpose(1, 2), g.float()).transpose(1, 2)  # (B, out, in)


_BF16_OUT_FP32 = [True]  # set to False once if this torch has no bmm(..., out_dtype=)


class GradComputer(ABC):
    """Per-example flattened gradients of the mean response loss w.r.t. the model's trainable parameters."""

    def __init__(self, model: torch.nn.Module, precision: Precision = "fp32"):
        self.model, self.precision = model, precision
        self.layout = param_layout(model)
        self.params = trainable_parameters(model)

    @property
    def device(self) -> torch.device:
        return self.params[0].device

    @abstractmethod
    def grads(self, input_ids: torch.Tensor, labels: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """A right-padded batch (B, T) -> gradients (B, P) fp32."""


class LoopGrads(GradComputer):
    """One backward per example (LESS's loop). `less_style`: the loss is model(..., labels).loss, full logits."""

    def __init__(self, model: torch.nn.Module, precision: Precision = "fp32", less_style: bool = False):
        super().__init__(model, precision)
        self.less_style = less_style

    def grads(self, input_ids: torch.Tensor, labels: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        out = torch.empty(input_ids.shape[0], self.layout.n_params, device=self.device)  # (B, P)
        for i, n in enumerate(lengths.tolist()):
            ids, lab = input_ids[i : i + 1, :n].to(self.device), labels[i : i + 1, :n].to(self.device)
            with autocast(self.precision, self.device):
                if self.less_style:
                    loss = self.model(input_ids=ids, labels=lab).loss
                else:
                    loss = response_losses(self.model, ids, lab)[0]
            for p in self.params:
                p.grad = None
            loss.backward()
            out[i] = torch.cat([p.grad.reshape(-1).float() for p in self.params])
            for p in self.params:
                p.grad = None
        return out


class BatchedGrads(GradComputer):
    """Per-example gradients of a whole batch from one forward and one backward (per-sample hooks on LoRA A/B)."""

    def __init__(self, model: torch.nn.Module, precision: Precision = "fp32"):
        super().__init__(model, precision)
        offsets = {name: (sl, shape) for name, sl, shape in self.layout.slices()}
        self._targets: list[tuple[torch.nn.Linear, slice, tuple[int, ...], bool]] = []  # module, slice, shape, is A
        for name, module in model.named_modules():
            key = f"{name}.weight"
            if key in offsets:
                if not isinstance(module, torch.nn.Linear) or (module.bias is not None and module.bias.requires_grad):
                    raise UnsupportedModelError(
                        f"trainable parameter {key} is not the weight of a bias-free nn.Linear"
                    )
                self._targets.append((module, *offsets.pop(key), ".lora_A." in f".{name}."))
        if offsets:
            raise UnsupportedModelError(f"trainable parameters outside LoRA linear layers: {sorted(offsets)[:5]}")

    @contextlib.contextmanager
    def _hooks(self, write: Callable[[torch.Tensor, slice], None], a_outputs: list[torch.Tensor]) -> Iterator[None]:
        def make_hook(sl: slice, shape: tuple[int, ...], is_a: bool):
            def forward_hook(module: torch.nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
                if not output.requires_grad:
                    return
                a = inputs[0].detach()  # (B, T, in)

                def grad_hook(g: torch.Tensor) -> None:  # g: (B, T, out)
                    write(outer_sums(g, a).reshape(g.shape[0], -1), sl)  # (B, out * in), in the layout's order

                output.register_hook(grad_hook)
                if is_a:
                    a_outputs.append(output)

            return forward_hook

        handles = [m.register_forward_hook(make_hook(sl, shape, is_a)) for m, sl, shape, is_a in self._targets]
        try:
            yield
        finally:
            for h in handles:
                h.remove()

    def grads(self, input_ids: torch.Tensor, labels: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        buffer = torch.zeros(input_ids.shape[0], self.layout.n_params, device=self.device)  # (B, P)
        self.grads_into(buffer, input_ids, labels, lengths)
        return buffer

    def grads_into(
        self,
        out: torch.Tensor,
        input_ids: torch.Tensor,
        labels: torch.Tensor,
        lengths: torch.Tensor,
        transform: Callable[[torch.Tensor, slice], torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Write the batch's gradients (or `transform(g, slice)` of each parameter's (B, n) fp32 slice) into the rows
        `out` (B, P), any float dtype, e.g. rows of a bf16 projection buffer: no (B, P) fp32 copy is ever made.
        Returns (B,) bool: the example's gradient is finite (rows that are not hold garbage; the caller zeroes them)."""
        input_ids, labels = input_ids.to(self.device), labels.to(self.device)
        T = int(lengths.max())
        input_ids, labels = input_ids[:, :T], labels[:, :T]
        finite = torch.ones(input_ids.shape[0], dtype=torch.bool, device=self.device)  # (B,)

        def write(g: torch.Tensor, sl: slice) -> None:  # g: (B, n) fp32
            finite.logical_and_(torch.isfinite(g).all(dim=1))
            out[:, sl].copy_(g if transform is None else transform(g, sl))

        a_outputs: list[torch.Tensor] = []  # every lora_A output (B, T, r)
        with self._hooks(write, a_outputs):
            with autocast(self.precision, self.device):
                losses = response_losses(self.model, input_ids, labels)  # (B,)
            # Examples do not interact (causal attention, right padding), so d(sum of losses)/d(LoRA output) at
            # example b's positions is exactly d(loss_b)/d(output): the hooks see per-example gradients.
            # Asking for the gradients of the lora_A outputs (not of the weights) drives the same backward
            # through every LoRA layer but skips the summed weight gradients, which nobody needs.
            torch.autograd.grad(losses.sum(), a_outputs)
        return finite
