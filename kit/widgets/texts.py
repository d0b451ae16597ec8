"""The language of a panel's widgets: every text set through :class:`Texts` follows a language switch.

    t = Texts("zh")
    t("train.start")                                        # the text, from kit.i18n's catalogue
    t.bind(button, "description", "train.start")            # set now, and again after t.set_language(...)
    t.bind(status, "value", "train.status.stopped", step=5, checkpoint="")   # a message with fields
    t.bind(info, "value", lambda t: t("model.info", ...))    # a text computed from other texts
    t.bind(tabs, "titles", lambda t: [...])                  # tab / accordion titles (kit.widgets.compat)
    t.bind(field.widget, "tooltip", ...)                     # tooltips on ipywidgets 7 and 8
    t.bind(dropdown, "options", lambda t: [(label, value), ...])   # the selected value is kept

A later ``bind`` of the same widget attribute replaces the earlier one, so a status line shows
its latest message in whichever language is chosen. The board hands one ``Texts`` to all its
panels, so one ``set_language`` relabels the whole board. Bindings may come from any thread
(run events arrive on the training thread).
"""

from __future__ import annotations

import threading
from typing import Any, Callable, Optional, Union

from .. import i18n
from .compat import set_titles, set_tooltip

Render = Callable[["Texts"], Any]


class Texts:
    """Messages in one language, and the widget attributes that show them."""

    def __init__(self, lang: Optional[str] = None):
        self.lang = i18n.language(lang)
        self._bound: dict[tuple[int, str], tuple[Any, str, Render]] = {}
        self._listeners: list[Callable[[], None]] = []
        self._lock = threading.RLock()

    @classmethod
    def of(cls, lang: Union[None, str, Texts]) -> Texts:
        """``lang`` itself when it is a Texts (the board's, shared), else a new one for that language."""
        return lang if isinstance(lang, Texts) else cls(lang)

    def __call__(self, key: str, **fields: Any) -> str:
        return i18n.text(key, self.lang, **fields)

    def label(self, dotted: str) -> str:
        return i18n.field_label(dotted, self.lang)

    def help(self, dotted: str) -> str:
        return i18n.field_help(dotted, self.lang)

    def bind(self, widget: Any, attr: str, what: Union[str, Render], **fields: Any) -> Any:
        """Show ``what`` (a message key, with ``fields``, or ``fn(texts)``) in ``widget.attr``, now and after a switch."""
        render: Render = what if callable(what) else (lambda t: t(what, **fields))
        with self._lock:
            self._bound[(id(widget), attr)] = (widget, attr, render)
            return self._apply(widget, attr, render)

    def on_change(self, fn: Callable[[], None]) -> None:
        """Call ``fn()`` after every language switch (for texts that are not a widget attribute)."""
        self._listeners.append(fn)

    def set_language(self, lang: str) -> None:
        """Switch every bound text (and the listeners) to ``lang``."""
        with self._lock:
            self.lang = i18n.language(lang)
            for widget, attr, render in list(self._bound.values()):
                self._apply(widget, attr, render)
        for fn in list(self._listeners):
            fn()

    def _apply(self, widget: Any, attr: str, render: Render) -> Any:
        value = render(self)
        if attr == "tooltip":
            set_tooltip(widget, value)
        elif attr == "titles":
            set_titles(widget, value)
        elif attr == "options":
            # new options select the first one (ipywidgets 7 and 8): put the user's choice back
            selected = widget.value
            widget.options = value
            if widget.value != selected:
                widget.value = selected
        else:
            setattr(widget, attr, value)
        return value
