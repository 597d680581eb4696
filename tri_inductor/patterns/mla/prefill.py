"""MLA prefill attention in Triton: variable-length flash attention over packed sequences, and the
merge of two partial results by their log-sum-exp.

Why: vLLM's MLA prefill (``MLACommonImpl.forward_mha`` / ``_compute_prefill_context``) calls
FlashAttention's ``flash_attn_varlen_func``, a CUDA extension, then ``merge_attn_states`` (CUDA on
NVIDIA).  We want every GPU kernel in Triton.

* :func:`varlen_attention`: FlashAttention's varlen semantics (``cu_seqlens``, bottom-right causal
  alignment, ``lse`` ``[H, Tq]`` in natural log) for MLA's split key: ``q . k = q_nope . k_nope +
  q_pe . k_pe``, two dot products, so the rope key ``k_pe`` (one head, shared by all heads) is
  broadcast and the ``[k_nope | k_pe]`` concat vLLM builds is never materialised; the value head
  size is its own (``Dv != Dn + Dr``: no zero-padded V either).
* :func:`merge_states`: vLLM's ``merge_attn_states`` (prefix = ``a``, suffix = ``b``), with rows of
  weight zero selected away rather than multiplied by 0 (their rows may hold NaN/inf scratch).

Grid ``(q_blocks, H, S)``: ``q_blocks = cdiv(max_seqlen_q, BLOCK_M)``; a program past its
sequence's queries exits.  Programs of one (sequence, head) are adjacent in launch order, so they
share their K/V tiles in L2.  Head dims that are not powers of two are padded inside the kernel
with masks (GLM: ``Dn`` 192 -> 256 on the load, never in memory).
"""
from __future__ import annotations

import dataclasses

import torch
import triton
import triton.language as tl

from .._launch import launch
from ..paged_attention._common import LOG2E, softmax_update

LN2 = tl.constexpr(0.6931471805599453)
DTYPES = (torch.bfloat16, torch.float16, torch.float32)
MAX_DIM = 256          # per part (Dn, Dr, Dv): the configs below are sized for it
MAX_GRID_Z = 65535     # CUDA's limit on grid axis 2 (sequences)
SMEM_SM90 = 232448     # H100/H200 opt-in shared memory per block


@dataclasses.dataclass(frozen=True)
class PrefillCfg:
    block_m: int
    block_n: int
    num_warps: int
    num_stages: int


def dim_pad(d: int) -> int:
    return max(16, triton.next_power_of_2(d))  # tl.dot needs >= 16 on every side


def prefill_cfg(dn: int, dr: int, dv: int, max_seqlen_q: int, dtype: torch.dtype = torch.bfloat16) -> PrefillCfg:
    """Tiles for Hopper (sm_90 ptxas, 16-aligned strides: no spills, shared memory in brackets).
    DeepSeek/Mistral (padded Dn, Dv <= 128): 128 x 64, 8 warps (two warpgroups of 64 rows), 3
    stages (168 / 128 KiB); 64 x 64, 4 warps when the queries are short (less of the block idle,
    144 / 112 KiB).  Wider heads (GLM: Dn 192 -> 256, Dv 256): 64 x 64, 8 warps, 2 stages
    (184 KiB): the 64 x 256 fp32 accumulator spills on 4 warps.  fp32 inputs (not a vLLM path:
    tests, fallbacks): twice the bytes per element, 64 x 32, 2 stages (96 KiB DeepSeek)."""
    del dr  # the rope part (64) is small next to Dn/Dv: it never decides the tile
    if dtype == torch.float32:
        return PrefillCfg(64, 32, 4, 2)
    if max(dim_pad(dn), dim_pad(dv)) > 128:
        return PrefillCfg(64, 64, 8, 2)
    if max_seqlen_q <= 64:
        return PrefillCfg(64, 64, 4, 3)
    return PrefillCfg(128, 64, 8, 3)


