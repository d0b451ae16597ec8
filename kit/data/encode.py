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
        self.index: Optional[int] = None  # encode_chats: which conversation of its batch
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


def _labels(ids: list[int], spans: list[tuple[int, int]], train_on_prompt: bool, mask_history: bool) -> list[int]:
    """encode_chat's masking, by slices: every token is trained with ``train_on_prompt``; otherwise
    only the answer spans (only the last one with ``mask_history``)."""
    if train_on_prompt:
        return list(ids)
    labels = [IGNORE] * len(ids)
    last = len(spans) - 1
    for k, (s, e) in enumerate(spans):
        if not mask_history or k == last:
            labels[s:e] = ids[s:e]
    return labels


def encode_chats(
    tok,
    chats: list[tuple[list[dict], Optional[list]]],
    cutoff_len: int,
    *,
    train_on_prompt: bool = False,
    mask_history: bool = False,
) -> list[dict]:
    """:func:`encode_chat` over many ``(messages, tools)`` conversations, with the same result for
    each, computed in bulk: the template renders the texts in two batched calls and the fast
    tokenizer encodes every conversation once, in one batched call (encode_chat tokenizes every
    prefix of every conversation again, which costs several times the tokens).

    The answer spans are where each prefix's text ends in the whole conversation's tokens. A
    tokenizer splits its text at added tokens (``<|im_start|>``, ``<|im_end|>``) first and encodes
    the pieces in between on their own, so a prefix tokenizes to the same leading tokens as the
    whole conversation exactly when the piece from its last added token to its end (e.g.
    ``assistant\n``) does: that short piece is what gets checked, in another batched call.
    Conversations where a check fails (an answer that starts with a newline merges with the
    header's), whose template is not prefix-consistent as text, that carry tools, or any
    conversation of a slow (Python) tokenizer take :func:`encode_chat` itself.

    A :class:`TemplateError` carries ``index``: the position in ``chats`` of the conversation.
    """
    out: list[Optional[dict]] = [None] * len(chats)
    backend = _fast_backend(tok)
    batch = [k for k, (msgs, tools) in enumerate(chats) if backend is not None and not tools]
    texts = _render_batch(tok, [chats[k][0] for k in batch], batch)
    plans = []  # (k, full text, [(prefix end, upto end)] per assistant turn)
    for k, (full, cuts) in zip(batch, texts):
        if cuts is not None:
            plans.append((k, full, cuts))
    fast = {k for k, _, _ in plans}
    if plans:
        encs = backend.encode_batch([full for _, full, _ in plans], add_special_tokens=False)
        added = set(backend.get_added_tokens_decoder())
        checks = []  # (plan number, [(token index, piece)] per cut)
        pieces: list[str] = []
        all_ids = [e.ids for e in encs]
        for p, ((k, full, cuts), enc) in enumerate(zip(plans, encs)):
            at = _cut_tokens(enc, all_ids[p], full, [c for pair in cuts for c in pair], added)
            if at is None:
                fast.discard(k)
                continue
            checks.append((p, at))
            pieces += [piece for _, _, piece in at]
        # the pieces are mostly the same few strings (``assistant\n``, ``\n``): each distinct one is encoded once
        distinct = list(dict.fromkeys(pieces))
        known = {piece: e.ids for piece, e in zip(distinct, backend.encode_batch(distinct, add_special_tokens=False))}
        piece_ids = [known[piece] for piece in pieces]
        j = 0
        for p, at in checks:
            k, ids = plans[p][0], all_ids[p]
            ok = True
            for start, end, _ in at:
                ok = ok and piece_ids[j] == ids[start:end]
                j += 1
            if not ok:
                fast.discard(k)
                continue
            ends = [end for _, end, _ in at]
            spans = list(zip(ends[0::2], ends[1::2]))
            labels = _labels(ids, spans, train_on_prompt, mask_history)
            out[k] = {"input_ids": ids[:cutoff_len], "labels": labels[:cutoff_len]}
    for k, (msgs, tools) in enumerate(chats):
        if k in fast:
            continue
        try:
            out[k] = encode_chat(
                tok, msgs, cutoff_len, train_on_prompt=train_on_prompt, mask_history=mask_history, tools=tools
            )
        except TemplateError as e:
            e.index = k
            raise
    return out  # type: ignore[return-value]


def _fast_backend(tok):
    """The Rust tokenizer behind ``tok`` when calling it directly gives what ``tok(text,
    add_special_tokens=False)`` gives (no truncation or padding set on it, special tokens not split
    up), else None."""
    backend = getattr(tok, "backend_tokenizer", None) if getattr(tok, "is_fast", False) else None
    if backend is None or getattr(tok, "split_special_tokens", False):
        return None
    if backend.truncation is not None or backend.padding is not None:
        return None  # tok() switches these off for the call; the backend would apply them
    return backend


