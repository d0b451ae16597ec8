"""The ``hf`` back end: a batched decode loop on a transformers model.

Why our own loop rather than ``model.generate``: requests join and leave a running batch (a server's
clients come and go; predict mode refills the batch as short answers finish), each row has its own
sampling settings and seed, a closed stream stops its row at once, and one token costs one forward
pass plus a few tensor ops (no logits-processor / stopping-criteria machinery per token).

How the rows share one forward pass (:class:`DecodeBatch`):

* **left padding**: every row's tokens end at the same column, so one step appends one column. A
  pad column is masked out of attention (``attention_mask`` 0) and the rotary positions come from
  the row's own count of real tokens (``position_ids``), so a row computes what it would alone;
  greedy answers equal one-at-a-time generation (tested).
* **joining**: new requests are prefilled together (left padded among themselves), then their KV
  cache is merged with the running batch's by left-padding the shorter side to the same length.
* **leaving**: a finished or cancelled row is dropped from the cache; columns that only held
  padding of dropped rows are cut off, so the batch does not keep paying for them.
* the KV cache appends in place into spare capacity (:class:`GrowingLayer`) instead of
  transformers' concatenation per token, which copies the whole cache at every step.
"""

from __future__ import annotations

import itertools
import threading
from dataclasses import dataclass, field
from typing import Any, Iterator, Optional, Sequence

import torch
import torch.nn.functional as F

from .decoding import AnswerText, stop_token_ids
from .engine import FINISH_CANCELLED, FINISH_LENGTH, FINISH_STOP, ChatRequest, Completion, Delta, check_fits, prompt_ids
from .sampling import next_tokens, seeded_generator

DEFAULT_MAX_BATCH = 16


# ------------------------------------------------------------------ the KV cache


def _cache_classes():
    from transformers.cache_utils import Cache, DynamicLayer

    return Cache, DynamicLayer


def _growing_layer_class():
    _, DynamicLayer = _cache_classes()

    class GrowingLayer(DynamicLayer):
        """A transformers ``DynamicLayer`` whose keys/values live in a buffer with spare room: appending
        a token writes one column instead of concatenating (copying) the whole cache."""

        def update(self, key_states, value_states, *args, **kwargs):
            if not self.is_initialized:
                self.lazy_initialization(key_states, value_states)
                self._buf_k = self._buf_v = None
                self._len = 0
            n = key_states.shape[-2]
            need = self._len + n
            if self._buf_k is None or need > self._buf_k.shape[-2]:
                cap = max(64, 2 * need)
                shape = (*key_states.shape[:-2], cap, key_states.shape[-1])
                k = key_states.new_empty(shape)
                v = value_states.new_empty((*value_states.shape[:-2], cap, value_states.shape[-1]))
                if self._len:
                    k[..., : self._len, :] = self._buf_k[..., : self._len, :]
                    v[..., : self._len, :] = self._buf_v[..., : self._len, :]
                self._buf_k, self._buf_v = k, v
            self._buf_k[..., self._len : need, :] = key_states
            self._buf_v[..., self._len : need, :] = value_states
            self._len = need
            self.keys = self._buf_k[..., :need, :]
            self.values = self._buf_v[..., :need, :]
            return self.keys, self.values

    return GrowingLayer


_LAYER: Any = None


def new_cache(filled: Optional[Sequence[tuple[torch.Tensor, torch.Tensor]]] = None):
    """An empty cache, or one holding the given per-layer (keys, values) [B, heads, T, head_dim]."""
    global _LAYER
    Cache, _ = _cache_classes()
    if _LAYER is None:
        _LAYER = _growing_layer_class()
    if filled is None:
        return Cache(layer_class_to_replicate=_LAYER)
    layers = []
    for k, v in filled:
        layer = _LAYER()
        layer.update(k, v)
        layers.append(layer)
    return Cache(layers=layers)


