"""Length-balanced decode: one persistent launch, the work cut by keys, not by sequences.

The split-KV kernel (``decode.py``) gives every sequence the same number of splits, fixed when
a CUDA graph is captured (from the batch alone).  With the context lengths of real serving
(32 to thousands of keys in one batch) the longest sequences' programs then set the step's
time while most SMs idle: in a mixed workload on an H200 our decode attention took 1.6x
FA3's, where at uniform lengths it matches it (docs/design/paged_attention.md).

Here every program first reads the step's context lengths (on the device: the step's values,
also inside a CUDA graph) and cuts the work into *items* of at most ``chunk`` KV tiles of one
(sequence, KV head), ``chunk`` chosen so that the items fill the launch's programs: at least
``max(ceil(longest / SPLITS_CAP), ceil(total tiles x KV heads / programs))``, and, where the
(sequence, KV head) pairs fit the programs at all, the smallest that fits them in one round
(a bisection: each sequence's last item is partial).  Items are
numbered sequence by sequence; program ``p`` takes items ``p, p + P, ...``.  A sequence cut in
one item writes its output directly; one cut in several writes partials, and the program that
finishes its last item (an atomic counter per (sequence, KV head), reset by that program)
combines them: no second launch.  At uniform lengths the cut is at least as even as the split
kernel's (batch 8 x 2k keys, 8 KV heads: 9 tiles a program in one round, against 7-tile
splits in two rounds).
"""
from __future__ import annotations

import triton
import triton.language as tl

from .._pdl import pdl_wait
from ._common import attend_keys, finish_rows


CUT_SEARCH_STEPS = tl.constexpr(10)  # bisection steps for the cut (exact up to 1024 tiles of difference)


