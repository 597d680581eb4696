"""The GEMM Triton kernels. Which one runs, with which tiles, is decided elsewhere
(``heuristics.py``, ``tuning.py``, ``launch.py``); these only compute.

* ``mm_kernel``: tiles of C, BLOCK_K steps of K with ``num_stages`` loads in flight (Hopper:
  async copies + wgmma), GROUP_M-grouped program order so a wave's operands stay in L2. Rows and
  columns past M/N are clamped (``% M``) rather than masked on load, stores are masked; K is
  masked only when ragged. Grid axis 1 splits K (fp32 partials, ``splitk_reduce_kernel``).
* ``mm_tma_kernel``: TMA host-side descriptors (``patterns/_host_tma.py``), one program per tile
  or persistent (one program per SM, optionally warp-specialized): mid and large M.
* ``mm_gemv_kernel``: batch-1 decode, no tensor cores.
* ``splitk_reduce_kernel``: sums split-K partials, adds the bias, applies the fused activation.

Fused gate_up (``ACT`` >= 0): b has 2N columns, gate then up; each program accumulates a gate
tile and the up tile N columns further on from the same A tiles and writes act(gate) * up.
"""
from __future__ import annotations

import triton
import triton.language as tl

from ..activation import act_mul


@triton.jit
def _load_b(b_ptrs, k, k_hi, EVEN_K: tl.constexpr, BLOCK_K: tl.constexpr):
    # One K step's B [BLOCK_K, BLOCK_N] tile; K masked only when ragged.
    if EVEN_K:
        b = tl.load(b_ptrs)
    else:
        kk = k + tl.arange(0, BLOCK_K)
        b = tl.load(b_ptrs, mask=kk[:, None] < k_hi, other=0.0)
    return b


@triton.jit
def _load_k_step(a_ptrs, b_ptrs, k, k_hi, EVEN_K: tl.constexpr, BLOCK_K: tl.constexpr):
    # One K step's A [BLOCK_M, BLOCK_K] and B [BLOCK_K, BLOCK_N] tiles; K masked only when ragged.
    if EVEN_K:
        a = tl.load(a_ptrs)
    else:
        kk = k + tl.arange(0, BLOCK_K)
        a = tl.load(a_ptrs, mask=kk[None, :] < k_hi, other=0.0)
    return a, _load_b(b_ptrs, k, k_hi, EVEN_K, BLOCK_K)


