"""Optimizers transformers' ``optim`` names do not build: Muon (``train.optim=muon``).

Muon (``torch.optim.Muon``) orthogonalises the momentum of 2-D weight matrices with Newton-Schulz
iterations; it is defined for matrices only, so, as in the Muon paper and Moonlight, the 2-D weights
inside the decoder blocks go to Muon and everything else (embeddings, the head, norms, biases) to
AdamW. :class:`MuonWithAdamW` is one ``torch.optim.Optimizer`` over both, sharing its param groups
and state with the two inner optimizers, so the trainer's scheduler sets both learning rates and a
checkpoint's ``optimizer.pt`` holds (and restores) the state of both.
"""
from __future__ import annotations

import torch
from torch import nn

__all__ = ["MuonWithAdamW", "build_muon", "muon_param_names", "muon_state_bytes"]


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
            self._inner.append(torch.optim.Muon(muon_params, lr=lr, weight_decay=weight_decay,
                                                adjust_lr_fn="match_rms_adamw"))
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
            o.param_groups = self.param_groups[start:start + n]
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
