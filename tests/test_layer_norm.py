"""layer_norm: kernel numerics (Triton interpreter, float64 reference) and the F.layer_norm
forms (codegen-only). Tolerances on ||out - ref|| / ||ref||: fp32 1e-5, bf16 1e-2 (output rounding)."""
from __future__ import annotations

import pytest
import torch
from torch._inductor.pattern_matcher import PatternMatcherPass

from pattern_harness import assert_our_kernel, compile_codegen, rel
from tri_inductor.patterns import layer_norm as L

TOL = {torch.float32: 1e-5, torch.bfloat16: 1e-2}


@pytest.mark.parametrize("dtype", list(TOL))
@pytest.mark.parametrize("shape", [(1, 8), (7, 100), (2, 3, 768)])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("weight", [True, False])
def test_kernel_matches_reference(dtype, shape, bias, weight, poison) -> None:
    g = torch.Generator().manual_seed(sum(shape))
    x = (torch.randn(*shape, generator=g) * 3 + 1).to(dtype)
    w = torch.randn(shape[-1], generator=g).to(dtype) if weight else None
    b = torch.randn(shape[-1], generator=g).to(dtype) if bias else None
    out = L.layer_norm(x, w, b, 1e-5)
    assert out.shape == x.shape and out.dtype == dtype
    assert rel(out, L.reference_layer_norm(x, w, b, 1e-5)) < TOL[dtype]


@pytest.fixture(scope="module")
def pm() -> PatternMatcherPass:
    pm = PatternMatcherPass()
    L.register_patterns(pm)
    return pm


@pytest.mark.parametrize("bias", [True, False])
def test_nn_layer_norm_matches(pm, bias) -> None:
    ln = torch.nn.LayerNorm(64, eps=1e-6, bias=bias).to(torch.bfloat16)

    def block(x, r):  # BERT: LayerNorm(hidden + residual)
        return ln(x + r)

    x, r = torch.randn(2, 5, 64, dtype=torch.bfloat16), torch.randn(2, 5, 64, dtype=torch.bfloat16)
    hits, code = compile_codegen(block, [x, r], pm)
    assert hits == 1
    assert_our_kernel(code, "_layer_norm_kernel")
    assert "1e-06" in code  # the model's eps, not the tracing sentinel


HAND_WRITTEN = {form.__name__: form for form in L.HAND_WRITTEN}


class _Affine(torch.nn.Module):
    def __init__(self, form, dtype) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(6)
        self.form = form
        self.w = torch.nn.Parameter(torch.randn(96, generator=g).to(dtype))
        self.b = torch.nn.Parameter(torch.randn(96, generator=g).to(dtype))

    def forward(self, x):
        return self.form(x, self.w, self.b, 1e-5)


@pytest.mark.parametrize("name", list(HAND_WRITTEN))
def test_hand_written_layer_norm_is_ours_with_every_family_on(codegen_only, name) -> None:
    """A LayerNorm written out by hand compiles, with all families on (RMSNorm's forms run first
    and must not take its centred half), to our LayerNorm kernel alone."""
    x = torch.randn(2, 5, 96, dtype=torch.bfloat16)
    reports = codegen_only(_Affine(HAND_WRITTEN[name], torch.bfloat16), [x])
    hits = {f: n for r in reports for f, n in r.pattern_hits.items()}
    assert hits == {"layer_norm": 1}, hits
    assert {k.kind for r in reports for k in r.kernels} == {"our_triton"}


@pytest.mark.parametrize("name", list(HAND_WRITTEN))
def test_hand_written_layer_norm_numerics_in_interpreter(interpreter, name) -> None:
    m = _Affine(HAND_WRITTEN[name], torch.bfloat16)
    x = torch.randn(3, 96, generator=torch.Generator().manual_seed(7)).to(torch.bfloat16)
    torch._dynamo.reset()
    with torch.no_grad():
        out = torch.compile(m, backend="tri_inductor")(x)
    ref = L.reference_layer_norm(x.double(), m.w.detach().double(), m.b.detach().double(), 1e-5)
    assert out.dtype == torch.bfloat16 and rel(out, ref) < TOL[torch.bfloat16]


class _Unit(torch.nn.Module):
    def __init__(self, form):
        super().__init__()
        self.form = form

    def forward(self, x):
        return self.form(x, 1e-5)


class _Cohere(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.randn(96, generator=torch.Generator().manual_seed(8)).to(torch.bfloat16))

    def forward(self, x):
        return L._ln_upcast_weight_fp32(x, self.w, 1e-5)


# weightless (OLMo, elementwise_affine=False) and Cohere's fp32-weight form: our kernel alone,
# with every family on (RMSNorm's weightless forms must not take the centred half)
OTHER = {"unit": lambda: _Unit(L._ln_unit), "unit upcast (OLMo)": lambda: _Unit(L._ln_unit_upcast),
         "cohere": _Cohere}


@pytest.mark.parametrize("name", list(OTHER))
def test_other_layer_norms_are_ours_with_every_family_on(codegen_only, name) -> None:
    reports = codegen_only(OTHER[name](), [torch.randn(2, 5, 96, dtype=torch.bfloat16)])
    hits = {f: n for r in reports for f, n in r.pattern_hits.items()}
    assert hits == {"layer_norm": 1}, hits
    assert {k.kind for r in reports for k in r.kernels} == {"our_triton"}


@pytest.mark.parametrize("name", list(OTHER))
def test_other_layer_norms_numerics_in_interpreter(interpreter, name) -> None:
    m = OTHER[name]()
    x = torch.randn(3, 96, generator=torch.Generator().manual_seed(9)).to(torch.bfloat16)
    torch._dynamo.reset()
    with torch.no_grad():
        out = torch.compile(m, backend="tri_inductor")(x)
    w = m.w.detach().double() if name == "cohere" else None
    ref = L.reference_layer_norm(x.double(), w, None, 1e-5)
    assert out.dtype == torch.bfloat16 and rel(out, ref) < TOL[torch.bfloat16]
