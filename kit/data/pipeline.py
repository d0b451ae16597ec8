"""From ``cfg.data`` to ready-to-train datasets: load, validate, mix, split, encode, pack, cache.

Stages ask for a *kind* of data (``sft``, ``text``, ``preference``, ``kto``, ``prompt``);
a dataset of another kind gets an error that says which kind the stage needs.

:func:`validate_dataset` reads and checks every row with no tokenizer or model, so the engine can
fail on a bad row in seconds, before it spends a minute loading the model.
"""

from __future__ import annotations

import atexit
import functools
import hashlib
import itertools
import json
import logging
import os
import random
import shutil
import tempfile
from collections import OrderedDict, deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Iterable, Iterator, Optional

from ..config import DataConfig, RunConfig
from ..config_rules import dataset_refs
from ..paths import data_cache_dir
from .encode import IGNORE, TemplateError, encode_chats, encode_text_stream, pack, pack_bins, packed_row
from .formats import FORMAT_KIND, DataError, Row, detect_format, iter_normalised, origin_of
from .hub import HubOptions, hub_options
from .readers import iter_file
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
# options: a stage that reads the rows (preference, kto, prompt) after validate_dataset counted
# them gets a small file parsed and checked once. Files above _ROWS_CACHE_BYTES are not kept:
# holding every row of a large file is what the streaming path avoids.
_ROWS_CACHE: OrderedDict[tuple, tuple[list[dict], str]] = OrderedDict()
_ROWS_CACHE_SIZE = 8
_ROWS_CACHE_BYTES = 64 * 2**20
_END = object()


def _train_spec(ref: str, hub: Optional[HubOptions]):
    spec = get_spec(ref, hub)
    if spec.purpose == "eval":
        raise DataError(
            f"'{spec.name}' is an evaluation set (rows for kit.evaluate / forge eval in multiple-choice "
            "mode), not training data",
            str(spec.source) if isinstance(spec.source, str) else spec.name,
        )
    return spec


def load_rows(
    ref: str,
    fmt: str = "auto",
    kind: Optional[str] = None,
    max_samples: Optional[int] = None,
    hub: Optional[HubOptions] = None,
) -> tuple[list[dict], str]:
    """Normalised rows of one dataset reference, and the kind they are (``hub``: kit.data.hub's options)."""
    spec = _train_spec(ref, hub)
    key = None
    if isinstance(spec.source, (str, os.PathLike)):
        try:
            st = os.stat(spec.source)
            if st.st_size <= _ROWS_CACHE_BYTES:
                key = (str(spec.source), st.st_size, st.st_mtime_ns, spec.format, fmt, kind, max_samples)
        except OSError:
            pass  # read_file names the problem
    if key in _ROWS_CACHE:
        _ROWS_CACHE.move_to_end(key)
        norm, have = _ROWS_CACHE[key]
        return list(norm), have
    rows, have, _ = open_rows(spec, fmt, kind, max_samples)
    norm = list(rows)
    if key is not None:
        _ROWS_CACHE[key] = (norm, have)
        while len(_ROWS_CACHE) > _ROWS_CACHE_SIZE:
            _ROWS_CACHE.popitem(last=False)
    return list(norm), have


def _raw_rows(spec) -> tuple[Iterator[Any], str]:
    if isinstance(spec.source, (str, os.PathLike)):
        return iter_file(spec.source), str(spec.source)  # read as a stream, never whole
    rows, source = read_spec(spec)
    return iter(rows), source


