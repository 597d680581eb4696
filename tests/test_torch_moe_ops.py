"""The benchmarks' torch stand-ins for vLLM's MoE CUDA ops (benchmarks/_torch_moe_ops.py), used by
baseline engines only: the same results as float64 references of vLLM's semantics, in the
caller's buffers; install() replaces exactly the ops vLLM's MoE path calls."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import _torch_moe_ops as T  # noqa: E402
import _vllm_common as VC  # noqa: E402
import models  # noqa: E402

from tri_inductor.patterns.moe import reference as R  # noqa: E402


@pytest.mark.parametrize("scoring,renorm,bias", [("softmax", True, False), ("softmax", False, True),
                                                 ("sigmoid", True, True)])
def test_topk_routes_as_vllm(scoring, renorm, bias):
    g = torch.Generator().manual_seed(0)
    T_, E, k = 37, 16, 4
    logits = torch.randn(T_, E, generator=g)
    b = torch.randn(E, generator=g) if bias else None
    w, ids, tei = torch.empty(T_, k), torch.empty(T_, k, dtype=torch.int32), torch.empty(T_, k, dtype=torch.int32)
    T.torch_topk(scoring)(w, ids, tei, logits, renorm, b)
    rw, rids = R.reference_route(logits, k, scoring, renorm, bias=b)
    assert torch.equal(ids.long().sort(-1).values, rids.sort(-1).values)
    torch.testing.assert_close(w.double().sort(-1).values, rw.sort(-1).values, atol=1e-6, rtol=1e-6)
    assert torch.equal(tei, (torch.arange(k)[None, :] * T_ + torch.arange(T_)[:, None]).int())  # slot * T + token


def test_align_matches_our_reference():
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 6, (23, 2), generator=g, dtype=torch.int32)
    bs, E = 8, 6
    size = ids.numel() + E * (bs - 1)
    s, e, n = torch.empty(size, dtype=torch.int32), torch.empty(-(-size // bs), dtype=torch.int32), torch.empty(1, dtype=torch.int32)
    T.torch_align(ids, E, bs, s, e, n)
    flat = ids.reshape(-1)
    for blk in range(int(n) // bs):
        rows = s[blk * bs:(blk + 1) * bs]
        real = rows[rows < flat.numel()].long()
        assert (flat[real] == e[blk]).all()  # every slot of a block belongs to that block's expert
    assert sorted(s[s < flat.numel()].tolist()) == list(range(flat.numel()))  # each slot once


@pytest.mark.parametrize("act", ["silu", "gelu", "gelu_tanh"])
def test_activation_and_sum(act):
    x = torch.randn(5, 16, dtype=torch.float64)
    out = torch.empty(5, 8, dtype=torch.float64)
    T.torch_act(act, out, x)
    gate = F.silu(x[:, :8]) if act == "silu" else F.gelu(x[:, :8], approximate="tanh" if act == "gelu_tanh" else "none")
    torch.testing.assert_close(out, gate * x[:, 8:])
    y, o = torch.randn(5, 3, 8, dtype=torch.float64), torch.empty(5, 8, dtype=torch.float64)
    T.torch_moe_sum(y, o)
    torch.testing.assert_close(o, y.sum(1))


def test_install_replaces_vllms_moe_ops(monkeypatch):
    pytest.importorskip("vllm", reason="vLLM is not installed")
    for module, name, _ in T._targets():  # restored after the test (install is process-wide)
        monkeypatch.setattr(module, name, getattr(module, name))
    done = T.install()
    assert {"vllm._custom_ops.topk_softmax", "vllm._custom_ops.moe_align_block_size", "vllm._custom_ops.moe_sum",
            "vllm.model_executor.layers.fused_moe.fused_moe.apply_moe_activation"} <= set(done)
    import vllm._custom_ops as ops

    assert ops.moe_sum is T.torch_moe_sum


def test_moe_registry_shape_and_weights():
    cfg = models.config("qwen3-30b-a3b")
    assert models.is_moe(cfg) and not models.is_moe(models.config("llama-3-8b"))
    assert 30.0e9 < VC.param_count(cfg) < 31.0e9  # Qwen3-30B-A3B: 30.5B parameters
    assert "qwen3-30b-a3b" not in models.MODELS  # dense GEMM sweeps skip it
