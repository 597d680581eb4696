"""Config choice with measurement: the stored result, else (on a real GPU) the cost model's best
candidates benchmarked once and the fastest stored, else the model's (or shipped table's) pick.

Timing is what vLLM will see: CUDA-graph replays (no host launch cost in the number) over
rotated copies of the weight, so every call streams it from HBM as a decode step does, not from
L2 (a 3584 x 3584 bf16 weight is 26 MB: one copy would sit in an H200's 50 MB L2).
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from ... import cache, compile_ahead
from ... import tuning as generic
from .configs import (BUCKETS, Cfg, Device, bucket_m, bucket_of, device_info, invalid_reason, parse_cfg, shipped,
                      table_entries)
from .heuristics import candidates, diverse, for_fused, fused_ok, model_config

# How many of the model's best candidates are measured per (N, K, M bucket); the default and
# the shipped entry are measured as well.
CANDIDATES = 12
# The config whose result every candidate's is checked against (simple and tested everywhere).
REFERENCE_CFG = Cfg(16, 64, 64, 1, 1, 4, 2)


def _stored_config_problem(raw: Any) -> str | None:
    """The tuning DB's check of a stored GEMM entry (also for imported DBs): not a valid Cfg."""
    return None if parse_cfg(raw) is not None else f"{raw!r} is not a valid GEMM config"


cache.register_validator("mm", _stored_config_problem)


def bucket_label(bucket: int) -> str:
    return f">{BUCKETS[-1]}" if bucket > BUCKETS[-1] else f"<={bucket}"


def shape_key(n: int, k: int, bucket: int, dtype: Any, variant: str = "") -> str:
    """``variant``: the fused gate_up form's activation ("silu", ...), tuned apart (its programs
    cover half their tile's columns in gate and half in up: another kernel, another ranking)."""
    base = f"N={n},K={k},M{bucket_label(bucket)},{str(dtype).replace('torch.', '')}"
    return f"{base},{variant}_and_mul" if variant else base


def default_config(n: int, k: int, bucket: int, dev: Device, elem: int = 2, fused: bool = False) -> Cfg:
    """Without measurement: the shipped table's entry where it has one, else the cost model's.
    ``fused``: for the gate_up form (a shipped entry only if that form runs it well)."""
    table = shipped(n, k, bucket, dev)
    if table is not None and (not fused or fused_ok(table)):
        return table
    return model_config(bucket, n, k, dev, elem, fused)


def tuning_candidates(n: int, k: int, bucket: int, dev: Device, elem: int = 2, fused: bool = False) -> list[Cfg]:
    """What the tuner measures: the shipped table's configs of this bucket (known good on this
    chip family for other shapes) and the cost model's best of each tile family; ``fused``: of
    those, the ones the gate_up form runs well."""
    m = bucket_m(bucket)
    priors = [c for (_, _, b), c in table_entries().items() if b == bucket and dev.capability == (9, 0)
              and dev.vendor == "nvidia" and invalid_reason(c, dev, elem) is None]
    space = candidates(m, n, k, dev, elem)
    if fused:
        priors, space = [c for c in priors if fused_ok(c)], for_fused(space)
    out: list[Cfg] = []
    for c in priors + diverse(space, m, n, k, dev, CANDIDATES, elem):
        if c not in out:
            out.append(c)
    return out


# Sibling buckets whose candidates were compiled ahead in this process: (N, K, dtype, variant, bucket).
_COMPILED_AHEAD: set[tuple] = set()


def compile_jobs(n: int, k: int, bucket: int, siblings: tuple[int, ...], dtype: torch.dtype, dev: Device,
                 variant: str, own: list[Cfg]) -> dict[tuple[int, Cfg], int]:
    """What the first compile batch of a shape's tuning compiles: ``(bucket, cfg) -> M`` for this
    bucket's candidates ``own`` and, once per process, those of the sibling buckets (the other M
    buckets of the same dispatch plan) that are not tuned yet. One batch side by side instead of
    one per bucket: each batch waits for its slowest compile, and the buckets' spaces overlap
    little (other M, other tiles), so per-bucket batches leave most threads idle."""
    jobs = {(bucket, c): bucket_m(bucket) for c in own}
    _COMPILED_AHEAD.add((n, k, dtype, variant, bucket))
    _take_bucket_spaces(n, k, siblings, dtype, dev, variant, jobs)
    return jobs


def _take_bucket_spaces(n: int, k: int, buckets, dtype: torch.dtype, dev: Device, variant: str,
                        jobs: dict[tuple[int, Cfg], int]) -> None:
    """Add to ``jobs`` the default and candidates of each of ``buckets`` not compiled ahead in
    this process nor stored (each at its bucket's representative M), and mark them compiled."""
    elem = torch.empty((), dtype=dtype).element_size()
    fused = bool(variant)
    for b in buckets:
        key = (n, k, dtype, variant, b)
        if key in _COMPILED_AHEAD or cache.lookup("mm", shape_key(n, k, b, dtype, variant)) is not None:
            continue
        _COMPILED_AHEAD.add(key)
        for c in [default_config(n, k, b, dev, elem, fused), *tuning_candidates(n, k, b, dev, elem, fused)]:
            jobs.setdefault((b, c), bucket_m(b))


def ahead_key(n: int, k: int, dtype: torch.dtype, variant: str) -> tuple:
    return ("mm", n, k, dtype, variant)


