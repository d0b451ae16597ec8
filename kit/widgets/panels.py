"""Notebook panels, one per config group, plus the training and chat panels.

Every config panel has ``config_fragment() -> {group: {field: value}}`` and ``load(cfg)``; the
widgets are built from kit.config's field metadata (tooltips = the field's help text).
The engine never imports this module: :class:`TrainPanel` subscribes to a Run's events, which
arrive on the training thread, and coalesces them to a few widget updates per second.
"""

from __future__ import annotations

import html
import importlib.util
from typing import Any, Callable, Optional

import ipywidgets as W

from ..config import STAGES, RunConfig, default_of, stage_knobs
from ._fields import Field, FieldForm, ShowsWidget, error_html, group_fields, merge
from .texts import Texts


class Panel(ShowsWidget):
    """Base: ``Panel(config, context=fn)``; ``keys`` are the ``group.field`` names the form shows.

    ``context`` returns the whole RunConfig (the board's) for panels whose hints need other groups.
    ``lang`` is a language code (``"zh"``) or the board's :class:`~kit.widgets.texts.Texts`.
    """

    keys: tuple = ()

    def __init__(self, config: Any = None, *, context: Optional[Callable[[], RunConfig]] = None, lang: Any = None):
        self._context = context
        self._base: Optional[RunConfig] = None  # the config a panel used on its own was given
        self.t = Texts.of(lang)
        self.form = FieldForm(self.keys, texts=self.t, **self._custom_fields())
        self.widget = self._build()
        if config is not None:
            self.load(RunConfig.coerce(config))

    def _custom_fields(self) -> dict:
        return {}

    def _build(self) -> W.Widget:
        return W.VBox(self.form.widgets())

    def fragment(self) -> dict:
        return self.form.fragment()

    config_fragment = fragment

    def load(self, cfg: RunConfig) -> None:
        # a panel on its own (``TrainPanel(cfg)``) trains the whole cfg, not its own fields on the defaults
        self._base = cfg
        self.form.load(cfg)

    def config(self) -> RunConfig:
        """This panel's values on top of the context's config (a board's), else of the config it was given."""
        src = self._context() if self._context is not None else (self._base or RunConfig())
        base = src.to_dict()
        if src.stage.reward_funcs:
            # to_dict writes a notebook's reward function as 'module:name' text, which a config may name only
            # with train.allow_code; the Python objects themselves need no opt-in, so hand them on as they are
            base["stage"]["reward_funcs"] = list(src.stage.reward_funcs)
        return RunConfig.from_dict(merge(base, self.fragment()))


class ModelPanel(Panel):
    """Pick a registered model (embedded first) or type a hub id / local path / .gguf file."""

    title_key = "tab.model"
    keys = (
        "model.name",
        "model.gguf_file",
        "model.dtype",
        "model.device",
        "model.attn_implementation",
        "model.template",
        "model.adapter_path",
    )

    def _custom_fields(self) -> dict:
        from ..models import list_models

        models = sorted(list_models(), key=lambda m: m.source != "embedded")
        self.models = {m.name: m for m in models}
        name = Field("model.name", options=list(self.models), texts=self.t)
        self.t.bind(name.widget, "placeholder", "model.name_placeholder")
        return {"model__name": name}

    def _build(self) -> W.Widget:
        self.info = W.HTML()
        self.form.observe(lambda _: self._refresh())
        self._refresh()
        return W.VBox(self.form.widgets() + [self.info])

    def _refresh(self) -> None:
        from ..models.loading import pick_device, pick_dtype

        try:
            m = self.models.get(self.form["model.name"].value)
            device = pick_device(self.form["model.device"].value)
            dtype = str(pick_dtype(self.form["model.dtype"].value, device)).replace("torch.", "")
        except Exception as e:  # an odd value must never break the panel
            error = e
            self.t.bind(self.info, "value", lambda t: error_html(error, t))
            return

        def info(t: Texts) -> str:
            desc = (
                t("model.info_registered", family=m.family, params=m.params, source=t(f"model.source_{m.source}"))
                if m
                else t("model.info_custom")
            )
            return "<small>" + t("model.info", model=html.escape(desc), device=device, dtype=dtype) + "</small>"

        self.t.bind(self.info, "value", info)


def bnb_available() -> bool:
    return importlib.util.find_spec("bitsandbytes") is not None


class QuantPanel(Panel):
    title_key = "tab.quant"
    keys = ("quant.bits", "quant.quant_type", "quant.double_quant", "quant.compute_dtype")

    def _build(self) -> W.Widget:
        self.reason = W.HTML()
        if not bnb_available():
            for w in self.form.widgets():
                w.disabled = True
            self.t.bind(self.reason, "value", "quant.needs_bitsandbytes")
        return W.VBox(self.form.widgets() + [self.reason])


