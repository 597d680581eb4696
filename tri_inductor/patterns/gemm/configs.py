"""GEMM tile configs: the ``Cfg`` record, the kernel kinds, M buckets, the device a config is
chosen for, validation, and the shipped per-shape table (a refinement of the cost model).

Nothing here launches or benchmarks; every other module of the package builds on this one.
"""
from __future__ import annotations

import dataclasses
import enum
import functools
import hashlib
import json
import logging
from typing import NamedTuple

from ... import envs

log = logging.getLogger("tri_inductor.gemm")


class Kind(enum.IntEnum):
    """Which kernel runs a config's tiles (``Cfg.kernel``; the numbers are stored in caches)."""
    PTR = 0      # mm_kernel: pointer loads, split-K when the tiles cannot fill the SMs
    TMA = 1      # mm_tma_kernel: persistent, TMA descriptors (Hopper+)
    TMA_WS = 2   # the same, warp-specialized
    GEMV = 4     # mm_gemv_kernel: no tensor cores, narrow weight panels (batch-1 decode)
    TMA_TILE = 5  # mm_tma_kernel: one program per tile (mid M: several resident per SM)
    # (3 was a stream-K kernel, removed: docs/design/gemm.md)


TMA_KINDS = (Kind.TMA, Kind.TMA_WS, Kind.TMA_TILE)
PERSISTENT_KINDS = (Kind.TMA, Kind.TMA_WS)


class Cfg(NamedTuple):
    block_m: int
    block_n: int
    block_k: int
    group_m: int
    split_k: int  # 0: chosen from the tile count at launch, >= 1: fixed
    num_warps: int
    num_stages: int
    kernel: int = Kind.PTR

    def short(self) -> str:
        return (f"{Kind(self.kernel).name.lower()} {self.block_m}x{self.block_n}x{self.block_k} "
                f"g{self.group_m} s{self.split_k} w{self.num_warps} st{self.num_stages}")


# Upper bounds of the M buckets; the last bucket is everything above.
BUCKETS = (1, 16, 32, 64, 128, 256, 512, 1024, 2048)
TOP_BUCKET = 4096  # the key of "M > BUCKETS[-1]"


def bucket_of(m: int) -> int:
    for b in BUCKETS:
        if m <= b:
            return b
    return TOP_BUCKET


def representative_m(hi: int | None) -> int:
    """An M in the bucket whose upper bound is ``hi`` (None: the top bucket, M > BUCKETS[-1])."""
    return hi if hi is not None else 2 * BUCKETS[-1]


def bucket_m(bucket: int) -> int:
    """The representative M of a bucket key (:func:`bucket_of`'s value; ``TOP_BUCKET``: M > BUCKETS[-1])."""
    return representative_m(None if bucket > BUCKETS[-1] else bucket)


# ----------------------------------------------------------------------------------- device


@dataclasses.dataclass(frozen=True)
class Device:
    """What config choice needs to know of a GPU (read from the device, never assumed)."""
    name: str
    sms: int
    smem: int            # shared memory one program may use (opt-in maximum), bytes
    capability: tuple[int, int]
    l2: int              # bytes
    vendor: str = "nvidia"  # "amd" on ROCm (whose gfx9 parts also report capability 9.x)

    @property
    def hopper(self) -> bool:
        """TMA descriptors and wgmma: NVIDIA sm_90+."""
        return self.vendor == "nvidia" and self.capability[0] >= 9


# Where no device can be asked (CPU interpreter, tests): an H100/H200, what codegen-only fakes.
DEFAULT_DEVICE = Device("H100 (assumed)", 132, 232448, (9, 0), 50 * 2**20)


@functools.cache
def _device_at(index: int) -> Device:
    import torch

    p = torch.cuda.get_device_properties(index)
    smem = getattr(p, "shared_memory_per_block_optin", 0) or DEFAULT_DEVICE.smem
    return Device(p.name, int(p.multi_processor_count), int(smem), (int(p.major), int(p.minor)),
                  int(getattr(p, "L2_cache_size", 0) or DEFAULT_DEVICE.l2),
                  "amd" if getattr(torch.version, "hip", None) else "nvidia")


def device_info(device=None) -> Device:
    """The CUDA device's SM count, shared memory and capability (the current device by default,
    and for ``meta`` tensors: compile_ahead's stand-ins for the current device's);
    ``DEFAULT_DEVICE`` where there is none (CPU tensors, no CUDA)."""
    import torch

    if device is not None and getattr(device, "type", "cuda") not in ("cuda", "meta"):
        return DEFAULT_DEVICE
    if getattr(device, "type", None) == "meta":
        device = None
    try:
        if not torch.cuda.is_available():
            return DEFAULT_DEVICE
        index = device.index if device is not None and device.index is not None else torch.cuda.current_device()
        return _device_at(index)
    except Exception:  # noqa: BLE001  (no driver, fake device without the attributes)
        return DEFAULT_DEVICE


# ------------------------------------------------------------------------------- validation

_WARPS = (1, 2, 4, 8, 16)


def _pow2(x: int) -> bool:
    return x > 0 and x & (x - 1) == 0


def smem_bytes(cfg: Cfg, elem: int = 2) -> int:
    """Shared memory a config needs, counted conservatively: every pipeline stage's operand
    tiles, plus the TMA kernels' output tile. The GEMV kernel uses none. (The fused gate_up
    form splits the same tile width between gate and up: the same bytes.)"""
    if cfg.kernel == Kind.GEMV:
        return 0
    operands = (cfg.block_m * cfg.block_k + cfg.block_k * cfg.block_n) * elem * cfg.num_stages
    epilogue = cfg.block_m * cfg.block_n * elem if cfg.kernel in TMA_KINDS else 0
    return operands + epilogue


