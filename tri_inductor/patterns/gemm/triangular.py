"""``tri_inductor::solve_triangular``: ``torch.linalg.solve_triangular`` for small triangular
systems, by substitution in one Triton program per (batch, block of right-hand columns).

Gated delta-net attention (Qwen3-Next, Qwen3.5 in transformers' torch path) solves a unit lower
triangular system per chunk (64 x 64) for its UT transform; Inductor has no lowering for
``linalg_solve_triangular`` and calls ATen (cuBLAS ``trsm``). Here each program holds the
solution tile [n, BLOCK_K] in registers and walks the rows in order: row i is
``(b_i - A[i, :i] @ X[:i]) / A[i, i]`` (no division when unitriangular), in fp32, rounded once
to the output dtype. n up to ``MAX_N``; larger systems are left to PyTorch (declined).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch.library import triton_op

from .._launch import launch

MAX_N = 128  # the solution tile [n, BLOCK_K] lives in registers


@triton.jit
def solve_triangular_kernel(A, B, X, n, k, s_ab, s_ar, s_ac, s_bb, s_br, s_bc, s_xb, s_xr, s_xc,
                            UPPER: tl.constexpr, UNIT: tl.constexpr, BLOCK_N: tl.constexpr,
                            BLOCK_K: tl.constexpr):
    pid_b = tl.program_id(0).to(tl.int64)
    rows = tl.arange(0, BLOCK_N)
    cols = tl.program_id(1) * BLOCK_K + tl.arange(0, BLOCK_K)
    ok = (rows < n)[:, None] & (cols < k)[None, :]
    b = tl.load(B + pid_b * s_bb + rows[:, None] * s_br + cols[None, :] * s_bc, mask=ok, other=0.0).to(tl.float32)
    x = tl.zeros([BLOCK_N, BLOCK_K], dtype=tl.float32)
    a_base = A + pid_b * s_ab
    for step in range(0, n):
        # the solved rows of the triangle: j > i (upper) or j < i (lower); the rest of x is 0
        if UPPER:
            i = n - 1 - step
            known = rows > i
        else:
            i = step
            known = rows < i
        a_row = tl.load(a_base + i * s_ar + rows * s_ac, mask=known & (rows < n), other=0.0).to(tl.float32)
        xi = tl.sum(tl.where(rows[:, None] == i, b, 0.0), 0) - tl.sum(a_row[:, None] * x, 0)
        if not UNIT:
            xi = xi / tl.load(a_base + i * s_ar + i * s_ac).to(tl.float32)
        x = tl.where(rows[:, None] == i, xi[None, :], x)
    tl.store(X + pid_b * s_xb + rows[:, None] * s_xr + cols[None, :] * s_xc, x.to(X.dtype.element_ty), mask=ok)


@triton_op("tri_inductor::solve_triangular", mutates_args={})
def solve_triangular(A: torch.Tensor, B: torch.Tensor, upper: bool, left: bool = True,
                     unitriangular: bool = False) -> torch.Tensor:
    """``torch.linalg.solve_triangular(A, B, upper=upper, left=left, unitriangular=unitriangular)``
    for A [..., n, n] (n <= MAX_N), B [..., n, k] (left) or [..., k, n] (right), batch dims
    broadcast; the result in B's dtype."""
    if not left:  # X A = B  <=>  A^T X^T = B^T: the same solve on transposed views
        return solve_triangular(A.transpose(-2, -1), B.transpose(-2, -1), not upper, True,
                                unitriangular).transpose(-2, -1)
    n, k = A.shape[-1], B.shape[-1]
    torch._check(A.shape[-2] == n and B.shape[-2] == n and n <= MAX_N,
                 lambda: f"solve_triangular: A {tuple(A.shape)}, B {tuple(B.shape)} (n <= {MAX_N})")
    batch = torch.broadcast_shapes(A.shape[:-2], B.shape[:-2])
    A3 = A.expand(*batch, n, n).reshape(-1, n, n)
    B3 = B.expand(*batch, n, k).reshape(-1, n, k)
    out = torch.empty((B3.shape[0], n, k), dtype=B.dtype, device=B.device)
    block_k = min(64, max(16, triton.next_power_of_2(int(k))))
    launch(solve_triangular_kernel, (B3.shape[0], triton.cdiv(k, block_k)), A3, B3, out, n, k,
           *A3.stride(), *B3.stride(), *out.stride(), UPPER=upper, UNIT=unitriangular,
           BLOCK_N=max(16, triton.next_power_of_2(int(n))), BLOCK_K=block_k, num_warps=4)
    return out.view(*batch, n, k)
