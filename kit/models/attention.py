"""``forge_varlen``: attention for padding-free packed batches on any device, without flash-attn.

Packed training rows hold several examples back to back. Isolating them with a dense
block-diagonal mask (the portable way) makes every layer score ``L x L`` query/key pairs although
only ``sum(n_i^2)`` are allowed, and the masked kernel is the slow path of SDPA on CPU.
flash-attn's varlen kernels solve this on NVIDIA GPUs only. This attention function takes the
same inputs flash-attn does (``cu_seq_lens_q``/``cu_seq_lens_k``, which transformers passes
from the model's forward kwargs down to every attention layer) and runs SDPA once per example
with ``is_causal=True``, so each example sees exactly its own tokens and the fast causal kernel is
used. Without those kwargs (generation, evaluation on padded batches) it is plain SDPA with the
usual mask, so a model can keep this implementation for everything.

Registered with transformers' :class:`~transformers.AttentionInterface` (and the SDPA mask
builder under the same name), so ``model.set_attn_implementation("forge_varlen")`` selects it.
"""

from __future__ import annotations

import torch

NAME = "forge_varlen"
_registered: set[str] = set()  # names already registered with transformers


def varlen_sdpa_forward(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
    """query/key/value: ``(1, heads, total_tokens, head_dim)``; returns ``(1, total_tokens, heads, head_dim)``."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    cu = kwargs.pop("cu_seq_lens_q", None)
    cu_k = kwargs.pop("cu_seq_lens_k", None)
    for k in ("max_length_q", "max_length_k"):
        kwargs.pop(k, None)
    if cu is None or query.shape[0] != 1 or query.shape[2] != key.shape[2]:
        # not a padding-free training batch (e.g. generation with a KV cache): plain SDPA
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
    if cu_k is not None and not torch.equal(cu, cu_k):
        raise ValueError("forge_varlen needs cu_seq_lens_q == cu_seq_lens_k (self-attention over packed examples)")
    bounds = cu.tolist()
    if bounds[-1] < query.shape[2]:
        bounds.append(query.shape[2])  # trailing padding, if a caller added any, forms its own block
    outs = []
    for s, e in zip(bounds[:-1], bounds[1:]):
        if e <= s:
            continue
        out, _ = sdpa_attention_forward(
            module,
            query[:, :, s:e],
            key[:, :, s:e],
            value[:, :, s:e],
            None,
            dropout=dropout,
            scaling=scaling,
            is_causal=True,
            **kwargs,
        )
        outs.append(out)
    return torch.cat(outs, dim=1), None


def register_attention(name: str, forward) -> str:
    """Make ``name`` a valid ``attn_implementation`` running ``forward`` (idempotent); returns the name.

    The mask builder only matters on the fallback path (padded batches): SDPA's own.
    """
    if name not in _registered:
        from transformers import AttentionInterface
        from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

        AttentionInterface.register(name, forward)
        AttentionMaskInterface.register(name, sdpa_mask)
        _registered.add(name)
    return name


def register() -> str:
    """Make ``forge_varlen`` a valid ``attn_implementation`` (idempotent); returns the name."""
    return register_attention(NAME, varlen_sdpa_forward)


def use_varlen(model) -> bool:
    """Switch a (PEFT-wrapped) model from SDPA/eager to ``forge_varlen``; False if it keeps another kernel.

    flash-attention kernels already take ``cu_seq_lens`` natively and stay as they are.
    """
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    current = getattr(base.config, "_attn_implementation", None)
    if current in ("flash_attention_2", "flash_attention_3", NAME):
        return True
    if current not in ("sdpa", "eager"):
        return False
    register()
    base.set_attn_implementation(NAME)
    return True
