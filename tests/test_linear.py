"""mm / addmm: numerics in Triton's CPU interpreter, post-grad patterns, sm_90 codegen of configs.

Tolerances on ||out - ref|| / ||ref|| against float64: fp32 1e-5 (interpreter dot is exact fp32;
on GPU fp32 follows torch's allow_tf32), fp16 2e-3, bf16 1e-2 (output rounding dominates).
"""
from __future__ import annotations

import contextlib
import re

import pytest
import torch

from pattern_harness import compile_codegen
from tri_inductor.patterns import linear as LP
from tri_inductor.patterns.gemm import configs as C
from tri_inductor.patterns.gemm import heuristics as H
from tri_inductor.patterns.gemm import kernels as KK
from tri_inductor.patterns.gemm import launch as LA
from tri_inductor.patterns.gemm import ops as O
from tri_inductor.patterns.gemm import tuning as T

TOL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1e-2}


def _rel(out, ref):
    return ((out.double() - ref).norm() / ref.norm()).item()


# (M, N, K, dtype, bias, weight transposed): 1 token, odd sizes, K/N not multiples of tiles.
CASES = [
    (1, 96, 200, torch.bfloat16, False, True),
    (1, 256, 512, torch.float16, True, True),
    (5, 130, 64, torch.float16, True, True),
    (17, 72, 300, torch.bfloat16, False, True),
    (70, 200, 136, torch.bfloat16, True, True),
    (129, 65, 40, torch.float32, True, False),   # plain row-major b
    (300, 64, 64, torch.float32, False, True),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(map(str, c)).replace("torch.", ""))
def test_mm_numerics(case):
    M, N, K, dt, has_bias, transposed = case
    g = torch.Generator().manual_seed(M * 1000 + N)
    a = torch.randn(M, K, generator=g).to(dt)
    b = torch.randn(N, K, generator=g).to(dt).t() if transposed else torch.randn(K, N, generator=g).to(dt)
    bias = torch.randn(N, generator=g).to(dt)
    out = O.addmm(bias, a, b) if has_bias else O.mm(a, b)
    ref = O.reference_addmm(bias, a, b) if has_bias else O.reference_mm(a, b)
    assert out.shape == (M, N) and out.dtype == dt
    assert _rel(out, ref) < TOL[dt]


# Shapes of popular models nobody tuned for (Qwen2.5-0.5B/7B, Qwen3-4B, Llama-3.2-1B, Phi-3):
# non-power-of-two N and K, K not a multiple of the blocks.
ODD_NK = [(1152, 896), (896, 4864), (9728, 896), (4608, 3584), (37888, 3584), (3584, 18944),
          (3072, 8192), (5120, 2560), (7680, 3072), (2560, 9728)]


# Every shipped table config and the cost model's choice of every bucket of the odd shapes (bf16)
# on a small ragged problem, split-K forced on where it is "auto".
def _table_configs():
    cfgs = set(C.table_entries().values())
    cfgs |= {T.default_config(n, k, b, C.DEFAULT_DEVICE) for n, k in ODD_NK for b in (*C.BUCKETS, C.TOP_BUCKET)}
    return sorted(cfgs)


@pytest.mark.parametrize("cfg", _table_configs(), ids=lambda c: "x".join(map(str, c)))
def test_mm_each_config(cfg):
    M, N, K = 37, 150, 520
    g = torch.Generator().manual_seed(1)
    a = torch.randn(M, K, generator=g).to(torch.bfloat16)
    b = torch.randn(N, K, generator=g).to(torch.bfloat16).t()
    bias = torch.randn(N, generator=g).to(torch.bfloat16)
    forced = cfg._replace(split_k=cfg.split_k or 2)
    out = O.mm_launch(a, b, bias, forced)
    assert _rel(out, O.reference_addmm(bias, a, b)) < TOL[torch.bfloat16]


