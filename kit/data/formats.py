"""Row formats: detect them, validate each row, and normalise to one internal shape.

Internal shapes (what encoders and stages consume):

* ``sft``:        ``{"messages": [{"role", "content"}...], "tools": [...]?}``
* ``text``:       ``{"text": str}``
* ``preference``: ``{"prompt": [messages], "chosen": [messages], "rejected": [messages]}``
* ``kto``:        ``{"messages": [...], "label": bool}``
* ``prompt``:     ``{"prompt": [messages], "answer": str | None}``

Every problem raises :class:`DataError` naming the file, the row index and the field. A value of
the wrong type is refused, never dropped or guessed at (``"input": 0`` is an error, not an empty
input), and so is a turn that would train on nothing (an empty user or assistant turn).
"""

from __future__ import annotations

import json
import math
import re
from typing import Any, Callable, Iterable, Iterator, Optional

from ..errors import ForgeError, with_place


class DataError(ForgeError, ValueError):
    """A bad file or row: the message names the source file, the 0-based row index and the field
    (and the 1-based ``line`` of the file where that differs from the row, e.g. JSONL or CSV)."""

    def __init__(
        self,
        message: str,
        source: str = "<data>",
        row: Optional[int] = None,
        field: Optional[str] = None,
        line: Optional[int] = None,
    ):
        self.source, self.row, self.field, self.line = source, row, field, line
        self.reason = message
        super().__init__(with_place(message, source, row, field, line))


class Row(dict):
    """A normalised row that remembers where it came from, so a later step (encoding with the chat
    template, after mixing and shuffling) can still name the file and row. It compares equal to a
    plain dict with the same content."""

    origin: tuple[str, Optional[int]] = ("<data>", None)


def origin_of(row: dict) -> tuple[str, Optional[int]]:
    """(source, row index) of a normalised row; ``("<data>", None)`` for rows built elsewhere."""
    return getattr(row, "origin", ("<data>", None))


ROLES = ("system", "user", "assistant", "tool")
SHAREGPT_ROLES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "system": "system",
    "function_call": "assistant",
    "observation": "tool",
    "tool": "tool",
}

# which internal kind each format produces
FORMAT_KIND = {
    "alpaca": "sft",
    "messages": "sft",
    "sharegpt": "sft",
    "text": "text",
    "preference": "preference",
    "kto": "kto",
    "prompt": "prompt",
}

# The formats' schema for files that store cells as text (CSV) or flat columns (Parquet strings):
# these columns always hold lists or objects, stored as JSON text ...
JSON_COLUMNS = frozenset({"messages", "conversations", "tools", "history", "choices"})
# ... these hold either plain text or a list of messages (preference, kto and prompt formats) ...
TEXT_OR_MESSAGES_COLUMNS = frozenset({"prompt", "chosen", "rejected", "completion"})
# ... and this one a boolean. Every other column is text and is never JSON-decoded (an answer
# that happens to be JSON text stays the answer).
BOOL_COLUMNS = frozenset({"label"})


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
        f"cannot tell the format from the columns {sorted(map(str, cols))}. Expected one of: alpaca (instruction, "
        "input, output), messages (messages), sharegpt (conversations), preference (prompt, chosen, rejected), "
        "kto (messages, label), text (text), prompt (prompt). Set data.format to be explicit.",
        source,
    )


def _tname(v: Any) -> str:
    return "null" if v is None else type(v).__name__


def _need(row: dict, key: str, source: str, idx: int, types=(str,)) -> Any:
    if key not in row or row[key] is None:
        raise DataError("missing field", source, idx, key)
    v = row[key]
    if not isinstance(v, types) or isinstance(v, bool) and bool not in types:
        raise DataError(f"expected {'/'.join(t.__name__ for t in types)}, got {_tname(v)}", source, idx, key)
    return v


def _opt_text(row: dict, key: str, source: str, idx: int) -> Optional[str]:
    """An optional text field: missing, null or empty -> None; anything but a string is refused."""
    v = row.get(key)
    if v is None:
        return None
    if not isinstance(v, str):
        raise DataError(f"expected str, got {_tname(v)}", source, idx, key)
    return v if v else None


