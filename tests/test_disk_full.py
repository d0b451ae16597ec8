"""A run directory that is full, read-only or too small, on a small tmpfs: the run fails early with a
message naming the directory, or, when the disk fills up mid-run, fails with its ``failed`` event
and state on disk and the last complete checkpoint intact (and resumes once there is room).

Mounting a tmpfs needs root (CAP_SYS_ADMIN); elsewhere these tests skip and say so."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from kit.engine import Run, RunDirUnwritable, open_run
from kit.rundir import RunDir


@pytest.fixture
def tmpfs(tmp_path):
    """``tmpfs("2m")`` -> the path of a fresh tmpfs of that size, unmounted after the test."""
    mounted = []

    def mount(size: str, *options: str):
        if os.name != "posix" or os.geteuid() != 0 or shutil.which("mount") is None:
            pytest.skip("mounting a tmpfs needs root and mount(8); this process has neither")
        where = tmp_path / f"tmpfs-{len(mounted)}"
        where.mkdir()
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", ",".join([f"size={size}", *options]), "tmpfs", str(where)],
            capture_output=True,
            text=True,
        )
        if done.returncode:
            pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip() or done.returncode}")
        mounted.append(where)
        return where

    yield mount
    for where in mounted:
        subprocess.run(["umount", "-l", str(where)], capture_output=True)


def _fill(where, leave: int = 0) -> None:
    """Write a filler file until ``leave`` bytes are free."""
    with open(where / "filler", "wb") as fh:
        chunk = b"\0" * 65536
        try:
            while shutil.disk_usage(where).free > leave + len(chunk):
                fh.write(chunk)
                fh.flush()
            fh.write(b"\0" * max(shutil.disk_usage(where).free - leave, 0))
            fh.flush()
        except OSError:
            pass


@pytest.mark.parametrize("kind", ["full", "read-only"])
def test_full_or_read_only_directory_fails_before_the_model_loads(tiny_cfg, tmpfs, kind):
    where = tmpfs("2m", "ro") if kind == "read-only" else tmpfs("2m")
    if kind == "full":
        _fill(where)
    run = Run(tiny_cfg(output_dir=str(where / "run")))
    with pytest.raises(RunDirUnwritable, match=str(where / "run")) as e:
        run.start()
    assert ("is full" if kind == "full" else "cannot create or write") in str(e.value)
    assert run.status == "failed" and run.events[-1].kind == "failed"
    assert not any(ev.kind in ("model", "status") for ev in run.events)  # nothing was loaded


def test_no_room_for_a_checkpoint_fails_before_training(tiny_cfg, tmpfs):
    where = tmpfs("2m")  # a checkpoint of the tiny model carries its 2 MB tokenizer
    run = Run(tiny_cfg(output_dir=str(where / "run")))
    with pytest.raises(RunDirUnwritable, match="free; this run writes about"):
        run.start()
    assert not run.history
    on_disk = RunDir(where / "run").events()
    assert on_disk[-1].kind == "failed" and "writes about" in on_disk[-1].get("error")


def test_disk_full_mid_run_keeps_the_failure_and_the_last_checkpoint(tiny_cfg, tmpfs):
    where = tmpfs("16m")
    cfg = tiny_cfg(output_dir=str(where / "run"), max_steps=4, save_steps=1, save_total_limit=2)
    run = Run(cfg)

    def fill_after_first_checkpoint(ev):
        if ev.kind == "checkpoint" and ev.step == 1:
            _fill(where, leave=48 << 10)

    run.subscribe(fill_after_first_checkpoint)
    with pytest.raises(RunDirUnwritable, match="no space left"):
        run.start()
    assert run.status == "failed"
    rd = RunDir(where / "run")
    failed = rd.events()[-1]  # written although the disk had been full
    assert failed.kind == "failed" and "no space left" in failed.get("error").lower(), failed.get("error")
    assert str(rd.path) in failed.get("error")
    assert rd.state()["status"] == "failed"
    assert [c.name for c in rd.checkpoints()] == ["checkpoint-1"] and rd.last_checkpoint() is not None

    (where / "filler").unlink()  # room again: the run continues from its last complete checkpoint
    again = open_run(rd.path)
    again.resume()
    assert again.status == "finished" and max(e.step for e in again.history) == 4
    assert [e for e in again.events if e.kind == "start"][-1].get("resume_from").endswith("checkpoint-1")