# ----------------------------------------------------------------------------- kernels

@triton.jit
def _load(ptrs, m0, m1, FULL0: tl.constexpr, FULL1: tl.constexpr):
    """``ptrs`` [A, B] under masks ``m0`` [A] / ``m1`` [B]; a ``FULL`` side is known all-true and
    drops out of the mask (an unmasked contiguous dim keeps vectorised loads)."""
    if FULL0 and FULL1:
        x = tl.load(ptrs)
    elif FULL0:
        x = tl.load(ptrs, mask=m1[None, :], other=0.0)
    elif FULL1:
        x = tl.load(ptrs, mask=m0[:, None], other=0.0)
    else:
        x = tl.load(ptrs, mask=m0[:, None] & m1[None, :], other=0.0)
    return x


@triton.jit
def _tile(q_n, q_r, m_i, l_i, acc, start_n, k_len, q_lim, kn_base, kr_base, v_base, s_knt, s_krt, s_vt,
          offs_n, offs_dn, offs_dr, offs_dv, dn_ok, dr_ok, dv_ok, qk_scale,
          DN_FULL: tl.constexpr, DR_FULL: tl.constexpr, DV_FULL: tl.constexpr,
          CAUSAL: tl.constexpr, MASKED: tl.constexpr, IEEE: tl.constexpr):
    """One BLOCK_N key tile: scores, online softmax, P @ V.  ``MASKED`` False: the caller proved
    every key of the tile in range and visible to every row (no key or causal mask)."""
    pos = start_n + offs_n
    valid = pos < k_len
    rows = pos.to(tl.int64)  # key row * row stride overflows int32 on long sequences
    kn_t = _load(kn_base + offs_dn[:, None] + rows[None, :] * s_knt, dn_ok, valid, DN_FULL, not MASKED)
    kr_t = _load(kr_base + offs_dr[:, None] + rows[None, :] * s_krt, dr_ok, valid, DR_FULL, not MASKED)
    v = _load(v_base + rows[:, None] * s_vt + offs_dv[None, :], valid, dv_ok, not MASKED, DV_FULL)
    s = tl.dot(q_n, kn_t, input_precision="ieee" if IEEE else "tf32")
    s = tl.dot(q_r, kr_t, s, input_precision="ieee" if IEEE else "tf32")
    if MASKED:
        keep = valid[None, :]
        if CAUSAL:
            keep = keep & (pos[None, :] <= q_lim[:, None])
        s = tl.where(keep, s, float("-inf"))
    m_i, l_i, acc, p = softmax_update(s, qk_scale, m_i, l_i, acc)  # log2 units: the softmax runs on exp2
    # P rounded to V's dtype before the product, as FlashAttention does (tensor-core operands)
    acc = tl.dot(p.to(v.dtype), v, acc, input_precision="ieee" if IEEE else "tf32")
    return m_i, l_i, acc


