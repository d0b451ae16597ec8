"""Launch badges (Colab, Binder) for the notebooks, from the repository URL in pyproject.toml.

    python3 scripts/badges.py            # print the repository URL found, or that none is set

The URL is ``[project.urls]`` ``Repository`` (else ``Source``, else ``Homepage``) when it is a GitHub
URL: Colab and Binder open notebooks only from a public Git host, so without one no badge is written
(a badge that points nowhere is worse than none). scripts/build_notebooks.py puts ``badge_cell``'s text
as the second cell of every notebook; tests/test_notebooks.py checks that badges and URL agree.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Optional

import tomllib

ROOT = Path(__file__).resolve().parent.parent
GITHUB = re.compile(r"^https://github\.com/(?P<owner>[\w.-]+)/(?P<repo>[\w.-]+?)(?:\.git)?/?$")
KEYS = ("Repository", "Source", "Homepage")
BRANCH = "main"


def repository_url(pyproject: Path = ROOT / "pyproject.toml") -> Optional[str]:
    urls = tomllib.loads(pyproject.read_text())["project"].get("urls", {})
    for key in KEYS:
        url = urls.get(key)
        if url and GITHUB.match(url.strip()):
            return url.strip()
    return None


def badge_links(notebook: str, url: Optional[str]) -> dict[str, str]:
    """``{"colab": ..., "binder": ...}`` launch links for ``notebook`` (a path like notebooks/00_x.ipynb)."""
    if url is None:
        return {}
    m = GITHUB.match(url)
    owner, repo = m["owner"], m["repo"]
    return {
        "colab": f"https://colab.research.google.com/github/{owner}/{repo}/blob/{BRANCH}/{notebook}",
        "binder": f"https://mybinder.org/v2/gh/{owner}/{repo}/{BRANCH}?labpath={notebook}",
    }


def badge_cell(notebook: str, url: Optional[str]) -> Optional[str]:
    links = badge_links(notebook, url)
    if not links:
        return None
    return (
        f"[![Open in Colab](https://colab.research.google.com/assets/colab-badge.svg)]({links['colab']}) "
        f"[![Launch Binder](https://mybinder.org/badge_logo.svg)]({links['binder']})"
    )


def main() -> int:
    url = repository_url()
    print(url or "no GitHub URL in pyproject.toml [project.urls]: notebooks get no launch badges")
    return 0


if __name__ == "__main__":
    sys.exit(main())
