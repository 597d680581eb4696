"""vLLM 0.26's eager linears and SiluAndMul on our kernels (tri_inductor/vllm_eager_ops.py): the
MoE router gate (ReplicatedLinear, GateLinear with fp32 logits), shared-expert projections and
SiLU-and-mul, on the CPU (our kernels in Triton's interpreter) against float64 references; with
tri_inductor inactive or under torch.compile tracing, vLLM's original runs, unchanged."""
from __future__ import annotations

import types

import pytest
import torch

from pattern_harness import rel
from tri_inductor import vllm_eager_ops as E
from tri_inductor import vllm_moe
from tri_inductor.patterns.activation import reference_silu_and_mul

pytest.importorskip("vllm", reason="vLLM 0.26 needed for its layers")

BF16_RTOL = 2e-2  # bf16 output: one rounding of each element (2^-8 relative) and fp32 accumulation
FP32_RTOL = 1e-5  # fp32 output of bf16 operands: exact products, fp32 sums; no bf16 rounding anywhere


@pytest.fixture
def hooked(monkeypatch, vllm_ctx):
    """vLLM's three targets hooked, each over a spy that records calls of vLLM's original; our
    eager path taken for CPU tensors (kernels interpreted); TP size 1; vLLM's CUDA GEMM dispatch
    (``F.linear``) instead of its CPU one (which needs weights repacked at load time).
    Originals restored afterwards; tri_inductor inactive until a test activates it."""
    from vllm.model_executor.layers import activation, linear
    from vllm.model_executor.layers import utils as layer_utils
    from vllm.model_executor.layers.fused_moe.router import gate_linear

    from vllm.distributed import parallel_state

    monkeypatch.setattr(parallel_state, "get_tp_group", lambda: types.SimpleNamespace(rank_in_group=0, world_size=1))
    monkeypatch.setattr(linear, "dispatch_unquantized_gemm", lambda: layer_utils.default_unquantized_gemm)
    # linear.py binds current_platform at its import: if that ran under test_vllm_plugin's fake
    # CUDA platform, vLLM's apply would take its CUDA-only batch-invariant path here
    import vllm.platforms

    monkeypatch.setattr(linear, "current_platform", vllm.platforms.current_platform)
    monkeypatch.setattr(E, "DEVICE", "cpu")
    monkeypatch.setattr(E, "_warmed", set())
    calls = {"apply": 0, "gate": 0, "silu": 0}

    def original(fn):  # below a wrapper of ours (the plugin may have installed one already)
        return fn.__wrapped__ if getattr(fn, "_tri_inductor", False) else fn

    real_apply = original(linear.UnquantizedLinearMethod.__dict__["apply"])
    real_gate = original(gate_linear.GateLinear.__dict__["forward"])
    real_silu = original(activation.SiluAndMul.__dict__["forward_native"].__func__)

    def apply(self, layer, x, bias=None):
        calls["apply"] += 1
        return real_apply(self, layer, x, bias)

    def forward(self, x):
        calls["gate"] += 1
        return real_gate(self, x)

    def forward_native(x):
        calls["silu"] += 1
        return real_silu(x)

    monkeypatch.setattr(linear.UnquantizedLinearMethod, "apply", apply)
    monkeypatch.setattr(gate_linear.GateLinear, "forward", forward)
    monkeypatch.setattr(activation.SiluAndMul, "forward_native", staticmethod(forward_native))
    E.hook_linear(linear)
    E.hook_gate_linear(gate_linear)
    E.hook_activation(activation)
    assert linear.UnquantizedLinearMethod.apply.__wrapped__ is apply
    assert activation.SiluAndMul.forward_native.__wrapped__ is forward_native
    vllm_moe.activate(False)
    yield types.SimpleNamespace(calls=calls, linear=linear, gate_linear=gate_linear, activation=activation,
                                real_apply=real_apply, real_gate=real_gate, real_silu=real_silu)
    vllm_moe.activate(False)


