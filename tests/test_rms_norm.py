"""rms_norm / fused_add_rms_norm: kernel numerics (Triton interpreter) and FX patterns (codegen-only).

Interpreter: ``launch`` runs real CPU tensors through ``InterpretedFunction`` without
TRITON_INTERPRET=1 (not set here); see the note in tri_inductor/patterns/rms_norm.py.
"""
from __future__ import annotations

import re

import pytest
import torch
from torch._inductor.pattern_matcher import PatternMatcherPass

from pattern_harness import assert_our_kernel, backend_output_code, compile_codegen, global_memory_ops, rel, sm90_ptx
from tri_inductor.patterns import rms_norm as R

# ‖out − ref‖ / ‖ref‖ against the float64 reference.
TOL = {torch.bfloat16: 1e-2, torch.float16: 2e-3, torch.float32: 1e-5}
SHAPES = [(1, 8), (3, 96), (17, 1000), (5, 4096), (2, 3, 20000)]  # 20000: the chunked wide-row path



@pytest.mark.parametrize("dtype", list(TOL))
@pytest.mark.parametrize("shape", SHAPES)
def test_rms_norm_matches_reference(shape, dtype, poison) -> None:
    x, w = torch.randn(*shape, dtype=dtype), torch.randn(shape[-1], dtype=dtype)
    eps, offset = float(torch.rand(()) * 1e-4), float(torch.randint(0, 2, ()))
    out = R.rms_norm(x, w, eps, offset)
    assert out.shape == x.shape and out.dtype == dtype and not out.isnan().any()
    assert rel(out, R.reference_rms_norm(x, w, eps, offset)) < TOL[dtype]


@pytest.mark.parametrize("dtype", list(TOL))
@pytest.mark.parametrize("shape", SHAPES)
def test_fused_add_rms_norm_matches_reference(shape, dtype, poison) -> None:
    x, r = torch.randn(*shape, dtype=dtype), torch.randn(*shape, dtype=dtype)
    w = torch.randn(shape[-1], dtype=dtype)
    x0, r0 = x.clone(), r.clone()
    out, new_res = R.fused_add_rms_norm(x, r, w, 1e-6, 1.0)
    ref_out, ref_res = R.reference_fused_add_rms_norm(x, r, w, 1e-6, 1.0)
    assert not out.isnan().any() and not new_res.isnan().any()  # every element written
    assert rel(out, ref_out) < TOL[dtype]
    assert rel(new_res, ref_res) < TOL[dtype]
    assert torch.equal(x, x0) and torch.equal(r, r0)  # inputs untouched (functional op)


@pytest.mark.parametrize("shape", [(5, 96), (2, 3, 20000)])
def test_fp32_residual_in_and_out(shape, poison) -> None:
    """A chain of norms after Inductor's pointless_convert: the residual comes in as fp32 and,
    with ``fp32_residual``, the new residual goes out as fp32 (the exact sum)."""
    x, r = torch.randn(*shape, dtype=torch.bfloat16), torch.randn(*shape)
    w = torch.randn(shape[-1], dtype=torch.bfloat16)
    ref_out, ref_res = R.reference_fused_add_rms_norm(x, r, w, 1e-5)
    out, new_res = R.fused_add_rms_norm(x, r, w, 1e-5, 0.0, True)
    assert out.dtype == torch.bfloat16 and new_res.dtype == torch.float32
    assert rel(out, ref_out) < TOL[torch.bfloat16] and rel(new_res, ref_res) < TOL[torch.float32]
    out2, res2 = R.fused_add_rms_norm(x, r, w, 1e-5)
    assert res2.dtype == torch.bfloat16 and rel(res2, ref_res) < TOL[torch.bfloat16]
    assert rel(out2, ref_out) < TOL[torch.bfloat16]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("shape", [(1, 8), (17, 1000), (2, 3, 20000)])