# M is not specialised (== 1, % 16): eager calls (vLLM's lm_head: M = running requests, any value)
# would otherwise JIT-compile new variants mid-serving; one kernel per config, warmed at start-up.
@triton.jit(do_not_specialize=["M"])
def mm_kernel(
    A, B, C, bias,
    M, N, K,
    stride_am, stride_ak, stride_bk, stride_bn, stride_cs, stride_cm, stride_cn,
    HAS_BIAS: tl.constexpr, SPLIT_K: tl.constexpr, EVEN_K: tl.constexpr,
    PRECISION: tl.constexpr, IDX32: tl.constexpr, ACT: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
):
    pid = tl.program_id(0)
    pid_k = tl.program_id(1)
    num_pid_m = tl.cdiv(M, BLOCK_M)
    num_pid_n = tl.cdiv(N, BLOCK_N)
    # Grouped order: GROUP_M row-tiles share each column-tile while it is hot in L2.
    num_pid_in_group = GROUP_M * num_pid_n
    group_id = pid // num_pid_in_group
    first_pid_m = group_id * GROUP_M
    group_size_m = min(num_pid_m - first_pid_m, GROUP_M)
    pid_m = first_pid_m + ((pid % num_pid_in_group) % group_size_m)
    pid_n = (pid % num_pid_in_group) // group_size_m

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rm = tl.max_contiguous(tl.multiple_of(offs_m % M, BLOCK_M), BLOCK_M)
    rn = tl.max_contiguous(tl.multiple_of(offs_n % N, BLOCK_N), BLOCK_N)
    # This split's K range; a multiple of BLOCK_K so only the last split can be ragged.
    k_per_split = tl.cdiv(K, SPLIT_K * BLOCK_K) * BLOCK_K
    k_lo = pid_k * k_per_split
    k_hi = tl.minimum(K, k_lo + k_per_split)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    # ACT >= 0 (fused gate_up, see the module doc): C has N columns, b has 2N; ``up`` gathers
    # the columns N further on, against the same A tile (dead code, removed, when ACT < 0).
    tl.static_assert(ACT < 0 or (SPLIT_K == 1 and not HAS_BIAS))
    up = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    if IDX32:
        # Each K step forms its element offsets afresh, in 32 bits (the host has shown they
        # fit), and adds them to the base pointer, as Inductor's template does: with K steps of
        # <= 128 this ran the same tiles 10-25% faster on H200 than bumping 64-bit pointer tiles
        # (512 x 6144 x 4096, 64x128x64: 42.9 vs 52.6 us).
        a_rows = rm[:, None] * stride_am
        b_cols = rn[None, :] * stride_bn
        for k in range(k_lo, k_hi, BLOCK_K):
            kk = k + tl.arange(0, BLOCK_K)
            a_ptrs = A + (a_rows + kk[None, :] * stride_ak)
            b_ptrs = B + (b_cols + kk[:, None] * stride_bk)
            a, b = _load_k_step(a_ptrs, b_ptrs, k, k_hi, EVEN_K, BLOCK_K)
            acc = tl.dot(a, b, acc, input_precision=PRECISION)
            if ACT >= 0:
                up = tl.dot(a, _load_b(b_ptrs + N * stride_bn, k, k_hi, EVEN_K, BLOCK_K), up,
                            input_precision=PRECISION)
    else:
        # 64-bit pointer tiles, bumped each K step: any size, and faster for the decode tiles
        # with long K steps (BLOCK_K 256/512: the 32-bit form ran them 2-18% slower).
        offs_k = k_lo + tl.arange(0, BLOCK_K)
        a_ptrs = A + rm[:, None].to(tl.int64) * stride_am + offs_k[None, :] * stride_ak
        b_ptrs = B + offs_k[:, None] * stride_bk + rn[None, :].to(tl.int64) * stride_bn
        up_ptrs = b_ptrs + tl.cast(N, tl.int64) * stride_bn
        for k in range(k_lo, k_hi, BLOCK_K):
            a, b = _load_k_step(a_ptrs, b_ptrs, k, k_hi, EVEN_K, BLOCK_K)
            acc = tl.dot(a, b, acc, input_precision=PRECISION)
            if ACT >= 0:
                up = tl.dot(a, _load_b(up_ptrs, k, k_hi, EVEN_K, BLOCK_K), up, input_precision=PRECISION)
                up_ptrs += BLOCK_K * stride_bk
            a_ptrs += BLOCK_K * stride_ak
            b_ptrs += BLOCK_K * stride_bk

    c_mask = (offs_m[:, None] < M) & (offs_n[None, :] < N)
    if IDX32:
        c_ptrs = C + (pid_k * stride_cs + offs_m[:, None] * stride_cm + offs_n[None, :] * stride_cn)
    else:
        c_ptrs = C + pid_k.to(tl.int64) * stride_cs + offs_m[:, None].to(tl.int64) * stride_cm + offs_n[None, :] * stride_cn
    if SPLIT_K == 1:
        if HAS_BIAS:
            acc += tl.load(bias + offs_n, mask=offs_n < N, other=0.0).to(tl.float32)[None, :]
        if ACT >= 0:
            acc = act_mul(acc, up, ACT)
        tl.store(c_ptrs, acc.to(C.dtype.element_ty), mask=c_mask)
    else:
        tl.store(c_ptrs, acc, mask=c_mask)  # fp32 partial; the host-side sum adds the bias


@triton.jit
def _tile_coords(tile_id, num_pid_m, num_pid_n, GROUP_M: tl.constexpr):
    num_pid_in_group = GROUP_M * num_pid_n
    group_id = tile_id // num_pid_in_group
    first_pid_m = group_id * GROUP_M
    group_size_m = min(num_pid_m - first_pid_m, GROUP_M)
    pid_m = first_pid_m + (tile_id % group_size_m)
    pid_n = (tile_id % num_pid_in_group) // group_size_m
    return pid_m, pid_n