def _fill(layer, seed: int):
    g = torch.Generator().manual_seed(seed)
    for p in layer.parameters():
        p.data.copy_(torch.randn(p.shape, generator=g) / 4)
    return layer


def _replicated(L, k, n, bias=False, dtype=torch.bfloat16, seed=0):
    return _fill(L.linear.ReplicatedLinear(k, n, bias=bias, params_dtype=dtype), seed)


def _gate_linear(L, k, n, out_dtype, seed=0):
    return _fill(L.gate_linear.GateLinear(k, n, out_dtype=out_dtype, params_dtype=torch.bfloat16), seed)


def _ref(x, layer):
    y = x.double() @ layer.weight.double().t()
    return y + layer.bias.double() if getattr(layer, "bias", None) is not None else y


def _no_gemm(monkeypatch):
    def fail(*a, **k):
        raise AssertionError("our GEMM ran")
    monkeypatch.setattr(E, "gemm", fail)


# ---------------------------------------------------------------- (a) inactive: vLLM's original


def test_inactive_every_wrapper_calls_vllms_original_unchanged(hooked, monkeypatch):
    """A process serving vLLM's own backend: each call goes to the original with its arguments
    and returns exactly the original's result; our kernels never run."""
    L = hooked
    _no_gemm(monkeypatch)
    monkeypatch.setattr("tri_inductor.patterns.activation.launch_gated",
                        lambda *a, **k: pytest.fail("our activation kernel ran"))
    x = torch.randn(5, 64, dtype=torch.bfloat16)
    for bias in (False, True):
        layer = _replicated(L, 64, 24, bias=bias)
        n = L.calls["apply"]
        got, _ = layer(x)
        assert L.calls["apply"] == n + 1
        assert torch.equal(got, L.real_apply(layer.quant_method, layer, x, layer.bias))
        # keyword call forms pass through as given
        assert torch.equal(layer.quant_method.apply(layer, x=x, bias=layer.bias),
                           L.real_apply(layer.quant_method, layer, x, layer.bias))
    gate = _gate_linear(L, 64, 16, torch.float32)
    n = L.calls["gate"]
    out, b = gate(x)
    assert L.calls["gate"] == n + 1 and b is None and out.dtype == torch.float32
    assert torch.equal(out, L.real_gate(gate, x)[0])
    h = torch.randn(5, 96, dtype=torch.bfloat16)
    n = L.calls["silu"]
    assert torch.equal(L.activation.SiluAndMul.forward_native(h), L.real_silu(h))
    assert L.calls["silu"] == n + 1


def test_active_but_uncovered_forms_call_the_original(hooked, monkeypatch):
    """Active, but a form we do not cover: fp32 linears, a dtype mismatch, batch-invariant mode,
    a non-unit last stride for SiluAndMul, a GateLinear returning its bias unadded."""
    L = hooked
    _no_gemm(monkeypatch)
    vllm_moe.activate()
    fp32 = _replicated(L, 32, 8, dtype=torch.float32)
    x32 = torch.randn(3, 32)
    n = L.calls["apply"]
    assert torch.equal(fp32(x32)[0], L.real_apply(fp32.quant_method, fp32, x32, None))
    bf = _replicated(L, 32, 8)
    with pytest.raises(RuntimeError):  # vLLM's own F.linear rejects fp16 x bf16: proof it ran
        bf(x32.to(torch.float16))
    import vllm.envs as envs

    monkeypatch.setattr(envs, "VLLM_BATCH_INVARIANT", True, raising=False)
    assert E._batch_invariant()
    xb = torch.randn(3, 32, dtype=torch.bfloat16)
    assert torch.equal(bf.quant_method.apply(bf, xb), L.real_apply(bf.quant_method, bf, xb, None))
    assert L.calls["apply"] == n + 3
    h = torch.randn(4, 96, dtype=torch.bfloat16).t().contiguous().t()  # last stride 4, not 1
    assert h.stride(-1) != 1
    n = L.calls["silu"]
    assert torch.equal(L.activation.SiluAndMul.forward_native(h), L.real_silu(h))
    assert L.calls["silu"] == n + 1
    gate = _gate_linear(L, 32, 8, None)
    gate.skip_bias_add = True
    n = L.calls["gate"]
    gate(xb)
    assert L.calls["gate"] == n + 1


