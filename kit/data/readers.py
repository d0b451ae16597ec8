"""Reading data files into rows: strict about bad files and rows, lenient about good ones.

Strict: a file we cannot read exactly as written raises :class:`DataError` naming the file (and
the line, row and field where there is one) -- invalid UTF-8, a CSV row with more or fewer cells
than the header (an unquoted comma would otherwise cut an answer short), a key given twice in one
JSON object (the last would silently win), a corrupt Parquet file, a folder where a file belongs.

Lenient: a UTF-8 (or UTF-16/32) byte-order mark is read, a ``.json`` file may hold a JSON document
(a list of rows, or ``{"data": [...]}``) or JSON lines -- told apart by parsing, not by its first
character -- and CSV/Parquet cells are JSON-decoded only in the columns the formats' schema says
hold lists (:data:`~kit.data.formats.JSON_COLUMNS`), so an answer that happens to be JSON text
stays text.

Row values are returned as read; checking them against a format is :mod:`kit.data.formats`' job.
"""

from __future__ import annotations

import codecs
import csv
import io
import json
import os
from pathlib import Path
from typing import Any, Iterator, Optional

from .formats import BOOL_COLUMNS, JSON_COLUMNS, TEXT_OR_MESSAGES_COLUMNS, DataError

SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")


def read_file(path: str | os.PathLike) -> list[dict]:
    """Rows of a ``.jsonl``, ``.json``, ``.csv`` or ``.parquet`` file; errors name the file and line."""
    p = Path(path)
    src = str(p)
    if not p.exists():
        raise DataError("file not found", src)
    if p.is_dir():
        inside = sorted(x.name for x in p.iterdir() if x.suffix.lower() in SUFFIXES)[:5]
        hint = f" (it holds {', '.join(inside)})" if inside else ""
        raise DataError(
            f"this is a folder, not a data file{hint}: give the path of a .jsonl, .json, .csv or .parquet file", src
        )
    suffix = p.suffix.lower()
    if suffix not in SUFFIXES:
        raise DataError(f"unsupported file type '{suffix}' (use .json, .jsonl, .csv or .parquet)", src)
    if suffix == ".parquet":
        return _read_parquet(p, src)
    text = _read_text(p, src)
    if suffix == ".csv":
        return _read_csv(text, src)
    return _read_json(text, src, jsonl=suffix == ".jsonl")


def iter_file(path: str | os.PathLike) -> Iterator[dict]:
    """The rows of :func:`read_file`, one at a time: a ``.jsonl`` file (UTF-8) is read line by line and
    a ``.parquet`` file batch by batch, so a large file is never held whole; other files (a ``.json``
    document, CSV, UTF-16/32 text) are read whole, as :func:`read_file` does. Same errors, same rows."""
    p = Path(path)
    suffix = p.suffix.lower()
    if p.is_file() and suffix == ".parquet":
        yield from _iter_parquet(p, str(p))
        return
    if not (p.is_file() and suffix == ".jsonl") or _has_utf16_32_bom(p):
        yield from read_file(p)
        return
    yield from _iter_jsonl(p, str(p))


def _has_utf16_32_bom(p: Path) -> bool:
    try:
        with open(p, "rb") as f:
            head = f.read(4)
    except OSError as e:
        raise DataError(f"cannot read the file: {e.strerror or e}", str(p)) from None
    return head.startswith((codecs.BOM_UTF32_LE, codecs.BOM_UTF32_BE, codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE))


def _iter_jsonl(p: Path, src: str) -> Iterator[dict]:
    """JSON lines as :func:`_read_json` reads them (lines end at "\n" only, invalid UTF-8 kept as
    surrogate escapes for the row check), one line in memory at a time."""
    n = 0
    try:
        f = open(p, "rb")  # binary lines split at b"\n" only, never inside a UTF-8 sequence
    except OSError as e:
        raise DataError(f"cannot read the file: {e.strerror or e}", src) from None
    with f:
        for i, raw in enumerate(f):
            line = raw.removesuffix(b"\n").decode("utf-8", errors="surrogateescape")  # as text.split("\n")
            if i == 0:
                line = line.removeprefix("\ufeff")  # a UTF-8 byte-order mark
            if not line.strip():
                continue
            try:
                row = _loads(line)
            except (ValueError, RecursionError) as e:
                if not n:  # perhaps one JSON document (a pretty-printed list): read_file decides
                    yield from read_file(p)
                    return
                raise DataError(f"invalid JSON: {_parse_error(e)}", src, n, line=i + 1) from None
            _check_duplicates([row], src, [i + 1], offset=n)
            n += 1
            yield row


# ------------------------------------------------------------------------------------------ text


