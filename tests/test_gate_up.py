"""Fused gate_up GEMM + gated activation (``mm_act_mul``): numerics of every kernel path in
Triton's CPU interpreter, and the FX patterns on vLLM's MLP graphs (codegen-only, fake sm_90).

Tolerances on ||out - ref|| / ||ref|| against float64 (the GEMM then the activation in float64):
as tests/test_linear.py, fp32 1e-5, fp16 2e-3, bf16 1e-2 (output rounding dominates).
"""
from __future__ import annotations

import pytest
import torch
from torch._inductor.pattern_matcher import PatternMatcherPass

from pattern_harness import compile_codegen, rel
from tri_inductor.patterns import activation as A
from tri_inductor.patterns import gate_up as G
from tri_inductor.patterns.gemm import configs as C
from tri_inductor.patterns.gemm import kernels as K
from tri_inductor.patterns.gemm import launch as LA
from tri_inductor.patterns.gemm import ops as O

TOL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1e-2}
ACTS = list(LA.ACTS)
_FUSED_ACT = {"silu": "silu", "none": "gelu", "tanh": "gelu_tanh"}  # vLLM layer form -> mm_act_mul's act


def _operands(M, n, K, dt, transposed=True, seed=0):
    """a [M, K] and b [K, 2n] (gate columns, then up), b = w.t() of a merged [2n, K] weight."""
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(M, K, generator=g).to(dt)
    w = (torch.randn(2 * n, K, generator=g) / K ** 0.5).to(dt)
    return a, (w.t() if transposed else w.t().contiguous())


@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("M, n, K, dt", [(1, 48, 200, torch.bfloat16), (3, 65, 130, torch.float16),
                                         (17, 100, 300, torch.bfloat16), (70, 64, 136, torch.float32)])
def test_default_dispatch(act, M, n, K, dt, poison):
    # The op as the pattern calls it: its bucket's config (GEMV at M = 1, pointer kernel above,
    # ragged n and K), every output element written (outputs start NaN).
    a, b = _operands(M, n, K, dt, seed=M)
    out = O.mm_act_mul(a, b, act)
    assert out.shape == (M, n) and out.dtype == dt and not out.isnan().any()
    assert rel(out, O.reference_mm_act_mul(a, b, act)) < TOL[dt]


# Every kernel path with the fused epilogue: (cfg, transposed b). Ragged M/n/K throughout.
PATHS = {
    "gemv": (C.Cfg(1, 8, 128, 1, 1, 4, 1, C.Kind.GEMV), True),
    "gemv-strided-b": (C.Cfg(1, 8, 128, 1, 1, 4, 1, C.Kind.GEMV), False),  # -> pointer kernel, 16 + 16 columns
    "pointer": (C.Cfg(32, 64, 64, 2, 1, 4, 3), True),
    "pointer-rowmajor-b": (C.Cfg(32, 64, 64, 2, 1, 4, 3), False),
    "pointer-narrow": (C.Cfg(16, 32, 64, 1, 1, 4, 2), True),  # 16 gate + 16 up columns
    "split-k": (C.Cfg(16, 64, 64, 1, 3, 4, 2), True),  # the activation in the reduction kernel
    # prefill buckets (persistent TMA kernels): the plain GEMM, then the activation kernel
    "tma": (C.Cfg(32, 64, 64, 2, 1, 4, 3, C.Kind.TMA), True),
    "tma-rowmajor-b": (C.Cfg(32, 64, 64, 2, 1, 4, 3, C.Kind.TMA), False),
    "tma-ws": (C.Cfg(32, 128, 64, 2, 1, 4, 3, C.Kind.TMA_WS), True),
}


@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("path", list(PATHS))
def test_each_kernel_path(path, act, poison):
    cfg, transposed = PATHS[path]
    M = 1 if cfg.kernel == C.Kind.GEMV else 37
    a, b = _operands(M, 72, 520, torch.bfloat16, transposed, seed=len(path))
    if cfg.kernel in C.TMA_KINDS:
        assert LA.tma_ok(a, b, 72)
    out = O.mm_launch(a, b, None, cfg, act=LA.ACTS[act])
    assert out.shape == (M, 72) and not out.isnan().any()
    assert rel(out, O.reference_mm_act_mul(a, b, act)) < TOL[torch.bfloat16]


@pytest.mark.parametrize("idx32", [True, False])
def test_pointer_offsets_32_and_64_bit(idx32, monkeypatch, poison):
    monkeypatch.setattr(LA, "offsets_fit_int32", lambda *a: idx32)
    a, b = _operands(45, 130, 300, torch.bfloat16, seed=5)
    out = O.mm_launch(a, b, None, C.Cfg(32, 64, 64, 2, 1, 4, 3), act=LA.ACTS["silu"])
    assert not out.isnan().any() and rel(out, O.reference_mm_act_mul(a, b, "silu")) < TOL[torch.bfloat16]


