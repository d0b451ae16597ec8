"""Who reads a knob: declared once on the field (kit.config), and the validator, the stage panel and the
help texts all follow that declaration."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

import kit.config_rules as rules
from kit import ConfigError, RunConfig
from kit.config import (
    GROUPS,
    LOSS_TYPE_STAGE,
    STAGES,
    field_choices,
    field_help,
    knob_loss_types,
    knob_read,
    knob_stages,
    stage_knobs,
    used_by,
)

DECLARED = [
    f"{g}.{f}" for g, cls in GROUPS.items() for f in cls.__dataclass_fields__ if knob_stages(f"{g}.{f}") is not None
]
LOSSES = field_choices("stage.loss_type")

# a valid value other than the default for every declared knob (with what it needs to be valid)
SETTINGS = {
    "adapter.loraplus_lr_ratio": {"adapter.loraplus_lr_ratio": 16.0},
    "data.eval_dataset": {"data.eval_dataset": "demo_sft"},
    "data.val_size": {"data.val_size": 0.1},
    "data.train_on_prompt": {"data.train_on_prompt": True},
    "data.mask_history": {"data.mask_history": True},
    "data.packing": {"data.packing": True},
    "data.padding_free": {"data.padding_free": False},
    "data.cache": {"data.cache": False},
    "train.micro_batch_size": {"train.micro_batch_size": 2},
    "train.micro_batch_tokens": {"train.micro_batch_tokens": 256},
    "train.eval_steps": {"data.val_size": 0.1, "train.eval_steps": 5},
    "stage.loss_type": {"stage.loss_type": "ipo"},
    "stage.beta": {"stage.beta": 0.2},
    "stage.ftx": {"stage.ftx": 0.5},
    "stage.label_smoothing": {"stage.label_smoothing": 0.1},
    "stage.simpo_gamma": {"stage.simpo_gamma": 1.0},
    "stage.ref_model": {"stage.ref_model": "some/reference"},
    "stage.kto_desirable_weight": {"stage.kto_desirable_weight": 2.0},
    "stage.kto_undesirable_weight": {"stage.kto_undesirable_weight": 0.5},
    "stage.reward_funcs": {"stage.reward_funcs": ["exact_match"]},
    "stage.reward_model": {"stage.reward_model": "/runs/rm"},
    "stage.num_generations": {"stage.num_generations": 2},
    "stage.max_new_tokens": {"stage.max_new_tokens": 8},
    "stage.temperature": {"stage.temperature": 0.7},
    "stage.ppo_epochs": {"stage.ppo_epochs": 3},
    "stage.ppo_clip": {"stage.ppo_clip": 0.3},
    "stage.vf_coef": {"stage.vf_coef": 0.2},
    "stage.gamma": {"stage.gamma": 0.9},
    "stage.lam": {"stage.lam": 0.9},
    "stage.use_vllm": {"stage.use_vllm": True},
    "train.neftune_noise_alpha": {"train.neftune_noise_alpha": 5.0},
    "stage.ref_model_quantization_bit": {"stage.ref_model": "some/reference", "stage.ref_model_quantization_bit": 4},
    "stage.reward_model_quantization_bit": {
        "stage.reward_model": "some/rm-run",
        "stage.reward_model_quantization_bit": 4,
    },
    "model.shift_attn": {"model.shift_attn": True},
    "model.shift_attn_group": {"model.shift_attn": True, "model.shift_attn_group": 128},
}


def base(stage: str, loss_type: str = "sigmoid") -> dict:
    """The smallest valid config of ``stage`` (online RL needs a reward)."""
    b = {"stage.name": stage}
    if stage == LOSS_TYPE_STAGE:
        b["stage.loss_type"] = loss_type
    if stage in ("grpo", "ppo"):
        b["stage.reward_funcs"] = ["length"]
    return b


def cases():
    for stage in STAGES:
        for loss in LOSSES if stage == LOSS_TYPE_STAGE else ["sigmoid"]:
            yield stage, loss


def test_declarations_name_real_stages_and_losses():
    from kit.stages import STAGE_MODULES

    assert set(STAGES) == set(STAGE_MODULES)
    assert DECLARED, "no knob declares its stages"
    for k in DECLARED:
        assert set(knob_stages(k)) <= set(STAGES), k
        assert set(knob_loss_types(k) or ()) <= set(LOSSES), k
        if knob_loss_types(k):
            assert LOSS_TYPE_STAGE in knob_stages(k), k
    assert set(SETTINGS) == set(DECLARED), "give every declared knob a test value"


@pytest.mark.parametrize("stage,loss", list(cases()))
def test_validator_follows_the_declaration(stage, loss, monkeypatch):
    """A declared knob set to a non-default value validates exactly when the stage (and loss) reads it;
    otherwise the error names the knob and the stages that read it."""
    monkeypatch.setattr(rules, "_installed", lambda module: True)  # use_vllm: installed or not is another rule
    for knob in DECLARED:
        if knob == "stage.loss_type" and stage == LOSS_TYPE_STAGE:
            continue  # the loss is part of the case
        settings = {**base(stage, loss), **SETTINGS[knob]}
        if knob_read(knob, stage, loss):
            cfg = RunConfig.from_dict(settings)
            g, f = knob.split(".")
            assert getattr(getattr(cfg, g), f) == SETTINGS[knob][knob]
        else:
            with pytest.raises(ConfigError) as e:
                RunConfig.from_dict(settings)
            assert e.value.key in SETTINGS[knob], (knob, stage, loss, str(e.value))
            assert used_by(e.value.key) in str(e.value)


def test_a_default_value_of_an_unread_knob_is_fine():
    # writing a knob at its default changes nothing, whatever the stage
    RunConfig.from_dict({"stage": {"name": "sft", "beta": 0.1, "num_generations": 4}, "data": {"packing": False}})


def test_unread_knob_message_names_the_users():
    with pytest.raises(
        ConfigError,
        match=r"stage.beta.*read only by stage\(s\) dpo, kto, grpo, ppo; stage 'sft' "
        r"ignores it",
    ):
        RunConfig.from_kwargs(beta=0.3)
    with pytest.raises(
        ConfigError, match=r"stage.simpo_gamma.*dpo \(loss_type simpo\); dpo with loss_type 'sigmoid' ignores it"
    ):
        RunConfig.from_kwargs(stage="dpo", simpo_gamma=1.0)
    with pytest.raises(ConfigError, match=r"stage.ref_model.*with loss_type 'orpo' ignores it"):
        RunConfig.from_kwargs(stage="dpo", loss_type="orpo", ref_model="x/y")
    with pytest.raises(ConfigError, match=r"adapter.loraplus_lr_ratio.*sft, pt; stage 'dpo'"):
        RunConfig.from_kwargs(stage="dpo", loraplus_lr_ratio=4)
    # the recipes' facts the issue names: ppo reads reward_funcs, and ppo reads no reference model
    assert "ppo" in knob_stages("stage.reward_funcs")
    assert "ppo" not in knob_stages("stage.ref_model")


@pytest.mark.parametrize("stage,loss", list(cases()))
def test_stage_panel_shows_exactly_the_declared_knobs(stage, loss):
    from kit.widgets import StagePanel

    panel = StagePanel()
    panel.form["stage.name"].widget.value = stage
    panel.form["stage.loss_type"].widget.value = loss
    declared = [k for k in DECLARED if k.startswith("stage.") and knob_read(k, stage, loss)]
    assert panel.shown_keys() == declared == stage_knobs(stage, loss_type=loss, group="stage")
    assert list(panel.box.children) == panel.form.widgets(["stage.name"] + declared)
    # hidden knobs go out at their defaults, so the panel's config is always valid for its stage
    for k in DECLARED:
        if k.startswith("stage.") and k not in declared:
            panel.form[k].value = SETTINGS[k][k]
    if stage in ("grpo", "ppo"):
        panel.form["stage.reward_funcs"].value = ["length"]
    cfg = panel.config()
    assert cfg.stage.name == stage


def test_panel_keeps_a_hidden_value_for_switching_back():
    from kit.widgets import StagePanel

    panel = StagePanel(RunConfig.from_kwargs(stage="kto", beta=0.3))
    panel.form["stage.name"].widget.value = "sft"
    assert panel.config().stage.beta == 0.1  # sft ignores beta: the default goes out
    panel.form["stage.name"].widget.value = "kto"
    assert panel.config().stage.beta == 0.3  # and the typed value comes back


def test_help_texts_say_who_reads_a_knob():
    assert field_help("stage.reward_funcs").endswith("Used by: grpo, ppo.")
    assert "Used by: sft, pt." in field_help("adapter.loraplus_lr_ratio")
    assert "Used by" not in field_help("train.learning_rate")
    for g, cls in GROUPS.items():  # the "dpo:" / "grpo/ppo:" prefixes are gone: the declaration says it
        for f, fld in cls.__dataclass_fields__.items():
            assert not re.match(r"^(sft|pt|rm|dpo|kto|grpo|ppo|simpo)(/\w+)*:", fld.metadata["help"], re.I), (g, f)


def test_ambiguous_flat_key_names_who_reads_each():
    with pytest.raises(ConfigError, match=r"stage.max_new_tokens \(used by grpo, ppo\) or generate.max_new_tokens"):
        RunConfig.from_kwargs(max_new_tokens=5)


def _recipe_reads(path: Path) -> set[str]:
    """Stage-group attributes a recipe module reads: ``st.x``, ``self.stage.x``, ``cfg.stage.x``."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Attribute):
            v = node.value
            if (isinstance(v, ast.Name) and v.id == "st") or (isinstance(v, ast.Attribute) and v.attr == "stage"):
                out.add(node.attr)
    return out


