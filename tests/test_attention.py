"""attention: numerics in Triton's CPU interpreter, FX rewrites, sm_90 codegen of every config.

Tolerances on ||out - ref|| / ||ref|| against a float64 reference: fp32 1e-5 (the interpreter's
fp32 dot is exact fp32; on GPU tl.dot uses tf32, ~1e-3), fp16 3e-3, bf16 1.5e-2 (P is rounded to
the input dtype before the PV product, and the output is rounded, as in every flash kernel).
"""
from __future__ import annotations

import math

import pytest
import torch

from pattern_harness import dynamo_graph
from tri_inductor.patterns import attention as A
from tri_inductor.patterns.attention_fx import rewrite_attention_in_dynamo_graph

TOL = {torch.float32: 1e-5, torch.float16: 3e-3, torch.bfloat16: 1.5e-2}

# (B, Hq, Hkv, Sq, Skv, D, causal, dtype): odd sizes, 1 token, GQA 4:1, MQA, long/short Skv.
CASES = [
    (1, 2, 2, 130, 130, 64, True, torch.bfloat16),     # prefill tiles: masked diagonal + tail
    (1, 2, 2, 130, 130, 64, False, torch.float16),
    (2, 4, 1, 67, 67, 64, True, torch.float32),          # MQA
    (1, 8, 2, 1, 77, 128, False, torch.bfloat16),        # decode, GQA 4:1, packed heads
    (1, 8, 2, 1, 77, 128, True, torch.float16),          # causal Sq=1 sees key 0 only (top-left)
    (1, 4, 1, 5, 33, 64, True, torch.bfloat16),          # packed, causal per row
    (1, 4, 4, 17, 200, 128, False, torch.bfloat16),      # Sq < Skv, unpacked short Sq
    (1, 2, 1, 70, 40, 256, True, torch.bfloat16),        # Sq > Skv causal, d=256
    (1, 2, 2, 150, 150, 256, False, torch.float16),
    (1, 2, 2, 40, 30, 96, True, torch.float32),          # head dim not a power of two
    (1, 16, 2, 3, 129, 64, False, torch.float16),        # packed rows 24 (8:1)
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(map(str, c)).replace("torch.", ""))
def test_attention_numerics(case):
    B, Hq, Hkv, Sq, Skv, D, causal, dt = case
    g = torch.Generator().manual_seed(hash(case) % 2**31)
    q = torch.randn(B, Hq, Sq, D, generator=g).to(dt)
    k = torch.randn(B, Hkv, Skv, D, generator=g).to(dt)
    v = torch.randn(B, Hkv, Skv, D, generator=g).to(dt)
    scale = 1.0 / math.sqrt(D)
    out = A.attention(q, k, v, causal, scale)
    ref = A.reference_attention(q, k, v, causal, scale)
    assert out.shape == ref.shape and out.dtype == dt
    assert torch.isfinite(out).all()
    err = ((out.double() - ref).norm() / ref.norm()).item()
    assert err < TOL[dt], err


# (B, Hq, Hkv, Sq, Skv, D, DV, causal, dtype): V's head dim other than q/k's (MLA under SDPA:
# DeepSeek-V2/V3 q/k 192 = 128 + 64 rope, v 128), narrower and wider, odd.
DV_CASES = [
    (1, 4, 4, 37, 37, 192, 128, True, torch.bfloat16),
    (1, 8, 2, 1, 50, 24, 16, False, torch.float32),      # decode, packed heads
    (2, 2, 2, 20, 20, 64, 128, True, torch.float16),     # V wider than q/k
    (1, 2, 1, 33, 45, 40, 24, False, torch.float32),
]