@pytest.mark.parametrize("idx32", [True, False])
def test_mm_pointer_offsets_32_and_64_bit(idx32, monkeypatch):
    # Both address forms of the pointer kernel (32-bit offsets when the host shows they fit,
    # 64-bit otherwise) on a ragged problem, split-K included, with a strided (row-major) b.
    monkeypatch.setattr(LA, "offsets_fit_int32", lambda *a: idx32)
    M, N, K = 45, 130, 300
    g = torch.Generator().manual_seed(3)
    a = torch.randn(M, K, generator=g).to(torch.bfloat16)
    bias = torch.randn(N, generator=g).to(torch.bfloat16)
    for b in (torch.randn(N, K, generator=g).to(torch.bfloat16).t(), torch.randn(K, N, generator=g).to(torch.bfloat16)):
        for split in (1, 3):
            out = O.mm_launch(a, b, bias, C.Cfg(32, 64, 64, 2, split, 4, 3))
            assert _rel(out, O.reference_addmm(bias, a, b)) < TOL[torch.bfloat16]


@pytest.mark.parametrize("block_k,fits,want", [(64, True, True), (128, True, True), (256, True, False),
                                                (512, True, False), (128, False, False)])
def test_pointer_kernel_offset_form_choice(block_k, fits, want, monkeypatch):
    # 32-bit offsets only where they were measured faster (K steps <= 128) and provably fit;
    # decode tiles with K steps of 256/512 keep the 64-bit pointer bump (2-18% faster on H200).
    seen = []
    monkeypatch.setattr(LA, "launch", lambda kernel, grid, *a, **kw: seen.append(kw.get("IDX32")))
    monkeypatch.setattr(LA, "offsets_fit_int32", lambda *a: fits)
    a = torch.randn(32, 1024, dtype=torch.bfloat16)
    b = torch.randn(256, 1024, dtype=torch.bfloat16).t()
    LA.launch_cfg(a, b, None, torch.empty(32, 256, dtype=torch.bfloat16), C.Cfg(32, 64, block_k, 1, 1, 4, 3))
    assert seen == [want]


def test_offsets_fit_int32_bounds():
    a = torch.empty(4096, 4096, dtype=torch.bfloat16, device="meta")
    w = torch.empty(128256, 4096, dtype=torch.bfloat16, device="meta")
    assert LA.offsets_fit_int32(a, w.t(), None, 1)            # lm_head: 525M elements of w
    big = torch.empty(600_000, 4096, dtype=torch.bfloat16, device="meta")
    assert not LA.offsets_fit_int32(big, w.t(), None, 1)      # rows of a past 2**31 elements
    assert not LA.offsets_fit_int32(a, w.t(), None, 4)        # [4, 4096, 128256] split-K partials
    assert LA.offsets_fit_int32(a[:, :1024], w[:, :1024].t(), 8192, 1)  # strided views, M capped


def test_int32_offsets_cover_the_size_hint_of_a_symbolic_m():
    """A symbolic M runs at most m_cap rows under vLLM but its size hint (8192) when Inductor
    autotunes at compile time: 32-bit offsets only when both fit."""
    from torch._dynamo.source import ConstantSource
    from torch.fx.experimental.symbolic_shapes import ShapeEnv

    env = ShapeEnv()
    M = env.create_symintnode(env.create_symbol(8192, ConstantSource("M")), hint=8192)

    class Op:  # shape and strides only: what the check reads
        def __init__(self, shape, strides):
            self.shape, self._strides = shape, strides

        def stride(self, i):
            return self._strides[i]

    k, n = 1024, 300_000  # 128 rows of output fit in int32 offsets, 8192 rows do not
    a, b = Op((M, k), (k, 1)), Op((k, n), (1, k))
    assert LA.offsets_fit_int32(Op((128, k), (k, 1)), b, None, 1)
    assert not LA.offsets_fit_int32(a, b, 128, 1)
    assert LA.offsets_fit_int32(a, Op((k, 4096), (1, k)), 128, 1)


