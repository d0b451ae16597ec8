"""SIGKILL a training process at awkward moments, resume it, and get the run an uninterrupted one gives.

A child process trains the tiny model with a checkpoint every step and ``save_total_limit=1`` (so
every save also rotates) and is killed with SIGKILL either at an injected point (the child wraps
one function so that its n-th call kills the process) or after a random delay. Then, in this
process, the run is resumed from its directory. Checked every time:

* nothing complete is lost: every checkpoint the killed run announced (its ``checkpoint`` event) is
  still there or superseded by a newer complete one, and resume starts from the last complete one;
* the resumed run ends with the weights and losses of a run that was never interrupted;
* the directory is clean afterwards: no checkpoint without its marker, no temporary folders, one
  complete checkpoint (the limit), an event stream whose every line parses.

By default a few deterministic cases run (``FORGE_KILL_TRIALS=N`` runs N random ones as well).
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

import kit
from kit.engine import open_run
from kit.events import read_events
from kit.rundir import RunDir

MAX_STEPS = 5

# the child: `python -c CHILD config.yaml POINT N` trains, killing itself at the N-th call of POINT
CHILD = r"""
import os, shutil, signal, sys
import torch
import kit
from kit.rundir import RunDir

config, point, nth = sys.argv[1], sys.argv[2], int(sys.argv[3])
calls = [0]

def die_at_nth(real, before=None):
    def wrapper(*args, **kwargs):
        calls[0] += 1
        if calls[0] == nth:
            if before is not None:
                before(*args)
            os.kill(os.getpid(), signal.SIGKILL)
        return real(*args, **kwargs)
    return wrapper

def delete_one_file(path, *rest):  # die half-way through deleting a folder
    files = [f for f in sorted(os.listdir(path)) if os.path.isfile(os.path.join(path, f))]
    if files:
        os.remove(os.path.join(path, files[0]))

if point == "torch.save":        # inside a checkpoint write (optimizer, scheduler, RNG state files)
    torch.save = die_at_nth(torch.save)
elif point == "mark_complete":   # checkpoint written, its marker not yet (older ones still complete)
    RunDir.mark_complete = die_at_nth(RunDir.mark_complete)
elif point == "rmtree":          # rotating an old checkpoint out, half-deleted
    shutil.rmtree = die_at_nth(shutil.rmtree, before=delete_one_file)
elif point == "os.replace":      # the final save's swap or the state file's
    os.replace = die_at_nth(os.replace)