def _kv(cache) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(layer.keys, layer.values) for layer in cache.layers]


def _pad_left(t: torch.Tensor, n: int, dim: int) -> torch.Tensor:
    """``t`` with ``n`` zero columns before the existing ones along ``dim`` (-2 for KV, -1 for masks)."""
    if n == 0:
        return t
    pad = [0, 0] * (-dim - 1) + [n, 0]
    return F.pad(t, pad)


# ------------------------------------------------------------------ one row


@dataclass(eq=False)
class Row:
    """One answer being generated: its request, what it produced so far, and how to tell its reader."""

    request: ChatRequest
    prompt: list[int]
    max_new: int
    text: AnswerText
    generator: Optional[torch.Generator] = None
    seen: Optional[torch.Tensor] = None  # ids for the repetition penalty (prompt + answer)
    generated: list[int] = field(default_factory=list)
    finish_reason: Optional[str] = None
    cancelled: threading.Event = field(default_factory=threading.Event)
    id: int = field(default_factory=itertools.count().__next__)

    @property
    def settings(self):
        return self.request.settings

    def cancel(self) -> None:
        """Ask the batch to drop this row (thread-safe; takes effect at the next step)."""
        self.cancelled.set()

    def completion(self) -> Completion:
        return Completion(
            text=self.text.text,
            token_ids=list(self.generated),
            prompt_tokens=len(self.prompt),
            finish_reason=self.finish_reason or FINISH_CANCELLED,
        )


