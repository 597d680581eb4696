"""Rotary position embedding (RoPE): one Triton kernel for q and k, three ops, FX patterns.

* ``rope_cache``  (vLLM): cos/sin rows gathered from ``cos_sin_cache[positions]`` (halves cat(cos, sin)).
* ``qk_norm_rope_cache`` (vLLM, Qwen3): per-head RMSNorm of q and k, then ``rope_cache``, in one pass.
* ``rope_cos_sin`` (Hugging Face): cos/sin given per (batch, position), full rotary width.
NeoX style rotates (first half, second half) of the rotary dims; GPT-J style rotates (even, odd)
pairs. Dims past ``rotary_dim`` are copied. Arithmetic in fp32, outputs in q/k's dtype.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
import triton
import triton.language as tl
from torch.library import triton_op

from ._launch import launch
from . import matcher_utils as M
from ._trace import trace_replacement

# Interpreter note: kernels here use Triton builtins only (no ``tl.cdiv``/``tl.zeros`` helpers,
# which are ``@triton.jit`` functions the un-patched interpreter cannot call); see rms_norm.py.


@triton.jit
def _rope_kernel(
    q_ptr, k_ptr, qo_ptr, ko_ptr, cos_ptr, sin_ptr, pos_ptr, qw_ptr, kw_ptr, eps,
    T, S, Hq, Hk,
    q_sb, q_ss, q_sh, k_sb, k_ss, k_sh,
    qo_sb, qo_ss, qo_sh, ko_sb, ko_ss, ko_sh,
    c_sb, c_ss,
    HEAD: tl.constexpr, ROT: tl.constexpr, IS_NEOX: tl.constexpr, FROM_CACHE: tl.constexpr,
    BLOCK_T: tl.constexpr, BLOCK_H: tl.constexpr, HALF_BLOCK: tl.constexpr, PASS_BLOCK: tl.constexpr,
    QK_NORM: tl.constexpr,
):
    # Grid: (token blocks, q head blocks + k head blocks). A program rotates a [BLOCK_T tokens,
    # BLOCK_H heads, rotary] tile, read once and written once, each head's run contiguous
    # (16-byte vectors). The tile follows memory: heads of one token when they sit side by side
    # (vLLM's [T, H*D], HF's transposed view: BLOCK_T = 1), consecutive positions of one head
    # when a head's positions do (a contiguous [B, H, S, D]: BLOCK_H = 1), so consecutive
    # programs stream consecutive memory. Token = (b, s); vLLM's [T, H*D] is B=T, S=1.
    # QK_NORM (Qwen3): each head row is RMS-normalised (weight qw/kw, fp32) before the rotation,
    # in registers: one rounding at the store, as Inductor's fused norm + RoPE kernel rounds.
    eps = tl.cast(eps, tl.float32)  # Inductor types a Python float argument fp64
    # Token ids fit 32 bits; the (b, s) split divides in 32 bits (a 64-bit division by the
    # runtime S is several times longer) and only the addresses widen to 64.
    toks32 = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)
    hb = tl.program_id(1)
    n_qb = (Hq + BLOCK_H - 1) // BLOCK_H
    HALF: tl.constexpr = ROT // 2
    t3 = toks32[:, None, None].to(tl.int64)
    tmask3 = t3 < T
    b3 = (toks32[:, None, None] // S).to(tl.int64)
    s3 = (toks32[:, None, None] % S).to(tl.int64)
    d3 = tl.arange(0, HALF_BLOCK)[None, None, :]
    dmask3 = d3 < HALF
    r3 = tl.arange(0, 2 * HALF_BLOCK)[None, None, :]
    rmask3 = r3 < ROT
    # q, then k: unrolled at compile time, so each copy addresses its tensor straight from its
    # arguments (no pointer merged across a runtime branch; and an int argument equal to 1, e.g.
    # one KV head, is specialised to a constexpr, which a runtime if/else assigning a tensor in
    # the other branch would reject). Only the copy owning this head block runs. Checked: the
    # sm_90 PTX uses ld/st.global.v4 (16 B) for q/k and cos/sin.
    for which in tl.static_range(2):
        if which == 0:
            src = q_ptr + b3 * q_sb + s3 * q_ss
            dst = qo_ptr + b3 * qo_sb + s3 * qo_ss
            xh = q_sh
            oh = qo_sh
            n_heads = Hq
            hblk = hb
            w_row = qw_ptr
        else:
            src = k_ptr + b3 * k_sb + s3 * k_ss
            dst = ko_ptr + b3 * ko_sb + s3 * ko_ss
            xh = k_sh
            oh = ko_sh
            n_heads = Hk
            hblk = hb - n_qb
            w_row = kw_ptr
        if (hblk >= 0) & (hblk * BLOCK_H < n_heads):
            heads = hblk * BLOCK_H + tl.arange(0, BLOCK_H)[None, :, None]
            hmask = tmask3 & (heads < n_heads)
            src_h = src + heads * xh
            dst_h = dst + heads * oh
            # q/k first, cos/sin second: at decode the cos/sin rows wait on the positions load;
            # issued in this order the tile's loads overlap that dependent round trip.
            e = ROT + tl.arange(0, PASS_BLOCK)[None, None, :]  # partial rotary: the pass-through dims
            pm = hmask & (e < HEAD)
            if ROT < HEAD:
                xp = tl.load(src_h + e, mask=pm, other=0.0)
            if IS_NEOX:
                m = hmask & dmask3
                x1 = tl.load(src_h + d3, mask=m, other=0.0).to(tl.float32)
                x2 = tl.load(src_h + HALF + d3, mask=m, other=0.0).to(tl.float32)
                if QK_NORM:
                    ssq = tl.reduce(x1 * x1 + x2 * x2, 2, tl.standard._sum_combine)
            else:  # GPT-J: the rotary span contiguously, (even, odd) pairs split in registers
                m = hmask & rmask3
                x = tl.load(src_h + r3, mask=m, other=0.0).to(tl.float32)
                if QK_NORM:
                    ssq = tl.reduce(x * x, 2, tl.standard._sum_combine)
            if QK_NORM:
                if ROT < HEAD:
                    xpf = xp.to(tl.float32)
                    ssq += tl.reduce(xpf * xpf, 2, tl.standard._sum_combine)
                rstd = tl.rsqrt(ssq / HEAD + eps)[:, :, None]
                if IS_NEOX:
                    x1 = x1 * rstd * tl.load(w_row + d3, mask=dmask3, other=0.0).to(tl.float32)
                    x2 = x2 * rstd * tl.load(w_row + HALF + d3, mask=dmask3, other=0.0).to(tl.float32)
                else:
                    x = x * rstd * tl.load(w_row + r3, mask=rmask3, other=0.0).to(tl.float32)
                if ROT < HEAD:
                    xp = xpf * rstd * tl.load(w_row + e, mask=e < HEAD, other=0.0).to(tl.float32)
            if not IS_NEOX:
                x1, x2 = tl.split(tl.reshape(x, [BLOCK_T, BLOCK_H, HALF_BLOCK, 2]))
            if FROM_CACHE:  # cache rows hold rotary/2 cos then rotary/2 sin: both halves share them
                if BLOCK_T == 1:  # a scalar load (a [1, 1, 1] tensor is loaded once per register copy)
                    crow = tl.load(pos_ptr + tl.program_id(0).to(tl.int64)).to(tl.int64) * c_sb
                else:
                    crow = tl.load(pos_ptr + t3, mask=tmask3, other=0).to(tl.int64) * c_sb
                cm = tmask3 & dmask3
                c1 = tl.load(cos_ptr + crow + d3, mask=cm, other=0.0).to(tl.float32)
                s1 = tl.load(sin_ptr + crow + d3, mask=cm, other=0.0).to(tl.float32)
                c2 = c1
                s2 = s1
            else:
                crow = b3 * c_sb + s3 * c_ss
                if IS_NEOX:  # full width, halves duplicated by HF: read both to follow the formula
                    cm = tmask3 & dmask3
                    c1 = tl.load(cos_ptr + crow + d3, mask=cm, other=0.0).to(tl.float32)
                    s1 = tl.load(sin_ptr + crow + d3, mask=cm, other=0.0).to(tl.float32)
                    c2 = tl.load(cos_ptr + crow + HALF + d3, mask=cm, other=0.0).to(tl.float32)
                    s2 = tl.load(sin_ptr + crow + HALF + d3, mask=cm, other=0.0).to(tl.float32)
                else:  # full width, interleaved: (even, odd) entries
                    cm = tmask3 & rmask3
                    cc = tl.load(cos_ptr + crow + r3, mask=cm, other=0.0).to(tl.float32)
                    ss = tl.load(sin_ptr + crow + r3, mask=cm, other=0.0).to(tl.float32)
                    c1, c2 = tl.split(tl.reshape(cc, [BLOCK_T, 1, HALF_BLOCK, 2]))
                    s1, s2 = tl.split(tl.reshape(ss, [BLOCK_T, 1, HALF_BLOCK, 2]))
            o1 = (x1 * c1 - x2 * s1).to(dst.dtype.element_ty)
            o2 = (x2 * c2 + x1 * s2).to(dst.dtype.element_ty)
            if IS_NEOX:
                tl.store(dst_h + d3, o1, mask=m)
                tl.store(dst_h + HALF + d3, o2, mask=m)
            else:
                tl.store(dst_h + r3, tl.reshape(tl.join(o1, o2), [BLOCK_T, BLOCK_H, 2 * HALF_BLOCK]), mask=m)
            if ROT < HEAD:  # partial rotary: the rest of each head is copied (normalised with QK_NORM)
                tl.store(dst_h + e, xp.to(dst.dtype.element_ty), mask=pm)


ROPE_ELEMENTS = 1024  # elements of q/k a program rotates (see _blocks)


def _blocks(head_size: int, rotary_dim: int, n_heads: int, n_seq: int, heads_adjacent: bool
            ) -> tuple[int, int, int, int, int]:
    """(BLOCK_T, BLOCK_H, HALF_BLOCK, PASS_BLOCK, num_warps): ~1K elements and 4 warps a program,
    laid along whichever of heads / positions is adjacent in memory: the launch sweep's pick
    (``benchmarks/launch_sweep.py``; measurements in docs/design/kernels.md)."""
    half_block = triton.next_power_of_2(max(rotary_dim // 2, 1))
    pass_block = triton.next_power_of_2(max(head_size - rotary_dim, 1))
    row = triton.next_power_of_2(head_size)
    span = max(1, ROPE_ELEMENTS // row)
    if heads_adjacent:
        block_t, block_h = 1, min(triton.next_power_of_2(n_heads), span)
    else:
        block_t, block_h = min(triton.next_power_of_2(n_seq), span), 1
    num_warps = max(1, min(4, block_t * block_h * row // 256))
    return block_t, block_h, half_block, pass_block, num_warps


def _check_rot(head_size: int, rotary_dim: int) -> None:
    torch._check(rotary_dim % 2 == 0 and 0 < rotary_dim <= head_size,
                 lambda: f"rotary_dim={rotary_dim} must be even and in (0, head_size={head_size}]")


def _last_contig(t: torch.Tensor) -> torch.Tensor:
    return t if t.stride(-1) == 1 else t.contiguous()


@triton_op("tri_inductor::rope_cache", mutates_args={})
def rope_cache(
    positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor, cos_sin_cache: torch.Tensor,
    head_size: int, rotary_dim: int, is_neox: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    return _rope_cache(positions, q, k, cos_sin_cache, head_size, rotary_dim, is_neox)


@triton_op("tri_inductor::qk_norm_rope_cache", mutates_args={})
def qk_norm_rope_cache(
    positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor, q_weight: torch.Tensor,
    k_weight: torch.Tensor, eps: float, cos_sin_cache: torch.Tensor, rotary_dim: int, is_neox: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-head RMSNorm of q [T, Hq, D] and k [T, Hk, D] (weights [D]), then ``rope_cache``: one
    kernel, fp32 between the two (Qwen3's q/k norm + rotary embedding)."""
    torch._check(q.dim() == 3 and k.dim() == 3,
                 lambda: f"qk_norm_rope_cache takes per-head q/k [tokens, heads, head_size]; got "
                         f"q {tuple(q.shape)}, k {tuple(k.shape)} (view them per head first)")
    head_size = q.shape[-1]
    torch._check(q_weight.shape == (head_size,) and k_weight.shape == (head_size,),
                 lambda: f"q/k norm weights {tuple(q_weight.shape)}, {tuple(k_weight.shape)} != ({head_size},)")
    return _rope_cache(positions, q, k, cos_sin_cache, head_size, rotary_dim, is_neox, q_weight, k_weight, eps)


