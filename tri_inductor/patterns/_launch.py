"""One way to launch our Triton kernels, wherever the call happens.

* traced by torch.compile (FakeTensor / FunctionalTensor arguments): ``wrap_triton`` records
  the kernel, and Inductor inlines its source as a user Triton kernel;
* eager on a GPU (plain tensors, no tracing mode active): the compiled kernel's launcher
  directly once Triton has compiled it for these arguments (vLLM's lm_head runs every step:
  no per-call tracing wrapper, no per-call re-specialisation);
* eager on real CPU tensors: Triton's interpreter runs the same kernel source (this is how
  the CPU-only test suite checks our kernels' numerics), through the runner that
  ``tri_inductor.testing.interpret`` registers (:func:`register_cpu_runner`).

Kernels that take a ``USE_PDL`` constexpr are launched with programmatic dependent launch
(``_pdl.py``) when it is True: the eager GPU path asks Triton for the launch attribute, and
Inductor's launcher of the traced kernel gets it from ``_pdl``'s hook (``tri_inductor.hooks``).
"""
from __future__ import annotations

import contextlib
import contextvars
import inspect
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch.library import wrap_triton
from triton import knobs
from triton.runtime.jit import JITFunction

from ._host_tma import is_descriptor



CpuRunner = Callable[[Any, Any, tuple, dict], None]
_cpu_runner: CpuRunner | None = None


def register_cpu_runner(runner: CpuRunner | None) -> None:
    """Who runs our kernels on real CPU tensors: ``tri_inductor.testing.interpret`` registers
    Triton's interpreter (with its fixes) when imported; kernels never import a test harness."""
    global _cpu_runner
    _cpu_runner = runner


def _runs_in_interpreter(args) -> bool:
    # Exactly torch.Tensor (no FakeTensor/FunctionalTensor subclass) on the CPU: a real eager call.
    return any(type(a) is torch.Tensor and a.device.type == "cpu" for a in args)


def plain_gpu_call(args) -> bool:
    # Real GPU tensors only, and nothing tracing (no dispatch mode such as make_fx's proxy mode).
    return (torch._C._len_torch_dispatch_stack() == 0
            and all(type(a) is torch.Tensor and a.device.type != "cpu" for a in args if isinstance(a, torch.Tensor)))


# Eager GPU launches: Triton's ``kernel[grid](...)`` binds and re-specialises every argument in
# Python on each call; vLLM's lm_head pays that once per decode step, on the step's critical
# path (docs/design/kernels.md has the host times).  A repeat call whose arguments specialise
# the same way reuses the compiled kernel and calls its launcher (Triton 3.x ``CompiledKernel.run``).
_COMPILED: dict[tuple, tuple[Any, tuple]] = {}
_COMPILED_MAX = 4096  # distinct (kernel, specialisation) entries kept; cleared when full


def _spec(a: Any, fixed: bool = False) -> Any:
    # Finer than Triton's own specialisation (which keys tensors on dtype and 16-byte
    # alignment, ints on == 1 and % 16): a hit can never reuse a kernel Triton would recompile.
    # An int the kernel does not specialise on (``do_not_specialize``: a count that changes every
    # step) is keyed by its width only, as Triton keys it.
    if type(a) is torch.Tensor:
        return (a.dtype, a.data_ptr() % 16 == 0)
    if is_descriptor(a):
        # Triton 3.6 keys a host descriptor on its dtype and block shape; the rest is encoded at
        # each launch. Alignment, padding and 16-divisibility of shape and strides are keyed too,
        # should a later Triton specialise on them.
        return ("desc", a.base.dtype, tuple(a.block_shape), a.padding, a.base.data_ptr() % 16 == 0,
                tuple(int(d) % 16 == 0 for d in a.shape), tuple(int(d) % 16 == 0 for d in a.strides))
    if fixed and type(a) is int:
        return "i32" if -2**31 <= a < 2**31 else "i64"
    if a is None or isinstance(a, (bool, int, str)):
        return a
    return type(a)  # float (not specialised by Triton unless constexpr, and then it is a kwarg)


_UNSPECIALISED: dict[Any, tuple[bool, ...]] = {}


def _arg_keys(kernel, args: tuple) -> tuple:
    flags = _UNSPECIALISED.get(kernel)
    if flags is None:
        flags = _UNSPECIALISED[kernel] = tuple(bool(getattr(p, "do_not_specialize", False)) for p in kernel.params)
    return tuple(_spec(a, f) for a, f in zip(args, flags + (False,) * (len(args) - len(flags))))


def _tail(kernel, n_args: int, kwargs: dict[str, Any]) -> tuple | None:
    """The parameters after the positional ones (constexprs), from ``kwargs`` or their defaults,
    in signature order; None when the call does not map that way."""
    tail = []
    for p in kernel.params[n_args:]:
        if p.name in kwargs:
            tail.append(kwargs[p.name])
        elif p._param.default is not inspect.Parameter.empty:
            tail.append(p._param.default)
        else:
            return None
    return tuple(tail)


def _hook_set(hook: Any) -> bool:
    # Triton 3.6 keeps a HookChain (empty unless a profiler adds to it); older ones None or a callable.
    return hook is not None and bool(getattr(hook, "calls", True))


def _current_device() -> int:
    return torch.cuda.current_device()  # the device Triton's launch compiles for and launches on


