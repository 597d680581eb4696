"""On-GPU tuning of our kernels' configs, once per shape, results kept in :mod:`tri_inductor.cache`.

Generic: a kernel family gives a default, candidates and a ``measure`` function (the GEMM's are
in ``patterns/gemm/tuning.py``).  A stored result is returned at once (warm start: nothing is
benchmarked).  On a miss, on a real GPU, the candidates are benchmarked once each and the
fastest correct one is stored and returned.  Tuning is on by default on a GPU
(``TRI_INDUCTOR_TUNE=0`` turns it off); without a GPU (CI, codegen-only mode, the interpreter)
the default is returned and nothing is stored.  All tuning of one process shares a time budget
(``TRI_INDUCTOR_TUNE_BUDGET_S``, default 120 s): past it, defaults are used and not stored, so a
later start tunes the rest.  A failed tuning run never fails the compile: the default is used.

The choice is made while Inductor traces our replacement graph (fake tensors, functionalization
and proxy modes active on this thread).  Benchmarks therefore run in a short-lived helper thread,
where none of that thread-local tracing state exists, on real tensors.
"""
from __future__ import annotations

import logging
import os
import statistics
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from . import cache

log = logging.getLogger("tri_inductor.tuning")

TUNE_ENV = "TRI_INDUCTOR_TUNE"  # envs.py: unset/"1": tune missing shapes on a GPU; "0": never
BUDGET_ENV = "TRI_INDUCTOR_TUNE_BUDGET_S"  # envs.py: seconds of tuning per process (default 120)
C = TypeVar("C")

_failed: set[tuple[str, str]] = set()  # shapes whose tuning failed in this process: not retried
_tuned_this_process = 0
_spent_s = 0.0  # seconds of tuning in this process (the budget's meter)
_budget_told = False
_state_lock = threading.Lock()


def can_tune() -> bool:
    """A real GPU is here and tuning is allowed."""
    from . import envs

    if not envs.tune():
        return False
    if os.environ.get("TRITON_INTERPRET") == "1":
        return False
    try:
        import torch

        if not torch.cuda.is_available():
            return False
        if capturing():
            return False  # inside a CUDA-graph capture nothing else may be launched
        return "(codegen-only)" not in cache.card()[0]  # fake_sm90 reports a fake H100
    except Exception:  # noqa: BLE001
        return False


def capturing() -> bool:
    """A CUDA-graph capture is under way on this thread's stream."""
    import torch

    return torch.cuda.is_initialized() and torch.cuda.is_current_stream_capturing()


def budget_s() -> float:
    from . import envs

    return envs.tune_budget_s()


def spent_s() -> float:
    return _spent_s


def run_isolated(fn: Callable[[], Any]) -> Any:
    """``fn()`` on a fresh thread: no fake/proxy/functional modes, no tracing context, grad off,
    same CUDA device as the caller."""
    import torch

    box: dict[str, Any] = {}
    device = torch.cuda.current_device()

    def target() -> None:
        try:
            torch.cuda.set_device(device)
            # The device is idle on entry and on exit: the benchmark runs on this thread's
            # streams, never overlapping work the caller (vLLM's profile run) has in flight,
            # and leaves nothing running behind.
            torch.cuda.synchronize()
            with torch.no_grad():
                box["value"] = fn()
            torch.cuda.synchronize()
        except BaseException as e:  # noqa: BLE001  (re-raised on the caller's thread)
            box["error"] = e

    t = threading.Thread(target=target, name="tri_inductor-tune", daemon=True)
    t.start()
    t.join()
    if "error" in box:
        raise box["error"]
    return box["value"]


def compile_side_by_side(fns: dict) -> dict:
    """Compile the candidates' kernels side by side (Triton's compile is mostly ptxas, a
    subprocess): tuning time is then one compile's, not one per candidate. Compile only: the
    first launches happen one by one, in ``measure`` (concurrent first launches of one kernel
    race in Triton's lazy handle loading; seen as an illegal address on the H200). Returns the
    candidates whose compile failed, with the error: they are rejected without a second compile
    (a compiler crash that Triton recovers from in-process should happen once, not twice)."""
    import torch

    t0 = time.perf_counter()
    failed = compile_batch(fns, workers=max(8, min(32, os.cpu_count() or 8)))
    torch.cuda.synchronize()
    cache.count("tune_compile_s", time.perf_counter() - t0)
    return failed


