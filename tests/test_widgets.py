"""Notebook widgets: panels <-> RunConfig, Board round trip through YAML, Start/Stop buttons on a real run,
and the Board on ipywidgets 8 (in this process) and 7.7.1 (Colab's; in a subprocess)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kit.config import RunConfig
from kit.events import Event
from kit.widgets import (
    AdapterPanel,
    Board,
    DataPanel,
    LossPlot,
    ModelPanel,
    QuantPanel,
    StagePanel,
    TrainPanel,
    config_from_panels,
    set_plot_backend,
)
from kit.widgets.plot import plot_backend


def test_panels_build_the_config(tiny_model_dir):
    m, q, a, s, d, t = (
        ModelPanel(),
        QuantPanel(),
        AdapterPanel(),
        StagePanel(),
        DataPanel(),
        TrainPanel(backend="static"),
    )
    m.form["model.name"].widget.value = str(tiny_model_dir)
    q.form["quant.bits"].value = 4
    a.form["adapter.lora_rank"].widget.value = 4
    a.form["adapter.use_dora"].widget.value = True
    a.form["adapter.lora_target"].widget.value = "[q_proj, v_proj]"
    s.form["stage.name"].widget.value = "dpo"
    s.form["stage.beta"].widget.value = 0.3
    d.form["data.cutoff_len"].widget.value = 256
    d.form["data.max_samples"].widget.value = "40"
    t.form["train.max_steps"].widget.value = 12
    t.form["train.learning_rate"].widget.value = 5e-4
    cfg = config_from_panels([m, q, a, s, d, t])
    assert cfg.model.name == str(tiny_model_dir)
    assert cfg.quant.bits == 4
    assert (cfg.adapter.lora_rank, cfg.adapter.use_dora, cfg.adapter.lora_target) == (4, True, ["q_proj", "v_proj"])
    assert (cfg.stage.name, cfg.stage.beta) == ("dpo", 0.3)
    assert (cfg.data.cutoff_len, cfg.data.max_samples) == (256, 40)
    assert (cfg.train.max_steps, cfg.train.learning_rate) == (12, 5e-4)
    # the stage panel shows only the chosen stage's knobs
    shown = {w.description for w in s.widget.children}
    assert "beta" in shown and "num generations" not in shown


def test_adapter_panel_counts_trainable_params(tiny_cfg):
    cfg = tiny_cfg(lora_rank=4, lora_target="all")
    p = AdapterPanel(cfg)
    p.refresh()
    # tiny llama: 2 layers x 7 linear modules; rank 4 -> a known, non-trivial count, computed without weights
    assert "trainable" in p.params.value and "n/a" not in p.params.value
    p._context = lambda: RunConfig.from_kwargs(model="/nonexistent/model", lora_rank=4)
    p.refresh()  # a model that is not on disk must not raise
    assert "n/a" in p.params.value


def test_board_yaml_round_trip(tiny_model_dir):
    b = Board(
        RunConfig.from_kwargs(
            model=str(tiny_model_dir),
            lora_rank=8,
            max_steps=7,
            cutoff_len=256,
            stage="kto",
            beta=0.2,
            generate__temperature=0.5,
        ),
        backend="static",
    )
    text = b.show_yaml()
    assert b.show_magic() == "%%forge_train\n" + text
    cfg = RunConfig.from_yaml_text(text, source="board")
    assert (cfg.adapter.lora_rank, cfg.train.max_steps, cfg.stage.name, cfg.stage.beta) == (8, 7, "kto", 0.2)
    assert cfg.generate.temperature == 0.5  # fields no panel shows survive too
    b2 = Board.from_config(cfg, backend="static")
    assert b2.config().to_dict() == b.config().to_dict() == cfg.to_dict()
    b2.adapter.form["adapter.lora_rank"].widget.value = 3  # an edit in a tab reaches the config
    assert b2.config().adapter.lora_rank == 3


def _wait(pred, timeout):
    end = time.time() + timeout
    while time.time() < end:
        if pred():
            return True
        time.sleep(0.1)
    return False


def test_start_stop_buttons_drive_a_real_run(tiny_cfg):
    cfg = tiny_cfg(max_steps=30, save_steps=100, cutoff_len=64, max_samples=64)
    panel = TrainPanel(cfg, context=lambda: cfg, backend="static")
    panel.start_button.click()
    run = panel.run
    assert run is not None and panel.stop_button.disabled is False
    assert _wait(lambda: panel.plot.trace_points(0) >= 2, 90), f"no loss points; status {run.status}"
    panel.stop_button.click()
    run.wait(90)
    panel.flush()
    assert run.status == "stopped"
    assert run.last_checkpoint is not None and run.last_checkpoint.exists()
    assert run.global_step < 30
    # the final event is always applied, whatever the throttle dropped
    assert "stopped" in panel.status.value and panel.start_button.disabled is False
    assert panel.progress.value == run.global_step
    assert panel.plot.trace_points(0) == len([e for e in run.events if e.kind == "step" and e.get("loss") is not None])
    assert panel.resume_button.disabled is False


def test_static_plot_renders_after_two_steps(monkeypatch):
    monkeypatch.setenv("FORGE_PLOT_BACKEND", "static")
    assert plot_backend() == "static"
    plot = LossPlot()
    assert plot.widget is None
    for i, loss in enumerate([2.5, 2.0], 1):
        plot.add_events([Event("step", 0.0, {"step": i, "loss": loss, "learning_rate": 1e-3 * i})])
    b = plot.bundle()
    data = b["application/vnd.plotly.v1+json"]["data"]
    assert data[0]["x"] == [1, 2] and data[0]["y"] == [2.5, 2.0]
    assert len(data[1]["y"]) == 2 and data[3]["y"] == [1e-3, 2e-3] and data[3]["yaxis"] == "y2"
    assert "plotly-graph-div" in b["text/html"] and "2 steps" in b["text/plain"]


def test_plot_backend_choice(monkeypatch):
    monkeypatch.delenv("FORGE_PLOT_BACKEND", raising=False)
    assert plot_backend() == "static"  # no Jupyter kernel here: static
    set_plot_backend("plotly")
    try:
        p = LossPlot()
        assert p.backend == "plotly" and p.widget is not None
        p.add_step(1, 3.0, 1e-3)
        assert p.trace_points(0) == 1 and p.trace_points(3) == 1
    finally:
        set_plot_backend(None)
    with pytest.raises(ValueError):
        set_plot_backend("bokeh")


def test_throttle_coalesces_and_always_delivers_the_last_event():
    from kit.widgets.train import Throttle

    batches = []
    th = Throttle(batches.append, interval=0.25)
    t0 = time.time()
    for i in range(200):  # a burst of step events from the training thread
        th.push(i)
    th.push("finished", urgent=True)  # the terminal event goes out at once
    assert time.time() - t0 < 0.25
    assert len(batches) <= 2 and batches[-1][-1] == "finished"
    assert [x for b in batches for x in b] == list(range(200)) + ["finished"]  # nothing lost, order kept


def test_data_preview_button(tiny_cfg, tmp_path):
    from kit.data import register_dataset

    register_dataset("widget_preview_rows", [{"instruction": "Say hi", "input": "", "output": "Hello there"}])
    cfg = tiny_cfg(dataset="widget_preview_rows", cutoff_len=64)
    p = DataPanel(cfg, context=lambda: cfg)
    p.preview_button.click()
    assert "Hello there" in p.preview_html.value
    bad = tmp_path / "broken.jsonl"
    bad.write_text('{"instruction": "x"}\n')
    p.form["data.dataset"].widget.value = str(bad)  # a file path typed into the dataset box
    p.preview_button.click()
    assert "broken.jsonl" in p.preview_html.value and "#b00020" in p.preview_html.value


# ---------------------------------------------------------------- export / evaluate panels (one BackgroundJob)


def test_background_job_disables_the_button_and_shows_result_or_error():
    import threading

    import ipywidgets as W

    from kit.widgets.tools import BackgroundJob

    button, out = W.Button(), W.HTML()
    job = BackgroundJob(button, out, "working")
    gate = threading.Event()
    job.start(lambda: (gate.wait(10), 42)[1], lambda r: f"got {r}")
    assert button.disabled and out.value == "working" and job.running
    with pytest.raises(RuntimeError, match="still running"):  # a second click cannot start it twice
        job.start(lambda: 0, str)
    gate.set()
    assert job.wait(10) == 42 and out.value == "got 42" and not button.disabled and job.error is None

    def boom():
        raise ValueError("bad input, row 3")

    assert job.start(boom, str, wait=True) is None
    assert isinstance(job.error, ValueError) and "bad input, row 3" in out.value and not button.disabled


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory, tiny_model_dir):
    import kit

    out = tmp_path_factory.mktemp("panel-run") / "run"
    run = kit.train(
        model=str(tiny_model_dir),
        dataset="demo_sft",
        output_dir=str(out),
        max_steps=2,
        batch_size=2,
        cutoff_len=64,
        max_samples=8,
        save_steps=0,
        learning_rate=5e-3,
        lora_rank=4,
        num_threads=2,
    )
    assert run.status == "finished", run.traceback
    return run


def test_export_panel_confirms_then_merges_a_lora_run(lora_run, tmp_path):
    from kit.widgets.tools import ExportPanel

    panel = ExportPanel(source=lambda: None)
    panel.dry_run.value = True
    panel.export_button.click()  # nothing trained yet: said so, no job
    panel.job.wait(10)
    assert "train a run first" in panel.output.value and panel.job.thread is None

    out = tmp_path / "merged"
    panel = ExportPanel(source=lambda: lora_run, out_dir=str(out))
    panel.export_button.click()  # merging writes a full copy: asks first
    assert panel.confirm_box.layout.display is None and "merging" in panel.confirm_text.value
    assert panel.job.thread is None and not out.exists()
    panel.confirm_button.click()
    res = panel.job.wait(120)
    assert panel.job.error is None, panel.output.value
    assert res is panel.result and res["merged"] and (out / "model.safetensors").exists()
    assert (out / "Modelfile").exists() and not (out / "adapter_config.json").exists()
    assert "<b>done</b>" in panel.output.value and "merged" in panel.output.value
    assert panel.confirm_box.layout.display == "none" and not panel.export_button.disabled

    broken = ExportPanel(source=lambda: str(tmp_path / "no-such-run"), out_dir=str(tmp_path / "x"))
    broken.dry_run.value = True
    assert broken.export(wait=True) is None
    assert broken.job.error is not None and "#b00020" in broken.output.value and not broken.export_button.disabled


def test_evaluate_panel_scores_the_tiny_model(tiny_model_dir, tmp_path):
    pytest.importorskip("rouge_score")
    import json

    from kit.widgets.tools import EvaluatePanel

    f = tmp_path / "mc.jsonl"
    f.write_text(
        "".join(
            json.dumps({"question": q, "choices": c, "answer": a}) + "\n"
            for q, c, a in [("Capital of France?", ["Paris", "Rome"], 0), ("2+2?", ["5", "4"], 1)]
        )
    )
    panel = EvaluatePanel(source=lambda: str(tiny_model_dir), dataset=str(f))
    assert panel.available and not panel.run_button.disabled
    panel.run_button.click()
    scores = panel.job.wait(120)
    assert panel.job.error is None, panel.output.value
    assert scores is panel.scores and scores["n"] == 2 and scores["mode"] == "mc"
    assert 0.0 <= scores["accuracy"] <= 100.0 and "accuracy" in panel.output.value
    preds = [json.loads(line) for line in open(scores["predictions"])]
    assert scores["accuracy"] == pytest.approx(50.0 * sum(p["correct"] for p in preds))

    panel.dataset.value = "demo_sft"
    panel.max_samples.value = 2
    panel.metrics.value = "rouge"
    assert panel.options() == {"dataset": "demo_sft", "mode": "auto", "metrics": ["rouge"], "max_samples": 2}
    panel.mode.value = "mc"
    assert panel.evaluate(wait=True) is None  # errors land in the output, not in the kernel
    assert "not available in mc mode" in panel.output.value
    panel.metrics.value = ""  # demo_sft has no questions/choices: the row error is shown
    assert panel.evaluate(wait=True) is None
    assert "question" in panel.output.value and "row 0" in panel.output.value and not panel.run_button.disabled


# ---------------------------------------------------------------- ipywidgets 7 and 8

ROOT = Path(__file__).resolve().parent.parent
WIDGETS_7 = ["ipywidgets==7.7.1", "widgetsnbextension==3.6.*", "jupyterlab_widgets==1.1.*", "ipython_genutils"]


def board_probe() -> dict:
    """What a user of this process's ipywidgets sees of a Board: titles, tooltips, and the warnings it raised.

    Run in this process (ipywidgets 8) and, by the widgets-7 test, in a subprocess (``python -c``).
    """
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        import ipywidgets

        import kit
        from kit.widgets.compat import titles, tooltip

        out: dict = {"version": ipywidgets.__version__}
        for lang in ("en", "zh"):
            board = kit.Board(lang=lang)
            fields = [f for p in board.config_panels for f in p.form.fields.values()]
            buttons = [board.train.start_button, board.train.stop_button, board.train.resume_button]
            standalone = kit.widgets.TrainPanel(lang=lang)  # what %forge_train shows: an accordion
            out[lang] = {
                "tabs": titles(board.tabs),
                "accordion": titles(standalone.widget.children[0]),
                "tooltips": {f.key: tooltip(f.widget) for f in fields},
                "helps": {f.key: f.help for f in fields},
                "buttons": [tooltip(b) for b in buttons],
                "plot": board.train.plot.backend,
            }
        svg = kit.widgets.LossPlot("svg")
        svg.add_step(1, 2.0, 1e-3)
        out["svg_points"] = svg.widget.value.count('class="forge-point"')
    # traitlets' "Passing unrecognized arguments" (titles=/tooltip= on 7), ipywidgets 8's deprecations; not
    # ipywidgets 7's own use of ipykernel's old Comm class (the kernel here is newer than Colab's)
    out["warnings"] = [
        f"{w.category.__name__}: {w.message}"
        for w in caught
        if ("unrecognized argument" in str(w.message) or "ipywidgets" in str(w.filename) or "tooltip" in str(w.message))
        and "ipykernel.comm.Comm" not in str(w.message)
    ]
    return out


def _check_probe(out: dict, version: str) -> None:
    assert out["version"].startswith(version), out["version"]
    assert out["warnings"] == []
    assert out["en"]["tabs"] == [
        "Model",
        "Quantization",
        "Adapter",
        "Stage",
        "Data",
        "Train",
        "Chat",
        "Export",
        "Evaluate",
        "YAML",
    ]
    assert out["zh"]["tabs"][:3] == ["模型", "量化", "适配器"] and all(out["zh"]["tabs"])
    assert out["en"]["accordion"] == ["Hyperparameters"] and out["zh"]["accordion"] == ["超参数"]
    for lang in ("en", "zh"):
        tips = out[lang]["tooltips"]
        assert len(tips) > 40 and tips == out[lang]["helps"], f"{lang}: a field's tooltip is missing or wrong"
        assert all(tips.values()) and all(out[lang]["buttons"])
    assert out["svg_points"] == 1


def test_board_on_ipywidgets_8():
    import ipywidgets

    if not ipywidgets.__version__.startswith("8"):
        pytest.skip(f"this environment has ipywidgets {ipywidgets.__version__}")
    _check_probe(board_probe(), "8")


@pytest.fixture(scope="session")
def widgets7_dir(request) -> Path:
    """ipywidgets 7.7.1 (the version Colab ships) in its own folder, installed once under the pytest cache."""
    target = Path(request.config.cache.mkdir("ipywidgets-7.7.1"))
    done = target / ".complete"
    if not done.exists():
        argv = [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--upgrade",
            "--target",
            str(target),
            *WIDGETS_7,
        ]
        r = subprocess.run(argv, capture_output=True, text=True, timeout=600, check=False)
        if r.returncode != 0:
            pytest.skip(f"pip could not fetch ipywidgets 7.7.1 (exit {r.returncode}): {r.stderr.strip()[-300:]}")
        done.write_text(" ".join(WIDGETS_7) + "\n")
    return target


def test_board_on_ipywidgets_7(widgets7_dir, forge_home):
    """Colab's ipywidgets: every tab title and field tooltip shows, with no traitlets warning."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(widgets7_dir), str(ROOT)]), "FORGE_HOME": str(forge_home)}
    code = (
        "import json, sys; sys.path.insert(0, 'tests'); from test_widgets import board_probe; "
        "print('PROBE' + json.dumps(board_probe()))"
    )
    r = subprocess.run(
        [sys.executable, "-c", code], cwd=str(ROOT), env=env, capture_output=True, text=True, timeout=600, check=False
    )
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.split("PROBE", 1)[1])
    _check_probe(out, "7.7.1")
    assert out["en"]["plot"] == "static"  # no kernel here; in a widgets-7 kernel auto picks svg


