"""Export (merge, save, Modelfile, GGUF, push) and Evaluate panels.

Both call the library functions (``kit.export.export``, ``kit.evaluate.evaluate``), imported only
when used (they pull in transformers). Slow or irreversible exports ask for a confirmation first.
Both run their work through :class:`BackgroundJob`: the kernel stays free (other cells, the Stop
button of a training run) while a merge or an evaluation runs.
"""

from __future__ import annotations

import html
import importlib.util
import json
import threading
from typing import Any, Callable, Optional

import ipywidgets as W

from ._fields import PanelError, ShowsWidget, error_html
from .texts import Texts


def _resolve(source: Any) -> Any:
    return source() if callable(source) else source


def _table(d: dict) -> str:
    rows = "".join(
        f"<tr><td style='text-align:left'><b>{html.escape(str(k))}</b></td>"
        f"<td style='text-align:left'>{html.escape(_fmt(v))}</td></tr>"
        for k, v in d.items()
    )
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
    :func:`~kit.widgets._fields.error_html` (a button has nowhere to raise to) and kept in ``error``.
    ``busy`` is what the output says meanwhile: a text, or ``fn(texts)`` for one that follows the language.
    """

    def __init__(self, button: W.Button, output: W.HTML, busy: Any, texts: Optional[Texts] = None):
        self.button, self.output, self.busy = button, output, busy
        self.t = texts or Texts()
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
        busy = self.busy
        self.t.bind(self.output, "value", busy if callable(busy) else lambda t: busy)

        def work():
            try:
                self.result = fn()
                result = self.result
                self.t.bind(self.output, "value", lambda t: render(result))
            except Exception as e:
                self.error = error = e
                self.t.bind(self.output, "value", lambda t: error_html(error, t))
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

    title_key = "tab.export"

    def __init__(self, source: Any = None, out_dir: str = "", *, lang: Any = None):
        self.t = t = Texts.of(lang)
        self._source = source
        self.out_dir = W.Text(value=out_dir, layout=W.Layout(width="420px"))
        self.merge = W.Checkbox(value=True, indent=False)
        self.modelfile = W.Checkbox(value=True, indent=False)
        self.gguf = W.Dropdown(options=[("", None), ("GGUF f16", "f16"), ("GGUF q8_0", "q8_0")], value=None)
        self.push_to_hub = W.Text(layout=W.Layout(width="420px"))
        self.token = W.Password(layout=W.Layout(width="420px"))
        self.dry_run = W.Checkbox(value=False, indent=False)
        self.export_button = W.Button(icon="download", button_style="primary")
        self.confirm_button = W.Button(button_style="warning")
        self.cancel_button = W.Button()
        for widget, attr, key in (
            (self.out_dir, "description", "export.out_dir"),
            (self.out_dir, "placeholder", "export.out_dir_placeholder"),
            (self.merge, "description", "export.merge"),
            (self.modelfile, "description", "export.modelfile"),
            (self.gguf, "description", "export.gguf"),
            (self.push_to_hub, "description", "export.push_to_hub"),
            (self.push_to_hub, "placeholder", "export.push_to_hub_placeholder"),
            (self.token, "description", "export.token"),
            (self.token, "placeholder", "export.token_placeholder"),
            (self.dry_run, "description", "export.dry_run"),
            (self.export_button, "description", "export.export"),
            (self.confirm_button, "description", "export.confirm"),
            (self.cancel_button, "description", "export.cancel"),
        ):
            t.bind(widget, attr, key)
        t.bind(
            self.gguf, "options", lambda t: [(t("export.no_gguf"), None), ("GGUF f16", "f16"), ("GGUF q8_0", "q8_0")]
        )
        self.confirm_text = W.HTML()
        self.confirm_box = W.VBox(
            [self.confirm_text, W.HBox([self.confirm_button, self.cancel_button])], layout=W.Layout(display="none")
        )
        self.output = W.HTML()
        self.export_button.on_click(lambda _: self.export())
        self.confirm_button.on_click(lambda _: self.export(confirmed=True))
        self.cancel_button.on_click(lambda _: self._hide_confirm())
        self.job = BackgroundJob(self.export_button, self.output, lambda t: t("export.busy"), t)
        self.widget = W.VBox(
            [
                self.out_dir,
                self.merge,
                self.modelfile,
                self.gguf,
                self.push_to_hub,
                self.token,
                self.dry_run,
                self.export_button,
                self.confirm_box,
                self.output,
            ]
        )

    @property
    def result(self) -> Optional[dict]:
        return self.job.result

    def options(self) -> dict:
        return dict(
            merge=self.merge.value,
            modelfile=self.modelfile.value,
            gguf=self.gguf.value,
            push_to_hub=self.push_to_hub.value.strip() or None,
            token=self.token.value or None,
            dry_run=self.dry_run.value,
        )

    def needs_confirmation(self) -> list[str]:
        """What in the chosen export is slow or cannot be undone (in the panel's language)."""
        o, t = self.options(), self.t
        if o["dry_run"]:
            return []
        why = []
        if o["merge"]:
            why.append(t("export.why_merge"))
        if o["gguf"]:
            why.append(t("export.why_gguf", kind=o["gguf"]))
        if o["push_to_hub"]:
            why.append(t("export.why_push", repo=o["push_to_hub"]))
        return why

    def _hide_confirm(self) -> None:
        self.confirm_box.layout.display = "none"

    def export(self, confirmed: bool = False, wait: bool = False) -> Optional[dict]:
        """Export in the background (after a confirmation when :meth:`needs_confirmation` says so)."""
        from ..export import export

        if self.needs_confirmation() and not confirmed:
            self.t.bind(
                self.confirm_text,
                "value",
                lambda t: (
                    f"<b>{t('export.please_confirm')}</b><ul>"
                    + "".join(f"<li>{html.escape(r)}</li>" for r in self.needs_confirmation())
                    + "</ul>"
                ),
            )
            self.confirm_box.layout.display = None
            return None
        self._hide_confirm()
        source = _resolve(self._source)
        if source is None:
            self.t.bind(self.output, "value", lambda t: error_html(PanelError(t("export.nothing_trained")), t))
            return None
        out_dir = self.out_dir.value.strip() or None  # None: kit.export's default, <run dir>/export
        opts = self.options()
        return self.job.start(
            lambda: dict(export(source, out_dir, **opts) or {}),
            lambda done: f"<b>{self.t('export.done')}</b>" + _table(done),
            wait=wait,
        )


class EvaluatePanel(ShowsWidget):
    """Prediction metrics (BLEU/ROUGE) or multiple-choice accuracy on a dataset, through ``kit.evaluate``."""

    title_key = "tab.evaluate"

    def __init__(self, source: Any = None, dataset: str = "", metrics: str = "", *, lang: Any = None):
        from ..data import list_datasets

        self.t = t = Texts.of(lang)
        self._source = source
        self.dataset = W.Combobox(
            value=dataset, options=sorted(list_datasets()), ensure_option=False, layout=W.Layout(width="420px")
        )
        self.mode = W.Dropdown(options=[("auto", "auto"), ("predict", "predict"), ("mc", "mc")], value="auto")
        self.metrics = W.Text(value=metrics, layout=W.Layout(width="420px"))
        self.max_samples = W.BoundedIntText(value=0, min=0, max=10**9)
        # kit.evaluate(compare_base=True): the run and the model it started from, side by side
        self.compare_base = W.Checkbox(value=False, indent=False)
        self.run_button = W.Button(icon="check", button_style="primary")
        self.output = W.HTML()
        for widget, attr, key in (
            (self.dataset, "description", "evaluate.dataset"),
            (self.dataset, "placeholder", "evaluate.dataset_placeholder"),
            (self.mode, "description", "evaluate.mode"),
            (self.metrics, "description", "evaluate.metrics"),
            (self.metrics, "placeholder", "evaluate.metrics_placeholder"),
            (self.max_samples, "description", "evaluate.max_rows"),
            (self.max_samples, "tooltip", "evaluate.max_rows_tooltip"),
            (self.compare_base, "description", "evaluate.compare_base"),
            (self.compare_base, "tooltip", "evaluate.compare_base_tooltip"),
            (self.run_button, "description", "evaluate.evaluate"),
        ):
            t.bind(widget, attr, key)
        t.bind(
            self.mode,
            "options",
            lambda t: [
                (t("evaluate.mode_auto"), "auto"),
                (t("evaluate.mode_predict"), "predict"),
                (t("evaluate.mode_mc"), "mc"),
            ],
        )
        self.run_button.on_click(lambda _: self.evaluate())
        self.job = BackgroundJob(self.run_button, self.output, lambda t: t("evaluate.busy"), t)
        # BLEU/ROUGE need the eval extra; multiple-choice accuracy needs nothing more
        self.available = all(importlib.util.find_spec(m) is not None for m in ("nltk", "rouge_score"))
        if not self.available:
            t.bind(self.output, "value", lambda t: f"<span style='color:#777'>{t('evaluate.needs_extra')}</span>")
        self.widget = W.VBox(
            [self.dataset, self.mode, self.metrics, self.max_samples, self.compare_base, self.run_button, self.output]
        )

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
        if self.compare_base.value:
            kwargs["compare_base"] = True
        return kwargs

    def evaluate(self, wait: bool = False) -> Optional[dict]:
        """Evaluate in the background; ``wait=True`` returns the scores (None if it failed: see ``output``)."""
        from ..evaluate import evaluate

        kwargs = self.options()
        # the source is resolved inside the job: building it (e.g. the board's config) may fail, and
        # that error belongs in the output like any other
        return self.job.start(lambda: dict(evaluate(_resolve(self._source), **kwargs) or {}), _scores_html, wait=wait)


def _scores_html(res: dict) -> str:
    """Scores as a table; a base comparison as one row per score: tuned, base, difference."""
    if "tuned" not in res or "base" not in res:
        return _table(res)
    rows = "".join(
        f"<tr><td style='text-align:left'><b>{html.escape(k)}</b></td><td>{_fmt(v)}</td>"
        f"<td>{_fmt(res['base'].get(k))}</td><td>{d:+.4g}</td></tr>"
        for k, v in res["tuned"].items()
        if isinstance(d := res["delta"].get(k), (int, float))
    )
    return (
        f"<table style='font-size:12px'><tr><th></th><th>tuned</th><th>base</th><th>difference</th></tr>{rows}"
        f"</table><div style='color:#777'>{html.escape(res.get('comparison', ''))}</div>"
    )
