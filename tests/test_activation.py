"""silu_and_mul / gelu_and_mul: kernel numerics (Triton interpreter) and FX patterns (codegen-only).

Interpreter: ``launch`` runs real CPU tensors through ``triton.runtime.interpreter.InterpretedFunction``
directly; TRITON_INTERPRET=1 is *not* needed (and is not set here), provided the kernel calls only
Triton builtins (checked on triton 3.6: library ``@triton.jit`` helpers such as ``tl.sigmoid`` raise
"Cannot call @triton.jit'd outside of the scope of a kernel" in that mode).
"""
from __future__ import annotations

import pytest
import torch
from torch._inductor.pattern_matcher import PatternMatcherPass

from pattern_harness import assert_our_kernel, backend_output_code, compile_codegen, global_memory_ops, rel, sm90_ptx
from tri_inductor.patterns import activation as A

# ‖out − ref‖ / ‖ref‖ against the float64 reference.
TOL = {torch.bfloat16: 1e-2, torch.float16: 2e-3, torch.float32: 1e-5}
SHAPES = [(1, 8), (3, 96), (17, 1000), (5, 4096), (2, 3, 600), (3, 5000)]  # 5000: two column blocks a row, the last ragged



@pytest.mark.parametrize("dtype", list(TOL))
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("act", ["silu", "none", "tanh"])
def test_kernel_matches_reference(act: str, shape, dtype, poison) -> None:
    x = torch.randn(*shape, dtype=dtype) * 3
    if act == "silu":
        out, ref = A.silu_and_mul(x), A.reference_silu_and_mul(x)
    else:
        out, ref = A.gelu_and_mul(x, act), A.reference_gelu_and_mul(x, act)
    assert out.shape == (*shape[:-1], shape[-1] // 2) and out.dtype == dtype
    assert not out.isnan().any()  # every element written (poisoned)
    assert rel(out, ref) < TOL[dtype]


@pytest.mark.parametrize("width", [1000, 2048, 2500])
def test_runtime_width_matches_static(width, poison) -> None:
    # D = 0 (a symbolic width: runtime division and column mask) against the static width
    # (constant split, no mask when BLOCK divides it): identical outputs, bit for bit.
    from tri_inductor.patterns._launch import launch

    x = torch.randn(9, 2 * width, dtype=torch.bfloat16) * 3
    block, warps = A._launch_config(width, 2)
    outs = []
    for static in (width, 0):
        out = torch.full((9, width), float("nan"), dtype=torch.bfloat16)
        launch(A._gated_act_kernel, (9 * -(-width // block),), x, out, width, x.stride(0), out.stride(0),
               ACT=A._ACTS["silu"], BLOCK=block, D=static, USE_PDL=False, num_warps=warps)
        outs.append(out)
    assert not outs[0].isnan().any() and torch.equal(outs[0], outs[1])
    assert rel(outs[0], A.reference_silu_and_mul(x)) < TOL[torch.bfloat16]


@pytest.mark.parametrize("width", [4096, 5000, 0])  # 0: the runtime-width (symbolic) form
def test_programmatic_dependent_launch_in_sm90_code(width) -> None:
    """With USE_PDL the sm_90 code waits for the previous grid before its first global access and
    signals its dependents after the loads, before the store (the static-width, ragged and
    runtime-width paths alike); without it, neither instruction is there."""
    const = dict(ACT=A._ACTS["silu"], BLOCK=1024, D=width)
    ops = {}
    for pdl in (True, False):
        ptx = sm90_ptx(A._gated_act_kernel, {"x_ptr": "*bf16", "out_ptr": "*bf16"}, {**const, "USE_PDL": pdl}, num_warps=4)
        ops[pdl] = [o for o in global_memory_ops(ptx, griddep=True) if o != "bar.sync"]
    assert ops[True][0] == "griddepcontrol.wait", ops[True]
    first_store = next(i for i, o in enumerate(ops[True]) if o.startswith("st.global"))
    assert ops[True][first_store - 1] == "griddepcontrol.launch_dependents", ops[True]
    assert all(o.startswith("ld.global") for o in ops[True][1:first_store - 1]), ops[True]
    assert ops[True].count("griddepcontrol.wait") == ops[True].count("griddepcontrol.launch_dependents") == 1
    assert not any(o.startswith("griddepcontrol") for o in ops[False]), ops[False]


def test_strided_rows(poison) -> None:
    # A row-strided input (a column slice of a wider buffer): read through the row stride.
    wide = torch.randn(7, 300, dtype=torch.bfloat16)
    x = wide[:, :200]
    out = A.silu_and_mul(x)
    assert not out.isnan().any()
    assert rel(out, A.reference_silu_and_mul(x)) < TOL[torch.bfloat16]


# ----------------------------------------------------------------------------------- patterns
@pytest.fixture(scope="module")
def pm() -> PatternMatcherPass:
    pm = PatternMatcherPass()
    A.register_patterns(pm)
    return pm


@pytest.mark.parametrize("form, dtype", [("silu", torch.bfloat16), ("silu", torch.float32),
                                         ("none", torch.bfloat16), ("tanh", torch.bfloat16)])
def test_vllm_layers_match(vllm_ctx, pm, form: str, dtype) -> None:
    from vllm.model_executor.layers.activation import GeluAndMul, SiluAndMul

    layer = SiluAndMul() if form == "silu" else GeluAndMul(approximate=form)
    x = torch.randn(5, 2 * 48, dtype=dtype)
    hits, code = compile_codegen(lambda t: layer.forward_native(t) + 1, [x], pm)
    assert hits == 1
    assert_our_kernel(code, "_gated_act_kernel")
    assert f"ACT': {A._ACTS[form]}" in code  # the right activation was chosen
    # the replacement computes what the layer computes
    ref = layer.forward_native(x)
    ours = A.silu_and_mul(x) if form == "silu" else A.gelu_and_mul(x, form)
    assert rel(ours, ref.double()) < TOL[dtype]


@pytest.mark.parametrize("gate_first", [False, True], ids=["phi3_up_times_act", "act_times_up"])
def test_chunk_form_matches(pm, gate_first) -> None:
    def mlp(x):  # transformers Phi3MLP: gate, up = gate_up.chunk(2, -1); up * act(gate)
        gate, up = x.chunk(2, dim=-1)
        g = torch.nn.functional.silu(gate)
        return g * up if gate_first else up * g

    x = torch.randn(3, 2, 64, dtype=torch.bfloat16)
    hits, code = compile_codegen(mlp, [x], pm)
    assert hits == 1
    assert_our_kernel(code, "_gated_act_kernel")
    assert rel(A.silu_and_mul(x), mlp(x.double())) < TOL[torch.bfloat16]


def _eager(fn):
    def impl(out: torch.Tensor, x: torch.Tensor) -> None:
        out.copy_(fn(x))
    return impl


@pytest.fixture
def c_ops():
    """Stand-ins for vLLM's CUDA schemas (vllm._C is not loadable on this machine)."""
    lib = torch.library.Library("_C", "FRAGMENT")
    for name, fn in (("silu_and_mul", A.reference_silu_and_mul),
                     ("gelu_tanh_and_mul", lambda x: A.reference_gelu_and_mul(x, "tanh"))):
        lib.define(f"{name}(Tensor! result, Tensor input) -> ()")
        lib.impl(name, _eager(fn), "CPU")
        lib._register_fake(name, lambda out, x: None)
    yield
    lib._destroy()


@pytest.mark.parametrize("name, act", [("silu_and_mul", "silu"), ("gelu_tanh_and_mul", "tanh")])
def test_vllm_custom_op_form_matches(c_ops, name: str, act: str) -> None:
    pm = PatternMatcherPass()
    A.register_patterns(pm)
    op = getattr(torch.ops._C, name)

    def forward_cuda(x):  # vLLM SiluAndMul.forward_cuda
        out = torch.empty(x.shape[:-1] + (x.shape[-1] // 2,), dtype=x.dtype, device=x.device)
        op(out, x)
        return out

    hits, code = compile_codegen(forward_cuda, [torch.randn(4, 64, dtype=torch.bfloat16)], pm,
                                 enable_auto_functionalized_v2=False)  # as vLLM compiles
    assert hits == 1
    assert_our_kernel(code, "_gated_act_kernel")
    assert f"ACT': {A._ACTS[act]}" in code
    assert "torch.ops._C" not in code


def test_tri_inductor_backend_uses_our_kernel() -> None:
    """The same form through the project backend (all families' patterns, codegen-only)."""
    def FN_(x):  # vLLM SiluAndMul.forward_native
        d = x.shape[-1] // 2
        return torch.nn.functional.silu(x[..., :d]) * x[..., d:]
    assert_our_kernel(backend_output_code(FN_, torch.randn(4, 64, dtype=torch.bfloat16)), "_gated_act_kernel")


def test_traced_kernel_asks_for_pdl_and_keeps_its_input(monkeypatch) -> None:
    """With TRI_INDUCTOR_PDL=1, on the (fake) sm_90 the traced kernel is compiled with
    USE_PDL=True, the constant the Inductor launcher hook (_pdl.py) keys on, and Inductor's mutation analysis still reads it
    (its PDL instructions are pure asm): no "assuming every input is mutated" fallback, which
    would copy the input first. Caches off: a cached graph skips the analysis."""
    import logging

    def FN_(x):
        d = x.shape[-1] // 2
        return torch.nn.functional.silu(x[..., :d]) * x[..., d:] + 1

    monkeypatch.setenv("TRI_INDUCTOR_PDL", "1")
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # torch's loggers do not propagate to pytest's caplog
    logger = logging.getLogger("torch._dynamo")  # triton_kernel_wrap logs there
    logger.addHandler(handler)
    try:
        with torch._inductor.config.patch(force_disable_caches=True):
            code = backend_output_code(FN_, torch.randn(4, 64, dtype=torch.bfloat16))
    finally:
        logger.removeHandler(handler)
    assert not [r.getMessage() for r in records if "identify_mutated_tensors" in r.getMessage()]
    assert_our_kernel(code, "_gated_act_kernel")
    assert "'USE_PDL': True" in code and "def pdl_wait" in code


def test_bad_input_names_the_op_and_the_way_out() -> None:
    with pytest.raises(RuntimeError, match=r"silu_and_mul: last dim 5 must be even"):
        A.silu_and_mul(torch.randn(2, 5))
    with pytest.raises(RuntimeError, match=r"gelu_and_mul: approximate='fast'; use 'none' \(erf\) or 'tanh'"):
        A.gelu_and_mul(torch.randn(2, 4), "fast")


# ---------------------------------------------------------------------------------------- GPU
def _chain(x):
    # Each kernel reads what the one before it wrote: with PDL a missing or misplaced wait
    # reads the previous replay's values.
    return A.silu_and_mul(A.silu_and_mul(A.silu_and_mul(x)))


def _chain_reference(x):
    for _ in range(3):
        x = A.reference_silu_and_mul(x).to(torch.bfloat16)  # rounded as each kernel stores
    return x.double()


@pytest.mark.gpu
@pytest.mark.parametrize("how", ["eager", "tri_inductor"])
def test_gpu_pdl_chain_in_cuda_graph_reads_fresh_data(how, monkeypatch) -> None:
    """Three dependent SiLU-and-mul kernels launched with PDL, replayed in a CUDA graph on new
    inputs: every replay matches the float64 reference (so each kernel waited for the one
    before it); under torch.compile the Inductor launcher of our kernel has the PDL attribute."""
    import gc

    from torch._inductor.runtime.triton_heuristics import TritonCompileResult

    monkeypatch.setenv("TRI_INDUCTOR_PDL", "1")
    assert A.pdl_enabled(torch.device("cuda")), "needs an sm_90+ GPU"
    torch._dynamo.reset()
    fn = _chain if how == "eager" else torch.compile(_chain, backend="tri_inductor")
    g = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(4096, 8 * 1024, device="cuda", generator=g).to(torch.bfloat16)
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        fn(x)  # compile / warm up outside the capture
    torch.cuda.current_stream().wait_stream(s)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = fn(x)
    for i in range(5):
        x.copy_(torch.randn(x.shape, device="cuda", generator=g).to(torch.bfloat16) * (1 + i))
        graph.replay()
        torch.cuda.synchronize()
        assert rel(out, _chain_reference(x)) < TOL[torch.bfloat16], f"replay {i}"
    if how == "tri_inductor":
        ours = [r for r in gc.get_objects() if type(r) is TritonCompileResult  # (isinstance fails on dead weakproxies)
                and r.compile_meta.get("constants", {}).get("USE_PDL") is True]
        assert ours and all(r.kernel.run.launch_pdl for r in ours)


# ----------------------------------------------------------------------------- transformers' MLP forms

def _gelu_new(x):  # transformers NewGELUActivation (GPT-2, GPT-J "gelu_new")
    import math

    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3.0))))


TWO_FORMS = {  # act_fn(gate_proj(x)) * up_proj(x): two tensors, either product order
    "silu": (lambda a, b: torch.nn.functional.silu(a) * b, "silu"),
    "silu_up_first": (lambda a, b: b * torch.nn.functional.silu(a), "silu"),
    "silu_as_sigmoid": (lambda a, b: a * torch.sigmoid(a) * b, "silu"),
    "silu_as_sigmoid_up_first": (lambda a, b: b * (a * a.sigmoid()), "silu"),
    "gelu_tanh": (lambda a, b: torch.nn.functional.gelu(a, approximate="tanh") * b, "tanh"),
    "gelu": (lambda a, b: torch.nn.functional.gelu(a) * b, "none"),
}


@pytest.mark.parametrize("form", list(TWO_FORMS))
def test_two_tensor_forms_match(pm, form) -> None:
    fn, act = TWO_FORMS[form]
    a, b = torch.randn(2, 3, 96, dtype=torch.bfloat16), torch.randn(2, 3, 96, dtype=torch.bfloat16)
    hits, code = compile_codegen(fn, [a, b], pm)
    assert hits == 1
    assert_our_kernel(code, "_act_two_kernel")
    assert f"ACT': {A._ACTS[act]}" in code
    assert rel(A.act_and_mul(a, b, act), fn(a.double(), b.double())) < TOL[torch.bfloat16]


PLAIN_FORMS = {
    "F.gelu": (torch.nn.functional.gelu, "none"),
    "F.gelu_tanh": (lambda x: torch.nn.functional.gelu(x, approximate="tanh"), "tanh"),
    "gelu_new": (_gelu_new, "tanh"),
}


@pytest.mark.parametrize("form", list(PLAIN_FORMS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_plain_gelu_forms_match(pm, form, dtype) -> None:
    fn, approx = PLAIN_FORMS[form]
    x = torch.randn(4, 130, dtype=dtype)
    hits, code = compile_codegen(fn, [x], pm)
    assert hits == 1
    assert_our_kernel(code, "_act_two_kernel")
    assert rel(A.gelu(x, approx), fn(x.double())) < TOL[dtype]


def test_softcap_tanh_is_no_gelu(pm) -> None:
    def softcap(x):  # Gemma 2's logit soft-capping: a tanh, not a GELU; left alone, not a near miss
        return torch.tanh(x / 30.0) * 30.0

    hits, code = compile_codegen(softcap, [torch.randn(4, 64)], pm)
    assert hits == 0
