"""The typed run configuration: the one contract every front end produces.

A :class:`RunConfig` has seven groups (model, quant, adapter, data, stage, train,
generate). Each group is a dataclass whose fields carry their documentation and
allowed values as metadata, so the same text feeds error messages, widget
tooltips and the docs.

Ways in, all validated at construction:

* ``RunConfig.from_dict({"model": {"name": ...}, "train": {...}})``
* ``RunConfig.from_yaml("run.yaml")`` / ``RunConfig.from_yaml_text(text)``
* ``RunConfig.from_kwargs(model="smollm2-135m-instruct", dataset="demo_sft", learning_rate=1e-4)``
  (flat names that are unique across groups, or ``group__field`` / ``"group.field"``)
* ``cfg.override(["train.max_steps=5", "lora_rank=8"])`` for CLI/magic ``key=value`` pairs

Ways out: ``cfg.to_dict()``, ``cfg.to_yaml()`` (round trip exact), ``cfg.to_yaml(minimal=True)``
(only what differs from the defaults, what the board shows).

Which stages read a knob is declared once, on the field (``stages=("dpo", "kto")``; no
declaration: every stage reads it). The validator, the stage panel (:func:`stage_knobs`) and the
help text (:func:`field_help`, "Used by: dpo, kto.") all derive from it, and a knob that the chosen
stage ignores, set to anything but its default, is a ConfigError naming the stages that read it.

All validation happens when a RunConfig is built (:meth:`RunConfig.validate`): values are
coerced to the annotated types here; finite numbers, bounds, knobs the stage ignores and the
cross-field rules are checked by :mod:`kit.config_rules`, one table. Code that gets a RunConfig
may trust it. YAML with a key given twice is refused (:class:`UniqueKeyLoader`).
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import logging
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional, Union

import yaml

from . import config_rules
from .errors import ForgeError

log = logging.getLogger(__name__)

__all__ = [
    "ConfigError",
    "ModelConfig",
    "QuantConfig",
    "AdapterConfig",
    "DataConfig",
    "StageConfig",
    "TrainConfig",
    "GenerateConfig",
    "RunConfig",
    "DEFAULT_MODEL",
    "STAGES",
    "knob_stages",
    "knob_loss_types",
    "knob_read",
    "stage_knobs",
    "used_by",
    "default_of",
    "field_help",
    "field_choices",
    "reference_markdown",
    "is_optional",
    "load_yaml_text",
]

DEFAULT_MODEL = "smollm2-135m-instruct"


class ConfigError(ForgeError, ValueError):
    """A configuration value or key is wrong; the message names the key (and the YAML line if known)."""

    def __init__(self, message: str, key: str | None = None, line: int | None = None):
        self.message = message  # without the "line N, key 'k': " prefix
        self.key = key
        self.line = line
        where = []
        if line is not None:
            where.append(f"line {line}")
        if key is not None:
            where.append(f"key '{key}'")
        prefix = (", ".join(where) + ": ") if where else ""
        super().__init__(prefix + message)


def _f(
    default: Any = None,
    help: str = "",
    *,
    min: float | None = None,
    max: float | None = None,
    gt: float | None = None,
    why: str = "",
    stages: tuple | None = None,
    loss_types: tuple | None = None,
    factory: Any = None,
):
    """A dataclass field with its documentation, bounds and users in its metadata.

    ``min``/``max``: inclusive bounds, ``gt``: exclusive lower bound, ``why``: added to a bound's
    error message. ``stages``: the stages whose recipe reads the knob (None: every stage);
    ``loss_types``: with stage dpo, the losses that read it (None: all of them).
    """
    meta = {"help": help, "min": min, "max": max, "gt": gt, "why": why, "stages": stages, "loss_types": loss_types}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


# Who reads what (see the recipes in kit/stages): stages that tokenize with our own encoder and
# trainer loop (packing, padding-free batches, micro-batches, the token cache, LoRA+), the stages
# that evaluate (ppo's rollouts are its evaluation: it reads no eval set), and the dpo losses
# that keep a reference model (orpo and simpo are reference-free).
TOKENIZING = ("sft", "pt")
EVALUATING = ("sft", "pt", "rm", "dpo", "kto", "grpo")
REFERENCE_LOSSES = ("sigmoid", "ipo", "hinge")
LOSS_TYPE_STAGE = config_rules.LOSS_TYPE_STAGE  # the stage whose stage.loss_type picks among variants
MAX_CUTOFF_LEN = 1 << 20  # 1M tokens: far above any model's context, far below a typo's 1e9


# ---------------------------------------------------------------- groups


@dataclass
class ModelConfig:
    """Which model to load and how.

    ``name`` is a registered name (``smollm2-135m-instruct``, the embedded default), a
    Hugging Face hub id, a local directory, or a ``.gguf`` file.
    """

    name: str = _f(DEFAULT_MODEL, "Registered name, hub id, local directory or .gguf file.")
    gguf_file: Optional[str] = _f(None, "GGUF file name inside `name` (a directory or repo), if loading from GGUF.")
    revision: Optional[str] = _f(None, "Hub revision (branch, tag or commit).")
    trust_remote_code: bool = _f(
        False, "Run model code shipped with the checkpoint (a warning is logged). Off unless you trust it."
    )
    allow_pickle: bool = _f(
        False,
        "Also load pickled .bin weights (model or adapter) where a folder has no "
        "safetensors. Unpickling can run code: only for files you trust.",
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = _f(
        "auto", "Weights dtype. auto: bf16 on GPUs that support it, else fp32 (CPU)."
    )
    device: Literal["auto", "cpu", "cuda", "mps"] = _f(
        "auto", "Where to put the model. auto: CUDA if present, else CPU."
    )
    attn_implementation: Literal["auto", "sdpa", "eager", "flash_attention_2"] = _f(
        "auto", "Attention kernel. auto: flash_attention_2 when installed on GPU, else sdpa."
    )
    template: Optional[str] = _f(
        None, "Override the tokenizer's chat template: a registered template name or a Jinja string."
    )
    adapter_path: Optional[str] = _f(
        None, "A trained adapter (run dir or adapter dir) applied on load (for chat, or stacking)."
    )
    new_special_tokens: Optional[list] = _f(
        None,
        "Tokens to add to the vocabulary (embeddings resized; a LoRA/OFT "
        "run then also trains and saves embed_tokens and lm_head).",
    )
    shift_attn: bool = _f(
        False,
        "LongLoRA S²-attn while training: attention within groups of shift_attn_group "
        "tokens, half the heads shifted by half a group (padding-free batches; chat keeps "
        "full attention).",
        stages=TOKENIZING,
    )
    shift_attn_group: int = _f(
        0, "S²-attn group size in tokens (0: cutoff_len / 4); must divide data.cutoff_len.", min=0, stages=TOKENIZING
    )
    rope_scaling: Optional[Literal["linear", "dynamic", "yarn"]] = _f(
        None,
        "Stretch RoPE to train past the model's context: the factor is data.cutoff_len / the model's "
        "max_position_embeddings (nothing changes when cutoff_len fits). None: off.",
    )


@dataclass
class QuantConfig:
    """On-the-fly quantization of the base model (QLoRA when combined with a LoRA adapter)."""

    bits: Optional[Literal[4, 8]] = _f(None, "None (no quantization), 4 or 8 bits with bitsandbytes.")
    method: Literal["bitsandbytes"] = _f("bitsandbytes", "Quantization library used for on-the-fly loading.")
    quant_type: Literal["nf4", "fp4"] = _f("nf4", "4-bit data type.")
    double_quant: bool = _f(True, "Quantize the 4-bit quantization constants too (saves ~0.4 bit/param).")
    compute_dtype: Literal["auto", "float32", "bfloat16", "float16"] = _f(
        "auto", "dtype of the matmuls on dequantized weights. auto: the model dtype."
    )


@dataclass
class AdapterConfig:
    """How the model is fine-tuned: full, freeze (some layers) or LoRA (and variants)."""

    type: Literal["lora", "full", "freeze", "oft"] = _f(
        "lora", "Fine-tuning type (oft: orthogonal fine-tuning, peft OFT)."
    )
    oft_block_size: int = _f(
        32, "oft: size of the orthogonal blocks (must divide the targeted layers' input size).", min=1
    )
    llama_pro_blocks: int = _f(
        0,
        "LLaMA Pro: add this many decoder blocks (copies with zeroed output projections, "
        "spread evenly) and train only them (needs adapter.type=freeze). 0: off.",
        min=0,
    )
    lora_rank: int = _f(16, "LoRA rank r.", min=1)
    lora_alpha: Optional[int] = _f(None, "LoRA alpha. None: 2 x rank.", min=1)
    lora_dropout: float = _f(0.0, "Dropout on the LoRA input.", min=0.0, max=1.0)
    lora_target: Union[str, list] = _f(
        "all", "'all' linear layers except the output head, or module names (list or comma string)."
    )
    modules_to_save: Optional[list] = _f(
        None, "Extra modules trained in full and saved with the adapter (e.g. lm_head)."
    )
    use_dora: bool = _f(False, "DoRA: weight-decomposed LoRA.")
    use_rslora: bool = _f(False, "rsLoRA: scale by alpha/sqrt(r).")
    init: Literal["default", "gaussian", "pissa", "loftq"] = _f("default", "LoRA initialisation.")
    loraplus_lr_ratio: Optional[float] = _f(
        None, "LoRA+: learning rate of B = ratio x learning rate of A.", gt=0.0, stages=TOKENIZING
    )
    freeze_trainable_layers: int = _f(2, "freeze: train the last n layers (negative: the first n).")
    freeze_trainable_modules: Union[str, list] = _f(
        "all", "freeze: which modules inside the trainable layers ('all' or names)."
    )
    freeze_extra_modules: Optional[list] = _f(
        None, "freeze: extra top-level modules to train (e.g. embed_tokens, lm_head)."
    )
    resume_adapter: Optional[str] = _f(
        None, "Stack: start from this trained LoRA adapter (path) and train a new one on top."
    )


@dataclass
class DataConfig:
    """Which data, in which format, and how it is encoded."""

    dataset: Union[str, list] = _f(
        "demo_sft", "Registered dataset name(s), file path(s) (json/jsonl/csv/parquet), comma separated or a list."
    )
    eval_dataset: Optional[Union[str, list]] = _f(None, "Dataset(s) used for evaluation.", stages=EVALUATING)
    format: Literal["auto", "alpaca", "messages", "sharegpt", "preference", "kto", "text", "prompt"] = _f(
        "auto", "Row format. auto: detected from the columns."
    )
    cutoff_len: int = _f(
        512,
        "Maximum tokens per example (longer ones are truncated).",
        min=8,
        max=MAX_CUTOFF_LEN,
        why="(1M tokens; the model's own context length is checked when it loads)",
    )
    max_samples: Optional[int] = _f(None, "Use at most this many rows per dataset.", min=1)
    val_size: float = _f(
        0.0, "Fraction (<1) or count (>=1) of rows held out for evaluation.", min=0.0, stages=EVALUATING
    )
    train_on_prompt: bool = _f(False, "Also train on prompt tokens (system/user turns).", stages=("sft",))
    mask_history: bool = _f(False, "Train only on the last assistant answer.", stages=("sft",))
    packing: bool = _f(
        False,
        "Pack several examples per row (attention kept inside each example), so a step holds "
        "batch_size rows of cutoff_len tokens. Off: a step is batch_size examples; padding-free "
        "batches waste no padding either way.",
        stages=TOKENIZING,
    )
    padding_free: bool = _f(
        True,
        "Put a batch's examples back to back in one row (no padding, attention per "
        "example). Off, or with attn_implementation=eager: padded rows with a block mask.",
        stages=TOKENIZING,
    )
    mix_strategy: Literal["concat", "interleave_under", "interleave_over"] = _f(
        "concat", "How several datasets are mixed."
    )
    interleave_probs: Optional[list] = _f(None, "Sampling probabilities for interleaving.")
    shuffle: bool = _f(
        True,
        "Shuffle the rows (with the seed) before the validation split and packing. The "
        "training order always comes from the trainer's seeded sampler, new every epoch.",
    )
    cache: bool = _f(
        True, "Cache tokenized data by a content hash of (data, tokenizer, template, options).", stages=TOKENIZING
    )
    # Hub datasets (owner/name) and local Hub-style folders (parquet shards, save_to_disk): kit.data.hub
    dataset_dir: Optional[str] = _f(
        None,
        "A folder with a LLaMA-Factory dataset_info.json: its names become "
        "datasets here (file_name / hf_hub_url, alpaca / sharegpt / openai).",
    )
    subset: Optional[str] = _f(None, "Hub datasets: the config (subset) name.")
    split: str = _f("train", "Hub datasets and Hub-style folders: the split to read.")
    revision: Optional[str] = _f(None, "Hub datasets: a branch, tag or commit.")
    data_files: Optional[Union[str, list, dict]] = _f(None, "Hub datasets: the files to read (datasets' data_files).")
    streaming: bool = _f(
        False,
        "Hub datasets: stream rather than download; reads max_samples rows, or the "
        "rows max_steps needs (max_steps x batch_size x grad_accum x processes).",
    )


@dataclass
class StageConfig:
    """The training stage (method) and its own knobs; each knob names the stages that read it."""

    name: Literal["sft", "pt", "rm", "dpo", "kto", "grpo", "ppo"] = _f("sft", "Training stage.")
    # preference optimisation (dpo family)
    loss_type: Literal["sigmoid", "ipo", "hinge", "orpo", "simpo"] = _f(
        "sigmoid", "Preference loss (sigmoid = DPO; orpo/simpo are reference-free).", stages=("dpo",)
    )
    beta: float = _f(0.1, "Strength of the KL / preference term.", min=0.0, stages=("dpo", "kto", "grpo", "ppo"))
    ftx: float = _f(
        0.0,
        "Weight of an added SFT loss on the chosen answer (orpo has its own).",
        min=0.0,
        stages=("dpo",),
        loss_types=REFERENCE_LOSSES + ("simpo",),
    )
    # TRL's sigmoid/ipo/hinge losses do not read label_smoothing (only its 'robust' loss does)
    label_smoothing: float = _f(
        0.0,
        "Label smoothing of the preference labels (conservative SimPO).",
        min=0.0,
        max=0.5,
        stages=("dpo",),
        loss_types=("simpo",),
    )
    simpo_gamma: float = _f(0.5, "Target reward margin.", min=0.0, stages=("dpo",), loss_types=("simpo",))
    ref_model: Optional[str] = _f(
        None,
        "Reference model. None: the base model (adapter disabled).",
        stages=("dpo", "kto"),
        loss_types=REFERENCE_LOSSES,
    )
    ref_model_quantization_bit: Optional[Literal[4, 8]] = _f(
        None,
        "Load stage.ref_model quantized to 4 or 8 bits (bitsandbytes) to save memory.",
        stages=("dpo", "kto"),
        loss_types=REFERENCE_LOSSES,
    )
    kto_desirable_weight: float = _f(1.0, "Weight of desirable examples.", min=0.0, stages=("kto",))
    kto_undesirable_weight: float = _f(1.0, "Weight of undesirable examples.", min=0.0, stages=("kto",))
    # online RL
    reward_funcs: Optional[list] = _f(
        None,
        "Reward functions: built-in names (exact_match, contains, "
        "format[:regex], length[:chars]), Python callables, or 'module:function' "
        "(needs train.allow_code).",
        stages=("grpo", "ppo"),
    )
    reward_model: Optional[str] = _f(
        None, "A trained reward model (rm stage run dir); ppo needs it or reward_funcs.", stages=("grpo", "ppo")
    )
    reward_model_quantization_bit: Optional[Literal[4, 8]] = _f(
        None, "Load stage.reward_model quantized to 4 or 8 bits (bitsandbytes) to save memory.", stages=("grpo", "ppo")
    )
    num_generations: int = _f(4, "Completions sampled per prompt.", min=1, stages=("grpo", "ppo"))
    max_new_tokens: int = _f(32, "Tokens generated per completion during rollouts.", min=1, stages=("grpo", "ppo"))
    temperature: float = _f(1.0, "Sampling temperature during rollouts.", min=0.0, stages=("grpo", "ppo"))
    ppo_epochs: int = _f(2, "Optimisation epochs per rollout batch.", min=1, stages=("ppo",))
    ppo_clip: float = _f(0.2, "Clip range of the policy ratio.", min=0.0, stages=("ppo",))
    vf_coef: float = _f(0.1, "Value loss coefficient.", min=0.0, stages=("ppo",))
    gamma: float = _f(1.0, "Discount.", min=0.0, max=1.0, stages=("ppo",))
    lam: float = _f(0.95, "GAE lambda.", min=0.0, max=1.0, stages=("ppo",))
    use_vllm: bool = _f(False, "Generate with vLLM (needs the vllm extra and a GPU).", stages=("grpo",))


@dataclass
class TrainConfig:
    """The optimisation loop, checkpoints and logging."""

    output_dir: Optional[str] = _f(None, "Run directory. None: FORGE_HOME/runs/<timestamp>-<stage>.")
    max_steps: int = _f(-1, "Stop after this many optimizer steps (-1: use num_epochs).")
    num_epochs: float = _f(1.0, "Epochs over the training data (when max_steps is -1).", min=0.0)
    batch_size: int = _f(4, "Rows per device per step.", min=1)
    grad_accum: int = _f(1, "Gradient accumulation steps.", min=1)
    micro_batch_size: Optional[int] = _f(
        None,
        "Rows per forward pass; the rest of batch_size is accumulated into the same optimizer step "
        "(same update, less activation memory). None: the whole batch (padding-free batches are then split "
        "by micro_batch_tokens), or 1 row for padded packed rows on CPU.",
        min=1,
        stages=TOKENIZING,
    )
    micro_batch_tokens: Optional[int] = _f(
        None,
        "Padding-free batches: at most this many tokens per forward pass, whole examples only (one "
        "longer example goes alone); accumulated into the same step. None: cutoff_len on CPU, no limit on GPUs.",
        min=1,
        stages=TOKENIZING,
    )
    learning_rate: float = _f(2e-4, "Peak learning rate.", gt=0.0)
    lr_scheduler: Literal["linear", "cosine", "constant", "constant_with_warmup"] = _f(
        "cosine", "Learning-rate schedule."
    )
    warmup_ratio: float = _f(0.0, "Fraction of steps spent warming up.", min=0.0, max=1.0)
    weight_decay: float = _f(0.0, "AdamW weight decay.", min=0.0)
    max_grad_norm: float = _f(1.0, "Gradient clipping norm (0: off).", min=0.0)
    optim: Literal[
        "adamw_torch", "adamw_8bit", "sgd", "adafactor", "galore_adamw", "apollo_adamw", "muon", "adam_mini", "badam"
    ] = _f(
        "adamw_torch",
        "Optimizer. adamw_8bit needs bitsandbytes; galore_adamw needs galore-torch; apollo_adamw "
        "(full/freeze) needs apollo-torch; muon: "
        "torch.optim.Muon on the 2-D weights of the decoder blocks, AdamW on the rest; adam_mini "
        "(full/freeze, adam-mini): one second moment per block; badam (full, badam): Adam on one "
        "decoder layer at a time.",
    )
    badam_switch_every: int = _f(50, "BAdam: optimizer steps before the next decoder layer trains.", min=1)
    badam_switch_mode: Literal["ascending", "descending", "random", "fixed"] = _f(
        "ascending", "BAdam: the order the layers train in (fixed: the first one only)."
    )
    pure_bf16: bool = _f(
        False,
        "Pure bf16 training: the weights, gradients and optimizer state in bf16, no fp32 "
        "master copy and no autocast (pure_bf16 in LLaMA-Factory; half the memory of fp32).",
    )
    neftune_noise_alpha: Optional[float] = _f(
        None,
        "NEFTune: uniform noise of this scale on the input embeddings while training (never at inference). None: off.",
        gt=0.0,
        stages=("sft",),
    )
    seed: int = _f(
        42, "Seed for data order, initialisation and sampling.", min=0, max=2**32 - 1, why="(numpy's seed range)"
    )
    logging_steps: int = _f(1, "Emit a step event every n steps.", min=1)
    save_steps: int = _f(50, "Save a checkpoint every n steps (0: only at the end).", min=0)
    save_total_limit: Optional[int] = _f(3, "Keep at most this many checkpoints.", min=1)
    eval_steps: Optional[int] = _f(
        None, "Evaluate every n steps (needs a validation set). None: at the end only.", min=1, stages=EVALUATING
    )
    gradient_checkpointing: bool = _f(False, "Recompute activations in backward (saves memory, costs ~30% speed).")
    num_threads: Optional[int] = _f(None, "CPU threads for torch. None: the number of physical cores.", min=1)
    report_to: list = _f(
        None,
        "Experiment trackers besides the event stream: none, tensorboard, trackio, mlflow, "
        "wandb, swanlab, or a list (the 'track' extra installs them).",
        factory=list,
    )
    distributed: Literal["ddp", "fsdp", "deepspeed"] = _f(
        "ddp",
        "Several processes (forge train --nproc N): ddp (a model copy each), fsdp (sharded, FSDP2) or "
        "deepspeed (ZeRO; GPU).",
    )
    distributed_config: Optional[str] = _f(
        None,
        "deepspeed: a preset (zero2, zero3, zero3_offload) or a DeepSpeed "
        "JSON file; fsdp: an FSDP/accelerate config file.",
    )
    resume: bool = _f(True, "If output_dir has a checkpoint, continue from the last complete one.")
    on_nonfinite: Literal["fail", "skip"] = _f(
        "fail",
        "A step whose loss or gradient norm is NaN/inf: fail (end the run, keeping the last good "
        "checkpoint) or skip (leave the weights unchanged and go on; the run still fails after "
        "several skipped steps in a row).",
    )
    # a run-wide policy, not a knob of one stage: it covers any code a config names
    allow_code: bool = _f(
        False,
        "Let this config name Python code to import and run (stage.reward_funcs entries "
        "'module:function'). Off: only built-in names, or callables passed from Python.",
    )


@dataclass
class GenerateConfig:
    """Generation settings for chat, evaluation and export checks."""

    backend: Literal["hf", "vllm", "llamacpp"] = _f(
        "hf",
        "Inference back end: hf (transformers), vllm (CUDA GPU, the vllm extra), llamacpp (a GGUF, llama-cpp-python).",
    )
    max_new_tokens: int = _f(128, "Maximum new tokens per answer.", min=1)
    temperature: float = _f(0.0, "0: greedy decoding.", min=0.0)
    top_p: float = _f(1.0, "Nucleus sampling mass.", min=0.0, max=1.0)
    top_k: int = _f(0, "Top-k sampling (0: off).", min=0)
    repetition_penalty: float = _f(1.0, "Penalty on repeated tokens (1: off).", min=0.0)
    system: Optional[str] = _f(None, "System prompt prepended to every chat.")
    stop: Optional[Union[str, list]] = _f(
        None, "Stop strings: the answer ends before the first one (a string or a list)."
    )
    seed: Optional[int] = _f(None, "Sampling seed: the same seed gives the same sampled answer (None: not seeded).")


GROUPS: dict[str, type] = {
    "model": ModelConfig,
    "quant": QuantConfig,
    "adapter": AdapterConfig,
    "data": DataConfig,
    "stage": StageConfig,
    "train": TrainConfig,
    "generate": GenerateConfig,
}

# A scalar given for a whole group sets its main field: model="x" is model.name="x".
PRIMARY_FIELD = {"model": "name", "quant": "bits", "adapter": "type", "data": "dataset", "stage": "name"}

# Short names users reach for that would otherwise be ambiguous or long.
ALIASES = {
    "dataset": "data.dataset",
    "lr": "train.learning_rate",
    "steps": "train.max_steps",
    "epochs": "train.num_epochs",
    "output_dir": "train.output_dir",
    "finetuning_type": "adapter.type",
    "additional_target": "adapter.modules_to_save",  # LLaMA-Factory's name for peft's modules_to_save
    "quantization_bit": "quant.bits",
    "template": "model.template",
    "seed": "train.seed",  # generate.seed is spelled out: a bare `seed` keeps meaning the training seed
}


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    """The evaluated annotations of a group (typing.get_type_hints is slow; every build needs them)."""
    return typing.get_type_hints(cls)


@functools.cache
def _field_map() -> dict[str, list[str]]:
    """flat field name -> ['group.field', ...] (ambiguous names map to several)."""
    out: dict[str, list[str]] = {}
    for g, cls in GROUPS.items():
        for f in dataclasses.fields(cls):
            out.setdefault(f.name, []).append(f"{g}.{f.name}")
    return out


def _field(dotted: str) -> dataclasses.Field:
    g, _, name = dotted.partition(".")
    if g in GROUPS:
        for f in dataclasses.fields(GROUPS[g]):
            if f.name == name:
                return f
    raise KeyError(dotted)


def _all_fields():
    """(dotted key, dataclass field) of every knob, groups in order."""
    for g, cls in GROUPS.items():
        for f in dataclasses.fields(cls):
            yield f"{g}.{f.name}", f


def default_of(dotted: str) -> Any:
    """The default value of ``group.field``."""
    f = _field(dotted)
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default


# ---------------------------------------------------------------- who reads a knob


STAGES: tuple[str, ...] = tuple(typing.get_args(_hints(StageConfig)["name"]))


def knob_stages(dotted: str) -> tuple[str, ...] | None:
    """The stages whose recipe reads ``group.field``; None when every stage reads it."""
    return _field(dotted).metadata.get("stages")


def knob_loss_types(dotted: str) -> tuple[str, ...] | None:
    """With stage dpo, the ``stage.loss_type`` values that read ``group.field``; None: all of them."""
    return _field(dotted).metadata.get("loss_types")


def knob_read(dotted: str, stage: str, loss_type: str | None = None) -> bool:
    """Whether stage ``stage`` (with ``loss_type``, for dpo) reads ``group.field``."""
    return config_rules.reads(_field(dotted).metadata, stage, loss_type)


def stage_knobs(stage: str, *, loss_type: str | None = None, group: str | None = None) -> list[str]:
    """The knobs that only some stages read and ``stage`` (with ``loss_type``, for dpo) is one of,
    as dotted keys in declaration order; ``group`` keeps one group (the stage panel: "stage")."""
    if stage not in STAGES:
        raise KeyError(f"unknown stage {stage!r}; stages: {', '.join(STAGES)}")
    return [
        k
        for k, _ in _all_fields()
        if knob_stages(k) is not None
        and knob_read(k, stage, loss_type)
        and (group is None or k.split(".", 1)[0] == group)
    ]


def used_by(dotted: str) -> str:
    """ "dpo (loss_type sigmoid, ipo, hinge), kto" for a declared knob; "" when every stage reads it."""
    return config_rules.users(_field(dotted).metadata)


def field_help(dotted: str) -> str:
    """The help text of ``group.field``, with the stages that read it (widget tooltips, docs)."""
    f = _field(dotted)
    text = f.metadata.get("help", "")
    users = used_by(dotted)
    return f"{text} Used by: {users}." if users else text


def field_choices(dotted: str) -> list | None:
    """Allowed values of ``group.field`` when it is a Literal, else None."""
    g, name = dotted.split(".", 1)
    hints = _hints(GROUPS[g])
    return _literal_choices(hints[name])


def reference_markdown() -> str:
    """Every key as a Markdown table (key, default, used by, help): the config reference for docs."""
    rows = ["| key | default | used by | what it does |", "|---|---|---|---|"]
    for k, f in _all_fields():
        rows.append(
            f"| `{k}` | `{_plain(default_of(k))!r}` | {used_by(k) or 'all'} | "
            f"{f.metadata.get('help', '').replace('|', '/')} |"
        )
    return "\n".join(rows) + "\n"


def _literal_choices(tp: Any) -> list | None:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return list(typing.get_args(tp))
    if origin in (Union, types.UnionType):
        for a in typing.get_args(tp):
            c = _literal_choices(a)
            if c is not None:
                return c
    return None


def is_optional(tp: Any) -> bool:
    """Whether a type hint admits None (``Optional[X]`` / ``X | None``)."""
    return typing.get_origin(tp) in (Union, types.UnionType) and type(None) in typing.get_args(tp)


def _suggest(word: str, options: list[str]) -> str:
    close = difflib.get_close_matches(word, options, n=1, cutoff=0.6)
    return f" Did you mean '{close[0]}'?" if close else ""


# ---------------------------------------------------------------- YAML


class UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's SafeLoader, except that a mapping key given twice is an error naming both lines
    (plain YAML keeps the last one without a word, so a second ``train:`` group replaces the first)."""

    def construct_document(self, node):
        _refuse_duplicate_keys(node, "", set(), set())
        return super().construct_document(node)


