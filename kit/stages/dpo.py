"""Preference optimisation: DPO (sigmoid / ipo / hinge) with TRL's DPOTrainer, and the
reference-free ORPO (trl.experimental.orpo) and SimPO (CPO with loss_type="simpo", cpo_alpha=0).

Rows are ``{"prompt", "chosen", "rejected"}`` message lists; TRL applies the chat template.
With a LoRA model and no ``stage.ref_model``, DPO's reference is the starting adapter, which
TRL keeps as a frozen copy (a fresh LoRA adapter is the base model, since B starts at 0).
"""

from __future__ import annotations

import os

from trl import DPOConfig, DPOTrainer

from ..data import build_rows
from . import Recipe, register_recipe
from .common import StageContext, base_training_args, reference_model

DPO_LOSSES = ("sigmoid", "ipo", "hinge")


def build_dpo_trainer(ctx: StageContext):
    cfg, st = ctx.cfg, ctx.cfg.stage
    train_ds, eval_ds = build_rows(cfg, "preference")
    if ctx.emit:
        ctx.emit("data", train_rows=len(train_ds), eval_rows=len(eval_ds) if eval_ds is not None else 0)
    base = base_training_args(cfg, ctx.run_dir, ctx.device, ctx.dtype)
    common = dict(
        model=ctx.model,
        train_dataset=train_ds,
        eval_dataset=eval_ds,
        processing_class=ctx.tokenizer,
        callbacks=ctx.callbacks,
    )
    if st.loss_type in DPO_LOSSES:
        # the SFT mix (stage.ftx) is TRL's "sft" loss term weighted against the preference loss
        losses, weights = [st.loss_type], [1.0]
        if st.ftx > 0:
            losses, weights = losses + ["sft"], weights + [st.ftx]
        # no label_smoothing: TRL reads it only in its "robust" loss, so the config declares the knob for
        # simpo alone and refuses it with these losses
        args = DPOConfig(**base, beta=st.beta, loss_type=losses, loss_weights=weights, max_length=cfg.data.cutoff_len)
        return DPOTrainer(ref_model=reference_model(ctx), args=args, **common)
    # TRL's experimental trainers are imported only by the runs that use them: each module warns on
    # import (silenced here) and may change between TRL releases
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    if st.loss_type == "orpo":
        from trl.experimental.orpo import ORPOConfig, ORPOTrainer

        args = ORPOConfig(**base, beta=st.beta, max_length=cfg.data.cutoff_len)
        return ORPOTrainer(args=args, **common)
    # simpo, the one loss left (stage.loss_type is a Literal the validator checks)
    from trl.experimental.cpo import CPOConfig, CPOTrainer

    # SimPO = CPO's length-normalised loss with a margin and no NLL term, unless ftx asks for one
    args = CPOConfig(
        **base,
        loss_type="simpo",
        beta=st.beta,
        simpo_gamma=st.simpo_gamma,
        cpo_alpha=st.ftx,
        label_smoothing=st.label_smoothing,
        max_length=cfg.data.cutoff_len,
    )
    return CPOTrainer(args=args, **common)


register_recipe(
    Recipe(
        "dpo",
        "preference",
        build_dpo_trainer,
        description="Preference optimisation: DPO/IPO/hinge, ORPO, SimPO (stage.loss_type).",
        metrics=("loss", "rewards/margins", "rewards/accuracies", "rewards/chosen", "rewards/rejected"),
    )
)
