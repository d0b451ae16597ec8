"""Notebook front end (ipywidgets): panels per config group, the Board, and the live loss plot.

The engine never imports this package; widgets subscribe to a Run's events.
"""

from .board import Board
from .chat import ChatPanel
from .panels import AdapterPanel, DataPanel, ModelPanel, Panel, QuantPanel, StagePanel, config_from_panels
from .plot import LossPlot, plot_backend, set_plot_backend
from .texts import Texts
from .tools import BackgroundJob, EvaluatePanel, ExportPanel
from .train import TrainPanel

__all__ = [
    "Board",
    "Panel",
    "ModelPanel",
    "QuantPanel",
    "AdapterPanel",
    "StagePanel",
    "DataPanel",
    "TrainPanel",
    "ChatPanel",
    "ExportPanel",
    "EvaluatePanel",
    "BackgroundJob",
    "LossPlot",
    "set_plot_backend",
    "plot_backend",
    "config_from_panels",
    "Texts",
]
