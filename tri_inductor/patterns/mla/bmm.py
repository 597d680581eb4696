"""Per-head batched GEMM on strided views, in Triton: ``out[b, n, :] = x[b, n, :] @ w[n]``.

vLLM's MLA layer projects between the per-head and the latent spaces with two eager
``torch.bmm`` calls per step (cuBLAS, outside anything we compile):

* ``q_nope [B, N, P] x W_UK_T [N, P, L] -> [B, N, L]`` (q_nope: a slice of a [B, N, P + R]
  tensor; W_UK_T: a permuted view of the kv_b_proj weight);
* ``_v_up_proj``: ``[B, N, L] x W_UV [N, L, V] -> [B, N * V]`` (again a transposed weight view).

``head_bmm`` computes both on any strides of x, w and out (no copies: the views are read and
written where they are), with fp32 accumulation, so that the layer runs Triton kernels only.

One kernel, ``head_bmm_kernel``; grid (row blocks of B x column blocks of L, N).  In decode B is
small and the weights (N * K * L elements) are what the kernel reads: each program reads its
[K, BLOCK_N] slice of w[n] once, and BLOCK_N shrinks until there are enough programs to keep
every SM streaming weights.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .._launch import launch
from ..gemm.launch import hint, precision


@triton.jit
def head_bmm_kernel(x_ptr, w_ptr, out_ptr, B, K, L,
                    stride_xb, stride_xn, stride_xk, stride_wn, stride_wk, stride_wl,
                    stride_ob, stride_on, stride_ol,
                    PRECISION: tl.constexpr, EVEN_K: tl.constexpr, EVEN_L: tl.constexpr,
                    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    pid = tl.program_id(0)
    n = tl.program_id(1).to(tl.int64)
    n_tiles = tl.cdiv(L, BLOCK_N)
    # Column tiles fastest: the programs of one row block run together and share its x rows in L2.
    pid_m = pid // n_tiles
    pid_l = pid % n_tiles
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < B
    # Clamped row and column indices keep the loads in bounds without masks (rows and columns
    # past the end are computed on copies of row/column 0 and never stored).  Columns only in a
    # ragged last tile: a clamped index loses its contiguity, and w's loads along a unit-stride L
    # (W_UV) would no longer vectorise (nor pipeline through cp.async).
    rows_c = tl.where(row_ok, rows, 0).to(tl.int64)
    cols = pid_l * BLOCK_N + tl.arange(0, BLOCK_N)
    col_ok = cols < L
    if EVEN_L:
        cols_c = cols.to(tl.int64)
    else:
        cols_c = tl.where(col_ok, cols, 0).to(tl.int64)
    offs_k = tl.arange(0, BLOCK_K)
    x_ptrs = x_ptr + n * stride_xn + rows_c[:, None] * stride_xb + offs_k[None, :] * stride_xk
    w_ptrs = w_ptr + n * stride_wn + offs_k[:, None] * stride_wk + cols_c[None, :] * stride_wl
    acc = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
    for k0 in range(0, K, BLOCK_K):
        if EVEN_K:
            a = tl.load(x_ptrs)
            b = tl.load(w_ptrs)
        else:
            k_ok = (k0 + offs_k) < K
            a = tl.load(x_ptrs, mask=k_ok[None, :], other=0.0)
            b = tl.load(w_ptrs, mask=k_ok[:, None], other=0.0)
        acc = tl.dot(a, b, acc, input_precision=PRECISION)
        x_ptrs += BLOCK_K * stride_xk
        w_ptrs += BLOCK_K * stride_wk
    o_ptrs = out_ptr + n * stride_on + rows_c[:, None] * stride_ob + cols[None, :].to(tl.int64) * stride_ol
    tl.store(o_ptrs, acc.to(out_ptr.dtype.element_ty), mask=row_ok[:, None] & col_ok[None, :])


# H100/H200: 132 SMs.  Decode wants at least two programs per SM streaming weights.
_SMS = 132
_MIN_PROGRAMS = 2 * _SMS
# Pipeline buffers (x and w tiles, all stages) kept well under the 232448-byte opt-in shared
# memory: the epilogue's layout conversion of the accumulator needs room of its own.
_SMEM_BUDGET = 160 * 1024


def head_bmm_config(B: int, N: int, K: int, L: int, elem: int) -> dict[str, int]:
    """Tiles for ``head_bmm`` (static; no tuning): BLOCK_M from B, BLOCK_N the widest that still
    gives ``_MIN_PROGRAMS`` programs, BLOCK_K deep in decode (more weight bytes in flight per
    program), stages as many as fit ``_SMEM_BUDGET``."""
    if B <= 16:
        bm, bn, bk, warps = 16, 64, 128, 4
    elif B <= 32:
        bm, bn, bk, warps = 32, 64, 128, 4
    elif B <= 128:
        bm, bn, bk, warps = 64, 128, 64, 4
    else:
        bm, bn, bk, warps = 128, 128, 64, 8
    m_tiles = triton.cdiv(max(B, 1), bm)
    bn = min(bn, max(16, triton.next_power_of_2(L)))
    while bn > 16 and N * m_tiles * triton.cdiv(L, bn) < _MIN_PROGRAMS:
        bn //= 2
    if elem >= 4:
        bk //= 2  # fp32 tiles: half the depth for the same bytes
    bk = min(bk, max(16, triton.next_power_of_2(K)))
    stage = (bm * bk + bk * bn) * elem
    stages = max(2, min(4, _SMEM_BUDGET // stage))
    return dict(BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, num_warps=warps, num_stages=stages)


def _check(x: torch.Tensor, w: torch.Tensor, out: torch.Tensor | None) -> None:
    if x.dim() != 3 or w.dim() != 3:
        raise ValueError(f"head_bmm: x [B, N, K] and w [N, K, L] must be 3-D; got x {tuple(x.shape)}, "
                         f"w {tuple(w.shape)}")
    B, N, K = x.shape
    if w.shape[0] != N or w.shape[1] != K:
        raise ValueError(f"head_bmm: x {tuple(x.shape)} [B, N, K] and w {tuple(w.shape)} [N, K, L] disagree "
                         f"on N or K")
    if x.dtype != w.dtype:
        raise ValueError(f"head_bmm: x is {x.dtype}, w is {w.dtype}; they must agree")
    if x.dtype not in (torch.bfloat16, torch.float16, torch.float32):
        raise ValueError(f"head_bmm: dtype {x.dtype} unsupported; bf16, fp16 or fp32")
    if x.device != w.device:
        raise ValueError(f"head_bmm: x is on {x.device}, w on {w.device}")
    if out is None:
        return
    if out.dim() != 3 or tuple(out.shape) != (B, N, w.shape[2]):
        raise ValueError(f"head_bmm: out must be [B, N, L] = {(B, N, w.shape[2])}; got {tuple(out.shape)}")
    if out.dtype != x.dtype:
        raise ValueError(f"head_bmm: out is {out.dtype}, inputs {x.dtype}; they must agree")
    if out.device != x.device:
        raise ValueError(f"head_bmm: out is on {out.device}, inputs on {x.device}")


def head_bmm(x: torch.Tensor, w: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """out[b, n, :] = x[b, n, :] @ w[n]; x [B, N, K], w [N, K, L], out [B, N, L] (allocated
    contiguous when None). Any strides on all three (views of bigger buffers, transposes);
    fp32 accumulation; bf16/fp16/fp32 (fp32 in tf32 only where torch's matmuls allow it)."""
    _check(x, w, out)
    B, N, K = x.shape
    L = w.shape[2]
    if out is None:
        out = torch.empty((B, N, L), dtype=x.dtype, device=x.device)
    # An empty output: nothing to launch.  (K == 0 does launch: the K loop runs no step and the
    # kernel stores zeros, as torch.bmm gives.)
    if any(isinstance(d, int) and d == 0 for d in (B, N, L)):
        return out
    cfg = head_bmm_config(hint(B), hint(N), hint(K), hint(L), x.element_size())
    grid = (triton.cdiv(B, cfg["BLOCK_M"]) * triton.cdiv(L, cfg["BLOCK_N"]), N)
    launch(head_bmm_kernel, grid, x, w, out, B, K, L,
           x.stride(0), x.stride(1), x.stride(2), w.stride(0), w.stride(1), w.stride(2),
           out.stride(0), out.stride(1), out.stride(2),
           PRECISION=precision(x.dtype), EVEN_K=isinstance(K, int) and K % cfg["BLOCK_K"] == 0,
           EVEN_L=isinstance(L, int) and L % cfg["BLOCK_N"] == 0, **cfg)
    return out
