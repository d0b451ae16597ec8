"""The LM head and the cross-entropy in one pass over chunks of tokens: the logits never exist whole.

A plain loss keeps the ``tokens x vocab`` logits, their log-softmax for backward, and at the start
of backward two more buffers of that size: at 2048 trained tokens and SmolLM2's 49k vocabulary that
is 1.6 GB of a 7.7 GB step, at 4096 tokens 3.2 GB. Here each chunk's logits are computed, turned
into the loss and straight into the gradient of the hidden states (``(softmax - onehot) @ W``, and
of ``W`` when it trains) and dropped; backward only scales what forward stored. The FLOPs are the
same as the plain path (the backward matmuls move into forward, nothing is computed twice), which
is how Liger's fused linear cross-entropy works on GPUs; this one is plain PyTorch for any device.

Used by the SFT stage's padding-free loss (:mod:`kit.stages.sft`) when :func:`decoder_and_head`
finds a decoder whose logits are exactly ``lm_head(hidden)`` (no soft-capping or scaling); the
memory estimate counts a step's loss memory by :func:`chunked_loss_expected`.
"""

from __future__ import annotations

from typing import Any, Optional

import torch
from torch import nn

# Model families whose causal-LM forward is ``logits = self.lm_head(self.model(...)[0])``, nothing
# else (Gemma soft-caps, Cohere/Granite scale the logits: they keep the plain path).
PLAIN_HEAD_MODELS = frozenset({"llama", "mistral", "qwen2", "qwen3", "smollm3", "olmo2"})
# floats of one chunk's logits (128 MB in fp32): small next to a step, big enough for fast matmuls
CHUNK_ELEMENTS = 32 * 2**20


def chunk_tokens(vocab: int) -> int:
    """Tokens per chunk for a vocabulary of ``vocab``."""
    return max(128, CHUNK_ELEMENTS // max(1, vocab))


def chunked_loss_expected(cfg, model_config: Any, device: str, dtype_bytes: int) -> bool:
    """Whether a run of ``cfg`` on a model of ``model_config`` will take the chunked path, decided from
    the config alone: the memory estimate (:mod:`kit.memory`) runs before any trainer or weights exist.
    The trainer's own check on the loaded model (``ForgeSFTTrainer._plain_head`` and
    :func:`decoder_and_head`) is the one that decides; the two read the same conditions: the SFT/PT
    padding-free loss, a plain-head family, no adapter or ``modules_to_save`` on ``lm_head``, no
    autocast (fp16/bf16 mixed precision on a GPU), one process."""
    from ..config import TOKENIZING
    from ..runtime import world_size
    from .common import padding_free_requested

    if cfg.stage.name not in TOKENIZING or not padding_free_requested(cfg):
        return False
    if getattr(model_config, "model_type", None) not in PLAIN_HEAD_MODELS:
        return False
    a = cfg.adapter
    targets = a.lora_target if isinstance(a.lora_target, list) else str(a.lora_target).split(",")
    if "lm_head" in {str(t).strip() for t in targets} or "lm_head" in (a.modules_to_save or []):
        return False
    autocast = device == "cuda" and dtype_bytes == 2 and not cfg.train.pure_bf16
    return not autocast and world_size() == 1


def decoder_and_head(model: nn.Module) -> Optional[tuple[nn.Module, nn.Linear]]:
    """``(decoder, lm_head)`` of ``model`` (peft-wrapped or not) when its logits are plain
    ``lm_head(hidden)``; None otherwise (a wrapped DDP/FSDP module, an adapted or biased head, a
    family that transforms its logits), and the caller keeps the model's own forward."""
    if hasattr(model, "get_base_model"):  # peft: the LoRA layers live inside the base model's modules
        model = model.get_base_model()
    config = getattr(model, "config", None)
    head, decoder = getattr(model, "lm_head", None), getattr(model, "model", None)
    if (
        getattr(config, "model_type", None) not in PLAIN_HEAD_MODELS
        or type(head) is not nn.Linear  # a LoRA layer or modules_to_save wrapper on the head: not plain
        or head.bias is not None
        or decoder is None
    ):
        return None
    return decoder, head


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, target, chunk: int, need_grad: bool):
        loss = torch.zeros((), dtype=torch.promote_types(hidden.dtype, torch.float32), device=hidden.device)
        correct = torch.zeros((), dtype=torch.long, device=hidden.device)
        grad_h = torch.empty_like(hidden) if need_grad and ctx.needs_input_grad[0] else None
        grad_w = torch.zeros_like(weight) if need_grad and ctx.needs_input_grad[1] else None
        for s in range(0, hidden.shape[0], chunk):
            h, y = hidden[s : s + chunk], target[s : s + chunk]
            logits = (h @ weight.t()).to(loss.dtype)  # as the plain path: the head's dtype, then fp32
            # the softmax in place of the logits, five passes over the chunk and no second buffer of
            # its size (logsumexp would allocate one, and the argmax pass comes with the max)
            top, best = logits.max(dim=-1)
            correct += (best == y).sum()
            shifted = logits.sub_(top[:, None])
            target_shifted = shifted.gather(1, y[:, None]).squeeze(1)
            total = shifted.exp_().sum(dim=-1)
            loss += (total.log() - target_shifted).sum()  # lse - target logit, both shifted by the max
            if grad_h is None and grad_w is None:
                continue
            probs = shifted.div_(total[:, None])
            probs[torch.arange(len(y), device=probs.device), y] -= 1.0  # d(sum of losses)/d(logits)
            g = probs.to(hidden.dtype)
            if grad_h is not None:
                torch.mm(g, weight, out=grad_h[s : s + chunk])
            if grad_w is not None:
                grad_w.addmm_(g.t(), h)
        ctx.save_for_backward(grad_h, grad_w)
        ctx.mark_non_differentiable(correct)
        return loss, correct

    @staticmethod
    def backward(ctx, grad_loss, _grad_correct):
        grad_h, grad_w = ctx.saved_tensors
        scale = grad_loss.to(grad_h.dtype if grad_h is not None else grad_w.dtype)
        return (
            None if grad_h is None else grad_h * scale,
            None if grad_w is None else grad_w * scale,
            None,
            None,
            None,
        )


def linear_cross_entropy(
    hidden: torch.Tensor, weight: torch.Tensor, target: torch.Tensor, chunk: Optional[int] = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(sum of the cross-entropies of hidden @ weight.T against target, correct argmaxes)``.

    ``hidden`` [n, h], ``weight`` [vocab, h], ``target`` [n] (every position a target). Equal to
    ``F.cross_entropy((hidden @ weight.T).float(), target, reduction="sum")`` and its gradients, to
    float rounding; differentiable once (the loss is meant to be backpropagated as it is returned,
    scaled by any constant)."""
    need = torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad)
    return _LinearCrossEntropy.apply(hidden, weight, target, chunk or chunk_tokens(weight.shape[0]), need)
