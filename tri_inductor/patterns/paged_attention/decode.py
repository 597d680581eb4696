"""Decode kernels (one query token per sequence): split-KV attention and the split reduce.

``paged_attn_decode_kernel``: grid (num_seqs, num_kv_heads, num_splits).  One program takes one
KV head of one sequence and every query head of its group (rows of a ``BLOCK_G`` tile), so each
K/V tile is loaded once per group; its split is a contiguous run of KV tiles.  ``num_splits`` is
the most a sequence may use: each sequence uses ``used_splits`` of them, from its own length on
the device (at least ``MIN_TILES`` tiles a split), and the programs past that exit at once.  A
sequence in one split gets its output written directly; in several, each writes an unnormalised
partial (accumulator, running max and sum, log2 units) and ``paged_attn_reduce_kernel`` combines
the used ones with log-sum-exp weights.  The split count is a launch parameter only, so a CUDA
graph captured with one split count is correct for any context length, and in a batch of mixed
lengths the short sequences take one program while the long ones are cut. ``BALANCED`` (split
policy ``balanced``) also spreads the step's work evenly: each sequence's count follows its share
of the batch's tiles (``balanced_splits``), under a split bound raised past what fills the device.
"""
from __future__ import annotations

import triton
import triton.language as tl

from .._pdl import pdl_wait
from ._common import LOG2E, attend_keys, finish_rows


@triton.jit
def used_splits(seq_len, num_splits, WINDOW: tl.constexpr, TILE_N: tl.constexpr, MIN_TILES: tl.constexpr):
    """``(splits, lo, n_tiles)`` of one sequence: its key range starts at ``lo`` (a window's first
    key) and spans ``n_tiles`` tiles, cut in at most ``num_splits`` runs of at least ``MIN_TILES``
    tiles (one for a sequence with no key: its zero row is still written)."""
    lo = 0
    if WINDOW > 0:
        lo = tl.maximum(seq_len - WINDOW, 0)
    n_tiles = tl.cdiv(seq_len - lo, TILE_N)
    return tl.minimum(num_splits, tl.maximum(tl.cdiv(n_tiles, MIN_TILES), 1)), lo, n_tiles


@triton.jit
def balanced_splits(splits, n_tiles, seq_lens_ptr, num_seqs, wave, NUM_KV_HEADS: tl.constexpr,
                    WINDOW: tl.constexpr, TILE_N: tl.constexpr, MIN_TILES: tl.constexpr):
    """``splits`` (:func:`used_splits`) cut down to what the step's load balance asks: the
    batch's tiles x KV heads spread over ``wave`` working programs give each program about
    ``target`` tiles, so a sequence gets ``ceil(n_tiles / target)`` splits. Short sequences keep
    one program, long ones of a batch of mixed lengths get several; every program (and the
    reduce) reads the same ``seq_lens``, so they agree without a host value (graph-safe)."""
    total = 0
    for i in range(0, num_seqs, 256):
        offs = i + tl.arange(0, 256)
        lens = tl.load(seq_lens_ptr + offs, mask=offs < num_seqs, other=0)
        if WINDOW > 0:
            lens = tl.minimum(lens, WINDOW)
        total += tl.sum(tl.cdiv(lens, TILE_N))
    target = tl.maximum(tl.cdiv(total * NUM_KV_HEADS, wave), MIN_TILES)
    return tl.minimum(splits, tl.maximum(tl.cdiv(n_tiles, target), 1))