@triton.jit
def mla_varlen_attn_kernel(
        out_ptr, lse_ptr, q_ptr, kn_ptr, kr_ptr, v_ptr, cu_q_ptr, cu_k_ptr, qk_scale,
        s_qt, s_qh, s_knt, s_knh, s_krt, s_krh, s_vt, s_vh, s_ot, s_oh, s_lh, s_lt,
        DN: tl.constexpr, DN_PAD: tl.constexpr, DR: tl.constexpr, DR_PAD: tl.constexpr,
        DV: tl.constexpr, DV_PAD: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
        CAUSAL: tl.constexpr, IEEE: tl.constexpr):
    q_blk = tl.program_id(0)
    if CAUSAL:
        # the last query blocks see the most keys: start them first (tail balance)
        q_blk = tl.num_programs(0) - 1 - q_blk
    head = tl.program_id(1)
    seq = tl.program_id(2)
    q_start = tl.load(cu_q_ptr + seq)
    q_len = tl.load(cu_q_ptr + seq + 1) - q_start
    q_first = q_blk * BLOCK_M
    if q_first < q_len:
        k_start = tl.load(cu_k_ptr + seq)
        k_len = tl.load(cu_k_ptr + seq + 1) - k_start

        offs_m = q_first + tl.arange(0, BLOCK_M)
        offs_n = tl.arange(0, BLOCK_N)
        offs_dn = tl.arange(0, DN_PAD)
        offs_dr = tl.arange(0, DR_PAD)
        offs_dv = tl.arange(0, DV_PAD)
        dn_ok = offs_dn < DN
        dr_ok = offs_dr < DR
        dv_ok = offs_dv < DV
        row_ok = offs_m < q_len
        q_rows = (q_start + offs_m).to(tl.int64)
        q_base = q_ptr + head * s_qh + q_rows[:, None] * s_qt
        q_n = _load(q_base + offs_dn[None, :], row_ok, dn_ok, False, DN == DN_PAD)
        q_r = _load(q_base + DN + offs_dr[None, :], row_ok, dr_ok, False, DR == DR_PAD)
        k0 = k_start.to(tl.int64)
        kn_base = kn_ptr + k0 * s_knt + head * s_knh
        kr_base = kr_ptr + k0 * s_krt + head * s_krh  # s_krh 0: the shared rope key
        v_base = v_ptr + k0 * s_vt + head * s_vh

        # Bottom-right causal: row i sees keys j <= i + (k_len - q_len).  Keys < full_hi are
        # seen by every row of the block (no mask); tiles past hi are seen by none (skipped).
        q_lim = offs_m + (k_len - q_len)
        if CAUSAL:
            q_last = tl.minimum(q_first + BLOCK_M, q_len) - 1
            hi = tl.minimum(tl.maximum(q_last + k_len - q_len + 1, 0), k_len)
            full_hi = tl.minimum(tl.maximum(q_first + k_len - q_len + 1, 0), k_len)
        else:
            hi = k_len
            full_hi = k_len
        n_full = full_hi // BLOCK_N
        n_tiles = tl.cdiv(hi, BLOCK_N)

        m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
        l_i = tl.zeros([BLOCK_M], tl.float32)
        acc = tl.zeros([BLOCK_M, DV_PAD], tl.float32)
        for t in range(0, n_full):
            m_i, l_i, acc = _tile(q_n, q_r, m_i, l_i, acc, t * BLOCK_N, k_len, q_lim, kn_base, kr_base, v_base,
                                  s_knt, s_krt, s_vt, offs_n, offs_dn, offs_dr, offs_dv, dn_ok, dr_ok, dv_ok,
                                  qk_scale, DN == DN_PAD, DR == DR_PAD, DV == DV_PAD, CAUSAL, False, IEEE)
        for t in range(n_full, n_tiles):
            m_i, l_i, acc = _tile(q_n, q_r, m_i, l_i, acc, t * BLOCK_N, k_len, q_lim, kn_base, kr_base, v_base,
                                  s_knt, s_krt, s_vt, offs_n, offs_dn, offs_dr, offs_dv, dn_ok, dr_ok, dv_ok,
                                  qk_scale, DN == DN_PAD, DR == DR_PAD, DV == DV_PAD, CAUSAL, True, IEEE)

        # A row that saw no key (empty context, causal rows above the first key): l = 0,
        # acc = 0 -> output 0 and lse -inf, so a merge gives it weight 0.
        seen = l_i > 0.0
        o = acc / tl.where(seen, l_i, 1.0)[:, None]
        lse = tl.where(seen, (m_i + tl.log2(tl.where(seen, l_i, 1.0))) * LN2, float("-inf"))
        tl.store(out_ptr + q_rows[:, None] * s_ot + head * s_oh + offs_dv[None, :],
                 o.to(out_ptr.dtype.element_ty), mask=row_ok[:, None] & dv_ok[None, :])
        tl.store(lse_ptr + head * s_lh + q_rows * s_lt, lse, mask=row_ok)


