"""Prefill tiles of our paged attention, measured on the GPU once per shape and stored.

The heuristic (``launch.prefill_cfg``) is the default; on a GPU the generic tuner
(:func:`tri_inductor.tuning.tune`) measures a candidate space around it (rows per program, key
tile, warps, pipeline depth) once per (GQA group, head dim, cache block size, dtype, causal,
query bucket) and stores the fastest in our cache, as the GEMM and MoE configs are; a warm start
measures nothing.  Every query bucket of a shape is tuned at once, under vLLM when it builds our
metadata builder (``ops.prepare_prefill``: engine start), else at the shape's first prefill, so
no bucket is first met (and measured) while serving.  The measured input is one sequence of the
bucket's query count with as many cached keys (a chunked prefill) on a paged cache with scattered
blocks, checked against the default config's output.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import torch

from ... import cache
from ... import tuning as generic
from ..gemm.configs import Device, device_info
from .launch import (PIPELINE_STAGES, PrefillCfg, head_pad, min_rows, prefill_cfg, prefill_rows, step_rows,
                     warps_for)

KERNEL = "paged_attn_prefill"
# Query buckets (max query tokens of a step): short chunks (speculative / mixed decode rows),
# medium, long; the last is measured at MEASURE_MAX_Q tokens.
Q_BUCKETS = (16, 256, 1 << 30)
MEASURE_MAX_Q = 4096

Run = Callable[..., Any]  # run(q, k_cache, v_cache, out, cu, seq_lens, table, max_q, max_k, causal, cfg)
# in-process memo (every layer of every step asks); None: nothing stored, the heuristic per step
_CHOICE: dict[tuple, PrefillCfg | None] = {}


def q_bucket(max_seqlen_q: int) -> int:
    return next(b for b in Q_BUCKETS if max_seqlen_q <= b)


def bucket_label(bucket: int) -> str:
    return f"Q>{Q_BUCKETS[-2]}" if bucket > Q_BUCKETS[-2] else f"Q<={bucket}"


def measured_q(bucket: int) -> int:
    return min(bucket, MEASURE_MAX_Q)


def shape_key(group: int, head: int, block_size: int, dtype: torch.dtype, causal: bool, bucket: int) -> str:
    return (f"G{group}_D{head}_B{block_size}_{'causal' if causal else 'full'}_{bucket_label(bucket)}_"
            f"{str(dtype).replace('torch.', '')}")


# Registers a thread for the two-programs-an-SM twins of 8-warp candidates (2 x 256 threads x 128:
# the whole register file), and what the fp32 accumulator and scores may take of them (the rest:
# Q's fragments, addresses, softmax state; more spills measured on sm_90 codegen). Uncapped, the
# kernel takes 60-88 registers beyond accumulator and scores (sm_90 codegen: d64 128 x 64 keys
# 124, d128 128 x 32 140, d128 128 x 64 184): a tile under the cap without one gets no twin.
SHARED_SM_REGS = 128
SHARED_SM_STATE_REGS = 96
UNCAPPED_EXTRA_REGS = 60


def smem_bytes(cfg: PrefillCfg, head: int, elem: int = 2) -> int:
    """The query tile plus the pipelined K and V tiles (an upper bound: the validity check)."""
    hp = head_pad(head)
    return (cfg.block_m * hp + cfg.num_stages * 2 * cfg.tile_n * hp) * elem


def allocated_smem_bytes(cfg: PrefillCfg, head: int, elem: int = 2) -> int:
    """What Triton 3.6 allocates on sm_90: the query tile and ``num_stages - 1`` buffers each of
    K and V (128 rows x 64 keys, d128, 3 stages: 98,304 of the 98,816 bytes the compile reports;
    the rest barriers)."""
    hp = head_pad(head)
    return (cfg.block_m * hp + (cfg.num_stages - 1) * 2 * cfg.tile_n * hp) * elem


def invalid_reason(cfg: PrefillCfg, group: int, head: int, dev: Device, elem: int = 2) -> str | None:
    if any(v < 1 or v & (v - 1) for v in (cfg.block_m, cfg.tile_n, cfg.num_warps)):
        return "rows, key tile and warps must be powers of two"
    if not (16 <= cfg.block_m <= 256 and 16 <= cfg.tile_n <= 256 and 1 <= cfg.num_stages <= 6
            and cfg.num_warps <= 16):
        return "tile, stages or warps out of range"
    if cfg.block_m < group or cfg.block_q != max(1, cfg.block_m // group):
        return f"{cfg.block_m} rows cannot hold the {group} heads of a KV group as block_q {cfg.block_q}"
    if smem_bytes(cfg, head, elem) > dev.smem:
        return f"needs {smem_bytes(cfg, head, elem)} B of shared memory, the device has {dev.smem}"
    # fp32 accumulator (rows x head) and scores (rows x key tile) per thread: past ~192 registers
    # the tile spills
    state = _state_regs(cfg, head)
    if state > 192:
        return "accumulator and scores too large for the warps"
    if cfg.max_regs:
        if not 64 <= cfg.max_regs <= 255 or cfg.max_regs % 8:
            return "a register cap must be a multiple of 8 in 64..255"
        if state > cfg.max_regs - (SHARED_SM_REGS - SHARED_SM_STATE_REGS):
            return f"accumulator and scores do not fit {cfg.max_regs} registers a thread"
    return None


def _state_regs(cfg: PrefillCfg, head: int) -> int:
    """Registers a thread holds for the fp32 accumulator (rows x head) and scores (rows x key tile)."""
    return cfg.block_m * (head_pad(head) + cfg.tile_n) // (cfg.num_warps * 32)


def _cfg(group: int, block_m: int, tile_n: int, warps: int, stages: int, max_regs: int = 0) -> PrefillCfg:
    return PrefillCfg(block_m=block_m, block_q=max(1, block_m // group), tile_n=tile_n, num_warps=warps,
                      num_stages=stages, max_regs=max_regs)


def candidates(group: int, head: int, bucket: int, dev: Device, elem: int = 2) -> list[PrefillCfg]:
    """The two largest row counts the bucket's queries fill (x group heads; 256 only where the
    heuristic would take it), key tiles of 32 to 128, two warp counts per row count (16 or 8 from
    256 rows, 8 or 4 from 64, 4 below), ``launch.PIPELINE_STAGES`` stages (one more measured
    within 1% on an H200; 2 leaves the block-table load synchronous), and for each 8-warp one
    that takes more than ``SHARED_SM_REGS`` registers uncapped but fits them, and whose shared
    memory fits twice on an SM, a twin capped there (two programs an SM): the valid
    combinations, ~6-14 per bucket (each is compiled: cold-start time)."""
    top = prefill_rows(group, head, measured_q(bucket))
    block_ms = sorted({b for b in (16, 32, 64, 128, 256) if min_rows(group) <= b <= top})[-2:]
    out: list[PrefillCfg] = []
    for bm in block_ms:
        for tile_n in (32, 64, 128):
            for warps in ((16, 8) if bm >= 256 else (8, 4) if bm >= 64 else (4,)):
                c = _cfg(group, bm, tile_n, warps, PIPELINE_STAGES)
                twin = None
                if (warps == 8 and _state_regs(c, head) + UNCAPPED_EXTRA_REGS > SHARED_SM_REGS
                        and 2 * allocated_smem_bytes(c, head, elem) <= dev.smem):
                    twin = _cfg(group, bm, tile_n, warps, PIPELINE_STAGES, SHARED_SM_REGS)
                for cand in (c, twin):
                    if cand is not None and invalid_reason(cand, group, head, dev, elem) is None and cand not in out:
                        out.append(cand)
    return out


def fit(cfg: PrefillCfg, group: int, max_seqlen_q: int) -> PrefillCfg:
    """A bucket's config for a step with fewer queries: no more rows than the step fills (a chunk
    of 3 tokens on a 128-row tile would leave most rows idle), and no 256-row programs unless
    the step fills ``FILL_TILES`` of them (300 tokens would leave SMs idle): ``launch.step_rows``
    with the tuned rows as the cap; the key tile and stages stay, warps shrink with the rows."""
    rows = step_rows(group, max_seqlen_q, cfg.block_m)
    if rows >= cfg.block_m:
        return cfg
    return _cfg(group, rows, cfg.tile_n, min(cfg.num_warps, warps_for(rows)), cfg.num_stages)


def _decode(raw: Any, group: int, head: int, dev: Device, elem: int) -> PrefillCfg | None:
    try:
        cfg = PrefillCfg(*(int(v) for v in raw))
    except (TypeError, ValueError):
        return None
    return cfg if invalid_reason(cfg, group, head, dev, elem) is None else None


def _stored_config_problem(raw: Any) -> str | None:
    """The tuning DB's check of a stored entry (also for imported DBs): five small positive ints
    and, from when it was added, a register cap (0: none)."""
    ints = isinstance(raw, (list, tuple)) and len(raw) in (5, 6) and all(
        isinstance(v, int) and not isinstance(v, bool) for v in raw)
    ok = ints and all(1 <= v <= 256 for v in raw[:5]) and (len(raw) == 5 or 0 <= raw[5] <= 255)
    return None if ok else f"{raw!r} is not a valid prefill attention config"


cache.register_validator(KERNEL, _stored_config_problem)


def prefill_config(group: int, head: int, block_size: int, dtype: torch.dtype, causal: bool, max_seqlen_q: int,
                   run: Run | None = None) -> PrefillCfg:
    """The prefill tiles for a step whose longest query chunk is ``max_seqlen_q``: the bucket's
    stored (or, on a GPU with tuning on and ``run`` given, just tuned) config fitted to the step,
    else the heuristic's for this step."""
    bucket = q_bucket(max_seqlen_q)
    memo = (group, head, block_size, dtype, causal, bucket)
    if memo not in _CHOICE:
        elem = torch.empty((), dtype=dtype).element_size()
        if run is not None and generic.can_tune():
            # The whole shape now (no bucket is tuned mid-serving). The kernel does not depend on
            # the query count, so the first bucket's compile batch takes every bucket's
            # candidates: one batch side by side, not one per bucket (each waits for its slowest).
            from ... import compile_ahead

            ahead = _all_buckets_configs(group, head, device_info(), elem)
            compile_ahead.wait(ahead_key(group, head, block_size, dtype))
            for i, b in enumerate(Q_BUCKETS):
                _CHOICE[(group, head, block_size, dtype, causal, b)] = _tune(
                    group, head, block_size, dtype, causal, b, elem, run, ahead if i == 0 else ())
        else:
            raw = cache.lookup(KERNEL, shape_key(group, head, block_size, dtype, causal, bucket))
            cfg = None if raw is None else _decode(raw, group, head, device_info(), elem)
            if cfg is None and run is not None and generic.capturing():
                # inside a CUDA-graph capture nothing may be tuned: ask again after it. Otherwise
                # (tuning off, no GPU) the answer is remembered: this runs every layer, every step.
                return prefill_cfg(group, head, max_seqlen_q)
            _CHOICE[memo] = cfg
    cfg = _CHOICE[memo]
    return prefill_cfg(group, head, max_seqlen_q) if cfg is None else fit(cfg, group, max_seqlen_q)


