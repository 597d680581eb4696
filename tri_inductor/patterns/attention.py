"""Flash-attention forward in Triton: ``attention(q, k, v, is_causal, scale)``.

Layout: q [B, Hq, Sq, D], k/v [B, Hkv, Skv, D] (any strides), Hq % Hkv == 0.  Output has the
shape [B, Hq, Sq, D] with the storage order of torch's flash backend ([B, Sq, Hq, D] in memory),
so the usual ``out.transpose(1, 2).reshape(B, Sq, Hq * D)`` that follows costs nothing.

Two launch modes (one kernel, ``PACKED`` constexpr):
* prefill (Sq large): one program per (BLOCK_M query rows, batch*query head).  Causal programs
  skip key blocks above the diagonal, and the key loop is split in two: blocks entirely below
  the diagonal and inside Skv run without any masking; only the diagonal / ragged tail blocks
  pay for the masks.
* decode-like (Sq * group small): the query rows of all query heads sharing one KV head are
  packed into one BLOCK_M tile (row r -> head r // Sq, position r % Sq), so each K/V block is
  read once per KV head instead of once per query head (the GQA win IBM measured).
"""
from __future__ import annotations

import math
import operator
from typing import Optional

import torch
import triton
import triton.language as tl
from torch.library import triton_op

from ._launch import launch

aten = torch.ops.aten

_LOG2E = 1.4426950408889634


