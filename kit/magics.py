"""IPython magics (``%load_ext kit``).

* ``%forge_train path.yaml [key=value ...] [--wait]``
* ``%%forge_train [key=value ...] [--wait]`` with the YAML config as the cell body
* ``%forge_chat [name]``: a chat panel on a Run variable, a run directory or a model name

Training magics show a TrainPanel bound to the run (live plot) and return the Run, which trains in
a background thread unless ``--wait`` is given. A config error is printed as one line
("line N, key K: message") and the magic returns None, without a traceback.
"""
from __future__ import annotations

import shlex
import sys
from typing import Any, Optional

from IPython.core.magic import Magics, line_cell_magic, line_magic, magics_class

from .config import ConfigError, RunConfig


def _parse_args(line: str) -> tuple[list[str], list[str], bool]:
    """(positional, key=value overrides, wait)."""
    pos, pairs, wait = [], [], False
    for tok in shlex.split(line or ""):
        if tok == "--wait":
            wait = True
        elif "=" in tok and not tok.startswith("-"):
            pairs.append(tok)
        else:
            pos.append(tok)
    return pos, pairs, wait


def _error(msg: str) -> None:
    print(f"forge: {msg}", file=sys.stderr)


@magics_class
class ForgeMagics(Magics):

    @line_cell_magic
    def forge_train(self, line: str, cell: Optional[str] = None):
        pos, pairs, wait = _parse_args(line)
        try:
            if cell is not None:
                if pos:
                    raise ConfigError(f"unexpected argument(s) {' '.join(pos)}; use key=value or --wait")
                cfg = RunConfig.from_yaml_text(cell, source="%%forge_train")
            else:
                if len(pos) != 1:
                    raise ConfigError("usage: %forge_train path.yaml [key=value ...] [--wait]")
                cfg = RunConfig.from_yaml(pos[0])
            if pairs:
                cfg = cfg.override(pairs)
        except (ConfigError, OSError) as e:
            _error(str(e))
            return None
        return self._train(cfg, wait)

    def _train(self, cfg: RunConfig, wait: bool):
        from IPython.display import display

        from .engine import Run
        from .widgets.train import TrainPanel

        run = Run(cfg)
        panel = TrainPanel(cfg, context=lambda: cfg)
        panel.follow(run)
        display(panel)     # the panel shows its widget and, on the static back end, the plot below it
        self.last_panel = panel
        run.start(blocking=False)
        if wait:
            run.wait()
            panel._throttle.flush()
        return run

    @line_magic
    def forge_chat(self, line: str):
        from IPython.display import display

        from .engine import Run
        from .widgets.chat import ChatPanel

        name = line.strip()
        source: Any = None
        if name:
            # a variable in the notebook (a Run or ChatModel) wins over a path/model name of the same spelling
            source = self.shell.user_ns.get(name, name) if self.shell is not None else name
        else:
            runs = [v for v in (self.shell.user_ns.values() if self.shell else []) if isinstance(v, Run)]
            source = runs[-1] if runs else None
        panel = ChatPanel(source=source)
        display(panel.widget)
        self.last_panel = panel
        return panel


def load_ipython_extension(ipython) -> None:
    ipython.register_magics(ForgeMagics)