def _tune(group, head, block_size, dtype, causal, bucket, elem, run, ahead=()) -> PrefillCfg:
    """``ahead``: configs to compile with this bucket's candidates (other buckets')."""
    dev = device_info()
    t = measured_q(bucket)
    default = prefill_cfg(group, head, t)
    cands = candidates(group, head, bucket, dev, elem)
    state: dict[str, Any] = {"cands": list(dict.fromkeys([default, *cands, *ahead]))}
    try:
        return generic.tune(KERNEL, shape_key(group, head, block_size, dtype, causal, bucket), default, cands,
                            _measure(group, head, block_size, dtype, causal, t, default, run, state),
                            lambda raw: _decode(raw, group, head, dev, elem), dataclasses.astuple,
                            label=f"paged attention prefill G={group} D={head} block {block_size} "
                                  f"{'' if causal else 'non-causal '}{bucket_label(bucket)} "
                                  f"{str(dtype).replace('torch.', '')}")
    finally:
        state.clear()


def _inputs(group: int, head: int, block_size: int, dtype: torch.dtype, t: int, device: str) -> dict[str, Any]:
    """One sequence of ``t`` queries after ``t`` cached keys, 8 KV heads, scattered blocks: the
    tuner's input; on ``meta`` the same shapes and strides with nothing allocated (compile ahead)."""
    hk, seq = 8, 2 * t
    nblk = -(-seq // block_size)
    # the table's row is as wide as a multiple of 16, as vLLM's (max blocks per request) usually is:
    # its stride is an argument Triton specialises on (% 16), so every bucket's input, and serving,
    # then ask for the same kernels (a 2-block row for 16 queries compiled a variant nothing used)
    width = -(-nblk // 16) * 16
    if device == "meta":
        table = torch.empty(1, width, dtype=torch.int32, device=device)
        cache_ = torch.empty(nblk + 7, block_size, hk, 2 * head, device=device, dtype=dtype)
        cu = torch.empty(2, dtype=torch.int32, device=device)
        sl = torch.empty(1, dtype=torch.int32, device=device)
        q = torch.empty(t, hk * group, head, device=device, dtype=dtype)
    else:
        g = torch.Generator(device=device).manual_seed(0)
        table = torch.zeros(1, width, dtype=torch.int32, device=device)
        table[0, :nblk] = torch.randperm(nblk + 7, device=device, generator=g)[:nblk].to(torch.int32)
        cache_ = torch.randn(nblk + 7, block_size, hk, 2 * head, device=device, dtype=dtype, generator=g)
        q = torch.randn(t, hk * group, head, device=device, dtype=dtype, generator=g)
        cu = torch.tensor([0, t], dtype=torch.int32, device=device)
        sl = torch.tensor([seq], dtype=torch.int32, device=device)
    k, v = cache_.split(head, dim=-1)
    return dict(q=q, k=k, v=v, cu=cu, sl=sl, table=table, seq=seq)


def _all_buckets_configs(group: int, head: int, dev: Device, elem: int) -> list[PrefillCfg]:
    """Every bucket's default and candidates: what the first bucket's tuning compiles."""
    return list(dict.fromkeys(c for b in Q_BUCKETS
                              for c in (prefill_cfg(group, head, measured_q(b)), *candidates(group, head, b, dev, elem))))


def ahead_key(group: int, head: int, block_size: int, dtype: torch.dtype) -> tuple:
    return (KERNEL, group, head, block_size, dtype)


def ahead_jobs(group: int, head: int, block_size: int, dtype: torch.dtype, run: Run) -> dict[PrefillCfg, Any]:
    """For ``compile_ahead``: the compile-only calls of the causal prefill candidates a shape's
    tuning compiles (every bucket's, on the first bucket's input), on meta tensors; none when
    every bucket is stored."""
    if all(cache.lookup(KERNEL, shape_key(group, head, block_size, dtype, True, b)) is not None for b in Q_BUCKETS):
        return {}
    elem = torch.empty((), dtype=dtype).element_size()
    t = measured_q(Q_BUCKETS[0])
    s = _inputs(group, head, block_size, dtype, t, "meta")
    return {c: (lambda c=c: run(s["q"], s["k"], s["v"], torch.empty_like(s["q"]), s["cu"], s["sl"], s["table"], t,
                                s["seq"], True, c))
            for c in _all_buckets_configs(group, head, device_info(), elem)}


def _measure(group, head, block_size, dtype, causal, t, default, run, state):
    """``measure(cfg)`` -> ms of one prefill chunk of ``t`` queries after ``t`` cached keys (8 KV
    heads, scattered blocks), on the tuner's thread; checked against the default config."""

    def inputs() -> None:
        state.update(_inputs(group, head, block_size, dtype, t, "cuda"))

    def call(cfg: PrefillCfg, out: torch.Tensor) -> torch.Tensor:
        s = state
        return run(s["q"], s["k"], s["v"], out, s["cu"], s["sl"], s["table"], t, s["seq"], causal, cfg)

    def measure(cfg: PrefillCfg) -> float:
        def work() -> float:
            if "q" not in state:
                inputs()
                state["failed"] = generic.compile_side_by_side(
                    {c: (lambda c=c: call(c, torch.empty_like(state["q"]))) for c in state["cands"]})
            if cfg in state["failed"]:
                err = state["failed"][cfg]
                raise RuntimeError(f"did not compile: {type(err).__name__}: {err}"[:300])
            out = torch.empty_like(state["q"])
            call(cfg, out)
            if "ref" not in state:
                state["ref"] = call(default, torch.empty_like(state["q"])).float()
            ref = state["ref"]
            err = ((out.float() - ref).norm() / ref.norm().clamp_min(1e-6)).item()
            if not err < 2e-2:  # NaN fails too
                raise ValueError(f"result differs from the default config's (rel. err {err:.2e})")
            return generic.graph_time_ms([lambda: call(cfg, out)])

        return generic.run_isolated(work)

    return measure


def forget_choices() -> None:
    _CHOICE.clear()


cache.on_forget(forget_choices)
