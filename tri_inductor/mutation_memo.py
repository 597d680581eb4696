"""Remember Inductor's mutation analysis of our Triton kernels (a compile-time cache, in memory).

Inductor asks ``triton_kernel_wrap.identify_mutated_tensors`` which arguments a user Triton kernel
writes every time it functionalizes a traced launch (each replacement our patterns trace) and
every time it lowers one (``ir.UserDefinedTritonKernel``). Each call runs Triton's frontend on
the kernel (``generate_ttir``: Python AST -> TTIR, ~0.1 s for a GEMM kernel) although the answer
depends only on the kernel and on what ``generate_ttir`` reads from the arguments: tensors as
their dtype (it builds ``torch.empty(2, dtype)`` stand-ins), symbolic sizes as the constant 2,
constexprs and floats by value, a runtime int as Triton specialises it (its type, == 1, a
multiple of 16: Triton's own ``native_specialize_impl``, so GEMMs of other N/K but the same tile
config share an entry), plus the target. A vLLM cold start traces and lowers the same launches
(a GEMM config, the norm, RoPE) in every piece and compile range, and the pattern matcher traces
each replacement more than once: the frontend ran 288 times for 3 layers of a Qwen2.5-7B shape,
129 with the memo (docs/design/cold_start.md).

:func:`memoized` keys on exactly those inputs, so a hit returns what the analysis would compute;
anything it cannot key (a real tensor, an unknown argument type) or a
kernel that is not ours goes to Inductor's analysis unchanged.
"""
from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from .cache_counters import count

_MEMO: dict[tuple, list[str]] = {}
_KEEP: dict[int, Any] = {}  # id(kernel) -> kernel: ids in keys never get reused while remembered
_LOCK = threading.Lock()
MAX_ENTRIES = 4096
stats = {"hits": 0, "misses": 0}


class _Unkeyable(Exception):
    pass


def _jit(kernel: Any) -> Any:
    fn = kernel
    while fn is not None and not hasattr(fn, "params"):  # Autotuner / Heuristics wrap a JITFunction
        fn = getattr(fn, "fn", None)
    return fn


def _is_ours(kernel: Any) -> bool:
    module = getattr(getattr(_jit(kernel), "fn", None), "__module__", "") or ""
    return module.startswith("tri_inductor.")


def _int_key(value: int) -> Any:
    """What Triton's frontend can see of a runtime (non-constexpr) int: its specialisation."""
    try:
        from triton.backends.compiler import BaseBackend
        from triton.runtime.jit import native_specialize_impl

        return ("int-spec", *native_specialize_impl(BaseBackend, value, False, True, True))
    except Exception:  # noqa: BLE001  (another Triton: key on the value itself)
        return ("int", value)


def _arg_key(value: Any, constexpr: bool) -> Any:
    import sympy
    import torch

    if not constexpr and type(value) is int:
        return _int_key(value)
    if isinstance(value, (torch.SymInt, torch.SymFloat, torch.SymBool, sympy.Expr)):
        return ("sym",)  # generate_ttir passes 2 for every symbolic value
    from torch._subclasses.fake_tensor import FakeTensor

    if isinstance(value, FakeTensor):
        return ("tensor", value.dtype)
    try:
        from torch._inductor.ir import TensorBox
    except ImportError:  # pragma: no cover
        TensorBox = ()  # type: ignore[assignment]
    if TensorBox and isinstance(value, TensorBox):
        return ("tensor", value.get_dtype())
    if value is None or isinstance(value, (bool, int, float, str, torch.dtype)):
        return (type(value).__name__, value)
    raise _Unkeyable(type(value).__name__)  # a real tensor (its address specialises), a descriptor, ...


def _key(kernel: Any, kwargs: dict[str, Any], tma_descriptor_metadata: Any) -> tuple | None:
    if not _is_ours(kernel):
        return None
    try:
        constexprs = {p.name for p in _jit(kernel).params if p.is_constexpr}
        # (names Triton does not know are launch options such as num_warps: keyed by value)
        args = tuple(sorted((name, _arg_key(v, name in constexprs or name not in _jit(kernel).arg_names))
                            for name, v in kwargs.items()))
        import triton

        target = triton.runtime.driver.active.get_current_target()
        # a host descriptor reaches the analysis as its base tensor and its block shape (all
        # Triton's frontend sees of it: generate_ttir builds a stand-in of that dtype and shape)
        tma = tuple(sorted((name, repr(meta)) for name, meta in (tma_descriptor_metadata or {}).items()))
        return (id(kernel), repr(target), args, tma)
    except Exception:  # noqa: BLE001  (unkeyable argument, no active driver: no memo)
        return None


def _timed(real: Callable[..., list[str]], args: tuple, kw: dict) -> list[str]:
    """One run of Triton's frontend for the analysis, counted (cache_counters: mutation_s/_runs)."""
    t0 = time.perf_counter()
    try:
        return real(*args, **kw)
    finally:
        count("mutation_s", time.perf_counter() - t0)
        count("mutation_runs")


def memoized(real: Callable[..., list[str]]) -> Callable[..., list[str]]:
    """``identify_mutated_tensors`` with the memo in front (installed by ``audit.install_hooks``)."""

    import inspect

    sig = inspect.signature(real)

    def identify_mutated_tensors(*args, **kw):
        try:  # by name, as torch names them (hooks.TABLE records the signature)
            bound = sig.bind(*args, **kw)
            bound.apply_defaults()
            kernel = bound.arguments["kernel"]
            key = _key(kernel, bound.arguments["kwargs"], bound.arguments["tma_descriptor_metadata"])
        except (TypeError, KeyError):  # another signature: no memo
            key = None
        if key is None:
            return _timed(real, args, kw)
        with _LOCK:
            hit = _MEMO.get(key)
        if hit is not None:
            stats["hits"] += 1
            return list(hit)
        out = _timed(real, args, kw)
        stats["misses"] += 1
        with _LOCK:
            if len(_MEMO) >= MAX_ENTRIES:
                _MEMO.clear()
                _KEEP.clear()
            _MEMO[key] = list(out)
            _KEEP[id(kernel)] = kernel
        return out

    return identify_mutated_tensors


def forget() -> None:
    with _LOCK:
        _MEMO.clear()
        _KEEP.clear()
