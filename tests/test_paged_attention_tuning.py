"""Prefill tiles of our paged attention (patterns/paged_attention/tuning.py): every config the
tuner may pick runs correctly in Triton's interpreter and compiles for sm_90; the tuning flow
(every query bucket of a shape measured once and stored, a warm start measures nothing, a step
with fewer queries gets the bucket's config with fewer rows, a bad stored entry is re-tuned)
with the GPU measurement faked.

Tolerance as tests/test_paged_attention.py: bf16 outputs against float64, atol 2e-2 / rtol 2e-2.
"""
from __future__ import annotations

import dataclasses

import pytest
import torch

from test_paged_attention import TOL, _sm90, make_inputs
from tri_inductor import cache
from tri_inductor import tuning as generic
from tri_inductor.patterns.gemm.configs import DEFAULT_DEVICE
from tri_inductor.patterns.paged_attention import launch as L
from tri_inductor.patterns.paged_attention import paged_attention
from tri_inductor.patterns.paged_attention import tuning as PT
from tri_inductor.patterns.paged_attention.reference import paged_attention_ref

SHAPES = [(4, 128), (4, 64), (7, 128), (8, 256), (1, 128)]  # (GQA group, head dim)


def _all_configs(group: int, head: int) -> list[L.PrefillCfg]:
    cfgs = {c for b in PT.Q_BUCKETS for c in PT.candidates(group, head, b, DEFAULT_DEVICE)}
    cfgs |= {L.prefill_cfg(group, head, PT.measured_q(b)) for b in PT.Q_BUCKETS}
    return sorted(cfgs, key=dataclasses.astuple)


def _tiles(group: int, head: int) -> list[L.PrefillCfg]:
    # warps and stages do not change what the interpreter computes: one config per tile shape
    seen: dict[tuple, L.PrefillCfg] = {}
    for c in _all_configs(group, head):
        seen.setdefault((c.block_m, c.block_q, c.tile_n), c)
    return list(seen.values())


NUMERIC = [(g, d, c) for g, d in ((4, 64), (7, 128)) for c in _tiles(g, d)]


@pytest.mark.parametrize("group,head,cfg", NUMERIC,
                         ids=[f"g{g}-d{d}-m{c.block_m}-n{c.tile_n}" for g, d, c in NUMERIC])
def test_every_candidate_tile_matches_float64(interpreter, poison, group, head, cfg):
    """Chunks after cached prefixes next to a decode row, odd lengths: whole and partial query
    blocks, unmasked and masked key tiles at every tile size the tuner may pick."""
    q_lens, seq_lens = [37, 1, 70], [90, 33, 70]
    q, kc, vc, cu, sl, bt = make_inputs(q_lens, seq_lens, 2 * group, 2, head)
    out = torch.empty_like(q)
    paged_attention(q, kc, vc, out, cu, sl, bt, max(q_lens), max(seq_lens), head ** -0.5, prefill=cfg)
    ref = paged_attention_ref(q, kc, vc, cu, sl, bt, head ** -0.5)
    torch.testing.assert_close(out.double(), ref, **TOL[torch.bfloat16])


# Every config of the Llama/Qwen head (d128) and of the largest head (d256, shared memory's
# edge); for an odd group with d64, the long bucket's (~3.6 s of ptxas each on 2 cores).
COMPILED = sorted({(g, d, c) for g, d in ((4, 128), (8, 256)) for c in _all_configs(g, d)}
                  | {(7, 64, c) for c in PT.candidates(7, 64, PT.Q_BUCKETS[-1], DEFAULT_DEVICE)},
                  key=lambda t: (t[0], t[1], dataclasses.astuple(t[2])))


@pytest.mark.parametrize("group,head,cfg", COMPILED,
                         ids=[f"g{g}-d{d}-m{c.block_m}-n{c.tile_n}-w{c.num_warps}-s{c.num_stages}"
                              + (f"-r{c.max_regs}" if c.max_regs else "") for g, d, c in COMPILED])
def test_every_candidate_compiles_for_sm90(group, head, cfg):
    """What the tuner would compile on an H100/H200, within its shared memory (a config the
    compiler rejects is found here, not at a user's first prefill)."""
    from tri_inductor.patterns.paged_attention.prefill import paged_attn_prefill_kernel

    consts = dict(GROUP=group, BLOCK_M=cfg.block_m, BLOCK_Q=cfg.block_q, HEAD=head, HEAD_PAD=L.head_pad(head),
                  BLOCK_SIZE=16, TILE_N=cfg.tile_n, WINDOW=0, CAUSAL=True, USE_SOFTCAP=False, USE_SINKS=False,
                  USE_PDL=True)
    opts = cfg.launch_options()
    _sm90(paged_attn_prefill_kernel, consts, opts.pop("num_warps"), opts.pop("num_stages"), **opts)


