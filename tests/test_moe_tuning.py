"""Fused-MoE expert GEMM configs (patterns/moe/tuning.py): every config the tuner may pick runs
correctly in Triton's interpreter (odd shapes, grouped row blocks, ragged K), and the tuning flow
(benchmark once, store, a warm start measures nothing, a bad stored entry is ignored) with the
GPU measurement faked."""
from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pattern_harness import rel
from tri_inductor import cache
from tri_inductor import tuning as generic
from tri_inductor.patterns.gemm.configs import DEFAULT_DEVICE
from tri_inductor.patterns.moe import ops
from tri_inductor.patterns.moe import reference as R
from tri_inductor.patterns.moe import tuning as MT

# ||out - ref|| / ||ref|| against float64, as tests/test_moe.py (bf16: two bf16 stores, truncated
# by the interpreter).
TOL = {torch.float32: 1e-5, torch.bfloat16: 2e-2}


def _layer(T, E, k, H, I, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(T, H, generator=g).to(dtype)
    w13 = (torch.randn(E, 2 * I, H, generator=g) / H ** 0.5).to(dtype)
    w2 = (torch.randn(E, H, I, generator=g) / I ** 0.5).to(dtype)
    w, ids = R.reference_route(torch.randn(T, E, generator=g), k, renormalize=True)
    return x, w13, w2, w.float(), ids.to(torch.int32)


# 150 tokens x top-2 over 3 experts: ~100 rows each, several row blocks per expert at every
# BLOCK_M (the grouped order has partial groups); H=72 is no multiple of any K step.
SHAPE = dict(T=150, E=3, k=2, H=72, I=40)
CONFIGS = MT.candidates(SHAPE["T"], SHAPE["k"], SHAPE["E"], DEFAULT_DEVICE) + [
    MT.MoeCfg(16, 128, 64, 4, 4, 3), MT.MoeCfg(16, 64, 32, 16, 4, 2), MT.MoeCfg(32, 32, 16, 2, 2, 1)]


@pytest.mark.parametrize("cfg", CONFIGS, ids=[c.short().replace(" ", "_") for c in CONFIGS])
def test_every_candidate_config_matches_float64(cfg, poison):
    x, w13, w2, w, ids = _layer(**SHAPE, dtype=torch.float32, seed=1)
    out = ops.experts(x, w13, w2, w, ids, cfg=cfg)
    assert not out.isnan().any()
    assert rel(out, R.reference_experts(x, w13, w2, w, ids)) < TOL[torch.float32]


@pytest.mark.parametrize("T,E,k", [(1, 8, 2), (37, 5, 2), (300, 4, 1)])
def test_default_config_matches_float64_in_bf16(T, E, k, poison):
    x, w13, w2, w, ids = _layer(T, E, k, 48, 24, torch.bfloat16, seed=T)
    out = ops.experts(x, w13, w2, w, ids, cfg=MT.default_config(T, k, E))
    assert rel(out, R.reference_experts(x, w13, w2, w, ids)) < TOL[torch.bfloat16]


@pytest.mark.parametrize("T,k,E", [(1, 2, 8), (64, 2, 8), (256, 2, 8), (4096, 2, 8), (16, 8, 128),
                                   (4096, 8, 128), (20000, 6, 64), (3, 1, 3)])
def test_default_and_candidates_are_valid_and_follow_rows_per_expert(T, k, E):
    dev = DEFAULT_DEVICE
    cands = MT.candidates(T, k, E, dev)
    assert MT.invalid_reason(MT.default_config(T, k, E), dev) is None
    assert cands and all(MT.invalid_reason(c, dev) is None for c in cands)
    assert 2 <= len(cands) <= 16  # a bounded benchmark per shape
    r = MT.rows_per_expert(T, k, E)
    near = min(128, max(16, 1 << (r - 1).bit_length()))
    assert near in {c.block_m for c in cands}
    assert all(c.group_m == 1 for c in cands if c.block_m >= r)  # grouping needs several row blocks


def test_invalid_configs_are_refused():
    dev = DEFAULT_DEVICE
    assert "powers of two" in MT.invalid_reason(MT.MoeCfg(48, 128, 64, 1, 4, 3), dev)
    assert "shared memory" in MT.invalid_reason(MT.MoeCfg(256, 512, 256, 1, 16, 8), dev)
    assert "accumulator" in MT.invalid_reason(MT.MoeCfg(128, 256, 64, 1, 4, 2), dev)
    assert "powers of two" in MT.invalid_reason(MT.MoeCfg(16, 128, 64, 1, 0, 3), dev)


@pytest.fixture
def fake_gpu(monkeypatch, tmp_path):
    """Tuning as on a GPU with the measurement faked: a config's 'time' falls with BLOCK_M and
    prefers the grouped order, so the pick is known without a GPU."""
    monkeypatch.setenv("TRI_INDUCTOR_CACHE_DIR", str(tmp_path))
    cache.forget_loaded()
    monkeypatch.setattr(generic, "can_tune", lambda: True)
    monkeypatch.setattr(generic, "_spent_s", 0.0)
    monkeypatch.setattr(generic, "_failed", set())
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda *a: (80 << 30, 80 << 30))
    measured: list[MT.MoeCfg] = []

    def fake_measure(t, top_k, n, h, experts, dtype, default, run, state):
        def measure(cfg):
            measured.append(cfg)
            return 1.0 / cfg.block_m + (0.0 if cfg.group_m > 1 else 1e-3)
        return measure

    monkeypatch.setattr(MT, "_measure", fake_measure)
    yield measured
    cache.forget_loaded()