def compile_batch(fns: dict, workers: int) -> dict:
    """``{candidate: error}`` of compiling each of ``fns``' calls under ``compile_only`` on
    ``workers`` threads (Triton's compile runs mostly outside the GIL: MLIR passes, ptxas).
    Launches nothing and synchronizes nothing: also the compile-ahead thread's batch."""
    from concurrent.futures import ThreadPoolExecutor

    from .patterns._launch import compile_only

    def run(item):
        cfg, f = item
        try:
            with compile_only():
                f()
        except Exception as e:  # noqa: BLE001
            return cfg, e
        return cfg, None

    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="tri_inductor-compile") as pool:
        failed = {cfg: e for cfg, e in pool.map(run, fns.items()) if e is not None}
    # CPython < 3.11.8 / 3.12.1 keeps the AST constructor's recursion depth per interpreter, not
    # per thread: Triton parsing kernel sources on two threads at once can raise a spurious
    # SystemError (python/cpython#106905). Not the kernel's fault: such a candidate is compiled
    # again, alone, on this thread.
    for cfg in [c for c, e in failed.items() if isinstance(e, SystemError)]:
        if run((cfg, fns[cfg]))[1] is None:
            del failed[cfg]
    return failed


def graph_time_ms(fns: Sequence[Callable[[], Any]], reps: int = 5, inner: int = 1) -> float:
    """Median ms of one call, measured on CUDA-graph replays (no launch overhead in the number, as
    under vLLM's graphs). ``fns`` are calls over *different* inputs, captured once (``inner``
    times over) and replayed ``reps`` times: with enough of them (> L2 in total) every call reads
    from HBM. The tuner's measure and the benchmarks' (``benchmarks/_common.bench``) timer."""
    import torch

    torch.cuda.synchronize()
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for f in fns:  # warm-up: compiles, allocator pools
            f()
    torch.cuda.current_stream().wait_stream(s)
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    # thread_local: a CUDA call another thread makes meanwhile (compile-ahead workers, vLLM's)
    # must not invalidate this capture ("operation failed due to a previous error during
    # capture", seen at vLLM start-up with the compile-ahead pool busy)
    with torch.cuda.graph(g, capture_error_mode="thread_local"):
        for _ in range(inner):
            for f in fns:
                f()
    g.replay()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    for _ in range(reps):
        start.record()
        g.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / (len(fns) * inner))
    del g
    return statistics.median(times)


def tune(kernel: str, shape_key: str, default: C, candidates: Sequence[C] | Callable[[], Sequence[C]],
         measure: Callable[[C], float], decode: Callable[[Any], C | None],
         encode: Callable[[C], Any], label: str | None = None,
         skip_reason: Callable[[], str | None] | None = None) -> C:
    """The stored config for (kernel, shape_key), else benchmark ``candidates`` (``measure(c)`` ->
    milliseconds, raising if ``c`` is invalid or wrong), store the fastest and return it.
    ``candidates`` may be a function returning them: called only when tuning runs (a cache hit or
    a machine that cannot tune does not pay for building the space).
    ``skip_reason()`` (on a miss only): a reason not to tune now (e.g. not enough free memory).

    Generic so attention (or any kernel with a config table) can use it the way GEMM does."""
    global _tuned_this_process, _budget_told, _spent_s
    label = label or f"{kernel} {shape_key}"
    hit = cache.lookup(kernel, shape_key)
    if hit is not None:
        cfg = decode(hit)
        if cfg is not None:
            return cfg
        log.warning("tri_inductor: stored config %r for %s is not valid for this version; re-tuning", hit, label)
    if (kernel, shape_key) in _failed or not can_tune():
        return default
    if _spent_s >= budget_s():
        if not _budget_told:
            _budget_told = True
            cache.progress(f"tuning budget spent ({_spent_s:.0f} s of {BUDGET_ENV}={budget_s():g}): "
                           "untuned shapes use the cost model's config this start; a later start tunes them")
        return default
    why = skip_reason() if skip_reason is not None else None
    if why:
        _failed.add((kernel, shape_key))
        cache.progress(f"not tuning {label}: {why}; using the table's config")
        return default
    if callable(candidates):
        candidates = candidates()
    uniq: list[C] = []
    for c in [default, *candidates]:
        if c is not None and c not in uniq:
            uniq.append(c)
    with _state_lock:
        _tuned_this_process += 1
        nth = _tuned_this_process
    t0 = time.perf_counter()
    try:
        return _tune_now(kernel, shape_key, label, default, uniq, measure, encode, nth, t0)
    finally:
        with _state_lock:
            _spent_s += time.perf_counter() - t0


