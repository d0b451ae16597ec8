"""The validator's rules (kit.config_rules): bounds, non-finite numbers, duplicate keys, trackers, code opt-in,
and the cross-field rules that used to be checked only when a trainer was built."""

from __future__ import annotations

import logging
import math
import sys
import typing
from pathlib import Path

import pytest

import kit.config_rules as rules
from kit import ConfigError, RunConfig
from kit.config import GROUPS, MAX_CUTOFF_LEN, TrainConfig

ROOT = Path(__file__).resolve().parents[1]


def _float_fields():
    for g, cls in GROUPS.items():
        for name, tp in typing.get_type_hints(cls).items():
            if tp is float or (typing.get_origin(tp) is typing.Union and float in typing.get_args(tp)):
                yield f"{g}.{name}"


# ------------------------------------------------------------------ numbers


@pytest.mark.parametrize("key", list(_float_fields()))
@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_every_float_refuses_nan_and_inf(key, bad):
    with pytest.raises(ConfigError, match="finite") as e:
        RunConfig.from_dict({key: bad})
    assert e.value.key == key


def test_nan_from_yaml_and_the_command_line():
    with pytest.raises(ConfigError, match="finite") as e:
        RunConfig.from_yaml_text("train:\n  max_steps: 3\n  learning_rate: .nan\n", source="run.yaml")
    assert e.value.key == "train.learning_rate" and e.value.line == 3 and "run.yaml" in str(e.value)
    for text in ("learning_rate=.nan", "learning_rate=nan", "lr=.inf", "interleave_probs=[0.5, .nan]"):
        with pytest.raises(ConfigError, match="finite"):
            RunConfig().override([text])


def test_a_dataclass_built_directly_is_checked_too():
    with pytest.raises(ConfigError, match="train.learning_rate.*finite"):
        RunConfig(train=TrainConfig(learning_rate=float("nan")))


@pytest.mark.parametrize("lr", [0, 0.0, -1e-4])
def test_learning_rate_must_be_positive(lr):
    with pytest.raises(ConfigError, match=r"train.learning_rate.*must be > 0"):
        RunConfig.from_kwargs(learning_rate=lr)


def test_max_steps_is_minus_one_or_positive():
    for bad in (-5, -2, 0):
        with pytest.raises(ConfigError, match=r"train.max_steps.*-1 \(use num_epochs\) or a positive"):
            RunConfig.from_kwargs(max_steps=bad)
    assert RunConfig.from_kwargs(max_steps=-1).train.max_steps == -1
    with pytest.raises(ConfigError, match="train.num_epochs.*train nothing"):
        RunConfig.from_kwargs(num_epochs=0)
    RunConfig.from_kwargs(num_epochs=0, max_steps=3)  # max_steps decides


def test_cutoff_len_has_a_sane_maximum():
    with pytest.raises(ConfigError, match=r"data.cutoff_len.*<= 1048576.*context length is checked when it loads"):
        RunConfig.from_kwargs(cutoff_len=int(1e9))
    assert RunConfig.from_kwargs(cutoff_len=MAX_CUTOFF_LEN).data.cutoff_len == MAX_CUTOFF_LEN


def test_seed_and_loraplus_bounds():
    with pytest.raises(ConfigError, match="train.seed.*>= 0"):
        RunConfig.from_kwargs(train__seed=-1)
    with pytest.raises(ConfigError, match="train.seed.*<= 4294967295"):
        RunConfig.from_kwargs(train__seed=2**40)
    with pytest.raises(ConfigError, match="adapter.loraplus_lr_ratio.*> 0"):  # 0 would switch LoRA+ off silently
        RunConfig.from_kwargs(loraplus_lr_ratio=0)


# ------------------------------------------------------------------ data and evaluation


def test_eval_steps_needs_a_validation_set():
    with pytest.raises(ConfigError, match=r"train.eval_steps.*needs a validation set"):
        RunConfig.from_kwargs(eval_steps=10)
    assert RunConfig.from_kwargs(eval_steps=10, val_size=0.1).train.eval_steps == 10
    assert RunConfig.from_kwargs(eval_steps=10, eval_dataset="demo_sft").train.eval_steps == 10


