"""What every stage recipe shares: the context it is given and the common trainer arguments."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch

from ..config import TOKENIZING, RunConfig
from ..launch import distributed_args
from ..models import load_model
from ..rundir import RunDir
from ..runtime import world_size
from ..tracking import tracker_args


@dataclass
class StageContext:
    cfg: RunConfig
    model: Any  # with the adapter applied (PeftModel for LoRA)
    tokenizer: Any
    run_dir: Path
    device: str
    dtype: torch.dtype
    callbacks: list = field(default_factory=list)
    emit: Any = None  # emit(kind, **data): send an engine event from a recipe
    loaded: Any = None  # kit.models.LoadedModel


def _checkpointing_arg() -> str:
    """TrainingArguments' name for activation (gradient) checkpointing: recent transformers 5.x renamed
    ``gradient_checkpointing`` to ``activation_checkpointing`` (the old name warns); earlier 5.x know only the old one."""
    from transformers import TrainingArguments

    return (
        "activation_checkpointing"
        if "activation_checkpointing" in TrainingArguments.__dataclass_fields__
        else "gradient_checkpointing"
    )


def base_training_args(cfg: RunConfig, run_dir: Path, device: str, dtype: torch.dtype) -> dict:
    """Keyword arguments shared by every TRL config class (they all extend TrainingArguments)."""
    t = cfg.train
    kw: dict[str, Any] = dict(
        output_dir=str(RunDir(run_dir).checkpoints_dir),
        max_steps=t.max_steps,
        num_train_epochs=t.num_epochs,
        per_device_train_batch_size=t.batch_size,
        per_device_eval_batch_size=t.batch_size,
        gradient_accumulation_steps=t.grad_accum,
        learning_rate=t.learning_rate,
        lr_scheduler_type=t.lr_scheduler,
        warmup_steps=t.warmup_ratio,  # a float below 1 is a ratio in transformers 5
        weight_decay=t.weight_decay,
        max_grad_norm=t.max_grad_norm,
        # muon, adam_mini, badam: kit.optimizers builds them and the recipe hands them to the trainer (placeholder name)
        optim={
            "adamw_8bit": "adamw_bnb_8bit",
            "galore_adamw": "galore_adamw",
            "muon": "adamw_torch",
            "adam_mini": "adamw_torch",
            "badam": "adamw_torch",
        }.get(t.optim, t.optim),
        seed=t.seed,
        data_seed=t.seed,
        logging_steps=t.logging_steps,
        logging_first_step=True,
        save_strategy="steps" if t.save_steps else "no",
        save_steps=t.save_steps or 500,
        eval_strategy="steps" if t.eval_steps else "no",  # the validator refuses eval_steps without a validation set
        eval_steps=t.eval_steps,
        **{_checkpointing_arg(): t.gradient_checkpointing},
        report_to=list(t.report_to) or "none",
        **tracker_args(cfg, run_dir),  # run name + project for the trackers (kit.tracking)
        disable_tqdm=True,  # the engine's events drive progress bars
        bf16=dtype == torch.bfloat16 and device == "cuda" and not t.pure_bf16,  # pure bf16: no autocast
        fp16=dtype == torch.float16 and device == "cuda",
        use_cpu=device == "cpu",
        dataloader_num_workers=0,
        dataloader_pin_memory=device == "cuda",
        remove_unused_columns=False,
        save_only_model=False,  # optimizer + scheduler + RNG states: exact resume
        include_num_input_tokens_seen="no",
        # transformers would log a non-finite loss as the average of the previous ones (0.0 on the
        # first step); the engine's numerics guard must see it. Only a run that skips such steps
        # keeps the filter, so the skipped step does not turn every later logged loss into NaN.
        logging_nan_inf_filter=t.on_nonfinite == "skip",
        # checkpoint rotation is the engine's: it deletes an old checkpoint only once the new one is
        # complete (transformers rotates before the engine can mark the new one; see kit.engine)
        save_total_limit=None,
    )
    if t.neftune_noise_alpha is not None:  # transformers hooks the embeddings during train() only
        kw["neftune_noise_alpha"] = t.neftune_noise_alpha
    kw.update(distributed_args(cfg, device))  # fsdp / deepspeed (kit.launch); ddp needs nothing
    if device == "cpu" and world_size() > 1:
        kw["ddp_backend"] = "gloo"  # several CPU processes: gloo is the back end that works without GPUs
    if device == "cuda" and importlib.util.find_spec("liger_kernel") is not None:
        # Triton kernels (RMSNorm, RoPE, SwiGLU) patched into the model by transformers; GPU only
        kw["use_liger_kernel"] = True
    if t.optim == "galore_adamw":
        require_galore()
        # GaLore projects the gradients of the weight matrices inside the decoder blocks (attention
        # and MLP, as in the GaLore paper); embeddings, norms and the head get plain AdamW. A regex
        # (fullmatch) rather than substrings, so transformers does not warn about every non-linear
        # container (self_attn, mlp, act_fn) it matches on the way.
        kw["optim_target_modules"] = GALORE_TARGETS
    if t.optim == "apollo_adamw":  # transformers builds APOLLO on the same targets as GaLore
        require_apollo()
        kw["optim_target_modules"] = GALORE_TARGETS
    return kw


def require_apollo() -> None:
    """As :func:`require_galore` for APOLLO (apollo-torch): its projectors live in the optimizer state."""
    try:
        from apollo_torch.random_projector import GradientProjector
        from apollo_torch.svd_projector import GaLoreProjector
    except ImportError as e:
        raise ImportError(
            f"train.optim=apollo_adamw needs the apollo-torch package ({e}): pip install --no-deps apollo-torch"
        ) from e
    torch.serialization.add_safe_globals([GradientProjector, GaLoreProjector])


GALORE_TARGETS = r".*(attn|attention|mlp|ffn|feed_forward).*"


def require_galore() -> None:
    """Fail early, naming our extra, when galore-torch is missing (transformers would only say
    so once the trainer builds its optimizer, pointing at a git install); allow its projector
    in checkpoints so a GaLore run resumes."""
    try:
        from galore_torch.galore_projector import GaLoreProjector
    except ImportError as e:
        raise ImportError(
            f"train.optim=galore_adamw needs the galore-torch package ({e}): pip install 'forge-kit[galore]'"
        ) from e
    # The optimizer state of a GaLore run holds GaLoreProjector objects (the projection matrix
    # and its schedule); transformers reloads optimizer.pt with torch.load(weights_only=True),
    # which refuses any class not allowlisted, so resume would fail without this.
    torch.serialization.add_safe_globals([GaLoreProjector])


def padding_free_requested(cfg) -> bool:
    """Whether the config asks for padding-free batches: on by default, off with
    ``data.padding_free=false`` or an explicit ``attn_implementation=eager`` (which keeps the dense
    block mask, e.g. to compare against it). The model must also accept them (``use_varlen``)."""
    return cfg.data.padding_free and cfg.model.attn_implementation != "eager"


def micro_batching(cfg, device: str, padding_free: bool) -> dict:
    """Split each optimizer step's ``batch_size`` rows into forward passes of ``micro_batch_size`` rows.

    The trainer accumulates them with the loss normalised by the step's total trained tokens, so
    the update is the one the whole batch gives; only one micro-batch's activations are alive at a
    time. Padding-free batches are collated whole and split by tokens instead
    (:func:`forward_token_budget`); padded packed rows on CPU go one per forward pass (one row of
    ~cutoff_len tokens already keeps the matrix multiplies efficient).
    """
    t = cfg.train
    mb = t.micro_batch_size
    if mb is None:
        mb = 1 if device == "cpu" and cfg.data.packing and not padding_free else t.batch_size
    return {"per_device_train_batch_size": mb, "gradient_accumulation_steps": t.grad_accum * (t.batch_size // mb)}


def forward_token_budget(cfg, device: str) -> int | None:
    """Most tokens one forward pass of a padding-free batch may carry (None: no limit).

    Why cutoff_len on CPU: the activation memory of a pass grows with its tokens (~1.2 MB per token
    for SmolLM2-135M with LoRA), while a few hundred tokens already keep the 2-core matrix
    multiplies at full speed; measured on the default workload, one pass per whole batch of 4
    examples (up to 2048 tokens) peaked at 4.6 GB against 2.9 GB split at 512, for +9 % tokens/s.
    GPUs have the memory and want the larger matrices.
    """
    if cfg.train.micro_batch_tokens is not None:
        return cfg.train.micro_batch_tokens
    return cfg.data.cutoff_len if device == "cpu" else None


def tokens_per_forward(cfg, device: str, padding_free: bool) -> int:
    """Upper bound on the tokens one SFT/PT forward pass sees (for the memory estimate)."""
    rows = micro_batching(cfg, device, padding_free)["per_device_train_batch_size"]
    tokens = rows * cfg.data.cutoff_len
    budget = forward_token_budget(cfg, device) if padding_free else None
    if budget is not None:  # whole examples up to the budget, or one example of up to cutoff_len
        tokens = min(tokens, max(budget, cfg.data.cutoff_len))
    return tokens


# Stages whose forward pass carries two sequences per example (chosen and rejected, or the
# completion and its KL sample). Stated here, not on the recipes, because the adapter panel's
# memory estimate runs before any trainer (TRL) is imported.
PAIRED_STAGES = ("dpo", "kto", "rm")


def forward_tokens(cfg, device: str) -> int:
    """Upper bound on the tokens one forward pass of this run's stage carries (memory estimate)."""
    if cfg.stage.name in TOKENIZING:  # our collator: micro-batches and per-pass token budgets
        return tokens_per_forward(cfg, device, padding_free_requested(cfg))
    tokens = cfg.train.batch_size * cfg.data.cutoff_len
    return 2 * tokens if cfg.stage.name in PAIRED_STAGES else tokens


