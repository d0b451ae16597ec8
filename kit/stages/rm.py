"""Reward modelling on preference pairs (TRL's RewardTrainer), and scoring with the result.

The model is a sequence-classification head (one logit) on the base model; the engine loads it
with ``AutoModelForSequenceClassification`` and a SEQ_CLS LoRA adapter, whose saved adapter
includes the score head. :func:`score` (``kit.score``) and the ppo stage load it back from the
run directory.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Union

import torch

from ..data import build_rows
from . import Recipe, register_recipe
from .common import StageContext, base_training_args


def build_rm_trainer(ctx: StageContext):
    from trl import RewardConfig, RewardTrainer

    cfg = ctx.cfg
    train_ds, eval_ds = build_rows(cfg, "preference")
    if ctx.emit:
        ctx.emit("data", train_rows=len(train_ds), eval_rows=len(eval_ds) if eval_ds is not None else 0)
    args = RewardConfig(**base_training_args(cfg, ctx.run_dir, ctx.device, ctx.dtype), max_length=cfg.data.cutoff_len)
    return RewardTrainer(model=ctx.model, args=args, train_dataset=train_ds, eval_dataset=eval_ds,
                         processing_class=ctx.tokenizer, callbacks=ctx.callbacks)


register_recipe(Recipe("rm", "preference", build_rm_trainer, head="sequence_classification",
                       description="Reward model on preference pairs (pairwise accuracy; use with kit.score / ppo).",
                       metrics=("loss", "accuracy", "margin", "mean_reward")))


# ------------------------------------------------------------------ loading and scoring


class ScalarHead:
    """``AutoModelForSequenceClassification`` with a single output: the reward (the engine loads rm models with it)."""

    @staticmethod
    def from_pretrained(path, **kw):
        from transformers import AutoModelForSequenceClassification
        kw.setdefault("num_labels", 1)
        return AutoModelForSequenceClassification.from_pretrained(path, **kw)


class RewardModel:
    """A loaded reward model: ``rm(prompts, answers) -> tensor of rewards``."""

    def __init__(self, model, tokenizer, device: str = "cpu"):
        self.model, self.tokenizer, self.device = model.eval(), tokenizer, device

    @torch.no_grad()
    def __call__(self, prompts: list, answers: list, max_length: int = 1024) -> torch.Tensor:
        texts = []
        for p, a in zip(prompts, answers):
            msgs = [{"role": "user", "content": p}] if isinstance(p, str) else list(p)
            ans = [{"role": "assistant", "content": a}] if isinstance(a, str) else list(a)
            texts.append(self.tokenizer.apply_chat_template(msgs + ans, tokenize=False))
        # right padding: the classification head reads the last non-pad token
        enc = self.tokenizer(texts, return_tensors="pt", padding=True, truncation=True, max_length=max_length,
                             add_special_tokens=False)
        enc = {k: v.to(self.device) for k, v in enc.items()}
        return self.model(**enc).logits[:, 0].float().cpu()


def load_reward_model(path: Union[str, os.PathLike], device: str | None = None) -> RewardModel:
    """From an rm run directory (its config.yaml + adapter/ or model/) or a saved classifier folder."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from ..config import RunConfig
    from ..models import load_model

    p = Path(path).expanduser()
    if (p / "config.yaml").exists():
        cfg = RunConfig.from_yaml(p / "config.yaml")
        if cfg.stage.name != "rm":
            raise ValueError(f"{p} is a '{cfg.stage.name}' run, not a reward model (rm) run")
        if (p / "model").exists():
            p = p / "model"
        else:
            from peft import PeftModel
            from ..adapters import find_adapter_dir
            over = {"model__adapter_path": None, "quant__bits": None}
            if device:
                over["model__device"] = device
            loaded = load_model(cfg.replace(**over), with_adapter=False, model_cls=ScalarHead)
            model = PeftModel.from_pretrained(loaded.model, str(find_adapter_dir(p)))
            return RewardModel(model, loaded.tokenizer, loaded.device)
    if not (p / "config.json").exists():
        raise FileNotFoundError(f"no reward model in {p}: expected an rm run directory or a saved model folder")
    tok = AutoTokenizer.from_pretrained(str(p))
    model = AutoModelForSequenceClassification.from_pretrained(str(p), num_labels=1)
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tok.pad_token_id
    dev = device or "cpu"
    return RewardModel(model.to(dev), tok, dev)


_CACHE: dict[tuple, RewardModel] = {}


def _stamp(p: Path) -> float:
    files = [f for d in (p, p / "adapter", p / "model") for f in d.glob("*.safetensors")] if p.is_dir() else []
    return max((f.stat().st_mtime for f in files), default=0.0)


def score(run_dir_or_model: Any, prompt: Union[str, list], answer: Union[str, list, None] = None) -> Any:
    """Reward of ``answer`` to ``prompt``: a float for one pair, a list of floats for lists.

    ``run_dir_or_model``: an rm run directory, a saved model folder, a :class:`RewardModel` or a
    finished :class:`~kit.engine.Run` of stage rm.
    """
    if isinstance(run_dir_or_model, RewardModel):
        rm = run_dir_or_model
    else:
        path = str(getattr(run_dir_or_model, "run_dir", run_dir_or_model))
        key = (path, _stamp(Path(path).expanduser()))   # a retrained run in the same folder is reloaded
        if key not in _CACHE:
            _CACHE[key] = load_reward_model(path)
        rm = _CACHE[key]
    single = isinstance(prompt, str) or (isinstance(prompt, list) and prompt and isinstance(prompt[0], dict))
    if single:
        if answer is None:
            raise ValueError("score(run, prompt, answer): answer is required")
        return float(rm([prompt], [answer])[0])
    if answer is None or len(prompt) != len(answer):
        raise ValueError("score: give as many answers as prompts")
    return [float(x) for x in rm(list(prompt), list(answer))]