kit.train(config)
"""

# injected kill points and how many calls they see in an uninterrupted run of MAX_STEPS steps
# (torch.save: training_args.bin, optimizer.pt, scheduler.pt, rng_state.pth per checkpoint)
POINTS = {"torch.save": 4 * MAX_STEPS, "mark_complete": MAX_STEPS, "rmtree": MAX_STEPS - 1, "os.replace": 2}
DEFAULT_CASES = [("mark_complete", 2), ("rmtree", 1), ("torch.save", 6)]


def _config(tiny_model_dir, out):
    return kit.RunConfig.from_kwargs(
        model=str(tiny_model_dir),
        output_dir=str(out),
        max_steps=MAX_STEPS,
        batch_size=2,
        cutoff_len=64,
        max_samples=16,
        save_steps=1,
        save_total_limit=1,
        learning_rate=1e-3,
        num_threads=2,
    )


@pytest.fixture(scope="module")
def reference(tiny_model_dir, tmp_path_factory):
    """The uninterrupted run: its final adapter and losses."""
    run = kit.train(_config(tiny_model_dir, tmp_path_factory.mktemp("kill") / "reference"))
    assert run.status == "finished", run.traceback
    return load_file(str(run.run_dir / "adapter" / "adapter_model.safetensors")), dict(run.losses())


def _kill_and_resume(cfg, reference, point: str, nth: int = 0, delay: float = 0.0, must_die: bool = True):
    rd = RunDir(cfg.train.output_dir)
    path = cfg.save(rd.path.parent / f"{rd.path.name}.yaml")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    argv = [sys.executable, "-c", CHILD, str(path), point, str(nth)]
    log = rd.path.parent / f"{rd.path.name}.stderr"
    child = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=log.open("w"))
    if point == "delay":  # a random moment after training has begun
        deadline = time.time() + 600
        while child.poll() is None and time.time() < deadline:
            if rd.events_path.exists() and any(e.kind == "step" for e in read_events(rd.events_path)):
                time.sleep(delay)
                child.send_signal(signal.SIGKILL)
                break
            time.sleep(0.05)
    child.wait(timeout=600)
    if must_die:
        assert child.returncode == -signal.SIGKILL, f"not killed at {point} #{nth}: {log.read_text()[-2000:]}"

    # nothing complete was lost
    announced = (
        [e.step for e in read_events(rd.events_path) if e.kind == "checkpoint"] if rd.events_path.exists() else []
    )
    last = rd.last_checkpoint()
    if announced:
        assert last is not None and RunDir.checkpoint_step(last) >= max(announced), (point, nth, announced, last)
    # a kill mid-write of an event leaves a partial line: the resumed run must still be readable
    if rd.events_path.exists():
        with open(rd.events_path, "a") as fh:
            fh.write('{"event": "step", "time": 12')

    run = open_run(rd.path)
    run.resume()
    assert run.status == "finished", run.traceback
    start = [e for e in run.events if e.kind == "start"][-1]
    assert start.get("resume_from") == (str(last) if last else None)
    new_steps = [e.step for e in run.history if e.time >= start.time]
    assert new_steps == list(range((RunDir.checkpoint_step(last) if last else 0) + 1, MAX_STEPS + 1))

    weights, losses = reference
    got = load_file(str(rd.adapter_dir / "adapter_model.safetensors"))
    assert got.keys() == weights.keys()
    for k in weights:
        torch.testing.assert_close(got[k], weights[k], rtol=1e-4, atol=1e-6)
    for e in run.history:
        if e.time >= start.time:
            assert e.get("loss") == pytest.approx(losses[e.step], rel=1e-4, abs=1e-5), e.step

    assert [c.name for c in rd.checkpoints()] == [f"checkpoint-{MAX_STEPS}"] and rd.last_checkpoint() is not None
    assert not [p for p in rd.path.iterdir() if p.name.startswith(".") or p.suffix == ".tmp"]
    for line in rd.events_path.read_text().splitlines():
        json.loads(line)
    assert [e.kind for e in rd.events()].count("start") == 2


@pytest.mark.parametrize("point,nth", DEFAULT_CASES)
def test_kill_at_a_checkpoint_step_then_resume(tiny_model_dir, tmp_path, reference, point, nth):
    _kill_and_resume(_config(tiny_model_dir, tmp_path / "run"), reference, point, nth)


TRIALS = int(os.environ.get("FORGE_KILL_TRIALS", "0"))


@pytest.mark.skipif(TRIALS == 0, reason="random kill trials run with FORGE_KILL_TRIALS=N")
@pytest.mark.parametrize("trial", range(TRIALS))
def test_kill_at_random_then_resume(tiny_model_dir, tmp_path, reference, trial):
    rng = random.Random(int(os.environ.get("FORGE_KILL_SEED", "0")) * 1000 + trial)
    point = rng.choice([*POINTS, "delay"])
    if point == "delay":
        _kill_and_resume(
            _config(tiny_model_dir, tmp_path / "run"), reference, "delay", delay=rng.uniform(0, 3), must_die=False
        )  # it may finish first
    else:
        _kill_and_resume(
            _config(tiny_model_dir, tmp_path / "run"), reference, point, rng.randint(1, POINTS[point]), must_die=False
        )  # a call count past the library's own use lets it finish
