"""MLA prefill attention (tri_inductor.patterns.mla.prefill) on the CPU.

* ``varlen_attention`` in Triton's interpreter against a float64 reference (dense softmax per
  sequence, FlashAttention's bottom-right causal rule): odd lengths, a sequence with no queries,
  one with no keys (zeros and lse -inf), causal with Lq == Lk, Lq < Lk and Lq > Lk (top rows see
  nothing), non-causal context; the rope key shared (head stride 0) and per head; k_nope / v as
  ``split`` views of one tensor; strided out and lse; small non-power-of-two dims with small tiles
  (several query blocks and key tiles: the unmasked / diagonal / skipped tile split) and the
  DeepSeek dims with the heuristic's tiles; fp32 and bf16.  Outputs come from NaN-poisoned
  allocations: an element the kernel never writes fails the test.
* ``merge_states`` against float64 math: -inf lse over NaN/inf rows, both sides empty, FA2's
  +inf, ``rows_with_a``, ``out_lse`` None.
* every kernel config the heuristic returns, compiled for sm_90 (no GPU) within shared memory.

Tolerances (relative error = max |out - ref| / max |ref|; lse absolute, natural log):
* fp32: out 1e-5, lse 1e-5: fp32 accumulation of <= 40 keys over <= 192-long dot products
  (IEEE dots), exp2 with log2(e) folded into the scale; measured <= 3e-7 / 7e-7.
* bf16: out 2e-2, lse 1e-5.  The reference uses the same bf16-rounded inputs.  The kernel
  rounds P to bf16 before P @ V (as FlashAttention does) and stores bf16, which Triton 3.6's
  interpreter does by truncation (up to 2^-7 = 7.8e-3 relative per element, where a GPU rounds:
  3.9e-3); measured <= 6e-3.  lse comes from fp32 scores of exact bf16 products (the
  interpreter's bf16 dot widens to fp32): measured <= 5e-7.
"""
from __future__ import annotations

import math

import pytest
import torch

from tri_inductor.patterns.mla import prefill as P

TOL = {torch.float32: (1e-5, 1e-5), torch.bfloat16: (2e-2, 1e-5)}  # (out relative, lse absolute)
SMALL = P.PrefillCfg(block_m=16, block_n=16, num_warps=4, num_stages=1)  # several blocks/tiles per sequence


def reference(q, k_nope, k_pe, v, cu_q, cu_k, scale, causal):
    """float64 out [Tq, H, Dv] and lse [H, Tq]; rows that see no key: 0 and -inf."""
    tq, h, _ = q.shape
    dv = v.shape[2]
    out = torch.zeros(tq, h, dv, dtype=torch.float64)
    lse = torch.full((h, tq), float("-inf"), dtype=torch.float64)
    k = torch.cat([k_nope.double(), k_pe.double().expand(-1, h, -1)], dim=-1)
    for s in range(cu_q.numel() - 1):
        q0, q1, k0, k1 = int(cu_q[s]), int(cu_q[s + 1]), int(cu_k[s]), int(cu_k[s + 1])
        lq, lk = q1 - q0, k1 - k0
        if lq == 0 or lk == 0:
            continue
        scores = scale * torch.einsum("qhd,khd->hqk", q[q0:q1].double(), k[k0:k1])
        if causal:
            i = torch.arange(lq)[:, None]
            j = torch.arange(lk)[None, :]
            scores = scores.masked_fill(j > i + lk - lq, float("-inf"))
        row_lse = torch.logsumexp(scores, dim=-1)  # [h, lq], -inf where a row sees nothing
        seen = row_lse > float("-inf")
        p = torch.where(seen[..., None], torch.exp(scores - row_lse[..., None]), 0.0)
        out[q0:q1] = torch.einsum("hqk,khd->qhd", p, v[k0:k1].double())
        lse[:, q0:q1] = row_lse
    return out, lse


def make_inputs(q_lens, k_lens, h, dn, dr, dv, dtype, shared_pe, seed=0):
    g = torch.Generator().manual_seed(seed)
    tq, tk = sum(q_lens), sum(k_lens)
    q = torch.randn(tq, h, dn + dr, generator=g).to(dtype)
    kv = torch.randn(tk, h, dn + dv, generator=g).to(dtype)  # kv_b_proj's output, split as vLLM does
    k_nope, v = kv.split([dn, dv], dim=-1)
    k_pe = torch.randn(tk, 1 if shared_pe else h, dr, generator=g).to(dtype)
    if not shared_pe:  # per-head, and strided in tokens: a slice of a wider tensor
        k_pe = torch.cat([k_pe, torch.randn(tk, h, 3, generator=g).to(dtype)], dim=-1)[..., :dr]

    def cu(lens):
        return torch.tensor([0, *torch.tensor(lens).cumsum(0).tolist()], dtype=torch.int32)

    return q, k_nope, k_pe, v, cu(q_lens), cu(k_lens)


