"""Expert GEMMs and the weighted reduction, in Triton.

* ``moe_gemm_kernel``: the fused-MoE grouped GEMM over the aligned (expert-sorted) rows of
  ``align.py``.  Each program takes one block of BLOCK_M rows of one expert and BLOCK_N output
  columns; rows are gathered by flat index (``a_row = idx // a_div``: the token for the first
  GEMM, the row itself for the second) and written to row ``idx`` of the output.  ``GATED``:
  the weight holds [gate; up] (vLLM's w13, transformers' gate_up_proj, [E, 2N, K]) and the
  program accumulates both halves and writes act(gate) * up: the SiLU/GELU-and-mul between the
  two GEMMs costs no extra pass.  ``MUL_W``: scale each row by its routing weight.  ``GROUP_M``:
  row blocks taken GROUP_M at a time across the N tiles (L2 reuse of the expert's weights).
* ``grouped_mm_kernel``: ``torch._grouped_mm(a [M, K], b [G, K, N], offs)`` (rows
  offs[g-1]..offs[g] times b[g]), the form transformers' grouped-mm experts write.
* ``moe_sum_kernel``: out[t] = sum_j w[t, j] * y[t * k + j] in fp32 (w optional).
"""
from __future__ import annotations

import triton
import triton.language as tl

from ..activation import act_mul