@triton.jit
def _tma_tile(a_desc, b_desc, c_desc, bias, N, K, pid_m, pid_n, HAS_BIAS: tl.constexpr, B_KMAJOR: tl.constexpr,
              BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    off_m = pid_m * BLOCK_M
    off_n = pid_n * BLOCK_N
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for ki in range(tl.cdiv(K, BLOCK_K)):
        off_k = ki * BLOCK_K
        a = a_desc.load([off_m, off_k])
        if B_KMAJOR:  # w [N, K] tiles; .T is a view of the shared-memory tile
            acc = tl.dot(a, b_desc.load([off_n, off_k]).T, acc)
        else:
            acc = tl.dot(a, b_desc.load([off_k, off_n]), acc)
    if HAS_BIAS:
        offs_n = off_n + tl.arange(0, BLOCK_N)
        acc += tl.load(bias + offs_n, mask=offs_n < N, other=0.0).to(tl.float32)[None, :]
    c_desc.store([off_m, off_n], acc.to(c_desc.dtype))


@triton.jit(do_not_specialize=["M"])
def mm_tma_kernel(
    a_desc, b_desc, c_desc, bias,
    M, N, K,
    HAS_BIAS: tl.constexpr, B_KMAJOR: tl.constexpr, PERSISTENT: tl.constexpr, NUM_SMS: tl.constexpr,
    WARP_SPECIALIZE: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
):
    # Hopper GEMM on the TMA engine: operands and C through host-side tensor descriptors (built by
    # the launcher: bounds handled by TMA, ragged M/N/K zero-filled, no masks). PERSISTENT: one
    # program per SM walks the tiles NUM_SMS apart in grouped order (optionally warp-specialized);
    # else one program per tile.
    num_pid_m = tl.cdiv(M, BLOCK_M)
    num_pid_n = tl.cdiv(N, BLOCK_N)
    if PERSISTENT:
        for tile_id in tl.range(tl.program_id(0), num_pid_m * num_pid_n, NUM_SMS, flatten=not WARP_SPECIALIZE,
                                warp_specialize=WARP_SPECIALIZE):
            pid_m, pid_n = _tile_coords(tile_id, num_pid_m, num_pid_n, GROUP_M)
            _tma_tile(a_desc, b_desc, c_desc, bias, N, K, pid_m, pid_n, HAS_BIAS, B_KMAJOR, BLOCK_M, BLOCK_N, BLOCK_K)
    else:
        pid_m, pid_n = _tile_coords(tl.program_id(0), num_pid_m, num_pid_n, GROUP_M)
        _tma_tile(a_desc, b_desc, c_desc, bias, N, K, pid_m, pid_n, HAS_BIAS, B_KMAJOR, BLOCK_M, BLOCK_N, BLOCK_K)


@triton.jit(do_not_specialize=["M"])
def mm_gemv_kernel(A, B, C, bias, M, N, K, stride_am, stride_bn, stride_cs, stride_cm,
                   HAS_BIAS: tl.constexpr, EVEN_K: tl.constexpr, ACT: tl.constexpr,
                   SPLIT_K: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    # Batch-1 decode: c = a @ w.T with w [N, K] K-contiguous. A tensor-core tile would be 1/16
    # used; instead each program streams a narrow BLOCK_N x K panel of w with 16-byte loads,
    # multiplies by the broadcast row of a in fp32 and reduces over K once at the end. Where
    # N / BLOCK_N programs cannot fill the SMs (narrow models), grid axis 1 splits K and each
    # split writes an fp32 partial [SPLIT_K, M, N] that splitk_reduce_kernel sums. Rows of a
    # (M > 1) are looped: correct for any M, fast for M = 1, the only bucket that chooses it.
    pid = tl.program_id(0)
    pid_k = tl.program_id(1)
    offs_n = pid * BLOCK_N + tl.arange(0, BLOCK_N)
    rn = tl.max_contiguous(tl.multiple_of(offs_n % N, BLOCK_N), BLOCK_N)
    # ACT >= 0 (fused gate_up): the panel's rows N further on are the up rows.
    tl.static_assert(ACT < 0 or (not HAS_BIAS and SPLIT_K == 1))
    k_per_split = tl.cdiv(K, SPLIT_K * BLOCK_K) * BLOCK_K
    k_lo = pid_k * k_per_split
    k_hi = tl.minimum(K, k_lo + k_per_split)
    offs_k = k_lo + tl.arange(0, BLOCK_K)
    up_off = tl.cast(N, tl.int64) * stride_bn
    for m in range(0, M):
        w_ptrs = B + rn[:, None].to(tl.int64) * stride_bn + offs_k[None, :]
        a_ptrs = A + m * stride_am + offs_k
        acc = tl.zeros((BLOCK_N, BLOCK_K), dtype=tl.float32)
        acc_up = tl.zeros((BLOCK_N, BLOCK_K), dtype=tl.float32)
        for k in range(k_lo, k_hi, BLOCK_K):
            if EVEN_K:
                w = tl.load(w_ptrs)
                x = tl.load(a_ptrs)
                if ACT >= 0:
                    w_up = tl.load(w_ptrs + up_off)
            else:
                kmask = (k + tl.arange(0, BLOCK_K)) < k_hi
                w = tl.load(w_ptrs, mask=kmask[None, :], other=0.0)
                x = tl.load(a_ptrs, mask=kmask, other=0.0)
                if ACT >= 0:
                    w_up = tl.load(w_ptrs + up_off, mask=kmask[None, :], other=0.0)
            acc += w.to(tl.float32) * x.to(tl.float32)[None, :]
            if ACT >= 0:
                acc_up += w_up.to(tl.float32) * x.to(tl.float32)[None, :]
            w_ptrs += BLOCK_K
            a_ptrs += BLOCK_K
        out = tl.sum(acc, axis=1)
        c_ptrs = C + pid_k.to(tl.int64) * stride_cs + m * stride_cm + offs_n
        if SPLIT_K == 1:
            if HAS_BIAS:
                out += tl.load(bias + offs_n, mask=offs_n < N, other=0.0).to(tl.float32)
            if ACT >= 0:
                out = act_mul(out, tl.sum(acc_up, axis=1), ACT)
            tl.store(c_ptrs, out.to(C.dtype.element_ty), mask=offs_n < N)
        else:
            tl.store(c_ptrs, out, mask=offs_n < N)  # fp32 partial; the reduction adds the bias


@triton.jit(do_not_specialize=["numel"])
def splitk_reduce_kernel(WS, C, bias, numel, N, stride_cm,
                         HAS_BIAS: tl.constexpr, SPLIT_K: tl.constexpr, ACT: tl.constexpr,
                         BLOCK: tl.constexpr):
    # WS is [SPLIT_K, rows, N] contiguous: element i of every split is i + s * numel.
    # ACT >= 0 (fused gate_up): WS is [SPLIT_K, rows, 2N], C [rows, N] = act(gate) * up.
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < numel
    col = offs % N
    acc = tl.zeros((BLOCK,), dtype=tl.float32)
    if ACT >= 0:
        tl.static_assert(not HAS_BIAS)
        src = (offs // N) * (2 * N) + col
        up = tl.zeros((BLOCK,), dtype=tl.float32)
        for s in tl.static_range(SPLIT_K):
            acc += tl.load(WS + s * 2 * numel + src, mask=mask, other=0.0)
            up += tl.load(WS + s * 2 * numel + src + N, mask=mask, other=0.0)
        acc = act_mul(acc, up, ACT)
    else:
        for s in tl.static_range(SPLIT_K):
            acc += tl.load(WS + s * numel + offs, mask=mask, other=0.0)
    if HAS_BIAS:
        acc += tl.load(bias + col, mask=mask, other=0.0).to(tl.float32)
    tl.store(C + (offs // N) * stride_cm + col, acc.to(C.dtype.element_ty), mask=mask)
