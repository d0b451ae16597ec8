"""Notebook widgets: panels <-> RunConfig, Board round trip through YAML, Start/Stop buttons on a real run."""
from __future__ import annotations

import time

import pytest

from kit.config import RunConfig
from kit.events import Event
from kit.widgets import (AdapterPanel, Board, DataPanel, LossPlot, ModelPanel, QuantPanel, StagePanel, TrainPanel,
                         config_from_panels, set_plot_backend)
from kit.widgets.plot import plot_backend


def test_panels_build_the_config(tiny_model_dir):
    m, q, a, s, d, t = ModelPanel(), QuantPanel(), AdapterPanel(), StagePanel(), DataPanel(), TrainPanel(backend="static")
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
    b = Board(RunConfig.from_kwargs(model=str(tiny_model_dir), lora_rank=8, max_steps=7, cutoff_len=256,
                                    stage="kto", beta=0.2, generate__temperature=0.5), backend="static")
    text = b.show_yaml()
    assert b.show_magic() == "%%forge_train\n" + text
    cfg = RunConfig.from_yaml_text(text, source="board")
    assert (cfg.adapter.lora_rank, cfg.train.max_steps, cfg.stage.name, cfg.stage.beta) == (8, 7, "kto", 0.2)
    assert cfg.generate.temperature == 0.5       # fields no panel shows survive too
    b2 = Board.from_config(cfg, backend="static")
    assert b2.config().to_dict() == b.config().to_dict() == cfg.to_dict()
    b2.adapter.form["adapter.lora_rank"].widget.value = 3   # an edit in a tab reaches the config
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
    panel._throttle.flush()
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
    assert plot_backend() == "static"          # no Jupyter kernel here: static
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
    for i in range(200):                   # a burst of step events from the training thread
        th.push(i)
    th.push("finished", urgent=True)       # the terminal event goes out at once
    assert time.time() - t0 < 0.25
    assert len(batches) <= 2 and batches[-1][-1] == "finished"
    assert [x for b in batches for x in b] == list(range(200)) + ["finished"]   # nothing lost, order kept


def test_data_preview_button(tiny_cfg, tmp_path):
    from kit.data import register_dataset
    register_dataset("widget_preview_rows", [{"instruction": "Say hi", "input": "", "output": "Hello there"}])
    cfg = tiny_cfg(dataset="widget_preview_rows", cutoff_len=64)
    p = DataPanel(cfg, context=lambda: cfg)
    p.preview_button.click()
    assert "Hello there" in p.preview_html.value
    bad = tmp_path / "broken.jsonl"
    bad.write_text('{"instruction": "x"}\n')
    p.form["data.dataset"].widget.value = str(bad)     # a file path typed into the dataset box
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
    with pytest.raises(RuntimeError, match="still running"):     # a second click cannot start it twice
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
    run = kit.train(model=str(tiny_model_dir), dataset="demo_sft", output_dir=str(out), max_steps=2, batch_size=2,
                    cutoff_len=64, max_samples=8, save_steps=0, learning_rate=5e-3, lora_rank=4, num_threads=2)
    assert run.status == "finished", run.traceback
    return run


def test_export_panel_confirms_then_merges_a_lora_run(lora_run, tmp_path):
    from kit.widgets.tools import ExportPanel

    panel = ExportPanel(source=lambda: None)
    panel.dry_run.value = True
    panel.export_button.click()                  # nothing trained yet: said so, no job
    panel.job.wait(10)
    assert "train a run first" in panel.output.value and panel.job.thread is None

    out = tmp_path / "merged"
    panel = ExportPanel(source=lambda: lora_run, out_dir=str(out))
    panel.export_button.click()                  # merging writes a full copy: asks first
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
    f.write_text("".join(json.dumps({"question": q, "choices": c, "answer": a}) + "\n"
                         for q, c, a in [("Capital of France?", ["Paris", "Rome"], 0), ("2+2?", ["5", "4"], 1)]))
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
    assert panel.evaluate(wait=True) is None     # errors land in the output, not in the kernel
    assert "not available in mc mode" in panel.output.value
    panel.metrics.value = ""                     # demo_sft has no questions/choices: the row error is shown
    assert panel.evaluate(wait=True) is None
    assert "question" in panel.output.value and "row 0" in panel.output.value and not panel.run_button.disabled
