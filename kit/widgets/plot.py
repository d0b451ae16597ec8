"""The live loss plot, with three back ends chosen at run time.

* ``plotly``: a plotly ``FigureWidget`` (an anywidget): traces update in place, from any thread.
  Works in JupyterLab 4 and Notebook 7 (ipywidgets 8).
* ``static``: a plain plotly ``Figure`` redrawn through an IPython display handle. Works wherever
  plain plotly output works (Colab, VS Code, nbmake runs, exported notebooks), where third-party
  widgets may not render.
* ``svg``: the same four traces drawn as an SVG picture inside a core ``HTML`` widget. Needs no
  JavaScript of its own, no widget extension and no CDN, so it draws in every front end that shows
  core widgets - the ipywidgets 7 ones (classic Notebook 6, JupyterLab 3), offline too. No zoom
  or hover; the points are ``circle.forge-point`` elements.

``auto`` (the default) picks ``static`` on Colab, in VS Code, without anywidget or outside a
Jupyter kernel, ``svg`` on ipywidgets 7 (whose front ends need not have anywidget's extension,
which plotly's FigureWidget is built on), else ``plotly``. Override with
``kit.widgets.set_plot_backend("plotly"|"static"|"svg")`` or the environment variable
``FORGE_PLOT_BACKEND``.
"""

from __future__ import annotations

import contextlib
import html
import importlib.util
import math
import os
import sys
from typing import Any, Iterable, Optional

from .compat import WIDGETS_8
from .texts import Texts

BACKENDS = ("plotly", "static", "svg")
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
    try:
        from IPython import get_ipython

        shell = get_ipython()
    except ImportError:
        shell = None
    if shell is None or type(shell).__name__ != "ZMQInteractiveShell":
        return "static"  # a terminal or a plain script: nothing renders widgets
    if not WIDGETS_8:
        return "svg"  # core widgets only: FigureWidget's anywidget front end may be missing
    if importlib.util.find_spec("anywidget") is None:
        return "static"
    return "plotly"


def plot_backend(requested: Optional[str] = None) -> str:
    """Resolve ``requested`` / the override / ``FORGE_PLOT_BACKEND`` / auto-detection to a back end."""
    name = requested or _override or os.environ.get("FORGE_PLOT_BACKEND") or "auto"
    if name == "auto":
        return detect_backend()
    if name not in BACKENDS:
        raise ValueError(f"FORGE_PLOT_BACKEND / plot backend must be auto, {', '.join(BACKENDS)}; got {name!r}")
    if name == "plotly":
        _enable_colab_widgets()
    return name


def ema(values: list[float], weight: float) -> list[float]:
    """TensorBoard's smoothing: an exponential moving average, debiased so early points are not pulled to 0."""
    out, acc = [], 0.0
    for i, v in enumerate(values, 1):
        acc = weight * acc + (1 - weight) * v
        out.append(acc / (1 - weight**i) if weight < 1 else v)
    return out


