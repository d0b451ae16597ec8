"""How much memory training a model takes: weights, gradients, optimizer state and activations.

One set of formulas for the engine's ``model`` event (on the loaded, adapted model), the
adapter panel's estimate (on a ``meta``-device copy built from ``config.json``, no weights in
memory; :mod:`kit.widgets.estimate`) and the engine's pre-flight check (:func:`preflight`, also on a
``meta`` copy, before anything heavy loads). Nothing here draws anything or loads weights.

What is counted is the peak resident memory of the training process (what ``ru_maxrss`` / the
OOM killer see on CPU): the tensors above plus the interpreter and the imported training stack
(:data:`RUNTIME_BYTES`) and the loss's backward workspace. bench/README.md compares it with the
measured peak RSS of every benchmark workload.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from torch import nn

from .config import ConfigError, RunConfig
from .stages.common import GALORE_TARGETS, forward_tokens

# transformers' default GaLore rank (optim_args "rank")
GALORE_RANK = 128
# Resident memory of a CPU training process before its model: the interpreter, torch, transformers'
# Trainer, TRL, peft and datasets (ru_maxrss after `import kit` and that stack: 581 MB here, torch
# 2.13 CPU, transformers 5.24, TRL 1.16) plus a tokenizer and the tokenized rows; GPU memory has none of it.
RUNTIME_BYTES = 650 * 2**20


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes of one training step's resident memory, by part."""

    weights: int
    grads: int
    optimizer: int
    activations: int
    runtime: int = 0  # the process itself (RUNTIME_BYTES on CPU) and the loss's backward workspace

    @property
    def total(self) -> int:
        return self.weights + self.grads + self.optimizer + self.activations + self.runtime

    def as_dict(self) -> dict:
        """``{weights, grads, optimizer, activations, runtime, total}`` (the ``model`` event's ``memory_estimate``)."""
        return {
            "weights": self.weights,
            "grads": self.grads,
            "optimizer": self.optimizer,
            "activations": self.activations,
            "runtime": self.runtime,
            "total": self.total,
        }


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
    targets = {
        f"{name}.weight"
        for name, mod in model.named_modules()
        if isinstance(mod, nn.Linear) and re.fullmatch(GALORE_TARGETS, name)
    }
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
    return sum(
        p.numel() * (p.element_size() if p.is_floating_point() else 4) for p in model.parameters() if p.requires_grad
    )


def _loss_is_chunked(model_config: Any, cfg: RunConfig, device: str, dtype_bytes: int) -> bool:
    from .stages.linear_ce import chunked_loss_expected

    return chunked_loss_expected(cfg, model_config, device, dtype_bytes)


def activation_bytes(model_config: Any, cfg: RunConfig, device: str = "cpu", dtype_bytes: int = 4) -> int:
    """Activations kept for backward by one forward pass of a decoder-only model (an upper bound:
    every row filled to ``cutoff_len``, every token budget full), plus what the loss keeps.

    Per token and layer autograd keeps about ``10*hidden + 3*intermediate`` values: the norm inputs
    and outputs, q/k/v and the rotated q/k, the attention output, and the MLP's gate, up, activation
    and product. Measured on SmolLM2-135M with LoRA on all linear layers (2003 tokens, fp32): 2.45 GB
    of saved tensors against 2.49 GB from this formula. Gradient checkpointing keeps only each
    layer's input plus one layer's full set during its recompute. The loss keeps the fp32
    log-softmax of the logits (``tokens x vocab``), or with the chunked LM-head loss
    (:mod:`kit.stages.linear_ce`) only the gradient of the hidden states (``tokens x hidden``).
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
    if _loss_is_chunked(model_config, cfg, device, dtype_bytes):
        return int(kept + tokens * h * dtype_bytes)
    return int(kept + tokens * vocab * 4)


def runtime_bytes(model_config: Any, cfg: RunConfig, device: str = "cpu", dtype_bytes: int = 4) -> int:
    """What the process needs besides weights, states and kept activations: the interpreter and the
    training stack (CPU only), the loss's workspace (at the start of backward the gradients of the
    log-softmax and of the logits, two more fp32 ``tokens x vocab`` buffers next to the kept
    log-softmax; with the chunked loss one chunk's logits and its softmax), and on CPU the
    allocator's fragmentation slack."""
    c = model_config.get_text_config() if hasattr(model_config, "get_text_config") else model_config
    vocab = getattr(c, "vocab_size", 0) or 0
    if _loss_is_chunked(model_config, cfg, device, dtype_bytes):
        from .stages.linear_ce import chunk_tokens

        workspace = 2 * min(forward_tokens(cfg, device), chunk_tokens(vocab)) * vocab * 4
    else:
        workspace = 2 * forward_tokens(cfg, device) * vocab * 4
    if device != "cpu":
        return workspace
    # glibc keeps freed blocks while a CPU run trains (kit.runtime.training_allocator), and passes of
    # different sizes leave them fragmented: beyond one pass's transient memory (kept activations +
    # loss workspace) the peak RSS held another 0.8-1.2x of it in runs whose every pass was full
    # (bench/memory_estimate.py: defaults, long rows 2048/4096, QLoRA; bench/README.md)
    transient = activation_bytes(model_config, cfg, device, dtype_bytes) + workspace
    return RUNTIME_BYTES + workspace + transient * 11 // 10


