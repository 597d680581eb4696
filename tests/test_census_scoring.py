"""The vLLM census's scoring, on synthetic data (the census itself runs on the GPU machine)."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
vllm_census = pytest.importorskip("vllm_census", reason="benchmarks/vllm_census.py must import")


def test_free_running_counts_every_token_after_a_flip():
    base = {"tokens": [[1, 2, 3, 4]], "top2_gap": [[1.0, 0.05, 1.0, 1.0]]}
    ours = {"tokens": [[1, 9, 8, 7]], "top2_gap": [[1.0, 0.05, 1.0, 1.0]]}
    g = vllm_census.compare_greedy(ours, base, gap_tol=0.1)
    assert (g["equal"], g["positions"]) == (1, 4)  # one near-tie flip costs three positions
    assert g["divergences"][0]["near_tie"] and not g["pass"]


def test_teacher_forced_scores_each_position_on_the_same_prefix():
    rows = [[[True, 0.0]] * 199 + [[False, 0.04]]]
    tf = vllm_census.score_teacher_forced(rows, gap_tol=0.1)
    assert tf["match_rate"] == pytest.approx(199 / 200) and tf["pass"]
    rows[0][-1] = [False, 0.4]  # a confident disagreement is not bf16 noise
    tf = vllm_census.score_teacher_forced(rows, gap_tol=0.1)
    assert not tf["pass"] and tf["beyond_noise"][0]["gap"] == 0.4
    tf = vllm_census.score_teacher_forced([[[False, 0.01]] * 2 + [[True, 0.0]] * 98], gap_tol=0.1)
    assert not tf["pass"]  # 98% < 99% even if every flip is a near tie


def test_reclassify_drops_range_annotations_and_names_cublas():
    row = lambda name: {"name": name, "launches": 2, "gpu_us": 3.0, "triton": False, "library": "other"}  # noqa: E731
    census = {"decode": {"forward": [row("tri_census:part:forward"), row("kernel_unified_attention"),
                                     row("_rms_norm_kernel"), row("triton_poi_fused_add_0"),
                                     row("nvjet_sm90_tst_64x48_64x15_2x4_h_bz_TNT")]}}
    report = {"models": {"m": {"backends": {"tri_inductor": {"ok": True, "census": census}},
                               "teacher_forced": {"pass": True}}}}
    out = vllm_census.reclassify(report)["models"]["m"]
    assert [e["name"] for e in out["non_triton_forward"]] == ["nvjet_sm90_tst_64x48_64x15_2x4_h_bz_TNT"]
    assert out["forward_classes"]["triton"]["launches"] == 6  # vLLM's, ours and Inductor's kernels
    assert out["non_triton_forward"][0]["library"] == "cublas" and not out["pass"]


def test_same_mode_compares_top1_ids_and_measures_the_gap_in_ours():
    """Both engines prefill the same sequences: agreement is top-1 id equality per position; a
    disagreement's gap is read from our top-k (our top-1 minus the baseline's top-1)."""
    def pos(top, lps):
        return [True, 0.0, top, [[t, lp] for t, lp in lps]]

    base = [[pos(7, [(7, -1.0), (8, -1.02)])] * 200]
    ours = [[pos(7, [(7, -1.0), (8, -1.02)])] * 199 + [pos(8, [(8, -1.0), (7, -1.03)])]]
    s = vllm_census.score_same_mode(ours, base, gap_tol=0.1)
    assert s["match_rate"] == pytest.approx(199 / 200) and s["pass"]
    assert s["max_disagreement_gap"] == pytest.approx(0.03)
    ours[0][-1] = pos(8, [(8, -1.0), (9, -1.5)])  # the baseline's top-1 is not in our top-k
    s = vllm_census.score_same_mode(ours, base, gap_tol=0.1)
    assert not s["pass"] and s["beyond_noise"][0]["gap"] is None
    ours2 = [[pos(8, [(8, -1.0), (7, -1.01)])] * 3 + [pos(7, [(7, -1.0)])] * 97]
    assert not vllm_census.score_same_mode(ours2, base, gap_tol=0.1)["pass"]  # 97% < 99%


def test_pass_rests_on_same_mode_when_recorded():
    entry = {"same_mode": {"pass": True}, "teacher_forced": {"pass": False}}
    assert vllm_census.parity_verdict(entry)["pass"]
    assert not vllm_census.parity_verdict({"teacher_forced": {"pass": False}, "greedy": {"pass": True}})["pass"]