@triton.jit
def paged_attn_decode_balanced_kernel(
        out_ptr, part_o_ptr, part_m_ptr, part_l_ptr, count_ptr,
        q_ptr, k_ptr, v_ptr, sinks_ptr, block_table_ptr, seq_lens_ptr, cu_q_ptr,
        scale, softcap, num_seqs,
        stride_qt, stride_qh, stride_ot, stride_oh, stride_bt,
        sk0, sk1, sk2, sk3, sv0, sv1, sv2, sv3,
        NUM_KV_HEADS: tl.constexpr, GROUP: tl.constexpr, BLOCK_G: tl.constexpr,
        HEAD: tl.constexpr, HEAD_PAD: tl.constexpr, BLOCK_SIZE: tl.constexpr, TILE_N: tl.constexpr,
        WINDOW: tl.constexpr, USE_SOFTCAP: tl.constexpr, USE_SINKS: tl.constexpr,
        SPLITS_CAP: tl.constexpr, SEQS_PAD: tl.constexpr, USE_PDL: tl.constexpr):
    pid = tl.program_id(0)
    nprog = tl.num_programs(0)
    if USE_PDL:
        pid += pdl_wait()
    # the step's cut, the same in every program
    offs_s = tl.arange(0, SEQS_PAD)
    s_ok = offs_s < num_seqs
    lens = tl.load(seq_lens_ptr + offs_s, mask=s_ok, other=0)
    q_lens = tl.load(cu_q_ptr + offs_s + 1, mask=s_ok, other=0) - tl.load(cu_q_ptr + offs_s, mask=s_ok, other=0)
    keys = lens
    if WINDOW > 0:
        keys = tl.minimum(lens, WINDOW)
    # no query (graph padding): no work; a query with no key still gets its (zero) row written
    tiles = tl.where(q_lens > 0, tl.maximum((keys + TILE_N - 1) // TILE_N, 1), 0)
    longest = tl.max(tiles, 0)
    chunk = tl.maximum(tl.maximum((longest + SPLITS_CAP - 1) // SPLITS_CAP,
                                  (tl.sum(tiles, 0) * NUM_KV_HEADS + nprog - 1) // nprog), 1)
    if tl.sum((tiles > 0).to(tl.int32), 0) * NUM_KV_HEADS <= nprog:
        # every item fits one round of the programs at some chunk <= longest: take the smallest
        # (each sequence's last item is partial, so the ideal chunk above can need two rounds)
        hi = tl.maximum(longest, chunk)
        for _ in tl.static_range(CUT_SEARCH_STEPS):
            mid = (chunk + hi) // 2
            fits = tl.sum((tiles + mid - 1) // mid, 0) * NUM_KV_HEADS <= nprog
            hi = tl.where(fits, mid, hi)
            chunk = tl.where(fits, chunk, mid + 1)
        chunk = hi  # fits; the smallest that does unless longest - chunk > 2**CUT_SEARCH_STEPS
    splits = (tiles + chunk - 1) // chunk
    items = splits * NUM_KV_HEADS
    ends = tl.cumsum(items, 0)  # items of sequences 0..s
    n_items = tl.sum(items, 0)

    offs_g = tl.arange(0, BLOCK_G)
    offs_d = tl.arange(0, HEAD_PAD)
    offs_n = tl.arange(0, TILE_N)
    offs_c = tl.arange(0, SPLITS_CAP)
    g_mask = offs_g < GROUP
    d_mask = offs_d < HEAD
    for item in range(pid, n_items, nprog):
        seq = tl.sum((ends <= item).to(tl.int32), 0)
        r = item - tl.sum(tl.where(offs_s < seq, items, 0), 0)
        n_split = tl.sum(tl.where(offs_s == seq, splits, 0), 0)
        split = r // NUM_KV_HEADS
        kvh = r % NUM_KV_HEADS
        token = tl.load(cu_q_ptr + seq + 1) - 1  # the sequence's last query token
        seq_len = tl.load(seq_lens_ptr + seq)
        lo = 0
        if WINDOW > 0:
            lo = tl.maximum(seq_len - WINDOW, 0)
        t0 = split * chunk
        t1 = tl.minimum(t0 + chunk, tl.cdiv(seq_len - lo, TILE_N))
        heads = kvh * GROUP + offs_g
        q = tl.load(q_ptr + token.to(tl.int64) * stride_qt + heads[:, None] * stride_qh + offs_d[None, :],
                    mask=g_mask[:, None] & d_mask[None, :], other=0.0)
        m_i = tl.full([BLOCK_G], float("-inf"), tl.float32)
        l_i = tl.zeros([BLOCK_G], tl.float32)
        acc = tl.zeros([BLOCK_G, HEAD_PAD], tl.float32)
        m_i, l_i, acc = attend_keys(q, m_i, l_i, acc, t0, t1, lo, seq_len, k_ptr, v_ptr,
                                    block_table_ptr + seq.to(tl.int64) * stride_bt, kvh, offs_n, offs_d, d_mask,
                                    scale, softcap, sk0, sk1, sk2, sk3, sv0, sv1, sv2, sv3,
                                    BLOCK_SIZE, TILE_N, USE_SOFTCAP)
        if n_split == 1:
            finish_rows(out_ptr, token, heads, offs_d, g_mask, d_mask, m_i, l_i, acc, sinks_ptr, stride_ot, stride_oh,
                        USE_SINKS)
        else:
            rows = (seq.to(tl.int64) * NUM_KV_HEADS * GROUP + heads) * SPLITS_CAP
            tl.store(part_m_ptr + rows + split, m_i, mask=g_mask)
            tl.store(part_l_ptr + rows + split, l_i, mask=g_mask)
            tl.store(part_o_ptr + (rows + split)[:, None] * HEAD_PAD + offs_d[None, :], acc, mask=g_mask[:, None])
            # every thread's partial is written before the count says so (release); the last
            # item's program then reads all partials past the non-coherent L1 (.cg)
            tl.debug_barrier()
            counter = count_ptr + seq * NUM_KV_HEADS + kvh
            done = tl.atomic_add(counter, 1, sem="acq_rel", scope="gpu")
            if done == n_split - 1:
                tl.store(counter, 0)  # ready for the next launch (CUDA-graph replays included)
                c_mask = g_mask[:, None] & (offs_c[None, :] < n_split)
                pm = tl.load(part_m_ptr + rows[:, None] + offs_c[None, :], mask=c_mask, other=float("-inf"),
                             cache_modifier=".cg")
                pl = tl.load(part_l_ptr + rows[:, None] + offs_c[None, :], mask=c_mask, other=0.0,
                             cache_modifier=".cg")
                m_all = tl.max(pm, 1)
                m_safe = tl.where(m_all == float("-inf"), 0.0, m_all)
                w = tl.exp2(pm - m_safe[:, None])  # 0 for empty or absent splits
                o = tl.zeros([BLOCK_G, HEAD_PAD], tl.float32)
                for j in range(0, n_split):
                    wj = tl.sum(tl.where(offs_c[None, :] == j, w, 0.0), 1)
                    oj = tl.load(part_o_ptr + (rows + j)[:, None] * HEAD_PAD + offs_d[None, :],
                                 mask=g_mask[:, None], other=0.0, cache_modifier=".cg")
                    o += oj * wj[:, None]
                finish_rows(out_ptr, token, heads, offs_d, g_mask, d_mask, m_all, tl.sum(pl * w, 1), o, sinks_ptr,
                            stride_ot, stride_oh, USE_SINKS)