def open_rows(spec, fmt: str, kind: Optional[str], max_samples: Optional[int]) -> tuple[Iterator[Row], str, str]:
    """(the normalised rows of ``spec``, checked as they are read; their kind; the source label).
    The format is told from the first row; a kind mismatch is refused before any row is checked."""
    raw, source = _raw_rows(spec)
    if max_samples:
        raw = itertools.islice(raw, max_samples)
    first = next(raw, _END)
    if first is _END:
        raise DataError("the dataset is empty", source)
    use_fmt = fmt if fmt != "auto" else (spec.format if spec.format != "auto" else None)
    if use_fmt is None:
        if not isinstance(first, dict):
            raise DataError(f"expected an object per row, got {type(first).__name__}", source, 0)
        use_fmt = detect_format(list(first), source)
    have = FORMAT_KIND[use_fmt]
    rows: Iterator[Row] = iter_normalised(itertools.chain([first], raw), use_fmt, source)
    if kind is not None and have != kind:
        if (have, kind) not in CONVERTIBLE:
            raise DataError(
                f"this stage needs {kind} data ({KIND_FORMATS[kind]}), but the dataset is {use_fmt} ({have} data)",
                source,
            )
        rows = map(functools.partial(_convert, have=have, want=kind), rows)
        have = kind
    return rows, have, source


# ------------------------------------------------------------------ fingerprints and counts


def file_digest(path: str | os.PathLike) -> str:
    """A content hash of the file's bytes (xxh3-128, the hash ``datasets`` uses: a few GB/s), so a
    cache hit needs no parsing; a changed file, even with the same size and time, changes it."""
    import xxhash

    h = xxhash.xxh3_128()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


def source_key(spec, fmt: str, kind: Optional[str], max_samples: Optional[int]) -> Optional[str]:
    """What the normalised rows of a file source depend on: its bytes, the format options and this
    version of the checks; None for sources that are not a file (rows in memory, a Hub dataset)."""
    if not isinstance(spec.source, (str, os.PathLike)) or not os.path.isfile(spec.source):
        return None
    # "rows-v1" stands for this version of the row checks: bump it when formats.py checks change
    # (the package version would need the facade, a layer above the data layer)
    return content_hash("rows-v1", file_digest(spec.source), spec.format, fmt, kind, max_samples)


def _record_path(key: str) -> Path:
    return data_cache_dir() / "checked" / f"{key}.json"


def count_rows(
    ref: str,
    fmt: str = "auto",
    kind: Optional[str] = None,
    max_samples: Optional[int] = None,
    hub: Optional[HubOptions] = None,
    remember: bool = True,
    key: Optional[str] = None,
) -> tuple[int, str]:
    """Check every row of one dataset reference and count them, holding one row at a time.

    A file that passed before with the same bytes and options is not read again: the count and
    kind are kept under ``data-cache/checked/`` (``remember=False``, i.e. ``data.cache`` off,
    neither reads nor writes that record)."""
    spec = _train_spec(ref, hub)
    key = key or source_key(spec, fmt, kind, max_samples)  # ``key``: the caller hashed the file already
    if key is None:
        rows, have = load_rows(ref, fmt, kind, max_samples, hub)
        return len(rows), have
    record = _record_path(key)
    if remember:
        try:
            got = json.loads(record.read_text())
            return int(got["rows"]), str(got["kind"])
        except (OSError, ValueError, KeyError, TypeError):
            pass  # not checked yet (or an unreadable record): check now
    if os.path.getsize(spec.source) <= _ROWS_CACHE_BYTES:
        norm, have = load_rows(ref, fmt, kind, max_samples, hub)  # kept for a stage that reads the rows next
        n = len(norm)
    else:
        rows, have, _ = open_rows(spec, fmt, kind, max_samples)
        n = sum(1 for _ in rows)
    if remember:
        _write_atomic(record, json.dumps({"rows": n, "kind": have, "source": str(spec.source)}))
    return n, have


def _write_atomic(path: Path, text: str) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=str(path.parent))
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except OSError as e:
        log.warning("could not write %s: %s", path, e)


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


