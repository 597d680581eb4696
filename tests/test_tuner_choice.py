"""benchmarks/kernel_bench.py --tune: how several M of one bucket pick the bucket's GEMM config."""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))

import kernel_bench as kernels  # noqa: E402
from tri_inductor.patterns.gemm import configs as L  # noqa: E402

A, B, C = [64, 64, 128, 2, 1, 4, 6, 0], [128, 64, 64, 1, 1, 4, 6, 0], [64, 128, 128, 8, 1, 4, 4, 1]


def _row(m, results):
    return {"M": m, "N": 6144, "K": 4096, "cublas_ms": 0.02, "results": results}


def test_least_summed_relative_time_wins():
    # A: 1.00 + 1.10 = 2.10, B: 1.05 + 1.00 = 2.05 -> B, though A is the best at M = 96
    got = kernels.bucket_choices([_row(96, [(0.020, A), (0.021, B)]), _row(128, [(0.022, B), (0.0242, A)])],
                                 L.bucket_of)
    assert got == {(6144, 4096, 128): L.Cfg(*B)}


def test_config_timed_at_one_m_only_cannot_win_on_a_shorter_sum():
    # C ran only at M = 512 (its candidate list depends on M): its one-term sum 1.0 must not
    # beat A's two-term 2.2
    rows = [_row(384, [(0.040, A), (0.046, B)]), _row(512, [(0.050, C), (0.060, A), (0.070, B)])]
    assert kernels.bucket_choices(rows, L.bucket_of) == {(6144, 4096, 512): L.Cfg(*A)}


def test_buckets_kept_apart():
    rows = [_row(64, [(0.018, A), (0.019, B)]), _row(128, [(0.022, B), (0.030, A)])]
    assert kernels.bucket_choices(rows, L.bucket_of) == {(6144, 4096, 64): L.Cfg(*A), (6144, 4096, 128): L.Cfg(*B)}


# Inductor's max-autotune table as torch 2.11 prints it (H200, M=512 x N=6144 x K=4096, first lines).
_AUTOTUNE = """Autotune Choices Stats:
{"num_choices": 20, "best_kernel": "triton_mm_31"}
AUTOTUNE mm(512x4096, 4096x6144)
  triton_mm_31 0.0447 ms 100.0% ACC_TYPE='tl.float32', ALLOW_TF32=False, BLOCK_K=64, BLOCK_M=64, BLOCK_N=128, EVEN_K=True, GROUP_M=8, USE_FAST_ACCUM=False, num_stages=3, num_warps=4
  triton_mm_37 0.0476 ms 93.8% ACC_TYPE='tl.float32', ALLOW_TF32=False, BLOCK_K=64, BLOCK_M=128, BLOCK_N=128, EVEN_K=True, GROUP_M=8, USE_FAST_ACCUM=False, num_stages=3, num_warps=4
SingleProcess AUTOTUNE benchmarking takes 7.7320 seconds
"""


def test_inductor_pick_is_the_first_table_line():
    pick = kernels.inductor_pick(_AUTOTUNE)
    assert pick["name"] == "triton_mm_31" and pick["ms"] == 0.0447
    assert (pick["BLOCK_M"], pick["BLOCK_N"], pick["BLOCK_K"]) == (64, 128, 64)
    assert (pick["num_stages"], pick["num_warps"], pick["GROUP_M"]) == (3, 4, 8)
    assert pick["ACC_TYPE"] == "tl.float32"
    assert kernels.inductor_pick("no table here\n") is None


def test_timed_rounds_changes_the_order_each_round(monkeypatch):
    # bench stubbed: each call returns its position in the sequence of calls.
    import _common

    calls: list[str] = []

    def fake_bench(fns):
        calls.append(fns[0])
        return float(len(calls))

    monkeypatch.setattr(_common, "bench", fake_bench)
    fns = {n: [n] for n in "abc"}
    times = _common.timed_rounds(fns, 3)
    assert calls == list("abc" "cba" "abc")
    assert times == {"a": [1.0, 6.0, 7.0], "b": [2.0, 5.0, 8.0], "c": [3.0, 4.0, 9.0]}
    calls.clear()
    _common.timed_rounds(fns, 4, order="rotate")
    assert calls == list("abc" "bca" "cab" "abc")
