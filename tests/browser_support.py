"""What the two real-browser tests share: Debian's Chromium, a throwaway local Jupyter server, the
notebook they run, and the clicks (tests/test_browser.py: JupyterLab 4 + ipywidgets 8;
tests/test_browser_widgets7.py: classic Notebook 6.5 + ipywidgets 7.7.1).

The notebook has two cells. The first shows ``kit.Board`` on the tiny model; the test clicks Start,
waits for loss points, clicks Stop. The second starts a run from code, as the notebooks do
(``run = board.start()``, non-blocking), and the test clicks Stop during that notebook-started run.
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
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pytest

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM = "/usr/bin/chromium"

BOARD_CELL = """\
import kit
cfg = kit.RunConfig.from_kwargs(model={model!r}, output_dir={run_dir!r}, max_steps=400, batch_size=2,
                                cutoff_len=64, max_samples=64, save_steps=1000, learning_rate=1e-3, num_threads=1,
                                lora_rank=4)
board = kit.Board(cfg)
board
"""

# what every training notebook does: start without blocking, so the board's Stop button works
NOTEBOOK_RUN_CELL = """\
board.load(cfg.replace(train__output_dir={run_dir!r}))
run = board.start()
"""

# loss markers: plotly's FigureWidget (first scatter trace) or the svg back end's circles
POINTS_JS = """() => document.querySelectorAll(
    '.js-plotly-plot .scatterlayer .trace:first-child path.point, .forge-plot circle.forge-point').length"""

STATUS_DONE_JS = (
    "() => /status: (stopped|finished|failed)/.test("
    "(document.querySelector('.forge-status') || {textContent: ''}).textContent)"
)


def ensure_chromium() -> str:
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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, proc: subprocess.Popen, timeout: float) -> None:
    end = time.time() + timeout
    while time.time() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"the Jupyter server exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    raise TimeoutError(f"the Jupyter server did not answer {url} within {timeout:.0f}s")


def write_notebook(path: Path, sources: list[str]) -> None:
    cells = [
        {"cell_type": "code", "execution_count": None, "id": f"cell{i}", "metadata": {}, "outputs": [], "source": src}
        for i, src in enumerate(sources)
    ]
    nb = {
        "cells": cells,
        "metadata": {
            "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
            "language_info": {"name": "python"},
        },
        "nbformat": 4,
        "nbformat_minor": 5,
    }
    path.write_text(json.dumps(nb))


def server_env(tmp_path: Path, forge_home: Path, **extra: str) -> dict:
    env = {
        **os.environ,
        "FORGE_HOME": str(forge_home),
        "JUPYTER_CONFIG_DIR": str(tmp_path / "jcfg"),
        "JUPYTER_RUNTIME_DIR": str(tmp_path / "jrt"),
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        # the kernel imports this checkout's kit (the code under test), installed or not
        "PYTHONPATH": os.pathsep.join([str(ROOT)] + [p for p in [os.environ.get("PYTHONPATH")] if p]),
        **extra,
    }
    env.pop("VSCODE_PID", None)
    env.pop("VSCODE_CWD", None)
    return env


@contextmanager
def jupyter_server(argv: list[str], *, cwd: Path, env: dict, log_path: Path, ready_url: str):
    """Start a local Jupyter server, wait until ``ready_url`` answers, stop it afterwards."""
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        argv = argv + ["--allow-root"]  # CI containers run as root; the server still listens on 127.0.0.1 only
    log = open(log_path, "w")
    server = subprocess.Popen(argv, cwd=str(cwd), env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_http(ready_url, server, 90)
        yield server
    except Exception:
        log.flush()
        sys.stderr.write(log_path.read_text()[-4000:])
        raise
    finally:
        server.terminate()
        try:
            server.wait(15)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(5)
        log.close()


@dataclass
class FrontEnd:
    """How one Jupyter front end is driven: open the notebook, run cell ``i``, find the tab titles."""

    name: str
    open: Callable  # open(page, base_url)
    run_cell: Callable  # run_cell(page, index)
    tab_labels: str  # CSS selector of the Board's tab titles
    output_areas: str  # CSS selector of cell outputs (for the failure report)


@dataclass
class BoardFacts:
    """What the page showed, for the tests' assertions."""

    titles: list[str] = field(default_factory=list)
    status: str = ""
    n_before: int = 0
    n_after: int = 0
    notebook_status: str = ""
    notebook_points: int = 0


def drive_board(page, fe: FrontEnd, base: str, shot: Path) -> BoardFacts:
    """Start (button), points, Stop (button); then Stop during the run the second cell starts."""
    facts = BoardFacts()
    fe.open(page, base)
    fe.run_cell(page, 0)
    start = page.locator(".forge-start")
    start.wait_for(state="visible", timeout=180_000)  # a loaded 2-core machine renders slowly
    facts.titles = [t.strip() for t in page.locator(fe.tab_labels).all_inner_texts()]
    page.wait_for_function("() => !document.querySelector('.forge-start').disabled", timeout=10_000)
    start.click()
    page.wait_for_function(f"() => ({POINTS_JS})() >= 3", timeout=180_000)
    facts.n_before = page.evaluate(POINTS_JS)
    page.locator(".forge-stop").click()
    page.wait_for_function(STATUS_DONE_JS, timeout=60_000)
    facts.status = page.locator(".forge-status").inner_text()
    page.wait_for_timeout(500)  # let the last throttled redraw land before the screenshot
    facts.n_after = page.evaluate(POINTS_JS)
    page.locator(".forge-plot, .js-plotly-plot").first.scroll_into_view_if_needed()
    page.screenshot(path=str(shot), full_page=True)

    # the notebook starts the next run from code; the Stop button must still reach the kernel
    fe.run_cell(page, 1)
    page.wait_for_function(
        "() => /status: (running|training)/.test(document.querySelector('.forge-status').textContent)"
        f" && ({POINTS_JS})() >= 2",
        timeout=90_000,
    )
    page.wait_for_function("() => !document.querySelector('.forge-stop').disabled", timeout=10_000)
    page.locator(".forge-stop").click()
    page.wait_for_function(STATUS_DONE_JS, timeout=60_000)
    facts.notebook_status = page.locator(".forge-status").inner_text()
    facts.notebook_points = page.evaluate(POINTS_JS)
    return facts


def run_in_browser(chromium: str, fe: FrontEnd, base: str, shot: Path) -> BoardFacts:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=chromium, headless=True, args=["--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"]
        )
        page = None
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            return drive_board(page, fe, base, shot)
        except Exception:
            if page is not None:  # what the page showed when it went wrong
                page.screenshot(path=str(shot.with_name(shot.stem + "_failure.png")), full_page=True)
                outs = page.locator(fe.output_areas).all_inner_texts()
                sys.stderr.write("cell output:\n" + "\n".join(outs)[-3000:] + "\n")
            raise
        finally:
            browser.close()


def assert_stopped_with_checkpoint(run_dir: Path, status: str, max_steps: int = 400) -> int:
    """The run stopped before the end, with a complete checkpoint at the step the status names."""
    assert "stopped at step" in status, status
    checkpoints = sorted((run_dir / "checkpoints").glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[-1]))
    assert checkpoints, f"no checkpoint in {run_dir}"
    ck = checkpoints[-1]
    assert (ck / "FORGE_COMPLETE").exists(), f"{ck} has no FORGE_COMPLETE marker"
    step = int(ck.name.split("-")[-1])
    assert 1 <= step < max_steps and f"step {step}" in status, (step, status)
    state = json.loads((run_dir / "state.json").read_text())
    assert state["status"] == "stopped"
    return step
