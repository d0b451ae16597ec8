"""How much memory training a model takes: weights, gradients, optimizer state and activations.

One set of formulas for the engine's ``model`` event (on the loaded, adapted model) and the
adapter panel's estimate (on a ``meta``-device copy built from ``config.json``, no weights in
memory; :mod:`kit.widgets.estimate`). Nothing here draws anything or loads anything.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Optional

from torch import nn

from .config import RunConfig
from .stages.common import GALORE_TARGETS, forward_tokens

# transformers' default GaLore rank (optim_args "rank")
GALORE_RANK = 128


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes of one training step's resident memory, by part."""

    weights: int
    grads: int
    optimizer: int
    activations: int

    @property
    def total(self) -> int:
        return self.weights + self.grads + self.optimizer + self.activations

    def as_dict(self) -> dict:
        """``{weights, grads, optimizer, activations, total}`` (the ``model`` event's ``memory_estimate``)."""
        return {"weights": self.weights, "grads": self.grads, "optimizer": self.optimizer,
                "activations": self.activations, "total": self.total}


def param_counts(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameters; 4-bit weights count as their logical size."""
    trainable = total = 0
    for p in model.parameters():
        n = p.numel()
        if type(p).__name__ == "Params4bit":
            n *= 2  # two 4-bit values per stored byte
        total += n
        if p.requires_grad:
            trainable += n
    return trainable, total


def weight_bytes(model: nn.Module, dtype_bytes: Optional[int] = None, quant_bits: Optional[int] = None) -> int:
    """Bytes of the parameters as stored.

    A loaded model: each tensor's own element size (a quantized one already holds packed bytes).
    A ``meta`` model standing for a run that has not loaded yet: ``dtype_bytes`` per value, and with
    ``quant_bits`` the frozen linear weights inside the decoder blocks at that many bits (what
    bitsandbytes quantizes).
    """
    total = 0.0
    for name, p in model.named_parameters():
        per = dtype_bytes or p.element_size()
        if quant_bits and not p.requires_grad and p.dim() == 2 and ".layers." in name:
            per = quant_bits / 8
        total += p.numel() * per
    return int(total)


def _galore_state_bytes(model: nn.Module) -> int:
    """Adam states under GaLore: each targeted (m, n) matrix keeps its two moments in the projected
    space, r x max(m, n), plus the projection matrix, r x min(m, n) (r capped at min(m, n)); the
    other trainable parameters keep full AdamW states."""
    targets = {f"{name}.weight" for name, mod in model.named_modules()
               if isinstance(mod, nn.Linear) and re.fullmatch(GALORE_TARGETS, name)}
    total = 0
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if name in targets and p.dim() == 2:
            m, n = p.shape
            r = min(GALORE_RANK, m, n)
            total += 4 * (2 * r * max(m, n) + r * min(m, n))
        else:
            total += 8 * p.numel()
    return total


def optimizer_state_bytes(model: nn.Module, optim: str) -> int:
    """Bytes of optimizer state for the trainable parameters (works on a ``meta`` model too).

    AdamW: two fp32 moments per parameter; bitsandbytes' 8-bit AdamW: two 1-byte moments plus an
    fp32 scale per block of 256, but fp32 moments for tensors under 4096 values (its
    ``min_8bit_size``); SGD as transformers builds it (no momentum): none;
    Adafactor (no first moment by default): a row and a column factor per matrix, a full second
    moment for vectors; GaLore: see :func:`_galore_state_bytes`.
    """
    if optim in ("galore_adamw", "apollo_adamw"):  # APOLLO keeps its moments in the same projected space
        return _galore_state_bytes(model)
    if optim == "muon":
        from .optimizers import muon_state_bytes
        return muon_state_bytes(model)
    if optim in ("adam_mini", "badam"):  # one moment per weight; one block of layers at a time (kit.optimizers)
        from .optimizers import adam_mini_state_bytes, badam_state_bytes
        return (adam_mini_state_bytes if optim == "adam_mini" else badam_state_bytes)(model)
    total = 0
    for p in model.parameters():
        if not p.requires_grad:
            continue
        n = p.numel()
        if optim == "adafactor":
            total += 4 * (sum(p.shape[-2:]) if p.dim() >= 2 else n)
        elif optim == "adamw_8bit":
            total += 2 * (n + 4 * -(-n // 256)) if n >= 4096 else 8 * n
        elif optim != "sgd":  # torch's AdamW keeps its moments in the weights' dtype (bf16 ones: pure bf16)
            total += 2 * max(p.element_size(), 2) * n if p.is_floating_point() else 8 * n
    return total


def grad_bytes(model: nn.Module) -> int:
    """Gradients of the trainable parameters, in their dtype (fp32; bf16 under train.pure_bf16)."""
    return sum(p.numel() * (p.element_size() if p.is_floating_point() else 4)
               for p in model.parameters() if p.requires_grad)


def activation_bytes(model_config: Any, cfg: RunConfig, device: str = "cpu", dtype_bytes: int = 4) -> int:
    """Activations kept for backward by one forward pass of a decoder-only model (an upper bound:
    every row filled to ``cutoff_len``, every token budget full), plus the log-softmax over the
    vocabulary of its positions.

    Per token and layer autograd keeps about ``10*hidden + 3*intermediate`` values: the norm inputs
    and outputs, q/k/v and the rotated q/k, the attention output, and the MLP's gate, up, activation
    and product. Measured on SmolLM2-135M with LoRA on all linear layers (2003 tokens, fp32): 2.45 GB
    of saved tensors against 2.49 GB from this formula. Gradient checkpointing keeps only each
    layer's input plus one layer's full set during its recompute.
    """
    c = model_config.get_text_config() if hasattr(model_config, "get_text_config") else model_config
    h, i = getattr(c, "hidden_size", None), getattr(c, "intermediate_size", None)
    layers, vocab = getattr(c, "num_hidden_layers", None), getattr(c, "vocab_size", 0)
    if not (h and i and layers):
        return 0
    tokens = forward_tokens(cfg, device)
    per_layer = (10 * h + 3 * i) * dtype_bytes
    if cfg.train.gradient_checkpointing:
        # every layer's input and the final norm's, plus one layer while it is recomputed
        kept = tokens * (h * dtype_bytes * (layers + 1) + per_layer)
    else:
        kept = tokens * per_layer * layers
    return int(kept + tokens * vocab * 4)  # the fp32 log-softmax of the logits, kept by the loss


def estimate(model: nn.Module, cfg: RunConfig, *, device: Optional[str] = None, dtype_bytes: Optional[int] = None,
             quant_bits: Optional[int] = None) -> MemoryEstimate:
    """Training memory of ``model`` (adapter attached) under ``cfg``.

    A loaded model needs nothing else: device and activation precision come from its parameters.
    A ``meta`` model gives ``device``, ``dtype_bytes`` and ``quant_bits`` of the run it stands for.
    """
    p = next(model.parameters(), None)
    if device is None:
        device = p.device.type if p is not None else "cpu"
    if dtype_bytes is not None:
        act_bytes = dtype_bytes
    else:  # activations are computed in the weights' float type (quantized weights: fp32 here)
        act_bytes = 4 if p is None or not p.is_floating_point() else min(p.element_size(), 4)
    return MemoryEstimate(weights=weight_bytes(model, dtype_bytes, quant_bits), grads=grad_bytes(model),
                          optimizer=optimizer_state_bytes(model, cfg.train.optim),
                          activations=activation_bytes(getattr(model, "config", None), cfg, device, act_bytes))


def checkpoint_bytes(model: nn.Module, cfg: RunConfig) -> int:
    """About what one checkpoint of this run writes: the trained weights (the adapter, or all weights
    of full / freeze fine-tuning) and the optimizer state; used to refuse a run directory without room."""
    trained = weight_bytes(model) if cfg.adapter.type != "lora" else \
        sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
    return trained + optimizer_state_bytes(model, cfg.train.optim)
