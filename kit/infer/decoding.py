"""From generated token ids to answer text, the same way on every back end.

* :func:`stop_token_ids`: the tokens that end an answer (eos plus the family's end-of-turn markers);
* :class:`TextStream`: incremental detokenization. Decoding one token at a time breaks multi-byte
  characters and the spaces some tokenizers attach to the next word, so each step decodes a short
  window (the previous token or two plus the new ones) and emits only what the new tokens added,
  holding back an incomplete UTF-8 sequence (shown as U+FFFD) until it completes. The pieces join
  to exactly ``tokenizer.decode(all_ids, skip_special_tokens=True)``.
* :class:`StopStrings`: stop strings, matched across piece boundaries; text that might be the start
  of a stop string is held back until it is known not to be, so a stream never shows part of one.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

from ..models.registry import get_family


def stop_token_ids(tok: Any, model_config: Any = None) -> list[int]:
    """eos plus the family's end-of-turn tokens that exist in this vocabulary."""
    ids = set()
    if tok.eos_token_id is not None:
        ids.add(tok.eos_token_id)
    fam = get_family(getattr(model_config, "model_type", "") if model_config is not None else "")
    vocab = tok.get_vocab()
    for t in fam.end_of_turn:
        if t in vocab:
            ids.add(vocab[t])
    gen_eos = getattr(getattr(model_config, "generation_config", None), "eos_token_id", None)
    if isinstance(gen_eos, int):
        ids.add(gen_eos)
    elif isinstance(gen_eos, (list, tuple)):
        ids.update(i for i in gen_eos if isinstance(i, int))
    return sorted(ids)


class TextStream:
    """Feed token ids, get the text they add (the approach of text-generation-inference and vLLM)."""

    def __init__(self, tokenizer: Any, skip_special_tokens: bool = True):
        self.tokenizer = tokenizer
        self.skip = skip_special_tokens
        self.ids: list[int] = []
        self._prefix = 0  # start of the decoding window
        self._read = 0  # tokens before this are already emitted
        self._before: Optional[str] = ""  # the decoded text of ids[_prefix:_read] (None: not yet decoded)
        # a fast tokenizer's Rust decoder directly: the same text as tokenizer.decode without
        # clean-up, at a fraction of the per-call cost (this runs once per generated token)
        backend = getattr(tokenizer, "backend_tokenizer", None)
        self._fast = backend.decode if backend is not None and hasattr(backend, "decode") else None

    def _decode(self, ids: Sequence[int]) -> str:
        if self._fast is not None:
            return self._fast(list(ids), skip_special_tokens=self.skip)
        return self.tokenizer.decode(ids, skip_special_tokens=self.skip, clean_up_tokenization_spaces=False)

    def _window_start(self) -> str:
        if self._before is None:
            self._before = self._decode(self.ids[self._prefix : self._read])
        return self._before

    def push(self, ids: Sequence[int]) -> str:
        self.ids.extend(ids)
        before = self._window_start()
        now = self._decode(self.ids[self._prefix :])
        if len(now) > len(before) and not now.endswith("\ufffd"):
            self._prefix, self._read, self._before = self._read, len(self.ids), None
            return now[len(before) :]
        return ""

    def flush(self) -> str:
        """Whatever is still held back (an incomplete character at the very end stays as U+FFFD)."""
        before = self._window_start()
        now = self._decode(self.ids[self._prefix :])
        self._prefix = self._read = len(self.ids)
        self._before = ""
        return now[len(before) :]


class StopStrings:
    """Cut the answer at the first stop string; hold back text that could still become one."""

    def __init__(self, stops: Sequence[str] = ()):
        self.stops = [s for s in stops if s]
        self.longest = max((len(s) for s in self.stops), default=0)
        self.text = ""  # the answer so far (cut at the stop string once one is found)
        self._sent = 0  # how much of it was handed out
        self.stopped = False

    def push(self, piece: str) -> str:
        """Add a piece; returns the text that is now safe to show. Sets ``stopped`` at a stop string."""
        if self.stopped or not piece:
            return ""
        if not self.stops:
            self.text += piece
            self._sent = len(self.text)
            return piece
        start = max(0, len(self.text) - self.longest + 1)  # a stop may straddle the old text and the piece
        self.text += piece
        hits = [i for i in (self.text.find(s, start) for s in self.stops) if i >= 0]
        if hits:
            self.text = self.text[: min(hits)]
            self.stopped = True
            return self._release(len(self.text))
        return self._release(len(self.text) - self._held())

    def _held(self) -> int:
        """Length of the longest tail of the text that is a proper prefix of a stop string."""
        for k in range(min(self.longest - 1, len(self.text)), 0, -1):
            tail = self.text[-k:]
            if any(s.startswith(tail) for s in self.stops):
                return k
        return 0

    def _release(self, upto: int) -> str:
        out = self.text[self._sent : upto]
        self._sent = max(self._sent, upto)
        return out

    def flush(self) -> str:
        """At the end of the answer: the held-back tail was not a stop string after all."""
        return self._release(len(self.text))


class AnswerText:
    """TextStream + StopStrings for one answer: ``push(token_ids) -> (text, stopped)``."""

    def __init__(self, tokenizer: Any, stops: Sequence[str] = ()):
        self.tokens = TextStream(tokenizer)
        self.stops = StopStrings(stops)

    def push(self, ids: Sequence[int]) -> tuple[str, bool]:
        text = self.stops.push(self.tokens.push(ids))
        return text, self.stops.stopped

    def finish(self) -> str:
        """The rest of the text when the answer ends for another reason than a stop string."""
        if self.stops.stopped:
            return ""
        text = self.stops.push(self.tokens.flush())
        return text + ("" if self.stops.stopped else self.stops.flush())

    @property
    def text(self) -> str:
        return self.stops.text

    @property
    def stopped(self) -> bool:
        return self.stops.stopped


def truncate_at_stop(text: str, stops: Optional[Sequence[str]]) -> tuple[str, bool]:
    """``text`` cut before the first stop string, and whether one was found (for whole answers)."""
    hits = [i for i in (text.find(s) for s in (stops or ()) if s) if i >= 0]
    return (text[: min(hits)], True) if hits else (text, False)
