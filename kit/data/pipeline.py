"""From ``cfg.data`` to ready-to-train datasets: load, validate, mix, split, encode, pack, cache.

Stages ask for a *kind* of data (``sft``, ``text``, ``preference``, ``kto``, ``prompt``);
a dataset of another kind gets an error that says which kind the stage needs.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import shutil
import tempfile
from pathlib import Path
from typing import Any, Optional

from ..config import DataConfig, RunConfig
from ..paths import data_cache_dir
from .encode import IGNORE, encode_chat, encode_text_stream, pack
from .formats import FORMAT_KIND, DataError, detect_format, normalise_rows
from .registry import get_spec, read_spec

log = logging.getLogger(__name__)

KIND_FORMATS = {
    "sft": "alpaca, messages or sharegpt",
    "text": "text",
    "preference": "preference (prompt, chosen, rejected)",
    "kto": "kto (messages + label)",
    "prompt": "prompt (prompt [+ answer])",
}

# stages that can take an SFT-style chat and use it as another kind
CONVERTIBLE = {("sft", "text"), ("sft", "prompt")}


def _refs(x: Any) -> list[str]:
    if x is None:
        return []
    if isinstance(x, str):
        return [r.strip() for r in x.split(",") if r.strip()]
    return [str(r) for r in x]


def load_rows(ref: str, fmt: str = "auto", kind: Optional[str] = None, max_samples: Optional[int] = None) -> tuple[list[dict], str]:
    """Normalised rows of one dataset reference, and the kind they are."""
    spec = get_spec(ref)
    if spec.purpose == "eval":
        raise DataError(f"'{spec.name}' is an evaluation set (rows for kit.evaluate / forge eval in multiple-choice "
                        "mode), not training data", str(spec.source) if isinstance(spec.source, str) else spec.name)
    rows, source = read_spec(spec)
    if not rows:
        raise DataError("the dataset is empty", source)
    if max_samples:
        rows = rows[:max_samples]
    use_fmt = fmt if fmt != "auto" else (spec.format if spec.format != "auto" else None)
    if use_fmt is None:
        first = rows[0]
        if not isinstance(first, dict):
            raise DataError(f"expected an object per row, got {type(first).__name__}", source, 0)
        use_fmt = detect_format(list(first), source)
    have = FORMAT_KIND[use_fmt]
    norm = normalise_rows(rows, use_fmt, source)
    if kind is not None and have != kind:
        if (have, kind) in CONVERTIBLE:
            norm = [_convert(r, have, kind) for r in norm]
            have = kind
        else:
            raise DataError(f"this stage needs {kind} data ({KIND_FORMATS[kind]}), but the dataset is {use_fmt} "
                            f"({have} data)", source)
    return norm, have


def _convert(row: dict, have: str, want: str) -> dict:
    if (have, want) == ("sft", "text"):
        return {"text": "\n\n".join(m["content"] for m in row["messages"] if m["content"])}
    if (have, want) == ("sft", "prompt"):
        msgs = row["messages"]
        return {"prompt": msgs[:-1], "answer": msgs[-1]["content"]}
    raise AssertionError((have, want))


def mix(parts: list[list[dict]], data: DataConfig, seed: int) -> list[dict]:
    """Concatenate, or interleave with probabilities until the shortest (under) or longest (over) runs out."""
    if len(parts) == 1 or data.mix_strategy == "concat":
        return [r for p in parts for r in p]
    probs = data.interleave_probs or [1.0 / len(parts)] * len(parts)
    if len(probs) != len(parts):
        raise DataError(f"interleave_probs has {len(probs)} values for {len(parts)} datasets")
    rng = random.Random(seed)
    idx = [0] * len(parts)
    out: list[dict] = []
    exhausted = [False] * len(parts)
    while True:
        k = rng.choices(range(len(parts)), weights=probs)[0]
        if idx[k] >= len(parts[k]):
            exhausted[k] = True
            if data.mix_strategy == "interleave_under" or all(exhausted):
                break
            idx[k] = 0  # over-sampling: start this one again
        out.append(parts[k][idx[k]])
        idx[k] += 1
    return out


def load_splits(cfg: RunConfig, kind: str) -> tuple[list[dict], list[dict]]:
    """Normalised train and eval rows for ``kind``: mixed, shuffled with the seed where a split or
    packing needs it, and split."""
    d, seed = cfg.data, cfg.train.seed
    parts = [load_rows(r, d.format, kind, d.max_samples)[0] for r in _refs(d.dataset)]
    if not parts:
        raise DataError("no dataset given (data.dataset)")
    train = mix(parts, d, seed)
    # The trainer's sampler orders the training rows (seeded, reshuffled every epoch), as in TRL and
    # LLaMA-Factory, so the same seed gives the same batches there and here. Shuffling here as well
    # would only matter where the row order decides something: the held-out split and packing.
    if d.shuffle and ((d.val_size and not d.eval_dataset) or d.packing):
        random.Random(seed).shuffle(train)
    evals: list[dict] = []
    for r in _refs(d.eval_dataset):
        evals += load_rows(r, d.format, kind, d.max_samples)[0]
    if d.val_size and not evals:
        n = int(d.val_size) if d.val_size >= 1 else max(1, int(round(len(train) * d.val_size)))
        if n >= len(train):
            raise DataError(f"val_size={d.val_size} leaves no training rows ({len(train)} rows in all)")
        evals, train = train[:n], train[n:]
    return train, evals


# ------------------------------------------------------------------ tokenized + cached


def tokenizer_fingerprint(tok) -> str:
    h = hashlib.sha256()
    h.update(type(tok).__name__.encode())
    h.update(str(len(tok)).encode())
    h.update((tok.chat_template or "").encode() if isinstance(tok.chat_template, (str, type(None))) else
             json.dumps(tok.chat_template, sort_keys=True).encode())
    backend = getattr(tok, "backend_tokenizer", None)
    if backend is not None:
        h.update(backend.to_str().encode())
    else:
        h.update(json.dumps(tok.get_vocab(), sort_keys=True).encode())
    return h.hexdigest()[:16]


def content_hash(*parts: Any) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(json.dumps(p, sort_keys=True, default=str).encode())
        h.update(b"\x00")
    return h.hexdigest()[:24]


def _encode_sft(rows: list[dict], tok, d: DataConfig, packing: bool) -> list[dict]:
    encoded = []
    dropped = 0
    for r in rows:
        e = encode_chat(tok, r["messages"], d.cutoff_len, train_on_prompt=d.train_on_prompt,
                        mask_history=d.mask_history, tools=r.get("tools"))
        if all(x == IGNORE for x in e["labels"]):
            dropped += 1  # the answer was cut off entirely by cutoff_len
            continue
        encoded.append(e)
    if dropped:
        log.warning("%d examples had no trained tokens left after cutoff_len=%d and were skipped", dropped, d.cutoff_len)
    return pack(encoded, d.cutoff_len) if packing else encoded


def _encode_text(rows: list[dict], tok, d: DataConfig, packing: bool) -> list[dict]:
    if packing:
        # pre-training packs documents one after another; each keeps its own attention block
        docs = [{"input_ids": b["input_ids"], "labels": b["labels"]}
                for r in rows for b in encode_text_stream(tok, [r["text"]], d.cutoff_len)]
        return pack(docs, d.cutoff_len)
    return encode_text_stream(tok, [r["text"] for r in rows], d.cutoff_len)


ENCODERS = {"sft": _encode_sft, "text": _encode_text}


def build_tokenized(cfg: RunConfig, tok, kind: str, *, packing: Optional[bool] = None):
    """(train, eval) ``datasets.Dataset`` of input_ids/labels[/seq_lens], cached by content hash."""
    from datasets import Dataset

    d = cfg.data
    packing = d.packing if packing is None else packing
    train_rows, eval_rows = load_splits(cfg, kind)
    enc = ENCODERS[kind]
    key = content_hash("v2", kind, train_rows, eval_rows, tokenizer_fingerprint(tok),
                       {"cutoff_len": d.cutoff_len, "train_on_prompt": d.train_on_prompt,
                        "mask_history": d.mask_history, "packing": packing})
    cache = data_cache_dir() / key
    if d.cache and (cache / "DONE").exists():
        from datasets import load_from_disk
        train = load_from_disk(str(cache / "train"))
        ev = load_from_disk(str(cache / "eval")) if (cache / "eval").exists() else None
        log.info("tokenized data loaded from cache %s", cache)
        return train, ev, {"cache": str(cache), "cache_hit": True}
    train = Dataset.from_list(enc(train_rows, tok, d, packing))
    # eval is never packed: per-example losses stay comparable across settings
    ev = Dataset.from_list(enc(eval_rows, tok, d, False)) if eval_rows else None
    if len(train) == 0:
        raise DataError(f"no training examples left after encoding (cutoff_len={d.cutoff_len} too small?)")
    if d.cache:
        _save_cache(cache, train, ev)
    return train, ev, {"cache": str(cache) if d.cache else None, "cache_hit": False}


def _save_cache(cache: Path, train, ev) -> None:
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=str(cache.parent)))
    try:
        train.save_to_disk(str(tmp / "train"))
        if ev is not None:
            ev.save_to_disk(str(tmp / "eval"))
        (tmp / "DONE").write_text("ok\n")
        if cache.exists():
            shutil.rmtree(cache, ignore_errors=True)
        os.replace(tmp, cache)
    except OSError as e:
        log.warning("could not write the data cache %s: %s", cache, e)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def build_rows(cfg: RunConfig, kind: str):
    """(train, eval) ``datasets.Dataset`` of normalised rows, for stages whose TRL trainer applies
    the chat template itself (preference, kto, prompt): mixed, shuffled and split like the rest."""
    from datasets import Dataset

    train_rows, eval_rows = load_splits(cfg, kind)
    train = Dataset.from_list(train_rows)
    return train, (Dataset.from_list(eval_rows) if eval_rows else None)
