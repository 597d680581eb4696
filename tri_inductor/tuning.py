"""On-GPU tuning of our kernels' configs, once per shape, results kept in :mod:`tri_inductor.cache`.

``linear.choose_config`` asks :func:`gemm_config` for the tile config of a GEMM (N, K, M bucket,
dtype).  A stored result is returned at once (warm start: nothing is benchmarked).  On a miss,
where a real GPU is present, the candidate configs from ``linear.py``'s tables (the bucket's
default, its shipped tuned entry and the neighbouring buckets' configs) are each benchmarked
once, the fastest correct one is stored and returned.  Without a GPU (CI, codegen-only mode, the
interpreter) or unless ``TRI_INDUCTOR_TUNE=1`` (opt-in: the GPU path of the tuner has not yet been
run on a GPU) the static table's choice is returned and nothing is stored.  A failed tuning run never fails the compile: the table default is used.

The choice is made while Inductor traces our replacement graph (fake tensors, functionalization
and proxy modes active on this thread).  Benchmarks therefore run in a short-lived helper thread,
where none of that thread-local tracing state exists, on real tensors.
"""
from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from . import cache

log = logging.getLogger("tri_inductor.tuning")

TUNE_ENV = "TRI_INDUCTOR_TUNE"  # "1": tune missing shapes on the GPU; unset/"0": the static tables
C = TypeVar("C")

_failed: set[tuple[str, str]] = set()  # shapes whose tuning failed in this process: not retried
_tuned_this_process = 0
_state_lock = threading.Lock()


def can_tune() -> bool:
    """A real GPU is here and tuning is allowed."""
    if os.environ.get(TUNE_ENV, "0").strip().lower() in ("0", "false", "no", "off", ""):
        return False
    if os.environ.get("TRITON_INTERPRET") == "1":
        return False
    try:
        import torch

        if not torch.cuda.is_available():
            return False
        if torch.cuda.is_initialized() and torch.cuda.is_current_stream_capturing():
            return False  # inside a CUDA-graph capture nothing else may be launched
        return "(codegen-only)" not in cache.card()[0]  # fake_sm90 reports a fake H100
    except Exception:  # noqa: BLE001
        return False


def run_isolated(fn: Callable[[], Any]) -> Any:
    """``fn()`` on a fresh thread: no fake/proxy/functional modes, no tracing context, grad off,
    same CUDA device as the caller."""
    import torch

    box: dict[str, Any] = {}
    device = torch.cuda.current_device()

    def target() -> None:
        try:
            torch.cuda.set_device(device)
            with torch.no_grad():
                box["value"] = fn()
        except BaseException as e:  # noqa: BLE001  (re-raised on the caller's thread)
            box["error"] = e

    t = threading.Thread(target=target, name="tri_inductor-tune", daemon=True)
    t.start()
    t.join()
    if "error" in box:
        raise box["error"]
    return box["value"]


def tune(kernel: str, shape_key: str, default: C, candidates: Sequence[C],
         measure: Callable[[C], float], decode: Callable[[Any], C | None],
         encode: Callable[[C], Any], label: str | None = None,
         skip_reason: Callable[[], str | None] | None = None) -> C:
    """The stored config for (kernel, shape_key), else benchmark ``candidates`` (``measure(c)`` ->
    milliseconds, raising if ``c`` is invalid or wrong), store the fastest and return it.
    ``skip_reason()`` (on a miss only): a reason not to tune now (e.g. not enough free memory).

    Generic so attention (or any kernel with a config table) can use it the way GEMM does."""
    global _tuned_this_process
    label = label or f"{kernel} {shape_key}"
    hit = cache.lookup(kernel, shape_key)
    if hit is not None:
        cfg = decode(hit)
        if cfg is not None:
            return cfg
        log.warning("tri_inductor: stored config %r for %s is not valid for this version; re-tuning", hit, label)
    if (kernel, shape_key) in _failed or not can_tune():
        return default
    why = skip_reason() if skip_reason is not None else None
    if why:
        _failed.add((kernel, shape_key))
        cache.progress(f"not tuning {label}: {why}; using the table's config")
        return default
    uniq: list[C] = []
    for c in [default, *candidates]:
        if c is not None and c not in uniq:
            uniq.append(c)
    with _state_lock:
        _tuned_this_process += 1
        nth = _tuned_this_process
    t0 = time.perf_counter()
    cache.progress(f"tuning {label}: {len(uniq)} candidate configs (shape #{nth} this start; "
                   "a warm start skips this)")
    timings: list[tuple[float, C]] = []
    for i, c in enumerate(uniq, 1):
        cache.count("benchmarks")
        try:
            ms = float(measure(c))
        except Exception as e:  # noqa: BLE001  (out of shared memory, wrong result, ...)
            cache.progress(f"tuning {label} ({i}/{len(uniq)}): {tuple(c) if isinstance(c, tuple) else c} "
                           f"rejected ({type(e).__name__})")
            continue
        timings.append((ms, c))
        cache.progress(f"tuning {label} ({i}/{len(uniq)}): {tuple(c) if isinstance(c, tuple) else c} "
                       f"{ms * 1e3:.1f} us")
    if not timings:
        cache.count("tune_s", time.perf_counter() - t0)
        _failed.add((kernel, shape_key))
        log.warning("tri_inductor: no candidate config of %s could be benchmarked; using the table default", label)
        return default
    best_ms, best = min(timings, key=lambda t: t[0])
    default_ms = next((ms for ms, c in timings if c == default), None)
    cache.count("tune_s", time.perf_counter() - t0)
    cache.store(kernel, shape_key, encode(best), us=round(best_ms * 1e3, 2),
                default_us=None if default_ms is None else round(default_ms * 1e3, 2),
                candidates=len(uniq), tune_s=round(time.perf_counter() - t0, 2))
    cache.count("tuned")
    gain = f", x{default_ms / best_ms:.2f} vs the table default" if default_ms else ""
    cache.progress(f"tuned {label} -> {tuple(best) if isinstance(best, tuple) else best} "
                   f"({best_ms * 1e3:.1f} us{gain}) in {time.perf_counter() - t0:.1f} s")
    return best


