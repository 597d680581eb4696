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

import torch
import triton
import triton.language as tl
from torch.library import triton_op

from ._launch import launch

aten = torch.ops.aten

_LOG2E = 1.4426950408889634


@triton.jit
def _attn_inner(acc, l_i, m_i, q, k_base, v_base, stride_kn, stride_kd, stride_vn, stride_vd,
                qpos, offs_d, lo, hi, Skv, qk_scale, D,
                MASKED: tl.constexpr, IS_CAUSAL: tl.constexpr, EVEN_D: tl.constexpr,
                BLOCK_N: tl.constexpr):
    # One pass over key blocks [lo, hi): S = Q K^T (fp32), online softmax in base 2 (the scale
    # is folded with log2(e)), acc += P V with P cast to V's dtype for the tensor-core dot.
    offs_n = tl.arange(0, BLOCK_N)
    dmask = offs_d < D
    for start_n in range(lo, hi, BLOCK_N):
        cols = start_n + offs_n
        kt_ptrs = k_base + cols[None, :] * stride_kn + offs_d[:, None] * stride_kd  # [D, N]
        v_ptrs = v_base + cols[:, None] * stride_vn + offs_d[None, :] * stride_vd    # [N, D]
        if MASKED:
            kv_ok = cols < Skv
            kt = tl.load(kt_ptrs, mask=kv_ok[None, :] & dmask[:, None], other=0.0)
            v = tl.load(v_ptrs, mask=kv_ok[:, None] & dmask[None, :], other=0.0)
        elif EVEN_D:
            kt = tl.load(kt_ptrs)
            v = tl.load(v_ptrs)
        else:
            kt = tl.load(kt_ptrs, mask=dmask[:, None], other=0.0)
            v = tl.load(v_ptrs, mask=dmask[None, :], other=0.0)
        qk = tl.dot(q, kt) * qk_scale
        if MASKED:
            ok = kv_ok[None, :]
            if IS_CAUSAL:
                ok = ok & (cols[None, :] <= qpos[:, None])
            qk = tl.where(ok, qk, float("-inf"))
        # m_i starts at a finite -1e30, so a fully masked row keeps alpha = 1 and p = 0.
        m_new = tl.maximum(m_i, tl.max(qk, 1))
        alpha = tl.math.exp2(m_i - m_new)
        p = tl.math.exp2(qk - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None]
        acc = tl.dot(p.to(v.dtype), v, acc)
        m_i = m_new
    return acc, l_i, m_i