def _current_stream(device: int) -> int:
    return torch._C._cuda_getCurrentRawStream(device)


# Set by ``compile_only()``: eager GPU launches compile their kernel and launch nothing (the GEMM
# tuner compiles its candidates side by side this way; launching them concurrently is not safe:
# two threads' first launches of one compiled kernel race in Triton's lazy handle loading).
_COMPILE_ONLY: contextvars.ContextVar[bool] = contextvars.ContextVar("tri_inductor_compile_only", default=False)


@contextlib.contextmanager
def compile_only() -> Iterator[None]:
    tok = _COMPILE_ONLY.set(True)
    try:
        yield
    finally:
        _COMPILE_ONLY.reset(tok)


def compiling_only() -> bool:
    """Inside :func:`compile_only`: launches compile their kernel and launch nothing."""
    return _COMPILE_ONLY.get()


def _with_pdl(kwargs: dict[str, Any]) -> dict[str, Any]:
    # A USE_PDL kernel is compiled with Triton's launch_pdl option (the launch attribute).
    return {**kwargs, "launch_pdl": True} if kwargs.get("USE_PDL") else kwargs


def compiled_kernel(kernel, grid, *args: Any, **kwargs: Any) -> Any:
    """The Triton ``CompiledKernel`` a plain GPU :func:`launch` with these arguments runs
    (compiled now if need be, nothing launched); None for traced or CPU calls (no such kernel)."""
    if not (plain_gpu_call(args) and any(isinstance(a, torch.Tensor) for a in args)) or callable(grid):
        return None
    return kernel.warmup(*args, grid=grid, **_with_pdl(kwargs))


def launch_hooks_set() -> bool:
    """A profiler's launch hooks are set: launches must go through Triton's own path."""
    return _hook_set(knobs.runtime.launch_enter_hook) or _hook_set(knobs.runtime.launch_exit_hook)


def run_compiled(hit: tuple[Any, tuple], grid: tuple, device: int, args) -> None:
    """Launch ``hit`` (a :data:`_COMPILED` entry: the compiled kernel, its constexpr tail) with
    ``args``, which must specialise as the ones it was compiled for, on ``device``'s current stream."""
    compiled, tail = hit
    g0, g1, g2 = (*grid, 1, 1)[:3]
    compiled.run(g0, g1, g2, _current_stream(device), compiled.function, compiled.packed_metadata, None, None, None,
                 *args, *tail)


def _launch_gpu(kernel, grid, args: tuple, kwargs: dict[str, Any]) -> tuple[Any, tuple] | None:
    """Launch; return the compiled kernel and constexpr tail a repeat call launches directly
    (:func:`run_compiled`), or None where a repeat call goes through Triton again."""
    kwargs = _with_pdl(kwargs)
    if compiling_only():
        # compiled with the options the real launch will ask for (launch_pdl included): the same kernel
        if not callable(grid) and isinstance(kernel, JITFunction):
            kernel.warmup(*args, grid=grid, **kwargs)
        return None
    # Profilers see Triton's own launch path; a callable grid needs Triton's bound arguments.
    if launch_hooks_set() or callable(grid) or not isinstance(kernel, JITFunction):
        kernel[grid](*args, **kwargs)
        return None
    device = _current_device()  # Triton keeps one kernel cache per device: so do we
    key = (kernel, device, *_arg_keys(kernel, args), *kwargs.items())
    hit = _COMPILED.get(key)
    if hit is None:
        compiled = kernel[grid](*args, **kwargs)
        tail = _tail(kernel, len(args), kwargs)
        if tail is not None and all(hasattr(compiled, a) for a in ("run", "function", "packed_metadata")):
            if len(_COMPILED) >= _COMPILED_MAX:
                _COMPILED.clear()
            hit = _COMPILED[key] = (compiled, tail)
        return hit
    run_compiled(hit, grid, device, args)
    return hit


# Set by ``recording()``: every eager GPU launch is also appended here (kernel, grid, args, and the
# compiled entry a repeat launch can use), for callers that turn a call into a replayable plan.
_RECORD: contextvars.ContextVar[list | None] = contextvars.ContextVar("tri_inductor_launch_record", default=None)


@contextlib.contextmanager
def recording(into: list) -> Iterator[list]:
    tok = _RECORD.set(into)
    try:
        yield into
    finally:
        _RECORD.reset(tok)


def launch(kernel, grid, *args: Any, **kwargs: Any) -> None:
    """``kernel[grid](*args, **kwargs)``, traceable, and interpreted for real CPU tensors.
    ``USE_PDL=True`` among ``kwargs`` also launches it with PDL (see ``_pdl.pdl_enabled``)."""
    if plain_gpu_call(args):  # eager on a GPU (vLLM's lm_head, every step): no tracing wrapper
        hit = _launch_gpu(kernel, grid, args, kwargs)
        rec = _RECORD.get()
        if rec is not None:
            rec.append((kernel, grid, args, hit))
    elif _runs_in_interpreter(args):
        if _cpu_runner is None:
            raise RuntimeError(
                "tri_inductor's Triton kernels run on CPU tensors only in Triton's interpreter: "
                "import tri_inductor.testing.interpret first (the test suite's conftest does)")
        _cpu_runner(kernel, grid, args, kwargs)
    else:
        wrap_triton(kernel)[grid](*args, **kwargs)