def test_cross_field_rule_errors_name_the_yaml_line():
    with pytest.raises(ConfigError) as e:
        RunConfig.from_yaml_text(
            "data:\n  dataset: demo_sft\ntrain:\n  max_steps: 4\n  eval_steps: 2\n", source="r.yaml"
        )
    assert e.value.key == "train.eval_steps" and e.value.line == 5


def test_val_size_rules():
    with pytest.raises(ConfigError, match="data.val_size.*eval_dataset is given"):
        RunConfig.from_kwargs(val_size=0.2, eval_dataset="demo_sft")
    with pytest.raises(ConfigError, match="data.val_size.*whole number"):
        RunConfig.from_kwargs(val_size=1.5)
    assert RunConfig.from_kwargs(val_size=3).data.val_size == 3


def test_dataset_must_be_named():
    for empty in ("", " , ", []):
        with pytest.raises(ConfigError, match="data.dataset.*no dataset given"):
            RunConfig.from_kwargs(dataset=empty)


def test_interleave_probs_match_the_datasets():
    ok = RunConfig.from_kwargs(dataset="a,b", mix_strategy="interleave_under", interleave_probs=[0.3, 0.7])
    assert ok.data.interleave_probs == [0.3, 0.7]
    with pytest.raises(ConfigError, match=r"data.interleave_probs.*3 values for 2 dataset"):
        RunConfig.from_kwargs(dataset=["a", "b"], mix_strategy="interleave_over", interleave_probs=[0.2, 0.3, 0.5])
    with pytest.raises(ConfigError, match="data.interleave_probs.*non-negative"):
        RunConfig.from_kwargs(dataset="a,b", mix_strategy="interleave_under", interleave_probs=[-1, 2])
    with pytest.raises(ConfigError, match="data.interleave_probs.*non-negative"):
        RunConfig.from_kwargs(dataset="a,b", mix_strategy="interleave_under", interleave_probs=["x", 1])
    with pytest.raises(ConfigError, match="needs mix_strategy"):
        RunConfig.from_kwargs(dataset="a,b", interleave_probs=[0.5, 0.5])


# ------------------------------------------------------------------ duplicates


def test_duplicate_yaml_group_names_both_lines():
    text = "train:\n  max_steps: 3\nmodel:\n  name: x/y\ntrain:\n  batch_size: 2\n"
    with pytest.raises(ConfigError) as e:
        RunConfig.from_yaml_text(text, source="dup.yaml")
    msg = str(e.value)
    assert "dup.yaml" in msg and "'train' is given twice, on line 1 and line 5" in msg and e.value.line == 5


def test_duplicate_yaml_key_names_both_lines():
    text = "train:\n  max_steps: 3\n  batch_size: 2\n  max_steps: 9\n"
    with pytest.raises(ConfigError) as e:
        RunConfig.from_yaml_text(text, source="dup.yaml")
    assert e.value.key == "train.max_steps" and "on line 2 and line 4" in str(e.value)


def test_one_knob_under_two_spellings_is_a_duplicate_too():
    with pytest.raises(ConfigError) as e:
        RunConfig.from_yaml_text("train:\n  max_steps: 3\nmax_steps: 5\n")
    assert e.value.key == "train.max_steps" and "'train.max_steps'" in str(e.value) and "'max_steps'" in str(e.value)
    assert "lines 2 and 3" in str(e.value)
    with pytest.raises(ConfigError, match="set twice"):
        RunConfig.from_kwargs(lr=1e-3, learning_rate=2e-3)
    with pytest.raises(ConfigError, match="given twice"):
        RunConfig().override(["interleave_probs={a: 1, a: 2}"])


def test_yaml_merge_keys_still_override():
    text = "base: &b {max_steps: 3, batch_size: 2}\n"
    # anchors and merges are YAML features, not duplicates (the mapping itself is refused as an unknown key)
    with pytest.raises(ConfigError, match="unknown key"):
        RunConfig.from_yaml_text(text + "train:\n  <<: *b\n  max_steps: 5\n")


