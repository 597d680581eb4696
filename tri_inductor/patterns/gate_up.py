"""An MLP's gate_up projection fused with its gated activation: one GEMM for
``act(x @ w[:I].T) * (x @ w[I:].T)`` (``gemm.ops.mm_act_mul``).

Unfused, the projection writes a [T, 2I] output that the activation kernel then reads back:
2 x T x 2I x 2 bytes of traffic and one more launch per layer (T = 4096 tokens of Llama-3-8B:
~0.9 GB, ~0.2 ms a layer on an H200). The fused kernel accumulates each gate tile and the up
tile I columns further on from the same A tiles (``gemm/``) and writes only the product.
Neither vLLM's CUDA path (cuBLAS + its silu_and_mul kernel) nor Inductor (an epilogue sees one
tile of the mm, never the column I away) does this.

Runs before the activation and linear families. It takes ``mm -> gated activation`` only where
the mm's output feeds nothing else; anything it leaves, those families rewrite on their own.
The kernels are linear's, so the audit counts a fused projection as a ``linear`` kernel.
"""
from __future__ import annotations

import torch

from . import matcher_utils as M
from .gemm.ops import mm_act_mul, reference_mm_act_mul  # noqa: F401  (the op, its reference)
from .linear import _val, mm_operands_ok

# The activation forms the activation family matches, each fed by an mm: (search form, act).
_FORMS = ((M.silu_slices, "silu"), (M.silu_chunk, "silu"), (M.silu_chunk_gate_first, "silu"),
          (M.gelu_slices, "gelu"), (M.gelu_tanh_slices, "gelu_tanh"))


def _search(form):
    def search(x, w):
        return form(torch.mm(x, w))
    return search


def _replacement(act: str):
    def replacement(x, w):
        return mm_act_mul(x, w, act)
    return replacement


def _check(match) -> bool:
    x, w = match.kwargs["x"], match.kwargs["w"]
    return mm_operands_ok(x, w) and _val(w).shape[1] % 2 == 0


def register_patterns(pm_pass) -> None:
    from .matcher_utils import register_replacement

    from ._trace import trace_replacement

    for dt in (torch.bfloat16, torch.float32):
        x, w = torch.empty(8, 64, dtype=dt), torch.empty(64, 256, dtype=dt)
        for form, act in _FORMS:
            register_replacement(_search(form), _replacement(act), [x, w], trace_replacement, pm_pass,
                                 extra_check=_check, skip_duplicates=True)
