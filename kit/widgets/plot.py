"""The live loss plot, with two back ends chosen at run time.

* ``plotly``: a plotly ``FigureWidget`` (an anywidget): traces update in place, from any thread.
  Works in JupyterLab and Notebook 7.
* ``static``: a plain plotly ``Figure`` redrawn through an IPython display handle. Works wherever
  plain plotly output works (Colab, VS Code, nbmake runs, exported notebooks), where third-party
  widgets may not render.

``auto`` (the default) picks ``static`` on Colab, in VS Code, without anywidget or outside a
Jupyter kernel, else ``plotly``. Override with ``kit.widgets.set_plot_backend("plotly"|"static")``
or the environment variable ``FORGE_PLOT_BACKEND``.
"""
from __future__ import annotations

import importlib.util
import math
import os
import sys
from typing import Any, Iterable, Optional

BACKENDS = ("plotly", "static")
_override: Optional[str] = None
_colab_widgets_enabled = False


def set_plot_backend(name: Optional[str]) -> None:
    """Force a back end for plots created from now on (``None`` or ``"auto"``: detect)."""
    global _override
    if name not in (None, "auto") + BACKENDS:
        raise ValueError(f"plot backend must be one of auto, {', '.join(BACKENDS)}; got {name!r}")
    _override = None if name == "auto" else name


def _in_colab() -> bool:
    return "google.colab" in sys.modules


def _enable_colab_widgets() -> None:
    # Colab renders third-party widgets only through its custom widget manager; call it only there.
    global _colab_widgets_enabled
    if _in_colab() and not _colab_widgets_enabled:
        from google.colab import output  # type: ignore[import-not-found]
        output.enable_custom_widget_manager()
        _colab_widgets_enabled = True


def detect_backend() -> str:
    """The back end the current front end can show."""
    if _in_colab():
        return "static"
    if "VSCODE_PID" in os.environ or "VSCODE_CWD" in os.environ:
        return "static"
    if importlib.util.find_spec("anywidget") is None:
        return "static"
    try:
        from IPython import get_ipython
        shell = get_ipython()
    except ImportError:
        shell = None
    if shell is None or type(shell).__name__ != "ZMQInteractiveShell":
        return "static"  # a terminal or a plain script: nothing renders widgets
    return "plotly"


def plot_backend(requested: Optional[str] = None) -> str:
    """Resolve ``requested`` / the override / ``FORGE_PLOT_BACKEND`` / auto-detection to a back end."""
    name = requested or _override or os.environ.get("FORGE_PLOT_BACKEND") or "auto"
    if name == "auto":
        return detect_backend()
    if name not in BACKENDS:
        raise ValueError(f"FORGE_PLOT_BACKEND / plot backend must be auto, plotly or static; got {name!r}")
    if name == "plotly":
        _enable_colab_widgets()
    return name


def ema(values: list[float], weight: float) -> list[float]:
    """TensorBoard's smoothing: an exponential moving average, debiased so early points are not pulled to 0."""
    out, acc = [], 0.0
    for i, v in enumerate(values, 1):
        acc = weight * acc + (1 - weight) * v
        out.append(acc / (1 - weight ** i) if weight < 1 else v)
    return out


