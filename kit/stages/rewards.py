"""Reward functions for online RL (grpo, and ppo's optional extra rewards).

A reward function follows TRL's convention: ``f(prompts, completions, **columns) -> list[float]``
where ``completions`` are strings or ``[{"role": "assistant", "content": ...}]`` lists and the
dataset's other columns (e.g. ``answer``) come as keyword lists. In a config a function is a
built-in name (``exact_match``, ``contains``, ``format`` / ``format:<regex>``, ``length`` /
``length:<target chars>``), ``module:function``, or a Python callable.
"""

from __future__ import annotations

import importlib
import re
from typing import Any, Callable, Optional

from ..config import ConfigError

RewardFn = Callable[..., list]


def completion_text(c: Any) -> str:
    if isinstance(c, str):
        return c
    if isinstance(c, list) and c and isinstance(c[-1], dict):
        return str(c[-1].get("content", ""))
    return str(c)


def _norm(s: str) -> str:
    return " ".join(str(s).strip().lower().split()).rstrip(".")


def exact_match(prompts, completions, answer=None, **_) -> list[float]:
    """1.0 when the completion (stripped, case- and space-insensitive) equals the row's ``answer``."""
    if answer is None:
        raise ConfigError(
            "exact_match needs an 'answer' column in the prompt dataset, which has none; add answers "
            "to the rows or choose another reward.",
            "stage.reward_funcs",
        )
    return [float(_norm(completion_text(c)) == _norm(a)) if a is not None else 0.0 for c, a in zip(completions, answer)]


def contains(prompts, completions, answer=None, **_) -> list[float]:
    """1.0 when the row's ``answer`` appears in the completion (looser than exact_match)."""
    if answer is None:
        raise ConfigError(
            "contains needs an 'answer' column in the prompt dataset, which has none; add answers "
            "to the rows or choose another reward.",
            "stage.reward_funcs",
        )
    return [float(a is not None and _norm(a) in _norm(completion_text(c))) for c, a in zip(completions, answer)]


def make_format(pattern: str) -> RewardFn:
    """1.0 when the whole completion matches ``pattern`` (re.fullmatch, DOTALL)."""
    rx = re.compile(pattern, re.DOTALL)

    def format_reward(prompts, completions, **_) -> list[float]:
        return [float(rx.fullmatch(completion_text(c).strip()) is not None) for c in completions]

    format_reward.__name__ = "format"
    return format_reward


def make_length(target: Optional[int] = None) -> RewardFn:
    """Without a target: longer is better (chars / 100, capped at 1). With one: 1 - |len - target| / target."""

    def length_reward(prompts, completions, **_) -> list[float]:
        out = []
        for c in completions:
            n = len(completion_text(c))
            out.append(min(n / 100.0, 1.0) if target is None else max(0.0, 1.0 - abs(n - target) / target))
        return out

    length_reward.__name__ = "length"
    return length_reward


# the default format: a final answer given as "<answer>...</answer>"
DEFAULT_FORMAT = r".*<answer>.+?</answer>"
BUILTINS = {
    "exact_match": lambda arg: exact_match,
    "contains": lambda arg: contains,
    "format": lambda arg: make_format(arg or DEFAULT_FORMAT),
    "length": lambda arg: make_length(int(arg) if arg else None),
}


def resolve_reward(spec: Any) -> RewardFn:
    """A callable from a callable, a built-in name (``name`` or ``name:arg``) or ``module:function``."""
    if callable(spec):
        return spec
    if not isinstance(spec, str) or not spec.strip():
        raise ConfigError(f"expected a name or a callable, got {spec!r}.", "stage.reward_funcs")
    name, _, arg = spec.partition(":")
    if name in BUILTINS:
        return BUILTINS[name](arg or None)
    if arg:
        try:
            fn = getattr(importlib.import_module(name), arg)
        except (ImportError, AttributeError) as e:
            raise ConfigError(f"cannot import '{spec}': {e}", "stage.reward_funcs") from None
        if not callable(fn):
            raise ConfigError(f"'{spec}' is not callable.", "stage.reward_funcs")
        return fn
    raise ConfigError(
        f"unknown reward '{spec}'; built-ins: {', '.join(BUILTINS)} (format:<regex>, length:<chars>), "
        "or 'module:function'.",
        "stage.reward_funcs",
    )


def resolve_rewards(specs: Any) -> list[RewardFn]:
    if specs is None:
        return []
    if callable(specs) or isinstance(specs, str):
        specs = [specs]
    return [resolve_reward(s) for s in specs]
