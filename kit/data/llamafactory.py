"""Bring your LLaMA-Factory data: a ``dataset_info.json`` read as our dataset registry.

``data.dataset_dir`` names the folder that holds it (LLaMA-Factory's own ``data/`` layout); each
entry becomes a dataset name here. An entry reads from ``hf_hub_url`` (a Hub id, with ``subset``,
``split``, ``folder``), or ``file_name`` (a file or folder relative to ``dataset_dir``);
``ms_hub_url`` alone (ModelScope) and ``script_url`` (a loading script: code) are refused with a
message. ``formatting`` alpaca / sharegpt / openai, ``columns`` and ``tags`` map the user's column
names and role names onto our formats; ``ranking: true`` makes preference rows (chosen/rejected),
a ``kto_tag`` column KTO rows, an alpaca entry with no response column pre-training text. The rows
then go through our row checks; errors name the file, row and the user's own column name.
``num_samples`` keeps that many rows (a seeded sample; repeated rows when it exceeds the set).
A function-call turn (``function_tag``) becomes an assistant turn holding the call's text.
"""

from __future__ import annotations

import json
import os
import random
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Optional

from .formats import DataError, norm_alpaca
from .hub import HubOptions, HubSource
from .readers import read_file

ALPACA_COLUMNS = {
    "prompt": "instruction",
    "query": "input",
    "response": "output",
    "history": None,
    "system": None,
    "tools": None,
    "chosen": None,
    "rejected": None,
    "kto_tag": None,
}
SHAREGPT_COLUMNS = {
    "messages": "conversations",
    "system": None,
    "tools": None,
    "chosen": None,
    "rejected": None,
    "kto_tag": None,
}
TAGS = {
    "sharegpt": {
        "role_tag": "from",
        "content_tag": "value",
        "user_tag": "human",
        "assistant_tag": "gpt",
        "observation_tag": "observation",
        "function_tag": "function_call",
        "system_tag": "system",
    },
    "openai": {
        "role_tag": "role",
        "content_tag": "content",
        "user_tag": "user",
        "assistant_tag": "assistant",
        "observation_tag": "tool",
        "function_tag": "function",
        "system_tag": "system",
    },
}
FORMATTINGS = ("alpaca", "sharegpt", "openai")

_CACHE: dict[tuple, dict] = {}


