"""Supervised fine-tuning: TRL's SFTTrainer on our pre-tokenized, masked (and packed) data.

We tokenize ourselves (chat template + per-turn masks + packing, cached) and hand TRL the
result with ``skip_prepare_dataset``; TRL brings the training loop and metrics. The loss of a
padding-free batch (the default) is ours: logits at the trained positions only. Padded batches
(block mask) go through TRL's fused LM head (log-probs in chunks, never the full logits).
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from trl import SFTConfig, SFTTrainer

from ..adapters import build_optimizer
from ..data import IGNORE, ForgeCollator, build_tokenized
from ..data.collator import split_flat
from ..models.attention import use_varlen
from ..models.s2attn import group_size, use_s2attn
from . import Recipe, register_recipe
from .common import (
    StageContext,
    TokenCounting,
    base_training_args,
    forward_token_budget,
    micro_batching,
    padding_free_requested,
)
from .linear_ce import decoder_and_head, linear_cross_entropy


class ForgeSFTTrainer(TokenCounting, SFTTrainer):
    """SFTTrainer that understands packed batches with a 4D block-diagonal mask.

    TRL counts tokens as ``attention_mask.sum()``, which is meaningless for an additive
    4D mask; we count real tokens in the collator instead and keep TRL's counter right.
    """

    forge_max_tokens: int | None = None  # token budget of one forward pass (padding-free batches)

    def training_step(self, model, inputs, num_items_in_batch=None):
        """Padding-free batches larger than the token budget run as several forward/backward passes
        over whole examples, accumulated before the optimizer step (same loss and gradients: each
        piece's summed loss is divided by the trained tokens of the whole step)."""
        pieces = split_flat(inputs, self.forge_max_tokens) if "cu_seq_lens_q" in inputs else [inputs]
        if len(pieces) == 1:
            return super().training_step(model, inputs, num_items_in_batch)
        if num_items_in_batch is None:  # the trainer divides each returned loss by the accumulation steps
            num_items_in_batch = inputs["labels"][:, 1:].ne(IGNORE).sum()
        total = 0.0
        for i, piece in enumerate(pieces):
            # DDP reduces gradients once, with the last piece (as for the trainer's own micro-batches)
            sync = contextlib.nullcontext() if i == len(pieces) - 1 else self.accelerator.no_sync(model)
            with sync:
                total = total + super().training_step(model, piece, num_items_in_batch)
        return total

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        real = inputs.get("num_real_tokens")
        self._pop_counts(inputs)
        if (
            "cu_seq_lens_q" in inputs
            and not return_outputs
            and self.compute_loss_func is None
            and self.label_smoother is None
            and self.args.loss_type == "nll"
        ):
            return self._trained_positions_loss(model, inputs, num_items_in_batch)
        mask = inputs.get("attention_mask")
        before = getattr(self, "_total_train_tokens", 0)
        out = super().compute_loss(model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch)
        if mask is not None and mask.dim() == 4 and self.model.training and real is not None:
            self._total_train_tokens = before + int(real)
            self._metrics["train"]["num_tokens"] = [self._total_train_tokens]
        return out

    def _plain_head(self, model):
        """(decoder, lm_head) for the chunked loss (:mod:`kit.stages.linear_ce`), or None: one process
        (a DDP/FSDP wrapper must see the forward itself), no autocast (accelerate wraps the model's
        own forward in it), and a model whose logits are plain ``lm_head(hidden)``."""
        if self.accelerator.num_processes != 1 or self.accelerator.mixed_precision != "no":
            return None
        return decoder_and_head(model)

    def _trained_positions_loss(self, model, inputs, num_items_in_batch):
        """Cross-entropy computed from logits at the trained positions only (padding-free batches).

        TRL's fused LM head scores every position on CPU (it compacts to the labelled ones only on
        Triton devices) and recomputes the logits in backward to save memory. A padding-free micro-
        batch is one row of at most a few thousand tokens, so the logits of its trained positions
        are small enough to keep: the prompt positions (~20% of the demo data) skip the vocabulary
        projection and nothing is computed twice. Same loss and normalisation as TRL's. Where the
        model allows it, the head and the loss run in chunks (:mod:`kit.stages.linear_ce`), so not
        even the trained positions' logits are kept.
        """
        mode = "train" if self.model.training else "eval"
        labels = inputs.pop("labels")
        target = labels[0, 1:]
        keep = (target != -100).nonzero().squeeze(-1)  # positions whose next token is a target
        y = target[keep]
        split = self._plain_head(model)
        if split is not None:  # the head and the loss in chunks: the logits never exist whole
            decoder, head = split
            hidden = decoder(**inputs, use_cache=False).last_hidden_state.flatten(0, 1)
            loss_sum, correct = linear_cross_entropy(hidden.index_select(0, keep), head.weight, y)
        else:
            out = model(**inputs, use_cache=False, logits_to_keep=keep)
            # flatten instead of [0]: indexing would make backward fill a zeros copy of all the logits
            logits = out.logits.flatten(0, 1)
            loss_sum = F.cross_entropy(logits.float(), y, reduction="sum")
            correct = (logits.detach().argmax(-1) == y).sum()
        n = torch.as_tensor(len(y) if num_items_in_batch is None else num_items_in_batch, device=y.device)
        loss = loss_sum / n.clamp(min=1)
        if self.args.average_tokens_across_devices and num_items_in_batch is not None:
            loss = loss * self.accelerator.num_processes  # as Trainer/TRL: DDP averages the gradients
        with torch.no_grad():
            gather = self.accelerator.gather_for_metrics
            valid = gather(torch.as_tensor(len(y), device=y.device)).sum()
            correct = gather(correct).sum()
            acc = (correct / valid).item() if valid > 0 else 0.0
        self._metrics[mode]["mean_token_accuracy"].append(acc)
        if mode == "train":
            tokens = gather(torch.as_tensor(inputs["input_ids"].shape[1], device=y.device)).sum().item()
            self._total_train_tokens = getattr(self, "_total_train_tokens", 0) + int(tokens)
        self._metrics[mode]["num_tokens"] = [getattr(self, "_total_train_tokens", 0)]
        return loss


def build_sft_trainer(ctx: StageContext, kind: str = "sft"):
    cfg, tok = ctx.cfg, ctx.tokenizer
    train_ds, eval_ds, info = build_tokenized(cfg, tok, kind)
    # padding-free batches need an attention kernel that reads cu_seq_lens (kit.models.attention)
    padding_free = padding_free_requested(cfg) and use_varlen(ctx.model)
    if padding_free and cfg.model.shift_attn:  # LongLoRA S²-attn on the same padding-free rows
        use_s2attn(ctx.model, group_size(cfg.data.cutoff_len, cfg.model.shift_attn_group))
    max_tokens = forward_token_budget(cfg, ctx.device) if padding_free else None
    kw = base_training_args(cfg, ctx.run_dir, ctx.device, ctx.dtype)
    kw.update(micro_batching(cfg, ctx.device, padding_free))
    args = SFTConfig(**kw, dataset_kwargs={"skip_prepare_dataset": True}, max_length=None, packing=False)
    collator = ForgeCollator(pad_token_id=tok.pad_token_id, mask_dtype=ctx.dtype, padding_free=padding_free)
    if ctx.emit:
        ctx.emit(
            "data",
            train_rows=len(train_ds),
            eval_rows=len(eval_ds) if eval_ds is not None else 0,
            packed=cfg.data.packing,
            padding_free=padding_free,
            tokens_per_forward=max_tokens,
            **info,
        )
    opt = build_optimizer(ctx.model, cfg)  # LoRA+ param groups; None: the trainer's own optimizer
    trainer = ForgeSFTTrainer(
        model=ctx.model,
        args=args,
        data_collator=collator,
        train_dataset=train_ds,
        eval_dataset=eval_ds,
        processing_class=tok,
        callbacks=ctx.callbacks,
        **({"optimizers": (opt, None)} if opt is not None else {}),
    )
    trainer.forge_max_tokens = max_tokens
    return trainer


register_recipe(
    Recipe(
        "sft",
        "sft",
        build_sft_trainer,
        description="Supervised fine-tuning on chat/instruction data (loss on answers).",
        metrics=("loss", "mean_token_accuracy"),
        collapse_checks=("zero_grad_norm", "uniform_loss"),
    )
)
