"""Runtime truth on a GPU: the CUDA kernels a callable actually launched (torch.profiler)."""
from __future__ import annotations

import dataclasses
import functools
import re
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any

_CUBLAS = re.compile(r"^(nvjet|sm\d+_xmma|cutlass|cublas|gemm|gemv|.*cublasLt|ampere_|sm80_|sm90_|splitKreduce)")
_ATEN = re.compile(r"(at::native|at_cuda_detail|void at::|c10::|cub::|thrust::)")
_FLASH = re.compile(r"(flash|fmha|cudnn|xformers)", re.I)
# torch >= 2.13 with nvidia-cutlass-dsl: torch._native's CuTeDSL kernels for eager topk,
# _fused_rms_norm, scatter_add, sum (CuTe DSL names its kernels "kernel_cutlass_<fn>...").
_CUTEDSL = re.compile(r"(^kernel_cutlass_|cute_?dsl|^cute_|quack)", re.I)
# Collectives under tensor parallelism: NCCL's kernels (ncclDevKernel_AllReduce_Sum_bf16_RING_LL,
# ncclKernel_...) and torch's symmetric-memory all-reduce kernels. Communication, not compute.
_COMMUNICATION = re.compile(r"(^nccl(Dev)?Kernel_|^ncclDevKernel|(one|two)_shot_all_reduce|multimem_all_reduce|"
                            r"multimem_all_gather)", re.I)
COMMUNICATION = "communication"


def counts_as_non_triton(triton: bool, library: str) -> bool:
    """Whether a profiled kernel breaks "Triton-only": compute that is not Triton. Communication
    kernels (NCCL collectives) are allowed and listed apart."""
    return not triton and library != COMMUNICATION


@dataclasses.dataclass
class RuntimeKernel:
    name: str
    count: int
    cuda_time_us: float
    triton: bool
    library: str
    """``triton`` (a kernel we compiled), ``cublas``, ``aten``, ``flash/cudnn``, ``cutedsl`` (torch's
    native CuTeDSL kernels, torch >= 2.13), ``communication`` (NCCL collectives: allowed, not
    compute), ``other``."""


_JIT_DEF = re.compile(r"@(?:triton\.)?jit\b[^\n]*\n(?:\s*@[^\n]*\n)*\s*def\s+(\w+)\s*\(")


@functools.cache
def _source_jit_functions(pkg: str) -> tuple[tuple[str, tuple[str, ...]], ...]:
    """``(name, path parts)`` of every ``@triton.jit`` function defined in the installed sources
    of ``pkg`` (read once per process: the names and the families below share the scan)."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.find_spec(pkg)
    if spec is None or not spec.submodule_search_locations:
        return ()
    out: list[tuple[str, tuple[str, ...]]] = []
    for root in spec.submodule_search_locations:
        for path in Path(root).rglob("*.py"):
            try:
                text = path.read_text(errors="ignore")
            except OSError:
                continue
            if "jit" in text:
                out.extend((name, path.parts) for name in _JIT_DEF.findall(text))
    return tuple(out)


@functools.cache
def source_triton_kernel_names(packages: tuple[str, ...] = ("vllm", "tri_inductor")) -> frozenset[str]:
    """Names of the ``@triton.jit`` functions defined in the installed sources of ``packages``.

    The profiler shows a Triton kernel by its Python function name; collecting the names from the
    sources (rather than from live objects) also covers kernels defined in modules loaded by
    another process, e.g. vLLM's engine core.
    """
    return frozenset(name for pkg in packages for name, _ in _source_jit_functions(pkg))


# vLLM's own Triton kernels by the folder (or file) that defines them (its MoE experts, its attention).
_VLLM_FAMILY_DIRS = (("fused_moe", "moe"), ("attention", "attention"))


@functools.cache
def _kernel_families() -> dict[str, str]:
    from ..patterns import our_kernel_names

    fams: dict[str, str] = {}
    for name, parts in _source_jit_functions("vllm"):
        family = next((f for d, f in _VLLM_FAMILY_DIRS if d in parts or d in parts[-1]), None)
        if family:
            fams[name] = family
    fams.update(our_kernel_names())  # ours win a shared name
    return fams


def kernel_family(name: str) -> str | None:
    """The family of a Triton kernel by its profiler name: ours by pattern family (``moe``,
    ``linear``, ``attention`` ...), vLLM's by the folder that defines it (its fused_moe experts
    count as ``moe``), Inductor's generated ones ``inductor``; None for anything else."""
    if name.startswith("triton_"):
        return "inductor"
    return _kernel_families().get(name)


# Memory copies and fills the driver does, not kernels a library launched: eager ones appear as
# "Memcpy DtoD" / "Memset" activities; inside a CUDA graph a memcpy node runs as the driver's
# own kernel ("memcpy32_post", seen for a D2D copy_ in vLLM's FusedMoE decode graph, H200).
_MEMORY_OP = re.compile(r"^(Memcpy|Memset)|^mem(cpy|set)\d+_\w+$")


def is_memory_op(name: str) -> bool:
    """A copy or fill the driver performs (eager copy engine or CUDA-graph memcpy/memset node)."""
    return bool(_MEMORY_OP.search(name))


def classify_kernel(name: str, triton_names: set[str]) -> tuple[bool, str]:
    """(is Triton, library).  ``communication`` comes back with False: it is not Triton, and
    :func:`counts_as_non_triton` is what tells whether a kernel breaks the guarantee."""
    if _COMMUNICATION.search(name):
        return False, COMMUNICATION
    if _CUTEDSL.search(name):  # before the Triton names: a CuTeDSL function may share a Python name
        return False, "cutedsl"
    if name in triton_names or name.startswith("triton_"):  # ours/vLLM's by name; Inductor's by prefix
        return True, "triton"
    if _CUBLAS.search(name):
        return False, "cublas"
    if _FLASH.search(name):
        return False, "flash/cudnn"
    if _ATEN.search(name):
        return False, "aten"
    return False, "other"


def profile_kernels(fn: Callable[[], Any], triton_names: Iterable[str], warmup: int = 1) -> list[RuntimeKernel]:
    """Run ``fn`` under torch.profiler and class each CUDA kernel launch."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    names = set(triton_names)
    counts: Counter[str] = Counter()
    times: Counter[str] = Counter()
    for ev in prof.events():
        if getattr(ev, "device_type", None) is None or str(ev.device_type) != "DeviceType.CUDA":
            continue
        if is_memory_op(ev.name):
            continue
        counts[ev.name] += 1
        t = getattr(ev, "device_time", None)
        times[ev.name] += t if t is not None else ev.cuda_time
    out = []
    for name, n in counts.most_common():
        ok, lib = classify_kernel(name, names)
        out.append(RuntimeKernel(name=name, count=n, cuda_time_us=float(times[name]), triton=ok, library=lib))
    return out


def format_runtime(kernels: list[RuntimeKernel]) -> str:
    rows = [("kernel", "launches", "class")] + [(k.name[:70], str(k.count), k.library) for k in kernels]
    w = [max(len(r[i]) for r in rows) for i in range(3)]
    lines = ["  ".join(c.ljust(x) for c, x in zip(r, w)) for r in rows]
    bad = [k for k in kernels if counts_as_non_triton(k.triton, k.library)]
    comm = sum(k.library == COMMUNICATION for k in kernels)
    lines.append(f"{len(kernels)} distinct CUDA kernels, {len(bad)} not Triton"
                 + (f" ({comm} communication kernels, allowed)" if comm else "")
                 + (": " + ", ".join(k.name[:40] for k in bad) if bad else ""))
    return "\n".join(lines)