def test_same_config_as_the_unfused_gemm(monkeypatch):
    # The fused launch takes the plain GEMM's config for b's full width (tuning tables keyed by the
    # gate_up shape apply unchanged) and gives each program half its columns in gate, half in up.
    seen = []
    monkeypatch.setattr(LA, "launch", lambda kernel, grid, *a, **kw: seen.append((kernel, grid, a, kw)))
    a = torch.randn(64, 256, dtype=torch.bfloat16)
    b = torch.randn(512, 256, dtype=torch.bfloat16).t()
    cfg = C.Cfg(64, 64, 64, 1, 1, 4, 3)
    LA.launch_cfg(a, b, None, torch.empty(64, 512), cfg)
    LA.launch_cfg(a, b, None, torch.empty(64, 256), cfg, act=LA.ACTS["silu"])
    (k1, g1, a1, kw1), (k2, g2, a2, kw2) = seen
    assert k1 is k2 is K.mm_kernel and g1 == g2  # the same kernel, the same number of programs
    assert kw1["ACT"] == LA.NO_ACT and kw2["ACT"] == LA.ACTS["silu"]
    assert kw2["BLOCK_N"] == kw1["BLOCK_N"] // 2 and a2[5] == 256  # N: the output's width


def test_rejects_odd_width_and_unknown_act():
    a, b = torch.randn(2, 8), torch.randn(8, 7)
    with pytest.raises(RuntimeError, match="even"):
        O.mm_act_mul(a, b, "silu")
    with pytest.raises(RuntimeError, match="act='relu'"):
        O.mm_act_mul(a, torch.randn(8, 6), "relu")


# ----------------------------------------------------------------------------------- patterns
def _pm(*modules) -> PatternMatcherPass:
    """One pass per family, applied in FAMILIES order, as TriInductorPatternPass does."""
    passes = []
    for m in modules:
        pm = PatternMatcherPass()
        m.register_patterns(pm)
        passes.append(pm)

    class Chain(PatternMatcherPass):
        def apply(self, graph):
            return sum(p.apply(graph) for p in passes)
    return Chain()


def _calls(code: str) -> str:
    body = code[code.index("def call("):]
    return "\n".join(line for line in body.splitlines() if not line.strip().startswith("#"))


def test_family_order_runs_before_activation_and_linear():
    from tri_inductor.options import FAMILIES

    assert FAMILIES.index("gate_up") < FAMILIES.index("activation") < FAMILIES.index("linear")


@pytest.mark.parametrize("form", ["silu", "none", "tanh"])
@pytest.mark.parametrize("rng", [(1, 128), None], ids=["decode_range", "any_m"])
def test_vllm_mlp_fused(vllm_ctx, form, rng):
    """vLLM's MLP with a symbolic token count: the merged gate_up projection (at TP=1
    MergedColumnParallelLinear runs ``F.linear(x, weight)``), SiluAndMul / GeluAndMul's own
    forward, the down projection. In vLLM's CUDA-graph range (1-128 tokens) gate_up + activation
    are one fused GEMM per M bucket (no activation kernel, no [T, 2I] buffer); over any M, the
    prefill buckets run the plain GEMM and then the activation kernel. down stays a plain GEMM.
    vLLM's real graph of these layers: tests/test_vllm_real_piece.py."""
    import contextlib

    from vllm.model_executor.layers.activation import GeluAndMul, SiluAndMul

    from tri_inductor.patterns import linear

    H, I = 64, 96
    g = torch.Generator().manual_seed(0)
    w_gate_up = (torch.randn(2 * I, H, generator=g) * 0.1).to(torch.bfloat16)
    w_down = (torch.randn(H, I, generator=g) * 0.1).to(torch.bfloat16)
    act = SiluAndMul() if form == "silu" else GeluAndMul(approximate=form)
    F = torch.nn.functional

    def mlp(x, w_gate_up, w_down):
        return F.linear(act.forward_native(F.linear(x, w_gate_up)), w_down)

    x = torch.randn(5, H, dtype=torch.bfloat16)
    with O.token_range(*rng) if rng else contextlib.nullcontext():
        hits, code = compile_codegen(mlp, [x, w_gate_up, w_down], _pm(G, A, linear), dynamic=[(0, 0)],
                                     benchmark_harness=False, shape_padding=False)
        plan = O.dispatch_plan(2 * I, H, torch.bfloat16, act=LA.ACTS[_FUSED_ACT[form]])  # the fused form's
    calls = _calls(code)
    assert hits == 2 and "torch.ops." not in calls and "extern_kernels." not in calls
    assert f"'ACT': {LA.ACTS[_FUSED_ACT[form]]}" in code  # the layer's
    prefill = sum(c.kernel in C.TMA_KINDS and lo >= LA.FUSED_TMA_MIN_M for lo, _, c in plan)
    assert calls.count("_gated_act_kernel") == prefill, (prefill, calls)
    if rng:
        assert prefill == 0 and f"{2 * I}), ({2 * I}, 1)" not in calls  # no [T, 2I] buffer
    # the replacement computes what the layers compute
    fused = O.mm_act_mul(x, w_gate_up.t(), _FUSED_ACT[form])
    ref = act.forward_native(x.double() @ w_gate_up.double().t())
    assert rel(fused, ref) < TOL[torch.bfloat16]