# ---------------------------------------------------------------- (b) active: our kernels


@pytest.mark.parametrize("M", [1, 13])
def test_router_gate_replicated_linear(hooked, M):
    """Qwen3-MoE / Mixtral: the runner's ``self.gate(hidden_states)`` (a ReplicatedLinear)."""
    L = hooked
    vllm_moe.activate()
    gate = _replicated(L, 64, 60)
    x = torch.randn(M, 64, dtype=torch.bfloat16)
    n = L.calls["apply"]
    logits, b = gate(x)
    assert L.calls["apply"] == n and b is None  # ours, not vLLM's
    assert logits.dtype == torch.bfloat16 and logits.shape == (M, 60)
    assert rel(logits, _ref(x, gate)) < BF16_RTOL


@pytest.mark.parametrize("M", [1, 7, 33])
def test_gate_linear_fp32_logits_written_by_our_gemm(hooked, M):
    """DeepSeek-V3's GateLinear (bf16 weight, out_dtype fp32): fp32 logits, as accurate as fp32
    accumulation allows (a bf16 result converted would be ~1e-3 off)."""
    L = hooked
    vllm_moe.activate()
    gate = _gate_linear(L, 64, 32, torch.float32)
    x = torch.randn(M, 64, dtype=torch.bfloat16)
    n = L.calls["gate"], L.calls["apply"]
    logits, b = gate(x)
    assert (L.calls["gate"], L.calls["apply"]) == n and b is None
    assert logits.dtype == torch.float32 and logits.shape == (M, 32)
    assert rel(logits, _ref(x, gate)) < FP32_RTOL


def test_gate_linear_without_out_dtype(hooked):
    L = hooked
    vllm_moe.activate()
    gate = _gate_linear(L, 64, 16, None)
    x = torch.randn(5, 64, dtype=torch.bfloat16)
    logits, b = gate(x)
    assert logits.dtype == torch.bfloat16 and b is None and L.calls["gate"] == 0
    assert rel(logits, _ref(x, gate)) < BF16_RTOL


@pytest.mark.parametrize("cfg", ["ptr", "ptr_splitk", "gemv", "gemv_splitk"])
def test_our_gemm_stores_fp32_from_every_kernel(cfg):
    """mm_launch(out_dtype=fp32) on each kernel form the router GEMM can get: the kernels cast
    the fp32 accumulator to C's element type, so an fp32 C holds the unrounded sums."""
    from tri_inductor.patterns.gemm.configs import Cfg, Kind
    from tri_inductor.patterns.gemm.ops import mm_launch

    cfgs = {"ptr": Cfg(16, 32, 32, 1, 1, 4, 2), "ptr_splitk": Cfg(16, 32, 32, 1, 2, 4, 2),
            "gemv": Cfg(1, 32, 32, 1, 1, 4, 2, Kind.GEMV), "gemv_splitk": Cfg(1, 32, 32, 1, 2, 4, 2, Kind.GEMV)}
    torch.manual_seed(3)
    a = torch.randn(3, 128, dtype=torch.bfloat16)
    w = torch.randn(48, 128, dtype=torch.bfloat16)
    bias = torch.randn(48, dtype=torch.bfloat16)
    out = mm_launch(a, w.t(), bias, cfgs[cfg], out_dtype=torch.float32)
    assert out.dtype == torch.float32
    ref = a.double() @ w.double().t() + bias.double()
    assert rel(out, ref) < FP32_RTOL


