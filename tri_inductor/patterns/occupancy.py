"""How many programs of a compiled Triton kernel one SM holds at once, from the kernel's own
compiled resources (registers, shared memory, warps) and the device's limits: CUDA's occupancy
rule, so that a grid can be sized to whole waves of resident programs on any NVIDIA GPU."""
from __future__ import annotations

import math
from typing import Any

# Registers are allocated per warp in units of 256 (sm_50 .. sm_90); the runtime reserves 1 KB of
# shared memory per resident block (sm_80+). Limits from the device where it reports them.
REG_ALLOC_UNIT = 256
SMEM_RESERVED_PER_BLOCK = 1024
MAX_BLOCKS_PER_SM = 32


def programs_per_sm(n_regs: int, shared: int, num_warps: int, props: Any = None, warp_size: int = 32) -> int:
    """Resident programs per SM of a kernel using ``n_regs`` registers a thread and ``shared``
    bytes of shared memory on ``num_warps`` warps; ``props`` is torch's device properties (None:
    an H100/H200's limits)."""
    regs_sm = int(getattr(props, "regs_per_multiprocessor", 0) or 65536)
    threads_sm = int(getattr(props, "max_threads_per_multi_processor", 0) or 2048)
    smem_sm = int(getattr(props, "shared_memory_per_multiprocessor", 0) or 233472)
    regs_per_warp = math.ceil(max(1, n_regs) * warp_size / REG_ALLOC_UNIT) * REG_ALLOC_UNIT
    by_regs = (regs_sm // regs_per_warp) // num_warps
    by_threads = threads_sm // (warp_size * num_warps)
    by_smem = smem_sm // (shared + SMEM_RESERVED_PER_BLOCK) if shared else MAX_BLOCKS_PER_SM
    return max(1, min(by_regs, by_threads, by_smem, MAX_BLOCKS_PER_SM))


def compiled_programs_per_sm(compiled: Any, device_index: int) -> int | None:
    """:func:`programs_per_sm` of a Triton ``CompiledKernel`` on CUDA device ``device_index``;
    None where it cannot be read (not NVIDIA, a Triton without ``n_regs``)."""
    import torch

    if getattr(torch.version, "hip", None):
        return None  # AMD's VGPR/LDS rule differs: callers keep their default
    try:
        compiled._init_handles()  # loads the module and sets n_regs (Triton 3.6-3.8; lazy until then)
        n_regs = int(compiled.n_regs)
        shared = int(compiled.metadata.shared)
        warps = int(compiled.metadata.num_warps)
    except Exception:  # noqa: BLE001  (a Triton that keeps these elsewhere: the caller's default)
        return None
    return programs_per_sm(n_regs, shared, warps, torch.cuda.get_device_properties(device_index))
