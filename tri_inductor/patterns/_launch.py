"""One way to launch our Triton kernels, wherever the call happens.

* traced by torch.compile (FakeTensor / FunctionalTensor arguments): ``wrap_triton`` records
  the kernel, and Inductor inlines its source as a user Triton kernel;
* eager on a GPU (plain tensors, no tracing mode active): ``kernel[grid]`` directly (vLLM's
  lm_head runs every step: no per-call tracing wrapper);
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


def _plain_gpu_call(args) -> bool:
    # Real GPU tensors only, and nothing tracing (no dispatch mode such as make_fx's proxy mode).
    return (torch._C._len_torch_dispatch_stack() == 0
            and all(type(a) is torch.Tensor and a.device.type != "cpu" for a in args if isinstance(a, torch.Tensor)))


def launch(kernel, grid, *args: Any, **kwargs: Any) -> None:
    """``kernel[grid](*args, **kwargs)``, traceable, and interpreted for real CPU tensors."""
    if _plain_gpu_call(args):  # eager on a GPU (vLLM's lm_head, every step): no tracing wrapper
        kernel[grid](*args, **kwargs)
    elif _runs_in_interpreter(args):
        from ..interpret import interpreter_patches

        with interpreter_patches():  # nested @triton.jit helpers, bf16 tl.dot
            _interpreted(kernel)[grid](*args, **kwargs)
    else:
        wrap_triton(kernel)[grid](*args, **kwargs)
