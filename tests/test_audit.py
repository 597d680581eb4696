"""The auditor catches every kind of non-Triton kernel, and only those."""
from __future__ import annotations

import pytest
import torch

import tri_inductor
from tri_inductor.audit import audit_output_code


class TopK(torch.nn.Module):
    def forward(self, x):
        v, _ = torch.topk(x.relu(), 3, dim=-1)
        return v * 2


@torch.library.custom_op("tri_test::mystery", mutates_args=())
def mystery(x: torch.Tensor) -> torch.Tensor:
    return x * 3


@mystery.register_fake
def _(x):
    return torch.empty_like(x)


class CustomOp(torch.nn.Module):
    def forward(self, x):
        return torch.ops.tri_test.mystery(x.sin()) + 1


class Linear(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Linear(64, 32)

    def forward(self, x):
        return self.proj(x).tanh()


def _violation_ops(reports):
    return [v.op for r in reports for v in r.violations]


def test_planted_aten_fallback_topk_is_caught(codegen_only):
    reports = codegen_only(TopK(), [torch.randn(8, 64)])
    [entry] = [v for r in reports for v in r.violations]
    assert entry.op == "aten.topk"
    assert "topk" in entry.fx_nodes
    assert entry.source and "torch.topk(" in entry.source and "test_audit.py" in entry.source
    assert entry.hint and "topk" in entry.hint


def test_planted_custom_op_is_caught(codegen_only):
    reports = codegen_only(CustomOp(), [torch.randn(8, 64)])
    assert _violation_ops(reports) == ["tri_test.mystery"]
    [entry] = reports[0].violations
    assert "torch.ops.tri_test.mystery" in entry.name and "triton_op" in entry.hint


def test_planted_cublas_mm_is_caught(codegen_only):
    # Let cuBLAS back in through Inductor overrides: the auditor must name the extern call.
    opts = {"patterns": ["attention"], "gemm": "templates", "max_autotune_gemm": False,
            "max_autotune_gemm_backends": "ATEN,TRITON"}
    reports = codegen_only(Linear(), [torch.randn(16, 64)], options=opts)
    [entry] = [v for r in reports for v in r.violations]
    assert entry.name == "extern_kernels.addmm" and entry.op == "aten.addmm"
    assert entry.source and "self.proj(x)" in entry.source
    assert "cuBLAS" in entry.hint


def test_triton_only_linear_is_clean(codegen_only):
    reports = codegen_only(Linear(), [torch.randn(16, 64)])
    assert all(r.ok for r in reports)
    assert all(k.kind in ("inductor_triton", "triton_template", "our_triton") for r in reports for k in r.kernels)


def test_strict_fails_the_compile_with_the_report(codegen_only):
    with pytest.raises(Exception) as info:
        codegen_only(TopK(), [torch.randn(8, 64)], options={"strict": True})
    err = info.value
    while not isinstance(err, tri_inductor.TritonOnlyViolation) and \
            (getattr(err, "inner_exception", None) or err.__cause__) is not None:
        err = getattr(err, "inner_exception", None) or err.__cause__  # Dynamo wraps backend errors
    assert isinstance(err, tri_inductor.TritonOnlyViolation), repr(info.value)
    assert "aten.topk" in str(err) and "fix:" in str(err)


def test_default_mode_reports_and_still_runs_correctly(codegen_only):
    x = torch.randn(8, 64)
    reports = codegen_only(TopK(), [x])
    assert not reports[0].ok  # reported...
    out = torch.compile(TopK(), backend="tri_inductor", options={"codegen_only": True})(x)
    torch.testing.assert_close(out, TopK()(x), rtol=0, atol=0)  # ...and the graph still runs (eagerly here)


def test_unsafe_override_is_refused_in_strict_mode(codegen_only):
    with pytest.raises(Exception, match="max_autotune_gemm_backends"):
        codegen_only(Linear(), [torch.randn(4, 64)], options={"strict": True, "max_autotune_gemm_backends": "ATEN"})


def test_bad_option_names_itself():
    with pytest.raises(tri_inductor.OptionsError, match="unknown pattern family"):
        tri_inductor.TriInductorOptions.from_mapping({"patterns": ["rmsnorm"]})


def test_text_audit_matches_calls_not_words():
    # Comments and kernel sources mention aten ops freely; only calls count.
    code = '''
triton_poi_fused_0 = async_compile.triton('triton_poi_fused_0', """
@triton_heuristics.pointwise(size_hints={'x': 16})
@triton.jit
def triton_poi_fused_0(in_ptr0, xnumel, XBLOCK: tl.constexpr):
    # aten.mm( extern_kernels.mm( in a kernel source is not a call
    pass
""", device_str='cuda')
async_compile.wait(globals())
class Runner:
    def call(self, args):
        # Topologically Sorted Source Nodes: [mm], Original ATen: [aten.mm]
        buf0 = empty_strided_cuda((4, 4), (4, 1), torch.float32)
        triton_poi_fused_0.run(buf0, 16, stream=stream0)
        buf1 = torch.ops.aten.topk.default(buf0, 2)
        buf2 = reinterpret_tensor(buf0, (16,), (1,), 0)
        extern_kernels.bmm(buf0, buf0, out=buf0)
        buf0.zero_()
        return (buf2,)
'''
    report = audit_output_code(code)
    assert [k.kind for k in report.kernels] == ["inductor_triton", "non_triton", "non_triton", "non_triton"]
    assert [k.op for k in report.violations] == ["aten.topk", "aten.bmm", "aten.zero_"]
    assert report.kernels[0].name == "triton_poi_fused_0" and report.kernels[0].fx_nodes == ("mm",)


def test_torch_214_alignment_copy_is_allowed():
    # torch >= 2.13 wrappers re-align misaligned inputs (codegen/wrapper.py) instead of guarding.
    code = '''
from torch._C._dynamo.guards import copy_if_misaligned
triton_poi_fused_0 = async_compile.triton('triton_poi_fused_0', """
@triton.jit
def triton_poi_fused_0(in_ptr0, out_ptr0, xnumel, XBLOCK: tl.constexpr):
    pass
""", device_str='cuda')
def call(args):
    arg0_1, = args
    arg0_1 = copy_if_misaligned(arg0_1)
    arg1_1_orig = arg0_1
    arg1_1 = copy_if_misaligned(arg1_1_orig)
    buf0 = empty_strided_cuda((4, 4), (4, 1), torch.float32)
    triton_poi_fused_0.run(arg0_1, buf0, 16, stream=stream0)
    return (buf0,)
'''
    report = audit_output_code(code)
    assert report.ok and [k.kind for k in report.kernels] == ["inductor_triton"]


def test_our_kernels_have_no_default_parameters():
    """Inductor's launcher for an inlined user Triton kernel miscounts the arguments of a kernel
    whose parameters have defaults (on a GPU: "launcher() missing 2 required positional
    arguments: '_grid_1' and '_grid_2'"); the codegen-only path never runs that launcher, so
    this is checked here: every parameter of every kernel of ours is passed explicitly."""
    import inspect

    from triton.runtime.jit import JITFunction

    from tri_inductor.patterns import load_all

    found = 0
    for module in load_all().values():
        for name, obj in vars(module).items():
            if isinstance(obj, JITFunction) and obj.__module__ == module.__name__:
                found += 1
                params = inspect.signature(obj.fn).parameters.values()
                defaults = [p.name for p in params if p.default is not inspect.Parameter.empty]
                assert not defaults, f"{name}: parameters with defaults {defaults}"
    assert found >= 6


def test_runtime_census_classes_torch_native_cutedsl_kernels_as_non_triton():
    # torch >= 2.13 + nvidia-cutlass-dsl: eager topk/_fused_rms_norm/scatter_add/sum may launch
    # CuTeDSL kernels (the plugin sets TORCH_DISABLE_NATIVE_JIT=1; the census must still see them).
    from tri_inductor.audit.runtime import classify_kernel

    names = {"_rms_norm_kernel", "kernel_unified_attention"}
    for name in ("kernel_cutlass_kernel_torch_native_topk_0", "kernel_cutlass_rmsnorm_fwd_0", "cutedsl_scatter_add"):
        assert classify_kernel(name, names | {name}) == (False, "cutedsl"), name
    assert classify_kernel("_rms_norm_kernel", names) == (True, "triton")
    assert classify_kernel("triton_poi_fused_add_0", names) == (True, "triton")
    assert classify_kernel("nvjet_sm90_tst_64x48_64x15_2x4_h_bz_TNT", names) == (False, "cublas")


def test_collectives_are_communication_not_violations():
    """Tensor parallelism: vLLM's all-reduce op and torch's functional collectives in a wrapper
    are listed as communication, apart from compute, and break nothing; an ATen op still does."""
    from tri_inductor.audit.output_code import audit_output_code

    code = '''
def call(args):
    buf1 = torch.ops.vllm.all_reduce.default(buf0, 'tp:0')
    buf2 = torch.ops._c10d_functional.all_reduce.default(buf1, 'sum', '0')
    buf3 = torch.ops._c10d_functional.wait_tensor.default(buf2)
    buf4 = torch.ops.aten.topk.default(buf3, 2)
'''
    report = audit_output_code(code)
    assert [k.kind for k in report.kernels] == ["communication"] * 3 + ["non_triton"]
    assert [k.op for k in report.violations] == ["aten.topk"]
    assert "communication 3" in report.summary_line()


def test_nccl_kernels_are_communication_at_run_time():
    from tri_inductor.audit.runtime import classify_kernel, counts_as_non_triton

    for name in ("ncclDevKernel_AllReduce_Sum_bf16_RING_LL(ncclDevKernelArgsStorage<4096ul>)",
                 "ncclKernel_AllGather_RING_LL_Sum_int8_t"):
        ok, lib = classify_kernel(name, set())
        assert (ok, lib) == (False, "communication") and not counts_as_non_triton(ok, lib), name
    assert counts_as_non_triton(*classify_kernel("nvjet_sm90_tst_64x48_64x15_2x4_h_bz_TNT", set()))
    assert not counts_as_non_triton(*classify_kernel("triton_poi_fused_add_0", set()))