def _check_tool_calls(calls: Any, source: str, idx: int, field: str) -> Optional[list]:
    """OpenAI-style calls: ``[{"type": "function", "function": {"name": str, "arguments": dict | str}}]``
    (the ``function`` wrapper may be left out). Checked here because a chat template renders them
    with string operations that fail with a raw Jinja error on anything else."""
    if calls is None or calls == []:
        return None
    if not isinstance(calls, list):
        raise DataError(f"expected a list of tool calls, got {_tname(calls)}", source, idx, field)
    for k, call in enumerate(calls):
        f = f"{field}[{k}]"
        fn = call.get("function", call) if isinstance(call, dict) else None
        if not isinstance(fn, dict):
            raise DataError("expected a tool call object {function: {name, arguments}}", source, idx, f)
        if not isinstance(fn.get("name"), str) or not fn["name"].strip():
            raise DataError("a tool call needs a non-empty name (a string)", source, idx, f + ".name")
        if not isinstance(fn.get("arguments"), (dict, str)):
            raise DataError(
                f"a tool call needs arguments (an object or JSON text), got {_tname(fn.get('arguments'))}",
                source,
                idx,
                f + ".arguments",
            )
    return calls


def _check_message(m: Any, source: str, idx: int, f: str) -> dict:
    if not isinstance(m, dict):
        raise DataError(f"expected a message object, got {_tname(m)}", source, idx, f)
    role = m.get("role")
    if role not in ROLES:
        raise DataError(f"role {role!r} is not one of {', '.join(ROLES)}", source, idx, f + ".role")
    calls = _check_tool_calls(m.get("tool_calls"), source, idx, f + ".tool_calls")
    if calls and role != "assistant":
        raise DataError(
            f"only an assistant message can make tool calls, not a {role} message", source, idx, f + ".tool_calls"
        )
    content = m.get("content")
    if content is None and not calls:
        raise DataError("missing content", source, idx, f + ".content")
    if content is not None and not isinstance(content, str):
        raise DataError(f"content must be a string, got {_tname(content)}", source, idx, f + ".content")
    msg = {"role": role, "content": content if content is not None else ""}
    if calls:
        msg["tool_calls"] = calls
    for extra in ("name", "tool_call_id"):
        if m.get(extra) is not None:
            if not isinstance(m[extra], str):
                raise DataError(f"expected str, got {_tname(m[extra])}", source, idx, f"{f}.{extra}")
            msg[extra] = m[extra]
    return msg


def check_messages(
    msgs: Any, source: str, idx: int, field: str = "messages", *, need_answer: bool = True, prefix: list[dict] = ()
) -> list[dict]:
    """Validate a chat: optional system first, then user/assistant alternating (tool turns after an
    assistant tool call), no empty user turn, ending with a non-empty assistant answer when
    ``need_answer``.

    ``prefix``: already validated messages that ``msgs`` continues (a preference prompt before
    ``chosen``); the role order is checked across both, and errors index into ``field``.
    """
    if isinstance(msgs, str):
        raise DataError(
            "expected a list of messages, got text (in CSV or Parquet, write the list as JSON: "
            '[{"role": "user", "content": "..."}, ...])',
            source,
            idx,
            field,
        )
    if not isinstance(msgs, list) or not msgs:
        raise DataError(
            f"expected a non-empty list of messages, got {_tname(msgs) if msgs != [] else 'an empty list'}",
            source,
            idx,
            field,
        )
    out = [_check_message(m, source, idx, f"{field}[{j}]") for j, m in enumerate(msgs)]
    chat, n0 = list(prefix) + out, len(prefix)

    def at(j: int, part: str = "role") -> str:
        return f"{field}[{j - n0}].{part}"

    start = 1 if chat[0]["role"] == "system" else 0
    for j in range(start, len(chat)):
        if chat[j]["role"] == "system":
            raise DataError("a system message may only come first", source, idx, at(j))
    if start >= len(chat):
        raise DataError("only a system message; a conversation needs a user turn", source, idx, field)
    expected = "user"
    for j in range(start, len(chat)):
        role, prev = chat[j]["role"], (chat[j - 1]["role"] if j > start else None)
        if role == "tool":
            if prev not in ("assistant", "tool"):
                raise DataError("a tool message must follow an assistant message", source, idx, at(j))
            expected = "assistant"
            continue
        if role != expected and not (role == "assistant" and prev == "tool"):
            raise DataError(
                f"expected role '{expected}' here (turns must alternate user/assistant), got '{role}'",
                source,
                idx,
                at(j),
            )
        if role == "user" and j >= n0 and not chat[j]["content"].strip():
            raise DataError("empty user turn", source, idx, at(j, "content"))
        expected = "assistant" if role == "user" else "user"
    if need_answer:
        if chat[-1]["role"] != "assistant":
            raise DataError("the conversation must end with an assistant answer", source, idx, at(len(chat) - 1))
        for j in range(n0, len(chat)):
            m = chat[j]
            if m["role"] == "assistant" and not m["content"].strip() and not m.get("tool_calls"):
                raise DataError("empty assistant answer", source, idx, at(j, "content"))
    return out