def test_add_rms_norm_and_three_term_sum(shape, dtype, poison) -> None:
    """The chain's two kernels: ``add_rms_norm`` (the sum not written) and ``fused_add_rms_norm``
    with ``residual2`` (s = x + (a + b), written in x's dtype), single-tile and wide rows."""
    x, a, b = (torch.randn(*shape, dtype=dtype) for _ in range(3))
    w = torch.randn(shape[-1], dtype=dtype)
    ref_out, _ = R.reference_fused_add_rms_norm(x, a, w, 1e-6, 1.0)
    out = R.add_rms_norm(x, a, w, 1e-6, 1.0)
    assert out.dtype == dtype and rel(out, ref_out) < TOL[dtype]
    s = x.double() + (a.double() + b.double())
    out3, res3 = R.fused_add_rms_norm(x, a, w, 1e-6, 0.0, False, b)
    assert res3.dtype == dtype and rel(res3, s) < TOL[dtype]
    assert rel(out3, R.reference_rms_norm(s, w.double(), 1e-6)) < TOL[dtype]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_wide_rows_normalise_the_exact_sum(dtype, monkeypatch, poison) -> None:
    """The chunked (wide-row) path stores a 16-bit new residual, but normalises the fp32 sum, as
    the single tile does: run both on the same rows (chunks forced by a smaller tile cap) and the
    outputs agree except where the fp32 reduction order moves a rounding. Normalising the rounded
    residual instead changed 28% of them (bf16) by an ulp."""
    g = torch.Generator().manual_seed(5)
    x, r = (torch.randn(16, 4096, generator=g).to(dtype) for _ in range(2))
    w = torch.randn(4096, generator=g).to(dtype)
    single_out, single_res = R.fused_add_rms_norm(x, r, w, 1e-6)
    monkeypatch.setattr(R, "MAX_FUSED_BLOCK", 1024)
    assert not R._launch_config(4096, x.element_size())[2]  # the chunked path
    out, res = R.fused_add_rms_norm(x, r, w, 1e-6)
    assert torch.equal(res, single_res)
    differ = (out != single_out).float().mean().item()
    assert differ < 0.005, f"{differ:.1%} of outputs differ from the single-tile path"


def _vllm_norm_chain(x1, r, x2, w1, w2):
    """vLLM's piece between two attentions, as the IR native bodies trace: o_proj output x1 +
    residual -> norm -> (MLP stand-in) -> + the first new residual read back as float32 -> norm."""
    def add_norm(x, res, w):
        s = x.to(torch.float32) + res.to(torch.float32)
        new_res = s.to(x.dtype)
        h = s * torch.rsqrt(s.pow(2).mean(dim=-1, keepdim=True) + 1e-6)
        return (h.to(w.dtype) * w).to(x.dtype), new_res

    h1, res1 = add_norm(x1, r, w1)
    return add_norm(x2 * h1, res1, w2)


def test_norm_chain_keeps_the_sum_in_registers() -> None:
    """Through the backend: the first norm's fp32 sum is not written for the second to read back
    (prepare_graph gives the second its own sum: 16 bytes an element moved, not 20)."""
    x1, r, x2 = (torch.randn(6, 64, dtype=torch.bfloat16) for _ in range(3))
    w1, w2 = torch.randn(64, dtype=torch.bfloat16), torch.randn(64, dtype=torch.bfloat16)
    code = backend_output_code(_vllm_norm_chain, x1, r, x2, w1, w2)
    flags = re.findall(r"'(HAS_RESIDUAL2|STORE_RESIDUAL)': (\w+)", code)
    if R.chain_forms_occur():
        assert sorted(flags) == sorted([("HAS_RESIDUAL2", "False"), ("STORE_RESIDUAL", "False"),
                                        ("HAS_RESIDUAL2", "True"), ("STORE_RESIDUAL", "True")]), flags
    else:
        # torch >= 2.13 keeps the bf16 round trip: each norm is the plain add+norm, writing its
        # residual in bf16 (2 bytes) for the next to read, as the eager model does; the two
        # launches share one kernel definition.
        assert flags == [("HAS_RESIDUAL2", "False"), ("STORE_RESIDUAL", "True")], flags
        assert len(re.findall(r"_rms_norm_kernel_\d+\.run\(", code)) == 2
    assert "torch.float32)" not in code.split("def call(")[1], "an fp32 buffer between the norms"


