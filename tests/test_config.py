"""RunConfig: construction from every front end, validation messages, exact YAML round trip."""

import pytest

from kit import ConfigError, RunConfig
from kit.config import field_choices, field_help


def test_defaults_just_work():
    cfg = RunConfig.from_kwargs(model="smollm2-135m-instruct", dataset="demo_sft")
    assert cfg.model.name == "smollm2-135m-instruct"
    assert cfg.data.dataset == "demo_sft"
    assert cfg.adapter.type == "lora" and cfg.stage.name == "sft"


def test_yaml_round_trip_exact():
    cfg = RunConfig.from_kwargs(
        model="x/y",
        dataset=["a", "b"],
        lora_rank=8,
        learning_rate=1e-4,
        max_steps=7,
        quant__bits=4,
        stage="dpo",
        loss_type="ipo",
        interleave_probs=[0.3, 0.7],
        mix_strategy="interleave_under",
        system="Be brief.",
    )
    text = cfg.to_yaml()
    again = RunConfig.from_yaml_text(text)
    assert again == cfg
    assert again.to_yaml() == text
    minimal = cfg.to_yaml(minimal=True)
    assert RunConfig.from_yaml_text(minimal) == cfg
    assert "cutoff_len" not in minimal  # defaults are left out of the minimal view


def test_file_round_trip(tmp_path):
    cfg = RunConfig.from_kwargs(max_steps=3, output_dir=str(tmp_path / "r"))
    p = cfg.save(tmp_path / "c.yaml")
    assert RunConfig.from_yaml(p) == cfg


def test_flat_dotted_and_group_keys_agree():
    a = RunConfig.from_dict({"train": {"learning_rate": 0.001}, "model": {"name": "m/n"}})
    b = RunConfig.from_dict({"train.learning_rate": 0.001, "model": "m/n"})
    c = RunConfig.from_kwargs(learning_rate=0.001, model="m/n")
    d = RunConfig().override(["train.learning_rate=1e-3", "model.name=m/n"])
    assert a == b == c == d


def test_unknown_key_suggests():
    with pytest.raises(ConfigError, match="Did you mean 'learning_rate'"):
        RunConfig.from_kwargs(learning_rat=1e-4)
    with pytest.raises(ConfigError, match=r"train.lerning_rate.*Did you mean 'learning_rate'"):
        RunConfig.from_dict({"train": {"lerning_rate": 1}})
    with pytest.raises(ConfigError, match="unknown group"):
        RunConfig.from_dict({"trian.max_steps": 3})


def test_bad_values_name_key_and_allowed_values():
    with pytest.raises(ConfigError, match=r"adapter.type.*allowed values: 'lora', 'full', 'freeze'"):
        RunConfig.from_kwargs(adapter="qlora")
    with pytest.raises(ConfigError, match=r"train.batch_size.*>= 1"):
        RunConfig.from_kwargs(batch_size=0)
    with pytest.raises(ConfigError, match=r"train.learning_rate.*number"):
        RunConfig.from_kwargs(learning_rate="fast")
    with pytest.raises(ConfigError, match=r"ambiguous"):
        RunConfig.from_kwargs(max_new_tokens=5)


def test_cross_field_rules():
    with pytest.raises(ConfigError, match="QLoRA"):
        RunConfig.from_kwargs(quant__bits=4, adapter="full")
    assert RunConfig.from_kwargs(quant__bits="4").quant.bits == 4  # CLI strings coerce


def test_yaml_errors_point_to_line_and_key():
    text = "model:\n  name: smollm2-135m-instruct\ntrain:\n  max_steps: 3\n  batch_sise: 2\n"
    with pytest.raises(ConfigError) as e:
        RunConfig.from_yaml_text(text, source="run.yaml")
    assert e.value.line == 5 and e.value.key == "train.batch_sise"
    assert "run.yaml" in str(e.value) and "batch_size" in str(e.value)
    with pytest.raises(ConfigError) as e:
        RunConfig.from_yaml_text("train:\n  max_steps: [\n", source="bad.yaml")
    assert "invalid YAML" in str(e.value)


def test_help_and_choices_feed_the_ui():
    assert "learning rate" in field_help("train.learning_rate").lower()
    assert field_choices("adapter.type") == ["lora", "full", "freeze", "oft"]
    assert field_choices("quant.bits") == [4, 8]
