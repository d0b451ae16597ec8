"""The board: every panel in one place, composing one RunConfig, with the run controls and plot below.

board = kit.Board()                      # defaults: the embedded model, demo_sft, LoRA
board = kit.Board(lang="zh")             # in Chinese (or the language picker, or FORGE_LANG=zh)
board = kit.Board.from_config("run.yaml")
board.config()                           # the RunConfig the panels describe
board.start(); board.stop()              # or the buttons
board.to_yaml(); board.magic_text()      # what "Show as YAML" / "Copy as %%forge_train" show
"""

from __future__ import annotations

from typing import Any, Optional

import ipywidgets as W

from .. import i18n
from ..config import RunConfig
from ..engine import Run
from ._fields import ShowsWidget, error_html, merge
from .chat import ChatPanel
from .panels import AdapterPanel, DataPanel, ModelPanel, QuantPanel, StagePanel
from .texts import Texts
from .tools import EvaluatePanel, ExportPanel
from .train import TrainPanel

# Tabs as wide as their titles (ipywidgets gives each a fixed 144px that shrinks with the board, which
# cut "Quantization" to "Quantizatio"); a narrow board scrolls its tab bar instead of cutting titles.
# The selectors cover ipywidgets 8 (lm-) and 7 (p-, Lumino 1 / Phosphor).
TAB_CSS = """<style>
.forge-board .lm-TabBar-tab, .forge-board .p-TabBar-tab { flex: 0 0 auto !important; min-width: max-content; }
.forge-board .lm-TabBar-tabLabel, .forge-board .p-TabBar-tabLabel { overflow: visible; text-overflow: clip; }
.forge-board .lm-TabBar-content, .forge-board .p-TabBar-content { overflow-x: auto; overflow-y: hidden; }
</style>"""


class Board(ShowsWidget):
    """All panels composed; ``config()`` is the RunConfig they describe.

    ``lang`` ("en", "zh"; default: :func:`kit.i18n.set_language`'s, else ``FORGE_LANG``, else
    English) is the language of every label, tooltip and message; the picker in the header and
    :meth:`set_language` switch it while the board is shown.
    """

    def __init__(self, config: Any = None, *, backend: Optional[str] = None, lang: Optional[str] = None):
        self.t = t = Texts(lang)
        self._base = RunConfig.coerce(config)
        cfg = self._base
        ctx = self.config
        self.model = ModelPanel(cfg, context=ctx, lang=t)
        self.quant = QuantPanel(cfg, context=ctx, lang=t)
        self.adapter = AdapterPanel(cfg, context=ctx, lang=t)
        self.stage = StagePanel(cfg, context=ctx, lang=t)
        self.data = DataPanel(cfg, context=ctx, lang=t)
        self.train = TrainPanel(cfg, context=ctx, backend=backend, lang=t)
        self.config_panels = (self.model, self.quant, self.adapter, self.stage, self.data, self.train)
        self.chat = ChatPanel(source=lambda: self.run if self.run is not None else self.config(), lang=t)
        self.export = ExportPanel(source=lambda: self.run, lang=t)
        # before any run: the board's config (its model, generation settings and eval dataset)
        self.evaluate = EvaluatePanel(source=lambda: self.run if self.run is not None else self.config(), lang=t)
        # the estimate depends on the model and quantization too
        for key in ("model.name", "model.dtype"):
            self.model.form[key].widget.observe(lambda _: self.adapter.refresh(), names="value")
        self.quant.form["quant.bits"].widget.observe(lambda _: self.adapter.refresh(), names="value")

        self.yaml_button = W.Button(icon="file-code-o")
        self.magic_button = W.Button(icon="clipboard")
        t.bind(self.yaml_button, "description", "board.show_yaml")
        t.bind(self.magic_button, "description", "board.copy_magic")
        self.yaml_text = W.Textarea(layout=W.Layout(width="98%", height="260px"))
        self.yaml_text.add_class("forge-yaml")
        self.yaml_button.on_click(lambda _: self.show_yaml())
        self.magic_button.on_click(lambda _: self.show_magic())
        yaml_box = W.VBox([W.HBox([self.yaml_button, self.magic_button]), self.yaml_text])

        pages = [
            self.model,
            self.quant,
            self.adapter,
            self.stage,
            self.data,
            self.train,
            self.chat,
            self.export,
            self.evaluate,
        ]
        self.tabs = W.Tab(children=[self.train.form_box if p is self.train else p.widget for p in pages] + [yaml_box])
        t.bind(self.tabs, "titles", lambda t: [p.title for p in pages] + [t("tab.yaml")])
        self.header = W.HTML()
        t.bind(self.header, "value", "board.header")
        self.language = W.Dropdown(
            options=[(name, code) for code, name in i18n.LANGUAGES.items()],
            value=t.lang,
            layout=W.Layout(width="110px"),
        )
        self.language.add_class("forge-language")
        t.bind(self.language, "tooltip", "board.language")
        self.language.observe(lambda change: self.set_language(change["new"]), names="value")
        self.widget = W.VBox(
            [
                W.HTML(TAB_CSS),
                W.HBox([self.header, self.language], layout=W.Layout(justify_content="space-between")),
                self.tabs,
                self.train.controls,
            ]
        )
        self.widget.add_class("forge-board")
        self.adapter.refresh()

    @classmethod
    def from_config(cls, config: Any, **kw: Any) -> Board:
        """A board showing ``config`` (a RunConfig, dict or YAML path)."""
        return cls(config, **kw)

    def _ipython_display_(self) -> None:
        super()._ipython_display_()
        if self.train.plot.widget is None:
            self.train.plot.display()

    def set_language(self, lang: str) -> None:
        """Show every label, tooltip and message of the board in ``lang`` (one of :data:`kit.i18n.LANGUAGES`)."""
        self.t.set_language(lang)
        if self.language.value != self.t.lang:
            self.language.value = self.t.lang

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
        """Put the config's YAML in the YAML tab (an invalid setting: its error, there and in the status line)."""
        try:
            self.yaml_text.value = self.to_yaml() or "{}  # " + self.t("board.all_defaults") + "\n"
        except Exception as e:
            self._invalid(e)
        return self.yaml_text.value

    def show_magic(self) -> str:
        """Put a ``%%forge_train`` cell that recreates the run in the YAML tab."""
        try:
            self.yaml_text.value = self.magic_text()
        except Exception as e:
            self._invalid(e)
            return self.yaml_text.value
        self.t.bind(self.header, "value", "board.header_magic")
        return self.yaml_text.value

    def _invalid(self, e: Exception) -> None:
        # our errors (ConfigError: the key and what is allowed) as one line; anything else is a bug, said so
        self.yaml_text.value = "# " + self.t("board.invalid_settings", error=str(e))
        self.t.bind(self.train.status, "value", lambda t: t("train.status_error", error=error_html(e, t)))

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
