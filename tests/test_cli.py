"""The `forge` CLI's error boundary: our errors are one line and exit 2, bugs are reported as bugs."""

from __future__ import annotations

import errno

import pytest

from kit import cli
from kit.boundary import BUG_NOTE, EXIT_BUG, EXIT_INTERRUPTED, EXIT_USER_ERROR, ErrorBoundary, is_user_error
from kit.cli import main
from kit.engine import Run
from kit.rundir import RunDir


def _one_clear_line(err: str) -> str:
    assert "Traceback" not in err, err
    lines = [ln for ln in err.splitlines() if ln.startswith("forge: ")]
    assert len(lines) == 1, err
    return lines[0]


def test_config_error_is_one_line_and_exit_2(capsys):
    assert main(["train", "train.max_stepz=3"]) == EXIT_USER_ERROR
    line = _one_clear_line(capsys.readouterr().err)
    assert line.startswith("forge: error: ") and "max_stepz" in line


def test_missing_files_and_run_dirs_name_the_path(tmp_path, capsys):
    assert main(["train", str(tmp_path / "nope.yaml")]) == EXIT_USER_ERROR
    assert "nope.yaml" in _one_clear_line(capsys.readouterr().err)
    assert main(["resume", str(tmp_path)]) == EXIT_USER_ERROR
    assert str(tmp_path) in _one_clear_line(capsys.readouterr().err)


def test_export_of_an_unfinished_run_says_so(tmp_path, capsys):
    from kit.config import RunConfig

    rd = RunDir(tmp_path / "run")
    rd.save_config(RunConfig())
    assert main(["export", str(rd.path), "--dry-run"]) == EXIT_USER_ERROR
    assert "has the run finished?" in _one_clear_line(capsys.readouterr().err)


def test_a_bad_chat_setting_is_a_usage_error(capsys):
    assert main(["chat", "smollm2-135m-instruct", "max_new_tokens", "-m", "hi"]) == EXIT_USER_ERROR
    assert "key=value" in _one_clear_line(capsys.readouterr().err)


