"""Token-to-expert alignment (what vLLM's ``moe_align_block_size`` computes), in Triton.

Input: ``topk_ids`` [T, k] (expert of each (token, slot) pair; flat index ``i = t * k + slot``).
Output, for a grouped GEMM that works on blocks of ``block_m`` rows of one expert each:

* ``sorted_ids`` [numel + E * (block_m - 1)]: the flat indices grouped by expert, each expert's
  run padded to a multiple of ``block_m`` with ``numel`` (an index past the end: a masked row);
* ``expert_ids`` [cdiv(len(sorted_ids), block_m)]: the expert of each block (-1 past the end);
* ``n_post_pad`` [1]: how many entries of ``sorted_ids`` are used (a multiple of block_m);
* ``counts`` [E]: tokens per expert (an expert with no token has an empty run).

Ids outside [0, E) (expert-parallel sentinels, bad input) are left out of every run.

Three launches: count (atomic adds), offsets (one program: padded exclusive cumsum and the
block -> expert map), scatter (atomic cursor per expert).  The order of the indices inside one
expert's run is whatever the atomics give: every row of the GEMM is computed on its own and the
reduction reads its rows by flat index, so the results do not depend on it.
"""
from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def moe_count_kernel(ids_ptr, counts_ptr, numel, E, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    ok = offs < numel
    e = tl.load(ids_ptr + offs, mask=ok, other=0)
    ok = ok & (e >= 0) & (e < E)  # an id outside [0, E) is dropped, never written out of bounds
    tl.atomic_add(counts_ptr + e, tl.full([BLOCK], 1, tl.int32), mask=ok)


@triton.jit
def moe_offsets_kernel(counts_ptr, offsets_ptr, cursor_ptr, expert_ids_ptr, n_post_pad_ptr, E, n_blocks,
                       BLOCK_M: tl.constexpr, BLOCK_E: tl.constexpr, BLOCK_B: tl.constexpr):
    offs_e = tl.arange(0, BLOCK_E)
    e_ok = offs_e < E
    c = tl.load(counts_ptr + offs_e, mask=e_ok, other=0)
    padded = (c + BLOCK_M - 1) // BLOCK_M * BLOCK_M
    end = tl.cumsum(padded, 0)
    start = end - padded
    total = tl.sum(padded, 0)
    tl.store(offsets_ptr + offs_e, start, mask=e_ok)
    tl.store(cursor_ptr + offs_e, start, mask=e_ok)
    tl.store(offsets_ptr + E, total)
    tl.store(n_post_pad_ptr, total)
    # Block b (rows b*BLOCK_M...) belongs to the first expert whose run ends after its start:
    # the number of runs that end at or before it (empty runs end where they start).
    for b0 in range(0, n_blocks, BLOCK_B):
        ob = b0 + tl.arange(0, BLOCK_B)
        row0 = ob * BLOCK_M
        before = (end[None, :] <= row0[:, None]) & e_ok[None, :]
        e_of = tl.sum(before.to(tl.int32), 1)
        e_of = tl.where(row0 < total, e_of, -1)
        tl.store(expert_ids_ptr + ob, e_of, mask=ob < n_blocks)


@triton.jit
def moe_scatter_kernel(ids_ptr, cursor_ptr, sorted_ptr, numel, E, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    ok = offs < numel
    e = tl.load(ids_ptr + offs, mask=ok, other=0)
    ok = ok & (e >= 0) & (e < E)
    pos = tl.atomic_add(cursor_ptr + e, tl.full([BLOCK], 1, tl.int32), mask=ok)
    tl.store(sorted_ptr + pos, offs.to(sorted_ptr.dtype.element_ty), mask=ok)


@triton.jit
def int_histc_kernel(x_ptr, counts_ptr, numel, lo, hi, BINS: tl.constexpr, BLOCK: tl.constexpr):
    """torch.histc(x, BINS, lo, hi) of integer values, in exact integer arithmetic (the float
    formula floor((x - lo) * BINS / (hi - lo)) gives the same bin for integers far below 2**24)."""
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    v = tl.load(x_ptr + offs, mask=offs < numel, other=0).to(tl.int64)
    ok = (offs < numel) & (v >= lo) & (v <= hi)
    b = tl.minimum((v - lo) * BINS // (hi - lo), BINS - 1)
    tl.atomic_add(counts_ptr + tl.where(ok, b, 0), tl.full([BLOCK], 1, tl.int32), mask=ok)


@triton.jit
def moe_fill_kernel(ptr, value, n, BLOCK: tl.constexpr):
    """ptr[:n] = value.  Ours rather than torch.full / zeros: called eagerly (vLLM's MoE layer
    runs outside the compiled graph) those would launch ATen fill kernels, not Triton."""
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    tl.store(ptr + offs, tl.full([BLOCK], value, ptr.dtype.element_ty), mask=offs < n)
