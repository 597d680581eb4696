"""vLLM 0.26's MoE CUDA ops routed to our Triton kernels (tri_inductor/vllm_moe.py), op by op,
on the CPU (our kernels in Triton's interpreter) against float64 references and against vLLM's
own torch-native grouped top-k."""
from __future__ import annotations

import pytest
import torch

from pattern_harness import rel
from tri_inductor import vllm_moe
from tri_inductor.patterns.activation import reference_silu_and_mul
from tri_inductor.patterns.moe import reference as R

pytest.importorskip("vllm", reason="vLLM 0.26 needed for its MoE op wrappers")


@pytest.fixture
def hooked(monkeypatch):
    """vLLM's modules with our hooks applied and active; originals restored afterwards."""
    import importlib

    mods = {}
    for name, hook in vllm_moe.HOOKS.items():
        module = importlib.import_module(name)
        for attr in ("topk_softmax", "topk_sigmoid", "grouped_topk", "moe_align_block_size", "moe_sum",
                     "apply_moe_activation", "_prepare_expert_assignment"):
            if hasattr(module, attr):
                monkeypatch.setattr(module, attr, getattr(module, attr))  # restored at teardown
        hook(module)
        mods[name.rsplit(".", 1)[-1]] = module
    vllm_moe.activate()
    yield mods
    vllm_moe.activate(False)


@pytest.mark.parametrize("scoring", ["softmax", "sigmoid"])
@pytest.mark.parametrize("bias", [False, True], ids=["no_bias", "bias"])
@pytest.mark.parametrize("T,E,k", [(1, 8, 2), (13, 60, 4), (6, 128, 8)])
def test_topk_ops_write_the_callers_buffers(hooked, scoring, bias, T, E, k):
    ops = hooked["_custom_ops"]
    torch.manual_seed(E + T)
    logits = torch.randn(T, E)
    b = torch.randn(E) * 0.3 if bias else None
    w = torch.full((T, k), float("nan"))
    ids = torch.full((T, k), -7, dtype=torch.int32)
    tei = torch.full((T, k), -7, dtype=torch.int32)
    if scoring == "softmax":
        ops.topk_softmax(w, ids, tei, logits, True, b)
        rw, rids = R.reference_route(logits, k, scoring, True, bias=b)
    else:
        ops.topk_sigmoid(w, ids, tei, logits, True, b, 2.5)
        rw, rids = R.reference_route(logits, k, scoring, True, bias=b, routed_scaling_factor=2.5)
    assert torch.equal(ids.long(), rids)
    assert (w.double() - rw).abs().max().item() < 5e-6
    # vLLM's token_expert_indices: slot * T + token
    assert torch.equal(tei, (torch.arange(k)[None, :] * T + torch.arange(T)[:, None]).int())


@pytest.mark.parametrize("scoring", ["softmax", "sigmoid"])
@pytest.mark.parametrize("bias", [False, True], ids=["no_bias", "bias"])
def test_grouped_topk_matches_vllms_native_routing(hooked, scoring, bias):
    # DeepSeek-V2 (softmax, group max) / V3 (sigmoid + correction bias, top-2 group sums): ours
    # against vLLM's own torch implementation (the function under its torch.compile wrapper).
    router = hooked["grouped_topk_router"]
    native = router.grouped_topk.__wrapped__._torchdynamo_orig_callable
    torch.manual_seed(7)
    T, E = 19, 64
    logits = torch.randn(T, E)
    b = torch.randn(E) * 0.3 if bias else None
    args = dict(topk=6, renormalize=True, num_expert_group=8, topk_group=3, scoring_func=scoring,
                routed_scaling_factor=2.5, e_score_correction_bias=b)
    w, ids = router.grouped_topk(logits, logits, **args)
    rw, rids = native(logits.double(), logits.double(),
                      **dict(args, e_score_correction_bias=None if b is None else b.double()))
    assert ids.dtype == torch.int32 and w.dtype == torch.float32
    # vLLM sorts neither the groups nor the experts (sorted=False): compare per-token sets
    order, rorder = ids.long().sort(-1), rids.long().sort(-1)
    assert torch.equal(order.values, rorder.values)
    assert (w.gather(1, order.indices).double() - rw.gather(1, rorder.indices)).abs().max() < 5e-6


def test_grouped_topk_op(hooked):
    ops = hooked["_custom_ops"]
    torch.manual_seed(8)
    logits, b = torch.randn(9, 32), torch.randn(32) * 0.2
    w, ids = ops.grouped_topk(logits, 4, 2, 3, True, 1.5, b, 1)
    rw, rids = R.reference_route(logits, 3, "sigmoid", True, 4, 2, b, 1.5)
    assert torch.equal(ids.long(), rids) and (w.double() - rw).abs().max() < 5e-6


