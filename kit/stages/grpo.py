"""GRPO: online RL with verifiable rewards (TRL's GRPOTrainer).

Prompts come from prompt-kind data (``{"prompt", "answer"?}``); each prompt gets
``stage.num_generations`` sampled completions, scored by ``stage.reward_funcs`` (built-in names,
``module:function`` or callables; see :mod:`kit.stages.rewards`) and optionally by a trained
reward model (``stage.reward_model``). Generation uses the HF back end, or vLLM when
``stage.use_vllm`` is set and vllm is installed.
"""

from __future__ import annotations

from trl import GRPOConfig, GRPOTrainer

from ..data import build_rows
from . import Recipe, register_recipe
from .common import StageContext, base_training_args
from .rewards import completion_text, resolve_rewards
from .rm import load_reward_model


def reward_model_fn(path: str, allow_pickle: bool = False, quant_bits=None):
    """A TRL reward function backed by an rm run (see :func:`kit.stages.rm.load_reward_model`)."""
    rm = load_reward_model(path, allow_pickle=allow_pickle, quant_bits=quant_bits)

    def reward_model(prompts, completions, **_):
        return rm(list(prompts), [completion_text(c) for c in completions]).tolist()

    return reward_model


def build_grpo_trainer(ctx: StageContext):
    cfg, st = ctx.cfg, ctx.cfg.stage
    # the validator has checked that there is a reward, that vllm is installed when asked for and that
    # the batch holds whole groups of stage.num_generations (kit.config_rules)
    funcs = resolve_rewards(st.reward_funcs)
    if st.reward_model:
        funcs.append(reward_model_fn(st.reward_model, cfg.model.allow_pickle, st.reward_model_quantization_bit))
    train_ds, eval_ds = build_rows(cfg, "prompt")
    if all(a is None for a in train_ds["answer"]):
        train_ds = train_ds.remove_columns("answer")
        eval_ds = eval_ds.remove_columns("answer") if eval_ds is not None else None
    if ctx.emit:
        ctx.emit("data", train_rows=len(train_ds), eval_rows=len(eval_ds) if eval_ds is not None else 0)
    args = GRPOConfig(
        **base_training_args(cfg, ctx.run_dir, ctx.device, ctx.dtype),
        num_generations=st.num_generations,
        max_completion_length=st.max_new_tokens,
        temperature=st.temperature,
        beta=st.beta,
        use_vllm=st.use_vllm,
        vllm_mode="colocate",
        shuffle_dataset=cfg.data.shuffle,
    )
    return GRPOTrainer(
        model=ctx.model,
        reward_funcs=funcs,
        args=args,
        train_dataset=train_ds,
        eval_dataset=eval_ds,
        processing_class=ctx.tokenizer,
        callbacks=ctx.callbacks,
    )


register_recipe(
    Recipe(
        "grpo",
        "prompt",
        build_grpo_trainer,
        description="Online RL with verifiable rewards (GRPO); generates with HF or vLLM.",
        metrics=("reward", "reward_std", "loss", "kl", "completions/mean_length"),
        collapse_checks=(),
    )
)
