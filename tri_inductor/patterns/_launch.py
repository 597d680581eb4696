"""One way to launch our Triton kernels, wherever the call happens.

* traced by torch.compile (FakeTensor / FunctionalTensor arguments): ``wrap_triton`` records
  the kernel, and Inductor inlines its source as a user Triton kernel;
* eager on a GPU: ``wrap_triton`` launches the compiled kernel directly;
* eager on real CPU tensors: Triton's interpreter runs the same kernel source (this is how
  the CPU-only test suite checks our kernels' numerics).
"""
from __future__ import annotations

import functools
from typing import Any

import torch
from torch.library import wrap_triton


@functools.cache
def _interpreted(kernel):
    from triton.runtime.interpreter import InterpretedFunction
    from triton.runtime.jit import JITFunction

    while not isinstance(kernel, JITFunction):  # Autotuner / Heuristics wrap a JITFunction
        kernel = kernel.fn
    return InterpretedFunction(kernel.fn)


def _runs_in_interpreter(args) -> bool:
    # Exactly torch.Tensor (no FakeTensor/FunctionalTensor subclass) on the CPU: a real eager call.
    return any(type(a) is torch.Tensor and a.device.type == "cpu" for a in args)


def launch(kernel, grid, *args: Any, **kwargs: Any) -> None:
    """``kernel[grid](*args, **kwargs)``, traceable, and interpreted for real CPU tensors."""
    if _runs_in_interpreter(args):
        from ..interpret import interpreter_patches

        with interpreter_patches():  # nested @triton.jit helpers, bf16 tl.dot
            _interpreted(kernel)[grid](*args, **kwargs)
    else:
        wrap_triton(kernel)[grid](*args, **kwargs)
