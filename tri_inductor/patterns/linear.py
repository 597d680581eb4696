"""Triton GEMM: ``mm(a, b)`` and ``addmm(bias, a, b)`` (fp32 accumulation, no cuBLAS).

a [M, K], b [K, N] with any strides (usually ``weight.t()``: column-major, K contiguous).

Tiling: each program owns a BLOCK_M x BLOCK_N tile of C and walks K in BLOCK_K steps with
``num_stages`` loads in flight (Hopper: async copies + wgmma). Program ids are grouped
GROUP_M tiles down M before moving along N, so the A rows and B columns a wave of programs
reads stay in L2. Rows/columns past M/N are clamped (``% M``) rather than masked on load
(duplicate reads are harmless, stores are masked); K is masked only when K % BLOCK_K != 0.
Decode (small M) is bound by streaming the weight. Batch 1 (M = 1) runs ``mm_gemv_kernel``: no
tensor cores, narrow w panels, N / BLOCK_N programs, no split-K. Other small M: small BLOCK_M,
and when the N tiles alone cannot fill the 132 SMs, split-K: grid axis 1 splits K, each split
writes an fp32 partial [SPLIT_K, M, N] and ``splitk_reduce_kernel`` finishes (sum + bias + cast).
Deterministic, no atomics. Prefill (M >= ~256, and some M=128 shapes) uses ``mm_tma_kernel``:
persistent, TMA device-side descriptors, optionally warp-specialized (``Cfg.kernel``); it needs
16-byte aligned strides/base, else the pointer kernel runs with the same tiles.

Fused gate_up (``mm_act_mul``, the gate_up family's op): b has 2N columns, gate then up; the
GEMV, pointer and split-K paths take an activation epilogue (``ACT``): each program accumulates
a gate tile and the up tile N columns further on from the same A tiles, with the plain GEMM's
config for b's full width (half its columns each), and writes act(gate) * up. Prefill buckets
(persistent TMA) run the plain GEMM, then the activation kernel (measured faster there).

Config choice (no runtime benchmarking; CUDA-graph safe): ``CONFIGS`` by M bucket, optionally
overridden per (N, K, bucket) by ``linear_tuned.json`` (written offline by
``benchmarks/kernels.py --tune``). Inductor inlines a user kernel with the constexprs fixed at
trace time and ignores ``@triton.heuristics`` / ``prune_configs_by`` (it keeps ``Autotuner.configs``
and would *benchmark* them at run time), so the choice is made here in Python. A concrete M
launches its bucket's kernel. A symbolic M (vLLM compiles one graph for every token count) launches
one kernel per distinct bucket config, each with its grid multiplied by a 0/1 gate on M's range
(``_gate``): exactly one runs, the others are zero-size grids that Triton's launcher skips and CUDA
graphs never capture. No guard on M, no recompile, and decode gets decode tiles. Under vLLM each
compile range is traced inside ``token_range``: only the buckets of that range are launched.
"""
from __future__ import annotations

import contextlib
import contextvars
import json
import os
from collections.abc import Iterator
from typing import NamedTuple

import torch
import triton
import triton.language as tl
from torch.library import triton_op

from ._launch import launch
from .activation import _ACTS as _ACT_CODES
from .activation import _launch_config as _act_launch_config
from .activation import act_mul, launch_gated, reference_gelu_and_mul, reference_silu_and_mul

aten = torch.ops.aten


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


