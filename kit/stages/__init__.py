"""Training stages: one small recipe module per method, registered by name.

A recipe says which kind of data it needs and builds a (TRL) trainer from a
:class:`~kit.stages.common.StageContext`. The engine owns everything around it (loading,
adapters, events, checkpoints, saving), so a recipe stays a page long.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Callable

from ..config import ConfigError


@dataclass(frozen=True)
class Recipe:
    """What the engine needs to know of a stage, so that its life cycle names no stage.

    ``model_class``: what loads the base model (``None``: a causal LM; anything with
    ``from_pretrained(path, **kw)``, e.g. a one-logit classifier for reward models);
    ``peft_task_type``: the LoRA adapter's task type, which decides what peft saves with it (the
    score head for ``SEQ_CLS``); ``collapse_checks``: which signs of a collapsed run the numerics
    guard watches for (:mod:`kit.numerics`): ``zero_grad_norm`` (the gradient is exactly zero for
    several steps) and ``uniform_loss`` (a token cross-entropy stuck at ln(vocab), i.e. uniform
    output). Online RL leaves both out: a group whose completions score alike has no advantage and
    a zero gradient, legitimately.
    """

    name: str
    data_kind: str  # sft | text | preference | kto | prompt
    build: Callable[[Any], Any]  # StageContext -> trainer with .train()
    description: str = ""
    metrics: tuple = ()  # metric names a stage logs besides loss (for panels)
    model_class: Any = None
    peft_task_type: str = "CAUSAL_LM"
    collapse_checks: tuple = ("zero_grad_norm",)


_RECIPES: dict[str, Recipe] = {}
STAGE_MODULES = {"sft": "sft", "pt": "pt", "rm": "rm", "dpo": "dpo", "kto": "kto", "grpo": "grpo", "ppo": "ppo"}


def register_recipe(recipe: Recipe) -> Recipe:
    _RECIPES[recipe.name] = recipe
    return recipe


def get_recipe(name: str) -> Recipe:
    """The recipe of stage ``name``, importing its module on first use (each imports its trainer library)."""
    if name not in _RECIPES and name in STAGE_MODULES:
        importlib.import_module(f"kit.stages.{STAGE_MODULES[name]}")
    if name not in _RECIPES:
        raise ConfigError(f"unknown stage '{name}'; known: {', '.join(STAGE_MODULES)}.", "stage.name")
    return _RECIPES[name]
