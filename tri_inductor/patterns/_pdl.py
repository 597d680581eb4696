"""Programmatic dependent launch (PDL, NVIDIA sm_90+) for our kernels.

A kernel launched with PDL may be scheduled while the kernel before it in the stream is still
finishing, instead of after that kernel has drained and the next launch has gone through the
front end. It must wait (``griddepcontrol.wait``: returns once the previous grid has completed
and its writes are visible) before it touches global memory. In CUDA graphs (vLLM's, and the
benchmarks') the launch attribute becomes a programmatic edge. The gain is the launch gap, so it
is largest for kernels a few microseconds long (measurements: docs/design/kernels.md, from
benchmarks/activation_variants.py). Opt-in (``TRI_INDUCTOR_PDL=1``): in vLLM's CUDA graphs on an
H200 the small-model decode steps were slower with it, for a cause not found yet (same file).

A kernel opts in with a ``USE_PDL`` constexpr, set by its host code to :func:`pdl_enabled`;
inside, ``if USE_PDL:`` guards :func:`pdl_wait` (before the first load) and
:func:`pdl_launch_dependents` (after the loads). ``_launch.launch`` then asks for the launch
attribute on the eager path, and :func:`make_launcher_hook` on Inductor's.
"""
from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from .. import envs

ENV = "TRI_INDUCTOR_PDL"


def pdl_requested() -> bool:
    """``TRI_INDUCTOR_PDL`` (``envs``: off unless 1/true/yes/on). Part of the compile cache key
    (``cache.compile_hash``): the kernels' ``USE_PDL`` is baked into compiled graphs."""
    return envs.pdl()


def pdl_enabled(device: torch.device) -> bool:
    """Whether a kernel on ``device`` gets ``USE_PDL=True``: CUDA sm_90+ (not ROCm, not the
    interpreter's CPU tensors), when ``TRI_INDUCTOR_PDL=1``."""
    if device.type != "cuda" or torch.version.hip or not pdl_requested():
        return False
    return torch.cuda.get_device_capability(device)[0] >= 9


# Device side. Triton's own ``tl.extra.cuda.gdc_wait`` is a non-pure inline asm, which Inductor's
# mutation analysis of user kernels cannot read: it then assumes the kernel writes every input
# (copies them first). These are pure asm with a 0 result instead; the caller adds the result to
# an index, and that data dependency keeps the loads after the wait (a pure asm's placement is
# otherwise free, and an unused one is dropped). One line each, no escapes: Inductor copies this
# source into its output with the escapes expanded.
@triton.jit
def pdl_wait():
    """0, once the previous grid has completed and its writes are visible: add it to the program
    id (which keeps the index's divisibility, so loads stay vectorised)."""
    return tl.inline_asm_elementwise("griddepcontrol.wait; mov.u32 $0, 0;", "=r", [],
                                     dtype=tl.int32, is_pure=True, pack=1)


@triton.jit
def pdl_launch_dependents():
    """0, after letting the next PDL-launched grid be scheduled once every program of this one
    has got here: add it to the store's index (so it stays before the store)."""
    return tl.inline_asm_elementwise("griddepcontrol.launch_dependents; mov.u32 $0, 0;", "=r", [],
                                     dtype=tl.int32, is_pure=True, pack=1)


# Host side, Inductor's path.
def _launch_with_pdl(compile_result) -> None:
    """Set the PDL launch attribute on an Inductor-compiled user kernel compiled with
    ``USE_PDL=True``. Inductor compiles the user Triton kernels it inlines (ours, via
    ``wrap_triton``) with a fixed option set, without ``launch_pdl``; the launcher Triton built
    for the kernel (``CudaLauncher``) reads the attribute at each call, so it is set there."""
    constants = (getattr(compile_result, "compile_meta", None) or {}).get("constants") or {}
    run = getattr(getattr(compile_result, "kernel", None), "run", None)
    if constants.get("USE_PDL") is True and hasattr(run, "launch_pdl"):
        run.launch_pdl = True


def make_launcher_hook(make_launcher):
    """``TritonCompileResult.make_launcher`` (installed by ``tri_inductor.hooks`` when a compile
    starts): builds the launcher of each Triton kernel Inductor runs, in the launching process
    (worker-compiled kernels too). Without the hook (another torch, a static launcher) our kernels
    still run correctly, only without PDL."""

    def hooked(self):
        launcher = make_launcher(self)
        _launch_with_pdl(self)
        return launcher

    return hooked