def _read_text(p: Path, src: str) -> str:
    """The file as text. Invalid UTF-8 bytes are kept as surrogate escapes (U+DC80..U+DCFF) so the
    row check can name the row and field that hold them instead of failing on the whole file."""
    try:
        data = p.read_bytes()
    except OSError as e:
        raise DataError(f"cannot read the file: {e.strerror or e}", src) from None
    if data.startswith((codecs.BOM_UTF32_LE, codecs.BOM_UTF32_BE)):
        encoding = "utf-32"
    elif data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        encoding = "utf-16"
    else:
        encoding = "utf-8-sig"  # reads a UTF-8 byte-order mark, and plain UTF-8
    try:
        return data.decode(encoding, errors="surrogateescape" if encoding == "utf-8-sig" else "strict")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise DataError(
            f"the file starts with a {encoding.upper()} byte-order mark but is not valid {encoding.upper()}"
            f" ({e.reason}): save it as UTF-8",
            src,
            line=line,
        ) from None


# ------------------------------------------------------------------------------------------ JSON


class _Duplicates(dict):
    """A JSON object that had a key more than once (``dups``); found after parsing to name the row."""

    dups: tuple = ()


def _object(pairs: list[tuple[str, Any]]) -> dict:
    d = dict(pairs)
    if len(d) == len(pairs):
        return d
    seen, dups = set(), []
    for k, _ in pairs:
        if k in seen and k not in dups:
            dups.append(k)
        seen.add(k)
    d = _Duplicates(d)
    d.dups = tuple(dups)
    return d


def _loads(text: str) -> Any:
    # ValueError covers JSONDecodeError and integers beyond Python's digit limit; RecursionError deep nesting
    return json.loads(text, object_pairs_hook=_object)


def _parse_error(e: BaseException) -> str:
    if isinstance(e, json.JSONDecodeError):
        return f"{e.msg} (column {e.colno})"
    if isinstance(e, RecursionError):
        return "nested too deeply"
    return str(e)


def _read_json(text: str, src: str, *, jsonl: bool) -> list[dict]:
    if not text.strip():
        return []
    if not jsonl:  # a JSON document, or JSON lines in a .json file: tell them apart by parsing
        try:
            doc = _loads(text)
        except (ValueError, RecursionError) as e:
            doc_error = e
        else:
            if isinstance(doc, _Duplicates):
                raise DataError(f"the key '{doc.dups[0]}' appears more than once in the top-level object", src)
            return _check_duplicates(_document_rows(doc, src), src)
        first = next(line for line in _lines(text) if line.strip())
        try:
            looks_like_lines = isinstance(_loads(first), dict)
        except (ValueError, RecursionError):
            looks_like_lines = False
        if not looks_like_lines:
            line = getattr(doc_error, "lineno", None)
            raise DataError(f"invalid JSON: {_parse_error(doc_error)}", src, line=line) from None
    rows, lines = [], []
    for i, line in enumerate(_lines(text)):
        if not line.strip():
            continue
        try:
            rows.append(_loads(line))
        except (ValueError, RecursionError) as e:
            if jsonl and not rows:  # a .jsonl that holds one JSON document (e.g. a pretty-printed list)
                try:
                    return _check_duplicates(_document_rows(_loads(text), src), src)
                except (ValueError, RecursionError, DataError):
                    pass
            raise DataError(f"invalid JSON: {_parse_error(e)}", src, len(rows), line=i + 1) from None
        lines.append(i + 1)
    return _check_duplicates(rows, src, lines)


def _lines(text: str) -> list[str]:
    """JSON lines end at "\n" (or "\r\n") only: str.splitlines would also split at U+2028, U+0085 and
    other characters that JSON allows unescaped inside a string."""
    return text.split("\n")


def _document_rows(data: Any, src: str) -> list:
    if isinstance(data, list):
        return data
    if isinstance(data, dict):
        for key in ("data", "train", "rows"):
            if isinstance(data.get(key), list):
                return data[key]
        return [data]  # one object: a file of one row (as a one-line JSONL file would be)
    raise DataError(f"a JSON file must hold a list of rows (or {{'data': [...]}}), got {type(data).__name__}", src)


def _check_duplicates(rows: list, src: str, lines: Optional[list[int]] = None, offset: int = 0) -> list:
    for i, row in enumerate(rows):
        found = _find_duplicates(row)
        if found:
            path, key = found
            raise DataError(
                f"the key '{key}' appears more than once in one object (only the last would be kept)",
                src,
                i + offset,
                path,
                line=lines[i] if lines else None,
            )
    return rows


def _find_duplicates(v: Any) -> Optional[tuple[str, str]]:
    stack: list[tuple[str, Any]] = [("", v)]
    while stack:
        path, x = stack.pop()
        if isinstance(x, _Duplicates):
            key = x.dups[0]
            return (f"{path}.{key}" if path else key), key
        if isinstance(x, dict):
            stack.extend((f"{path}.{k}" if path else str(k), y) for k, y in x.items())
        elif isinstance(x, list):
            stack.extend((f"{path}[{j}]", y) for j, y in enumerate(x))
    return None


# ------------------------------------------------------------------------------------------ CSV


