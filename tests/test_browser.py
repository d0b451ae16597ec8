"""The notebook front end in a real browser: JupyterLab + headless Chromium (Playwright), on the tiny model.

What only a browser can show: the board renders as live widgets, the Start/Stop buttons reach the
kernel through the widget comm, the plotly FigureWidget draws loss points while the run trains, and
Stop ends the run with a complete checkpoint. Everything is local: the server listens on 127.0.0.1
with no token in a temporary root dir, and Chromium is Debian's package (Playwright's own browser
download needs the internet).
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM = "/usr/bin/chromium"


def _ensure_chromium() -> str:
    """The system Chromium, installed with apt when missing (CI machines start bare)."""
    if Path(CHROMIUM).exists():
        return CHROMIUM
    apt = shutil.which("apt-get")
    if apt is None:
        pytest.skip(f"{CHROMIUM} is missing and there is no apt-get to install it")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for argv in ([apt, "update"], [apt, "install", "-y", "--no-install-recommends", "chromium"]):
        r = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=600, check=False)
        if r.returncode != 0:
            pytest.skip(f"could not install chromium ({' '.join(argv[1:])} exited {r.returncode}): {r.stderr[-300:]}")
    if not Path(CHROMIUM).exists():
        pytest.skip(f"apt-get installed chromium but {CHROMIUM} is still missing")
    return CHROMIUM


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_http(url: str, proc: subprocess.Popen, timeout: float) -> None:
    end = time.time() + timeout
    while time.time() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"jupyter lab exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    raise TimeoutError(f"jupyter lab did not answer {url} within {timeout:.0f}s")


CELL = """\
import kit
cfg = kit.RunConfig.from_kwargs(model={model!r}, output_dir={run_dir!r}, max_steps=400, batch_size=2,
                                cutoff_len=64, max_samples=64, save_steps=1000, learning_rate=1e-3, num_threads=1,
                                lora_rank=4)
board = kit.Board(cfg)
board
"""


def _notebook(path: Path, source: str) -> None:
    nb = {"cells": [{"cell_type": "code", "execution_count": None, "id": "board", "metadata": {}, "outputs": [],
                     "source": source}],
          "metadata": {"kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
                       "language_info": {"name": "python"}},
          "nbformat": 4, "nbformat_minor": 5}
    path.write_text(json.dumps(nb))


def test_board_start_plot_stop_in_jupyterlab(tiny_model_dir, tmp_path, forge_home):
    pytest.importorskip("jupyterlab")
    sync_api = pytest.importorskip("playwright.sync_api")
    chromium = _ensure_chromium()

    root = tmp_path / "lab"
    root.mkdir()
    run_dir = root / "run"
    _notebook(root / "board.ipynb", CELL.format(model=str(tiny_model_dir), run_dir=str(run_dir)))
    port = _free_port()
    env = {**os.environ, "FORGE_HOME": str(forge_home), "JUPYTER_CONFIG_DIR": str(tmp_path / "jcfg"),
           "JUPYTER_RUNTIME_DIR": str(tmp_path / "jrt"), "FORGE_PLOT_BACKEND": "plotly",
           "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           # the kernel imports this checkout's kit (the code under test), installed or not
           "PYTHONPATH": os.pathsep.join([str(ROOT)] + [p for p in [os.environ.get("PYTHONPATH")] if p])}
    env.pop("VSCODE_PID", None)
    env.pop("VSCODE_CWD", None)
    # local only, no token/password (the test's own throwaway server), state kept in the temp dir
    argv = [sys.executable, "-m", "jupyterlab", "--no-browser", "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={port}",
            "--ServerApp.port_retries=0", "--IdentityProvider.token=", "--ServerApp.password=",
            f"--ServerApp.root_dir={root}", f"--LabApp.workspaces_dir={tmp_path / 'ws'}",
            "--ServerApp.terminals_enabled=False", "--LabApp.news_url=",
            "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        argv.append("--allow-root")   # CI containers run as root; the server still listens on 127.0.0.1 only
    log = open(tmp_path / "jupyter.log", "w")
    server = subprocess.Popen(argv, cwd=str(root), env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "browser_board.png"
    try:
        _wait_http(f"{base}/api/status", server, 60)
        with sync_api.sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=chromium, headless=True,
                                         args=["--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"])
            page = None
            try:
                page = browser.new_page(viewport={"width": 1400, "height": 1000})
                page.goto(f"{base}/lab/tree/board.ipynb", wait_until="domcontentloaded", timeout=60_000)
                # the kernel is up once the status bar says Idle
                page.wait_for_selector(".jp-Notebook .jp-Cell .cm-content", timeout=60_000)
                page.wait_for_function(
                    "() => [...document.querySelectorAll('.jp-StatusBar-TextItem')].some(e => /Idle/.test(e.textContent))",
                    timeout=60_000)
                page.click(".jp-Notebook .jp-Cell .cm-content")          # focus the cell, then run it
                page.keyboard.press("Shift+Enter")
                start = page.locator(".forge-start")
                start.wait_for(state="visible", timeout=60_000)
                page.wait_for_function("() => !document.querySelector('.forge-start').disabled", timeout=10_000)
                start.click()
                # plotly draws each raw loss value as a marker path inside the first scatter trace
                points = ".js-plotly-plot .scatterlayer .trace:first-child path.point"
                page.wait_for_function(f"() => document.querySelectorAll({points!r}).length >= 3", timeout=60_000)
                n_before = page.locator(points).count()
                page.locator(".forge-stop").click()
                page.wait_for_function(
                    "() => /status: (stopped|finished|failed)/.test(document.querySelector('.forge-status').textContent)",
                    timeout=60_000)
                status = page.locator(".forge-status").inner_text()
                page.wait_for_timeout(500)      # let the last throttled redraw land before the screenshot
                n_after = page.locator(points).count()
                page.locator(".js-plotly-plot").first.scroll_into_view_if_needed()   # the notebook scrolls, not the page
                page.screenshot(path=str(shot), full_page=True)
            except Exception:
                if page is not None:   # what the page showed when it went wrong
                    page.screenshot(path=str(ARTIFACTS / "browser_board_failure.png"), full_page=True)
                    outs = page.locator(".jp-OutputArea").all_inner_texts()
                    sys.stderr.write("cell output:\n" + "\n".join(outs)[-3000:] + "\n")
                raise
            finally:
                browser.close()
    except Exception:
        log.flush()
        sys.stderr.write((tmp_path / "jupyter.log").read_text()[-4000:])
        raise
    finally:
        server.terminate()
        try:
            server.wait(15)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(5)
        log.close()

    assert "stopped at step" in status, status
    assert n_before >= 3 and n_after >= n_before
    checkpoints = sorted((run_dir / "checkpoints").glob("checkpoint-*"))
    assert checkpoints, f"no checkpoint in {run_dir}"
    ck = checkpoints[-1]
    assert (ck / "FORGE_COMPLETE").exists(), f"{ck} has no FORGE_COMPLETE marker"
    step = int(ck.name.split("-")[-1])
    assert 3 <= step < 400 and f"step {step}" in status
    assert n_after == step            # one marker per logged step: the plot shows every step up to the stop
    state = json.loads((run_dir / "state.json").read_text())
    assert state["status"] == "stopped"
    assert shot.exists() and shot.stat().st_size > 10_000
