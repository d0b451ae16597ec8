"""Export (merge, save, Modelfile, GGUF, push) and Evaluate panels.

Both call the library functions (``kit.export.export``, ``kit.evaluate.evaluate``), imported only
when used, and say so clearly when this install does not have them. Slow or irreversible exports
ask for a confirmation first.
"""
from __future__ import annotations

import html
import importlib
import json
import threading
from typing import Any, Callable, Optional

import ipywidgets as W

from ._fields import html_error


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


class ExportPanel:
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
        self.result: Optional[dict] = None
        self._thread: Optional[threading.Thread] = None
        self.widget = W.VBox([self.out_dir, self.merge, self.modelfile, self.gguf, self.push_to_hub, self.token,
                              self.dry_run, self.export_button, self.confirm_box, self.output])

    def _ipython_display_(self) -> None:
        from IPython.display import display
        display(self.widget)

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
        done: dict = {}

        def work():
            try:
                self.export_button.disabled = True
                self.output.value = "exporting&hellip;"
                done.update(fn(source, out_dir, **self.options()) or {})
                self.result = done
                self.output.value = "<b>done</b>" + _table(done)
            except Exception as e:
                self.output.value = html_error(e)
            finally:
                self.export_button.disabled = False

        self._thread = threading.Thread(target=work, daemon=True)
        self._thread.start()
        if wait:
            self._thread.join()
            return self.result
        return None


class EvaluatePanel:
    """Prediction metrics or benchmarks on a dataset, through ``kit.evaluate.evaluate`` when installed."""

    title = "Evaluate"

    def __init__(self, source: Any = None, dataset: str = "", metrics: str = ""):
        from ..data import list_datasets

        self._source = source
        self.dataset = W.Combobox(value=dataset, options=sorted(list_datasets()), description="dataset",
                                  ensure_option=False, layout=W.Layout(width="420px"))
        self.metrics = W.Text(value=metrics, description="metrics", placeholder="e.g. bleu, rouge (blank: defaults)",
                              layout=W.Layout(width="420px"))
        self.run_button = W.Button(description="Evaluate", icon="check", button_style="primary")
        self.output = W.HTML()
        self.run_button.on_click(lambda _: self.evaluate())
        self.scores: Optional[dict] = None
        self._thread: Optional[threading.Thread] = None
        fn, why = _optional("kit.evaluate", "evaluate")
        self.available = fn is not None
        if not self.available:
            self.output.value = f"<span style='color:#777'>Evaluation is not available: {html.escape(why)}.</span>"
            self.run_button.disabled = True
        self.widget = W.VBox([self.dataset, self.metrics, self.run_button, self.output])

    def _ipython_display_(self) -> None:
        from IPython.display import display
        display(self.widget)

    def evaluate(self, wait: bool = False) -> Optional[dict]:
        fn, why = _optional("kit.evaluate", "evaluate")
        if fn is None:
            self.output.value = html_error(RuntimeError(why))
            return None
        source = _resolve(self._source)
        metrics = [m.strip() for m in self.metrics.value.split(",") if m.strip()] or None
        kwargs: dict = {"dataset": self.dataset.value.strip() or None}
        if metrics:
            kwargs["metrics"] = metrics

        def work():
            try:
                self.run_button.disabled = True
                self.output.value = "evaluating&hellip;"
                self.scores = dict(fn(source, **kwargs) or {})
                self.output.value = _table(self.scores)
            except Exception as e:
                self.output.value = html_error(e)
            finally:
                self.run_button.disabled = False

        self._thread = threading.Thread(target=work, daemon=True)
        self._thread.start()
        if wait:
            self._thread.join()
            return self.scores
        return None
