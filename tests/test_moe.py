"""MoE family (issue 20): kernels in Triton's interpreter against float64 references, the
Hugging Face MoE models audited codegen-only (0 non-Triton) and run in the interpreter.

Shapes are odd on purpose: token counts that fill no block, expert counts that are not powers of
two, top-k up to 8, integer logits (ties) and experts that get no token.
"""
from __future__ import annotations

import pytest
import torch

from pattern_harness import rel
from tri_inductor.patterns.moe import ops
from tri_inductor.patterns.moe import reference as R

# ||out - ref|| / ||ref|| against float64: fp32 GEMMs with another summation order land far under
# 1e-5.  bf16 stores the gated intermediate and each expert's output in bf16, and Triton 3.6's
# interpreter converts fp32 -> bf16 by truncation (the GPU rounds to nearest): 0.004-0.009 here,
# exactly the float64 reference's error when truncated at the same two points (0.003 rounded).
TOL = {torch.float32: 1e-5, torch.bfloat16: 2e-2}
# Routing weights are fp32 softmax/sigmoid values: absolute error against float64.
W_ATOL = 2e-6


def _check_route(logits, k, **kw):
    w, ids = ops.moe_topk(logits, k, **kw)
    rw, rids = R.reference_route(logits, k, **kw)
    assert ids.dtype == torch.int32 and w.dtype == torch.float32 and ids.shape == (logits.shape[0], k)
    assert torch.equal(ids.long(), rids), (ids, rids)
    assert (w.double() - rw).abs().max().item() < W_ATOL * max(1.0, kw.get("routed_scaling_factor", 1.0))


@pytest.mark.parametrize("T", [1, 7, 33])
@pytest.mark.parametrize("E,k", [(3, 1), (8, 2), (60, 4), (129, 8)])
@pytest.mark.parametrize("scoring", ["softmax", "sigmoid"])
@pytest.mark.parametrize("renormalize", [False, True])
def test_route_matches_reference(T, E, k, scoring, renormalize):
    torch.manual_seed(T * 1000 + E)
    _check_route(torch.randn(T, E) * 2, k, scoring=scoring, renormalize=renormalize)


@pytest.mark.parametrize("E,groups,topk_group,k", [(16, 4, 2, 4), (64, 8, 4, 6), (24, 3, 1, 2)])
@pytest.mark.parametrize("bias", [False, True], ids=["no_bias", "bias"])
@pytest.mark.parametrize("scoring", ["softmax", "sigmoid"])
def test_grouped_route_matches_reference(E, groups, topk_group, k, bias, scoring):
    # DeepSeek-V2 (group max, softmax) and -V3 (sigmoid + correction bias, top-2 sum per group).
    torch.manual_seed(E + groups)
    logits = torch.randn(11, E)
    b = torch.randn(E) * 0.5 if bias else None
    _check_route(logits, k, scoring=scoring, renormalize=True, num_groups=groups, topk_group=topk_group,
                 bias=b, routed_scaling_factor=2.5)


@pytest.mark.parametrize("scoring", ["softmax", "sigmoid", "none"])
def test_route_ties_pick_the_lowest_expert_first(scoring):
    # Integer logits: many equal scores per row; the pick order is (score desc, index asc).
    torch.manual_seed(0)
    logits = torch.randint(0, 3, (17, 10)).float()
    logits[0] = 1.0  # a row of all-equal experts
    _check_route(logits, 4, scoring=scoring)
    w, ids = ops.moe_topk(logits[:1], 4, scoring=scoring)
    assert ids.tolist() == [[0, 1, 2, 3]]


