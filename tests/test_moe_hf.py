"""Issue 20 on CPU: Hugging Face MoE models under plain torch.compile(backend="tri_inductor").

(A) codegen-only for a fake sm_90: HF Mixtral, Qwen3-MoE, DeepSeek-V2 and -V3 (tiny configs, transformers 5.x
    grouped-mm experts) audit to 0 non-Triton kernels, the MoE kernels counted as family ``moe``;
    a top-k that is not a router's still fails strict mode with its source line.
(B) interpreter: the compiled models' logits match eager within a stated tolerance.
"""
from __future__ import annotations

import pytest
import torch

import tri_inductor
from pattern_harness import rel

pytest.importorskip("transformers", reason="the Hugging Face MoE models need transformers")
from tri_inductor import moe_models  # noqa: E402

BUILDERS = {"mixtral": moe_models.mixtral, "qwen3_moe": moe_models.qwen3_moe,
            "deepseek_v2": moe_models.deepseek_v2,  # + MLA attention, complex-number RoPE
            "deepseek_v3": moe_models.deepseek_v3}  # + the grouped router with a correction bias


@pytest.mark.parametrize("name", list(BUILDERS))
def test_hf_moe_model_is_triton_only(codegen_only, name):
    # 300 tokens x top-2: 600 expert ids, past the 512 where Inductor's own sort is ATen.
    model, inputs = BUILDERS[name](layers=1, seq=300)
    reports = codegen_only(model, inputs)
    assert all(r.ok for r in reports), "\n".join(r.format_table() for r in reports)
    moe = [k for r in reports for k in r.kernels if k.family == "moe"]
    # per MoE layer: the router top-k, the counting sort and histc of expert ids, two grouped GEMMs
    assert {k.name for k in moe} >= {"moe_route_kernel", "moe_scatter_kernel", "int_histc_kernel",
                                      "grouped_mm_kernel"}, moe
    # MLA under SDPA (q/k head dim 24, v 16) is our attention kernel too
    assert any(k.name == "attention_fwd_kernel" for r in reports for k in r.kernels)


def test_stock_inductor_leaves_the_moe_ops_non_triton(codegen_only):
    model, inputs = moe_models.mixtral(layers=1)
    reports = codegen_only(model, inputs, backend="inductor")
    ops = {v.op for r in reports for v in r.violations}
    assert {"aten.topk", "aten.histc", "aten._grouped_mm"} <= ops, ops


class RouterAndPlantedTopK(torch.nn.Module):
    """A router top-k (taken) next to a top-k of raw activations (not a router: left alone)."""

    def __init__(self):
        super().__init__()
        self.gate = torch.nn.Linear(32, 8, bias=False)

    def forward(self, x):
        w, ids = torch.topk(torch.softmax(self.gate(x).float(), dim=-1), 2, dim=-1)
        planted, _ = torch.topk(x.relu(), 3, dim=-1)  # the planted one
        return w.sum(-1) + ids.sum(-1) + planted.sum(-1)


def _unwrap(err):
    while not isinstance(err, tri_inductor.TritonOnlyViolation) and \
            (getattr(err, "inner_exception", None) or err.__cause__) is not None:
        err = getattr(err, "inner_exception", None) or err.__cause__  # Dynamo wraps backend errors
    return err


def test_planted_topk_fails_strict_mode_with_its_source_line(codegen_only):
    x = torch.randn(9, 32)
    reports = codegen_only(RouterAndPlantedTopK(), [x])
    [bad] = [v for r in reports for v in r.violations]
    assert bad.op == "aten.topk" and "planted" in (bad.source or ""), bad
    assert any(k.name == "moe_route_kernel" for r in reports for k in r.kernels)
    with pytest.raises(Exception) as info:
        codegen_only(RouterAndPlantedTopK(), [x], options={"strict": True})
    err = _unwrap(info.value)
    assert isinstance(err, tri_inductor.TritonOnlyViolation), repr(info.value)
    assert "aten.topk" in str(err) and "planted" in str(err)


