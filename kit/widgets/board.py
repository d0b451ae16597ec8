"""The board: every panel in one place, composing one RunConfig, with the run controls and plot below.

    board = kit.Board()                      # defaults: the embedded model, demo_sft, LoRA
    board = kit.Board.from_config("run.yaml")
    board.config()                           # the RunConfig the panels describe
    board.start(); board.stop()              # or the buttons
    board.to_yaml(); board.magic_text()      # what "Show as YAML" / "Copy as %%forge_train" show
"""
from __future__ import annotations

from typing import Any, Optional

import ipywidgets as W

from ..config import RunConfig
from ..engine import Run
from ._fields import ShowsWidget, html_error, merge
from .chat import ChatPanel
from .panels import AdapterPanel, DataPanel, ModelPanel, QuantPanel, StagePanel
from .tools import EvaluatePanel, ExportPanel
from .train import TrainPanel


class Board(ShowsWidget):
    """All panels composed; ``config()`` is the RunConfig they describe."""

    def __init__(self, config: Any = None, *, backend: Optional[str] = None):
        self._base = RunConfig.coerce(config)
        cfg = self._base
        ctx = self.config
        self.model = ModelPanel(cfg, context=ctx)
        self.quant = QuantPanel(cfg, context=ctx)
        self.adapter = AdapterPanel(cfg, context=ctx)
        self.stage = StagePanel(cfg, context=ctx)
        self.data = DataPanel(cfg, context=ctx)
        self.train = TrainPanel(cfg, context=ctx, backend=backend)
        self.config_panels = (self.model, self.quant, self.adapter, self.stage, self.data, self.train)
        self.chat = ChatPanel(source=lambda: self.run if self.run is not None else self.config())
        self.export = ExportPanel(source=lambda: self.run)
        # before any run: the board's config (its model, generation settings and eval dataset)
        self.evaluate = EvaluatePanel(source=lambda: self.run if self.run is not None else self.config())
        # the estimate depends on the model and quantization too
        for key in ("model.name", "model.dtype"):
            self.model.form[key].widget.observe(lambda _: self.adapter._schedule(), names="value")
        self.quant.form["quant.bits"].widget.observe(lambda _: self.adapter._schedule(), names="value")

        self.yaml_button = W.Button(description="Show as YAML", icon="file-code-o")
        self.magic_button = W.Button(description="Copy as %%forge_train", icon="clipboard")
        self.yaml_text = W.Textarea(layout=W.Layout(width="98%", height="260px"))
        self.yaml_text.add_class("forge-yaml")
        self.yaml_button.on_click(lambda _: self.show_yaml())
        self.magic_button.on_click(lambda _: self.show_magic())
        yaml_box = W.VBox([W.HBox([self.yaml_button, self.magic_button]), self.yaml_text])

        tabs = [(self.model.title, self.model.widget), (self.quant.title, self.quant.widget),
                (self.adapter.title, self.adapter.widget), (self.stage.title, self.stage.widget),
                (self.data.title, self.data.widget), (self.train.title, self.train.form_box),
                (self.chat.title, self.chat.widget), (self.export.title, self.export.widget),
                (self.evaluate.title, self.evaluate.widget), ("YAML", yaml_box)]
        self.tabs = W.Tab(children=[w for _, w in tabs], titles=[t for t, _ in tabs])
        self.header = W.HTML("<b>Forge Kit</b> &middot; set up a run in the tabs, then Start")
        self.widget = W.VBox([self.header, self.tabs, self.train.controls])
        self.widget.add_class("forge-board")
        self.adapter._schedule()

    @classmethod
    def from_config(cls, config: Any, **kw: Any) -> "Board":
        """A board showing ``config`` (a RunConfig, dict or YAML path)."""
        return cls(config, **kw)

    def _ipython_display_(self) -> None:
        super()._ipython_display_()
        if self.train.plot.widget is None:
            self.train.plot.display()

    # ---------------------------------------------------------------- config

    def config(self) -> RunConfig:
        """The RunConfig the panels describe (raises ConfigError naming the key if a value is invalid)."""
        d = self._base.to_dict()
        for p in self.config_panels:
            d = merge(d, p.fragment())
        return RunConfig.from_dict(d)

    def load(self, config: Any) -> None:
        """Put ``config``'s values into every panel."""
        cfg = RunConfig.coerce(config)
        self._base = cfg
        for p in self.config_panels:
            p.load(cfg)

    def to_yaml(self) -> str:
        return self.config().to_yaml(minimal=True)

    def magic_text(self) -> str:
        """A cell that recreates this run: ``%%forge_train`` + the YAML."""
        return "%%forge_train\n" + self.to_yaml()

    def show_yaml(self) -> str:
        try:
            self.yaml_text.value = self.to_yaml() or "{}  # all defaults\n"
        except Exception as e:
            self.yaml_text.value = f"# invalid settings: {e}"
        return self.yaml_text.value

    def show_magic(self) -> str:
        try:
            self.yaml_text.value = self.magic_text()
        except Exception as e:
            self.yaml_text.value = f"# invalid settings: {e}"
            return self.yaml_text.value
        self.header.value = "<b>Forge Kit</b> &middot; the cell below recreates this run: copy it into a new cell"
        return self.yaml_text.value

    # ---------------------------------------------------------------- run

    @property
    def run(self) -> Optional[Run]:
        return self.train.run

    def start(self, wait: bool = False) -> Run:
        return self.train.start(wait=wait)

    def stop(self) -> None:
        self.train.stop()

    def resume(self, wait: bool = False) -> Run:
        return self.train.resume(wait=wait)


def error_html(e: BaseException) -> str:
    return html_error(e)
