"""Checkpoint rotation over complete checkpoints only, leftovers cleaned on start, and an event file
repaired to a line boundary before a resumed run appends to it (no model needed)."""

from __future__ import annotations

import json

from kit.engine import clean_leftovers
from kit.events import EventBus, read_events, repair_tail
from kit.hooks import rotate_checkpoints
from kit.rundir import RunDir


def _checkpoint(rd: RunDir, step: int, complete: bool = True):
    ck = rd.checkpoint_dir(step)
    ck.mkdir(parents=True)
    (ck / "adapter_model.safetensors").write_bytes(b"x")
    if complete:
        RunDir.mark_complete(ck, step)
    return ck


def test_rotation_keeps_the_new_checkpoint_and_only_counts_complete_ones(tmp_path):
    rd = RunDir(tmp_path / "run")
    for s in (1, 2, 3):
        _checkpoint(rd, s)
    half_saved = _checkpoint(rd, 5, complete=False)
    new = _checkpoint(rd, 4)
    rotate_checkpoints(rd, 2, new)
    assert [c.name for c in rd.complete_checkpoints()] == ["checkpoint-3", "checkpoint-4"]
    assert half_saved.exists()  # not complete, so neither counted nor rotated (start-up removes it)
    # a run started afresh (resume=false) in a used folder: its new, lower-numbered checkpoint stays
    fresh = RunDir(tmp_path / "fresh")
    _checkpoint(fresh, 8)
    new = _checkpoint(fresh, 2)
    rotate_checkpoints(fresh, 1, new)
    assert fresh.complete_checkpoints() == [new]
    rotate_checkpoints(fresh, None, new)  # no limit: nothing deleted
    assert fresh.complete_checkpoints() == [new]


def test_leftovers_of_an_interrupted_run_are_removed(tmp_path):
    rd = RunDir(tmp_path / "run")
    keep = _checkpoint(rd, 2)
    _checkpoint(rd, 3, complete=False)
    for name in (".forge-tmp-adapter-x1", ".adapter-abc", ".model-def"):
        (rd.path / name).mkdir()
        (rd.path / name / "f").write_text("partial")
    (rd.path / "state.tmp").write_text("{")
    (rd.path / "adapter").mkdir()
    clean_leftovers(rd)
    assert rd.checkpoints() == [keep]
    assert sorted(p.name for p in rd.path.iterdir()) == ["adapter", "checkpoints"]


def test_event_file_is_repaired_before_appending(tmp_path):
    path = tmp_path / "events.jsonl"
    whole = json.dumps({"event": "status", "time": 1.0, "status": "training"})
    path.write_text(whole + "\n" + '{"event": "step", "time": 2.0, "lo')  # killed mid-line
    bus = EventBus()
    bus.attach_file(path)
    bus.emit("start", step=0)
    bus.close()
    assert [e.kind for e in read_events(path)] == ["status", "start"]
    assert all(json.loads(line) for line in path.read_text().splitlines())
    # a whole last event whose newline was lost is kept, not cut
    path.write_text(whole + "\n" + whole)
    repair_tail(path)
    assert path.read_text() == whole + "\n" + whole + "\n"
    # a multi-byte character cut in half does not make the file unreadable
    path.write_bytes((whole + "\n").encode() + '{"event": "log", "text": "é'.encode()[:-1])
    assert [e.kind for e in read_events(path)] == ["status"]
    repair_tail(path)
    assert path.read_text() == whole + "\n"
