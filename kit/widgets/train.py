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
from ._fields import html_error
from .estimate import human
from .panels import Panel
from .plot import LossPlot


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
        self.calls = 0

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
            self.calls += 1
            self.fn(batch)


class TrainPanel(Panel):
    """Hyperparameters + run controls + live plot. ``TrainPanel(cfg).start()`` returns the :class:`~kit.engine.Run`."""

    title = "Train"
    keys = ("train.max_steps", "train.num_epochs", "train.batch_size", "train.grad_accum", "train.learning_rate",
            "train.lr_scheduler", "train.warmup_ratio", "train.weight_decay", "train.max_grad_norm", "train.optim",
            "train.seed", "train.logging_steps", "train.save_steps", "train.save_total_limit", "train.eval_steps",
            "train.gradient_checkpointing", "train.num_threads", "train.output_dir", "train.resume")

    def __init__(self, config: Any = None, *, context: Optional[Callable[[], RunConfig]] = None,
                 backend: Optional[str] = None, interval: float = 0.25):
        self.plot = LossPlot(backend)
        self.run: Optional[Run] = None
        self.interval = interval
        self._unsub: Optional[Callable[[], None]] = None
        self._t_first: Optional[tuple[float, int]] = None
        self.on_run: list[Callable[[Run], None]] = []  # the board hooks chat/export/evaluate to new runs
        super().__init__(config, context=context)

    def _build(self) -> W.Widget:
        self.start_button = W.Button(description="Start", icon="play", button_style="success")
        self.stop_button = W.Button(description="Stop", icon="stop", button_style="danger", disabled=True)
        self.resume_button = W.Button(description="Resume", icon="repeat", disabled=True,
                                      tooltip="Continue from the last complete checkpoint (max steps may be raised).")
        for b, cls in ((self.start_button, "forge-start"), (self.stop_button, "forge-stop"),
                       (self.resume_button, "forge-resume")):
            b.add_class(cls)  # stable hooks for browser tests and user CSS
        self.start_button.on_click(lambda _: self._safely(self.start))
        self.stop_button.on_click(lambda _: self.stop())
        self.resume_button.on_click(lambda _: self._safely(self.resume))
        self.progress = W.IntProgress(value=0, min=0, max=1, description="step", layout=W.Layout(width="420px"))
        self.status = W.HTML("status: idle")
        self.status.add_class("forge-status")
        self.stats = W.HTML("")
        self.info = W.HTML("")
        self.controls = W.VBox([W.HBox([self.start_button, self.stop_button, self.resume_button]),
                                W.HBox([self.progress, self.stats]), self.status, self.info]
                               + ([self.plot.widget] if self.plot.widget is not None else []))
        self.form_box = W.VBox(self.form.widgets())
        return W.VBox([W.Accordion(children=[self.form_box], titles=("Hyperparameters",)), self.controls])

    def _ipython_display_(self) -> None:
        super()._ipython_display_()
        if self.plot.widget is None:
            self.plot.display()  # the static back end lives in its own output below the panel

    def _safely(self, fn: Callable[[], Any]) -> None:
        try:
            fn()
        except Exception as e:  # a button has nowhere to raise to: show it
            self.status.value = "status: error &middot; " + html_error(e)

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
            raise RuntimeError("a run is already in progress; stop it first")
        cfg = self.run_config()
        self.follow(Run(cfg))
        self.run.start(blocking=False)
        if wait:
            self.run.wait()
            self._throttle.flush()
        return self.run

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
            self.status.value = "status: stopping (after this step, saving a checkpoint)&hellip;"
            self.stop_button.disabled = True

    def resume(self, wait: bool = False) -> Run:
        """Continue the stopped run from its last checkpoint; a larger max steps in the form is applied."""
        if self.run is None:
            raise RuntimeError("nothing to resume: start a run first")
        over = {}
        steps = self.form["train.max_steps"].value
        if steps != self.run.config.train.max_steps:
            over["train__max_steps"] = steps
        self._set_running(True)
        self.run.resume(blocking=False, **over)
        if wait:
            self.run.wait()
            self._throttle.flush()
        return self.run

    def _set_running(self, running: bool) -> None:
        self.start_button.disabled = running
        self.stop_button.disabled = not running
        can_resume = (not running and self.run is not None and self.run.status in ("stopped", "failed")
                      and self.run.last_checkpoint is not None)
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
                self.status.value = f"status: {html.escape(str(ev.get('status')))}"
                if ev.get("max_steps"):
                    self.progress.max = max(int(ev.get("max_steps")), 1)
            elif k == "model":
                self.info.value = (f"<span style='color:#555'>{human(ev.get('trainable_params', 0))} trainable of "
                                   f"{human(ev.get('total_params', 0))} parameters "
                                   f"({ev.get('trainable_pct', 0):.2f}%) on {ev.get('device')} / {ev.get('dtype')}</span>")
            elif k == "checkpoint":
                self.info.value = f"<span style='color:#555'>checkpoint saved: {html.escape(str(ev.get('path')))}</span>"
            elif k == "start" and ev.get("resume_from"):
                self.status.value = f"status: resuming from {html.escape(str(ev.get('resume_from')))}"
            elif k in TERMINAL:
                self._on_end(ev)

    def _on_step(self, ev: Event) -> None:
        step, max_steps = ev.step or 0, ev.get("max_steps") or 0
        if max_steps:
            self.progress.max = max(int(max_steps), 1)
        self.progress.value = min(step, self.progress.max)
        now = time.time()
        if self._t_first is None:
            self._t_first = (now, step)
        t0, s0 = self._t_first
        eta = ""
        if step > s0 and max_steps:
            per = (now - t0) / (step - s0)
            eta = f" &middot; ETA {_fmt_s(per * (max_steps - step))}"
        parts = [f"{step}/{max_steps or '?'}{eta}"]
        if ev.get("loss") is not None:
            parts.append(f"loss {ev.get('loss'):.4f}")
        if ev.get("tokens_per_s") is not None:
            parts.append(f"{ev.get('tokens_per_s'):.0f} tok/s")
        if ev.get("memory_mb") is not None:
            parts.append(f"{ev.get('memory_mb'):.0f} MB")
        self.stats.value = " &middot; ".join(parts)
        self.status.value = "status: training"

    def _on_end(self, ev: Event) -> None:
        run = self.run
        if ev.kind == "failed":
            self.status.value = f"status: failed &middot; {html_error(RuntimeError(ev.get('error')))}"
        else:
            ck = run.last_checkpoint if run is not None else None
            where = f" &middot; checkpoint {html.escape(ck.name)}" if ck else ""
            self.status.value = f"status: {ev.kind} at step {ev.step}{where}"
        self._set_running(False)


def _fmt_s(s: float) -> str:
    s = int(max(s, 0))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"
