"""State-space and hybrid models under plain torch.compile (CPU).

What Mamba, Mamba-2, the hybrids built on them, short convolutions and linear attention add to a
transformer is Triton too: depthwise causal ``conv1d`` (``depthwise_conv.py``), the chunked scan's
``cumsum`` of few rows (``scan_lowering.py``: no zero-filled workspace), matmuls with a dim of 1
(``linear``: products and a sum) and ``einsum`` operands Inductor's native matmul could not fuse
(``passes.realize_native_matmul_operands``) and small triangular solves (``linear``:
``tri_inductor::solve_triangular``).

(A) codegen-only (fake sm_90): tiny Hugging Face models (``tri_inductor.hf_tiny``) audit to 0
    non-Triton kernels (stock Inductor leaves the convolution to cuDNN); each rewrite on its own
    against stock Inductor (which leaves it to ATen).
(B) interpreter: each rewrite against a float64 reference (fp32 in, float64 out of the same
    inputs; stated tolerances), and declines where it must (a conv1d that is not depthwise stays
    cuDNN's, the compile goes on).
"""
from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F

from pattern_harness import rel

_EXPENSIVE = pytest.mark.skipif(os.environ.get("TRI_INDUCTOR_EXPENSIVE") != "1",
                                reason="expensive: set TRI_INDUCTOR_EXPENSIVE=1 to run")
# Mamba (selective scan: conv1d, a GEMV per step), Mamba-2 hybrids (chunked scan: cumsum,
# einsums), Nemotron-H (+ a grouped MoE router), Qwen3-Next (gated delta-net linear attention),
# LFM2 (short convolutions beside attention).
HYBRIDS = ["falcon_h1", "jamba", "nemotron_h", "qwen3_next", "lfm2",
           pytest.param("bamba", marks=_EXPENSIVE), pytest.param("granitemoehybrid", marks=_EXPENSIVE),
           pytest.param("mamba", marks=_EXPENSIVE), pytest.param("mamba2", marks=_EXPENSIVE),
           pytest.param("zamba2", marks=_EXPENSIVE), pytest.param("kimi_linear", marks=_EXPENSIVE)]


@pytest.mark.parametrize("arch", HYBRIDS)
def test_hybrid_model_is_triton_only(codegen_only, arch):
    pytest.importorskip("transformers", reason="the Hugging Face models need transformers")
    from tri_inductor import hf_tiny

    model, inputs = hf_tiny.build(arch)
    reports = codegen_only(model, inputs)
    assert all(r.ok for r in reports), "\n".join(r.format_table() for r in reports)


def test_stock_inductor_leaves_the_convolution_to_cudnn(codegen_only):
    pytest.importorskip("transformers", reason="the Hugging Face models need transformers")
    from tri_inductor import hf_tiny

    model, inputs = hf_tiny.build("falcon_h1")
    ops = {v.op for r in codegen_only(model, inputs, backend="inductor") for v in r.violations}
    assert "aten.convolution" in ops, ops


# ---------------------------------------------------------------------------------------------
# Depthwise conv1d
class ShortConv(torch.nn.Module):
    """A causal depthwise convolution as Mamba writes it: conv, cut to the length, SiLU."""

    def __init__(self, C, K, bias=True, stride=1, dilation=1, padding=None):
        super().__init__()
        pad = dilation * (K - 1) if padding is None else padding
        self.conv = torch.nn.Conv1d(C, C, K, stride=stride, padding=pad, dilation=dilation, groups=C, bias=bias)

    def forward(self, x):  # x [B, L, C], as the layer gets it
        L = x.shape[1]
        return F.silu(self.conv(x.transpose(1, 2))[..., :L]).transpose(1, 2)


def _reference(module, x):
    with torch.no_grad():
        return module.double()(x.double())


CONVS = {  # (C, K, bias, stride, dilation, padding)
    "mamba_k4": (37, 4, True, 1, 1, None),
    "lfm2_k3_no_bias": (24, 3, False, 1, 1, None),
    "k1": (8, 1, True, 1, 1, None),
    "k7_dilated": (13, 7, True, 1, 2, None),
    "stride2_same_pad": (16, 5, True, 2, 1, 2),
}


@pytest.mark.parametrize("name", list(CONVS))
def test_depthwise_conv1d_matches_float64(interpreter, name):
    import tri_inductor

    torch.manual_seed(0)
    module = ShortConv(*CONVS[name]).eval()
    x = torch.randn(2, 19, CONVS[name][0])  # odd length: the cut and the stride's last tap
    with torch.no_grad():
        torch._dynamo.reset()
        before = {id(r) for r in tri_inductor.last_audit()}  # the kept reports span earlier tests
        out = torch.compile(module, backend="tri_inductor")(x)
    reports = [r for r in tri_inductor.last_audit() if id(r) not in before]
    assert reports and not [v for r in reports for v in r.violations]
    ref = _reference(module, x)
    assert out.shape == ref.shape
    assert rel(out, ref) < 1e-6  # fp32 products summed in fp32: a few ulps


def test_unbatched_depthwise_conv1d_matches_float64(interpreter):
    torch.manual_seed(0)
    conv = torch.nn.Conv1d(12, 12, 4, padding=3, groups=12).eval()
    x = torch.randn(12, 10)  # [C, L]: F.conv1d's unbatched form
    with torch.no_grad():
        torch._dynamo.reset()
        out = torch.compile(conv, backend="tri_inductor")(x)
    assert rel(out, _reference(conv, x)) < 1e-6


