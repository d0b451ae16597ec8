"""Supervised fine-tuning: TRL's SFTTrainer on our pre-tokenized, masked (and packed) data.

We tokenize ourselves (chat template + per-turn masks + packing, cached) and hand TRL the
result with ``skip_prepare_dataset``; TRL brings the loss through its fused LM head (log-probs
computed in chunks, never the full vocabulary logits), metrics and the training loop.
"""
from __future__ import annotations

from trl import SFTConfig, SFTTrainer

from ..data import ForgeCollator, build_tokenized
from ..models.attention import use_varlen
from . import Recipe, register_recipe
from .common import StageContext, TokenCounting, base_training_args


class ForgeSFTTrainer(TokenCounting, SFTTrainer):
    """SFTTrainer that understands packed batches with a 4D block-diagonal mask.

    TRL counts tokens as ``attention_mask.sum()``, which is meaningless for an additive
    4D mask; we count real tokens in the collator instead and keep TRL's counter right.
    """

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        real = inputs.get("num_real_tokens")
        self._pop_counts(inputs)
        mask = inputs.get("attention_mask")
        before = getattr(self, "_total_train_tokens", 0)
        out = super().compute_loss(model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch)
        if mask is not None and mask.dim() == 4 and self.model.training and real is not None:
            self._total_train_tokens = before + int(real)
            self._metrics["train"]["num_tokens"] = [self._total_train_tokens]
        return out


def build_sft_trainer(ctx: StageContext, kind: str = "sft"):
    cfg, tok = ctx.cfg, ctx.tokenizer
    train_ds, eval_ds, info = build_tokenized(cfg, tok, kind)
    args = SFTConfig(**base_training_args(cfg, ctx.run_dir, ctx.device, ctx.dtype),
                     dataset_kwargs={"skip_prepare_dataset": True}, max_length=None, packing=False)
    # padding-free batches need an attention kernel that reads cu_seq_lens (kit.models.attention);
    # an explicit eager choice keeps the dense block mask (e.g. to compare against it)
    padding_free = (cfg.data.padding_free and cfg.model.attn_implementation != "eager"
                    and use_varlen(ctx.model))
    collator = ForgeCollator(pad_token_id=tok.pad_token_id, mask_dtype=ctx.dtype, padding_free=padding_free)
    if ctx.emit:
        ctx.emit("data", train_rows=len(train_ds), eval_rows=len(eval_ds) if eval_ds is not None else 0,
                 packed=cfg.data.packing, padding_free=padding_free, **info)
    from ..adapters import build_optimizer
    opt = build_optimizer(ctx.model, cfg)  # LoRA+ param groups; None: the trainer's own optimizer
    return ForgeSFTTrainer(model=ctx.model, args=args, data_collator=collator, train_dataset=train_ds,
                           eval_dataset=eval_ds, processing_class=tok, callbacks=ctx.callbacks,
                           **({"optimizers": (opt, None)} if opt is not None else {}))


register_recipe(Recipe("sft", "sft", build_sft_trainer,
                       description="Supervised fine-tuning on chat/instruction data (loss on answers).",
                       metrics=("loss", "mean_token_accuracy")))
