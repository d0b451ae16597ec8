"""ipywidgets 7 and 8 in one place: the few calls that differ, and nothing else.

Colab ships ipywidgets 7.7.1 (with its own widget manager); JupyterLab 4 and Notebook 7 use 8.
What the panels meet:

* **container titles** (Tab, Accordion): 8 has a ``titles`` tuple trait (``Tab(titles=[...])``);
  7 keeps a ``_titles`` dict filled through ``set_title(i, title)``. A ``titles=`` argument given
  to 7 is dropped with only a traitlets warning, so every title is blank.
* **tooltips**: 8 has ``tooltip`` on every DOM widget (``description_tooltip`` is deprecated and
  warns); 7 has ``tooltip`` on buttons only and ``description_tooltip`` on widgets with a
  description (text boxes, dropdowns, sliders, checkboxes). Boxes have no tooltip in 7.
* **the live plot**: plotly's ``FigureWidget`` is an anywidget, whose front end is a third-party
  extension the widget-7 front ends (classic Notebook 6, JupyterLab 3, Colab without its custom
  widget manager) may not have; :mod:`kit.widgets.plot` draws with core widgets there.

Everything else the panels use (layouts, styles, ``add_class``, Combobox, Password) is the same
in both. Panels never pass ``titles=`` or ``tooltip=`` to a constructor; they call these helpers.
"""

from __future__ import annotations

import re
from typing import Iterable, Optional

import ipywidgets as W

__all__ = ["WIDGETS_VERSION", "WIDGETS_8", "set_titles", "titles", "set_tooltip", "tooltip"]


def _version(text: str) -> tuple[int, int]:
    parts = [int(p) for p in re.findall(r"\d+", text)[:2]] + [0, 0]
    return parts[0], parts[1]


WIDGETS_VERSION: tuple[int, int] = _version(W.__version__)
"""(major, minor) of the installed ipywidgets."""

WIDGETS_8: bool = WIDGETS_VERSION >= (8, 0)


def set_titles(container: W.Widget, names: Iterable[str]) -> None:
    """Give a Tab's or an Accordion's pages their titles (one per child, in order)."""
    names = [str(n) for n in names]
    if len(names) != len(container.children):
        raise ValueError(f"{len(names)} titles for {len(container.children)} pages")
    if WIDGETS_8:
        container.titles = tuple(names)
    else:
        # one state message with all titles (set_title would send one per page)
        container._titles = {str(i): n for i, n in enumerate(names)}


def titles(container: W.Widget) -> list[str]:
    """The pages' titles as the front end shows them ("" where a page has none)."""
    return [container.get_title(i) or "" for i in range(len(container.children))]


def set_tooltip(widget: W.Widget, text: Optional[str]) -> bool:
    """Set the hover text of ``widget``; False where this ipywidgets has no tooltip for it (boxes in 7)."""
    if widget.has_trait("tooltip"):  # every DOM widget in 8, buttons in 7
        widget.tooltip = text
    elif widget.has_trait("description_tooltip"):  # described widgets in 7
        widget.description_tooltip = text
    else:
        return False
    return True


def tooltip(widget: W.Widget) -> Optional[str]:
    """The hover text :func:`set_tooltip` set (None if none)."""
    for trait in ("tooltip", "description_tooltip"):
        if widget.has_trait(trait):
            return getattr(widget, trait)
    return None