def check_tools(tools: Any, source: str, idx: int, field: str = "tools") -> Optional[list]:
    """Tool definitions: a list of objects each naming its function (JSON text is decoded, as
    LLaMA-Factory's sharegpt files store it); missing or empty -> None."""
    if tools is None or tools == [] or tools == "":
        return None
    if isinstance(tools, str):
        try:
            tools = json.loads(tools)
        except (ValueError, RecursionError) as e:
            raise DataError(
                f"expected a list of tool definitions; this text is not JSON ({e})", source, idx, field
            ) from None
        if tools == [] or tools is None:
            return None
    if not isinstance(tools, list):
        raise DataError(f"expected a list of tool definitions, got {_tname(tools)}", source, idx, field)
    for k, t in enumerate(tools):
        fn = t.get("function", t) if isinstance(t, dict) else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str) or not fn["name"].strip():
            raise DataError(
                "expected a tool definition {type: function, function: {name, description, parameters}}",
                source,
                idx,
                f"{field}[{k}]",
            )
    return tools


# ----------------------------------------------------------------- per-format normalisers


def norm_alpaca(row: dict, source: str, idx: int) -> dict:
    instruction = _need(row, "instruction", source, idx)
    inp = _opt_text(row, "input", source, idx) or ""
    output = _need(row, "output", source, idx)
    if not output.strip():
        raise DataError("empty answer", source, idx, "output")
    if not (instruction.strip() or inp.strip()):
        raise DataError("empty instruction and input", source, idx, "instruction")
    msgs = []
    system = _opt_text(row, "system", source, idx)
    if system:
        msgs.append({"role": "system", "content": system})
    history = row.get("history")
    if history is not None and not isinstance(history, list):
        raise DataError(f"expected a list of [question, answer] pairs, got {_tname(history)}", source, idx, "history")
    for j, pair in enumerate(history or []):
        if not (isinstance(pair, (list, tuple)) and len(pair) == 2 and all(isinstance(x, str) for x in pair)):
            raise DataError("each history item must be [question, answer] strings", source, idx, f"history[{j}]")
        if not pair[0].strip():
            raise DataError("empty question", source, idx, f"history[{j}][0]")
        if not pair[1].strip():
            raise DataError("empty answer", source, idx, f"history[{j}][1]")
        msgs += [{"role": "user", "content": pair[0]}, {"role": "assistant", "content": pair[1]}]
    prompt = instruction if not inp else (f"{instruction}\n\n{inp}" if instruction else inp)
    msgs += [{"role": "user", "content": prompt}, {"role": "assistant", "content": output}]
    return {"messages": msgs}


def _with_system(msgs: list[dict], row: dict, source: str, idx: int) -> list[dict]:
    system = _opt_text(row, "system", source, idx)
    if not system:
        return msgs
    if msgs[0]["role"] == "system":
        raise DataError("system given both as a column and as the first message", source, idx, "system")
    return [{"role": "system", "content": system}] + msgs


def norm_messages(row: dict, source: str, idx: int) -> dict:
    msgs = check_messages(row.get("messages"), source, idx, "messages")
    out: dict[str, Any] = {"messages": _with_system(msgs, row, source, idx)}
    tools = check_tools(row.get("tools"), source, idx)
    if tools:
        out["tools"] = tools
    return out


