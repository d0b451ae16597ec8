"""Show examples as tokens with the trained part marked: "is my data right?" at a glance."""
from __future__ import annotations

from typing import Any

from .encode import IGNORE


def render_example(tok, input_ids: list[int], labels: list[int], *, style: str = "text") -> str:
    """Text with trained spans marked: ``[[...]]`` in plain text, or green/grey spans in HTML."""
    out, cur, cur_trained = [], [], None

    def flush():
        if not cur:
            return
        text = tok.decode(cur, skip_special_tokens=False)
        if style == "html":
            import html
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


def preview(config: Any = None, n: int = 2, *, tokenizer=None, style: str = "text", **overrides) -> list[dict]:
    """Encode the first ``n`` training examples of ``config`` and return (and print) them.

    Each item has ``input_ids``, ``labels``, ``n_tokens``, ``n_trained`` and ``rendered`` (trained
    spans in ``[[...]]`` or highlighted HTML).
    """
    from ..config import RunConfig
    from ..models import load_tokenizer
    from .pipeline import load_splits, ENCODERS
    from ..stages import get_recipe

    cfg = RunConfig.coerce(config, **overrides)
    tok = tokenizer or load_tokenizer(cfg.model)
    kind = get_recipe(cfg.stage.name).data_kind
    rows, _ = load_splits(cfg.replace(data__shuffle=False), kind)
    rows = rows[:n]
    if kind in ENCODERS:
        encoded = ENCODERS[kind](rows, tok, cfg.data, False)[:n]
    else:
        encoded = [_encode_other(r, tok, cfg, kind) for r in rows]
    items = []
    for e in encoded:
        items.append({"input_ids": e["input_ids"], "labels": e["labels"], "n_tokens": len(e["input_ids"]),
                      "n_trained": sum(1 for x in e["labels"] if x != IGNORE),
                      "rendered": render_example(tok, e["input_ids"], e["labels"], style=style)})
    return items


def _encode_other(row: dict, tok, cfg, kind: str) -> dict:
    """Preference/KTO/prompt rows: show the chosen (or only) conversation with its answer marked."""
    from .encode import encode_chat, encode_prompt

    if kind == "preference":
        return encode_chat(tok, row["prompt"] + row["chosen"], cfg.data.cutoff_len)
    if kind == "kto":
        return encode_chat(tok, row["messages"], cfg.data.cutoff_len)
    ids = encode_prompt(tok, row["prompt"])
    return {"input_ids": ids, "labels": [IGNORE] * len(ids)}