# CUDA errors that leave the context unusable (sticky): never "a rejected candidate".
_FAULTS = ("illegal memory access", "illegal address", "misaligned address", "unspecified launch failure",
           "illegal instruction", "device-side assert")


def device_fault(e: BaseException) -> bool:
    """Whether ``e`` is a device fault (the CUDA context is lost), not a config the device refuses."""
    text = str(e).lower()
    return any(f in text for f in _FAULTS)


# Fastest candidates kept with a tuning result (config, us): what the cost model is calibrated
# against, and what a smaller candidate space would have lost.
RANKING_KEPT = 5
# Each tuned kernel's share of tune_s (cache_counters).
TUNE_FIELDS = {"mm": "tune_gemm_s", "paged_attn_prefill": "tune_attention_s", "moe": "tune_moe_s"}


def _tune_now(kernel, shape_key, label, default, uniq, measure, encode, nth, t0):
    log.debug("tuning %s: %d candidate configs (shape #%d this start)", label, len(uniq), nth)
    compile_s0 = cache.counters()["tune_compile_s"]
    try:
        return _measure_all(kernel, shape_key, label, default, uniq, measure, encode, nth, t0, compile_s0)
    finally:
        spent = time.perf_counter() - t0
        cache.count("tune_s", spent)
        if kernel in TUNE_FIELDS:
            cache.count(TUNE_FIELDS[kernel], spent)


def _measure_all(kernel, shape_key, label, default, uniq, measure, encode, nth, t0, compile_s0):
    timings: list[tuple[float, C]] = []
    for i, c in enumerate(uniq, 1):
        cache.count("benchmarks")
        try:
            ms = float(measure(c))
        except Exception as e:  # noqa: BLE001  (out of shared memory, wrong result, ...)
            if device_fault(e):
                # the CUDA context is lost: every later call fails, so say which config did it
                raise RuntimeError(f"tri_inductor: tuning {label}: candidate {c} faulted on the device ({e}); "
                                   "the CUDA context is lost. TRI_INDUCTOR_TUNE=0 starts without tuning.") from e
            log.debug("tuning %s (%d/%d): %s rejected (%s: %s)", label, i, len(uniq), c, type(e).__name__, e)
            continue
        timings.append((ms, c))
        log.debug("tuning %s (%d/%d): %s %.1f us", label, i, len(uniq), c, ms * 1e3)
    if not timings:
        _failed.add((kernel, shape_key))
        log.warning("tri_inductor: no candidate config of %s could be benchmarked; using the table default", label)
        return default
    ranked = sorted(timings, key=lambda t: t[0])
    best_ms, best = ranked[0]
    default_ms = next((ms for ms, c in timings if c == default), None)
    compile_s = cache.counters()["tune_compile_s"] - compile_s0
    cache.store(kernel, shape_key, encode(best), us=round(best_ms * 1e3, 2),
                default_us=None if default_ms is None else round(default_ms * 1e3, 2),
                candidates=len(uniq), tune_s=round(time.perf_counter() - t0, 2),
                compile_s=round(compile_s, 2),
                ranking=[[encode(c), round(ms * 1e3, 2)] for ms, c in ranked[:RANKING_KEPT]])
    cache.count("tuned")
    gain = f", x{default_ms / best_ms:.2f} vs the default" if default_ms else ""
    shown = best.short() if hasattr(best, "short") else best
    cache.progress(f"tuned {label} (#{nth}): {shown} {best_ms * 1e3:.1f} us{gain}; "
                   f"{len(timings)}/{len(uniq)} candidates in {time.perf_counter() - t0:.1f} s "
                   f"(compiling {compile_s:.1f} s; tuning so far {_spent_s + time.perf_counter() - t0:.0f} s; "
                   "a warm start skips this)")
    return best