@pytest.mark.parametrize("bias", [False, True], ids=["no_bias", "bias"])
def test_shared_expert_projections(hooked, bias):
    """A shared expert's gate_up (MergedColumnParallelLinear) and down (RowParallelLinear)
    projections, and Qwen's shared_expert_gate (N = 1), with and without bias, 3-D input."""
    L = hooked
    vllm_moe.activate()
    h, i = 64, 48
    gate_up = _fill(L.linear.MergedColumnParallelLinear(h, [i, i], bias=bias, params_dtype=torch.bfloat16), 1)
    down = _fill(L.linear.RowParallelLinear(i, h, bias=bias, params_dtype=torch.bfloat16), 2)
    se_gate = _replicated(L, h, 1, bias=bias, seed=3)
    x = torch.randn(2, 5, h, dtype=torch.bfloat16)
    y, _ = gate_up(x)
    assert y.shape == (2, 5, 2 * i) and rel(y, _ref(x, gate_up)) < BF16_RTOL
    z = torch.randn(9, i, dtype=torch.bfloat16)
    out, _ = down(z)
    assert out.shape == (9, h) and rel(out, _ref(z, down)) < BF16_RTOL
    g, _ = se_gate(x)
    assert g.shape == (2, 5, 1) and rel(g, _ref(x, se_gate)) < BF16_RTOL
    assert L.calls["apply"] == 0


@pytest.mark.parametrize("shape", [(7, 96), (2, 3, 64), (1, 2048)])
def test_silu_and_mul(hooked, shape):
    L = hooked
    vllm_moe.activate()
    x = torch.randn(*shape, dtype=torch.bfloat16)
    out = L.activation.SiluAndMul.forward_native(x)
    assert L.calls["silu"] == 0
    assert out.shape == (*shape[:-1], shape[-1] // 2) and out.dtype == torch.bfloat16
    assert rel(out, reference_silu_and_mul(x)) < BF16_RTOL
    sliced = torch.randn(6, 200, dtype=torch.bfloat16)[:, :96]  # rows apart, last dim contiguous
    assert rel(L.activation.SiluAndMul.forward_native(sliced), reference_silu_and_mul(sliced)) < BF16_RTOL
    assert L.calls["silu"] == 0


# ---------------------------------------------------------------- (c) traced: vLLM's code


def test_traced_calls_keep_vllms_code(hooked, monkeypatch):
    """Under torch.compile (vLLM's model compile, CustomOp.maybe_compile) the wrappers trace
    vLLM's original: the graph holds its F.linear / silu ops, our kernels never run."""
    L = hooked
    vllm_moe.activate()
    _no_gemm(monkeypatch)
    monkeypatch.setattr("tri_inductor.patterns.activation.launch_gated",
                        lambda *a, **k: pytest.fail("our activation kernel ran"))
    lin = _replicated(L, 32, 16, bias=True)
    gate = _gate_linear(L, 32, 8, torch.float32)
    graphs = []

    def backend(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    def fn(x, h):
        return lin(x)[0], gate(x)[0], L.activation.SiluAndMul.forward_native(h)

    x = torch.randn(4, 32, dtype=torch.bfloat16)
    h = torch.randn(4, 64, dtype=torch.bfloat16)
    got = torch.compile(fn, backend=backend, fullgraph=True)(x, h)
    assert len(graphs) == 1
    targets = {getattr(n.target, "__name__", str(n.target)) for n in graphs[0].graph.nodes}
    assert "linear" in targets and "silu" in targets, targets
    vllm_moe.activate(False)
    want = fn(x, h)  # vLLM's own eager path
    for g, w in zip(got, want):
        assert g.dtype == w.dtype and torch.equal(g, w)


# ---------------------------------------------------------------- warm-up


def test_first_eager_gemm_of_a_shape_warms_every_bucket_once(hooked, monkeypatch):
    from tri_inductor.patterns.gemm import configs as C

    L = hooked
    vllm_moe.activate()
    seen = []
    real_warm_up = E.warm_up
    monkeypatch.setattr(E, "_can_warm", lambda a: True)
    monkeypatch.setattr(E, "warm_up", lambda run, a, rows: seen.append((a.shape[1], rows)))
    monkeypatch.setattr(E, "_max_tokens", lambda: C.BUCKETS[-1] + 1)
    gate = _replicated(L, 32, 8)
    x = torch.randn(3, 32, dtype=torch.bfloat16)
    gate(x)
    gate(x)
    gate(torch.randn(1, 32, dtype=torch.bfloat16))
    assert seen == [(32, C.BUCKETS[-1] + 1)]  # once per shape
    g32 = _gate_linear(L, 32, 8, torch.float32)
    g32(x)
    assert len(seen) == 2  # an fp32 output is another kernel: warmed too

    # the sizes warm_up launches cover every M bucket, the top one included
    ran = []
    real_warm_up(lambda a: ran.append(a.shape[0]), x, C.BUCKETS[-1] + 1)
    assert {C.bucket_of(m) for m in ran} == {C.bucket_of(m) for m in range(1, 2 * C.BUCKETS[-1])}


def test_no_warm_up_during_cuda_graph_capture(monkeypatch):
    gpu = types.SimpleNamespace(is_cuda=True)
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: True)
    assert not E._can_warm(gpu)
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: False)
    assert E._can_warm(gpu) and not E._can_warm(torch.zeros(1))


