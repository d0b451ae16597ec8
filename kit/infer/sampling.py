"""Choosing the next token of each row of a batch, each row with its own settings.

The steps and their order are transformers' (``generate``): repetition penalty, temperature,
top-k, top-p, then a draw; greedy rows take the arg-max. They are done per row because the rows of
a server batch belong to different requests (one greedy, one at temperature 0.8 with a seed...).
A seeded row draws from its own ``torch.Generator``, so its answer does not depend on what else is
in the batch.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch

from .engine import GenerationSettings


def seeded_generator(settings: GenerationSettings, device: torch.device | str = "cpu") -> Optional[torch.Generator]:
    """A generator for a seeded sampled request (None: greedy, or unseeded: torch's global RNG)."""
    if settings.greedy or settings.seed is None:
        return None
    g = torch.Generator(device=device)
    g.manual_seed(int(settings.seed))
    return g


def penalize_repeats(logits: torch.Tensor, seen: torch.Tensor, penalty: float) -> torch.Tensor:
    """CTRL's repetition penalty (as transformers): logits of seen tokens divided by ``penalty`` when
    positive, multiplied when negative. ``logits`` [V], ``seen`` the ids of the prompt and answer so far."""
    if penalty == 1.0 or seen.numel() == 0:
        return logits
    vals = logits.gather(0, seen)
    logits = logits.clone()
    logits.scatter_(0, seen, torch.where(vals < 0, vals * penalty, vals / penalty))
    return logits


def filter_top_k_top_p(logits: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """Logits with everything outside the top-k and the top-p nucleus set to -inf (at least one kept)."""
    if top_k and 0 < top_k < logits.numel():
        kth = torch.topk(logits, top_k).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=False)
        cum = sorted_logits.softmax(-1).cumsum(-1)
        drop = cum <= (1 - top_p)
        drop[-1] = False  # keep the most likely token whatever top_p says
        logits = logits.masked_fill(drop.scatter(0, order, drop), float("-inf"))
    return logits


def next_tokens(
    logits: torch.Tensor,
    settings: Sequence[GenerationSettings],
    seen: Sequence[Optional[torch.Tensor]],
    generators: Sequence[Optional[torch.Generator]],
) -> list[int]:
    """One token per row of ``logits`` [B, V] (float32)."""
    plain = all(s.greedy and s.repetition_penalty == 1.0 for s in settings)
    if plain:
        return logits.argmax(-1).tolist()
    out = []
    for i, s in enumerate(settings):
        row = logits[i]
        if s.repetition_penalty != 1.0 and seen[i] is not None:
            row = penalize_repeats(row, seen[i], s.repetition_penalty)
        if s.greedy:
            out.append(int(row.argmax()))
            continue
        row = filter_top_k_top_p(row / s.temperature, s.top_k, s.top_p)
        probs = torch.softmax(row, -1)
        out.append(int(torch.multinomial(probs, 1, generator=generators[i])))
    return out