def test_norm_chain_numerics_in_interpreter(interpreter) -> None:
    g = torch.Generator().manual_seed(3)
    x1, r, x2 = (torch.randn(5, 96, generator=g).to(torch.bfloat16) for _ in range(3))
    w1, w2 = (torch.randn(96, generator=g).to(torch.bfloat16) for _ in range(2))
    torch._dynamo.reset()
    out, res = torch.compile(_vllm_norm_chain, backend="tri_inductor")(x1, r, x2, w1, w2)
    # float64, with the sum carried in full precision (what the folded graph computes)
    s1 = x1.double() + r.double()
    h1 = R.reference_rms_norm(s1, w1, 1e-6).to(torch.bfloat16)
    s2 = (x2 * h1).double() + s1
    assert rel(res, s2) < TOL[torch.bfloat16]
    assert rel(out, R.reference_rms_norm(s2, w2, 1e-6)) < TOL[torch.bfloat16]


def test_strided_rows_and_fp32_weight(poison) -> None:
    # Row-strided input (column slice of a wider buffer) with an fp32 weight (vLLM's Gemma path).
    wide = torch.randn(9, 1100, dtype=torch.bfloat16)
    x = wide[:, :1000]
    w = torch.randn(1000)
    out = R.rms_norm(x, w, 1e-5)
    assert not out.isnan().any()
    assert rel(out, R.reference_rms_norm(x, w, 1e-5)) < TOL[torch.bfloat16]


@pytest.mark.parametrize("heads, hd, single_tile", [(4, 128, True), (3, 40, True), (2, 20000, False)])
def test_per_head_view_of_fused_buffer(heads, hd, single_tile, poison) -> None:
    """Qwen3's q/k norm: x is [tokens, heads, head_dim], a per-head view of the fused qkv buffer
    (tokens strided by the qkv width, not by heads * head_dim): read in place, every row right."""
    g = torch.Generator().manual_seed(heads)
    qkv = torch.randn(7, (heads + 3) * hd, generator=g).to(torch.bfloat16)
    x = qkv[:, : heads * hd].view(7, heads, hd)
    assert R._strided_heads(x)[3] == heads  # the in-place path, not a copy
    assert (R._launch_config(hd, 2)[2]) == single_tile
    w = torch.randn(hd, generator=g).to(torch.bfloat16)
    out = R.rms_norm(x, w, 1e-6)
    assert out.shape == x.shape and not out.isnan().any()
    assert rel(out, R.reference_rms_norm(x, w, 1e-6)) < TOL[torch.bfloat16]


# ----------------------------------------------------------------------------------- patterns
@pytest.fixture(scope="module")
def pm() -> PatternMatcherPass:
    pm = PatternMatcherPass()
    R.register_patterns(pm)
    return pm


def _kernel_args(code: str) -> list[str]:
    """The launch arguments of our kernel in the output code (to read eps / weight_offset)."""
    m = re.search(r"_rms_norm_kernel_\d+\.run\((.*)\)", code)
    assert m, "kernel launch not found"
    return [a.strip() for a in m.group(1).split(",")]


def _llama(dtype):
    pytest.importorskip("transformers", reason="the Hugging Face form needs transformers")
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    m = LlamaRMSNorm(64, eps=1e-5).to(dtype)
    m.weight.data.normal_()
    return m


def test_vllm_native_fp32_weight_matches(vllm_ctx, pm) -> None:
    # vLLM RMSNorm built with dtype=float32 weights on a bf16 model (IR native body, wrap off).
    from vllm import ir
    from vllm.model_executor.layers.layernorm import RMSNorm

    m = RMSNorm(64, eps=1e-6, dtype=torch.float32)
    m.weight.data.normal_()
    x, r = torch.randn(5, 64, dtype=torch.bfloat16), torch.randn(5, 64, dtype=torch.bfloat16)
    for residual in (False, True):
        fwd = (lambda x, r: m.forward_native(x, r)) if residual else (lambda x, r: m.forward_native(x))
        with ir.enable_torch_wrap(False):
            hits, code = compile_codegen(fwd, [x, r], pm)
        assert hits == 1
        assert_our_kernel(code, "_rms_norm_kernel")
    assert rel(R.rms_norm(x, m.weight, 1e-6), m.forward_native(x).double()) < TOL[torch.bfloat16]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_hf_llama_rmsnorm_matches(pm, dtype) -> None:
    m = _llama(dtype)
    x = torch.randn(5, 64, dtype=dtype)
    hits, code = compile_codegen(m, [x], pm)
    assert hits == 1
    assert_our_kernel(code, "_rms_norm_kernel")
    assert "1e-05" in _kernel_args(code) and "0.0" in _kernel_args(code)
    assert rel(R.rms_norm(x, m.weight, 1e-5), m(x).double()) < TOL[dtype]