def test_topk_of_scores_is_torch_topk():
    torch.manual_seed(1)
    x = torch.randn(9, 12, dtype=torch.bfloat16)
    v, i = ops.topk_of_scores(x, 3, "softmax")
    rv, ri = torch.topk(torch.softmax(x.float(), -1), 3, dim=-1)
    assert i.dtype == torch.int64 and torch.equal(i, ri)
    torch.testing.assert_close(v, rv, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("N,H,n", [(8, 16, 5), (7, 100, 33), (3, 1500, 9), (5, 1, 12), (4, 8, 0)])
@pytest.mark.parametrize("alpha", [1.0, -0.5])
def test_index_add_rows_matches_float64(N, H, n, alpha):
    # repeated indices (several expert outputs into one token row), H past one block (1500)
    g = torch.Generator().manual_seed(N * H + n)
    x = torch.randn(N, H, generator=g).to(torch.bfloat16)
    idx = torch.randint(0, N, (n,), generator=g)
    src = torch.randn(n, H, generator=g).to(torch.bfloat16)
    out = ops.index_add_rows(x, idx, src, alpha)
    ref = x.double().index_add(0, idx, src.double(), alpha=alpha)
    assert out.dtype == torch.bfloat16 and out.shape == x.shape and rel(out, ref) < TOL[torch.bfloat16]


def _check_align(topk_ids, E, block_m):
    sorted_ids, expert_ids, npp, counts = ops.moe_align(topk_ids, E, block_m)
    numel = topk_ids.numel()
    rc, runs = R.reference_align(topk_ids, E)
    assert torch.equal(counts.long(), rc)
    padded = [-(-c // block_m) * block_m for c in rc.tolist()]
    assert npp.item() == sum(padded)
    assert sorted_ids.numel() == numel + E * (block_m - 1)
    start = 0
    for e in range(E):
        run = sorted_ids[start:start + padded[e]].tolist()
        assert sorted(run[:rc[e]]) == runs[e], e
        assert run[rc[e]:] == [numel] * (padded[e] - rc[e])  # padding: an index past the end
        assert expert_ids[start // block_m:(start + padded[e]) // block_m].tolist() == [e] * (padded[e] // block_m)
        start += padded[e]
    assert (sorted_ids[start:] == numel).all()
    assert (expert_ids[start // block_m:] == -1).all()


@pytest.mark.parametrize("T,k", [(1, 1), (5, 2), (33, 3), (130, 8)])
@pytest.mark.parametrize("E", [4, 9, 64])
@pytest.mark.parametrize("block_m", [1, 16, 64])
def test_align_matches_reference(T, k, E, block_m):
    torch.manual_seed(T + E)
    # Distinct experts per token, drawn from a subset so that some experts get no token.
    used = torch.randperm(E)[:max(k, (2 * E) // 3)]
    ids = torch.stack([used[torch.randperm(used.numel())[:k]] for _ in range(T)]).to(torch.int32)
    _check_align(ids, E, block_m)


def test_align_drops_ids_outside_the_experts():
    # Expert-parallel sentinels (-1, >= E) are in no run and written nowhere out of bounds.
    ids = torch.tensor([[0, -1], [5, 2], [2, 9]], dtype=torch.int32)
    sorted_ids, expert_ids, npp, counts = ops.moe_align(ids, 6, 4)
    assert counts.tolist() == [1, 0, 2, 0, 0, 1] and npp.item() == 12
    assert sorted(sorted_ids[:12].tolist()) == [0, 2, 3, 4] + [6] * 8


@pytest.mark.parametrize("T,k,E", [(1, 2, 8), (300, 2, 8), (37, 8, 60)])
def test_sort_expert_ids_sorts(T, k, E):
    torch.manual_seed(T)
    ids = torch.randint(0, E, (T, k))
    values, perm = ops.sort_expert_ids(ids, E)
    flat = ids.reshape(-1)
    assert torch.equal(values, torch.sort(flat).values) and values.dtype == ids.dtype
    assert torch.equal(perm.sort().values, torch.arange(flat.numel())) and torch.equal(flat[perm], values)


def test_int_histc_matches_torch():
    torch.manual_seed(2)
    ids = torch.randint(-2, 11, (77,))
    for bins, lo, hi in ((8, 0, 7), (9, 0, 9), (4, 1, 9)):
        out = ops.int_histc(ids, bins, lo, hi, torch.float32)
        assert torch.equal(out, torch.histc(ids.float(), bins=bins, min=lo, max=hi)), (bins, lo, hi)


def _routing(T, E, k, seed):
    g = torch.Generator().manual_seed(seed)
    w, ids = R.reference_route(torch.randn(T, E, generator=g), k, renormalize=True)
    return w.float(), ids.to(torch.int32)


@pytest.mark.parametrize("dtype", list(TOL), ids=["fp32", "bf16"])
@pytest.mark.parametrize("T,E,k,H,I", [(1, 4, 1, 32, 16), (7, 9, 2, 40, 24), (33, 6, 3, 64, 48)])
@pytest.mark.parametrize("activation", ["silu", "gelu", "gelu_tanh"])
def test_experts_match_reference(dtype, T, E, k, H, I, activation, poison):
    torch.manual_seed(T)
    x = torch.randn(T, H).to(dtype)
    w13 = (torch.randn(E, 2 * I, H) / H ** 0.5).to(dtype)
    w2 = (torch.randn(E, H, I) / I ** 0.5).to(dtype)
    tw, ids = _routing(T, E, k, T + E)
    out = ops.moe_experts(x, w13, w2, tw, ids, activation)
    assert out.dtype == dtype and out.shape == (T, H) and not out.isnan().any()
    assert rel(out, R.reference_experts(x, w13, w2, tw, ids, activation)) < TOL[dtype]


def test_experts_with_idle_experts_and_many_tokens(poison):
    # 70 tokens on 2 of 8 experts: blocks of several rows per expert, 6 experts with none.
    torch.manual_seed(3)
    T, E, H, I = 70, 8, 32, 32
    x = torch.randn(T, H)
    w13, w2 = torch.randn(E, 2 * I, H) / 6, torch.randn(E, H, I) / 6
    ids = torch.stack([torch.tensor([2, 5])] * T).to(torch.int32)
    tw = torch.rand(T, 2)
    out = ops.moe_experts(x, w13, w2, tw, ids)
    assert rel(out, R.reference_experts(x, w13, w2, tw, ids)) < TOL[torch.float32]


@pytest.mark.parametrize("dtype", list(TOL), ids=["fp32", "bf16"])
def test_grouped_mm_matches_reference(dtype, poison):
    torch.manual_seed(4)
    a = torch.randn(37, 40).to(dtype)
    b = torch.randn(5, 40, 24).to(dtype).transpose(1, 2).contiguous().transpose(1, 2)  # HF: weight.T view
    offs = torch.tensor([3, 3, 20, 21, 37], dtype=torch.int32)  # group 1 empty, group 3 one row
    out = ops.grouped_mm(a, b, offs)
    assert out.dtype == dtype and not out.isnan().any()
    assert rel(out, R.reference_grouped_mm(a, b, offs)) < TOL[dtype]


@pytest.mark.parametrize("weighted", [False, True])
def test_moe_sum_matches_reference(weighted, poison):
    torch.manual_seed(5)
    y = torch.randn(13, 3, 50, dtype=torch.bfloat16)
    w = torch.rand(13, 3) if weighted else None
    out = ops.moe_sum(y, w)
    assert not out.isnan().any()
    assert rel(out, R.reference_sum(y, w)) < 4e-3  # one bf16 rounding of the fp32 sum (2^-9)