def invalid_reason(cfg: Cfg, dev: Device = DEFAULT_DEVICE, elem: int = 2) -> str | None:
    """Why ``cfg`` cannot run (None: it can): the kernels' constraints, checked before a stored
    or shipped config is used, so a bad entry costs a warning, never a crash or a slow compile."""
    try:
        kind = Kind(cfg.kernel)
    except ValueError:
        return f"unknown kernel kind {cfg.kernel}"
    for name in ("block_m", "block_n", "block_k"):
        v = getattr(cfg, name)
        if not _pow2(v) or v > 4096:
            return f"{name}={v} is not a power of two <= 4096"
    if kind != Kind.GEMV and (cfg.block_m < 16 or cfg.block_n < 16 or cfg.block_k < 16):
        return "tensor-core tiles need block_m, block_n, block_k >= 16"
    if kind != Kind.GEMV and cfg.block_m * cfg.block_n > 256 * 256:
        return "tile larger than 256 x 256"
    if kind == Kind.GEMV and cfg.block_n * cfg.block_k > 64 * 1024:
        return "GEMV panel larger than 64K elements"
    if cfg.num_warps not in _WARPS:
        return f"num_warps={cfg.num_warps} not in {_WARPS}"
    if not 1 <= cfg.num_stages <= 8:
        return f"num_stages={cfg.num_stages} not in 1..8"
    if not 0 <= cfg.split_k <= 16:
        return f"split_k={cfg.split_k} not in 0..16"
    if not 1 <= cfg.group_m <= 64:
        return f"group_m={cfg.group_m} not in 1..64"
    if kind in TMA_KINDS and not dev.hopper:
        return "TMA kernels need sm_90+"
    if kind == Kind.TMA_WS and cfg.num_warps < 8 and cfg.block_n > 128:
        # Triton 3.6 splits the 256-wide tile between two consumer groups and its compiler then
        # asserts (MMAHelpers.h "Instruction shape is too large for the layout"), an abort it
        # recovers from in-process: never hand it such a tile (tests/test_gemm_compile.py).
        return "warp-specialized tiles wider than 128 columns need 8 warps"
    if kind == Kind.TMA_WS and cfg.num_warps < 8 and cfg.block_m > 64:
        # Triton 3.6's warp specialization fails on these with host descriptors ("tensor
        # descriptor block and tensor types must match" on the C store): compile error.
        return "warp-specialized tiles taller than 64 rows need 8 warps"
    if smem_bytes(cfg, elem) > dev.smem:
        return f"needs {smem_bytes(cfg, elem)} B of shared memory, the device has {dev.smem}"
    return None


def parse_cfg(raw) -> Cfg | None:
    """A Cfg from stored JSON (a list of 7 or 8 ints), or None if it is not one."""
    if not isinstance(raw, (list, tuple)) or len(raw) not in (7, 8):
        return None
    if not all(isinstance(x, int) and not isinstance(x, bool) for x in raw):
        return None
    cfg = Cfg(*raw)
    return cfg if invalid_reason(cfg) is None else None


# ---------------------------------------------------------------------- the shipped table

TABLE_ENV = "TRI_INDUCTOR_LINEAR_TUNED"  # default: envs.SHIPPED_LINEAR_TUNED (tuned_sm90.json here)


def table_path() -> str:
    return str(envs.linear_tuned())


@functools.cache
def _load_table(path: str) -> tuple[dict[tuple[int, int, int], Cfg], str]:
    """({(N, K, bucket): Cfg}, sha256 of the file) from ``{"configs": {"N,K,bucket": [...]}}``;
    entries that are not valid configs are left out with a warning."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        if path != str(envs.SHIPPED_LINEAR_TUNED):
            log.warning("tri_inductor: %s=%s does not exist; using the cost model alone", TABLE_ENV, path)
        return {}, "none"
    digest = hashlib.sha256(raw).hexdigest()
    try:
        data = json.loads(raw)
        entries = data.get("configs", data) if isinstance(data, dict) else {}
    except (ValueError, RecursionError) as e:
        log.warning("tri_inductor: GEMM table %s is not JSON (%s); using the cost model alone", path, e)
        return {}, digest
    table: dict[tuple[int, int, int], Cfg] = {}
    bad = 0
    for key, val in (entries.items() if isinstance(entries, dict) else ()):
        try:
            n, k, b = (int(x) for x in str(key).split(","))
        except ValueError:
            bad += 1
            continue
        cfg = parse_cfg(val)
        if cfg is None or b not in (*BUCKETS, TOP_BUCKET):
            bad += 1
            continue
        table[(n, k, b)] = cfg
    if bad:
        log.warning("tri_inductor: GEMM table %s: %d entries are not valid configs, left out", path, bad)
    return table, digest


def shipped(n: int, k: int, bucket: int, dev: Device) -> Cfg | None:
    """The shipped table's entry for this shape, on the chip family it was tuned on (sm_90)."""
    if dev.capability != (9, 0) or dev.vendor != "nvidia":
        return None
    return _load_table(table_path())[0].get((n, k, bucket))


def table_entries() -> dict[tuple[int, int, int], Cfg]:
    return dict(_load_table(table_path())[0])


def table_digest() -> str:
    """Part of the compile key: a changed table is never served stale compiled graphs."""
    return _load_table(table_path())[1]
