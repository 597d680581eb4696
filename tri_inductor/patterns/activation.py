"""Gated activations: silu(x[..., :d]) * x[..., d:] and gelu(x[..., :d]) * x[..., d:]."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
import triton
import triton.language as tl
from torch.library import triton_op

from ._pdl import pdl_enabled, pdl_launch_dependents, pdl_wait
from ._launch import launch
from . import matcher_utils as M
from ._trace import trace_replacement

# Interpreter note: builtins only (sigmoid and tanh written with tl.exp; ``tl.sigmoid`` is a
# ``@triton.jit`` helper the un-patched interpreter cannot call; see rms_norm.py). Our own helper
# ``act_mul`` runs there: ``launch`` applies the interpreter patches for nested helpers.


@triton.jit
def act_mul(a, b, ACT: tl.constexpr):
    """act(a) * b in fp32; ACT: 0 silu, 1 gelu (erf), 2 gelu (tanh). Also the epilogue of the
    fused gate_up GEMM (linear.py)."""
    if ACT == 0:  # silu
        g = a / (1.0 + tl.exp(-a))
    elif ACT == 1:  # gelu, erf form
        g = 0.5 * a * (1.0 + tl.erf(a * 0.7071067811865476))
    else:  # gelu, tanh form: tanh(z) = 2 / (1 + exp(-2z)) - 1 (saturates correctly at +-inf)
        z = 0.7978845608028654 * (a + 0.044715 * a * a * a)
        g = 0.5 * a * (2.0 / (1.0 + tl.exp(-2.0 * z)))
    return g * b


@triton.jit
def _gated_act_kernel(x_ptr, out_ptr, d, x_stride, out_stride,
                      ACT: tl.constexpr, BLOCK: tl.constexpr, D: tl.constexpr, USE_PDL: tl.constexpr):
    # 1-D grid over (row, column block), column blocks fastest: consecutive programs stream
    # consecutive memory, as a flat pointwise kernel does (rows fastest, a 2-D grid's axis 0, sent
    # neighbouring programs a whole row apart: slower at prefill sizes). Each program
    # reads BLOCK gate and BLOCK up values of one row (two contiguous runs, 16-byte vectors) and
    # writes BLOCK outputs: one pass over the data.
    # D: the width when static (every LLM's hidden sizes), else 0 and the runtime d. A constant
    # width turns the row / column-block split into a shift or a multiply (a division by a
    # runtime value is ~20 instructions, next to ~15 a thread spends per element) and drops the
    # column mask when BLOCK divides it.
    # USE_PDL: programmatic dependent launch (_pdl.py): wait for the previous kernel before the
    # loads, let the next one be scheduled once they are issued: the same memory schedule as
    # Inductor's kernel, PDL is what gains. No cache hints: their effect flipped sign from run to
    # run. Measurements: docs/design/kernels.md (benchmarks/activation_variants.py).
    pid = tl.program_id(0)
    if USE_PDL:
        pid += pdl_wait()
    if D > 0:
        n_blocks: tl.constexpr = (D + BLOCK - 1) // BLOCK
        width = D
    else:
        n_blocks = (d + BLOCK - 1) // BLOCK
        width = d
    row = (pid // n_blocks).to(tl.int64)
    cols = (pid % n_blocks) * BLOCK + tl.arange(0, BLOCK)
    x_row = x_ptr + row * x_stride
    even = D > 0 and D % BLOCK == 0
    if even:
        a = tl.load(x_row + cols).to(tl.float32)
        b = tl.load(x_row + width + cols).to(tl.float32)
    else:
        a = tl.load(x_row + cols, mask=cols < width, other=0.0).to(tl.float32)
        b = tl.load(x_row + width + cols, mask=cols < width, other=0.0).to(tl.float32)
    y = act_mul(a, b, ACT).to(out_ptr.dtype.element_ty)
    if USE_PDL:
        row += pdl_launch_dependents()
    if even:
        tl.store(out_ptr + row * out_stride + cols, y)
    else:
        tl.store(out_ptr + row * out_stride + cols, y, mask=cols < width)


_ACTS = {"silu": 0, "none": 1, "tanh": 2}


def _launch_config(d: int, elem_size: int) -> tuple[int, int]:
    """(BLOCK, num_warps): up to 1024 columns a program, one 16-byte vector per thread: the launch
    sweep's pick (``benchmarks/launch_sweep.py``; docs/design/kernels.md)."""
    block = min(triton.next_power_of_2(d), 1024)
    per_thread = max(16 // elem_size, 1)  # elements of one 16-byte vector
    return block, max(1, min(8, block // (32 * per_thread)))


def _gated(x: torch.Tensor, act: str) -> torch.Tensor:
    torch._check(x.shape[-1] % 2 == 0, lambda: f"{'silu' if act == 'silu' else 'gelu'}_and_mul: last dim "
                 f"{x.shape[-1]} must be even (the gate and up halves side by side)")
    d = x.shape[-1] // 2
    if x.stride(-1) != 1:
        x = x.contiguous()
    x2 = x.reshape(-1, x.shape[-1])
    out = torch.empty((x2.shape[0], d), dtype=x.dtype, device=x.device)
    launch_gated(x2, out, _ACTS[act], *_launch_config(d, x.element_size()))
    return out.view(*x.shape[:-1], d)


def launch_gated(x2: torch.Tensor, out: torch.Tensor, act: int, block: int, num_warps: int, gate=1,
                 pdl: bool | None = None) -> None:
    """out[r] = act(x2[r, :d]) * x2[r, d:] with d = out's width; x2, out: [rows, *] unit last stride.
    ``gate``: 0/1 multiplier of the grid (linear.py's M-bucket dispatch). ``pdl``: launch with
    programmatic dependent launch; None: where the device has it (``_pdl.pdl_enabled``)."""
    d = out.shape[-1]
    pdl = pdl_enabled(out.device) if pdl is None else pdl
    launch(_gated_act_kernel, (x2.shape[0] * triton.cdiv(d, block) * gate,),
           x2, out, d, x2.stride(0), out.stride(0), ACT=act, BLOCK=block,
           D=d if isinstance(d, int) else 0, USE_PDL=pdl, num_warps=num_warps)


@triton_op("tri_inductor::silu_and_mul", mutates_args={})
def silu_and_mul(x: torch.Tensor) -> torch.Tensor:
    return _gated(x, "silu")


@triton_op("tri_inductor::gelu_and_mul", mutates_args={})
def gelu_and_mul(x: torch.Tensor, approximate: str = "none") -> torch.Tensor:
    torch._check(approximate in ("none", "tanh"),
                 lambda: f"gelu_and_mul: approximate={approximate!r}; use 'none' (erf) or 'tanh'")
    return _gated(x, approximate)


def reference_silu_and_mul(x: torch.Tensor) -> torch.Tensor:
    x = x.double()
    d = x.shape[-1] // 2
    return F.silu(x[..., :d]) * x[..., d:]


def reference_gelu_and_mul(x: torch.Tensor, approximate: str = "none") -> torch.Tensor:
    x = x.double()
    d = x.shape[-1] // 2
    return F.gelu(x[..., :d], approximate=approximate) * x[..., d:]




def _repl_silu(x):
    return silu_and_mul(x)


def _repl_gelu(x):
    return gelu_and_mul(x, "none")


def _repl_gelu_tanh(x):
    return gelu_and_mul(x, "tanh")


def _check(match) -> bool:
    x = match.kwargs["x"].meta.get("val")
    return isinstance(x, torch.Tensor) and x.dtype.is_floating_point and x.dim() >= 1


def register_patterns(pm_pass) -> None:
    from torch._inductor.pattern_matcher import register_replacement

    for dt in (torch.bfloat16, torch.float32):
        x = torch.empty(8, 128, dtype=dt)
        for search, repl in ((M.silu_slices, _repl_silu), (M.silu_chunk, _repl_silu),
                             (M.silu_chunk_gate_first, _repl_silu), (M.gelu_slices, _repl_gelu),
                             (M.gelu_tanh_slices, _repl_gelu_tanh)):
            register_replacement(search, repl, [x], trace_replacement, pm_pass,
                                 extra_check=_check, skip_duplicates=True)
    # vLLM CUDA ops (custom_ops "all", the default for a non-Inductor backend).
    for name, repl in (("silu_and_mul", _repl_silu), ("gelu_and_mul", _repl_gelu),
                       ("gelu_tanh_and_mul", _repl_gelu_tanh)):
        op = M.c_op(name)
        if op is not None:
            M.register_auto_functionalized_form(pm_pass, op, [1], _c_repl(repl))


def _c_repl(repl: Callable[[torch.Tensor], torch.Tensor]) -> Callable[..., torch.Tensor]:
    def fn(out, x):  # _C.<act>_and_mul(Tensor! out, Tensor input)
        return repl(x)
    return fn


# What survives a near miss in the post-grad graph: silu is decomposed to neg/exp/add/div,
# gelu keeps its erf or tanh.
ANCHOR_OPS = (torch.ops.aten.exp.default, torch.ops.aten.erf.default, torch.ops.aten.tanh.default)
