"""MLA per-head batched GEMM (``tri_inductor.patterns.mla.bmm.head_bmm``): numerics in Triton's
interpreter against float64 on the strided views vLLM's MLA layer passes (a slice of q, permuted
weights, an output that is a view of a wider buffer), the sm_90 codegen of every tile config the
heuristic returns, and input validation.

Shapes are odd on purpose: B that fills no row block, K and L that are neither powers of two nor
multiples of a tile.
"""
from __future__ import annotations

import itertools

import pytest
import torch
import triton

from pattern_harness import rel
from tri_inductor.patterns.mla import bmm as M

# ||out - ref|| / ||ref|| against float64 (the reference is computed from the same rounded
# inputs, so only the kernel's own error counts).  fp32: another summation order, ~1e-7.  bf16:
# the only error is the final fp32 -> bf16 store, which Triton 3.6's interpreter does by
# truncation (the GPU rounds to nearest): 3.2e-3 to 3.4e-3 here, exactly the float64 reference's
# own error when truncated to bf16 (1.6e-3 rounded).  1e-2 leaves room and still catches a wrong
# K step, column or head (errors of order 1).
TOL = {torch.float32: 1e-5, torch.bfloat16: 1e-2}
SMEM = 232448  # H100/H200 opt-in shared memory per block


def _ref(x, w):
    return torch.einsum("bnk,nkl->bnl", x.double(), w.double())


def _rand(*shape, dtype):
    return torch.randn(*shape).to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("N", [1, 3, 16])
@pytest.mark.parametrize("B", [1, 3, 17, 70])
def test_contiguous_matches_reference(interpreter, poison, B, N, dtype):
    # K=40, L=72: ragged last K step and column tile; out allocated (NaN-poisoned) by head_bmm.
    torch.manual_seed(B * 100 + N)
    x, w = _rand(B, N, 40, dtype=dtype), _rand(N, 40, 72, dtype=dtype)
    out = M.head_bmm(x, w)
    assert out.shape == (B, N, 72) and out.dtype == dtype and out.is_contiguous()
    assert rel(out, _ref(x, w)) < TOL[dtype]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_q_nope_times_w_uk_t(interpreter, dtype):
    # vLLM's first bmm: x = q[..., :P] of q [B, N, P + R]; W_UK_T = W_UK.permute(1, 2, 0) of
    # W_UK [L, N, P] (unit stride along K); out into a slice of a wider buffer.
    torch.manual_seed(1)
    B, N, P, R, L = 3, 2, 128, 64, 512
    q = _rand(B, N, P + R, dtype=dtype)
    w = _rand(L, N, P, dtype=dtype).permute(1, 2, 0)
    buf = torch.full((B, N, L + 64), 7.0, dtype=dtype)
    out = buf[..., :L]
    res = M.head_bmm(q[..., :P], w, out)
    assert res is out
    assert rel(out, _ref(q[..., :P], w)) < TOL[dtype]
    assert (buf[..., L:] == 7.0).all()  # the bytes past the view are untouched


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_v_up_proj(interpreter, dtype):
    # vLLM's _v_up_proj: x [B, N, L] as the transpose of an [N, B, L] tensor; W_UV [N, L, V] as
    # W_UV.transpose(0, 1) of [L, N, V]; out the [B, N * V] output viewed [B, N, V].
    torch.manual_seed(2)
    B, N, L, V = 2, 2, 512, 128
    x = _rand(N, B, L, dtype=dtype).transpose(0, 1)
    w = _rand(L, N, V, dtype=dtype).transpose(0, 1)
    out2d = torch.empty(B, N * V, dtype=dtype)
    M.head_bmm(x, w, out2d.view(B, N, V))
    assert rel(out2d.view(B, N, V), _ref(x, w)) < TOL[dtype]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("B", [3, 17])
def test_all_strided(interpreter, B, dtype):
    # x the transpose of [N, B, K]; w = w_src.permute(1, 2, 0) of [K, L, N] (no unit stride
    # along L); out a slice of a wider buffer whose other columns must keep their values.
    torch.manual_seed(B)
    N, K, L = 3, 40, 72
    x = _rand(N, B, K, dtype=dtype).transpose(0, 1)
    w = _rand(K, L, N, dtype=dtype).permute(2, 0, 1)
    assert w.shape == (N, K, L) and w.stride(2) != 1
    buf = torch.full((B, N, L + 9), -3.0, dtype=dtype)
    M.head_bmm(x, w, buf[..., 5:5 + L])
    assert rel(buf[..., 5:5 + L], _ref(x, w)) < TOL[dtype]
    assert (buf[..., :5] == -3.0).all() and (buf[..., 5 + L:] == -3.0).all()


def test_empty_batch_launches_nothing(monkeypatch):
    def no_launch(*a, **k):
        raise AssertionError("launched a kernel for an empty batch")

    monkeypatch.setattr(M, "launch", no_launch)
    x, w = torch.randn(0, 4, 40), torch.randn(4, 40, 72)
    assert M.head_bmm(x, w).shape == (0, 4, 72)
    out = torch.empty(0, 4, 72)
    assert M.head_bmm(x, w, out) is out


def test_zero_k_gives_zeros(interpreter, poison):
    out = M.head_bmm(torch.randn(5, 2, 0), torch.randn(2, 0, 24))
    assert out.shape == (5, 2, 24) and (out == 0).all()


# ----------------------------------------------------------------------------- configs, sm_90