@triton.jit(do_not_specialize=["M"])
def mm_tma_kernel(
    A, B, C, bias,
    M, N, K,
    stride_am, stride_bk, stride_bn, stride_cm,
    HAS_BIAS: tl.constexpr, B_KMAJOR: tl.constexpr, NUM_SMS: tl.constexpr,
    WARP_SPECIALIZE: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
):
    # Prefill GEMM for Hopper: persistent (one program per SM walks tiles NUM_SMS apart, in the
    # same grouped order), operands streamed by the TMA engine through device-side tensor
    # descriptors (bounds handled by TMA: no masks, ragged M/N/K zero-filled), C written by TMA.
    a_desc = tl.make_tensor_descriptor(A, shape=[M, K], strides=[stride_am, 1],
                                       block_shape=[BLOCK_M, BLOCK_K])
    if B_KMAJOR:  # b = w.t(): read w [N, K] tiles; .T is a view of the smem tile
        b_desc = tl.make_tensor_descriptor(B, shape=[N, K], strides=[stride_bn, 1],
                                           block_shape=[BLOCK_N, BLOCK_K])
    else:
        b_desc = tl.make_tensor_descriptor(B, shape=[K, N], strides=[stride_bk, 1],
                                           block_shape=[BLOCK_K, BLOCK_N])
    c_desc = tl.make_tensor_descriptor(C, shape=[M, N], strides=[stride_cm, 1],
                                       block_shape=[BLOCK_M, BLOCK_N])
    num_pid_m = tl.cdiv(M, BLOCK_M)
    num_pid_n = tl.cdiv(N, BLOCK_N)
    k_tiles = tl.cdiv(K, BLOCK_K)
    num_tiles = num_pid_m * num_pid_n
    for tile_id in tl.range(tl.program_id(0), num_tiles, NUM_SMS, flatten=not WARP_SPECIALIZE,
                            warp_specialize=WARP_SPECIALIZE):
        pid_m, pid_n = _tile_coords(tile_id, num_pid_m, num_pid_n, GROUP_M)
        off_m = pid_m * BLOCK_M
        off_n = pid_n * BLOCK_N
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for ki in range(k_tiles):
            off_k = ki * BLOCK_K
            a = a_desc.load([off_m, off_k])
            if B_KMAJOR:
                acc = tl.dot(a, b_desc.load([off_n, off_k]).T, acc)
            else:
                acc = tl.dot(a, b_desc.load([off_k, off_n]), acc)
        if HAS_BIAS:
            offs_n = off_n + tl.arange(0, BLOCK_N)
            acc += tl.load(bias + offs_n, mask=offs_n < N, other=0.0).to(tl.float32)[None, :]
        c_desc.store([off_m, off_n], acc.to(C.dtype.element_ty))