def test_hf_gemma_rmsnorm_matches(pm) -> None:
    pytest.importorskip("transformers", reason="the Hugging Face form needs transformers")
    from transformers.models.gemma.modeling_gemma import GemmaRMSNorm

    m = GemmaRMSNorm(64, eps=1e-6).to(torch.bfloat16)
    m.weight.data.normal_()
    x = torch.randn(2, 3, 64, dtype=torch.bfloat16)
    hits, code = compile_codegen(m, [x], pm)
    assert hits == 1
    assert_our_kernel(code, "_rms_norm_kernel")
    assert "1.0" in _kernel_args(code)  # (1 + w) folded into weight_offset
    assert rel(R.rms_norm(x, m.weight, 1e-6, 1.0), m(x).double()) < TOL[torch.bfloat16]


def test_gemma_rmsnorm_weight_first_matches(pm) -> None:
    """Gemma's norm with the (1 + w) factor written first: the offset is folded the same way."""
    w = torch.randn(64).to(torch.bfloat16)

    def norm(x):
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + 1e-6)
        return ((1.0 + w.float()) * h).type_as(x)

    x = torch.randn(2, 3, 64, dtype=torch.bfloat16)
    hits, code = compile_codegen(norm, [x], pm)
    assert hits == 1
    assert_our_kernel(code, "_rms_norm_kernel")
    assert "1.0" in _kernel_args(code)
    assert "triton_" not in code.split("def call(")[1], "a kernel of Inductor's left next to ours"
    assert rel(R.rms_norm(x, w, 1e-6, 1.0), norm(x.double())) < TOL[torch.bfloat16]


SPELLINGS = {
    # name: forward(x, w) written as users do (patterns/normalise.py and rms_norm.OTHER_SPELLINGS)
    "bf16 math, no upcast": lambda x, w: x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * w,
    "x*x, mean(dim=last index)": lambda x, w: x * torch.rsqrt(torch.mean(x * x, x.dim() - 1, True) + 1e-6) * w,
    "weight first": lambda x, w: w * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6)),
    "F.rms_norm": lambda x, w: torch.nn.functional.rms_norm(x, (x.shape[-1],), w, 1e-6),
    "divide by sqrt": lambda x, w: w * (x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6)),
    "divide by sqrt, fp32": lambda x, w: w * (x.float() / torch.sqrt(x.float().pow(2).mean(-1, keepdim=True)
                                                                       + 1e-6)).to(x.dtype),
    "upcast twice, weight last": lambda x, w: (x.float() * torch.rsqrt(x.to(torch.float32).pow(2).mean(
        -1, keepdim=True) + 1e-6)).to(x.dtype) * w,
    "fp32 sum over n": lambda x, w: w * (x.float() * torch.rsqrt(torch.sum(x.float() * x.float(), dim=x.dim() - 1,
                                                                           keepdim=True) / x.shape[-1]
                                                                 + 1e-6)).to(x.dtype),
}


@pytest.mark.parametrize("name", list(SPELLINGS))
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_other_spellings_match(pm, name, dtype) -> None:
    """RMSNorm as people write it: every spelling becomes our kernel, with the eps it was given,
    and nothing else is launched."""
    g = torch.Generator().manual_seed(1)
    x, w = torch.randn(2, 5, 64, generator=g).to(dtype), torch.randn(64, generator=g).to(dtype)
    _assert_only_our_norm(SPELLINGS[name], [x, w], pm, name)