def estimate(
    model: nn.Module,
    cfg: RunConfig,
    *,
    device: Optional[str] = None,
    dtype_bytes: Optional[int] = None,
    quant_bits: Optional[int] = None,
) -> MemoryEstimate:
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
    return MemoryEstimate(
        weights=weight_bytes(model, dtype_bytes, quant_bits),
        grads=grad_bytes(model),
        optimizer=optimizer_state_bytes(model, cfg.train.optim),
        activations=activation_bytes(getattr(model, "config", None), cfg, device, act_bytes),
        runtime=runtime_bytes(getattr(model, "config", None), cfg, device, act_bytes),
    )


def checkpoint_bytes(model: nn.Module, cfg: RunConfig) -> int:
    """About what one checkpoint of this run writes: the trained weights (the adapter, or all weights
    of full / freeze fine-tuning) and the optimizer state; used to refuse a run directory without room."""
    trained = (
        weight_bytes(model)
        if cfg.adapter.type != "lora"
        else sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
    )
    return trained + optimizer_state_bytes(model, cfg.train.optim)


# ----------------------------------------------------------------------------- pre-flight
class WillNotFit(ConfigError):
    """The pre-flight estimate of a run exceeds the memory this machine has free; the message names
    the knob(s) that make it fit, with the estimate each gives."""


@dataclass(frozen=True)
class Preflight:
    """What :func:`preflight` decided: the estimate as configured, the memory available, and whether
    gradient checkpointing must be switched on for the step to fit (``message`` says why, or is empty)."""

    estimate: MemoryEstimate
    available: int
    enable_checkpointing: bool = False
    message: str = ""

    @property
    def fits(self) -> bool:
        return self.estimate.total <= self.available


def available_bytes(device: str) -> Optional[int]:
    """Memory a new run may use: free GPU memory, or the kernel's ``MemAvailable`` (None: unknown)."""
    if device == "cuda":
        import torch

        return torch.cuda.mem_get_info()[0] if torch.cuda.is_available() else None
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except ImportError:
        try:
            for line in open("/proc/meminfo"):
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
        except OSError:
            pass
    return None