def split_plan(
    d: DataConfig, seed: int, train_counts: list[int], eval_counts: list[int]
) -> tuple[list[int], list[int]]:
    """Train and eval row numbers (into the train sets' rows then the eval sets' rows, in file
    order): mixed, shuffled with the seed where a split or packing needs it, and split. Row
    numbers instead of rows, so the same plan serves rows in memory and rows on disk; the random
    draws depend only on the counts, so both give the same order."""
    parts, offset = [], 0
    for n in train_counts:
        parts.append(range(offset, offset + n))
        offset += n
    train = list(mix(parts, d, seed))
    # The trainer's sampler orders the training rows (seeded, reshuffled every epoch), as in TRL and
    # LLaMA-Factory, so the same seed gives the same batches there and here. Shuffling here as well
    # would only matter where the row order decides something: the held-out split and packing.
    if d.shuffle and ((d.val_size and not d.eval_dataset) or d.packing):
        random.Random(seed).shuffle(train)
    evals = list(range(offset, offset + sum(eval_counts)))
    if d.val_size and not evals:
        n = int(d.val_size) if d.val_size >= 1 else max(1, int(round(len(train) * d.val_size)))
        if n >= len(train):
            raise DataError(f"val_size={d.val_size} leaves no training rows ({len(train)} rows in all)")
        evals, train = train[:n], train[n:]
    return train, evals


def load_splits(cfg: RunConfig, kind: str) -> tuple[list[dict], list[dict]]:
    """Normalised train and eval rows for ``kind``: mixed, shuffled with the seed where a split or
    packing needs it, and split (:func:`split_plan`)."""
    d, hub = cfg.data, hub_options(cfg)
    # at least one dataset: a rule of the validator (kit.config_rules)
    parts = [load_rows(r, d.format, kind, d.max_samples, hub)[0] for r in dataset_refs(d.dataset)]
    evals = [load_rows(r, d.format, kind, d.max_samples, hub)[0] for r in dataset_refs(d.eval_dataset)]
    train_idx, eval_idx = split_plan(d, cfg.train.seed, [len(p) for p in parts], [len(p) for p in evals])
    rows = [r for p in parts + evals for r in p]
    return [rows[i] for i in train_idx], [rows[i] for i in eval_idx]


def validate_dataset(cfg: RunConfig, kind: Optional[str] = None) -> dict:
    """Read and check every training and evaluation row of ``cfg`` -- files, format, fields, types,
    the kind the stage needs, the split -- with no tokenizer or model. Raises :class:`DataError`
    naming the file, row and field; returns ``{"kind", "train_rows", "eval_rows"}``.

    Files are read as a stream (one row in memory at a time), and a file checked before with the
    same bytes is not read again (:func:`count_rows`).

    ``kind``: the data kind the stage reads (``get_recipe(cfg.stage.name).data_kind``; the data
    layer does not import the stages). None checks each dataset as its own format, without the
    kind check or the split. What needs the tokenizer (the chat template, ``cutoff_len``) is
    checked when the stage encodes.
    """
    d, hub = cfg.data, hub_options(cfg)
    if kind is not None:
        train = [count_rows(r, d.format, kind, d.max_samples, hub, d.cache)[0] for r in dataset_refs(d.dataset)]
        evals = [count_rows(r, d.format, kind, d.max_samples, hub, d.cache)[0] for r in dataset_refs(d.eval_dataset)]
        train_idx, eval_idx = split_plan(d, cfg.train.seed, train, evals)
        return {"kind": kind, "train_rows": len(train_idx), "eval_rows": len(eval_idx)}
    kinds, n_train, n_eval = set(), 0, 0
    for refs, is_eval in ((dataset_refs(d.dataset), False), (dataset_refs(d.eval_dataset), True)):
        for r in refs:
            n, have = count_rows(r, d.format, None, d.max_samples, hub, d.cache)
            kinds.add(have)
            n_eval, n_train = (n_eval + n, n_train) if is_eval else (n_eval, n_train + n)
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


# rows encoded per batch: one template call and one tokenizer call each (kit.data.encode.encode_chats);
# 256 is as fast as 512 with three batches in flight and holds ~90 MB less (10k chat rows, 2 cores)
ENCODE_BATCH = 256
# worker threads encoding batches, and batches in flight while the next is read (see _write_encoded_sft)
ENCODE_THREADS = 3


