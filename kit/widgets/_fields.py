"""One widget per config field, built from the field's type and help text (written once in kit.config).

A :class:`FieldForm` holds widgets for a list of ``group.field`` names and converts both ways:
``form.fragment()`` -> ``{group: {field: value}}`` and ``form.load(cfg)``. Values round-trip
exactly: Literal fields are dropdowns, bools checkboxes, ints/floats numeric boxes, and anything
that may be None or a list is a text box holding YAML (``""`` is None, ``[a, b]`` is a list).
"""

from __future__ import annotations

import dataclasses
import typing
from typing import Any, Callable, Iterable, Optional

import ipywidgets as W
import yaml

from ..config import GROUPS, RunConfig, field_choices, is_optional
from ..errors import ForgeError
from .texts import Texts


def _hint(dotted: str) -> Any:
    g, name = dotted.split(".", 1)
    return typing.get_type_hints(GROUPS[g])[name]


def default_value(dotted: str) -> Any:
    g, name = dotted.split(".", 1)
    return getattr(GROUPS[g](), name)


class Field:
    """A widget bound to one config field, with exact value conversion."""

    def __init__(
        self,
        dotted: str,
        *,
        label: Optional[str] = None,
        widget: Optional[W.Widget] = None,
        options: Optional[list] = None,
        texts: Optional[Texts] = None,
    ):
        self.key = dotted
        self.t = texts or Texts()
        self.tp = _hint(dotted)
        self.optional = is_optional(self.tp)
        self.choices = field_choices(dotted)
        value = default_value(dotted)
        self.kind = self._kind()
        if widget is not None:
            self.widget = widget
        elif self.kind == "choice":
            opts = [(str(c), c) for c in self.choices]
            self.widget = W.Dropdown(options=[("none", None)] + opts if self.optional else opts, value=value)
            if self.optional:
                self.t.bind(self.widget, "options", lambda t: [(t("field.none"), None)] + opts)
        elif self.kind == "bool":
            self.widget = W.Checkbox(value=value, indent=True)
        elif self.kind == "int":
            self.widget = W.IntText(value=value)
        elif self.kind == "float":
            self.widget = W.FloatText(value=value)
        elif options is not None:
            self.widget = W.Combobox(value=self._to_text(value), options=list(options), ensure_option=False)
        else:
            self.widget = W.Text(value=self._to_text(value))
        self.t.bind(self.widget, "description", lambda t: label or t.label(dotted))
        self.t.bind(self.widget, "tooltip", lambda t: t.help(dotted))  # hover: the field's own documentation
        if self.widget.style.has_trait("description_width"):
            self.widget.style.description_width = "150px"
        self.widget.layout.width = "420px"

    @property
    def help(self) -> str:
        """The field's documentation in the panel's language (its tooltip)."""
        return self.t.help(self.key)

    def _kind(self) -> str:
        if self.choices is not None:
            return "choice"
        if self.optional:
            return "text"
        if self.tp is bool:
            return "bool"
        if self.tp is int:
            return "int"
        if self.tp is float:
            return "float"
        return "text"

    # ---- conversion

    @staticmethod
    def _to_text(v: Any) -> str:
        if v is None:
            return ""
        if isinstance(v, (list, tuple)):
            return yaml.safe_dump(list(v), default_flow_style=True).strip()
        return str(v)

    def _from_text(self, s: str) -> Any:
        s = s.strip()
        if s == "":
            if self.optional:
                return None
            return [] if self.tp is list else ""
        if s.startswith("["):
            try:
                v = yaml.safe_load(s)
                if isinstance(v, list):
                    return v
            except yaml.YAMLError:
                pass
        args = [a for a in typing.get_args(self.tp) if a is not type(None)]
        if self.optional and any(a in (int, float) for a in args):
            try:
                v = yaml.safe_load(s)
                if isinstance(v, (int, float)) and not isinstance(v, bool):
                    return v
            except yaml.YAMLError:
                pass
        return s  # strings stay strings; RunConfig validation names the key if it is wrong

    @property
    def value(self) -> Any:
        v = self.widget.value
        if self.kind == "text":
            return self._from_text(v)
        return v

    @value.setter
    def value(self, v: Any) -> None:
        if self.kind == "text":
            self.widget.value = self._to_text(v)
        elif self.kind == "choice" and v not in [o[1] for o in self.widget.options]:
            raise ValueError(f"{self.key}: {v!r} is not one of the choices")
        else:
            self.widget.value = v


