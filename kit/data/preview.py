"""Render encoded examples as text with the trained part marked: "is my data right?" at a glance.

This is the data layer's half of a preview: given rows of a *kind* and a tokenizer, encode and
render them. Choosing the kind from the stage and loading the tokenizer is :func:`kit.preview.preview`.
"""

from __future__ import annotations

import html

from ..config import RunConfig
from .encode import IGNORE, encode_chat, encode_prompt
from .pipeline import ENCODERS


def render_example(tok, input_ids: list[int], labels: list[int], *, style: str = "text") -> str:
    """Text with trained spans marked: ``[[...]]`` in plain text, or green/grey spans in HTML."""
    out, cur, cur_trained = [], [], None

    def flush():
        if not cur:
            return
        text = tok.decode(cur, skip_special_tokens=False)
        if style == "html":
            color = "#c8f7c5" if cur_trained else "#eeeeee"
            out.append(f'<span style="background:{color};white-space:pre-wrap">{html.escape(text)}</span>')
        else:
            out.append(f"[[{text}]]" if cur_trained else text)

    for t, lab in zip(input_ids, labels):
        trained = lab != IGNORE
        if trained != cur_trained:
            flush()
            cur, cur_trained = [], trained
        cur.append(t)
    flush()
    return "".join(out)


def preview_examples(rows: list[dict], tok, cfg: RunConfig, kind: str, *, style: str = "text") -> list[dict]:
    """Encode normalised ``rows`` of ``kind`` as training would and render each.

    Each item has ``input_ids``, ``labels``, ``n_tokens``, ``n_trained`` and ``rendered`` (trained
    spans in ``[[...]]`` or highlighted HTML).
    """
    if kind in ENCODERS:
        encoded = ENCODERS[kind](rows, tok, cfg.data, False)[: len(rows)]
    else:
        encoded = [_encode_other(r, tok, cfg, kind) for r in rows]
    return [
        {
            "input_ids": e["input_ids"],
            "labels": e["labels"],
            "n_tokens": len(e["input_ids"]),
            "n_trained": sum(1 for x in e["labels"] if x != IGNORE),
            "rendered": render_example(tok, e["input_ids"], e["labels"], style=style),
        }
        for e in encoded
    ]


def _encode_other(row: dict, tok, cfg: RunConfig, kind: str) -> dict:
    """Preference/KTO/prompt rows: show the chosen (or only) conversation with its answer marked."""
    if kind == "preference":
        return encode_chat(tok, row["prompt"] + row["chosen"], cfg.data.cutoff_len)
    if kind == "kto":
        return encode_chat(tok, row["messages"], cfg.data.cutoff_len)
    ids = encode_prompt(tok, row["prompt"])
    return {"input_ids": ids, "labels": [IGNORE] * len(ids)}
