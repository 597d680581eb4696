"""Prefill / chunked-prefill kernel (any query lengths, cached prefix, decode rows mixed in).

Grid (num_q_blocks, num_kv_heads), ``num_q_blocks = num_tokens // BLOCK_Q + num_seqs`` (an upper
bound: a program past its sequence's queries exits).  A program's ``BLOCK_M`` rows are
``BLOCK_Q`` query tokens x the ``GROUP`` query heads of one KV head (row ``m``: token
``m // GROUP``, head ``m % GROUP``), so each K/V tile is loaded once for the whole group and the
tile feeds ``tl.dot`` with a Hopper-sized M.  The KV loop is cut in three: tiles every row sees in
full run without masks; only the window edge and the causal diagonal pay for them.
"""
from __future__ import annotations

import triton
import triton.language as tl

from .._pdl import pdl_wait
from ._common import LOG2E, add_sink, load_kv_tile, scores, softmax_update


@triton.jit
def _find_seq(cu_q_ptr, q_block, num_seqs, BLOCK_Q: tl.constexpr):
    """The sequence whose q-blocks contain ``q_block`` (block ``i`` of sequence ``s`` is
    ``cu_q[s] // BLOCK_Q + s + i``): binary search over ``cu_q``."""
    left = 0
    right = num_seqs
    while left < right:
        mid = (left + right) // 2
        start = tl.load(cu_q_ptr + mid) // BLOCK_Q + mid
        if start <= q_block:
            left = mid + 1
        else:
            right = mid
    return left - 1


@triton.jit
def _tile(q, m_i, l_i, acc, t, lo, q_abs, seq_len, k_ptr, v_ptr, bt_row, kvh, offs_n, offs_d, d_mask,
          scale, softcap, sk0, sk1, sk2, sk3, sv0, sv1, sv2, sv3,
          BLOCK_SIZE: tl.constexpr, TILE_N: tl.constexpr, WINDOW: tl.constexpr, CAUSAL: tl.constexpr,
          USE_SOFTCAP: tl.constexpr, MASKED: tl.constexpr):
    pos = lo + t * TILE_N + offs_n
    if MASKED:
        valid = pos < seq_len
    else:
        valid = offs_n < TILE_N  # all true: the caller proved the tile in range for every row
    kt, v = load_kv_tile(k_ptr, v_ptr, bt_row, pos, valid, kvh, offs_d, d_mask,
                         sk0, sk1, sk2, sk3, sv0, sv1, sv2, sv3, BLOCK_SIZE)
    s, c = scores(q, kt, scale, softcap, USE_SOFTCAP)
    if MASKED:
        keep = valid[None, :]
        if CAUSAL:
            keep = keep & (pos[None, :] <= q_abs[:, None])
        if WINDOW > 0:
            keep = keep & (q_abs[:, None] - pos[None, :] < WINDOW)
        s = tl.where(keep, s, float("-inf"))
    m_i, l_i, acc, p = softmax_update(s, c, m_i, l_i, acc)
    acc = tl.dot(p.to(v.dtype), v, acc)
    return m_i, l_i, acc


