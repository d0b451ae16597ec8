"""Data parallel on one machine: `forge train --nproc 2` runs two gloo processes sharing one run dir."""
import json
import os
import subprocess
import sys

import pytest

from kit.events import read_events


@pytest.mark.distributed
def test_two_process_training_with_gloo(tiny_cfg, tmp_path):
    cfg = tiny_cfg(max_steps=3, save_steps=3, batch_size=2)
    path = cfg.save(tmp_path / "c.yaml")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    # a small token budget: each rank runs its batch as several passes, reducing gradients once, with the last
    argv = [sys.executable, "-m", "kit.cli", "train", str(path), "train.num_threads=1", "train.micro_batch_tokens=24",
            "--nproc", "2"]
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run_dir = cfg.train.output_dir
    events = read_events(run_dir)
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
