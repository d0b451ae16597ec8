"""Build the notebooks from their sources: ``notebooks/src/NN_slug.py`` -> ``notebooks/NN_slug.ipynb``.

    python3 scripts/build_notebooks.py                 # every source
    python3 scripts/build_notebooks.py notebooks/src/06_dpo_family.py
    python3 scripts/build_notebooks.py --check         # exit 1 if a notebook differs from its source

Why sources: a notebook's JSON is hard to review and easy to commit with outputs; a source is plain
Python that ruff-free diffs show, and every notebook gets the same frame from one place. A source sets
``TITLE``, ``LEARN`` (bullets), ``RUNTIME`` ({"ci", "cpu", "gpu"}) and ``CELLS`` (``md(...)``/``code(...)``).
The builder puts, in this order: the header cell (title, what you will learn, run time), the launch
badges (scripts/badges.py; none while pyproject has no repository URL), the install cell
(scripts/install_cell.py), then CELLS. Outputs are never written; cell ids are deterministic, so a
build is byte-for-byte repeatable and ``--check`` can compare. The conventions are in
notebooks/README.md; tests/test_notebooks.py checks them.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import textwrap
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
NOTEBOOKS = ROOT / "notebooks"
SOURCES = NOTEBOOKS / "src"
sys.path.insert(0, str(HERE))

from badges import badge_cell, repository_url  # noqa: E402
from install_cell import INSTALL_CELL  # noqa: E402

METADATA = {
    "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
    "language_info": {"name": "python"},
}


def _text(s: str) -> str:
    return textwrap.dedent(s).strip("\n") + "\n" if s.strip() else ""


def md(text: str) -> dict:
    return {"cell_type": "markdown", "metadata": {}, "source": _text(text).rstrip("\n")}


def code(text: str) -> dict:
    return {
        "cell_type": "code",
        "metadata": {},
        "source": _text(text).rstrip("\n"),
        "outputs": [],
        "execution_count": None,
    }


def header(title: str, learn: list[str], runtime: dict) -> dict:
    bullets = "\n".join(f"* {item}" for item in learn)
    return md(
        f"# {title}\n\n**What you will learn**\n\n{bullets}\n\n"
        f"**Run time** (2-core CPU, embedded SmolLM2-135M): with the defaults below {runtime['cpu']}; "
        f"with the CI settings (`FORGE_NOTEBOOK_CI=1`) {runtime['ci']}; on a GPU: {runtime['gpu']}."
    )


def load_source(path: Path):
    spec = importlib.util.spec_from_file_location(f"nbsrc_{path.stem}", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def build(path: Path, url=None) -> str:
    """The notebook JSON text for source ``path``."""
    src = load_source(path)
    target = f"notebooks/{path.stem}.ipynb"
    cells = [header(src.TITLE, src.LEARN, src.RUNTIME)]
    badges = badge_cell(target, url)
    if badges:
        cells.append(md(badges))
    cells.append({**code("x"), "source": INSTALL_CELL})  # verbatim: tests compare it byte for byte
    cells += list(src.CELLS)
    out = []
    for i, cell in enumerate(cells):
        cell = {"id": f"cell-{i:02d}", **cell}
        cell["source"] = cell["source"].splitlines(keepends=True)
        out.append(cell)
    nb = {"cells": out, "metadata": METADATA, "nbformat": 4, "nbformat_minor": 5}
    return json.dumps(nb, indent=1, ensure_ascii=False) + "\n"


def target_of(path: Path) -> Path:
    return NOTEBOOKS / f"{path.stem}.ipynb"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("sources", nargs="*", type=Path, help="notebooks/src/NN_slug.py files (default: all)")
    ap.add_argument("--check", action="store_true", help="only check; exit 1 if a notebook differs")
    args = ap.parse_args(argv)
    url = repository_url()
    stale = []
    for path in args.sources or sorted(SOURCES.glob("[0-9][0-9]_*.py")):
        path = path.resolve()
        text, target = build(path, url), target_of(path)
        if args.check:
            if not target.exists() or target.read_text() != text:
                stale.append(target)
        elif not target.exists() or target.read_text() != text:
            target.write_text(text)
            print("built", target.relative_to(ROOT))
    if args.check:
        orphans = [p for p in sorted(NOTEBOOKS.glob("*.ipynb")) if not (SOURCES / f"{p.stem}.py").exists()]
        for p in stale:
            print(
                f"{p.relative_to(ROOT)} differs from its source (run python3 scripts/build_notebooks.py)",
                file=sys.stderr,
            )
        for p in orphans:
            print(f"{p.relative_to(ROOT)} has no source notebooks/src/{p.stem}.py", file=sys.stderr)
        return 1 if stale or orphans else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
