"""From ``cfg.data`` to ready-to-train datasets: load, validate, mix, split, encode, pack, cache.

Stages ask for a *kind* of data (``sft``, ``text``, ``preference``, ``kto``, ``prompt``);
a dataset of another kind gets an error that says which kind the stage needs.

:func:`validate_dataset` reads and checks every row with no tokenizer or model, so the engine can
fail on a bad row in seconds, before it spends a minute loading the model.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import shutil
import tempfile
from collections import OrderedDict
from pathlib import Path
from typing import Any, Optional

from ..config import DataConfig, RunConfig
from ..config_rules import dataset_refs
from ..paths import data_cache_dir
from .encode import IGNORE, TemplateError, encode_chat, encode_text_stream, pack
from .formats import FORMAT_KIND, DataError, Row, detect_format, normalise_rows, origin_of
from .hub import HubOptions, hub_options
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


# Normalised rows of files read lately, keyed by the file's identity (path, size, mtime) and the
# options: validate_dataset reads the data before the model loads and the stage reads it again
# after, so a large file is parsed and checked once.
_ROWS_CACHE: OrderedDict[tuple, tuple[list[dict], str]] = OrderedDict()
_ROWS_CACHE_SIZE = 8


def load_rows(
    ref: str,
    fmt: str = "auto",
    kind: Optional[str] = None,
    max_samples: Optional[int] = None,
    hub: Optional[HubOptions] = None,
) -> tuple[list[dict], str]:
    """Normalised rows of one dataset reference, and the kind they are (``hub``: kit.data.hub's options)."""
    spec = get_spec(ref, hub)
    if spec.purpose == "eval":
        raise DataError(
            f"'{spec.name}' is an evaluation set (rows for kit.evaluate / forge eval in multiple-choice "
            "mode), not training data",
            str(spec.source) if isinstance(spec.source, str) else spec.name,
        )
    key = None
    if isinstance(spec.source, (str, os.PathLike)):
        try:
            st = os.stat(spec.source)
            key = (str(spec.source), st.st_size, st.st_mtime_ns, spec.format, fmt, kind, max_samples)
        except OSError:
            pass  # read_file names the problem
    if key in _ROWS_CACHE:
        _ROWS_CACHE.move_to_end(key)
        norm, have = _ROWS_CACHE[key]
        return list(norm), have
    norm, have = _load_rows(spec, fmt, kind, max_samples)
    if key is not None:
        _ROWS_CACHE[key] = (norm, have)
        while len(_ROWS_CACHE) > _ROWS_CACHE_SIZE:
            _ROWS_CACHE.popitem(last=False)
    return list(norm), have


def _load_rows(spec, fmt: str, kind: Optional[str], max_samples: Optional[int]) -> tuple[list[dict], str]:
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
            raise DataError(
                f"this stage needs {kind} data ({KIND_FORMATS[kind]}), but the dataset is {use_fmt} ({have} data)",
                source,
            )
    return norm, have


def _convert(row: dict, have: str, want: str) -> dict:
    if (have, want) == ("sft", "text"):
        out = Row(text="\n\n".join(m["content"] for m in row["messages"] if m["content"]))
    elif (have, want) == ("sft", "prompt"):
        msgs = row["messages"]
        out = Row(prompt=msgs[:-1], answer=msgs[-1]["content"])
    else:
        raise AssertionError((have, want))
    out.origin = origin_of(row)
    return out


def mix(parts: list[list[dict]], data: DataConfig, seed: int) -> list[dict]:
    """Concatenate, or interleave with probabilities until the shortest (under) or longest (over) runs out."""
    if len(parts) == 1 or data.mix_strategy == "concat":
        return [r for p in parts for r in p]
    probs = data.interleave_probs or [1.0 / len(parts)] * len(parts)  # length checked by kit.config_rules
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
    hub = hub_options(cfg)
    # at least one dataset: a rule of the validator (kit.config_rules)
    parts = [load_rows(r, d.format, kind, d.max_samples, hub)[0] for r in dataset_refs(d.dataset)]
    train = mix(parts, d, seed)
    # The trainer's sampler orders the training rows (seeded, reshuffled every epoch), as in TRL and
    # LLaMA-Factory, so the same seed gives the same batches there and here. Shuffling here as well
    # would only matter where the row order decides something: the held-out split and packing.
    if d.shuffle and ((d.val_size and not d.eval_dataset) or d.packing):
        random.Random(seed).shuffle(train)
    evals: list[dict] = []
    for r in dataset_refs(d.eval_dataset):
        evals += load_rows(r, d.format, kind, d.max_samples, hub)[0]
    if d.val_size and not evals:
        n = int(d.val_size) if d.val_size >= 1 else max(1, int(round(len(train) * d.val_size)))
        if n >= len(train):
            raise DataError(f"val_size={d.val_size} leaves no training rows ({len(train)} rows in all)")
        evals, train = train[:n], train[n:]
    return train, evals


def validate_dataset(cfg: RunConfig, kind: Optional[str] = None) -> dict:
    """Read and check every training and evaluation row of ``cfg`` -- files, format, fields, types,
    the kind the stage needs, the split -- with no tokenizer or model. Raises :class:`DataError`
    naming the file, row and field; returns ``{"kind", "train_rows", "eval_rows"}``.

    ``kind``: the data kind the stage reads (``get_recipe(cfg.stage.name).data_kind``; the data
    layer does not import the stages). None checks each dataset as its own format, without the
    kind check or the split. What needs the tokenizer (the chat template, ``cutoff_len``) is
    checked when the stage encodes.
    """
    if kind is not None:
        train, evals = load_splits(cfg, kind)
        return {"kind": kind, "train_rows": len(train), "eval_rows": len(evals)}
    d = cfg.data
    kinds, n_train, n_eval = set(), 0, 0
    for refs, is_eval in ((dataset_refs(d.dataset), False), (dataset_refs(d.eval_dataset), True)):
        for r in refs:
            rows, have = load_rows(r, d.format, None, d.max_samples, hub_options(cfg))
            kinds.add(have)
            n_eval, n_train = (n_eval + len(rows), n_train) if is_eval else (n_eval, n_train + len(rows))
    return {"kind": kinds.pop() if len(kinds) == 1 else None, "train_rows": n_train, "eval_rows": n_eval}


# ------------------------------------------------------------------ tokenized + cached


def tokenizer_fingerprint(tok) -> str:
    h = hashlib.sha256()
    h.update(type(tok).__name__.encode())
    h.update(str(len(tok)).encode())
    h.update(
        (tok.chat_template or "").encode()
        if isinstance(tok.chat_template, (str, type(None)))
        else json.dumps(tok.chat_template, sort_keys=True).encode()
    )
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
        try:
            e = encode_chat(
                tok,
                r["messages"],
                d.cutoff_len,
                train_on_prompt=d.train_on_prompt,
                mask_history=d.mask_history,
                tools=r.get("tools"),
            )
        except TemplateError as err:
            if err.source is not None:
                raise
            raise TemplateError(err.reason, *origin_of(r)) from None
        if all(x == IGNORE for x in e["labels"]):
            dropped += 1  # the answer was cut off entirely by cutoff_len
            continue
        encoded.append(e)
    if dropped:
        log.warning(
            "%d examples had no trained tokens left after cutoff_len=%d and were skipped", dropped, d.cutoff_len
        )
    return pack(encoded, d.cutoff_len) if packing else encoded


def _encode_text(rows: list[dict], tok, d: DataConfig, packing: bool) -> list[dict]:
    if packing:
        # pre-training packs documents one after another; each keeps its own attention block
        docs = [
            {"input_ids": b["input_ids"], "labels": b["labels"]}
            for r in rows
            for b in encode_text_stream(tok, [r["text"]], d.cutoff_len)
        ]
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
    key = content_hash(
        "v2",
        kind,
        train_rows,
        eval_rows,
        tokenizer_fingerprint(tok),
        {
            "cutoff_len": d.cutoff_len,
            "train_on_prompt": d.train_on_prompt,
            "mask_history": d.mask_history,
            "packing": packing,
        },
    )
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
    return _as_dataset(Dataset, train_rows), (_as_dataset(Dataset, eval_rows) if eval_rows else None)


def _as_dataset(Dataset, rows: list[dict]):
    try:
        return Dataset.from_list(rows)
    except (TypeError, ValueError) as e:  # pyarrow: one column holds values of different types across rows
        source = origin_of(rows[0])[0] if rows else "<data>"
        raise DataError(
            f"the rows cannot be stored as one table: a field holds different types in different rows "
            f"({type(e).__name__}: {e})",
            source,
        ) from None