def _read_csv(text: str, src: str) -> list[dict]:
    # answers longer than the csv module's default 128 KiB field limit are valid data
    csv.field_size_limit(max(csv.field_size_limit(), 2**31 - 1))
    reader = csv.reader(io.StringIO(text, newline=""))
    rows: list[dict] = []
    try:
        header = next(reader, None)
        if header is None:
            return []
        header = [h.strip() for h in header]
        dup = next((h for i, h in enumerate(header) if h in header[:i]), None)
        if dup is not None:
            raise DataError(f"the header names the column '{dup}' twice", src, line=1)
        start = reader.line_num + 1
        for cells in reader:
            if not cells:  # a blank line
                start = reader.line_num + 1
                continue
            if len(cells) != len(header):
                extra = len(cells) > len(header)
                raise DataError(
                    f"{len(cells)} cells but the header has {len(header)} columns ({', '.join(header)})"
                    + ("; a value that contains a comma must be in double quotes" if extra else ""),
                    src,
                    len(rows),
                    line=start,
                )
            rows.append(decode_cells(dict(zip(header, cells)), src, len(rows)))
            start = reader.line_num + 1
    except csv.Error as e:
        raise DataError(f"cannot parse the CSV: {e}", src, len(rows), line=reader.line_num) from None
    return rows


# ------------------------------------------------------------------------------------------ Parquet


def _read_parquet(p: Path, src: str) -> list[dict]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(str(p))
        names = table.column_names
        dup = next((n for i, n in enumerate(names) if n in names[:i]), None)
        if dup is not None:
            raise DataError(f"the column '{dup}' appears twice", src)
        rows = table.to_pylist()
    except DataError:
        raise
    except MemoryError:
        raise
    except Exception as e:  # noqa: BLE001 - pyarrow raises ArrowInvalid, OSError, ... on a damaged file
        raise DataError(
            f"cannot read this Parquet file ({type(e).__name__}: {e}); is it a complete Parquet file?", src
        ) from None
    return [decode_cells(r, src, i) for i, r in enumerate(rows)]


def _iter_parquet(p: Path, src: str, batch_rows: int = 1024) -> Iterator[dict]:
    """Rows of :func:`_read_parquet`, a record batch at a time."""
    import pyarrow.parquet as pq

    def damaged(e: Exception) -> DataError:
        return DataError(
            f"cannot read this Parquet file ({type(e).__name__}: {e}); is it a complete Parquet file?", src
        )

    try:
        f = pq.ParquetFile(str(p))
        names = f.schema_arrow.names
    except Exception as e:  # noqa: BLE001 - pyarrow raises ArrowInvalid, OSError, ... on a damaged file
        raise damaged(e) from None
    dup = next((n for i, n in enumerate(names) if n in names[:i]), None)
    if dup is not None:
        raise DataError(f"the column '{dup}' appears twice", src)
    i = 0
    batches = f.iter_batches(batch_size=batch_rows)
    while True:
        try:
            batch = next(batches, None)
        except MemoryError:
            raise
        except Exception as e:  # noqa: BLE001 - as above, for a file damaged past its footer
            raise damaged(e) from None
        if batch is None:
            return
        for r in batch.to_pylist():
            yield decode_cells(r, src, i)
            i += 1


# ------------------------------------------------------------------------------------------ cells


def decode_cells(row: dict, src: str, idx: int) -> dict:
    """CSV cells are all text and Parquet columns are often strings: decode JSON text only where the
    formats' schema puts a list or an object (messages, conversations, tools, history, choices; and
    prompt/chosen/rejected/completion when the text is a list of messages), and booleans in
    ``label``. An empty cell in one of these columns means "none" (a CSV cannot write null, and a
    row of a mixed file may use other columns, e.g. an implicit-prompt preference row leaves
    ``prompt`` empty). Every other value is kept as it is."""
    out = {}
    for k, v in row.items():
        if isinstance(v, str):
            if v == "" and (k in JSON_COLUMNS or k in TEXT_OR_MESSAGES_COLUMNS or k in BOOL_COLUMNS):
                v = None
            elif k in JSON_COLUMNS:
                v = _json_cell(v)
            elif k in TEXT_OR_MESSAGES_COLUMNS and v.lstrip().startswith("["):
                decoded = _json_cell(v)
                if isinstance(decoded, list) and decoded and all(isinstance(m, dict) and "role" in m for m in decoded):
                    v = decoded
            elif k in BOOL_COLUMNS:
                v = {"true": True, "false": False, "1": True, "0": False}.get(v.strip().lower(), v)
            found = _find_duplicates(v) if isinstance(v, (dict, list)) else None
            if found:
                raise DataError(
                    f"the key '{found[1]}' appears more than once in one object (only the last would be kept)",
                    src,
                    idx,
                    f"{k}.{found[0]}" if found[0] else k,
                )
        out[k] = v
    return out


def _json_cell(v: str) -> Any:
    if not v.strip():
        return None
    try:
        return _loads(v)
    except (ValueError, RecursionError):
        return v  # not JSON: the format check says what the column should hold