def test_mm_with_another_user_is_not_fused():
    # The gate_up output is also returned: fusing would drop it; activation and linear take the
    # two ops separately.
    from tri_inductor.patterns import linear

    F = torch.nn.functional

    def f(x, w):
        h = torch.mm(x, w.t())
        d = h.shape[-1] // 2
        return F.silu(h[:, :d]) * h[:, d:], h

    x, w = torch.randn(6, 64, dtype=torch.bfloat16), torch.randn(128, 64, dtype=torch.bfloat16)
    hits, code = compile_codegen(f, [x, w], _pm(G, A, linear), dynamic=[], benchmark_harness=False,
                                 shape_padding=False)
    # the activation kernel (its own ACT 0) and a plain GEMM; no mm kernel with an epilogue
    assert "_gated_act_kernel" in _calls(code) and "'ACT': -1" in code and code.count("'ACT': 0") == 1


# --------------------------------------------------------------------------------------- GPU
@pytest.mark.gpu
@pytest.mark.parametrize("M", [1, 16, 64, 128, 512, 2048])
def test_gpu_llama_gate_up_matches_float64(M) -> None:
    """Llama-3-8B's gate_up (2 x 14336 x 4096) at each bucket's tuned config (GEMV, pointer,
    persistent TMA / warp-specialized kernels): against float64, and against our GEMM then our
    SiLU-and-mul (the unfused pair rounds the [M, 2I] product to bf16 first)."""
    g = torch.Generator(device="cuda").manual_seed(M)
    a = torch.randn(M, 4096, device="cuda", generator=g).to(torch.bfloat16)
    w = (torch.randn(28672, 4096, device="cuda", generator=g) / 64).to(torch.bfloat16)
    out = O.mm_act_mul(a, w.t(), "silu")
    assert rel(out, O.reference_mm_act_mul(a, w.t(), "silu")) < TOL[torch.bfloat16]
    assert rel(out, A.silu_and_mul(O.mm(a, w.t())).double()) < TOL[torch.bfloat16]


def test_fused_prefill_over_a_bounded_token_count_adds_no_guard(interpreter, monkeypatch):
    """A token count marked dynamic in 129..8192 (a user's ``mark_dynamic(min, max)``; vLLM's
    eager range): the prefill buckets' fused gate_up runs the plain GEMM into a buffer of
    min(M, cap) rows, then the activation. Narrowing a symbolic M put a guard on it that Dynamo
    then rejected ("Constraints violated"); every M of the range compiles once and matches float64."""
    from tri_inductor.patterns.gemm import tuning as T

    real = T.default_config
    monkeypatch.setattr(T, "default_config", lambda n, k, bucket, dev, elem=2, fused=False: (
        C.Cfg(64, 64, 32, 8, 1, 4, 2, C.Kind.TMA_TILE) if bucket >= 256 else real(n, k, bucket, dev, elem, fused)))
    g = torch.Generator().manual_seed(0)
    H, I = 64, 48
    w = (torch.randn(2 * I, H, generator=g) * 0.2).to(torch.bfloat16)
    F = torch.nn.functional

    def mlp(x):
        gu = F.linear(x, w)
        return F.silu(gu[:, :I]) * gu[:, I:]

    torch._dynamo.reset()
    f = torch.compile(mlp, backend="tri_inductor")
    x0 = torch.randn(200, H, generator=g).to(torch.bfloat16)
    torch._dynamo.mark_dynamic(x0, 0, min=129, max=8192)
    with O.token_range(129, 8192):
        f(x0)
    for m in (200, 300, 1100):
        x = torch.randn(m, H, generator=g).to(torch.bfloat16)
        gu = x.double() @ w.double().t()
        ref = F.silu(gu[:, :I]) * gu[:, I:]
        assert rel(f(x), ref) < 2e-2