class TopKFirstRouter(torch.nn.Module):
    """Routers that take the top-k of the gate's logits and score the k picks afterwards:
    Granite-MoE / JetMoE (``linear(x).float().topk(k)`` then softmax of the k values) and Llama 4
    (``topk(linear(x), k, dim=1)`` then sigmoid)."""

    def __init__(self, sigmoid: bool):
        super().__init__()
        self.gate = torch.nn.Linear(32, 8, bias=False)
        self.sigmoid = sigmoid

    def forward(self, x):
        if self.sigmoid:
            vals, ids = torch.topk(self.gate(x), 2, dim=1)
            w = torch.sigmoid(vals.float())
        else:
            vals, ids = self.gate(x).float().topk(2, dim=-1)
            w = torch.softmax(vals, dim=-1)
        return w * (ids + 1)


@pytest.mark.parametrize("sigmoid", [False, True], ids=["granite", "llama4"])
def test_topk_of_gate_logits_is_a_router(codegen_only, sigmoid):
    reports = codegen_only(TopKFirstRouter(sigmoid), [torch.randn(9, 32)])
    assert all(r.ok for r in reports), "\n".join(r.format_table() for r in reports)
    assert any(k.name == "moe_route_kernel" for r in reports for k in r.kernels)


@pytest.mark.parametrize("sigmoid", [False, True], ids=["granite", "llama4"])
def test_topk_of_gate_logits_matches_eager(interpreter, sigmoid):
    # values and ids as torch.topk's (ties: distinct random logits have none), fp32 throughout
    torch.manual_seed(0)
    model, x = TopKFirstRouter(sigmoid), torch.randn(9, 32)
    with torch.no_grad():
        ref = model(x)
        torch._dynamo.reset()
        out = torch.compile(model, backend="tri_inductor")(x)
    assert sum(r.pattern_hits.get("moe", 0) for r in tri_inductor.last_audit()) >= 1
    assert rel(out, ref.double()) < 1e-6