class _Source:
    """One dataset reference of a run, for the tokenized path: its row count and cache key, and
    either its rows (in memory: a registered list, a Hub dataset) or a way to stream them (a file)."""

    def __init__(self, ref: str, d: DataConfig, kind: str, hub: HubOptions):
        self.spec = _train_spec(ref, hub)
        self.args = (d.format, kind, d.max_samples)
        self.rows: Optional[list[dict]] = None
        key = source_key(self.spec, *self.args)
        if key is None:
            self.rows = load_rows(ref, d.format, kind, d.max_samples, hub)[0]
            self.n, self.key = len(self.rows), content_hash("rows", self.rows)
        else:
            self.n, self.key = count_rows(ref, d.format, kind, d.max_samples, hub, d.cache, key)[0], key

    def __iter__(self) -> Iterator[dict]:
        return iter(self.rows) if self.rows is not None else open_rows(self.spec, *self.args)[0]


def _batches(rows: Iterable[dict], size: int) -> Iterator[list[dict]]:
    it = iter(rows)
    while batch := list(itertools.islice(it, size)):
        yield batch


def _encode_sft_batch(batch: list[dict], tok, d: DataConfig) -> list[dict]:
    chats = [(r["messages"], r.get("tools")) for r in batch]
    try:
        return encode_chats(tok, chats, d.cutoff_len, train_on_prompt=d.train_on_prompt, mask_history=d.mask_history)
    except TemplateError as err:
        if err.source is not None:
            raise
        where = origin_of(batch[err.index]) if err.index is not None else ("<data>", None)
        raise TemplateError(err.reason, *where) from None


def _encode_sft(rows: list[dict], tok, d: DataConfig, packing: bool) -> list[dict]:
    """Rows in memory to encoded examples (those with no trained token left after ``cutoff_len``
    skipped), packed if asked: the list form of what build_tokenized writes, for previews."""
    encoded = [e for batch in _batches(rows, ENCODE_BATCH) for e in _encode_sft_batch(batch, tok, d)]
    kept = [encoded[i] for i in _kept(range(len(encoded)), [_has_target(e) for e in encoded], d)]
    return pack(kept, d.cutoff_len) if packing else kept


def _has_target(example: dict) -> bool:
    """Whether an encoded example kept a trained token after ``cutoff_len``."""
    return example["labels"].count(IGNORE) != len(example["labels"])


def _write_encoded_sft(sources: list[_Source], tok, d: DataConfig, path: Path) -> list[bool]:
    """Encode every row of every source, in file order, into an Arrow file one batch at a time;
    returns whether each row kept a trained token after ``cutoff_len``."""
    from datasets import Features, Sequence, Value
    from datasets.arrow_writer import ArrowWriter

    ids = Sequence(Value("int64"))
    trained: list[bool] = []

    def write(enc: list[dict]) -> None:
        writer.write_table(_id_table({col: [e[col] for e in enc] for col in ("input_ids", "labels")}))
        trained.extend(_has_target(e) for e in enc)

    # Batches are encoded in worker threads while this thread reads, checks and writes. The
    # tokenizer runs in Rust without the GIL (on every core); the template and the bookkeeping
    # around it hold the GIL, so with several batches in flight one renders while another
    # tokenizes. Results are written in file order. Three threads beat one by about 5 % on 2 cores
    # (10k chat rows, bench/data_throughput.py); more batches in flight would only hold memory.
    with ArrowWriter(features=Features({"input_ids": ids, "labels": ids}), path=str(path)) as writer:
        with ThreadPoolExecutor(ENCODE_THREADS, thread_name_prefix="forge-encode") as pool:
            pending: deque = deque()
            for src in sources:
                for batch in _batches(src, ENCODE_BATCH):
                    pending.append(pool.submit(_encode_sft_batch, batch, tok, d))
                    if len(pending) > ENCODE_THREADS:
                        write(pending.popleft().result())
            while pending:
                write(pending.popleft().result())
        writer.finalize()
    return trained