def _assert_only_our_norm(fn, inputs, pm, name) -> None:
    hits, code = compile_codegen(fn, inputs, pm, dynamic=[(0, 1)])
    assert hits == 1, name
    assert_our_kernel(code, "_rms_norm_kernel")
    assert "1e-06" in _kernel_args(code)
    assert "triton_" not in code.split("def call(")[1], "a kernel of Inductor's left next to ours"


@pytest.mark.parametrize("name", list(SPELLINGS))
def test_other_spellings_numerics_in_interpreter(interpreter, name) -> None:
    """Compiled by the backend and run in the interpreter: within bf16 tolerance of float64."""
    g = torch.Generator().manual_seed(2)
    x, w = torch.randn(3, 96, generator=g).to(torch.bfloat16), torch.randn(96, generator=g).to(torch.bfloat16)
    torch._dynamo.reset()
    out = torch.compile(SPELLINGS[name], backend="tri_inductor")(x, w)
    assert out.dtype == torch.bfloat16
    assert rel(out, R.reference_rms_norm(x.double(), w.double(), 1e-6)) < TOL[torch.bfloat16]


UNIT_SPELLINGS = {
    # RMSNorm without a weight (rms_norm.UNIT_SPELLINGS): Llama 4's q/k L2 norm, nn.RMSNorm(elementwise_affine=False)
    "no weight": lambda x: x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6),
    "no weight, fp32 (Llama 4)": lambda x: (x.float() * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True)
                                                                     + 1e-6)).type_as(x),
    "F.rms_norm, no weight": lambda x: torch.nn.functional.rms_norm(x, (x.shape[-1],), None, 1e-6),
}


@pytest.mark.parametrize("name", list(UNIT_SPELLINGS))
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_weightless_spellings_match(pm, name, dtype) -> None:
    x = torch.randn(2, 5, 64, generator=torch.Generator().manual_seed(3)).to(dtype)
    _assert_only_our_norm(UNIT_SPELLINGS[name], [x], pm, name)


@pytest.mark.parametrize("name", list(UNIT_SPELLINGS))
def test_weightless_spellings_numerics_in_interpreter(interpreter, name) -> None:
    x = torch.randn(3, 96, generator=torch.Generator().manual_seed(4)).to(torch.bfloat16)
    torch._dynamo.reset()
    out = torch.compile(UNIT_SPELLINGS[name], backend="tri_inductor")(x)
    assert out.dtype == torch.bfloat16
    assert rel(out, R.reference_rms_norm(x.double(), None, 1e-6)) < TOL[torch.bfloat16]


@pytest.mark.parametrize("rows,H", [(5, 100), (2, 20000)])  # one tile; two passes (H > MAX_FUSED_BLOCK)
def test_kernel_without_weight(poison, rows, H) -> None:
    x = torch.randn(rows, H, generator=torch.Generator().manual_seed(H))
    for offset in (0.0, 1.0):
        ref = R.reference_rms_norm(x, None, 1e-6, offset)
        assert rel(R.rms_norm(x, None, 1e-6, offset), ref) < TOL[torch.float32]


def test_hf_residual_add_then_norm_fuses(pm) -> None:
    m = _llama(torch.bfloat16)

    def layer_tail(h, residual):  # decoder layer: hidden = residual + hidden; norm(hidden)
        h = residual + h
        return m(h), h

    x, r = torch.randn(4, 64, dtype=torch.bfloat16), torch.randn(4, 64, dtype=torch.bfloat16)
    hits, code = compile_codegen(layer_tail, [x, r], pm)
    assert hits == 1
    assert_our_kernel(code, "_rms_norm_kernel")
    assert len(re.findall(r"\.run\(", code.split("def call(")[1])) == 1  # one kernel for add + norm


# (torch wrap on: vllm_ir nodes; off: the IR op's native body inlined, aten level)
VLLM_CASES = [(True, False, False), (False, False, False), (True, True, False), (False, True, False),
              (True, False, True), (True, True, True), (False, False, True), (False, True, True)]


@pytest.mark.parametrize("wrap, residual, gemma", VLLM_CASES,
                         ids=["ir-norm", "native-norm", "ir-add", "native-add", "ir-gemma", "ir-gemma-add",
                              "native-gemma", "native-gemma-add"])
