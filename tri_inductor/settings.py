"""Inductor settings under which every kernel Inductor writes itself is a Triton kernel."""
from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from .options import OptionsError, TriInductorOptions

log = logging.getLogger("tri_inductor")

# Inductor overrides that would let a non-Triton kernel back in: warned about (error if strict).
UNSAFE_OVERRIDES = {
    "max_autotune_gemm_backends": lambda v: set(str(v).upper().split(",")) != {"TRITON"},
    "autotune_fallback_to_aten": bool,
    "cpp_wrapper": bool,
}


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
        cfg.update(CODEGEN_ONLY_INDUCTOR_CONFIG)
    return cfg


# Nothing can be benchmarked without a GPU: take the first valid template choice, and no
# padded-vs-unpadded GEMM benchmark (pad_mm; torch 2.14 runs it in deterministic mode too, under
# its autoheuristic). Any backend compiled in codegen-only mode (audit.model's stock one too).
CODEGEN_ONLY_INDUCTOR_CONFIG: dict[str, Any] = {"deterministic": True, "shape_padding": False}


def apply_overrides(cfg: dict[str, Any], overrides: Mapping[str, Any], strict: bool,
                    what: str = "Inductor option") -> dict[str, Any]:
    """``cfg`` updated with the user's ``overrides``; one that lets non-Triton kernels in is
    warned about (the auditor then reports what it lets in), or refused in strict mode."""
    for key, value in overrides.items():
        unsafe = UNSAFE_OVERRIDES.get(key)
        if unsafe is not None and unsafe(value) and cfg.get(key) != value:
            msg = (f"{what} {key}={value!r} lets non-Triton kernels into the graph "
                   f"(tri_inductor sets {key}={cfg.get(key)!r})")
            if strict:
                raise OptionsError(msg + "; remove it or turn strict off")
            log.warning("%s; the auditor will report what it lets in", msg)
        cfg[key] = value
    return cfg