def test_depthwise_conv1d_is_triton_and_dense_conv_is_declined(codegen_only):
    reports = codegen_only(ShortConv(64, 4), [torch.randn(2, 9, 64)])
    assert all(r.ok for r in reports), "\n".join(r.format_table() for r in reports)
    stock = codegen_only(ShortConv(64, 4), [torch.randn(2, 9, 64)], backend="inductor")
    assert {v.op for r in stock for v in r.violations} == {"aten.convolution"}
    # a dense conv1d (every input channel per output) is not ours: left to Inductor, compiled
    dense = torch.nn.Conv1d(16, 16, 3, padding=1)
    [bad] = [v for r in codegen_only(dense, [torch.randn(2, 16, 9)]) for v in r.violations]
    assert bad.op == "aten.convolution"


# ---------------------------------------------------------------------------------------------
# A scan of few rows (Mamba-2's chunked cumsum of each head's decay). Where Inductor would split
# it (the Mamba-2 hybrids above: Falcon-H1 fails its audit on ``workspace.zero_()`` without
# scan_lowering) it is one pass per row in ours; the values stay a cumsum's.
class ChunkDecay(torch.nn.Module):
    def forward(self, A):  # A [b, chunks, l, h] -> cumsum over l per (b, h, chunk)
        return torch.exp(torch.cumsum(A.permute(0, 3, 1, 2), dim=-1))


def test_scan_of_few_rows_matches_float64(interpreter):
    A = -torch.rand(2, 1, 256, 128) * 0.01
    with torch.no_grad():
        torch._dynamo.reset()
        out = torch.compile(ChunkDecay(), backend="tri_inductor")(A)
    assert rel(out, ChunkDecay()(A.double())) < 1e-5  # 1024 fp32 partial sums in scan order


# ---------------------------------------------------------------------------------------------
# Matmuls with a dim of 1
class UnitMatmuls(torch.nn.Module):
    """Mamba's per-step ``state @ C`` (N = 1), a row times a batch of matrices (M = 1), an outer
    product (K = 1)."""

    def forward(self, state, c, row, mats, u, v):
        return (torch.matmul(state, c.unsqueeze(-1)).sum(), torch.bmm(row, mats), torch.bmm(u, v))


def _unit_inputs():
    torch.manual_seed(0)
    return [torch.randn(3, 24, 16), torch.randn(3, 16), torch.randn(5, 1, 33), torch.randn(5, 33, 20),
            torch.randn(4, 7, 1), torch.randn(4, 1, 9)]


def test_unit_dim_matmuls_are_triton(codegen_only):
    stock = codegen_only(UnitMatmuls(), _unit_inputs(), backend="inductor")
    assert {v.op for r in stock for v in r.violations} == {"aten.bmm"}
    reports = codegen_only(UnitMatmuls(), _unit_inputs())
    assert all(r.ok for r in reports), "\n".join(r.format_table() for r in reports)


def _compiled_within(module, inputs, tol):
    """Each output of the compiled module (fp32 inputs) within ``tol`` of its float64 run."""
    with torch.no_grad():
        torch._dynamo.reset()
        outs = torch.compile(module, backend="tri_inductor")(*inputs)
    refs = module(*[t.double() for t in inputs])
    for out, ref in zip(outs, refs):
        assert out.shape == ref.shape and rel(out, ref) < tol


def test_unit_dim_matmuls_match_float64(interpreter):
    _compiled_within(UnitMatmuls(), _unit_inputs(), 1e-6)


# ---------------------------------------------------------------------------------------------
# Triangular solves (gated delta-net's UT transform: a unit lower system per 64-token chunk)
class TriangularSolves(torch.nn.Module):
    def forward(self, a, b, c):
        eye = torch.eye(a.shape[-1], dtype=a.dtype, device=a.device)
        lower = torch.linalg.solve_triangular(a.tril(-1) + eye, b, upper=False, unitriangular=True)
        upper = torch.linalg.solve_triangular(a.triu() + 3 * eye, b, upper=True)
        right = torch.linalg.solve_triangular(a.tril() + 3 * eye, c, upper=False, left=False)
        return lower, upper, right


def _solve_inputs():
    torch.manual_seed(0)
    return [torch.randn(2, 3, 37, 37) * 0.2, torch.randn(2, 3, 37, 20), torch.randn(1, 3, 5, 37)]


def test_triangular_solves_are_ours(codegen_only):
    # fp32 (the harness's bf16 default: ATen has no CPU bf16 triangular solve to trace with)
    stock = codegen_only(TriangularSolves(), _solve_inputs(), backend="inductor", dtype=torch.float32)
    assert {v.op for r in stock for v in r.violations} == {"aten.linalg_solve_triangular"}
    reports = codegen_only(TriangularSolves(), _solve_inputs(), dtype=torch.float32)
    assert all(r.ok for r in reports), "\n".join(r.format_table() for r in reports)
    assert sum(k.name == "solve_triangular_kernel" for r in reports for k in r.kernels) == 3


def test_triangular_solves_match_float64(interpreter):
    _compiled_within(TriangularSolves(), _solve_inputs(), 1e-5)  # fp32 substitution, 37 rows deep