def test_vllm_layers_match(vllm_ctx, pm, wrap: bool, residual: bool, gemma: bool) -> None:
    from vllm import ir
    from vllm.model_executor.layers.layernorm import GemmaRMSNorm, RMSNorm
    m = (GemmaRMSNorm if gemma else RMSNorm)(64, eps=1e-5).to(torch.bfloat16)
    m.weight.data.normal_()
    x, r = torch.randn(5, 64, dtype=torch.bfloat16), torch.randn(5, 64, dtype=torch.bfloat16)

    def fwd(x, r):
        # IR nodes: the default overload, as vLLM's VllmIRInplaceFunctionalizationPass leaves
        # ``fused_add_rms_norm.maybe_inplace`` before AOT; native: the IR op's Python body.
        if not residual:
            return m.forward_native(x)
        if gemma:
            return m.forward_native(x, r)
        return ir.ops.fused_add_rms_norm(x, r, m.weight, m.variance_epsilon)

    with ir.enable_torch_wrap(wrap):
        hits, code = compile_codegen(fwd, [x, r], pm)
    assert hits == 1
    assert_our_kernel(code, "_rms_norm_kernel")
    assert "torch.ops.vllm_ir" not in code
    args = _kernel_args(code)
    assert "1e-05" in args and ("1.0" if gemma else "0.0") in args


def _eager_rms(result, x, w, eps):
    result.copy_(R.reference_rms_norm(x, w, eps))


def _eager_add_rms(x, r, w, eps):
    out, res = R.reference_fused_add_rms_norm(x, r, w, eps)
    x.copy_(out)
    r.copy_(res)


@pytest.fixture
def c_ops():
    """Stand-ins for vLLM's CUDA schemas (vllm._C is not loadable on this machine)."""
    lib = torch.library.Library("_C", "FRAGMENT")
    lib.define("rms_norm(Tensor! result, Tensor input, Tensor weight, float epsilon) -> ()")
    lib.define("fused_add_rms_norm(Tensor! input, Tensor! residual, Tensor weight, float epsilon) -> ()")
    for name, fn in (("rms_norm", _eager_rms), ("fused_add_rms_norm", _eager_add_rms)):
        lib.impl(name, fn, "CPU")
        lib._register_fake(name, lambda *args: None)
    yield
    lib._destroy()


@pytest.mark.parametrize("residual", [False, True], ids=["rms_norm", "fused_add_rms_norm"])
def test_vllm_custom_op_form_matches(c_ops, residual: bool) -> None:
    pm = PatternMatcherPass()
    R.register_patterns(pm)
    w = torch.randn(64, dtype=torch.bfloat16)

    def forward_cuda(x, r):  # vLLM's vllm_c impls (vllm/kernels/vllm_c.py)
        if residual:
            torch.ops._C.fused_add_rms_norm(x, r, w, 1e-6)
            return x, r
        out = torch.empty_like(x)
        torch.ops._C.rms_norm(out, x, w, 1e-6)
        return out

    x, r = torch.randn(3, 64, dtype=torch.bfloat16), torch.randn(3, 64, dtype=torch.bfloat16)
    hits, code = compile_codegen(forward_cuda, [x, r], pm, enable_auto_functionalized_v2=False)
    assert hits == 1
    assert_our_kernel(code, "_rms_norm_kernel")
    assert "torch.ops._C" not in code and "1e-06" in _kernel_args(code)


def test_tri_inductor_backend_uses_our_kernel() -> None:
    """The same form through the project backend (all families' patterns, codegen-only)."""
    pytest.importorskip("transformers", reason="the Hugging Face form needs transformers")
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    FN_ = LlamaRMSNorm(64).to(torch.bfloat16)
    assert_our_kernel(backend_output_code(FN_, torch.randn(4, 64, dtype=torch.bfloat16)), "_rms_norm_kernel")