def check(out, lse, ref_out, ref_lse, dtype):
    rtol, ltol = TOL[dtype]
    assert not out.isnan().any() and not lse.isnan().any()
    empty = ref_lse == float("-inf")
    assert torch.equal(lse == float("-inf"), empty), "lse -inf where (and only where) a row sees no key"
    assert (out.transpose(0, 1)[empty] == 0).all(), "rows that see no key are 0"
    err = (out.double() - ref_out).abs().max() / ref_out.abs().max().clamp_min(1e-30)
    assert err <= rtol, f"out relative error {err:.2e} > {rtol}"
    if (~empty).any():
        lerr = (lse.double() - ref_lse)[~empty].abs().max()
        assert lerr <= ltol, f"lse abs error {lerr:.2e} > {ltol}"


CASES = {
    # name: (q_lens, k_lens, causal)
    "causal-eq": ([1, 5, 0, 17, 33], [1, 5, 0, 17, 33], True),
    "causal-lq<lk": ([5, 17, 1, 0], [20, 40, 9, 6], True),          # queries at the end of the keys
    "causal-lq>lk": ([17, 6, 3], [5, 0, 3], True),                  # top rows see no key
    "ctx-noncausal": ([5, 17, 0, 33, 1], [40, 0, 3, 17, 0], False),  # empty context chunks
}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("case", list(CASES))
def test_varlen_small_dims(interpreter, poison, case, dtype):
    q_lens, k_lens, causal = CASES[case]
    shared_pe = case != "causal-lq<lk"
    h, dn, dr, dv = 3, 24, 8, 16
    q, k_nope, k_pe, v, cu_q, cu_k = make_inputs(q_lens, k_lens, h, dn, dr, dv, dtype, shared_pe)
    scale = (dn + dr) ** -0.5
    ref_out, ref_lse = reference(q, k_nope, k_pe, v, cu_q, cu_k, scale, causal)
    out, lse = P.varlen_attention(q, k_nope, k_pe, v, cu_q, cu_k, max(q_lens), max(k_lens), scale, causal,
                                  return_lse=True, cfg=SMALL)
    check(out, lse, ref_out, ref_lse, dtype)


@pytest.mark.parametrize("causal", [True, False], ids=["causal", "noncausal"])
def test_varlen_strided_out_and_lse(interpreter, causal):
    """out a slice of a wider buffer (vLLM's output view), lse a column slice; the padding
    around them stays untouched; the heuristic's own tiles."""
    q_lens, k_lens = [5, 17, 0, 2], [9, 17, 4, 0]
    h, dn, dr, dv = 3, 24, 8, 16
    q, k_nope, k_pe, v, cu_q, cu_k = make_inputs(q_lens, k_lens, h, dn, dr, dv, torch.float32, True, seed=1)
    tq = q.shape[0]
    big = torch.full((tq, h, dv + 6), float("nan"))
    out = big[..., 2:2 + dv]
    lse_big = torch.full((h, tq + 4), float("nan"))
    lse = lse_big[:, 1:1 + tq]
    ret = P.varlen_attention(q, k_nope, k_pe, v, cu_q, cu_k, max(q_lens), max(k_lens), 0.3, causal, out=out, lse=lse)
    assert ret is out
    ref_out, ref_lse = reference(q, k_nope, k_pe, v, cu_q, cu_k, 0.3, causal)
    check(out, lse, ref_out, ref_lse, torch.float32)
    assert big[..., :2].isnan().all() and big[..., 2 + dv:].isnan().all()
    assert lse_big[:, 0].isnan().all() and lse_big[:, 1 + tq:].isnan().all()


@pytest.mark.parametrize("dtype,causal,shared_pe", [
    (torch.bfloat16, True, True), (torch.bfloat16, False, False), (torch.float32, True, False)],
    ids=["bf16-causal-shared", "bf16-noncausal-perhead", "fp32-causal-perhead"])