def test_tuning_stores_the_fastest_and_a_warm_start_measures_nothing(fake_gpu, poison):
    measured = fake_gpu
    x, w13, w2, w, ids = _layer(**SHAPE, dtype=torch.float32, seed=2)
    out = ops.experts(x, w13, w2, w, ids)  # cfg=None: tuned for this shape
    assert rel(out, R.reference_experts(x, w13, w2, w, ids)) < TOL[torch.float32]
    cands = MT.candidates(MT.token_bucket(150), 2, 3, DEFAULT_DEVICE, elem=4)
    pool = [MT.default_config(MT.token_bucket(150), 2, 3), *cands]  # the tuner's order: the first fastest wins
    best = min(pool, key=lambda c: 1.0 / c.block_m + (0.0 if c.group_m > 1 else 1e-3))
    assert set(measured) >= set(cands)
    key = MT.shape_key(MT.token_bucket(150), 2, 40, 72, 3, torch.float32)
    assert list(cache.lookup("moe", key)) == list(best.__dict__.values())
    n = len(measured)
    ops.experts(x, w13, w2, w, ids)  # same process: the memo
    cache.forget_loaded()  # a new process: the stored entry
    got = MT.config_for(150, 2, 40, 72, 3, torch.float32, run=lambda *a: None)
    assert got == best and len(measured) == n


def test_stored_config_that_is_not_valid_is_retuned(fake_gpu):
    measured = fake_gpu
    key = MT.shape_key(MT.token_bucket(150), 2, 40, 72, 3, torch.float32)
    cache.store("moe", key, [48, 128, 64, 1, 0, 3])  # BLOCK_M 48, 0 warps
    cache.forget_loaded()
    got = MT.config_for(150, 2, 40, 72, 3, torch.float32, run=lambda *a: None)
    assert measured and MT.invalid_reason(got, DEFAULT_DEVICE) is None


def test_without_a_gpu_a_stored_config_is_used_and_nothing_is_measured(monkeypatch, tmp_path):
    monkeypatch.setenv("TRI_INDUCTOR_CACHE_DIR", str(tmp_path))
    cache.forget_loaded()
    stored = MT.MoeCfg(32, 128, 64, 16, 4, 4)
    cache.store("moe", MT.shape_key(MT.token_bucket(150), 2, 40, 72, 3, torch.float32), list(stored.__dict__.values()))
    cache.forget_loaded()
    try:
        assert MT.config_for(150, 2, 40, 72, 3, torch.float32, run=lambda *a: 1 / 0) == stored
        assert MT.config_for(1, 2, 40, 72, 3, torch.float32, run=lambda *a: 1 / 0) == MT.default_config(1, 2, 3)
    finally:
        cache.forget_loaded()


def test_moe_benchmark_dry_run_checks_every_contender_on_cpu():
    root = Path(__file__).resolve().parents[1]
    p = subprocess.run([sys.executable, str(root / "benchmarks" / "moe_kernels.py"), "--dry-run"], capture_output=True,
                       text=True, timeout=600, cwd=str(root), env=dict(os.environ, PYTHONPATH=str(root)))
    assert p.returncode == 0, p.stderr[-2000:]
    assert "all contenders agree" in p.stdout


def _moe_tiles() -> list[MT.MoeCfg]:
    """Every distinct config the tuner can measure (over decode to prefill token counts, few and
    many experts), and the defaults."""
    shapes = [(t, k, e) for t in (1, 16, 64, 256, 1024, 4096, 16384) for k, e in ((2, 8), (8, 128))]
    cfgs = {c for s in shapes for c in [*MT.candidates(*s, DEFAULT_DEVICE), MT.default_config(*s)]}
    return sorted(cfgs, key=dataclasses.astuple)


@pytest.mark.parametrize("cfg", _moe_tiles(), ids=lambda c: c.short().replace(" ", "-"))
def test_moe_tile_compiles_for_sm90(cfg):
    """Compiled for sm_90 as a Mixtral layer launches it (bf16, H 4096, I 14336): a config the
    compiler rejects is found here, not at a user's first call."""
    import triton
    from triton.backends.compiler import GPUTarget

    from tri_inductor.patterns.moe.experts import moe_gemm_kernel as k

    for gated, n, kk in ((True, 14336, 4096), (False, 4096, 14336)):
        kw = cfg.kwargs(n, kk, gated, 2)
        consts = dict(GATED=gated, ACT=0, MUL_W=False, EVEN_K=True, BLOCK_M=kw["BLOCK_M"], BLOCK_N=kw["BLOCK_N"],
                      BLOCK_K=kw["BLOCK_K"], GROUP_M=kw["GROUP_M"])
        sig = {a: "i32" for a in k.arg_names}
        sig.update({a: "*bf16" for a in ("a_ptr", "w_ptr", "c_ptr", "rw_ptr")})
        sig.update({a: "*i32" for a in ("sorted_ptr", "expert_ids_ptr", "n_post_pad_ptr")})
        sig.update({c: "constexpr" for c in consts})
        src = triton.compiler.ASTSource(k, sig, consts, {})
        triton.compile(src, target=GPUTarget("cuda", 90, 32),
                       options=dict(num_warps=kw["num_warps"], num_stages=kw["num_stages"]))
