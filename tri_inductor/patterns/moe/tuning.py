"""Tile configs of the fused-MoE expert GEMMs: a default by rows per expert, and on a GPU the
generic tuner (:func:`tri_inductor.tuning.tune`) over a candidate space, once per
(experts, widths, top-k, token bucket, dtype), stored in our cache like the GEMM's.

One config serves both GEMMs of a layer (they share the row alignment, so BLOCK_M is common), as
in vLLM's fused_moe tables.  ``width`` is the output columns a program covers in the plain form:
the second GEMM's BLOCK_N; the gated first GEMM splits it between gate and up (BLOCK_N =
width / 2, two accumulators), so both GEMMs hold the same accumulator size.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import torch
import triton

from ... import cache
from ... import tuning as generic
from ..gemm.configs import Device, device_info

# Token buckets (tuned once each): powers of two up to 8192, then one for everything above.
MAX_BUCKET = 8192
_CHOICE: dict[tuple, MoeCfg] = {}  # in-process memo: an eager call must not pay the DB lookup


@dataclasses.dataclass(frozen=True)
class MoeCfg:
    block_m: int
    width: int
    block_k: int
    group_m: int
    warps: int
    stages: int

    def kwargs(self, n: int, k: int, gated: bool, elem: int) -> dict[str, int]:
        """Launch kwargs of one GEMM (output width ``n``, reduction ``k``): tiles clamped to the
        problem (a narrow expert needs no 256-wide tile)."""
        bn = self.width // 2 if gated else self.width
        bn = max(16, min(bn, triton.next_power_of_2(n)))
        bk, stages = _fp32_step(max(16, min(self.block_k, triton.next_power_of_2(k))), self.stages, elem)
        return dict(BLOCK_M=self.block_m, BLOCK_N=bn, BLOCK_K=bk, GROUP_M=self.group_m,
                    num_warps=self.warps, num_stages=stages)

    def short(self) -> str:
        return f"{self.block_m}x{self.width}x{self.block_k} g{self.group_m} w{self.warps} st{self.stages}"


def token_bucket(tokens: int) -> int:
    return min(MAX_BUCKET * 2, triton.next_power_of_2(max(1, tokens)))


def bucket_label(bucket: int) -> str:
    return f"T>{MAX_BUCKET}" if bucket > MAX_BUCKET else f"T<={bucket}"


def rows_per_expert(tokens: int, top_k: int, experts: int) -> int:
    return max(1, tokens * top_k // max(1, experts))


def _fp32_step(block_k: int, stages: int, elem: int) -> tuple[int, int]:
    """fp32 operands: half the K step and at most 3 stages (the tile per stage is twice the bytes)."""
    return (min(block_k, 32), min(stages, 3)) if elem >= 4 else (block_k, stages)


def smem_bytes(cfg: MoeCfg, elem: int = 2) -> int:
    """Pipelined A and B tiles of the wider of the two GEMMs (the plain one: B is width wide)."""
    bk, stages = _fp32_step(cfg.block_k, cfg.stages, elem)
    return stages * (cfg.block_m * bk + bk * cfg.width) * elem


def invalid_reason(cfg: MoeCfg, dev: Device, elem: int = 2) -> str | None:
    if any(v < 1 or v & (v - 1) for v in (cfg.block_m, cfg.width, cfg.block_k, cfg.group_m, cfg.warps)):
        return "tile sizes, group and warps must be powers of two"
    if not (16 <= cfg.block_m <= 256 and 32 <= cfg.width <= 512 and 16 <= cfg.block_k <= 256):
        return "tile out of range"
    if cfg.warps > 16 or not 1 <= cfg.stages <= 8 or cfg.group_m > 64:
        return "warps, stages or group out of range"
    if smem_bytes(cfg, elem) > dev.smem:
        return f"needs {smem_bytes(cfg, elem)} B of shared memory, the device has {dev.smem}"
    # fp32 accumulator values per thread: past ~128 registers the tile spills
    if cfg.block_m * cfg.width // (cfg.warps * 32) > 128:
        return "accumulator too large for the warps"
    return None


def default_config(tokens: int, top_k: int, experts: int) -> MoeCfg:
    """Without measurement: BLOCK_M follows the rows each expert gets (padding waste vs weight
    re-reads), a wide tile and grouped row blocks once an expert has several row blocks."""
    r = rows_per_expert(tokens, top_k, experts)
    if r <= 16:
        return MoeCfg(16, 128, 128, 1, 4, 4)
    if r <= 32:
        return MoeCfg(32, 128, 128, 8, 4, 3)
    if r <= 96:
        return MoeCfg(64, 128, 128, 8, 4, 3)
    return MoeCfg(128, 256, 64, 16, 8, 4)


def candidates(tokens: int, top_k: int, experts: int, dev: Device, elem: int = 2) -> list[MoeCfg]:
    """The tuner's space: BLOCK_M from the rows per expert (the nearest three powers of two),
    two widths, two K steps, the group order on and off where an expert has several row blocks;
    warps and stages follow the tile (a large accumulator wants 8 warps, a short K step a deeper
    pipeline)."""
    r = rows_per_expert(tokens, top_k, experts)
    near = min(128, max(16, triton.next_power_of_2(r)))
    bms = sorted({max(16, near // 2), near, min(128, near * 2)})
    out: list[MoeCfg] = []
    for bm in bms:
        for width in (128, 256):
            for bk in (64, 128):
                warps = 8 if bm * width >= 128 * 128 else 4
                stages = 4 if bk == 64 else 3
                groups = (1, 16) if r > bm else (1,)
                for g in groups:
                    c = MoeCfg(bm, width, bk, g, warps, stages)
                    if invalid_reason(c, dev, elem) is None and c not in out:
                        out.append(c)
    return out


def _decode(raw: Any, dev: Device, elem: int) -> MoeCfg | None:
    try:
        cfg = MoeCfg(*(int(v) for v in raw))
    except (TypeError, ValueError):
        return None
    return cfg if invalid_reason(cfg, dev, elem) is None else None


def config_for(tokens: int, top_k: int, n: int, h: int, experts: int, dtype: torch.dtype,
               run: Any = None) -> MoeCfg:
    """The config of a MoE layer with ``tokens`` tokens (a size hint), ``experts`` experts of
    intermediate width ``n`` and hidden width ``h``: stored, else tuned now (a GPU, tuning on),
    else the default.  ``run(x, w13, w2, weights, ids, cfg)`` runs the experts with one config
    (``ops.experts``, passed in: ops builds on this module)."""
    bucket = token_bucket(tokens)
    elem = torch.empty((), dtype=dtype).element_size()
    memo = (bucket, top_k, n, h, experts, dtype)
    hit = _CHOICE.get(memo)
    if hit is not None:
        return hit
    t = bucket  # tokens of the measured layer: the bucket's top
    default = default_config(t, top_k, experts)
    if run is None or not generic.can_tune():
        cfg = _stored(bucket, top_k, n, h, experts, dtype, elem) or default
        _CHOICE[memo] = cfg
        return cfg
    dev = device_info()
    state: dict[str, Any] = {}

    def too_big() -> str | None:
        need = (t * h + experts * 3 * n * h + t * top_k * (n + h) + t * h) * elem
        free = torch.cuda.mem_get_info()[0]
        return f"needs ~{need >> 20} MiB of GPU memory, {free >> 20} MiB free" if 2 * need > free else None

    measure = _measure(t, top_k, n, h, experts, dtype, default, run, state)
    try:
        cfg = generic.tune("moe", shape_key(bucket, top_k, n, h, experts, dtype), default,
                           candidates(t, top_k, experts, dev, elem), measure,
                           lambda raw: _decode(raw, dev, elem), dataclasses.astuple,
                           label=f"moe E={experts} N={n} K={h} top{top_k} {bucket_label(bucket)} "
                                 f"{str(dtype).replace('torch.', '')}",
                           skip_reason=too_big)
    finally:
        state.clear()
    _CHOICE[memo] = cfg
    return cfg


def _measure(t, top_k, n, h, experts, dtype, default, run, state):
    """``measure(cfg)`` -> ms of one layer on random weights and softmax-top-k routing of ``t``
    random tokens (checked against the default config's result), on the tuner's thread."""

    def measure(cfg: MoeCfg) -> float:
        def work() -> float:
            if "x" not in state:
                g = torch.Generator(device="cuda").manual_seed(0)
                x = torch.randn(t, h, device="cuda", dtype=dtype, generator=g)
                w13 = torch.randn(experts, 2 * n, h, device="cuda", dtype=dtype, generator=g) / h ** 0.5
                w2 = torch.randn(experts, h, n, device="cuda", dtype=dtype, generator=g) / n ** 0.5
                logits = torch.randn(t, experts, device="cuda", generator=g)
                w, ids = torch.softmax(logits, -1).topk(top_k, -1)
                state.update(x=x, w13=w13, w2=w2, w=w, ids=ids.to(torch.int32))
            s = state
            out = run(s["x"], s["w13"], s["w2"], s["w"], s["ids"], cfg).float()
            if "ref" not in state:
                state["ref"] = run(s["x"], s["w13"], s["w2"], s["w"], s["ids"], default).float()
            ref = state["ref"]
            err = ((out - ref).norm() / ref.norm().clamp_min(1e-6)).item()
            if not err < 2e-2:  # NaN fails too
                raise ValueError(f"result differs from the default config's (rel. err {err:.2e})")
            return generic.graph_time_ms([lambda: run(s["x"], s["w13"], s["w2"], s["w"], s["ids"], cfg)])

        return generic.run_isolated(work)

    return measure


def shape_key(bucket: int, top_k: int, n: int, h: int, experts: int, dtype: torch.dtype) -> str:
    return f"E{experts}_N{n}_K{h}_top{top_k}_{bucket_label(bucket)}_{str(dtype).replace('torch.', '')}"


def _stored(bucket, top_k, n, h, experts, dtype, elem) -> MoeCfg | None:
    raw = cache.lookup("moe", shape_key(bucket, top_k, n, h, experts, dtype))
    return None if raw is None else _decode(raw, device_info(), elem)


def forget_choices() -> None:
    _CHOICE.clear()


cache.on_forget(forget_choices)
