"""Tuning candidates compiled before they are tuned (cold start: docs/design/cold_start.md).

A shape's tuning takes most of its time compiling its candidates (on an H200 a bucket whose
kernels existed measured 12-15 candidates in 0.1 s), and the shapes are known long before they
are tuned: vLLM creates a linear layer's weight, and builds an attention layer, before it loads
weights, traces the model and compiles it. :func:`submit` queues a shape's candidates then; one
background thread has them compiled (by worker processes, ``compile_workers``: Triton's frontend
holds the GIL, threads here would slow vLLM's main thread; else on a few threads), and the tuner calls
:func:`wait` before its own compile batch, which then finds every kernel in Triton's cache.

Compile only, on ``meta`` tensors of the real shapes: no memory, no stream, nothing launched,
so it is safe beside anything the process does (weight loading, CUDA-graph capture). Triton keys
a tensor argument on its dtype and 16-byte alignment, and a meta tensor's address (0) is aligned
as every fresh allocation is: the kernels are the ones the tuner's real tensors ask for
(``tests/test_compile_ahead.py`` compares the two specialisations). Nothing here decides
anything: a shape whose compile is not done when its tuning starts is compiled by the tuner as
before (:func:`wait` takes a queued one back). On only where tuning runs (a GPU, tuning on) and
``TRI_INDUCTOR_COMPILE_AHEAD`` is not 0.
"""
from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable, Hashable
from typing import Any

from . import cache

log = logging.getLogger("tri_inductor.compile_ahead")

Jobs = Callable[[], dict[Any, Callable[[], Any]]]
"""Builds ``{candidate: compile-only call}`` when the worker takes the shape (not at submit: the
submitting thread is vLLM's model construction)."""

_lock = threading.Lock()
_queue: collections.OrderedDict[Hashable, tuple[Jobs, int, str]] = collections.OrderedDict()
_later: collections.OrderedDict[Hashable, tuple[Jobs, int, str]] = collections.OrderedDict()  # after _queue
_running: dict[Hashable, threading.Event] = {}
_seen: set[Hashable] = set()  # submitted in this process (queued, running or done)
_worker: threading.Thread | None = None  # None while no worker runs (set under _lock)
_exit_hook = False


def enabled() -> bool:
    from . import envs
    from . import tuning

    return envs.compile_ahead() and tuning.can_tune()


def submit(key: Hashable, jobs: Jobs, later: bool = False, label: str | None = None) -> bool:
    """Queue ``jobs`` under ``key`` (once per process); ``later``: after everything queued without
    it (a shape tuned after the compile, e.g. the lm_head's); ``label``: the shape in the progress
    line. False when compiling ahead is off."""
    global _worker, _exit_hook
    if not enabled():
        return False
    import torch

    from . import hooks

    hooks.same_ptxas_as_inductor()  # before the first compile: the warm start's cache keys
    with _lock:
        if key in _seen:
            return True
        _seen.add(key)
        (_later if later else _queue)[key] = (jobs, torch.cuda.current_device(), label or str(key))
        if not _exit_hook:
            import atexit

            atexit.register(_drop_queued)  # an exiting process waits for no more batches
            _exit_hook = True
        if _worker is None:  # the worker leaves (and says so) under the lock: no item is stranded
            _worker = threading.Thread(target=_work, name="tri_inductor-ahead", daemon=True)
            _worker.start()
    return True


def wait(key: Hashable) -> None:
    """Before ``key``'s tuning compiles: wait for its compile if it is under way; a queued one is
    taken back (the tuner compiles it now, as without this module)."""
    with _lock:
        if _queue.pop(key, None) is not None or _later.pop(key, None) is not None:
            return
        done = _running.get(key)
    if done is not None:
        t0 = time.perf_counter()
        done.wait()
        cache.count("ahead_wait_s", time.perf_counter() - t0)


def _work() -> None:
    global _worker
    import torch

    from . import compile_workers

    while True:
        with _lock:
            if not (_queue or _later):
                _worker = None
                compile_workers.close_pool()  # their memory back; a later batch starts new ones
                return
            key, (jobs, device, label) = (_queue or _later).popitem(last=False)
            done = _running[key] = threading.Event()
        t0 = time.perf_counter()
        try:
            torch.cuda.set_device(device)
            fns = jobs()
            if fns:  # nothing when every bucket is stored (a warm start)
                failed = (compile_workers.compile_calls(fns, _in_threads) if compile_workers.usable()
                          else _in_threads(fns))
                cache.count("ahead_kernels", len(fns) - len(failed))
                cache.progress(f"compiled {label} ahead: {len(fns) - len(failed)} tuning candidates in "
                               f"{time.perf_counter() - t0:.1f} s, in the background (its tuning then measures)")
        except Exception as e:  # noqa: BLE001  (the tuner compiles what this did not)
            log.debug("tri_inductor: compiling %s ahead failed: %r", key, e)
        finally:
            cache.count("ahead_compile_s", time.perf_counter() - t0)
            with _lock:
                _running.pop(key, None)
            done.set()


def _in_threads(calls: dict) -> dict:
    """The batch compiled on threads of this process (kernels the workers cannot take)."""
    from .tuning import compile_batch

    return compile_batch(calls, workers=_threads())


def _threads() -> int:
    # Fewer than the tuner's batch: the main thread and Inductor's compile workers run meanwhile.
    import os

    return max(2, min(8, (os.cpu_count() or 4) // 2))


def pending() -> int:
    """Shapes queued or compiling (tests, progress)."""
    with _lock:
        return len(_queue) + len(_later) + len(_running)


def _drop_queued() -> None:
    with _lock:
        _queue.clear()
        _later.clear()


def forget() -> None:
    """Tests: drop what was queued and seen (a running compile finishes)."""
    with _lock:
        _queue.clear()
        _later.clear()
        _seen.clear()