class GroupedRouter(torch.nn.Module):
    """DeepSeek-V3's / Nemotron-H's router as transformers writes it: sigmoid scores plus a
    correction bias, the best ``topk_group`` groups by the sum of their top two, a top-k of the
    rest (masked with ``fill``), weights gathered from the unbiased scores."""

    def __init__(self, E=16, groups=4, topk_group=2, k=4, fill=float("-inf")):
        super().__init__()
        self.gate = torch.nn.Linear(32, E, bias=False)
        self.bias = torch.nn.Parameter(torch.randn(E) * 0.1)
        self.E, self.G, self.topk_group, self.k, self.fill = E, groups, topk_group, k, fill

    def forward(self, x):
        scores = self.gate(x).float().sigmoid()
        choice = scores + self.bias
        group_scores = choice.view(-1, self.G, self.E // self.G).topk(2, dim=-1)[0].sum(dim=-1)
        group_idx = torch.topk(group_scores, k=self.topk_group, dim=-1, sorted=False)[1]
        group_mask = torch.zeros_like(group_scores)
        group_mask.scatter_(1, group_idx, 1)
        score_mask = group_mask.unsqueeze(-1).expand(-1, self.G, self.E // self.G).reshape(-1, self.E)
        choice = choice.masked_fill(~score_mask.bool(), self.fill)
        ids = torch.topk(choice, k=self.k, dim=-1, sorted=False)[1]
        return ids, scores.gather(1, ids)


class BiasedSigmoidRouter(torch.nn.Module):
    """MiniMax-M2's router: ``F.sigmoid`` (the functional spelling) of fp32 logits plus a
    correction bias, a top-k of that, weights gathered from the unbiased scores."""

    def __init__(self, E=16, k=4):
        super().__init__()
        self.gate = torch.nn.Linear(32, E, bias=False)
        self.bias = torch.nn.Parameter(torch.randn(E) * 0.1)
        self.k = k

    def forward(self, x):
        scores = torch.nn.functional.sigmoid(self.gate(x).float())
        ids = torch.topk(scores + self.bias, self.k, dim=-1, sorted=False)[1]
        return ids, scores.gather(1, ids)


@pytest.mark.parametrize("fill", [float("-inf"), 0.0, None], ids=["deepseek_v3", "masked_with_zero", "minimax_m2"])
def test_grouped_router_is_ours_and_picks_what_eager_picks(interpreter, fill):
    # every top-k of the router (group scores, groups, experts) is our route kernel; the picks are
    # eager's (as sets: sorted=False), the weights its scores at those picks
    torch.manual_seed(0)
    router = BiasedSigmoidRouter() if fill is None else GroupedRouter(fill=fill)
    x = torch.randn(37, 32)
    with torch.no_grad():
        ref_ids, ref_w = router(x)
        torch._dynamo.reset()
        before = {id(r) for r in tri_inductor.last_audit()}
        ids, w = torch.compile(router, backend="tri_inductor")(x)
    reports = [r for r in tri_inductor.last_audit() if id(r) not in before]
    assert not [v for r in reports for v in r.violations]
    assert sum(r.pattern_hits.get("moe", 0) for r in reports) == (1 if fill is None else 3)
    order, ref_order = ids.argsort(-1), ref_ids.argsort(-1)
    assert torch.equal(ids.gather(1, order), ref_ids.gather(1, ref_order))
    # the gate GEMM sums in another order: the fp32 scores differ by an ulp or two
    assert rel(w.gather(1, order), ref_w.gather(1, ref_order).double()) < 1e-6


class ExpertCombine(torch.nn.Module):
    """The combine of a per-expert loop (Mixtral's eager experts, JetMoE): ``index_add_`` of each
    expert's rows into the output, in bf16."""

    def forward(self, x, idx, y):
        out = torch.zeros_like(x)
        out.index_add_(0, idx, y)
        return out


def test_bf16_index_add_is_ours(codegen_only):
    inputs = [torch.randn(8, 16), torch.randint(0, 8, (5,)), torch.randn(5, 16)]  # bf16 in the harness
    stock = codegen_only(ExpertCombine(), inputs, backend="inductor")
    assert {v.op for r in stock for v in r.violations} == {"aten.index_add"}
    reports = codegen_only(ExpertCombine(), inputs)
    assert all(r.ok for r in reports), "\n".join(r.format_table() for r in reports)
    assert any(k.name == "index_add_rows_kernel" and k.family == "moe" for r in reports for k in r.kernels)


# Logits of the compiled model against eager, both fp32 (same routing decisions on these seeds):
# ||out - ref|| / ||ref||; the GEMMs sum in another order, far under 1e-4.
HF_TOL = 1e-4


@pytest.mark.parametrize("name", list(BUILDERS))
def test_hf_moe_model_numerics_in_interpreter(interpreter, name):
    model, (ids,) = BUILDERS[name](layers=1, seq=9)
    with torch.no_grad():
        ref = model(ids)
        before = {id(r) for r in tri_inductor.last_audit()}  # by identity: the kept reports are bounded
        out = torch.compile(model, backend="tri_inductor")(ids)
    reports = [r for r in tri_inductor.last_audit() if id(r) not in before]
    assert reports and sum(r.pattern_hits.get("moe", 0) for r in reports) >= 4
    assert rel(out, ref.double()) < HF_TOL


class OurMoELayer(torch.nn.Module):
    """Router + experts through our ops directly (vLLM's hooks call the same kernels eagerly)."""

    def __init__(self, H=64, I=48, E=6, k=2):
        super().__init__()
        self.k = k
        self.gate = torch.nn.Parameter(torch.randn(E, H) / H ** 0.5)
        self.w13 = torch.nn.Parameter(torch.randn(E, 2 * I, H) / H ** 0.5)
        self.w2 = torch.nn.Parameter(torch.randn(E, H, I) / I ** 0.5)

    def forward(self, x):
        from tri_inductor.patterns.moe import ops

        w, ids = ops.moe_topk(x @ self.gate.T, self.k, "sigmoid", True)
        return ops.moe_experts(x, self.w13, self.w2, w, ids, "silu") + ops.moe_sum(x[:, None, :].expand(-1, 2, -1))


def test_every_moe_kernel_compiles_for_sm90(codegen_only):
    # Codegen-only compiles each kernel to an sm_90 cubin (ptxas): the alignment, fill, grouped GEMM
    # and sum kernels too, which the Hugging Face forms above do not use.
    reports = codegen_only(OurMoELayer(), [torch.randn(9, 64)])
    assert all(r.ok for r in reports), "\n".join(r.format_table() for r in reports)
    names = {k.name for r in reports for k in r.kernels if k.family == "moe"}
    assert names >= {"moe_route_kernel", "moe_fill_kernel", "moe_count_kernel", "moe_offsets_kernel",
                     "moe_scatter_kernel", "moe_gemm_kernel", "moe_sum_kernel"}, names
