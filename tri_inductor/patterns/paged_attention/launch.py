"""Launch configuration: tiles per path, and the split-KV count from the device's SM count.

Decode is memory-bound: the grid (sequences x KV heads) is often far smaller than the GPU
(batch 1, 8 KV heads: 8 programs on 132 SMs).  Each sequence's keys are then split so that
sequences x KV heads x splits fills one wave of resident programs (the SM count times the
programs an SM holds at once, read from the compiled kernel: ``occupancy.py``) and no more: a
program past the wave waits for a whole program's time.  A second kernel combines the splits.  The split count depends on the batch (known when a CUDA graph is captured)
and, outside capture, on the longest context; inside capture it must not depend on the captured
context length.  It is an upper bound: on the device each sequence uses as many as its own
length fills with ``MIN_TILES_PER_SPLIT`` tiles each (``decode.used_splits``).
"""
from __future__ import annotations

import dataclasses
import functools

import torch
import triton

# Resident decode programs per SM where the compiled kernel cannot be asked (traced or CPU
# calls): the decode kernel's count on sm_90 at 4 warps (register-bound, 122-128 a thread; see
# docs/design/paged_attention.md, "Decode"). Unused splits of short sequences exit at once.
DEFAULT_PROGRAMS_PER_SM = 4
MAX_SPLITS = 64          # partial buffers and the reduce's tile grow with it
MIN_TILES_PER_SPLIT = 2  # a split shorter than this costs more in the reduce than it saves
CPU_SMS = 132            # the interpreter has no device: size splits as for an H100 SXM
# K/V addresses come from a block-table load in the same loop iteration: Triton's pipeliner
# needs 3 stages to make both the table load and the K/V loads asynchronous; with 2 the table
# load stays synchronous and every tile waits for it (sm_90 TTGIR: tests/test_paged_attention.py)
PIPELINE_STAGES = 3


@functools.cache
def _sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def sm_count(device: torch.device) -> int:
    if device.type != "cuda":
        return CPU_SMS
    return _sm_count(device.index if device.index is not None else torch.cuda.current_device())


def _capturing(device: torch.device) -> bool:
    return device.type == "cuda" and torch.cuda.is_current_stream_capturing()


@dataclasses.dataclass(frozen=True)
class DecodeCfg:
    block_g: int
    tile_n: int
    num_splits: int
    splits_pad: int
    num_warps: int
    num_stages: int
    wave: int
    """Programs the device runs at once (SMs x programs per SM): what the balanced policy spreads
    a step's work over."""


@dataclasses.dataclass(frozen=True)
class PrefillCfg:
    block_m: int
    block_q: int
    tile_n: int
    num_warps: int
    num_stages: int
    max_regs: int = 0
    """Registers a thread may use (Triton's ``maxnreg``; 0: the compiler's choice). 128 on 8
    warps lets two programs share an SM, each one's MMAs running while the other's softmax does:
    the overlap FA3 gets from its ping-pong warp groups, which Triton 3.6 cannot express on
    sm_90 (docs/design/paged_attention.md)."""

    def launch_options(self) -> dict[str, int]:
        return {"num_warps": self.num_warps, "num_stages": self.num_stages,
                **({"maxnreg": self.max_regs} if self.max_regs else {})}


def head_pad(head: int) -> int:
    return max(16, triton.next_power_of_2(head))


# Keys a decode program loads per iteration: the same bytes per K (and V) tile whatever the
# head dim, 16 KB in bf16 (d128: 64 keys, d64: 128, d256: 32); half that per iteration left d64
# short of d128's bandwidth (docs/design/paged_attention.md, "Decode").
DECODE_TILE_ELEMS = 8192


