"""Fine-tuning types: full, freeze (some layers), LoRA and its variants (peft underneath)."""

from __future__ import annotations

import dataclasses
import re
import warnings
from typing import Any

import torch
from peft import LoftQConfig, LoraConfig, OFTConfig, PeftModel, get_peft_model, prepare_model_for_kbit_training
from peft.optimizers import create_loraplus_optimizer
from torch import nn

from .config import AdapterConfig, ConfigError, RunConfig
from .models.llama_pro import expand_blocks, train_new_blocks_only
from .models.loading import check_weight_format
from .models.new_tokens import NEW_TOKEN_MODULES
from .optimizers import build_own_optimizer
from .rundir import find_adapter_dir

# peft (0.21) reads transformers' deprecated ``is_gradient_checkpointing`` whenever it wraps a model: a
# FutureWarning about peft's code, not ours, that a learner cannot act on (tests/test_notebooks_output.py)
warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)

# output heads, left out of the linear layers an error message offers as targets
HEAD_NAMES = ("lm_head", "score", "classifier", "v_head", "output", "embed_out")


def _as_list(x: Any) -> list[str]:
    if x is None:
        return []
    if isinstance(x, str):
        return [s.strip() for s in x.split(",") if s.strip()]
    return list(x)


def linear_module_names(model: nn.Module) -> list[str]:
    """Distinct leaf names of linear layers (including bitsandbytes ones), heads excluded."""
    names = set()
    for full, mod in model.named_modules():
        leaf = full.rsplit(".", 1)[-1]
        is_linear = isinstance(mod, nn.Linear) or type(mod).__name__ in ("Linear4bit", "Linear8bitLt")
        if is_linear and leaf not in HEAD_NAMES:
            names.add(leaf)
    return sorted(names)


def lora_targets(model: nn.Module, target: Any) -> str | list[str]:
    """peft's ``target_modules``: ``"all-linear"`` for ``all`` (every linear layer except the output
    head, which peft finds through the model itself), or the named modules, which must exist."""
    t = _as_list(target)
    if t == ["all"]:
        return "all-linear"
    missing = [n for n in t if not any(full.endswith(n) for full, _ in model.named_modules())]
    if missing:  # needs the loaded model, so it is checked here and not by the config's validator
        raise ConfigError(
            f"no module named {missing} in this model; its linear layers are {linear_module_names(model)} (or 'all').",
            "adapter.lora_target",
        )
    return t


def lora_config(model: nn.Module, a: AdapterConfig, task_type: str = "CAUSAL_LM") -> LoraConfig:
    init: Any = True
    extra: dict = {}
    if a.init == "gaussian":
        init = "gaussian"
    elif a.init == "pissa":
        init = "pissa"
    elif a.init == "loftq":
        init = "loftq"
        extra["loftq_config"] = LoftQConfig(loftq_bits=4)
    tied = bool(getattr(getattr(model, "config", None), "tie_word_embeddings", False))
    if tied and set(_as_list(a.modules_to_save)) & {"lm_head", "embed_tokens"}:
        # training a tied head alone would silently untie it from the embeddings; keep them one matrix
        extra["ensure_weight_tying"] = True
    return LoraConfig(
        r=a.lora_rank,
        lora_alpha=a.lora_alpha or 2 * a.lora_rank,
        lora_dropout=a.lora_dropout,
        target_modules=lora_targets(model, a.lora_target),
        modules_to_save=a.modules_to_save,
        use_dora=a.use_dora,
        use_rslora=a.use_rslora,
        init_lora_weights=init,
        task_type=task_type,
        **extra,
    )


def oft_config(model: nn.Module, a: AdapterConfig, task_type: str = "CAUSAL_LM") -> OFTConfig:
    """peft OFT (orthogonal fine-tuning) on the same targets as LoRA: each targeted weight is multiplied by a
    block-diagonal orthogonal matrix of ``oft_block_size`` blocks, which keeps the angles between its neurons."""
    return OFTConfig(
        r=0,
        oft_block_size=a.oft_block_size,
        target_modules=lora_targets(model, a.lora_target),
        modules_to_save=a.modules_to_save,
        task_type=task_type,
    )