@pytest.mark.parametrize("T,k,E,block", [(3, 2, 16, 16), (37, 4, 9, 16), (64, 8, 64, 64)])
def test_moe_align_block_size_through_vllm(hooked, T, k, E, block):
    # vLLM's Python wrapper (its buffer sizes, incl. numel < E) calling our kernels in place.
    from vllm.model_executor.layers.fused_moe.moe_align_block_size import moe_align_block_size

    torch.manual_seed(T)
    ids = torch.stack([torch.randperm(E)[:k] for _ in range(T)]).to(torch.int32)
    sorted_ids, expert_ids, npp = moe_align_block_size(ids, block, E)
    counts, runs = R.reference_align(ids, E)
    padded = [-(-c // block) * block for c in counts.tolist()]
    assert npp.item() == sum(padded)
    start = 0
    for e in range(E):
        run = sorted_ids[start:start + padded[e]].tolist()
        assert sorted(run[:counts[e]]) == runs[e] and run[counts[e]:] == [ids.numel()] * (padded[e] - counts[e])
        assert set(expert_ids[start // block:(start + padded[e]) // block].tolist()) <= {e}
        start += padded[e]


def test_moe_sum_and_activation(hooked):
    from vllm.model_executor.layers.fused_moe.activation import MoEActivation

    ops, mk = hooked["_custom_ops"], hooked["modular_kernel"]
    torch.manual_seed(9)
    y = torch.randn(11, 3, 40, dtype=torch.bfloat16)
    out = torch.full((11, 40), float("nan"), dtype=torch.bfloat16)
    ops.moe_sum(y, out)
    assert rel(out, R.reference_sum(y)) < 4e-3
    x = torch.randn(7, 96, dtype=torch.bfloat16)
    act = torch.full((7, 48), float("nan"), dtype=torch.bfloat16)
    mk.apply_moe_activation(MoEActivation.SILU, act, x)
    assert rel(act, reference_silu_and_mul(x)) < 1e-2


def test_naive_expert_assignment_without_an_aten_fill(hooked, monkeypatch):
    # Decode with few (token, expert) pairs: vLLM's one-block-per-pair layout, its count written
    # by our fill kernel (vLLM: torch.full, an ATen launch); the other case still goes to vLLM.
    fm = hooked["fused_moe"]
    ids = torch.tensor([[3, 17]], dtype=torch.int32)
    full = torch.full
    monkeypatch.setattr(torch, "full", lambda *a, **k: pytest.fail("torch.full called"))
    sorted_ids, expert_ids, n = fm._prepare_expert_assignment(ids, {"BLOCK_SIZE_M": 16}, 1, 2, 64, None)
    monkeypatch.setattr(torch, "full", full)
    assert sorted_ids is None and expert_ids.tolist() == [3, 17] and n.tolist() == [32]
    ids = torch.tensor([[3, 1]], dtype=torch.int32)
    s2, e2, n2 = fm._prepare_expert_assignment(ids, {"BLOCK_SIZE_M": 16}, 1, 2, 4, None)  # 8 pairs > 4/4
    assert s2 is not None and n2.item() == 32  # aligned path (our align through vLLM's wrapper)


def test_inactive_hooks_call_vllms_original(monkeypatch):
    import vllm._custom_ops as ops

    calls = []
    monkeypatch.setattr(ops, "moe_sum", lambda *a: calls.append(a))
    vllm_moe.hook_custom_ops(ops)
    vllm_moe.activate(False)
    ops.moe_sum(torch.zeros(2, 2, 4), torch.zeros(2, 4))
    assert len(calls) == 1  # not ours: vLLM's own backend keeps its op
    vllm_moe.activate()
    try:
        ops.moe_sum(torch.zeros(2, 2, 4), torch.zeros(2, 4), None, torch.arange(4))  # expert_map: not covered
    finally:
        vllm_moe.activate(False)
    assert len(calls) == 2


def test_audit_names_vllms_moe_layer_op():
    from tri_inductor.audit.output_code import audit_output_code

    code = "def call(args):\n    buf3 = torch.ops.vllm.moe_forward.default(buf1, buf2, None, None, 'l0', 0)\n"
    vllm_moe.activate(False)  # a process where our hooks do not route (vLLM's own backend)
    [entry] = audit_output_code(code).violations
    assert entry.op == "vllm.moe_forward" and "vllm_moe.py" in entry.hint and "census" in entry.hint
    vllm_moe.activate()  # a tri_inductor model: the layer's ops run on our hooks, counted as the moe family
    try:
        report = audit_output_code(code)
    finally:
        vllm_moe.activate(False)
    [entry] = report.kernels
    assert report.ok and entry.kind == "hooked_op" and entry.family == "moe" and report.pattern_hits == {"moe": 1}


def test_uncovered_form_is_said_once_while_active(monkeypatch, caplog):
    import types

    calls = []
    mod = types.SimpleNamespace(__name__="fake_ops", moe_sum=lambda *a: calls.append(a))
    vllm_moe.hook_custom_ops(mod)
    monkeypatch.setattr(vllm_moe, "_TOLD", set())
    vllm_moe.activate()
    try:
        with caplog.at_level("WARNING", logger="tri_inductor.vllm"):
            for _ in range(2):
                mod.moe_sum(torch.zeros(2, 2, 4), torch.zeros(2, 4), None, torch.arange(4))  # expert_map
    finally:
        vllm_moe.activate(False)
    mod.moe_sum(torch.zeros(2, 2, 4), torch.zeros(2, 4))  # inactive: vLLM's backend, nothing said
    said = [r.getMessage() for r in caplog.records if "fake_ops.moe_sum" in r.getMessage()]
    assert len(calls) == 3 and len(said) == 1 and "not our Triton kernel" in said[0]


def test_census_knows_the_moe_shapes_but_does_not_run_them_by_default():
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    census = pytest.importorskip("vllm_census")
    assert {"mixtral", "qwen3_moe"} <= set(census.MODELS)
    assert not {"mixtral", "qwen3_moe"} & set(census.DEFAULT_MODELS)
    assert census.MODELS["qwen3_moe"]["architectures"] == ["Qwen3MoeForCausalLM"]