def _id_table(columns: dict[str, list[list[int]]]):
    """Columns of token-id lists as an Arrow table of ``list<int64>`` (the cache's schema), built by
    pyarrow from the lists in one pass (``ArrowWriter.write_batch`` infers and checks types first)."""
    import pyarrow as pa

    ids = pa.list_(pa.int64())
    return pa.table({col: pa.array(rows, type=ids) for col, rows in columns.items()})


def _kept(rows: list[int] | range, trained: list[bool], d: DataConfig) -> list[int]:
    """The ``rows`` that kept a trained token, with one warning for those skipped."""
    kept = [i for i in rows if trained[i]]
    if len(kept) < len(rows):
        log.warning(
            "%d examples had no trained tokens left after cutoff_len=%d and were skipped",
            len(rows) - len(kept),
            d.cutoff_len,
        )
    return kept


def _write_packed(encoded, rows: list[int], capacity: int, path: Path) -> None:
    """Pack the ``rows`` of the encoded table (first-fit decreasing, :func:`pack_bins`) into
    another Arrow file, reading the members of a few hundred packed rows at a time."""
    import pyarrow.compute as pc
    from datasets import Features, Sequence, Value
    from datasets.arrow_writer import ArrowWriter

    table = encoded.with_format("arrow")
    lengths = pc.list_value_length(table["input_ids"]).to_pylist()
    bins = pack_bins([lengths[i] for i in rows], capacity)
    ids = Sequence(Value("int64"))
    features = Features({"input_ids": ids, "labels": ids, "seq_lens": ids})
    with ArrowWriter(features=features, path=str(path)) as writer:
        for chunk in _batches(bins, 256):
            got = encoded.select([rows[j] for b in chunk for j in b]).to_list()
            packed, k = [], 0
            for b in chunk:
                packed.append(packed_row(got[k : k + len(b)]))
                k += len(b)
            writer.write_table(_id_table({col: [r[col] for r in packed] for col in features}))
        writer.finalize()


def _text_datasets(sources: list[_Source], plan, tok, d: DataConfig, packing: bool):
    """Pre-training text: the stream of every row's tokens is cut into blocks across rows, so
    this path holds the rows and blocks in memory (``datasets.Dataset.from_list``)."""
    from datasets import Dataset

    rows = [r for s in sources for r in s]
    train_rows, eval_rows = [rows[i] for i in plan[0]], [rows[i] for i in plan[1]]
    train = Dataset.from_list(_encode_text(train_rows, tok, d, packing))
    ev = Dataset.from_list(_encode_text(eval_rows, tok, d, False)) if eval_rows else None
    return train, ev


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
    """(train, eval, info): ``datasets.Dataset`` of input_ids/labels[/seq_lens], memory-mapped
    from Arrow files under ``data-cache/<key>``.

    The key is made of each file's content hash (:func:`source_key`; rows in memory are hashed
    as rows), the split plan (:func:`split_plan`: the row numbers of train and eval), the
    tokenizer and the encoding options, so a cache hit reads no row. Chat rows are read as a
    stream, encoded a batch at a time (:func:`~kit.data.encode.encode_chats`) and written to
    Arrow as they come; train and eval are row selections of that file (packed rows another
    file), so memory does not grow with the dataset. ``info``: ``{"cache", "cache_hit"}``.
    """
    d = cfg.data
    packing = d.packing if packing is None else packing
    hub = hub_options(cfg)
    train_refs, eval_refs = dataset_refs(d.dataset), dataset_refs(d.eval_dataset)
    sources = [_Source(r, d, kind, hub) for r in train_refs + eval_refs]
    plan = split_plan(
        d, cfg.train.seed, [s.n for s in sources[: len(train_refs)]], [s.n for s in sources[len(train_refs) :]]
    )
    key = content_hash(
        "v3",
        kind,
        [s.key for s in sources],
        plan,
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
        try:
            train, ev = _load_cached(cache)
        except (OSError, ValueError, KeyError) as e:  # a damaged cache is rebuilt, not fatal
            log.warning("the data cache %s is unreadable (%s); encoding again", cache, e)
        else:
            log.info("tokenized data loaded from cache %s", cache)
            return train, ev, {"cache": str(cache), "cache_hit": True}
    if d.cache:
        cache.parent.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=".tmp-", dir=str(cache.parent)))
    else:
        work = Path(tempfile.mkdtemp(prefix="forge-data-"))  # memory-mapped until the process ends
        atexit.register(shutil.rmtree, work, True)
    try:
        meta = _encode_into(work, sources, plan, tok, d, kind, packing)
        train, ev = _load_cached(work, meta)
        if len(train) == 0:
            raise DataError(f"no training examples left after encoding (cutoff_len={d.cutoff_len} too small?)")
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    if d.cache and _finish_cache(work, cache, meta):
        train, ev = _load_cached(cache)  # the same files, under their final name
        return train, ev, {"cache": str(cache), "cache_hit": False}
    if d.cache:  # could not be moved into place: still usable from where it was written
        atexit.register(shutil.rmtree, work, True)
    return train, ev, {"cache": None, "cache_hit": False}


