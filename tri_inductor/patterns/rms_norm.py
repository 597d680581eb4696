"""RMSNorm and fused residual-add + RMSNorm: Triton kernels, ops, FX patterns.

out = x / sqrt(mean(x^2) + eps) * (weight + weight_offset), fp32 arithmetic, output in x.dtype.
Gemma's ``(1 + w)`` norm is ``weight_offset=1.0``.
"""
from __future__ import annotations

from typing import Any, Callable, Optional

import torch
import torch.nn.functional as F
import triton
import triton.language as tl
from torch.library import triton_op

from . import matcher_utils as M
from ._launch import launch
from ._trace import trace_replacement

# A row up to this many elements is held in registers (one global read of x); wider rows
# loop over chunks of this size and read the row twice (the second read mostly hits L2).
MAX_FUSED_BLOCK = 16384

# Interpreter note (checked with triton 3.6): Triton's ``InterpretedFunction`` needs no
# TRITON_INTERPRET=1, but it patches only Triton *builtins*: library ``@triton.jit`` helpers
# (``tl.sum``, ``tl.sigmoid``, ``tl.zeros``...) raise "Cannot call @triton.jit'd outside of the
# scope of a kernel" unless the launcher routes them (tri_inductor.testing.interpret does now). Our
# kernels call builtins only anyway: ``tl.reduce(v, 0, tl.standard._sum_combine)`` is what
# ``tl.sum`` expands to, and the interpreter maps that combine function to ``np.sum`` (any other
# combine function runs once per element in Python: minutes per test instead of seconds).


@triton.jit
def _residual_sum(res_ptr, res_stride, res2_ptr, res2_stride, row, cols, mask,
                  HAS_RESIDUAL2: tl.constexpr):
    # residual (+ residual2) of one row chunk, in fp32: what the kernel adds to x
    r = tl.load(res_ptr + row * res_stride + cols, mask=mask, other=0.0).to(tl.float32)
    if HAS_RESIDUAL2:
        r += tl.load(res2_ptr + row * res2_stride + cols, mask=mask, other=0.0).to(tl.float32)
    return r


