"""A cost model for GEMM configs: a good config for any (M, N, K, dtype) on any device, and the
candidate space the tuner measures.

The model is deliberately small (docs/design/gemm.md): a config's time is the larger of its
memory time and its tensor-core time, plus fixed costs.

* memory: the bytes it moves (weights once per M-tile group, activations once per N tile,
  output, split-K partials written and read back) over the bandwidth its programs can keep in
  flight (Little's law: resident programs x bytes each has in flight against the bytes HBM
  needs in flight to run at full rate);
* tensor cores: the *padded* work (ragged M/N/K tiles do full tiles' work) over the rate the
  tile shape reaches (wgmma needs 64-row tiles; 16/32-row tiles run mma.sync), divided by the
  wave efficiency (the last wave's idle SMs), with the SM count read from the device;
* fixed: a second launch for the split-K reduction, a pipeline fill per program.

Absolute numbers are rough; only the ranking among one shape's candidates matters. On a GPU
the tuner measures the model's best candidates (``tuning.py``); without one the model's first
choice is used as it is.
"""
from __future__ import annotations

import functools

from .configs import PERSISTENT_KINDS, TMA_KINDS, TOP_BUCKET, Cfg, Device, Kind, bucket_m, invalid_reason, smem_bytes

# Rates of an H100/H200-class part (bf16); other chips are scaled by SM count only: the ranking
# of one shape's candidates depends on ratios, not on these absolute values.
PEAK_FLOPS_PER_SM = 990e12 / 132 * 0.8
HBM_BYTES_PER_S = 3.3e12
HBM_BYTES_IN_FLIGHT = 3.3e12 * 0.9e-6     # Little's law: bandwidth x ~0.9 us of latency
LAUNCH_S = 2.5e-6                        # one more kernel in the step (split-K reduction)
PROGRAM_FILL_S = 0.8e-6                  # pipeline fill + epilogue of one program
# Tensor-core efficiency factors (wgmma tiles): the pointer kernel's address arithmetic and
# per-tile prologue, a pipeline too shallow to hide loads; the persistent TMA kernels' fixed
# cost per launch, which short GEMMs feel (fitted when they built device-side descriptors; the
# persistent loop's setup is what is left with host ones: to be refitted).
PTR_EFF = 0.85
SHALLOW_EFF = 0.85
TMA_SETUP_S = 3e-6
STEP_S = 0.02e-6                          # per K step of a program with a 3-stage pipeline


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def auto_split(cfg: Cfg, m: int, n: int, k: int, dev: Device) -> int:
    """Split-K factor of a config whose ``split_k`` is 0: the smallest split whose programs fill
    the last wave of the device's SMs to >= 85%, each split keeping >= 4 K steps to pipeline."""
    if cfg.split_k:
        return cfg.split_k
    tiles = _cdiv(m, cfg.block_m) * _cdiv(n, cfg.block_n)
    max_split = max(1, min(8, k // (4 * cfg.block_k)))
    for split in range(1, max_split + 1):
        work = tiles * split
        if work / (_cdiv(work, dev.sms) * dev.sms) >= 0.85:
            return split
    return max_split


def _mma_efficiency(cfg: Cfg, dev: Device) -> float:
    """Fraction of the tensor-core peak a tile shape reaches (Hopper: wgmma from 64 rows)."""
    if cfg.kernel == Kind.GEMV:
        return 0.06  # CUDA-core FMAs
    area = cfg.block_m * cfg.block_n
    if dev.hopper and cfg.block_m >= 64:
        eff = 0.92 if area >= 128 * 256 else 0.85 if area >= 128 * 128 else 0.7 if area >= 64 * 128 else 0.5
        if cfg.kernel == Kind.PTR:
            eff *= PTR_EFF
        if cfg.num_stages < 3:
            eff *= SHALLOW_EFF
        return eff
    return 0.3 if cfg.block_m >= 32 else 0.2  # mma.sync tiles


def _resident(cfg: Cfg, dev: Device, elem: int) -> int:
    """Programs one SM holds at once (shared memory and warp slots)."""
    if cfg.kernel in PERSISTENT_KINDS:
        return 1
    per_warps = max(1, 64 // cfg.num_warps)
    if cfg.kernel == Kind.GEMV:
        regs = cfg.block_n * cfg.block_k * 2 // (32 * cfg.num_warps)  # fp32 accumulators a thread
        return max(1, min(per_warps, 16, 65536 // max(1, (regs + 40) * 32 * cfg.num_warps)))
    return max(1, min(per_warps, dev.smem // max(1, smem_bytes(cfg, elem))))


def estimate_s(cfg: Cfg, m: int, n: int, k: int, dev: Device, elem: int = 2, fused: bool = False) -> float:
    """Modelled seconds of one launch of ``cfg`` on an (m x k) @ (k x n) GEMM. ``fused``: the
    gate_up form (n = both halves; the output is half as wide)."""
    split = 1 if cfg.kernel in TMA_KINDS else auto_split(cfg, m, n, k, dev)
    bm = 1 if cfg.kernel == Kind.GEMV else cfg.block_m
    m_tiles = _cdiv(m, bm) if cfg.kernel != Kind.GEMV else 1
    n_tiles = _cdiv(n, cfg.block_n)
    tiles = m_tiles * n_tiles
    programs = tiles * split
    k_steps = _cdiv(_cdiv(k, split), cfg.block_k)
    # memory: the weight once per group of M tiles that share it in L2, the activations once per
    # N tile (mostly L2 hits: a tenth), the output, split-K partials written + read
    w_reads = _cdiv(m_tiles, max(1, cfg.group_m)) if cfg.kernel != Kind.GEMV else m
    k_pad = k_steps * cfg.block_k * split
    bytes_ = (n * min(k_pad, k + cfg.block_k) * elem * max(1, min(w_reads, 4))
              + m * k * elem * max(1, n_tiles // 10) + m * (n // 2 if fused else n) * elem)
    if split > 1:
        bytes_ += 2 * split * m * n * 4
    resident = min(programs, _resident(cfg, dev, elem) * dev.sms)
    if cfg.kernel == Kind.GEMV:
        in_flight = cfg.block_n * cfg.block_k * elem * (2 if fused else 1)
    else:
        in_flight = cfg.block_k * (cfg.block_n + cfg.block_m) * elem * max(1, cfg.num_stages - 1)
    # an SM with no program draws nothing: decode must cover every SM, whatever N and K are
    bw = (HBM_BYTES_PER_S * dev.sms / 132 * min(1.0, resident * in_flight / HBM_BYTES_IN_FLIGHT)
          * min(1.0, programs / dev.sms))
    # programs spread unevenly over SMs: the busiest SM's share over the mean (bounded, since
    # an SM with less work lets the others draw more bandwidth)
    per_sm = programs / dev.sms
    imbalance = 1.0 if programs >= 8 * dev.sms else min(1.25, _cdiv(programs, dev.sms) / per_sm) if per_sm >= 1 else 1.0
    t_mem = bytes_ / bw * (1 + (imbalance - 1) * 0.5)
    # tensor cores: padded work over the tile's rate, wave quantised
    padded = 2 * m_tiles * bm * n_tiles * cfg.block_n * k_steps * cfg.block_k * split
    if cfg.kernel == Kind.GEMV:
        padded = 2 * m * n_tiles * cfg.block_n * k_steps * cfg.block_k * split
    slots = dev.sms * (1 if cfg.kernel in PERSISTENT_KINDS else min(_resident(cfg, dev, elem), 2))
    waves = _cdiv(programs, slots)
    wave_eff = programs / (waves * slots) if programs >= slots else programs / slots
    t_mma = padded / (PEAK_FLOPS_PER_SM * dev.sms * _mma_efficiency(cfg, dev) * max(wave_eff, 1e-3))
    # a program's pipeline fill overlaps other resident programs' loads after the first wave; each
    # K step waits on what its pipeline has not hidden: less the more stages are in flight (where
    # the tensor cores bound the time, stage counts otherwise tie: measured, the deeper wins, e.g.
    # 2048 x 2560 x 9728 on 128x128x64 TMA tiles, 5 stages 163.6 us, 4 stages 174.4 us, H100)
    exposed = STEP_S * 2 / max(1, cfg.num_stages - 1) if cfg.kernel != Kind.GEMV else STEP_S
    fixed = (LAUNCH_S if split > 1 else 0.0) + PROGRAM_FILL_S * min(waves, 2) + exposed * k_steps
    if cfg.kernel in PERSISTENT_KINDS:
        fixed += TMA_SETUP_S
    return max(t_mem, t_mma) + fixed


# ------------------------------------------------------------------------ candidate space


def _ok(c: Cfg, dev: Device, elem: int) -> bool:
    return invalid_reason(c, dev, elem) is None


def candidates(m: int, n: int, k: int, dev: Device, elem: int = 2) -> list[Cfg]:
    """Every config worth considering for M rows (a bucket's representative M): valid on
    ``dev``, correct for every M (only speed differs)."""
    out: list[Cfg] = []
    if m <= 1:
        for bn in (2, 4, 8, 16, 32):
            for bk in (128, 256, 512, 1024, 2048):
                if not 512 <= bn * bk <= 16384 or bk > max(128, 2 * k):
                    continue
                warps = (4,) if bn * bk <= 4096 else (4, 8)
                splits = [1] + [s for s in (2, 4, 8) if _cdiv(n, bn) * s <= 4 * dev.sms and k >= s * bk]
                out += [Cfg(1, bn, bk, 1, s, w, 1, Kind.GEMV) for w in warps for s in splits]
        out += [Cfg(16, bn, bk, 1, 0, 4, st) for bn, bk, st in ((32, 256, 4), (64, 256, 4), (64, 128, 6))]
    elif m <= 64:
        bm = max(16, 1 << (m - 1).bit_length()) if m <= 64 else 64
        for bn in (32, 64, 128):
            for bk in (64, 128, 256):
                for st in (3, 4, 6):
                    for s in (0, 1, 2, 3, 4):
                        out.append(Cfg(bm, bn, bk, 1, s, 4, st))
        if m > 16 and dev.hopper:
            out += [Cfg(64, bn, bk, 1, 1, 4, st, kind) for bn, bk, st in
                    ((32, 128, 6), (64, 128, 5), (64, 64, 8), (128, 64, 6), (64, 256, 3))
                    for kind in (Kind.TMA, Kind.TMA_TILE)]
    else:
        for bm in (64, 128) if m <= 512 else (128,):
            for bn in (64, 128, 256):
                for bk in (64, 128):
                    for st in (2, 3, 4, 5):
                        for w in (4, 8):
                            if bm * bn >= 128 * 256 and w == 4:
                                continue
                            out.append(Cfg(bm, bn, bk, 8, 1, w, st))
                            if dev.hopper:
                                out += [Cfg(bm, bn, bk, 8, 1, w, st, kind) for kind in TMA_KINDS]
        if m <= 256:
            # narrow tiles with deep pipelines: a few hundred rows over narrow N need many
            # programs (group 1: the weight panel of a 32/64-wide column streams once anyway)
            out += [Cfg(64, bn, bk, g, s, 4, st) for bn in (32, 64) for bk in (128, 256) for g in (1, 8)
                    for s in (0, 1) for st in (4, 5, 6)]
        if m <= 512:
            # split-K where the M x N tiles alone leave SMs idle (a few hundred rows, narrow N)
            out += [Cfg(bm, bn, bk, g, s, w, st) for bm, bn, bk, g, w, st in
                    ((64, 64, 128, 2, 4, 4), (64, 128, 64, 2, 4, 4), (64, 64, 256, 2, 4, 3),
                     (128, 128, 64, 8, 8, 4), (128, 64, 64, 8, 4, 4), (64, 128, 128, 8, 4, 3))
                    for s in (0, 2, 3, 4)]
    # small shared memory (consumer and older parts): tiles that fit anywhere, always there
    out += [Cfg(min(64, max(16, 1 << (max(m, 1) - 1).bit_length())), 64, 32, 4, 0, 4, 2)]
    seen: set[Cfg] = set()
    uniq = []
    for c in out:
        if c not in seen and _ok(c, dev, elem):
            seen.add(c)
            uniq.append(c)
    return uniq


# The fused gate_up form on the pointer kernel: each program's tile is half gate, half up, and
# halves under 32 columns run slower fused than the same tile plain, while 32+32 match it
# (measured: docs/design/gemm.md). GEMV and TMA configs are not split that way.
FUSED_MIN_BLOCK_N = 64


def fused_ok(c: Cfg) -> bool:
    """A config worth running the fused gate_up form with."""
    return c.kernel != Kind.PTR or c.block_n >= FUSED_MIN_BLOCK_N


def for_fused(cands: list[Cfg]) -> list[Cfg]:
    """``cands`` the fused form runs well (all of them where none would)."""
    return [c for c in cands if fused_ok(c)] or cands


def ranked(m: int, n: int, k: int, dev: Device, elem: int = 2, fused: bool = False) -> list[Cfg]:
    """The candidate space, best modelled first (ties: fewer programs, then the listing order);
    ``fused``: the gate_up form's space and output."""
    cands = candidates(m, n, k, dev, elem)
    if fused:
        cands = for_fused(cands)
    return sorted(cands, key=lambda c: estimate_s(c, m, n, k, dev, elem, fused))


def diverse(cands: list[Cfg], m: int, n: int, k: int, dev: Device, count: int, elem: int = 2) -> list[Cfg]:
    """``count`` candidates for measurement, best modelled first, but at most one per tile family
    (kernel kind, tile shape, split): the model ranks within a family well and across families
    poorly, so the measured set spans the families instead of ten stage counts of one tile."""
    by_model = sorted(cands, key=lambda c: estimate_s(c, m, n, k, dev, elem))
    picked: list[Cfg] = []
    families: set[tuple] = set()
    for c in by_model:
        fam = (c.kernel, c.block_m, c.block_n, c.block_k, auto_split(c, m, n, k, dev))
        if fam not in families:
            families.add(fam)
            picked.append(c)
        if len(picked) == count:
            break
    return picked


@functools.lru_cache(maxsize=4096)
def model_config(bucket: int, n: int, k: int, dev: Device, elem: int = 2, fused: bool = False) -> Cfg:
    """The cost model's choice for an M bucket (its representative M); ``fused``: the gate_up form.
    Memoized: compiles ask it for every bucket of every projection each time they trace one
    (``model_config.cache_clear()`` after changing the model's constants)."""
    m = bucket_m(bucket)
    return ranked(m, n, k, dev, elem, fused)[0]


FP32_CONFIGS: dict[int, Cfg] = {  # fp32 (tf32) inputs: half the operand bytes fit per stage
    16: Cfg(16, 64, 64, 1, 0, 4, 3),
    32: Cfg(32, 64, 64, 1, 0, 4, 3),
    64: Cfg(64, 64, 64, 1, 0, 4, 3),
    TOP_BUCKET: Cfg(128, 128, 32, 8, 1, 8, 3),
}


def fp32_config(bucket: int) -> Cfg:
    return next(c for b, c in sorted(FP32_CONFIGS.items()) if bucket <= b)


__all__ = ["FUSED_MIN_BLOCK_N", "auto_split", "candidates", "diverse", "estimate_s", "for_fused", "fp32_config",
           "fused_ok", "model_config", "ranked"]
