"""rope_cache / rope_cos_sin: kernel numerics (Triton interpreter) and FX patterns (codegen-only).

Interpreter: ``launch`` runs real CPU tensors through ``InterpretedFunction`` without
TRITON_INTERPRET=1 (not set here); see the note in tri_inductor/patterns/rms_norm.py.
"""
from __future__ import annotations

import re

import pytest
import torch
from torch._inductor.pattern_matcher import PatternMatcherPass

from pattern_harness import assert_our_kernel, backend_output_code, compile_codegen, global_memory_ops, rel, sm90_ptx
from tri_inductor.patterns import rope as P

# ‖out − ref‖ / ‖ref‖ against the float64 reference.
TOL = {torch.bfloat16: 1e-2, torch.float16: 2e-3, torch.float32: 1e-5}
# (tokens, q heads, kv heads, head_size, rotary_dim)
GEOMS = [(1, 1, 1, 64, 64), (3, 4, 1, 64, 32), (17, 6, 2, 96, 96), (5, 32, 8, 128, 128), (4, 2, 2, 80, 40)]



@pytest.mark.parametrize("dtype", list(TOL))
@pytest.mark.parametrize("is_neox", [True, False], ids=["neox", "gptj"])
@pytest.mark.parametrize("geom", GEOMS, ids=lambda g: "x".join(map(str, g)))
def test_rope_cache_matches_reference(geom, is_neox: bool, dtype, poison) -> None:
    T, Hq, Hk, D, rot = geom
    pos = torch.randint(0, 50, (T,))
    cache = torch.randn(50, rot, dtype=dtype)
    # q and k as views of a fused qkv buffer (row stride > width), as vLLM's attention splits them
    qkv = torch.randn(T, (Hq + 2 * Hk) * D, dtype=dtype)
    q, k, _ = qkv.split([Hq * D, Hk * D, Hk * D], dim=-1)
    qkv0 = qkv.clone()
    qo, ko = P.rope_cache(pos, q, k, cache, D, rot, is_neox)
    rq, rk = P.reference_rope_cache(pos, q, k, cache, D, rot, is_neox)
    assert qo.shape == q.shape and ko.shape == k.shape and qo.dtype == dtype
    assert not qo.isnan().any() and not ko.isnan().any()  # every element written
    assert rel(qo, rq) < TOL[dtype] and rel(ko, rk) < TOL[dtype]
    assert torch.equal(qkv, qkv0)  # functional: inputs untouched