def load_dataset_info(dataset_dir: str | os.PathLike, opts: Optional[HubOptions] = None) -> dict:
    """``{name: (source, format, description)}`` for every entry of ``dataset_dir/dataset_info.json``
    (cached by the file's mtime and the options); :func:`kit.data.registry.get_spec` makes the specs."""
    folder = Path(dataset_dir).expanduser()
    info = folder / "dataset_info.json" if folder.is_dir() else folder
    if not info.is_file():
        raise DataError("data.dataset_dir must be a folder holding a LLaMA-Factory dataset_info.json", str(info))
    opts = opts or HubOptions()
    key = (str(info.resolve()), info.stat().st_mtime_ns, opts.key())
    if key in _CACHE:
        return _CACHE[key]
    try:
        data = json.loads(info.read_text(encoding="utf-8-sig"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"cannot parse dataset_info.json: {e}", str(info)) from None
    if not isinstance(data, dict):
        raise DataError("dataset_info.json must map dataset names to their descriptions", str(info))
    out = {}
    for name, entry in data.items():
        if not isinstance(entry, dict):
            raise DataError("each entry must be an object", str(info), field=str(name))
        source, fmt = _entry_source(str(name), entry, info, opts)
        out[str(name)] = (source, fmt, f"LLaMA-Factory entry in {info}")
    _CACHE[key] = out
    return out


@dataclass(frozen=True)
class _FileSource:
    path: str
    convert: Callable

    def read_rows(self) -> tuple[list[dict], str]:
        return self.convert(read_file(self.path), self.path), self.path


def _entry_source(name: str, e: dict, info: Path, opts: HubOptions):
    where = str(info)
    formatting = e.get("formatting", "alpaca")
    if formatting not in FORMATTINGS:
        raise DataError(
            f"formatting {formatting!r}: expected one of {', '.join(FORMATTINGS)}", where, field=f"{name}.formatting"
        )
    ranking = bool(e.get("ranking", False))
    cols_given = e.get("columns") or {}
    tags_given = e.get("tags") or {}
    if not isinstance(cols_given, dict) or not isinstance(tags_given, dict):
        raise DataError("columns and tags must be objects", where, field=name)
    defaults = ALPACA_COLUMNS if formatting == "alpaca" else SHAREGPT_COLUMNS
    unknown = sorted(set(cols_given) - set(defaults))
    if unknown:
        raise DataError(
            f"unknown column keys {unknown} for {formatting} (known: {', '.join(defaults)})",
            where,
            field=f"{name}.columns",
        )
    # LLaMA-Factory's own entries name chosen/rejected explicitly; a ranking entry without them means these
    cols = {**defaults, **({"chosen": "chosen", "rejected": "rejected"} if ranking else {}), **cols_given}
    tags = {**TAGS.get(formatting, TAGS["sharegpt"]), **tags_given}
    n = e.get("num_samples")
    if n is not None and (not isinstance(n, int) or isinstance(n, bool) or n < 1):
        raise DataError(f"num_samples must be a positive integer, got {n!r}", where, field=f"{name}.num_samples")
    convert = _converter(name, formatting, ranking, cols, tags, n)
    fmt = "preference" if ranking else ("kto" if cols.get("kto_tag") else "auto")  # auto: messages or text
    split = e.get("split") or "train"
    if e.get("hf_hub_url"):
        o = replace(
            opts,
            subset=e.get("subset") or None,
            split=split,
            data_dir=e.get("folder") or None,
            data_files=None,
            revision=e.get("revision") or opts.revision,
        )
        return HubSource(e["hf_hub_url"], o, convert=convert), fmt
    if e.get("ms_hub_url"):
        raise DataError(
            "ModelScope datasets (ms_hub_url) are not read here: give hf_hub_url, or download it and give file_name",
            where,
            field=name,
        )
    if e.get("script_url"):
        raise DataError(
            "loading scripts (script_url) run code and are not read: convert the data to a file and give file_name",
            where,
            field=name,
        )
    if not e.get("file_name"):
        raise DataError("needs file_name or hf_hub_url", where, field=name)
    path = Path(e["file_name"])
    if not path.is_absolute():
        path = info.parent / path
    if path.is_dir():
        o = replace(opts, subset=None, split=split, data_dir=None, data_files=None, streaming=False)
        return HubSource(str(path), o, folder=str(path), convert=convert), fmt
    return _FileSource(str(path), convert), fmt


def _converter(name: str, formatting: str, ranking: bool, cols: dict, tags: dict, n: Optional[int]) -> Callable:
    def convert(rows: list[dict], source: str) -> list[dict]:
        if n is not None and rows:
            order = list(range(len(rows)))
            random.Random(0).shuffle(order)
            while len(order) < n:  # more asked than the set holds: repeat it
                order += order[: n - len(order)]
            rows = [rows[i] for i in order[:n]]
        one = _alpaca_row if formatting == "alpaca" else _chat_row
        text = (
            formatting == "alpaca"
            and not ranking
            and rows
            and isinstance(rows[0], dict)
            and cols["response"] not in rows[0]
            and not cols.get("kto_tag")
        )
        out = []
        for i, r in enumerate(rows):
            if not isinstance(r, dict):
                raise DataError(f"expected an object per row, got {type(r).__name__}", source, i)
            if text:
                out.append({"text": r.get(cols["prompt"])})
            else:
                out.append(one(r, source, i, ranking, cols, tags))
        return out

    return convert


def _get(r: dict, cols: dict, key: str) -> Any:
    col = cols.get(key)
    return r.get(col) if col else None


def _alpaca_row(r: dict, source: str, i: int, ranking: bool, cols: dict, tags: dict) -> dict:
    ours = {
        "instruction": _get(r, cols, "prompt") or "",
        "input": _get(r, cols, "query") or "",
        "system": _get(r, cols, "system"),
        "history": _get(r, cols, "history"),
    }
    if isinstance(ours["history"], str):  # CSV / Parquet cell
        ours["history"] = _json(ours["history"], source, i, cols["history"])
    ours["output"] = _get(r, cols, "chosen") if ranking else _get(r, cols, "response")
    back = {
        "instruction": cols["prompt"],
        "input": cols["query"],
        "output": cols["chosen" if ranking else "response"],
        "system": cols["system"],
        "history": cols["history"],
    }
    try:
        msgs = norm_alpaca({k: v for k, v in ours.items() if v is not None}, source, i)["messages"]
    except DataError as err:  # name the user's own column
        field = err.field or ""
        head, sep, rest = field.partition("[")
        raise DataError(err.reason, source, i, (back.get(head) or head) + sep + rest) from None
    if ranking:
        return {"prompt": msgs[:-1], "chosen": msgs[-1]["content"], "rejected": _get(r, cols, "rejected")}
    if cols.get("kto_tag"):
        return {"messages": msgs, "label": _get(r, cols, "kto_tag")}
    return {"messages": msgs}


def _json(v: str, source: str, i: int, field: str) -> Any:
    try:
        return json.loads(v)
    except ValueError:
        raise DataError("expected a JSON list", source, i, field) from None


def _turn(t: Any, source: str, i: int, field: str, tags: dict) -> dict:
    roles = {
        tags["user_tag"]: "user",
        tags["assistant_tag"]: "assistant",
        tags["observation_tag"]: "tool",
        tags["function_tag"]: "assistant",
        tags["system_tag"]: "system",
    }
    if not isinstance(t, dict):
        raise DataError(f"expected a turn object with {tags['role_tag']}/{tags['content_tag']}", source, i, field)
    role = t.get(tags["role_tag"])
    if role not in roles:
        raise DataError(
            f"'{tags['role_tag']}' is {role!r}; this entry's tags allow {', '.join(map(repr, roles))}",
            source,
            i,
            f"{field}.{tags['role_tag']}",
        )
    content = t.get(tags["content_tag"])
    if not isinstance(content, str):
        raise DataError("missing or non-string content", source, i, f"{field}.{tags['content_tag']}")
    return {"role": roles[role], "content": content}


def _chat_row(r: dict, source: str, i: int, ranking: bool, cols: dict, tags: dict) -> dict:
    col = cols["messages"]
    conv = r.get(col)
    if isinstance(conv, str):
        conv = _json(conv, source, i, col)
    if not isinstance(conv, list) or not conv:
        raise DataError("expected a non-empty list of turns", source, i, col)
    msgs = [_turn(t, source, i, f"{col}[{j}]", tags) for j, t in enumerate(conv)]
    system = _get(r, cols, "system")
    if system:
        if msgs[0]["role"] == "system":
            raise DataError("system given both as a column and as the first turn", source, i, cols["system"])
        msgs.insert(0, {"role": "system", "content": system})
    out: dict[str, Any] = {}
    tools = _get(r, cols, "tools")
    if tools:
        out["tools"] = _json(tools, source, i, cols["tools"]) if isinstance(tools, str) else tools
    if ranking:
        for k in ("chosen", "rejected"):
            v = _get(r, cols, k)
            if isinstance(v, str) and cols.get(k):
                v = _json(v, source, i, cols[k])
            out[k] = [_turn(v, source, i, cols.get(k) or k, tags)]
        out["prompt"] = msgs
        return out
    out["messages"] = msgs
    if cols.get("kto_tag"):
        out["label"] = _get(r, cols, "kto_tag")
    return out
