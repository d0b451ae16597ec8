"""Every check of a RunConfig: per field, per stage, and the cross-field rules as one ordered table.

A check looks at a whole config and returns what is wrong with it (the key to name and a message
that says what to change), or None. :meth:`kit.config.RunConfig.validate` runs :func:`check`,
which goes in this order and stops at the first problem (raised as a ConfigError):

1. each field: finite numbers and the bounds declared in its metadata (``min``, ``max``, ``gt``);
2. each knob that declares the stages reading it (``stages``, ``loss_types``): set to anything
   but its default while the chosen stage ignores it;
3. the cross-field rules of :data:`RULES`, in order. A rule may assume steps 1 and 2 passed.

Simple rules are rows of :data:`RULES`; a rule that needs more than a line is a function below
the table, listed in it by name. This module imports nothing from ``kit``: it sees a config
through its attributes and its dataclass fields' metadata, so :mod:`kit.config` imports it
without a cycle.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import importlib.util
import math
import re
from dataclasses import dataclass
from typing import Any, Callable, NamedTuple, Optional, Union

__all__ = [
    "Problem",
    "Rule",
    "RULES",
    "check",
    "reads",
    "users",
    "REPORT_TO",
    "REWARD_BUILTINS",
    "dataset_refs",
    "code_references",
    "tracker_installed",
]

LOSS_TYPE_STAGE = "dpo"  # the stage whose stage.loss_type picks among variants (a knob's ``loss_types``)


class Problem(NamedTuple):
    key: str  # the dotted key the message is about ("train.eval_steps")
    message: str  # what is wrong and what to change


@dataclass(frozen=True)
class Rule:
    """``broken(cfg)`` is true when the config breaks the rule; ``message`` may read the config."""

    key: str
    broken: Callable[[Any], bool]
    message: Union[str, Callable[[Any], str]]

    def __call__(self, c: Any) -> Optional[Problem]:
        if not self.broken(c):
            return None
        return Problem(self.key, self.message(c) if callable(self.message) else self.message)


# ------------------------------------------------------------------ 1. each field


@functools.cache
def _fields(cls: type) -> tuple:
    return dataclasses.fields(cls)  # slow enough to matter when every build checks every field twice


def _knobs(c: Any):
    """(dotted key, field, value) of every knob of the config, groups in order."""
    for group in _fields(type(c)):
        obj = getattr(c, group.name)
        for f in _fields(type(obj)):
            yield f"{group.name}.{f.name}", f, getattr(obj, f.name)


def _floats(v: Any):
    if isinstance(v, float):
        yield v
    elif isinstance(v, (list, tuple)):
        for x in v:
            yield from _floats(x)


def field_problem(f: dataclasses.Field, v: Any) -> Optional[str]:
    """Finite numbers (in lists too) and the declared bounds of one field's value."""
    if any(not math.isfinite(x) for x in _floats(v)):
        return f"must be a finite number, got {v}."
    if not isinstance(v, (int, float)) or isinstance(v, bool):
        return None
    m = f.metadata
    why = f" {m['why']}" if m.get("why") else ""
    if m.get("gt") is not None and not v > m["gt"]:
        return f"must be > {m['gt']}, got {v}.{why}"
    if m.get("min") is not None and v < m["min"]:
        return f"must be >= {m['min']}, got {v}.{why}"
    if m.get("max") is not None and v > m["max"]:
        return f"must be <= {m['max']}, got {v}.{why}"
    return None


# ------------------------------------------------------------------ 2. knobs the stage does not read


def reads(meta: Any, stage: str, loss_type: Optional[str] = None) -> bool:
    """Whether ``stage`` (with ``loss_type``, for dpo) reads the knob with field metadata ``meta``."""
    stages, losses = meta.get("stages"), meta.get("loss_types")
    if stages is not None and stage not in stages:
        return False
    return not (stage == LOSS_TYPE_STAGE and losses is not None and loss_type is not None and loss_type not in losses)


def users(meta: Any) -> str:
    """ "dpo (loss_type sigmoid, ipo, hinge), kto" from the metadata; "" when every stage reads the knob."""
    stages, losses = meta.get("stages"), meta.get("loss_types")
    if stages is None:
        return ""
    return ", ".join(f"{s} (loss_type {', '.join(losses)})" if s == LOSS_TYPE_STAGE and losses else s for s in stages)


