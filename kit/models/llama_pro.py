"""LLaMA Pro block expansion (``adapter.llama_pro_blocks``): add decoder blocks, train only them.

LLaMA Pro (Wu et al., 2024) interleaves N copies of existing decoder blocks, one after every
``num_layers / N`` original blocks, with their attention output and MLP down projections zeroed:
each new block starts as the identity (its residual branches add 0), so the expanded model computes
exactly what the original did, and training only the new blocks adds knowledge without touching the
old weights. LLaMA-Factory ships this as an offline script plus ``use_llama_pro``; we expand the
loaded model in memory, and the final save (full weights, ``num_hidden_layers`` updated) is the
expanded model.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

__all__ = ["expand_blocks", "train_new_blocks_only", "ZEROED"]

# the projections that write into the residual stream: zeroed, the new block is the identity
ZEROED = ("o_proj", "down_proj")


def _decoder(model: nn.Module) -> nn.Module:
    """The module holding ``layers`` (LlamaModel inside LlamaForCausalLM)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    inner = getattr(base, "model", base)
    if not isinstance(getattr(inner, "layers", None), nn.ModuleList):
        raise ValueError("adapter.llama_pro_blocks needs a decoder-only model with model.layers (llama family)")
    return inner


def expand_blocks(model: nn.Module, n_new: int) -> list[int]:
    """Insert ``n_new`` identity-initialised copies; returns the indices of the new blocks."""
    decoder = _decoder(model)
    layers = decoder.layers
    n = len(layers)
    if n_new <= 0 or n % n_new != 0:
        raise ValueError(
            f"adapter.llama_pro_blocks={n_new} must divide the model's {n} decoder layers "
            "(one new block after every num_layers / llama_pro_blocks)"
        )
    every = n // n_new
    out, new_ids = [], []
    for i, layer in enumerate(layers):
        out.append(layer)
        if (i + 1) % every == 0:
            block = copy.deepcopy(layer)
            for name, mod in block.named_modules():
                if name.rsplit(".", 1)[-1] in ZEROED and isinstance(mod, nn.Linear):
                    with torch.no_grad():
                        mod.weight.zero_()
                        if mod.bias is not None:
                            mod.bias.zero_()
            new_ids.append(len(out))
            out.append(block)
    for idx, layer in enumerate(out):  # the KV cache is indexed by layer_idx
        for mod in layer.modules():
            if hasattr(mod, "layer_idx"):
                mod.layer_idx = idx
    decoder.layers = nn.ModuleList(out)
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    config.num_hidden_layers = len(out)
    if getattr(config, "layer_types", None):  # per-layer attention kinds (sliding / full) follow their copies
        types = []
        for i, kind in enumerate(config.layer_types):
            types += [kind, kind] if (i + 1) % every == 0 else [kind]
        config.layer_types = types
    return new_ids


def train_new_blocks_only(model: nn.Module, new_ids: list[int], extra: list[str] = ()) -> nn.Module:
    """requires_grad on the new blocks' parameters (and any ``extra`` top-level modules) only."""
    keep = {f".layers.{i}." for i in new_ids}
    for name, p in model.named_parameters():
        train = any(k in name for k in keep) or any(name.startswith(e + ".") or f".{e}." in name for e in extra)
        p.requires_grad_(train)
    return model