def sharegpt_to_messages(conv: Any, source: str, idx: int, field: str = "conversations") -> list[dict]:
    if isinstance(conv, str):
        raise DataError(
            "expected a list of turns, got text (in CSV or Parquet, write the list as JSON: "
            '[{"from": "human", "value": "..."}, ...])',
            source,
            idx,
            field,
        )
    if not isinstance(conv, list) or not conv:
        raise DataError("expected a non-empty list of turns", source, idx, field)
    msgs = []
    for j, t in enumerate(conv):
        if not isinstance(t, dict):
            raise DataError("expected a turn object with from/value", source, idx, f"{field}[{j}]")
        frm = t.get("from")
        if not isinstance(frm, str) or frm not in SHAREGPT_ROLES:
            raise DataError(
                f"'from' is {frm!r}; expected one of {', '.join(SHAREGPT_ROLES)}", source, idx, f"{field}[{j}].from"
            )
        if not isinstance(t.get("value"), str):
            raise DataError("missing or non-string value", source, idx, f"{field}[{j}].value")
        msgs.append({"role": SHAREGPT_ROLES[frm], "content": t["value"]})
    return msgs


def norm_sharegpt(row: dict, source: str, idx: int) -> dict:
    msgs = sharegpt_to_messages(row.get("conversations"), source, idx)
    out: dict[str, Any] = {
        "messages": check_messages(_with_system(msgs, row, source, idx), source, idx, "conversations")
    }
    tools = check_tools(row.get("tools"), source, idx)
    if tools:
        out["tools"] = tools
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
    raise DataError(f"expected a string or a list of messages, got {_tname(v)}", source, idx, field)


def _check_prompt(v: Any, source: str, idx: int, field: str = "prompt") -> list[dict]:
    prompt = _as_messages(v, source, idx, field, "user")
    if prompt[-1]["role"] not in ("user", "tool"):
        raise DataError("the prompt must end with a user turn", source, idx, field)
    return prompt


def _answer(v: Any, prompt: list[dict], source: str, idx: int, field: str) -> list[dict]:
    """The answer part after ``prompt`` (chosen, rejected, completion): text, a list of assistant
    messages continuing the prompt (TRL's conversational format), or the whole conversation
    starting with the prompt."""
    if isinstance(v, str):
        if not v.strip():
            raise DataError("must be a non-empty assistant answer", source, idx, field)
        return [{"role": "assistant", "content": v}]
    if not isinstance(v, list):
        raise DataError(f"expected str/list, got {_tname(v)}", source, idx, field)
    if v and isinstance(v[0], dict) and v[0].get("role") in ("system", "user"):
        full = check_messages(v, source, idx, field)
        if full[: len(prompt)] != prompt or len(full) == len(prompt):
            raise DataError(
                "a full conversation here must start with the prompt; or give only the answer "
                "(a list of assistant messages, or text)",
                source,
                idx,
                field,
            )
        return full[len(prompt) :]
    return check_messages(v, source, idx, field, prefix=prompt)


def norm_preference(row: dict, source: str, idx: int) -> dict:
    if row.get("prompt") is None and isinstance(row.get("chosen"), list):
        return _implicit_prompt(row, source, idx)
    prompt = _check_prompt(_need(row, "prompt", source, idx, (str, list)), source, idx)
    out = {"prompt": prompt}
    for k in ("chosen", "rejected"):
        out[k] = _answer(_need(row, k, source, idx, (str, list)), prompt, source, idx, k)
    if out["chosen"] == out["rejected"]:
        raise DataError("chosen and rejected are identical", source, idx, "rejected")
    return out


def _implicit_prompt(row: dict, source: str, idx: int) -> dict:
    """chosen/rejected are whole conversations: the prompt is what they share, up to the first
    assistant turn where they differ (TRL's implicit-prompt preference format)."""
    chosen = check_messages(row["chosen"], source, idx, "chosen")
    rejected = check_messages(_need(row, "rejected", source, idx, (list,)), source, idx, "rejected")
    if chosen == rejected:
        raise DataError("chosen and rejected are identical", source, idx, "rejected")
    k = 0
    while k < min(len(chosen), len(rejected)) and chosen[k] == rejected[k]:
        k += 1
    while k > 0 and not (
        k < len(chosen) and k < len(rejected) and chosen[k]["role"] == rejected[k]["role"] == "assistant"
    ):
        k -= 1
    if k == 0:
        raise DataError(
            "chosen and rejected must share the conversation up to the answer where they differ "
            "(or give the prompt in its own column)",
            source,
            idx,
            "rejected",
        )
    return {"prompt": chosen[:k], "chosen": chosen[k:], "rejected": rejected[k:]}


