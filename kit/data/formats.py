"""Row formats: detect them, validate each row, and normalise to one internal shape.

Internal shapes (what encoders and stages consume):

* ``sft``:        ``{"messages": [{"role", "content"}...], "tools": [...]?}``
* ``text``:       ``{"text": str}``
* ``preference``: ``{"prompt": [messages], "chosen": [messages], "rejected": [messages]}``
* ``kto``:        ``{"messages": [...], "label": bool}``
* ``prompt``:     ``{"prompt": [messages], "answer": str | None}``

Every problem raises :class:`DataError` naming the file, the row index and the field.
"""
from __future__ import annotations

from typing import Any, Callable, Optional


class DataError(ValueError):
    """A bad row: the message names the source file, the 0-based row index and the field."""

    def __init__(self, message: str, source: str = "<data>", row: Optional[int] = None, field: Optional[str] = None):
        self.source, self.row, self.field = source, row, field
        where = source
        if row is not None:
            where += f", row {row}"
        if field is not None:
            where += f", field '{field}'"
        super().__init__(f"{where}: {message}")


ROLES = ("system", "user", "assistant", "tool")
SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system",
                  "function_call": "assistant", "observation": "tool", "tool": "tool"}

# which internal kind each format produces
FORMAT_KIND = {"alpaca": "sft", "messages": "sft", "sharegpt": "sft", "text": "text",
               "preference": "preference", "kto": "kto", "prompt": "prompt"}


def detect_format(columns: list[str], source: str = "<data>") -> str:
    """Guess the format from the column names of the first row."""
    cols = set(columns)
    if {"chosen", "rejected"} <= cols:
        return "preference"
    if ("messages" in cols or "completion" in cols) and "label" in cols:
        return "kto"
    if "messages" in cols:
        return "messages"
    if "conversations" in cols:
        return "sharegpt"
    if "instruction" in cols and "output" in cols:
        return "alpaca"
    if "text" in cols:
        return "text"
    if "prompt" in cols:
        return "prompt"
    raise DataError(
        f"cannot tell the format from the columns {sorted(cols)}. Expected one of: alpaca (instruction, input, output), "
        "messages (messages), sharegpt (conversations), preference (prompt, chosen, rejected), "
        "kto (messages, label), text (text), prompt (prompt). Set data.format to be explicit.", source)


def _need(row: dict, key: str, source: str, idx: int, types=(str,)) -> Any:
    if key not in row or row[key] is None:
        raise DataError("missing field", source, idx, key)
    v = row[key]
    if not isinstance(v, types):
        raise DataError(f"expected {'/'.join(t.__name__ for t in types)}, got {type(v).__name__}", source, idx, key)
    return v


def check_messages(msgs: Any, source: str, idx: int, field: str = "messages", *, need_answer: bool = True) -> list[dict]:
    """Validate a chat: optional system first, then user/assistant alternating (tool turns after an
    assistant tool call), ending with a non-empty assistant answer when ``need_answer``."""
    if not isinstance(msgs, list) or not msgs:
        raise DataError("expected a non-empty list of messages", source, idx, field)
    out = []
    for j, m in enumerate(msgs):
        f = f"{field}[{j}]"
        if not isinstance(m, dict):
            raise DataError(f"expected a message object, got {type(m).__name__}", source, idx, f)
        role = m.get("role")
        if role not in ROLES:
            raise DataError(f"role {role!r} is not one of {', '.join(ROLES)}", source, idx, f + ".role")
        content = m.get("content")
        if content is None and not m.get("tool_calls"):
            raise DataError("missing content", source, idx, f + ".content")
        if content is not None and not isinstance(content, str):
            raise DataError(f"content must be a string, got {type(content).__name__}", source, idx, f + ".content")
        msg = {"role": role, "content": content if content is not None else ""}
        for extra in ("tool_calls", "name", "tool_call_id"):
            if m.get(extra) is not None:
                msg[extra] = m[extra]
        out.append(msg)
    # role order
    start = 1 if out[0]["role"] == "system" else 0
    if any(m["role"] == "system" for m in out[start:]):
        j = next(k for k in range(start, len(out)) if out[k]["role"] == "system")
        raise DataError("a system message may only come first", source, idx, f"{field}[{j}].role")
    if start >= len(out):
        raise DataError("only a system message; a conversation needs a user turn", source, idx, field)
    expected = "user"
    for j in range(start, len(out)):
        role = out[j]["role"]
        if role == "tool":
            if out[j - 1]["role"] not in ("assistant", "tool"):
                raise DataError("a tool message must follow an assistant message", source, idx, f"{field}[{j}].role")
            expected = "assistant"
            continue
        if role != expected and not (role == "assistant" and out[j - 1]["role"] == "tool"):
            raise DataError(f"expected role '{expected}' here (turns must alternate user/assistant), got '{role}'",
                            source, idx, f"{field}[{j}].role")
        expected = "assistant" if role == "user" else "user"
    if need_answer:
        last = out[-1]
        if last["role"] != "assistant":
            raise DataError("the conversation must end with an assistant answer", source, idx, f"{field}[{len(out) - 1}].role")
        for j, m in enumerate(out):
            if m["role"] == "assistant" and not m["content"].strip() and not m.get("tool_calls"):
                raise DataError("empty assistant answer", source, idx, f"{field}[{j}].content")
    return out


