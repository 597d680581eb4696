"""Mixture-of-experts family: routing, alignment, expert GEMMs and reduction in Triton.

| module        | what                                                                      |
|---------------|---------------------------------------------------------------------------|
| routing.py    | router top-k: softmax/sigmoid scores, bias, grouped top-k, renormalise    |
| align.py      | token -> expert alignment (vLLM's moe_align_block_size)                   |
| experts.py    | fused-MoE grouped GEMM (gated act epilogue), torch._grouped_mm, reduction |
| tuning.py     | expert GEMM tile configs: default by rows per expert, tuned on a GPU      |
| ops.py        | tri_inductor::moe_*, grouped_mm, topk_of_scores, sort_expert_ids, int_histc |
| hf.py         | Dynamo-graph rewrite of the HF MoE forms (topk, sort, histc, _grouped_mm) |
| reference.py  | float64 references                                                        |
"""
from __future__ import annotations

import torch

from .align import (int_histc_kernel, moe_count_kernel, moe_fill_kernel, moe_offsets_kernel,  # noqa: F401
                    moe_scatter_kernel)
from .experts import grouped_mm_kernel, moe_gemm_kernel, moe_sum_kernel  # noqa: F401
from .hf import rewrite_moe_in_dynamo_graph  # noqa: F401
from .ops import (align, experts, grouped_mm, int_histc, moe_align, moe_experts, moe_sum, moe_topk,  # noqa: F401
                  sort_expert_ids, topk_of_scores)
from .routing import moe_route_kernel  # noqa: F401


def register_patterns(pm_pass) -> None:
    """No post-grad patterns: the MoE forms are rewritten on the Dynamo graph (hf.py), where
    topk/histc/_grouped_mm still have their torch-level shape; see backend.py."""


# What is left of a MoE block that was not rewritten (the audit names these ops too).
ANCHOR_OPS = (torch.ops.aten.topk.default, torch.ops.aten.histc.default, torch.ops.aten._grouped_mm.default)
