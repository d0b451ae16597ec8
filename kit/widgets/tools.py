"""Export (merge, save, Modelfile, GGUF, push) and Evaluate panels.

Both call the library functions (``kit.export.export``, ``kit.evaluate.evaluate``), imported only
when used, and say so clearly when this install does not have them. Slow or irreversible exports
ask for a confirmation first. Both run their work through :class:`BackgroundJob`: the kernel stays
free (other cells, the Stop button of a training run) while a merge or an evaluation runs.
"""
from __future__ import annotations

import html
import importlib
import json
import threading
from typing import Any, Callable, Optional

import ipywidgets as W

from ._fields import ShowsWidget, html_error


def _optional(module: str, attr: str) -> tuple[Optional[Callable], str]:
    try:
        return getattr(importlib.import_module(module), attr), ""
    except ModuleNotFoundError as e:
        if e.name == module:
            return None, f"{module} is not available in this version of forge-kit"
        raise
    except AttributeError:
        return None, f"{module}.{attr} is not available in this version of forge-kit"


def _resolve(source: Any) -> Any:
    return source() if callable(source) else source


def _table(d: dict) -> str:
    rows = "".join(f"<tr><td style='text-align:left'><b>{html.escape(str(k))}</b></td>"
                   f"<td style='text-align:left'>{html.escape(_fmt(v))}</td></tr>" for k, v in d.items())
    return f"<table style='font-size:12px'>{rows}</table>"


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, (dict, list)):
        return json.dumps(v, default=str)[:400]
    return str(v)


class BackgroundJob:
    """The work behind one button: run ``fn`` in a thread, button disabled meanwhile, result or error shown.

    The button is disabled before the thread starts, so a double click cannot start the job twice.
    ``render(result)`` turns the result into the output's HTML; an exception is shown with
    :func:`html_error` (a button has nowhere to raise to) and kept in ``error``.
    """

    def __init__(self, button: W.Button, output: W.HTML, busy: str):
        self.button, self.output, self.busy = button, output, busy
        self.result: Any = None
        self.error: Optional[BaseException] = None
        self.thread: Optional[threading.Thread] = None

    @property
    def running(self) -> bool:
        return self.thread is not None and self.thread.is_alive()

    def start(self, fn: Callable[[], Any], render: Callable[[Any], str], wait: bool = False) -> Any:
        """Start ``fn``; with ``wait`` block until it ends and return its result (None if it failed)."""
        if self.running:
            raise RuntimeError("this job is still running")
        self.result, self.error = None, None
        self.button.disabled = True
        self.output.value = self.busy

        def work():
            try:
                self.result = fn()
                self.output.value = render(self.result)
            except Exception as e:
                self.error = e
                self.output.value = html_error(e)
            finally:
                self.button.disabled = False

        self.thread = threading.Thread(target=work, daemon=True)
        self.thread.start()
        if wait:
            self.thread.join()
            return self.result
        return None

    def wait(self, timeout: Optional[float] = None) -> Any:
        if self.thread is not None:
            self.thread.join(timeout)
        return self.result