# The shapes the heuristic sees: DeepSeek-V2-Lite (N=16) and V3 (N=128, N/TP), both bmms, plus
# odd ones; B across every BLOCK_M threshold.
_SHAPES = [(16, 128, 512), (16, 512, 128), (128, 128, 512), (128, 512, 128), (32, 512, 128), (3, 40, 72)]
_BS = [1, 8, 16, 17, 32, 33, 64, 128, 129, 512, 4096]


def _all_configs(elem):
    return {tuple(sorted(M.head_bmm_config(B, N, K, L, elem).items()))
            for B, (N, K, L) in itertools.product(_BS, _SHAPES)}


@pytest.mark.parametrize("B,N,K,L", [(b, *s) for b in _BS for s in _SHAPES])
def test_config_fills_the_gpu_and_fits(B, N, K, L):
    cfg = M.head_bmm_config(B, N, K, L, 2)
    bm, bn, bk = cfg["BLOCK_M"], cfg["BLOCK_N"], cfg["BLOCK_K"]
    programs = -(-B // bm) * -(-L // bn) * N
    assert programs >= M._MIN_PROGRAMS or bn == 16  # as many as the narrowest column tile gives
    assert (bm <= 16) == (B <= 16) and bk <= max(16, triton.next_power_of_2(K))
    assert cfg["num_stages"] * (bm * bk + bk * bn) * 2 <= M._SMEM_BUDGET < SMEM


def _sm90(consts, num_warps, num_stages, dtype="bf16", even=()):
    import triton
    from triton.backends.compiler import GPUTarget

    kernel = M.head_bmm_kernel
    sig = {n: "constexpr" if n in consts else f"*{dtype}" if n.endswith("_ptr") else "i32" for n in kernel.arg_names}
    # Pointers and strides 16-divisible, as Triton's launcher marks them for vLLM's tensors (the
    # loads then vectorise and the K loop pipelines through cp.async); B (a token count) is not,
    # nor K and L unless the caller says so.
    aligned = [n for n in kernel.arg_names if sig[n] != "constexpr" and n not in ("B", "K", "L") or n in even]
    attrs = {(kernel.arg_names.index(n),): [["tt.divisibility", 16]] for n in aligned}
    src = triton.compiler.ASTSource(kernel, sig, consts, attrs)
    out = triton.compile(src, target=GPUTarget("cuda", 90, 32), options=dict(num_warps=num_warps, num_stages=num_stages))
    assert out.asm.get("cubin")
    assert out.metadata.shared <= SMEM, out.metadata.shared
    return out


@pytest.mark.parametrize("cfg", sorted(_all_configs(2)), ids=lambda c: "-".join(f"{v}" for _, v in c))
def test_bf16_configs_compile_for_sm90(cfg):
    cfg = dict(cfg)
    warps, stages = cfg.pop("num_warps"), cfg.pop("num_stages")
    # vLLM's layouts: unit inner stride on x and out (Triton specialises a stride of 1); w's
    # unit stride along K (W_UK_T) or along L (W_UV).  Whole tiles there (K, L multiples of the
    # blocks): the loads vectorise and the K loop pipelines through cp.async in both.
    for w_unit in ("stride_wk", "stride_wl"):
        units = {"stride_xk": 1, w_unit: 1, "stride_ol": 1}
        out = _sm90(dict(PRECISION="tf32", EVEN_K=True, EVEN_L=True, **units, **cfg), warps, stages, even=("K", "L"))
        assert "cp.async" in out.asm["ptx"], w_unit
    # Ragged K and L (masked, clamped loads; nothing 16-divisible) and generic strides.
    _sm90(dict(PRECISION="tf32", EVEN_K=False, EVEN_L=False, **cfg), warps, stages)


def test_fp32_ieee_config_compiles_for_sm90():
    # The deepest fp32 tile set (fp32 matmuls as torch.bmm runs them without TF32).
    cfg = M.head_bmm_config(4096, 16, 512, 128, 4)
    warps, stages = cfg.pop("num_warps"), cfg.pop("num_stages")
    _sm90(dict(PRECISION="ieee", EVEN_K=True, EVEN_L=True, stride_xk=1, stride_wl=1, stride_ol=1, **cfg),
          warps, stages, dtype="fp32", even=("K", "L"))


# ----------------------------------------------------------------------------- validation

@pytest.mark.parametrize("x,w,out,msg", [
    ((4, 40), (3, 40, 8), None, "3-D"),
    ((4, 3, 40), (2, 40, 8), None, "disagree"),
    ((4, 3, 40), (3, 41, 8), None, "disagree"),
    ((4, 3, 40), (3, 40, 8), (4, 3, 9), r"out must be \[B, N, L\]"),
    ((4, 3, 40), (3, 40, 8), (4, 8), r"out must be \[B, N, L\]"),
], ids=["rank", "heads", "k", "out-shape", "out-rank"])
def test_rejects_bad_shapes(x, w, out, msg):
    with pytest.raises(ValueError, match=msg):
        M.head_bmm(torch.randn(*x), torch.randn(*w), None if out is None else torch.empty(*out))


def test_rejects_bad_dtypes_and_devices():
    x, w = torch.randn(4, 3, 40), torch.randn(3, 40, 8)
    with pytest.raises(ValueError, match="must agree"):
        M.head_bmm(x, w.bfloat16())
    with pytest.raises(ValueError, match="must agree"):
        M.head_bmm(x, w, torch.empty(4, 3, 8, dtype=torch.bfloat16))
    with pytest.raises(ValueError, match="unsupported"):
        M.head_bmm(x.double(), w.double())
    with pytest.raises(ValueError, match="on meta"):
        M.head_bmm(x, w.to("meta"))
    with pytest.raises(ValueError, match="on meta"):
        M.head_bmm(x, w, torch.empty(4, 3, 8, device="meta"))