# ----------------------------------------------------------------------------- GEMM


def bucket_label(bucket: int) -> str:
    from .patterns.linear import BUCKETS

    return f">{BUCKETS[-1]}" if bucket > BUCKETS[-1] else f"<={bucket}"


def gemm_shape_key(n: int, k: int, bucket: int, dtype: Any) -> str:
    return f"N={n},K={k},M{bucket_label(bucket)},{str(dtype).replace('torch.', '')}"


def gemm_candidates(n: int, k: int, bucket: int) -> list[Any]:
    """linear.py's own choices around this bucket: shipped tuned entries and static defaults of
    the bucket and its neighbours (every config is correct for every M; only speed differs)."""
    from .patterns import linear as L

    keys = sorted(L.CONFIGS)
    i = keys.index(bucket) if bucket in keys else len(keys) - 1
    near = keys[max(0, i - 1): i + 2]
    out = [L.TUNED.get((n, k, bucket)), L.CONFIGS.get(bucket)]
    out += [L.TUNED.get((n, k, b)) for b in near] + [L.CONFIGS[b] for b in near]
    return [c for c in out if c is not None]


def _ends(out: Any) -> Any:
    """First and last rows of a GEMM output, in fp32: the correctness check covers the first and
    the last M tile (ragged edges, group ordering) without a full-size fp32 copy of a big output."""
    import torch

    return torch.cat([out[:32], out[-32:]]).float()


def gemm_config(n: int, k: int, bucket: int, dtype: Any, default: Any) -> Any:
    """The tile config for a (N, K, M bucket) GEMM: stored result, else tuned now, else ``default``."""
    import torch

    from .patterns import linear as L

    if dtype not in (torch.float16, torch.bfloat16):
        return default  # fp32 uses its own small table; not tuned

    def decode(raw: Any) -> Any:
        try:
            cfg = L.Cfg(*(int(x) for x in raw))
        except (TypeError, ValueError):
            return None
        return cfg if cfg.block_m > 0 and cfg.block_n > 0 and cfg.block_k > 0 else None

    m = L.representative_m(None if bucket > L.BUCKETS[-1] else bucket)
    state: dict[str, Any] = {}

    def too_big() -> str | None:
        # Operands + two outputs + (small M) a split-K fp32 workspace: the transient GPU memory
        # tuning needs.  With too little free (a huge lm_head, a nearly full card) keep the table.
        need = (m * k + n * k + 2 * m * n) * 2 + (m * n * 4 * 16 if m <= 128 else 0)
        free = torch.cuda.mem_get_info()[0]
        if 2 * need > free:
            return f"needs ~{need >> 20} MiB of GPU memory, {free >> 20} MiB free"
        return None

    def measure(cfg: Any) -> float:
        def work() -> float:
            import triton.testing

            if "a" not in state:
                g = torch.Generator(device="cuda").manual_seed(0)
                state["a"] = torch.randn(m, k, device="cuda", dtype=dtype, generator=g)
                state["w"] = torch.randn(n, k, device="cuda", dtype=dtype, generator=g) / 64
                state["ref"] = _ends(L._mm_launch(state["a"], state["w"].t(), None, default))
            a, b = state["a"], state["w"].t()
            out = _ends(L._mm_launch(a, b, None, cfg))
            err = ((out - state["ref"]).norm() / state["ref"].norm().clamp_min(1e-6)).item()
            if not err < 2e-2:
                raise ValueError(f"result differs from the default config's (rel. err {err:.2e})")
            return float(triton.testing.do_bench(lambda: L._mm_launch(a, b, None, cfg), warmup=10, rep=30))

        return run_isolated(work)

    try:
        return tune("mm", gemm_shape_key(n, k, bucket, dtype), default, gemm_candidates(n, k, bucket),
                    measure, decode, lambda c: list(c), skip_reason=too_big,
                    label=f"mm N={n} K={k} M-bucket={bucket_label(bucket)} {str(dtype).replace('torch.', '')}")
    finally:
        state.clear()  # free the benchmark tensors before the compile goes on
