"""PPO with a reward model (TRL 1.x has no PPO trainer, so this is ours, on transformers' Trainer).

Each optimizer step: sample ``stage.num_generations`` completions per prompt with HF ``generate``,
score them with the reward model of an rm run (``stage.reward_model``; plus any
``stage.reward_funcs``), shape per-token rewards with a KL penalty to the reference (LoRA: the
same model with the adapter disabled; full fine-tuning: a frozen copy), estimate advantages with
GAE from a value head on the policy's last hidden state, then optimise the clipped policy and
value objectives for ``stage.ppo_epochs`` epochs on the batch.

Being a Trainer subclass gives the engine's events, stop(), checkpoints and resume for free; the
value head is saved next to each checkpoint (``value_head.safetensors``) and restored on resume.
"""

from __future__ import annotations

import contextlib
import copy
import os
from collections import defaultdict

import torch
import torch.nn.functional as F
from datasets import Dataset
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import Trainer, TrainingArguments

from ..data import load_splits
from ..data.encode import encode_prompt
from . import Recipe, register_recipe
from .common import StageContext, base_training_args
from .rewards import resolve_rewards
from .rm import load_reward_model

VALUE_HEAD_FILE = "value_head.safetensors"


def _hidden_size(model) -> int:
    cfg = model.config
    return getattr(cfg, "hidden_size", None) or cfg.get_text_config().hidden_size


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (x * mask).sum() / mask.sum().clamp(min=1)


def masked_whiten(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask)
    return (x - mean) * torch.rsqrt(var + 1e-8) * mask


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float):
    """Advantages and returns over response tokens (``mask`` = 1 on real response tokens)."""
    T = rewards.shape[1]
    adv = torch.zeros_like(rewards)
    last = torch.zeros(rewards.shape[0], device=rewards.device)
    for t in reversed(range(T)):
        nxt = values[:, t + 1] * mask[:, t + 1] if t + 1 < T else torch.zeros_like(last)
        delta = rewards[:, t] + gamma * nxt - values[:, t]
        last = (delta + gamma * lam * last * (mask[:, t + 1] if t + 1 < T else 0)) * mask[:, t]
        adv[:, t] = last
    return adv, (adv + values) * mask


class PromptCollator:
    """Left-padded prompt ids (generation appends on the right) plus the prompt messages for the reward model."""

    def __init__(self, pad_token_id: int):
        self.pad = pad_token_id

    def __call__(self, rows):
        n = max(len(r["input_ids"]) for r in rows)
        ids = torch.full((len(rows), n), self.pad, dtype=torch.long)
        att = torch.zeros((len(rows), n), dtype=torch.long)
        for b, r in enumerate(rows):
            k = len(r["input_ids"])
            ids[b, n - k :] = torch.as_tensor(r["input_ids"])
            att[b, n - k :] = 1
        return {
            "input_ids": ids,
            "attention_mask": att,
            "prompt": [r["prompt"] for r in rows],
            "answer": [r.get("answer") for r in rows],
        }


