"""New special tokens (``model.new_special_tokens``): add them to the tokenizer, grow the embeddings.

transformers' ``resize_token_embeddings`` adds rows to the input embeddings (and to the output head,
which stays tied when the model ties them), initialised to the mean of the old rows (transformers
5's default), so a new token starts as an average token rather than noise. Training has to reach
those rows: full and freeze runs train what they train; a LoRA/OFT run adds ``embed_tokens`` and
``lm_head`` to ``modules_to_save`` (:func:`kit.adapters.apply_adapter`), so the trained rows are saved
with the adapter. The tokenizer saved with the run holds the new tokens, and loading the base with
the same config adds them again, in the same order, so chat and export see the same ids.
"""

from __future__ import annotations

from typing import Any

__all__ = ["add_new_tokens", "NEW_TOKEN_MODULES"]

# what must train (and be saved with an adapter) for new rows to learn
NEW_TOKEN_MODULES = ["embed_tokens", "lm_head"]


def add_new_tokens(model: Any, tokenizer: Any, tokens: list | None) -> int:
    """Add ``tokens`` as special tokens and resize the model to the tokenizer; returns how many were new."""
    if not tokens:
        return 0
    # special: never split by the tokenizer's pre-tokenizer, as a chat template's markers must not be
    added = tokenizer.add_tokens([str(t) for t in tokens], special_tokens=True)
    vocab = model.get_input_embeddings().weight.shape[0]
    if len(tokenizer) > vocab:
        model.resize_token_embeddings(len(tokenizer))
    return added
