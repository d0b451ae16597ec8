"""KTO: learn from single answers labelled desirable / undesirable (TRL's KTOTrainer).

Rows ``{"messages", "label"}`` become TRL's ``{"prompt", "completion", "label"}`` with the last
assistant turn as the completion. The reference is the starting adapter, as in DPO.
"""

from __future__ import annotations

from datasets import Dataset
from trl import KTOConfig, KTOTrainer

from ..data import DataError, load_splits
from . import Recipe, register_recipe
from .common import StageContext, base_training_args, reference_model


def _to_trl(rows: list[dict]) -> list[dict]:
    return [{"prompt": r["messages"][:-1], "completion": r["messages"][-1:], "label": r["label"]} for r in rows]


def build_kto_trainer(ctx: StageContext):
    cfg, st = ctx.cfg, ctx.cfg.stage
    train_rows, eval_rows = load_splits(cfg, "kto")
    labels = {r["label"] for r in train_rows}
    if len(labels) < 2:
        raise DataError(
            f"kto needs both desirable (true) and undesirable (false) rows; all rows are {labels.pop()}",
            str(cfg.data.dataset),
            field="label",
        )
    train_ds = Dataset.from_list(_to_trl(train_rows))
    eval_ds = Dataset.from_list(_to_trl(eval_rows)) if eval_rows else None
    if ctx.emit:
        ctx.emit(
            "data", train_rows=len(train_ds), eval_rows=len(eval_rows), desirable=sum(r["label"] for r in train_rows)
        )
    args = KTOConfig(
        **base_training_args(cfg, ctx.run_dir, ctx.device, ctx.dtype),
        beta=st.beta,
        desirable_weight=st.kto_desirable_weight,
        undesirable_weight=st.kto_undesirable_weight,
        max_length=cfg.data.cutoff_len,
    )
    return KTOTrainer(
        model=ctx.model,
        ref_model=reference_model(ctx),
        args=args,
        train_dataset=train_ds,
        eval_dataset=eval_ds,
        processing_class=ctx.tokenizer,
        callbacks=ctx.callbacks,
    )


register_recipe(
    Recipe(
        "kto",
        "kto",
        build_kto_trainer,
        description="KTO on answers labelled desirable/undesirable.",
        metrics=("loss", "rewards/margins", "rewards/chosen", "rewards/rejected"),
    )
)
