"""LongLoRA's shift-short attention (S²-attn, ``model.shift_attn``) for padding-free batches.

LongLoRA (Chen et al., 2024) trains long contexts cheaply by attending within groups of G tokens
only, with half of the heads' groups shifted by G/2 so information flows between neighbouring
groups; inference keeps full attention. LLaMA-Factory patches llama's attention for padded batches;
ours is an attention function (registered with transformers like :mod:`kit.models.attention`'s
``forge_varlen``) over our padding-free rows: each example (between ``cu_seq_lens`` bounds) is cut
into groups of G tokens from its start, the shifted heads' groups start G/2 later, and each group
runs causal SDPA. Without ``cu_seq_lens`` (generation, padded evaluation) it is plain SDPA, full
attention, as LongLoRA's inference is. G is ``config.forge_s2_group`` (set by :func:`use_s2attn`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .attention import register_attention

NAME = "forge_s2attn"
GROUP_ATTR = "forge_s2_group"  # on the model config: the group size G
SHIFT_ATTR = "forge_s2_shift"  # on the model config: shift half the heads (False only to compare)

__all__ = ["NAME", "s2_attention", "s2_sdpa_forward", "register", "use_s2attn", "group_size"]


def group_size(cutoff_len: int, group: int) -> int:
    """The group size: ``group``, or a quarter of the cutoff (LongLoRA's and LLaMA-Factory's ratio) when 0."""
    return group or max(cutoff_len // 4, 1)


def _bounds(s: int, e: int, g: int, offset: int) -> list[tuple[int, int]]:
    cuts = [s] + list(range(s + offset if offset else s + g, e, g)) + [e]
    cuts = sorted(set(c for c in cuts if s <= c <= e))
    return [(a, b) for a, b in zip(cuts[:-1], cuts[1:]) if b > a]


def s2_attention(query, key, value, cu: list[int], g: int, shift: bool = True, scaling=None, dropout: float = 0.0):
    """query/key/value ``(1, heads, T, d)`` (key/value already repeated to the query heads); returns
    ``(1, heads, T, d)``: causal attention inside each example's groups of ``g`` tokens, the second
    half of the heads' groups shifted by ``g // 2`` when ``shift``."""
    heads = query.shape[1]
    half = heads // 2 if shift else heads
    out = torch.empty_like(query)
    for hs, he, offset in ((0, half, 0), (half, heads, g // 2)):
        if he <= hs:
            continue
        for s, e in zip(cu[:-1], cu[1:]):
            for a, b in _bounds(s, e, g, offset):
                out[:, hs:he, a:b] = F.scaled_dot_product_attention(
                    query[:, hs:he, a:b],
                    key[:, hs:he, a:b],
                    value[:, hs:he, a:b],
                    dropout_p=dropout,
                    is_causal=True,
                    scale=scaling,
                )
    return out


def s2_sdpa_forward(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
    from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward

    cu = kwargs.pop("cu_seq_lens_q", None)
    kwargs.pop("cu_seq_lens_k", None)
    for k in ("max_length_q", "max_length_k"):
        kwargs.pop(k, None)
    if cu is None or query.shape[0] != 1 or query.shape[2] != key.shape[2]:
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
    n_rep = query.shape[1] // key.shape[1]
    key, value = repeat_kv(key, n_rep), repeat_kv(value, n_rep)
    bounds = cu.tolist()
    if bounds[-1] < query.shape[2]:
        bounds.append(query.shape[2])
    g = getattr(module.config, GROUP_ATTR)
    shift = getattr(module.config, SHIFT_ATTR, True)
    drop = dropout if module.training else 0.0
    out = s2_attention(query, key, value, bounds, g, shift=shift, scaling=scaling, dropout=drop)
    return out.transpose(1, 2).contiguous(), None


def register() -> str:
    return register_attention(NAME, s2_sdpa_forward)


def use_s2attn(model, group: int, shift: bool = True) -> None:
    """Switch a (PEFT-wrapped) model to S²-attn with group size ``group`` (training batches only)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    register()
    setattr(base.config, GROUP_ATTR, int(group))
    setattr(base.config, SHIFT_ATTR, bool(shift))
    base.set_attn_implementation(NAME)
