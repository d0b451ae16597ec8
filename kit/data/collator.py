"""Batch collation: right padding, or packed rows with a block-diagonal causal mask.

Why a 4D float mask: restarting ``position_ids`` alone does not isolate packed examples on
the CPU attention kernels (sdpa and eager both attend across the boundary; see
test_packing_without_the_block_mask_would_leak in tests/test_masks.py), and a 4D bool mask only
works with sdpa. A float mask with 0 where attention is allowed and the dtype's minimum
elsewhere works with both.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from .encode import IGNORE


def block_causal_mask(seq_lens_per_row: list[list[int]], length: int, dtype: torch.dtype) -> torch.Tensor:
    """(batch, 1, length, length) additive mask: causal inside each example, blocked across examples and padding."""
    neg = torch.finfo(dtype).min
    mask = torch.full((len(seq_lens_per_row), 1, length, length), neg, dtype=dtype)
    causal = torch.ones(length, length, dtype=torch.bool).tril()
    for b, lens in enumerate(seq_lens_per_row):
        s = 0
        for n in lens:
            blk = mask[b, 0, s : s + n, s : s + n]
            blk.masked_fill_(causal[:n, :n], 0.0)
            s += n
        if s < length:  # padding rows attend to themselves only, so softmax stays finite
            idx = torch.arange(s, length)
            mask[b, 0, idx, idx] = 0.0
    return mask


def _starts_ignored(labels, seq_lens: list[int]) -> torch.Tensor:
    """A copy of a row's labels where the first token of each example is not a target: it must
    not be predicted from the end of the example before it."""
    lab = torch.as_tensor(labels).clone()
    starts = torch.tensor([0, *seq_lens[:-1]]).cumsum(0)
    lab[starts] = IGNORE
    return lab


def _restart_positions(seq_lens: list[int]) -> torch.Tensor:
    """Position ids that start again at 0 for every example: [3, 2] -> [0, 1, 2, 0, 1]."""
    lens = torch.as_tensor(seq_lens, dtype=torch.long)
    starts = torch.cumsum(lens, 0) - lens
    return torch.arange(int(lens.sum())) - torch.repeat_interleave(starts, lens)


@dataclass
class ForgeCollator:
    """Collate ``{"input_ids", "labels", ["seq_lens"]}`` rows.

    Adds ``num_real_tokens`` / ``num_trained_tokens`` (popped by the trainer before the forward)
    so tokens/s counts real tokens, never padding.
    """

    pad_token_id: int
    mask_dtype: torch.dtype = torch.float32
    padding_free: bool = False

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        if self.padding_free:
            return self._flat(rows)
        length = max(len(r["input_ids"]) for r in rows)
        ids = torch.full((len(rows), length), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(rows), length), IGNORE, dtype=torch.long)
        # a packed dataset always gets the 4D path, even for a batch of single examples, so every
        # rank of a distributed job runs the same collectives on tensors of the same dtype
        packed = any(r.get("seq_lens") is not None for r in rows)
        for b, r in enumerate(rows):
            n = len(r["input_ids"])
            ids[b, :n] = torch.as_tensor(r["input_ids"])
            labels[b, :n] = (
                _starts_ignored(r["labels"], r["seq_lens"])
                if packed and r.get("seq_lens")
                else torch.as_tensor(r["labels"])
            )
        batch = {"input_ids": ids, "labels": labels}
        real = sum(len(r["input_ids"]) for r in rows)
        if packed:
            lens = [list(r.get("seq_lens") or [len(r["input_ids"])]) for r in rows]
            pos = torch.zeros((len(rows), length), dtype=torch.long)
            for b, ls in enumerate(lens):
                pos[b, : sum(ls)] = _restart_positions(ls)
            batch["position_ids"] = pos
            batch["attention_mask"] = block_causal_mask(lens, length, self.mask_dtype)
        else:
            att = torch.zeros((len(rows), length), dtype=torch.long)
            for b, r in enumerate(rows):
                att[b, : len(r["input_ids"])] = 1
            batch["attention_mask"] = att
        batch["num_real_tokens"] = torch.tensor(real)
        batch["num_trained_tokens"] = (labels != IGNORE).sum()
        return batch

    def _flat(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        """Padding-free layout: every example of the batch back to back in one ``(1, total)`` row.

        No padding and no ``L x L`` mask: examples are delimited by ``cu_seq_lens_q/k`` (the
        flash-attn varlen convention that transformers forwards to the attention layers, read by
        flash-attn on GPUs and by :mod:`kit.models.attention` elsewhere) and positions restart at
        every example. Only valid with one of those attention implementations.
        """
        ids, labels, lens = [], [], []
        for r in rows:
            seq = list(r.get("seq_lens") or [len(r["input_ids"])])
            ids.append(torch.as_tensor(r["input_ids"]))
            labels.append(_starts_ignored(r["labels"], seq))
            lens += seq
        ids_t, lab_t = torch.cat(ids)[None], torch.cat(labels)[None]
        seq_lens = torch.tensor(lens, dtype=torch.int32)
        cu = torch.zeros(len(lens) + 1, dtype=torch.int32)
        cu[1:] = seq_lens.cumsum(0)
        max_len = int(seq_lens.max())
        return {
            "input_ids": ids_t,
            "labels": lab_t,
            "position_ids": _restart_positions(lens)[None],
            "cu_seq_lens_q": cu,
            "cu_seq_lens_k": cu,
            "max_length_q": max_len,
            "max_length_k": max_len,
            "num_real_tokens": torch.tensor(ids_t.shape[1]),
            "num_trained_tokens": (lab_t != IGNORE).sum(),
        }


def split_flat(batch: dict[str, Any], max_tokens: int | None) -> list[dict[str, Any]]:
    """Split a padding-free batch (:meth:`ForgeCollator._flat`) into pieces of whole examples with
    at most ``max_tokens`` tokens each (an example longer than that is a piece of its own).

    Examples go into pieces first-fit by decreasing length: the fewest, fullest forward passes,
    the largest first (the passes after it reuse the memory it freed). The loss is a sum over
    examples, so which pass holds an example changes nothing but float rounding. Each piece is a
    padding-free batch in its own right (cu_seq_lens, positions, token counts). One piece (the
    batch itself) when it already fits.
    """
    cu = batch["cu_seq_lens_q"].tolist()
    if max_tokens is None or cu[-1] <= max_tokens:
        return [batch]
    lens = [b - a for a, b in zip(cu, cu[1:])]
    bins: list[list[int]] = []
    room: list[int] = []
    for k in sorted(range(len(lens)), key=lambda k: (-lens[k], k)):
        j = next((j for j, r in enumerate(room) if lens[k] <= r), None)
        if j is None:
            bins.append([k])
            room.append(max_tokens - lens[k])
        else:
            bins[j].append(k)
            room[j] -= lens[k]
    pieces = []
    for members in bins:
        members.sort()
        spans = [slice(cu[k], cu[k + 1]) for k in members]
        take = lambda t: torch.cat([t[:, sp] for sp in spans], dim=1)  # noqa: E731, B023 (used within this iteration)
        piece_lens = torch.tensor([lens[k] for k in members], dtype=batch["cu_seq_lens_q"].dtype)
        piece_cu = torch.zeros(len(members) + 1, dtype=piece_lens.dtype)
        piece_cu[1:] = piece_lens.cumsum(0)
        labels = take(batch["labels"])
        max_len = int(piece_lens.max())
        pieces.append(
            {
                "input_ids": take(batch["input_ids"]),
                "labels": labels,
                "position_ids": take(batch["position_ids"]),
                "cu_seq_lens_q": piece_cu,
                "cu_seq_lens_k": piece_cu.clone(),
                "max_length_q": max_len,
                "max_length_k": max_len,
                "num_real_tokens": torch.tensor(int(piece_cu[-1])),
                "num_trained_tokens": (labels != IGNORE).sum(),
            }
        )
    return pieces