@triton.jit
def mla_merge_states_kernel(
        out_ptr, out_lse_ptr, a_ptr, a_lse_ptr, b_ptr, b_lse_ptr, rows_with_a, num_heads,
        s_ot, s_oh, s_at, s_ah, s_bt, s_bh, s_olh, s_olt, s_alh, s_alt, s_blh, s_blt,
        D: tl.constexpr, D_PAD: tl.constexpr, BLOCK_H: tl.constexpr, HAS_OUT_LSE: tl.constexpr):
    t = tl.program_id(0).to(tl.int64)
    heads = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    offs_d = tl.arange(0, D_PAD)
    h_ok = heads < num_heads
    hd_ok = h_ok[:, None] & (offs_d < D)[None, :]
    b_lse = tl.load(b_lse_ptr + heads * s_blh + t * s_blt, mask=h_ok, other=float("-inf"))
    b = tl.load(b_ptr + t * s_bt + heads[:, None] * s_bh + offs_d[None, :], mask=hd_ok, other=0.0).to(tl.float32)
    if t < rows_with_a:
        a_lse = tl.load(a_lse_ptr + heads * s_alh + t * s_alt, mask=h_ok, other=float("-inf"))
        a = tl.load(a_ptr + t * s_at + heads[:, None] * s_ah + offs_d[None, :], mask=hd_ok, other=0.0).to(tl.float32)
        # FA2 reports +inf for an empty sequence, FA3 -inf: both mean "no keys" (as vLLM's merge)
        a_lse = tl.where(a_lse == float("inf"), float("-inf"), a_lse)
        b_lse = tl.where(b_lse == float("inf"), float("-inf"), b_lse)
        mx = tl.maximum(a_lse, b_lse)
        empty = mx == float("-inf")
        mx_safe = tl.where(empty, 0.0, mx)
        wa = tl.exp(a_lse - mx_safe)
        wb = tl.exp(b_lse - mx_safe)
        tot = wa + wb
        inv = 1.0 / tl.where(empty, 1.0, tot)
        # weight 0 selects 0: the rows of an empty side may be NaN/inf scratch (0 * NaN = NaN)
        o = tl.where((wa > 0.0)[:, None], a * (wa * inv)[:, None], 0.0) \
            + tl.where((wb > 0.0)[:, None], b * (wb * inv)[:, None], 0.0)
        lse = tl.where(empty, float("-inf"), mx_safe + tl.log(tl.where(empty, 1.0, tot)))
    else:
        o = b  # vLLM's prefill_tokens_with_context: rows past it have no prefix, b as is
        lse = b_lse
    tl.store(out_ptr + t * s_ot + heads[:, None] * s_oh + offs_d[None, :], o.to(out_ptr.dtype.element_ty), mask=hd_ok)
    if HAS_OUT_LSE:
        tl.store(out_lse_ptr + heads * s_olh + t * s_olt, lse, mask=h_ok)


# ----------------------------------------------------------------------------- host side

def _check_last_contiguous(**tensors: torch.Tensor) -> None:
    for name, t in tensors.items():
        if t.shape[-1] > 1 and t.stride(-1) != 1:
            raise ValueError(f"{name}: last dim stride {t.stride(-1)} (must be 1)")