def _freeze(model: nn.Module, a: AdapterConfig) -> nn.Module:
    """Train only the last (or first, if negative) n decoder layers, optionally only some modules in them.

    The config's validator has refused 0; what needs the model (its number of layers) is checked here."""
    n_layers = getattr(model.config, "num_hidden_layers", None)
    if not n_layers:
        raise ConfigError(
            "freeze needs a model with config.num_hidden_layers (decoder layers to choose from); "
            "use adapter.type=lora or full for this model.",
            "adapter.type",
        )
    k = a.freeze_trainable_layers
    if abs(k) > n_layers:
        raise ConfigError(
            f"must be in [-{n_layers}, {n_layers}] (this model has {n_layers} layers) and not 0, got {k}.",
            "adapter.freeze_trainable_layers",
        )
    layer_ids = list(range(n_layers - k, n_layers)) if k > 0 else list(range(0, -k))
    modules = _as_list(a.freeze_trainable_modules)
    extra = _as_list(a.freeze_extra_modules)
    pat = re.compile(r"\.layers\.(\d+)\.")
    for name, p in model.named_parameters():
        m = pat.search(name)
        train = False
        if m and int(m.group(1)) in layer_ids:
            train = modules == ["all"] or any(f".{mod}." in name or name.endswith(f".{mod}.weight") for mod in modules)
        if any(name.startswith(e + ".") or f".{e}." in name for e in extra):
            train = True
        p.requires_grad_(train)
    return model


def apply_adapter(model: nn.Module, cfg: RunConfig, task_type: str = "CAUSAL_LM") -> nn.Module:
    """Return the model ready to train as ``cfg.adapter`` says (a PeftModel for LoRA)."""
    a = cfg.adapter
    quantized = cfg.quant.bits is not None
    if a.type == "full":
        for p in model.parameters():
            p.requires_grad_(True)
        return model
    if a.type == "freeze" and a.llama_pro_blocks:
        return train_new_blocks_only(model, expand_blocks(model, a.llama_pro_blocks), _as_list(a.freeze_extra_modules))
    if a.type == "freeze":
        return _freeze(model, a)
    if cfg.model.new_special_tokens and a.type in ("lora", "oft"):  # the new rows must train and be saved
        a = dataclasses.replace(a, modules_to_save=sorted(set(_as_list(a.modules_to_save)) | set(NEW_TOKEN_MODULES)))
    if a.type == "oft":
        return get_peft_model(model, oft_config(model, a, task_type))
    if quantized:
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=cfg.train.gradient_checkpointing)
    if cfg.train.gradient_checkpointing:
        model.enable_input_require_grads()
    if a.resume_adapter:
        # stacking: merge the trained adapter into the base (unquantized: a rule of the config), then
        # train a fresh one on top
        stacked = find_adapter_dir(a.resume_adapter)
        check_weight_format(stacked, cfg.model.allow_pickle)
        model = PeftModel.from_pretrained(model, str(stacked)).merge_and_unload()
    return get_peft_model(model, lora_config(model, a, task_type))


def build_optimizer(model: nn.Module, cfg: RunConfig):
    """LoRA+ (adapter.loraplus_lr_ratio): peft's AdamW in which the lora_B weights (and other
    vectors) learn ``ratio`` x faster than lora_A, with ``train.weight_decay`` on the weight matrices.

    Returns None when LoRA+ is off (the trainer then builds its own optimizer from train.optim).
    """
    own = build_own_optimizer(model, cfg)  # muon, adam_mini, badam (kit.optimizers)
    if own is not None:
        return own
    ratio = cfg.adapter.loraplus_lr_ratio
    if not ratio:  # the validator allows it only with adapter.type=lora and adamw_torch
        return None
    if not any(p.requires_grad and "lora_B" in n for n, p in model.named_parameters()):  # needs the model
        raise ConfigError("is set but the model has no trainable lora_B weights.", "adapter.loraplus_lr_ratio")
    opt = create_loraplus_optimizer(
        model,
        torch.optim.AdamW,
        lr=cfg.train.learning_rate,
        loraplus_lr_ratio=ratio,
        loraplus_weight_decay=cfg.train.weight_decay,
    )
    # peft always makes four groups (A, embeddings, B, B without decay); the empty ones would only
    # add entries to every learning-rate log and scheduler list
    opt.param_groups[:] = [g for g in opt.param_groups if g["params"]]
    return opt