def test_varlen_deepseek_dims(interpreter, poison, dtype, causal, shared_pe):
    q_lens, k_lens = ([5, 17, 0], [9, 17, 3]) if causal else ([5, 17, 3], [9, 0, 20])
    h, dn, dr, dv = 2, 128, 64, 128
    q, k_nope, k_pe, v, cu_q, cu_k = make_inputs(q_lens, k_lens, h, dn, dr, dv, dtype, shared_pe, seed=2)
    scale = (dn + dr) ** -0.5
    out, lse = P.varlen_attention(q, k_nope, k_pe, v, cu_q, cu_k, max(q_lens), max(k_lens), scale, causal,
                                  return_lse=True)
    ref_out, ref_lse = reference(q, k_nope, k_pe, v, cu_q, cu_k, scale, causal)
    check(out, lse, ref_out, ref_lse, dtype)


def test_varlen_rejects_bad_inputs():
    q, k_nope, k_pe, v, cu_q, cu_k = make_inputs([3], [3], 2, 24, 8, 16, torch.float32, True)
    with pytest.raises(ValueError, match="last dim stride"):
        P.varlen_attention(q, k_nope, k_pe, v.transpose(0, 2).contiguous().transpose(0, 2), cu_q, cu_k, 3, 3, 1.0, True)
    with pytest.raises(ValueError, match="Dn"):
        P.varlen_attention(q[..., :30], k_nope, k_pe, v, cu_q, cu_k, 3, 3, 1.0, True)
    with pytest.raises(ValueError, match="int32"):
        P.varlen_attention(q, k_nope, k_pe, v, cu_q.long(), cu_k, 3, 3, 1.0, True)


# ----------------------------------------------------------------------------- merge_states

def merge_ref(a, a_lse, b, b_lse, rows_with_a):
    a, b, a_lse, b_lse = a.double(), b.double(), a_lse.double(), b_lse.double()
    a_lse = torch.where(a_lse == math.inf, -math.inf, a_lse)
    b_l = torch.where(b_lse == math.inf, -math.inf, b_lse)
    mx = torch.maximum(a_lse, b_l)
    empty = mx == -math.inf
    mxs = torch.where(empty, 0.0, mx)
    wa, wb = torch.exp(a_lse - mxs), torch.exp(b_l - mxs)
    tot = torch.where(empty, 1.0, wa + wb)
    wa, wb = (wa / tot).T[..., None], (wb / tot).T[..., None]  # [T, H, 1]
    out = torch.where(wa > 0, a * wa, 0.0) + torch.where(wb > 0, b * wb, 0.0)
    lse = torch.where(empty, -math.inf, mxs + torch.log(tot))
    out[rows_with_a:] = b[rows_with_a:]
    lse[:, rows_with_a:] = b_lse[:, rows_with_a:]
    return out, lse


@pytest.mark.parametrize("rows_with_a,with_lse,out_dtype", [
    (None, True, torch.float32), (5, True, torch.float32), (6, False, torch.bfloat16)],
    ids=["all-rows", "rows_with_a", "no-out-lse-bf16"])
def test_merge_states(interpreter, rows_with_a, with_lse, out_dtype):
    g = torch.Generator().manual_seed(3)
    t, h, d = 8, 5, 20
    ab = torch.randn(t, h, 2 * d, generator=g)
    a, b = ab.split([d, d], dim=-1)  # strided views
    a_lse = torch.randn(h, t, generator=g) * 3
    b_lse = torch.randn(h, t + 2, generator=g)[:, 1:1 + t] * 3  # strided lse
    a[0, :2] = float("nan")
    a_lse[:2, 0] = -math.inf                 # empty context chunk over NaN scratch
    b[1, 3] = float("inf")
    b_lse[3, 1] = -math.inf                  # empty suffix over inf
    a[2, 1] = float("nan")
    b[2, 1] = float("nan")
    a_lse[1, 2] = b_lse[1, 2] = -math.inf    # both empty: 0 and -inf
    a_lse[4, 3] = math.inf                   # FA2's "empty"
    a[3, 4] = float("nan")
    a_lse[0, 4] = 40.0                       # b's weight underflows to 0 (b finite)
    out = torch.full((t, h, d + 4), float("nan"), dtype=out_dtype)[..., :d]
    out_lse = torch.full((h, t), float("nan")) if with_lse else None
    P.merge_states(out, out_lse, a, a_lse, b, b_lse, rows_with_a)
    rows = t if rows_with_a is None else rows_with_a
    ref, ref_lse = merge_ref(a, a_lse, b, b_lse, rows)
    assert not out.isnan().any()
    tol = 1e-6 if out_dtype == torch.float32 else 1e-2  # bf16: one truncated store
    torch.testing.assert_close(out.double(), ref, atol=tol, rtol=tol)
    assert (out[2, 1] == 0).all()
    if with_lse:
        torch.testing.assert_close(out_lse.double(), ref_lse, atol=1e-6, rtol=1e-6)
        assert out_lse[1, 2] == -math.inf


