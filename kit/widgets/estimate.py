"""Trainable parameters and training memory for a config, without loading any weights.

The model is built on PyTorch's ``meta`` device from its ``config.json`` (shapes only, no memory),
the real adapter code (:func:`kit.adapters.apply_adapter`, so peft itself) is applied, and the
parameters are counted with the engine's formulas (:mod:`kit.memory`). Results are cached per (model, adapter settings).
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Optional

from ..config import RunConfig
from ..models.registry import resolve_model_info
from ..paths import models_dir
from ..rundir import RunDir


def local_model_dir(name: str) -> Optional[str]:
    """The model's directory if it is already on disk (never downloads or converts anything)."""
    info = resolve_model_info(name)
    if info is not None and info.source == "embedded":
        cached = models_dir() / info.name
        return str(cached) if (cached / "config.json").exists() else None
    p = Path(name).expanduser()
    if RunDir.is_run_dir(p):  # the weights the run trained (a LoRA run: its base model's shapes)
        try:
            return local_model_dir(RunDir(p).weights().model)
        except (OSError, ValueError):  # no final weights yet, or an unreadable config.yaml
            return None
    return str(p) if (p / "config.json").is_file() else None


def model_type(path: str) -> str:
    try:
        return json.loads((Path(path) / "config.json").read_text()).get("model_type", "?")
    except (OSError, ValueError):
        return "?"


@functools.lru_cache(maxsize=8)
def _meta_model_config(path: str):
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(path)  # local dir only; trust_remote_code stays off


def _bytes_per(dtype_name: str) -> int:
    return {"float32": 4, "bfloat16": 2, "float16": 2}.get(dtype_name, 4)


@functools.lru_cache(maxsize=64)
def _estimate(path: str, adapter_yaml: str, bits: Optional[int], optim: str, dtype_name: str) -> dict:
    # torch's meta device, peft and kit.memory load when the panel first estimates, not with the widgets
    import torch
    from transformers import AutoModelForCausalLM

    from .. import memory
    from ..runtime import deferred_bitsandbytes

    cfg = RunConfig.from_yaml_text(adapter_yaml)
    # peft imports bitsandbytes (whose CPU back end warns on import) when first imported and when it
    # attaches LoRA layers; counting shapes needs neither (quantization is counted in bytes below)
    with deferred_bitsandbytes(False), torch.device("meta"):
        from ..adapters import apply_adapter

        model = AutoModelForCausalLM.from_config(_meta_model_config(path))
        model = apply_adapter(model, cfg)
    trainable, total = memory.param_counts(model)
    # the engine's own formulas; bitsandbytes would quantize the frozen linear layers to `bits`
    weights = memory.weight_bytes(model, dtype_bytes=_bytes_per(dtype_name), quant_bits=bits)
    grads, states = memory.grad_bytes(model), memory.optimizer_state_bytes(model, optim)
    return {
        "trainable": trainable,
        "total": total,
        "weights_bytes": weights,
        "grads_bytes": grads,
        "optimizer_bytes": states,
        "total_bytes": weights + grads + states,
    }


def estimate(cfg: RunConfig) -> dict:
    """``{trainable, total, weights_bytes, grads_bytes, optimizer_bytes, activations_bytes, runtime_bytes, total_bytes}``.

    Raises FileNotFoundError when the model is not on disk yet (hub ids are never fetched here).
    """
    from ..models.loading import pick_device, pick_dtype

    path = local_model_dir(cfg.model.name)
    if path is None:
        raise FileNotFoundError(f"'{cfg.model.name}' is not on disk yet; the estimate appears after the first load")
    # initialisation and stacking do not change the shapes; quantization is counted in bytes below
    shape_cfg = RunConfig.from_dict(
        {"adapter": {**cfg.to_dict()["adapter"], "init": "default", "resume_adapter": None}}
    )
    device = pick_device(cfg.model.device)
    dtype_name = str(pick_dtype(cfg.model.dtype, device)).replace("torch.", "")
    e = dict(_estimate(path, shape_cfg.to_yaml(), cfg.quant.bits, cfg.train.optim, dtype_name))
    from ..memory import activation_bytes, runtime_bytes

    model_config = _meta_model_config(path)
    e["activations_bytes"] = activation_bytes(model_config, cfg, device, _bytes_per(dtype_name))
    # the process itself and the loss's backward workspace: the same total the engine's model event reports
    e["runtime_bytes"] = runtime_bytes(model_config, cfg, device, _bytes_per(dtype_name))
    e["total_bytes"] += e["activations_bytes"] + e["runtime_bytes"]
    return e


def human(n: float, unit: str = "") -> str:
    for div, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if abs(n) >= div:
            return f"{n / div:.2f}{suffix}{unit}"
    return f"{n:.0f}{unit}"


def human_bytes(n: float) -> str:
    for div, suffix in ((2**30, "GiB"), (2**20, "MiB"), (2**10, "KiB")):
        if n >= div:
            return f"{n / div:.1f} {suffix}"
    return f"{n:.0f} B"