@triton.jit
def attention_fwd_kernel(
    Q, K, V, O,
    stride_qb, stride_qh, stride_qs, stride_qd,
    stride_kb, stride_kh, stride_ks, stride_kd,
    stride_vb, stride_vh, stride_vs, stride_vd,
    stride_ob, stride_oh, stride_os, stride_od,
    Hq, Hkv, Sq, Skv, D, qk_scale,
    IS_CAUSAL: tl.constexpr, PACKED: tl.constexpr, EVEN_D: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    # Inductor types a Python float argument as fp64: keep the softmax math in fp32.
    qk_scale = tl.cast(qk_scale, tl.float32)
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    group = Hq // Hkv
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    if PACKED:
        # grid axis 1 = batch * kv head; rows of the tile = (query head in group, position).
        b = pid_bh // Hkv
        hkv = pid_bh % Hkv
        hq = hkv * group + offs_m // Sq
        qpos = offs_m % Sq
        row_ok = offs_m < group * Sq
        q_row = b * stride_qb + hq * stride_qh + qpos * stride_qs
        o_row = b * stride_ob + hq * stride_oh + qpos * stride_os
    else:
        b = pid_bh // Hq
        h = pid_bh % Hq
        hkv = h // group
        qpos = offs_m
        row_ok = offs_m < Sq
        q_row = b * stride_qb + h * stride_qh + qpos * stride_qs
        o_row = b * stride_ob + h * stride_oh + qpos * stride_os
    q_row = q_row.to(tl.int64)
    o_row = o_row.to(tl.int64)
    dmask = offs_d < D
    q = tl.load(Q + q_row[:, None] + offs_d[None, :] * stride_qd,
                mask=row_ok[:, None] & dmask[None, :], other=0.0)
    k_base = K + (b.to(tl.int64) * stride_kb + hkv * stride_kh)
    v_base = V + (b.to(tl.int64) * stride_vb + hkv * stride_vh)

    m_i = tl.full([BLOCK_M], -1.0e30, dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)

    # Key range: [0, hi) with causal skipping; [0, mid) needs no mask (full blocks, all keys
    # visible to every row of the tile), [mid, hi) is the diagonal / Skv tail, masked.
    full_end = (Skv // BLOCK_N) * BLOCK_N
    if IS_CAUSAL:
        if PACKED:
            hi = tl.minimum(Skv, Sq)  # the packed tile mixes positions: all rows masked per row
            mid = 0
        else:
            start_m = pid_m * BLOCK_M
            hi = tl.minimum(Skv, start_m + BLOCK_M)
            mid = tl.minimum((start_m // BLOCK_N) * BLOCK_N, full_end)
    else:
        hi = Skv
        mid = full_end
    acc, l_i, m_i = _attn_inner(acc, l_i, m_i, q, k_base, v_base, stride_ks, stride_kd,
                                stride_vs, stride_vd, qpos, offs_d, 0, mid, Skv, qk_scale, D,
                                False, IS_CAUSAL, EVEN_D, BLOCK_N)
    acc, l_i, m_i = _attn_inner(acc, l_i, m_i, q, k_base, v_base, stride_ks, stride_kd,
                                stride_vs, stride_vd, qpos, offs_d, mid, hi, Skv, qk_scale, D,
                                True, IS_CAUSAL, EVEN_D, BLOCK_N)
    l_i = tl.where(l_i == 0.0, 1.0, l_i)
    out = acc / l_i[:, None]
    tl.store(O + o_row[:, None] + offs_d[None, :] * stride_od, out.to(O.dtype.element_ty),
             mask=row_ok[:, None] & dmask[None, :])


# (BLOCK_D, is 4-byte dtype) -> (BLOCK_M, BLOCK_N, num_warps, num_stages) for prefill.
# From a sweep (benchmarks/kernels.py --tune, causal, 32/8 heads; docs/design/kernels.md): 64x64
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


@triton_op("tri_inductor::attention", mutates_args={})
def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, is_causal: bool,
              scale: float) -> torch.Tensor:
    B, Hq, Sq, D = q.shape
    Hkv, Skv = k.shape[1], k.shape[2]
    # Output stored [B, Sq, Hq, D] (flash layout), returned as the [B, Hq, Sq, D] view.
    out = torch.empty((B, Sq, Hq, D), dtype=q.dtype, device=q.device).transpose(1, 2)
    block_d = max(16, triton.next_power_of_2(int(D)))
    group = int(Hq) // int(Hkv)
    # Config from Sq's size hint when Sq is symbolic: no guard (no recompiles); every config is
    # correct for every Sq, only speed differs (as linear.py does for M).
    packed, bm, bn, warps, stages = _config(_hint(Sq), group, block_d, q.element_size() >= 4)
    if packed:
        grid = (triton.cdiv(group * Sq, bm), B * Hkv)
    else:
        grid = (triton.cdiv(Sq, bm), B * Hq)
    launch(attention_fwd_kernel, grid, q, k, v, out,
           *q.stride(), *k.stride(), *v.stride(), *out.stride(),
           Hq, Hkv, Sq, Skv, D, scale * _LOG2E,
           IS_CAUSAL=is_causal, PACKED=packed, EVEN_D=(D == block_d),
           BLOCK_M=bm, BLOCK_N=bn, BLOCK_D=block_d, num_warps=warps, num_stages=stages)
    return out


def reference_attention(q, k, v, is_causal: bool, scale: float) -> torch.Tensor:
    """float64 reference (torch SDPA semantics: causal mask top-left aligned)."""
    q, k, v = (t.double() for t in (q, k, v))
    group = q.shape[1] // k.shape[1]
    k = k.repeat_interleave(group, dim=1)
    v = v.repeat_interleave(group, dim=1)
    s = (q @ k.transpose(-2, -1)) * scale
    if is_causal:
        Sq, Skv = q.shape[-2], k.shape[-2]
        mask = torch.ones(Sq, Skv, dtype=torch.bool).tril()
        s = s.masked_fill(~mask, float("-inf"))
    return torch.softmax(s, dim=-1) @ v


# --------------------------------------------------------------------------------------------
# Dynamo-level rewrite (before AOT: SDPA's backend choice needs a real device there).

def _sdpa_targets():
    import torch.nn.functional as F

    return {torch._C._nn.scaled_dot_product_attention, F.scaled_dot_product_attention}


_SDPA_ARGS = ("query", "key", "value", "attn_mask", "dropout_p", "is_causal", "scale", "enable_gqa")


def _example(node):
    val = node.meta.get("example_value", node.meta.get("val")) if isinstance(node, torch.fx.Node) else None
    return val


def rewrite_sdpa_in_dynamo_graph(gm: torch.fx.GraphModule) -> int:
    """Replace SDPA calls (no mask, no dropout) of a Dynamo graph by ``tri_inductor.attention``.

    Returns how many were rewritten; calls with an attn_mask or dropout stay as they are.
    """
    targets = _sdpa_targets()
    n = 0
    for node in list(gm.graph.nodes):
        if node.op != "call_function" or node.target not in targets:
            continue
        bound = dict(zip(_SDPA_ARGS, node.args))
        bound.update(node.kwargs)
        if bound.get("attn_mask") is not None:
            continue
        dropout = bound.get("dropout_p", 0.0)
        if not isinstance(dropout, (int, float)) or dropout != 0.0:
            continue
        is_causal = bound.get("is_causal", False)
        if not isinstance(is_causal, bool):
            continue
        q, k, v = bound["query"], bound["key"], bound["value"]
        qv, kv = _example(q), _example(k)
        if qv is None or kv is None or qv.dim() != 4 or kv.dim() != 4:
            continue
        try:
            D = int(qv.shape[-1])
            hq, hkv = int(qv.shape[1]), int(kv.shape[1])
        except Exception:  # symbolic head count / head dim: leave it
            continue
        if hq % hkv != 0 or D > 256:
            continue
        scale = bound.get("scale")
        if scale is None:
            scale = 1.0 / math.sqrt(D)
        if not isinstance(scale, (int, float)):
            continue
        with gm.graph.inserting_before(node):
            new = gm.graph.call_function(torch.ops.tri_inductor.attention.default,
                                         (q, k, v, is_causal, float(scale)))
        new.meta.update(node.meta)
        node.replace_all_uses_with(new)
        gm.graph.erase_node(node)
        n += 1
    if n:
        gm.graph.lint()
        gm.recompile()
    return n


# --------------------------------------------------------------------------------------------
# Post-grad patterns (aten level).

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


def _replace_with_attention(match, q, k, v, is_causal, scale):
    from tri_inductor.patterns._trace import trace_replacement

    def repl(q, k, v):
        return torch.ops.tri_inductor.attention(q, k, v, is_causal, scale)

    match.replace_by_example(repl, [q, k, v], trace_fn=trace_replacement)


def _node_val(n):
    return n.meta.get("val") if isinstance(n, torch.fx.Node) else None


def _bind_sdpa(node):
    """(q, k, v, is_causal, scale) of a fused/plain SDPA node, or None if we cannot take it
    (attention mask/bias, dropout, debug mask)."""
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
        names = _SDPA_ARGS
    else:
        return None
    a = dict(zip(names, node.args))
    a.update(node.kwargs)
    if a.get("attn_bias") is not None or a.get("attn_mask") is not None:
        return None
    if (a.get("dropout_p") or 0.0) != 0.0 or a.get("return_debug_mask"):
        return None
    causal = a.get("is_causal") or False
    if not isinstance(causal, bool):
        return None
    q, k, v = a["query"], a["key"], a["value"]
    qv, kv = _node_val(q), _node_val(k)
    if qv is None or kv is None or not _supported(qv, kv):
        return None
    scale = a.get("scale")
    if scale is not None and not isinstance(scale, (int, float)):
        return None
    return q, k, v, causal, _scale_or_default(scale, qv)


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