def test_vllm_backend_still_validates():
    assert RunConfig.from_kwargs(generate__backend="vllm").generate.backend == "vllm"


# ------------------------------------------------------------------ trackers


def test_report_to_accepts_known_names(monkeypatch):
    monkeypatch.setattr(rules, "_installed", lambda module: True)
    assert RunConfig.from_kwargs(report_to="none").train.report_to == ["none"]
    for name in ("tensorboard", "trackio", "mlflow", "wandb", "swanlab"):
        assert RunConfig.from_kwargs(report_to=name).train.report_to == [name]
    cfg = RunConfig.from_kwargs(report_to=["tensorboard", "wandb"])
    assert RunConfig.from_yaml_text(cfg.to_yaml()) == cfg
    assert RunConfig().override(["report_to=tensorboard,mlflow"]).train.report_to == ["tensorboard", "mlflow"]
    with pytest.raises(ConfigError, match="'none' cannot be combined"):
        RunConfig.from_kwargs(report_to=["none", "wandb"])


def test_report_to_unknown_name_suggests():
    with pytest.raises(
        ConfigError, match=r"train.report_to.*unknown tracker 'tensorbaord'.*Did you mean 'tensorboard'"
    ):
        RunConfig.from_kwargs(report_to="tensorbaord")
    with pytest.raises(ConfigError, match="unknown tracker"):
        RunConfig.from_kwargs(report_to=[1])


def test_report_to_uninstalled_names_the_extra(monkeypatch):
    looked = []

    def fake_find_spec(name, *a):
        looked.append(name)
        return None

    monkeypatch.setattr(rules.importlib.util, "find_spec", fake_find_spec)
    with pytest.raises(ConfigError, match=r"'wandb' is not installed.*pip install 'forge-kit\[track\]'"):
        RunConfig.from_kwargs(report_to="wandb")
    assert looked == ["wandb"] and "wandb" not in sys.modules  # looked up, never imported
    with pytest.raises(ConfigError, match="tensorboard"):
        RunConfig.from_kwargs(report_to="tensorboard")
    assert {"tensorboard", "tensorboardX"} <= set(looked)


# ------------------------------------------------------------------ code named in a config


def test_module_function_rewards_need_the_opt_in(caplog):
    with pytest.raises(
        ConfigError,
        match=r"stage.reward_funcs.*would import the Python module 'mypkg.rewards' "
        r"and call its 'score'.*train.allow_code=true",
    ):
        RunConfig.from_kwargs(stage="grpo", reward_funcs=["length", "mypkg.rewards:score"])
    with caplog.at_level(logging.WARNING, logger="kit.config"):
        cfg = RunConfig.from_kwargs(stage="grpo", reward_funcs=["mypkg.rewards:score"], allow_code=True)
    assert cfg.train.allow_code and "'mypkg.rewards:score'" in caplog.text
    with pytest.raises(ConfigError, match="not an importable"):
        RunConfig.from_kwargs(stage="grpo", reward_funcs=["my pkg:score"], allow_code=True)


def test_callables_and_builtins_need_no_opt_in():
    def mine(prompts, completions, **_):
        return [0.0 for _ in completions]

    cfg = RunConfig.from_kwargs(stage="ppo", reward_funcs=[mine, "exact_match", r"format:\d+", "length:15", "contains"])
    assert cfg.stage.reward_funcs[0] is mine
    assert cfg.replace(max_steps=3).stage.reward_funcs[0] is mine  # replace keeps the callable itself
    assert "test_config_rules:" in cfg.to_yaml()  # recorded by its import path


def test_reward_specs_are_checked_when_the_config_is_built():
    with pytest.raises(ConfigError, match="unknown reward 'exact_mach'.*Did you mean 'exact_match'"):
        RunConfig.from_kwargs(stage="grpo", reward_funcs=["exact_mach"])
    with pytest.raises(ConfigError, match="not a valid regular expression"):
        RunConfig.from_kwargs(stage="grpo", reward_funcs=["format:(unclosed"])
    with pytest.raises(ConfigError, match="length.*positive number"):
        RunConfig.from_kwargs(stage="grpo", reward_funcs=["length:abc"])
    with pytest.raises(ConfigError, match="takes no argument"):
        RunConfig.from_kwargs(stage="grpo", reward_funcs=["exact_match:x"])


