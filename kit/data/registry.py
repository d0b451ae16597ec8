"""Named datasets: the shipped demo sets plus whatever users register (in Python or from a JSON/YAML file).

A dataset reference in a config is a registered name, a file path, a Hub-style folder (parquet
shards or ``save_to_disk`` output), a Hub id ``owner/name`` (:mod:`kit.data.hub`), or a name from a
LLaMA-Factory ``dataset_info.json`` in ``data.dataset_dir`` (:mod:`kit.data.llamafactory`).
Files: ``.json`` (a list of objects, or JSON lines), ``.jsonl``, ``.csv``, ``.parquet``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Union

import yaml

from ..paths import repo_data_dir
from .formats import DataError
from .hub import HubOptions, HubSource, is_hub_folder, is_hub_id
from .readers import read_file


@dataclass
class DatasetSpec:
    name: str
    source: Union[str, list, Any]  # file path, list of row dicts, or a datasets.Dataset
    format: str = "auto"
    description: str = ""
    split: Optional[str] = None  # for hub-style dicts of splits (unused for files)
    purpose: str = "train"  # "eval": rows only kit.evaluate reads (e.g. multiple choice)


_REGISTRY: dict[str, DatasetSpec] = {}
_DEMO_LOADED = False


def register_dataset(
    name: str, source: Any, format: str = "auto", description: str = "", purpose: str = "train"
) -> DatasetSpec:
    """Register ``name`` for a file path, a list of rows or a ``datasets.Dataset``; ``purpose="eval"``
    marks a set only :mod:`kit.evaluate` reads (dataset pickers for training leave it out)."""
    if purpose not in ("train", "eval"):
        raise DataError(f"purpose must be 'train' or 'eval', got {purpose!r}", name)
    spec = DatasetSpec(name=name, source=source, format=format, description=description, purpose=purpose)
    _REGISTRY[name] = spec
    return spec


def load_registry_file(path: str | os.PathLike) -> list[DatasetSpec]:
    """Register every dataset listed in a JSON/YAML file: ``{name: {file: ..., format: ..., description: ...}}``.

    Relative file paths are resolved against the registry file's folder.
    """
    p = Path(path)
    text = p.read_text()
    try:
        data = yaml.safe_load(text) if p.suffix in (".yaml", ".yml") else json.loads(text)
    except (yaml.YAMLError, json.JSONDecodeError) as e:
        raise DataError(f"cannot parse the dataset registry: {e}", str(p)) from None
    if not isinstance(data, dict):
        raise DataError("a dataset registry must map names to {file, format, description}", str(p))
    out = []
    for name, entry in data.items():
        if not isinstance(entry, dict) or "file" not in entry:
            raise DataError("each entry needs a 'file'", str(p), field=str(name))
        f = Path(entry["file"])
        if not f.is_absolute():
            f = p.parent / f
        out.append(
            register_dataset(
                name, str(f), entry.get("format", "auto"), entry.get("description", ""), entry.get("purpose", "train")
            )
        )
    return out


def _ensure_demo() -> None:
    global _DEMO_LOADED
    if not _DEMO_LOADED:
        _DEMO_LOADED = True
        try:
            info = repo_data_dir() / "dataset_info.yaml"
        except FileNotFoundError:
            return
        if info.exists():
            for spec in load_registry_file(info):
                _REGISTRY.setdefault(spec.name, spec)


def list_datasets(purpose: Optional[str] = None) -> dict[str, DatasetSpec]:
    """Registered datasets, all of them or those of one ``purpose`` ("train" or "eval")."""
    _ensure_demo()
    return {k: v for k, v in _REGISTRY.items() if purpose is None or v.purpose == purpose}


def get_spec(ref: str, hub: Optional[HubOptions] = None) -> DatasetSpec:
    """A name from ``hub.dataset_dir``'s LLaMA-Factory registry, a registered name, a file path, a
    Hub-style folder or a Hub id. ``hub``: the split/subset/revision/streaming options (cfg.data)."""
    _ensure_demo()
    opts = hub or HubOptions()
    if opts.dataset_dir:
        from .llamafactory import load_dataset_info

        found = load_dataset_info(opts.dataset_dir, opts).get(ref)
        if found is not None:
            source, fmt, description = found
            return DatasetSpec(name=ref, source=source, format=fmt, description=description)
    if ref in _REGISTRY:
        return _REGISTRY[ref]
    p = Path(ref).expanduser()
    if p.is_dir() and is_hub_folder(p):
        return DatasetSpec(name=p.name, source=HubSource(str(p), opts, folder=str(p)))
    if p.exists():
        return DatasetSpec(name=p.stem, source=str(p))
    if is_hub_id(ref):
        return DatasetSpec(name=ref, source=HubSource(ref, opts))
    known = ", ".join(sorted(_REGISTRY))
    extra = f", not in {opts.dataset_dir}/dataset_info.json" if opts.dataset_dir else ""
    raise DataError(
        f"unknown dataset '{ref}': not a registered name ({known}){extra}, no such file or folder, "
        "and not a Hub id (owner/name)"
    )


def read_spec(spec: DatasetSpec) -> tuple[list[dict], str]:
    """Rows and a source label (the file path, or ``<name>`` for in-memory data)."""
    src = spec.source
    if hasattr(src, "read_rows"):  # HubSource, a LLaMA-Factory entry's file
        return src.read_rows()
    if isinstance(src, (str, os.PathLike)):
        return read_file(src), str(src)
    if isinstance(src, list):
        return list(src), f"<{spec.name}>"
    if hasattr(src, "to_list"):  # datasets.Dataset
        return src.to_list(), f"<{spec.name}>"
    raise DataError(f"dataset '{spec.name}': unsupported source type {type(src).__name__}")
