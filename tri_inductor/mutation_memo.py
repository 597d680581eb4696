"""Remember Inductor's mutation analysis of our Triton kernels (a compile-time cache, in memory).

Inductor asks ``triton_kernel_wrap.identify_mutated_tensors`` which arguments a user Triton kernel
writes every time it functionalizes a traced launch (each replacement our patterns trace) and
every time it lowers one (``ir.UserDefinedTritonKernel``). Each call runs Triton's frontend on
the kernel (``generate_ttir``: Python AST -> TTIR, ~0.05-0.1 s for a GEMM kernel). A vLLM cold
start traces and lowers the same launches (a GEMM config, the norm, RoPE) in every piece and
compile range, and the pattern matcher traces each replacement more than once: the frontend ran
288 times for 3 layers of a Qwen2.5-7B shape without a memo (docs/design/cold_start.md).

What our kernels write follows from their code and constexprs: a store sits behind a constexpr
flag (``HAS_RESIDUAL``), never behind a runtime int's value. So the memo keys a launch on the
kernel, its constexprs and launch options by value, its tensors by dtype and None arguments as
None, and lumps runtime ints and symbolic sizes together: the traced launch (ints) and the
lowered one (sympy sizes), and GEMMs of other N, K or strides with one tile config, share an
entry. That is an assumption about our code, so it is checked: with
``TRI_INDUCTOR_CHECK_MUTATIONS=1`` (the test suite sets it) a hit is compared with the analysis
itself, once per variant the key lumps (each runtime int's specialisation, sizes), and a
difference raises. Anything it cannot key (a real tensor, an unknown
argument type) or a kernel that is not ours goes to Inductor's analysis unchanged.
"""
from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from . import envs
from .cache_counters import count

_MEMO: dict[tuple, list[str]] = {}
_CHECKED: set[tuple] = set()  # (key, variant) pairs TRI_INDUCTOR_CHECK_MUTATIONS compared already
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


_RUNTIME_INT = ("runtime int",)


def _arg_key(value: Any, constexpr: bool) -> Any:
    import sympy
    import torch

    if not constexpr and type(value) is int:
        return _RUNTIME_INT  # its value (or Triton's == 1 / % 16 specialisation) moves no store
    if isinstance(value, (torch.SymInt, sympy.Integer, sympy.Symbol)) or (
            isinstance(value, sympy.Expr) and value.is_integer):
        return _RUNTIME_INT  # a size: the same as a runtime int (generate_ttir passes 2)
    if isinstance(value, (torch.SymFloat, torch.SymBool, sympy.Expr)):
        return ("sym",)
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


def _analysed(kernel: Any, kwargs: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    """(the JITFunction, the arguments) the analysis reads: an ``Autotuner`` (Inductor wraps a
    lowered user kernel in one per launch) as its function with its first config's constexprs,
    as ``generate_ttir`` does; one entry for every wrapper of one kernel."""
    from triton.runtime.autotuner import Autotuner

    if isinstance(kernel, Autotuner):
        if kernel.configs:
            kwargs = {**kwargs, **kernel.configs[0].kwargs}
        kernel = kernel.fn
    return kernel, kwargs


def _key(kernel: Any, kwargs: dict[str, Any], tma_descriptor_metadata: Any) -> tuple | None:
    if not _is_ours(kernel):
        return None
    try:
        from triton.runtime.jit import JITFunction

        jit, kwargs = _analysed(kernel, kwargs)
        if not isinstance(jit, JITFunction):
            return None
        constexprs = {p.name for p in jit.params if p.is_constexpr}
        # (names Triton does not know are launch options such as num_warps: keyed by value)
        args = tuple(sorted((name, _arg_key(v, name in constexprs or name not in jit.arg_names))
                            for name, v in kwargs.items()))
        import triton

        target = triton.runtime.driver.active.get_current_target()
        # a host descriptor reaches the analysis as its base tensor and its block shape (all
        # Triton's frontend sees of it: generate_ttir builds a stand-in of that dtype and shape)
        tma = tuple(sorted((name, repr(meta)) for name, meta in (tma_descriptor_metadata or {}).items()))
        return (id(jit), repr(target), args, tma)
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
            if envs.check_mutations():
                variant = _variant(kernel, bound.arguments["kwargs"], key)
                if variant not in _CHECKED:
                    _check(hit, real(*args, **kw), kernel, bound.arguments["kwargs"])
                    with _LOCK:
                        _CHECKED.add(variant)
            return list(hit)
        out = _timed(real, args, kw)
        stats["misses"] += 1
        with _LOCK:
            if len(_MEMO) >= MAX_ENTRIES:
                _MEMO.clear()
                _KEEP.clear()
                _CHECKED.clear()
            _MEMO[key] = list(out)
            _KEEP[key[0]] = _analysed(kernel, {})[0]
        return out

    return identify_mutated_tensors


class MemoMismatch(AssertionError):
    pass


def _variant(kernel: Any, kwargs: dict[str, Any], key: tuple) -> tuple:
    """What the analysis could tell apart that the key lumps: each runtime int as Triton
    specialises it (== 1, % 16), a size as a size. The check runs once per variant of a key
    (checking every hit doubled the test suite's compile time; a variant's answer cannot change)."""
    import sympy
    import torch

    def fine(v: Any) -> Any:
        if type(v) is int:
            return ("int", v == 1, v % 16 == 0)
        if isinstance(v, (torch.SymInt, sympy.Expr)):
            return ("size",)
        return None

    _, kwargs = _analysed(kernel, kwargs)
    return key, tuple(sorted((name, f) for name, v in kwargs.items() if (f := fine(v)) is not None))


def _check(hit: list[str], real: list[str], kernel: Any, kwargs: dict[str, Any]) -> None:
    if sorted(hit) != sorted(real):
        name = getattr(getattr(_jit(kernel), "fn", None), "__name__", kernel)
        raise MemoMismatch(f"mutation memo of {name}: remembered {sorted(hit)}, the analysis says {sorted(real)} "
                           f"for arguments {sorted(kwargs)}: a store depends on more than the memo keys")


def forget() -> None:
    with _LOCK:
        _MEMO.clear()
        _KEEP.clear()
        _CHECKED.clear()
