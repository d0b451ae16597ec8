"""Tool calls: OpenAI-style tool definitions in, ``tool_calls`` out.

Tools reach the model through its chat template (``apply_chat_template(..., tools=...)``, as in
training: :func:`kit.data.encode.encode_prompt`). Templates that render tools (Qwen2.5, Hermes, our
``chatml_tools``) ask the model to answer a call as ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>``,
the format ``kit.data`` trains on; :func:`parse_tool_calls` reads it back into OpenAI's
``tool_calls`` shape (arguments as a JSON string). A model whose template drops tools cannot call
them, so the server refuses tools for it instead of silently ignoring them.
"""

from __future__ import annotations

import json
import re
import uuid
from typing import Any, Optional

from ..data.templates import renders_tools

OPEN, CLOSE = "<tool_call>", "</tool_call>"
_CALL = re.compile(re.escape(OPEN) + r"\s*(.*?)\s*(?:" + re.escape(CLOSE) + r"|$)", re.S)

__all__ = ["OPEN", "CLOSE", "parse_tool_calls", "supports_tools", "openai_messages_to_chat"]


def supports_tools(tokenizer: Any) -> bool:
    """Whether the tokenizer's chat template renders tool definitions and calls."""
    return renders_tools(getattr(tokenizer, "chat_template", None))


def parse_tool_calls(text: str) -> tuple[Optional[str], list[dict]]:
    """(the answer's text outside the calls or None, the calls in OpenAI's shape).

    A call that is not valid JSON with a ``name`` stays in the text: the model wrote something
    that only looks like a call, and the caller should see it rather than lose it.
    """
    calls, kept, pos = [], [], 0
    for m in _CALL.finditer(text):
        try:
            obj = json.loads(m.group(1))
        except ValueError:
            continue
        if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
            continue
        args = obj.get("arguments", obj.get("parameters", {}))
        kept.append(text[pos : m.start()])
        pos = m.end()
        calls.append(
            {
                "id": f"call_{uuid.uuid4().hex[:24]}",
                "type": "function",
                "function": {
                    "name": obj["name"],
                    "arguments": args if isinstance(args, str) else json.dumps(args, ensure_ascii=False),
                },
            }
        )
    kept.append(text[pos:])
    content = "".join(kept).strip()
    return (content or None), calls


def openai_messages_to_chat(messages: list[dict]) -> list[dict]:
    """OpenAI request messages as our chat templates expect them: text parts joined into one string,
    ``developer`` as ``system``, tool-call arguments decoded from their JSON string when they are one
    (the form ``kit.data`` trains on)."""
    out = []
    for m in messages:
        msg = {"role": "system" if m["role"] == "developer" else m["role"], "content": m.get("content") or ""}
        if isinstance(msg["content"], list):
            msg["content"] = "".join(p.get("text", "") for p in msg["content"])
        if m.get("tool_calls"):
            calls = []
            for c in m["tool_calls"]:
                f = dict(c.get("function") or {})
                if isinstance(f.get("arguments"), str):
                    try:
                        f["arguments"] = json.loads(f["arguments"])
                    except ValueError:
                        pass  # not JSON: the template renders the string as given
                calls.append({"type": "function", "function": f, **({"id": c["id"]} if c.get("id") else {})})
            msg["tool_calls"] = calls
        for k in ("name", "tool_call_id"):
            if m.get(k):
                msg[k] = m[k]
        out.append(msg)
    return out