def test_warm_rows_from_the_config_capped_at_the_top_bucket(vllm_ctx):
    from vllm.config import get_current_vllm_config

    from tri_inductor.patterns.gemm.configs import BUCKETS

    tokens = get_current_vllm_config().scheduler_config.max_num_batched_tokens
    assert E._max_tokens() == min(tokens, BUCKETS[-1] + 1)


def test_hooks_installed_by_the_plugin_table():
    from tri_inductor import hooks

    targets = {h.target for h in hooks.TABLE}
    assert {"vllm.model_executor.layers.linear:UnquantizedLinearMethod.apply",
            "vllm.model_executor.layers.fused_moe.router.gate_linear:GateLinear.forward",
            "vllm.model_executor.layers.activation:SiluAndMul.forward_native"} <= targets
    assert set(E.HOOKS) == {"vllm.model_executor.layers.linear",
                            "vllm.model_executor.layers.fused_moe.router.gate_linear",
                            "vllm.model_executor.layers.activation"}


@pytest.mark.parametrize("out_dtype", [torch.bfloat16, torch.float32])
def test_tma_config_with_fp32_output_runs_the_pointer_kernel(monkeypatch, out_dtype):
    """On Hopper a TMA config of a bf16 GEMM keeps the TMA kernel; with an fp32 C (router logits)
    the same tiles run on the pointer kernel, whose store needs no shared-memory tile of C."""
    from tri_inductor.patterns.gemm import launch as gl
    from tri_inductor.patterns.gemm.configs import Cfg, Device, Kind

    h100 = Device("an sm_90 part", 132, 232448, (9, 0), 50 * 2**20)
    monkeypatch.setattr(gl, "device_info", lambda device=None: h100)
    ran = []
    monkeypatch.setattr(gl, "launch", lambda kernel, grid, *a, **k: ran.append((kernel, k.get("num_stages"))))
    a = torch.zeros(256, 64, dtype=torch.bfloat16)
    w = torch.zeros(128, 64, dtype=torch.bfloat16)
    out = torch.empty(256, 128, dtype=out_dtype)
    gl.launch_cfg(a, w.t(), None, out, Cfg(128, 128, 64, 8, 1, 8, 4, Kind.TMA))
    [(kernel, stages)] = ran
    if out_dtype == torch.bfloat16:
        assert kernel is gl.mm_tma_kernel
    else:
        assert kernel is gl.mm_kernel and stages == 3  # the TMA tiles' stages capped, as for other fallbacks