def test_plot_backend_on_ipywidgets_7_is_svg(monkeypatch):
    from kit.widgets import plot

    class ZMQInteractiveShell:  # what a Jupyter kernel's shell is called
        pass

    monkeypatch.delenv("FORGE_PLOT_BACKEND", raising=False)
    monkeypatch.setattr("IPython.get_ipython", lambda: ZMQInteractiveShell())
    monkeypatch.setattr(plot, "WIDGETS_8", False)
    assert plot.detect_backend() == "svg"
    monkeypatch.setattr(plot, "WIDGETS_8", True)
    assert plot.detect_backend() == "plotly"


def test_svg_plot_draws_every_point():
    plot = LossPlot("svg")
    assert plot.widget is not None and plot.trace_points(0) == 0 and "waiting" in plot.widget.value
    events = [Event("step", 0.0, {"step": i, "loss": 3.0 - 0.1 * i, "learning_rate": 1e-3}) for i in range(1, 26)]
    events.append(Event("eval", 0.0, {"step": 25, "eval_loss": 2.2}))
    assert plot.add_events(events) == 26
    svg = plot.widget.value
    assert svg.count('class="forge-point"') == 25 == plot.trace_points(0)
    assert svg.count('class="forge-eval-point"') == 1 and 'class="forge-smooth"' in svg and 'class="forge-lr"' in svg
    assert "learning rate" in svg and plot.bundle()["text/html"] == svg and "25 steps" in plot.bundle()["text/plain"]
    plot.t.set_language("zh")
    assert "学习率" in plot.widget.value and "learning rate" not in plot.widget.value