@triton.jit(do_not_specialize=["M"])
def mm_gemv_kernel(A, B, C, bias, M, N, K, stride_am, stride_bn, stride_cm,
                   HAS_BIAS: tl.constexpr, EVEN_K: tl.constexpr, ACT: tl.constexpr,
                   BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    # Batch-1 decode: c = a @ w.T with w [N, K] K-contiguous. A tensor-core tile would be 1/16
    # used and every program would need many N columns; instead each program streams a narrow
    # BLOCK_N x K panel of w with 16-byte loads, multiplies by the broadcast row of a in fp32
    # and reduces over K once at the end. N / BLOCK_N programs cover the SMs without split-K,
    # so there is no partial-sum buffer and no second launch. Rows of a (M > 1) are looped:
    # correct for any M, fast for M = 1, the only bucket that chooses this kernel.
    pid = tl.program_id(0)
    offs_n = pid * BLOCK_N + tl.arange(0, BLOCK_N)
    rn = tl.max_contiguous(tl.multiple_of(offs_n % N, BLOCK_N), BLOCK_N)
    # ACT >= 0 (fused gate_up): the panel's rows N further on are the up rows.
    tl.static_assert(ACT < 0 or not HAS_BIAS)
    offs_k = tl.arange(0, BLOCK_K)
    up_off = tl.cast(N, tl.int64) * stride_bn
    for m in range(0, M):
        w_ptrs = B + rn[:, None].to(tl.int64) * stride_bn + offs_k[None, :]
        a_ptrs = A + m * stride_am + offs_k
        acc = tl.zeros((BLOCK_N, BLOCK_K), dtype=tl.float32)
        acc_up = tl.zeros((BLOCK_N, BLOCK_K), dtype=tl.float32)
        for k in range(0, K, BLOCK_K):
            if EVEN_K:
                w = tl.load(w_ptrs)
                x = tl.load(a_ptrs)
                if ACT >= 0:
                    w_up = tl.load(w_ptrs + up_off)
            else:
                kmask = (k + offs_k) < K
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
        if HAS_BIAS:
            out += tl.load(bias + offs_n, mask=offs_n < N, other=0.0).to(tl.float32)
        if ACT >= 0:
            out = act_mul(out, tl.sum(acc_up, axis=1), ACT)
        tl.store(C + m * stride_cm + offs_n, out.to(C.dtype.element_ty), mask=offs_n < N)


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


class Cfg(NamedTuple):
    block_m: int
    block_n: int
    block_k: int
    group_m: int
    split_k: int  # 0: chosen from the tile count (decode), >= 1: fixed
    num_warps: int
    num_stages: int
    kernel: int = 0  # PTR, TMA, TMA_WS or GEMV (below)


# Cfg.kernel: which kernel runs the tiles.
PTR = 0       # mm_kernel: pointer loads, split-K when few tiles
TMA = 1       # mm_tma_kernel: persistent, TMA descriptors (Hopper)
TMA_WS = 2    # the same, warp-specialized
GEMV = 4      # mm_gemv_kernel: M = 1, no tensor cores (block_m, group_m, split_k unused)
# (3 was a stream-K kernel: its mainloop beat the persistent kernel by ~9% on 96-tile problems,
# but writing and re-reading fp32 partial tiles cost more than the idle SMs it saved. A
# 192-wide tile as 128 + 64 MMAs on one A tile ran at ~70% of the 256-wide tile's rate.)


# The activations of the fused gate_up GEMM, by name, as activation.act_mul's codes (whose gelu
# forms are named by F.gelu's ``approximate``); -1: a plain GEMM.
NO_ACT = -1
ACTS = {"silu": _ACT_CODES["silu"], "gelu": _ACT_CODES["none"], "gelu_tanh": _ACT_CODES["tanh"]}


# Upper bounds of the M buckets; the last bucket is everything above.
BUCKETS = (1, 16, 32, 64, 128, 256, 512, 1024, 2048)

# H100 defaults by bucket (bf16/fp16). Decode buckets stream the weight: narrow tiles, long
# K steps, split-K when few N tiles. Prefill buckets: wgmma-sized 128x256x64 / 128x128x64 tiles.
CONFIGS: dict[int, Cfg] = {  # first numbers from an H200 sweep (benchmarks/kernels.py --tune)
    1: Cfg(1, 8, 1024, 1, 1, 4, 1, GEMV),  # batch-1 decode: 8-row w panels, N / 8 programs
    16: Cfg(16, 64, 256, 1, 1, 4, 4),
    32: Cfg(32, 64, 256, 1, 1, 4, 4),
    64: Cfg(64, 32, 128, 1, 1, 4, 6),
    128: Cfg(64, 64, 128, 8, 1, 4, 4),
    256: Cfg(128, 128, 64, 8, 1, 4, 4, 1),  # persistent TMA from here on
    512: Cfg(128, 128, 64, 8, 1, 4, 4, 1),
    1024: Cfg(128, 256, 64, 8, 1, 8, 3, 1),
    2048: Cfg(128, 256, 64, 8, 1, 8, 3, 1),
    4096: Cfg(128, 256, 64, 8, 1, 8, 3, 1),  # M > 2048
}
# fp32 inputs: half the operand bytes fit per stage.
CONFIGS_FP32: dict[int, Cfg] = {
    16: Cfg(16, 64, 64, 1, 0, 4, 3),
    32: Cfg(32, 64, 64, 1, 0, 4, 3),
    64: Cfg(64, 64, 64, 1, 0, 4, 3),
    4096: Cfg(128, 128, 32, 8, 1, 8, 3),
}

# Per-shape overrides from the offline tuner: {(N, K, bucket): Cfg}.
TUNED: dict[tuple[int, int, int], Cfg] = {}
TUNED_PATH = os.path.join(os.path.dirname(__file__), "linear_tuned.json")


def load_tuned(path: str = TUNED_PATH) -> int:
    """Load ``{"N,K,bucket": [block_m, block_n, block_k, group_m, split_k, warps, stages]}``."""
    if not os.path.exists(path):
        return 0
    with open(path) as f:
        data = json.load(f)
    for key, cfg in data.get("configs", data).items():
        n, k, b = (int(x) for x in key.split(","))
        TUNED[(n, k, b)] = Cfg(*cfg)
    return len(TUNED)


load_tuned(os.environ.get("TRI_INDUCTOR_LINEAR_TUNED", TUNED_PATH))

NUM_SMS = 132  # H100 SXM / H200


def _hint(x) -> int:
    """A concrete int for config choice; a SymInt's size hint, without installing a guard."""
    if isinstance(x, int):
        return x
    try:
        node = x.node
        hint = node.hint if node.hint is not None else node.shape_env.size_hint(node.expr)
        return int(hint)
    except Exception:
        return 4096


def bucket_of(m: int) -> int:
    for b in BUCKETS:
        if m <= b:
            return b
    return 4096


def choose_config(m, n: int, k: int, dtype: torch.dtype) -> Cfg:
    b = bucket_of(_hint(m))
    if dtype == torch.float32:
        return next(c for bb, c in sorted(CONFIGS_FP32.items()) if b <= bb)
    from tri_inductor.tuning import gemm_config  # stored result, else tuned once on the GPU, else the table

    return gemm_config(n, k, b, dtype, TUNED.get((n, k, b)) or CONFIGS[b])


def eager_warm_sizes(max_m: int) -> list[int]:
    """One M per bucket up to ``max_m``: launching each once compiles every kernel an eager
    caller with M <= max_m can need (M itself is not specialised)."""
    return sorted({min(b, max_m) for b in BUCKETS} | {max_m})


# Eager GPU calls (vLLM's lm_head, every decode step) reuse the choice: the tuning-DB lookup
# behind it costs ~0.1 ms of host time per call.  Cleared with the in-memory tuning DBs.
_EAGER_CHOICE: dict[tuple, Cfg] = {}


def _eager_config(m: int, n: int, k: int, dtype: torch.dtype) -> Cfg:
    b = bucket_of(m)
    key = (b, n, k, dtype, TUNED.get((n, k, b)) or CONFIGS[b])
    cfg = _EAGER_CHOICE.get(key)
    if cfg is None:
        cfg = _EAGER_CHOICE[key] = choose_config(m, n, k, dtype)
    return cfg


def _split_k(cfg: Cfg, m_hint: int, n: int, k: int) -> int:
    if cfg.split_k:
        return cfg.split_k
    tiles = triton.cdiv(m_hint, cfg.block_m) * triton.cdiv(n, cfg.block_n)
    # "auto": the smallest split whose programs fill the last wave of SMs >= 85%, with each
    # split keeping >= 4 K steps to pipeline.
    max_split = max(1, min(8, k // (4 * cfg.block_k)))
    for split in range(1, max_split + 1):
        work = tiles * split
        if work / (triton.cdiv(work, NUM_SMS) * NUM_SMS) >= 0.85:
            return split
    return max_split


def _precision(dtype) -> str:
    if dtype == torch.float32 and not torch.backends.cuda.matmul.allow_tf32:
        return "ieee"
    return "tf32"


def _int_or_none(x):
    try:
        return int(x)
    except Exception:  # unbacked / symbolic
        return None


def _tma_ok(a, b, N: int) -> bool:
    """TMA needs a unit inner stride, 16-byte aligned outer strides and base addresses."""
    es = a.element_size()
    if a.stride(1) != 1 or not (b.stride(0) == 1 or b.stride(1) == 1):
        return False
    outer = [a.stride(0), b.stride(1) if b.stride(0) == 1 else b.stride(0), N]
    offsets = [a.storage_offset(), b.storage_offset()]
    vals = [_int_or_none(v) for v in outer + offsets]
    if any(v is None or (v * es) % 16 for v in vals):
        return False
    if type(a) is torch.Tensor and a.is_cuda:  # eager: the real addresses are known
        return a.data_ptr() % 16 == 0 and b.data_ptr() % 16 == 0
    return True  # traced: Inductor's buffers and graph inputs are 16-byte aligned


_allocator_set = False


def _ensure_allocator():
    # Device-side tensor descriptors need a scratch buffer per launch. Inductor's launcher sets
    # this allocator itself before each kernel; eager GPU calls need it set once here.
    global _allocator_set
    if not _allocator_set:
        triton.set_allocator(lambda size, align, stream: torch.empty(size, dtype=torch.int8, device="cuda"))
        _allocator_set = True


# mm_kernel's 32-bit offsets (IDX32) only for K steps up to this: the decode tiles with K steps
# of 256/512 ran 2-18% slower in that form than with 64-bit pointer tiles (H200).
IDX32_MAX_BLOCK_K = 128


def _offsets_fit_int32(a, b, m_cap: int | None, split: int) -> bool:
    """Whether every element offset mm_kernel forms fits in int32: the last row of a (M, or
    ``m_cap`` when M is symbolic; unknown: no) and of b, each times its strides, and the end
    of the output (or of the [split, rows, N] partials). Symbolic strides (rare for a GEMM's
    operands) also answer no."""
    M, K = a.shape
    N = b.shape[1]
    # isinstance, not int(): int() of a SymInt would install a guard (and specialise M)
    rows = M if isinstance(M, int) else m_cap
    vals = [v if isinstance(v, int) else None for v in (K, N, a.stride(0), a.stride(1), b.stride(0), b.stride(1))]
    if rows is None or any(v is None for v in vals):
        return False
    k, n, sam, sak, sbk, sbn = vals
    # rows are wrapped (% M), K offsets stop below K; slack for one tile past either end.
    worst = max(rows * sam + (k + 1024) * sak, n * sbn + (k + 1024) * sbk, (rows + 256) * (n + 256) * split)
    return worst < 2**31


def _gate(M, lo: int, hi: int | None):
    """1 when ``lo < M <= hi`` else 0 (M >= 1), as arithmetic: with a symbolic M this becomes a
    guard-free sympy expression (``Min``/``FloorDiv``) that Inductor evaluates per launch."""
    g = 1
    if hi is not None:
        g = g * (1 - torch.sym_min(1, (M - 1) // hi))
    if lo:
        g = g * torch.sym_min(1, (M - 1) // lo)
    return g


def representative_m(hi: int | None) -> int:
    """An M in the bucket whose upper bound is ``hi`` (None: the top bucket, M > BUCKETS[-1])."""
    return hi if hi is not None else 2 * BUCKETS[-1]


# The token range [start, end] the graph being compiled serves (vLLM compiles a piece once per
# compile range); None: any M >= 1.
_TOKEN_RANGE: contextvars.ContextVar[tuple[int, int] | None] = contextvars.ContextVar(
    "tri_inductor_token_range", default=None)


@contextlib.contextmanager
def token_range(start: int, end: int) -> Iterator[None]:
    """GEMMs traced inside see M only in ``[start, end]``: the dispatch plan keeps the buckets of
    that range (vLLM's prefill range then launches 1-2 kernels per projection, not every bucket's)."""
    tok = _TOKEN_RANGE.set((int(start), int(end)))
    try:
        yield
    finally:
        _TOKEN_RANGE.reset(tok)


def dispatch_plan(n: int, k: int, dtype: torch.dtype) -> list[tuple[int, int | None, Cfg]]:
    """``[(lo, hi, cfg)]`` (M in (lo, hi], hi None: no upper bound): the config of every M bucket
    that meets the current token range, consecutive equal configs merged; the first entry's lo
    and the last's hi are dropped where the range already implies them (no gate to evaluate)."""
    rng = _TOKEN_RANGE.get()
    plan: list[tuple[int, int | None, Cfg]] = []
    lo = 0
    for hi in (*BUCKETS, None):
        if rng is not None and ((hi is not None and hi < rng[0]) or lo >= rng[1]):
            lo = hi if hi is not None else lo
            continue  # the bucket (lo, hi] holds no M of the range
        cfg = choose_config(representative_m(hi), n, k, dtype)
        if plan and plan[-1][2] == cfg:
            plan[-1] = (plan[-1][0], hi, cfg)
        else:
            plan.append((0 if not plan else lo, hi, cfg))
        lo = hi if hi is not None else lo
    if rng is not None:
        lo0, hi0, c0 = plan[-1]
        if hi0 is not None and hi0 >= rng[1]:
            plan[-1] = (lo0, None, c0)
    return plan


def _gemv_ok(a, b) -> bool:
    return a.stride(1) == 1 and b.stride(0) == 1  # row of a and columns of b (rows of w) contiguous


def _launch_cfg(a, b, bias, out, cfg: Cfg, gate=1, m_hint: int | None = None, m_cap: int | None = None,
                act: int = NO_ACT):
    """Launch one config into ``out``; ``gate`` (0/1, maybe symbolic) multiplies the grid, so a
    gated-off launch is a zero-size grid: Triton's launcher skips it and a CUDA graph captures
    nothing for it.  ``m_cap``: M never exceeds it while the gate is on (sizes the split-K
    workspace).  ``act`` >= 0: the fused gate_up form (``mm_act_mul``); ``cfg`` is the config of
    the plain GEMM over all of b's columns, each program then covers half its columns in gate and
    half in up (the same tile area, operand bytes and shared memory)."""
    M, K = a.shape
    N = b.shape[1]
    n, k = int(N), int(K)
    fused = act != NO_ACT
    n_out = n // 2 if fused else n  # the kernels' N: C's width
    N_out = N // 2 if fused else N
    # Unused when HAS_BIAS is False. Not ``a``: Inductor lowers each argument separately and a
    # computed ``a`` passed twice would be written twice (see settings.realize_triton_kernel_inputs).
    bias_arg = bias if bias is not None else b
    if cfg.kernel == GEMV and _gemv_ok(a, b):
        block_n = max(1, cfg.block_n // 2) if fused else cfg.block_n
        launch(mm_gemv_kernel, (triton.cdiv(n_out, block_n) * gate,), a, b, out, bias_arg, M, N_out, K,
               a.stride(0), b.stride(1), out.stride(0), HAS_BIAS=bias is not None,
               EVEN_K=(k % cfg.block_k == 0), ACT=act, BLOCK_N=block_n, BLOCK_K=cfg.block_k,
               num_warps=cfg.num_warps, num_stages=cfg.num_stages)
        return
    if cfg.kernel == GEMV:  # strided operands: the pointer kernel with the narrowest MMA tile
        cfg = Cfg(16, max(cfg.block_n, 16), cfg.block_k, 1, 1, cfg.num_warps, cfg.num_stages)
    # tl.dot needs N >= 16: a fused tile of 16 + 16 columns at least
    block_n = max(16, cfg.block_n // 2) if fused else cfg.block_n
    tiles = triton.cdiv(M, cfg.block_m) * triton.cdiv(n_out, block_n)
    tma_kernel = cfg.kernel in (TMA, TMA_WS)
    if fused and tma_kernel:
        # Prefill tiles: the plain GEMM, then the activation kernel. Fused, the persistent
        # kernels ran 0.53-0.83x (0.94-1.02x warp-specialized, whose 4-warp form gave NaNs) of
        # the pair on an H200 at M = 512-4096 (2 x 14336 x 4096): the compute-bound mainloop
        # with two N/2 MMAs per A tile loses more than the saved [M, 2N] round trip.
        rows = M if m_cap is None else torch.sym_min(M, m_cap)
        h = torch.empty((rows, N), dtype=a.dtype, device=a.device)
        _launch_cfg(a, b, None, h, cfg, gate, m_hint, m_cap)
        launch_gated(h, out, act, *_act_launch_config(n_out, a.element_size()), gate=gate)
        return
    if tma_kernel and a.dtype != torch.float32 and _tma_ok(a, b, n):
        if type(a) is torch.Tensor and a.is_cuda:
            _ensure_allocator()
        launch(mm_tma_kernel, (torch.sym_min(NUM_SMS, tiles) * gate,), a, b, out, bias_arg, M, N, K,
               a.stride(0), b.stride(0), b.stride(1), out.stride(0),
               HAS_BIAS=bias is not None, B_KMAJOR=b.stride(0) == 1, NUM_SMS=NUM_SMS,
               WARP_SPECIALIZE=cfg.kernel == TMA_WS, BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n,
               BLOCK_K=cfg.block_k, GROUP_M=cfg.group_m, num_warps=cfg.num_warps,
               num_stages=cfg.num_stages)
        return
    split = _split_k(cfg, m_hint if m_hint is not None else _hint(M), n, k)
    common = dict(HAS_BIAS=bias is not None, SPLIT_K=split, EVEN_K=(k % cfg.block_k == 0),
                  PRECISION=_precision(a.dtype), IDX32=cfg.block_k <= IDX32_MAX_BLOCK_K and _offsets_fit_int32(a, b, m_cap, split),
                  BLOCK_M=cfg.block_m, BLOCK_K=cfg.block_k, GROUP_M=cfg.group_m, num_warps=cfg.num_warps,
                  num_stages=min(cfg.num_stages, 3) if tma_kernel else cfg.num_stages)  # TMA smem budget differs
    if split == 1:
        launch(mm_kernel, (tiles * gate, 1), a, b, out, bias_arg, M, N_out, K,
               a.stride(0), a.stride(1), b.stride(0), b.stride(1), 0, out.stride(0), out.stride(1),
               ACT=act, BLOCK_N=block_n, **common)
        return
    # Split-K: fp32 partials [SPLIT_K, rows, N] of the plain GEMM (all of b's columns), then one
    # reduction kernel (sum + bias, or the gate_up activation, + cast).
    rows = M if m_cap is None else torch.sym_min(M, m_cap)
    ws = torch.empty((split, rows, N), dtype=torch.float32, device=a.device)
    grid = (triton.cdiv(M, cfg.block_m) * triton.cdiv(n, cfg.block_n) * gate, split)
    launch(mm_kernel, grid, a, b, ws, bias_arg, M, N, K,
           a.stride(0), a.stride(1), b.stride(0), b.stride(1), ws.stride(0), ws.stride(1), ws.stride(2),
           ACT=NO_ACT, BLOCK_N=cfg.block_n, **common)
    launch(splitk_reduce_kernel, (triton.cdiv(rows * N_out, 1024) * gate,), ws, out, bias_arg, rows * N_out,
           N_out, out.stride(0), HAS_BIAS=bias is not None, SPLIT_K=split, ACT=act, BLOCK=1024, num_warps=4)


def _mm_launch(a, b, bias, cfg: Cfg | None = None, dispatch: bool | None = None, act: int = NO_ACT):
    """C = a @ b (+ bias), or with ``act`` the fused gate_up form act(a @ b_gate) * (a @ b_up).
    A concrete M gets its bucket's config; a symbolic M (vLLM's one graph
    for 1..max_num_batched_tokens tokens) gets every bucket's kernel, each gated to its M range
    at run time (a size hint would freeze one bucket's tiles for every M: decode on prefill tiles
    runs at a fraction of the bandwidth).  A given ``cfg`` is launched alone; ``dispatch=True``
    forces the gated form for a concrete M (tests)."""
    M, K = a.shape
    N = b.shape[1]
    n, k = int(N), int(K)  # weight dims: static in LLM graphs
    out = torch.empty((M, N // 2 if act != NO_ACT else N), dtype=a.dtype, device=a.device)
    if dispatch is None:
        dispatch = not isinstance(M, int)
    if cfg is not None or not dispatch:
        if cfg is None:
            eager = type(a) is torch.Tensor and a.is_cuda and isinstance(M, int)
            cfg = _eager_config(M, n, k, a.dtype) if eager else choose_config(M, n, k, a.dtype)
        _launch_cfg(a, b, bias, out, cfg, act=act)
        return out
    rng = _TOKEN_RANGE.get()
    for lo, hi, c in dispatch_plan(n, k, a.dtype):
        cap = hi if rng is None else min(hi or rng[1], rng[1])
        m_hint = representative_m(hi) if hi is not None or rng is None else min(representative_m(None), rng[1])
        _launch_cfg(a, b, bias, out, c, gate=_gate(M, lo, hi), m_hint=m_hint, m_cap=cap, act=act)
    return out


@triton_op("tri_inductor::mm", mutates_args={})
def mm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return _mm_launch(a, b, None)


@triton_op("tri_inductor::addmm", mutates_args={})
def addmm(bias: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return _mm_launch(a, b, bias)


@triton_op("tri_inductor::mm_act_mul", mutates_args={})
def mm_act_mul(a: torch.Tensor, b: torch.Tensor, act: str) -> torch.Tensor:
    """``act(a @ b[:, :n]) * (a @ b[:, n:])`` with n = b.shape[1] // 2, in one GEMM: an MLP's
    merged gate_up projection and its gated activation (``act``: silu, gelu or gelu_tanh). Each
    program accumulates a gate tile and the up tile n columns further on from the same A tiles
    and writes only the product, so the [M, 2n] gate_up output is never written or read back."""
    torch._check(act in ACTS, lambda: f"mm_act_mul: act={act!r}; use one of {sorted(ACTS)}")
    torch._check(b.shape[1] % 2 == 0, lambda: f"mm_act_mul: b has {b.shape[1]} columns; gate and "
                 "up need an even count (the two halves side by side)")
    return _mm_launch(a, b, None, act=ACTS[act])


def reference_mm_act_mul(a, b, act: str):
    y = a.double() @ b.double()
    if act == "silu":
        return reference_silu_and_mul(y)
    return reference_gelu_and_mul(y, "tanh" if act == "gelu_tanh" else "none")


def reference_mm(a, b):
    return a.double() @ b.double()


def reference_addmm(bias, a, b):
    return bias.double() + a.double() @ b.double()


# --------------------------------------------------------------------------------------------
# Post-grad patterns.

ANCHOR_OPS = [aten.mm.default, aten.addmm.default, aten.bmm.default]

_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def _val(n):
    return n.meta.get("val") if isinstance(n, torch.fx.Node) else None


def _mm_ok(a, b) -> bool:
    av, bv = _val(a), _val(b)
    return (av is not None and bv is not None and av.dim() == 2 and bv.dim() == 2
            and av.dtype in _DTYPES and av.dtype == bv.dtype and av.device.type == "cuda"
            and isinstance(bv.shape[0], int) and isinstance(bv.shape[1], int))


def register_patterns(pm_pass) -> None:
    from torch._inductor.pattern_matcher import CallFunction, KeywordArg, register_graph_pattern

    from tri_inductor.patterns._trace import trace_replacement

    # mm(x, w.t()) is the common case; ``b`` can be any strided 2-D tensor, a permute view
    # included, so one pattern on mm covers it (the permute stays a free view feeding the kernel).
    def mm_check(match):
        return _mm_ok(match.kwargs["a"], match.kwargs["b"])

    @register_graph_pattern(CallFunction(aten.mm.default, KeywordArg("a"), KeywordArg("b")),
                            extra_check=mm_check, pass_dict=pm_pass)
    def mm_handler(match, a, b):
        match.replace_by_example(lambda a, b: torch.ops.tri_inductor.mm(a, b), [a, b],
                                 trace_fn=trace_replacement)

    def addmm_check(match):
        bias, a, b = match.kwargs["bias"], match.kwargs["a"], match.kwargs["b"]
        node = match.output_node()
        if node.kwargs.get("beta", 1) != 1 or node.kwargs.get("alpha", 1) != 1:
            return False
        bv = _val(bias)
        return (_mm_ok(a, b) and bv is not None and bv.dim() == 1 and bv.dtype == _val(a).dtype
                and bv.shape[0] == _val(b).shape[1])

    @register_graph_pattern(CallFunction(aten.addmm.default, KeywordArg("bias"), KeywordArg("a"),
                                         KeywordArg("b")),
                            extra_check=addmm_check, pass_dict=pm_pass)
    def addmm_handler(match, bias, a, b):
        match.replace_by_example(lambda bias, a, b: torch.ops.tri_inductor.addmm(bias, a, b),
                                 [bias, a, b], trace_fn=trace_replacement)
