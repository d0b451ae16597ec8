"""The event stream: what a run tells its front ends, in memory and as JSONL in the run directory.

Kinds: ``start``, ``status``, ``model``, ``data``, ``step`` (loss, learning_rate, grad_norm,
tokens_per_s, trained_tokens_per_s, memory_mb, epoch, plus stage metrics), ``eval``,
``checkpoint``, ``skipped`` (a step left out for a non-finite loss or gradient, see
:mod:`kit.numerics`), ``log`` (free text), and one terminal event: ``finished``, ``stopped`` or
``failed``.

JSON has no NaN or infinity, so a non-finite number is written as ``null`` and named under the
line's ``nonfinite`` key (``{"loss": null, "nonfinite": {"loss": "nan"}}``); reading the line
back gives the float again. A line is written with one unbuffered ``write``: a killed process
leaves at most a partial last line, which :meth:`EventBus.attach_file` cuts before appending.
"""

from __future__ import annotations

import json
import logging
import math
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

log = logging.getLogger(__name__)

TERMINAL = ("finished", "stopped", "failed")
NONFINITE_KEY = "nonfinite"


@dataclass
class Event:
    kind: str
    time: float
    data: dict = field(default_factory=dict)

    @property
    def step(self) -> Optional[int]:
        return self.data.get("step")

    def get(self, key: str, default: Any = None) -> Any:
        return self.data.get(key, default)

    def to_json(self) -> str:
        nonfinite: dict[str, str] = {}
        body = {"event": self.kind, "time": round(self.time, 3), **_clean(self.data, "", nonfinite)}
        if nonfinite:
            body[NONFINITE_KEY] = nonfinite
        return json.dumps(body, default=str, allow_nan=False)

    @classmethod
    def from_json(cls, line: str) -> Event:
        d = json.loads(line)
        for path, text in (d.pop(NONFINITE_KEY, None) or {}).items():
            _restore(d, path.split("."), float(text))
        return cls(kind=d.pop("event"), time=d.pop("time"), data=d)


def _clean(value: Any, path: str, nonfinite: dict) -> Any:
    """A JSON-ready copy: tensors and numpy scalars as numbers, paths as text, non-finite floats as
    None with their place (dotted keys) and value recorded in ``nonfinite``."""
    if isinstance(value, dict):
        return {k: _clean(v, f"{path}.{k}" if path else str(k), nonfinite) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v, "", {}) for v in value]  # list items keep no place: only their nullness
    if hasattr(value, "item") and callable(value.item):  # a one-value tensor or numpy scalar
        try:
            value = value.item()
        except (ValueError, RuntimeError):
            pass
    if isinstance(value, float) and not math.isfinite(value):
        if path:
            nonfinite[path] = str(value)  # "nan", "inf", "-inf": float() reads them back
        return None
    if isinstance(value, Path):
        return str(value)
    return value


def _restore(d: dict, keys: list[str], value: float) -> None:
    for k in keys[:-1]:
        d = d.get(k)
        if not isinstance(d, dict):
            return
    if keys[-1] in d and d[keys[-1]] is None:
        d[keys[-1]] = value


def repair_tail(path: Path) -> None:
    """Make ``path`` end on a line boundary: a last line without its newline (a writer killed
    mid-write) is completed if it is a whole JSON object, else cut off."""
    with open(path, "rb+") as fh:
        size = fh.seek(0, os.SEEK_END)
        if size == 0:
            return
        fh.seek(size - 1)
        if fh.read(1) == b"\n":
            return
        start = size
        while start > 0:  # find the last newline, reading backwards in blocks
            block = min(65536, start)
            fh.seek(start - block)
            nl = fh.read(block).rfind(b"\n")
            if nl >= 0:
                start = start - block + nl + 1
                break
            start -= block
        fh.seek(start)
        tail = fh.read()
        try:
            json.loads(tail)
        except ValueError:
            fh.truncate(start)
            log.warning("%s: cut a partial last line (%d bytes) left by an interrupted run", path, len(tail))
        else:
            fh.seek(size)
            fh.write(b"\n")


class EventBus:
    """Thread-safe fan-out of events to subscribers and a JSONL file.

    Neither a broken subscriber nor a failed file write (a full disk) stops an event: the others
    still get it, and the write error is logged and kept in ``write_error``.
    """

    def __init__(self):
        self.events: list[Event] = []
        self._subs: list[Callable[[Event], None]] = []
        self._lock = threading.Lock()
        self._fd: Optional[int] = None
        self.path: Optional[Path] = None
        self.write_error: Optional[OSError] = None

    @property
    def attached(self) -> bool:
        return self._fd is not None

    def attach_file(self, path: Path) -> None:
        """Append events to ``path`` from now on (after repairing a partial last line)."""
        self.close()
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists():
            repair_tail(path)
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self.path = path
        self.write_error = None

    def subscribe(self, fn: Callable[[Event], None], replay: bool = True) -> Callable[[], None]:
        """Call ``fn(event)`` for every event (past ones first, if ``replay``); returns an unsubscribe function."""
        with self._lock:
            past = list(self.events) if replay else []
            self._subs.append(fn)
        for e in past:
            fn(e)

        def unsubscribe() -> None:
            with self._lock:
                if fn in self._subs:
                    self._subs.remove(fn)

        return unsubscribe

    def emit(self, kind: str, **data: Any) -> Event:
        ev = Event(kind, time.time(), data)
        with self._lock:
            self.events.append(ev)
            subs = list(self._subs)
            if self._fd is not None:
                self._write((ev.to_json() + "\n").encode("utf-8"))
        for fn in subs:
            try:
                fn(ev)
            except Exception as e:  # a broken display must never kill training
                log.warning("event subscriber %r failed: %s", fn, e)
        return ev

    def _write(self, line: bytes) -> None:
        """One whole line or nothing: a write that fails part-way is cut back off the file."""
        before = os.fstat(self._fd).st_size
        try:
            view = memoryview(line)
            while view:
                view = view[os.write(self._fd, view) :]
        except OSError as e:
            try:
                os.ftruncate(self._fd, before)
            except OSError:
                pass
            if self.write_error is None:
                log.warning("cannot write events to %s: %s", self.path, e)
            self.write_error = e

    def close(self) -> None:
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None


def read_events(path: Path) -> list[Event]:
    """The events of one JSONL file (a crash may leave a partial last line: skipped). A run
    directory's events are ``RunDir(path).events()``: only RunDir knows where they are kept."""
    out = []
    for line in Path(path).read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            out.append(Event.from_json(line))
        except (json.JSONDecodeError, KeyError):
            continue
    return out
