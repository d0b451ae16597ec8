"""The widgets-7 virtual environment (ipywidgets 7.7.1 + classic Notebook 6.5), built by
scripts/make_widgets7_env.sh (``.ci/run`` builds it once). Tests that need it skip with the command
that builds it when it is missing."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def widgets7_dir() -> Path:
    return Path(os.environ.get("FORGE_WIDGETS7_ENV", Path.home() / ".cache" / "forge-kit-widgets7"))


def widgets7_python() -> str:
    d = widgets7_dir()
    py = d / "bin" / "python"
    if not py.exists() or not (d / "forge-widgets7.stamp").exists():
        pytest.skip(f"the widgets-7 environment is missing at {d}: bash scripts/make_widgets7_env.sh")
    return str(py)
