"""``patterns/gemm/eager.py``: an eager GEMM (vLLM's lm_head, every decode step) replays the launch
its first call recorded. The replay must hand the compiled kernel exactly the arguments
``launch_cfg`` would: checked against plans switched off, for every kernel kind, with and without
bias, over new operand tensors. CPU-only: operands are ``meta`` tensors (what ``_launch`` treats as
a device call) and Triton's compile and launch are replaced by recorders; the real launch is
covered on the GPU by ``test_gpu_plan_matches_float64``."""
from __future__ import annotations

import pytest
import torch
from triton.runtime.jit import JITFunction

from tri_inductor.patterns import _host_tma as HT
from tri_inductor.patterns import _launch as L
from tri_inductor.patterns.gemm import eager
from tri_inductor.patterns.gemm.configs import Cfg, Kind


class _Compiled:
    function, packed_metadata = "function", "packed_metadata"

    def __init__(self, runs: list) -> None:
        self.runs = runs

    def run(self, *args) -> None:
        self.runs.append(args)


@pytest.fixture
def fake_gpu(monkeypatch):
    """kernel[grid](...) compiles (counted) and returns a recorder whose run() logs each launch."""
    runs: list[tuple] = []
    compiles: list = []

    def getitem(self, grid):
        def call(*args, **kwargs):
            compiles.append(self)
            return _Compiled(runs)
        return call

    monkeypatch.setattr(JITFunction, "__getitem__", getitem)
    monkeypatch.setattr(L, "_COMPILED", {})
    monkeypatch.setattr(eager, "_PLANS", {})
    monkeypatch.setattr(L, "_current_device", lambda: 0)
    monkeypatch.setattr(L, "_current_stream", lambda d: 7)
    return runs, compiles


def _operands(m, n, k, bias: bool, kmajor: bool = True):
    a = torch.empty(m, k, dtype=torch.bfloat16, device="meta")
    w = torch.empty(n, k, dtype=torch.bfloat16, device="meta") if kmajor else None
    b = w.t() if kmajor else torch.empty(k, n, dtype=torch.bfloat16, device="meta")
    c = torch.empty(n, dtype=torch.bfloat16, device="meta") if bias else None
    return a, b, c, torch.empty(m, n, dtype=torch.bfloat16, device="meta")


def _norm(args, ops):
    """A launch's arguments with each operand named (by identity or as the weight's transpose)."""
    out = []
    for x in args:
        if HT.is_descriptor(x):
            out.append(("desc", eager._source(x.base, ops), tuple(x.shape), tuple(x.strides), tuple(x.block_shape)))
        elif isinstance(x, torch.Tensor):
            out.append(("tensor", eager._source(x, ops)))
        else:
            out.append(x)
    return out


CFGS = [Cfg(1, 8, 512, 1, 1, 2, 1, Kind.GEMV), Cfg(16, 64, 128, 1, 1, 4, 4, Kind.PTR),
        Cfg(64, 64, 128, 1, 1, 4, 5, Kind.TMA_TILE), Cfg(128, 256, 64, 8, 1, 8, 3, Kind.TMA)]


@pytest.mark.parametrize("cfg", CFGS, ids=lambda c: c.short())
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("kmajor", [True, False])
def test_replay_passes_what_launch_cfg_passes(fake_gpu, cfg, bias, kmajor) -> None:
    runs, compiles = fake_gpu
    m = 1 if cfg.kernel == Kind.GEMV else 64
    first = _operands(m, 1024, 512, bias, kmajor)
    eager.run(*first, cfg, -1)  # records
    assert len(compiles) == 1 and not runs
    plan = next(iter(eager._PLANS.values()))
    assert plan is not None
    second = _operands(m, 1024, 512, bias, kmajor)
    eager.run(*second, cfg, -1)  # replays
    assert len(compiles) == 1 and len(runs) == 1
    replayed = runs.pop()
    # the same call with plans off: launch_cfg, then _launch's own cached launcher
    eager._PLANS.clear()
    eager._PLANS[eager._key(*second, cfg, -1)] = None
    eager.run(*second, cfg, -1)
    assert len(runs) == 1
    expected = runs.pop()
    ops = dict(zip(("a", "b", "bias", "out"), second))
    assert replayed[:9] == expected[:9]  # grid, stream, function, metadata, no hooks
    got = _norm(replayed[9:], ops)
    assert got == _norm(expected[9:], ops)
    named = [x for x in got if isinstance(x, tuple)]
    assert named and all(x[1] is not None for x in named)  # every tensor argument is a new operand
    assert any(x[0] == "desc" for x in named) == (cfg.kernel in (Kind.TMA, Kind.TMA_TILE))