class AdapterPanel(Panel):
    """Adapter settings and a count of trainable parameters (meta device: no weights are loaded)."""

    title_key = "tab.adapter"
    keys = (
        "adapter.type",
        "adapter.lora_rank",
        "adapter.lora_alpha",
        "adapter.lora_dropout",
        "adapter.lora_target",
        "adapter.use_dora",
        "adapter.use_rslora",
        "adapter.init",
        "adapter.loraplus_lr_ratio",
        "adapter.freeze_trainable_layers",
        "adapter.freeze_trainable_modules",
    )

    def _build(self) -> W.Widget:
        self.params = W.HTML()
        # the estimate is cached per (model, settings), so recomputing on each change is cheap after the first
        self.form.observe(lambda _: self.refresh())
        return W.VBox(self.form.widgets() + [self.params])

    def refresh(self) -> None:
        """Recompute the trainable-parameter and memory estimate (the board calls it when the model changes)."""
        from .estimate import estimate, human, human_bytes

        try:
            e = estimate(self.config())
        except FileNotFoundError:  # the model is not on disk yet (hub ids are never fetched for a hint)
            self.t.bind(
                self.params,
                "value",
                lambda t: "<small>" + t("adapter.estimate_na", reason=t("adapter.estimate_not_on_disk")) + "</small>",
            )
            return
        except Exception as e:  # the estimate is a hint: show why it is missing, never crash
            reason = html.escape(str(e)[:200])
            self.t.bind(
                self.params, "value", lambda t: "<small>" + t("adapter.estimate_na", reason=reason) + "</small>"
            )
            return
        self.t.bind(
            self.params,
            "value",
            lambda t: (
                "<small>"
                + t(
                    "adapter.estimate",
                    trainable=human(e["trainable"]),
                    total=human(e["total"]),
                    pct=f"{100 * e['trainable'] / max(e['total'], 1):.2f}",
                    memory=human_bytes(e["total_bytes"]),
                    weights=human_bytes(e["weights_bytes"]),
                    activations=human_bytes(e["activations_bytes"]),
                )
                + "</small>"
            ),
        )


class StagePanel(Panel):
    """The stage and only the knobs that stage (and, for dpo, its loss) reads, as kit.config declares
    them (:func:`kit.config.stage_knobs`). Every knob keeps its widget, so a value typed for one stage
    is still there after switching away and back; the fragment gives the knobs the chosen stage
    ignores at their defaults, since the config refuses an ignored knob that is set."""

    title_key = "tab.stage"
    keys = tuple(group_fields("stage"))

    def _build(self) -> W.Widget:
        self.form["stage.name"].widget.options = [(s, s) for s in STAGES]
        self.box = W.VBox()
        for key in ("stage.name", "stage.loss_type"):
            self.form[key].widget.observe(lambda _: self._relayout(), names="value")
        self._relayout()
        return self.box

    def load(self, cfg: RunConfig) -> None:
        super().load(cfg)
        self._relayout()

    def shown_keys(self) -> list[str]:
        """The knobs of the chosen stage, in declaration order (without stage.name)."""
        return stage_knobs(self.form["stage.name"].value, loss_type=self.form["stage.loss_type"].value, group="stage")

    def _relayout(self) -> None:
        self.box.children = self.form.widgets(["stage.name"] + self.shown_keys())

    def fragment(self) -> dict:
        out = super().fragment()
        shown = {"stage.name", *self.shown_keys()}
        for key in self.form.fields:
            if key not in shown:
                out["stage"][key.split(".", 1)[1]] = default_of(key)
        return out

    config_fragment = fragment


class DataPanel(Panel):
    title_key = "tab.data"
    keys = (
        "data.dataset",
        "data.eval_dataset",
        "data.format",
        "data.cutoff_len",
        "data.max_samples",
        "data.val_size",
        "data.packing",
        "data.train_on_prompt",
        "data.mask_history",
    )

    def _custom_fields(self) -> dict:
        from ..data import list_datasets

        ds = Field("data.dataset", options=sorted(list_datasets("train")), texts=self.t)  # no evaluation-only sets
        self.t.bind(ds.widget, "placeholder", "data.dataset_placeholder")
        return {"data__dataset": ds}

    def _build(self) -> W.Widget:
        self.preview_button = W.Button(icon="eye")
        self.t.bind(self.preview_button, "description", "data.preview")
        self.preview_html = W.HTML()
        self.preview_button.on_click(lambda _: self.preview())
        return W.VBox(self.form.widgets() + [self.preview_button, self.preview_html])

    def preview(self) -> str:
        from ..preview import preview

        try:
            self.preview_html.value = preview(self.config(), 1, style="html")[0]["rendered"]
        except Exception as e:  # a bad file or row: show the DataError (it names file/row/field)
            self.preview_html.value = error_html(e, self.t)
        return self.preview_html.value


def config_from_panels(panels: list, base: Optional[RunConfig] = None) -> RunConfig:
    d = (base or RunConfig()).to_dict()
    for p in panels:
        d = merge(d, p.fragment())
    return RunConfig.from_dict(d)