def _refuse_duplicate_keys(node: Any, path: str, done: set, open_: set) -> None:
    """Check every mapping once (an alias points at a node already checked, so alias bombs stay
    cheap); refuse an alias inside its own anchor (recursive data no config value can hold)."""
    if id(node) in open_:
        raise ConfigError(
            "a YAML alias refers to the value that contains it (recursive data).",
            path or None,
            node.start_mark.line + 1,
        )
    if id(node) in done or not isinstance(node, (yaml.SequenceNode, yaml.MappingNode)):
        return
    open_.add(id(node))
    if isinstance(node, yaml.SequenceNode):
        for item in node.value:
            _refuse_duplicate_keys(item, path, done, open_)
    else:
        seen: dict[tuple, int] = {}
        for knode, vnode in node.value:
            if knode.tag == "tag:yaml.org,2002:merge" or not isinstance(knode, yaml.ScalarNode):
                _refuse_duplicate_keys(vnode, path, done, open_)  # '<<' merges are meant to be overridden
                continue
            key = f"{path}.{knode.value}" if path else knode.value
            line = knode.start_mark.line + 1
            if (knode.tag, knode.value) in seen:
                raise ConfigError(
                    f"'{key}' is given twice, on line {seen[knode.tag, knode.value]} and line {line}; "
                    "YAML would silently keep only the last one. Remove one of them.",
                    key,
                    line,
                )
            seen[knode.tag, knode.value] = line
            _refuse_duplicate_keys(vnode, key, done, open_)
    open_.discard(id(node))
    done.add(id(node))


