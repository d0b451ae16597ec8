"""Reward modelling on preference pairs (TRL's RewardTrainer), and scoring with the result.

The model is a sequence-classification head (one logit) on the base model: the recipe declares
:class:`ScalarHead` as its model class and a SEQ_CLS LoRA adapter, whose saved adapter includes
the score head. :func:`score` (``kit.score``) and the ppo stage load it back from the
run directory.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Optional, Union

import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from ..config import ConfigError, QuantConfig
from ..data import build_rows
from ..errors import UsageError
from ..models import load_model
from ..models.loading import bnb_config, check_weight_format
from ..rundir import MODELS, RunDir, RunDirError
from . import Recipe, register_recipe
from .common import StageContext, base_training_args


class ScalarHead:
    """``AutoModelForSequenceClassification`` with a single output: the reward (the rm recipe's model class)."""

    @staticmethod
    def from_pretrained(path, **kw):
        kw.setdefault("num_labels", 1)
        return AutoModelForSequenceClassification.from_pretrained(path, **kw)


def build_rm_trainer(ctx: StageContext):
    # TRL is imported by the runs that train a reward model, not by kit.score, grpo and ppo, which
    # only load one from this module (importing TRL takes seconds)
    from trl import RewardConfig, RewardTrainer

    cfg = ctx.cfg
    train_ds, eval_ds = build_rows(cfg, "preference")
    if ctx.emit:
        ctx.emit("data", train_rows=len(train_ds), eval_rows=len(eval_ds) if eval_ds is not None else 0)
    args = RewardConfig(**base_training_args(cfg, ctx.run_dir, ctx.device, ctx.dtype), max_length=cfg.data.cutoff_len)
    return RewardTrainer(
        model=ctx.model,
        args=args,
        train_dataset=train_ds,
        eval_dataset=eval_ds,
        processing_class=ctx.tokenizer,
        callbacks=ctx.callbacks,
    )


register_recipe(
    Recipe(
        "rm",
        "preference",
        build_rm_trainer,
        description="Reward model on preference pairs (pairwise accuracy; use with kit.score / ppo).",
        metrics=("loss", "accuracy", "margin", "mean_reward"),
        model_class=ScalarHead,
        peft_task_type="SEQ_CLS",
    )
)


# ------------------------------------------------------------------ loading and scoring


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
        enc = self.tokenizer(
            texts, return_tensors="pt", padding=True, truncation=True, max_length=max_length, add_special_tokens=False
        )
        enc = {k: v.to(self.device) for k, v in enc.items()}
        return self.model(**enc).logits[:, 0].float().cpu()


def load_reward_model(
    path: Union[str, os.PathLike],
    device: str | None = None,
    allow_pickle: bool = False,
    quant_bits: Optional[int] = None,
) -> RewardModel:
    """From an rm run directory (its config.yaml + adapter/ or model/) or a saved classifier folder
    (safetensors only, unless ``allow_pickle``: the training run's ``model.allow_pickle``).

    ``quant_bits`` (4 or 8, ``stage.reward_model_quantization_bit``): the frozen reward model's base
    weights loaded through bitsandbytes, as the quantized reference model is; the score head stays
    in full precision (transformers leaves the output head unquantized)."""
    p = Path(path).expanduser()
    if RunDir.is_run_dir(p):
        rd = RunDir(p)
        cfg = rd.config()
        if cfg.stage.name != "rm":
            raise ConfigError(f"{p} is a '{cfg.stage.name}' run, not a reward model (rm) run.", "stage.reward_model")
        weights = rd.weights()
        if weights.adapter is None:
            p = Path(weights.model)
        else:
            from peft import PeftModel  # only LoRA reward models need peft (a second of import time)

            over = {"model__adapter_path": None, "quant__bits": quant_bits}
            if quant_bits:  # the rm run's own training knobs are reset, as for the reference model
                over.update(
                    adapter__type="lora",
                    adapter__init="default",
                    adapter__llama_pro_blocks=0,
                    adapter__resume_adapter=None,
                    train__optim="adamw_torch",
                    adapter__loraplus_lr_ratio=None,
                )
            if device:
                over["model__device"] = device
            loaded = load_model(cfg.replace(**over), with_adapter=False, model_cls=ScalarHead)
            model = PeftModel.from_pretrained(loaded.model, str(weights.adapter))
            return RewardModel(model, loaded.tokenizer, loaded.device)
    if not (p / "config.json").exists():
        raise RunDirError(f"no reward model in {p}: expected an rm run directory or a saved model folder")
    check_weight_format(p, allow_pickle)
    tok = AutoTokenizer.from_pretrained(str(p))
    quant = {"quantization_config": bnb_config(QuantConfig(bits=quant_bits), torch.float32)} if quant_bits else {}
    model = ScalarHead.from_pretrained(str(p), use_safetensors=None if allow_pickle else True, **quant)
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tok.pad_token_id
    dev = device or "cpu"
    return RewardModel(model if quant_bits else model.to(dev), tok, dev)  # bitsandbytes places its own weights


def score(run_dir_or_model: Any, prompt: Union[str, list], answer: Union[str, list, None] = None) -> Any:
    """Reward of ``answer`` to ``prompt``: a float for one pair, a list of floats for lists.

    ``run_dir_or_model``: an rm run directory, a saved model folder, a :class:`RewardModel` or a
    finished :class:`~kit.engine.Run` of stage rm.
    """
    if isinstance(run_dir_or_model, RewardModel):
        rm = run_dir_or_model
    else:
        path = str(getattr(run_dir_or_model, "run_dir", run_dir_or_model))
        # one cache of loaded models: a retrained run in the same folder is loaded again
        rm = MODELS.get("reward", path, lambda: load_reward_model(path))
    single = isinstance(prompt, str) or (isinstance(prompt, list) and prompt and isinstance(prompt[0], dict))
    if single:
        if answer is None:
            raise UsageError("score(run, prompt, answer): answer is required")
        return float(rm([prompt], [answer])[0])
    if answer is None or len(prompt) != len(answer):
        raise UsageError("score: give as many answers as prompts")
    return [float(x) for x in rm(list(prompt), list(answer))]
