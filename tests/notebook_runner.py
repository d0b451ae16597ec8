"""Run a notebook the way a learner's Jupyter would, and read what it showed (shared by the notebook tests).

``run_notebook`` executes every cell with nbclient in a kernel of the given Python (the checkout's, or
a fresh virtual environment's), from a working directory of the caller's choice. ``stderr_lines``
returns the red text a learner would see: stream output on stderr, and error outputs.

``ALLOWED_STDERR`` lists the stderr lines a notebook may print, each with why it is acceptable. Anything
else fails tests/test_notebooks_output.py and tests/test_packaging.py: a learner reads red text as
"it broke", so new noise must be fixed at its source (or, if it matters, said once in our words).
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Optional

# (pattern, why it is allowed). Keep this short: each entry is noise a learner still sees.
ALLOWED_STDERR: list[tuple[str, str]] = []


def run_notebook(path: Path, *, cwd: Path, env: dict, python: Optional[str] = None, timeout: int = 600):
    """Execute ``path`` in a kernel of ``python`` with environment ``env``, from ``cwd``; return it with outputs.

    The kernelspec is written into ``cwd/.kernels`` and found only there, so the kernel is exactly
    ``python -m ipykernel_launcher`` whatever kernels this machine has installed. A failing cell raises
    nbclient's CellExecutionError (its message holds the traceback).
    """
    import nbformat
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import KernelManager
    from nbclient import NotebookClient

    nb = nbformat.read(str(path), as_version=4)
    name = "forge-notebook-test"
    kdir = cwd / ".kernels"
    (kdir / name).mkdir(parents=True, exist_ok=True)
    (kdir / name / "kernel.json").write_text(
        json.dumps(
            {
                "argv": [python or sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
                "display_name": name,
                "language": "python",
            }
        )
    )
    ksm = KernelSpecManager(kernel_dirs=[str(kdir)], ensure_native_kernel=False)
    km = KernelManager(kernel_name=name, kernel_spec_manager=ksm)
    client = NotebookClient(
        nb, km=km, timeout=timeout, allow_errors=False, record_timing=False, resources={"metadata": {"path": str(cwd)}}
    )
    client.execute(cwd=str(cwd), env=dict(env))
    return nb


def cell_text(cell, stream: str = "stdout") -> str:
    return "".join(
        o.get("text", "")
        for o in cell.get("outputs", [])
        if o.get("output_type") == "stream" and o.get("name") == stream
    )


def stderr_lines(nb) -> list[tuple[int, str]]:
    """(cell index, line) for every non-empty stderr line and error output of the executed notebook."""
    out = []
    for i, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        for o in cell.get("outputs", []):
            if o.get("output_type") == "stream" and o.get("name") == "stderr":
                text = o.get("text", "").replace("\r", "\n")
                out += [(i, line) for line in text.splitlines() if line.strip()]
            elif o.get("output_type") == "error":
                out.append((i, f"{o.get('ename')}: {o.get('evalue')}"))
    return out


def unexpected_stderr(nb) -> list[str]:
    pats = [re.compile(p) for p, _ in ALLOWED_STDERR]
    return [f"cell {i}: {line}" for i, line in stderr_lines(nb) if not any(p.search(line) for p in pats)]