@pytest.mark.parametrize("case", DV_CASES, ids=lambda c: "-".join(map(str, c)).replace("torch.", ""))
def test_attention_v_head_dim_of_its_own(case):
    B, Hq, Hkv, Sq, Skv, D, DV, causal, dt = case
    g = torch.Generator().manual_seed(hash(case) % 2**31)
    q = torch.randn(B, Hq, Sq, D, generator=g).to(dt)
    k = torch.randn(B, Hkv, Skv, D, generator=g).to(dt)
    v = torch.randn(B, Hkv, Skv, DV, generator=g).to(dt)
    out = A.attention(q, k, v, causal, 1.0 / math.sqrt(D))
    ref = A.reference_attention(q, k, v, causal, 1.0 / math.sqrt(D))
    assert out.shape == ref.shape == (B, Hq, Sq, DV) and out.dtype == dt
    err = ((out.double() - ref).norm() / ref.norm()).item()
    assert err < TOL[dt], err


def test_attention_non_contiguous_inputs():
    # HF layout: q/k/v are transposes of [B, S, H, D] projections.
    B, S, Hq, Hkv, D = 1, 45, 4, 2, 64
    q = torch.randn(B, S, Hq, D, dtype=torch.float16).transpose(1, 2)
    k = torch.randn(B, S, Hkv, D, dtype=torch.float16).transpose(1, 2)
    v = torch.randn(B, S, Hkv, D, dtype=torch.float16).transpose(1, 2)
    out = A.attention(q, k, v, True, 0.2)
    ref = A.reference_attention(q, k, v, True, 0.2)
    assert ((out.double() - ref).norm() / ref.norm()).item() < TOL[torch.float16]


# ----------------------------------------------------------------------------- FX rewrites

def _capture(fn, *inputs):
    cap = {}

    def backend(gm, example_inputs):
        cap["gm"], cap["inputs"] = gm, example_inputs
        return lambda *a: gm(*[t.to("meta") for t in a])  # SDPA ops have no CPU kernel

    torch._dynamo.reset()
    torch.compile(fn, backend=backend, fullgraph=True)(*inputs)
    return cap["gm"], cap["inputs"]


def _compile_codegen_only(gm, inputs):
    """Compile in codegen-only mode with our patterns as the post-grad pass; returns
    (pattern hits, the output code's ``call`` body)."""
    import torch._inductor.config as ic
    from torch._inductor.compile_fx import compile_fx
    from torch._inductor.custom_graph_pass import CustomGraphPass
    from torch._inductor.graph import GraphLowering
    from torch._inductor.pattern_matcher import PatternMatcherPass

    from tri_inductor.testing.codegen_only import fake_cuda_inputs, fake_sm90

    pm = PatternMatcherPass()
    A.register_patterns(pm)
    hits, codes = [], []

    class Pass(CustomGraphPass):
        def __call__(self, g):
            hits.append(pm.apply(g))

        def uuid(self):
            return "test-attention"

    saved = GraphLowering.save_output_code
    GraphLowering.save_output_code = staticmethod(codes.append)
    try:
        with fake_sm90():
            fin, _ = fake_cuda_inputs(inputs)
            with ic.patch(post_grad_custom_post_pass=Pass(), force_disable_caches=True):
                compile_fx(gm, fin)
    finally:
        GraphLowering.save_output_code = saved
    code = codes[-1]
    return sum(hits), code, code[code.index("def call("):]


def _assert_ours(code, body):
    assert "def attention_fwd_kernel" in code
    assert "attention_fwd_kernel_0.run(" in body
    calls = "\n".join(line for line in body.splitlines() if not line.strip().startswith("#"))
    for bad in ("extern_kernels.", "torch.ops.", "aten."):  # match calls, not comments
        assert bad not in calls, bad


def test_pattern_flash():
    q = torch.randn(1, 8, 32, 64, dtype=torch.bfloat16)

    def f(q, k, v):
        return torch.ops.aten._scaled_dot_product_flash_attention(q, k, v, 0.0, True, scale=0.1)[0] + 1

    hits, code, body = _compile_codegen_only(*_capture(f, q, q.clone(), q.clone()))
    assert hits == 1
    _assert_ours(code, body)


def test_pattern_efficient_and_cudnn():
    q = torch.randn(1, 4, 16, 128, dtype=torch.float16)

    def f(q, k, v):
        a = torch.ops.aten._scaled_dot_product_efficient_attention(q, k, v, None, False)[0]
        b = torch.ops.aten._scaled_dot_product_cudnn_attention(q, k, v, None, False, 0.0, True)[0]
        return a * 2 + b

    hits, code, body = _compile_codegen_only(*_capture(f, q, q.clone(), q.clone()))
    assert hits == 2
    _assert_ours(code, body)


