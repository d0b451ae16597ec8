"""Datasets where users keep them: Hub ids (``owner/name``) and local Hub-style folders.

Both are read with the ``datasets`` library (``load_dataset`` / ``load_from_disk``) into rows,
which then go through the same format detection and row checks as files (:mod:`kit.data.formats`);
errors name the dataset and split (``owner/name[train]``), and the row and field.

- A Hub id: ``datasets.load_dataset(id, name=subset, split=split, revision=revision,
  data_files=data_files, streaming=streaming)``. Streaming reads only the rows the run needs
  (``data.max_samples``, or ``max_steps x batch_size x grad_accum x processes``). No remote code
  runs (``datasets`` 4+ has no loading scripts).
- A local folder of Parquet/JSON/CSV shards (a cloned Hub dataset repo): ``load_dataset(folder)``,
  which reads its ``data/train-*.parquet`` layout and README's configs the way the Hub does.
- A ``save_to_disk`` folder (``state.json`` or ``dataset_dict.json`` inside): ``load_from_disk``.

Hub access cannot be tested offline: the tests run every step up to the download on local folders
and replace :func:`_load_dataset` (the one place the Hub is called) to check its arguments.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Union

from ..runtime import world_size
from .formats import DataError

# owner/name as the Hub spells repo ids: letters, digits, '-', '_', '.'
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


@dataclass(frozen=True)
class HubOptions:
    """What to read of a Hub dataset or Hub-style folder (from ``cfg.data``)."""

    subset: Optional[str] = None
    split: str = "train"
    revision: Optional[str] = None
    data_files: Union[str, list, dict, None] = None
    data_dir: Optional[str] = None  # a folder inside the dataset repo (LLaMA-Factory's "folder")
    streaming: bool = False
    take: Optional[int] = None  # streaming: rows to read
    dataset_dir: Optional[str] = None  # a LLaMA-Factory dataset_info.json folder

    def key(self) -> tuple:
        df = self.data_files
        return (self.subset, self.split, self.revision, repr(df), self.data_dir, self.streaming, self.take)


@dataclass(frozen=True)
class HubSource:
    """A Hub id (``folder`` None) or a local Hub-style folder, with what to read of it."""

    ref: str
    options: HubOptions
    folder: Optional[str] = None
    convert: Any = None  # rows -> rows in our formats (a LLaMA-Factory entry's columns and tags)

    def read_rows(self) -> tuple[list[dict], str]:
        rows, label = read_hub(self.ref, self.options, folder=self.folder)
        return (self.convert(rows, label) if self.convert else rows), label


def hub_options(cfg: Any) -> HubOptions:
    """The hub options of a RunConfig; streaming needs a bound on the rows it reads."""
    d, t = cfg.data, cfg.train
    take = None
    if d.streaming:
        take = d.max_samples or (
            t.max_steps * t.batch_size * t.grad_accum * world_size() if t.max_steps and t.max_steps > 0 else None
        )
        if not take:
            raise DataError(
                "data.streaming=true reads a stream with no length: set train.max_steps (or "
                "data.max_samples) so the run knows how many rows to read",
                "data.streaming",
            )
    return HubOptions(
        subset=d.subset,
        split=d.split,
        revision=d.revision,
        data_files=d.data_files,
        streaming=d.streaming,
        take=take,
        dataset_dir=d.dataset_dir,
    )


def is_hub_id(ref: str) -> bool:
    """``owner/name`` that is not a local path."""
    return bool(HUB_ID.match(ref)) and not Path(ref).expanduser().exists()


def is_hub_folder(path: Union[str, os.PathLike]) -> bool:
    """A folder the ``datasets`` library reads: save_to_disk output or data shards."""
    p = Path(path)
    if not p.is_dir():
        return False
    if is_saved_folder(p):
        return True
    return any(
        f.suffix.lower() in (".parquet", ".arrow", ".jsonl", ".json", ".csv") and f.name != "dataset_info.json"
        for f in p.rglob("*")
        if f.is_file() and ".cache" not in f.parts
    )


def is_saved_folder(p: Path) -> bool:
    return (p / "state.json").exists() or (p / "dataset_dict.json").exists()


def _load_dataset(path: str, **kw):
    """The one call that reaches the Hub (tests replace it)."""
    import datasets

    return datasets.load_dataset(path, **kw)


def _label(ref: str, split: str) -> str:
    return f"{ref}[{split}]"


def read_hub(ref: str, opts: HubOptions, *, folder: Optional[str] = None) -> tuple[list[dict], str]:
    """Rows of a Hub dataset (``ref``) or local Hub-style folder (``folder``), and a source label."""
    split = opts.split or "train"
    label = _label(ref, split)
    if folder is not None and is_saved_folder(Path(folder)):
        return _rows(_from_disk(Path(folder), split, label), label, None), label
    kw: dict[str, Any] = {"split": split}
    if opts.subset:
        kw["name"] = opts.subset
    if opts.data_files is not None:
        kw["data_files"] = opts.data_files
    if opts.data_dir:
        kw["data_dir"] = opts.data_dir
    if folder is None:
        if opts.revision:
            kw["revision"] = opts.revision
        if opts.streaming:
            kw["streaming"] = True
    try:
        ds = _load_dataset(folder if folder is not None else ref, **kw)
    except DataError:
        raise
    except FileNotFoundError as e:
        hint = (
            ""
            if folder is not None
            else " (a Hub id: check the name, and that you are logged in for a private "
            "or gated set: huggingface-cli login)"
        )
        raise DataError(f"dataset not found{hint}: {e}", label) from None
    except ValueError as e:  # unknown split / config name
        raise DataError(f"cannot read this split or subset: {e}", label) from None
    except Exception as e:  # noqa: BLE001 - network, auth, damaged shards: name the dataset, not a traceback
        raise DataError(f"cannot load the dataset ({type(e).__name__}: {e})", label) from None
    return _rows(ds, label, opts.take if folder is None and opts.streaming else None), label


def _from_disk(p: Path, split: str, label: str):
    import datasets

    try:
        ds = datasets.load_from_disk(str(p))
    except Exception as e:  # noqa: BLE001
        raise DataError(f"cannot read this save_to_disk folder ({type(e).__name__}: {e})", label) from None
    if isinstance(ds, datasets.DatasetDict):
        if split not in ds:
            raise DataError(f"no split '{split}' (it has {', '.join(ds)}): set data.split", label)
        ds = ds[split]
    return ds


def _rows(ds, label: str, take: Optional[int]) -> list[dict]:
    if take is not None:  # an IterableDataset: read only what the run needs
        ds = ds.take(take)
        return [dict(r) for r in ds]
    if hasattr(ds, "to_list"):
        return ds.to_list()
    raise DataError(f"expected one split, got a {type(ds).__name__}: set data.split", label)
