"""Trackers: a short run with report_to=[tensorboard, trackio], read back from what they wrote."""

from __future__ import annotations

import os
import sys

import pytest

from kit.config import ConfigError, RunConfig
from kit.tracking import flat_config, installed_trackers


def test_forge_env_lists_trackers_and_the_board_has_a_tracker_field(capsys):
    from kit.cli import main
    from kit.widgets.train import TrainPanel

    assert main(["env"]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.strip().startswith("trackers"))
    have = [n for n, ok in installed_trackers().items() if ok]
    assert all(n in line for n in have) and ("none" in line) == (not have)
    panel = TrainPanel(RunConfig())
    assert "train.report_to" in panel.keys and panel.form["train.report_to"] is not None  # the tracker field


needs_trackers = pytest.mark.skipif(
    not all(installed_trackers()[n] for n in ("tensorboard", "trackio")),
    reason="needs tensorboard and trackio (scripts/setup.sh installs them)",
)


def test_unknown_tracker_is_refused_with_a_suggestion(tiny_model_dir):
    with pytest.raises(ConfigError, match="Did you mean 'tensorboard'"):
        RunConfig.from_kwargs(model=str(tiny_model_dir), report_to=["tensorbaord"])


@needs_trackers
def test_flat_config_is_scalar():
    flat = flat_config(RunConfig())
    assert flat["train.learning_rate"] == RunConfig().train.learning_rate
    assert all(isinstance(v, (bool, int, float, str)) for v in flat.values())
    assert installed_trackers()["tensorboard"] is True


@needs_trackers
def test_tensorboard_and_trackio_get_metrics_config_and_run_name(tiny_cfg, tmp_path, monkeypatch):
    if "trackio" not in sys.modules:  # trackio reads TRACKIO_DIR when first imported
        monkeypatch.setenv("TRACKIO_DIR", str(tmp_path / "trackio"))
    from kit import Run

    cfg = tiny_cfg(report_to=["tensorboard", "trackio"], max_steps=3, save_steps=0, val_size=2, eval_steps=3)
    run = Run(cfg).start(blocking=True)
    assert run.status == "finished"
    run_name = os.path.basename(str(run.run_dir))

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    acc = EventAccumulator(str(run.run_dir / "tensorboard"), size_guidance={"tensors": 0})
    acc.Reload()
    assert [e.step for e in acc.Scalars("train/loss")] == [1, 2, 3]
    assert acc.Scalars("eval/loss")
    content = acc.PluginTagToContent("hparams")
    session = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"])
    hp = session.session_start_info.hparams
    assert hp["train.max_steps"].number_value == 3 and hp["stage.name"].string_value == "sft"
    assert "forge_config/text_summary" in acc.Tags()["tensors"]

    from trackio.sqlite_storage import SQLiteStorage

    logs = SQLiteStorage.get_logs("forge-kit", run_name)
    assert [r["train/loss"] for r in logs if "train/loss" in r]
    assert any("eval/loss" in r for r in logs)
    conf = SQLiteStorage.get_run_config("forge-kit", run_name)
    assert conf["train.max_steps"] == 3 and conf["stage.name"] == "sft"
