"""vLLM 0.26's MLA layers on our Triton kernels (tri_inductor/vllm_mla.py), on the CPU.

* ``triton_forward`` (what the ``MLAAttention.forward_impl`` hook runs) on a batch of decode
  tokens and prefill requests with and without cached context (two context chunks, so the
  log-sum-exp merges run), our kernels in Triton's interpreter, against a float64 MLA reference
  computed from the raw latents.  vLLM's own Triton decode kernel cannot run here (vLLM disables
  its Triton helpers without a GPU driver): a float64 stand-in with the same contract takes its
  place, so the test checks our half of the call (the latent projections, the query layout, the
  arguments) and vLLM's kernel keeps its own tests.
* the hooks pass through to vLLM when inactive or for a layer we do not cover;
* the KV-cache write and context gather reach our kernels through vLLM's op wrappers;
* the prefill backend in vLLM's CUSTOM slot, and the config change that selects it.
"""
from __future__ import annotations

import types

import pytest
import torch

from pattern_harness import rel

pytest.importorskip("vllm", reason="vLLM 0.26 needed for its MLA layer and op wrappers")
from tri_inductor import vllm_mla  # noqa: E402

# Relative Frobenius error against float64: fp32 kernels summing in another order land near 1e-6;
# bf16 rounds q, the latent cache, the projections' outputs and the attention output (~4e-3 each,
# and Triton 3.6's interpreter truncates fp32 -> bf16 stores, about doubling that).
TOL = {torch.float32: 1e-4, torch.bfloat16: 3e-2}


class _Layer(torch.nn.Module):
    """Stands in for vLLM's MLAAttention (the attributes our code and vLLM's weight processing
    read); ``forward_impl`` records that vLLM's own code ran."""

    def forward_impl(self, q, k_c_normed, k_pe, kv_cache, attn_metadata, output, output_scale=None,
                     output_block_scale=None):
        self.ran_vllm = True
        return output


def _mla_layer(N, P, R, L, V, dtype, seed=0):
    """W_UK_T / W_UV made from kv_b_proj by vLLM's own ``process_weights_after_loading``."""
    from vllm.model_executor.layers.attention.mla_attention import MLAAttention
    from vllm.model_executor.layers.linear import UnquantizedLinearMethod

    g = torch.Generator().manual_seed(seed)
    layer = _Layer()
    proj = torch.nn.Module()
    proj.weight = torch.nn.Parameter((torch.randn(N * (P + V), L, generator=g) * L ** -0.5).to(dtype),
                                     requires_grad=False)
    proj.bias, proj.quant_method = None, UnquantizedLinearMethod()
    layer.kv_b_proj = proj
    layer.num_heads, layer.qk_nope_head_dim, layer.qk_rope_head_dim = N, P, R
    layer.kv_lora_rank, layer.v_head_dim = L, V
    layer.is_aiter_triton_fp4_bmm_enabled = layer.is_aiter_triton_fp8_bmm_enabled = False
    layer.quant_config, layer.layer_name = None, "layers.0.attn"
    for name in ("_k_scale", "_v_scale", "_q_scale", "_prob_scale"):
        setattr(layer, name, torch.tensor(1.0))
    MLAAttention.process_weights_after_loading(layer, dtype)
    layer.impl = types.SimpleNamespace(scale=(P + R) ** -0.5, _sm_count=132)
    layer.chunked_prefill_workspace_size = 64
    layer.kv_cache_dtype = "auto"
    return layer


def _reference(layer, q, lat, seqs):
    """float64 MLA attention: for each new token, its request's keys up to and including itself,
    k = [W_UK c ; k_pe], v = W_UV c from the latents ``lat`` [request][position] = [c ; k_pe]."""
    N, P, L, V = layer.num_heads, layer.qk_nope_head_dim, layer.kv_lora_rank, layer.v_head_dim
    w = layer.kv_b_proj.weight.double().view(N, P + V, L)
    out, t = torch.empty(q.shape[0], N * V, dtype=torch.float64), 0
    for r, (ctx, n_new) in enumerate(seqs):
        c, kpe = lat[r][:, :L].double(), lat[r][:, L:].double()
        k_nope = torch.einsum("npl,tl->tnp", w[:, :P], c)
        v = torch.einsum("nvl,tl->tnv", w[:, P:], c)
        for i in range(n_new):
            pos = ctx + i
            qi = q[t].double()
            s = (torch.einsum("np,tnp->nt", qi[:, :P], k_nope[:pos + 1])
                 + torch.einsum("nr,tr->nt", qi[:, P:], kpe[:pos + 1])) * layer.impl.scale
            out[t] = torch.einsum("nt,tnv->nv", s.softmax(-1), v[:pos + 1]).reshape(-1)
            t += 1
    return out


