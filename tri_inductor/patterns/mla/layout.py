"""The KV-cache layout kernels of vLLM's MLA layers, in Triton.

An MLA layer (DeepSeek-V2/V3) keeps one latent cache per layer, ``kv_cache`` [num_blocks,
block_size, L + R] (L = kv_lora_rank, R = qk_rope_head_dim; 512 + 64 for DeepSeek).  Around
vLLM's Triton decode kernel these run as vLLM CUDA ops or ATen kernels; we want Triton only:

* :func:`concat_and_cache`: ``vllm._custom_ops.concat_and_cache_mla(..., kv_cache_dtype="auto")``
  (CUDA ``concat_and_cache_mla_kernel``, ``csrc/cache_kernels.cu``): token ``t`` of the
  ``slot_mapping.size(0)`` tokens goes to slot ``slot_mapping[t]`` (negative: a padding token,
  skipped): ``kv_cache[slot // bs, slot % bs] = cat(kv_c[t], k_pe[t])``.  ``kv_c`` / ``k_pe``
  may have more rows than ``slot_mapping`` (vLLM V1 pads them for CUDA graphs): those rows are
  never read.
* :func:`gather_cache`: ``vllm._custom_ops.gather_and_maybe_dequant_cache(..., "auto", ...)``
  (the chunked-context gather of MLA prefill): row ``i < num_tokens`` of ``dst`` gets the cache
  entry of position ``i - cu_seq_lens[s] (+ seq_starts[s])`` of sequence ``s = token_to_seq[i]``
  through ``block_table[s]``; a row with ``i >= cu_seq_lens[s + 1]`` and every row past
  ``num_tokens`` are left alone, as in vLLM.
* :func:`copy_` / :func:`fill_`: ATen's ``Tensor.copy_`` / ``fill_`` on strided views (``q_pe``
  into ``qbuf[..., 512:]``, ``output[:n].fill_(0)``), eager around the decode kernel.

vLLM's kernels assume a unit stride in the last dimension; ours take every stride.  Offsets are
64-bit wherever a product can pass 2**31 (``num_blocks * block_size * 576`` elements can).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .._launch import launch
from ..moe.align import moe_fill_kernel

__all__ = ["concat_and_cache", "gather_cache", "copy_", "fill_",
           "mla_concat_and_cache_kernel", "mla_gather_cache_kernel", "strided_copy_kernel"]


@triton.jit
def mla_concat_and_cache_kernel(kv_c_ptr, k_pe_ptr, cache_ptr, slot_ptr, num_tokens, block_size,
                                s_c_t, s_c_d, s_pe_t, s_pe_d, s_cache_b, s_cache_s, s_cache_d,
                                L: tl.constexpr, R: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr):
    # Tile [BLOCK_T tokens, BLOCK_D cache columns]; column d < L comes from kv_c, the rest from
    # k_pe (512 + 64 in tiles of 64: no tile mixes the two, no masked-off lanes).
    offs_t = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)
    offs_d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    t_ok = offs_t < num_tokens
    slot = tl.load(slot_ptr + offs_t, mask=t_ok, other=-1).to(tl.int64)
    t_ok = t_ok & (slot >= 0)  # a negative slot is a padding token: nothing is written
    t64 = offs_t.to(tl.int64)
    d64 = offs_d.to(tl.int64)
    is_c = (offs_d < L)[None, :] & t_ok[:, None]
    is_pe = ((offs_d >= L) & (offs_d < L + R))[None, :] & t_ok[:, None]
    x_c = tl.load(kv_c_ptr + t64[:, None] * s_c_t + d64[None, :] * s_c_d, mask=is_c)
    x_pe = tl.load(k_pe_ptr + t64[:, None] * s_pe_t + (d64 - L)[None, :] * s_pe_d, mask=is_pe)
    x = tl.where(is_c, x_c, x_pe)
    blk = tl.where(t_ok, slot // block_size, 0)
    off = tl.where(t_ok, slot % block_size, 0)
    dst = cache_ptr + (blk * s_cache_b + off * s_cache_s)[:, None] + d64[None, :] * s_cache_d
    tl.store(dst, x.to(cache_ptr.dtype.element_ty), mask=is_c | is_pe)


@triton.jit
def mla_gather_cache_kernel(src_ptr, dst_ptr, block_table_ptr, cu_ptr, tts_ptr, starts_ptr, num_tokens, block_size,
                            s_src_b, s_src_s, s_src_d, s_dst_t, s_dst_d, s_bt,
                            D: tl.constexpr, HAS_STARTS: tl.constexpr, BLOCK_T: tl.constexpr,
                            BLOCK_D: tl.constexpr):
    offs_t = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)
    offs_d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    t_ok = offs_t < num_tokens
    seq = tl.load(tts_ptr + offs_t, mask=t_ok, other=0).to(tl.int64)
    seq_start = tl.load(cu_ptr + seq, mask=t_ok, other=0).to(tl.int64)
    seq_end = tl.load(cu_ptr + seq + 1, mask=t_ok, other=0).to(tl.int64)
    t_ok = t_ok & (offs_t < seq_end)  # vLLM's `if (token_id >= batch_end) return;`
    pos = offs_t - seq_start
    if HAS_STARTS:
        pos += tl.load(starts_ptr + seq, mask=t_ok, other=0).to(tl.int64)
    pos = tl.where(t_ok, pos, 0)
    blk = tl.load(block_table_ptr + seq * s_bt + pos // block_size, mask=t_ok, other=0).to(tl.int64)
    d64 = offs_d.to(tl.int64)
    ok = t_ok[:, None] & (offs_d < D)[None, :]
    src = src_ptr + (blk * s_src_b + (pos % block_size) * s_src_s)[:, None] + d64[None, :] * s_src_d
    x = tl.load(src, mask=ok)
    dst = dst_ptr + (offs_t.to(tl.int64) * s_dst_t)[:, None] + d64[None, :] * s_dst_d
    tl.store(dst, x.to(dst_ptr.dtype.element_ty), mask=ok)


@triton.jit
def strided_copy_kernel(dst_ptr, src_ptr, value, B, C, n_b_tiles, n_c_tiles,
                        d_sa, d_sb, d_sc, s_sa, s_sb, s_sc,
                        FILL: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_C: tl.constexpr):
    """dst[a, b, c] = src[a, b, c] (converted to dst's dtype), or = ``value`` when FILL; one
    [BLOCK_B, BLOCK_C] tile per program, tiles numbered on one grid axis (no 65535 limit)."""
    pid = tl.program_id(0)
    pc = pid % n_c_tiles
    pb = (pid // n_c_tiles) % n_b_tiles
    a = (pid // n_c_tiles // n_b_tiles).to(tl.int64)
    ob = pb * BLOCK_B + tl.arange(0, BLOCK_B)
    oc = pc * BLOCK_C + tl.arange(0, BLOCK_C)
    ok = (ob < B)[:, None] & (oc < C)[None, :]
    ob64 = ob.to(tl.int64)
    oc64 = oc.to(tl.int64)
    if FILL:
        # built in fp32 / int64 and converted at the store: Triton 3.6's interpreter has no bf16
        # scalar constant (tl.full(value, bf16) fails there; the GPU rounds the same either way)
        if dst_ptr.dtype.element_ty.is_floating():
            x = tl.zeros([BLOCK_B, BLOCK_C], tl.float32) + value
        else:
            x = tl.zeros([BLOCK_B, BLOCK_C], tl.int64) + value
    else:
        x = tl.load(src_ptr + a * s_sa + ob64[:, None] * s_sb + oc64[None, :] * s_sc, mask=ok)
    tl.store(dst_ptr + a * d_sa + ob64[:, None] * d_sb + oc64[None, :] * d_sc, x.to(dst_ptr.dtype.element_ty),
             mask=ok)


# ---------------------------------------------------------------------------------------------
# Launchers
CACHE_BLOCK_T = 16  # tokens per tile of the cache write / gather
CACHE_BLOCK_D = 64  # entry columns per tile: 576 = 9 * 64, and L = 512 falls on a tile edge
COPY_TILE = 2048    # elements per tile of copy_ / fill_
FILL_BLOCK = 1024   # moe_fill_kernel's block (contiguous fills)
_INT32_MAX = 2**31 - 1


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise ValueError(msg)


def _same_device(what: str, *ts: torch.Tensor) -> None:
    devs = {t.device for t in ts if t is not None}
    _check(len(devs) == 1, f"{what}: tensors on different devices: {sorted(map(str, devs))}")


def _cache_tiles(n_tokens: int, D: int) -> tuple[tuple[int, int], int]:
    """(grid, BLOCK_D) of the cache write / gather: [tokens, columns] tiles."""
    block_d = min(CACHE_BLOCK_D, triton.next_power_of_2(D))
    return (triton.cdiv(n_tokens, CACHE_BLOCK_T), triton.cdiv(D, block_d)), block_d


def concat_and_cache(kv_c: torch.Tensor, k_pe: torch.Tensor, kv_cache: torch.Tensor,
                     slot_mapping: torch.Tensor) -> None:
    """``kv_cache[slot // bs, slot % bs] = cat(kv_c[t], k_pe[t])`` for ``t < len(slot_mapping)``
    with ``slot = slot_mapping[t] >= 0`` (vLLM's ``concat_and_cache_mla``, kv_cache_dtype "auto").

    kv_c [T', L], k_pe [T', R] or [T', 1, R] (T' >= len(slot_mapping)), kv_cache [num_blocks,
    block_size, L + R] of the same dtype; slot_mapping int64 or int32 (any 1-D layout)."""
    if k_pe.dim() == 3:
        _check(k_pe.shape[1] == 1, f"concat_and_cache: k_pe must be [T, R] or [T, 1, R], got {tuple(k_pe.shape)}")
        k_pe = k_pe[:, 0]
    _check(kv_c.dim() == 2 and k_pe.dim() == 2 and kv_cache.dim() == 3,
           f"concat_and_cache: want kv_c [T, L], k_pe [T, R], kv_cache [blocks, block_size, L + R]; got "
           f"{tuple(kv_c.shape)}, {tuple(k_pe.shape)}, {tuple(kv_cache.shape)}")
    slots = slot_mapping.reshape(-1) if slot_mapping.dim() != 1 else slot_mapping
    _check(slots.dtype in (torch.int64, torch.int32), f"concat_and_cache: slot_mapping must be int64/int32, "
                                                      f"got {slot_mapping.dtype}")
    L, R = int(kv_c.shape[1]), int(k_pe.shape[1])
    T = int(slots.shape[0])  # vLLM: slot_mapping.size(0) is the token count (kv_c may be padded)
    _check(kv_cache.shape[2] == L + R, f"concat_and_cache: kv_cache entry is {kv_cache.shape[2]} wide, "
                                       f"kv_c + k_pe give {L} + {R}")
    _check(kv_c.shape[0] >= T and k_pe.shape[0] >= T,
           f"concat_and_cache: {T} slots but kv_c has {kv_c.shape[0]} rows and k_pe {k_pe.shape[0]}")
    _check(kv_c.dtype == k_pe.dtype == kv_cache.dtype,
           f"concat_and_cache: dtypes differ (kv_c {kv_c.dtype}, k_pe {k_pe.dtype}, kv_cache {kv_cache.dtype}); "
           "kv_cache_dtype 'auto' stores the input dtype")
    _same_device("concat_and_cache", kv_c, k_pe, kv_cache, slots)
    if T == 0 or kv_cache.numel() == 0:
        return
    if slots.stride(0) != 1:
        slots = slots.contiguous()  # a copy only for an odd caller (vLLM passes flatten())
    grid, block_d = _cache_tiles(T, L + R)
    launch(mla_concat_and_cache_kernel, grid, kv_c, k_pe, kv_cache, slots, T, int(kv_cache.shape[1]),
           kv_c.stride(0), kv_c.stride(1), k_pe.stride(0), k_pe.stride(1),
           kv_cache.stride(0), kv_cache.stride(1), kv_cache.stride(2),
           L=L, R=R, BLOCK_T=CACHE_BLOCK_T, BLOCK_D=block_d, num_warps=4)


def gather_cache(src_cache: torch.Tensor, dst: torch.Tensor, block_table: torch.Tensor, cu_seq_lens: torch.Tensor,
                 token_to_seq: torch.Tensor, num_tokens: int | torch.Tensor,
                 seq_starts: torch.Tensor | None = None) -> None:
    """Rows ``i < num_tokens`` of ``dst`` [rows, D] from the paged cache ``src_cache``
    [num_blocks, block_size, D] (vLLM's ``gather_and_maybe_dequant_cache``, "auto"):
    ``s = token_to_seq[i]``, ``p = i - cu_seq_lens[s] + (seq_starts[s] or 0)``,
    ``dst[i] = src_cache[block_table[s, p // block_size], p % block_size]``; skipped where
    ``i >= cu_seq_lens[s + 1]``.  ``num_tokens`` is a host int (vLLM's op takes int64; its MLA
    caller passes a 0-d CPU tensor, read here with ``int()``)."""
    n = int(num_tokens)
    _check(src_cache.dim() == 3 and dst.dim() == 2,
           f"gather_cache: want src_cache [blocks, block_size, D] and dst [rows, D], got "
           f"{tuple(src_cache.shape)}, {tuple(dst.shape)}")
    D = int(dst.shape[1])
    _check(src_cache.shape[2] == D, f"gather_cache: cache entries are {src_cache.shape[2]} wide, dst rows {D}")
    _check(src_cache.dtype == dst.dtype, f"gather_cache: src_cache {src_cache.dtype} vs dst {dst.dtype} "
                                         "(kv_cache_dtype 'auto' copies, never converts)")
    _check(0 <= n <= dst.shape[0] and n <= token_to_seq.numel(),
           f"gather_cache: num_tokens={n} with dst of {dst.shape[0]} rows, token_to_seq of {token_to_seq.numel()}")
    _check(block_table.dim() == 2, f"gather_cache: block_table must be [seqs, blocks], got {tuple(block_table.shape)}")
    ints = {"block_table": block_table, "cu_seq_lens": cu_seq_lens, "token_to_seq": token_to_seq,
            "seq_starts": seq_starts}
    for name, t in ints.items():
        _check(t is None or t.dtype in (torch.int32, torch.int64), f"gather_cache: {name} must be int32/int64, "
                                                                    f"got {t.dtype if t is not None else None}")
    _same_device("gather_cache", src_cache, dst, block_table, cu_seq_lens, token_to_seq, seq_starts)
    if n == 0 or D == 0:
        return
    # 1-D index tensors: unit stride (a copy only for an odd caller; vLLM's rows are contiguous)
    cu, tts = cu_seq_lens.reshape(-1).contiguous(), token_to_seq.reshape(-1).contiguous()
    starts = seq_starts.reshape(-1).contiguous() if seq_starts is not None else None
    if block_table.stride(1) != 1:
        block_table = block_table.contiguous()
    grid, block_d = _cache_tiles(n, D)
    launch(mla_gather_cache_kernel, grid, src_cache, dst, block_table, cu, tts, starts if starts is not None else cu,
           n, int(src_cache.shape[1]), src_cache.stride(0), src_cache.stride(1), src_cache.stride(2),
           dst.stride(0), dst.stride(1), block_table.stride(0),
           D=D, HAS_STARTS=starts is not None, BLOCK_T=CACHE_BLOCK_T, BLOCK_D=block_d, num_warps=4)


def _collapse(shape, *strides_of) -> tuple[list[int], list[list[int]]]:
    """Drop size-1 dims and merge neighbours that are one run in every stride set (a contiguous
    [B, N, 64] is one run of B*N*64): fewer dims, longer tiles.  Returns at least one dim."""
    dims = [(s, [st[i] for st in strides_of]) for i, s in enumerate(shape) if s != 1]
    out: list[tuple[int, list[int]]] = []
    for size, st in dims:
        if out and all(p == q * size for p, q in zip(out[-1][1], st)):
            out[-1] = (out[-1][0] * size, st)
        else:
            out.append((size, st))
    if not out:
        out = [(1, [1] * len(strides_of))]
    return [s for s, _ in out], [[st[k] for _, st in out] for k in range(len(strides_of))]


def _launch_strided(dst: torch.Tensor, src: torch.Tensor | None, value, what: str) -> None:
    strides = [list(dst.stride())] + ([list(src.stride())] if src is not None else [])
    shape, st = _collapse(list(dst.shape), *strides)
    _check(len(shape) <= 3, f"{what}: {dst.dim()}-D strided layout {tuple(dst.shape)} / {tuple(dst.stride())} "
                            f"is {len(shape)} dims after merging runs; at most 3 are supported")
    _check(all(s != 0 for s in st[0]), f"{what}: dst has a zero stride (an expanded view): writes would overlap")
    pad = 3 - len(shape)
    shape = [1] * pad + shape
    st = [[0] * pad + s for s in st]
    A, B, C = shape
    block_c = min(triton.next_power_of_2(C), 256)
    block_b = max(1, min(triton.next_power_of_2(B), COPY_TILE // block_c))
    n_b, n_c = triton.cdiv(B, block_b), triton.cdiv(C, block_c)
    tiles = A * n_b * n_c
    _check(tiles <= _INT32_MAX, f"{what}: {tiles} tiles exceed one grid axis")
    s_st = st[1] if src is not None else [0, 0, 0]
    launch(strided_copy_kernel, (tiles,), dst, src if src is not None else dst, value, B, C, n_b, n_c,
           *st[0], *s_st, FILL=src is None, BLOCK_B=block_b, BLOCK_C=block_c, num_warps=4)


def copy_(dst: torch.Tensor, src: torch.Tensor) -> None:
    """``dst.copy_(src)`` for tensors of one shape, any strides (each at most 3-D once runs are
    merged), converting to dst's dtype.  dst and src must not overlap in memory."""
    _check(dst.shape == src.shape, f"copy_: shapes differ: dst {tuple(dst.shape)}, src {tuple(src.shape)}")
    _same_device("copy_", dst, src)
    _check(not dst.dtype.is_complex and not src.dtype.is_complex, "copy_: complex tensors are not supported")
    if dst.numel() == 0:
        return
    _launch_strided(dst, src, 0, "copy_")


def _scalar(t: torch.Tensor, value):
    if t.dtype == torch.bool:
        return int(bool(value))
    return float(value) if t.is_floating_point() else int(value)


def fill_(t: torch.Tensor, value) -> None:
    """``t.fill_(value)`` for a contiguous tensor of any rank (``moe_fill_kernel``) or a strided
    view at most 3-D once runs are merged (a row slice ``out[:n]`` of a strided tensor)."""
    _check(not t.dtype.is_complex, "fill_: complex tensors are not supported")
    n = t.numel()
    if n == 0:
        return
    v = _scalar(t, value)
    if t.is_contiguous() and n <= _INT32_MAX - FILL_BLOCK:  # its offsets are 32-bit
        launch(moe_fill_kernel, (triton.cdiv(n, FILL_BLOCK),), t, v, n, BLOCK=FILL_BLOCK)
    else:
        _launch_strided(t, None, v, "fill_")