def test_every_stage_knob_a_recipe_reads_is_declared_for_it():
    """The other direction of the declaration, read from the recipes' source: a stage knob that a
    recipe reads must list that recipe's stage (else the validator would refuse a knob in use)."""
    import kit.stages

    folder = Path(kit.stages.__file__).parent
    stage_fields = set(GROUPS["stage"].__dataclass_fields__) - {"name"}
    modules = {
        "sft": ["sft"],
        "pt": ["pt", "sft"],
        "rm": ["rm"],
        "dpo": ["dpo"],
        "kto": ["kto"],
        "grpo": ["grpo"],
        "ppo": ["ppo"],
    }
    for stage, files in modules.items():
        read = set().union(*(_recipe_reads(folder / f"{m}.py") for m in files)) & stage_fields
        for name in read:
            assert stage in knob_stages(f"stage.{name}"), f"kit/stages/{files[0]}.py reads stage.{name}"


def test_label_smoothing_is_refused_with_the_losses_that_ignore_it():
    """TRL reads label_smoothing only in SimPO (CPO) here; with sigmoid/ipo/hinge/orpo it would be a silent
    no-op, so validation names the loss types that use it."""
    for loss in ("sigmoid", "ipo", "hinge", "orpo"):
        with pytest.raises(ConfigError) as e:
            RunConfig.from_dict({"stage": {"name": "dpo", "loss_type": loss, "label_smoothing": 0.1}})
        assert e.value.key == "stage.label_smoothing" and "dpo (loss_type simpo)" in str(e.value), str(e.value)
        assert f"loss_type '{loss}'" in str(e.value)
    cfg = RunConfig.from_dict({"stage": {"name": "dpo", "loss_type": "simpo", "label_smoothing": 0.1}})
    assert cfg.stage.label_smoothing == 0.1
