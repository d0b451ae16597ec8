"""The numerics guard on the tiny model: a NaN loss or a collapse ends the run as failed at the
step where it happened, nothing of the bad state is saved, and ``on_nonfinite=skip`` leaves the
weights untouched by such a step. Also: non-finite numbers survive the JSONL event stream."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest
import torch

from kit.engine import Run
from kit.events import Event
from kit.numerics import NumericsError
from kit.rundir import RunDir


def _poison_after(run: Run, step: int, steps: int | None = None):
    """From the forward passes after ``step`` on (for ``steps`` optimizer steps, or for ever), the
    model's final norm outputs NaN, so the loss and every gradient are NaN."""
    state = {"hook": None, "left": steps}

    def on_event(ev):
        if ev.kind == "step" and ev.step == step and state["hook"] is None:
            norm = run.model.get_base_model().model.norm
            state["hook"] = norm.register_forward_hook(lambda m, i, out: out * float("nan"))
        if ev.kind == "skipped" and state["left"] is not None:
            state["left"] -= 1
            if state["left"] == 0:
                state["hook"].remove()

    run.subscribe(on_event)


def test_nan_loss_fails_at_its_step_and_keeps_the_last_good_checkpoint(tiny_cfg):
    run = Run(tiny_cfg(max_steps=6, save_steps=2, save_total_limit=2))
    _poison_after(run, step=2)
    with pytest.raises(NumericsError, match="loss is nan at step 3"):
        run.start()
    assert run.status == "failed"
    failed = run.events[-1]
    assert failed.kind == "failed" and failed.get("step") == 3 and failed.get("quantity") == "loss"
    assert math.isnan(failed.get("value")) and "step 3" in failed.get("error")
    assert [e.step for e in run.history] == [1, 2]  # no step event carries the poisoned update
    rd = RunDir(run.run_dir)
    assert [c.name for c in rd.checkpoints()] == ["checkpoint-2"] and rd.is_complete(rd.checkpoints()[0])
    assert failed.get("last_checkpoint") == str(rd.checkpoint_dir(2))
    assert not rd.adapter_dir.exists()  # no final adapter of poisoned weights
    # the stream on disk is valid JSON and still says which number was NaN
    lines = rd.events_path.read_text().splitlines()
    assert all(json.loads(line) for line in lines)
    on_disk = rd.events()[-1]
    assert on_disk.kind == "failed" and on_disk.get("step") == 3 and math.isnan(on_disk.get("value"))
    assert rd.state()["status"] == "failed" and "step 3" in rd.state()["error"]


def test_skip_leaves_the_weights_of_a_nan_step_unchanged(tiny_cfg):
    run = Run(tiny_cfg(max_steps=5, save_steps=0, on_nonfinite="skip", lr_scheduler="constant"))
    _poison_after(run, step=2, steps=1)
    seen = {}

    def snapshot(ev):
        if ev.kind == "step" and ev.step in (2, 3):
            seen[ev.step] = {n: p.detach().clone() for n, p in run.model.named_parameters() if p.requires_grad}

    run.subscribe(snapshot)
    run.start()
    assert run.status == "finished", run.traceback
    skipped = [e for e in run.events if e.kind == "skipped"]
    assert [(e.step, e.get("quantity")) for e in skipped] == [(3, "loss")]
    step3 = next(e for e in run.history if e.step == 3)
    assert step3.get("skipped_steps") == 1 and math.isnan(step3.get("loss"))  # not a made-up 0.0
    assert all(torch.equal(seen[2][n], seen[3][n]) for n in seen[2])  # the skipped step changed nothing
    assert all(math.isfinite(l) for s, l in run.losses() if s != 3)
    assert (run.run_dir / "adapter" / "adapter_model.safetensors").exists()


def test_huge_learning_rate_collapse_fails_the_cli(tiny_cfg, tmp_path):
    """learning_rate=1e6 drives the tiny model to uniform output (loss ln(vocab), gradient 0): the
    run must end as failed at a named step, and `forge train` must exit non-zero."""
    cfg = tiny_cfg(max_steps=10, save_steps=0, learning_rate=1e6, lr_scheduler="constant")
    path = cfg.save(tmp_path / "c.yaml")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, "-m", "kit.cli", "train", str(path)], env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode != 0, proc.stdout[-2000:]
    events = RunDir(cfg.train.output_dir).events()
    failed = events[-1]
    assert failed.kind == "failed" and "collapsed" in failed.get("error"), failed.data
    assert failed.get("quantity") in ("grad_norm", "loss") and 2 < failed.get("step") < 10
    assert f"step {failed.get('step')}" in failed.get("error")
    assert "collapsed" in proc.stderr
    assert not (tmp_path / "run" / "adapter").exists()


def test_non_finite_numbers_round_trip_through_json():
    ev = Event(
        "step",
        1.0,
        {
            "step": 3,
            "loss": float("nan"),
            "grad_norm": float("inf"),
            "lr": 1e-3,
            "memory_estimate": {"total": float("-inf"), "weights": 5},
            "ok": torch.tensor(2.5),
        },
    )
    line = ev.to_json()
    d = json.loads(line)  # strict JSON: no NaN/Infinity literals
    assert d["loss"] is None and d["nonfinite"] == {"loss": "nan", "grad_norm": "inf", "memory_estimate.total": "-inf"}
    assert "NaN" not in line and "Infinity" not in line
    back = Event.from_json(line)
    assert math.isnan(back.get("loss")) and back.get("grad_norm") == math.inf
    assert back.get("memory_estimate") == {"total": -math.inf, "weights": 5}
    assert back.get("ok") == 2.5 and back.get("lr") == 1e-3 and "nonfinite" not in back.data