@triton.jit(do_not_specialize=["num_seqs"])  # a count that changes every step: one compile
def paged_attn_prefill_kernel(
        out_ptr, q_ptr, k_ptr, v_ptr, sinks_ptr, block_table_ptr, seq_lens_ptr, cu_q_ptr,
        scale, softcap, num_seqs,
        stride_qt, stride_qh, stride_ot, stride_oh, stride_bt,
        sk0, sk1, sk2, sk3, sv0, sv1, sv2, sv3,
        GROUP: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_Q: tl.constexpr,
        HEAD: tl.constexpr, HEAD_PAD: tl.constexpr, BLOCK_SIZE: tl.constexpr, TILE_N: tl.constexpr,
        WINDOW: tl.constexpr, CAUSAL: tl.constexpr, USE_SOFTCAP: tl.constexpr, USE_SINKS: tl.constexpr,
        USE_PDL: tl.constexpr):
    # causal: the last q-blocks see the most keys; run them first (programs start in id order),
    # so the grid's tail is short programs, not long ones
    q_block = tl.num_programs(0) - 1 - tl.program_id(0) if CAUSAL else tl.program_id(0)
    kvh = tl.program_id(1)
    if USE_PDL:
        q_block += pdl_wait()
    seq = _find_seq(cu_q_ptr, q_block, num_seqs, BLOCK_Q)
    q_start = tl.load(cu_q_ptr + seq)
    q_len = tl.load(cu_q_ptr + seq + 1) - q_start
    q_first = (q_block - (q_start // BLOCK_Q + seq)) * BLOCK_Q
    if q_first < q_len:
        seq_len = tl.load(seq_lens_ptr + seq)
        ctx = seq_len - q_len  # cached prefix before this step's queries
        q_last = tl.minimum(q_first + BLOCK_Q, q_len) - 1

        offs_m = tl.arange(0, BLOCK_M)
        offs_d = tl.arange(0, HEAD_PAD)
        offs_n = tl.arange(0, TILE_N)
        tok = q_first + offs_m // GROUP
        heads = kvh * GROUP + offs_m % GROUP
        row_ok = (offs_m < BLOCK_Q * GROUP) & (tok < q_len)
        d_mask = offs_d < HEAD
        q_rows = (q_start + tok).to(tl.int64)
        q = tl.load(q_ptr + q_rows[:, None] * stride_qt + heads[:, None] * stride_qh + offs_d[None, :],
                    mask=row_ok[:, None] & d_mask[None, :], other=0.0)
        q_abs = ctx + tok
        bt_row = block_table_ptr + seq.to(tl.int64) * stride_bt

        # key range of the block, and the part of it every row sees in full
        if CAUSAL:
            hi = ctx + q_last + 1
            full_hi = ctx + q_first + 1  # keys < full_hi: below every row's diagonal
        else:
            hi = seq_len
            full_hi = seq_len
        lo = 0
        full_lo = 0
        if WINDOW > 0:
            lo = tl.maximum(ctx + q_first - WINDOW + 1, 0)
            full_lo = tl.maximum(ctx + q_last - WINDOW + 1, 0)
        n_tiles = tl.cdiv(hi - lo, TILE_N)
        t_a = tl.minimum(tl.cdiv(full_lo - lo, TILE_N), n_tiles)
        t_b = tl.minimum(tl.maximum((full_hi - lo) // TILE_N, t_a), n_tiles)

        m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
        l_i = tl.zeros([BLOCK_M], tl.float32)
        acc = tl.zeros([BLOCK_M, HEAD_PAD], tl.float32)
        for t in range(0, t_a):
            m_i, l_i, acc = _tile(q, m_i, l_i, acc, t, lo, q_abs, seq_len, k_ptr, v_ptr, bt_row, kvh, offs_n,
                                  offs_d, d_mask, scale, softcap, sk0, sk1, sk2, sk3, sv0, sv1, sv2, sv3,
                                  BLOCK_SIZE, TILE_N, WINDOW, CAUSAL, USE_SOFTCAP, True)
        for t in range(t_a, t_b):
            m_i, l_i, acc = _tile(q, m_i, l_i, acc, t, lo, q_abs, seq_len, k_ptr, v_ptr, bt_row, kvh, offs_n,
                                  offs_d, d_mask, scale, softcap, sk0, sk1, sk2, sk3, sv0, sv1, sv2, sv3,
                                  BLOCK_SIZE, TILE_N, WINDOW, CAUSAL, USE_SOFTCAP, False)
        for t in range(t_b, n_tiles):
            m_i, l_i, acc = _tile(q, m_i, l_i, acc, t, lo, q_abs, seq_len, k_ptr, v_ptr, bt_row, kvh, offs_n,
                                  offs_d, d_mask, scale, softcap, sk0, sk1, sk2, sk3, sv0, sv1, sv2, sv3,
                                  BLOCK_SIZE, TILE_N, WINDOW, CAUSAL, USE_SOFTCAP, True)

        if USE_SINKS:
            sink = tl.load(sinks_ptr + heads, mask=row_ok, other=float("-inf")).to(tl.float32) * LOG2E
            m_i, l_i, acc = add_sink(m_i, l_i, acc, sink)
        l_safe = tl.where(l_i == 0.0, 1.0, l_i)
        o = acc / l_safe[:, None]
        tl.store(out_ptr + q_rows[:, None] * stride_ot + heads[:, None] * stride_oh + offs_d[None, :],
                 o.to(out_ptr.dtype.element_ty), mask=row_ok[:, None] & d_mask[None, :])