@pytest.mark.parametrize("dtype", list(TOL))
@pytest.mark.parametrize("is_neox", [True, False], ids=["neox", "gptj"])
@pytest.mark.parametrize("geom", GEOMS, ids=lambda g: "x".join(map(str, g)))
def test_rope_cos_sin_matches_reference(geom, is_neox: bool, dtype, poison) -> None:
    T, Hq, Hk, D, rot = geom
    B, S = 2, max(T // 2, 1)
    # HF layout: q_proj(x).view(B, S, H, D).transpose(1, 2); cos/sin of batch 1 broadcast
    q = torch.randn(B, S, Hq, D, dtype=dtype).transpose(1, 2)
    k = torch.randn(B, S, Hk, D, dtype=dtype).transpose(1, 2)
    cos, sin = torch.randn(1, S, rot, dtype=dtype), torch.randn(1, S, rot, dtype=dtype)
    qo, ko = P.rope_cos_sin(q, k, cos, sin, is_neox)
    rq, rk = P.reference_rope_cos_sin(q, k, cos, sin, is_neox)
    assert qo.shape == q.shape and qo.stride() == q.stride()  # keeps HF's layout
    assert not qo.isnan().any() and not ko.isnan().any()
    assert rel(qo, rq) < TOL[dtype] and rel(ko, rk) < TOL[dtype]


@pytest.mark.parametrize("is_neox", [True, False], ids=["neox", "gptj"])
@pytest.mark.parametrize("geom", [(37, 4, 2, 64, 64), (5, 3, 1, 96, 48), (70, 2, 2, 128, 128)],
                         ids=lambda g: "x".join(map(str, g)))
def test_rope_cos_sin_head_major_layout(geom, is_neox: bool, poison) -> None:
    """q/k contiguous [B, H, S, D] (a head's positions adjacent): the kernel tiles positions of
    one head (BLOCK_T > 1), S not a multiple of the tile, tiles crossing batch rows."""
    S, Hq, Hk, D, rot = geom
    B = 2
    q, k = torch.randn(B, Hq, S, D, dtype=torch.bfloat16), torch.randn(B, Hk, S, D, dtype=torch.bfloat16)
    cos, sin = torch.randn(B, S, rot, dtype=torch.bfloat16), torch.randn(B, S, rot, dtype=torch.bfloat16)
    assert P._blocks(D, rot, Hq, S, heads_adjacent=False)[0] > 1
    qo, ko = P.rope_cos_sin(q, k, cos, sin, is_neox)
    rq, rk = P.reference_rope_cos_sin(q, k, cos, sin, is_neox)
    assert qo.stride() == q.stride() and not qo.isnan().any() and not ko.isnan().any()
    assert rel(qo, rq) < TOL[torch.bfloat16] and rel(ko, rk) < TOL[torch.bfloat16]


def test_reference_agrees_with_vllm_native() -> None:
    # Our float64 reference follows vLLM's forward_static (the semantics the pattern replaces).
    pytest.importorskip("vllm", reason="vLLM 0.26 needed for its RotaryEmbedding.forward_static")
    from vllm.model_executor.layers.rotary_embedding import RotaryEmbedding

    for is_neox in (True, False):
        pos = torch.randint(0, 30, (6,))
        q, k = torch.randn(6, 4 * 64, dtype=torch.float64), torch.randn(6, 2 * 64, dtype=torch.float64)
        cache = torch.randn(30, 32, dtype=torch.float64)
        vq, vk = RotaryEmbedding.forward_static(pos, q, k, 64, 32, cache, is_neox)
        rq, rk = P.reference_rope_cache(pos, q, k, cache, 64, 32, is_neox)
        torch.testing.assert_close(vq, rq)
        torch.testing.assert_close(vk, rk)


# ----------------------------------------------------------------------------------- patterns
@pytest.fixture(scope="module")
def pm() -> PatternMatcherPass:
    pm = PatternMatcherPass()
    P.register_patterns(pm)
    return pm


@pytest.mark.parametrize("head_size, rotary_dim, is_neox, dtype", [
    (64, 64, True, torch.bfloat16), (128, 128, False, torch.bfloat16), (96, 96, True, torch.float32),
    (128, 64, True, torch.bfloat16), (80, 40, False, torch.bfloat16)])
def test_vllm_rotary_embedding_matches(vllm_ctx, pm, head_size, rotary_dim, is_neox, dtype) -> None:
    from vllm.model_executor.layers.rotary_embedding import RotaryEmbedding

    rope = RotaryEmbedding(head_size, rotary_dim, 64, 10000.0, is_neox, dtype)
    Hq, Hk = 2, 1

    def attn_prologue(positions, qkv):  # vLLM attention: split fused qkv, then rotary_emb
        q, k, v = qkv.split([Hq * head_size, Hk * head_size, Hk * head_size], dim=-1)
        q, k = rope.forward_native(positions, q, k)
        return q, k, v

    pos = torch.randint(0, 64, (5,))
    qkv = torch.randn(5, (Hq + 2 * Hk) * head_size, dtype=dtype)
    hits, code = compile_codegen(attn_prologue, [pos, qkv], pm)
    assert hits == 1
    assert_our_kernel(code, "_rope_kernel")
    assert f"'HEAD': {head_size}, 'ROT': {rotary_dim}, 'IS_NEOX': {is_neox}" in code
    # the replacement computes what the layer computes
    q, k, _ = qkv.split([Hq * head_size, Hk * head_size, Hk * head_size], dim=-1)
    vq, vk = rope.forward_native(pos, q, k)
    oq, ok = P.rope_cache(pos, q, k, rope.cos_sin_cache, head_size, rotary_dim, is_neox)
    assert rel(oq, vq.double()) < TOL[dtype] and rel(ok, vk.double()) < TOL[dtype]


@pytest.mark.parametrize("head_size, rotary_dim, is_neox", [(64, 64, True), (128, 64, False)])
def test_vllm_rotary_embedding_per_head_outputs_match(vllm_ctx, pm, head_size, rotary_dim, is_neox) -> None:
    """vLLM's attention views q/k per head right after the rotary embedding; Inductor then drops
    forward_static's reshape to [tokens, heads * head_size] and back, so the graph ends at the
    per-head cat (the form seen in vLLM's real graph on the GPU)."""
    from vllm.model_executor.layers.rotary_embedding import RotaryEmbedding

    rope = RotaryEmbedding(head_size, rotary_dim, 64, 10000.0, is_neox, torch.bfloat16)
    Hq, Hk = 4, 2

    def attn_prologue(positions, qkv):
        q, k, v = qkv.split([Hq * head_size, Hk * head_size, Hk * head_size], dim=-1)
        q, k = rope.forward_native(positions, q, k)
        return q.view(-1, Hq, head_size), k.view(-1, Hk, head_size), v.view(-1, Hk, head_size)

    pos = torch.randint(0, 64, (5,))
    qkv = torch.randn(5, (Hq + 2 * Hk) * head_size, dtype=torch.bfloat16)
    hits, code = compile_codegen(attn_prologue, [pos, qkv], pm)
    assert hits == 1
    assert_our_kernel(code, "_rope_kernel")


class _RealPassOrder:
    """RoPE's patterns, then rms_norm's: the order of the real pass (options.FAMILIES)."""

    def __init__(self) -> None:
        from tri_inductor.passes import _registered_patterns

        self.passes = _registered_patterns(("rms_norm", "rope"), False)
        assert [f for f, _ in self.passes] == ["rope", "rms_norm"]
        self.by_family: dict[str, int] = {}

    def apply(self, graph) -> int:
        for family, pm in self.passes:
            self.by_family[family] = self.by_family.get(family, 0) + pm.apply(graph)
        return sum(self.by_family.values())


@pytest.mark.parametrize("rotary_dim, wrap", [(128, None), (64, None), (128, True), (128, False)],
                         ids=["full-body", "partial-body", "full-vllm-ir", "full-vllm-native"])
def test_vllm_rope_after_qk_norm(vllm_ctx, rotary_dim, wrap) -> None:
    """Qwen3: q/k are normed per head, viewed back to [tokens, heads * head_size], then rotated;
    the rotary embedding's own per-head view is then a no-op Inductor removes, so the graph
    starts at the rotary split of the norm output.  Norms and RoPE become one kernel of ours
    (fp32 between them, as Inductor's own fused kernel keeps them) and nothing is left to Inductor."""
    from vllm.model_executor.layers.rotary_embedding import RotaryEmbedding

    hd, Hq, Hk = 128, 4, 2
    rope = RotaryEmbedding(hd, rotary_dim, 64, 1e6, True, torch.bfloat16)

    def body(x, w):  # vLLM's native RMSNorm body (vllm/ir/ops/layernorm.py)
        xf = x.float()
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + 1e-6)).to(w.dtype) * w

    def layer(x, w):  # vLLM's RMSNorm layer: an IR node (torch wrap on) or its body inlined (off)
        from vllm import ir

        return ir.ops.rms_norm(x, w, 1e-6)

    def qwen3_prologue(norm):
        def prologue(pos, qkv, qw, kw):  # vLLM's Qwen3Attention.forward up to attention
            q, k, v = qkv.split([Hq * hd, Hk * hd, Hk * hd], dim=-1)
            q = norm(q.view(*q.shape[:-1], q.shape[-1] // hd, hd), qw).view(q.shape)
            k = norm(k.view(*k.shape[:-1], k.shape[-1] // hd, hd), kw).view(k.shape)
            q, k = rope.forward_native(pos, q, k)
            return q.view(-1, Hq, hd), k.view(-1, Hk, hd), v.view(-1, Hk, hd)
        return prologue

    prologue = qwen3_prologue(body if wrap is None else layer)

    g = torch.Generator().manual_seed(rotary_dim)
    pos = torch.randint(0, 64, (5,), generator=g)
    qkv = torch.randn(5, (Hq + 2 * Hk) * hd, generator=g).to(torch.bfloat16)
    qw, kw = torch.randn(hd, generator=g).to(torch.bfloat16), torch.randn(hd, generator=g).to(torch.bfloat16)
    passes = _RealPassOrder()
    import contextlib

    from vllm import ir

    with ir.enable_torch_wrap(wrap) if wrap is not None else contextlib.nullcontext():
        _, code = compile_codegen(prologue, [pos, qkv, qw, kw], passes, dynamic=[(0, 0), (1, 0)])
    assert passes.by_family == {"rope": 1, "rms_norm": 0}, passes.by_family
    assert_our_kernel(code, "_rope_kernel")
    assert "_rms_norm_kernel" not in code
    # nothing left to Inductor: no RoPE or norm of its own, and no copy of the per-head q/k views
    # of the fused qkv buffer (read in place)
    assert not re.findall(r"def (triton_\w+)", code), re.findall(r"def (triton_\w+)", code)
    # the fused op computes what the layer computes
    q, k, _ = qkv.split([Hq * hd, Hk * hd, Hk * hd], dim=-1)
    q3, k3 = q.view(5, Hq, hd), k.view(5, Hk, hd)
    vq, vk = qwen3_prologue(body)(pos, qkv, qw, kw)[:2]  # eager, the native body
    oq, ok = P.qk_norm_rope_cache(pos, q3, k3, qw, kw, 1e-6, rope.cos_sin_cache, rotary_dim, True)
    assert oq.shape == q3.shape and ok.shape == k3.shape
    assert rel(oq, vq.double()) < TOL[torch.bfloat16]
    assert rel(ok, vk.double()) < TOL[torch.bfloat16]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_hf_apply_rotary_pos_emb_matches(pm, dtype) -> None:
    pytest.importorskip("transformers", reason="the Hugging Face form needs transformers")
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    B, S, Hq, Hk, D = 2, 5, 2, 1, 64

    def attn_prologue(qf, kf, cos, sin):  # LlamaAttention: view -> transpose -> rope
        q = qf.view(B, -1, Hq, D).transpose(1, 2)
        k = kf.view(B, -1, Hk, D).transpose(1, 2)
        return apply_rotary_pos_emb(q, k, cos, sin)

    qf, kf = torch.randn(B, S, Hq * D, dtype=dtype), torch.randn(B, S, Hk * D, dtype=dtype)
    ang = torch.randn(1, S, D // 2)
    cos, sin = torch.cat((ang, ang), -1).cos().to(dtype), torch.cat((ang, ang), -1).sin().to(dtype)
    hits, code = compile_codegen(attn_prologue, [qf, kf, cos, sin], pm, dynamic=[(i, 1) for i in range(4)])
    assert hits == 1
    assert_our_kernel(code, "_rope_kernel")
    hq, hk = attn_prologue(qf, kf, cos, sin)
    oq, ok = P.rope_cos_sin(qf.view(B, S, Hq, D).transpose(1, 2), kf.view(B, S, Hk, D).transpose(1, 2),
                            cos, sin, True)
    assert rel(oq, hq.double()) < TOL[dtype] and rel(ok, hk.double()) < TOL[dtype]


def test_hf_partial_rotary_matches(pm) -> None:
    pytest.importorskip("transformers", reason="the Hugging Face form needs transformers")
    from transformers.models.llama.modeling_llama import rotate_half

    B, S, H, D, rot = 1, 4, 2, 64, 32

    def phi_rope(qf, kf, cos, sin):  # transformers Phi / StableLM: rotate the first rot dims
        q = qf.view(B, -1, H, D).transpose(1, 2)
        k = kf.view(B, -1, H, D).transpose(1, 2)
        cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
        q_rot, q_pass = q[..., :rot], q[..., rot:]
        k_rot, k_pass = k[..., :rot], k[..., rot:]
        q_embed = (q_rot * cos) + (rotate_half(q_rot) * sin)
        k_embed = (k_rot * cos) + (rotate_half(k_rot) * sin)
        return torch.cat([q_embed, q_pass], dim=-1), torch.cat([k_embed, k_pass], dim=-1)

    qf, kf = torch.randn(B, S, H * D, dtype=torch.bfloat16), torch.randn(B, S, H * D, dtype=torch.bfloat16)
    cos, sin = torch.randn(1, S, rot, dtype=torch.bfloat16), torch.randn(1, S, rot, dtype=torch.bfloat16)
    hits, code = compile_codegen(phi_rope, [qf, kf, cos, sin], pm, dynamic=[(i, 1) for i in range(4)])
    assert hits == 1
    assert_our_kernel(code, "_rope_kernel")


def _eager_rotary(positions, query, key, head_size, cos_sin_cache, is_neox):
    q, k = P.reference_rope_cache(positions, query, key, cos_sin_cache, head_size,
                                  cos_sin_cache.shape[-1], is_neox)
    query.copy_(q)
    key.copy_(k)


@pytest.fixture
def c_ops():
    """Stand-in for vLLM's CUDA schema (vllm._C is not loadable on this machine)."""
    lib = torch.library.Library("_C", "FRAGMENT")
    lib.define("rotary_embedding(Tensor positions, Tensor! query, Tensor!? key, int head_size, "
               "Tensor cos_sin_cache, bool is_neox) -> ()")
    lib.impl("rotary_embedding", _eager_rotary, "CPU")
    lib._register_fake("rotary_embedding", lambda *args: None)
    yield
    lib._destroy()


def test_vllm_custom_op_form_matches(c_ops) -> None:
    pm = PatternMatcherPass()
    P.register_patterns(pm)
    cache = torch.randn(64, 64, dtype=torch.bfloat16)

    def forward_cuda(positions, qkv):  # RotaryEmbedding.forward_cuda on split q, k
        q, k, v = qkv.split([128, 64, 64], dim=-1)
        torch.ops._C.rotary_embedding(positions, q, k, 64, cache, True)
        return q, k, v

    pos, qkv = torch.randint(0, 64, (5,)), torch.randn(5, 256, dtype=torch.bfloat16)
    hits, code = compile_codegen(forward_cuda, [pos, qkv], pm, enable_auto_functionalized_v2=False)
    assert hits == 1
    assert_our_kernel(code, "_rope_kernel")
    assert "torch.ops._C" not in code


def test_tri_inductor_backend_uses_our_kernel() -> None:
    """The same form through the project backend (all families' patterns, codegen-only)."""
    pytest.importorskip("transformers", reason="the Hugging Face form needs transformers")
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    def FN_(q, k, cos, sin):
        return apply_rotary_pos_emb(q, k, cos, sin)
    assert_our_kernel(backend_output_code(FN_, torch.randn(1, 2, 4, 64), torch.randn(1, 1, 4, 64), torch.randn(1, 4, 64), torch.randn(1, 4, 64)), "_rope_kernel")


@pytest.mark.parametrize("layout", ["vllm", "hf_head_major"])
def test_tile_loads_are_16_byte_and_issued_before_cos_sin(layout):
    """sm_90 PTX: q/k tiles move in 16-byte vectors in both tilings, and in vLLM's form (cos/sin
    rows gathered by position) the tile's loads are issued before the position load, so they
    overlap its dependent round trip; the position is one scalar load per branch."""
    if layout == "vllm":
        const = dict(S=1, HEAD=128, ROT=128, IS_NEOX=True, FROM_CACHE=True, BLOCK_T=1, BLOCK_H=32,
                     HALF_BLOCK=64, PASS_BLOCK=1, QK_NORM=False)
    else:
        const = dict(HEAD=128, ROT=128, IS_NEOX=True, FROM_CACHE=False, BLOCK_T=32, BLOCK_H=1,
                     HALF_BLOCK=64, PASS_BLOCK=1, QK_NORM=False)
    types = {n: "*bf16" for n in ("q_ptr", "k_ptr", "qo_ptr", "ko_ptr", "cos_ptr", "sin_ptr", "qw_ptr", "kw_ptr")}
    types.update(pos_ptr="*i64", eps="fp32")
    ops = global_memory_ops(sm90_ptx(P._rope_kernel, types, const, num_warps=8, unaligned=("T", "S")))
    loads = [o for o in ops if o.startswith("ld.global")]
    assert all(".v4." in o for o in ops if o.startswith("st.global")), ops
    if layout == "vllm":
        scalar = [i for i, o in enumerate(loads) if o == "ld.global.b64"]
        assert len(scalar) == 2, loads  # the position, once in the q and once in the k branch
        assert all(".v4." in o for o in loads[:scalar[0]]) and scalar[0] >= 2, loads
    else:
        assert loads and all(".v4." in o for o in loads), loads


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("is_neox", [True, False], ids=["neox", "gptj"])
@pytest.mark.parametrize("geom", [(1, 2, 1, 128, 128), (7, 6, 2, 64, 32), (3, 4, 4, 96, 96)],
                         ids=lambda g: "x".join(map(str, g)))
def test_qk_norm_rope_matches_reference(geom, is_neox: bool, dtype, poison) -> None:
    """Per-head RMSNorm then RoPE in one kernel (q/k per-head views of a fused qkv buffer, as
    Qwen3 hands them over), partial rotary included: the pass-through dims are normalised too."""
    T, Hq, Hk, D, rot = geom
    g = torch.Generator().manual_seed(T * 100 + D)
    pos = torch.randint(0, 50, (T,), generator=g)
    cache = torch.randn(50, rot, generator=g).to(dtype)
    qkv = (torch.randn(T, (Hq + 2 * Hk) * D, generator=g) * 3).to(dtype)
    q, k, _ = qkv.split([Hq * D, Hk * D, Hk * D], dim=-1)
    q, k = q.view(T, Hq, D), k.view(T, Hk, D)
    qw, kw = torch.randn(D, generator=g).to(dtype), torch.randn(D, generator=g).to(dtype)
    qo, ko = P.qk_norm_rope_cache(pos, q, k, qw, kw, 1e-6, cache, rot, is_neox)
    rq, rk = P.reference_qk_norm_rope_cache(pos, q, k, qw, kw, 1e-6, cache, rot, is_neox)
    assert qo.shape == q.shape and ko.shape == k.shape and qo.dtype == dtype
    assert not qo.isnan().any() and not ko.isnan().any()
    assert rel(qo, rq) < TOL[dtype] and rel(ko, rk) < TOL[dtype]


def test_qk_norm_rope_rejects_flat_q_with_the_fix_named():
    q, k = torch.randn(3, 2 * 64), torch.randn(3, 64)
    with pytest.raises(RuntimeError, match=r"per-head q/k \[tokens, heads, head_size\].*view them per head"):
        P.qk_norm_rope_cache(torch.zeros(3, dtype=torch.int64), q, k, torch.ones(64), torch.ones(64), 1e-6,
                             torch.randn(8, 64), 64, True)


def _prologue(rope, B, H, D):
    def attn_prologue(qf, kf, cos, sin):
        q = qf.view(B, -1, H, D).transpose(1, 2)
        k = kf.view(B, -1, H, D).transpose(1, 2)
        return rope(q, k, cos, sin)
    return attn_prologue


def test_rotate_half_with_chunk_matches(pm) -> None:
    def rope(q, k, cos, sin):  # rotate_half written with chunk (hand-written models)
        def rot(x):
            x1, x2 = x.chunk(2, dim=-1)
            return torch.cat((-x2, x1), dim=-1)
        cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
        return q * cos + rot(q) * sin, k * cos + rot(k) * sin

    B, S, H, D = 2, 5, 2, 64
    fn = _prologue(rope, B, H, D)
    qf, kf = torch.randn(B, S, H * D, dtype=torch.bfloat16), torch.randn(B, S, H * D, dtype=torch.bfloat16)
    ang = torch.randn(1, S, D // 2)
    cos, sin = torch.cat((ang, ang), -1).cos().bfloat16(), torch.cat((ang, ang), -1).sin().bfloat16()
    hits, code = compile_codegen(fn, [qf, kf, cos, sin], pm, dynamic=[(i, 1) for i in range(4)])
    assert hits == 1
    assert_our_kernel(code, "_rope_kernel")


def _launched(code: str) -> list[str]:
    """The kernels the output code's call() launches, by name without the numbering."""
    return sorted(re.sub(r"_\d+$", "", m) for m in re.findall(r"(\w+)\.run\(", code.split("def call(")[1]))


def _rot(x):
    return torch.cat((-x[..., x.shape[-1] // 2:], x[..., :x.shape[-1] // 2]), dim=-1)


def _rotated_first(q, k, c, s):
    return _rot(q) * s + q * c, _rot(k) * s + k * c


def _upcast(q, k, c, s):
    qf, kf = q.float(), k.float()
    return (qf * c + _rot(qf) * s).to(q.dtype), (kf * c + _rot(kf) * s).to(k.dtype)


OTHER_SPELLINGS = {
    # rotated half first in the sum
    "rotated first": lambda q, k, c, s: _rotated_first(q, k, c.unsqueeze(1), s.unsqueeze(1)),
    # q/k rotated in fp32, cos/sin in the input dtype, cast back
    "fp32 upcast": lambda q, k, c, s: _upcast(q, k, c.unsqueeze(1), s.unsqueeze(1)),
}


def _spelling_inputs(B, S, H, D, seed):
    """bf16 q/k projections [B, S, H*D] and HF-style full-width cos/sin [1, S, D]."""
    g = torch.Generator().manual_seed(seed)
    qf, kf = (torch.randn(B, S, H * D, generator=g).to(torch.bfloat16) for _ in range(2))
    ang = torch.randn(1, S, D // 2, generator=g)
    return qf, kf, torch.cat((ang, ang), -1).cos().bfloat16(), torch.cat((ang, ang), -1).sin().bfloat16()


@pytest.mark.parametrize("name", list(OTHER_SPELLINGS))
def test_other_spellings_match(pm, name) -> None:
    """RoPE as people write it: our kernel, once for q and k, and no Inductor kernel that computes
    (a spelling whose eager result has another memory layout than q's, as ``rot(q) * sin + ...``
    does, gets Inductor's copy into that layout), and a result within bf16 tolerance of the
    spelling run in float64."""
    B, S, H, D = 2, 5, 2, 64
    fn = _prologue(OTHER_SPELLINGS[name], B, H, D)
    qf, kf, cos, sin = _spelling_inputs(B, S, H, D, seed=4)
    hits, code = compile_codegen(fn, [qf, kf, cos, sin], pm, dynamic=[(i, 1) for i in range(4)])
    assert hits == 1
    assert_our_kernel(code, "_rope_kernel")
    launched = _launched(code)
    assert launched.count("_rope_kernel") == 1
    assert all(k == "_rope_kernel" or re.fullmatch(r"triton_poi_fused_[a-z_]*(transpose|view)[a-z_]*", k)
               for k in launched), launched
    oq, ok = P.rope_cos_sin(qf.view(B, S, H, D).transpose(1, 2), kf.view(B, S, H, D).transpose(1, 2), cos, sin, True)
    rq, rk = _prologue(OTHER_SPELLINGS[name], B, H, D)(qf.double(), kf.double(), cos.double(), sin.double())
    assert rel(oq, rq) < TOL[torch.bfloat16] and rel(ok, rk) < TOL[torch.bfloat16]


@pytest.mark.parametrize("name", list(OTHER_SPELLINGS))
def test_other_spellings_numerics_in_interpreter(interpreter, name) -> None:
    """Compiled by the backend and run in the interpreter: within bf16 tolerance of float64."""
    B, S, H, D = 2, 5, 2, 64
    fn = _prologue(OTHER_SPELLINGS[name], B, H, D)
    qf, kf, cos, sin = _spelling_inputs(B, S, H, D, seed=5)
    torch._dynamo.reset()
    oq, ok = torch.compile(fn, backend="tri_inductor")(qf, kf, cos, sin)
    rq, rk = fn(qf.double(), kf.double(), cos.double(), sin.double())
    assert rel(oq, rq) < TOL[torch.bfloat16] and rel(ok, rk) < TOL[torch.bfloat16]


def test_olmo2_fp32_cos_sin_form_matches(pm) -> None:
    from transformers.models.olmo2.modeling_olmo2 import apply_rotary_pos_emb

    B, S, H, D = 2, 5, 2, 64
    fn = _prologue(apply_rotary_pos_emb, B, H, D)
    qf, kf = torch.randn(B, S, H * D, dtype=torch.bfloat16), torch.randn(B, S, H * D, dtype=torch.bfloat16)
    ang = torch.randn(1, S, D // 2)
    cos, sin = torch.cat((ang, ang), -1).cos(), torch.cat((ang, ang), -1).sin()  # fp32, as OLMo 2's
    hits, code = compile_codegen(fn, [qf, kf, cos, sin], pm, dynamic=[(i, 1) for i in range(4)])
    assert hits == 1
    assert_our_kernel(code, "_rope_kernel")
    hq, hk = fn(qf, kf, cos, sin)
    oq, ok = P.rope_cos_sin(qf.view(B, S, H, D).transpose(1, 2), kf.view(B, S, H, D).transpose(1, 2), cos, sin, True)
    assert oq.dtype == hq.dtype == torch.bfloat16
    assert rel(oq, hq.double()) < TOL[torch.bfloat16] and rel(ok, hk.double()) < TOL[torch.bfloat16]


def test_vllm_forms_are_one_graph_in_any_dtype(monkeypatch) -> None:
    """vLLM's forms are traced in one dtype (``rope.SAME_DTYPE_FORMS_TRACED_IN``): traced in fp32
    as well, every one is a duplicate of its bf16 trace, so the fp32 traces would add nothing."""
    from torch._inductor import pattern_matcher as inductor_pm
    from torch._subclasses.fake_tensor import FakeTensorMode, unset_fake_temporarily

    real, seen = inductor_pm.register_replacement, []

    def spy(search_fn, replace_fn, example_inputs, *args, **kwargs):
        new = real(search_fn, replace_fn, example_inputs, *args, **kwargs)
        seen.append((example_inputs[1].dtype, bool(new)))
        return new

    monkeypatch.setattr(inductor_pm, "register_replacement", spy)
    with torch._guards.tracing(None), unset_fake_temporarily(), FakeTensorMode():
        P.register_vllm_rope_forms(PatternMatcherPass(pass_name="dtypes"), (torch.bfloat16, torch.float32))
    fp32 = [new for dt, new in seen if dt == torch.float32]
    assert fp32 and not any(fp32), seen
    assert any(new for dt, new in seen if dt == torch.bfloat16)