@pytest.mark.parametrize("transposed", [True, False])
@pytest.mark.parametrize("kernel", C.TMA_KINDS)
def test_mm_tma(transposed, kernel):
    # TMA path: ragged M/N/K (zero-filled by the descriptors), 16-byte aligned strides.
    M, N, K = 37, 136, 520
    g = torch.Generator().manual_seed(2)
    a = torch.randn(M, K, generator=g).to(torch.bfloat16)
    b = torch.randn(N, K, generator=g).to(torch.bfloat16).t() if transposed else torch.randn(K, N, generator=g).to(torch.bfloat16)
    bias = torch.randn(N, generator=g).to(torch.bfloat16)
    assert LA.tma_ok(a, b, N)
    out = O.mm_launch(a, b, bias, C.Cfg(32, 64, 64, 2, 1, 4, 3, kernel))
    assert _rel(out, O.reference_addmm(bias, a, b)) < TOL[torch.bfloat16]


@pytest.mark.parametrize("shape", [(1, 96, 200), (1, 256, 512), (3, 130, 1030), (1, 8, 64)])
@pytest.mark.parametrize("dt", [torch.bfloat16, torch.float16, torch.float32])
def test_gemv(shape, dt):
    M, N, K = shape
    g = torch.Generator().manual_seed(N)
    a = torch.randn(M, K, generator=g).to(dt)
    w = torch.randn(N, K, generator=g).to(dt)
    bias = torch.randn(N, generator=g).to(dt)
    for bn, bk in ((16, 128), (8, 512)):
        out = O.mm_launch(a, w.t(), bias, C.Cfg(1, bn, bk, 1, 1, 4, 1, C.Kind.GEMV))
        assert _rel(out, O.reference_addmm(bias, a, w.t())) < TOL[dt]
    # a row-major b (not K-contiguous) goes to the pointer kernel with the same panel width
    out = O.mm_launch(a, w.t().contiguous(), None, C.Cfg(1, 16, 128, 1, 1, 4, 1, C.Kind.GEMV))
    assert _rel(out, O.reference_mm(a, w.t())) < TOL[dt]


def test_tma_falls_back_when_unaligned():
    a = torch.randn(5, 100, dtype=torch.float16)[:, 1:]  # odd offset and K*2 not a multiple of 16
    b = torch.randn(64, 99, dtype=torch.float16).t()
    assert not LA.tma_ok(a, b, 64)
    out = O.mm_launch(a, b, None, C.Cfg(16, 64, 64, 1, 1, 4, 3, 1))
    assert _rel(out, O.reference_mm(a, b)) < TOL[torch.float16]


def test_split_k_ragged():
    # K not a multiple of split * BLOCK_K: last split is short, masks on K.
    a = torch.randn(3, 700, dtype=torch.float16)
    b = torch.randn(90, 700, dtype=torch.float16).t()
    out = O.mm_launch(a, b, None, C.Cfg(16, 64, 128, 1, 3, 4, 2))
    assert _rel(out, O.reference_mm(a, b)) < TOL[torch.float16]


def test_buckets_and_split_choice():
    assert C.bucket_of(1) == 1 and C.bucket_of(2) == 16 and C.bucket_of(48) == 64 and C.bucket_of(5000) == 4096
    assert LA.hint(7) == 7
    # auto split-K: 64 tiles of a 4096-wide decode GEMM -> 2 splits fill 128 of 132 SMs
    assert H.auto_split(C.Cfg(16, 64, 256, 1, 0, 4, 4), 1, 4096, 4096, C.DEFAULT_DEVICE) == 2
    assert H.auto_split(C.Cfg(16, 64, 256, 1, 3, 4, 4), 1, 4096, 4096, C.DEFAULT_DEVICE) == 3


# ----------------------------------------------------------------------------- patterns

def _compile(fn, inputs, dynamic=None):
    """(hits, output code, the call() body without comments) of ``fn`` compiled for a fake sm_90
    with the linear patterns; ``dynamic``: (arg, dim) pairs marked dynamic (default: none)."""
    from torch._inductor.pattern_matcher import PatternMatcherPass

    pm = PatternMatcherPass()
    LP.register_patterns(pm)
    # shape_padding: pad_mm would benchmark (no GPU here)
    hits, code = compile_codegen(fn, inputs, pm, dynamic=dynamic or [], benchmark_harness=False,
                                 shape_padding=False)
    body = code[code.index("def call("):]
    calls = "\n".join(line for line in body.splitlines() if not line.strip().startswith("#"))
    return hits, code, calls