def meta_model(cfg: RunConfig, path: str):
    """The model at ``path`` (a local directory with ``config.json``) on the ``meta`` device with the
    run's adapter attached: shapes only, no weights in memory (what the estimate needs)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from .adapters import apply_adapter
    from .runtime import deferred_bitsandbytes

    shape_cfg = cfg.replace(adapter__init="default", adapter__resume_adapter=None)
    with deferred_bitsandbytes(False), torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(path))
        return apply_adapter(model, shape_cfg)


def _gb(n: int) -> str:
    return f"{n / 2**30:.1f} GB"


def preflight(
    cfg: RunConfig,
    path: str,
    device: str,
    dtype_bytes: int,
    *,
    available: Optional[int] = None,
    model: Optional[nn.Module] = None,
) -> Optional[Preflight]:
    """Estimate a run's peak memory from its model's ``config.json`` before any weights load.

    Fits as configured: nothing to do. Does not fit but fits with gradient checkpointing (and the
    run has it off): ``enable_checkpointing`` with the reason in ``message``. Fits in no way:
    :class:`WillNotFit`, naming the knobs (gradient checkpointing, 4-bit QLoRA, bf16 weights instead
    of fp32, fewer tokens per forward pass, a shorter cutoff) with the estimate each gives. ``available`` defaults to this
    machine's free memory; None when it is unknown. ``model``: a ``meta`` model to use (tests).
    """
    available = available_bytes(device) if available is None else available
    if available is None:
        return None
    model = meta_model(cfg, path) if model is None else model
    bits = cfg.quant.bits

    def est(c: RunConfig, b=bits, nbytes=dtype_bytes) -> MemoryEstimate:
        return estimate(model, c, device=device, dtype_bytes=nbytes, quant_bits=b)

    first = est(cfg)
    if first.total <= available:
        return Preflight(first, available)
    t = cfg.train
    with_gc = cfg if t.gradient_checkpointing else cfg.replace(train__gradient_checkpointing=True)
    gc_est = est(with_gc)
    if gc_est.total <= available and not t.gradient_checkpointing:
        return Preflight(
            gc_est,
            available,
            True,
            f"memory: the step would need about {_gb(first.total)} and {_gb(available)} is free, so "
            f"gradient checkpointing is on (train.gradient_checkpointing=true: about {_gb(gc_est.total)}, "
            f"~30% slower); set a smaller train.micro_batch_tokens or data.cutoff_len to train without it",
        )
    options = []
    if not t.gradient_checkpointing:
        options.append(f"train.gradient_checkpointing=true ({_gb(gc_est.total)})")
    if bits is None and cfg.adapter.type == "lora":
        options.append(f"quant.bits=4 with gradient checkpointing ({_gb(est(with_gc, 4).total)})")
    if dtype_bytes == 4:  # fp32 weights (the CPU default): bf16 halves them (slower matmuls on most CPUs)
        options.append(f"model.dtype=bfloat16 with gradient checkpointing ({_gb(est(with_gc, nbytes=2).total)})")
    tokens = forward_tokens(cfg, device)
    for fewer in (tokens // 2, tokens // 4):
        if fewer >= 128:
            c = with_gc.replace(
                train__micro_batch_tokens=fewer,
                train__micro_batch_size=1,
                data__cutoff_len=min(cfg.data.cutoff_len, fewer),
            )
            e = est(c)
            options.append(
                f"data.cutoff_len={c.data.cutoff_len} with train.micro_batch_tokens={fewer} and "
                f"gradient checkpointing ({_gb(e.total)})"
            )
            if e.total <= available:
                break
    parts = ", ".join(f"{k} {_gb(v)}" for k, v in first.as_dict().items() if k != "total" and v)
    raise WillNotFit(
        f"will not fit: this run needs about {_gb(first.total)} ({parts}) and {_gb(available)} is "
        f"free. What makes it smaller: " + "; ".join(options) + ".",
        "train.gradient_checkpointing" if not t.gradient_checkpointing else "quant.bits",
    )


def local_model_dir(name: str) -> Optional[str]:
    """The model's directory when its ``config.json`` is already on disk (an embedded model converted
    once, or a local folder); None for a hub id or a model not converted yet (nothing is fetched)."""
    from .models.registry import resolve_model_info
    from .paths import models_dir

    info = resolve_model_info(name)
    if info is not None and info.source == "embedded":
        cached = models_dir() / info.name
        return str(cached) if (cached / "config.json").exists() else None
    p = Path(name).expanduser()
    return str(p) if (p / "config.json").is_file() else None


def checking_disabled() -> bool:
    """``FORGE_NO_PREFLIGHT=1`` skips the pre-flight memory check (e.g. to measure an over-budget run)."""
    return os.environ.get("FORGE_NO_PREFLIGHT") == "1"


__all__ = [
    "MemoryEstimate",
    "Preflight",
    "WillNotFit",
    "estimate",
    "preflight",
    "available_bytes",
    "meta_model",
    "activation_bytes",
    "runtime_bytes",
    "local_model_dir",
    "checking_disabled",
]