@triton.jit(do_not_specialize=["num_splits", "wave"])  # per batch size: one compile for all
def paged_attn_decode_kernel(
        out_ptr, part_o_ptr, part_m_ptr, part_l_ptr,
        q_ptr, k_ptr, v_ptr, sinks_ptr, block_table_ptr, seq_lens_ptr, cu_q_ptr,
        scale, softcap, num_splits, wave,
        stride_qt, stride_qh, stride_ot, stride_oh, stride_bt,
        sk0, sk1, sk2, sk3, sv0, sv1, sv2, sv3,
        NUM_Q_HEADS: tl.constexpr, GROUP: tl.constexpr, BLOCK_G: tl.constexpr,
        HEAD: tl.constexpr, HEAD_PAD: tl.constexpr, BLOCK_SIZE: tl.constexpr, TILE_N: tl.constexpr,
        WINDOW: tl.constexpr, USE_SOFTCAP: tl.constexpr, USE_SINKS: tl.constexpr,
        SPLIT: tl.constexpr, SPLITS_PAD: tl.constexpr, MIN_TILES: tl.constexpr, BALANCED: tl.constexpr,
        USE_PDL: tl.constexpr):
    seq = tl.program_id(0)
    kvh = tl.program_id(1)
    split = tl.program_id(2)
    if USE_PDL:
        seq += pdl_wait()
    q_start = tl.load(cu_q_ptr + seq)
    q_len = tl.load(cu_q_ptr + seq + 1) - q_start
    seq_len = tl.load(seq_lens_ptr + seq)
    splits, lo, n_tiles = used_splits(seq_len, num_splits, WINDOW, TILE_N, MIN_TILES)
    if BALANCED and split < splits and splits > 1:  # a program that exits or runs alone needs no total
        splits = balanced_splits(splits, n_tiles, seq_lens_ptr, tl.num_programs(0), wave, NUM_Q_HEADS // GROUP,
                                 WINDOW, TILE_N, MIN_TILES)
    if q_len > 0 and split < splits:
        token = q_start + q_len - 1  # the sequence's last query token (its only one in decode)
        per_split = tl.cdiv(n_tiles, splits)
        t0 = split * per_split
        t1 = tl.minimum(t0 + per_split, n_tiles)

        offs_g = tl.arange(0, BLOCK_G)
        offs_d = tl.arange(0, HEAD_PAD)
        offs_n = tl.arange(0, TILE_N)
        g_mask = offs_g < GROUP
        d_mask = offs_d < HEAD
        heads = kvh * GROUP + offs_g
        q = tl.load(q_ptr + token.to(tl.int64) * stride_qt + heads[:, None] * stride_qh + offs_d[None, :],
                    mask=g_mask[:, None] & d_mask[None, :], other=0.0)
        bt_row = block_table_ptr + seq.to(tl.int64) * stride_bt

        m_i = tl.full([BLOCK_G], float("-inf"), tl.float32)
        l_i = tl.zeros([BLOCK_G], tl.float32)
        acc = tl.zeros([BLOCK_G, HEAD_PAD], tl.float32)
        m_i, l_i, acc = attend_keys(q, m_i, l_i, acc, t0, t1, lo, seq_len, k_ptr, v_ptr, bt_row, kvh, offs_n,
                                    offs_d, d_mask, scale, softcap, sk0, sk1, sk2, sk3, sv0, sv1, sv2, sv3,
                                    BLOCK_SIZE, TILE_N, USE_SOFTCAP)

        if SPLIT and splits > 1:
            # partials of the used splits, an empty one too (max -inf, sum 0); rows by sequence
            # (decode: one token each), so the buffer's size needs no device value
            row = (seq.to(tl.int64) * NUM_Q_HEADS + heads) * SPLITS_PAD + split
            tl.store(part_m_ptr + row, m_i, mask=g_mask)
            tl.store(part_l_ptr + row, l_i, mask=g_mask)
            tl.store(part_o_ptr + row[:, None] * HEAD_PAD + offs_d[None, :], acc, mask=g_mask[:, None])
        else:
            finish_rows(out_ptr, token, heads, offs_d, g_mask, d_mask, m_i, l_i, acc, sinks_ptr, stride_ot, stride_oh,
                        USE_SINKS)


@triton.jit(do_not_specialize=["num_splits", "wave"])  # per batch size: one compile for all
def paged_attn_reduce_kernel(
        out_ptr, part_o_ptr, part_m_ptr, part_l_ptr, sinks_ptr, seq_lens_ptr, cu_q_ptr,
        num_splits, wave, stride_ot, stride_oh,
        NUM_Q_HEADS: tl.constexpr, NUM_KV_HEADS: tl.constexpr, HEAD: tl.constexpr, HEAD_PAD: tl.constexpr,
        SPLITS_PAD: tl.constexpr, WINDOW: tl.constexpr, TILE_N: tl.constexpr, MIN_TILES: tl.constexpr,
        BALANCED: tl.constexpr, USE_SINKS: tl.constexpr, USE_PDL: tl.constexpr):
    """grid (num_seqs, NUM_Q_HEADS): combine one head's used split partials (log-sum-exp
    weights); a sequence in one split was written by the decode kernel."""
    seq = tl.program_id(0)
    head = tl.program_id(1)
    if USE_PDL:
        seq += pdl_wait()
    q_start = tl.load(cu_q_ptr + seq)
    q_len = tl.load(cu_q_ptr + seq + 1) - q_start
    splits, lo, n_tiles = used_splits(tl.load(seq_lens_ptr + seq), num_splits, WINDOW, TILE_N, MIN_TILES)
    if BALANCED and splits > 1:  # the decode programs' count, from the same seq_lens
        splits = balanced_splits(splits, n_tiles, seq_lens_ptr, tl.num_programs(0), wave, NUM_KV_HEADS,
                                 WINDOW, TILE_N, MIN_TILES)
    if q_len > 0 and splits > 1:
        token = q_start + q_len - 1
        offs_s = tl.arange(0, SPLITS_PAD)
        offs_d = tl.arange(0, HEAD_PAD)
        s_mask = offs_s < splits
        row = (seq.to(tl.int64) * NUM_Q_HEADS + head) * SPLITS_PAD + offs_s
        m = tl.load(part_m_ptr + row, mask=s_mask, other=float("-inf"))
        l = tl.load(part_l_ptr + row, mask=s_mask, other=0.0)
        m_max = tl.max(m, 0)
        if USE_SINKS:
            sink = tl.load(sinks_ptr + head).to(tl.float32) * LOG2E
            m_max = tl.maximum(m_max, sink)
        m_safe = tl.where(m_max == float("-inf"), 0.0, m_max)
        w = tl.exp2(m - m_safe)  # 0 for empty splits
        o = tl.load(part_o_ptr + row[:, None] * HEAD_PAD + offs_d[None, :], mask=s_mask[:, None], other=0.0)
        acc = tl.sum(o * w[:, None], 0)
        denom = tl.sum(l * w, 0)
        if USE_SINKS:
            denom += tl.exp2(sink - m_safe)
        denom = tl.where(denom == 0.0, 1.0, denom)
        tl.store(out_ptr + token.to(tl.int64) * stride_ot + head * stride_oh + offs_d,
                 (acc / denom).to(out_ptr.dtype.element_ty), mask=offs_d < HEAD)
