"""Every text the notebook front end shows, in every language it speaks: one catalogue.

Three kinds of text, looked up by key:

* **messages** (``text("train.start", lang)``): labels, buttons, placeholders and status lines.
  ``kit/i18n/en.py`` holds the English ones and so defines the keys; each other language module
  translates them. A message may have ``{name}`` fields, filled by ``text(key, lang, name=...)``.
* **field labels** (``field_label("adapter.lora_rank", lang)``): English is the field's own name
  (``lora rank``); other languages translate them in their ``LABELS``.
* **field help** (``field_help("adapter.lora_rank", lang)``): the tooltip of a config field.
  English is the help text written next to the field in :mod:`kit.config` (the same text feeds
  errors and docs, so kit.config stays English); other languages translate it in their ``HELP``,
  keyed by the dotted field name, as ``(english, translation)``: the English text that was
  translated stays next to its translation, so a reviewer reads both and :func:`stale` notices
  when kit.config's text has changed since. "Used by: <stages>" (derived from the stage
  declaration) is appended in the language's own words (message ``field.used_by``).

A language module is a plain Python file (``en.py``, ``zh.py``): it ships with the package like
any other module, no package data needed. A key a language lacks falls back to English at run
time; :func:`missing` lists such keys, and the test suite fails on any.

The language is ``lang`` when given, else :func:`set_language`'s, else the ``FORGE_LANG``
environment variable, else English.
"""

from __future__ import annotations

import dataclasses
import importlib
import os
import string
from types import ModuleType
from typing import Any, Optional

from ..config import GROUPS, used_by
from ..config import field_help as _english_help
from ..errors import ForgeError

__all__ = [
    "LANGUAGES",
    "DEFAULT_LANGUAGE",
    "LanguageError",
    "language",
    "set_language",
    "text",
    "field_label",
    "field_help",
    "config_fields",
    "missing",
    "unknown",
    "stale",
    "placeholder_mismatches",
]

LANGUAGES = {"en": "English", "zh": "中文"}
"""Language code -> its name in that language (what the Board's language picker lists)."""

DEFAULT_LANGUAGE = "en"
_chosen: Optional[str] = None


class LanguageError(ForgeError, ValueError):
    """A language code the catalogue does not have."""


def language(lang: Optional[str] = None) -> str:
    """The language to use: ``lang``, else :func:`set_language`'s, else ``FORGE_LANG``, else English."""
    code = lang or _chosen or os.environ.get("FORGE_LANG") or DEFAULT_LANGUAGE
    code = code.strip().lower().replace("_", "-")
    if code not in LANGUAGES:
        code = code.split("-")[0]  # zh-CN, zh_Hans, en-US -> zh, en
    if code not in LANGUAGES:
        raise LanguageError(f"unknown language {lang or code!r}; choose one of {', '.join(LANGUAGES)}")
    return code


def set_language(lang: Optional[str]) -> None:
    """The language of panels created from now on without a ``lang`` (None: back to FORGE_LANG / English)."""
    global _chosen
    _chosen = None if lang is None else language(lang)


def _catalogue(lang: str) -> ModuleType:
    return importlib.import_module(f"{__name__}.{lang}")


def text(key: str, lang: Optional[str] = None, **fields: Any) -> str:
    """The message ``key`` in ``lang``, its ``{name}`` fields filled from ``fields``.

    An unknown key raises KeyError (a typo in our code, caught by the tests); a key the language
    has not translated yet falls back to English.
    """
    english = _catalogue("en").MESSAGES[key]
    message = _catalogue(language(lang)).MESSAGES.get(key, english)
    return message.format_map(fields)


def field_label(dotted: str, lang: Optional[str] = None) -> str:
    """The short label of config field ``group.field`` (``lora rank``)."""
    english = dotted.split(".", 1)[1].replace("_", " ")
    return getattr(_catalogue(language(lang)), "LABELS", {}).get(dotted, english)


def field_help(dotted: str, lang: Optional[str] = None) -> str:
    """The documentation of config field ``group.field`` (the widget's tooltip), with the stages that read it."""
    code = language(lang)
    entry = getattr(_catalogue(code), "HELP", {}).get(dotted)
    if entry is None:  # English, or not translated yet
        return _english_help(dotted)
    users = used_by(dotted)
    return entry[1] + (" " + text("field.used_by", code, stages=users) if users else "")


def config_fields() -> list[str]:
    """Every ``group.field`` of :class:`kit.config.RunConfig`."""
    return [f"{g}.{f.name}" for g, cls in GROUPS.items() for f in dataclasses.fields(cls)]


def english_help(dotted: str) -> str:
    """The help text written next to ``group.field`` in kit.config (without "Used by")."""
    g, name = dotted.split(".", 1)
    return next(f.metadata.get("help", "") for f in dataclasses.fields(GROUPS[g]) if f.name == name)


def missing(lang: str) -> list[str]:
    """What ``lang`` has not translated: message keys, ``label:group.field`` and ``help:group.field``."""
    cat = _catalogue(language(lang))
    if lang == "en":
        return []
    out = [k for k in _catalogue("en").MESSAGES if k not in cat.MESSAGES]
    for dotted in config_fields():
        if dotted not in getattr(cat, "LABELS", {}):
            out.append(f"label:{dotted}")
        if english_help(dotted) and dotted not in getattr(cat, "HELP", {}):
            out.append(f"help:{dotted}")
    return out


def stale(lang: str) -> list[str]:
    """Help translations made from an English text that kit.config no longer has: ``group.field`` names."""
    help_ = getattr(_catalogue(language(lang)), "HELP", {})
    return [d for d in config_fields() if d in help_ and help_[d][0] != english_help(d)]


def unknown(lang: str) -> list[str]:
    """Keys ``lang`` translates that no longer exist (a renamed message or a removed field)."""
    cat = _catalogue(language(lang))
    fields = set(config_fields())
    out = [k for k in cat.MESSAGES if k not in _catalogue("en").MESSAGES]
    out += [f"label:{d}" for d in getattr(cat, "LABELS", {}) if d not in fields]
    out += [f"help:{d}" for d in getattr(cat, "HELP", {}) if d not in fields]
    return out


def _names(message: str) -> set[str]:
    return {name for _, name, _, _ in string.Formatter().parse(message) if name is not None}


def placeholder_mismatches(lang: str) -> list[str]:
    """Messages whose translation has other ``{fields}`` than the English (it would raise or drop a value)."""
    en, cat = _catalogue("en").MESSAGES, _catalogue(language(lang)).MESSAGES
    return [k for k, m in cat.items() if k in en and _names(m) != _names(en[k])]