def decode_tile_n(head: int) -> int:
    return max(16, min(128, DECODE_TILE_ELEMS // head_pad(head)))


def num_splits_for(num_seqs: int, num_kv_heads: int, max_seqlen_k: int | None, sms: int, tile_n: int,
                   per_sm: int = DEFAULT_PROGRAMS_PER_SM) -> int:
    """The most splits per sequence whose grid (num_seqs x num_kv_heads x splits) still fits one
    wave of ``sms x per_sm`` resident programs: each split shortens every program's walk over
    the keys, one program past the wave adds a whole program's time (docs/design/paged_attention.md,
    "Decode"). A batch that fills the wave alone is not split (no
    reduce launch). ``max_seqlen_k`` None (CUDA-graph capture): sized on the batch alone."""
    base = max(1, num_seqs * num_kv_heads)
    splits = max(1, sms * max(1, per_sm) // base)
    if max_seqlen_k is not None:
        splits = min(splits, max(1, -(-max_seqlen_k // (tile_n * MIN_TILES_PER_SPLIT))))
    return max(1, min(splits, MAX_SPLITS))


# Split policies of the decode kernel: ``wave`` (the split count fills one wave for the batch;
# each sequence uses what its length fills) and ``balanced`` (the bound raised to
# BALANCED_SPLITS, each sequence's count from its share of the step's tiles on the device:
# ``decode.balanced_splits``; for batches of mixed lengths, where the longest sequences' programs
# set the step's time). Opt-in (TRI_INDUCTOR_DECODE_SPLITS) until measured on a GPU
# (docs/design/paged_attention.md).
SPLIT_POLICIES = ("wave", "balanced")
BALANCED_SPLITS = 8


def splits_pad(num_splits: int) -> int:
    """The partials' split width the decode and reduce kernels are specialised on (not the count)."""
    return max(2, triton.next_power_of_2(num_splits))


def decode_cfg(num_seqs: int, num_q_heads: int, num_kv_heads: int, head: int, max_seqlen_k: int,
               device: torch.device, num_splits: int | None = None,
               per_sm: int = DEFAULT_PROGRAMS_PER_SM, balanced: bool = False) -> DecodeCfg:
    group = num_q_heads // num_kv_heads
    tile_n = decode_tile_n(head)
    if num_splits is None:
        seqlen = None if _capturing(device) else max_seqlen_k
        num_splits = num_splits_for(num_seqs, num_kv_heads, seqlen, sm_count(device), tile_n, per_sm)
        if balanced:  # the captured bound must hold any replay's longest sequence: a fixed one then
            cap = BALANCED_SPLITS if seqlen is None else -(-seqlen // (tile_n * MIN_TILES_PER_SPLIT))
            num_splits = min(MAX_SPLITS, max(num_splits, min(BALANCED_SPLITS, cap)))
    return DecodeCfg(block_g=max(16, triton.next_power_of_2(group)), tile_n=tile_n, num_splits=num_splits,
                     splits_pad=splits_pad(num_splits), num_warps=4, num_stages=PIPELINE_STAGES,
                     wave=sm_count(device) * max(1, per_sm))


# A long prefill runs 256-row programs (16 warps): each K/V tile, gathered through the block
# table, then feeds twice the rows. Measured on an H200 (paged, causal, GQA 32/8, d128): 1.39x
# over 128 rows at 8k tokens, 1.17x at 2k+2k cached; at d64 ~1.04x. Only once the rows fill
# FILL_TILES such programs per KV head: fewer, larger programs would leave SMs idle.
BIG_ROWS = 256
FILL_TILES = 16


def min_rows(group: int) -> int:
    """The fewest rows a program has: one token's group of query heads, at least 16 (tl.dot)."""
    return max(16, triton.next_power_of_2(group))


def step_rows(group: int, max_seqlen_q: int, cap: int) -> int:
    """Rows per program for a step whose longest chunk has ``max_seqlen_q`` queries, at most
    ``cap``: 128 once the queries fill them, more (up to ``cap``) only once they fill
    ``FILL_TILES`` such programs per KV head, fewer for short chunks (speculative / mixed
    decode steps)."""
    need = max(1, max_seqlen_q) * group
    top = cap if need >= FILL_TILES * BIG_ROWS else min(cap, 128)
    return max(min_rows(group), min(top, triton.next_power_of_2(need)))


def prefill_rows(group: int, head: int, max_seqlen_q: int) -> int:
    """:func:`step_rows` capped at 256 (64 for head dims past 128: shared memory)."""
    return step_rows(group, max_seqlen_q, BIG_ROWS if head_pad(head) <= 128 else 64)


def warps_for(block_m: int) -> int:
    return 16 if block_m >= BIG_ROWS else 8 if block_m >= 128 else 4


def prefill_cfg(group: int, head: int, max_seqlen_q: int) -> PrefillCfg:
    """The heuristic's tiles (:func:`prefill_rows`; the tuner refines them per shape)."""
    block_m = prefill_rows(group, head, max_seqlen_q)
    tile_n = 64 if head_pad(head) <= 128 else 32
    return PrefillCfg(block_m=block_m, block_q=max(1, block_m // group), tile_n=tile_n,
                      num_warps=warps_for(block_m), num_stages=PIPELINE_STAGES)