def norm_kto(row: dict, source: str, idx: int) -> dict:
    label = row.get("label")
    if not isinstance(label, bool):
        if isinstance(label, int) and label in (0, 1):
            label = bool(label)
        else:
            raise DataError(f"expected true/false, got {label!r}", source, idx, "label")
    if row.get("messages") is not None or "prompt" not in row:  # a null cell: the row uses prompt/completion
        msgs = check_messages(row.get("messages"), source, idx, "messages")
    else:
        prompt = _check_prompt(_need(row, "prompt", source, idx, (str, list)), source, idx)
        msgs = prompt + _answer(_need(row, "completion", source, idx, (str, list)), prompt, source, idx, "completion")
    return {"messages": msgs, "label": label}


def norm_prompt(row: dict, source: str, idx: int) -> dict:
    prompt = _check_prompt(_need(row, "prompt", source, idx, (str, list)), source, idx)
    key = "answer" if "answer" in row else "solution"
    answer = row.get(key)
    if answer is not None:
        if isinstance(answer, bool) or not isinstance(answer, (str, int, float)):
            raise DataError(f"answer must be a string or number, got {_tname(answer)}", source, idx, key)
        if isinstance(answer, float) and not math.isfinite(answer):
            raise DataError(f"answer must be a finite number, got {answer}", source, idx, key)
    return {"prompt": prompt, "answer": None if answer is None else str(answer)}


NORMALISERS: dict[str, Callable[[dict, str, int], dict]] = {
    "alpaca": norm_alpaca,
    "messages": norm_messages,
    "sharegpt": norm_sharegpt,
    "text": norm_text,
    "preference": norm_preference,
    "kto": norm_kto,
    "prompt": norm_prompt,
}

# U+D800..U+DFFF cannot be encoded as UTF-8: what invalid bytes become when a file is decoded with
# errors="surrogateescape" (U+DC80..U+DCFF), or a JSON "\ud83d" escape without its pair.
_SURROGATE = re.compile("[\ud800-\udfff]")


def find_bad_text(row: Any) -> Optional[tuple[str, str]]:
    """(field path, reason) of the first key or string in ``row`` that is not valid Unicode, else None."""
    stack: list[tuple[str, Any]] = [("", row)]
    while stack:
        path, v = stack.pop()
        if isinstance(v, str):
            m = _SURROGATE.search(v)
            if m:
                c = ord(m.group())
                why = (
                    f"invalid UTF-8 (byte 0x{c - 0xDC00:02X}): save the file as UTF-8"
                    if 0xDC80 <= c <= 0xDCFF
                    else f"an unpaired surrogate \\u{c:04x} is not valid text"
                )
                return path or "<row>", why
        elif isinstance(v, dict):
            for k, x in reversed(list(v.items())):
                key = f"{path}.{k}" if path else str(k)
                if isinstance(k, str) and _SURROGATE.search(k):
                    return key, "the key is not valid text (invalid UTF-8 or an unpaired surrogate)"
                stack.append((key, x))
        elif isinstance(v, (list, tuple)):
            stack.extend((f"{path}[{i}]", x) for i, x in reversed(list(enumerate(v))))
    return None


def normalise_rows(rows: list[dict], fmt: str, source: str, offset: int = 0) -> list[dict]:
    """Validate and normalise every row; errors name ``source`` and the row index."""
    return list(iter_normalised(rows, fmt, source, offset))


def iter_normalised(rows: Iterable[Any], fmt: str, source: str, offset: int = 0) -> Iterator[Row]:
    """:func:`normalise_rows` one row at a time, for rows read as a stream."""
    fn = NORMALISERS[fmt]
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise DataError(f"expected an object per row, got {_tname(row)}", source, i + offset)
        bad = find_bad_text(row)
        if bad:
            raise DataError(bad[1], source, i + offset, bad[0])
        r = Row(fn(row, source, i + offset))
        r.origin = (source, i + offset)
        yield r
