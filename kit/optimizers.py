"""Optimizers transformers' ``optim`` names do not build: Muon (``train.optim=muon``), Adam-mini
(``adam_mini``) and BAdam (``badam``), the last two from the optimizers extra.

Muon (``torch.optim.Muon``) orthogonalises the momentum of 2-D weight matrices with Newton-Schulz
iterations; it is defined for matrices only, so, as in the Muon paper and Moonlight, the 2-D weights
inside the decoder blocks go to Muon and everything else (embeddings, the head, norms, biases) to
AdamW. :class:`MuonWithAdamW` is one ``torch.optim.Optimizer`` over both, sharing its param groups
and state with the two inner optimizers, so the trainer's scheduler sets both learning rates and a
checkpoint's ``optimizer.pt`` holds (and restores) the state of both.
"""

from __future__ import annotations

import re
import warnings

import torch
from torch import nn

__all__ = [
    "MuonWithAdamW",
    "build_muon",
    "muon_param_names",
    "muon_state_bytes",
    "build_adam_mini",
    "build_badam",
    "build_own_optimizer",
    "adam_mini_state_bytes",
    "badam_state_bytes",
    "BUILDERS",
]


def muon_param_names(model: nn.Module) -> set[str]:
    """Trainable 2-D weights inside the decoder blocks: what Muon optimizes."""
    return {n for n, p in model.named_parameters() if p.requires_grad and p.dim() == 2 and ".layers." in n}


class MuonWithAdamW(torch.optim.Optimizer):
    """Muon on ``muon_params``, AdamW on ``adamw_params``, as one optimizer.

    ``adjust_lr_fn="match_rms_adamw"`` scales Muon's update to AdamW's RMS (Moonlight), so one
    learning rate suits both halves.
    """

    def __init__(self, muon_params: list, adamw_params: list, lr: float, weight_decay: float = 0.0):
        self._inner: list[torch.optim.Optimizer] = []
        if muon_params:
            self._inner.append(
                torch.optim.Muon(muon_params, lr=lr, weight_decay=weight_decay, adjust_lr_fn="match_rms_adamw")
            )
        if adamw_params:
            self._inner.append(torch.optim.AdamW(adamw_params, lr=lr, weight_decay=weight_decay))
        if not self._inner:
            raise ValueError("train.optim=muon: the model has no trainable parameters")
        self._sizes = [len(o.param_groups) for o in self._inner]
        # the same group dicts as the inner optimizers (Optimizer.add_param_group keeps the dict)
        super().__init__([g for o in self._inner for g in o.param_groups], defaults={"lr": lr})
        self._link()

    def _link(self) -> None:
        """Point the inner optimizers at this one's groups and state (again after a load)."""
        start = 0
        for o, n in zip(self._inner, self._sizes):
            o.param_groups = self.param_groups[start : start + n]
            o.state = self.state
            start += n

    def load_state_dict(self, state_dict: dict) -> None:
        super().load_state_dict(state_dict)  # replaces self.state and self.param_groups
        self._link()

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for o in self._inner:
            o.step()
        return loss


def build_muon(model: nn.Module, cfg) -> MuonWithAdamW:
    names = muon_param_names(model)
    muon, adamw = [], []
    for n, p in model.named_parameters():
        if p.requires_grad:
            (muon if n in names else adamw).append(p)
    return MuonWithAdamW(muon, adamw, lr=cfg.train.learning_rate, weight_decay=cfg.train.weight_decay)


def muon_state_bytes(model: nn.Module) -> int:
    """One fp32 momentum buffer per Muon weight; AdamW's two moments for the rest."""
    names = muon_param_names(model)
    return sum((4 if n in names else 8) * p.numel() for n, p in model.named_parameters() if p.requires_grad)


# ------------------------------------------------------------------ Adam-mini and BAdam (the optimizers extra)
# Both are built here and handed to the trainer by the sft/pt recipes (as Muon), since transformers'
# ``optim`` names do not include them; their packages are optional, imported when a run asks for them.


def _text_config(model: nn.Module):
    c = model.config
    return c.get_text_config() if hasattr(c, "get_text_config") else c


def _require(module: str, package: str, optim: str):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise ImportError(
            f"train.optim={optim} needs the {package} package ({e}): "
            f"pip install 'forge-kit[optimizers]' (or pip install --no-deps {package})"
        ) from e


