"""The chat cell: answers stream in token by token, history is kept, base vs tuned side by side."""

from __future__ import annotations

import hashlib
import html
import threading
from typing import Any, Optional

import ipywidgets as W

from ..config import RunConfig
from ..engine import Run, open_run
from ..infer.hf import ChatModel
from ..rundir import MODELS, RunDir
from ._fields import PanelError, ShowsWidget, error_html
from .texts import Texts
from .train import Throttle

SIDES = ("tuned", "base")


def base_source(source: Any) -> Optional[RunConfig]:
    """The model a run started from (its config without the trained adapter), or None if not a run."""
    if RunDir.is_run_dir(source):
        source = open_run(source)
    if isinstance(source, Run):
        return source.config.replace(model__adapter_path=None)
    if isinstance(source, RunConfig) and source.model.adapter_path:
        return source.replace(model__adapter_path=None)
    return None


def _chat_model(src: Any, loading: Any):
    """A ChatModel for ``src`` through :data:`kit.rundir.MODELS`, calling ``loading()`` before a load.

    A Run that still holds its model is wrapped as it is (nothing to load); a finished one is
    its run directory. A RunConfig (the base side) is keyed by a digest of its YAML, so the same
    model is not loaded twice."""
    if isinstance(src, ChatModel):
        return src
    if isinstance(src, Run):
        if src.model is not None and src.tokenizer is not None:
            return ChatModel.load(src)
        src = src.run_dir

    def load():
        loading()
        return ChatModel.load(src)

    if isinstance(src, RunConfig):
        return MODELS.get("chat", "config:" + hashlib.sha256(src.to_yaml().encode()).hexdigest()[:16], load)
    return MODELS.get("chat", src, load)


class ChatPanel(ShowsWidget):
    """Chat with a Run, a run directory, a model name/path, a RunConfig or a ChatModel.

    ``source`` may also be a function returning one (the board passes its latest run). Tick
    *compare with base* to see the untuned model answer the same conversation next to it.
    """

    title_key = "tab.chat"

    def __init__(
        self,
        source: Any = None,
        *,
        compare: bool = False,
        system: str = "",
        temperature: float = 0.0,
        max_new_tokens: int = 128,
        interval: float = 0.1,
        lang: Any = None,
        url: Optional[str] = None,
        api_key: Optional[str] = None,
    ):
        self.t = t = Texts.of(lang)
        self._source = source
        self.url, self._api_key = url, api_key  # url: chat with a running server (forge serve) instead
        self._remote: Any = None  # the ChatModel talking to ``url``; loaded models live in kit.rundir.MODELS
        self.history: dict[str, list[dict]] = {s: [] for s in SIDES}
        self._busy = threading.Lock()
        self._thread: Optional[threading.Thread] = None
        self.interval = interval
        self.error: Optional[BaseException] = None

        self.system = W.Textarea(value=system, layout=W.Layout(width="98%", height="48px"))
        self.temperature = W.FloatSlider(value=temperature, min=0.0, max=2.0, step=0.05)
        self.max_new_tokens = W.IntSlider(value=max_new_tokens, min=1, max=2048)
        self.compare = W.Checkbox(value=compare, indent=False)
        self.input = W.Textarea(layout=W.Layout(width="98%", height="60px"))
        self.send_button = W.Button(icon="paper-plane", button_style="primary")
        self.clear_button = W.Button(icon="trash")
        for widget, attr, key in (
            (self.system, "description", "chat.system"),
            (self.system, "placeholder", "chat.system_placeholder"),
            (self.temperature, "description", "chat.temperature"),
            (self.temperature, "tooltip", "chat.temperature_tooltip"),
            (self.max_new_tokens, "description", "chat.max_tokens"),
            (self.compare, "description", "chat.compare"),
            (self.compare, "tooltip", "chat.compare_tooltip"),
            (self.input, "placeholder", "chat.input_placeholder"),
            (self.send_button, "description", "chat.send"),
            (self.clear_button, "description", "chat.clear"),
        ):
            t.bind(widget, attr, key)
        self.send_button.on_click(lambda _: self._send_from_input())
        self.clear_button.on_click(lambda _: self.clear())
        self.status = W.HTML("")
        self.views = {s: W.HTML(layout=W.Layout(width="50%", border="1px solid #ddd", padding="6px")) for s in SIDES}
        self.compare.observe(lambda _: self._layout(), names="value")
        self.transcripts = W.HBox([self.views["tuned"], self.views["base"]])
        self.widget = W.VBox(
            [
                self.system,
                W.HBox([self.temperature, self.max_new_tokens, self.compare]),
                self.transcripts,
                self.input,
                W.HBox([self.send_button, self.clear_button]),
                self.status,
            ]
        )
        t.on_change(self._render)
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
        """The ChatModel for a side, from the one cache of loaded models (:data:`kit.rundir.MODELS`):
        loaded on first use, again when the board's run changes or its weights are retrained."""
        if self.url and side == "tuned":
            if self._remote is None:
                self._remote = ChatModel.connect(self.url, api_key=self._api_key)
            return self._remote
        src = self.source()
        if side == "base":
            src = base_source(src)
            if src is None:
                raise PanelError(self.t("chat.base_needs_run"))
        return _chat_model(
            src, lambda: self.t.bind(self.status, "value", lambda t: t("chat.loading", side=t(f"chat.side_{side}")))
        )

    # ---------------------------------------------------------------- chatting

    def _send_from_input(self) -> None:
        text = self.input.value.strip()
        if text:
            self.input.value = ""
            self.send(text)

    def send(self, text: str, wait: bool = False) -> Optional[dict]:
        """Ask ``text``; answers stream into the transcript(s). ``wait=True`` returns ``{side: answer}``."""
        if not self._busy.acquire(blocking=False):
            self.t.bind(self.status, "value", "chat.busy")
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
                self.t.bind(self.status, "value", lambda t, side=side: t("chat.answering", side=t(f"chat.side_{side}")))
                msg = self.history[side][-1]
                for piece in cm.stream(
                    self.history[side][:-1],
                    system=self.system.value or None,
                    temperature=self.temperature.value,
                    max_new_tokens=self.max_new_tokens.value,
                ):
                    msg["content"] += piece
                    throttle.push(piece)
                throttle.flush()
                result[side] = msg["content"]
            self.t.bind(self.status, "value", lambda t: "")
        except Exception as e:
            self.error = error = e
            self.t.bind(self.status, "value", lambda t: error_html(error, t))
        finally:
            self._render()
            self.send_button.disabled = False
            self._busy.release()

    def clear(self) -> None:
        for s in SIDES:
            self.history[s].clear()
        self._render()

    def _render(self) -> None:
        t = self.t
        for side, view in self.views.items():
            rows = (
                [f"<div style='color:#888;font-size:11px'>{t('chat.model_of', side=t(f'chat.side_{side}'))}</div>"]
                if self.compare.value
                else []
            )
            for m in self.history[side]:
                who = t("chat.you") if m["role"] == "user" else t("chat.model")
                color = "#f4f4f4" if m["role"] == "user" else "#eef6ff"
                rows.append(
                    f"<div style='background:{color};margin:3px 0;padding:4px;white-space:pre-wrap'>"
                    f"<b>{who}:</b> {html.escape(m['content'])}</div>"
                )
            view.value = "".join(rows) or f"<span style='color:#999'>{t('chat.empty')}</span>"
