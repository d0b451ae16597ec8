"""RoPE scaling (``model.rope_scaling``): train and chat past the model's context length.

Rotary position embeddings are trained for ``max_position_embeddings`` positions. Linear (position
interpolation), dynamic (NTK-aware, grows with the sequence) and YaRN scaling stretch them by a
factor; ours is ``ceil(data.cutoff_len / max_position_embeddings)``, as LLaMA-Factory sets it, and
nothing changes when the cutoff already fits. transformers (5.x) reads the scaling from
``config.rope_parameters`` when it builds a model's rotary embedding, so after changing the config
we rebuild those modules; the config is saved with full weights, and a LoRA run's base is loaded
with the same ``cfg`` for chat, so both see the stretched positions.
"""

from __future__ import annotations

import math
from typing import Any

from torch import nn

__all__ = ["rope_factor", "apply_rope_scaling"]


def _text_config(config: Any) -> Any:
    return config.get_text_config() if hasattr(config, "get_text_config") else config


def rope_factor(model_config: Any, cutoff_len: int) -> float:
    """The scaling factor for ``cutoff_len`` tokens (1.0: the context already fits)."""
    ctx = getattr(_text_config(model_config), "max_position_embeddings", None)
    if not ctx or cutoff_len <= ctx:
        return 1.0
    return float(math.ceil(cutoff_len / ctx))


def apply_rope_scaling(model: nn.Module, cfg: Any) -> nn.Module:
    """Set ``cfg.model.rope_scaling`` on the model's config and rebuild its rotary embeddings."""
    kind = cfg.model.rope_scaling
    if kind is None:
        return model
    c = _text_config(model.config)
    params = getattr(c, "rope_parameters", None)
    if params is None:
        raise ValueError(
            f"model.rope_scaling={kind}: this model ({getattr(c, 'model_type', '?')}) has no rotary "
            "position embeddings to scale"
        )
    factor = rope_factor(c, cfg.data.cutoff_len)
    if factor <= 1.0:
        return model
    original = c.max_position_embeddings
    new = dict(params, rope_type=kind, factor=factor)
    if kind in ("yarn", "dynamic"):
        new["original_max_position_embeddings"] = original
    c.rope_parameters = new
    c.max_position_embeddings = int(original * factor)
    for name, mod in list(model.named_modules()):
        if type(mod).__name__.endswith("RotaryEmbedding") and hasattr(mod, "inv_freq"):
            parent = model.get_submodule(name.rsplit(".", 1)[0]) if "." in name else model
            fresh = type(mod)(config=mod.config).to(mod.inv_freq.device)
            setattr(parent, name.rsplit(".", 1)[-1], fresh)
    return model