class LossPlot:
    """Training loss (raw points + smoothed line), eval loss, and the learning rate on a second axis."""

    RAW, SMOOTH, EVAL, LR = range(4)
    NAMES = ("plot.loss", "plot.loss_smoothed", "plot.eval_loss", "plot.learning_rate")

    def __init__(
        self,
        backend: Optional[str] = None,
        *,
        smoothing: float = 0.6,
        title: Optional[str] = None,
        height: int = 320,
        texts: Any = None,
    ):
        self.backend = plot_backend(backend)
        self.smoothing = smoothing
        self.t = Texts.of(texts)
        self._title = title  # the y axis; None: "loss" in the plot's language
        self.height = height
        self.steps: list[int] = []
        self.losses: list[float] = []
        self.eval_steps: list[int] = []
        self.eval_losses: list[float] = []
        self.lr_steps: list[int] = []
        self.lrs: list[float] = []
        self._handle = None
        self._svg_widget = None
        self._drawn = [0, 0, 0, 0]
        if self.backend == "svg":
            import ipywidgets as W

            self.fig = None  # no plotly needed: the picture is drawn from the lists above
            self._svg_widget = W.HTML(layout=W.Layout(width="100%"))
            self._svg_widget.add_class("forge-plot")
            self.redraw()
        else:
            self.fig = self._make_figure(height)
        self.t.on_change(self._relabel)

    @property
    def title(self) -> str:
        return self._title or self.t("plot.loss")

    # ---------------------------------------------------------------- figure

    def _relabel(self) -> None:
        """Trace names and axis titles in the texts' (new) language."""
        if self.fig is None:
            self.redraw()
            return
        names = [self.t(k) for k in self.NAMES]
        with self.fig.batch_update() if self.backend == "plotly" else contextlib.nullcontext():
            for tr, name in zip(self.fig.data, names):
                tr.name = name
            self.fig.layout.xaxis.title.text = self.t("plot.step")
            self.fig.layout.yaxis.title.text = self.title
            self.fig.layout.yaxis2.title.text = names[self.LR]
        if self._handle is not None:
            self._handle.update(self.bundle(), raw=True)

    def _make_figure(self, height: int):
        import plotly.graph_objects as go

        try:
            # plotly's validators probe pandas on every trace update; importing it here, before a training
            # thread starts importing it (via datasets), avoids a "partially initialized module" race
            import pandas  # noqa: F401
        except ImportError:
            pass

        names = [self.t(k) for k in self.NAMES]
        traces = [
            go.Scatter(x=[], y=[], mode="markers", name=names[0], marker=dict(size=5, color=COLORS[0])),
            go.Scatter(x=[], y=[], mode="lines", name=names[1], line=dict(color=COLORS[1], width=2)),
            go.Scatter(x=[], y=[], mode="lines+markers", name=names[2], line=dict(color=COLORS[2])),
            go.Scatter(
                x=[], y=[], mode="lines", name=names[3], yaxis="y2", line=dict(color=COLORS[3], dash="dot", width=1)
            ),
        ]
        layout = go.Layout(
            height=height,
            margin=dict(l=50, r=60, t=30, b=40),
            template="plotly_white",
            xaxis=dict(title=self.t("plot.step"), rangemode="tozero"),
            yaxis=dict(title=self.title),
            yaxis2=dict(
                title=names[3], overlaying="y", side="right", showgrid=False, exponentformat="e", rangemode="tozero"
            ),
            legend=dict(orientation="h", y=1.12, x=0),
            uirevision="keep",
        )  # keep the user's zoom across updates
        if self.backend == "plotly":
            return _figure_widget_class()(data=traces, layout=layout)
        return go.Figure(data=traces, layout=layout)

    @property
    def widget(self):
        """The FigureWidget (plotly), the HTML widget (svg), or None (static: shown through :meth:`display`)."""
        return {"plotly": self.fig, "svg": self._svg_widget}.get(self.backend)

    def display(self) -> None:
        from IPython.display import display

        if self.widget is not None:
            display(self.widget)
        else:
            from IPython import get_ipython

            if get_ipython() is None:
                return  # a plain script: nothing to draw into (display would print the bundle's repr)
            # a raw mime bundle: never goes through plotly's renderers (which may try to open a browser)
            self._handle = display(self.bundle(), raw=True, display_id=True)

    def _ipython_display_(self) -> None:
        self.display()

    # ---------------------------------------------------------------- data

    def add_step(
        self, step: int, loss: Optional[float] = None, learning_rate: Optional[float] = None, redraw: bool = True
    ) -> None:
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
        cols = [
            (self.steps, self.losses),
            (self.steps, ema(self.losses, self.smoothing)),
            (self.eval_steps, self.eval_losses),
            (self.lr_steps, self.lrs),
        ]
        if self.backend == "svg":
            self._svg_widget.value = self.svg(cols)
            self._drawn = [len(x) for x, _ in cols]
            return
        d = self.fig.data
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
        """Static output: plotly JSON (VS Code, JupyterLab), HTML (Colab, exported pages) and a text line.

        On the svg back end: the SVG picture as HTML, and the text line.
        """
        import json

        n = len(self.losses)
        last = f", last loss {self.losses[-1]:.4f}" if n else ""
        text = f"<LossPlot {n} steps{last}>"
        if self.fig is None:
            return {"text/html": self._svg_widget.value, "text/plain": text}
        return {
            "application/vnd.plotly.v1+json": json.loads(self.fig.to_json()),
            "text/html": self.fig.to_html(full_html=False, include_plotlyjs="cdn"),
            "text/plain": text,
        }

    def trace_points(self, which: int = 0) -> int:
        """Points currently in a trace of the figure (0: raw loss) - what the front end draws."""
        if self.fig is None:
            return self._drawn[which]
        x = self.fig.data[which].x
        return 0 if x is None else len(x)

    # ---------------------------------------------------------------- svg back end

    def svg(self, cols: list[tuple[list, list]]) -> str:
        """The four traces as one SVG picture: loss on the left axis, learning rate on the right one."""
        w, h = 640, self.height
        left, right, top, bottom = 56, 64, 34, 38
        pw, ph = w - left - right, h - top - bottom
        (steps, raw), (_, smooth), (esteps, evals), (lsteps, lrs) = cols
        xmax = max([1, *steps, *esteps, *lsteps])
        losses = raw + evals
        lo, hi = (min(losses), max(losses)) if losses else (0.0, 1.0)
        pad = (hi - lo) * 0.05 or max(abs(hi) * 0.05, 0.05)
        lo, hi = lo - pad, hi + pad
        lr_hi = max(lrs, default=0.0) or 1.0

        def x(v):
            return left + pw * v / xmax

        def y(v):
            return top + ph * (hi - v) / (hi - lo)

        def y2(v):
            return top + ph * (1 - v / lr_hi)

        out = [
            f'<svg xmlns="http://www.w3.org/2000/svg" class="forge-plot" viewBox="0 0 {w} {h}" '
            f'width="100%" style="max-width:{w}px;font:11px sans-serif">',
            f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="#fff" stroke="#ccc"/>',
        ]
        for v in _ticks(0, xmax):
            out.append(
                f'<line x1="{x(v):.1f}" x2="{x(v):.1f}" y1="{top}" y2="{top + ph}" stroke="#eee"/>'
                f'<text x="{x(v):.1f}" y="{top + ph + 14}" text-anchor="middle">{_num(v)}</text>'
            )
        for v in _ticks(lo, hi):
            out.append(
                f'<line x1="{left}" x2="{left + pw}" y1="{y(v):.1f}" y2="{y(v):.1f}" stroke="#eee"/>'
                f'<text x="{left - 4}" y="{y(v) + 4:.1f}" text-anchor="end">{_num(v)}</text>'
            )
        if lrs:
            for v in _ticks(0, lr_hi):
                out.append(f'<text x="{left + pw + 4}" y="{y2(v) + 4:.1f}" fill="{COLORS[3]}">{v:.1e}</text>')
        t = self.t
        out.append(
            f'<text x="{left + pw / 2}" y="{h - 4}" text-anchor="middle">{html.escape(t("plot.step"))}</text>'
            f'<text transform="translate(12 {top + ph / 2}) rotate(-90)" text-anchor="middle">'
            f"{html.escape(self.title)}</text>"
        )
        if lrs:
            out.append(
                f'<polyline class="forge-lr" fill="none" stroke="{COLORS[3]}" stroke-dasharray="2,2" '
                f'points="{_points(lsteps, lrs, x, y2)}"/>'
            )
        if len(steps) > 1:
            out.append(
                f'<polyline class="forge-smooth" fill="none" stroke="{COLORS[1]}" stroke-width="2" '
                f'points="{_points(steps, smooth, x, y)}"/>'
            )
        out += [
            f'<circle class="forge-point" cx="{x(s):.1f}" cy="{y(v):.1f}" r="2.5" fill="{COLORS[0]}"/>'
            for s, v in zip(steps, raw)
        ]
        if evals:
            out.append(
                f'<polyline class="forge-eval" fill="none" stroke="{COLORS[2]}" '
                f'points="{_points(esteps, evals, x, y)}"/>'
            )
            out += [
                f'<circle class="forge-eval-point" cx="{x(s):.1f}" cy="{y(v):.1f}" r="3" fill="{COLORS[2]}"/>'
                for s, v in zip(esteps, evals)
            ]
        if not steps:
            out.append(
                f'<text x="{left + pw / 2}" y="{top + ph / 2}" text-anchor="middle" fill="#999">'
                f"{html.escape(t('plot.waiting'))}</text>"
            )
        lx = left
        for key, color in zip(self.NAMES, COLORS):  # the legend, above the plot
            out.append(
                f'<rect x="{lx:.0f}" y="{top - 22}" width="10" height="10" fill="{color}"/>'
                f'<text x="{lx + 14:.0f}" y="{top - 13}">{html.escape(t(key))}</text>'
            )
            lx += 28 + _text_width(t(key))
        out.append("</svg>")
        return "".join(out)