def _default(f: dataclasses.Field) -> Any:
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default


def unread_knob_problem(c: Any) -> Optional[Problem]:
    """A knob set (to anything but its default) that the chosen stage does not read."""
    stage, loss = c.stage.name, c.stage.loss_type
    for key, f, v in _knobs(c):
        if f.metadata.get("stages") is None or reads(f.metadata, stage, loss) or v == _default(f):
            continue
        if stage in f.metadata["stages"]:  # the dpo loss decides
            return Problem(
                key,
                f"is read only by stage(s) {users(f.metadata)}; {stage} with loss_type '{loss}' "
                "ignores it. Leave it out or change stage.loss_type.",
            )
        return Problem(
            key,
            f"is read only by stage(s) {users(f.metadata)}; stage '{stage}' ignores it. "
            "Leave it out or set stage.name to one of those.",
        )
    return None


# ------------------------------------------------------------------ 3. cross-field rules


def dataset_refs(x: Any) -> list[str]:
    """The dataset references of ``data.dataset`` / ``data.eval_dataset`` (comma string or list),
    split as the data pipeline splits them."""
    if x is None:
        return []
    if isinstance(x, str):
        return [r.strip() for r in x.split(",") if r.strip()]
    return [str(r) for r in x]


def _has_validation_set(c: Any) -> bool:
    return bool(dataset_refs(c.data.eval_dataset)) or c.data.val_size > 0


# ------------------------------------------------------------------ trackers (train.report_to)

# name -> modules any of which makes it usable (transformers' own is_*_available checks)
REPORT_TO = {
    "none": (),
    "tensorboard": ("tensorboard", "tensorboardX"),
    "trackio": ("trackio",),
    "mlflow": ("mlflow",),
    "wandb": ("wandb",),
    "swanlab": ("swanlab",),
}
TRACK_EXTRA = "pip install 'forge-kit[track]'"


