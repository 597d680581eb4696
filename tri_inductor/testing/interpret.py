"""Interpreter mode: Inductor's Triton kernels (and ours) run on CPU tensors via Triton's interpreter.

This is how the CPU-only test suite checks the *numerics* of a whole compiled graph: Inductor
writes Triton for the ``cpu`` device (``cpu_backend="triton"``) and every kernel, ours inlined
in the output code included, is executed by ``TRITON_INTERPRET=1``. Slow (numpy per program),
so keep shapes small. Only for tests and debugging; never for speed.
"""
from __future__ import annotations

import contextlib
import functools
import math
import os
from collections.abc import Iterator

import numpy as np

from .. import hooks


_NUMPY_LIBDEVICE = {
    "tanh": np.tanh, "expm1": np.expm1, "log1p": np.log1p, "atan": np.arctan, "asin": np.arcsin,
    "acos": np.arccos, "sinh": np.sinh, "cosh": np.cosh, "tan": np.tan, "trunc": np.trunc, "nearbyint": np.rint,
    "rint": np.rint, "round": np.round, "signbit": np.signbit, "isnan": np.isnan, "isinf": np.isinf,
    "isfinited": np.isfinite, "finitef": np.isfinite, "pow": np.power, "atan2": np.arctan2, "fmod": np.fmod,
    "llrint": np.rint,
    # tl.math.erf exists, but the interpreter leaves it empty in 3.6: scalar math, vectorised.
    **{name: np.vectorize(getattr(math, name), otypes=[np.float64]) for name in ("erf", "erfc", "lgamma")},
}


class _LibdeviceStandin:
    """``triton_helpers.libdevice`` for the interpreter, whose 3.6 version cannot run libdevice
    externs: names ``tl.math`` has go there (the interpreter implements them with numpy), the
    rest are computed with numpy directly on the interpreter's tensor handles."""

    def __getattr__(self, name: str):
        import triton.language as tl

        if name not in _NUMPY_LIBDEVICE and hasattr(tl.math, name):
            return lambda *args, **kwargs: getattr(tl.math, name)(*args, **kwargs)
        fn = _NUMPY_LIBDEVICE.get(name)
        if fn is None:
            raise AttributeError(f"libdevice.{name} has no interpreter stand-in (tri_inductor.testing.interpret)")
        return lambda *args: _numpy_elementwise(fn, *args)


def _numpy_elementwise(fn, *args):
    import triton.language as tl
    from triton.runtime.interpreter import TensorHandle

    first = next(a for a in args if isinstance(a, tl.core.tensor))
    data = [a.handle.data if isinstance(a, tl.core.tensor) else a for a in args]
    out = np.asarray(fn(*data))
    scalar = first.handle.dtype.scalar if out.dtype != np.bool_ else tl.int1
    out = out.astype(first.handle.data.dtype if out.dtype != np.bool_ else np.bool_)
    ty = first.type if out.dtype != np.bool_ else first.type.with_element_ty(tl.int1) \
        if hasattr(first.type, "with_element_ty") else tl.int1
    return tl.core.tensor(TensorHandle(out, scalar), ty)


def _bf16_bits_to_f32(h):
    import triton.language as tl

    if h.dtype.scalar == tl.bfloat16:
        return (h.data.astype(np.uint32) << 16).view(np.float32)
    return h.data


def _create_dot(real):
    # The 3.6 interpreter keeps bf16 as raw uint16 bits and tl.dot multiplies the bits as
    # integers. Widen to fp32 first: exact, as bf16 products are exact in fp32 (tensor cores too).
    def create_dot(self, a, b, d, input_precision, max_num_imprecise_acc):
        import triton.language as tl

        if a.dtype.scalar == tl.bfloat16 or b.dtype.scalar == tl.bfloat16:
            from triton.runtime.interpreter import TensorHandle

            out = np.matmul(_bf16_bits_to_f32(a), _bf16_bits_to_f32(b), dtype=d.data.dtype) + d.data
            return TensorHandle(out, d.dtype.scalar)
        return real(self, a, b, d, input_precision, max_num_imprecise_acc)

    return create_dot