def test_eval_choice_errors_are_usage_errors_but_other_value_errors_are_bugs(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("FORGE_HOME", str(tmp_path / "home"))
    assert main(["eval", "-d", "demo_mc,demo_sft"]) == EXIT_USER_ERROR  # raised by kit.evaluate itself
    assert "one dataset at a time" in _one_clear_line(capsys.readouterr().err)

    def broken(*a, **k):
        return int("not a number")  # a ValueError from somewhere else: a bug, not a usage error

    monkeypatch.setattr(cli, "evaluate", broken)
    assert main(["eval", "-d", "demo_mc"]) == EXIT_BUG
    assert BUG_NOTE in capsys.readouterr().err


def test_unexpected_error_is_reported_as_a_bug_with_the_run_dir_and_a_saved_traceback(tiny_cfg, monkeypatch, capsys):
    cfg = tiny_cfg()

    def start(self, blocking=True):
        self.run_dir.mkdir(parents=True, exist_ok=True)
        raise RuntimeError("boom in the engine")

    monkeypatch.setattr(Run, "start", start)
    assert main(["train", f"model.name={cfg.model.name}", f"train.output_dir={cfg.train.output_dir}"]) == EXIT_BUG
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert "forge: error: RuntimeError: boom in the engine" in err
    assert BUG_NOTE in err and f"run dir {cfg.train.output_dir}" in err
    saved = RunDir(cfg.train.output_dir).traceback_path
    assert str(saved) in err
    text = saved.read_text()
    assert "Traceback (most recent call last)" in text and "RuntimeError: boom in the engine" in text
    assert "forge train" in text and "torch " in text  # the command and the versions, for the report


def test_a_bug_before_any_run_dir_goes_to_forge_home(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("FORGE_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(cli, "preview", lambda *a, **k: 1 / 0)
    assert main(["preview", "max_steps=1"]) == EXIT_BUG
    err = capsys.readouterr().err
    assert "no run dir yet" in err and "ZeroDivisionError" in err and "Traceback" not in err
    (saved,) = (tmp_path / "home" / "bug-reports").iterdir()
    assert "ZeroDivisionError" in saved.read_text() and str(saved) in err


def test_a_traceback_that_cannot_be_saved_is_printed_rather_than_lost(monkeypatch, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv("FORGE_HOME", str(blocker / "home"))  # below a file: nothing can be written there
    with ErrorBoundary() as b:
        raise KeyError("lost?")
    assert b.exit_code == EXIT_BUG
    err = capsys.readouterr().err
    assert "could not be saved" in err and "Traceback (most recent call last)" in err and "KeyError" in err


def test_ctrl_c_names_the_resume_command(tiny_cfg, monkeypatch, capsys):
    cfg = tiny_cfg()

    def start(self, blocking=True):
        raise KeyboardInterrupt

    monkeypatch.setattr(Run, "start", start)
    assert (
        main(["train", f"model.name={cfg.model.name}", f"train.output_dir={cfg.train.output_dir}"]) == EXIT_INTERRUPTED
    )
    assert f"forge resume {cfg.train.output_dir}" in _one_clear_line(capsys.readouterr().err)


def test_a_data_error_during_training_is_one_line(tiny_model_dir, tmp_path, capsys):
    bad = tmp_path / "broken.jsonl"
    bad.write_text('{"instruction": "hi", "output": "hello"}\n{"instruction": "x", "output": \n')
    rc = main(
        [
            "train",
            f"model.name={tiny_model_dir}",
            f"data.dataset={bad}",
            "train.max_steps=1",
            f"train.output_dir={tmp_path / 'run'}",
            "train.num_threads=1",
        ]
    )
    assert rc == EXIT_USER_ERROR
    assert "broken.jsonl" in _one_clear_line(capsys.readouterr().err)


@pytest.mark.parametrize(
    "exc,user",
    [
        (FileNotFoundError(errno.ENOENT, "No such file or directory", "x.yaml"), True),
        (OSError(errno.ENOSPC, "No space left on device", "/runs/x"), True),
        (PermissionError(errno.EACCES, "Permission denied", "/runs"), True),
        (ImportError("quant.bits needs bitsandbytes: pip install 'forge-kit[quant]'"), True),
        (OSError(errno.EIO, "Input/output error"), False),
        (ImportError("cannot import name 'x' from 'kit.y'"), False),
        (ValueError("inside a library"), False),
        (RuntimeError("anything else"), False),
    ],
)
def test_what_counts_as_the_users_error(exc, user):
    assert is_user_error(exc) is user


def test_a_full_disk_reads_as_such(capsys):
    with ErrorBoundary() as b:
        raise OSError(errno.ENOSPC, "No space left on device", "/runs/x/state.json")
    assert b.exit_code == EXIT_USER_ERROR
    assert _one_clear_line(capsys.readouterr().err) == "forge: error: no space left on device: /runs/x/state.json"


def test_argument_parsing_lives_in_the_cli():
    """export/eval options are parsed by kit.cli (the library modules hold no argparse)."""
    import sys

    p = cli.build_parser()
    a = p.parse_args(["export", "runs/x", "--no-merge", "--gguf", "q8_0", "--push", "me/m", "--dry-run"])
    assert (a.fn, a.no_merge, a.gguf, a.push, a.dry_run, a.out) == (cli.cmd_export, True, "q8_0", "me/m", True, None)
    a = p.parse_args(["eval", "runs/x", "-d", "demo_mc", "-n", "3", "--mode", "mc"])
    assert (a.fn, a.dataset, a.max_samples, a.mode) == (cli.cmd_eval, "demo_mc", 3, "mc")
    for name in ("kit.export", "kit.evaluate"):  # (kit.export the attribute is the function)
        assert "argparse" not in open(sys.modules[name].__file__).read()