def _installed(module: str) -> bool:
    """Whether ``module`` can be imported, without importing it."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a broken parent package, or a module object without __spec__
        return False


def tracker_installed(name: str) -> bool:
    """Whether the tracker ``name`` of :data:`REPORT_TO` can be used here (``none`` always can)."""
    modules = REPORT_TO[name]
    return not modules or any(_installed(m) for m in modules)


def report_to_problem(c: Any) -> Optional[Problem]:
    names = c.train.report_to
    for name in names:
        if not isinstance(name, str) or name not in REPORT_TO:
            close = difflib.get_close_matches(str(name), list(REPORT_TO), n=1, cutoff=0.6)
            hint = f" Did you mean '{close[0]}'?" if close else ""
            return Problem(
                "train.report_to",
                f"unknown tracker {name!r}.{hint} Known: {', '.join(REPORT_TO)} (one name or a list).",
            )
    if "none" in names and len(names) > 1:
        return Problem("train.report_to", f"'none' cannot be combined with other trackers, got {names}.")
    for name in names:
        modules = REPORT_TO[name]
        if not tracker_installed(name):
            return Problem(
                "train.report_to",
                f"'{name}' is not installed; install the trackers with {TRACK_EXTRA} (or: pip install {modules[0]}).",
            )
    return None


# ------------------------------------------------------------------ more than one process (train.distributed)


def distributed_problem(c: Any) -> Optional[Problem]:
    from .launch import distributed_problem as check  # presets and checks live with the launcher

    found = check(c)
    return Problem(*found) if found else None


# ------------------------------------------------------------------ reward functions (stage.reward_funcs)

# built-in reward names -> the kind of argument after "name:" (None: takes none); resolved by
# kit.stages.rewards.BUILTINS (a test keeps the two lists the same)
REWARD_BUILTINS: dict[str, Optional[str]] = {"exact_match": None, "contains": None, "format": "regex", "length": "int"}
_DOTTED = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")


def code_references(c: Any) -> list[str]:
    """The ``module:function`` strings in the config: code that training would import and call."""
    out = []
    for spec in c.stage.reward_funcs or []:
        if isinstance(spec, str):
            name, sep, _ = spec.strip().partition(":")
            if sep and name not in REWARD_BUILTINS:
                out.append(spec.strip())
    return out


def _reward_spec_problem(spec: Any, allow_code: bool) -> Optional[str]:
    if callable(spec):
        return None  # a Python callable from a notebook: already code the user chose to run
    if not isinstance(spec, str) or not spec.strip():
        return f"expected a built-in reward name, 'module:function' or a Python callable, got {spec!r}."
    name, sep, arg = spec.strip().partition(":")
    if name in REWARD_BUILTINS:
        kind = REWARD_BUILTINS[name]
        if sep and kind is None:
            return f"the built-in reward '{name}' takes no argument, got {spec!r}."
        if sep and kind == "regex":
            try:
                re.compile(arg)
            except re.error as e:
                return f"{spec!r}: the pattern after 'format:' is not a valid regular expression ({e})."
        if sep and kind == "int" and not (arg.isdigit() and int(arg) > 0):
            return f"{spec!r}: the target after 'length:' must be a positive number of characters."
        return None
    if not sep:
        close = difflib.get_close_matches(name, list(REWARD_BUILTINS), n=1, cutoff=0.6)
        return (
            f"unknown reward {spec!r}."
            + (f" Did you mean '{close[0]}'?" if close else "")
            + f" Built-ins: {', '.join(REWARD_BUILTINS)} (format:<regex>, length:<chars>), or 'module:function'."
        )
    if not (_DOTTED.fullmatch(name) and _DOTTED.fullmatch(arg)):
        return f"{spec!r} is not an importable 'module:function' (dotted names on both sides of the colon)."
    if not allow_code:
        return (
            f"{spec!r} would import the Python module '{name}' and call its '{arg}' during training. "
            "Code named in a config runs only with train.allow_code=true (set it only if you trust this "
            "config); a Python callable passed from a notebook needs no opt-in."
        )
    return None


def reward_funcs_problem(c: Any) -> Optional[Problem]:
    for spec in c.stage.reward_funcs or []:
        msg = _reward_spec_problem(spec, c.train.allow_code)
        if msg:
            return Problem("stage.reward_funcs", msg)
    return None


def _online_rl_needs_a_reward(c: Any) -> bool:
    return c.stage.name in ("grpo", "ppo") and not c.stage.reward_funcs and not c.stage.reward_model


# ------------------------------------------------------------------ data


def interleave_probs_problem(c: Any) -> Optional[Problem]:
    d = c.data
    probs = d.interleave_probs
    if probs is None:
        return None
    if d.mix_strategy == "concat":
        return Problem(
            "data.interleave_probs", "interleave_probs needs mix_strategy interleave_under or interleave_over."
        )
    if not all(isinstance(p, (int, float)) and not isinstance(p, bool) and p >= 0 for p in probs) or sum(probs) <= 0:
        return Problem("data.interleave_probs", f"must be non-negative numbers with a positive sum, got {probs}.")
    n = len(dataset_refs(d.dataset))
    if len(probs) != n:
        return Problem("data.interleave_probs", f"has {len(probs)} values for {n} dataset(s) in data.dataset.")
    return None


# ------------------------------------------------------------------ the table, in the order it is checked

RULES: list[Callable[[Any], Optional[Problem]]] = [
    # what the base model allows
    Rule(
        "adapter.type",
        lambda c: c.quant.bits is not None and c.adapter.type != "lora",
        lambda c: (
            f"a {c.quant.bits}-bit quantized base cannot be trained with adapter.type='{c.adapter.type}'; "
            "quantized weights are frozen, so use adapter.type=lora (QLoRA) or quant.bits=null."
        ),
    ),
    Rule(
        "adapter.init",
        lambda c: c.adapter.init == "loftq" and c.quant.bits is not None,
        "LoftQ initialisation quantizes the base itself; set quant.bits=null with adapter.init=loftq.",
    ),
    Rule(
        "adapter.init",
        lambda c: c.adapter.init == "pissa" and c.quant.bits is not None,
        "PiSSA initialisation needs full-precision base weights; set quant.bits=null.",
    ),
    Rule(
        "adapter.resume_adapter",
        lambda c: bool(c.adapter.resume_adapter) and c.quant.bits is not None,
        "stacking merges the old adapter into the base, which needs quant.bits=null.",
    ),
    # adapter and optimizer together
    Rule(
        "adapter.loraplus_lr_ratio",
        lambda c: (
            c.adapter.loraplus_lr_ratio is not None and (c.adapter.type != "lora" or c.train.optim != "adamw_torch")
        ),
        "LoRA+ needs adapter.type=lora and train.optim=adamw_torch.",
    ),
    # transformers would run it, projecting the already low-rank LoRA A/B gradients: a no-op at best
    Rule(
        "train.optim",
        lambda c: c.train.optim == "galore_adamw" and c.adapter.type == "lora",
        "GaLore projects the gradients of full weight matrices to low rank, which is what LoRA already does; "
        "use train.optim=galore_adamw with adapter.type=full (or freeze), or another optimizer with LoRA.",
    ),
    Rule(
        "train.optim",
        lambda c: c.train.optim == "apollo_adamw" and c.adapter.type in ("lora", "oft"),
        "APOLLO, like GaLore, compresses the optimizer state of full weight matrices; use it with "
        "adapter.type=full (or freeze), and another optimizer with LoRA.",
    ),
    Rule(
        "train.optim",
        lambda c: c.train.optim == "adam_mini" and c.adapter.type in ("lora", "oft"),
        "Adam-mini shares second moments over the heads and neurons of full weight matrices; use it with "
        "adapter.type=full (or freeze), and another optimizer with LoRA.",
    ),
    # BAdam's blocks are whole decoder layers: LoRA / freeze already choose what trains, and GaLore / APOLLO
    # are other train.optim values, so the two never meet
    Rule(
        "train.optim",
        lambda c: c.train.optim == "badam" and c.adapter.type != "full",
        "BAdam trains one whole decoder layer at a time: use it with adapter.type=full (LoRA, OFT and freeze "
        "already choose the weights that train).",
    ),
    Rule(
        "train.badam_switch_every",
        lambda c: (
            c.train.optim != "badam" and (c.train.badam_switch_every != 50 or c.train.badam_switch_mode != "ascending")
        ),
        "is read only with train.optim=badam (as is train.badam_switch_mode).",
    ),
    Rule(
        "train.pure_bf16",
        lambda c: c.train.pure_bf16 and (c.quant.bits is not None or c.model.dtype not in ("auto", "bfloat16")),
        lambda c: (
            "pure bf16 keeps the weights in bf16: leave model.dtype auto (or bfloat16) and quant.bits=null"
            f" (got dtype {c.model.dtype}, bits {c.quant.bits})."
        ),
    ),
    Rule(
        "train.optim",
        lambda c: (
            c.train.optim in ("galore_adamw", "apollo_adamw", "muon", "adam_mini", "badam") and c.quant.bits is not None
        ),
        lambda c: (
            f"train.optim={c.train.optim} optimizes full weight matrices; a quantized base trains only "
            "LoRA weights: use adamw_torch or adamw_8bit with quant.bits."
        ),
    ),
    Rule(
        "train.optim",
        lambda c: c.train.optim in ("muon", "adam_mini", "badam") and c.stage.name not in ("sft", "pt"),
        lambda c: (
            f"train.optim={c.train.optim} is built by the sft and pt recipes; stage '{c.stage.name}' would train with "
            "AdamW instead. Use another optimizer for this stage."
        ),
    ),
    Rule(
        "model.shift_attn_group",
        lambda c: (
            c.model.shift_attn and c.data.cutoff_len % (c.model.shift_attn_group or max(c.data.cutoff_len // 4, 1))
        ),
        lambda c: (
            f"S²-attn splits each row into groups: the group size {c.model.shift_attn_group} must divide "
            f"data.cutoff_len={c.data.cutoff_len}."
        ),
    ),
    Rule(
        "model.shift_attn",
        lambda c: c.model.shift_attn and (not c.data.padding_free or c.model.attn_implementation == "eager"),
        "S²-attn is written for padding-free batches: keep data.padding_free=true and attn_implementation not eager.",
    ),
    Rule(
        "adapter.llama_pro_blocks",
        lambda c: c.adapter.llama_pro_blocks > 0 and c.adapter.type != "freeze",
        "LLaMA Pro trains only the added blocks: set adapter.type=freeze with adapter.llama_pro_blocks.",
    ),
    Rule(
        "adapter.oft_block_size",
        lambda c: c.adapter.type != "oft" and c.adapter.oft_block_size != 32,
        "is read only with adapter.type=oft.",
    ),
    Rule(
        "stage.reward_model_quantization_bit",
        lambda c: c.stage.reward_model_quantization_bit is not None and not c.stage.reward_model,
        "quantizes stage.reward_model, which is not set: set stage.reward_model (an rm run) or leave this out.",
    ),
    Rule(
        "stage.ref_model_quantization_bit",
        lambda c: c.stage.ref_model_quantization_bit is not None and not c.stage.ref_model,
        "quantizes stage.ref_model, which is not set (the reference is then the policy with its adapter off); "
        "set stage.ref_model or leave this out.",
    ),
    Rule(
        "adapter.freeze_trainable_layers",
        lambda c: c.adapter.type == "freeze" and c.adapter.freeze_trainable_layers == 0,
        "must not be 0 (positive: last n layers, negative: first n).",
    ),
    # the loop
    Rule(
        "train.max_steps",
        lambda c: c.train.max_steps == 0 or c.train.max_steps < -1,
        lambda c: f"must be -1 (use num_epochs) or a positive number of steps, got {c.train.max_steps}.",
    ),
    Rule(
        "train.num_epochs",
        lambda c: c.train.max_steps == -1 and c.train.num_epochs == 0,
        "0 epochs with train.max_steps=-1 would train nothing; set num_epochs > 0 or max_steps.",
    ),
    Rule(
        "train.micro_batch_size",
        lambda c: c.train.micro_batch_size is not None and c.train.batch_size % c.train.micro_batch_size != 0,
        lambda c: (
            f"must divide train.batch_size={c.train.batch_size} (each optimizer step is "
            "batch_size / micro_batch_size forward passes)."
        ),
    ),
    Rule(
        "train.eval_steps",
        lambda c: c.train.eval_steps is not None and not _has_validation_set(c),
        "evaluating every n steps needs a validation set: set data.eval_dataset or data.val_size > 0, "
        "or leave eval_steps out.",
    ),
    # data
    Rule(
        "data.dataset",
        lambda c: not dataset_refs(c.data.dataset),
        "no dataset given: name a registered dataset or a file (json/jsonl/csv/parquet).",
    ),
    Rule(
        "data.val_size",
        lambda c: c.data.val_size > 0 and bool(dataset_refs(c.data.eval_dataset)),
        "data.eval_dataset is given, so no rows are held out and val_size would be ignored; set one of the two.",
    ),
    Rule(
        "data.val_size",
        lambda c: c.data.val_size >= 1 and not float(c.data.val_size).is_integer(),
        lambda c: f"below 1 it is a fraction, from 1 on a whole number of rows; got {c.data.val_size}.",
    ),
    interleave_probs_problem,
    # online RL
    Rule(
        "stage.reward_funcs",
        _online_rl_needs_a_reward,
        lambda c: (
            f"{c.stage.name} needs stage.reward_funcs (e.g. ['exact_match'] or ['format:<regex>']) "
            "and/or stage.reward_model (the run directory of an rm stage run)."
        ),
    ),
    reward_funcs_problem,
    distributed_problem,
    Rule(
        "stage.num_generations",
        lambda c: c.stage.name == "grpo" and (c.train.batch_size * c.train.grad_accum) % c.stage.num_generations != 0,
        lambda c: (
            f"grpo: train.batch_size x train.grad_accum ({c.train.batch_size} x {c.train.grad_accum}) must be "
            f"a multiple of stage.num_generations ({c.stage.num_generations}): each prompt's group is one batch."
        ),
    ),
    Rule(
        "train.grad_accum",
        lambda c: c.stage.name == "ppo" and c.train.grad_accum != 1,
        "ppo: train.grad_accum must be 1 (each rollout batch is optimised stage.ppo_epochs times).",
    ),
    # what must be installed here
    Rule(
        "stage.use_vllm",
        lambda c: c.stage.use_vllm and not _installed("vllm"),
        "stage.use_vllm=true needs vllm installed: pip install 'forge-kit[vllm]' (and a GPU).",
    ),
    report_to_problem,
]


def check(c: Any) -> Optional[Problem]:
    """The first problem of the config (fields, then unread knobs, then the table), or None."""
    for key, f, v in _knobs(c):
        msg = field_problem(f, v)
        if msg:
            return Problem(key, msg)
    problem = unread_knob_problem(c)
    if problem is not None:
        return problem
    for rule in RULES:
        problem = rule(c)
        if problem is not None:
            return problem
    return None
