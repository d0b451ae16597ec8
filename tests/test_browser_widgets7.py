"""The Board on ipywidgets 7.7.1 (what Colab ships) in a real browser: classic Notebook 6.5 with
widgetsnbextension 3.6, the front end of the widgets 7 protocol, + headless Chromium (Playwright).

The kernel and the server run in the widgets-7 virtual environment (scripts/make_widgets7_env.sh,
built once by ``.ci/run``; ``--system-site-packages``, so torch and the rest are the main
environment's) and import this checkout's kit. What it checks, as a learner on Colab would see it:
the tab titles are visible (non-empty text in the page), Start trains, loss points appear (the
svg back end, or plotly where its front end is present), Stop ends the run with a complete
checkpoint, and Stop also works during a run the notebook started from code. Twin of
tests/test_browser.py (JupyterLab 4 + ipywidgets 8); both share tests/browser_support.py.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

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
from widgets7_env import widgets7_python

pytestmark = pytest.mark.browser

KERNEL_READY_JS = """() => window.Jupyter && Jupyter.notebook && Jupyter.notebook.kernel
    && Jupyter.notebook.kernel.is_connected()
    && document.querySelector('#kernel_indicator_icon.kernel_idle_icon') !== null
    && Jupyter.WidgetManager !== undefined"""


# widgetsnbextension 3.6 rebuilds the kernel's live widgets once it connects: it opens a
# "jupyter.widget.control" comm to ask for every widget's state. A fresh kernel has not imported
# ipywidgets yet, so nothing answers and the comm closes ("fallback to fetching individual model
# state"), then a comm_info request lists the widgets to fetch one by one. When the Board cell
# reaches the kernel before that control comm (a cell sent right at kernel start can), the kernel
# answers it after the cell with the Board's 411 widget states, the manager resets every model to
# them and re-renders the cell's output, and the Board stays blank: 3 of 13 runs of this test here,
# and 1 in 3 with the cell sent as soon as the manager exists (no error in the console). A learner
# clicks Run seconds later; the test waits for the manager's load instead: the control comm's
# close, then a comm_info round trip of its own (the kernel answers shell requests in order, so the
# manager's comm_info is answered before the cell runs).
MANAGER_FALLBACK = "fallback to fetching individual model state"
COMM_INFO_ROUND_TRIP_JS = """() => new Promise(done => Jupyter.notebook.kernel.comm_info('jupyter.widget', done))"""


def _open_classic(page, base: str) -> None:
    console: list[str] = []
    page.on("console", lambda message: console.append(message.text))
    page.goto(f"{base}/notebooks/board.ipynb", wait_until="domcontentloaded", timeout=60_000)
    page.wait_for_function(KERNEL_READY_JS, timeout=90_000)
    for _ in range(300):  # the control comm's answer (a close, on a widgets 7 kernel): up to 30 s
        if any(MANAGER_FALLBACK in text for text in console):
            break
        page.wait_for_timeout(100)
    page.evaluate(COMM_INFO_ROUND_TRIP_JS)


def _run_classic_cell(page, index: int) -> None:
    page.evaluate(f"() => Jupyter.notebook.execute_cells([{index}])")


CLASSIC = FrontEnd(
    "Notebook 6.5",
    _open_classic,
    _run_classic_cell,
    tab_labels=".widget-tab .p-TabBar-tabLabel, .widget-tab .lm-TabBar-tabLabel",
    output_areas=".output_area",
)


def test_board_on_ipywidgets7_in_classic_notebook(tiny_model_dir, tmp_path, forge_home):
    python = widgets7_python()
    pytest.importorskip("playwright.sync_api")
    chromium = ensure_chromium()
    probe = subprocess.run(
        [python, "-c", "import ipywidgets, notebook; print(ipywidgets.__version__, notebook.__version__)"],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    widgets_version, notebook_version = probe.stdout.split()
    assert widgets_version == "7.7.1" and notebook_version.startswith("6.5"), probe.stdout

    root = tmp_path / "nb"
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
    # the kernelspec "python3" of this server is the widgets-7 environment's own Python (its sys.executable)
    env = server_env(tmp_path, forge_home, JUPYTER_DATA_DIR=str(tmp_path / "jdata"))
    env["PATH"] = os.pathsep.join([str(Path(python).parent), env.get("PATH", "")])  # "python" is the venv's
    env.pop("FORGE_PLOT_BACKEND", None)  # auto: what a learner gets on ipywidgets 7
    argv = [
        python,
        "-m",
        "notebook",
        "--no-browser",
        "--NotebookApp.ip=127.0.0.1",
        f"--NotebookApp.port={port}",
        "--NotebookApp.port_retries=0",
        "--NotebookApp.token=",
        "--NotebookApp.password=",
        f"--NotebookApp.notebook_dir={root}",
        "--NotebookApp.terminals_enabled=False",
        "--NotebookApp.open_browser=False",
    ]
    base = f"http://127.0.0.1:{port}"
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "browser_board_widgets7.png"
    with jupyter_server(argv, cwd=root, env=env, log_path=tmp_path / "notebook.log", ready_url=f"{base}/api/status"):
        facts = run_in_browser(chromium, CLASSIC, base, shot)

    # tab titles: blank on ipywidgets 7 until the Board sets them the widgets 7 way (set_title)
    assert len(facts.titles) >= 6 and all(facts.titles), f"tab titles in the page: {facts.titles}"
    assert {"Model", "Quantization"} <= set(facts.titles), facts.titles
    assert facts.n_before >= 3 and facts.n_after >= facts.n_before
    step = assert_stopped_with_checkpoint(run_dir, facts.status)
    assert step >= 3 and facts.n_after == step  # one marker per logged step
    assert shot.exists() and shot.stat().st_size > 10_000
    step2 = assert_stopped_with_checkpoint(run2_dir, facts.notebook_status)
    assert facts.notebook_points >= 2 and step2 >= 1