class PPOTrainer(Trainer):
    def __init__(self, *args, stage=None, reward_model=None, reward_funcs=(), ref_model=None, **kw):
        super().__init__(*args, **kw)
        self.stage, self.reward_model, self.reward_funcs, self.ref_model = (
            stage,
            reward_model,
            list(reward_funcs),
            ref_model,
        )
        self._ppo_metrics: dict[str, list[float]] = defaultdict(list)

    # --------------------------------------------------------------- model pieces

    def _forward(self, model, seq, att, pos, P):
        """Log-probs of the response tokens and values at the positions that predict them."""
        out = model(input_ids=seq, attention_mask=att, position_ids=pos, output_hidden_states=True, use_cache=False)
        logits = out.logits[:, P - 1 : -1].float()
        if self.stage.temperature > 0:
            logits = logits / self.stage.temperature
        logp = torch.gather(F.log_softmax(logits, -1), 2, seq[:, P:, None]).squeeze(-1)
        h = out.hidden_states[-1][:, P - 1 : -1]
        values = self.model.v_head(h.to(self.model.v_head.weight.dtype)).squeeze(-1).float()
        return logp, values

    def _ref_context(self):
        if self.ref_model is None and hasattr(self.model, "disable_adapter"):
            return self.model.disable_adapter()
        return contextlib.nullcontext()

    @torch.no_grad()
    def _rollout(self, model, inputs):
        st, tok = self.stage, self.processing_class
        k = st.num_generations
        ids = inputs["input_ids"].repeat_interleave(k, 0)
        att = inputs["attention_mask"].repeat_interleave(k, 0)
        prompts = [p for p in inputs["prompt"] for _ in range(k)]
        answers = [a for a in inputs["answer"] for _ in range(k)]
        P = ids.shape[1]
        model.eval()
        gen_kw = dict(max_new_tokens=st.max_new_tokens, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
        gen_kw.update(do_sample=True, temperature=st.temperature, top_k=0) if st.temperature > 0 else gen_kw.update(
            do_sample=False
        )
        seq = self.accelerator.unwrap_model(model).generate(input_ids=ids, attention_mask=att, **gen_kw)
        resp = seq[:, P:]
        # response mask: every token up to and including the first end-of-sequence
        is_eos = resp == tok.eos_token_id
        after = (is_eos.cumsum(1) - is_eos.long()) > 0
        rmask = (~after).float()
        full_att = torch.cat([att, rmask.long()], 1)
        pos = (full_att.cumsum(1) - 1).clamp(min=0)
        texts = tok.batch_decode(resp.masked_fill(after, tok.pad_token_id), skip_special_tokens=True)
        score = torch.zeros(len(texts))
        if self.reward_model is not None:
            score += self.reward_model(prompts, texts)
        for fn in self.reward_funcs:
            score += torch.tensor(fn(prompts=prompts, completions=texts, answer=answers), dtype=torch.float)
        score = score.to(seq.device)
        logp, values = self._forward(model, seq, full_att, pos, P)
        with self._ref_context():
            ref_model = self.ref_model or model
            ref_logp, _ = self._forward(ref_model, seq, full_att, pos, P)
        kl = (logp - ref_logp) * rmask
        rewards = -st.beta * kl
        last = (rmask.sum(1).long() - 1).clamp(min=0)
        rewards[torch.arange(len(last)), last] += score
        adv, ret = gae(rewards, values * rmask, rmask, st.gamma, st.lam)
        adv = masked_whiten(adv, rmask)
        m = self._ppo_metrics
        m["reward"].append(score.mean().item())
        m["reward_std"].append(score.std().item() if len(score) > 1 else 0.0)
        m["kl"].append((kl.sum(1)).mean().item())
        m["response_length"].append(rmask.sum(1).mean().item())
        return dict(seq=seq, att=full_att, pos=pos, P=P, rmask=rmask, logp=logp, values=values, adv=adv, ret=ret)

    def _ppo_loss(self, model, b):
        st = self.stage
        logp, values = self._forward(model, b["seq"], b["att"], b["pos"], b["P"])
        ratio = torch.exp(logp - b["logp"])
        pg = torch.max(-b["adv"] * ratio, -b["adv"] * ratio.clamp(1 - st.ppo_clip, 1 + st.ppo_clip))
        v_clip = b["values"] + (values - b["values"]).clamp(-st.ppo_clip, st.ppo_clip)
        vf = 0.5 * torch.max((values - b["ret"]) ** 2, (v_clip - b["ret"]) ** 2)
        pg_loss, vf_loss = masked_mean(pg, b["rmask"]), masked_mean(vf, b["rmask"])
        m = self._ppo_metrics
        m["pg_loss"].append(pg_loss.item())
        m["vf_loss"].append(vf_loss.item())
        m["clipfrac"].append(masked_mean(((ratio - 1).abs() > st.ppo_clip).float(), b["rmask"]).item())
        return pg_loss + st.vf_coef * vf_loss

    # --------------------------------------------------------------- Trainer hooks

    def training_step(self, model, inputs, num_items_in_batch=None):
        inputs = self._prepare_inputs(inputs)
        batch = self._rollout(model, inputs)
        model.train()
        # the first ppo_epochs - 1 passes take their own optimizer steps; the last one goes
        # through the Trainer's step (clipping, scheduler, logging) like any other loss
        params = [p for p in model.parameters() if p.requires_grad]
        for _ in range(self.stage.ppo_epochs - 1):
            loss = self._ppo_loss(model, batch)
            self.accelerator.backward(loss)
            if self.args.max_grad_norm:
                torch.nn.utils.clip_grad_norm_(params, self.args.max_grad_norm)
            self.optimizer.step()
            self.optimizer.zero_grad()
        loss = self._ppo_loss(model, batch)
        self.accelerator.backward(loss)
        return loss.detach()

    def log(self, logs, start_time=None):
        if self._ppo_metrics and "loss" in logs:
            logs.update({k: sum(v) / len(v) for k, v in self._ppo_metrics.items()})
            self._ppo_metrics.clear()
        super().log(logs, start_time)

    def _save(self, output_dir=None, state_dict=None):
        super()._save(output_dir, state_dict)
        out = output_dir or self.args.output_dir
        save_file(
            {k: v.detach().cpu().contiguous() for k, v in self.model.v_head.state_dict().items()},
            os.path.join(out, VALUE_HEAD_FILE),
        )

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        super()._load_from_checkpoint(resume_from_checkpoint, model)
        p = os.path.join(resume_from_checkpoint, VALUE_HEAD_FILE)
        if os.path.exists(p):
            self.model.v_head.load_state_dict(load_file(p))


def build_ppo_trainer(ctx: StageContext):
    cfg, st, tok = ctx.cfg, ctx.cfg.stage, ctx.tokenizer
    # a reward (model and/or functions) and grad_accum=1 are rules of the validator (kit.config_rules)
    funcs = resolve_rewards(st.reward_funcs)
    rm = None
    if st.reward_model:
        rm = load_reward_model(
            st.reward_model,
            device=ctx.device,
            allow_pickle=cfg.model.allow_pickle,
            quant_bits=st.reward_model_quantization_bit,
        )
    train_rows, _ = load_splits(cfg, "prompt")
    rows = [
        {
            "input_ids": encode_prompt(tok, r["prompt"])[-cfg.data.cutoff_len :],
            "prompt": r["prompt"],
            "answer": r.get("answer"),
        }
        for r in train_rows
    ]
    if ctx.emit:
        ctx.emit("data", train_rows=len(rows), eval_rows=0)
    model = ctx.model
    torch.manual_seed(cfg.train.seed)
    model.v_head = nn.Linear(_hidden_size(model), 1).to(device=next(model.parameters()).device)
    nn.init.zeros_(model.v_head.weight)
    nn.init.zeros_(model.v_head.bias)
    ref = None
    if not hasattr(model, "disable_adapter"):  # full / freeze fine-tuning: a frozen copy is the reference
        ref = copy.deepcopy(model).eval().requires_grad_(False)
    kw = base_training_args(cfg, ctx.run_dir, ctx.device, ctx.dtype)
    kw["eval_strategy"] = "no"  # rollouts are the evaluation
    args = TrainingArguments(**kw)
    return PPOTrainer(
        model=model,
        args=args,
        train_dataset=Dataset.from_list(rows),
        processing_class=tok,
        data_collator=PromptCollator(tok.pad_token_id),
        callbacks=ctx.callbacks,
        stage=st,
        reward_model=rm,
        reward_funcs=funcs,
        ref_model=ref,
    )


register_recipe(
    Recipe(
        "ppo",
        "prompt",
        build_ppo_trainer,
        description="PPO against a trained reward model (value head, GAE, KL to the reference).",
        metrics=("reward", "kl", "pg_loss", "vf_loss", "clipfrac", "response_length"),
        collapse_checks=(),
    )
)