@triton.jit
def _rms_norm_kernel(
    x_ptr, res_ptr, w_ptr, out_ptr, res_out_ptr, res2_ptr,
    x_stride, res_stride, out_stride, res_out_stride, res2_stride,
    H, eps, w_offset, x_heads, x_head_stride,
    HAS_RESIDUAL: tl.constexpr, BLOCK: tl.constexpr, SINGLE_TILE: tl.constexpr,
    STRIDED_HEADS: tl.constexpr, HAS_RESIDUAL2: tl.constexpr, STORE_RESIDUAL: tl.constexpr,
    HAS_W: tl.constexpr,
):
    # One program per row. BLOCK is a power of two >= H (SINGLE_TILE) or the chunk width.
    # With residuals: s = x + (residual + residual2) in fp32 (residual2 optional), the norm of s
    # written to out and, with STORE_RESIDUAL, s itself to res_out (see the chain note below).
    # Contiguous columns across the program's threads: Triton gives each thread runs of
    # BLOCK / (32 * num_warps) elements, i.e. 16-byte vectors when num_warps follows BLOCK.
    # Inductor types a Python float argument as fp64 (Triton's own launcher: fp32); uncast, the
    # whole row would be normalised in fp64 inside compiled graphs (far slower in vLLM's decode
    # steps than standalone).
    eps = tl.cast(eps, tl.float32)
    w_offset = tl.cast(w_offset, tl.float32)
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    if STRIDED_HEADS:
        # x is [tokens, heads, H] with strided tokens (a per-head view of a fused qkv buffer, as
        # Qwen3's q/k norm): row = token * x_heads + head, read in place instead of copied first.
        x_row = x_ptr + (row // x_heads) * x_stride + (row % x_heads) * x_head_stride
    else:  # no integer division on the common path (one row per program, latency-bound at decode)
        x_row = x_ptr + row * x_stride
    out_row = out_ptr + row * out_stride
    if SINGLE_TILE:
        mask = cols < H
        # The weight is loaded before the reduction, not after it: at decode (a handful of rows,
        # latency-bound) a load issued after the cross-warp sum adds a second memory round trip.
        if HAS_W:
            w = tl.load(w_ptr + cols, mask=mask, other=0.0, eviction_policy="evict_last").to(tl.float32) + w_offset
        else:  # a norm without a weight (1 + w_offset: exact)
            w = tl.full([BLOCK], 1.0, tl.float32) + w_offset
        # x and the residuals are read once, with default caching: marking them evict_first
        # (to keep the weight row in L2) made add + RMSNorm slower (docs/design/kernels.md).
        x = tl.load(x_row + cols, mask=mask, other=0.0).to(tl.float32)
        if HAS_RESIDUAL:
            x += _residual_sum(res_ptr, res_stride, res2_ptr, res2_stride, row, cols, mask, HAS_RESIDUAL2)
            if STORE_RESIDUAL:
                # New residual is rounded to res_out's dtype; the norm uses the fp32 sum (as
                # vLLM's native fused_add_rms_norm does).
                tl.store(res_out_ptr + row * res_out_stride + cols, x.to(res_out_ptr.dtype.element_ty), mask=mask)
        rstd = tl.rsqrt(tl.reduce(x * x, 0, tl.standard._sum_combine) / H + eps)
        tl.store(out_row + cols, (x * rstd * w).to(out_ptr.dtype.element_ty), mask=mask)
    else:
        # Wide rows: pass 1 accumulates sum(x^2) chunk by chunk (and writes the new residual),
        # pass 2 re-reads the row (the new residual when it is the exact fp32 sum) and writes the
        # output: the norm of the fp32 sum, as in the single tile.
        acc = tl.full([BLOCK], 0.0, tl.float32)
        for start in range(0, H, BLOCK):
            c = start + cols
            mask = c < H
            x = tl.load(x_row + c, mask=mask, other=0.0).to(tl.float32)
            if HAS_RESIDUAL:
                # default caching: pass 2 reads these chunks again
                x += _residual_sum(res_ptr, res_stride, res2_ptr, res2_stride, row, c, mask, HAS_RESIDUAL2)
                if STORE_RESIDUAL:
                    tl.store(res_out_ptr + row * res_out_stride + c, x.to(res_out_ptr.dtype.element_ty), mask=mask)
            acc += x * x
        rstd = tl.rsqrt(tl.reduce(acc, 0, tl.standard._sum_combine) / H + eps)
        for start in range(0, H, BLOCK):
            c = start + cols
            mask = c < H
            if HAS_RESIDUAL and STORE_RESIDUAL and not HAS_RESIDUAL2 and res_out_ptr.dtype.element_ty == tl.float32:
                # the exact sum, read back (one stream instead of two); a 16-bit res_out is the
                # rounded sum, so then the sum is recomputed below, as the single tile keeps it
                x = tl.load(res_out_ptr + row * res_out_stride + c, mask=mask, other=0.0)
            else:
                x = tl.load(x_row + c, mask=mask, other=0.0).to(tl.float32)
                if HAS_RESIDUAL:  # the sum again, in the same order (res_out may be rounded)
                    x += _residual_sum(res_ptr, res_stride, res2_ptr, res2_stride, row, c, mask, HAS_RESIDUAL2)
            if HAS_W:
                w = tl.load(w_ptr + c, mask=mask, other=0.0).to(tl.float32) + w_offset
            else:
                w = tl.full([BLOCK], 1.0, tl.float32) + w_offset
            tl.store(out_row + c, (x * rstd * w).to(out_ptr.dtype.element_ty), mask=mask)


def _launch_config(H: int, elem_size: int) -> tuple[int, int, bool]:
    """(BLOCK, num_warps, single_tile). Warps grow with the row (one 16-byte vector per thread
    per pass), capped at 8 like Inductor's persistent reductions: beyond that the cross-warp
    reduction costs more than it hides (4096 bf16: 8 warps, two 16-byte vectors per thread)."""
    block = triton.next_power_of_2(H)
    single = block <= MAX_FUSED_BLOCK
    block = min(block, MAX_FUSED_BLOCK)
    per_thread = max(16 // elem_size, 1)
    num_warps = max(1, min(8, block // (32 * per_thread)))
    return block, num_warps, single


def _rows(t: torch.Tensor) -> torch.Tensor:
    """``t`` as [rows, H] with a unit last stride (a view whenever possible)."""
    if t.stride(-1) != 1:
        t = t.contiguous()
    return t.reshape(-1, t.shape[-1])


def _strided_heads(t: torch.Tensor) -> tuple[torch.Tensor, int, int, int, int]:
    """(tensor, rows, token stride, heads, head stride) for the kernel's x: a [tokens, heads, H]
    view whose tokens are not evenly strided over heads (not viewable as [rows, H]) is read in
    place; anything else as ``_rows``."""
    if t.dim() == 3 and t.stride(-1) == 1:
        s0, s1, heads = t.stride(0), t.stride(1), t.shape[1]
        if all(isinstance(v, int) for v in (s0, s1, heads)) and s0 != heads * s1:
            return t, t.shape[0] * heads, s0, heads, s1
    t2 = _rows(t)
    return t2, t2.shape[0], t2.stride(0), 1, 0


def _check(x: torch.Tensor, weight: torch.Tensor | None) -> None:
    if weight is None:
        return
    torch._check(weight.dim() == 1 and weight.shape[0] == x.shape[-1],
                 lambda: f"weight {tuple(weight.shape)} does not match hidden size {x.shape[-1]}")


@triton_op("tri_inductor::rms_norm", mutates_args={})
def rms_norm(x: torch.Tensor, weight: Optional[torch.Tensor], eps: float, weight_offset: float = 0.0) -> torch.Tensor:
    """``weight`` None: a norm without a weight (times ``1 + weight_offset``)."""
    _check(x, weight)
    xk, rows, x_stride, heads, head_stride = _strided_heads(x)
    H = x.shape[-1]
    out = torch.empty((rows, H), dtype=x.dtype, device=x.device)
    block, num_warps, single = _launch_config(H, x.element_size())
    launch(_rms_norm_kernel, (rows,),
           xk, xk, weight if weight is not None else xk, out, out, xk,
           x_stride, 0, out.stride(0), out.stride(0), 0,
           H, eps, weight_offset, heads, head_stride,
           HAS_RESIDUAL=False, BLOCK=block, SINGLE_TILE=single, STRIDED_HEADS=heads > 1,
           HAS_RESIDUAL2=False, STORE_RESIDUAL=False, HAS_W=weight is not None, num_warps=num_warps)
    return out.view(x.shape)


@triton_op("tri_inductor::fused_add_rms_norm", mutates_args={})
def fused_add_rms_norm(
    x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float, weight_offset: float = 0.0,
    fp32_residual: bool = False, residual2: Optional[torch.Tensor] = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(norm(s) * (weight + weight_offset), s) with s = x + residual (+ residual2: then
    x + (residual + residual2)), summed in fp32; the residuals may be fp32 and s is written in
    x's dtype, or in fp32 with ``fp32_residual``."""
    return _add_rms(x, residual, weight, eps, weight_offset, residual2,
                    torch.float32 if fp32_residual else x.dtype)


@triton_op("tri_inductor::add_rms_norm", mutates_args={})
def add_rms_norm(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float,
                 weight_offset: float = 0.0) -> torch.Tensor:
    """norm(x + residual) * (weight + weight_offset), the sum in fp32 and not written: the first
    norm of a chain whose sum the next norm recomputes (see ``prepare_graph``)."""
    return _add_rms(x, residual, weight, eps, weight_offset, None, None)[0]


def _add_rms(x, residual, weight, eps, weight_offset, residual2, res_dtype):
    _check(x, weight)
    for name, r in (("residual", residual), ("residual2", residual2)):
        torch._check(r is None or r.shape == x.shape,
                     lambda: f"add + RMSNorm: {name} shape {tuple(r.shape)} differs from x shape {tuple(x.shape)}")
    x2, r2 = _rows(x), _rows(residual)
    r3 = _rows(residual2) if residual2 is not None else r2
    H = x2.shape[1]
    out = torch.empty(x2.shape, dtype=x.dtype, device=x.device)
    new_res = torch.empty(x2.shape, dtype=res_dtype, device=x.device) if res_dtype is not None else out
    block, num_warps, single = _launch_config(H, x.element_size())
    launch(_rms_norm_kernel, (x2.shape[0],),
           x2, r2, weight, out, new_res, r3,
           x2.stride(0), r2.stride(0), out.stride(0), new_res.stride(0), r3.stride(0),
           H, eps, weight_offset, 1, 0,
           HAS_RESIDUAL=True, BLOCK=block, SINGLE_TILE=single, STRIDED_HEADS=False,
           HAS_RESIDUAL2=residual2 is not None, STORE_RESIDUAL=res_dtype is not None, HAS_W=True,
           num_warps=num_warps)
    return out.view(x.shape), new_res.view(x.shape)


def reference_rms_norm(x: torch.Tensor, weight: torch.Tensor | None, eps: float,
                       weight_offset: float = 0.0) -> torch.Tensor:
    """float64 ground truth (returned in float64); ``weight`` None: no weight."""
    x64 = x.double()
    w = weight.double() if weight is not None else 1.0
    return x64 * torch.rsqrt(x64.pow(2).mean(-1, keepdim=True) + eps) * (w + weight_offset)


def reference_fused_add_rms_norm(
    x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float, weight_offset: float = 0.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """float64 ground truth: (out, new_residual), both float64."""
    s = x.double() + residual.double()
    return reference_rms_norm(s, weight, eps, weight_offset), s


# ---------------------------------------------------------------------------------------------
# FX patterns (post-grad, aten level)
#
# eps is kept general with ``scalar_workaround``: the search graph is traced with the sentinel
# value ``matcher_utils.EPS_SENTINEL``, which the pattern turns into ``KeywordArg("eps")``; any literal eps then matches
# and is handed to the replacement. One registration per form covers every eps.
# Forms differ in where casts sit, so each is traced once with bf16 inputs (the cast pattern,
# which also matches fp16: dtypes are re-checked per match) and once with fp32 inputs (no casts).
# ---------------------------------------------------------------------------------------------
# vLLM's native form (M.vllm_rms) is in matcher_utils: rope's q/k-norm forms search it too.


# Hugging Face LlamaRMSNorm / Qwen2RMSNorm / MistralRMSNorm: weight * h.to(input_dtype).
def _hf_rms(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    h = x.to(torch.float32)
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return weight * h.to(x.dtype)


# Hugging Face GemmaRMSNorm: (h * (1.0 + w.float())).type_as(x).
def _gemma_rms(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    h = x.float()
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return (h * (1.0 + weight.float())).type_as(x)


# The same with the (1 + w) factor first.
def _gemma_rms_weight_first(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    h = x.float()
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return ((1.0 + weight.float()) * h).type_as(x)


# vLLM fused_add_rms_norm native (torch wrap off): the norm reads the fp32 sum.
def _vllm_add_rms(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float):
    s = x.to(torch.float32) + residual.to(torch.float32)
    new_res = s.to(x.dtype)
    h = s * torch.rsqrt(s.pow(2).mean(dim=-1, keepdim=True) + eps)
    return (h.to(weight.dtype) * weight).to(x.dtype), new_res


# Two vLLM fused add+norms in one piece (after o_proj and after down_proj): the first one's new
# residual ``s.to(bf16)`` is read by the second as ``.to(float32)``, and Inductor's joint-graph
# pass ``pointless_convert`` folds that bf16 -> fp32 round trip away before our post-grad pass.
# So the first norm hands its fp32 sum on (``_vllm_add_rms_sum_out``) and the second one reads an
# fp32 residual (``_vllm_add_rms`` traced with an fp32 residual: no cast on it).
def _vllm_add_rms_sum_out(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float):
    s = x.to(torch.float32) + residual.to(torch.float32)
    h = s * torch.rsqrt(s.pow(2).mean(dim=-1, keepdim=True) + eps)
    return (h.to(weight.dtype) * weight).to(x.dtype), s


def _vllm_gemma_add_rms_sum_out(x, residual, weight, eps):
    return _vllm_add_rms_sum_out(x, residual, weight.float() + 1.0, eps)


# The same chain once ``prepare_graph`` has given the second norm its own copy of the first
# one's sum: the first norm writes only its output (``add_rms_norm``), the second sums three
# terms, s = x + (a + b), and writes s in x's dtype (the piece's residual output). Per element
# this moves 16 bytes instead of 20 (the fp32 sum is neither written nor read back), as
# Inductor's own kernels for the chain do; the sums are the same fp32 additions, bit for bit.
def _vllm_add_rms_no_res(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float):
    return _vllm_add_rms_sum_out(x, residual, weight, eps)[0]


def _vllm_gemma_add_rms_no_res(x, residual, weight, eps):
    return _vllm_add_rms_no_res(x, residual, weight.float() + 1.0, eps)


def _vllm_add3_rms(x: torch.Tensor, a: torch.Tensor, b: torch.Tensor, weight: torch.Tensor, eps: float):
    s = x.to(torch.float32) + (a.to(torch.float32) + b.to(torch.float32))
    h = s * torch.rsqrt(s.pow(2).mean(dim=-1, keepdim=True) + eps)
    return (h.to(weight.dtype) * weight).to(x.dtype), s.to(x.dtype)


def _vllm_gemma_add3_rms(x, a, b, weight, eps):
    return _vllm_add3_rms(x, a, b, weight.float() + 1.0, eps)


def prepare_graph(graph: torch.fx.Graph) -> None:
    """Give each later reader of a norm's fp32 residual sum its own copy of the sum.

    After ``pointless_convert`` a chain of two vLLM add+norms reads the first one's fp32 sum
    ``s = a.float() + b.float()`` in the second one's add. Replaced as is, our first kernel would
    write s in fp32 (4 bytes per element) for the second to read back; with the add recomputed
    from a and b (2 + 2 bytes, read anyway by the first) the first norm's sum stays in registers.
    Only a sum that also feeds a norm (``pow``) is split, only for ``add`` readers."""
    aten, prims = torch.ops.aten, torch.ops.prims

    def widened(n) -> bool:  # convert_element_type(16-bit tensor, float32)
        if not (isinstance(n, torch.fx.Node) and n.target is prims.convert_element_type.default
                and n.args[1] == torch.float32):
            return False
        v = n.args[0].meta.get("val") if isinstance(n.args[0], torch.fx.Node) else None
        return isinstance(v, torch.Tensor) and v.dtype in (torch.float16, torch.bfloat16)

    for s in list(graph.find_nodes(op="call_function", target=aten.add.Tensor)):
        if len(s.args) != 2 or not all(widened(a) for a in s.args):
            continue
        users = list(s.users)
        if not any(u.target is aten.pow.Tensor_Scalar for u in users):
            continue
        for u in users:
            if u.target is not aten.add.Tensor:
                continue
            with graph.inserting_before(u):
                copies = [graph.call_function(prims.convert_element_type.default, (a.args[0], torch.float32))
                          for a in s.args]
                for c, a in zip(copies, s.args):
                    c.meta.update(a.meta)
                s2 = graph.call_function(aten.add.Tensor, tuple(copies))
                s2.meta.update(s.meta)
            u.replace_input_with(s, s2)


# Other spellings of the same norm (patterns/normalise.py already makes x * x, mean(dim=ndim-1), an fp32 sum / n,
# add.Scalar and a repeated x.float() one form):
# * no fp32 upcast, all math in x's dtype (Inductor's fused kernel computes in fp32, as ours does);
def _plain_rms(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight


def _plain_rms_weight_first(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    return weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))


# * torch's own ``F.rms_norm`` / ``nn.RMSNorm`` (its decomposition): the weight applied in fp32,
#   one cast at the end;
def _torch_rms(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    h = x.to(torch.float32)
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return (h * weight).to(x.dtype)


# * a division by the root instead of a multiply by rsqrt (not the same rounding, so not a
#   normalise.py rewrite), with or without the fp32 upcast.
def _div_rms(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    return x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight


def _div_rms_weight_first(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    return weight * (x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + eps))


def _div_rms_upcast(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    h = x.to(torch.float32)
    return weight * (h / torch.sqrt(h.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)


# * the inverse root as ``pow(v, -0.5)`` (Gemma 4, "to address compiler differences between Torch
#   and JAX"; Inductor computes it as a pow, ours as rsqrt: not the same rounding, so a form here).
def _pow_rms(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    return x * torch.pow(x.pow(2).mean(-1, keepdim=True) + eps, -0.5) * weight


def _pow_rms_upcast(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    h = x.to(torch.float32)
    return (h * torch.pow(h.pow(2).mean(-1, keepdim=True) + eps, -0.5) * weight).to(x.dtype)


OTHER_SPELLINGS = (_plain_rms, _plain_rms_weight_first, _torch_rms, _div_rms, _div_rms_weight_first, _div_rms_upcast,
                   _pow_rms, _pow_rms_upcast)


# Without a weight (Llama 4's q/k L2 norm, ``nn.RMSNorm(elementwise_affine=False)``): our kernel
# with ``HAS_W`` off.
def _unit_rms(x: torch.Tensor, eps: float) -> torch.Tensor:
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)


def _unit_rms_upcast(x: torch.Tensor, eps: float) -> torch.Tensor:
    h = x.to(torch.float32)
    return (h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)


def _unit_torch_rms(x: torch.Tensor, eps: float) -> torch.Tensor:
    return F.rms_norm(x, (x.shape[-1],), None, eps)


def _unit_pow_rms_upcast(x: torch.Tensor, eps: float) -> torch.Tensor:
    h = x.to(torch.float32)
    return (h * torch.pow(h.pow(2).mean(-1, keepdim=True) + eps, -0.5)).to(x.dtype)


UNIT_SPELLINGS = (_unit_rms, _unit_rms_upcast, _unit_torch_rms, _unit_pow_rms_upcast)


# Hugging Face decoder layer: ``hidden = residual + hidden`` (input dtype) then the Llama norm.
def _hf_add_rms(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float):
    s = residual + x
    h = s.to(torch.float32)
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return weight * h.to(s.dtype), s


# vLLM GemmaRMSNorm.forward_native with torch wrap off: the IR native body with w.float() + 1.
# (The plain-norm case traces exactly like HF's GemmaRMSNorm and is matched by _gemma_rms.)
def _vllm_gemma_add_rms(x, residual, weight, eps):
    return _vllm_add_rms(x, residual, weight.float() + 1.0, eps)


def _repl_rms(x, weight, eps):
    return rms_norm(x, weight, eps)


def _repl_unit_rms(x, eps):
    return rms_norm(x, None, eps)


def _repl_gemma(x, weight, eps):
    return rms_norm(x, weight, eps, 1.0)


def _repl_add_rms(x, residual, weight, eps):
    return fused_add_rms_norm(x, residual, weight, eps)


def _repl_add_rms_swapped(x, residual, weight, eps):
    # HF adds ``residual + x``: same sum, operands named the other way round.
    return fused_add_rms_norm(x, residual, weight, eps)




def _ir_add_rms(x, residual, weight, eps):
    out, res = torch.ops.vllm_ir.fused_add_rms_norm.default(x, residual, weight, eps)
    return out, res


# vLLM GemmaRMSNorm through IR: ``rms_norm(x, w.float() + 1.0, eps)``; folding the ``+ 1`` into
# weight_offset saves a kernel and the fp32 weight copy.
def _ir_gemma_rms(x, weight, eps):
    return torch.ops.vllm_ir.rms_norm.default(x, weight.float() + 1.0, eps)


def _ir_gemma_add_rms(x, residual, weight, eps):
    out, res = torch.ops.vllm_ir.fused_add_rms_norm.default(x, residual, weight.float() + 1.0, eps)
    return out, res


def _repl_gemma_add(x, residual, weight, eps):
    return fused_add_rms_norm(x, residual, weight, eps, 1.0)


def _repl_add_rms_sum_out(x, residual, weight, eps):
    return fused_add_rms_norm(x, residual, weight, eps, 0.0, True)


def _repl_gemma_add_sum_out(x, residual, weight, eps):
    return fused_add_rms_norm(x, residual, weight, eps, 1.0, True)


def _repl_add_rms_no_res(x, residual, weight, eps):
    return add_rms_norm(x, residual, weight, eps)


def _repl_gemma_add_rms_no_res(x, residual, weight, eps):
    return add_rms_norm(x, residual, weight, eps, 1.0)


def _repl_add3_rms(x, a, b, weight, eps):
    return fused_add_rms_norm(x, a, weight, eps, 0.0, False, b)


def _repl_gemma_add3_rms(x, a, b, weight, eps):
    return fused_add_rms_norm(x, a, weight, eps, 1.0, False, b)


def _same_dtypes(match, names: tuple[str, ...] = ("x",)) -> bool:
    """Replace only where our op's output dtype (x.dtype) is the sub-graph's, and the row is
    the last dim of a floating tensor (mixed-dtype forms such as fp32 weight * bf16 activations
    in HF Llama promote to fp32: those are left to Inductor)."""
    vals = [match.kwargs[n].meta.get("val") for n in names]
    if any(not isinstance(v, torch.Tensor) or not v.dtype.is_floating_point for v in vals):
        return False
    dt = vals[0].dtype
    if any(v.dtype != dt for v in vals):
        return False
    outs = [n for n in match.output_nodes() if n is not None]
    return all(isinstance(n.meta.get("val"), torch.Tensor) and n.meta["val"].dtype == dt for n in outs)


def _weight_ok(match) -> bool:
    w = match.kwargs["weight"].meta.get("val")
    x = match.kwargs["x"].meta.get("val")
    return isinstance(w, torch.Tensor) and w.dim() == 1 and w.dtype.is_floating_point and w.shape[0] == x.shape[-1]


def _same_shapes(match, names: tuple[str, ...]) -> bool:
    """Every addend has x's shape: the kernel adds row by row, it does not broadcast.  A bias
    add (``mm(h, w) + b``, b of shape (H,)) matches the add + RMSNorm forms too; it is declined
    here and left to Inductor, never failed in the op's shape check."""
    from torch.fx.experimental.symbolic_shapes import statically_known_true

    vals = [match.kwargs[n].meta.get("val") for n in ("x", *names)]
    if not all(isinstance(v, torch.Tensor) and v.dim() == vals[0].dim() for v in vals):
        return False
    return all(statically_known_true(a == b) for v in vals[1:] for a, b in zip(v.shape, vals[0].shape))


def _check_rms(match) -> bool:
    return _same_dtypes(match) and _weight_ok(match)


def _centred(node) -> bool:
    """``x - mean(x)``: the centred half of a LayerNorm, which layer_norm.py takes whole."""
    aten = torch.ops.aten
    return (isinstance(node, torch.fx.Node) and node.target is aten.sub.Tensor and len(node.args) == 2
            and isinstance(node.args[1], torch.fx.Node) and node.args[1].target is aten.mean.dim)


def _check_unit_rms(match) -> bool:
    x = match.kwargs["x"]
    return _same_dtypes(match) and not _centred(x) and int(x.meta["val"].shape[-1]) <= 65536


def _check_add(match) -> bool:
    return _same_dtypes(match, ("x", "residual")) and _same_shapes(match, ("residual",)) and _weight_ok(match)


def _check_add_fp32_residual(match) -> bool:
    """x 16-bit or fp32, residual fp32, outputs in x's dtype (the second norm of a chain)."""
    r = match.kwargs["residual"].meta.get("val")
    return (isinstance(r, torch.Tensor) and r.dtype == torch.float32 and _same_dtypes(match)
            and _same_shapes(match, ("residual",)) and _weight_ok(match))


def _check_add3(match) -> bool:
    return _same_dtypes(match, ("x", "a", "b")) and _same_shapes(match, ("a", "b")) and _weight_ok(match)


def _check_add_sum_out(match) -> bool:
    """The first norm of a chain: x and residual of one dtype, and the fp32 sum it hands on is
    read outside the match (else there is nothing to hand on and Inductor keeps it)."""
    outs = match.output_nodes()
    if len(outs) != 2 or outs[1] is None or not _weight_ok(match) or not _same_shapes(match, ("residual",)):
        return False
    x, r = (match.kwargs[n].meta.get("val") for n in ("x", "residual"))
    if not (isinstance(x, torch.Tensor) and isinstance(r, torch.Tensor) and x.dtype == r.dtype
            and x.dtype in (torch.float16, torch.bfloat16)):
        return False
    inside = set(match.nodes)
    return outs[0].meta["val"].dtype == x.dtype and any(u not in inside for u in outs[1].users)


def chain_forms_occur() -> bool:
    """Whether Inductor folds the bf16 -> fp32 round trip between two add+norms (the chain forms
    above exist only then): torch < 2.13.  From 2.13 ``pointless_convert`` keeps a narrowing
    round trip, each norm of a chain is the plain add+norm form (residual in x's dtype), and the
    chain forms are not registered (they could never match)."""
    from .. import hooks

    return hooks.inductor_folds_narrowing_round_trip()


def register_patterns(pm_pass) -> None:
    from .matcher_utils import register_replacement

    def reg(search: Callable[..., Any], repl: Callable[..., Any], inputs: list[torch.Tensor],
            check: Callable[[Any], bool]) -> None:
        register_replacement(search, repl, inputs, trace_replacement, pm_pass,
                             extra_check=check, scalar_workaround={"eps": M.EPS_SENTINEL},
                             skip_duplicates=True)  # a form may trace alike for two dtypes

    # Order matters: for one output node the first registered pattern that matches wins, so the
    # larger forms (add + norm, then the Gemma (1 + w) norm) come before the sub-forms they contain.
    for dt in (torch.bfloat16, torch.float32):
        x, r, w = torch.empty(8, 64, dtype=dt), torch.empty(8, 64, dtype=dt), torch.empty(64, dtype=dt)
        reg(_vllm_add_rms, _repl_add_rms, [x, r, w], _check_add)
        reg(_hf_add_rms, _repl_add_rms_swapped, [x, r, w], _check_add)
        reg(_vllm_gemma_add_rms, _repl_gemma_add, [x, r, w], _check_add)
    xb, rb, wf = torch.empty(8, 64, dtype=torch.bfloat16), torch.empty(8, 64, dtype=torch.bfloat16), torch.empty(64)
    reg(_vllm_add_rms, _repl_add_rms, [xb, rb, wf], _check_add)  # fp32 weight, 16-bit activations
    if chain_forms_occur():
        # Chains of two norms after Inductor's pointless_convert (see _vllm_add_rms_sum_out).
        wb, rf = torch.empty(64, dtype=torch.bfloat16), torch.empty(8, 64)
        reg(_vllm_add_rms_sum_out, _repl_add_rms_sum_out, [xb, rb, wb], _check_add_sum_out)
        reg(_vllm_gemma_add_rms_sum_out, _repl_gemma_add_sum_out, [xb, rb, wb], _check_add_sum_out)
        # The chain after prepare_graph: three-term sum first (it contains a two-term sum), then the
        # first norm, whose sum is now read by its norm only.
        ab = torch.empty(8, 64, dtype=torch.bfloat16)
        reg(_vllm_gemma_add3_rms, _repl_gemma_add3_rms, [xb, rb, ab, wb], _check_add3)
        reg(_vllm_add3_rms, _repl_add3_rms, [xb, rb, ab, wb], _check_add3)
        reg(_vllm_gemma_add_rms_no_res, _repl_gemma_add_rms_no_res, [xb, rb, wb], _check_add)
        reg(_vllm_add_rms_no_res, _repl_add_rms_no_res, [xb, rb, wb], _check_add)
        reg(_vllm_gemma_add_rms, _repl_gemma_add, [xb, rf, wb], _check_add_fp32_residual)
        reg(_vllm_add_rms, _repl_add_rms, [xb, rf, wb], _check_add_fp32_residual)
    # Gemma's (1 + w) first: any form below would take it with (1 + w) as its weight. Then the
    # other spellings: traced in fp32, the plain form is the same graph as vLLM's and HF's forms
    # (their casts vanish) and keeps that slot, so that a match re-traced with 16-bit inputs (the
    # matcher's check) is the plain form, not one with casts the graph does not have.
    for dt in (torch.bfloat16, torch.float32):
        for gemma in (_gemma_rms, _gemma_rms_weight_first):
            reg(gemma, _repl_gemma, [torch.empty(8, 64, dtype=dt), torch.empty(64, dtype=dt)], _check_rms)
    wb = torch.empty(64, dtype=torch.bfloat16)
    for form in OTHER_SPELLINGS:
        for inputs in ([xb, wb], [torch.empty(8, 64), torch.empty(64)], [xb, wf]):
            reg(form, _repl_rms, inputs, _check_rms)
    for dt in (torch.bfloat16, torch.float32):
        x, w = torch.empty(8, 64, dtype=dt), torch.empty(64, dtype=dt)
        reg(M.vllm_rms, _repl_rms, [x, w], _check_rms)
        reg(_hf_rms, _repl_rms, [x, w], _check_rms)
    # fp32 weight, 16-bit activations; after the Gemma form, which it would otherwise cut short.
    reg(M.vllm_rms, _repl_rms, [xb, wf], _check_rms)
    # Weightless norms last: each is the inside of a weighted form above.
    for form in UNIT_SPELLINGS:
        for dt in (torch.bfloat16, torch.float32):
            reg(form, _repl_unit_rms, [torch.empty(8, 64, dtype=dt)], _check_unit_rms)
    _register_c_forms(pm_pass)
    if M.vllm_ir_available():
        # vLLM IR nodes (torch wrap on, the default with Inductor-like backends). The weight may be
        # fp32 (vLLM's GemmaRMSNorm passes ``w.float() + 1``); our kernel reads any float weight.
        xb, rb, wb = (torch.empty(8, 64, dtype=torch.bfloat16), torch.empty(8, 64, dtype=torch.bfloat16),
                      torch.empty(64, dtype=torch.bfloat16))
        reg(_ir_gemma_add_rms, _repl_gemma_add, [xb, rb, wb], _check_add_ir)
        reg(_ir_gemma_rms, _repl_gemma, [xb, wb], _check_rms_ir)
        x, r, w = torch.empty(8, 64), torch.empty(8, 64), torch.empty(64)  # one node: any dtype
        reg(_ir_add_rms, _repl_add_rms, [x, r, w], _check_add_ir)
        reg(M.ir_rms, _repl_rms, [x, w], _check_rms_ir)


def _ir_ok(match) -> bool:
    if not isinstance(match.kwargs.get("weight"), torch.fx.Node):  # weight=None (has_weight=False)
        return False
    x = match.kwargs["x"].meta.get("val")
    return isinstance(x, torch.Tensor) and x.dtype.is_floating_point and _weight_ok(match)


_check_rms_ir = _ir_ok


def _check_add_ir(match) -> bool:
    return (_ir_ok(match) and match.kwargs["residual"].meta["val"].dtype == match.kwargs["x"].meta["val"].dtype
            and _same_shapes(match, ("residual",)))


def _c_rms(result, x, weight, eps):  # _C.rms_norm(Tensor! result, Tensor input, Tensor weight, float epsilon)
    return rms_norm(x, weight, eps)


def _c_add_rms(x, residual, weight, eps):  # _C.fused_add_rms_norm(Tensor! input, Tensor! residual, ...)
    return fused_add_rms_norm(x, residual, weight, eps)


def _register_c_forms(pm_pass) -> None:
    """vLLM's CUDA ops when present (custom_ops "all", or IR priority vllm_c with torch wrap off):
    ``auto_functionalized(_C.rms_norm)[1]`` and ``auto_functionalized(_C.fused_add_rms_norm)[1, 2]``."""
    if (op := M.c_op("rms_norm")) is not None:
        M.register_auto_functionalized_form(pm_pass, op, [1], _c_rms)
    if (op := M.c_op("fused_add_rms_norm")) is not None:
        M.register_auto_functionalized_form(pm_pass, op, [1, 2], _c_add_rms)


# aten ops whose survival after our pass means an RMSNorm nearly matched.
ANCHOR_OPS = (torch.ops.aten.rsqrt.default,)


def rsqrt_source(node: torch.fx.Node):
    """What an rsqrt takes the root of, past ``+ eps`` and dtype casts (a norm's statistic)."""
    src = node.args[0] if node.args else None
    while isinstance(src, torch.fx.Node) and src.target in (torch.ops.aten.add.Tensor, torch.ops.aten.add.Scalar,
                                                            torch.ops.prims.convert_element_type.default):
        src = src.args[0]
    return src


def is_near_miss(node: torch.fx.Node) -> bool:
    """An rsqrt of (a mean of squares + eps); a LayerNorm's rsqrt (of var_mean) is not RMSNorm's."""
    src = rsqrt_source(node)
    return isinstance(src, torch.fx.Node) and src.target is torch.ops.aten.mean.dim