def ahead_jobs(n: int, k: int, dtype: torch.dtype, variant: str, max_tokens: int,
               mm_launch: Callable) -> dict[tuple[int, Cfg], Callable[[], Any]]:
    """For ``compile_ahead``: the compile-only calls of every candidate of every M bucket up to
    ``max_tokens`` tokens not stored yet, on meta tensors of the shapes the tuner's batch uses
    (:func:`compile_jobs`: each bucket's candidates at its representative M). The buckets taken
    are marked compiled ahead, so the tuner's batches then hold only their own bucket's
    candidates (found compiled)."""
    jobs: dict[tuple[int, Cfg], int] = {}
    buckets = sorted({bucket_of(min(b, max_tokens)) for b in BUCKETS} | {bucket_of(max_tokens)})
    _take_bucket_spaces(n, k, buckets, dtype, device_info(), variant, jobs)
    if not jobs:
        return {}
    big = torch.empty(max(jobs.values()), k, dtype=dtype, device="meta")
    w = torch.empty(n, k, dtype=dtype, device="meta")
    return {key: (lambda c=key[1], r=r: mm_launch(big[:r], w.t(), None, c)) for key, r in jobs.items()}


def _ends(out: torch.Tensor) -> torch.Tensor:
    """First and last rows of an output, in fp32: the check covers the first and the last M
    tile (ragged edges, group order) without a full fp32 copy of a big output."""
    return torch.cat([out[:32], out[-32:]]).float()


def config_for(n: int, k: int, bucket: int, dtype: torch.dtype, dev: Device, mm_launch: Callable,
               variant: str = "", siblings: tuple[int, ...] = ()) -> Cfg:
    """The tile config for a (N, K, M bucket) GEMM: stored result, else tuned now, else the
    default (shipped table or cost model). ``mm_launch(a, b, bias, cfg)`` runs one config
    (``ops.mm_launch``, passed in: ops builds on this module). ``variant``: ``mm_launch`` runs the
    fused gate_up form with that activation; it is measured as it runs in the graph (the plain
    GEMM's timings rank the fused form's tiles wrongly: docs/design/gemm.md). ``siblings``: the
    other M buckets of the same dispatch plan, whose candidates are compiled with this bucket's
    if tuning runs (:func:`compile_jobs`)."""
    elem = torch.empty((), dtype=dtype).element_size()
    fused = bool(variant)
    default = default_config(n, k, bucket, dev, elem, fused)
    m = bucket_m(bucket)
    state: dict[str, Any] = {}

    def decode(raw: Any) -> Cfg | None:
        cfg = parse_cfg(raw)
        return cfg if cfg is not None and invalid_reason(cfg, dev, elem) is None else None

    def copies() -> int:
        # weight copies whose total passes twice the L2, at most 1 GiB of them
        per = n * k * elem
        return max(1, min(16, -(-2 * dev.l2 // per), (1 << 30) // max(1, per)))

    def too_big() -> str | None:
        # operands (rotated weights) + two outputs + a split-K fp32 workspace
        need = (m * k + copies() * n * k + 2 * m * n) * elem + (m * n * 4 * 16 if m <= 128 else 0)
        free = torch.cuda.mem_get_info()[0]
        if 2 * need > free:
            return f"needs ~{need >> 20} MiB of GPU memory, {free >> 20} MiB free"
        return None

    def measure(cfg: Cfg) -> float:
        def work() -> float:
            if "a" not in state:
                g = torch.Generator(device="cuda").manual_seed(0)
                state["a"] = torch.randn(m, k, device="cuda", dtype=dtype, generator=g)
                w = torch.randn(n, k, device="cuda", dtype=dtype, generator=g) / 64
                state["ws"] = [w] + [w.clone() for _ in range(copies() - 1)]
            a, ws = state["a"], state["ws"]
            if "failed" not in state:
                compile_ahead.wait(ahead_key(n, k, dtype, variant))
                jobs = compile_jobs(n, k, bucket, siblings, dtype, dev, variant, state["cands"])
                rows = max(jobs.values())
                big = a if rows <= m else torch.zeros(rows, k, device="cuda", dtype=dtype)
                failed = generic.compile_side_by_side(
                    {key: (lambda c=key[1], r=r: mm_launch(big[:r], ws[0].t(), None, c)) for key, r in jobs.items()})
                state["failed"] = {c: e for (b, c), e in failed.items() if b == bucket}
                del big
            if cfg in state["failed"]:
                err = state["failed"][cfg]
                raise RuntimeError(f"did not compile: {type(err).__name__}: {err}"[:300])
            out = _ends(mm_launch(a, ws[0].t(), None, cfg))
            if "ref" not in state:
                # the plain pointer kernel at its simplest tile: the same rows, no split, no TMA
                ends = torch.cat([a[:32], a[-32:]])
                state["ref"] = mm_launch(ends, ws[0].t(), None, REFERENCE_CFG).float()
            ref = state["ref"]
            err = ((out - ref).norm() / ref.norm().clamp_min(1e-6)).item()
            if not err < 2e-2:  # NaN fails too
                raise ValueError(f"result differs from the reference kernel's (rel. err {err:.2e})")
            return generic.graph_time_ms([lambda w=w: mm_launch(a, w.t(), None, cfg) for w in ws])

        return generic.run_isolated(work)

    def cands() -> list[Cfg]:  # built only when this shape is tuned now
        out = tuning_candidates(n, k, bucket, dev, elem, fused)
        state["cands"] = [default, *out]
        return out

    try:
        op = f"mm+{variant}_and_mul" if variant else "mm"
        return generic.tune("mm", shape_key(n, k, bucket, dtype, variant), default,
                            cands, measure, decode, lambda c: list(c),
                            skip_reason=too_big,
                            label=f"{op} N={n} K={k} M{bucket_label(bucket)} {str(dtype).replace('torch.', '')}")
    finally:
        state.clear()  # free the benchmark tensors before the compile goes on


__all__ = ["CANDIDATES", "config_for", "default_config", "shape_key",
           "tuning_candidates"]