def varlen_attention(q: torch.Tensor, k_nope: torch.Tensor, k_pe: torch.Tensor, v: torch.Tensor,
                     cu_seqlens_q: torch.Tensor, cu_seqlens_k: torch.Tensor, max_seqlen_q: int, max_seqlen_k: int,
                     scale: float, causal: bool, out: torch.Tensor | None = None, lse: torch.Tensor | None = None,
                     return_lse: bool = False, *, cfg: PrefillCfg | None = None):
    """Variable-length attention with MLA's split key, FlashAttention varlen semantics.

    q ``[Tq, H, Dn + Dr]``; k_nope ``[Tk, H, Dn]``; k_pe ``[Tk, 1 | H, Dr]`` (one head: shared by
    all, read with head stride 0); v ``[Tk, H, Dv]``; any strides with a contiguous last dim
    (k_nope and v may be ``split`` views of one tensor).  ``cu_seqlens_q/k`` int32 ``[S + 1]``;
    ``max_seqlen_q`` sizes the grid (it must bound every sequence's queries; ``max_seqlen_k`` is
    not needed by the kernel, kept for FlashAttention's signature).  ``causal``: bottom-right
    aligned (query i of Lq sees keys j <= i + Lk - Lq).  A query that sees no key gets 0 and lse
    -inf.  ``out`` ``[Tq, H, Dv]`` (q's dtype, strided allowed) and ``lse`` float32 ``[H, Tq]``
    (natural-log log-sum-exp of ``scale * q.k``) are allocated when None; rows outside
    ``cu_seqlens_q[-1]`` are not written.  ``cfg`` overrides the tile heuristic (tests).
    Returns ``(out, lse)`` when ``return_lse`` else ``out``.
    """
    if q.dim() != 3 or k_nope.dim() != 3 or k_pe.dim() != 3 or v.dim() != 3:
        raise ValueError("q, k_nope, k_pe, v must be 3-d [tokens, heads, dim]")
    tq, h, dqk = q.shape
    tk, _, dn = k_nope.shape
    dr, dv = k_pe.shape[2], v.shape[2]
    if k_nope.shape[1] != h or v.shape[1] != h or k_pe.shape[1] not in (1, h):
        raise ValueError(f"heads: q {h}, k_nope {k_nope.shape[1]}, k_pe {k_pe.shape[1]}, v {v.shape[1]}")
    if dqk != dn + dr:
        raise ValueError(f"q head dim {dqk} != Dn {dn} + Dr {dr}")
    if k_pe.shape[0] != tk or v.shape[0] != tk:
        raise ValueError(f"key rows: k_nope {tk}, k_pe {k_pe.shape[0]}, v {v.shape[0]}")
    if not (0 < dn <= MAX_DIM and 0 < dr <= MAX_DIM and 0 < dv <= MAX_DIM):
        raise ValueError(f"head dims Dn {dn}, Dr {dr}, Dv {dv} (each 1..{MAX_DIM})")
    if q.dtype not in DTYPES or any(t.dtype != q.dtype for t in (k_nope, k_pe, v)):
        raise ValueError(f"dtypes q {q.dtype}, k_nope {k_nope.dtype}, k_pe {k_pe.dtype}, v {v.dtype} "
                         "(one of bf16/fp16/fp32 for all)")
    if cu_seqlens_q.dtype != torch.int32 or cu_seqlens_k.dtype != torch.int32 \
            or cu_seqlens_q.dim() != 1 or cu_seqlens_q.shape != cu_seqlens_k.shape:
        raise ValueError("cu_seqlens_q/k must be int32 [S + 1], the same length")
    num_seqs = cu_seqlens_q.shape[0] - 1
    if num_seqs > MAX_GRID_Z:
        raise ValueError(f"{num_seqs} sequences (grid axis 2: at most {MAX_GRID_Z})")
    if out is None:
        out = torch.empty((tq, h, dv), dtype=q.dtype, device=q.device)
    elif tuple(out.shape) != (tq, h, dv) or out.dtype != q.dtype:
        raise ValueError(f"out {tuple(out.shape)} {out.dtype}: expected {(tq, h, dv)} {q.dtype}")
    if lse is None:
        lse = torch.empty((h, tq), dtype=torch.float32, device=q.device)
    elif tuple(lse.shape) != (h, tq) or lse.dtype != torch.float32:
        raise ValueError(f"lse {tuple(lse.shape)} {lse.dtype}: expected {(h, tq)} float32")
    _check_last_contiguous(q=q, k_nope=k_nope, k_pe=k_pe, v=v, out=out)

    if tq > 0 and num_seqs > 0 and max_seqlen_q > 0:
        if cfg is None:
            cfg = prefill_cfg(dn, dr, dv, max_seqlen_q, q.dtype)
        grid = (triton.cdiv(max_seqlen_q, cfg.block_m), h, num_seqs)
        s_krh = k_pe.stride(1) if k_pe.shape[1] == h and h > 1 else 0
        launch(mla_varlen_attn_kernel, grid,
               out, lse, q, k_nope, k_pe, v, cu_seqlens_q, cu_seqlens_k, float(scale) * LOG2E.value,
               q.stride(0), q.stride(1), k_nope.stride(0), k_nope.stride(1), k_pe.stride(0), s_krh,
               v.stride(0), v.stride(1), out.stride(0), out.stride(1), lse.stride(0), lse.stride(1),
               DN=dn, DN_PAD=dim_pad(dn), DR=dr, DR_PAD=dim_pad(dr), DV=dv, DV_PAD=dim_pad(dv),
               BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, CAUSAL=bool(causal), IEEE=q.dtype == torch.float32,
               num_warps=cfg.num_warps, num_stages=cfg.num_stages)
    return (out, lse) if return_lse else out