def test_pattern_takes_bias_skips_training_outputs():
    q = torch.randn(1, 4, 16, 64, dtype=torch.float16)
    bias = torch.randn(1, 4, 16, 16, dtype=torch.float16)

    def f(q, k, v, bias):
        a = torch.ops.aten._scaled_dot_product_efficient_attention(q, k, v, bias, False)[0]
        o = torch.ops.aten._scaled_dot_product_flash_attention(q, k, v, 0.0, False)
        return a, o[0], o[1]  # logsumexp used: not an inference call, leave it

    hits, code, body = _compile_codegen_only(*_capture(f, q, q.clone(), q.clone(), bias))
    assert hits == 1  # the biased call; the flash call whose logsumexp is used stays
    assert "attention_fwd_kernel_0.run(" in body
    assert "aten._scaled_dot_product_flash_attention" in body


def test_dynamo_rewrite_and_codegen():
    q = torch.randn(1, 8, 32, 64, dtype=torch.bfloat16)
    k = torch.randn(1, 2, 32, 64, dtype=torch.bfloat16)
    mask = torch.zeros(32, 32, dtype=torch.bfloat16)
    F = torch.nn.functional

    def f(q, k, v, mask):
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
        b = F.scaled_dot_product_attention(q, k, v, scale=0.3, enable_gqa=True)
        c = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)
        d = F.scaled_dot_product_attention(q, k, v, dropout_p=0.1, enable_gqa=True)  # untouched
        return a.transpose(1, 2).reshape(1, 32, -1), b, c, d

    gm, inputs = _capture(f, q, k, k.clone(), mask)
    assert rewrite_attention_in_dynamo_graph(gm) == 3
    calls = [n for n in gm.graph.nodes if n.target is torch.ops.tri_inductor.attention.default]
    assert [n.args[3:5] for n in calls] == [(True, 1 / 8), (False, 0.3), (False, 1 / 8)]
    assert calls[2].args[5].name == "l_mask_"
    remaining = [n for n in gm.graph.nodes if n.op == "call_function" and "scaled_dot" in str(n.target)]
    assert len(remaining) == 1

    def g(q, k, v):
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True).transpose(1, 2).reshape(1, 32, -1)

    gm, inputs = _capture(g, q, k, k.clone())
    assert rewrite_attention_in_dynamo_graph(gm) == 1
    hits, code, body = _compile_codegen_only(gm, inputs)
    _assert_ours(code, body)


# ----------------------------------------------------------------------------- sm_90 codegen

def _all_configs():
    seen = []
    for (block_d, wide), (bm, bn, w, s) in A.PREFILL_CONFIGS.items():
        if block_d >= 64:
            seen.append((block_d, wide, False, bm, bn, w, s))
    for block_d, bn in A.PACKED_BLOCK_N.items():
        if block_d >= 64:
            seen.append((block_d, False, True, A.PACKED_MAX_ROWS, bn, 4 if block_d <= 128 else 8, 2))
    return seen


@pytest.mark.parametrize("masked", [False, True], ids=["plain", "mask+window+softcap"])
@pytest.mark.parametrize("cfg", _all_configs(), ids=str)
def test_config_compiles_for_sm90(cfg, masked):
    import triton
    from triton.backends.compiler import GPUTarget

    block_d, wide, packed, bm, bn, warps, stages = cfg
    kern = A.attention_fwd_kernel
    ptr = "*fp32" if wide else "*bf16"
    sig = {n: (ptr if n in "QKVOM" else "i32") for n in kern.arg_names}
    sig["qk_scale"] = sig["softcap"] = "fp32"
    const = dict(IS_CAUSAL=True, WINDOW=masked, HAS_MASK=masked, MASK_BOOL=False, SOFTCAP=masked,
                 PACKED=packed, EVEN_D=True, BLOCK_M=bm, BLOCK_N=bn, BLOCK_D=block_d, BLOCK_DV=block_d,
                 stride_qd=1, stride_kd=1, stride_vd=1, stride_od=1, stride_mk=1)
    for c in const:
        sig[c] = "constexpr"
    src = triton.compiler.ASTSource(kern, sig, const)
    out = triton.compile(src, target=GPUTarget("cuda", 90, 32),
                         options=dict(num_warps=warps, num_stages=stages))
    assert out.asm.get("cubin")  # ptxas ran
    assert out.metadata.shared <= 232448, out.metadata.shared  # H100 opt-in shared memory


