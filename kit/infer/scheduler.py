"""Many callers, one model: requests queue up, a scheduler generates them, each caller reads its own deltas.

* :class:`BatchScheduler` (the ``hf`` back end): one thread owns a :class:`~kit.infer.batch.DecodeBatch`;
  between two decode steps it admits the requests that arrived (prefilled together) and drops the
  cancelled ones, so concurrent requests share every forward pass (continuous batching).
* :class:`StreamScheduler` (back ends that batch by themselves, such as vLLM, or that can run one
  request at a time, such as llama.cpp): a pool of worker threads, each running ``engine.stream``.

Each request gets a :class:`Ticket`: the scheduler puts deltas into it and never waits for the
reader, so a slow or vanished client holds up nobody; ``ticket.cancel()`` (a closed connection)
removes its row at the next step. Deltas reach asyncio code through ``loop.call_soon_threadsafe``.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any, AsyncIterator, Iterator, Optional

from .engine import FINISH_CANCELLED, ChatRequest, Delta

log = logging.getLogger(__name__)
_END = object()


class Ticket:
    """One submitted request's deltas, readable from a thread (``iter``) or a coroutine (``aiter``)."""

    def __init__(self, request: ChatRequest, loop: Optional[asyncio.AbstractEventLoop] = None):
        self.request = request
        self.cancelled = threading.Event()
        self._loop = loop
        self._aqueue: Optional[asyncio.Queue] = asyncio.Queue() if loop is not None else None
        self._queue: queue.Queue = queue.Queue()
        self._on_cancel: list = []

    # the scheduler side
    def put(self, item: Any) -> None:
        """A Delta, an exception (the request failed) or the end marker; never blocks."""
        if self._aqueue is not None:
            try:
                self._loop.call_soon_threadsafe(self._aqueue.put_nowait, item)
            except RuntimeError:  # the event loop is gone (server shutting down): nobody is reading
                self.cancel()
        else:
            self._queue.put(item)

    def cancel(self) -> None:
        if not self.cancelled.is_set():
            self.cancelled.set()
            for fn in self._on_cancel:
                fn()

    def on_cancel(self, fn) -> None:
        self._on_cancel.append(fn)
        if self.cancelled.is_set():
            fn()

    # the reader side
    def __iter__(self) -> Iterator[Delta]:
        while True:
            item = self._queue.get()
            if item is _END:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
            if item.finish_reason is not None:
                return

    async def aiter(self) -> AsyncIterator[Delta]:
        assert self._aqueue is not None, "this ticket was submitted without an event loop"
        while True:
            item = await self._aqueue.get()
            if item is _END:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
            if item.finish_reason is not None:
                return


class BatchScheduler:
    """Continuous batching on an :class:`~kit.infer.batch.HFEngine`, in one background thread."""

    def __init__(self, engine: Any, max_batch_size: Optional[int] = None):
        self.engine = engine
        self.max_batch_size = max_batch_size or engine.max_batch_size
        self._inbox: queue.Queue = queue.Queue()
        self._stop = threading.Event()
        self._batch = engine.new_batch()
        self._thread = threading.Thread(target=self._run, name="forge-batch-scheduler", daemon=True)
        self._thread.start()

    def submit(self, request: ChatRequest, loop: Optional[asyncio.AbstractEventLoop] = None) -> Ticket:
        """Queue ``request`` (its prompt is encoded and checked here, in the caller's thread, so a bad
        request fails at once with its own error)."""
        row = self.engine.sequence(request)
        ticket = Ticket(request, loop)
        ticket.on_cancel(row.cancel)
        self._inbox.put((row, ticket))
        return ticket

    def pending(self) -> int:
        """Requests waiting to join the batch."""
        return self._inbox.qsize()

    def active(self) -> int:
        """Requests being generated or waiting."""
        return len(self._batch) + self._inbox.qsize()

    def close(self) -> None:
        self._stop.set()
        self._inbox.put(None)
        self._thread.join(timeout=5)

    def _run(self) -> None:
        batch = self._batch
        tickets: dict[int, Ticket] = {}
        while not self._stop.is_set():
            arrived = []
            try:
                if not len(batch):
                    item = self._inbox.get()  # idle: sleep until a request comes
                    if item is not None:
                        arrived.append(item)
                while len(batch) + len(arrived) < self.max_batch_size:
                    item = self._inbox.get_nowait()
                    if item is not None:
                        arrived.append(item)
            except queue.Empty:
                pass
            if self._stop.is_set():
                break
            try:
                out = []
                fresh = [(row, t) for row, t in arrived if not t.cancelled.is_set()]
                if fresh:
                    tickets.update({row.id: t for row, t in fresh})
                    out += batch.admit([row for row, _ in fresh])
                if len(batch):
                    out += batch.step()
            except Exception as e:  # a failed forward pass fails the requests in it, not the server
                log.exception("generation failed")
                for t in tickets.values():
                    t.put(e)
                tickets.clear()
                batch = self._batch = self.engine.new_batch()
                continue
            for row, delta in out:
                t = tickets.get(row.id)
                if t is None:
                    continue
                t.put(delta)
                if delta.finish_reason is not None:
                    del tickets[row.id]
        for t in tickets.values():
            t.put(Delta("", [], 0, 0, FINISH_CANCELLED))


class StreamScheduler:
    """Requests run through ``engine.stream`` on ``workers`` threads (1: one at a time)."""

    def __init__(self, engine: Any, workers: int = 1):
        self.engine = engine
        self.workers = workers
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="forge-stream")
        self._waiting = 0
        self._lock = threading.Lock()

    def submit(self, request: ChatRequest, loop: Optional[asyncio.AbstractEventLoop] = None) -> Ticket:
        prepare = getattr(self.engine, "prepare", None)
        if prepare is not None:  # encode and check the prompt now, in the caller's thread
            prepare(request)
        ticket = Ticket(request, loop)
        with self._lock:
            self._waiting += 1
        self._pool.submit(self._work, ticket)
        return ticket

    def pending(self) -> int:
        return max(0, self._waiting - self.workers)

    def active(self) -> int:
        return self._waiting

    def _work(self, ticket: Ticket) -> None:
        with self._lock:
            self._waiting -= 1
        if ticket.cancelled.is_set():
            ticket.put(_END)
            return
        stream = self.engine.stream(ticket.request)
        try:
            for delta in stream:
                ticket.put(delta)
                if ticket.cancelled.is_set():
                    break
        except Exception as e:
            log.exception("generation failed")
            ticket.put(e)
        finally:
            close = getattr(stream, "close", None)
            if close is not None:
                close()

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


def scheduler_for(engine: Any) -> Any:
    """The scheduler that suits ``engine``: batching for ``hf``, threads for the others."""
    if hasattr(engine, "new_batch"):
        return BatchScheduler(engine)
    return StreamScheduler(engine, workers=getattr(engine, "concurrency", 1))
