"""Turn normalised rows into token ids and labels.

Chat rows are encoded with the tokenizer's own chat template (the source of truth), so
``input_ids`` equal ``tokenizer.apply_chat_template(messages)`` token for token. The trained
span of each assistant turn is found by rendering prefixes: the tokens between
``template(messages[:i], add_generation_prompt=True)`` and ``template(messages[:i+1])``
are the i-th answer plus its end-of-turn marker.

When those token prefixes do not line up although the rendered *text* does -- an answer that
starts with spaces or newlines merges with the newline after the assistant header into one BPE
token -- the text is cut at the answer boundaries and each piece tokenized on its own. That is
exactly how the prompt is tokenized at inference (it ends with the header), so the model learns
to continue the tokens it will be given. Templates whose text is not prefix-consistent (they
rewrite earlier turns, e.g. strip reasoning) get a clear error instead of a wrong mask.
"""

from __future__ import annotations

from typing import Any, Optional

from ..errors import ForgeError, with_place

IGNORE = -100


class TemplateError(ForgeError, ValueError):
    """The chat template cannot encode a row as asked (e.g. it drops tool calls); the message says
    what to set, and names the file and row when the row is known."""

    def __init__(self, message: str, source: Optional[str] = None, row: Optional[int] = None):
        self.source, self.row, self.reason = source, row, message
        super().__init__(with_place(message, source, row))


def _render(
    tok,
    messages: list[dict],
    *,
    add_generation_prompt: bool = False,
    tools: Optional[list] = None,
    tokenize: bool = True,
):
    kw: dict[str, Any] = {"tokenize": tokenize, "add_generation_prompt": add_generation_prompt}
    if tokenize:
        kw["return_dict"] = False
    if tools:
        kw["tools"] = tools
    try:
        out = tok.apply_chat_template(messages, **kw)
    except ForgeError:
        raise
    except Exception as e:  # noqa: BLE001 - Jinja raises TemplateError, TypeError, ... on what it cannot render
        raise TemplateError(f"the chat template cannot render this conversation ({type(e).__name__}: {e})") from None
    if not tokenize:
        return out
    if hasattr(out, "keys"):
        out = out["input_ids"]
    return list(out)


def _ids(tok, messages: list[dict], *, add_generation_prompt: bool = False, tools: Optional[list] = None) -> list[int]:
    return _render(tok, messages, add_generation_prompt=add_generation_prompt, tools=tools)


def assistant_spans(tok, messages: list[dict], tools: Optional[list] = None) -> tuple[list[int], list[tuple[int, int]]]:
    """Full token ids and the [start, end) span of every assistant turn (answer + end-of-turn)."""
    full = _ids(tok, messages, tools=tools)
    spans = []
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        prefix = _ids(tok, messages[:i], add_generation_prompt=True, tools=tools)
        upto = _ids(tok, messages[: i + 1], tools=tools)
        if full[: len(upto)] != upto or upto[: len(prefix)] != prefix:
            return _spans_by_text(tok, messages, tools)
        spans.append((len(prefix), len(upto)))
    return full, spans


def _spans_by_text(tok, messages: list[dict], tools: Optional[list]) -> tuple[list[int], list[tuple[int, int]]]:
    """Cut the rendered text at each answer's start and end and tokenize the pieces separately."""
    full = _render(tok, messages, tools=tools, tokenize=False)
    cuts = [0]
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        prefix = _render(tok, messages[:i], add_generation_prompt=True, tools=tools, tokenize=False)
        upto = _render(tok, messages[: i + 1], tools=tools, tokenize=False)
        if not (full.startswith(upto) and upto.startswith(prefix) and len(prefix) >= cuts[-1]):
            raise TemplateError(
                "the chat template is not prefix-consistent (rendering a conversation changes earlier turns), "
                "so answer spans cannot be located; set model.template to a consistent template"
            )
        cuts += [len(prefix), len(upto)]
    cuts.append(len(full))
    ids: list[int] = []
    spans = []
    for k in range(len(cuts) - 1):
        start = len(ids)
        piece = full[cuts[k] : cuts[k + 1]]
        if piece:
            ids += tok(piece, add_special_tokens=False)["input_ids"]
        if k % 2 == 1:  # pieces alternate: prompt, answer, prompt, answer, ..., rest
            spans.append((start, len(ids)))
    return ids, spans


