"""The graph vLLM really hands us: a middle piece of a 2-layer Llama as logged on an H200
(``tests/data/vllm_llama_piece.py``), compiled by the backend for a fake sm_90. Every family must find its op there: two fused add+RMSNorms (the second reads the
first's fp32 sum after Inductor folds the bf16 round trip), RoPE on per-head q/k, SiLU-and-mul
fused into the gate_up projection, four projections; and the audit must find only Triton."""
from __future__ import annotations

import collections
import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "data"))

from vllm_llama_piece import Piece  # noqa: E402


def _inputs(tokens: int = 8) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    bf = dict(dtype=torch.bfloat16)

    def r(*shape):
        return torch.randn(*shape, generator=g).to(torch.bfloat16)

    return [r(tokens, 16, 64), r(1024, 1024), r(1024), r(tokens, 1024), r(5632, 1024), r(1024, 2816),
            r(1024), r(1536, 1024), torch.randint(0, 2048, (tokens,), generator=g), torch.randn(2048, 64, **bf)]


def test_every_family_matches_in_vllms_real_piece(codegen_only) -> None:
    class WithTokenCount(torch.nn.Module):
        def forward(self, a0, a2, a3, a4, a5, a6, a7, a8, a9, a10):  # vLLM passes the count as an input
            return Piece()(a0, a0.shape[0], a2, a3, a4, a5, a6, a7, a8, a9, a10)

    fn = WithTokenCount()
    # Static token count: the forms our patterns must see (the folded residual round trip, the
    # per-head RoPE outputs) are the same; the symbolic-M GEMM path is tested in test_linear.py.
    reports = codegen_only(fn, _inputs())
    hits: collections.Counter[str] = collections.Counter()
    for r in reports:
        hits.update(k.family for k in r.kernels if k.kind == "our_triton" and k.family)
    assert all(r.ok for r in reports), [str(r) for r in reports]
    assert hits["rms_norm"] == 2, hits
    assert hits["rope"] == 1, hits
    # gate_up + SiLU-and-mul: one fused GEMM (a linear kernel with the activation epilogue)
    assert hits["activation"] == 0, hits
    assert hits["linear"] >= 4, hits
    assert "'ACT': 0" in reports[-1].code and "_gated_act_kernel" not in reports[-1].code
    # Nothing left for Inductor: a kernel of its own here is an op one of our patterns half-took
    # (e.g. RoPE's q and k subgraphs look alike; a match binding both to q left k to Inductor).
    leftover = [k.name for r in reports for k in r.kernels if k.kind != "our_triton"]
    assert not leftover, leftover
    # The two norms' residual chain moves no fp32 sum through memory (rms_norm.prepare_graph).
    # (A split-K GEMM's fp32 partials are the one fp32 buffer allowed: the reduction kernel reads them.)
    call = reports[-1].code.split("def call(")[1]
    fp32 = [ln for ln in call.splitlines() if "torch.float32)" in ln]
    partials = [ln for ln in fp32 if any(f"splitk_reduce_kernel" in use and f"({ln.split('=')[0].strip()}," in use
                                         for use in call.splitlines())]
    assert fp32 == partials, fp32
