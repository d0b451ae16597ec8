"""IPython magics: %load_ext kit, %%forge_train (YAML body, overrides, --wait), YAML error messages."""

from __future__ import annotations

import pytest
from IPython.core.interactiveshell import InteractiveShell


@pytest.fixture(scope="module")
def shell():
    sh = InteractiveShell.instance()
    sh.run_line_magic("load_ext", "kit")
    return sh


def test_cell_magic_trains_and_returns_the_run(shell, tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("FORGE_PLOT_BACKEND", "static")
    body = (
        f"model: {tiny_model_dir}\n"
        "data:\n  cutoff_len: 64\n  max_samples: 16\n"
        f"train:\n  max_steps: 2\n  batch_size: 2\n  save_steps: 2\n  num_threads: 2\n  output_dir: {tmp_path / 'run'}\n"
    )
    run = shell.run_cell_magic("forge_train", "train.learning_rate=0.001 --wait", body)
    assert run is not None and run.status == "finished"
    assert run.global_step == 2 and run.config.train.learning_rate == 0.001
    assert run.last_checkpoint is not None
    panel = shell.magics_manager.registry["ForgeMagics"].last_panel
    assert panel.run is run and panel.plot.trace_points(0) == 2


def test_yaml_error_names_line_and_key(shell, capsys):
    body = "model: smollm2-135m-instruct\ntrain:\n  max_stepz: 3\n"
    assert shell.run_cell_magic("forge_train", "", body) is None
    err = capsys.readouterr().err
    assert "line 3" in err and "train.max_stepz" in err and "max_steps" in err
    assert "Traceback" not in err


def test_line_magic_reads_a_yaml_file(shell, tmp_path, capsys):
    missing = tmp_path / "nope.yaml"
    assert shell.run_line_magic("forge_train", str(missing)) is None
    assert "nope.yaml" in capsys.readouterr().err
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  learning_rate: fast\n")
    assert shell.run_line_magic("forge_train", str(bad)) is None
    err = capsys.readouterr().err
    assert "line 2" in err and "learning_rate" in err


def test_forge_chat_uses_a_notebook_variable(shell, tiny_model_dir):
    from kit.widgets.chat import ChatPanel

    shell.user_ns["my_model"] = str(tiny_model_dir)
    panel = shell.run_line_magic("forge_chat", "my_model")
    assert isinstance(panel, ChatPanel) and panel.source() == str(tiny_model_dir)
    panel.max_new_tokens.value = 4
    out = panel.send("Hi", wait=True)
    assert out is not None and isinstance(out["tuned"], str) and panel.error is None
    assert [m["role"] for m in panel.history["tuned"]] == ["user", "assistant"]


# ------------------------------------------------------------------ the error boundary (#13)


def test_unexpected_error_is_one_line_naming_a_bug(shell, tiny_model_dir, tmp_path, monkeypatch, capsys):
    from kit.boundary import BUG_NOTE
    from kit.widgets.train import TrainPanel

    monkeypatch.setenv("FORGE_HOME", str(tmp_path / "home"))

    def start(self, wait=False):
        raise RuntimeError("boom in the panel")

    monkeypatch.setattr(TrainPanel, "start", start)
    assert shell.run_cell_magic("forge_train", "", f"model: {tiny_model_dir}\n") is None
    err = capsys.readouterr().err
    assert "Traceback" not in err and BUG_NOTE in err and "RuntimeError: boom in the panel" in err
    (saved,) = (tmp_path / "home" / "bug-reports").iterdir()
    assert "boom in the panel" in saved.read_text() and "%%forge_train" in saved.read_text()


def test_unreadable_arguments_are_one_line(shell, capsys):
    assert shell.run_line_magic("forge_train", "'unclosed.yaml") is None
    err = capsys.readouterr().err
    assert "Traceback" not in err and "cannot read the magic's arguments" in err


def test_a_run_that_fails_under_wait_is_reported_in_one_line(shell, tiny_model_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("FORGE_PLOT_BACKEND", "static")
    bad = tmp_path / "broken.jsonl"
    bad.write_text('{"instruction": "hi", "output": "hello"}\n{"instruction": "x", "output": \n')
    body = (
        f"model: {tiny_model_dir}\ndata:\n  dataset: {bad}\n"
        f"train:\n  max_steps: 1\n  num_threads: 1\n  output_dir: {tmp_path / 'run'}\n"
    )
    run = shell.run_cell_magic("forge_train", "--wait", body)
    assert run is not None and run.status == "failed"  # returned, to inspect
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith("forge: ")]
    assert len(lines) == 1 and "broken.jsonl" in lines[0] and "Traceback" not in err
