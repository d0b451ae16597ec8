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

from ..config import RunConfig
from ._fields import Field, FieldForm, ShowsWidget, group_fields, html_error, merge


class Panel(ShowsWidget):
    """Base: ``Panel(config, context=fn)``; ``keys`` are the ``group.field`` names the form shows.

    ``context`` returns the whole RunConfig (the board's) for panels whose hints need other groups.
    """

    title = ""
    keys: tuple = ()

    def __init__(self, config: Any = None, *, context: Optional[Callable[[], RunConfig]] = None):
        self._context = context
        self.form = FieldForm(self.keys, **self._custom_fields())
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
        self.form.load(cfg)

    def config(self) -> RunConfig:
        """This panel's values on top of the defaults (or of the context's config)."""
        base = self._context().to_dict() if self._context is not None else RunConfig().to_dict()
        return RunConfig.from_dict(merge(base, self.fragment()))


class ModelPanel(Panel):
    """Pick a registered model (embedded first) or type a hub id / local path / .gguf file."""

    title = "Model"
    keys = ("model.name", "model.gguf_file", "model.dtype", "model.device", "model.attn_implementation",
            "model.template", "model.adapter_path")

    def _custom_fields(self) -> dict:
        from ..models import list_models
        models = sorted(list_models(), key=lambda m: m.source != "embedded")
        self.models = {m.name: m for m in models}
        name = Field("model.name", options=list(self.models))
        name.widget.placeholder = "registered name, hub id, directory or .gguf file"
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
            desc = f"{m.family}, {m.params} params, {m.source}" if m else "custom model (hub id, directory or .gguf)"
            self.info.value = (f"<small>{html.escape(desc)} &middot; device <b>{device}</b> &middot; "
                               f"precision <b>{dtype}</b></small>")
        except Exception as e:  # an odd value must never break the panel
            self.info.value = html_error(e)


def bnb_available() -> bool:
    return importlib.util.find_spec("bitsandbytes") is not None


class QuantPanel(Panel):
    title = "Quantization"
    keys = ("quant.bits", "quant.quant_type", "quant.double_quant", "quant.compute_dtype")

    def _build(self) -> W.Widget:
        self.reason = W.HTML()
        if not bnb_available():
            for w in self.form.widgets():
                w.disabled = True
            self.reason.value = "<small>quantization needs <code>bitsandbytes</code> (pip install bitsandbytes)</small>"
        return W.VBox(self.form.widgets() + [self.reason])


class AdapterPanel(Panel):
    """Adapter settings and a count of trainable parameters (meta device: no weights are loaded)."""

    title = "Adapter"
    keys = ("adapter.type", "adapter.lora_rank", "adapter.lora_alpha", "adapter.lora_dropout", "adapter.lora_target",
            "adapter.use_dora", "adapter.use_rslora", "adapter.init", "adapter.loraplus_lr_ratio",
            "adapter.freeze_trainable_layers", "adapter.freeze_trainable_modules")

    def _build(self) -> W.Widget:
        self.params = W.HTML()
        self.form.observe(lambda _: self._schedule())
        return W.VBox(self.form.widgets() + [self.params])

    def _schedule(self) -> None:
        # the estimate is cached per (model, settings), so recomputing on each change is cheap after the first
        self.refresh()

    def refresh(self) -> None:
        from .estimate import estimate, human, human_bytes
        try:
            e = estimate(self.config())
            self.params.value = (f"<small>trainable <b>{human(e['trainable'])}</b> of {human(e['total'])} params "
                                 f"({100 * e['trainable'] / max(e['total'], 1):.2f}%) &middot; "
                                 f"~{human_bytes(e['total_bytes'])} to train (weights {human_bytes(e['weights_bytes'])}, "
                                 f"activations {human_bytes(e['activations_bytes'])})</small>")
        except Exception as e:  # the estimate is a hint: show why it is missing, never crash
            self.params.value = f"<small>trainable params: n/a ({html.escape(str(e)[:200])})</small>"


STAGE_KNOBS = {
    "sft": [], "pt": [], "rm": [],
    "dpo": ["stage.loss_type", "stage.beta", "stage.ftx", "stage.label_smoothing", "stage.simpo_gamma", "stage.ref_model"],
    "kto": ["stage.beta", "stage.kto_desirable_weight", "stage.kto_undesirable_weight", "stage.ref_model"],
    "grpo": ["stage.reward_funcs", "stage.reward_model", "stage.num_generations", "stage.max_new_tokens",
             "stage.temperature", "stage.beta", "stage.use_vllm"],
    "ppo": ["stage.reward_model", "stage.num_generations", "stage.max_new_tokens", "stage.temperature",
            "stage.ppo_epochs", "stage.ppo_clip", "stage.vf_coef", "stage.gamma", "stage.lam", "stage.beta"],
}


class StagePanel(Panel):
    """The stage and only the knobs that stage uses (all are kept in the form, so values round-trip)."""

    title = "Stage"
    keys = tuple(group_fields("stage"))

    def _build(self) -> W.Widget:
        from ..stages import STAGE_MODULES
        self.form["stage.name"].widget.options = [(s, s) for s in STAGE_MODULES]
        self.box = W.VBox()
        self.form["stage.name"].widget.observe(lambda _: self._relayout(), names="value")
        self._relayout()
        return self.box

    def load(self, cfg: RunConfig) -> None:
        super().load(cfg)
        self._relayout()

    def _relayout(self) -> None:
        stage = self.form["stage.name"].value
        keys = ["stage.name"] + [k for k in STAGE_KNOBS.get(stage, []) if k in self.form.fields]
        self.box.children = self.form.widgets(keys)


class DataPanel(Panel):
    title = "Data"
    keys = ("data.dataset", "data.eval_dataset", "data.format", "data.cutoff_len", "data.max_samples", "data.val_size",
            "data.packing", "data.train_on_prompt", "data.mask_history")

    def _custom_fields(self) -> dict:
        from ..data import list_datasets
        ds = Field("data.dataset", options=sorted(list_datasets("train")))  # evaluation-only sets stay out
        ds.widget.placeholder = "registered name or file path (json/jsonl/csv/parquet)"
        return {"data__dataset": ds}

    def _build(self) -> W.Widget:
        self.preview_button = W.Button(description="Preview", icon="eye")
        self.preview_html = W.HTML()
        self.preview_button.on_click(lambda _: self.preview())
        return W.VBox(self.form.widgets() + [self.preview_button, self.preview_html])

    def preview(self) -> str:
        from ..data import preview
        try:
            self.preview_html.value = preview(self.config(), 1, style="html")[0]["rendered"]
        except Exception as e:  # a bad file or row: show the DataError (it names file/row/field)
            self.preview_html.value = html_error(e)
        return self.preview_html.value


def config_from_panels(panels: list, base: Optional[RunConfig] = None) -> RunConfig:
    d = (base or RunConfig()).to_dict()
    for p in panels:
        d = merge(d, p.fragment())
    return RunConfig.from_dict(d)
