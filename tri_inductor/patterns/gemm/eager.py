"""Eager GEMM calls replayed from a plan: vLLM's lm_head runs outside its CUDA graphs, once per
decode step, and on a small model that step is bound by the host.

``launch_cfg`` decides a launch in Python (kernel kind, tiles, split, grid, descriptors, 32-bit
offsets: 5-28 us on this project's CPU, most for TMA) and ``_launch.launch`` keys its arguments for the compiled
kernel (~5 us). For the same operands' shapes, strides, dtypes, alignment and config the outcome
is the same every step, so the first call records its launch (``_launch.recording``) and later
calls rebuild only what changes, the operands, and call the compiled launcher directly. H100,
Qwen2.5-0.5B's lm_head (151936 x 896): 38-82 us of host time a call against cuBLAS's 15-16 us
(``benchmarks/lm_head_host.py``, before plans).

A call that launched more than one kernel (split-K and its reduction, the fused gate_up's
activation), took Triton's own launch path, or passed a tensor that is not one of its operands
(a workspace) gets no plan: it keeps ``launch_cfg``.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from .. import _host_tma
from .. import _launch as L
from .configs import Cfg
from .launch import launch_cfg

_PLANS: dict[tuple, Callable[..., None] | None] = {}
_PLANS_MAX = 1024  # distinct operand layouts x configs kept; cleared when full


def _aligned(t: torch.Tensor | None) -> bool | None:
    return None if t is None else t.data_ptr() % 16 == 0


def _key(a, b, bias, out, cfg: Cfg, act: int) -> tuple:
    # Everything launch_cfg's choices and Triton's specialisation read: shapes, strides, dtypes,
    # 16-byte alignment, the device; ``out`` is fresh from the allocator (aligned, contiguous).
    return (cfg, act, a.device.index, L._current_device(), a.dtype, out.dtype, tuple(a.shape), a.stride(),
            tuple(b.shape), b.stride(), tuple(out.shape), _aligned(a), _aligned(b),
            None if bias is None else (bias.dtype, tuple(bias.shape), bias.stride(), _aligned(bias)))


def run(a, b, bias, out, cfg: Cfg, act: int) -> None:
    """``launch_cfg(a, b, bias, out, cfg, act=act)`` for eager GPU operands, from a plan when one
    was recorded for this layout."""
    if L.launch_hooks_set() or L.compiling_only():  # a profiler sees Triton's own path; nothing launches
        launch_cfg(a, b, bias, out, cfg, act=act)
        return
    key = _key(a, b, bias, out, cfg, act)
    plan = _PLANS.get(key, _PLANS)
    if plan is _PLANS:  # first call of this layout: launch and record
        with L.recording([]) as rec:
            launch_cfg(a, b, bias, out, cfg, act=act)
        if len(_PLANS) >= _PLANS_MAX:
            _PLANS.clear()
        _PLANS[key] = make_plan(rec, a, b, bias, out)
    elif plan is None:
        launch_cfg(a, b, bias, out, cfg, act=act)
    else:
        plan(a, b, bias, out)


def _source(x: Any, ops: dict[str, Any]) -> str | None:
    """Which operand ``x`` is (by identity, or ``bt``: the weight's transpose as a view)."""
    for name, t in ops.items():
        if t is not None and x is t:
            return name
    bt = ops["b"].t()
    if (isinstance(x, torch.Tensor) and x.data_ptr() == bt.data_ptr() and x.shape == bt.shape
            and x.stride() == bt.stride() and x.dtype == bt.dtype):
        return "bt"
    return None


def make_plan(rec: list, a, b, bias, out) -> Callable[..., None] | None:
    """A replay of ``rec`` (one launch recorded by ``_launch.recording``) for new operands, or None
    where it cannot be replayed exactly."""
    if len(rec) != 1:
        return None
    kernel, grid, args, hit = rec[0]
    if hit is None or callable(grid):
        return None
    ops = {"a": a, "b": b, "bias": bias, "out": out}
    recipe: list[tuple[str, Any]] = []
    for x in args:
        if isinstance(x, torch.Tensor):
            src = _source(x, ops)
            if src is None:
                return None
            recipe.append(("tensor", src))
        elif _host_tma.is_descriptor(x):
            src = _source(x.base, ops)
            if src is None or tuple(x.shape) != tuple(x.base.shape) or tuple(x.strides) != tuple(x.base.stride()):
                return None
            recipe.append(("desc", (src, list(x.block_shape))))
        elif x is None or isinstance(x, (bool, int, float)):
            recipe.append(("const", x))
        else:
            return None
    device = L._current_device()
    grid = tuple(grid)

    def replay(a, b, bias, out) -> None:
        ops = {"a": a, "b": b, "bias": bias, "out": out}
        args = []
        for kind, v in recipe:
            if kind == "const":
                args.append(v)
            elif kind == "tensor":
                args.append(ops[v] if v != "bt" else b.t())
            else:
                src, block = v
                args.append(_host_tma.fast_descriptor(ops[src] if src != "bt" else b.t(), block))
        L.run_compiled(hit, grid, device, args)

    return replay