class LossPlot:
    """Training loss (raw points + smoothed line), eval loss, and the learning rate on a second axis."""

    RAW, SMOOTH, EVAL, LR = range(4)

    def __init__(self, backend: Optional[str] = None, *, smoothing: float = 0.6, title: str = "loss",
                 height: int = 320):
        self.backend = plot_backend(backend)
        self.smoothing = smoothing
        self.title = title
        self.steps: list[int] = []
        self.losses: list[float] = []
        self.eval_steps: list[int] = []
        self.eval_losses: list[float] = []
        self.lr_steps: list[int] = []
        self.lrs: list[float] = []
        self._handle = None
        self.fig = self._make_figure(height)

    # ---------------------------------------------------------------- figure

    def _make_figure(self, height: int):
        import plotly.graph_objects as go
        try:
            # plotly's validators probe pandas on every trace update; importing it here, before a training
            # thread starts importing it (via datasets), avoids a "partially initialized module" race
            import pandas  # noqa: F401
        except ImportError:
            pass

        traces = [
            go.Scatter(x=[], y=[], mode="markers", name="loss", marker=dict(size=5, color="rgba(31,119,180,0.35)")),
            go.Scatter(x=[], y=[], mode="lines", name="loss (smoothed)", line=dict(color="#1f77b4", width=2)),
            go.Scatter(x=[], y=[], mode="lines+markers", name="eval loss", line=dict(color="#d62728")),
            go.Scatter(x=[], y=[], mode="lines", name="learning rate", yaxis="y2",
                       line=dict(color="#7f7f7f", dash="dot", width=1)),
        ]
        layout = go.Layout(
            height=height, margin=dict(l=50, r=60, t=30, b=40), template="plotly_white",
            xaxis=dict(title="step", rangemode="tozero"), yaxis=dict(title=self.title),
            yaxis2=dict(title="learning rate", overlaying="y", side="right", showgrid=False, exponentformat="e",
                        rangemode="tozero"),
            legend=dict(orientation="h", y=1.12, x=0), uirevision="keep")  # keep the user's zoom across updates
        if self.backend == "plotly":
            return go.FigureWidget(data=traces, layout=layout)
        return go.Figure(data=traces, layout=layout)

    @property
    def widget(self):
        """The FigureWidget (plotly back end) or None (static: shown through :meth:`display`)."""
        return self.fig if self.backend == "plotly" else None

    def display(self) -> None:
        from IPython.display import display

        if self.backend == "plotly":
            display(self.fig)
        else:
            from IPython import get_ipython
            if get_ipython() is None:
                return  # a plain script: nothing to draw into (display would print the bundle's repr)
            # a raw mime bundle: never goes through plotly's renderers (which may try to open a browser)
            self._handle = display(self.bundle(), raw=True, display_id=True)

    def _ipython_display_(self) -> None:
        self.display()

    # ---------------------------------------------------------------- data

    def add_step(self, step: int, loss: Optional[float] = None, learning_rate: Optional[float] = None,
                 redraw: bool = True) -> None:
        if _finite(loss):
            self.steps.append(step)
            self.losses.append(float(loss))
        if _finite(learning_rate):
            self.lr_steps.append(step)
            self.lrs.append(float(learning_rate))
        if redraw:
            self.redraw()

    def add_eval(self, step: int, loss: Optional[float], redraw: bool = True) -> None:
        if _finite(loss):
            self.eval_steps.append(step)
            self.eval_losses.append(float(loss))
        if redraw:
            self.redraw()

    def add_events(self, events: Iterable[Any]) -> int:
        """Feed run events (step and eval); redraw once. Returns how many points were added."""
        n = 0
        for ev in events:
            if ev.kind == "step":
                self.add_step(ev.step, ev.get("loss"), ev.get("learning_rate"), redraw=False)
                n += 1
            elif ev.kind == "eval":
                self.add_eval(ev.step, ev.get("eval_loss"), redraw=False)
                n += 1
        if n:
            self.redraw()
        return n

    def clear(self) -> None:
        for lst in (self.steps, self.losses, self.eval_steps, self.eval_losses, self.lr_steps, self.lrs):
            lst.clear()
        self.redraw()

    def redraw(self) -> None:
        d = self.fig.data
        cols = [(self.steps, self.losses), (self.steps, ema(self.losses, self.smoothing)),
                (self.eval_steps, self.eval_losses), (self.lr_steps, self.lrs)]
        if self.backend == "plotly":
            with self.fig.batch_update():  # one comm message for all four traces
                for tr, (x, y) in zip(d, cols):
                    tr.x, tr.y = list(x), list(y)
        else:
            for tr, (x, y) in zip(d, cols):
                tr.x, tr.y = list(x), list(y)
            if self._handle is not None:
                self._handle.update(self.bundle(), raw=True)

    def bundle(self) -> dict:
        """Static output: plotly JSON (VS Code, JupyterLab), HTML (Colab, exported pages) and a text line."""
        import json

        n = len(self.losses)
        last = f", last loss {self.losses[-1]:.4f}" if n else ""
        return {"application/vnd.plotly.v1+json": json.loads(self.fig.to_json()),
                "text/html": self.fig.to_html(full_html=False, include_plotlyjs="cdn"),
                "text/plain": f"<LossPlot {n} steps{last}>"}

    def trace_points(self, which: int = 0) -> int:
        """Points currently in a trace of the figure (0: raw loss) - what the front end draws."""
        x = self.fig.data[which].x
        return 0 if x is None else len(x)


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