def test_the_builtin_reward_names_are_the_resolvers():
    from kit.stages.rewards import BUILTINS

    assert set(rules.REWARD_BUILTINS) == set(BUILTINS)


def test_trust_remote_code_logs_one_warning(caplog):
    with caplog.at_level(logging.WARNING, logger="kit.config"):
        cfg = RunConfig.from_kwargs(model="some/remote-code-model", trust_remote_code=True)
        cfg.replace(max_steps=3)
    hits = [r for r in caplog.records if "trust_remote_code" in r.getMessage()]
    assert len(hits) == 1 and "some/remote-code-model" in hits[0].getMessage()


# ------------------------------------------------------------------ rules that were checked only by the trainers


def test_online_rl_needs_a_reward():
    for stage in ("grpo", "ppo"):
        with pytest.raises(ConfigError, match=f"{stage} needs stage.reward_funcs.*stage.reward_model"):
            RunConfig.from_kwargs(stage=stage)
    assert RunConfig.from_kwargs(stage="ppo", reward_model="/runs/rm").stage.reward_model == "/runs/rm"


def test_grpo_batch_holds_whole_groups_and_ppo_does_not_accumulate():
    with pytest.raises(ConfigError, match="multiple of stage.num_generations"):
        RunConfig.from_kwargs(stage="grpo", reward_funcs=["length"], num_generations=3, batch_size=2)
    RunConfig.from_kwargs(stage="grpo", reward_funcs=["length"], num_generations=3, batch_size=3)
    with pytest.raises(ConfigError, match="train.grad_accum.*ppo"):
        RunConfig.from_kwargs(stage="ppo", reward_funcs=["length"], grad_accum=2)


def test_use_vllm_needs_vllm(monkeypatch):
    monkeypatch.setattr(rules, "_installed", lambda module: module != "vllm")
    with pytest.raises(ConfigError, match=r"stage.use_vllm.*forge-kit\[vllm\]"):
        RunConfig.from_kwargs(stage="grpo", reward_funcs=["length"], use_vllm=True)


def test_union_errors_say_why_each_member_failed():
    with pytest.raises(ConfigError) as e:
        RunConfig.from_kwargs(eval_dataset={"a": 1})
    assert "as str: expected a string" in str(e.value) and "as list: expected a list" in str(e.value)


# ------------------------------------------------------------------ what ships


def test_round_trip_with_the_new_keys():
    cfg = RunConfig.from_kwargs(
        stage="grpo",
        reward_funcs=["length:15"],
        allow_code=True,
        num_generations=2,
        batch_size=4,
        eval_steps=3,
        val_size=0.2,
    )
    text = cfg.to_yaml()
    assert RunConfig.from_yaml_text(text) == cfg and RunConfig.from_yaml_text(text).to_yaml() == text
    assert RunConfig.from_yaml_text(cfg.to_yaml(minimal=True)) == cfg


@pytest.mark.parametrize("path", sorted((ROOT / "examples").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_examples_validate(path):
    RunConfig.from_yaml(path)


def test_below_the_validator_only_our_errors_are_raised():
    """The recipes and the adapter code trust a validated config: the rules live in kit.config_rules, and what
    needs the loaded model raises a ForgeError (ConfigError, DataError, RunDirError), never a bare
    ValueError/RuntimeError/KeyError/TypeError a front end would report as a bug."""
    import ast
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "kit"
    files = [root / "adapters.py", *sorted((root / "stages").glob("*.py"))]
    bare = []
    for f in files:
        for node in ast.walk(ast.parse(f.read_text(), str(f))):
            if (
                isinstance(node, ast.Raise)
                and isinstance(node.exc, ast.Call)
                and isinstance(node.exc.func, ast.Name)
                and node.exc.func.id in ("ValueError", "RuntimeError", "KeyError", "TypeError")
            ):
                bare.append(f"{f.relative_to(root.parent)}:{node.lineno} {node.exc.func.id}")
    assert not bare, bare
