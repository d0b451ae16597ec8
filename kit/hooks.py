"""The engine's hooks into the transformers Trainer: events, ``stop()``, and checkpoints that are
complete before anything older is deleted.

A checkpoint counts once its ``FORGE_COMPLETE`` marker exists (:class:`~kit.rundir.RunDir`). The
Trainer writes ``checkpoint-N`` and calls ``on_save``; only then is the marker written, and only
then are old complete checkpoints rotated out (the Trainer's own rotation is off, see
``kit.stages.common.base_training_args``: it deletes old checkpoints before ``on_save``, so a kill
in between left no complete checkpoint at all). A rotated checkpoint loses its marker before its
files: a kill mid-delete leaves an incomplete folder, which the next start removes, never a
half-deleted one that looks complete.

Imported by the engine when a run sets up, not by ``import kit``: transformers' callback module
imports its training stack (seconds).
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any, Optional

import psutil
import torch
from transformers import TrainerCallback

from .rundir import RunDir
from .stages.common import ReportsTokens


class NothingLeftToTrain(Exception):
    """The resumed checkpoint already holds every step of the run (it was killed after its last
    checkpoint, during the final save). Raised when training begins: transformers checks
    ``max_steps`` only after a step, so it would train one step past the end. The engine catches it
    and finishes from the checkpoint's weights."""


def memory_mb(device: str) -> float:
    """Peak GPU memory on CUDA, else this process's resident memory."""
    if device == "cuda" and torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    return psutil.Process().memory_info().rss / 2**20


def rotate_checkpoints(rd: RunDir, limit: Optional[int], newest: Path) -> None:
    """Keep ``newest`` and the ``limit - 1`` most recent other complete checkpoints; delete the rest."""
    if not limit:
        return
    others = [c for c in rd.complete_checkpoints() if c != newest]
    for old in others[: max(len(others) - (limit - 1), 0)]:
        (old / RunDir.COMPLETE_MARKER).unlink(missing_ok=True)  # first: it no longer counts
        shutil.rmtree(old, ignore_errors=True)


class RunHooks(TrainerCallback):
    """Turns trainer hooks into engine events, honours ``run.stop()`` and completes checkpoints.

    ``run`` is the :class:`~kit.engine.Run` (its ``_emit``, ``_stop``, ``guard``, ``dir`` ...).
    """

    def __init__(self, run: Any):
        self.run = run
        self.t_last: Optional[float] = None
        self.tokens_last = (0, 0)
        self.step_last = 0

    def on_train_begin(self, args, state, control, **kw):
        self.t_last = time.time()
        self.step_last = state.global_step
        if 0 < state.max_steps <= state.global_step:  # the weights are loaded by now; no step is left
            self.run._emit("status", status="nothing left to train", max_steps=state.max_steps, step=state.global_step)
            raise NothingLeftToTrain(state.global_step)
        self.run._emit("status", status="training", max_steps=state.max_steps, step=state.global_step)

    def on_log(self, args, state, control, logs=None, **kw):
        run = self.run
        logs = dict(logs or {})
        step = state.global_step
        if any(k.startswith("eval_") for k in logs):
            run._emit("eval", step=step, **{k: v for k, v in logs.items() if isinstance(v, (int, float))})
            return
        if "train_runtime" in logs:  # the closing summary
            run.summary.update(logs)
            return
        now = time.time()
        dt = max(now - (self.t_last or now), 1e-9)
        data = {k: v for k, v in logs.items() if isinstance(v, (int, float))}
        if isinstance(run.trainer, ReportsTokens):
            real, trained = run.trainer.tokens_seen()
            if real:
                data["tokens_per_s"] = (real - self.tokens_last[0]) / dt
                data["trained_tokens_per_s"] = (trained - self.tokens_last[1]) / dt
                data["tokens"] = real
            self.tokens_last = (real, trained)
        skipped = run.guard.pop_skipped() if run.guard is not None else 0
        if skipped:
            data["skipped_steps"] = skipped
            if skipped >= step - self.step_last:  # every step of this log was skipped: no loss to show
                data["loss"] = float("nan")
        self.t_last, self.step_last = now, step
        data["memory_mb"] = memory_mb(run.device)
        data["max_steps"] = state.max_steps
        data["elapsed_s"] = now - run.t_start
        run._emit("step", step=step, **data)

    def on_step_end(self, args, state, control, **kw):
        run = self.run
        if run.first_step_s is None:
            run.first_step_s = time.time() - run.t_process
        if run._stop.is_set():
            control.should_save = True
            control.should_training_stop = True
            control.should_log = True

    def on_save(self, args, state, control, model=None, **kw):
        run, step = self.run, state.global_step
        if run.guard is not None and model is not None:
            run.guard.check_weights(model, step)  # every rank: they stop together
        ck = run.dir.checkpoint_dir(step)
        if not state.is_world_process_zero or not ck.exists():
            return
        RunDir.mark_complete(ck, step)
        rotate_checkpoints(run.dir, run.config.train.save_total_limit, ck)
        run._emit("checkpoint", step=step, path=str(ck))