def _assert_ours(code, calls, n_kernels):
    assert "def mm_kernel" in code or "def mm_gemv_kernel" in code
    assert calls.count("mm_kernel_") + calls.count("mm_tma_kernel_") + calls.count("gemv_kernel_") >= n_kernels
    for bad in ("extern_kernels.", "torch.ops.", "aten."):
        assert bad not in calls, bad


def test_pattern_linear_3d_and_mm():
    x = torch.randn(2, 24, 256, dtype=torch.bfloat16)
    w1 = torch.randn(512, 256, dtype=torch.bfloat16)
    b1 = torch.randn(512, dtype=torch.bfloat16)
    w2 = torch.randn(256, 512, dtype=torch.bfloat16)
    F = torch.nn.functional

    def f(x, w1, b1, w2):
        h = F.silu(F.linear(x, w1, b1))     # addmm(bias, x, permute(w))
        return F.linear(h, w2) + x          # mm(x, permute(w))

    hits, code, calls = _compile(f, [x, w1, b1, w2])
    assert hits == 2
    _assert_ours(code, calls, 2)


def test_pattern_dynamic_m():
    """Symbolic M: one kernel per distinct bucket config, each grid gated on M's range (no guard
    on M, no recompile); every launch writes the one output buffer, no copy in between."""
    x = torch.randn(8, 256, dtype=torch.float16)
    w = torch.randn(384, 256, dtype=torch.float16)
    hits, code, calls = _compile(lambda x, w: torch.nn.functional.linear(x, w), [x, w], dynamic=[(0, 0)])
    assert hits == 1
    plan = O.dispatch_plan(384, 256, torch.float16)
    assert len(plan) > 1
    _assert_ours(code, calls, len(plan))
    runs = [line for line in calls.splitlines() if ".run(" in line and "mm_" in line]
    assert len(runs) == len(plan)
    for line in runs:
        assert re.search(r"min\(1, [^,]*s\d+", line), line  # the gate: a function of the symbolic M
    # torch >= 2.13 re-aligns inputs with ``argN = copy_if_misaligned(argN)``: not a copy of ours
    calls = re.sub(r".*= copy_if_misaligned\(.*\)\n?", "", calls)
    assert "clone" not in calls and "copy_" not in calls


def test_pattern_dynamic_m_split_k():
    """A split-K bucket under a symbolic M: its fp32 workspace is sized min(M, bucket top)."""
    x = torch.randn(8, 2048, dtype=torch.bfloat16)
    w = torch.randn(64, 2048, dtype=torch.bfloat16)
    real = T.default_config

    def split4(n, k, bucket, dev, elem=2, fused=False):
        return C.Cfg(16, 64, 256, 1, 4, 4, 4) if bucket == 16 else real(n, k, bucket, dev, elem, fused)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(T, "default_config", split4)
        hits, code, calls = _compile(lambda x, w: torch.nn.functional.linear(x, w), [x, w], dynamic=[(0, 0)])
    assert hits == 1
    assert "splitk_reduce_kernel" in calls and "min(16, s" in calls


def test_pattern_dynamic_m_gemv(monkeypatch):
    """A GEMV bucket under a symbolic M: gated like the others, nothing but our kernels launched."""
    x = torch.randn(300, 256, dtype=torch.bfloat16)
    w = torch.randn(512, 256, dtype=torch.bfloat16)
    real = T.default_config
    monkeypatch.setattr(T, "default_config", lambda n, k, bucket, dev, elem=2, fused=False: (
        C.Cfg(1, 16, 256, 1, 1, 4, 1, C.Kind.GEMV) if bucket == 1 else real(n, k, bucket, dev, elem, fused)))
    hits, code, calls = _compile(lambda x, w: torch.nn.functional.linear(x, w), [x, w], dynamic=[(0, 0)])
    assert hits == 1 and "mm_gemv_kernel_0.run(" in calls
    _assert_ours(code, calls, len(O.dispatch_plan(512, 256, torch.bfloat16)))


