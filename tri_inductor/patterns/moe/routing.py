"""Router top-k in Triton: one program per token row.

Scores: softmax over the experts (Mixtral, Qwen-MoE), sigmoid (DeepSeek-V3, GLM-4.5) or the
logits as they are (a top-k of already-computed scores).  Selection: the k best of the scores,
plus a per-expert correction bias (DeepSeek-V3's ``e_score_correction_bias``) that moves the
choice but not the weights, optionally restricted to the ``topk_group`` best of ``num_groups``
equal expert groups (group score: the best expert, or with a bias the sum of the two best, as
DeepSeek-V3 and vLLM's ``grouped_topk`` do).  Weights: the chosen experts' scores, optionally
renormalised to sum 1, times ``routed_scaling_factor``.

Ties pick the lowest expert index first (the float64 reference uses a stable descending sort),
and the k picks come out in descending order, as ``torch.topk(sorted=True)`` does.
"""
from __future__ import annotations

import triton
import triton.language as tl

SCORING = {"softmax": 0, "sigmoid": 1, "none": 2}
MAX_EXPERTS = 1024  # one row in registers; a router over more experts is left to PyTorch


@triton.jit
def _pick(sel, avail, offs, BIG: tl.constexpr):
    """Index of the largest ``sel`` among ``avail`` (lowest index among equals)."""
    m = tl.max(tl.where(avail, sel, float("-inf")), 0)
    return tl.min(tl.where(avail & (sel == m), offs, BIG), 0)


@triton.jit
def moe_route_kernel(logits_ptr, bias_ptr, w_ptr, ids_ptr, tei_ptr, T, E, stride_t, scale,
                     K: tl.constexpr, SCORING: tl.constexpr, RENORM: tl.constexpr,
                     N_GROUP: tl.constexpr, TOPK_GROUP: tl.constexpr, HAS_BIAS: tl.constexpr,
                     BLOCK_E: tl.constexpr, BLOCK_G: tl.constexpr, BLOCK_K: tl.constexpr,
                     HAS_TEI: tl.constexpr):
    # HAS_TEI: also write vLLM's token_expert_indices (slot * T + token).
    t = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK_E)
    valid = offs < E
    x = tl.load(logits_ptr + t * stride_t + offs, mask=valid, other=float("-inf")).to(tl.float32)
    if SCORING == 0:
        p = tl.exp(x - tl.max(x, 0))
        p = tl.where(valid, p, 0.0)
        s = p / tl.sum(p, 0)
    elif SCORING == 1:
        s = 1.0 / (1.0 + tl.exp(-x))
    else:
        s = x
    sel = s
    if HAS_BIAS:
        sel = s + tl.load(bias_ptr + offs, mask=valid, other=0.0).to(tl.float32)
    avail = valid
    if N_GROUP > 1:
        # Group scores, then keep the experts of the TOPK_GROUP best groups.
        grp = offs // (E // N_GROUP)
        offs_g = tl.arange(0, BLOCK_G)
        gscore = tl.full([BLOCK_G], float("-inf"), tl.float32)
        for g in tl.static_range(N_GROUP):
            in_g = valid & (grp == g)
            i1 = _pick(sel, in_g, offs, BLOCK_E)
            v = tl.sum(tl.where(offs == i1, sel, 0.0), 0)
            if HAS_BIAS:  # sum of the group's two best
                i2 = _pick(sel, in_g & (offs != i1), offs, BLOCK_E)
                v += tl.sum(tl.where(offs == i2, sel, 0.0), 0)
            gscore = tl.where(offs_g == g, v, gscore)
        g_avail = offs_g < N_GROUP
        keep = offs < 0
        for _ in tl.static_range(TOPK_GROUP):
            gi = _pick(gscore, g_avail, offs_g, BLOCK_G)
            keep = keep | (grp == gi)
            g_avail = g_avail & (offs_g != gi)
        avail = avail & keep
    offs_k = tl.arange(0, BLOCK_K)
    wv = tl.zeros([BLOCK_K], tl.float32)
    iv = tl.zeros([BLOCK_K], tl.int32)
    for k in tl.static_range(K):
        i = _pick(sel, avail, offs, BLOCK_E)
        wv = tl.where(offs_k == k, tl.sum(tl.where(offs == i, s, 0.0), 0), wv)
        iv = tl.where(offs_k == k, i, iv)
        avail = avail & (offs != i)
    if RENORM:
        wv = wv / tl.sum(wv, 0)
    wv = wv * scale
    kmask = offs_k < K
    tl.store(w_ptr + t * K + offs_k, wv.to(w_ptr.dtype.element_ty), mask=kmask)
    tl.store(ids_ptr + t * K + offs_k, iv.to(ids_ptr.dtype.element_ty), mask=kmask)
    if HAS_TEI:
        tl.store(tei_ptr + t * K + offs_k, (offs_k * T + t).to(tei_ptr.dtype.element_ty), mask=kmask)