def _rope_cache(positions, q, k, cos_sin_cache, head_size: int, rotary_dim: int, is_neox: bool,
                qw=None, kw=None, eps: float = 0.0):
    _check_rot(head_size, rotary_dim)
    pos = positions.reshape(-1)
    T = pos.shape[0]
    # q/k may be [T, H*D], [T, H, D] or views of a fused qkv buffer (rows strided, heads dense).
    q3 = _last_contig(q).reshape(T, -1, head_size)
    k3 = _last_contig(k).reshape(T, -1, head_size)
    qo = torch.empty(q3.shape, dtype=q.dtype, device=q.device)
    ko = torch.empty(k3.shape, dtype=k.dtype, device=k.device)
    cache = _last_contig(cos_sin_cache)
    Hq, Hk = q3.shape[1], k3.shape[1]
    block_t, block_h, half_block, pass_block, num_warps = _blocks(head_size, rotary_dim, max(Hq, Hk), 1, True)
    grid = (T, triton.cdiv(Hq, block_h) + triton.cdiv(Hk, block_h))
    launch(_rope_kernel, grid,
           q3, k3, qo, ko, cache, cache[:, rotary_dim // 2:], pos,
           cache if qw is None else qw, cache if kw is None else kw, eps,  # (unread without the norm)
           T, 1, Hq, Hk,
           q3.stride(0), 0, q3.stride(1), k3.stride(0), 0, k3.stride(1),
           qo.stride(0), 0, qo.stride(1), ko.stride(0), 0, ko.stride(1),
           cache.stride(0), 0,
           HEAD=head_size, ROT=rotary_dim, IS_NEOX=is_neox, FROM_CACHE=True,
           BLOCK_T=block_t, BLOCK_H=block_h, HALF_BLOCK=half_block, PASS_BLOCK=pass_block,
           QK_NORM=qw is not None, num_warps=num_warps)
    return qo.view(q.shape), ko.view(k.shape)


@triton_op("tri_inductor::rope_cos_sin", mutates_args={})
def rope_cos_sin(
    q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, is_neox: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    B, Hq, S, D = q.shape
    Hk = k.shape[1]
    rot = cos.shape[-1]
    _check_rot(D, rot)
    q, k = _last_contig(q), _last_contig(k)
    # cos/sin [B or 1, S, rot] (a batch of 1 broadcasts: stride 0); sin must share cos's strides.
    cos = _last_contig(cos).expand(B, S, rot)
    sin = _last_contig(sin).expand(B, S, rot)
    if sin.stride() != cos.stride():
        cos, sin = cos.contiguous(), sin.contiguous()
    qo = torch.empty_like(q)  # keeps q's layout (HF's q is a transposed view)
    ko = torch.empty_like(k)
    block_t, block_h, half_block, pass_block, num_warps = _blocks(
        D, rot, max(Hq, Hk), S, heads_adjacent=not (q.stride(1) > q.stride(2) and k.stride(1) > k.stride(2)))
    grid = (triton.cdiv(B * S, block_t), triton.cdiv(Hq, block_h) + triton.cdiv(Hk, block_h))
    launch(_rope_kernel, grid,
           q, k, qo, ko, cos, sin, cos, cos, cos, 0.0,
           B * S, S, Hq, Hk,
           q.stride(0), q.stride(2), q.stride(1), k.stride(0), k.stride(2), k.stride(1),
           qo.stride(0), qo.stride(2), qo.stride(1), ko.stride(0), ko.stride(2), ko.stride(1),
           cos.stride(0), cos.stride(1),
           HEAD=D, ROT=rot, IS_NEOX=is_neox, FROM_CACHE=False,
           BLOCK_T=block_t, BLOCK_H=block_h, HALF_BLOCK=half_block, PASS_BLOCK=pass_block,
           QK_NORM=False, num_warps=num_warps)
    return qo, ko


def _rotate64(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, is_neox: bool) -> torch.Tensor:
    """x [..., rot], cos/sin [..., rot] full width (float64)."""
    if is_neox:
        x1, x2 = x.chunk(2, dim=-1)
        rotated = torch.cat((-x2, x1), dim=-1)
    else:
        rotated = torch.stack((-x[..., 1::2], x[..., ::2]), dim=-1).flatten(-2)
    return x * cos + rotated * sin


def reference_rope_cache(positions, q, k, cos_sin_cache, head_size: int, rotary_dim: int, is_neox: bool):
    """float64 ground truth of ``rope_cache`` (outputs float64, shaped like q and k)."""
    cs = cos_sin_cache.double()[positions.reshape(-1)]
    c, s = cs.chunk(2, dim=-1)
    if is_neox:
        c, s = torch.cat((c, c), -1), torch.cat((s, s), -1)
    else:
        c, s = c.repeat_interleave(2, -1), s.repeat_interleave(2, -1)
    outs = []
    for x in (q, k):
        x3 = x.double().reshape(c.shape[0], -1, head_size)
        rot = _rotate64(x3[..., :rotary_dim], c[:, None], s[:, None], is_neox)
        outs.append(torch.cat((rot, x3[..., rotary_dim:]), -1).reshape(x.shape))
    return tuple(outs)


def reference_qk_norm_rope_cache(positions, q, k, q_weight, k_weight, eps: float, cos_sin_cache,
                                 rotary_dim: int, is_neox: bool):
    """float64 ground truth of ``qk_norm_rope_cache``."""
    def norm(x, w):
        x = x.double()
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w.double()

    return reference_rope_cache(positions, norm(q, q_weight), norm(k, k_weight), cos_sin_cache,
                                q.shape[-1], rotary_dim, is_neox)


def reference_rope_cos_sin(q, k, cos, sin, is_neox: bool):
    """float64 ground truth of ``rope_cos_sin``."""
    rot = cos.shape[-1]
    c, s = cos.double()[:, None], sin.double()[:, None]
    outs = []
    for x in (q, k):
        x = x.double()
        outs.append(torch.cat((_rotate64(x[..., :rot], c, s, is_neox), x[..., rot:]), -1))
    return tuple(outs)


# ---------------------------------------------------------------------------------------------
# FX patterns
# ---------------------------------------------------------------------------------------------

# vLLM RotaryEmbedding.forward_static (native), with ApplyRotaryEmb.forward_static inlined.
def _vllm_apply(x, cos, sin, is_neox: bool):
    cos = cos.unsqueeze(-2).to(x.dtype)
    sin = sin.unsqueeze(-2).to(x.dtype)
    if is_neox:
        x1, x2 = torch.chunk(x, 2, dim=-1)
    else:
        x1, x2 = x[..., ::2], x[..., 1::2]
    o1 = x1 * cos - x2 * sin
    o2 = x2 * cos + x1 * sin
    if is_neox:
        return torch.cat((o1, o2), dim=-1)
    return torch.stack((o1, o2), dim=-1).flatten(-2)


def _vllm_rope(positions, q, k, cache, head_size: int, rotary_dim: int, is_neox: bool,
               per_head: bool = False):
    """vLLM's RotaryEmbedding.forward_static. ``per_head``: the outputs stay [tokens, heads,
    head_size]: in vLLM's graph the attention views q/k per head right away, and Inductor drops
    the reshape to [tokens, heads * head_size] and back before our pass sees the graph."""
    positions = positions.flatten()
    num_tokens = positions.shape[0]
    cos, sin = cache.index_select(0, positions).chunk(2, dim=-1)
    outs = []
    for x in (q, k):
        out = _vllm_rotate(x.view(num_tokens, -1, head_size), cos, sin, rotary_dim, is_neox)
        outs.append(out if per_head else out.reshape(x.shape))
    return outs[0], outs[1]


def _vllm_rotate(x, cos, sin, rotary_dim: int, is_neox: bool):
    """One of q/k, per head: the rotated dims, then the pass-through tail (may be empty)."""
    return torch.cat((_vllm_apply(x[..., :rotary_dim], cos, sin, is_neox), x[..., rotary_dim:]), dim=-1)


def _vllm_rope_heads(positions, q, k, cache, rotary_dim: int, is_neox: bool):
    """vLLM's forward_static when q/k arrive per head already ([tokens, heads, head_size], e.g.
    Qwen3's q/k norm output): its ``view(num_tokens, -1, head_size)`` is then a no-op that
    Inductor removes, so the graph starts at the rotary split."""
    cos, sin = cache.index_select(0, positions.flatten()).chunk(2, dim=-1)
    return _vllm_rotate(q, cos, sin, rotary_dim, is_neox), _vllm_rotate(k, cos, sin, rotary_dim, is_neox)


def _rotate_half(x):
    x1 = x[..., : x.shape[-1] // 2]
    x2 = x[..., x.shape[-1] // 2:]
    return torch.cat((-x2, x1), dim=-1)


# HF apply_rotary_pos_emb (Llama/Qwen2/Gemma/Mistral...), unsqueeze_dim=1.
def _hf_rope(q, k, cos, sin):
    cos = cos.unsqueeze(1)
    sin = sin.unsqueeze(1)
    return (q * cos) + (_rotate_half(q) * sin), (k * cos) + (_rotate_half(k) * sin)


# HF partial rotary (Phi, GPT-NeoX, StableLM...): rotate the first cos.shape[-1] dims.
def _hf_rope_partial(q, k, cos, sin):
    cos = cos.unsqueeze(1)
    sin = sin.unsqueeze(1)
    rot = cos.shape[-1]
    q_rot, q_pass = q[..., :rot], q[..., rot:]
    k_rot, k_pass = k[..., :rot], k[..., rot:]
    q_embed = (q_rot * cos) + (_rotate_half(q_rot) * sin)
    k_embed = (k_rot * cos) + (_rotate_half(k_rot) * sin)
    return torch.cat([q_embed, q_pass], dim=-1), torch.cat([k_embed, k_pass], dim=-1)


def _rotate_half_chunk(x):
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


# The same op with rotate_half written with chunk (hand-written models).
def _hf_rope_chunk(q, k, cos, sin):
    cos = cos.unsqueeze(1)
    sin = sin.unsqueeze(1)
    return (q * cos) + (_rotate_half_chunk(q) * sin), (k * cos) + (_rotate_half_chunk(k) * sin)


# The same op with the sum written the other way round (rotated half first).
def _hf_rope_rotated_first(q, k, cos, sin):
    cos = cos.unsqueeze(1)
    sin = sin.unsqueeze(1)
    return (_rotate_half(q) * sin) + (q * cos), (_rotate_half(k) * sin) + (k * cos)


# q and k rotated in fp32 and cast back, cos/sin in their dtype (hand-written models that upcast).
def _hf_rope_upcast(q, k, cos, sin):
    qe, ke = _hf_rope(q.float(), k.float(), cos, sin)
    return qe.to(q.dtype), ke.to(k.dtype)


# OLMo 2: fp32 cos/sin with bf16/fp16 q and k, rotated in fp32 and cast back (``.to(q_type)``).
def _hf_rope_cast(q, k, cos, sin):
    qe, ke = _hf_rope(q, k, cos, sin)
    return qe.to(q.dtype), ke.to(k.dtype)


def _hf_rope_partial_cast(q, k, cos, sin):
    qe, ke = _hf_rope_partial(q, k, cos, sin)
    return qe.to(q.dtype), ke.to(k.dtype)


def _check_hf_cast(match) -> bool:
    """q/k in a 16-bit type, cos/sin fp32 (the forms that cast back)."""
    return _check_hf(match, cast=True)


def _make_vllm(is_neox: bool, per_head: bool = False):
    # head_size and half = rotary_dim / 2 are pattern scalars (see VLLM_SENTINELS).
    def search(positions, q, k, cache, head_size, half):
        return _vllm_rope(positions, q, k, cache, head_size, 2 * half, is_neox, per_head)

    def repl(positions, q, k, cache, head_size, half):
        oq, ok = rope_cache(positions, q, k, cache, head_size, 2 * half, is_neox)
        if per_head:
            n = positions.numel()
            return oq.view(n, -1, head_size), ok.view(n, -1, head_size)
        return oq, ok

    return search, repl


def _make_vllm_heads(is_neox: bool):
    def search(positions, q, k, cache, half):
        return _vllm_rope_heads(positions, q, k, cache, 2 * half, is_neox)

    def repl(positions, q, k, cache, half):
        return rope_cache(positions, q, k, cache, q.shape[-1], 2 * half, is_neox)

    return search, repl


def _make_qk_norm_heads(is_neox: bool, norm: Callable[..., torch.Tensor]):
    """Qwen3's per-head q/k RMSNorm feeding the per-head RoPE form: one fused op (``norm`` is one
    of the rms_norm family's search forms: vLLM's native body or its IR node)."""
    def search(positions, q, k, q_weight, k_weight, cache, eps, half):
        return _vllm_rope_heads(positions, norm(q, q_weight, eps), norm(k, k_weight, eps), cache, 2 * half, is_neox)

    def repl(positions, q, k, q_weight, k_weight, cache, eps, half):
        return qk_norm_rope_cache(positions, q, k, q_weight, k_weight, eps, cache, 2 * half, is_neox)

    return search, repl


def _check_qk_norm(match) -> bool:
    if not _check_vllm(match):
        return False
    q = match.kwargs["q"].meta["val"]
    ws = [match.kwargs[n].meta.get("val") for n in ("q_weight", "k_weight")]
    return (q.dim() == 3 and match.kwargs["q_weight"] is not match.kwargs["k_weight"]
            and all(isinstance(w, torch.Tensor) and w.shape == (q.shape[-1],) and w.dtype.is_floating_point
                    for w in ws))


def _repl_hf(q, k, cos, sin):
    return rope_cos_sin(q, k, cos, sin, True)


def _check_vllm(match) -> bool:
    # Runs on the re-traced, value-specific match (head_size/half are literals there, not kwargs).
    if match.kwargs["q"] is match.kwargs["k"]:
        # q's and k's subgraphs have the same structure: the matcher may bind both outputs of the
        # pattern to q's (and leave k to Inductor); only a q/k pair is a match.
        return False
    q = match.kwargs["q"].meta.get("val")
    k = match.kwargs["k"].meta.get("val")
    c = match.kwargs["cache"].meta.get("val")
    p = match.kwargs["positions"].meta.get("val")
    return (all(isinstance(t, torch.Tensor) for t in (q, k, c, p)) and q.dtype == k.dtype == c.dtype
            and q.dtype.is_floating_point and not p.dtype.is_floating_point)


def _check_hf(match, cast: bool = False) -> bool:
    vals = [match.kwargs[n].meta.get("val") for n in ("q", "k", "cos", "sin")]
    if not all(isinstance(t, torch.Tensor) for t in vals):
        return False
    q, k, c, s = vals
    if cast:  # 16-bit q/k, fp32 cos/sin, rotated in fp32 and cast back (OLMo 2)
        dtypes_ok = (q.dtype == k.dtype and q.dtype in (torch.bfloat16, torch.float16)
                     and c.dtype == s.dtype == torch.float32)
    else:
        dtypes_ok = q.dtype == k.dtype == c.dtype == s.dtype and q.dtype.is_floating_point
    return (q.dim() == 4 and k.dim() == 4 and c.dim() == 3 and s.shape == c.shape and dtypes_ok
            and q.shape[0] == k.shape[0] and q.shape[2] == k.shape[2] and c.shape[1] == q.shape[2]
            and c.shape[-1] % 2 == 0 and c.shape[-1] <= q.shape[-1])


# vLLM's head geometry would be burnt into its search graph (view sizes, split sizes, slice
# bounds). Instead head_size and half (= rotary_dim / 2) are pattern scalars through
# ``scalar_workaround``: the search graph is traced with these sentinel values, which become
# ``KeywordArg``s wherever they appear, and each match is re-checked with its real values. The
# graph's structure differs between full and partial rotary (the pass-through slice and cat
# vanish when rotary_dim == head_size), between NeoX and GPT-J, and between outputs reshaped back
# to [tokens, heads * head_size] or left per head (see _vllm_rope), and q/k already per head on
# input (_vllm_rope_heads): twelve registrations per dtype.
_HEAD = 104  # sentinel head_size; rotary halves 52 (full) and 26 (partial): distinct from all
_HALVES = {"full": 52, "partial": 26}  # other sizes of the example graph


def _trace_post_grad(fn, args, **kwargs) -> torch.fx.GraphModule:
    """``trace_replacement`` plus Inductor's post-grad ``view_to_reshape``: by the time custom
    post-grad passes run, every ``aten.view`` has become ``aten.reshape``, so search graphs with
    views must say reshape to match."""
    from torch._inductor.fx_passes.post_grad import view_to_reshape

    gm = trace_replacement(fn, args, **kwargs)
    view_to_reshape(gm)
    gm.recompile()
    return gm


# vLLM's forms read q, k and the cache in one dtype and cast cos/sin to q's (no-ops): their graph
# is the same in any dtype, so one dtype is traced (an fp32 trace was a duplicate that
# skip_duplicates dropped, 12 traces of a cold start's registration; tests/test_rope.py checks).
SAME_DTYPE_FORMS_TRACED_IN = (torch.bfloat16,)


def register_vllm_rope_forms(pm_pass, same_dtype_forms_in: tuple[torch.dtype, ...] = SAME_DTYPE_FORMS_TRACED_IN):
    from .matcher_utils import register_replacement

    # (search, replacement, q/k example shapes given a head count, sentinel scalars besides half,
    # extra check, dtypes, whether q/k norm weights are inputs). For one output node the first
    # registered pattern that matches wins, so first: q/k normed per head right before the
    # rotation (Qwen3) -> one kernel, no bf16 round trip in between. The rope family runs before
    # the rms_norm family, so those norms are still aten (or IR) nodes here.
    both = same_dtype_forms_in
    norms = [M.vllm_rms] + ([M.ir_rms] if M.vllm_ir_available() else [])
    forms = [(*_make_qk_norm_heads(is_neox, norm), lambda h: (8, h, _HEAD), {"eps": M.EPS_SENTINEL}, _check_qk_norm,
              (torch.bfloat16,), True) for norm in norms for is_neox in (True, False)]
    forms += [(*_make_vllm(is_neox, per_head), lambda h: (8, h * _HEAD), {"head_size": _HEAD}, _check_vllm, both, False)
              for per_head in (False, True) for is_neox in (True, False)]
    # q/k per head on input (Qwen3: after the q/k norm): no head_size in the graph
    forms += [(*_make_vllm_heads(is_neox), lambda h: (8, h, _HEAD), {}, _check_vllm, both, False)
              for is_neox in (True, False)]
    for search, repl, qk_shape, scalars, check, dtypes, weights in forms:
        for half in _HALVES.values():
            for dt in dtypes:
                pos = torch.zeros(8, dtype=torch.int64)
                # 3 q heads, 2 kv heads: no tensor width equals a sentinel
                q = torch.empty(*qk_shape(3), dtype=dt)
                k = torch.empty(*qk_shape(2), dtype=dt)
                norm_w = [torch.empty(_HEAD, dtype=dt), torch.empty(_HEAD, dtype=dt)] if weights else []
                cache = torch.empty(32, 2 * half, dtype=dt)
                register_replacement(search, repl, [pos, q, k, *norm_w, cache], _trace_post_grad, pm_pass,
                                     extra_check=check, skip_duplicates=True,
                                     scalar_workaround={**scalars, "half": half})


def register_patterns(pm_pass) -> None:
    from .matcher_utils import register_replacement

    for dt in (torch.bfloat16, torch.float32):
        q = torch.empty(2, 8, 4, 64, dtype=dt).transpose(1, 2)  # HF layout: [B, H, S, D] view of [B, S, H, D]
        k = torch.empty(2, 8, 2, 64, dtype=dt).transpose(1, 2)
        forms = [(_hf_rope, 64), (_hf_rope_partial, 32), (_hf_rope_chunk, 64), (_hf_rope_rotated_first, 64)]
        if dt is not torch.float32:  # in fp32 the upcast is no cast: the plain form
            forms.append((_hf_rope_upcast, 64))
        for form, width in forms:  # width: of cos/sin (32: partial rotary)
            cos, sin = torch.empty(2, 8, width, dtype=dt), torch.empty(2, 8, width, dtype=dt)
            register_replacement(form, _repl_hf, [q, k, cos, sin], trace_replacement, pm_pass,
                                 extra_check=_check_hf, skip_duplicates=True)
    q = torch.empty(2, 8, 4, 64, dtype=torch.bfloat16).transpose(1, 2)
    k = torch.empty(2, 8, 2, 64, dtype=torch.bfloat16).transpose(1, 2)
    for width, form in ((64, _hf_rope_cast), (32, _hf_rope_partial_cast)):
        cos, sin = torch.empty(2, 8, width), torch.empty(2, 8, width)
        register_replacement(form, _repl_hf, [q, k, cos, sin], trace_replacement, pm_pass,
                             extra_check=_check_hf_cast, skip_duplicates=True)
    register_vllm_rope_forms(pm_pass)
    _register_c_forms(pm_pass)


def _c_rotary(positions, query, key, head_size, cos_sin_cache, is_neox):
    # _C.rotary_embedding(positions, Tensor! query, Tensor!? key, int head_size, cache, bool is_neox):
    # the rotary width is the cache's.
    return rope_cache(positions, query, key, cos_sin_cache, head_size, cos_sin_cache.shape[-1], is_neox)


def _check_c_rotary(match) -> bool:
    return isinstance(match.kwargs.get("key"), torch.fx.Node)  # key=None (KV sharing) not handled


def _register_c_forms(pm_pass) -> None:
    if (op := M.c_op("rotary_embedding")) is not None:
        M.register_auto_functionalized_form(pm_pass, op, [1, 2], _c_rotary, _check_c_rotary)


# aten ops whose survival after our pass means a RoPE nearly matched: HF's rotate_half leaves a
# neg (silu's decomposition has one too), vLLM's cos/sin gather an index (index_select is
# decomposed to aten.index by then).
ANCHOR_OPS = (torch.ops.aten.neg.default, torch.ops.aten.index.Tensor)


def _feeds_our_rope(node: torch.fx.Node, hops: int = 16) -> bool:
    """Whether the value reaches one of our RoPE ops within a few steps (a cos/sin row lookup our
    op reads, e.g. GPT-J's ``embed_positions[position_ids]``, is not a missed rotation)."""
    from torch._higher_order_ops.triton_kernel_wrap import kernel_side_table

    hop = torch.ops.higher_order.triton_kernel_wrapper_functional

    def ours(n: torch.fx.Node) -> bool:  # after AOT our op is its kernel's launch
        if n.target is not hop:
            return False
        fn = kernel_side_table.get_kernel(n.kwargs["kernel_idx"])
        while hasattr(fn, "fn"):  # Autotuner / Heuristics -> JITFunction -> the Python function
            fn = fn.fn
        return fn is _rope_kernel.fn

    frontier = {node}
    for _ in range(hops):
        frontier = {u for n in frontier for u in n.users}
        if any(ours(u) for u in frontier):
            return True
    return False


def _is_table(node, hops: int = 4) -> bool:
    """Whether ``node`` is a 2-d graph input (a buffer such as a [positions, rotary dims] cos/sin
    cache), seen through views and dtype casts: a row lookup in it is a table lookup, not a gather
    of computed activations (a MoE block's ``hidden_states[token_ids]``) nor of a 3-d expert
    weight (JetMoE's per-expert parameters)."""
    val = node.meta.get("val") if isinstance(node, torch.fx.Node) else None
    if not isinstance(val, torch.Tensor) or val.dim() != 2:
        return False
    aten, prims = torch.ops.aten, torch.ops.prims
    through = (aten.view.default, aten.reshape.default, aten.unsqueeze.default, aten.squeeze.dim,
               aten.slice.Tensor, prims.convert_element_type.default, aten._to_copy.default)
    for _ in range(hops):
        if not isinstance(node, torch.fx.Node):
            return False
        if node.op in ("placeholder", "get_attr"):
            return True
        if node.op != "call_function" or node.target not in through or not node.args:
            return False
        node = node.args[0]
    return False


def _by_expert_ids(index_node: torch.fx.Node, hops: int = 6) -> bool:
    """Whether an ``index`` reads rows by ids a sort or top-k made (a MoE block's per-expert
    bias, ``bias[expert_ids]``): an expert lookup, not a cos/sin lookup by position."""
    aten = torch.ops.aten
    idx = index_node.args[1] if len(index_node.args) > 1 else None
    frontier = [i for i in (idx or ()) if isinstance(i, torch.fx.Node)]
    for _ in range(hops):
        nxt = []
        for n in frontier:
            if n.op != "call_function":
                continue
            target = n.target
            if target in (aten.sort.default, aten.topk.default, aten.argsort.default,
                          torch.ops.higher_order.triton_kernel_wrapper_functional) or \
                    getattr(target, "namespace", None) == "tri_inductor":  # our sort / route kernels
                return True
            nxt += [a for a in n.args if isinstance(a, torch.fx.Node)]
        frontier = nxt
    return False


def is_near_miss(node: torch.fx.Node) -> bool:
    """A neg that builds a rotated half (``cat((-x2, x1))``, GPT-J's ``stack((-x2, x1))``), or an
    index into a cos/sin cache; silu's and softmax's negs are not RoPE."""
    aten = torch.ops.aten
    if node.target is aten.index.Tensor:  # a cos/sin table, not a boolean (padding) mask
        val = node.meta.get("val")
        return (isinstance(val, torch.Tensor) and val.is_floating_point() and bool(node.args)
                and _is_table(node.args[0]) and not _by_expert_ids(node) and not _feeds_our_rope(node))
    # the rotated half joins the other through a cat or stack, directly or through a view
    # (post-grad, ``stack`` is ``cat`` of ``unsqueeze``d halves)
    views = (aten.unsqueeze.default, aten.view.default, aten.reshape.default)
    users = set(node.users) | {v for u in node.users if u.target in views for v in u.users}
    return any(u.target in (aten.cat.default, aten.stack.default) for u in users)