# M on both sides of every bucket edge of a made-up plan (split-K, pointer, TMA entries).
GATE_PLAN = [(0, 1, C.Cfg(1, 16, 64, 1, 1, 4, 1, C.Kind.GEMV)), (1, 16, C.Cfg(16, 32, 64, 1, 2, 4, 2)),
             (16, 64, C.Cfg(32, 32, 64, 1, 1, 4, 2)), (64, 128, C.Cfg(64, 32, 32, 1, 3, 4, 2)),
             (128, 256, C.Cfg(64, 64, 32, 2, 1, 4, 3, C.Kind.TMA_WS)), (256, None, C.Cfg(64, 64, 64, 4, 1, 4, 3, 1))]


@pytest.mark.parametrize("M", [1, 2, 16, 17, 64, 65, 128, 129, 256, 257])
def test_gated_dispatch_numerics(M, poison, monkeypatch):
    """Eager run of the gated form (concrete gates): exactly one plan entry writes every element
    (outputs start NaN), and the result matches float64."""
    monkeypatch.setattr(O, "dispatch_plan", lambda n, k, dtype, device=None, act=-1: GATE_PLAN)
    g = torch.Generator().manual_seed(M)
    a = torch.randn(M, 128, generator=g).to(torch.bfloat16)
    b = torch.randn(96, 128, generator=g).to(torch.bfloat16).t()
    bias = torch.randn(96, generator=g).to(torch.bfloat16)
    gates = [O.gate(M, lo, hi) for lo, hi, _ in GATE_PLAN]
    assert sorted(gates) == [0] * (len(GATE_PLAN) - 1) + [1]
    out = O.mm_launch(a, b, bias, dispatch=True)
    assert not out.isnan().any()
    assert _rel(out, O.reference_addmm(bias, a, b)) < TOL[torch.bfloat16]


@pytest.mark.parametrize("nk", sorted({(n, k) for n, k, _ in C.table_entries()} | set(ODD_NK)))
def test_dispatch_plan_kernels_differ_in_more_than_launch_options(nk):
    # Inductor (torch 2.11) keys inlined user kernels by their arguments and constexprs, not by
    # num_warps / num_stages: two buckets whose configs differ only there would both run with
    # the first one's launch options.
    n, k = nk
    seen = {}
    for lo, hi, c in O.dispatch_plan(n, k, torch.bfloat16):
        key = (c.block_m, c.block_n, c.block_k, c.group_m, c.kernel,
               H.auto_split(c, C.representative_m(hi), n, k, C.DEFAULT_DEVICE) if c.kernel in (C.Kind.PTR, C.Kind.GEMV) else 0)
        assert seen.setdefault(key, (c.num_warps, c.num_stages)) == (c.num_warps, c.num_stages), (lo, hi, c)


def test_dispatch_plan_merges_equal_configs():
    plan = O.dispatch_plan(4096, 4096, torch.bfloat16)
    assert plan[0][0] == 0 and plan[-1][1] is None
    for (lo, hi, c), (lo2, _, c2) in zip(plan, plan[1:]):
        assert hi == lo2 and c != c2
    for lo, hi, c in plan:
        assert c == O.choose_config(hi or 2 * C.BUCKETS[-1], 4096, 4096, torch.bfloat16)


@pytest.mark.parametrize("rng", [None, (1, 512), (513, 8192), (2, 16), (17, 8192), (100, 100)])
def test_dispatch_plan_in_token_range(rng):
    """Inside a compile range, the plan keeps only buckets meeting it: for every M of the range
    exactly one entry's gate is on, and it is the config a concrete M gets."""
    ctx = O.token_range(*rng) if rng else contextlib.nullcontext()
    with ctx:
        plan = O.dispatch_plan(4096, 4096, torch.bfloat16)
    lo_r, hi_r = rng or (1, 8192)
    ms = sorted({lo_r, hi_r, *(b + d for b in C.BUCKETS for d in (0, 1) if lo_r <= b + d <= hi_r)})
    for m in ms:
        on = [c for lo, hi, c in plan if O.gate(m, lo, hi) == 1]
        assert on == [O.choose_config(m, 4096, 4096, torch.bfloat16)], (m, plan)
    buckets_met = {C.bucket_of(m) for m in range(lo_r, hi_r + 1)}
    assert len(plan) <= len(buckets_met)


