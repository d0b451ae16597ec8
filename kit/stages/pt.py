"""Continued pre-training: plain text, tokenized as one stream, chunked to ``cutoff_len``.

The training loop is the SFT one (TRL's SFTTrainer on pre-tokenized rows); only the data differs:
every token is a target. With ``data.packing`` each document keeps its own attention block.
"""

from __future__ import annotations

from . import Recipe, register_recipe
from .common import StageContext
from .sft import build_sft_trainer


def build_pt_trainer(ctx: StageContext):
    return build_sft_trainer(ctx, kind="text")


register_recipe(
    Recipe(
        "pt",
        "text",
        build_pt_trainer,
        description="Continued pre-training on plain text (loss on every token).",
        metrics=("loss",),
        collapse_checks=("zero_grad_norm", "uniform_loss"),
    )
)