def test_dynamic_seq_len_codegen():
    """Symbolic Sq/Skv: config from the size hint (no guard beyond Inductor's int32 ones),
    symbolic grid."""
    import torch._inductor.config as ic
    from torch._inductor.compile_fx import compile_fx
    from torch._inductor.graph import GraphLowering

    from tri_inductor.testing.codegen_only import fake_cuda_inputs, fake_sm90

    cap = {}

    def backend(gm, example_inputs):
        cap["gm"] = gm
        return lambda *a: gm(*[t.to("meta") if isinstance(t, torch.Tensor) else t for t in a])

    q = torch.randn(1, 8, 40, 64, dtype=torch.bfloat16)
    k = torch.randn(1, 2, 40, 64, dtype=torch.bfloat16)
    v = k.clone()
    for t in (q, k, v):
        torch._dynamo.mark_dynamic(t, 2)

    def f(q, k, v):
        return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)

    torch._dynamo.reset()
    torch.compile(f, backend=backend, fullgraph=True)(q, k, v)
    gm = cap["gm"]
    assert rewrite_attention_in_dynamo_graph(gm) == 1
    vals = [n.meta["example_value"] for n in gm.graph.nodes if n.op == "placeholder"]
    fake_mode = torch._guards.detect_fake_mode(vals)
    codes = []
    saved = GraphLowering.save_output_code
    GraphLowering.save_output_code = staticmethod(codes.append)
    try:
        with fake_sm90():
            fin, _ = fake_cuda_inputs(vals, fake_mode)
            with ic.patch(force_disable_caches=True):
                compile_fx(gm, fin)
    finally:
        GraphLowering.save_output_code = saved
    code = codes[-1]
    body = code[code.index("def call("):]
    _assert_ours(code, body)
    run = next(line for line in body.splitlines() if "attention_fwd_kernel_0.run(" in line)
    assert "// 64" in run  # grid over the symbolic sequence length
    assert all("2147483647" in str(g.expr) for g in fake_mode.shape_env.guards)


# ----------------------------------------------------------------------------- masked attention

def _padding_mask(B, Skv, lengths, left=False):
    """[B, 1, 1, Skv] boolean key-padding mask (True = a real token)."""
    j = torch.arange(Skv)
    keep = torch.stack([(j >= Skv - n) if left else (j < n) for n in lengths])
    return keep[:, None, None, :]


def _masks(B, Hq, Sq, Skv, g):
    """name -> (mask, is_causal, causal_offset, window) covering the forms models hand SDPA."""
    off = Skv - Sq
    i = torch.arange(Sq)[:, None] + off
    j = torch.arange(Skv)[None, :]
    causal = (j <= i)[None, None]
    pad = _padding_mask(B, Skv, [Skv - 3 * b for b in range(B)], left=True)
    neg = torch.finfo(torch.float32).min
    rand = torch.randn(B, Hq, Sq, Skv, generator=g) * 2
    rand = rand.masked_fill(torch.rand(B, Hq, Sq, Skv, generator=g) < 0.2, float("-inf"))
    return {
        "causal-bool": (causal, False, 0, 0),
        "padding-bool": (pad, False, 0, 0),
        "causal+padding-bool": (causal & pad, False, 0, 0),
        "causal+padding-additive-min": (torch.zeros(B, 1, Sq, Skv).masked_fill(~(causal & pad), neg), False, 0, 0),
        "random-additive-per-head": (rand, False, 0, 0),
        "additive-2d": (torch.randn(Sq, Skv, generator=g), True, off, 0),
        "window-flag": (None, True, off, 7),
        "window+padding": (pad, True, off, 7),
        "window-bool": (causal & (j > i - 5)[None, None], False, 0, 0),
        "wide-window+padding": (pad, True, off, 70),
    }