def test_board_errors_are_one_clear_message(tiny_model_dir):
    """Our errors (a config key) show in the status line as one message, not a traceback; others say 'bug'."""
    from kit.widgets._fields import error_html

    board = Board(RunConfig.from_kwargs(model=str(tiny_model_dir)), backend="static")
    board.train.form["train.learning_rate"].widget.value = -1.0
    board.train.start_button.click()
    status = board.train.status.value
    assert board.run is None and "status: error" in status and "forge-error" in status
    assert "learning_rate" in status and "Traceback" not in status and "bug" not in status
    assert "invalid settings" in board.show_yaml() and "learning_rate" in board.yaml_text.value
    board.set_language("zh")
    assert board.train.status.value.startswith("状态：出错") and "learning_rate" in board.train.status.value
    bug = error_html(TypeError("unsupported operand"))
    assert "TypeError: unsupported operand" in bug and "bug in forge-kit" in bug


def test_public_refresh_and_flush_replace_private_calls():
    assert not hasattr(AdapterPanel, "_schedule")
    from kit.widgets.train import Throttle

    assert not hasattr(Throttle(lambda b: None), "calls")
    for path in (ROOT / "kit").rglob("*.py"):
        text = path.read_text()
        assert "._throttle" not in text.replace("self._throttle", ""), path
        assert "._schedule(" not in text, path