class ExportPanel(ShowsWidget):
    """Merge the adapter, save, write an Ollama Modelfile, convert to GGUF, push to the hub."""

    title = "Export"

    def __init__(self, source: Any = None, out_dir: str = ""):
        self._source = source
        self.out_dir = W.Text(value=out_dir, description="output dir", placeholder="default: <run dir>/export",
                              layout=W.Layout(width="420px"))
        self.merge = W.Checkbox(value=True, description="merge adapter into the base", indent=False)
        self.modelfile = W.Checkbox(value=True, description="Ollama Modelfile", indent=False)
        self.gguf = W.Dropdown(options=[("no GGUF", None), ("GGUF f16", "f16"), ("GGUF q8_0", "q8_0")], value=None,
                               description="GGUF")
        self.push_to_hub = W.Text(description="push to hub", placeholder="owner/name (optional)",
                                  layout=W.Layout(width="420px"))
        self.token = W.Password(description="hub token", placeholder="or HF_TOKEN", layout=W.Layout(width="420px"))
        self.dry_run = W.Checkbox(value=False, description="dry run (show the plan only)", indent=False)
        self.export_button = W.Button(description="Export", icon="download", button_style="primary")
        self.confirm_button = W.Button(description="Yes, export", button_style="warning")
        self.cancel_button = W.Button(description="Cancel")
        self.confirm_text = W.HTML()
        self.confirm_box = W.VBox([self.confirm_text, W.HBox([self.confirm_button, self.cancel_button])],
                                  layout=W.Layout(display="none"))
        self.output = W.HTML()
        self.export_button.on_click(lambda _: self.export())
        self.confirm_button.on_click(lambda _: self.export(confirmed=True))
        self.cancel_button.on_click(lambda _: self._hide_confirm())
        self.job = BackgroundJob(self.export_button, self.output, "exporting&hellip;")
        self.widget = W.VBox([self.out_dir, self.merge, self.modelfile, self.gguf, self.push_to_hub, self.token,
                              self.dry_run, self.export_button, self.confirm_box, self.output])

    @property
    def result(self) -> Optional[dict]:
        return self.job.result

    def options(self) -> dict:
        return dict(merge=self.merge.value, modelfile=self.modelfile.value, gguf=self.gguf.value,
                    push_to_hub=self.push_to_hub.value.strip() or None, token=self.token.value or None,
                    dry_run=self.dry_run.value)

    def needs_confirmation(self) -> list[str]:
        """What in the chosen export is slow or cannot be undone."""
        o = self.options()
        if o["dry_run"]:
            return []
        why = []
        if o["merge"]:
            why.append("merging writes a full copy of the model weights")
        if o["gguf"]:
            why.append(f"GGUF {o['gguf']} conversion is slow")
        if o["push_to_hub"]:
            why.append(f"pushing publishes to {o['push_to_hub']} on the hub (cannot be undone here)")
        return why

    def _hide_confirm(self) -> None:
        self.confirm_box.layout.display = "none"

    def export(self, confirmed: bool = False, wait: bool = False) -> Optional[dict]:
        """Export in the background (after a confirmation when :meth:`needs_confirmation` says so)."""
        fn, why = _optional("kit.export", "export")
        if fn is None:
            self.output.value = html_error(RuntimeError(why))
            return None
        reasons = self.needs_confirmation()
        if reasons and not confirmed:
            self.confirm_text.value = "<b>Please confirm:</b><ul>" + "".join(f"<li>{html.escape(r)}</li>" for r in reasons) + "</ul>"
            self.confirm_box.layout.display = None
            return None
        self._hide_confirm()
        source = _resolve(self._source)
        if source is None:
            self.output.value = html_error(RuntimeError("nothing to export yet: train a run first"))
            return None
        out_dir = self.out_dir.value.strip() or None
        if out_dir is None:
            run_dir = getattr(source, "run_dir", None) or source
            out_dir = str(run_dir) + "/export"
        opts = self.options()
        return self.job.start(lambda: dict(fn(source, out_dir, **opts) or {}),
                              lambda done: "<b>done</b>" + _table(done), wait=wait)


class EvaluatePanel(ShowsWidget):
    """Prediction metrics (BLEU/ROUGE) or multiple-choice accuracy on a dataset, through ``kit.evaluate``."""

    title = "Evaluate"

    def __init__(self, source: Any = None, dataset: str = "", metrics: str = ""):
        from ..data import list_datasets

        self._source = source
        self.dataset = W.Combobox(value=dataset, options=sorted(list_datasets()), description="dataset",
                                  placeholder="name or file (blank: the config's eval dataset)",
                                  ensure_option=False, layout=W.Layout(width="420px"))
        self.mode = W.Dropdown(options=[("auto (from the rows)", "auto"), ("predict: BLEU / ROUGE", "predict"),
                                        ("multiple choice: accuracy", "mc")], value="auto", description="mode")
        self.metrics = W.Text(value=metrics, description="metrics", placeholder="e.g. bleu, rouge (blank: defaults)",
                              layout=W.Layout(width="420px"))
        self.max_samples = W.BoundedIntText(value=0, min=0, max=10**9, description="max rows",
                                            tooltip="evaluate the first n rows only (0: all)")
        self.run_button = W.Button(description="Evaluate", icon="check", button_style="primary")
        self.output = W.HTML()
        self.run_button.on_click(lambda _: self.evaluate())
        self.job = BackgroundJob(self.run_button, self.output, "evaluating&hellip;")
        fn, why = _optional("kit.evaluate", "evaluate")
        self.available = fn is not None
        if not self.available:
            self.output.value = f"<span style='color:#777'>Evaluation is not available: {html.escape(why)}.</span>"
            self.run_button.disabled = True
        self.widget = W.VBox([self.dataset, self.mode, self.metrics, self.max_samples, self.run_button, self.output])

    @property
    def scores(self) -> Optional[dict]:
        return self.job.result

    def options(self) -> dict:
        """The keyword arguments for ``kit.evaluate`` the form describes."""
        kwargs: dict = {"dataset": self.dataset.value.strip() or None, "mode": self.mode.value}
        metrics = [m.strip() for m in self.metrics.value.split(",") if m.strip()]
        if metrics:
            kwargs["metrics"] = metrics
        if self.max_samples.value:
            kwargs["max_samples"] = self.max_samples.value
        return kwargs

    def evaluate(self, wait: bool = False) -> Optional[dict]:
        """Evaluate in the background; ``wait=True`` returns the scores (None if it failed: see ``output``)."""
        fn, why = _optional("kit.evaluate", "evaluate")
        if fn is None:
            self.output.value = html_error(RuntimeError(why))
            return None
        kwargs = self.options()
        # the source is resolved inside the job: building it (e.g. the board's config) may fail, and
        # that error belongs in the output like any other
        return self.job.start(lambda: dict(fn(_resolve(self._source), **kwargs) or {}), _table, wait=wait)