def load_yaml_text(text: str) -> Any:
    """``yaml.safe_load`` that refuses duplicate mapping keys (for configs and CLI values)."""
    return yaml.load(text, Loader=UniqueKeyLoader)


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Convert ``value`` (possibly a string from the CLI) to the annotated type, or raise ConfigError."""
    if value is None:
        if is_optional(tp) or tp is Any:
            return None
        raise ConfigError("may not be empty (null).", key)
    choices = _literal_choices(tp)
    origin = typing.get_origin(tp)
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    if choices is not None:
        # Literal[4, 8] given as "4" from the command line
        for c in choices:
            if value == c or (isinstance(value, str) and not isinstance(c, str) and value == str(c)):
                return c
        if isinstance(value, str) and value.lower() in ("none", "null", "") and is_optional(tp):
            return None
        raise ConfigError(
            f"got {value!r}; allowed values: {', '.join(map(repr, choices))}."
            + (_suggest(str(value), [str(c) for c in choices])),
            key,
        )
    if origin in (Union, types.UnionType):
        if isinstance(value, str) and value.lower() in ("none", "null") and is_optional(tp):
            return None
        errors = []
        # prefer the member whose type already matches
        for a in args:
            if (a is list and isinstance(value, list)) or (a in (str, int, float, bool) and type(value) is a):
                return _coerce(value, a, key)
        for a in args:
            try:
                return _coerce(value, a, key)
            except ConfigError as e:
                errors.append(e.message)
        names = [getattr(a, "__name__", str(a)) for a in args]
        why = "; ".join(f"as {n}: {m}" for n, m in zip(names, errors))
        raise ConfigError(f"got {value!r}, which is not a valid {' or '.join(names)} ({why}).", key)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "yes", "1", "on"):
            return True
        if isinstance(value, str) and value.lower() in ("false", "no", "0", "off"):
            return False
        raise ConfigError(f"expected true or false, got {value!r}.", key)
    if tp is int:
        if isinstance(value, bool):
            raise ConfigError(f"expected an integer, got {value!r}.", key)
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
        raise ConfigError(f"expected an integer, got {value!r}.", key)
    if tp is float:
        if isinstance(value, bool):
            raise ConfigError(f"expected a number, got {value!r}.", key)
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"expected a number, got {value!r}.", key)
    if tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"expected a string, got {value!r}.", key)
    if tp is list or origin is list:
        if isinstance(value, list):
            return list(value)
        if isinstance(value, tuple):
            return list(value)
        if isinstance(value, str):
            if value.startswith("["):
                parsed = load_yaml_text(value)
                if isinstance(parsed, list):
                    return parsed
            return [v.strip() for v in value.split(",") if v.strip()]
        raise ConfigError(f"expected a list, got {value!r}.", key)
    return value


def _build_group(group: str, values: dict, where: dict | None = None) -> Any:
    """The group's dataclass from its values, coerced to the annotated types (bounds and the
    cross-field rules are checked by RunConfig.validate)."""
    cls = GROUPS[group]
    hints = _hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for k, v in values.items():
        key = f"{group}.{k}"
        line = (where or {}).get(key)
        if k not in names:
            raise ConfigError(
                f"unknown key in group '{group}'." + _suggest(k, names) + f" Known keys: {', '.join(names)}.", key, line
            )
        try:
            kwargs[k] = _coerce(v, hints[k], key)
        except ConfigError as e:
            raise ConfigError(e.message, key, line) from None
    return cls(**kwargs)


def _parse_scalar(text: str) -> Any:
    """Parse a CLI value with YAML rules (numbers, booleans, lists), keeping plain strings."""
    try:
        return load_yaml_text(text) if text != "" else ""
    except yaml.YAMLError:
        return text


_WARNED: set = set()


def _warn_once(message: str) -> None:
    # every RunConfig.replace() validates again; a warning is worth saying once per process
    if message not in _WARNED:
        _WARNED.add(message)
        log.warning(message)


@dataclass
class RunConfig:
    """Everything one run needs. See the group classes for each knob."""

    model: ModelConfig = field(default_factory=ModelConfig)
    quant: QuantConfig = field(default_factory=QuantConfig)
    adapter: AdapterConfig = field(default_factory=AdapterConfig)
    data: DataConfig = field(default_factory=DataConfig)
    stage: StageConfig = field(default_factory=StageConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    generate: GenerateConfig = field(default_factory=GenerateConfig)

    def __post_init__(self):
        self.validate()

    # ------------------------------------------------------------ building

    @classmethod
    def from_dict(cls, d: dict | None, *, _where: dict | None = None) -> RunConfig:
        """Build from a nested dict ``{group: {field: value}}``; flat keys are accepted too."""
        d = dict(d or {})
        nested = _nest(d, _where)
        groups = {g: _build_group(g, nested.get(g, {}), _where) for g in GROUPS}
        try:
            return cls(**groups)
        except ConfigError as e:  # a rule of validate(): add the YAML line of the key it names
            line = (_where or {}).get(e.key) if e.line is None else e.line
            raise ConfigError(e.message, e.key, line) from None

    @classmethod
    def from_kwargs(cls, **kwargs: Any) -> RunConfig:
        """``RunConfig.from_kwargs(model="smollm2-135m-instruct", dataset="demo_sft", max_steps=10)``."""
        return cls.from_dict({k.replace("__", "."): v for k, v in kwargs.items()})

    @classmethod
    def from_yaml_text(cls, text: str, source: str = "<yaml>") -> RunConfig:
        try:
            data = load_yaml_text(text)
            node = yaml.compose(text, Loader=yaml.SafeLoader)
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            raise ConfigError(
                f"{source}: invalid YAML: {getattr(e, 'problem', e)}", line=(mark.line + 1) if mark else None
            ) from None
        except ConfigError as e:  # a duplicate key
            raise ConfigError(f"{source}: {e.message}", e.key, e.line) from None
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise ConfigError(
                f"{source}: the top level must be a mapping of groups or keys, got {type(data).__name__}."
            )
        where = _yaml_lines(node)
        try:
            return cls.from_dict(data, _where=where)
        except ConfigError as e:
            raise ConfigError(f"{source}: {e.message}", e.key, e.line) from None

    @classmethod
    def from_yaml(cls, path: str | os.PathLike) -> RunConfig:
        p = Path(path)
        if not p.exists():
            raise FileNotFoundError(f"config file not found: {p}")
        return cls.from_yaml_text(p.read_text(), source=str(p))

    @classmethod
    def coerce(cls, obj: Any = None, **kwargs: Any) -> RunConfig:
        """Accept a RunConfig, dict, YAML path or nothing, then apply keyword overrides."""
        if obj is None:
            cfg = cls()
        elif isinstance(obj, RunConfig):
            cfg = obj
        elif isinstance(obj, dict):
            cfg = cls.from_dict(obj)
        elif isinstance(obj, (str, os.PathLike)) and str(obj).endswith((".yaml", ".yml")):
            cfg = cls.from_yaml(obj)
        else:
            raise ConfigError(f"cannot build a RunConfig from {obj!r} (give a RunConfig, a dict or a .yaml path).")
        if kwargs:
            cfg = cfg.replace(**kwargs)
        return cfg

    def replace(self, **kwargs: Any) -> RunConfig:
        """A copy with fields changed; keys as in :meth:`from_kwargs`. Python callables (reward
        functions) stay callables."""
        base = {
            g: {f.name: _copy(getattr(getattr(self, g), f.name)) for f in dataclasses.fields(cls)}
            for g, cls in GROUPS.items()
        }
        over = _nest({k.replace("__", "."): v for k, v in kwargs.items()})
        for g, vals in over.items():
            base[g].update(vals)
        return RunConfig.from_dict(base)

    def override(self, pairs: list[str]) -> RunConfig:
        """Apply CLI-style ``key=value`` strings (values parsed as YAML scalars)."""
        kw = {}
        for p in pairs:
            if "=" not in p:
                raise ConfigError(f"override {p!r} must look like key=value (e.g. train.max_steps=10).")
            k, v = p.split("=", 1)
            kw[k.strip()] = _parse_scalar(v.strip())
        return self.replace(**kw)

    # ------------------------------------------------------------ validation

    def validate(self) -> None:
        """Every check of a config (see :mod:`kit.config_rules`), in order: group types; finite
        numbers and bounds of each field; knobs the chosen stage does not read; the cross-field
        rules. Raises the first problem as a ConfigError naming its key."""
        for g, cls in GROUPS.items():
            if not isinstance(getattr(self, g), cls):
                raise ConfigError(f"must be a {cls.__name__}.", g)
        problem = config_rules.check(self)
        if problem:
            raise ConfigError(problem.message, problem.key)
        if self.model.trust_remote_code:
            _warn_once(
                f"model.trust_remote_code=true: loading '{self.model.name}' will run the Python code shipped "
                "with the checkpoint. Use it only for models whose code you trust."
            )
        for spec in config_rules.code_references(self):
            _warn_once(f"train.allow_code=true: training will import and run {spec!r} (stage.reward_funcs).")

    # ------------------------------------------------------------ output

    def to_dict(self, minimal: bool = False) -> dict:
        out: dict[str, dict] = {}
        for g, cls in GROUPS.items():
            obj = getattr(self, g)
            default = cls()
            vals = {}
            for f in dataclasses.fields(cls):
                v = getattr(obj, f.name)
                if minimal and v == getattr(default, f.name):
                    continue
                vals[f.name] = _plain(v)
            if vals or not minimal:
                out[g] = vals
        return out

    def to_yaml(self, minimal: bool = False) -> str:
        return yaml.safe_dump(self.to_dict(minimal=minimal), sort_keys=False, default_flow_style=False)

    def save(self, path: str | os.PathLike) -> Path:
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp = p.with_suffix(p.suffix + ".tmp")
        tmp.write_text(self.to_yaml())
        os.replace(tmp, p)
        return p

    def __str__(self) -> str:  # what people print in a notebook
        return self.to_yaml(minimal=True) or "{}  # all defaults\n"


def _nest(d: dict, where: dict | None = None) -> dict[str, dict]:
    """Turn a dict with nested groups, dotted keys and flat unique field names into {group: {field: v}}.

    One knob given twice under different spellings (``train: {max_steps: 3}`` and ``max_steps: 5``)
    is an error naming both, as a duplicate YAML key is.
    """
    fmap = _field_map()
    where = where or {}
    out: dict[str, dict] = {g: {} for g in GROUPS}
    spelled: dict[tuple[str, str], str] = {}  # (group, field) -> the key that set it

    def put(g: str, f: str, v: Any, spelling: str) -> None:
        if f in out[g] and (g, f) in spelled:
            first = spelled[g, f]
            lines = [where.get(s) for s in (first, spelling)]
            at = f" (lines {lines[0]} and {lines[1]})" if None not in lines else ""
            raise ConfigError(f"set twice, as '{first}' and as '{spelling}'{at}; give it once.", f"{g}.{f}", lines[1])
        out[g][f] = v
        spelled[g, f] = spelling

    for k, v in d.items():
        if not isinstance(k, str):
            raise ConfigError(f"keys must be strings, got {k!r}.")
        line = where.get(k)
        if k in GROUPS:
            if isinstance(v, dict):
                for f, x in v.items():
                    put(k, f, x, f"{k}.{f}")
            elif isinstance(v, (RunConfig,)):
                raise ConfigError("give a mapping for a group.", k, line)
            elif dataclasses.is_dataclass(v) and isinstance(v, GROUPS[k]):
                for f in dataclasses.fields(v):
                    put(k, f.name, _copy(getattr(v, f.name)), k)
            elif k in PRIMARY_FIELD:
                put(k, PRIMARY_FIELD[k], v, k)
            else:
                raise ConfigError(f"group '{k}' takes a mapping of its keys, got {v!r}.", k, line)
            continue
        if k in ALIASES:
            g, f = ALIASES[k].split(".")
            put(g, f, v, k)
            continue
        if "." in k:
            g, f = k.split(".", 1)
            if g not in GROUPS:
                raise ConfigError(
                    "unknown group." + _suggest(g, list(GROUPS)) + f" Groups: {', '.join(GROUPS)}.", k, line
                )
            put(g, f, v, k)
            continue
        if k in fmap:
            if len(fmap[k]) > 1:
                options = [f"{full} (used by {used_by(full)})" if used_by(full) else full for full in fmap[k]]
                raise ConfigError(f"ambiguous key; say which group: {' or '.join(options)}.", k, line)
            g, f = fmap[k][0].split(".")
            put(g, f, v, k)
            continue
        options = list(GROUPS) + list(fmap) + list(ALIASES)
        raise ConfigError("unknown key." + _suggest(k, options), k, line)
    return out


def _yaml_lines(node: Any) -> dict[str, int]:
    """Map 'key' and 'group.key' to their 1-based line numbers in the YAML text."""
    where: dict[str, int] = {}
    if node is None or not isinstance(node, yaml.MappingNode):
        return where
    fmap = _field_map()
    for knode, vnode in node.value:
        k = knode.value
        where[k] = knode.start_mark.line + 1
        if isinstance(vnode, yaml.MappingNode):
            for k2, _ in vnode.value:
                where[f"{k}.{k2.value}"] = k2.start_mark.line + 1
        if "." in k:
            where[k] = knode.start_mark.line + 1
        elif k in ALIASES:
            where[ALIASES[k]] = knode.start_mark.line + 1
        elif k in GROUPS and k in PRIMARY_FIELD and not isinstance(vnode, yaml.MappingNode):
            where[f"{k}.{PRIMARY_FIELD[k]}"] = knode.start_mark.line + 1
        else:
            for full in fmap.get(k, []):
                where.setdefault(full, knode.start_mark.line + 1)
    return where


def _copy(v: Any) -> Any:
    """A value as a new config takes it: lists copied, callables kept."""
    return list(v) if isinstance(v, (list, tuple)) else v


def _plain(v: Any) -> Any:
    """YAML-safe value: tuples as lists, Python callables (e.g. reward functions) as 'module:qualname'."""
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    if callable(v) and not isinstance(v, type):
        return f"{getattr(v, '__module__', '?')}:{getattr(v, '__qualname__', repr(v))}"
    return v
