"""Process-level settings for fast start-up and CPU training: threads, the C allocator, the garbage
collector while a run sets up, which optional libraries get imported, and where this process
stands in a multi-process job (:func:`world_size`, :func:`is_main_process`).

This module imports only the standard library (torch lazily), so ``kit/__init__`` can use
:func:`paused_gc` around its own imports.

Why the allocator: a training step on CPU allocates and frees gigabytes of activation tensors of
many sizes. glibc's defaults hand large blocks straight back to the kernel (``mmap``/``munmap``
above a threshold, heap trimming above another), so every step faults the same memory in again:
measured on the default workload (2 cores, LoRA, ~2000 tokens/step) a third of the CPU time went
to the kernel (8 M page faults in 4 steps) and throughput was 125 instead of 205 tokens/s.
While a run trains we keep freed memory in the heap for reuse; afterwards the old behaviour is
restored and the free memory is returned to the system (``malloc_trim``), so a notebook kernel
does not keep it. Peak memory is bounded by micro-batching (see ``train.micro_batch_size``).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import gc
import importlib.util
import logging
import os
import sys
import threading
from typing import Iterator, Optional

log = logging.getLogger(__name__)

# mallopt parameter numbers from glibc's <malloc.h>
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_KEEP_MMAP = 1 << 30  # serve blocks up to 1 GiB from the heap instead of fresh mmaps
_KEEP_TRIM = 2**31 - 1  # (an int) never give the top of the heap back mid-run
_AFTER_MMAP = 32 << 20  # glibc's own upper bound for its dynamic threshold
_AFTER_TRIM = 64 << 20


def _glibc() -> Optional[ctypes.CDLL]:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.gnu_get_libc_version  # only glibc has mallopt with these parameters  # noqa: B018
        return libc
    except (OSError, AttributeError):
        return None


_lock = threading.Lock()
_active = 0  # runs training in this process right now (a notebook can run two in threads)


@contextlib.contextmanager
def training_allocator(device: str, quantized: bool = False) -> Iterator[bool]:
    """Keep freed memory for reuse while CPU training runs (yields whether it applies).

    ``quantized``: the model has 4/8-bit bitsandbytes weights. Each of its layers then dequantizes a
    full-precision copy of its weight in every forward and backward (64 MB per MLP matrix at
    SmolLM2-1.7B, 271 MB at Qwen2.5-7B); served from the heap, those copies of many sizes leave it
    fragmented. For such runs blocks above glibc's own 32 MiB bound keep coming from ``mmap``
    (the heap is still never trimmed mid-run). Measured with QLoRA, batch 1, cutoff 64, one thread
    (bench/README.md): peak anonymous memory 4427 -> 2614 MB and 13.4 -> 12.2 s/step at SmolLM2-1.7B,
    17376 -> 9858 MB at Qwen2.5-7B, whose step pays for it (34.9 -> 70.5 s; plain TRL's 92.4 s): the
    4-bit run's point is to fit, and the heap's copies made it the largest of the contenders there.
    Process-wide: the first CPU run to start sets it, the last one to finish restores it.
    ``FORGE_KEEP_MALLOC=1`` leaves the allocator alone (e.g. to measure the difference).
    """
    global _active
    libc = _glibc() if device == "cpu" and os.environ.get("FORGE_KEEP_MALLOC") != "1" else None
    if libc is None:
        yield False
        return
    keep_mmap = _AFTER_MMAP if quantized else _KEEP_MMAP
    with _lock:
        ok = _active > 0 or bool(
            libc.mallopt(_M_MMAP_THRESHOLD, keep_mmap) and libc.mallopt(_M_TRIM_THRESHOLD, _KEEP_TRIM)
        )
        if ok:
            _active += 1
    if not ok:
        log.debug("mallopt refused the training allocator settings; keeping glibc's defaults")
        yield False
        return
    try:
        yield True
    finally:
        with _lock:
            _active -= 1
            if _active == 0:
                libc.mallopt(_M_MMAP_THRESHOLD, _AFTER_MMAP)
                libc.mallopt(_M_TRIM_THRESHOLD, _AFTER_TRIM)
                libc.malloc_trim(0)


def return_free_memory() -> bool:
    """Give the C heap's free memory back to the system now (glibc ``malloc_trim``); whether it ran.

    Why: loading a checkpoint allocates and frees a copy of many tensors (dtype casts, and under
    ``quant.bits`` the full-precision weight each 4/8-bit one is made from). Blocks under glibc's
    32 MiB mmap threshold live in the heap, and what they leave free stays mapped: measured on
    Qwen2.5-0.5B loaded in 4-bit, 2.3-2.7 GB anonymous memory after the load against 1.05 GB after
    a trim (SmolLM2-1.7B: 1733 -> 1523 MB). Skipped while a run trains in this process, which keeps
    freed memory on purpose (:func:`training_allocator`).
    """
    libc = _glibc()
    if libc is None or _active > 0:
        return False
    libc.malloc_trim(0)
    return True


_gc_lock = threading.Lock()
_gc_pausers = 0
_gc_was_enabled = True


@contextlib.contextmanager
def paused_gc() -> Iterator[None]:
    """Python's cyclic garbage collector off while a run sets up (imports, model load, trainer).

    Why: importing torch's and Hugging Face's stacks creates ~900k Python objects, and every full
    collection walks all of them; measured here, importing transformers' Trainer and TRL took
    5.2 s with the collector on and 3.6 s with it off. The set-up makes little cyclic garbage, and
    the collector is back on (if it was on) before the first training step. Nested and
    concurrent runs share one switch.
    """
    global _gc_pausers, _gc_was_enabled
    with _gc_lock:
        if _gc_pausers == 0:
            _gc_was_enabled = gc.isenabled()
            gc.disable()
        _gc_pausers += 1
    try:
        yield
    finally:
        with _gc_lock:
            _gc_pausers -= 1
            if _gc_pausers == 0 and _gc_was_enabled:
                gc.enable()


@contextlib.contextmanager
def deferred_bitsandbytes(needed: bool) -> Iterator[None]:
    """Import the training libraries without bitsandbytes when the run does not use it.

    Why: peft imports bitsandbytes at import time (``peft.helpers``, for a weight-analysis helper)
    and again when it attaches LoRA layers (to offer its 8-bit layer types), and bitsandbytes
    imports torch's compiler stack: 0.7 s of the ~4 s that importing peft, transformers' Trainer
    and TRL takes on this 2-core machine, paid by every run before its first step. While the body
    runs, ``bitsandbytes`` reads as absent (``None`` in ``sys.modules``; peft
    catches the ImportError). Afterwards it is importable again and the cached availability
    answers of peft and transformers are cleared, so a quantized run later in the same process (a
    notebook) finds it (tests/test_perf_path.py). Nothing happens when bitsandbytes is needed, is
    not installed, or peft is already imported, i.e. only during a process's first run. It is
    process-wide while it lasts (a few seconds): code importing bitsandbytes in another thread
    meanwhile would get an ImportError.
    """
    if (
        needed
        or "peft" in sys.modules
        or "bitsandbytes" in sys.modules
        or importlib.util.find_spec("bitsandbytes") is None
    ):
        yield
        return
    sys.modules["bitsandbytes"] = None  # type: ignore[assignment]
    try:
        yield
    finally:
        if "bitsandbytes" in sys.modules and sys.modules["bitsandbytes"] is None:
            del sys.modules["bitsandbytes"]
        for module, names in (
            ("peft.import_utils", ("is_bnb_available", "is_bnb_4bit_available")),
            ("transformers.utils.import_utils", ("is_bitsandbytes_available",)),
        ):
            for name in names:
                fn = getattr(sys.modules.get(module), name, None)
                if hasattr(fn, "cache_clear"):
                    fn.cache_clear()


def world_size() -> int:
    """Processes in this job (torchrun / accelerate set ``WORLD_SIZE``); 1 when run alone."""
    return int(os.environ.get("WORLD_SIZE") or 1)  # unset or empty: alone


def is_main_process() -> bool:
    """Whether this is rank 0, the one process that writes the run directory (``RANK`` unset: alone)."""
    return int(os.environ.get("RANK", "0")) == 0


def set_threads(n: Optional[int]) -> None:
    """torch threads = physical cores by default (hyper-threads slow matmuls down)."""
    import torch

    if n is None:
        try:
            import psutil

            n = psutil.cpu_count(logical=False) or os.cpu_count() or 1
        except ImportError:
            n = os.cpu_count() or 1
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
