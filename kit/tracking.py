"""Experiment trackers (``train.report_to``): transformers' own integrations, plus what they miss.

transformers' integration callbacks (TensorBoardCallback, TrackioCallback, MLflowCallback,
WandbCallback, SwanLabCallback) already send the step and eval metrics of every ``on_log`` to
their tracker; we pass ``report_to`` through to TrainingArguments rather than write our own
subscriber. What they miss, added here:

- the run name: TrainingArguments' ``run_name`` is the run directory's name, ``project`` "forge-kit"
  (trackio's project; W&B reads WANDB_PROJECT);
- our config as hyper-parameters: they log TrainingArguments and the model config, not the
  RunConfig. :class:`ConfigToTrackers` sends ``cfg.to_dict()`` flattened (``train.learning_rate``)
  once the integrations have opened their runs (TensorBoard: the hparams plugin plus the YAML as
  text; trackio, W&B, SwanLab: their run config; MLflow: params);
- TensorBoard's event files go to ``<run dir>/tensorboard`` (not under the checkpoints folder).

Tested here by reading back TensorBoard's event files and trackio's local store. MLflow, W&B and
SwanLab are written against their APIs but are not installed here (mlflow would replace the
installed pyarrow), so they are not run.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from .config import RunConfig
from .config_rules import REPORT_TO, tracker_installed
from .rundir import RunDir

PROJECT = "forge-kit"
TRACKERS = tuple(n for n in REPORT_TO if n != "none")  # the names and their modules: kit.config_rules


def installed_trackers() -> dict[str, bool]:
    """Which trackers can be used here (for ``forge env``)."""
    return {name: tracker_installed(name) for name in TRACKERS}


def tracker_args(cfg: RunConfig, run_dir: Path) -> dict:
    """TrainingArguments keywords: the run name and project the trackers show."""
    return {"run_name": Path(run_dir).name, "project": PROJECT}


def flat_config(cfg: RunConfig) -> dict[str, Any]:
    """``{"train.learning_rate": 0.0002, ...}``: numbers, strings and booleans as they are, other
    values (None, lists) as JSON text, as hyper-parameter tables need scalars."""
    out: dict[str, Any] = {}
    for group, values in cfg.to_dict().items():
        items = values.items() if isinstance(values, dict) else [("", values)]
        for k, v in items:
            key = f"{group}.{k}" if k else group
            out[key] = v if isinstance(v, (bool, int, float, str)) else json.dumps(v, default=str)
    return out


def attach_trackers(trainer: Any, cfg: RunConfig, run_dir: Path) -> None:
    """Point the trainer's TensorBoard callback at ``<run dir>/tensorboard`` and add the callback
    that sends the config. A no-op without trackers."""
    names = [n for n in cfg.train.report_to if n != "none"]
    if not names:
        return
    tb = None
    for cb in trainer.callback_handler.callbacks:
        if type(cb).__name__ == "TensorBoardCallback":
            cb.logging_dir = str(RunDir(run_dir).tensorboard_dir)
            tb = cb
    trainer.add_callback(ConfigToTrackers(cfg, names, tb))


class ConfigToTrackers(TrainerCallback):
    """Sends the RunConfig to each tracker once its integration has opened the run (the
    integrations' callbacks come first in the trainer's list, so their on_train_begin has run)."""

    def __init__(self, cfg: RunConfig, names: list[str], tensorboard_callback: Any = None):
        self.cfg, self.names, self.tb = cfg, names, tensorboard_callback

    def on_train_begin(self, args, state, control, **kwargs):
        if not state.is_world_process_zero:
            return
        params = flat_config(self.cfg)
        for name in self.names:
            getattr(self, f"_send_{name}")(params)

    def _send_tensorboard(self, params: dict) -> None:
        writer = getattr(self.tb, "tb_writer", None)
        if writer is None:
            return
        from torch.utils.tensorboard.summary import hparams

        for summary in hparams(params, {}):  # into the run's own event file, not a new sub-run
            writer._get_file_writer().add_summary(summary)
        writer.add_text("forge_config", "```yaml\n" + self.cfg.to_yaml() + "\n```")
        writer.flush()

    def _send_trackio(self, params: dict) -> None:
        import trackio

        trackio.config.update(params, allow_val_change=True)

    def _send_mlflow(self, params: dict) -> None:
        import mlflow

        if mlflow.active_run() is not None:
            mlflow.log_params({k: str(v)[:6000] for k, v in params.items()})

    def _send_wandb(self, params: dict) -> None:
        import wandb

        if wandb.run is not None:
            wandb.config.update(params, allow_val_change=True)

    def _send_swanlab(self, params: dict) -> None:
        import swanlab

        swanlab.config.update(params)
