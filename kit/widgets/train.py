"""The Train panel: core hyperparameters, Start / Stop / Resume, progress with ETA, tokens/s, memory, live loss plot.

The run trains in a background thread (``Run.start(blocking=False)``) so Stop works while it trains.
Engine events arrive on the training thread; they are queued and applied to the widgets at most
a few times a second (:class:`Throttle`), coalescing many steps into one redraw.
"""

from __future__ import annotations

import html
import threading
import time
from typing import Any, Callable, Optional

import ipywidgets as W

from ..config import RunConfig
from ..engine import Run
from ..events import TERMINAL, Event
from ._fields import PanelError, error_html
from .estimate import human
from .panels import Panel
from .plot import LossPlot
from .texts import Texts


class Throttle:
    """Collect items from any thread and hand them to ``fn(batch)`` at most every ``interval`` seconds.

    A trailing timer delivers what arrived after the last call, and ``urgent`` items (the end of a
    run) go out at once. Calls to ``fn`` are serialised and keep the arrival order.
    """

    def __init__(self, fn: Callable[[list], None], interval: float = 0.25):
        self.fn = fn
        self.interval = interval
        self._items: list = []
        self._lock = threading.RLock()
        self._last = 0.0
        self._timer: Optional[threading.Timer] = None

    def push(self, item: Any, urgent: bool = False) -> None:
        with self._lock:
            self._items.append(item)
            wait = self.interval - (time.monotonic() - self._last)
            if urgent or wait <= 0:
                self._deliver()
            elif self._timer is None:
                self._timer = threading.Timer(wait, self.flush)
                self._timer.daemon = True
                self._timer.start()

    def flush(self) -> None:
        with self._lock:
            self._deliver()

    def _deliver(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        batch, self._items = self._items, []
        self._last = time.monotonic()
        if batch:
            self.fn(batch)


class TrainPanel(Panel):
    """Hyperparameters + run controls + live plot. ``TrainPanel(cfg).start()`` returns the :class:`~kit.engine.Run`."""

    title_key = "tab.train"
    keys = (
        "train.max_steps",
        "train.num_epochs",
        "train.batch_size",
        "train.grad_accum",
        "train.learning_rate",
        "train.lr_scheduler",
        "train.warmup_ratio",
        "train.weight_decay",
        "train.max_grad_norm",
        "train.optim",
        "train.seed",
        "train.logging_steps",
        "train.save_steps",
        "train.save_total_limit",
        "train.eval_steps",
        "train.gradient_checkpointing",
        "train.num_threads",
        "train.report_to",
        "train.output_dir",
        "train.resume",
    )

    def __init__(
        self,
        config: Any = None,
        *,
        context: Optional[Callable[[], RunConfig]] = None,
        backend: Optional[str] = None,
        interval: float = 0.25,
        lang: Any = None,
    ):
        self.t = Texts.of(lang)
        self.plot = LossPlot(backend, texts=self.t)
        self.run: Optional[Run] = None
        self.interval = interval
        self._throttle = Throttle(self._apply, interval)
        self._unsub: Optional[Callable[[], None]] = None
        self._t_first: Optional[tuple[float, int]] = None
        self.on_run: list[Callable[[Run], None]] = []  # the board hooks chat/export/evaluate to new runs
        super().__init__(config, context=context, lang=self.t)

    def _build(self) -> W.Widget:
        t = self.t
        self.start_button = W.Button(icon="play", button_style="success")
        self.stop_button = W.Button(icon="stop", button_style="danger", disabled=True)
        self.resume_button = W.Button(icon="repeat", disabled=True)
        for b, name in ((self.start_button, "start"), (self.stop_button, "stop"), (self.resume_button, "resume")):
            b.add_class(f"forge-{name}")  # stable hooks for browser tests and user CSS
            t.bind(b, "description", f"train.{name}")
            t.bind(b, "tooltip", f"train.{name}_tooltip")
        self.start_button.on_click(lambda _: self._safely(self.start))
        self.stop_button.on_click(lambda _: self.stop())
        self.resume_button.on_click(lambda _: self._safely(self.resume))
        self.progress = W.IntProgress(value=0, min=0, max=1, layout=W.Layout(width="420px"))
        t.bind(self.progress, "description", "train.progress")
        self.status = W.HTML()
        self.status.add_class("forge-status")
        t.bind(self.status, "value", "train.status_idle")
        self.stats = W.HTML("")
        self.info = W.HTML("")
        self.controls = W.VBox(
            [
                W.HBox([self.start_button, self.stop_button, self.resume_button]),
                W.HBox([self.progress, self.stats]),
                self.status,
                self.info,
            ]
            + ([self.plot.widget] if self.plot.widget is not None else [])
        )
        self.form_box = W.VBox(self.form.widgets())
        hyper = W.Accordion(children=[self.form_box])
        hyper.selected_index = None  # folded, on ipywidgets 7 too (whose accordions open their first page)
        t.bind(hyper, "titles", lambda t: [t("train.hyperparameters")])
        return W.VBox([hyper, self.controls])

    def _ipython_display_(self) -> None:
        super()._ipython_display_()
        if self.plot.widget is None:
            self.plot.display()  # the static back end lives in its own output below the panel

    def _safely(self, fn: Callable[[], Any]) -> None:
        try:
            fn()
        except Exception as e:  # a button has nowhere to raise to: show it, as one clear message
            error, run_dir = e, (self.run.run_dir if self.run is not None else None)
            self.t.bind(self.status, "value", lambda t: t("train.status_error", error=error_html(error, t, run_dir)))

    # ---------------------------------------------------------------- config

    def run_config(self) -> RunConfig:
        """What Start trains: the board's config (which includes this form) or this panel's own."""
        if self._context is not None:
            return self._context()
        return self.config()

    # ---------------------------------------------------------------- run control

    def start(self, wait: bool = False) -> Run:
        """Start a new run in a background thread (``wait=True``: block until it ends)."""
        if self.run is not None and self.run.status in ("running", "stopping"):
            raise PanelError(self.t("train.already_running"))
        cfg = self.run_config()
        self.follow(Run(cfg))
        self.run.start(blocking=False)
        if wait:
            self.run.wait()
            self.flush()
        return self.run

    def flush(self) -> None:
        """Apply the run events still waiting in the throttle now (after ``run.wait()``, before reading the widgets)."""
        self._throttle.flush()

    def follow(self, run: Run) -> Run:
        """Show ``run``'s events (past ones too) in this panel."""
        if self._unsub is not None:
            self._unsub()
        self.run = run
        self.plot.clear()
        self._t_first = None
        self.progress.value = 0
        self._set_running(run.status in ("running", "stopping", "pending"))
        self._throttle = Throttle(self._apply, self.interval)
        self._unsub = run.subscribe(self._on_event, replay=True)
        for fn in self.on_run:
            fn(run)
        return run

    def stop(self) -> None:
        if self.run is not None and not self.run.done:
            self.run.stop()
            self.t.bind(self.status, "value", "train.status_stopping")
            self.stop_button.disabled = True

    def resume(self, wait: bool = False) -> Run:
        """Continue the stopped run from its last checkpoint; a larger max steps in the form is applied."""
        if self.run is None:
            raise PanelError(self.t("train.nothing_to_resume"))
        over = {}
        steps = self.form["train.max_steps"].value
        if steps != self.run.config.train.max_steps:
            over["train__max_steps"] = steps
        self._set_running(True)
        self.run.resume(blocking=False, **over)
        if wait:
            self.run.wait()
            self.flush()
        return self.run

    def _set_running(self, running: bool) -> None:
        self.start_button.disabled = running
        self.stop_button.disabled = not running
        can_resume = (
            not running
            and self.run is not None
            and self.run.status in ("stopped", "failed")
            and self.run.last_checkpoint is not None
        )
        self.resume_button.disabled = not can_resume

    # ---------------------------------------------------------------- events -> widgets

    def _on_event(self, ev: Event) -> None:
        self._throttle.push(ev, urgent=ev.kind in TERMINAL)

    def _apply(self, events: list[Event]) -> None:
        self.plot.add_events(events)
        for ev in events:
            k = ev.kind
            if k == "step":
                self._on_step(ev)
            elif k == "status":
                self._on_status(ev)
            elif k == "model":
                self._on_model(ev)
            elif k == "checkpoint":
                self._on_checkpoint(ev)
            elif k == "start" and ev.get("resume_from"):
                self.t.bind(self.status, "value", "train.status_resuming", path=html.escape(str(ev.get("resume_from"))))
            elif k in TERMINAL:
                self._on_end(ev)

    def _on_status(self, ev: Event) -> None:
        status = ev.get("status")
        self.t.bind(self.status, "value", lambda t: t("train.status_value", status=_status_text(t, status)))
        if ev.get("max_steps"):
            self.progress.max = max(int(ev.get("max_steps")), 1)

    def _on_model(self, ev: Event) -> None:
        facts = dict(
            trainable=human(ev.get("trainable_params", 0)),
            total=human(ev.get("total_params", 0)),
            pct=f"{ev.get('trainable_pct', 0):.2f}",
            device=ev.get("device"),
            dtype=ev.get("dtype"),
        )
        self.t.bind(self.info, "value", lambda t: _grey(t("train.model_info", **facts)))

    def _on_checkpoint(self, ev: Event) -> None:
        path = html.escape(str(ev.get("path")))
        self.t.bind(self.info, "value", lambda t: _grey(t("train.checkpoint_saved", path=path)))

    def _on_step(self, ev: Event) -> None:
        step, max_steps = ev.step or 0, ev.get("max_steps") or 0
        if max_steps:
            self.progress.max = max(int(max_steps), 1)
        self.progress.value = min(step, self.progress.max)
        now = time.time()
        if self._t_first is None:
            self._t_first = (now, step)
        t0, s0 = self._t_first
        eta = _fmt_s((now - t0) / (step - s0) * (max_steps - step)) if step > s0 and max_steps else None
        loss, tps, mb = ev.get("loss"), ev.get("tokens_per_s"), ev.get("memory_mb")

        def stats(t: Texts) -> str:
            parts = [f"{step}/{max_steps or '?'}" + (" &middot; " + t("train.eta", eta=eta) if eta else "")]
            if loss is not None:
                parts.append(t("train.loss", loss=f"{loss:.4f}"))
            if tps is not None:
                parts.append(t("train.tokens_per_s", tps=f"{tps:.0f}"))
            if mb is not None:
                parts.append(t("train.memory", mb=f"{mb:.0f}"))
            return " &middot; ".join(parts)

        self.t.bind(self.stats, "value", stats)
        self.t.bind(self.status, "value", "train.status_training")

    def _on_end(self, ev: Event) -> None:
        run = self.run
        if ev.kind == "failed":
            # the exception itself when this process ran the run: our errors say what to fix, others are bugs
            error, run_dir = getattr(run, "error", None), getattr(run, "run_dir", None)
            said = (
                (lambda t: error_html(error, t, run_dir))
                if error is not None
                else (
                    lambda t: (
                        f'<span class="forge-error" style="color:#b00020">{html.escape(str(ev.get("error")))}</span>'
                    )
                )
            )
            self.t.bind(self.status, "value", lambda t: t("train.status_failed", error=said(t)))
        else:
            ck = run.last_checkpoint if run is not None else None
            name = html.escape(ck.name) if ck else None
            self.t.bind(
                self.status,
                "value",
                lambda t: (
                    t(f"train.status_{ev.kind}", step=ev.step) + (t("train.at_checkpoint", name=name) if name else "")
                ),
            )
        self._set_running(False)


def _grey(text: str) -> str:
    return f"<span style='color:#555'>{text}</span>"


def _status_text(t: Texts, status: Any) -> str:
    """A status the engine reports ("loading model") in the panel's language; others as they are."""
    if str(status) in _ENGINE_STATUSES:
        return t(f"run.status_{str(status).replace(' ', '_')}")
    return html.escape(str(status))


_ENGINE_STATUSES = ("loading model", "preparing data", "training")


def _fmt_s(s: float) -> str:
    s = int(max(s, 0))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"