MASK_SHAPES = [
    # (B, Hq, Hkv, Sq, Skv, D, dtype): odd lengths; q shorter than k; GQA; MQA; D = 256; decode.
    (2, 4, 2, 37, 37, 64, torch.float32),
    (2, 4, 1, 19, 83, 128, torch.bfloat16),
    (1, 2, 2, 70, 70, 256, torch.float16),
    (2, 8, 2, 1, 45, 64, torch.float32),
    (1, 2, 1, 150, 161, 64, torch.bfloat16),  # several tiles: unchecked middle blocks too
]


@pytest.mark.parametrize("shape", MASK_SHAPES, ids=lambda c: "-".join(map(str, c)).replace("torch.", ""))
def test_masked_attention_numerics(shape):
    B, Hq, Hkv, Sq, Skv, D, dt = shape
    g = torch.Generator().manual_seed(Sq * 1000 + Skv)
    q = torch.randn(B, Hq, Sq, D, generator=g).to(dt)
    k = torch.randn(B, Hkv, Skv, D, generator=g).to(dt)
    v = torch.randn(B, Hkv, Skv, D, generator=g).to(dt)
    scale = 1.0 / math.sqrt(D)
    for name, (mask, causal, off, window) in _masks(B, Hq, Sq, Skv, g).items():
        m = mask if mask is None or mask.dtype == torch.bool else mask.to(dt)
        out = A.attention(q, k, v, causal, scale, m, off, window)
        ref = A.reference_attention(q, k, v, causal, scale, m, off, window)
        assert torch.isfinite(out).all(), name
        err = ((out.double() - ref).norm() / ref.norm()).item()
        assert err < TOL[dt], (name, err)


def test_fully_masked_rows_are_zero_or_uniform():
    """A row that sees no key gives 0 (boolean mask, SDPA's safe softmax); a row masked with
    finfo.min everywhere averages all keys, as softmax over equal logits does."""
    q = torch.randn(1, 2, 9, 64)
    k, v = torch.randn(1, 2, 9, 64), torch.randn(1, 2, 9, 64)
    keep = torch.ones(1, 1, 9, 9, dtype=torch.bool)
    keep[..., 3, :] = False
    out = A.attention(q, k, v, False, 0.125, keep)
    assert out[0, :, 3].abs().max().item() == 0.0
    add = torch.zeros(1, 1, 9, 9).masked_fill(~keep, torch.finfo(torch.float32).min)
    out = A.attention(q, k, v, False, 0.125, add)
    torch.testing.assert_close(out[0, :, 3], v[0].mean(dim=1), rtol=1e-5, atol=1e-5)
    ref = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=add, scale=0.125)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dt", [torch.float32, torch.bfloat16])
def test_softcap_attention(dt):
    g = torch.Generator().manual_seed(3)
    q = torch.randn(1, 4, 33, 128, generator=g).to(dt) * 3
    k, v = torch.randn(1, 2, 33, 128, generator=g).to(dt) * 3, torch.randn(1, 2, 33, 128, generator=g).to(dt)
    pad = _padding_mask(1, 33, [30])
    out = A.attention(q, k, v, True, 0.0625, pad, 0, 0, 50.0)
    ref = A.reference_attention(q, k, v, True, 0.0625, pad, 0, 0, 50.0)
    assert ((out.double() - ref).norm() / ref.norm()).item() < TOL[dt]


# ----------------------------------------------------------------------------- Dynamo-level forms

def _hf_style_mask(pad, Sq, Skv, window=0):
    """transformers' masking_utils spelling: index grids compared, padding_mask[batch, kv]."""
    B = pad.shape[0]
    b = torch.arange(B)[:, None, None, None]
    qi = (torch.arange(Sq) + (Skv - Sq))[None, None, :, None]
    ki = torch.arange(Skv)[None, None, None, :]
    m = qi.new_ones((), dtype=torch.bool)
    m = m & (ki <= qi)
    if window:
        m = m & (ki > qi - window)
    return (m & pad[b, ki]).expand(B, -1, Sq, Skv)