def _encode_into(work: Path, sources, plan, tok, d: DataConfig, kind: str, packing: bool) -> dict:
    """Write the encoded data into ``work``; returns the description :func:`_load_cached` reads."""
    train_idx, eval_idx = plan
    if kind != "sft":
        train, ev = _text_datasets(sources, plan, tok, d, packing)
        train.save_to_disk(str(work / "train"))
        if ev is not None:
            ev.save_to_disk(str(work / "eval"))
        return {"train": {"saved": "train"}, "eval": {"saved": "eval"} if ev is not None else None}
    trained = _write_encoded_sft(sources, tok, d, work / "rows.arrow")
    train_rows = _kept(train_idx, trained, d)
    # eval is never packed: per-example losses stay comparable across settings
    meta: dict[str, Any] = {"eval": {"arrow": "rows.arrow", "rows": _kept(eval_idx, trained, d)} if eval_idx else None}
    if packing:
        from datasets import Dataset

        _write_packed(Dataset.from_file(str(work / "rows.arrow")), train_rows, d.cutoff_len, work / "packed.arrow")
        meta["train"] = {"arrow": "packed.arrow", "rows": None}
    else:
        meta["train"] = {"arrow": "rows.arrow", "rows": train_rows}
    return meta


def _load_cached(cache: Path, meta: Optional[dict] = None):
    """(train, eval) from a cache folder: Arrow files memory-mapped (``Dataset.from_file``), with
    the row selection of each split."""
    from datasets import Dataset, load_from_disk

    meta = meta if meta is not None else json.loads((cache / "meta.json").read_text())

    def one(part: Optional[dict]):
        if part is None:
            return None
        if "saved" in part:
            return load_from_disk(str(cache / part["saved"]))
        ds = Dataset.from_file(str(cache / part["arrow"]))
        rows = part["rows"]
        return ds if rows is None or rows == list(range(len(ds))) else ds.select(rows)

    return one(meta["train"]), one(meta["eval"])


def _finish_cache(work: Path, cache: Path, meta: dict) -> bool:
    """Move a finished build into place (a reader sees a whole cache folder or none)."""
    try:
        (work / "meta.json").write_text(json.dumps(meta))
        (work / "DONE").write_text("ok\n")
        if cache.exists():
            shutil.rmtree(cache, ignore_errors=True)
        os.replace(work, cache)
        return True
    except OSError as e:
        log.warning("could not write the data cache %s: %s", cache, e)
        return False


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
