"""The release: ``python -m build`` gives a wheel and an sdist that work outside this checkout.

* both hold the demo datasets as real files (``kit/demo_data`` is a link to ``data/`` in the checkout),
  the dataset registry file, the ``forge`` command and the declared version ranges; ``twine check``
  (the upload's own metadata check) passes;
* the wheel, installed into a fresh virtual environment in a temporary directory, runs the quickstart
  notebook from another temporary directory, and ``import kit`` there is the environment's copy, not
  this checkout's. That is what ``pip install "forge-kit[notebook]"`` will do once it is published.

Offline and fast: the environment is made with ``--system-site-packages``, so torch, transformers and
the other dependencies already installed here are reused (nothing is downloaded). The wheel goes in
with ``pip install --no-index "<wheel>[notebook]"``: pip resolves every declared requirement of the
package and its notebook extra against what is installed, and fails if one is missing or outside its
range (rather than ``--no-deps``, which would install it whatever its dependencies). The install
cell is left with nothing to do (it prints "ready"), as on Binder or a set-up machine; its install
branch is tested in tests/test_notebooks.py.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest
from notebook_runner import cell_text, run_notebook, unexpected_stderr

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "data"

pytestmark = pytest.mark.e2e


def _run(argv, **kw):
    r = subprocess.run(argv, capture_output=True, text=True, timeout=kw.pop("timeout", 900), check=False, **kw)
    assert r.returncode == 0, (
        f"{' '.join(map(str, argv))} exited {r.returncode}:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    )
    return r


@pytest.fixture(scope="module")
def dist(tmp_path_factory) -> dict:
    """Build like a release (sdist, then the wheel from the sdist), with the build backend installed here."""
    pytest.importorskip("build")
    out = tmp_path_factory.mktemp("dist")
    _run([sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out), str(ROOT)])
    wheels, sdists = list(out.glob("forge_kit-*.whl")), list(out.glob("forge_kit-*.tar.gz"))
    assert len(wheels) == 1 and len(sdists) == 1, list(out.iterdir())
    return {"wheel": wheels[0], "sdist": sdists[0]}


def _data_files() -> dict[str, bytes]:
    files = {p.relative_to(DATA).as_posix(): p.read_bytes() for p in DATA.rglob("*") if p.is_file()}
    assert "dataset_info.yaml" in files and "demo_sft.jsonl" in files
    return files


def test_wheel_holds_real_data_files_and_metadata(dist):
    with zipfile.ZipFile(dist["wheel"]) as z:
        names = set(z.namelist())
        for rel, content in _data_files().items():
            info = z.getinfo(f"kit/demo_data/{rel}")
            assert not stat.S_ISLNK(info.external_attr >> 16), f"{rel} is a link in the wheel"
            assert z.read(info) == content, f"kit/demo_data/{rel} differs from data/{rel}"
        assert "kit/__init__.py" in names and "kit/models/loading.py" in names
        meta = next(n for n in names if n.endswith(".dist-info/METADATA"))
        metadata = z.read(meta).decode()
        entry_points = z.read(next(n for n in names if n.endswith(".dist-info/entry_points.txt"))).decode()
    assert "Name: forge-kit" in metadata
    import kit

    assert f"Version: {kit.__version__}" in metadata and dist["wheel"].name.startswith(f"forge_kit-{kit.__version__}-")
    for bounded in ("transformers<", "trl<", "peft<", "accelerate<", "datasets<", "bitsandbytes<"):
        assert any(line.startswith("Requires-Dist: " + bounded) for line in metadata.splitlines()), bounded
    assert "Provides-Extra: notebook" in metadata
    assert "forge = kit.cli:main" in entry_points


def test_sdist_holds_real_data_files(dist):
    with tarfile.open(dist["sdist"]) as t:
        top = t.getnames()[0].split("/")[0]
        for rel, content in _data_files().items():
            m = t.getmember(f"{top}/kit/demo_data/{rel}")
            assert m.isfile(), f"{rel} is not a regular file in the sdist ({m.type!r})"
            assert t.extractfile(m).read() == content
        assert f"{top}/pyproject.toml" in t.getnames() and f"{top}/README.md" in t.getnames()


def test_twine_check(dist):
    """What PyPI will check on upload: the metadata and that the README renders."""
    pytest.importorskip("twine")
    r = _run([sys.executable, "-m", "twine", "check", "--strict", str(dist["wheel"]), str(dist["sdist"])])
    assert r.stdout.count("PASSED") == 2, r.stdout


def test_wheel_outside_the_checkout_runs_the_quickstart(dist, tmp_path, forge_home, default_model_dir):
    venv = tmp_path / "venv"
    assert ROOT not in venv.parents
    _run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(venv)], timeout=300)
    python = str(venv / "bin" / "python")
    # pip comes from the system site-packages too; --no-index: resolve against what is installed, offline
    _run(
        [
            python,
            "-m",
            "pip",
            "install",
            "--no-index",
            "--disable-pip-version-check",
            "--no-warn-conflicts",
            f"{dist['wheel']}[notebook]",
        ]
    )
    site = _run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout.strip()

    work = tmp_path / "learner"
    work.mkdir()
    nb_path = work / "00_quickstart_board.ipynb"
    shutil.copy(ROOT / "notebooks" / nb_path.name, nb_path)
    import nbformat

    nb = nbformat.read(str(nb_path), as_version=4)
    nb.cells.append(
        nbformat.v4.new_code_cell(
            "import kit, sys\nfrom kit.paths import repo_data_dir\n"
            "print('KIT', kit.__file__)\nprint('DATA', repo_data_dir())\nprint('PREFIX', sys.prefix)"
        )
    )
    nbformat.write(nb, str(nb_path))

    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTEST_CURRENT_TEST", "VIRTUAL_ENV")}
    env.update(
        {
            "FORGE_HOME": str(forge_home),
            "FORGE_NOTEBOOK_CI": "1",
            "HF_HUB_OFFLINE": "1",
            "FORGE_KIT_SOURCE": str(dist["wheel"]),
            "PIP_NO_INDEX": "1",
            "PATH": os.pathsep.join([str(venv / "bin"), os.environ.get("PATH", "")]),
        }
    )
    for k in ("TRANSFORMERS_NO_ADVISORY_WARNINGS", "PYTHONWARNINGS"):
        env.pop(k, None)
    ran = run_notebook(nb_path, cwd=work, env=env, python=python)

    install = next(c for c in ran.cells if c.cell_type == "code")
    assert cell_text(install).strip().endswith(": ready"), cell_text(install)
    facts = dict(line.split(" ", 1) for line in cell_text(ran.cells[-1]).splitlines() if " " in line)
    assert Path(facts["PREFIX"]) == venv
    assert Path(facts["KIT"]).is_relative_to(site) and not Path(facts["KIT"]).is_relative_to(ROOT), facts
    assert Path(facts["DATA"]) == Path(site) / "kit" / "demo_data", facts
    assert any("finished at step 6" in cell_text(c) for c in ran.cells if c.cell_type == "code")
    bad = unexpected_stderr(ran)
    assert not bad, "unexpected stderr in the quickstart run from the wheel:\n" + "\n".join(bad[:40])
