"""Inductor settings under which every kernel Inductor writes itself is a Triton kernel."""
from __future__ import annotations

from typing import Any

from .options import TriInductorOptions


def triton_only_inductor_config(options: TriInductorOptions) -> dict[str, Any]:
    """Inductor config overrides that leave no cuBLAS/ATen GEMM and no C++ kernel.

    What these cannot reach (ops Inductor always leaves to ATen: SDPA, topk, sort, ...) is the
    job of our FX patterns, and what is left is named by the auditor.
    """
    cfg: dict[str, Any] = {
        # Only Triton may implement a GEMM template; with no valid Triton choice Inductor raises
        # rather than silently calling cuBLAS.
        "max_autotune_gemm_backends": "TRITON",
        "autotune_fallback_to_aten": False,
        # Inductor's own C++ wrapper and CPU kernels are not Triton.
        "cpp_wrapper": False,
    }
    if options.gemm == "native":
        # mm/addmm/bmm lowered to tl.dot inside ordinary Inductor kernels: nothing to benchmark,
        # works for dynamic shapes (templates under vLLM only apply to fixed compile sizes).
        cfg["triton.native_matmul"] = True
        cfg["max_autotune_gemm"] = False
    else:
        cfg["max_autotune_gemm"] = True
    if options.codegen_only:
        # Nothing can be benchmarked without a GPU: take the first valid template choice.
        cfg["deterministic"] = True
    return cfg