# ----------------------------------------------------------------------------- sm_90 codegen

def _sm90(kernel, consts, num_warps, num_stages, dtype="bf16"):
    import triton
    from triton.backends.compiler import GPUTarget

    sig = {}
    for n in kernel.arg_names:
        if n in consts:
            sig[n] = "constexpr"
        elif n in ("lse_ptr", "out_lse_ptr", "a_lse_ptr", "b_lse_ptr"):
            sig[n] = "*fp32"
        elif n in ("cu_q_ptr", "cu_k_ptr"):
            sig[n] = "*i32"
        elif n.endswith("_ptr"):
            sig[n] = f"*{dtype}"
        elif n == "qk_scale":
            sig[n] = "fp32"
        else:
            sig[n] = "i32"
    # pointers and row/head strides 16-divisible, as Triton's launcher marks them in a model
    # (H * (Dn + Dv), Dn + Dr, ... are multiples of 16); token counts and lse strides (a multiple
    # of Tq) are not: without the marks the K/V loads are 2-byte and never pipelined
    attrs = {(i,): [["tt.divisibility", 16]] for i, n in enumerate(kernel.arg_names)
             if sig[n].startswith("*") or (n.startswith("s_") and not n.endswith(("lh", "lt")))}
    src = triton.compiler.ASTSource(kernel, sig, consts, attrs)
    out = triton.compile(src, target=GPUTarget("cuda", 90, 32),
                         options=dict(num_warps=num_warps, num_stages=num_stages))
    assert out.asm.get("cubin")
    if kernel is P.mla_varlen_attn_kernel:
        assert "cp.async" in out.asm["ptx"], "K/V loads not pipelined (2-byte loads? strides' alignment)"
    assert out.metadata.shared <= P.SMEM_SM90, out.metadata.shared  # H100/H200 opt-in shared memory
    return out


DIMS = {"deepseek": (128, 64, 128), "glm": (192, 64, 256), "mistral": (64, 64, 128)}


def _cfgs(dims, dtype=torch.bfloat16):
    return sorted({P.prefill_cfg(*dims, m, dtype) for m in (1, 64, 65, 16384)}, key=lambda c: c.block_m)


@pytest.mark.parametrize("causal", [True, False], ids=["causal", "noncausal"])
@pytest.mark.parametrize("model", list(DIMS))
def test_varlen_kernel_compiles_for_sm90(model, causal):
    dn, dr, dv = DIMS[model]
    for cfg in _cfgs(DIMS[model]):
        consts = dict(DN=dn, DN_PAD=P.dim_pad(dn), DR=dr, DR_PAD=P.dim_pad(dr), DV=dv, DV_PAD=P.dim_pad(dv),
                      BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, CAUSAL=causal, IEEE=False)
        _sm90(P.mla_varlen_attn_kernel, consts, cfg.num_warps, cfg.num_stages)


def test_varlen_kernel_fp32_compiles_for_sm90():
    # fp32 (IEEE dots: FMA, not tensor cores) is not a vLLM path; DeepSeek dims only, as GLM's
    # fp32 compile alone takes ~45 s here (164 KiB of shared memory, measured)
    dn, dr, dv = DIMS["deepseek"]
    (cfg,) = _cfgs(DIMS["deepseek"], torch.float32)
    consts = dict(DN=dn, DN_PAD=P.dim_pad(dn), DR=dr, DR_PAD=P.dim_pad(dr), DV=dv, DV_PAD=P.dim_pad(dv),
                  BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, CAUSAL=True, IEEE=True)
    _sm90(P.mla_varlen_attn_kernel, consts, cfg.num_warps, cfg.num_stages, dtype="fp32")


@pytest.mark.parametrize("h,d", [(128, 128), (16, 256)])
def test_merge_kernel_compiles_for_sm90(h, d):
    consts = dict(D=d, D_PAD=P.dim_pad(d), BLOCK_H=P.merge_block_h(h, d), HAS_OUT_LSE=True)
    _sm90(P.mla_merge_states_kernel, consts, 4, 1)
