"""Complex-number RoPE (Meta's Llama reference code, DeepSeek-V2/V3 in transformers) rewritten as
real pairs on the Dynamo graph (tri_inductor/complex_pairs.py): Triton only, same numbers; any
complex form the pass does not cover is left as it was."""
from __future__ import annotations

import pytest
import torch

import tri_inductor
from pattern_harness import dynamo_graph
from tri_inductor.complex_pairs import rewrite_complex_in_dynamo_graph

# Compiled fp32 against eager fp32 on the same inputs: the same products and sums, in another
# association for the complex multiply (four products, two sums): a few ulps of values ~1.
TOL = 1e-5


def precompute_freqs_cis(dim: int, end: int, theta: float = 10000.0) -> torch.Tensor:
    freqs = 1.0 / (theta ** (torch.arange(0, dim, 2)[: dim // 2].float() / dim))
    return torch.outer(torch.arange(end).float(), freqs)


class MetaLlamaRope(torch.nn.Module):
    """Meta's llama/model.py form: a complex ``freqs_cis`` buffer, sliced in the graph."""

    def __init__(self, dim=16, end=64):
        super().__init__()
        angles = precompute_freqs_cis(dim, end)
        self.register_buffer("freqs_cis", torch.polar(torch.ones_like(angles), angles))

    def forward(self, xq, xk, start: int = 3):
        seqlen = xq.shape[1]
        xq_ = torch.view_as_complex(xq.float().reshape(*xq.shape[:-1], -1, 2))
        xk_ = torch.view_as_complex(xk.float().reshape(*xk.shape[:-1], -1, 2))
        freqs_cis = self.freqs_cis[start:start + seqlen].view(1, seqlen, 1, xq_.shape[-1])
        xq_out = torch.view_as_real(xq_ * freqs_cis).flatten(3)
        xk_out = torch.view_as_real(xk_ * freqs_cis).flatten(3)
        return xq_out.type_as(xq), xk_out.type_as(xk)


class PolarInGraph(torch.nn.Module):
    """The rotation made in the graph from angles (polar), scaled by a number and by a tensor."""

    def __init__(self, dim=16, end=64):
        super().__init__()
        self.register_buffer("angles", precompute_freqs_cis(dim, end))

    def forward(self, xq, xk, start: int = 3):
        seqlen = xq.shape[1]
        ang = self.angles[start:start + seqlen]
        freqs_cis = (torch.polar(torch.ones_like(ang), ang) * 0.5).unsqueeze(0).unsqueeze(2)
        xq_ = torch.view_as_complex(xq.float().reshape(*xq.shape[:-1], -1, 2))
        xk_ = torch.view_as_complex(xk.float().reshape(*xk.shape[:-1], -1, 2))
        gain = xk.float()[..., :1].sigmoid()  # a real tensor factor, broadcast over the pairs
        return (torch.view_as_real(xq_ * freqs_cis).flatten(3),
                torch.view_as_real(xk_ * freqs_cis * gain).flatten(3))


class HFDeepseekRope(torch.nn.Module):
    def __init__(self):
        super().__init__()
        transformers = pytest.importorskip("transformers")
        from transformers.models.deepseek_v2 import modeling_deepseek_v2 as M

        cfg = transformers.DeepseekV2Config(hidden_size=64, num_attention_heads=4, qk_rope_head_dim=8,
                                            max_position_embeddings=64)
        self.rot, self.apply = M.DeepseekV2RotaryEmbedding(cfg), M.apply_rotary_emb

    def forward(self, q, k, pos):
        return self.apply(q, k, self.rot(q, pos))


def _targets(gm):
    return {n.target for n in gm.graph.nodes if n.op == "call_function"}


@pytest.mark.parametrize("make,inputs", [
    (MetaLlamaRope, lambda: (torch.randn(2, 5, 3, 16), torch.randn(2, 5, 1, 16))),
    (PolarInGraph, lambda: (torch.randn(2, 5, 3, 16), torch.randn(2, 5, 1, 16))),
    (HFDeepseekRope, lambda: (torch.randn(1, 4, 5, 8), torch.randn(1, 1, 5, 8), torch.arange(5)[None])),
], ids=["meta-llama", "polar-in-graph", "hf-deepseek-v2"])
def test_complex_rope_compiles_to_triton_and_matches_eager(interpreter, make, inputs):
    module, args = make(), inputs()
    gm = dynamo_graph(module, *args)
    assert rewrite_complex_in_dynamo_graph(gm) > 0
    assert not _targets(gm) & {torch.view_as_complex, torch.polar}
    # what is left of view_as_real: the (re, im) view of a complex input (no kernel)
    assert all(n.args[0].op in ("placeholder", "get_attr") for n in gm.graph.nodes
               if n.op == "call_function" and n.target is torch.view_as_real)
    ref = module(*args)
    torch._dynamo.reset()
    out = torch.compile(module, backend="tri_inductor")(*args)
    for o, r in zip(out, ref):
        assert o.dtype == r.dtype and (o - r).abs().max().item() < TOL
    assert all(r.ok for r in tri_inductor.last_audit()[-1:])


def test_complex_rope_audits_triton_only(codegen_only):
    # also: the audit keeps the complex buffer complex when it casts the model to the audit dtype
    reports = codegen_only(MetaLlamaRope(), [torch.randn(2, 5, 3, 16), torch.randn(2, 5, 1, 16)])
    assert all(r.ok for r in reports), "\n".join(r.format_table() for r in reports)


class ComplexAbs(torch.nn.Module):
    def forward(self, x):
        return torch.view_as_complex(x.reshape(*x.shape[:-1], -1, 2)).abs()


class ComplexOutput(torch.nn.Module):
    def forward(self, x):
        return torch.view_as_complex(x.reshape(*x.shape[:-1], -1, 2)) * 2.0


@pytest.mark.parametrize("module", [ComplexAbs(), ComplexOutput()], ids=["abs", "complex-output"])
def test_forms_it_does_not_cover_are_left_alone(module):
    x = torch.randn(4, 8)
    gm = dynamo_graph(module, x)
    before = [(n.op, n.target) for n in gm.graph.nodes]
    assert rewrite_complex_in_dynamo_graph(gm) == 0
    assert [(n.op, n.target) for n in gm.graph.nodes] == before
    torch._dynamo.reset()
    out = torch.compile(module, backend="tri_inductor")(x)  # compiles (the audit names the op)
    torch.testing.assert_close(out, module(x))