COLORS = ("rgba(31,119,180,0.35)", "#1f77b4", "#d62728", "#7f7f7f")
_FIGURE_WIDGET = None


def _figure_widget_class():
    """plotly's FigureWidget, with its traces and layout in the message that opens its comm.

    plotly opens the widget's comm first and sends the traces and the layout right after, as two
    updates; a front end still loading the widget's JavaScript (plotly.js, 4 MB) can miss them and
    then draws an empty default figure that no later update fills (seen in JupyterLab 4 on a busy
    machine: the trace updates arrived, the figure had no traces). Opening the comm after plotly's
    constructor puts the whole figure in the comm_open state, which the front end always reads.
    """
    global _FIGURE_WIDGET
    if _FIGURE_WIDGET is None:
        import plotly.graph_objects as go

        class LossFigureWidget(go.FigureWidget):
            _hold_open = False

            def __init__(self, *args: Any, **kwargs: Any):
                self._hold_open = True
                try:
                    super().__init__(*args, **kwargs)
                finally:
                    self._hold_open = False
                self.open()

            def open(self) -> None:
                if not self._hold_open:
                    super().open()

        _FIGURE_WIDGET = LossFigureWidget
    return _FIGURE_WIDGET


def _points(xs: list, ys: list, x, y) -> str:
    return " ".join(f"{x(a):.1f},{y(b):.1f}" for a, b in zip(xs, ys))


def _ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    """About ``n`` round values between ``lo`` and ``hi`` (1, 2, 2.5 or 5 times a power of ten apart)."""
    if hi <= lo:
        return [lo]
    raw = (hi - lo) / n
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    first = math.ceil(lo / step) * step
    return [first + i * step for i in range(int((hi - first) / step + 1e-9) + 1)]


def _text_width(s: str) -> float:
    """Rough width in pixels of ``s`` at 11px (CJK characters are about twice as wide as Latin ones)."""
    return sum(11.0 if ord(c) >= 0x2E80 else 6.2 for c in s)


def _num(v: float) -> str:
    return f"{v:.4g}"


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
