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
def _row_block(pid, d, BLOCK: tl.constexpr, D: tl.constexpr):
    """(row, column indices, width) of program ``pid`` of a 1-D grid over (row, column block),
    column blocks fastest. D: the width when static, else 0 and the runtime ``d`` (a constant
    width turns the split into a shift or a multiply)."""
    if D > 0:
        n_blocks: tl.constexpr = (D + BLOCK - 1) // BLOCK
        width = D
    else:
        n_blocks = (d + BLOCK - 1) // BLOCK
        width = d
    row = (pid // n_blocks).to(tl.int64)
    cols = (pid % n_blocks) * BLOCK + tl.arange(0, BLOCK)
    return row, cols, width


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
    row, cols, width = _row_block(pid, d, BLOCK, D)
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


@triton.jit
def _act_two_kernel(g_ptr, u_ptr, out_ptr, d, g_stride, u_stride, out_stride,
                    ACT: tl.constexpr, HAS_UP: tl.constexpr, BLOCK: tl.constexpr, D: tl.constexpr):
    # The gate and up halves as two tensors (transformers' ``act(gate_proj(x)) * up_proj(x)``), or
    # the activation alone (HAS_UP=False: GPT-2/BERT's ungated GELU). Same grid as
    # _gated_act_kernel: one program per (row, column block), column blocks fastest.
    pid = tl.program_id(0)
    row, cols, width = _row_block(pid, d, BLOCK, D)
    ok = cols < width
    a = tl.load(g_ptr + row * g_stride + cols, mask=ok, other=0.0).to(tl.float32)
    if HAS_UP:
        b = tl.load(u_ptr + row * u_stride + cols, mask=ok, other=0.0).to(tl.float32)
    else:
        b = 1.0
    y = act_mul(a, b, ACT).to(out_ptr.dtype.element_ty)
    tl.store(out_ptr + row * out_stride + cols, y, mask=ok)


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


def _rows(t: torch.Tensor) -> torch.Tensor:
    t = t if t.stride(-1) == 1 else t.contiguous()
    return t.reshape(-1, t.shape[-1])


def _act_two(gate: torch.Tensor, up: torch.Tensor | None, act: str) -> torch.Tensor:
    d = gate.shape[-1]
    g2 = _rows(gate)
    u2 = _rows(up) if up is not None else g2
    out = torch.empty((g2.shape[0], d), dtype=gate.dtype, device=gate.device)
    block, warps = _launch_config(d, gate.element_size())
    launch(_act_two_kernel, (g2.shape[0] * triton.cdiv(d, block),), g2, u2, out, d,
           g2.stride(0), u2.stride(0), out.stride(0), ACT=_ACTS[act], HAS_UP=up is not None,
           BLOCK=block, D=d if isinstance(d, int) else 0, num_warps=warps)
    return out.view(gate.shape)


@triton_op("tri_inductor::act_and_mul", mutates_args={})
def act_and_mul(gate: torch.Tensor, up: torch.Tensor, act: str) -> torch.Tensor:
    """act(gate) * up for two tensors of one shape; act: 'silu', 'none' (GELU, erf), 'tanh'."""
    torch._check(act in _ACTS, lambda: f"act_and_mul: act={act!r}; use one of {list(_ACTS)}")
    torch._check(gate.shape == up.shape, lambda: f"act_and_mul: gate {tuple(gate.shape)} and up "
                 f"{tuple(up.shape)} must have one shape")
    return _act_two(gate, up, act)


@triton_op("tri_inductor::gelu", mutates_args={})
def gelu(x: torch.Tensor, approximate: str = "none") -> torch.Tensor:
    """GELU alone (GPT-2, GPT-J, BERT, Falcon MLPs); approximate: 'none' (erf) or 'tanh'."""
    torch._check(approximate in ("none", "tanh"), lambda: f"gelu: approximate={approximate!r}; use 'none' or 'tanh'")
    return _act_two(x, None, approximate)


def reference_act_and_mul(gate, up, act: str) -> torch.Tensor:
    g = gate.double()
    a = F.silu(g) if act == "silu" else F.gelu(g, approximate=act)
    return a * up.double()


def reference_silu_and_mul(x: torch.Tensor) -> torch.Tensor:
    x = x.double()
    d = x.shape[-1] // 2
    return F.silu(x[..., :d]) * x[..., d:]


def reference_gelu_and_mul(x: torch.Tensor, approximate: str = "none") -> torch.Tensor:
    x = x.double()
    d = x.shape[-1] // 2
    return F.gelu(x[..., :d], approximate=approximate) * x[..., d:]




# transformers' MLPs: ``act_fn(gate_proj(x)) * up_proj(x)`` (Llama, Qwen, Mistral, OLMo 2: silu;
# Gemma: gelu_pytorch_tanh), the gate and up halves two tensors. Both product orders.
def _silu_two(a, b):
    return F.silu(a) * b


def _silu_two_up_first(a, b):
    return b * F.silu(a)


# SiLU written out with sigmoid (stays ``sigmoid`` in the post-grad graph, where ``F.silu``
# decomposes to neg/exp/div in fp32): the same function, a rounding apart in 16-bit math.
def _silu_sigmoid_two(a, b):
    return a * torch.sigmoid(a) * b


def _silu_sigmoid_two_up_first(a, b):
    return b * (a * torch.sigmoid(a))


def _gelu_two(a, b):
    return F.gelu(a) * b


def _gelu_tanh_two(a, b):
    return F.gelu(a, approximate="tanh") * b


def _gelu_tanh_two_up_first(a, b):
    return b * F.gelu(a, approximate="tanh")


# Ungated GELU, as written in transformers.activations: nn.functional.gelu (GELUActivation,
# GELUTanh) and the Python formulas of NewGELUActivation (GPT-2, GPT-J: "gelu_new") and
# GELUTanh(use_gelu_tanh_python=True), which Inductor sees as tanh/pow/mul nodes.
_SQRT_2_OVER_PI = 0.7978845608028654


def _gelu_plain(x):
    return F.gelu(x)


def _gelu_tanh_plain(x):
    return F.gelu(x, approximate="tanh")


def _gelu_new(x):
    return 0.5 * x * (1.0 + torch.tanh(_SQRT_2_OVER_PI * (x + 0.044715 * torch.pow(x, 3.0))))


def _gelu_tanh_python(x):
    return x * 0.5 * (1.0 + torch.tanh(_SQRT_2_OVER_PI * (x + 0.044715 * torch.pow(x, 3.0))))


def _gelu_erf_python(x):
    return x * 0.5 * (1.0 + torch.erf(x / 1.4142135623730951))


def _repl_two(act):
    def repl(a, b):
        return act_and_mul(a, b, act)
    return repl


def _repl_plain(approximate):
    def repl(x):
        return gelu(x, approximate)
    return repl


def _check_two(match) -> bool:
    a, b = (match.kwargs[n].meta.get("val") for n in ("a", "b"))
    return (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.dtype.is_floating_point
            and a.dim() >= 1 and a.dtype == b.dtype and a.shape == b.shape)


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
    from .matcher_utils import register_replacement

    for dt in (torch.bfloat16, torch.float32):
        x = torch.empty(8, 128, dtype=dt)
        for search, repl in ((M.silu_slices, _repl_silu), (M.silu_chunk, _repl_silu),
                             (M.silu_chunk_gate_first, _repl_silu), (M.gelu_slices, _repl_gelu),
                             (M.gelu_tanh_slices, _repl_gelu_tanh)):
            register_replacement(search, repl, [x], trace_replacement, pm_pass,
                                 extra_check=_check, skip_duplicates=True)
        a, b = torch.empty(8, 64, dtype=dt), torch.empty(8, 64, dtype=dt)
        for search, act in ((_silu_two, "silu"), (_silu_two_up_first, "silu"), (_silu_sigmoid_two, "silu"),
                            (_silu_sigmoid_two_up_first, "silu"), (_gelu_two, "none"),
                            (_gelu_tanh_two, "tanh"), (_gelu_tanh_two_up_first, "tanh")):
            register_replacement(search, _repl_two(act), [a, b], trace_replacement, pm_pass,
                                 extra_check=_check_two, skip_duplicates=True)
        # After the gated forms (a gated GELU is taken whole, the plain form only what is left).
        for search, approx in ((_gelu_plain, "none"), (_gelu_tanh_plain, "tanh"), (_gelu_new, "tanh"),
                               (_gelu_tanh_python, "tanh"), (_gelu_erf_python, "none")):
            register_replacement(search, _repl_plain(approx), [x], trace_replacement, pm_pass,
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


# What survives a near miss in the post-grad graph: GELU keeps its erf or tanh. (silu is
# decomposed to neg/exp/add/div, and an exp is as likely a softmax's: not reported.)
ANCHOR_OPS = (torch.ops.aten.erf.default, torch.ops.aten.tanh.default)


def is_near_miss(node: torch.fx.Node) -> bool:
    """GELU's ``1 + erf(..)`` / ``1 + tanh(..)``; a soft-capping ``tanh(x / c) * c`` is not one."""
    add = torch.ops.aten.add.Tensor, torch.ops.aten.add.Scalar
    return any(u.target in add and 1 in u.args for u in node.users)