class DecodeBatch:
    """The rows being generated together on one model; ``admit`` adds rows, ``step`` decodes one token
    for every row. Both return the :class:`Delta` of each row they touched (the finishing one carries
    ``finish_reason``); finished and cancelled rows leave the batch by themselves.

    Not thread-safe: one thread drives it (a server's scheduler thread, or the caller of ``generate``).
    """

    def __init__(self, engine: HFEngine):
        self.engine = engine
        self.model = engine.model
        self.rows: list[Row] = []
        self.cache = None
        self.mask: Optional[torch.Tensor] = None  # [B, T] 1 = real token
        self.next_pos: Optional[torch.Tensor] = None  # [B] position id of the next token
        self.last: Optional[torch.Tensor] = None  # [B, 1] the token to feed next

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def device(self) -> torch.device:
        return self.engine.device

    # ---------------------------------------------------------------- forward

    def _forward(self, ids: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor, cache) -> torch.Tensor:
        kw: dict[str, Any] = {}
        if not bool(mask.all()):  # no padding anywhere: let attention take its unmasked fast path
            kw["attention_mask"] = mask
        kw[self.engine.cache_kwarg] = cache
        with torch.inference_mode():
            out = self.model(input_ids=ids, position_ids=positions, use_cache=True, logits_to_keep=1, **kw)
        return out.logits[:, -1, :].float()

    def _choose(self, logits: torch.Tensor, rows: list[Row]) -> list[int]:
        return next_tokens(logits, [r.settings for r in rows], [r.seen for r in rows], [r.generator for r in rows])

    # ---------------------------------------------------------------- rows in

    def admit(self, rows: list[Row]) -> list[tuple[Row, Delta]]:
        """Prefill ``rows`` (together, left padded), pick their first tokens and merge them into the batch."""
        rows = [r for r in rows if not r.cancelled.is_set()]
        if not rows:
            return []
        width = max(len(r.prompt) for r in rows)
        pad = self.engine.pad_id
        ids = torch.tensor([[pad] * (width - len(r.prompt)) + r.prompt for r in rows], device=self.device)
        mask = torch.tensor([[0] * (width - len(r.prompt)) + [1] * len(r.prompt) for r in rows], device=self.device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        cache = new_cache()
        logits = self._forward(ids, mask, positions, cache)
        first = self._choose(logits, rows)
        self._merge(rows, cache, mask, torch.tensor([len(r.prompt) for r in rows], device=self.device))
        return self._advance(rows, first)

    def _merge(self, rows: list[Row], cache, mask: torch.Tensor, next_pos: torch.Tensor) -> None:
        if not self.rows:
            self.rows, self.cache, self.mask, self.next_pos = list(rows), cache, mask, next_pos
            self.last = torch.zeros((len(rows), 1), dtype=torch.long, device=self.device)
            return
        t_old, t_new = self.mask.shape[1], mask.shape[1]
        width = max(t_old, t_new)
        kv = []
        for (k0, v0), (k1, v1) in zip(_kv(self.cache), _kv(cache)):
            kv.append(
                (
                    torch.cat([_pad_left(k0, width - t_old, -2), _pad_left(k1, width - t_new, -2)]),
                    torch.cat([_pad_left(v0, width - t_old, -2), _pad_left(v1, width - t_new, -2)]),
                )
            )
        self.cache = new_cache(kv)
        self.mask = torch.cat([_pad_left(self.mask, width - t_old, -1), _pad_left(mask, width - t_new, -1)])
        self.next_pos = torch.cat([self.next_pos, next_pos])
        self.last = torch.cat([self.last, torch.zeros((len(rows), 1), dtype=torch.long, device=self.device)])
        self.rows.extend(rows)

    # ---------------------------------------------------------------- one step

    def step(self) -> list[tuple[Row, Delta]]:
        """Decode one token for every row (cancelled rows are dropped first)."""
        out = self._drop([r for r in self.rows if r.cancelled.is_set()], FINISH_CANCELLED)
        if not self.rows:
            return out
        self.mask = torch.cat(
            [self.mask, torch.ones((len(self.rows), 1), dtype=self.mask.dtype, device=self.device)], 1
        )
        logits = self._forward(self.last, self.mask, self.next_pos[:, None], self.cache)
        self.next_pos = self.next_pos + 1
        return out + self._advance(list(self.rows), self._choose(logits, self.rows))

    def _advance(self, rows: list[Row], tokens: list[int]) -> list[tuple[Row, Delta]]:
        """Record each row's new token; finish rows at an end-of-turn token, a stop string or the length."""
        out, done = [], []
        stop_ids = self.engine.stop_ids
        for r, tok in zip(rows, tokens):
            r.generated.append(tok)
            if r.seen is not None:
                r.seen = torch.cat([r.seen, torch.tensor([tok], device=r.seen.device)])
            if tok in stop_ids:
                text, reason = r.text.finish(), FINISH_STOP
            else:
                text, stopped = r.text.push([tok])
                reason = FINISH_STOP if stopped else (FINISH_LENGTH if len(r.generated) >= r.max_new else None)
                if reason == FINISH_LENGTH:
                    text += r.text.finish()
            if reason is not None:
                r.finish_reason = reason
                done.append(r)
            out.append(
                (
                    r,
                    Delta(
                        text=text,
                        token_ids=[tok],
                        prompt_tokens=len(r.prompt),
                        completion_tokens=len(r.generated),
                        finish_reason=reason,
                    ),
                )
            )
        index = {r.id: i for i, r in enumerate(self.rows)}
        self.last[[index[r.id] for r in rows], 0] = torch.tensor(tokens, device=self.device)
        self._drop(done, None)
        return out

    # ---------------------------------------------------------------- rows out

    def _drop(self, rows: list[Row], reason: Optional[str]) -> list[tuple[Row, Delta]]:
        if not rows:
            return []
        gone = {r.id for r in rows}
        keep = [i for i, r in enumerate(self.rows) if r.id not in gone]
        out = []
        for r in rows:
            if reason is not None:
                r.finish_reason = reason
                out.append(
                    (
                        r,
                        Delta(
                            text="",
                            token_ids=[],
                            prompt_tokens=len(r.prompt),
                            completion_tokens=len(r.generated),
                            finish_reason=reason,
                        ),
                    )
                )
        self.rows = [self.rows[i] for i in keep]
        if not keep:
            self.cache = self.mask = self.next_pos = self.last = None
            return out
        idx = torch.tensor(keep, device=self.device)
        mask = self.mask[idx]
        start = int(mask.any(0).to(torch.int8).argmax())  # leading columns that are padding in every row left
        self.mask = mask[:, start:]
        self.cache = new_cache([(k[idx, :, start:], v[idx, :, start:]) for k, v in _kv(self.cache)])
        self.next_pos, self.last = self.next_pos[idx], self.last[idx]
        return out


# ------------------------------------------------------------------ the engine


def cache_kwarg(model: Any) -> str:
    """``cache`` in recent transformers, ``past_key_values`` before (and deprecated since)."""
    import inspect

    base = model.get_base_model() if hasattr(model, "get_base_model") else model  # a peft model passes kwargs on
    params = inspect.signature(type(base).forward).parameters
    return "cache" if "cache" in params else "past_key_values"


class HFEngine:
    """``generate.backend: hf``: a transformers model (with its LoRA adapter, if any) on CPU or GPU."""

    backend = "hf"

    def __init__(
        self, model: Any, tokenizer: Any, *, name: Optional[str] = None, max_batch_size: int = DEFAULT_MAX_BATCH
    ):
        self.model = model
        self.tokenizer = tokenizer
        self.name = name or str(getattr(getattr(model, "config", None), "_name_or_path", "") or "model")
        self.max_batch_size = max_batch_size
        config = getattr(model, "config", None)
        self.stop_ids = set(stop_token_ids(tokenizer, config))
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.pad_id = int(pad if pad is not None else 0)
        text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
        self.context_length = int(getattr(text_config, "max_position_embeddings", None) or 2048)
        self.cache_kwarg = cache_kwarg(model)

    @classmethod
    def from_config(cls, cfg: Any) -> HFEngine:
        from ..models import load_model

        loaded = load_model(cfg, with_adapter=True)
        loaded.model.eval()
        return cls(loaded.model, loaded.tokenizer, name=str(cfg.model.name))

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def sequence(self, request: ChatRequest) -> Row:
        """A row for ``request`` (its prompt encoded and checked against the context)."""
        ids = prompt_ids(self.tokenizer, request)
        check_fits(request, self.context_length)
        s = request.settings
        seen = torch.tensor(sorted(set(ids)), device=self.device) if s.repetition_penalty != 1.0 else None
        return Row(
            request=request,
            prompt=ids,
            max_new=min(s.max_new_tokens, self.context_length - len(ids)),
            text=AnswerText(self.tokenizer, s.stop),
            generator=seeded_generator(s, self.device),
            seen=seen,
        )

    def new_batch(self) -> DecodeBatch:
        return DecodeBatch(self)

    def generate(self, requests: Sequence[ChatRequest]) -> list[Completion]:
        """Every request answered, ``max_batch_size`` rows at a time; a finished row's place is taken
        by the next waiting request at once (its prompt prefilled between two decode steps)."""
        rows = [self.sequence(r) for r in requests]
        # similar prompt lengths side by side: less padding in each prefill
        waiting = sorted(rows, key=lambda r: len(r.prompt), reverse=True)
        batch = self.new_batch()
        while waiting or len(batch):
            room = self.max_batch_size - len(batch)
            if room > 0 and waiting:
                batch.admit(waiting[:room])
                waiting = waiting[room:]
            batch.step()
        return [r.completion() for r in rows]

    def stream(self, request: ChatRequest) -> Iterator[Delta]:
        """Deltas as tokens are generated, in the caller's thread; closing the iterator ends the row."""
        row = self.sequence(request)
        batch = self.new_batch()
        try:
            pending = batch.admit([row])
            while True:
                for _, delta in pending:
                    yield delta
                    if delta.finish_reason is not None:
                        return
                pending = batch.step()
        finally:
            row.cancel()
