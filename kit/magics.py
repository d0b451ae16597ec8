"""IPython magics (``%load_ext kit``).

* ``%forge_train path.yaml [key=value ...] [--wait]``
* ``%%forge_train [key=value ...] [--wait]`` with the YAML config as the cell body
* ``%forge_chat [name]``: a chat panel on a Run variable, a run directory or a model name

Training magics show a TrainPanel bound to the run (live plot) and return the Run, which trains in
a background thread unless ``--wait`` is given. Errors go through the front ends' error boundary
(:mod:`kit.boundary`): a config error is one line ("line N, key K: message"), an unexpected one is
one line saying it is a bug, with the traceback saved to a file; the magic then returns None. With
``--wait`` a run that fails is reported the same way (and still returned, to inspect).
"""

from __future__ import annotations

import shlex
from typing import Any, Optional

from IPython.core.magic import Magics, line_cell_magic, line_magic, magics_class
from IPython.display import display

from .boundary import ErrorBoundary
from .config import ConfigError, RunConfig
from .engine import Run
from .widgets.chat import ChatPanel
from .widgets.train import TrainPanel


def _parse_args(line: str) -> tuple[list[str], list[str], bool]:
    """(positional, key=value overrides, wait)."""
    try:
        tokens = shlex.split(line or "")
    except ValueError as e:  # e.g. an unclosed quote
        raise ConfigError(f"cannot read the magic's arguments {line!r}: {e}") from None
    pos, pairs, wait = [], [], False
    for tok in tokens:
        if tok == "--wait":
            wait = True
        elif "=" in tok and not tok.startswith("-"):
            pairs.append(tok)
        else:
            pos.append(tok)
    return pos, pairs, wait


def _config(line: str, cell: Optional[str]) -> tuple[RunConfig, bool]:
    pos, pairs, wait = _parse_args(line)
    if cell is not None:
        if pos:
            raise ConfigError(f"unexpected argument(s) {' '.join(pos)}; use key=value or --wait")
        cfg = RunConfig.from_yaml_text(cell, source="%%forge_train")
    else:
        if len(pos) != 1:
            raise ConfigError("usage: %forge_train path.yaml [key=value ...] [--wait]")
        cfg = RunConfig.from_yaml(pos[0])
    return (cfg.override(pairs) if pairs else cfg), wait


@magics_class
class ForgeMagics(Magics):
    @line_cell_magic
    def forge_train(self, line: str, cell: Optional[str] = None):
        boundary = ErrorBoundary("forge", command=["%forge_train" if cell is None else "%%forge_train", line])
        with boundary:
            cfg, wait = _config(line, cell)
            return self._train(cfg, wait, boundary)
        return None

    def _train(self, cfg: RunConfig, wait: bool, boundary: ErrorBoundary):
        panel = TrainPanel(cfg, context=lambda: cfg)
        display(panel)  # the panel shows its widget and, on the static back end, the plot below it
        self.last_panel = panel
        run = panel.start(wait=wait)
        boundary.run_dir = run.run_dir
        if wait and run.status == "failed" and run.error is not None:
            boundary.report(run.error)  # one line, as for any other error; the run is still returned
        return run

    @line_magic
    def forge_chat(self, line: str):
        name = line.strip()
        source: Any = None
        if name:
            # a variable in the notebook (a Run or ChatModel) wins over a path/model name of the same spelling
            source = self.shell.user_ns.get(name, name) if self.shell is not None else name
        else:
            runs = [v for v in (self.shell.user_ns.values() if self.shell else []) if isinstance(v, Run)]
            source = runs[-1] if runs else None
        with ErrorBoundary("forge", command=["%forge_chat", line]) as boundary:
            boundary.run_dir = getattr(source, "run_dir", None)
            panel = ChatPanel(source=source)
            display(panel.widget)
            self.last_panel = panel
            return panel
        return None


def load_ipython_extension(ipython) -> None:
    ipython.register_magics(ForgeMagics)