def _attention_calls(gm):
    return [n for n in gm.graph.nodes if n.target is torch.ops.tri_inductor.attention.default]


@pytest.mark.parametrize("window", [0, 3])
def test_hf_mask_read_back_as_flags(window):
    """causal & window & padding built from index comparisons -> is_causal, offset, window and a
    [B, 1, 1, Skv] padding mask: no [Sq, Skv] mask is loaded; numerics match SDPA on the mask."""
    F = torch.nn.functional
    B, H, Sq, Skv, D = 2, 4, 5, 11, 64
    q = torch.randn(B, H, Sq, D)
    k, v = torch.randn(B, H, Skv, D), torch.randn(B, H, Skv, D)
    pad = torch.ones(B, Skv, dtype=torch.bool)
    pad[1, :4] = False

    def f(q, k, v, pad):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=_hf_style_mask(pad, Sq, Skv, window))

    gm = dynamo_graph(f, q, k, v, pad, fullgraph=True)
    assert rewrite_attention_in_dynamo_graph(gm) == 1
    (call,) = _attention_calls(gm)
    is_causal, scale, mask, offset, win = call.args[3:8]
    assert (is_causal, offset, win) == (True, Skv - Sq, window)
    assert mask.meta["example_value"].shape == (B, 1, 1, Skv)
    ref = f(q, k, v, pad)
    out = A.attention(q, k, v, True, scale, pad[:, None, None, :], offset, win)
    assert ((out.double() - ref.double()).norm() / ref.double().norm()).item() < TOL[torch.float32]


def _explicit_mul(q, k, v, mask):
    s = torch.matmul(q, k.transpose(-2, -1)) * 0.125 + mask
    return torch.softmax(s, dim=-1) @ v


def _explicit_div_fp32_softmax(q, k, v, mask):
    s = (q @ k.transpose(2, 3)) / 8.0
    s = s + mask
    p = torch.nn.functional.softmax(s, dim=-1, dtype=torch.float32).to(q.dtype)
    return torch.matmul(torch.nn.functional.dropout(p, p=0.0, training=False), v)


def _explicit_no_mask(q, k, v, mask):
    return (q @ k.transpose(-1, -2) * 0.125).softmax(-1) @ v


def _explicit_masked_fill(q, k, v, mask):
    s = (q @ k.transpose(-2, -1)) * 0.125
    return torch.softmax(s.masked_fill(mask < -1, float("-inf")), dim=-1) @ v


def _explicit_softcap(q, k, v, mask):
    s = torch.matmul(q, k.transpose(2, 3)) * 0.125
    s = torch.tanh(s / 5.0) * 5.0
    return torch.softmax(s + mask, dim=-1, dtype=torch.float32).to(q.dtype) @ v


def _explicit_where_keep(q, k, v, mask):  # torch.where(keep, s, finfo.min)
    s = torch.matmul(q, k.transpose(2, 3)) * q.shape[-1] ** -0.5
    return torch.matmul(torch.where(mask > -1, s, torch.finfo(s.dtype).min).softmax(-1), v)


def _explicit_where_drop(q, k, v, mask):  # torch.where(drop, -inf, s)
    s = (q @ k.transpose(-2, -1)) / 8.0
    return torch.softmax(torch.where(mask < -1, float("-inf"), s), dim=-1) @ v


def _explicit_masked_fill_not_keep(q, k, v, mask):  # masked_fill(~keep, -inf)
    s = (q @ k.transpose(-2, -1)) * 0.125
    return torch.softmax(s.masked_fill(~(mask > -1), float("-inf")), dim=-1) @ v


@pytest.mark.parametrize("form", [_explicit_mul, _explicit_div_fp32_softmax, _explicit_no_mask,
                                  _explicit_masked_fill, _explicit_softcap, _explicit_where_keep,
                                  _explicit_where_drop, _explicit_masked_fill_not_keep],
                         ids=lambda f: f.__name__)