def test_split_k_and_other_layouts_are_not_replayed_blindly(fake_gpu) -> None:
    runs, compiles = fake_gpu
    split = Cfg(16, 64, 128, 1, 4, 4, 4, Kind.PTR)  # a workspace and a reduction kernel: no plan
    ops = _operands(16, 1024, 512, False)
    eager.run(*ops, split, -1)
    assert list(eager._PLANS.values()) == [None]
    ptr = Cfg(16, 64, 128, 1, 1, 4, 4, Kind.PTR)
    eager.run(*_operands(16, 1024, 512, False), ptr, -1)
    n = len(eager._PLANS)
    eager.run(*_operands(32, 1024, 512, False), ptr, -1)  # another M: its own recording
    a, b, c, out = _operands(16, 1024, 512, False)
    eager.run(a[:, :256], b[:256], c, out, ptr, -1)  # other strides / K: its own recording
    assert len(eager._PLANS) == n + 2


def test_a_profiler_sees_tritons_own_path(fake_gpu, monkeypatch) -> None:
    runs, compiles = fake_gpu
    monkeypatch.setattr(L, "launch_hooks_set", lambda: True)
    cfg = Cfg(16, 64, 128, 1, 1, 4, 4, Kind.PTR)
    for _ in range(2):
        eager.run(*_operands(16, 1024, 512, False), cfg, -1)
    assert len(compiles) == 2 and not eager._PLANS


@pytest.mark.gpu
@pytest.mark.parametrize("m", [1, 16, 64, 256])  # GEMV, pointer kernel (two buckets), TMA kernel
@pytest.mark.parametrize("bias", [False, True])
def test_gpu_plan_matches_float64(m, bias, monkeypatch) -> None:
    # On a real GPU: the eager GEMM from its plan (second and later calls) gives the first call's
    # bits (Triton's own launch), new operands give their own product within the GEMM tolerance
    # of a float64 reference, and no later call goes through Triton's launch path.
    from tri_inductor.patterns.gemm import ops as LIN

    monkeypatch.setattr(eager, "_PLANS", {})
    monkeypatch.setattr(L, "_COMPILED", {})
    calls = []
    real_run = JITFunction.run

    def counted(self, *args, **kwargs):
        calls.append(self)
        return real_run(self, *args, **kwargs)

    monkeypatch.setattr(JITFunction, "run", counted)
    g = torch.Generator(device="cuda").manual_seed(m)
    w = torch.randn(4096, 512, device="cuda", dtype=torch.bfloat16, generator=g) / 16
    c = torch.randn(4096, device="cuda", dtype=torch.bfloat16, generator=g) if bias else None
    a = torch.randn(m, 512, device="cuda", dtype=torch.bfloat16, generator=g)
    first = LIN.mm_launch(a, w.t(), c).clone()
    n_first = len(calls)
    assert torch.equal(LIN.mm_launch(a, w.t(), c), first)
    a2 = torch.randn(m, 512, device="cuda", dtype=torch.bfloat16, generator=g)
    got = LIN.mm_launch(a2, w.t(), c)
    torch.cuda.synchronize()
    assert len(calls) == n_first
    ref = a2.double() @ w.t().double() + (c.double() if bias else 0)
    assert ((got.double() - ref).norm() / ref.norm()).item() < 1e-2
