"""Named datasets: the shipped demo sets plus whatever users register (in Python or from a JSON/YAML file).

A dataset reference in a config is a registered name, a file path, or ``name_or_path`` with an
explicit format. Files: ``.json`` (a list of objects, or JSON lines), ``.jsonl``, ``.csv``, ``.parquet``.
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
from .readers import read_file


@dataclass
class DatasetSpec:
    name: str
    source: Union[str, list, Any]          # file path, list of row dicts, or a datasets.Dataset
    format: str = "auto"
    description: str = ""
    split: Optional[str] = None            # for hub-style dicts of splits (unused for files)
    purpose: str = "train"                 # "eval": rows only kit.evaluate reads (e.g. multiple choice)


_REGISTRY: dict[str, DatasetSpec] = {}
_DEMO_LOADED = False


def register_dataset(name: str, source: Any, format: str = "auto", description: str = "",
                     purpose: str = "train") -> DatasetSpec:
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
        out.append(register_dataset(name, str(f), entry.get("format", "auto"), entry.get("description", ""),
                                    entry.get("purpose", "train")))
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


def get_spec(ref: str) -> DatasetSpec:
    """A registered name or a file path."""
    _ensure_demo()
    if ref in _REGISTRY:
        return _REGISTRY[ref]
    p = Path(ref).expanduser()
    if p.exists():
        return DatasetSpec(name=p.stem, source=str(p))
    known = ", ".join(sorted(_REGISTRY))
    raise DataError(f"unknown dataset '{ref}': not a registered name ({known}) and no such file")


def read_spec(spec: DatasetSpec) -> tuple[list[dict], str]:
    """Rows and a source label (the file path, or ``<name>`` for in-memory data)."""
    src = spec.source
    if isinstance(src, (str, os.PathLike)):
        return read_file(src), str(src)
    if isinstance(src, list):
        return list(src), f"<{spec.name}>"
    if hasattr(src, "to_list"):  # datasets.Dataset
        return src.to_list(), f"<{spec.name}>"
    raise DataError(f"dataset '{spec.name}': unsupported source type {type(src).__name__}")
