"""The event stream: what a run tells its front ends, in memory and as JSONL in the run directory.

Kinds: ``start``, ``status``, ``model``, ``data``, ``step`` (loss, learning_rate, grad_norm,
tokens_per_s, trained_tokens_per_s, memory_mb, epoch, plus stage metrics), ``eval``,
``checkpoint``, ``log`` (free text), and one terminal event: ``finished``, ``stopped`` or ``failed``.
"""
from __future__ import annotations

import json
import math
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Optional

TERMINAL = ("finished", "stopped", "failed")


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
        return json.dumps({"event": self.kind, "time": round(self.time, 3), **_clean(self.data)})

    @classmethod
    def from_json(cls, line: str) -> "Event":
        d = json.loads(line)
        return cls(kind=d.pop("event"), time=d.pop("time"), data=d)


def _clean(d: dict) -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, float) and not math.isfinite(v):
            v = None
        elif hasattr(v, "item") and callable(v.item):
            v = v.item()
        elif isinstance(v, Path):
            v = str(v)
        out[k] = v
    return out


class EventBus:
    """Thread-safe fan-out of events to subscribers and a JSONL file."""

    def __init__(self, path: Optional[Path] = None):
        self.events: list[Event] = []
        self._subs: list[Callable[[Event], None]] = []
        self._lock = threading.Lock()
        self._path = path
        self._fh = None

    def attach_file(self, path: Path) -> None:
        self._path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = path.open("a", encoding="utf-8")

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
            if self._fh is not None:
                self._fh.write(ev.to_json() + "\n")
                self._fh.flush()
        for fn in subs:
            try:
                fn(ev)
            except Exception as e:  # a broken display must never kill training
                import logging
                logging.getLogger(__name__).warning("event subscriber %r failed: %s", fn, e)
        return ev

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None


def read_events(path: Path) -> list[Event]:
    """Events of a run directory's ``events.jsonl`` (a crash may leave a partial last line: skipped)."""
    out = []
    p = Path(path)
    if p.is_dir():
        p = p / "events.jsonl"
    for line in p.read_text(encoding="utf-8").splitlines():
        try:
            out.append(Event.from_json(line))
        except (json.JSONDecodeError, KeyError):
            continue
    return out


def follow(path: Path, poll: float = 0.2, timeout: Optional[float] = None) -> Iterable[Event]:
    """Yield events from a JSONL file as another process writes them, until a terminal event."""
    p = Path(path)
    if p.is_dir():
        p = p / "events.jsonl"
    start = time.time()
    pos = 0
    buf = ""
    while True:
        if p.exists():
            with p.open(encoding="utf-8") as fh:
                fh.seek(pos)
                buf += fh.read()
                pos = fh.tell()
            *lines, buf = buf.split("\n")
            for line in lines:
                if line.strip():
                    ev = Event.from_json(line)
                    yield ev
                    if ev.kind in TERMINAL:
                        return
        if timeout is not None and time.time() - start > timeout:
            return
        time.sleep(poll)
