"""Device helpers the paged-attention kernels share: paged K/V tile loads, scores, online softmax.

Scores are kept in log2 units (``qk * scale * log2(e)``) so the softmax uses ``exp2``; partial
maxima written for the split-KV reduce are in the same units.  Softmax state is fp32 whatever
the input dtype.
"""
from __future__ import annotations

import triton
import triton.language as tl

LOG2E = tl.constexpr(1.4426950408889634)  # a constexpr: jit code may read it


@triton.jit
def load_kv_tile(k_ptr, v_ptr, bt_row_ptr, pos, valid, kvh, offs_d, d_mask,
                 sk0, sk1, sk2, sk3, sv0, sv1, sv2, sv3, BLOCK_SIZE: tl.constexpr):
    """K^T (HEAD_PAD, TILE_N) and V (TILE_N, HEAD_PAD) for key positions ``pos`` of one sequence.

    Each position looks its physical block up in the sequence's block-table row, so a tile may
    span blocks (any block size) and the blocks may be anywhere in the cache; positions not
    ``valid`` read nothing (their table entries may be holes)."""
    blk = tl.load(bt_row_ptr + pos // BLOCK_SIZE, mask=valid, other=0).to(tl.int64)
    slot = (pos % BLOCK_SIZE).to(tl.int64)
    kt = tl.load(k_ptr + blk[None, :] * sk0 + slot[None, :] * sk1 + kvh * sk2 + offs_d[:, None] * sk3,
                 mask=d_mask[:, None] & valid[None, :], other=0.0)
    v = tl.load(v_ptr + blk[:, None] * sv0 + slot[:, None] * sv1 + kvh * sv2 + offs_d[None, :] * sv3,
                mask=valid[:, None] & d_mask[None, :], other=0.0)
    return kt, v


@triton.jit
def scores(q, kt, scale, softcap, USE_SOFTCAP: tl.constexpr):
    """``(s, c)``: scores in log2 units are ``s * c``.  Without soft-capping ``s`` is the raw
    ``q @ kt`` and ``c = scale * log2(e)``, so :func:`softmax_update` applies the scale inside
    the exponent's FMA (one op per score, not two); soft-capped scores
    (``softcap * tanh(s * scale / softcap)``) come scaled, ``c = 1``."""
    s = tl.dot(q, kt)
    if USE_SOFTCAP:
        x = s * (scale / softcap)
        # tanh(x) = 1 - 2 / (exp(2x) + 1): saturates to +-1 without overflow trouble
        t = 1.0 - 2.0 / (tl.exp2(x * (2.0 * LOG2E)) + 1.0)
        return t * (softcap * LOG2E), 1.0
    return s, scale * LOG2E


@triton.jit
def softmax_update(s, c, m_i, l_i, acc):
    """One online-softmax step over a tile of (masked: -inf) scores ``s`` in units of ``1/c``
    log2 (``c > 0``): new max, sum, rescaled accumulator and the tile's probabilities.  A row
    with no key seen yet keeps max -inf and contributes nothing (no inf - inf)."""
    m_new = tl.maximum(m_i, tl.max(s, 1) * c)
    m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
    alpha = tl.exp2(m_i - m_safe)
    p = tl.exp2(s * c - m_safe[:, None])
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = acc * alpha[:, None]
    return m_new, l_i, acc, p


@triton.jit
def attend_keys(q, m_i, l_i, acc, t0, t1, lo, seq_len, k_ptr, v_ptr, bt_row_ptr, kvh, offs_n, offs_d, d_mask,
                scale, softcap, sk0, sk1, sk2, sk3, sv0, sv1, sv2, sv3,
                BLOCK_SIZE: tl.constexpr, TILE_N: tl.constexpr, USE_SOFTCAP: tl.constexpr):
    """The decode kernels' loop: KV tiles ``t0 .. t1 - 1`` (keys from ``lo``) folded into one
    group's softmax state, keys at or past ``seq_len`` masked."""
    for t in range(t0, t1):
        pos = lo + t * TILE_N + offs_n
        valid = pos < seq_len
        kt, v = load_kv_tile(k_ptr, v_ptr, bt_row_ptr, pos, valid, kvh, offs_d, d_mask,
                             sk0, sk1, sk2, sk3, sv0, sv1, sv2, sv3, BLOCK_SIZE)
        s, c = scores(q, kt, scale, softcap, USE_SOFTCAP)
        s = tl.where(valid[None, :], s, float("-inf"))
        m_i, l_i, acc, p = softmax_update(s, c, m_i, l_i, acc)
        acc = tl.dot(p.to(v.dtype), v, acc)
    return m_i, l_i, acc


@triton.jit
def add_sink(m_i, l_i, acc, sink_log2):
    """Fold a per-head sink logit (an extra key with no value) into the softmax state."""
    m_new = tl.maximum(m_i, sink_log2)
    m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
    alpha = tl.exp2(m_i - m_safe)
    l_i = l_i * alpha + tl.exp2(sink_log2 - m_safe)
    acc = acc * alpha[:, None]
    return m_new, l_i, acc


@triton.jit
def finish_rows(out_ptr, token, heads, offs_d, g_mask, d_mask, m_i, l_i, acc, sinks_ptr, stride_ot, stride_oh,
                USE_SINKS: tl.constexpr):
    """Normalise one group's softmax state (a sink folded in first) and store its rows of
    ``token``."""
    if USE_SINKS:
        sink = tl.load(sinks_ptr + heads, mask=g_mask, other=float("-inf")).to(tl.float32) * LOG2E
        m_i, l_i, acc = add_sink(m_i, l_i, acc, sink)
    l_safe = tl.where(l_i == 0.0, 1.0, l_i)
    tl.store(out_ptr + token.to(tl.int64) * stride_ot + heads[:, None] * stride_oh + offs_d[None, :],
             (acc / l_safe[:, None]).to(out_ptr.dtype.element_ty), mask=g_mask[:, None] & d_mask[None, :])
