"""The notebook front end in a real browser: JupyterLab 4 + ipywidgets 8 + headless Chromium (Playwright), on the tiny model.

What only a browser can show: the board renders as live widgets, the Start/Stop buttons reach the
kernel through the widget comm, the plotly FigureWidget draws loss points while the run trains, and
Stop ends the run with a complete checkpoint, for a run started with the Start button and for one
the notebook started from code (``run = board.start()``, as the notebooks do). Everything is local:
the server listens on 127.0.0.1 with no token in a temporary root dir, and Chromium is Debian's
package (Playwright's own browser download needs the internet). The widgets 7 twin of this test is
tests/test_browser_widgets7.py; both share tests/browser_support.py.
"""

from __future__ import annotations

import sys

import pytest
from browser_support import (
    ARTIFACTS,
    BOARD_CELL,
    NOTEBOOK_RUN_CELL,
    FrontEnd,
    assert_stopped_with_checkpoint,
    ensure_chromium,
    free_port,
    jupyter_server,
    run_in_browser,
    server_env,
    write_notebook,
)

pytestmark = pytest.mark.browser


def _open_lab(page, base: str) -> None:
    page.goto(f"{base}/lab/tree/board.ipynb", wait_until="domcontentloaded", timeout=60_000)
    # the kernel is up once the status bar says Idle
    page.wait_for_selector(".jp-Notebook .jp-Cell .cm-content", timeout=60_000)
    page.wait_for_function(
        "() => [...document.querySelectorAll('.jp-StatusBar-TextItem')].some(e => /Idle/.test(e.textContent))",
        timeout=60_000,
    )


def _run_lab_cell(page, index: int) -> None:
    page.locator(".jp-Notebook .jp-Cell .cm-content").nth(index).click()  # focus the cell, then run it
    page.keyboard.press("Shift+Enter")


LAB = FrontEnd(
    "JupyterLab 4",
    _open_lab,
    _run_lab_cell,
    tab_labels=".widget-tab .lm-TabBar-tabLabel",
    output_areas=".jp-OutputArea",
)


def test_board_start_plot_stop_in_jupyterlab(tiny_model_dir, tmp_path, forge_home):
    pytest.importorskip("jupyterlab")
    pytest.importorskip("playwright.sync_api")
    chromium = ensure_chromium()

    root = tmp_path / "lab"
    root.mkdir()
    run_dir, run2_dir = root / "run", root / "run-from-notebook"
    write_notebook(
        root / "board.ipynb",
        [
            BOARD_CELL.format(model=str(tiny_model_dir), run_dir=str(run_dir)),
            NOTEBOOK_RUN_CELL.format(run_dir=str(run2_dir)),
        ],
    )
    port = free_port()
    env = server_env(tmp_path, forge_home, FORGE_PLOT_BACKEND="plotly")
    # local only, no token/password (the test's own throwaway server), state kept in the temp dir
    argv = [
        sys.executable,
        "-m",
        "jupyterlab",
        "--no-browser",
        "--ServerApp.ip=127.0.0.1",
        f"--ServerApp.port={port}",
        "--ServerApp.port_retries=0",
        "--IdentityProvider.token=",
        "--ServerApp.password=",
        f"--ServerApp.root_dir={root}",
        f"--LabApp.workspaces_dir={tmp_path / 'ws'}",
        "--ServerApp.terminals_enabled=False",
        "--LabApp.news_url=",
        "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
    ]
    base = f"http://127.0.0.1:{port}"
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "browser_board.png"
    with jupyter_server(argv, cwd=root, env=env, log_path=tmp_path / "jupyter.log", ready_url=f"{base}/api/status"):
        facts = run_in_browser(chromium, LAB, base, shot)

    assert len(facts.titles) >= 6 and all(facts.titles) and {"Model", "Quantization"} <= set(facts.titles), facts.titles
    status, n_before, n_after = facts.status, facts.n_before, facts.n_after
    assert "stopped at step" in status, status
    assert n_before >= 3 and n_after >= n_before
    step = assert_stopped_with_checkpoint(run_dir, status)
    assert 3 <= step < 400
    assert n_after == step  # one marker per logged step: the plot shows every step up to the stop
    assert shot.exists() and shot.stat().st_size > 10_000
    # Stop during the run the notebook started
    step2 = assert_stopped_with_checkpoint(run2_dir, facts.notebook_status)
    assert facts.notebook_points >= 2 and step2 >= 1
