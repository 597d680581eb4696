"""patterns/normalise.py: each rewrite happens, and the rewritten graph computes the same bits."""
from __future__ import annotations

import pytest
import torch
from torch.fx.experimental.proxy_tensor import make_fx

from tri_inductor.patterns.normalise import normalise

aten, prims = torch.ops.aten, torch.ops.prims


def _post_grad_like(fn, *args):
    """aten/prims ops as Inductor's post-grad graph has them (its decompositions)."""
    from torch._inductor.decomposition import select_decomp_table

    return make_fx(fn, select_decomp_table(), tracing_mode="fake")(*args)


def _targets(gm) -> list:
    return [n.target for n in gm.graph.nodes if n.op == "call_function"]


CASES = {
    # name: (fn, what the normalised graph must (not) contain)
    "square": (lambda x: (x * x).sum(-1), dict(has=[aten.pow.Tensor_Scalar], lacks=[aten.mul.Tensor])),
    "last dim": (lambda x: x.mean(2, keepdim=True) + x, dict(dims=[-1])),
    "scalar add": (lambda x: torch.ops.aten.add.Scalar(x, 1e-6), dict(has=[aten.add.Tensor], lacks=[aten.add.Scalar])),
    "two casts": (lambda x: x.float() * 2 + x.float().sum(-1, keepdim=True), dict(casts=1)),
}


@pytest.mark.parametrize("name", list(CASES))
def test_rewrites_are_exact(name) -> None:
    fn, want = CASES[name]
    g = torch.Generator().manual_seed(0)
    args = [torch.randn(3, 4, 8, generator=g).to(torch.bfloat16)]
    gm = _post_grad_like(fn, *args)
    ref = fn(*args)
    assert normalise(gm.graph) > 0
    gm.graph.lint()
    gm.recompile()
    got = gm(*args)
    assert torch.equal(got, ref), name  # bit for bit
    targets = _targets(gm)
    assert all(t in targets for t in want.get("has", []))
    assert not any(t in targets for t in want.get("lacks", []))
    if "dims" in want:
        means = [n for n in gm.graph.nodes if n.target is aten.mean.dim]
        assert [list(n.args[1]) for n in means] == [want["dims"]]
    if "casts" in want:
        assert targets.count(prims.convert_element_type.default) == want["casts"]


def _sum_over_n(v):
    return v * (v.pow(2).sum(-1, keepdim=True) / v.shape[-1])


def test_sum_over_n_is_a_mean_in_fp32(interpreter) -> None:
    """fp32 ``sum(v, -1) / n`` becomes ``mean(v, -1)``: the same bits as Inductor computes the
    division it was (in the interpreter; Inductor lowers mean as sum / n)."""
    v = torch.randn(5, 96, generator=torch.Generator().manual_seed(1))
    gm = _post_grad_like(_sum_over_n, v)
    assert normalise(gm.graph) > 0 and aten.mean.dim in _targets(gm) and aten.sum.dim_IntList not in _targets(gm)
    gm.recompile()
    ref = torch.compile(_sum_over_n, backend="inductor")(v)
    torch._dynamo.reset()
    assert torch.equal(torch.compile(gm, backend="inductor")(v), ref)


def test_leaves_what_it_cannot_prove_alone() -> None:
    """Not a last dim, two different casts, a product of two different tensors, a 16-bit sum over
    n (rounded where Inductor stores it), a sum divided by another number: unchanged."""
    def fn(x):
        return (x.mean(1, keepdim=True) * x + x.float().sum() + x.double().sum() + _sum_over_n(x.half()).float()
                + x.float().sum(-1, keepdim=True) / 7)

    x = torch.randn(3, 4, 8)
    gm = _post_grad_like(fn, x)
    assert normalise(gm.graph) == 0