def test_token_range_prefill_graph_launches_prefill_tiles_only():
    """vLLM's compile range above the CUDA-graph sizes: the symbolic-M graph launches only the
    prefill buckets' kernels (fewer host launches in eager prefill steps)."""
    x = torch.randn(600, 256, dtype=torch.bfloat16)
    w = torch.randn(384, 256, dtype=torch.bfloat16)
    full = O.dispatch_plan(384, 256, torch.bfloat16)
    with O.token_range(513, 8192):
        plan = O.dispatch_plan(384, 256, torch.bfloat16)
        hits, code, calls = _compile(lambda x, w: torch.nn.functional.linear(x, w), [x, w], dynamic=[(0, 0)])
    assert hits == 1 and len(plan) < len(full)
    runs = [line for line in calls.splitlines() if ".run(" in line and "mm_" in line]
    assert len(runs) == len(plan)
    assert all(c.block_m >= 128 for _, _, c in plan)


# ----------------------------------------------------------------------------- sm_90 codegen

def _sm90_compile(cfg, act=LA.NO_ACT):
    """sm_90 compile of ``cfg``'s kernel; with ``act`` its fused gate_up form, launched as
    ``_launch_cfg`` does (half the columns of each tile in gate, half in up, no bias)."""
    import triton
    from triton.backends.compiler import GPUTarget

    fused = act != LA.NO_ACT
    bn = (max(1, cfg.block_n // 2) if cfg.kernel == C.Kind.GEMV else max(16, cfg.block_n // 2)) if fused else cfg.block_n
    common = dict(HAS_BIAS=not fused, ACT=act, BLOCK_N=bn, BLOCK_K=cfg.block_k)
    if cfg.kernel == C.Kind.GEMV:
        kern, const = KK.mm_gemv_kernel, dict(EVEN_K=True, SPLIT_K=cfg.split_k, **common)
    elif cfg.kernel:
        kern, const = KK.mm_tma_kernel, LA.tma_constexprs(cfg, True, not fused, C.DEFAULT_DEVICE.sms)
    else:
        kern, const = KK.mm_kernel, dict(SPLIT_K=1, EVEN_K=True, PRECISION="tf32", IDX32=cfg.block_k <= LA.IDX32_MAX_BLOCK_K,
                                        stride_ak=1, stride_bk=1, stride_cn=1, BLOCK_M=cfg.block_m,
                                        GROUP_M=cfg.group_m, **common)
    sig = {n: ("*bf16" if n in ("A", "B", "C", "bias") else "i32") for n in kern.arg_names}
    if kern is KK.mm_tma_kernel:
        sig.update({n: f"tensordesc<bf16{shape}>" for n, shape in LA.tma_blocks(cfg, True).items()}, bias="*bf16")
    sig.update({c: "constexpr" for c in const})
    src = triton.compiler.ASTSource(kern, sig, const)
    return triton.compile(src, target=GPUTarget("cuda", 90, 32),
                          options=dict(num_warps=cfg.num_warps, num_stages=cfg.num_stages))


# The shipped table, plus one config of each kernel kind the tuner may pick.
_KIND_EXAMPLES = [C.Cfg(1, 16, 512, 1, 1, 4, 1, C.Kind.GEMV), C.Cfg(1, 8, 2048, 1, 1, 8, 1, C.Kind.GEMV)]


_CFGS = sorted(set(_table_configs()) | set(_KIND_EXAMPLES))
# The fused gate_up form's untuned choices for popular models' odd gate_up widths (Qwen2.5-0.5B/7B,
# Qwen3-4B, Llama-3.2-1B, Phi-3-mini; 2 x intermediate) at the buckets that run it fused.
_FUSED_ODD = sorted({T.default_config(n, k, b, C.DEFAULT_DEVICE, fused=True)
                     for n, k in ((9728, 896), (37888, 3584), (19456, 2560), (16384, 2048), (16384, 3072))
                     for b in (1, 16, 32, 64, 128)} - set(_CFGS))


# Every config plain, and with the fused gate_up epilogue where its bucket runs it fused (the
# prefill TMA buckets run the plain GEMM, then the activation).
@pytest.mark.parametrize("cfg, act", [(c, LA.NO_ACT) for c in _CFGS]
                         + [(c, LA.ACTS["silu"]) for c in _CFGS + _FUSED_ODD
                            if c.kernel not in C.TMA_KINDS],
                         ids=lambda v: "x".join(map(str, v)) if isinstance(v, tuple) else ("plain", "gate_up_silu")[v >= 0])
def test_config_compiles_for_sm90(cfg, act):
    out = _sm90_compile(cfg, act)
    assert out.asm.get("cubin")
    assert out.metadata.shared <= 232448, out.metadata.shared
    if cfg.kernel in C.TMA_KINDS:
        assert "wgmma" in out.asm["ptx"] and "cp.async.bulk.tensor" in out.asm["ptx"]


def test_pattern_prefill_uses_tma_kernel(monkeypatch):
    # A prefill bucket whose config is a TMA one launches the persistent kernel from the graph.
    real = T.default_config
    monkeypatch.setattr(T, "default_config", lambda n, k, bucket, dev, elem=2, fused=False: (
        C.Cfg(128, 128, 64, 8, 1, 8, 3, C.Kind.TMA) if bucket >= 512 else real(n, k, bucket, dev, elem, fused)))
    x = torch.randn(300, 256, dtype=torch.bfloat16)
    w = torch.randn(512, 256, dtype=torch.bfloat16)
    b = torch.randn(512, dtype=torch.bfloat16)

    def f(x, w, b):
        return torch.nn.functional.linear(x, w, b)

    hits, code, calls = _compile(f, [x, w, b])
    assert hits == 1
    assert "def mm_tma_kernel" in code and "mm_tma_kernel_0.run(" in calls
    for bad in ("extern_kernels.", "torch.ops.", "aten."):
        assert bad not in calls, bad


@pytest.mark.parametrize("dynamic", [False, True])
def test_computed_input_written_once(dynamic):
    """A GEMM input computed by Inductor (here a norm) is written once, however many launches
    (gated buckets) and arguments read it: Inductor would otherwise copy it per kernel argument."""
    import re

    def f(x, w):
        h = x.float()
        h = (h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + 1e-5)).to(x.dtype)
        return torch.nn.functional.linear(h, w)

    x = torch.randn(8, 256, dtype=torch.bfloat16)
    w = torch.randn(384, 256, dtype=torch.bfloat16)
    hits, code, calls = _compile(f, [x, w], dynamic=[(0, 0)] if dynamic else [])
    assert hits == 1
    producer = re.search(r"def (triton_\w+)\(([^)]*)\)", code)
    assert producer.group(2).count("out_ptr") == 1, producer.group(0)
    # a TMA launch reads it through a host-side descriptor built from it just before
    # (Triton's from_tensor, or ours once the wrapper rewrite ran: patterns/_host_tma.fast_descriptors)
    bases = dict(re.findall(r"(\w+) = (?:[\w.]*TensorDescriptor\.from_tensor|_tri_tma_descriptor)\((\w+),", calls))
    inputs = {bases.get(v, v) for v in (re.search(r"\.run\((\w+),", line).group(1) for line in calls.splitlines()
                                        if re.search(r"mm_(tma_)?kernel_\d+\.run\(", line))}
    assert len(inputs) == 1, inputs


def test_eager_config_choice_is_memoised(monkeypatch):
    """Eager GPU calls (vLLM's lm_head, once per decode step) look the config up once: the
    tuning-DB lookup costs ~0.1 ms of host time; a cleared DB forgets the choice."""
    from tri_inductor import cache

    calls = []
    real = O.config_for

    def counting(*a, **k):
        calls.append(a)
        return real(*a, **k)

    monkeypatch.setattr(O, "config_for", counting)
    cache.forget_loaded()
    first = O.eager_config(1, 4096, 4096, torch.bfloat16)
    assert O.eager_config(1, 4096, 4096, torch.bfloat16) == first and len(calls) == 1
    assert O.eager_config(64, 4096, 4096, torch.bfloat16) == O.choose_config(64, 4096, 4096, torch.bfloat16)
    assert len(calls) == 3  # another bucket: its own lookup (+ the direct choose_config)
    cache.forget_loaded()
    O.eager_config(1, 4096, 4096, torch.bfloat16)
    assert len(calls) == 4


@pytest.mark.parametrize("form", ["residual", "row", "scaled"])
def test_addmm_with_any_input_runs_our_gemm(interpreter, form):
    """``x + fc(h)`` (post-grad: addmm with an [M, N] input), a [1, N] input, alpha/beta: our
    GEMM then Inductor's pointwise sum, not Inductor's native matmul; against float64."""
    from tri_inductor import last_audit

    g = torch.Generator().manual_seed(3)
    x = torch.randn(37, 64, generator=g).to(torch.bfloat16)
    w = (torch.randn(64, 64, generator=g) / 8).to(torch.bfloat16)
    r = torch.randn(1 if form == "row" else 37, 64, generator=g).to(torch.bfloat16)

    def f(x, w, r):
        if form == "scaled":
            return torch.addmm(r, x, w.t(), beta=0.5, alpha=2.0)
        return torch.nn.functional.linear(x, w) + r

    torch._dynamo.reset()
    out = torch.compile(f, backend="tri_inductor")(x, w, r)
    ref = (torch.addmm(r.double(), x.double(), w.double().t(), beta=0.5, alpha=2.0) if form == "scaled"
           else x.double() @ w.double().t() + r.double())
    assert _rel(out, ref) < TOL[torch.bfloat16]
    code = last_audit()[-1].code
    assert re.search(r"mm_(gemv_|tma_)?kernel_\d+\.run\(", code), "our GEMM did not run"
    # the sum is a pointwise kernel (named after the addmm it came from); no matmul of Inductor's
    assert not re.search(r"triton_(red|tem|per)_fused\w*addmm", code) and "extern_kernels.addmm" not in code


def test_tma_off_runs_the_tiles_on_the_pointer_kernel(monkeypatch):
    """TRI_INDUCTOR_TMA=0: a prefill bucket whose config is a TMA one launches the pointer kernel
    (no host-side descriptor in the wrapper), and the compile cache key says so."""
    from tri_inductor import fingerprint

    real = T.default_config
    monkeypatch.setattr(T, "default_config", lambda n, k, bucket, dev, elem=2, fused=False: (
        C.Cfg(128, 128, 64, 8, 1, 4, 3, C.Kind.TMA_TILE) if bucket >= 512 else real(n, k, bucket, dev, elem, fused)))
    x = torch.randn(600, 256, dtype=torch.bfloat16)
    w = torch.randn(512, 256, dtype=torch.bfloat16)
    on = fingerprint.codegen_inputs()
    _, code_on, _ = _compile(lambda x, w: torch.nn.functional.linear(x, w), [x, w])
    monkeypatch.setenv("TRI_INDUCTOR_TMA", "0")
    _, code_off, calls_off = _compile(lambda x, w: torch.nn.functional.linear(x, w), [x, w])
    assert ("TensorDescriptor.from_tensor" in code_on or "_tri_tma_descriptor(" in code_on) and "mm_tma_kernel_0.run(" in code_on
    assert "TensorDescriptor" not in calls_off and "_tri_tma_descriptor" not in calls_off
    assert "mm_tma_kernel" not in calls_off and "mm_kernel_0.run(" in calls_off
    assert fingerprint.codegen_inputs() != on