# ----------------------------------------------------------------- per-format normalisers


def norm_alpaca(row: dict, source: str, idx: int) -> dict:
    instruction = _need(row, "instruction", source, idx)
    inp = row.get("input") or ""
    if not isinstance(inp, str):
        raise DataError(f"expected str, got {type(inp).__name__}", source, idx, "input")
    output = _need(row, "output", source, idx)
    if not output.strip():
        raise DataError("empty answer", source, idx, "output")
    if not (instruction.strip() or inp.strip()):
        raise DataError("empty instruction and input", source, idx, "instruction")
    msgs = []
    if row.get("system"):
        msgs.append({"role": "system", "content": _need(row, "system", source, idx)})
    for j, pair in enumerate(row.get("history") or []):
        if not (isinstance(pair, (list, tuple)) and len(pair) == 2 and all(isinstance(x, str) for x in pair)):
            raise DataError("each history item must be [question, answer] strings", source, idx, f"history[{j}]")
        msgs += [{"role": "user", "content": pair[0]}, {"role": "assistant", "content": pair[1]}]
    prompt = instruction if not inp else (f"{instruction}\n\n{inp}" if instruction else inp)
    msgs += [{"role": "user", "content": prompt}, {"role": "assistant", "content": output}]
    return {"messages": msgs}


def norm_messages(row: dict, source: str, idx: int) -> dict:
    msgs = check_messages(row.get("messages"), source, idx, "messages")
    out: dict[str, Any] = {"messages": msgs}
    if row.get("system"):
        if msgs[0]["role"] == "system":
            raise DataError("system given both as a column and as the first message", source, idx, "system")
        out["messages"] = [{"role": "system", "content": row["system"]}] + msgs
    if row.get("tools"):
        out["tools"] = row["tools"]
    return out


def sharegpt_to_messages(conv: Any, source: str, idx: int, field: str = "conversations") -> list[dict]:
    if not isinstance(conv, list) or not conv:
        raise DataError("expected a non-empty list of turns", source, idx, field)
    msgs = []
    for j, t in enumerate(conv):
        if not isinstance(t, dict):
            raise DataError("expected a turn object with from/value", source, idx, f"{field}[{j}]")
        frm = t.get("from")
        if frm not in SHAREGPT_ROLES:
            raise DataError(f"'from' is {frm!r}; expected one of {', '.join(SHAREGPT_ROLES)}", source, idx, f"{field}[{j}].from")
        if not isinstance(t.get("value"), str):
            raise DataError("missing or non-string value", source, idx, f"{field}[{j}].value")
        msgs.append({"role": SHAREGPT_ROLES[frm], "content": t["value"]})
    return msgs


def norm_sharegpt(row: dict, source: str, idx: int) -> dict:
    msgs = sharegpt_to_messages(row.get("conversations"), source, idx)
    if row.get("system"):
        msgs = [{"role": "system", "content": row["system"]}] + msgs
    out: dict[str, Any] = {"messages": check_messages(msgs, source, idx, "conversations")}
    if row.get("tools"):
        out["tools"] = row["tools"]
    return out