def _fake_decode(L):
    """vLLM's ``decode_attention_fwd`` contract (MLA form) in float64."""

    def decode_attention_fwd(q, k_buffer, v_buffer, o, lse, req_to_token, b_seq_len, attn_logits, num_kv_splits,
                             sm_scale, page_size=1, logit_cap=0.0, k_scale=None, v_scale=None, is_mla=False):
        assert is_mla and logit_cap == 0.0 and attn_logits.shape[2:] == (num_kv_splits, L + 1)
        assert k_buffer.dim() == 4 and k_buffer.shape[2] == 1 and v_buffer.shape[-1] == L
        assert q.shape[-1] == k_buffer.shape[-1] and q.stride(-1) == 1
        for b in range(q.shape[0]):
            n = int(b_seq_len[b])
            pos = torch.arange(n)
            pages = req_to_token[b, pos // page_size].long()
            keys = k_buffer[pages, pos % page_size, 0].double()
            s = q[b].double() @ keys.t() * sm_scale
            o[b] = (s.softmax(-1) @ keys[:, :L]).to(o.dtype)
            lse[b] = s.logsumexp(-1).to(lse.dtype)
    return decode_attention_fwd


def _batch(layer, decodes, prefills, block_size, chunk, dtype, seed=1):
    """Inputs and vLLM-shaped metadata: ``decodes`` = context lengths of one-token requests,
    ``prefills`` = (context, new tokens) with the context-holding requests first."""
    N, P, R, L = layer.num_heads, layer.qk_nope_head_dim, layer.qk_rope_head_dim, layer.kv_lora_rank
    g = torch.Generator().manual_seed(seed)
    seqs = [(c, 1) for c in decodes] + list(prefills)
    lat = [torch.randn(c + n, L + R, generator=g).to(dtype) for c, n in seqs]
    blocks_per = [-(-(c + n) // block_size) for c, n in seqs]
    perm = torch.randperm(sum(blocks_per) + 3, generator=g) + 1  # scattered, block 0 unused
    cache = torch.full((int(perm.max()) + 1, block_size, L + R), float("nan"), dtype=dtype)
    tables = torch.zeros(len(seqs), max(blocks_per), dtype=torch.int32)
    used = 0
    for r, (c, n) in enumerate(seqs):
        tables[r, :blocks_per[r]] = perm[used:used + blocks_per[r]]
        used += blocks_per[r]
        for pos in range(c + n):
            cache[tables[r, pos // block_size], pos % block_size] = lat[r][pos]
    new = torch.cat([lat[r][c:] for r, (c, n) in enumerate(seqs)])
    T = new.shape[0]
    q = (torch.randn(T, N, P + R, generator=g)).to(dtype)
    nd = len(decodes)
    pre = prefills
    qsl = torch.tensor([0] + list(torch.tensor([n for _, n in pre]).cumsum(0)), dtype=torch.int32)
    ctx = torch.tensor([c for c, _ in pre], dtype=torch.int64)
    chunked = None
    if max((c for c, _ in pre), default=0) > 0:
        n_chunks = -(-int(ctx.max()) // chunk)
        starts = [torch.full((len(pre),), i * chunk, dtype=torch.int32) for i in range(n_chunks)]
        lens = [(ctx - i * chunk).clamp(0, chunk) for i in range(n_chunks)]
        cu = [torch.tensor([0] + l.cumsum(0).tolist(), dtype=torch.int32) for l in lens]
        tot = [int(c[-1]) for c in cu]
        chunked = types.SimpleNamespace(
            cu_seq_lens=cu, starts=starts, seq_tot=tot, max_seq_lens=[int(l.max()) for l in lens],
            token_to_seq=[torch.repeat_interleave(torch.arange(len(pre), dtype=torch.int32), l) for l in lens],
            chunk_total_token=tot, workspace=torch.full((max(tot) + 5, L + R), float("nan"), dtype=dtype),
            prefill_tokens_with_context=int(sum(n for c, n in pre if c > 0)), has_empty_context=[True] * n_chunks)
    md = types.SimpleNamespace(
        num_actual_tokens=T, num_decode_tokens=nd, num_decodes=nd, num_prefills=len(pre),
        max_seq_len=max(c + n for c, n in seqs),
        decode=types.SimpleNamespace(block_table=tables[:nd], seq_lens=torch.tensor(
            [c + 1 for c in decodes], dtype=torch.int32)) if nd else None,
        prefill=types.SimpleNamespace(query_start_loc=qsl, max_query_len=max(n for _, n in pre),
                                      block_table=tables[nd:], chunked_context=chunked) if pre else None)
    return q, new[:, :L], new[:, L:].unsqueeze(1), cache, md, lat, seqs


@pytest.fixture
def fake_vllm_decode(monkeypatch):
    from vllm.v1.attention.backends.mla import triton_mla
    from vllm.v1.attention.ops import triton_decode_attention

    monkeypatch.setattr(triton_mla, "_compute_num_kv_splits", lambda max_seq_len, sm_count: 2)

    def install(L):
        monkeypatch.setattr(triton_decode_attention, "decode_attention_fwd", _fake_decode(L))
    return install


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("decodes,prefills", [
    ([5, 17, 30], [(0, 7)]),                        # decode + a fresh prompt
    ([9], [(21, 4), (13, 6), (0, 5)]),              # context over two chunks, an empty-context request
    ([], [(0, 3), (0, 11)]),                        # prefill only, no context
    ([3, 40], []),                                  # decode only
], ids=["decode+fresh", "decode+context", "prefill-only", "decode-only"])
def test_triton_forward_matches_float64_mla(interpreter, fake_vllm_decode, dtype, decodes, prefills):
    N, P, R, L, V = 3, 16, 8, 32, 16
    layer = _mla_layer(N, P, R, L, V, dtype)
    fake_vllm_decode(L)
    q, kv_c, k_pe, cache, md, lat, seqs = _batch(layer, decodes, prefills, block_size=16, chunk=12, dtype=dtype)
    pad = 3  # CUDA-graph padding rows past num_actual_tokens stay untouched
    output = torch.full((q.shape[0] + pad, N * V), 7.0, dtype=dtype)
    got = vllm_mla.triton_forward(layer, torch.cat([q, q[:pad]]), torch.cat([kv_c, kv_c[:pad]]),
                                  torch.cat([k_pe, k_pe[:pad]]), cache, md, output)
    assert got is output
    ref = _reference(layer, q, lat, seqs)
    assert rel(output[:q.shape[0]], ref) < TOL[dtype]
    assert torch.all(output[q.shape[0]:] == 7.0)


def test_profile_run_zero_fills_the_output(interpreter):
    layer = _mla_layer(2, 16, 8, 32, 16, torch.float32)
    output = torch.full((5, 32), float("nan"))
    vllm_mla.triton_forward(layer, torch.randn(5, 2, 24), torch.randn(5, 32), torch.randn(5, 1, 8),
                            torch.empty(0), None, output)
    assert torch.all(output == 0)


# ----------------------------------------------------------------------------- the hooks
def _hooked_layer(monkeypatch, impl):
    monkeypatch.setattr(_Layer, "forward_impl", _Layer.forward_impl)
    from tri_inductor import hooks

    hooks.wrap_once(_Layer, "forward_impl", vllm_mla.forward_impl_hook)
    layer = _mla_layer(2, 16, 8, 32, 16, torch.float32)
    layer.impl = impl
    return layer


def _triton_mla_impl():
    from vllm.v1.attention.backends.mla.triton_mla import TritonMLAImpl

    impl = object.__new__(TritonMLAImpl)  # the attributes the decline rules read
    impl.scale, impl._sm_count, impl.is_sparse, impl.dcp_world_size = 24 ** -0.5, 132, False, 1
    return impl


def test_hook_runs_vllm_when_inactive_or_not_covered(monkeypatch):
    vllm_mla.activate(False)
    layer = _hooked_layer(monkeypatch, _triton_mla_impl())
    out = torch.zeros(1, 32)
    layer.forward_impl(torch.randn(1, 2, 24), torch.randn(1, 32), torch.randn(1, 1, 8), torch.empty(0), None, out)
    assert layer.ran_vllm
    monkeypatch.setattr(vllm_mla, "_ACTIVE", True)
    other = _hooked_layer(monkeypatch, types.SimpleNamespace(scale=1.0))  # not TRITON_MLA
    other.forward_impl(torch.randn(1, 2, 24), torch.randn(1, 32), torch.randn(1, 1, 8), torch.empty(0), None, out)
    assert other.ran_vllm


def test_hook_serves_a_covered_layer(monkeypatch, interpreter):
    monkeypatch.setattr(vllm_mla, "_ACTIVE", True)
    layer = _hooked_layer(monkeypatch, _triton_mla_impl())
    out = torch.full((3, 32), float("nan"))
    layer.forward_impl(torch.randn(3, 2, 24), torch.randn(3, 32), torch.randn(3, 1, 8), torch.empty(0), None, out)
    assert not getattr(layer, "ran_vllm", False) and torch.all(out == 0)  # the profile run, ours


@pytest.mark.parametrize("change,why", [
    (dict(kv_cache_dtype="fp8"), "KV cache dtype fp8"),
    (dict(q_pad_num_heads=16), "padded query heads"),
    (dict(W_UV=None), "no W_UV"),
    (dict(kv_b_proj=types.SimpleNamespace(weight=torch.empty(4, 4), quant_method=object())), "quantized kv_b_proj"),
], ids=["fp8-cache", "padded-heads", "no-W_UV", "quantized-kv_b"])
def test_layer_decline_reasons(monkeypatch, change, why):
    layer = _hooked_layer(monkeypatch, _triton_mla_impl())
    assert vllm_mla.layer_decline_reason(layer) is None
    layer.__dict__.update(change)
    assert why in vllm_mla.layer_decline_reason(layer)


def test_step_declines_fused_output_quantization(monkeypatch):
    layer = _hooked_layer(monkeypatch, _triton_mla_impl())
    q = torch.randn(2, 2, 24)
    assert vllm_mla.step_decline_reason(layer, q, torch.empty(0), torch.empty(2, 32), None, None) is None
    assert "quantization" in vllm_mla.step_decline_reason(layer, q, torch.empty(0), torch.empty(2, 32),
                                                          torch.tensor(1.0), None)


@pytest.fixture
def hooked_ops(monkeypatch):
    import vllm._custom_ops as ops

    for attr in ("concat_and_cache_mla", "gather_and_maybe_dequant_cache"):
        monkeypatch.setattr(ops, attr, getattr(ops, attr))  # restored at teardown
    vllm_mla.hook_custom_ops(ops)
    monkeypatch.setattr(vllm_mla, "_ACTIVE", True)
    return ops


def test_kv_cache_write_and_gather_through_vllms_wrappers(interpreter, hooked_ops):
    L, R, bs = 32, 8, 16
    kv_c, k_pe = torch.randn(5, L), torch.randn(5, R)
    cache = torch.full((4, bs, L + R), -3.0)
    slots = torch.tensor([17, -1, 3, 50, 33])
    hooked_ops.concat_and_cache_mla(kv_c, k_pe, cache, slots, "auto", torch.tensor(1.0))
    want = torch.full_like(cache, -3.0)
    for t, s in enumerate(slots.tolist()):
        if s >= 0:
            want[s // bs, s % bs] = torch.cat([kv_c[t], k_pe[t]])
    assert torch.equal(cache, want)
    # gather request 0's first 3 positions and request 1's 2 positions from a block table
    dst = torch.full((6, L + R), -5.0)
    bt = torch.tensor([[1, 0], [3, 2]], dtype=torch.int32)
    cu = torch.tensor([0, 3, 5], dtype=torch.int32)
    hooked_ops.gather_and_maybe_dequant_cache(cache, dst, bt, cu, torch.tensor([0, 0, 0, 1, 1], dtype=torch.int32),
                                              5, "auto", torch.tensor(1.0), None)
    assert torch.equal(dst[:3], cache[1, :3]) and torch.equal(dst[3:5], cache[3, :2])
    assert torch.all(dst[5] == -5.0)


def test_kv_cache_write_leaves_fp8_to_vllm(hooked_ops, monkeypatch):
    seen = []

    def vllms(kv_c, k_pe, kv_cache, slot_mapping, kv_cache_dtype, scale):
        seen.append(kv_cache_dtype)

    monkeypatch.setattr(hooked_ops, "concat_and_cache_mla", vllm_mla.concat_and_cache_hook(vllms))
    hooked_ops.concat_and_cache_mla(torch.randn(1, 4), torch.randn(1, 2), torch.empty(1, 16, 6, dtype=torch.uint8),
                                    torch.tensor([0]), "fp8", torch.tensor(1.0))
    assert seen == ["fp8"]


# ----------------------------------------------------------------------------- prefill slot and config
def test_prefill_backend_runs_our_kernel(interpreter):
    from tri_inductor.vllm_mla_prefill import TriMLAPrefillBackend

    N, P, R, V = 2, 16, 8, 16
    b = TriMLAPrefillBackend(num_heads=N, scale=0.2, kv_lora_rank=32, qk_nope_head_dim=P, qk_rope_head_dim=R,
                             v_head_dim=V, vllm_config=None)
    cu = torch.tensor([0, 3, 8], dtype=torch.int32)
    b.prepare_metadata(types.SimpleNamespace(query_start_loc=cu, max_query_len=5, chunked_context=None))
    q, k, v = torch.randn(8, N, P + R), torch.randn(8, N, P + R), torch.randn(8, N, V)
    out, lse = b.run_prefill_new_tokens(q, k, v, True)
    for s in range(2):
        lo, hi = int(cu[s]), int(cu[s + 1])
        sc = torch.einsum("qnd,knd->nqk", q[lo:hi].double(), k[lo:hi].double()) * 0.2
        sc = sc.masked_fill(torch.ones(hi - lo, hi - lo, dtype=torch.bool).triu(1), float("-inf"))
        assert rel(out[lo:hi], torch.einsum("nqk,knd->qnd", sc.softmax(-1), v[lo:hi].double())) < 1e-4
        assert (lse[:, lo:hi].double() - sc.logsumexp(-1)).abs().max() < 1e-4


def test_prefill_slot_claims_only_a_free_slot(monkeypatch):
    from vllm.v1.attention.backends.mla.prefill import registry

    monkeypatch.setattr(registry, "_MLA_PREFILL_OVERRIDES", {})
    assert vllm_mla.register_prefill_slot(registry)
    assert registry.MLAPrefillBackendEnum.CUSTOM.get_path() == vllm_mla.PREFILL_BACKEND_PATH
    monkeypatch.setattr(registry, "_MLA_PREFILL_OVERRIDES", {registry.MLAPrefillBackendEnum.CUSTOM: "other.Backend"})
    assert not vllm_mla.register_prefill_slot(registry)
    assert registry.MLAPrefillBackendEnum.CUSTOM.get_path() == "other.Backend"


def test_config_selects_our_mla_prefill_for_mla_models(monkeypatch):
    from vllm.config import AttentionConfig
    from vllm.v1.attention.backends.mla.prefill import registry

    from tri_inductor import vllm_config as VC

    monkeypatch.setattr(registry, "_MLA_PREFILL_OVERRIDES", {})
    changes, conflicts = [], []
    ac = AttentionConfig()
    VC._mla_prefill(ac, changes.append, conflicts.append)
    assert [c.setting for c in changes] == ["attention_config.mla_prefill_backend"] and not conflicts
    changes[0].apply()
    assert ac.mla_prefill_backend == registry.MLAPrefillBackendEnum.CUSTOM
    changes.clear()
    VC._mla_prefill(ac, changes.append, conflicts.append)  # idempotent: already ours
    assert not changes and not conflicts
    ac = AttentionConfig(mla_prefill_backend="FLASH_ATTN")
    VC._mla_prefill(ac, changes.append, conflicts.append)
    assert not changes and "FLASH_ATTN" in conflicts[0].consequence


def test_another_vllm_leaves_every_mla_piece_to_vllm(monkeypatch, hooked_ops):
    """A vLLM whose MLA signatures differ from the ones we implement (0.34 here is one): the
    wrappers pass every argument through, the config leaves the prefill backend to vLLM."""
    from tri_inductor import vllm_config as VC

    target = "vllm._custom_ops:concat_and_cache_mla"
    monkeypatch.setitem(vllm_mla.SERVED, target, "kv_c, k_pe, kv_cache, slot_mapping, kv_cache_dtype, scale, skip")
    vllm_mla.support_problem.cache_clear()
    try:
        assert target in vllm_mla.support_problem()
        seen = []

        def vllms(kv_c, k_pe, kv_cache, slot_mapping, kv_cache_dtype, scale, skip_scale=False):
            seen.append(skip_scale)

        hooked = vllm_mla.concat_and_cache_hook(vllms)
        hooked(torch.randn(1, 4), torch.randn(1, 2), torch.empty(1, 16, 6), torch.tensor([0]), "auto",
               torch.tensor(1.0), skip_scale=True)
        assert seen == [True]
        layer = _hooked_layer(monkeypatch, _triton_mla_impl())
        layer.forward_impl(torch.randn(1, 2, 24), torch.randn(1, 32), torch.randn(1, 1, 8), torch.empty(0), None,
                           torch.zeros(1, 32))
        assert layer.ran_vllm
        changes, conflicts = [], []
        VC._mla_prefill(types.SimpleNamespace(mla_prefill_backend=None), changes.append, conflicts.append)
        assert not changes and target in conflicts[0].consequence
    finally:
        vllm_mla.support_problem.cache_clear()
