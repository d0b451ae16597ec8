"""Data parallel on one machine: `forge train --nproc 2` runs two gloo processes sharing one run dir."""

import json
import os
import subprocess
import sys

import pytest

from kit.rundir import RunDir


@pytest.mark.distributed
def test_two_process_training_with_gloo(tiny_cfg, tmp_path):
    cfg = tiny_cfg(max_steps=3, save_steps=3, batch_size=2)
    path = cfg.save(tmp_path / "c.yaml")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    # a small token budget: each rank runs its batch as several passes, reducing gradients once, with the last
    argv = [
        sys.executable,
        "-m",
        "kit.cli",
        "train",
        str(path),
        "train.num_threads=1",
        "train.micro_batch_tokens=24",
        "--nproc",
        "2",
    ]
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run_dir = cfg.train.output_dir
    events = RunDir(run_dir).events()
    start = next(e for e in events if e.kind == "start")
    assert start.get("world_size") == 2
    assert events[-1].kind == "finished" and events[-1].get("step") == 3
    # one writer: exactly one start event and one final adapter
    assert sum(e.kind == "start" for e in events) == 1
    assert (tmp_path / "run" / "adapter" / "adapter_model.safetensors").exists()
    assert json.loads((tmp_path / "run" / "state.json").read_text())["status"] == "finished"
    # each optimizer step consumed both ranks' batches: more tokens than one process would see
    steps = [e for e in events if e.kind == "step"]
    assert [e.step for e in steps] == [1, 2, 3]
    data = next(e for e in events if e.kind == "data")
    assert data.get("padding_free") and data.get("tokens_per_forward") == 24
    assert all(e.get("loss") is not None and e.get("loss") == e.get("loss") for e in steps)  # finite, not NaN


@pytest.mark.distributed
def test_fsdp_two_processes_match_one(tiny_cfg, tiny_model_dir, tmp_path):
    """train.distributed=fsdp in 2 gloo processes (FSDP2 fully_shard, kit.launch.shard_fsdp2), 2 rows each,
    against one process with the same global batch of 4 rows.

    Tolerance: the two runs differ only in float32 summation order (each rank's half-batch gradient is
    reduce-scattered over gloo instead of summed in one pass), a relative difference of ~1e-7 in the
    gradients; one AdamW step moves a weight by at most about lr = 1e-3. Measured here: losses equal to
    1e-6 relative, weights within 6e-7 of each other while training moved them by up to 3e-3. So losses
    must agree to rel 1e-5 and weights to 1e-5 (1% of one step): a wrong split of the batch (ranks seeing
    the same rows, or a gradient averaged over the wrong count) moves them by a whole step.
    """
    from safetensors.torch import load_file

    import kit

    common = dict(
        finetuning_type="full",
        max_steps=3,
        save_steps=0,
        lr_scheduler="constant",
        max_samples=16,
        num_threads=1,
        learning_rate=1e-3,
    )
    from kit.widgets.train import TrainPanel

    one = kit.train(tiny_cfg(batch_size=4, output_dir=str(tmp_path / "one"), **common))
    cfg = tiny_cfg(batch_size=2, distributed="fsdp", output_dir=str(tmp_path / "two"), **common)
    # from a notebook: kit.train(cfg, nproc=2) launches torchrun workers; the Board's train panel
    # follows the events rank 0 writes into the shared run directory
    run = kit.train(cfg, nproc=2, blocking=False)
    panel = TrainPanel(cfg)
    panel.follow(run)
    run.wait(timeout=600)
    panel.flush()
    assert run.status == "finished", [e.data for e in run.events if e.kind == "failed"]
    assert panel.progress.value == 3 and "10." in panel.stats.value  # the panel saw the workers' steps
    rd = RunDir(tmp_path / "two")
    events = rd.events()
    assert [e.kind for e in run.events] == [e.kind for e in events]  # the run followed the file, in order
    assert next(e for e in events if e.kind == "start").get("world_size") == 2
    assert next(e for e in events if e.kind == "model").get("sharded") == "fsdp2"  # not DDP
    two_losses = {e.step: e.get("loss") for e in events if e.kind == "step"}
    for step, loss in one.losses():
        assert two_losses[step] == pytest.approx(loss, rel=1e-5), step
    w1 = load_file(str(one.dir.model_dir / "model.safetensors"))
    w2 = load_file(str(rd.model_dir / "model.safetensors"))
    assert w1.keys() == w2.keys()
    start = load_file(str(tiny_model_dir / "model.safetensors"))
    moved = max((w1[k] - start[k]).abs().max().item() for k in w1)
    assert moved > 1e-4  # the runs trained
    assert max((w1[k] - w2[k]).abs().max().item() for k in w1) < 1e-5


def test_fsdp_on_cpu_refuses_checkpoints(tiny_cfg, monkeypatch):
    """FSDP2 on CPU processes cannot checkpoint the optimizer state: the run says so before training."""
    from kit import Run
    from kit.config import ConfigError

    monkeypatch.setenv("WORLD_SIZE", "2")
    run = Run(tiny_cfg(finetuning_type="full", distributed="fsdp", save_steps=2))
    with pytest.raises(ConfigError) as e:
        run._setup()
    assert e.value.key == "train.save_steps"
