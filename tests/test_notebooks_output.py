"""What a learner sees: the quickstart notebook runs without unexpected red (stderr) text.

The quickstart runs with nbclient in a kernel of this Python, from a temporary directory (as a learner's
own folder), on the real default model with its CI settings (FORGE_NOTEBOOK_CI=1: 6 steps). Every stderr line must match an entry of
``notebook_runner.ALLOWED_STDERR`` (each says why it is allowed); everything else fails with the lines.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from notebook_runner import cell_text, run_notebook, unexpected_stderr

ROOT = Path(__file__).resolve().parent.parent
QUICKSTART = ROOT / "notebooks" / "00_quickstart_board.ipynb"

pytestmark = pytest.mark.e2e


def notebook_env(forge_home: Path, **extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "COV_"))}
    env.update(
        {
            "FORGE_HOME": str(forge_home),
            "FORGE_NOTEBOOK_CI": "1",
            "HF_HUB_OFFLINE": "1",
            "OMP_NUM_THREADS": env.get("OMP_NUM_THREADS", "1"),
            **extra,
        }
    )
    # a learner's machine: none of the test suite's silencing
    for k in ("TRANSFORMERS_NO_ADVISORY_WARNINGS", "PYTHONWARNINGS", "TOKENIZERS_PARALLELISM"):
        env.pop(k, None)
    return env


def test_quickstart_shows_no_unexpected_stderr(tmp_path, forge_home, default_model_dir):
    work = tmp_path / "learner"
    work.mkdir()
    shutil.copy(QUICKSTART, work / QUICKSTART.name)
    nb = run_notebook(work / QUICKSTART.name, cwd=work, env=notebook_env(forge_home))
    install = next(c for c in nb.cells if c.cell_type == "code")
    assert "ready" in cell_text(install), cell_text(install)  # the install cell had nothing to do
    bad = unexpected_stderr(nb)
    assert not bad, "unexpected stderr in the quickstart notebook:\n" + "\n".join(bad[:40])
    # the check reads real output: the notebook did print (answers, the run's status)
    assert any("finished at step 6" in cell_text(c) for c in nb.cells if c.cell_type == "code")