def merge_block_h(num_heads: int, d: int) -> int:
    """Heads per merge program: about 4096 elements a tile (a few 16-byte loads per thread)."""
    return max(1, min(triton.next_power_of_2(num_heads), 4096 // dim_pad(d)))


def merge_states(out: torch.Tensor, out_lse: torch.Tensor | None, a: torch.Tensor, a_lse: torch.Tensor,
                 b: torch.Tensor, b_lse: torch.Tensor, rows_with_a: int | None = None) -> None:
    """``out = (a * e^a_lse + b * e^b_lse) / (e^a_lse + e^b_lse)`` per (token, head), vLLM's
    ``merge_attn_states`` (a = prefix, b = suffix).  a/b/out ``[T, H, D]`` (strided, last dim
    contiguous); a_lse/b_lse/out_lse float32 ``[H, T]`` (out_lse None: not written).  Rows ``>=
    rows_with_a`` take b and b_lse as they are.  A side with lse -inf (or FA2's +inf) has weight
    0 whatever its rows hold; both -inf: 0 and lse -inf."""
    if a.dim() != 3 or a.shape != b.shape or out.shape != a.shape:
        raise ValueError(f"out {tuple(out.shape)}, a {tuple(a.shape)}, b {tuple(b.shape)}: one [T, H, D]")
    t, h, d = a.shape
    for name, x in (("a_lse", a_lse), ("b_lse", b_lse), ("out_lse", out_lse)):
        if x is not None and (tuple(x.shape) != (h, t) or x.dtype != torch.float32):
            raise ValueError(f"{name} {tuple(x.shape)} {x.dtype}: expected {(h, t)} float32")
    if d > 1024:
        raise ValueError(f"head dim {d} (at most 1024)")
    _check_last_contiguous(out=out, a=a, b=b)
    rows = t if rows_with_a is None else max(0, min(int(rows_with_a), t))
    if t == 0 or h == 0:
        return
    block_h = merge_block_h(h, d)
    lse_out = out_lse if out_lse is not None else b_lse  # never written without HAS_OUT_LSE
    launch(mla_merge_states_kernel, (t, triton.cdiv(h, block_h)),
           out, lse_out, a, a_lse, b, b_lse, rows, h,
           out.stride(0), out.stride(1), a.stride(0), a.stride(1), b.stride(0), b.stride(1),
           lse_out.stride(0), lse_out.stride(1), a_lse.stride(0), a_lse.stride(1), b_lse.stride(0), b_lse.stride(1),
           D=d, D_PAD=dim_pad(d), BLOCK_H=block_h, HAS_OUT_LSE=out_lse is not None, num_warps=4)