@pytest.mark.parametrize("gemma", [False, True], ids=["llama", "gemma"])
def test_two_fused_add_norms_in_one_piece(pm, gemma) -> None:
    """vLLM's piece between two attentions: o_proj -> add+norm -> MLP -> add+norm. The first
    new residual is read back as .to(float32), a bf16 round trip Inductor's joint-graph pass
    removes before our pass: both norms must still be ours (the first hands on its fp32 sum)."""
    x1, r, x2 = (torch.randn(6, 64, dtype=torch.bfloat16) for _ in range(3))
    w1, w2 = torch.randn(64, dtype=torch.bfloat16), torch.randn(64, dtype=torch.bfloat16)

    def add_norm(x, res, w):
        s = x.to(torch.float32) + res.to(torch.float32)
        new_res = s.to(x.dtype)
        h = s * torch.rsqrt(s.pow(2).mean(dim=-1, keepdim=True) + 1e-6)
        w = w.float() + 1.0 if gemma else w
        return (h.to(w.dtype) * w).to(x.dtype), new_res

    def piece(x1, r, x2, w1, w2):
        h1, res1 = add_norm(x1, r, w1)
        h2, res2 = add_norm(x2 * h1, res1, w2)  # stand-in for the MLP between the norms
        return h2, res2

    hits, code = compile_codegen(piece, [x1, r, x2, w1, w2], pm, dynamic=[(0, 0), (1, 0), (2, 0)])
    assert hits == 2, code
    assert_our_kernel(code, "_rms_norm_kernel")
    assert len(re.findall(r"_rms_norm_kernel_\d+\.run\(", code)) == 2
    assert "rsqrt" not in code.split("def call(")[0].split("def _rms_norm_kernel")[0]  # no Inductor norm


@pytest.mark.parametrize("single_tile", [True, False])
def test_no_fp64_math_when_inductor_types_eps_fp64(single_tile):
    """Inductor passes a Python float to a user Triton kernel as fp64 (Triton's own launcher:
    fp32). Compiled with that signature for sm_90, the kernel must convert eps once and keep
    the row's arithmetic in fp32: no fp64 multiply/add/rsqrt in the PTX."""
    import re

    const = dict(HAS_RESIDUAL=True, BLOCK=4096 if single_tile else 1024, SINGLE_TILE=single_tile,
                 STRIDED_HEADS=False, HAS_RESIDUAL2=False, STORE_RESIDUAL=True, HAS_W=True)
    ptx = sm90_ptx(R._rms_norm_kernel, {"x_ptr": "*bf16", "res_ptr": "*fp32", "res2_ptr": "*bf16", "w_ptr": "*bf16",
                                        "out_ptr": "*bf16", "res_out_ptr": "*fp32", "eps": "fp64",
                                        "w_offset": "fp64"}, const, num_warps=8)
    fp64_math = re.findall(r"\b(?:mul|fma|add|sub|div|sqrt|rsqrt)(?:\.\w+)*\.f64\b", ptx)
    assert not fp64_math, fp64_math[:5]


def test_weight_load_before_the_row_reduction():
    """Decode rows are latency-bound: the weight row must be in flight with x and the residual,
    not loaded after the cross-warp sum (a second memory round trip per launch; in vLLM decode
    steps our norm took ~0.5 us longer per launch than Inductor's with that order)."""
    const = dict(HAS_RESIDUAL=True, BLOCK=4096, SINGLE_TILE=True, STRIDED_HEADS=False, x_heads=1,
                 HAS_RESIDUAL2=False, STORE_RESIDUAL=True, HAS_W=True)
    ptx = sm90_ptx(R._rms_norm_kernel, {"x_ptr": "*bf16", "res_ptr": "*bf16", "res2_ptr": "*bf16", "w_ptr": "*bf16",
                                        "out_ptr": "*bf16", "res_out_ptr": "*bf16", "eps": "fp32",
                                        "w_offset": "fp32"}, const, num_warps=8)
    ops = global_memory_ops(ptx)
    first_barrier = ops.index("bar.sync")
    assert not any(o.startswith("ld.global") for o in ops[first_barrier:]), ops
    assert sum(o.startswith("ld.global") and ".v4." in o for o in ops[:first_barrier]) == 6, ops  # x, res, w: 2 x 16 B each
