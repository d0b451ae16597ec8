"""Named datasets: the shipped demo sets plus whatever users register (in Python or from a JSON/YAML file).

A dataset reference in a config is a registered name, a file path, or ``name_or_path`` with an
explicit format. Files: ``.json`` (a list of objects, or JSON lines), ``.jsonl``, ``.csv``, ``.parquet``.
"""
from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Union

import yaml

from ..paths import repo_data_dir
from .formats import DataError


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


def read_file(path: str | os.PathLike) -> list[dict]:
    """Read rows from json / jsonl / csv / parquet; errors name the file and line."""
    p = Path(path)
    src = str(p)
    if not p.exists():
        raise DataError("file not found", src)
    suffix = p.suffix.lower()
    if suffix == ".jsonl" or (suffix == ".json" and _looks_like_jsonl(p)):
        rows = []
        with p.open(encoding="utf-8") as fh:
            for i, line in enumerate(fh):
                if not line.strip():
                    continue
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise DataError(f"invalid JSON on line {i + 1}: {e.msg}", src, len(rows)) from None
        return rows
    if suffix == ".json":
        try:
            data = json.loads(p.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise DataError(f"invalid JSON at line {e.lineno}: {e.msg}", src) from None
        if isinstance(data, dict):
            for key in ("data", "train", "rows"):
                if isinstance(data.get(key), list):
                    return data[key]
            raise DataError("a JSON file must hold a list of rows (or {'data': [...]})", src)
        if not isinstance(data, list):
            raise DataError("a JSON file must hold a list of rows", src)
        return data
    if suffix == ".csv":
        with p.open(encoding="utf-8", newline="") as fh:
            rows = [dict(r) for r in csv.DictReader(fh)]
        return [_decode_json_cells(r) for r in rows]
    if suffix == ".parquet":
        import pyarrow.parquet as pq
        return [_decode_json_cells(r) for r in pq.read_table(str(p)).to_pylist()]
    raise DataError(f"unsupported file type '{suffix}' (use .json, .jsonl, .csv or .parquet)", src)


def _looks_like_jsonl(p: Path) -> bool:
    with p.open(encoding="utf-8") as fh:
        first = fh.read(1).lstrip()
        return first == "{"


def _decode_json_cells(row: dict) -> dict:
    """CSV/parquet store nested fields (messages, chosen...) as JSON text; decode those, keep the rest."""
    out = {}
    for k, v in row.items():
        if isinstance(v, str) and v[:1] in "[{":
            try:
                v = json.loads(v)
            except json.JSONDecodeError:
                pass
        elif isinstance(v, str) and k == "label" and v.lower() in ("true", "false"):
            v = v.lower() == "true"
        out[k] = v
    return out


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
