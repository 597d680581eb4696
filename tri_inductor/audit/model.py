"""Audit a model: compile it (on the GPU, or codegen-only without one) and report each graph."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import torch

from . import graph_breaks
from .collect import collect_reports
from .report import GraphReport

Backend = Literal["tri_inductor", "inductor"]


def to_audit_device(module: torch.nn.Module, inputs: Sequence[Any], device: str,
                    dtype: torch.dtype) -> tuple[torch.nn.Module, list[Any]]:
    """Move a CPU float32 model and its inputs to ``device``, floating tensors cast to ``dtype``."""
    # Floating tensors only: Module.to(dtype=) would also cast complex buffers (RoPE's freqs_cis)
    # to a real dtype, dropping their imaginary part.
    module = module.to(device=device)
    module._apply(lambda t: t.to(dtype) if t.is_floating_point() else t)
    out = []
    for x in inputs:
        if isinstance(x, torch.Tensor):
            x = x.to(device=device, dtype=dtype if x.is_floating_point() else x.dtype)
        out.append(x)
    return module, out


def audit_model(module: torch.nn.Module, inputs: Sequence[Any], backend: Backend = "tri_inductor",
                dtype: torch.dtype = torch.bfloat16, options: dict[str, Any] | None = None,
                device: str | None = None) -> tuple[list[GraphReport], Any]:
    """Compile ``module(*inputs)`` with ``backend`` and return (reports, output).

    On a machine with a GPU the model runs there; otherwise every graph is compiled in
    codegen-only mode for a fake sm_90 card (real Triton code and cubins, nothing launched)
    and the output comes from running the graph eagerly on the CPU.
    """
    if backend not in ("tri_inductor", "inductor"):
        raise ValueError(f"backend must be 'tri_inductor' or 'inductor', not {backend!r}")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    module, inputs = to_audit_device(module, inputs, device, dtype)
    torch._dynamo.reset()
    opts = dict(options or {})
    breaks_before = graph_breaks.snapshot()
    with torch.no_grad(), collect_reports() as reports:
        if device == "cuda":
            if backend == "tri_inductor":
                compiled = torch.compile(module, backend="tri_inductor", options=opts)
            else:
                compiled = torch.compile(module, backend="inductor", options=opts or None)
            out = compiled(*inputs)
        else:
            out = torch.compile(module, backend=_codegen_only_backend(backend, opts))(*inputs)
    reasons = graph_breaks.new_reasons(breaks_before)
    if reasons and reports:  # breaks between compiled graphs: those ops ran eagerly (ATen)
        reports.append(graph_breaks.breaks_report(reasons))
    return reports, out


def _codegen_only_backend(backend: Backend, options: dict[str, Any]):
    def compile_codegen_only(gm: torch.fx.GraphModule, example_inputs):
        if backend == "tri_inductor":
            from ..backend import tri_inductor_backend

            return tri_inductor_backend(gm, example_inputs, options={**options, "codegen_only": True})
        import copy

        from torch._inductor.compile_fx import compile_fx

        from ..settings import CODEGEN_ONLY_INDUCTOR_CONFIG
        from ..testing.codegen_only import fake_cuda_inputs, fake_sm90, retarget_to_cuda

        target = copy.deepcopy(gm)
        with fake_sm90():
            retarget_to_cuda(target)
            fake, _ = fake_cuda_inputs(example_inputs)
            compile_fx(target, fake, config_patches={**CODEGEN_ONLY_INDUCTOR_CONFIG, **options})
        return gm.forward

    return compile_codegen_only