class FieldForm:
    """Widgets for several config fields; ``fragment()`` and ``load(cfg)`` convert exactly."""

    def __init__(self, keys: Iterable[str], *, texts: Optional[Texts] = None, **custom: Field):
        self.fields: dict[str, Field] = {}
        for k in keys:
            self.fields[k] = custom.get(k.replace(".", "__")) or Field(k, texts=texts)

    def __getitem__(self, key: str) -> Field:
        return self.fields[key]

    def widgets(self, keys: Optional[Iterable[str]] = None) -> list[W.Widget]:
        return [self.fields[k].widget for k in (keys or self.fields)]

    def fragment(self) -> dict:
        out: dict[str, dict] = {}
        for k, f in self.fields.items():
            g, name = k.split(".", 1)
            out.setdefault(g, {})[name] = f.value
        return out

    def load(self, cfg: RunConfig) -> None:
        for k, f in self.fields.items():
            g, name = k.split(".", 1)
            f.value = getattr(getattr(cfg, g), name)

    def observe(self, fn: Callable[[Any], None]) -> None:
        for f in self.fields.values():
            f.widget.observe(fn, names="value")


def merge(base: dict, fragment: dict) -> dict:
    """``base`` (a RunConfig.to_dict()) with the groups of ``fragment`` laid over it."""
    out = {g: dict(v) for g, v in base.items()}
    for g, vals in fragment.items():
        out.setdefault(g, {}).update(vals)
    return out


def group_fields(group: str) -> list[str]:
    return [f"{group}.{f.name}" for f in dataclasses.fields(GROUPS[group])]


class ShowsWidget:
    """A panel: ``self.widget`` (shown when the object is a cell's value), its texts ``self.t`` and its tab title."""

    widget: Any
    t: Texts
    title_key = ""

    @property
    def title(self) -> str:
        """The panel's name in its language (the board's tab title)."""
        return self.t(self.title_key)

    def set_language(self, lang: str) -> None:
        """Relabel every widget of the panel (and of every panel sharing its texts) in ``lang``."""
        self.t.set_language(lang)

    def _ipython_display_(self) -> None:
        from IPython.display import display

        display(self.widget)


class PanelError(ForgeError, ValueError):
    """A panel asked for something it cannot do in its current state (nothing trained yet, a run in progress)."""


def error_html(e: BaseException, t: Optional[Texts] = None, run_dir: Any = None) -> str:
    """One clear message for an error shown in a panel (a button has nowhere to raise to), never a traceback.

    The same split as the CLI's and the magic's (:mod:`kit.boundary`): the user's error (a
    :class:`~kit.errors.ForgeError` naming a config key, a data file/row/field, a model name; a
    missing file, a full disk, a missing extra) is its one-line message; anything else is a bug in
    Forge Kit and says so, with the exception and the run directory, where its traceback is saved.
    """
    import html

    from ..boundary import is_user_error, save_traceback, user_message

    t = t or Texts()
    if is_user_error(e):
        message = user_message(e)
    else:
        message = t("error.bug", error=f"{type(e).__name__}: {e}")
        saved = save_traceback(e, run_dir) if run_dir is not None else None
        if saved is not None:
            message += " " + t("error.bug_saved", run_dir=str(run_dir), path=str(saved))
    return f'<span class="forge-error" style="color:#b00020">{html.escape(message)}</span>'
