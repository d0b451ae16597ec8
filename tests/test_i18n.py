"""The UI catalogue: every text the widgets show has a translation, and the Board shows them.

Static checks walk the catalogue (kit/i18n) against the widget code (kit/widgets, read with ast)
and every config field; the Board checks build a real board in Chinese and look at every text a
user sees (labels, tooltips, placeholders, tab titles, buttons, status lines).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from kit import i18n
from kit.config import field_help as config_help
from kit.i18n import en

ROOT = Path(__file__).resolve().parent.parent
WIDGETS = sorted((ROOT / "kit" / "widgets").glob("*.py")) + [ROOT / "kit" / "i18n" / "__init__.py"]
TRANSLATED = [code for code in i18n.LANGUAGES if code != "en"]
CJK = re.compile(r"[\u3400-\u9fff\uff00-\uffef\u3000-\u303f]")


@pytest.mark.parametrize("lang", TRANSLATED)
def test_every_message_and_config_field_is_translated(lang):
    assert i18n.missing(lang) == [], f"{lang} lacks translations"
    assert i18n.unknown(lang) == [], f"{lang} translates keys that no longer exist"
    # the English a help text was translated from is still kit.config's: else the translation is out of date
    assert i18n.stale(lang) == [], f"kit.config's help changed since it was translated to {lang}: update them"
    assert i18n.placeholder_mismatches(lang) == [], "a translation must keep the English {fields}"
    for dotted in i18n.config_fields():
        if i18n.english_help(dotted):
            assert CJK.search(i18n.field_help(dotted, lang)), dotted
        assert CJK.search(i18n.field_label(dotted, lang)), f"label of {dotted} is not translated"


def test_english_help_is_kit_configs_own_text():
    for dotted in i18n.config_fields():
        assert i18n.field_help(dotted, "en") == config_help(dotted)
    # "Used by" is appended the way kit.config appends it (the en message is its source for translators)
    knob = next(d for d in i18n.config_fields() if "Used by" in config_help(d))
    from kit.config import used_by

    assert config_help(knob).endswith(" " + i18n.text("field.used_by", "en", stages=used_by(knob)))
    assert "适用阶段" in i18n.field_help(knob, "zh") and used_by(knob) in i18n.field_help(knob, "zh")


def _calls(tree: ast.AST):
    """(message keys in t("...")-style calls, f-string key prefixes, constant keyword texts of widget constructors)."""
    keys, prefixes, hard_coded = set(), set(), []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
        args = list(node.args)
        if name == "bind":
            args = args[2:3]
        elif name not in ("t", "text"):
            args = []
        for a in args:
            if isinstance(a, ast.Constant) and isinstance(a.value, str):
                keys.add(a.value)
            elif isinstance(a, ast.JoinedStr) and a.values and isinstance(a.values[0], ast.Constant):
                prefixes.add(a.values[0].value)
        for kw in node.keywords:  # Button(description="Start") would bypass the catalogue
            if (
                kw.arg in ("description", "placeholder", "tooltip", "description_tooltip", "titles")
                and isinstance(kw.value, ast.Constant)
                and kw.value.value
            ):
                hard_coded.append(f"{name}({kw.arg}={kw.value.value!r}) line {node.lineno}")
    return keys, prefixes, hard_coded


def test_widget_code_takes_every_text_from_the_catalogue():
    keys, prefixes, hard_coded = set(), set(), []
    literals = set()
    for path in WIDGETS:
        tree = ast.parse(path.read_text(), str(path))
        k, p, h = _calls(tree)
        keys |= k
        prefixes |= p
        hard_coded += [f"{path.name}: {x}" for x in h]
        literals |= {n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)}
    assert hard_coded == [], "texts given to widgets must come from kit/i18n"
    assert sorted(k for k in keys if k not in en.MESSAGES) == [], "keys used by the widgets but not in kit/i18n/en.py"
    assert {p for p in prefixes if "." in p}, "the scan found no f-string keys: it is broken"
    # every message is used somewhere: literally, or through an f-string key such as f"train.status_{kind}"
    unused = [k for k in en.MESSAGES if k not in literals and not any("." in p and k.startswith(p) for p in prefixes)]
    assert unused == [], "messages no widget shows"


def test_language_choice(monkeypatch):
    monkeypatch.delenv("FORGE_LANG", raising=False)
    assert i18n.language() == "en"
    monkeypatch.setenv("FORGE_LANG", "zh_CN")
    assert i18n.language() == "zh" and i18n.language("en-US") == "en"
    i18n.set_language("en")
    try:
        assert i18n.language() == "en" and i18n.text("tab.quant") == "Quantization"
    finally:
        i18n.set_language(None)
    assert i18n.text("tab.quant") == "量化"
    with pytest.raises(i18n.LanguageError, match="choose one of en, zh"):
        i18n.language("fr")
    with pytest.raises(KeyError):
        i18n.text("no.such.key")
    assert i18n.text("train.status_stopped", "zh", step=7) == "状态：已在第 7 步停止"


# ---------------------------------------------------------------- a board in Chinese

NEUTRAL = {"YAML", "GGUF", "GGUF f16", "GGUF q8_0"}  # names that read the same in every language


def _texts(widget, seen=None):
    """Every (where, text) a user reads in ``widget`` and its children."""
    import ipywidgets as W

    from kit.widgets.compat import titles, tooltip

    seen = set() if seen is None else seen
    if id(widget) in seen:
        return []
    seen.add(id(widget))
    out = []
    for attr in ("description", "placeholder"):
        if widget.has_trait(attr) and getattr(widget, attr).strip("\u200b \n"):  # HTML's default placeholder: U+200B
            out.append((f"{type(widget).__name__}.{attr}", getattr(widget, attr)))
    if tooltip(widget):
        out.append((f"{type(widget).__name__}.tooltip", tooltip(widget)))
    if isinstance(widget, (W.Tab, W.Accordion)):
        out += [("title", t) for t in titles(widget)]
    if isinstance(widget, W.HTML) and "<style>" not in widget.value and "<svg" not in widget.value:
        text = re.sub(r"<[^>]+>|&\w+;", " ", widget.value).strip()
        if text:
            out.append(("html", text))
    for child in getattr(widget, "children", ()):
        out += _texts(child, seen)
    return out


def test_board_in_chinese_shows_every_text_in_chinese(tiny_model_dir):
    import kit

    board = kit.Board(kit.RunConfig.from_kwargs(model=str(tiny_model_dir)), backend="svg", lang="zh")
    # the stage panel shows one stage's knobs at a time: show every stage's
    shown = []
    for stage in ("sft", "dpo", "kto", "grpo", "ppo"):
        board.stage.form["stage.name"].widget.value = stage
        shown += _texts(board.widget)
    english = [(where, text) for where, text in shown if text not in NEUTRAL and not CJK.search(text)]
    assert english == [], "untranslated texts on the Chinese board"
    assert len({text for _, text in shown}) > 120  # it really walked the board
    fields = [f for p in board.config_panels for f in p.form.fields.values()]
    assert all(CJK.search(f.help) for f in fields)
    assert board.tabs.get_title(1) == "量化" and board.language.value == "zh"
    assert "<svg" in board.train.plot.widget.value and "损失" in board.train.plot.widget.value

    # the picker switches everything back, and forth
    board.language.value = "en"
    assert board.tabs.get_title(1) == "Quantization" and board.train.start_button.description == "Start"
    assert board.model.form["model.dtype"].help == config_help("model.dtype")
    assert board.train.status.value == "status: idle" and "loss" in board.train.plot.widget.value
    assert board.quant.form["quant.bits"].widget.options[0] == ("none", None)
    board.quant.form["quant.bits"].value = 4
    board.set_language("zh")
    assert board.language.value == "zh" and board.train.start_button.description == "开始"
    assert board.quant.form["quant.bits"].widget.options[0] == ("无", None)
    assert board.quant.form["quant.bits"].value == 4  # relabelled options keep the choice
