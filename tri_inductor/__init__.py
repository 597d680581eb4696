"""tri_inductor: a torch.compile backend that runs transformers on Triton kernels only.

    torch.compile(model, backend="tri_inductor")                      # registered by entry point
    torch.compile(model, backend="tri_inductor", options={"strict": True})
    tri_inductor.last_audit()                                         # what each graph launches

Options (see ``TriInductorOptions``): ``strict``, ``patterns``, ``audit``, ``verbose``, ``gemm``,
``codegen_only``; any other key is an Inductor config override.
"""
from __future__ import annotations

__version__ = "0.1.0"

from .audit import GraphReport, KernelEntry, TritonOnlyViolation, format_reports
from .backend import last_audit, tri_inductor_backend
from .options import FAMILIES, OptionsError, TriInductorOptions

__all__ = ["FAMILIES", "GraphReport", "KernelEntry", "OptionsError", "TriInductorOptions", "TritonOnlyViolation",
           "format_reports", "last_audit", "tri_inductor_backend", "__version__"]