def reference_model(ctx: StageContext):
    """The frozen reference of a preference stage: ``stage.ref_model`` loaded, or None, which the
    TRL trainers read as "the starting policy" (for LoRA the model with its adapter disabled)."""
    ref = ctx.cfg.stage.ref_model
    if not ref:
        return None
    return load_model(ref_model_config(ctx.cfg), with_adapter=False).model.eval()


def ref_model_config(cfg: RunConfig) -> RunConfig:
    """The config that loads ``stage.ref_model``: quantized with ``stage.ref_model_quantization_bit``
    (it is frozen, so quantizing only saves memory; the policy's own training knobs are reset so the
    quantized-base rules, written for a model that trains, hold)."""
    over: dict[str, Any] = {"model__name": cfg.stage.ref_model}
    if cfg.stage.ref_model_quantization_bit:
        over.update(
            quant__bits=cfg.stage.ref_model_quantization_bit,
            adapter__type="lora",
            adapter__init="default",
            adapter__llama_pro_blocks=0,
            adapter__resume_adapter=None,
            train__optim="adamw_torch",
            adapter__loraplus_lr_ratio=None,
        )
    return cfg.replace(**over)


@runtime_checkable
class ReportsTokens(Protocol):
    """A trainer that counts the tokens it trained on; the engine turns the counts into tokens/s."""

    def tokens_seen(self) -> tuple[int, int]:
        """(real, trained) tokens so far: real excludes padding, trained counts loss positions."""
        ...


class TokenCounting:
    """Mixin for trainers fed by :class:`~kit.data.ForgeCollator`: counts real (non-padding) and
    trained tokens per step and removes the counters before the forward pass (:class:`ReportsTokens`)."""

    forge_real_tokens: int = 0
    forge_trained_tokens: int = 0

    def tokens_seen(self) -> tuple[int, int]:
        return self.forge_real_tokens, self.forge_trained_tokens

    def _pop_counts(self, inputs: dict) -> None:
        real = inputs.pop("num_real_tokens", None)
        trained = inputs.pop("num_trained_tokens", None)
        if real is not None and self.model.training:
            self.forge_real_tokens += int(real)
            self.forge_trained_tokens += int(trained)