@contextlib.contextmanager
def interpreter_patches() -> Iterator[None]:
    """Fixes for running JIT-compiled Triton code in triton 3.6's interpreter.

    * A nested ``@triton.jit`` helper decorated while TRITON_INTERPRET was off (Inductor's
      ``triton_helpers``, ``tl.sum``'s combine functions, our helpers) is a ``JITFunction`` whose
      call raises outside a kernel: route such calls to an ``InterpretedFunction``.
    * bf16 ``tl.dot`` (see ``_create_dot``).
    """
    from triton.runtime.interpreter import InterpretedFunction, InterpreterBuilder, InterpreterError, _patch_lang
    from triton.runtime.jit import JITFunction

    def device_call(self, *args, **kwargs):
        # triton 3.6 patches triton.language for a device-function call and never restores it,
        # which breaks every later real (non-interpreted) compile in the process. Restore.
        scope = _patch_lang(self.fn)
        try:
            return self.rewrite()(*args, **kwargs)
        except Exception as e:
            raise InterpreterError(repr(e)) from e
        finally:
            scope.restore()

    cache: dict[int, InterpretedFunction] = {}

    def jit_call(self, *args, **kwargs):
        fn = cache.get(id(self))
        if fn is None:
            fn = cache[id(self)] = InterpretedFunction(self.fn)
        return device_call(fn, *args, **kwargs)

    with hooks.patched(JITFunction, "__call__", jit_call), \
            hooks.patched(InterpretedFunction, "__call__", device_call), \
            hooks.patched(InterpreterBuilder, "create_dot", _create_dot(InterpreterBuilder.create_dot)):
        yield


@contextlib.contextmanager
def triton_interpreter() -> Iterator[None]:
    """Compile CPU graphs to Triton and run them in Triton's interpreter; undo on exit."""
    import triton
    from torch._inductor import config as inductor_config
    from torch._inductor.runtime import triton_helpers
    from torch._inductor.runtime.triton_heuristics import CachingAutotuner

    from .codegen_only import StubDriver
    from ..patterns import load_all

    # Our kernels must be decorated while TRITON_INTERPRET is off, as JITFunctions that
    # torch.compile can trace (wrap_triton refuses InterpretedFunctions).
    load_all()
    driver = triton.runtime.driver
    saved_active = driver._active
    saved_env = os.environ.get("TRITON_INTERPRET")
    with contextlib.ExitStack() as stack:
        os.environ["TRITON_INTERPRET"] = "1"
        driver.set_active(StubDriver("cpu"))
        stack.enter_context(inductor_config.patch({
            "cpu_backend": "triton",
            "benchmark_epilogue_fusion": False,
            "compile_threads": 1,
            "cpp_wrapper": False,
        }))
        stack.enter_context(interpreter_patches())
        stack.enter_context(hooks.patched(CachingAutotuner, "_interpret_args_grid", _interpret_args_grid))
        stack.enter_context(hooks.patched(triton_helpers, "libdevice", _LibdeviceStandin()))
        stack.enter_context(hooks.patched(triton_helpers, "set_driver_to_cpu", lambda: None))
        stack.enter_context(hooks.patched(triton_helpers, "set_driver_to_gpu", lambda: None))
        for patch in keyword_launch_shims():
            stack.enter_context(patch)
        from torch.utils import _triton as triton_utils

        from .codegen_only import host_tensor_descriptors

        triton_utils.has_triton.cache_clear()
        stack.callback(triton_utils.has_triton.cache_clear)
        stack.enter_context(host_tensor_descriptors())
        try:
            yield
        finally:
            driver._active = saved_active
            if saved_env is None:
                os.environ.pop("TRITON_INTERPRET", None)
            else:
                os.environ["TRITON_INTERPRET"] = saved_env