@pytest.mark.parametrize("group,head", SHAPES)
def test_candidates_are_valid_and_include_the_heuristic(group, head):
    for b in PT.Q_BUCKETS:
        cands = PT.candidates(group, head, b, DEFAULT_DEVICE)
        assert cands and all(PT.invalid_reason(c, group, head, DEFAULT_DEVICE) is None for c in cands)
        assert all(c.block_m >= group and c.block_q == c.block_m // group for c in cands)
        assert PT.invalid_reason(L.prefill_cfg(group, head, PT.measured_q(b)), group, head, DEFAULT_DEVICE) is None


def test_register_cap_twins_only_where_they_change_the_occupancy():
    """A two-programs-an-SM twin (8 warps, capped registers) for tiles that take more than the
    cap uncapped and still fit under it, never for 4 or 16 warps; a stored entry from before the
    cap existed (five numbers) still reads."""
    for group, head in SHAPES:
        for b in PT.Q_BUCKETS:
            for c in PT.candidates(group, head, b, DEFAULT_DEVICE):
                if c.max_regs:
                    assert c.num_warps == 8 and c.max_regs == PT.SHARED_SM_REGS
                    assert dataclasses.replace(c, max_regs=0) in PT.candidates(group, head, b, DEFAULT_DEVICE)
    cands = PT.candidates(4, 128, PT.Q_BUCKETS[-1], DEFAULT_DEVICE)
    assert {(c.block_m, c.tile_n) for c in cands if c.max_regs} == {(128, 32), (128, 64)}
    assert "do not fit" in PT.invalid_reason(L.PrefillCfg(128, 32, 128, 8, 3, 128), 4, 128, DEFAULT_DEVICE)
    assert PT._stored_config_problem([128, 32, 64, 8, 3]) is None
    assert PT._stored_config_problem([128, 32, 64, 8, 3, 128]) is None
    assert PT._stored_config_problem([128, 32, 64, 8, 3, -1]) is not None
    assert PT._decode([128, 32, 64, 8, 3], 4, 128, DEFAULT_DEVICE, 2) == L.PrefillCfg(128, 32, 64, 8, 3)


def test_invalid_configs_are_refused():
    dev = DEFAULT_DEVICE
    assert "powers of two" in PT.invalid_reason(L.PrefillCfg(96, 24, 64, 8, 2), 4, 128, dev)
    assert "KV group" in PT.invalid_reason(L.PrefillCfg(64, 8, 64, 4, 2), 4, 128, dev)  # block_q 16 expected
    assert "shared memory" in PT.invalid_reason(L.PrefillCfg(256, 64, 256, 16, 6), 4, 256, dev)
    assert "too large for the warps" in PT.invalid_reason(L.PrefillCfg(256, 64, 128, 4, 2), 4, 128, dev)
    assert PT._stored_config_problem([128, 32, 64, 8, 2]) is None
    assert PT._stored_config_problem([128, 32, 64, 8]) and PT._stored_config_problem("x")
    assert PT._stored_config_problem([128, 32, 64, 8, True])


def test_fit_keeps_the_tuned_tile_with_fewer_rows():
    tuned = L.PrefillCfg(128, 32, 128, 8, 3)
    assert PT.fit(tuned, 4, 4096) == tuned
    assert PT.fit(tuned, 4, 3) == L.PrefillCfg(16, 4, 128, 4, 3)  # 3 tokens x 4 heads -> 16 rows
    assert PT.fit(tuned, 7, 1) == L.PrefillCfg(16, 2, 128, 4, 3)
    big = L.PrefillCfg(256, 64, 64, 16, 3)
    assert PT.fit(big, 4, 4096) == big                              # 16 programs of 256 rows per KV head
    assert PT.fit(big, 4, 300) == L.PrefillCfg(128, 32, 64, 8, 3)   # 1200 rows: 256-row programs too few


def _fake_time(cfg: L.PrefillCfg) -> float:
    # larger tiles and deeper pipelines 'win': the pick is known without a GPU
    return 1.0 / (cfg.block_m * cfg.tile_n * cfg.num_stages) + 1e-6 * cfg.num_warps


@pytest.fixture
def fake_gpu(monkeypatch, tmp_path):
    """Tuning as on a GPU with the measurement faked (``_fake_time``)."""
    monkeypatch.setenv("TRI_INDUCTOR_CACHE_DIR", str(tmp_path))
    cache.forget_loaded()
    monkeypatch.setattr(generic, "can_tune", lambda: True)
    monkeypatch.setattr(generic, "_spent_s", 0.0)
    monkeypatch.setattr(generic, "_failed", set())
    measured: list[tuple[str, L.PrefillCfg]] = []

    def fake_measure(group, head, block_size, dtype, causal, t, default, run, state):
        def measure(cfg):
            measured.append((PT.bucket_label(PT.q_bucket(t)), cfg))
            return _fake_time(cfg)
        return measure

    monkeypatch.setattr(PT, "_measure", fake_measure)
    yield measured
    cache.forget_loaded()


def _best(group: int, head: int, bucket: int) -> L.PrefillCfg:
    pool = [L.prefill_cfg(group, head, PT.measured_q(bucket)), *PT.candidates(group, head, bucket, DEFAULT_DEVICE)]
    return min(pool, key=_fake_time)  # the tuner's order: the first fastest wins


def test_tuning_measures_every_bucket_once_and_a_warm_start_nothing(fake_gpu):
    measured = fake_gpu
    run = lambda *a: None  # noqa: E731  (never called: the measurement is faked)
    got = PT.prefill_config(4, 128, 16, torch.bfloat16, True, 2048, run)
    assert got == _best(4, 128, PT.Q_BUCKETS[-1])
    assert {b for b, _ in measured} == {PT.bucket_label(b) for b in PT.Q_BUCKETS}  # all at once
    for b in PT.Q_BUCKETS:
        stored = cache.lookup(PT.KERNEL, PT.shape_key(4, 128, 16, torch.bfloat16, True, b))
        assert list(stored) == list(dataclasses.astuple(_best(4, 128, b)))
    n = len(measured)
    small = PT.prefill_config(4, 128, 16, torch.bfloat16, True, 3, run)  # memo, fitted to 3 tokens
    assert small == PT.fit(_best(4, 128, PT.Q_BUCKETS[0]), 4, 3) and small.block_m == 16
    cache.forget_loaded()  # a new process: the stored entries, nothing measured
    assert PT.prefill_config(4, 128, 16, torch.bfloat16, True, 300, run) == _best(4, 128, PT.Q_BUCKETS[-1])
    assert len(measured) == n


def test_first_bucket_compiles_every_buckets_candidates(fake_gpu, monkeypatch):
    """The kernel does not depend on the query count: the first bucket's side-by-side compile
    batch holds every bucket's candidates (one batch, not one per bucket)."""
    compile_lists = []
    fake = PT._measure

    def spy(group, head, block_size, dtype, causal, t, default, run, state):
        compile_lists.append(list(state["cands"]))
        return fake(group, head, block_size, dtype, causal, t, default, run, state)

    monkeypatch.setattr(PT, "_measure", spy)
    PT.prefill_config(4, 128, 16, torch.bfloat16, True, 2048, lambda *a: None)
    first, *later = compile_lists
    every = {c for b in PT.Q_BUCKETS for c in (L.prefill_cfg(4, 128, PT.measured_q(b)),
                                                *PT.candidates(4, 128, b, DEFAULT_DEVICE))}
    assert set(first) == every and len(first) == len(every)
    assert len(later) == len(PT.Q_BUCKETS) - 1 and all(set(c) <= every for c in later)


def test_stored_config_that_is_not_valid_is_retuned(fake_gpu):
    measured = fake_gpu
    cache.store(PT.KERNEL, PT.shape_key(4, 64, 16, torch.bfloat16, True, PT.Q_BUCKETS[-1]), [96, 24, 64, 8, 2])
    cache.forget_loaded()
    got = PT.prefill_config(4, 64, 16, torch.bfloat16, True, 4096, lambda *a: None)
    assert measured and PT.invalid_reason(got, 4, 64, DEFAULT_DEVICE) is None


def test_without_a_gpu_the_stored_config_or_the_heuristic(monkeypatch, tmp_path):
    monkeypatch.setenv("TRI_INDUCTOR_CACHE_DIR", str(tmp_path))
    cache.forget_loaded()
    stored = L.PrefillCfg(64, 16, 32, 4, 3)
    cache.store(PT.KERNEL, PT.shape_key(4, 64, 16, torch.bfloat16, True, PT.Q_BUCKETS[-1]),
                list(dataclasses.astuple(stored)))
    cache.forget_loaded()
    try:
        assert PT.prefill_config(4, 64, 16, torch.bfloat16, True, 2048) == stored
        # nothing stored for short chunks: the heuristic, sized on this step's queries
        for q in (1, 3, 16):
            assert PT.prefill_config(4, 64, 16, torch.bfloat16, True, q) == L.prefill_cfg(4, 64, q)
    finally:
        cache.forget_loaded()


@pytest.mark.parametrize("capturing", [False, True], ids=["tuning-off", "in-capture"])
def test_a_gpu_that_cannot_tune_looks_the_db_up_once(monkeypatch, tmp_path, capturing):
    """Tuning off on a GPU: the stored-or-heuristic answer is remembered (it is asked every layer
    of every step); only inside a CUDA-graph capture is it asked again later, when tuning may run."""
    monkeypatch.setenv("TRI_INDUCTOR_CACHE_DIR", str(tmp_path))
    cache.forget_loaded()
    monkeypatch.setattr(generic, "can_tune", lambda: False)
    monkeypatch.setattr(generic, "capturing", lambda: capturing)
    lookups = []
    real = PT.cache.lookup
    monkeypatch.setattr(PT.cache, "lookup", lambda *a: lookups.append(a) or real(*a))
    try:
        for _ in range(3):
            got = PT.prefill_config(4, 64, 16, torch.bfloat16, True, 300, run=lambda *a: None)
            assert got == L.prefill_cfg(4, 64, 300)
        assert len(lookups) == (3 if capturing else 1)
    finally:
        cache.forget_loaded()
