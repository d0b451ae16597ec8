"""Training stages: one small recipe module per method, registered by name.

A recipe says which kind of data it needs and builds a (TRL) trainer from a
:class:`~kit.stages.common.StageContext`. The engine owns everything around it (loading,
adapters, events, checkpoints, saving), so a recipe stays a page long.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Callable


@dataclass(frozen=True)
class Recipe:
    name: str
    data_kind: str                    # sft | text | preference | kto | prompt
    build: Callable[[Any], Any]       # StageContext -> trainer with .train()
    head: str = "causal_lm"           # causal_lm | sequence_classification
    description: str = ""
    metrics: tuple = ()               # metric names a stage logs besides loss (for panels)


_RECIPES: dict[str, Recipe] = {}
STAGE_MODULES = {"sft": "sft", "pt": "pt", "rm": "rm", "dpo": "dpo", "kto": "kto", "grpo": "grpo", "ppo": "ppo"}


def register_recipe(recipe: Recipe) -> Recipe:
    _RECIPES[recipe.name] = recipe
    return recipe


def get_recipe(name: str) -> Recipe:
    if name not in _RECIPES and name in STAGE_MODULES:
        try:
            importlib.import_module(f"kit.stages.{STAGE_MODULES[name]}")
        except ModuleNotFoundError as e:
            if e.name == f"kit.stages.{STAGE_MODULES[name]}":
                raise NotImplementedError(f"stage '{name}' is not available in this version of forge-kit") from None
            raise
    if name not in _RECIPES:
        raise KeyError(f"unknown stage '{name}'; known: {', '.join(STAGE_MODULES)}")
    return _RECIPES[name]


def available_stages() -> list[str]:
    out = []
    for n in STAGE_MODULES:
        try:
            get_recipe(n)
            out.append(n)
        except NotImplementedError:
            pass
    return out
