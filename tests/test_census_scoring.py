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