def build_adam_mini(model: nn.Module, cfg):
    """Adam-mini (``adam-mini``): Adam's first moment per weight, but one second moment per block
    (per head for q/k, per neuron for v, o and the MLP, per token for embeddings and head) instead of
    one per weight, about half of AdamW's state. The blocks come from the parameter names and the
    model's hidden size and head counts."""
    Adam_mini = _require("adam_mini", "adam-mini", "adam_mini").Adam_mini
    c = _text_config(model)
    return Adam_mini(
        named_parameters=list(model.named_parameters()),
        lr=cfg.train.learning_rate,
        weight_decay=cfg.train.weight_decay,
        dim=c.hidden_size,
        n_heads=c.num_attention_heads,
        n_kv_heads=getattr(c, "num_key_value_heads", None) or c.num_attention_heads,
        verbose=False,
    )


def adam_mini_state_bytes(model: nn.Module) -> int:
    """The fp32 first moment of every trainable weight; the per-block second moments are a rounding error."""
    return sum(4 * p.numel() for p in model.parameters() if p.requires_grad)


def badam_blocks(model: nn.Module) -> list[list[str]]:
    """BAdam's blocks: one per decoder layer (``...layers.N.``), as BAdam itself infers them."""
    ids = sorted({int(m.group(1)) for n, _ in model.named_parameters() if (m := re.search(r"\.layers\.(\d+)\.", n))})
    prefix = next(n for n, _ in model.named_parameters() if ".layers." in n).split(".layers.")[0]
    return [[f"{prefix}.layers.{i}."] for i in ids]


def badam_state_bytes(model: nn.Module) -> int:
    """One block trains at a time: its fp32 copy and AdamW's two moments, for the largest block."""
    sizes = {}
    for n, p in model.named_parameters():
        m = re.search(r"\.layers\.(\d+)\.", n)
        if m and p.requires_grad:
            sizes[m.group(1)] = sizes.get(m.group(1), 0) + p.numel()
    return 12 * max(sizes.values(), default=0)


def build_badam(model: nn.Module, cfg):
    """BAdam (``badam``): block coordinate descent; Adam on one decoder layer at a time, switching
    every ``train.badam_switch_every`` steps in ``train.badam_switch_mode`` order. Only the active
    block has gradients and optimizer state. See :class:`ResumableBlockOptimizer` for checkpoints."""
    BlockOptimizer = _require("badam", "badam", "badam").BlockOptimizer

    class ResumableBlockOptimizer(BlockOptimizer):
        """BAdam's BlockOptimizer, whose checkpoint also holds where the block schedule is.

        Upstream saves only the base optimizer's state (its ``load_state_dict`` is even a property,
        so a resume would fail), and restarts the schedule at the first block. Here the state names
        the active block, the step count and the random order left, and loading rebuilds the active
        block's fp32 copy from the restored weights (the Trainer loads them first) before its moments."""

        def __init__(self, *args, **kwargs):
            with warnings.catch_warnings():  # "expects bf16 weights": fp32 full tuning is what CPUs run
                warnings.simplefilter("ignore")
                super().__init__(*args, **kwargs)
            del self.state_dict  # upstream binds the base optimizer's; the method below adds the schedule

        def switch_trainable_params(self, verbose=None):
            self.active_block = self.current_block_idx
            self._order_left = list(getattr(self, "block_order", []))
            super().switch_trainable_params(verbose=0)

        def state_dict(self):
            return {
                "base": self.base_optimizer.state_dict(),
                "active_block": self.active_block,
                "global_step": self.global_step,
                "order_left": self._order_left,
            }

        def load_state_dict(self, state_dict):
            self.current_block_idx = state_dict["active_block"]
            self.global_step = state_dict["global_step"]
            if self.switch_mode == "random":
                self.block_order = list(state_dict["order_left"])
            self.switch_trainable_params()
            self.base_optimizer.load_state_dict(state_dict["base"])

    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    decay = [p for n, p in named if p.dim() >= 2]
    rest = [p for n, p in named if p.dim() < 2]
    base = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.train.weight_decay}, {"params": rest, "weight_decay": 0.0}],
        lr=cfg.train.learning_rate,
    )
    t = cfg.train
    return ResumableBlockOptimizer(
        base,
        named,
        block_prefix_list=badam_blocks(model),
        switch_block_every=t.badam_switch_every,
        switch_mode=t.badam_switch_mode,
        verbose=0,
    )


BUILDERS = {"muon": build_muon, "adam_mini": build_adam_mini, "badam": build_badam}


def build_own_optimizer(model: nn.Module, cfg):
    """The optimizer of a ``train.optim`` this module builds (None for transformers' own names)."""
    fn = BUILDERS.get(cfg.train.optim)
    return fn(model, cfg) if fn is not None else None