def check_tool_support(tok, messages: list[dict], tools: Optional[list]) -> None:
    """Refuse tool-call rows with a template that would silently drop the calls (training on
    an answer whose call vanished from the text teaches the wrong thing)."""
    if not (tools or any(m.get("tool_calls") for m in messages)):
        return
    from .templates import renders_tools

    if not renders_tools(tok.chat_template):
        raise TemplateError(
            "this row has tool calls but the tokenizer's chat template cannot render them; "
            "set model.template to one that does (e.g. 'chatml_tools')"
        )


def encode_chat(
    tok,
    messages: list[dict],
    cutoff_len: int,
    *,
    train_on_prompt: bool = False,
    mask_history: bool = False,
    tools: Optional[list] = None,
) -> dict:
    """``{"input_ids", "labels"}`` for one conversation, truncated to ``cutoff_len``."""
    check_tool_support(tok, messages, tools)
    ids, spans = assistant_spans(tok, messages, tools)
    span_of = [None] * len(ids)
    for k, (s, e) in enumerate(spans):
        span_of[s:e] = [k] * (e - s)
    last = len(spans) - 1
    labels = []
    for t, k in zip(ids, span_of):
        if k is None:
            keep = train_on_prompt  # system / user / tool tokens and role headers
        else:
            # mask_history: earlier answers are part of the prompt (trained only with train_on_prompt)
            keep = not mask_history or k == last or train_on_prompt
        labels.append(t if keep else IGNORE)
    return {"input_ids": ids[:cutoff_len], "labels": labels[:cutoff_len]}


def encode_prompt(tok, messages: list[dict], tools: Optional[list] = None) -> list[int]:
    """Prompt ids ending with the generation prompt (for chat, RL and preference prompts)."""
    return _ids(tok, messages, add_generation_prompt=True, tools=tools)


def encode_text_stream(tok, texts: list[str], cutoff_len: int) -> list[dict]:
    """Pre-training: tokenize, join with eos, cut into ``cutoff_len`` blocks (the last short block kept)."""
    eos = tok.eos_token_id
    stream: list[int] = []
    for t in texts:
        stream.extend(tok(t, add_special_tokens=False)["input_ids"])
        if eos is not None:
            stream.append(eos)
    blocks = []
    for s in range(0, len(stream), cutoff_len):
        chunk = stream[s : s + cutoff_len]
        if len(chunk) >= 2:
            blocks.append({"input_ids": chunk, "labels": list(chunk)})
    return blocks


def pack(examples: list[dict], capacity: int) -> list[dict]:
    """Pack examples into rows of at most ``capacity`` tokens (first-fit decreasing).

    Each packed row keeps ``seq_lens`` so the collator can build a block-diagonal causal mask
    and restart position ids per example: nothing attends across an example boundary.
    The order of rows is derived from the (already shuffled) input, so it is deterministic.
    """
    order = sorted(range(len(examples)), key=lambda i: -len(examples[i]["input_ids"]))
    bins: list[list[int]] = []
    free: list[int] = []
    for i in order:
        n = len(examples[i]["input_ids"])
        for b, room in enumerate(free):
            if n <= room:
                bins[b].append(i)
                free[b] -= n
                break
        else:
            bins.append([i])
            free.append(capacity - n)
    # keep the original (shuffled) order of first members so data order still follows the seed
    bins.sort(key=lambda b: min(b))
    out = []
    for b in bins:
        b = sorted(b)
        ids, labels, lens = [], [], []
        for i in b:
            ids += examples[i]["input_ids"]
            labels += examples[i]["labels"]
            lens.append(len(examples[i]["input_ids"]))
        out.append({"input_ids": ids, "labels": labels, "seq_lens": lens})
    return out