@triton.jit
def moe_gemm_kernel(a_ptr, w_ptr, c_ptr, sorted_ptr, expert_ids_ptr, n_post_pad_ptr, rw_ptr,
                    N, K, numel, a_div,
                    stride_am, stride_ak, stride_we, stride_wn, stride_wk, stride_cm, stride_cn,
                    GATED: tl.constexpr, ACT: tl.constexpr, MUL_W: tl.constexpr, EVEN_K: tl.constexpr,
                    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                    GROUP_M: tl.constexpr = 1):
    pid = tl.program_id(0)
    n_tiles = tl.cdiv(N, BLOCK_N)
    if GROUP_M == 1:
        pid_m = pid // n_tiles
        pid_n = pid % n_tiles
    else:
        # GROUP_M row blocks (mostly one expert's) sweep the N tiles together: the weight tiles
        # they share are read from HBM once per group, not once per row block.
        m_tiles = tl.num_programs(0) // n_tiles
        in_group = GROUP_M * n_tiles
        first_m = (pid // in_group) * GROUP_M
        size_m = tl.minimum(m_tiles - first_m, GROUP_M)
        pid_m = first_m + (pid % in_group) % size_m
        pid_n = (pid % in_group) // size_m
    if pid_m * BLOCK_M >= tl.load(n_post_pad_ptr):
        return
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    idx = tl.load(sorted_ptr + offs_m).to(tl.int64)
    row_ok = idx < numel
    a_rows = tl.where(row_ok, idx // a_div, 0)
    e = tl.load(expert_ids_ptr + pid_m).to(tl.int64)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = offs_n < N
    offs_nc = tl.where(n_ok, offs_n, 0)  # clamped: loads of the ragged last tile stay in bounds
    offs_k = tl.arange(0, BLOCK_K)
    a_ptrs = a_ptr + a_rows[:, None] * stride_am + offs_k[None, :] * stride_ak
    w_base = w_ptr + e * stride_we
    g_ptrs = w_base + offs_nc[None, :] * stride_wn + offs_k[:, None] * stride_wk
    u_ptrs = g_ptrs + N * stride_wn
    acc = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
    acc_u = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
    for k0 in range(0, K, BLOCK_K):
        if EVEN_K:
            a = tl.load(a_ptrs, mask=row_ok[:, None], other=0.0)
            g = tl.load(g_ptrs)
        else:
            k_ok = (k0 + offs_k) < K
            a = tl.load(a_ptrs, mask=row_ok[:, None] & k_ok[None, :], other=0.0)
            g = tl.load(g_ptrs, mask=k_ok[:, None], other=0.0)
        acc = tl.dot(a, g, acc)
        if GATED:
            if EVEN_K:
                u = tl.load(u_ptrs)
            else:
                u = tl.load(u_ptrs, mask=k_ok[:, None], other=0.0)
            acc_u = tl.dot(a, u, acc_u)
            u_ptrs += BLOCK_K * stride_wk
        a_ptrs += BLOCK_K * stride_ak
        g_ptrs += BLOCK_K * stride_wk
    if GATED:
        acc = act_mul(acc, acc_u, ACT)
    if MUL_W:
        acc = acc * tl.load(rw_ptr + idx, mask=row_ok, other=0.0).to(tl.float32)[:, None]
    c_ptrs = c_ptr + idx[:, None] * stride_cm + offs_n[None, :] * stride_cn
    tl.store(c_ptrs, acc.to(c_ptr.dtype.element_ty), mask=row_ok[:, None] & n_ok[None, :])


@triton.jit
def grouped_mm_kernel(a_ptr, b_ptr, c_ptr, offs_ptr, G, N, K,
                      stride_am, stride_ak, stride_bg, stride_bk, stride_bn, stride_cm, stride_cn,
                      BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                      BLOCK_G: tl.constexpr):
    # Grid axis 0: cdiv(M, BLOCK_M) + G row tiles (each group adds at most one ragged tile);
    # program -> (group, tile of that group) from the groups' tile counts; the rest exit.
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    offs_g = tl.arange(0, BLOCK_G)
    g_ok = offs_g < G
    ends = tl.load(offs_ptr + offs_g, mask=g_ok, other=0).to(tl.int32)
    prev = tl.load(offs_ptr + offs_g - 1, mask=g_ok & (offs_g > 0), other=0).to(tl.int32)
    tiles = tl.where(g_ok, (ends - prev + BLOCK_M - 1) // BLOCK_M, 0)
    cum = tl.cumsum(tiles, 0)
    if pid_m >= tl.sum(tiles, 0):
        return
    g = tl.sum(((cum <= pid_m) & g_ok).to(tl.int32), 0)
    sel = offs_g == g
    g_start = tl.sum(tl.where(sel, prev, 0), 0)
    g_end = tl.sum(tl.where(sel, ends, 0), 0)
    tile = pid_m - tl.sum(tl.where(sel, cum - tiles, 0), 0)
    rows = g_start + tile * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < g_end
    rows_c = tl.where(row_ok, rows, 0).to(tl.int64)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = offs_n < N
    offs_k = tl.arange(0, BLOCK_K)
    a_ptrs = a_ptr + rows_c[:, None] * stride_am + offs_k[None, :] * stride_ak
    b_ptrs = (b_ptr + g.to(tl.int64) * stride_bg + offs_k[:, None] * stride_bk
              + tl.where(n_ok, offs_n, 0)[None, :] * stride_bn)
    acc = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
    for k0 in range(0, K, BLOCK_K):
        k_ok = (k0 + offs_k) < K
        a = tl.load(a_ptrs, mask=row_ok[:, None] & k_ok[None, :], other=0.0)
        b = tl.load(b_ptrs, mask=k_ok[:, None], other=0.0)
        acc = tl.dot(a, b, acc)
        a_ptrs += BLOCK_K * stride_ak
        b_ptrs += BLOCK_K * stride_bk
    c_ptrs = c_ptr + rows_c[:, None] * stride_cm + offs_n[None, :] * stride_cn
    tl.store(c_ptrs, acc.to(c_ptr.dtype.element_ty), mask=row_ok[:, None] & n_ok[None, :])


@triton.jit
def moe_sum_kernel(y_ptr, w_ptr, out_ptr, H, stride_yt, stride_yk, stride_ot,
                   TOPK: tl.constexpr, HAS_W: tl.constexpr, BLOCK_H: tl.constexpr):
    t = tl.program_id(0).to(tl.int64)
    offs = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    ok = offs < H
    acc = tl.zeros([BLOCK_H], tl.float32)
    for j in tl.static_range(TOPK):
        y = tl.load(y_ptr + t * stride_yt + j * stride_yk + offs, mask=ok, other=0.0).to(tl.float32)
        if HAS_W:
            y = y * tl.load(w_ptr + t * TOPK + j).to(tl.float32)
        acc += y
    tl.store(out_ptr + t * stride_ot + offs, acc.to(out_ptr.dtype.element_ty), mask=ok)


@triton.jit
def index_add_rows_kernel(acc_ptr, idx_ptr, src_ptr, n_rows, H, stride_acc, stride_src, alpha,
                          BLOCK_H: tl.constexpr):
    # acc[idx[i]] += alpha * src[i] (fp32 atomics): the combine of a per-expert loop written
    # with index_add_ (tokens routed to several experts land on one row). An index outside
    # [0, n_rows) is dropped, never written out of bounds.
    i = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    ok = cols < H
    row = tl.load(idx_ptr + i).to(tl.int64)
    ok = ok & (row >= 0) & (row < n_rows)
    v = tl.load(src_ptr + i * stride_src + cols, mask=ok, other=0.0).to(tl.float32) * alpha
    tl.atomic_add(acc_ptr + row * stride_acc + cols, v, mask=ok, sem="relaxed")
