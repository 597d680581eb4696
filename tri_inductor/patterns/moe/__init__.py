"""Mixture-of-experts family: routing, alignment, expert GEMMs and reduction in Triton.

| module        | what                                                                      |
|---------------|---------------------------------------------------------------------------|
| routing.py    | router top-k: softmax/sigmoid scores, bias, grouped top-k, renormalise    |
| align.py      | token -> expert alignment (vLLM's moe_align_block_size)                   |
| experts.py    | fused-MoE grouped GEMM (gated act epilogue), torch._grouped_mm, reductions |
| tuning.py     | expert GEMM tile configs: default by rows per expert, tuned on a GPU      |
| ops.py        | tri_inductor::moe_*, grouped_mm, topk_of_scores, sort_expert_ids, int_histc, index_add_rows |
| hf.py         | Dynamo-graph rewrite of the HF MoE forms (topk, sort, histc, _grouped_mm) |
| reference.py  | float64 references                                                        |
"""
from __future__ import annotations

import torch

from .align import (int_histc_kernel, moe_count_kernel, moe_fill_kernel, moe_offsets_kernel,  # noqa: F401
                    moe_scatter_kernel)
from .experts import grouped_mm_kernel, index_add_rows_kernel, moe_gemm_kernel, moe_sum_kernel  # noqa: F401
from .hf import rewrite_moe_in_dynamo_graph  # noqa: F401
from .ops import (align, experts, grouped_mm, index_add_rows, int_histc, moe_align, moe_experts,  # noqa: F401
                  moe_sum, moe_topk, sort_expert_ids, topk_of_scores)
from .routing import moe_route_kernel  # noqa: F401


def _index_add(x, index, src):
    return torch.ops.aten.index_add.default(x, 0, index, src)


def _index_add_ours(x, index, src):
    return index_add_rows(x, index, src)


def _check_index_add(match) -> bool:
    x, index, src = (match.kwargs[n].meta.get("val") for n in ("x", "index", "src"))
    return (all(isinstance(v, torch.Tensor) for v in (x, index, src)) and x.dtype == torch.bfloat16
            and src.dtype == x.dtype and x.dim() >= 1 and index.dim() == 1 and not index.dtype.is_floating_point)


def register_patterns(pm_pass) -> None:
    """The MoE block's routing and experts are rewritten on the Dynamo graph (hf.py), where
    topk/histc/_grouped_mm still have their torch-level shape; see backend.py. Post-grad: a bf16
    ``index_add`` along dim 0 (the combine of a per-expert loop: Mixtral's eager experts, JetMoE),
    which Inductor leaves to ATen, becomes our fp32-accumulating op."""
    from ..matcher_utils import register_replacement

    from .._trace import trace_replacement

    x, src = torch.empty(8, 16, dtype=torch.bfloat16), torch.empty(5, 16, dtype=torch.bfloat16)
    register_replacement(_index_add, _index_add_ours, [x, torch.zeros(5, dtype=torch.int64), src],
                         trace_replacement, pm_pass, extra_check=_check_index_add)


# What is left of a MoE block that was not rewritten (the audit names these ops too).
ANCHOR_OPS = (torch.ops.aten.topk.default, torch.ops.aten.histc.default, torch.ops.aten._grouped_mm.default,
              torch.ops.aten.index_add.default)