@triton.jit
def _attn_inner(acc, l_i, m_i, q, k_base, v_base, stride_kn, stride_kd, stride_vn, stride_vd,
                m_row, stride_mk, row_ok, qpos, offs_d, offs_dv, lo, hi, Skv, qk_scale, D, DV,
                causal_offset, window, softcap,
                MASKED: tl.constexpr, IS_CAUSAL: tl.constexpr, WINDOW: tl.constexpr,
                HAS_MASK: tl.constexpr, MASK_BOOL: tl.constexpr, SOFTCAP: tl.constexpr,
                EVEN_D: tl.constexpr, BLOCK_N: tl.constexpr):
    # One pass over key blocks [lo, hi): S = Q K^T (fp32), online softmax in base 2 (the scale
    # is folded with log2(e)), acc += P V with P cast to V's dtype for the tensor-core dot.
    # MASKED: this range holds the Skv tail / causal diagonal / window edge (index checks);
    # HAS_MASK: the user's mask is read on every block (it may hide any key).
    offs_n = tl.arange(0, BLOCK_N)
    dmask = offs_d < D
    dvmask = offs_dv < DV  # V's head dim: q/k's, or its own (MLA: 128 beside q/k's 192)
    for start_n in range(lo, hi, BLOCK_N):
        cols = start_n + offs_n
        kt_ptrs = k_base + cols[None, :] * stride_kn + offs_d[:, None] * stride_kd  # [D, N]
        v_ptrs = v_base + cols[:, None] * stride_vn + offs_dv[None, :] * stride_vd   # [N, DV]
        if MASKED:
            kv_ok = cols < Skv
            kt = tl.load(kt_ptrs, mask=kv_ok[None, :] & dmask[:, None], other=0.0)
            v = tl.load(v_ptrs, mask=kv_ok[:, None] & dvmask[None, :], other=0.0)
        elif EVEN_D:
            kt = tl.load(kt_ptrs)
            v = tl.load(v_ptrs)
        else:
            kt = tl.load(kt_ptrs, mask=dmask[:, None], other=0.0)
            v = tl.load(v_ptrs, mask=dvmask[None, :], other=0.0)
        qk = tl.dot(q, kt)
        if SOFTCAP or HAS_MASK:
            # Natural units first (soft-capping and an additive mask are defined there).
            s = qk * (qk_scale * 0.6931471805599453)
            if SOFTCAP:
                # softcap * tanh(s / softcap), tanh from exp2 (no libdevice: runs in the
                # interpreter too); saturates to +-1 without overflow trouble.
                t = tl.math.exp2(s * (2.8853900817779268 / softcap))
                s = softcap * (1.0 - 2.0 / (t + 1.0))
            if HAS_MASK:
                m_ptrs = m_row[:, None] + cols[None, :] * stride_mk
                if MASKED:
                    mval = tl.load(m_ptrs, mask=row_ok[:, None] & kv_ok[None, :], other=0)
                else:
                    mval = tl.load(m_ptrs, mask=row_ok[:, None], other=0)
                if MASK_BOOL:
                    s = tl.where(mval != 0, s, float("-inf"))
                else:
                    # Clamp so that finfo.min masks stay finite after the log2(e) factor: a
                    # fully masked row then averages its keys, as SDPA does with such masks.
                    s = tl.maximum(s + mval.to(tl.float32), -2.0e38)
            qk = s * 1.4426950408889634
        else:
            qk = qk * qk_scale
        if MASKED:
            ok = kv_ok[None, :]
            if IS_CAUSAL:
                ok = ok & (cols[None, :] <= qpos[:, None] + causal_offset)
            if WINDOW:
                ok = ok & (cols[None, :] > qpos[:, None] + causal_offset - window)
            qk = tl.where(ok, qk, float("-inf"))
        # m_i starts at -inf; a row with nothing visible yet subtracts 0 instead (no inf - inf),
        # so a fully masked row keeps p = 0 and l = 0 (output 0, as SDPA's safe softmax).
        m_new = tl.maximum(m_i, tl.max(qk, 1))
        m_use = tl.where(m_new == float("-inf"), 0.0, m_new)
        alpha = tl.math.exp2(m_i - m_use)
        p = tl.math.exp2(qk - m_use[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None]
        acc = tl.dot(p.to(v.dtype), v, acc)
        m_i = m_new
    return acc, l_i, m_i


@triton.jit
def attention_fwd_kernel(
    Q, K, V, O, M,
    stride_qb, stride_qh, stride_qs, stride_qd,
    stride_kb, stride_kh, stride_ks, stride_kd,
    stride_vb, stride_vh, stride_vs, stride_vd,
    stride_ob, stride_oh, stride_os, stride_od,
    stride_mb, stride_mh, stride_mq, stride_mk,
    Hq, Hkv, Sq, Skv, D, DV, qk_scale, causal_offset, window, softcap,
    IS_CAUSAL: tl.constexpr, WINDOW: tl.constexpr, HAS_MASK: tl.constexpr,
    MASK_BOOL: tl.constexpr, SOFTCAP: tl.constexpr, PACKED: tl.constexpr, EVEN_D: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
):
    # Inductor types a Python float argument as fp64: keep the softmax math in fp32.
    qk_scale = tl.cast(qk_scale, tl.float32)
    softcap = tl.cast(softcap, tl.float32)
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    group = Hq // Hkv
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
    if PACKED:
        # grid axis 1 = batch * kv head; rows of the tile = (query head in group, position).
        b = pid_bh // Hkv
        hkv = pid_bh % Hkv
        hq = hkv * group + offs_m // Sq
        qpos = offs_m % Sq
        row_ok = offs_m < group * Sq
    else:
        b = pid_bh // Hq
        h = pid_bh % Hq
        hkv = h // group
        hq = h + offs_m * 0
        qpos = offs_m
        row_ok = offs_m < Sq
    b64 = b.to(tl.int64)
    q_row = b64 * stride_qb + hq * stride_qh + qpos * stride_qs
    o_row = b64 * stride_ob + hq * stride_oh + qpos * stride_os
    m_row = M + (b64 * stride_mb + hq * stride_mh + qpos.to(tl.int64) * stride_mq)
    dmask = offs_d < D
    q = tl.load(Q + q_row[:, None] + offs_d[None, :] * stride_qd,
                mask=row_ok[:, None] & dmask[None, :], other=0.0)
    k_base = K + (b64 * stride_kb + hkv * stride_kh)
    v_base = V + (b64 * stride_vb + hkv * stride_vh)

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_DV], dtype=tl.float32)

    # Key blocks [lo, hi) are visible to some row of the tile; [lo, lo_full) holds the window's
    # edge, [mid, hi) the causal diagonal and the Skv tail: both checked per element. Blocks in
    # [lo_full, mid) are visible to every row, and need no index checks.
    full_end = (Skv // BLOCK_N) * BLOCK_N
    if PACKED:
        first = causal_offset  # the packed tile mixes positions: rows 0 .. Sq - 1
        last = Sq - 1 + causal_offset
    else:
        first = pid_m * BLOCK_M + causal_offset
        last = pid_m * BLOCK_M + BLOCK_M - 1 + causal_offset
    if IS_CAUSAL:
        hi = tl.maximum(tl.minimum(Skv, last + 1), 0)
        mid = tl.minimum((tl.maximum(first, 0) // BLOCK_N) * BLOCK_N, full_end)
        if PACKED:
            mid = 0
    else:
        hi = Skv
        mid = full_end
    if WINDOW:
        lo = (tl.maximum(first - window + 1, 0) // BLOCK_N) * BLOCK_N
        lo_full = tl.cdiv(tl.maximum(last - window + 1, 0), BLOCK_N) * BLOCK_N
        if PACKED:
            lo_full = hi
        lo_full = tl.minimum(lo_full, hi)
        mid = tl.maximum(mid, lo_full)
        acc, l_i, m_i = _attn_inner(acc, l_i, m_i, q, k_base, v_base, stride_ks, stride_kd,
                                    stride_vs, stride_vd, m_row, stride_mk, row_ok, qpos, offs_d, offs_dv,
                                    lo, lo_full, Skv, qk_scale, D, DV, causal_offset, window, softcap,
                                    True, IS_CAUSAL, WINDOW, HAS_MASK, MASK_BOOL, SOFTCAP, EVEN_D,
                                    BLOCK_N)
    else:
        lo_full = 0
    acc, l_i, m_i = _attn_inner(acc, l_i, m_i, q, k_base, v_base, stride_ks, stride_kd,
                                stride_vs, stride_vd, m_row, stride_mk, row_ok, qpos, offs_d, offs_dv,
                                lo_full, mid, Skv, qk_scale, D, DV, causal_offset, window, softcap,
                                False, IS_CAUSAL, WINDOW, HAS_MASK, MASK_BOOL, SOFTCAP, EVEN_D,
                                BLOCK_N)
    acc, l_i, m_i = _attn_inner(acc, l_i, m_i, q, k_base, v_base, stride_ks, stride_kd,
                                stride_vs, stride_vd, m_row, stride_mk, row_ok, qpos, offs_d, offs_dv,
                                tl.maximum(mid, lo_full), hi, Skv, qk_scale, D, DV, causal_offset,
                                window, softcap, True, IS_CAUSAL, WINDOW, HAS_MASK, MASK_BOOL,
                                SOFTCAP, EVEN_D, BLOCK_N)
    l_i = tl.where(l_i == 0.0, 1.0, l_i)
    out = acc / l_i[:, None]
    tl.store(O + o_row[:, None] + offs_dv[None, :] * stride_od, out.to(O.dtype.element_ty),
             mask=row_ok[:, None] & (offs_dv < DV)[None, :])


# (BLOCK_D, is 4-byte dtype) -> (BLOCK_M, BLOCK_N, num_warps, num_stages) for prefill.
# From a sweep (benchmarks/kernel_bench.py --tune, causal, 32/8 heads; docs/design/kernels.md): 64x64
# tiles with one warpgroup for D=64/128 (more programs in flight, cheaper diagonal blocks than
# 128-row tiles); D=256 128x64 with two warpgroups (Q 64 KB + 2 x (K 32 KB + V 32 KB) of smem).
PREFILL_CONFIGS: dict[tuple[int, bool], tuple[int, int, int, int]] = {
    (16, False): (64, 64, 4, 3),
    (32, False): (64, 64, 4, 3),
    (64, False): (64, 64, 4, 4),
    (128, False): (64, 64, 4, 3),
    (256, False): (128, 64, 8, 2),
    (16, True): (64, 64, 4, 2),
    (32, True): (64, 64, 4, 2),
    (64, True): (64, 64, 4, 2),
    (128, True): (64, 32, 4, 2),
    (256, True): (64, 32, 8, 1),
}
# Decode-like launches (packed query heads): rows are few, keys many.
PACKED_BLOCK_N: dict[int, int] = {16: 64, 32: 64, 64: 64, 128: 64, 256: 32}
MAX_HEAD_DIM = 256  # any D up to this (the tile is D padded to a power of two >= 16): docs/CONTRACTS.md
PACKED_MAX_ROWS = 64  # pack while group * Sq fits one tile of at most this many rows


def _hint(x) -> int:
    if isinstance(x, int):
        return x
    try:
        node = x.node
        return int(node.hint if node.hint is not None else node.shape_env.size_hint(node.expr))
    except Exception:
        return 4096


def _config(Sq: int, group: int, block_d: int, wide: bool):
    """Static config choice (no benchmarking: must be CUDA-graph safe and reproducible)."""
    rows = group * Sq
    if rows <= PACKED_MAX_ROWS and group > 1 or Sq <= 16:
        block_m = max(16, triton.next_power_of_2(rows))
        if block_m <= PACKED_MAX_ROWS:
            warps = 4 if block_d <= 128 else 8
            return True, block_m, PACKED_BLOCK_N[block_d] // (2 if wide else 1), warps, 2
    bm, bn, w, s = PREFILL_CONFIGS[(block_d, wide)]
    return False, bm, bn, w, s


def _mask_strides(mask: torch.Tensor, B, Hq, Sq, Skv) -> tuple:
    """Strides of ``mask`` broadcast to [B, Hq, Sq, Skv] (0 along broadcast dims), as SDPA
    broadcasts attn_mask: a [B, 1, 1, Skv] key-padding mask is read once per key."""
    shape, strides = list(mask.shape), list(mask.stride())
    while len(shape) < 4:
        shape.insert(0, 1)
        strides.insert(0, 0)
    return tuple(0 if isinstance(n, int) and n == 1 else s for n, s in zip(shape, strides))


@triton_op("tri_inductor::attention", mutates_args={})
def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, is_causal: bool,
              scale: float, mask: Optional[torch.Tensor] = None, causal_offset: int = 0,
              window: int = 0, softcap: float = 0.0) -> torch.Tensor:
    """softmax(softcap(q k^T * scale) + mask) v over the visible keys.

    ``mask``: additive (float) or boolean (True = visible), broadcastable to [B, Hq, Sq, Skv].
    ``is_causal``: key j visible to query i iff j <= i + causal_offset (0: SDPA's top-left
    alignment; Skv - Sq: bottom-right, a query block at the end of a cache).
    ``window`` > 0: also j > i + causal_offset - window (sliding window).
    ``softcap`` > 0: logits become softcap * tanh(logits / softcap) before the mask (Gemma 2).
    """
    B, Hq, Sq, D = q.shape
    Hkv, Skv, DV = k.shape[1], k.shape[2], v.shape[-1]  # DV: V's head dim (MLA: other than D)
    # Output stored [B, Sq, Hq, DV] (flash layout), returned as the [B, Hq, Sq, DV] view.
    out = torch.empty((B, Sq, Hq, DV), dtype=q.dtype, device=q.device).transpose(1, 2)
    block_d = max(16, triton.next_power_of_2(int(D)))
    block_dv = max(16, triton.next_power_of_2(int(DV)))
    group = int(Hq) // int(Hkv)
    # Config from Sq's size hint when Sq is symbolic: no guard (no recompiles); every config is
    # correct for every Sq, only speed differs (as linear.py does for M).
    packed, bm, bn, warps, stages = _config(_hint(Sq), group, max(block_d, block_dv), q.element_size() >= 4)
    if packed:
        grid = (triton.cdiv(group * Sq, bm), B * Hkv)
    else:
        grid = (triton.cdiv(Sq, bm), B * Hq)
    if mask is None:
        m, m_strides = q, (0, 0, 0, 0)  # never read (HAS_MASK=False)
    else:
        m, m_strides = mask, _mask_strides(mask, B, Hq, Sq, Skv)
    launch(attention_fwd_kernel, grid, q, k, v, out, m,
           *q.stride(), *k.stride(), *v.stride(), *out.stride(), *m_strides,
           Hq, Hkv, Sq, Skv, D, DV, scale * _LOG2E, causal_offset, window, float(softcap),
           IS_CAUSAL=is_causal, WINDOW=window > 0, HAS_MASK=mask is not None,
           MASK_BOOL=mask is not None and mask.dtype == torch.bool, SOFTCAP=softcap > 0,
           PACKED=packed, EVEN_D=(D == block_d and DV == block_dv),
           BLOCK_M=bm, BLOCK_N=bn, BLOCK_D=block_d, BLOCK_DV=block_dv, num_warps=warps, num_stages=stages)
    return out


def reference_attention(q, k, v, is_causal: bool, scale: float, mask=None, causal_offset: int = 0,
                        window: int = 0, softcap: float = 0.0) -> torch.Tensor:
    """float64 reference of :func:`attention` (rows that see no key give 0, as SDPA does)."""
    q, k, v = (t.double() for t in (q, k, v))
    group = q.shape[1] // k.shape[1]
    k = k.repeat_interleave(group, dim=1)
    v = v.repeat_interleave(group, dim=1)
    s = (q @ k.transpose(-2, -1)) * scale
    if softcap > 0:
        s = softcap * torch.tanh(s / softcap)
    Sq, Skv = q.shape[-2], k.shape[-2]
    i = torch.arange(Sq)[:, None] + causal_offset
    j = torch.arange(Skv)[None, :]
    visible = torch.ones(Sq, Skv, dtype=torch.bool)
    if is_causal:
        visible &= j <= i
    if window > 0:
        visible &= j > i - window
    if mask is not None:
        if mask.dtype == torch.bool:
            visible = visible & mask
        else:
            s = s + mask.double()
    s = s.masked_fill(~visible, float("-inf"))
    p = torch.softmax(s, dim=-1).nan_to_num(0.0)  # fully masked rows: 0
    return p @ v


# --------------------------------------------------------------------------------------------
# Post-grad patterns (aten level).

# ``scaled_dot_product_attention``'s parameters in order (the Dynamo-level rewrite in attention_fx
# binds calls by them too).
SDPA_ARGS = ("query", "key", "value", "attn_mask", "dropout_p", "is_causal", "scale", "enable_gqa")

ANCHOR_OPS = [
    aten._scaled_dot_product_flash_attention.default,
    aten._scaled_dot_product_efficient_attention.default,
    aten._scaled_dot_product_cudnn_attention.default,
    aten.scaled_dot_product_attention.default,
    aten._softmax.default,
]


def _scale_or_default(scale, q_meta):
    return float(scale) if scale is not None else 1.0 / math.sqrt(q_meta.shape[-1])


def _supported(q, k) -> bool:
    try:
        return (q.dim() == 4 and k.dim() == 4 and int(q.shape[-1]) <= MAX_HEAD_DIM
                and int(q.shape[1]) % int(k.shape[1]) == 0)
    except Exception:
        return False


def _replace_with_attention(match, q, k, v, is_causal, scale, mask=None):
    from tri_inductor.patterns._trace import trace_replacement

    if mask is None:
        def repl(q, k, v):
            return torch.ops.tri_inductor.attention(q, k, v, is_causal, scale)

        match.replace_by_example(repl, [q, k, v], trace_fn=trace_replacement)
    else:
        def repl_masked(q, k, v, mask):
            return torch.ops.tri_inductor.attention(q, k, v, is_causal, scale, mask)

        match.replace_by_example(repl_masked, [q, k, v, mask], trace_fn=trace_replacement)


def _node_val(n):
    return n.meta.get("val") if isinstance(n, torch.fx.Node) else None


def _bind_sdpa(node):
    """(q, k, v, is_causal, scale, mask) of a fused/plain SDPA node, or None if we cannot take
    it (dropout, debug mask, a mask together with is_causal)."""
    op = node.target
    if op == aten._scaled_dot_product_flash_attention.default:
        names = ("query", "key", "value", "dropout_p", "is_causal", "return_debug_mask", "scale")
    elif op == aten._scaled_dot_product_efficient_attention.default:
        names = ("query", "key", "value", "attn_bias", "compute_log_sumexp", "dropout_p",
                 "is_causal", "scale")
    elif op == aten._scaled_dot_product_cudnn_attention.default:
        names = ("query", "key", "value", "attn_bias", "compute_log_sumexp", "dropout_p",
                 "is_causal", "return_debug_mask", "scale")
    elif op == aten.scaled_dot_product_attention.default:
        names = SDPA_ARGS
    else:
        return None
    a = dict(zip(names, node.args))
    a.update(node.kwargs)
    mask = a.get("attn_bias", a.get("attn_mask"))
    mv = _node_val(mask)
    if mask is not None and not (isinstance(mv, torch.Tensor) and mv.dim() <= 4
                                 and (mv.dtype == torch.bool or mv.is_floating_point())):
        return None
    if (a.get("dropout_p") or 0.0) != 0.0 or a.get("return_debug_mask"):
        return None
    causal = a.get("is_causal") or False
    if not isinstance(causal, bool) or (causal and mask is not None):
        return None
    q, k, v = a["query"], a["key"], a["value"]
    qv, kv, vv = _node_val(q), _node_val(k), _node_val(v)
    if qv is None or kv is None or vv is None or not _supported(qv, kv) or vv.shape[-1] != qv.shape[-1]:
        return None
    scale = a.get("scale")
    if scale is not None and not isinstance(scale, (int, float)):
        return None
    return q, k, v, causal, _scale_or_default(scale, qv), mask


def register_patterns(pm_pass) -> None:
    from torch._inductor.pattern_matcher import CallFunction, CallFunctionVarArgs, register_graph_pattern

    def sdpa_node(match):
        return next(n for n in match.nodes if n.target in _FUSED or n.target == _PLAIN)

    def check(match):
        return _bind_sdpa(sdpa_node(match)) is not None

    def handler(match, *args, **kwargs):
        _replace_with_attention(match, *_bind_sdpa(sdpa_node(match)))

    # Fused SDPA ops return tuples: match ``getitem(op(...), 0)`` with the op used once, so the
    # pattern only fires when logsumexp / rng outputs are unused (inference graphs).
    for op in _FUSED:
        register_graph_pattern(
            CallFunction(operator.getitem, CallFunctionVarArgs(op), 0),
            extra_check=check, pass_dict=pm_pass)(handler)
    # aten.scaled_dot_product_attention is CompositeImplicit and normally decomposed before
    # post-grad; catch it in case it survives.
    register_graph_pattern(CallFunctionVarArgs(_PLAIN), extra_check=check, pass_dict=pm_pass)(handler)


_FUSED = (
    aten._scaled_dot_product_flash_attention.default,
    aten._scaled_dot_product_efficient_attention.default,
    aten._scaled_dot_product_cudnn_attention.default,
)
_PLAIN = aten.scaled_dot_product_attention.default