def test_explicit_softmax_form_rewritten(form):
    B, H, S, D = 2, 4, 13, 64
    g = torch.Generator().manual_seed(5)
    q, k, v = (torch.randn(B, H, S, D, generator=g) for _ in range(3))
    mask = torch.zeros(B, 1, S, S).masked_fill(torch.rand(B, 1, S, S, generator=g) < 0.3, -1e9)
    gm = dynamo_graph(form, q, k, v, mask, fullgraph=True)
    assert rewrite_attention_in_dynamo_graph(gm) == 1
    assert not [n for n in gm.graph.nodes if n.op in ("call_function", "call_method")
                and ("softmax" in str(n.target) or "matmul" in str(n.target))]
    (call,) = _attention_calls(gm)
    ref = form(q.double(), k.double(), v.double(), mask.double())
    by_name = {"L_q_": q, "L_k_": k, "L_v_": v, "L_mask_": mask}  # Dynamo orders placeholders by first use
    out = gm(*[by_name[n.target] for n in gm.graph.find_nodes(op="placeholder")])
    out = out[0] if isinstance(out, (tuple, list)) else out
    assert ((out.double() - ref).norm() / ref.norm()).item() < TOL[torch.float32]


REPEAT_KV = {  # GQA's K/V repeated to the query heads, as model code writes it (2 KV heads, 4 q heads)
    "hf repeat_kv": lambda x: x[:, :, None, :, :].expand(2, 2, 2, 13, 64).reshape(2, 4, 13, 64),
    "short index": lambda x: x[:, :, None].expand(2, 2, 2, 13, 64).reshape(2, 4, 13, 64),
    "unsqueeze, flatten": lambda x: x.unsqueeze(2).expand(-1, -1, 2, -1, -1).flatten(1, 2),
    "repeat_interleave": lambda x: x.repeat_interleave(2, dim=1),
}


@pytest.mark.parametrize("name", list(REPEAT_KV))
@pytest.mark.parametrize("explicit", [True, False], ids=["explicit", "sdpa"])
def test_repeated_kv_read_unrepeated(name, explicit):
    """The attention call gets the KV heads themselves (the kernel maps query-head groups), and
    computes what the repeated form does (float64 reference)."""
    rep = REPEAT_KV[name]

    def f(q, k, v):
        kr, vr = rep(k), rep(v)
        if explicit:
            return torch.softmax(q @ kr.transpose(-2, -1) * 0.125, dim=-1) @ vr
        return torch.nn.functional.scaled_dot_product_attention(q, kr, vr, is_causal=True)

    g = torch.Generator().manual_seed(8)
    q = torch.randn(2, 4, 13, 64, generator=g)
    k, v = (torch.randn(2, 2, 13, 64, generator=g) for _ in range(2))
    gm = dynamo_graph(f, q, k, v, fullgraph=True)
    assert rewrite_attention_in_dynamo_graph(gm) == 1
    (call,) = _attention_calls(gm)
    assert [a.target for a in call.args[1:3]] == ["L_k_", "L_v_"], call.args[1:3]
    assert not [n for n in gm.graph.nodes if "expand" in str(n.target) or "repeat" in str(n.target)]
    by_name = {"L_q_": q, "L_k_": k, "L_v_": v}
    out = gm(*[by_name[n.target] for n in gm.graph.find_nodes(op="placeholder")])
    out = out[0] if isinstance(out, (tuple, list)) else out
    ref = f(q.double(), k.double(), v.double())
    assert ((out.double() - ref).norm() / ref.norm()).item() < TOL[torch.float32]


def test_explicit_form_left_alone_when_not_attention():
    def f(q, k, v):  # softmax over dim 2 and a scale applied after the mask: not the attention op
        s = q @ k.transpose(-2, -1)
        return torch.softmax(s, dim=2) @ v

    q = torch.randn(1, 2, 8, 16)
    gm = dynamo_graph(f, q, q.clone(), q.clone(), fullgraph=True)
    assert rewrite_attention_in_dynamo_graph(gm) == 0