def norm_text(row: dict, source: str, idx: int) -> dict:
    text = _need(row, "text", source, idx)
    if not text.strip():
        raise DataError("empty text", source, idx, "text")
    return {"text": text}


def _as_messages(v: Any, source: str, idx: int, field: str, default_role: str) -> list[dict]:
    """A string or a message list (preference / prompt formats accept both)."""
    if isinstance(v, str):
        if not v.strip():
            raise DataError("empty text", source, idx, field)
        return [{"role": default_role, "content": v}]
    if isinstance(v, list):
        return check_messages(v, source, idx, field, need_answer=False)
    raise DataError(f"expected a string or a list of messages, got {type(v).__name__}", source, idx, field)


def norm_preference(row: dict, source: str, idx: int) -> dict:
    if "prompt" not in row and isinstance(row.get("chosen"), list):
        # implicit prompt: chosen/rejected are full conversations sharing all but the last turn
        chosen = check_messages(row["chosen"], source, idx, "chosen")
        rejected = check_messages(_need(row, "rejected", source, idx, (list,)), source, idx, "rejected")
        return {"prompt": chosen[:-1], "chosen": chosen[-1:], "rejected": rejected[-1:]}
    prompt = _as_messages(_need(row, "prompt", source, idx, (str, list)), source, idx, "prompt", "user")
    if prompt[-1]["role"] != "user":
        raise DataError("the prompt must end with a user turn", source, idx, "prompt")
    out = {"prompt": prompt}
    for k in ("chosen", "rejected"):
        msgs = _as_messages(_need(row, k, source, idx, (str, list)), source, idx, k, "assistant")
        if msgs[-1]["role"] != "assistant" or not msgs[-1]["content"].strip():
            raise DataError("must be a non-empty assistant answer", source, idx, k)
        out[k] = msgs
    if out["chosen"] == out["rejected"]:
        raise DataError("chosen and rejected are identical", source, idx, "rejected")
    return out


def norm_kto(row: dict, source: str, idx: int) -> dict:
    label = row.get("label")
    if not isinstance(label, bool):
        if label in (0, 1) and not isinstance(label, float):
            label = bool(label)
        else:
            raise DataError(f"expected true/false, got {label!r}", source, idx, "label")
    if "messages" in row:
        msgs = check_messages(row["messages"], source, idx, "messages")
    else:
        prompt = _as_messages(_need(row, "prompt", source, idx, (str, list)), source, idx, "prompt", "user")
        comp = _as_messages(_need(row, "completion", source, idx, (str, list)), source, idx, "completion", "assistant")
        msgs = check_messages(prompt + comp, source, idx, "completion")
    return {"messages": msgs, "label": label}


def norm_prompt(row: dict, source: str, idx: int) -> dict:
    prompt = _as_messages(_need(row, "prompt", source, idx, (str, list)), source, idx, "prompt", "user")
    if prompt[-1]["role"] != "user":
        raise DataError("the prompt must end with a user turn", source, idx, "prompt")
    answer = row.get("answer", row.get("solution"))
    if answer is not None and not isinstance(answer, (str, int, float)):
        raise DataError("answer must be a string or number", source, idx, "answer")
    return {"prompt": prompt, "answer": None if answer is None else str(answer)}


NORMALISERS: dict[str, Callable[[dict, str, int], dict]] = {
    "alpaca": norm_alpaca, "messages": norm_messages, "sharegpt": norm_sharegpt, "text": norm_text,
    "preference": norm_preference, "kto": norm_kto, "prompt": norm_prompt,
}


def normalise_rows(rows: list[dict], fmt: str, source: str, offset: int = 0) -> list[dict]:
    """Validate and normalise every row; errors name ``source`` and the row index."""
    fn = NORMALISERS[fmt]
    out = []
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise DataError(f"expected an object per row, got {type(row).__name__}", source, i + offset)
        out.append(fn(row, source, i + offset))
    return out
