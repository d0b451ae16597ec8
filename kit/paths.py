"""Where Forge Kit keeps things: FORGE_HOME (models cache, tokenized data cache, runs)."""

from __future__ import annotations

import os
import time
from pathlib import Path


def forge_home() -> Path:
    """``$FORGE_HOME`` or the user cache dir (``~/.cache/forge-kit``)."""
    env = os.environ.get("FORGE_HOME")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "forge-kit"


def models_dir() -> Path:
    return forge_home() / "models"


def data_cache_dir() -> Path:
    return forge_home() / "data-cache"


def new_run_dir(stage: str) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    base = forge_home() / "runs" / f"{stamp}-{stage}"
    p, i = base, 1
    while p.exists():
        i += 1
        p = base.with_name(f"{base.name}-{i}")
    return p


def repo_data_dir() -> Path:
    """The shipped demo datasets: the installed ``kit/demo_data`` or the repository's ``data/``."""
    here = Path(__file__).resolve().parent
    for cand in (here / "demo_data", here.parent / "data"):
        if cand.is_dir():
            return cand
    raise FileNotFoundError("the demo datasets are missing: reinstall forge-kit (they ship in kit/demo_data)")