def keyword_launch_shims() -> list[contextlib.AbstractContextManager]:
    """torch >= 2.13: a user kernel launched with keyword arguments (ours pass constexprs and
    ``num_warps`` by name) makes Inductor's wrapper check that Triton has a backend for the
    device and parse the kwargs against that backend's options (``codegen/wrapper.py``); the
    interpreter has no 'cpu' backend ("triton not built with the 'cpu' backend").  It also ignores
    backend options, so: no check, no options kept.  Nothing to do on torch 2.11/2.12."""
    from torch._dynamo.device_interface import CpuInterface
    from torch._inductor.runtime import triton_helpers

    shims = []
    if hasattr(CpuInterface, "raise_if_triton_unavailable"):
        shims.append(hooks.patched(CpuInterface, "raise_if_triton_unavailable", staticmethod(lambda device=None: None)))
    if hasattr(triton_helpers, "try_filter_backend_options_for_target"):
        shims.append(hooks.patched(triton_helpers, "try_filter_backend_options_for_target",
                                   lambda target, options, kernel_arg_names=(): {}))
    return shims


def _declared_constexprs(fn) -> set[str]:
    import inspect

    import triton.language as tl

    py = getattr(fn, "fn", fn)
    return {name for name, p in inspect.signature(py).parameters.items()
            if p.annotation is tl.constexpr or str(p.annotation) in ("tl.constexpr", "constexpr", "triton.language.constexpr")}


def _interpret_args_grid(self, args, cfg):
    """Inductor's version zips the kernel signature with the launch args to evaluate the grid,
    counting the ``tl.constexpr`` parameters of *user* kernels (ours) as launch args: the names
    shift, the precomputed grid (``_grid_0``...) is not found, and the constexprs are never
    passed. Walk the declared parameters instead: launch args for the runtime ones (arguments
    specialised to constants, such as unit strides, are still passed), ``triton_meta["constants"]``
    for declared constexprs (those a config sets are passed by the caller as keywords)."""
    from torch._inductor.runtime.triton_heuristics import GridExpr

    declared = _declared_constexprs(self.fn)
    constants = self.triton_meta.get("constants", {})
    extra = tuple(self.inductor_meta.get("extra_launcher_args", ()))
    runtime = iter(args[: len(args) - len(extra)] if extra else args)
    scope, full = {}, []
    for name in self.triton_meta["signature"]:
        if name in cfg.kwargs:
            continue
        if name in declared:
            full.append(constants.get(name))
        else:
            scope[name] = next(runtime)
            full.append(scope[name])
    scope.update(zip(extra, args[len(args) - len(extra):]))
    grid = GridExpr.from_meta(self.inductor_meta, cfg, mode=self.grid_mode).eval_slow(scope)
    return tuple(full), grid


# CPU launches of our kernels (``patterns._launch.launch`` with real CPU tensors) come here:
# the kernels know nothing of this harness, it registers itself on import.
@functools.cache
def _interpreted(kernel):
    from triton.runtime.interpreter import InterpretedFunction
    from triton.runtime.jit import JITFunction

    while not isinstance(kernel, (JITFunction, InterpretedFunction)):  # Autotuner / Heuristics wrap one
        kernel = kernel.fn
    # A module first imported with TRITON_INTERPRET=1 set already holds an InterpretedFunction.
    return kernel if isinstance(kernel, InterpretedFunction) else InterpretedFunction(kernel.fn)


def run_on_cpu(kernel, grid, args, kwargs) -> None:
    """``kernel[grid](*args, **kwargs)`` on CPU tensors, in Triton's interpreter."""
    with interpreter_patches():  # nested @triton.jit helpers, bf16 tl.dot
        _interpreted(kernel)[grid](*args, **kwargs)


def _register() -> None:
    from ..patterns import _launch

    _launch.register_cpu_runner(run_on_cpu)


_register()
