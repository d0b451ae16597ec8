"""The one base class of Forge Kit's user-facing errors, and how they say where the problem is.

Every error a user can fix by changing their input (a config key, a data row, a model name, an
export option) derives from :class:`ForgeError`, so a front end (CLI, magic, Board) needs one
``except ForgeError`` to print a clear message instead of a traceback; anything else that escapes
is a bug in Forge Kit and is reported as one.

The concrete classes live next to the code that raises them (``ConfigError`` in ``kit.config``,
``DataError`` in ``kit.data.formats``, ``TemplateError`` in ``kit.data.encode``, ``ExportError``
in ``kit.export``, ``ModelNotFoundError`` in ``kit.models.loading``). Each also keeps its
historical built-in base (``ValueError``, ``FileNotFoundError``) so existing ``except ValueError``
callers still work.

This module imports nothing from ``kit`` so that every layer may import it.
"""

from __future__ import annotations

from typing import Optional

__all__ = ["ForgeError", "UsageError", "locate", "with_place"]


class ForgeError(Exception):
    """Base of the errors whose message tells the user what to fix (file/row/field, or key and allowed values)."""


class UsageError(ForgeError, ValueError):
    """A command-line argument or a Python function's argument that cannot be used (``forge train
    --nnodes 2`` without an output dir, ``kit.evaluate(mode="x")``, ``score(run, prompt)`` without the
    answer); the message names the argument and what it accepts."""


def locate(
    source: Optional[str] = None, row: Optional[int] = None, field: Optional[str] = None, line: Optional[int] = None
) -> str:
    """The place part of a message: ``"train.jsonl, line 3, row 2, field 'output'"``.

    ``row`` is the 0-based index of the record (what ``dataset[row]`` returns); ``line`` is the
    1-based line of the file, given when the two differ (JSONL with blank lines, CSV with a header
    or quoted newlines) so the user can jump to it in an editor. Parts left ``None`` are omitted.
    """
    parts = [source] if source else []
    if line is not None:
        parts.append(f"line {line}")
    if row is not None:
        parts.append(f"row {row}")
    if field is not None:
        parts.append(f"field '{field}'")
    return ", ".join(parts)


def with_place(
    message: str,
    source: Optional[str] = None,
    row: Optional[int] = None,
    field: Optional[str] = None,
    line: Optional[int] = None,
) -> str:
    """``"<place>: <message>"``, or just the message when there is no place."""
    where = locate(source, row, field, line)
    return f"{where}: {message}" if where else message