def _render_batch(tok, convs: list[list[dict]], index: list[int]) -> list[tuple[str, Optional[list]]]:
    """(full text, [(end of prefix-with-generation-prompt, end of prefix-with-answer)] per assistant
    turn) of every conversation; cuts None where the texts are not prefixes of each other."""
    if not convs:
        return []
    prefixes, uptos, owners, upto_owners, final = [], [], [], [], []
    for c, msgs in enumerate(convs):
        for i, m in enumerate(msgs):
            if m["role"] == "assistant":
                prefixes.append(msgs[:i])
                owners.append(c)
                final.append(i + 1 == len(msgs))
                if not final[-1]:  # up to the last message is the whole conversation: not rendered twice
                    uptos.append(msgs[: i + 1])
                    upto_owners.append(c)
    full = _render_many(tok, convs, False, index, list(range(len(convs))))
    pre = _render_many(tok, prefixes, True, index, owners)
    upto = iter(_render_many(tok, uptos, False, index, upto_owners))
    out, j = [], 0
    for c, text in enumerate(full):
        cuts: Optional[list] = []
        while j < len(owners) and owners[j] == c:
            p = pre[j]
            u = text if final[j] else next(upto)
            if cuts is not None and text.startswith(u) and u.startswith(p) and (not cuts or len(p) >= cuts[-1][1]):
                cuts.append((len(p), len(u)))
            else:
                cuts = None
            j += 1
        out.append((text, cuts))
    return out


def _render_many(tok, convs: list[list[dict]], add_generation_prompt: bool, index: list[int], owners: list[int]):
    """Texts of many conversations in one apply_chat_template call; when it fails, one at a time,
    so the error names the conversation (``index[owners[j]]``)."""
    if not convs:
        return []
    try:
        return tok.apply_chat_template(convs, tokenize=False, add_generation_prompt=add_generation_prompt)
    except Exception:  # noqa: BLE001 - find which conversation it was, with encode_chat's message
        pass
    texts = []
    for j, msgs in enumerate(convs):
        try:
            texts.append(_render(tok, msgs, add_generation_prompt=add_generation_prompt, tokenize=False))
        except TemplateError as e:
            e.index = index[owners[j]]
            raise
    return texts


def _cut_tokens(enc, ids: list[int], text: str, cuts: list[int], added: set[int]) -> Optional[list]:
    """For each character position ``cut`` of ``text``: (index of the token after the last added
    token before it, index of the first token at or after it, the text between them), from the
    token offsets; None where a cut falls inside a token."""
    out = []
    for cut in cuts:
        if cut >= len(text):
            b = len(ids)
        else:
            b = enc.char_to_token(cut)
            if b is None or enc.token_to_chars(b)[0] != cut:
                return None  # a token runs across the cut (e.g. "\n\n" of header and answer)
        a = b
        while a > 0 and ids[a - 1] not in added:
            a -= 1
        start = enc.token_to_chars(a - 1)[1] if a > 0 else 0
        out.append((a, b, text[start:cut]))
    return out


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


def pack_bins(lengths: list[int], capacity: int) -> list[list[int]]:
    """Which examples (by position) share each packed row of at most ``capacity`` tokens: first-fit
    decreasing; rows ordered by their first member, members in their original order."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    bins: list[list[int]] = []
    free: list[int] = []
    for i in order:
        n = lengths[i]
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
    return [sorted(b) for b in bins]


def pack(examples: list[dict], capacity: int) -> list[dict]:
    """Pack examples into rows of at most ``capacity`` tokens (first-fit decreasing).

    Each packed row keeps ``seq_lens`` so the collator can build a block-diagonal causal mask
    and restart position ids per example: nothing attends across an example boundary.
    The order of rows is derived from the (already shuffled) input, so it is deterministic.
    """
    return [packed_row([examples[i] for i in b]) for b in pack_bins([len(e["input_ids"]) for e in examples], capacity)]


def packed_row(examples: list[dict]) -> dict:
    """One packed row of whole examples, in order: their tokens and labels back to back and their
    lengths in ``seq_lens``."""
    ids: list[int] = []
    labels: list[int] = []
    for e in examples:
        ids += e["input_ids"]
        labels += e["labels"]
    return {"input_ids": ids, "labels": labels, "seq_lens": [len(e["input_ids"]) for e in examples]}
