"""The chat cell: answers stream in token by token, history is kept, base vs tuned side by side."""
from __future__ import annotations

import html
import threading
from pathlib import Path
from typing import Any, Optional

import ipywidgets as W

from ..config import RunConfig
from ._fields import ShowsWidget, html_error
from .train import Throttle

SIDES = ("tuned", "base")


def base_source(source: Any) -> Optional[RunConfig]:
    """The model a run started from (its config without the trained adapter), or None if not a run."""
    from ..engine import Run, open_run

    if isinstance(source, (str, Path)) and (Path(source) / "config.yaml").exists():
        source = open_run(source)
    if isinstance(source, Run):
        return source.config.replace(model__adapter_path=None)
    if isinstance(source, RunConfig) and source.model.adapter_path:
        return source.replace(model__adapter_path=None)
    return None


class ChatPanel(ShowsWidget):
    """Chat with a Run, a run directory, a model name/path, a RunConfig or a ChatModel.

    ``source`` may also be a function returning one (the board passes its latest run). Tick
    *compare with base* to see the untuned model answer the same conversation next to it.
    """

    title = "Chat"

    def __init__(self, source: Any = None, *, compare: bool = False, system: str = "",
                 temperature: float = 0.0, max_new_tokens: int = 128, interval: float = 0.1):
        self._source = source
        self._models: dict[str, Any] = {}
        self._loaded_for: dict[str, int] = {}
        self.history: dict[str, list[dict]] = {s: [] for s in SIDES}
        self._busy = threading.Lock()
        self._thread: Optional[threading.Thread] = None
        self.interval = interval
        self.error: Optional[BaseException] = None

        self.system = W.Textarea(value=system, description="system", placeholder="optional system prompt",
                                 layout=W.Layout(width="98%", height="48px"))
        self.temperature = W.FloatSlider(value=temperature, min=0.0, max=2.0, step=0.05, description="temperature",
                                         tooltip="0: greedy (deterministic).")
        self.max_new_tokens = W.IntSlider(value=max_new_tokens, min=1, max=2048, description="max tokens")
        self.compare = W.Checkbox(value=compare, description="compare with base", indent=False,
                                  tooltip="Also answer with the model before fine-tuning (the run without its adapter).")
        self.input = W.Textarea(placeholder="Type a message, then Send", layout=W.Layout(width="98%", height="60px"))
        self.send_button = W.Button(description="Send", icon="paper-plane", button_style="primary")
        self.clear_button = W.Button(description="Clear", icon="trash")
        self.send_button.on_click(lambda _: self._send_from_input())
        self.clear_button.on_click(lambda _: self.clear())
        self.status = W.HTML("")
        self.views = {s: W.HTML(layout=W.Layout(width="50%", border="1px solid #ddd", padding="6px")) for s in SIDES}
        self.compare.observe(lambda _: self._layout(), names="value")
        self.transcripts = W.HBox([self.views["tuned"], self.views["base"]])
        self.widget = W.VBox([self.system, W.HBox([self.temperature, self.max_new_tokens, self.compare]),
                              self.transcripts, self.input, W.HBox([self.send_button, self.clear_button]), self.status])
        self._layout()

    def _layout(self) -> None:
        on = self.compare.value
        self.views["base"].layout.display = None if on else "none"
        self.views["tuned"].layout.width = "50%" if on else "98%"
        self._render()

    # ---------------------------------------------------------------- models

    def source(self) -> Any:
        return self._source() if callable(self._source) else self._source

    def model(self, side: str = "tuned"):
        """The ChatModel for a side, loaded on first use (and again when the board's run changes)."""
        from ..infer.hf import ChatModel

        src = self.source()
        if side == "base":
            src = base_source(src)
            if src is None:
                raise ValueError("compare with base needs a training run (or a config with model.adapter_path)")
        if self._loaded_for.get(side) != id(src) or side not in self._models:
            self.status.value = f"loading the {side} model&hellip;"
            self._models[side] = ChatModel.load(src)
            self._loaded_for[side] = id(src)
        return self._models[side]

    # ---------------------------------------------------------------- chatting

    def _send_from_input(self) -> None:
        text = self.input.value.strip()
        if text:
            self.input.value = ""
            self.send(text)

    def send(self, text: str, wait: bool = False) -> Optional[dict]:
        """Ask ``text``; answers stream into the transcript(s). ``wait=True`` returns ``{side: answer}``."""
        if not self._busy.acquire(blocking=False):
            self.status.value = "still answering the previous message&hellip;"
            return None
        sides = list(SIDES) if self.compare.value else ["tuned"]
        result: dict = {}
        self._thread = threading.Thread(target=self._answer, args=(text, sides, result), daemon=True)
        self._thread.start()
        if wait:
            self._thread.join()
            if self.error is not None:
                raise self.error
            return result
        return None

    def _answer(self, text: str, sides: list[str], result: dict) -> None:
        self.error = None
        try:
            self.send_button.disabled = True
            for side in sides:
                self.history[side].append({"role": "user", "content": text})
                self.history[side].append({"role": "assistant", "content": ""})
            self._render()
            throttle = Throttle(lambda _: self._render(), self.interval)
            for side in sides:  # one after the other: two generations at once only halve each other's speed
                cm = self.model(side)
                self.status.value = f"{side} model answering&hellip;"
                msg = self.history[side][-1]
                for piece in cm.stream(self.history[side][:-1], system=self.system.value or None,
                                       temperature=self.temperature.value, max_new_tokens=self.max_new_tokens.value):
                    msg["content"] += piece
                    throttle.push(piece)
                throttle.flush()
                result[side] = msg["content"]
            self.status.value = ""
        except Exception as e:
            self.error = e
            self.status.value = html_error(e)
        finally:
            self._render()
            self.send_button.disabled = False
            self._busy.release()

    def clear(self) -> None:
        for s in SIDES:
            self.history[s].clear()
        self._render()

    def _render(self) -> None:
        for side, view in self.views.items():
            rows = [f"<div style='color:#888;font-size:11px'>{side} model</div>"] if self.compare.value else []
            for m in self.history[side]:
                who = "You" if m["role"] == "user" else "Model"
                color = "#f4f4f4" if m["role"] == "user" else "#eef6ff"
                rows.append(f"<div style='background:{color};margin:3px 0;padding:4px;white-space:pre-wrap'>"
                            f"<b>{who}:</b> {html.escape(m['content'])}</div>")
            view.value = "".join(rows) or "<span style='color:#999'>No messages yet.</span>"
