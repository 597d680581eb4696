"""benchmarks/report.py on synthetic result files, and benchmarks/e2e_vllm.py without a GPU:
argument parsing, the plan, the model config (``--dry-run``), and whole runs against a simulated
engine (``TRI_E2E_FAKE``: the parent, the worker pipe protocol, ABBA order, summaries, JSON)."""
from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"
sys.path.insert(0, str(BENCH))

report = importlib.import_module("report")
e2e = importlib.import_module("e2e_vllm")
C = importlib.import_module("_vllm_common")
models = importlib.import_module("models")


# ============================================================================ synthetic results


def _side(tps, ttft, itl, p90, spread=0.01):
    return {"tokens_per_s": tps, "tokens_per_s_reps": [tps, tps], "spread": spread,
            "ttft_ms": {"median": ttft, "p90": ttft * 1.2, "mean": ttft, "n": 2},
            "itl_ms": {"median": itl, "p90": p90, "mean": itl, "n": 100}, "reps": 2, "method": ["hook"]}


def _e2e(layers=32, card="NVIDIA H100 80GB HBM3"):
    return {
        "benchmark": "e2e_vllm", "card": card, "versions": {"torch": "2.11.0", "triton": "3.6.0", "vllm": "0.26.0"},
        "commit": "abcdef1234567890", "complete": True, "mode": "side-by-side", "wall_s": 400.0,
        "settings": {"layers": layers, "reps": 2, "quick": False, "kv_cache_gib": 10.0, "max_num_seqs": 64,
                     "max_num_batched_tokens": 8192, "model_config": C.llama3_8b_config(layers)},
        "engines": {"tri_inductor": {"cold_start_s": 120.5, "warm_start_s": 40.1,
                                     "cold_start_phases": {"torch_compile_total_s": 55.0, "graph_capture_s": 12.0}},
                    "inductor": {"cold_start_s": 90.2, "warm_start_s": 30.3, "cold_start_phases": {}}},
        "workloads": {
            "decode16": {"group": "decode-heavy", "spec": {"n": 16, "prompt_len": 128, "out_len": 512},
                         "tri_inductor": _side(2100.0, 20.0, 7.40, 7.9), "inductor": _side(2000.0, 21.0, 7.77, 8.1),
                         "throughput_ratio": 1.05, "itl_ratio": 0.952, "noise": 0.01, "pass": True},
            "decode1": {"group": "decode-heavy", "spec": {"n": 1, "prompt_len": 128, "out_len": 512},
                        "tri_inductor": _side(140.0, 15.0, 7.10, 7.3), "inductor": _side(150.0, 14.0, 6.62, 6.8),
                        "throughput_ratio": 0.9333, "itl_ratio": 1.0725, "noise": 0.01, "pass": False,
                        "within_noise": False,
                        "reason": "profiled run 500.0 vs 470.0 ms (+30.0 ms); largest differences: gemm +25.0 ms",
                        "profile": {"tri_inductor": {"wall_ms": 500.0, "gpu_busy_ms": 450.0,
                                                     "classes_us": {"gemm": 400000.0, "attention": 50000.0},
                                                     "top": [{"name": "mm_kernel", "gpu_us": 400000.0}]},
                                    "inductor": {"wall_ms": 470.0, "gpu_busy_ms": 425.0,
                                                 "classes_us": {"gemm": 375000.0, "attention": 50000.0}}}},
            "mixed": {"group": "mixed", "spec": {"n": 64, "prompt_len": [32, 1536], "out_len": [16, 512]},
                      "tri_inductor": _side(9000.0, 300.0, 9.0, 12.0), "inductor": None,
                      "throughput_ratio": None, "itl_ratio": None, "pass": False}},
        "skipped": ["mixed reps 1..1"], "errors": []}


def _kernels():
    return {"meta": {"card": "NVIDIA H100 80GB HBM3", "torch": "2.11.0", "triton": "3.6.0", "commit": "k0mmit"},
            "elem": [{"op": "copy", "tbps": 3.0}, {"op": "rms_norm", "tbps": 2.9, "frac_of_copy": 0.96,
                                                   "vs_inductor": 1.01}],
            "attn": [{"S": 1024, "vs_flash": 0.8}, {"S": 2048, "vs_flash": 0.9}],
            "gemm": [{"M": 1, "N": 6144, "K": 4096, "vs_cublas": 0.74}, {"M": 64, "N": 4096, "K": 4096, "vs_cublas": 1.02}],
            "gemm_geomean_vs_cublas": 0.869, "gemm_min_vs_cublas": 0.74, "gemm_geomean_vs_inductor": 1.01,
            "attn_geomean_vs_flash": 0.85,
            "gate_up": [{"M": 1, "vs_stock": 1.03, "vs_unfused": 1.02}, {"M": 4096, "vs_stock": 0.97, "vs_unfused": 0.98}],
            "gate_up_geomean_vs_stock": 0.9995, "gate_up_geomean_vs_unfused": 0.9998}


def _census():
    return {"card": "NVIDIA H100 80GB HBM3", "versions": {"torch": "2.11.0", "vllm": "0.26.0"}, "commit": "c0mmit",
            "models": {"llama": {"pass": True, "greedy": {"match_rate": 1.0},
                                 "same_mode": {"match_rate": 0.995, "max_disagreement_gap": 0.0156},
                                 "eager_control_same_mode": {"match_rate": 0.99},
                                 "teacher_forced": {"match_rate": 0.98, "max_disagreement_gap": 0.0312},
                                 "baseline_self_teacher_forced": {"match_rate": 0.979},
                                 "eager_control_teacher_forced": {"match_rate": 0.97},
                                 "forward_classes": {"triton": {"launches": 120, "gpu_us": 10.0}},
                                 "non_triton_forward": []},
                       "gemma": {"pass": False, "greedy": {"match_rate": 0.98},
                                 "forward_classes": {"triton": {"launches": 100}, "cublas": {"launches": 4}},
                                 "non_triton_forward": [{"name": "nvjet_sm90_tst_64x8"}]}}}


@pytest.fixture
def results(tmp_path):
    d = tmp_path / "results"
    d.mkdir()
    (d / "e2e_h100.json").write_text(json.dumps(_e2e()))
    (d / "e2e_h100_L4.json").write_text(json.dumps(_e2e(layers=4)))
    (d / "kernels_h100.json").write_text(json.dumps(_kernels()))
    (d / "census_h100.json").write_text(json.dumps(_census()))
    (d / "cache_h100.json").write_text(json.dumps({
        "card": "NVIDIA H100", "versions": {"torch": "2.11.0"}, "commit": "abc", "layers": 32, "warm_speedup": 6.25,
        "big": list(range(99)),
        "starts": {"cold": {"compile_s": 40.0, "init_s": 100.5, "tri_inductor": {"benchmarks": 3},
                            "inductor_benchmarks": {"a": 10, "b": 2}},
                   "warm": {"compile_s": 6.4, "init_s": 30.0, "tri_inductor": {"benchmarks": 0},
                            "inductor_benchmarks": {"a": 0}, "vllm_counters": {"num_aot_artifacts_loaded": 1,
                                                                               "num_compiled_artifacts_loaded": 3}}}}))
    (d / "e2e_broken.json").write_text("{not json")
    (d / "unrelated.json").write_text("{}")
    (d / "notes.txt").write_text("ignored")
    return d


# ============================================================================ report.py


def _row(md: str, first_cell: str) -> list[str]:
    for line in md.splitlines():
        if line.startswith(f"| {first_cell} |"):
            return [c.strip() for c in line.strip().strip("|").split("|")]
    raise AssertionError(f"no row {first_cell!r} in:\n{md}")


def test_report_rows(results):
    md = report.build_markdown(results)
    # e2e: one row per workload, our/their numbers, ratios, status
    r = _row(md, "decode16")
    assert r[3] == "2,100.0" and r[4] == "2,000.0" and r[5] == "1.050x" and r[9] == "0.952x"
    assert r[7] == "7.40 / 7.77" and r[-1] == "meets 1.0x"
    r = _row(md, "decode1")
    assert r[5] == "0.933x" and r[9] == "1.073x" and "below" in r[-1] and "throughput" in r[-1] and "ITL" in r[-1]
    r = _row(md, "mixed")
    assert r[4] == "-" and r[5] == "-" and "no ratio" in r[-1]
    assert "32..1536/16..512" in md
    # the below-1.0x workload is listed with its reason and profile
    below = md.split("Below 1.0x, with profile and reason:")[1]
    assert "**decode1**" in below and "gemm +25.0 ms" in below and "gemm 400.0/375.0" in below and "mm_kernel" in below
    assert "**decode16**" not in below
    # start-up table
    assert _row(md, "tri_inductor")[1:4] == ["120.5", "40.1", "55.0"]
    # the full 32-layer run comes before the 4-layer one, which is flagged
    assert md.index("`e2e_h100.json`") < md.index("`e2e_h100_L4.json`")
    assert "NOT the full 32" in md
    # kernels, census, cache, unreadable
    assert _row(md, "GEMM (bf16, Llama-8B linear shapes) vs cuBLAS")[1:3] == ["0.869x", "0.740x"]
    fused = _row(md, "gate_up GEMM + SiLU-and-mul fused (2x14336x4096) vs cuBLAS + Inductor's SiLU-and-mul")
    assert fused[1:4] == ["1.000x", "0.970x", "M=1,4096"]
    assert "rms_norm" in md
    assert _row(md, "llama")[1:10] == ["PASS", "99.50%", "-", "99.00%", "100.00%", "98.00%", "97.90%", "97.00%",
                                     "0.0156"]  # "-": no FA3 control in that census
    g = _row(md, "gemma")
    assert g[1] == "FAIL" and g[2] == g[3] == g[4] == g[6] == g[7] == g[8] == "-" and g[11] == "4" and "nvjet" in g[12]  # no scores in that file
    assert _row(md, "cold") == ["cold", "40.00", "100.5", "3", "12", "0 / 0"]
    assert _row(md, "warm") == ["warm", "6.40", "30.0", "0", "0", "1 / 3"]
    assert _row(md, "after_import")[1] == "not run" and "**6.2x**" in md
    assert "big" not in md
    assert "`e2e_broken.json`: unreadable" in md
    assert "unrelated" not in md
    assert "Skipped for time: mixed reps 1..1" in md


def test_report_tolerates_absent_results(tmp_path):
    md = report.build_markdown(tmp_path / "nothing")
    assert md.startswith("## Performance") and "No results yet." in md


def test_report_survives_odd_file(tmp_path):
    (tmp_path / "e2e_x.json").write_text(json.dumps({"workloads": {"w": {"tri_inductor": 5}}}))
    md = report.build_markdown(tmp_path)
    assert "`e2e_x.json`" in md


README_TEXT = """# title

intro

<!-- perf-table:start -->
old table
<!-- perf-table:end -->

## after
keep me
"""


def test_readme_block_replaced():
    new = report.replace_block(README_TEXT, "## Performance\n\nNEW")
    assert "old table" not in new and "NEW" in new
    assert new.startswith("# title\n\nintro\n\n<!-- perf-table:start -->\n## Performance")
    assert new.endswith("<!-- perf-table:end -->\n\n## after\nkeep me\n")
    assert report.replace_block(new, "## Performance\n\nNEW") == new  # idempotent


def test_readme_block_appended_when_absent():
    new = report.replace_block("# t\n\ntext\n", "BLOCK")
    assert new == "# t\n\ntext\n\n<!-- perf-table:start -->\nBLOCK\n<!-- perf-table:end -->\n"
    assert report.replace_block(new, "B2").count(report.START) == 1


def test_readme_single_marker_is_an_error():
    with pytest.raises(ValueError):
        report.replace_block("x\n<!-- perf-table:start -->\ny\n", "B")


def test_main_writes_docs_page_and_readme_line(results, tmp_path, capsys):
    readme, page = tmp_path / "README.md", tmp_path / "docs" / "performance.md"
    readme.write_text(README_TEXT)
    assert report.main(["--results", str(results), "--write-docs", "--readme", str(readme),
                        "--docs-page", str(page)]) == 0
    text = readme.read_text()
    # README: one line (the full-size run's throughput range, the link), no tables
    assert "keep me" in text and "old table" not in text and "| decode16 |" not in text
    assert "0.933x-1.050x on NVIDIA H100 80GB HBM3" in text and "(docs/performance.md)" in text
    doc = page.read_text()
    assert doc.startswith("# Performance\n") and "| decode16 |" in doc and "`e2e_h100_L4.json`" in doc
    assert "| decode16 |" in capsys.readouterr().out


def test_headline_without_results(tmp_path):
    assert "docs/performance.md" in report.headline(tmp_path / "nothing")


def test_committed_docs_are_what_report_writes():
    # README's line and docs/performance.md come from benchmarks/results/: rerun
    # `python3 benchmarks/report.py --write-docs` after adding a record.
    assert (ROOT / "docs" / "performance.md").read_text() == report.performance_page()
    readme = (ROOT / "README.md").read_text()
    assert report.replace_block(readme, report.headline()) == readme


def test_plot(results, tmp_path):
    pytest.importorskip("matplotlib")
    out = report.plot(results, tmp_path / "p.png")
    assert out.stat().st_size > 1000
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ============================================================================ _vllm_common


def test_stats_helpers():
    assert C.percentile([1, 2, 3, 4], 50) == 2.5
    assert C.percentile([10.0], 90) == 10.0 and C.percentile([], 50) is None
    assert abs(C.percentile(list(range(11)), 90) - 9.0) < 1e-12
    s = C.summarize_ms([0.001, 0.002, 0.003])
    assert s["median"] == 2.0 and s["n"] == 3
    ttft, itl, ntok = C.token_timeline_stats({"a": [(1.0, 1), (1.5, 1), (2.5, 2)], "b": [(1.2, 1)]}, 0.5)
    assert sorted(ttft) == [0.5, 0.7] and itl == [0.5, 0.5, 0.5] and ntok == {"a": 4, "b": 1}
    assert C.safe_ratio(3, 2) == 1.5 and C.safe_ratio(1, None) is None and C.safe_ratio(1, 0) is None
    assert C.spread([1.0]) is None and C.spread([1.0, 1.1, 1.0]) == 0.1


def test_kernel_classes_and_startup_log():
    assert C.kernel_class("nvjet_sm90_tst_128x256_64x4_1x2_h_bz_coopB_NNT") == "gemm"
    assert C.kernel_class("mm_kernel") == "gemm" and C.kernel_class("mm_tma_kernel") == "gemm"
    assert C.kernel_class("kernel_unified_attention_2d") == "attention"
    assert C.kernel_class("triton_red_fused__to_copy_add_mean_mul_pow_rsqrt_0") == "fused elementwise (norm/act/rope)"
    assert C.kernel_class("void at::native::reduce_kernel<ArgMaxOps>") == "sampler"
    log = ("Model loading took 14.96 GiB memory and 3.123 seconds\nDynamo bytecode transform time: 9.10 s\n"
           "torch.compile took 41.50 s in total\nGraph capturing finished in 12 secs, took 0.50 GiB\n"
           "init engine (profile, create kv cache, warmup model) took 60.25 s")
    assert C.parse_startup_log(log) == {"model_load_s": 3.123, "dynamo_s": 9.1, "torch_compile_total_s": 41.5,
                                        "graph_capture_s": 12.0, "init_engine_s": 60.25}


def test_model_and_workloads():
    cfg = C.llama3_8b_config()
    assert (cfg["hidden_size"], cfg["num_hidden_layers"], cfg["num_attention_heads"], cfg["num_key_value_heads"],
            cfg["intermediate_size"], cfg["vocab_size"], cfg["torch_dtype"]) == (4096, 32, 32, 8, 14336, 128256, "bfloat16")
    assert 8.0e9 < C.param_count(cfg) < 8.1e9
    assert C.kv_bytes_per_token(cfg) == 131072
    mixed = C.workload_spec("mixed")
    lens = C.request_lengths(mixed)
    assert len(lens) == 64 and lens == C.request_lengths(mixed)
    assert all(32 <= p <= 1536 and 16 <= o <= 512 for p, o in lens) and len({p for p, _ in lens}) > 30
    a, b = C.make_prompts(mixed, 128256, 1), C.make_prompts(mixed, 128256, 2)
    assert [len(x) for x, _ in a] == [p for p, _ in lens] and a[0][0] != b[0][0]
    assert C.workload_spec("decode64", quick=True)["out_len"] == 128
    assert C.workload_tokens(C.workload_spec("prefill8")) == (8 * 2048, 8 * 16)


# ============================================================================ e2e_vllm.py (no GPU)


def test_e2e_args_and_plan():
    a = e2e.parse_args([])
    assert a.layers == 32 and a.reps == 3 and a.mode == "side-by-side" and not a.starts
    assert a.workloads.split(",") == ["decode1", "decode16", "decode64", "prefill8", "mixed"]
    q = e2e.parse_args(["--quick", "--layers", "4", "--workloads", "decode1,mixed", "--starts"])
    assert q.reps == 2 and q.layers == 4 and q.starts
    with pytest.raises(SystemExit):
        e2e.parse_args(["--workloads", "decode1,nope"])
    with pytest.raises(SystemExit):
        e2e.parse_args(["--backends", "tri_inductor,tri_inductor"])
    plan = e2e.build_plan(e2e.parse_args(["--baseline", "compile"]))
    assert plan["rep_order"] == [["tri_inductor", "inductor"], ["inductor", "tri_inductor"],
                                 ["tri_inductor", "inductor"]]
    ours, base = plan["engine_kwargs"]["tri_inductor"], plan["engine_kwargs"]["inductor"]
    assert ours["compilation_config"] == {"backend": "tri_inductor"}
    assert base["compilation_config"] == {"backend": "inductor", "custom_ops": ["none"]}
    assert base["attention_backend"] == "TRITON_ATTN"
    common = {k: v for k, v in ours.items() if k != "compilation_config"}
    assert common == {k: v for k, v in base.items() if k not in ("compilation_config", "attention_backend",
                                                                 "ir_op_priority")}
    assert ours["load_format"] == "dummy" and ours["dtype"] == "bfloat16" and not ours["enable_prefix_caching"]
    assert all(w["fits_kv"] for w in plan["workloads"])  # 10 GiB of KV holds every workload at once


def test_e2e_engine_kwargs_are_vllm_engine_args():
    pytest.importorskip("vllm")
    from vllm.engine.arg_utils import EngineArgs

    for b in ("tri_inductor", "inductor", "default"):
        EngineArgs(**e2e.engine_kwargs(b, "/nonexistent", 0.42, 10.0))
        EngineArgs(**e2e.engine_kwargs(b, "/nonexistent", 0.42, 10.0, tp=2))


def _run_e2e(tmp_path, args, fake, timeout=240):
    if "--min-measured-s" not in args:  # the fake engines' reps are short: exactly --reps unless a test asks
        args = [*args, "--min-measured-s", "0"]
    env = dict(os.environ, TRI_E2E_FAKE=json.dumps(fake), GIT_COMMIT="feedface")
    env.pop("OUT", None)
    return subprocess.run([sys.executable, str(BENCH / "e2e_vllm.py"), "--out", str(tmp_path), *args], env=env,
                          capture_output=True, text=True, timeout=timeout, cwd=str(ROOT))


def test_e2e_dry_run_writes_config(tmp_path):
    model = tmp_path / "model"
    p = _run_e2e(tmp_path, ["--dry-run", "--layers", "4", "--model-dir", str(model)], {})
    assert p.returncode == 0, p.stderr
    cfg = json.loads((model / "config.json").read_text())
    assert cfg["num_hidden_layers"] == 4 and cfg["hidden_size"] == 4096 and cfg["vocab_size"] == 128256
    assert "decode64" in p.stdout and "TRITON_ATTN" in p.stdout and "e2e_<card>_L4.json" in p.stdout
    assert not list(tmp_path.glob("e2e_*.json"))


def test_e2e_short_workloads_get_more_reps(tmp_path):
    """Reps shorter than --min-measured-s: more of them, in palindromic pairs, up to 4x --reps."""
    p = _run_e2e(tmp_path, ["--layers", "2", "--quick", "--workloads", "decode1", "--reps", "2",
                            "--baseline", "compile", "--min-measured-s", "1000", "--profile", "none"],
                 {"tri_inductor": 0.0004, "inductor": 0.0004})
    d = json.loads(next(tmp_path.glob("e2e_*.json")).read_text())
    w = d["workloads"]["decode1"]
    assert w["tri_inductor"]["reps"] == w["inductor"]["reps"] == 8, p.stdout[-3000:]  # the cap: 4 x 2
    md = report.e2e_section("e2e_h100_L2.json", d)
    assert "more (in pairs, at most 4x) where an engine had measured less than 1000 s" in md and "(8 reps)" in md
    # a short enough threshold stops after the first extra pair that reaches it
    tmp2 = tmp_path / "b"
    tmp2.mkdir()
    wall = sum(w["tri_inductor"]["wall_s_reps"][:2])
    p = _run_e2e(tmp2, ["--layers", "2", "--quick", "--workloads", "decode1", "--reps", "2",
                        "--baseline", "compile", "--min-measured-s", f"{wall * 1.5:.4f}", "--profile", "none"],
                 {"tri_inductor": 0.0004, "inductor": 0.0004})
    w = json.loads(next(tmp2.glob("e2e_*.json")).read_text())["workloads"]["decode1"]
    for b in ("tri_inductor", "inductor"):
        assert w[b]["reps"] % 2 == 0 and 2 <= w[b]["reps"] < 8, p.stdout[-3000:]


def test_e2e_side_by_side_fake(tmp_path):
    p = _run_e2e(tmp_path, ["--layers", "2", "--quick", "--workloads", "decode1,decode16", "--starts",
                            "--baseline", "compile"],
                 {"tri_inductor": 0.0008, "inductor": 0.0004})
    assert p.returncode == 1, p.stdout + p.stderr  # ours is slower in this simulation: FAIL, but complete
    d = json.loads((tmp_path / "e2e_h100_L2.json").read_text())
    assert not list(tmp_path.glob("e2e_partial*"))
    assert d["complete"] and d["commit"] == "feedface" and d["mode"] == "side-by-side" and not d["errors"]
    w = d["workloads"]["decode16"]
    for b in ("tri_inductor", "inductor"):
        assert w[b]["reps"] == 2 and w[b]["method"] == ["hook"] and w[b]["out_tokens"] == 16 * 128
        assert w[b]["itl_ms"]["n"] == 2 * 16 * 127 and w[b]["ttft_ms"]["n"] == 2 * 16
    assert 0.2 < w["throughput_ratio"] < 1.0 and w["itl_ratio"] > 1.0 and w["pass"] is False
    assert w["reason"].startswith("profiled run") and set(w["profile"]) == {"tri_inductor", "inductor"}
    # each engine's Python host profile of the same run, and the functions that grew in ours
    for b in ("tri_inductor", "inductor"):
        assert w["profile"][b]["python"]["top"] and w["profile"][b]["python"]["wall_ms"] > 0
    assert w["python_host_diff"] and all({"fn", "own_ms", "ncalls"} <= set(r) for r in w["python_host_diff"])
    assert d["below"] == ["decode1", "decode16"] and d["pass"] is False
    for b in ("tri_inductor", "inductor"):
        assert d["engines"][b]["cold_start_s"] > 0 and d["engines"][b]["warm_start_s"] > 0
    assert d["settings_differences"] == {}
    assert "overall: FAIL" in p.stdout and "decode16" in p.stdout.split("== e2e vLLM")[1]
    md = report.build_markdown(tmp_path)
    assert "| decode16 |" in md


def test_e2e_our_start_failure_stops_early(tmp_path):
    p = _run_e2e(tmp_path, ["--layers", "2", "--quick", "--workloads", "decode1"],
                 {"tri_inductor": {"step": 0.001, "fail_starts": [0]}})
    assert p.returncode == 2
    (path,) = tmp_path.glob("e2e_*_L2.json")  # e2e_partial_L2.json, or named after nvidia-smi's card
    d = json.loads(path.read_text())
    assert d["errors"] and "tri_inductor" in d["errors"][0] and d["workloads"] == {} and not d["complete"]


def test_e2e_out_of_memory_falls_back_to_sequential(tmp_path):
    p = _run_e2e(tmp_path, ["--layers", "2", "--quick", "--workloads", "decode1,decode16", "--reps", "1",
                            "--baseline", "compile"],
                 {"tri_inductor": 0.0004, "inductor": {"step": 0.0008, "fail_starts": [0]}})
    assert p.returncode == 0, p.stdout + p.stderr  # ours faster here: PASS
    d = json.loads((tmp_path / "e2e_h100_L2.json").read_text())
    assert d["mode"].startswith("sequential") and d["pass"] is True
    dc = d["workloads"]["decode1"]["drift_check"]
    assert dc["backend"] == "tri_inductor" and dc["tokens_per_s_after"] > 0
    assert d["engines"]["tri_inductor"]["warm_start_s"] > 0 and d["engines"]["inductor"]["cold_start_s"] > 0


# ============================================================================ worker pieces on real vLLM types


class _StubLLM:
    """Answers generate() like vLLM's LLM (token ids per request); optionally feeds TokenTimes."""

    def __init__(self, rec=None):
        self.rec, self.calls = rec, []

    def generate(self, inputs, sps, use_tqdm=False):
        from types import SimpleNamespace as NS

        self.calls.append([sp.max_tokens for sp in sps])
        n = max(sp.max_tokens for sp in sps)
        for step in range(n):
            if self.rec is not None:
                self.rec.record([NS(request_id=str(i), new_token_ids=[5]) for i, sp in enumerate(sps)
                                 if step < sp.max_tokens])
        return [NS(outputs=[NS(token_ids=[5] * sp.max_tokens)]) for sp in sps]


def test_worker_run_hook_and_fallback_with_vllm_sampling_params(monkeypatch):
    pytest.importorskip("vllm")
    monkeypatch.setenv(e2e.FAKE_ENV, "{}")  # _sync() becomes a no-op (no GPU here)
    spec = C.workload_spec("mixed", quick=True)
    msg = {"spec": spec, "seed": 3, "out_cap": None}
    rec = e2e.TokenTimes()
    r = e2e._handle_run(_StubLLM(rec), rec, msg, 128256)
    expected = sum(o for _, o in C.request_lengths(spec))
    assert r["ok"] and r["method"] == "hook" and r["out_tokens"] == expected
    assert len(r["ttft_s"]) == 64 and len(r["itl_s"]) == expected - 64
    # the rep's host accounting: CPU seconds of the process and of its main thread, preemptions
    assert set(r["host"]) == {"cpu_s", "main_thread_cpu_s", "involuntary_switches"}
    assert 0 <= r["host"]["main_thread_cpu_s"] <= r["host"]["cpu_s"] + 1e-3
    assert r["host"]["involuntary_switches"] >= 0
    # a vLLM whose output processor we could not hook: 1-token run for TTFT, (total - TTFT)/(n - 1)
    stub = _StubLLM(None)
    r = e2e._handle_run(stub, e2e.TokenTimes(), msg, 128256)
    assert r["ok"] and r["method"] == "fallback" and stub.calls[1] == [1] * 64
    assert len(r["itl_s"]) == expected - 64


def test_token_hook_installs_on_vllm_output_processor():
    pytest.importorskip("vllm")
    from vllm.v1.engine import EngineCoreOutput
    from vllm.v1.engine.output_processor import OutputProcessor

    real = OutputProcessor.process_outputs
    try:
        rec = e2e.TokenTimes()
        rec.install()
        assert OutputProcessor.process_outputs is not real
        rec.active = True
        proc = OutputProcessor.__new__(OutputProcessor)  # no requests registered: the real method ignores them
        proc.request_states = {}
        try:
            OutputProcessor.process_outputs(proc, [EngineCoreOutput(request_id="r1", new_token_ids=[1, 2])],
                                            engine_core_timestamp=0.0, iteration_stats=None)
        except Exception:  # noqa: BLE001  the real method may need more state; the hook ran first
            pass
        assert [n for _, n in rec.timeline["r1"]] == [2]
    finally:
        OutputProcessor.process_outputs = real


def test_worker_profile_path_runs_without_gpu(monkeypatch):
    torch = pytest.importorskip("torch")
    monkeypatch.setenv(e2e.FAKE_ENV, "{}")  # _sync() becomes a no-op; the profiler API is the real one

    class CpuLLM(_StubLLM):
        def generate(self, inputs, sps, use_tqdm=False):
            torch.ones(64, 64) @ torch.ones(64, 64)
            return super().generate(inputs, sps)

    pytest.importorskip("vllm")
    r = e2e._handle_profile(CpuLLM(), {"spec": C.workload_spec("decode1", quick=True), "seed": 1, "out_cap": 4},
                            128256)
    assert "wall_ms" in r and "classes_us" in r and (r["ok"] or r["error"] == "profiler saw no kernels")
    # the Python profile of a second, identical run: the stub's generate is among its functions
    assert any(":generate" in row["fn"] for row in r["python"]["top"]) and r["python"]["calls"] == 1


def test_e2e_engine_crash_mid_run(tmp_path):
    p = _run_e2e(tmp_path, ["--layers", "2", "--quick", "--workloads", "decode1,decode16,decode64", "--reps", "1",
                            "--baseline", "compile"],
                 {"tri_inductor": {"step": 0.0004, "crash_on": ["decode16"]}, "inductor": 0.0004})
    assert p.returncode == 1
    (path,) = tmp_path.glob("e2e_*_L2.json")
    d = json.loads(path.read_text())
    assert d["workloads"]["decode1"]["throughput_ratio"] is not None
    assert d["workloads"]["decode16"]["throughput_ratio"] is None and "decode64" not in d["workloads"]
    assert any("worker exited" in e for e in d["errors"]) and any("decode64" in s for s in d["skipped"])
    assert d["pass"] is False and "decode16" in d["below"]


def test_cache_summary_after_all_phases():
    """summarize() runs after each start: the 'after_import missing' mark of the warm-only call
    must not survive once the import start is in."""
    cw = importlib.import_module("cache_warm_start")
    start = {"compile_s": 10.0, "init_s": 20.0}
    report = {"starts": {"cold": dict(start, compile_s=40.0), "warm": start},
              "checks": {"warm": {"speedup": 4.0, "pass": True}}}
    cw.summarize(report)
    assert report["missing_phases"] == ["after_import"] and report["pass"] is False
    report["starts"]["after_import"] = start
    report["checks"]["after_import"] = {"speedup": 4.0, "pass": True}
    cw.summarize(report)
    assert "missing_phases" not in report and report["pass"] is True and report["after_import_speedup"] == 4.0


# ============================================================================ issue 26: the default (FA3) engine, --tp


def test_e2e_baselines_backends_and_rep_order():
    a = e2e.parse_args([])
    assert a.baseline == "both" and a.backends.split(",") == ["tri_inductor", "inductor", "default"] and a.tp == 1
    assert e2e.parse_args(["--baseline", "default"]).backends == "tri_inductor,default"
    assert e2e.parse_args(["--baseline", "compile"]).backends == "tri_inductor,inductor"
    assert e2e.parse_args(["--backends", "default,tri_inductor"]).backends == "default,tri_inductor"  # --backends wins
    for bad in (["--backends", "tri_inductor,flash"], ["--backends", "default,default"], ["--tp", "0"]):
        with pytest.raises(SystemExit):
            e2e.parse_args(bad)
    order = e2e.rep_orders(["A", "B", "C"], 6)
    assert sorted(map(tuple, order)) == sorted(__import__("itertools").permutations("ABC"))  # every order once
    for r in range(0, 6, 2):  # each pair of reps is a palindrome: a linear drift hits every engine alike
        assert order[r] == order[r + 1][::-1]
        for x in "ABC":
            assert order[r].index(x) + order[r + 1].index(x) == 2
    assert e2e.rep_orders(["A", "B"], 3) == [["A", "B"], ["B", "A"], ["A", "B"]]  # ABBA as before


def test_e2e_default_engine_kwargs():
    plan = e2e.build_plan(e2e.parse_args([]))
    kw = plan["engine_kwargs"]
    d, base, ours = kw["default"], kw["inductor"], kw["tri_inductor"]
    assert d["attention_backend"] == "FLASH_ATTN" and d["compilation_config"] == {"backend": "inductor"}
    assert d["ir_op_priority"] == {"rms_norm": ["native"], "fused_add_rms_norm": ["native"]}
    assert base["attention_backend"] == "TRITON_ATTN" and "attention_backend" not in ours
    path_keys = ("compilation_config", "attention_backend", "ir_op_priority")
    common = [{k: v for k, v in x.items() if k not in path_keys} for x in (d, base, ours)]
    assert common[0] == common[1] == common[2]  # one benchmark setting for all three engines
    assert all(x["disable_cascade_attn"] is True and "tensor_parallel_size" not in x for x in (d, base, ours))
    assert plan["rep_order"] == e2e.rep_orders(["tri_inductor", "inductor", "default"], 3)
    assert plan["memory_plan"]["fits_side_by_side"] and plan["mode"] == "side-by-side"


def test_e2e_tp_kwargs_names_and_kv_tokens():
    one, two = (e2e.build_plan(e2e.parse_args(["--tp", str(t), "--baseline", "compile"])) for t in (1, 2))
    for kw in two["engine_kwargs"].values():
        assert kw["tensor_parallel_size"] == 2 and kw["disable_custom_all_reduce"] is True
    assert two["kv_cache_tokens"] == 2 * one["kv_cache_tokens"]  # kv_cache_memory_bytes is per rank
    suffix = e2e.result_suffix
    assert suffix(e2e.parse_args([])) == ""
    assert suffix(e2e.parse_args(["--tp", "2"])) == "_llama-3-8b_tp2"
    assert suffix(e2e.parse_args(["--model", "llama-3-70b", "--layers", "8", "--tp", "4"])) == "_llama-3-70b_L8_tp4"
    cfg = models.config("llama-3-70b")
    assert (cfg["hidden_size"], cfg["num_hidden_layers"], cfg["num_attention_heads"], cfg["num_key_value_heads"],
            cfg["intermediate_size"], cfg["vocab_size"]) == (8192, 80, 64, 8, 28672, 128256)
    assert 70.0e9 < C.param_count(cfg) < 71.0e9


def test_e2e_memory_plan():
    cfg = models.config("llama-3-8b")
    m = e2e.memory_plan(cfg, 3, 10.0, 1, 140.0)
    assert m["fits_side_by_side"] and m["gpu_util"] <= 0.42
    assert m["gpu_util"] * 140.0 <= m["free_when_last_starts_gib"]  # the last engine passes vLLM's check
    assert not e2e.memory_plan(cfg, 3, 10.0, 1, 80.0)["fits_side_by_side"]  # an H100 holds two, not three
    assert e2e.memory_plan(cfg, 2, 10.0, 1, 80.0)["gpu_util"] == 0.42  # two engines: as before
    big = models.config("llama-3-70b")
    assert not e2e.memory_plan(big, 2, 10.0, 2, 140.0)["fits_side_by_side"]
    assert e2e.memory_plan(big, 2, 10.0, 4, 140.0)["fits_side_by_side"]
    plan = e2e.build_plan(e2e.parse_args(["--model", "llama-3-70b", "--tp", "2"]), 140.0)
    assert plan["mode"].startswith("sequential (planned")


def test_fa3_env_only_for_the_default_engine(monkeypatch, tmp_path):
    monkeypatch.setenv("GPU_ENV_FA3", "1")
    envs = {b: e2e.Engine(b, {}, tmp_path, tmp_path / "x.log").env() for b in ("tri_inductor", "inductor", "default")}
    assert envs["default"]["GPU_ENV_FA3"] == "1"
    assert "GPU_ENV_FA3" not in envs["tri_inductor"] and "GPU_ENV_FA3" not in envs["inductor"]


def test_fa3_env_problem_only_in_the_stubbed_environment(monkeypatch, tmp_path):
    """In .gpu-env the FA3 engine needs GPU_ENV_FA3=1 exported (a `VAR=1 source` prefix does not
    reach its worker); with vLLM's own CUDA extension nothing is needed."""
    import importlib.util
    import types

    C = importlib.import_module("_vllm_common")
    pkg = tmp_path / "vllm"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    spec = types.SimpleNamespace(origin=str(pkg / "__init__.py"))
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: spec if name == "vllm" else None)
    assert C.fa3_env_problem({}) is None  # no stub: a real vLLM build
    (pkg / "_C_stable_libtorch.py").write_text('raise RuntimeError("... but the CUDA extension is absent")')
    why = C.fa3_env_problem({})
    assert "export GPU_ENV_FA3=1" in why
    assert C.fa3_env_problem({"GPU_ENV_FA3": "1"}) is None


def test_records_name_the_tri_inductor_variables_they_ran_with(monkeypatch):
    meta = importlib.import_module("_meta")
    monkeypatch.setenv("TRI_INDUCTOR_PDL", "1")
    monkeypatch.setenv("OTHER_VAR", "x")
    assert meta.tri_inductor_env()["TRI_INDUCTOR_PDL"] == "1" and "OTHER_VAR" not in meta.tri_inductor_env()
    line = report._meta_line("NVIDIA H200", {"torch": "2.11", "tri_inductor_env": meta.tri_inductor_env()}, "abc")
    assert "`TRI_INDUCTOR_PDL=1`" in line
    assert "TRI_INDUCTOR" not in report._meta_line("NVIDIA H200", {"torch": "2.11"}, "abc")


def test_greedy_agreement_and_side_ratios():
    g = C.greedy_agreement([[1, 2, 3, 4], [5, 6, 7, 8]], [[1, 2, 9, 9], [5, 6, 7, 8]], [[0.5, 0.4, 0.01, 0.2], [1] * 4])
    assert g["sequences_equal"] == 1 and g["match_rate"] == 0.75
    assert g["first_divergence"] == [{"seq": 0, "pos": 2, "top2_gap": 0.01}]
    o, b = _side(110.0, 10.0, 5.0, 6.0), _side(100.0, 12.0, 5.5, 6.6, spread=0.2)
    r = C.side_ratios(o, b, "_vs_default")
    assert r["throughput_ratio_vs_default"] == 1.1 and r["itl_ratio_vs_default"] == round(5.0 / 5.5, 4)
    assert r["noise_vs_default"] == 0.2 and r["within_noise_vs_default"] is True
    assert set(C.side_ratios(o, b)) == {k[:-len("_vs_default")] for k in r}


def test_e2e_three_engines_fake(tmp_path):
    p = _run_e2e(tmp_path, ["--layers", "2", "--quick", "--workloads", "decode1,prefill8", "--reps", "2"],
                 {"tri_inductor": 0.0006, "inductor": 0.0009, "default": {"step": 0.0004, "token_shift": 3}})
    assert p.returncode == 1, p.stdout + p.stderr  # faster than compile, slower than default: FAIL
    d = json.loads((tmp_path / "e2e_h100_L2.json").read_text())
    assert d["complete"] and not d["errors"] and d["settings"]["backends"] == ["tri_inductor", "inductor", "default"]
    assert d["settings"]["default_engine"]["attention"].startswith("FLASH_ATTN")
    for name in ("decode1", "prefill8"):
        w = d["workloads"][name]
        assert w["throughput_ratio"] > 1.0 and w["pass_vs_compile"]
        assert w["throughput_ratio_vs_default"] < 1.0 and w["itl_ratio_vs_default"] > 1.0
        assert w["pass_vs_default"] is False and w["pass"] is False
        assert set(w["profile"]) == {"tri_inductor", "inductor", "default"} and w["reason_vs_default"]
        for b in ("tri_inductor", "inductor", "default"):
            assert w[b]["reps"] == 2
    assert d["workloads"]["prefill8"]["target_vs_default"] == 0.95
    fc = d["fa3_check"]
    assert fc["fa3_available"] is True and fc["attention_impl"]["default"] == {"FLASH_ATTN (FA3)": 2}
    assert fc["agreement"]["tri_inductor_vs_inductor"]["sequences_equal"] == 8
    assert fc["agreement"]["default_vs_inductor"]["match_rate"] == 0.5  # the fake FA3 engine flips at half
    assert fc["fa3_tokens_equal_triton_attn"] is False
    assert d["settings_differences"] == {} and d["settings_differences_vs_default"] == {}
    md = report.build_markdown(tmp_path)
    r = _row(md, "decode1")
    assert "vLLM-default (FA3; rms_norm native) tok/s" in md and "FA3_AVAILABLE **True**" in md
    assert "default: FLASH_ATTN (FA3) x2" in md
    assert r[11] == f"{d['workloads']['decode1']['throughput_ratio_vs_default']:.3f}x" and "below" in r[14]
    assert "vLLM-default (FA3)" in _row(md, "vLLM-default (FA3)")[0]


def test_e2e_default_baseline_only_and_planned_sequential(tmp_path):
    p = _run_e2e(tmp_path, ["--layers", "2", "--quick", "--workloads", "decode1", "--reps", "1",
                            "--baseline", "default", "--gpu-mem-gib", "30"],
                 {"tri_inductor": 0.0004, "default": 0.0008})
    assert p.returncode == 0, p.stdout + p.stderr
    d = json.loads((tmp_path / "e2e_h100_L2.json").read_text())
    assert d["mode"].startswith("sequential (planned") and d["settings"]["memory_plan"]["total_gib"] == 30.0
    w = d["workloads"]["decode1"]
    assert w["throughput_ratio"] is None and w["throughput_ratio_vs_default"] > 1.0 and w["pass"] is True
    assert d["pass"] is True and "inductor" not in d["engines"]
    # its table has no compile-path columns and no compile-path start-up row
    md = report.e2e_section("e2e_h100_L2.json", d)
    assert "vLLM-compile tok/s" not in md and "| vLLM-compile |" not in md
    r = _row(md, "decode1")
    assert r[5] == f"{w['throughput_ratio_vs_default']:.3f}x" and "meets" in r[8]


def test_headline_quotes_the_default_path(tmp_path):
    rec = _e2e(card="NVIDIA H200")
    rec["settings"]["default_engine"] = {"attention": "FLASH_ATTN (FlashAttention-3)"}
    for name, w in rec["workloads"].items():
        if w.get("throughput_ratio"):
            w["throughput_ratio_vs_default"] = round(w["throughput_ratio"] - 0.05, 4)
            w["default"] = _side(1000.0, 20.0, 7.0, 7.5)
    (tmp_path / "e2e_h200.json").write_text(json.dumps(rec))
    (tmp_path / "e2e_h100.json").write_text(json.dumps(_e2e()))  # an older record: compile path only
    (tmp_path / "e2e_h200_llama-3-8b_tp2.json").write_text(json.dumps(dict(_e2e(), settings=dict(_e2e()["settings"], tp=2))))
    line = report.headline(tmp_path)
    assert "relative to vLLM as shipped (FlashAttention-3" in line
    assert "0.883x-1.000x on NVIDIA H200 (0.933x-1.050x against its compile path)" in line
    assert "vLLM's own compile path (>1 is faster): 0.933x-1.050x on NVIDIA H100 80GB HBM3" in line
    assert line.count("on NVIDIA H200") == 1  # the TP=2 record is not in the headline
    md = report.build_markdown(tmp_path)
    assert "tensor parallel 2" in md and "throughput vs default" in md


def _attention_record():
    rows = [{"id": f"decode b{b} ctx512 32/8 d128", "kind": "decode", "vs_fa3": {"vllm_triton": v},
             "numerics_ok": {"vllm_triton": True, "fa3": True}} for b, v in ((1, 0.5), (8, 2.0), (32, 1.0))]
    rows.append({"id": "prefill 512 32/8 d128", "kind": "prefill", "vs_fa3": {"vllm_triton": 0.81},
                 "numerics_ok": {"vllm_triton": True}})
    rows.append({"id": "prefill 2048 32/8 d128", "kind": "prefill", "vs_fa3": {"vllm_triton": 9.0},
                 "numerics_ok": {"vllm_triton": False}, "rel_err": {"vllm_triton": 0.5}})
    pa = importlib.import_module("paged_attention")
    att = {"rows": rows, "unavailable": {"tri_inductor": "ModuleNotFoundError"}, "skipped": []}
    att.update(pa.summarize(rows, "vllm_triton"))
    return {"meta": {"card": "NVIDIA H200", "torch": "2.11.0", "triton": "3.6.0", "commit": "a77"}, "attention": att,
            **{k: v for k, v in att.items() if k.startswith("attention_")}}


def test_attention_section(tmp_path):
    d = _attention_record()
    assert d["attention_decode_geomean_vs_fa3"] == 1.0 and d["attention_prefill_geomean_vs_fa3"] == 0.81
    assert d["attention_min_vs_fa3"] == 0.5 and d["attention_worst5"][0]["vs_fa3"] == 0.5
    (tmp_path / "attention_h200.json").write_text(json.dumps(d))
    md = report.build_markdown(tmp_path)
    assert "Paged attention vs FlashAttention-3 (`attention_h200.json`)" in md
    assert _row(md, "vllm_triton")[1:4] == ["1.000x", "0.810x", "0.500x"]
    assert "decode b1 ctx512 32/8 d128 0.500x" in md and "prefill 2048 32/8 d128 (vllm_triton, rel. err 0.5)" in md
    assert "tri_inductor: ModuleNotFoundError" in md
    (tmp_path / "attention_h100.json").write_text(json.dumps(
        {"meta": {"card": "NVIDIA H100"}, "attention": {"error": "FA3 is needed as the reference column",
                                                        "unavailable": {"fa3": "ImportError('no _vllm_fa3_C')"}}}))
    md = report.build_markdown(tmp_path)
    assert "Not measured: FA3 is needed as the reference column; fa3: ImportError" in md


# ============================================================================ vllm_census.py --tp (no GPU)


def test_census_tp_flags_and_dry_run():
    vc = importlib.import_module("vllm_census")
    for b in ("tri_inductor", "inductor", "eager"):
        kw = vc.engine_kwargs(b, "/m", "dummy", 2)
        assert kw["tensor_parallel_size"] == 2 and kw["disable_custom_all_reduce"] is True
        assert "tensor_parallel_size" not in vc.engine_kwargs(b, "/m", "dummy")
    assert vc.out_name("NVIDIA H200", 2) == "census_h200_tp2.json" and vc.out_name("NVIDIA H200") == "census_h200.json"
    p = subprocess.run([sys.executable, str(BENCH / "vllm_census.py"), "--dry-run", "--tp", "2", "--models", "llama"],
                       capture_output=True, text=True, timeout=120, cwd=str(ROOT))
    assert p.returncode == 0, p.stderr
    assert '"tensor_parallel_size": 2' in p.stdout and "census_<card>_tp2.json" in p.stdout


def test_census_engine_kwargs_are_vllm_engine_args():
    pytest.importorskip("vllm")
    from vllm.engine.arg_utils import EngineArgs

    vc = importlib.import_module("vllm_census")
    for b in ("tri_inductor", "inductor", "eager"):
        EngineArgs(**vc.engine_kwargs(b, "/nonexistent", "dummy", 2))


def test_e2e_default_engine_that_cannot_start(tmp_path):
    # e.g. setup.sh sourced without GPU_ENV_FA3=1: the compile comparison still runs; no verdict
    # against the default path, and no profiles spent on it
    p = _run_e2e(tmp_path, ["--layers", "2", "--quick", "--workloads", "decode1", "--reps", "1"],
                 {"tri_inductor": 0.0004, "inductor": 0.0008,
                  "default": {"fail_starts": [0], "fail_error": "RuntimeError('FA3 is unavailable')"}})
    assert p.returncode == 1, p.stdout + p.stderr
    d = json.loads((tmp_path / "e2e_h100_L2.json").read_text())
    assert d["mode"] == "side-by-side" and any("default cold_start" in e for e in d["errors"])
    w = d["workloads"]["decode1"]
    assert w["throughput_ratio"] > 1.0 and w["pass_vs_compile"] is True
    assert w["throughput_ratio_vs_default"] is None and w["pass"] is False and "profile" not in w
    assert d["fa3_check"]["fa3_available"] is None


def test_worker_greedy_check_and_fa3_status_with_vllm_types():
    pytest.importorskip("vllm")
    from types import SimpleNamespace as NS

    from vllm.logprobs import Logprob

    class TopTwo:
        def generate(self, inputs, sp, use_tqdm=False):
            assert sp.temperature == 0.0 and sp.logprobs == 2 and sp.max_tokens == 4
            lps = [{11: Logprob(-0.1, 1), 12: Logprob(-0.35, 2)}] * 4
            return [NS(outputs=[NS(token_ids=[11] * 4, logprobs=lps)]) for _ in inputs]

    r = e2e._handle_tokens(TopTwo(), {"n": 3, "tokens": 4}, 128256)
    assert r["ok"] and r["tokens"] == [[11] * 4] * 3 and r["top2_gap"] == [[0.25] * 4] * 3
    st = e2e._fa3_status()  # on a CPU machine the extension is absent: False, with vLLM's reason
    assert isinstance(st["FA3_AVAILABLE"], bool) and (st["FA3_AVAILABLE"] or st.get("reason"))


def test_report_start_table_shows_tuning_when_recorded(tmp_path):
    """Our engine's GEMM tuning per start (seconds, configs benchmarked: 0 on a warm start) gets
    its columns; records without it keep the old table."""
    d = tmp_path / "results"
    d.mkdir()
    rec = _e2e()
    rec["engines"]["tri_inductor"]["cold_start_tuning"] = {"tune_s": 31.5, "benchmarks": 612}
    rec["engines"]["tri_inductor"]["warm_start_tuning"] = {"tune_s": 0.0, "benchmarks": 0}
    (d / "e2e_h100.json").write_text(json.dumps(rec))
    md = report.build_markdown(d)
    ours = _row(md, "tri_inductor")
    assert ours[1:4] == ["120.5", "40.1", "55.0"] and ours[5:7] == ["31.5 / 0.0", "612 / 0"]
    assert "configs benchmarked (cold / warm)" in md
    assert _row(md, "vLLM-compile")[5:7] == ["- / -", "- / -"]
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "e2e_h100.json").write_text(json.dumps(_e2e()))
    assert "configs benchmarked" not in report.build_markdown(plain)
    assert "Our cold start beyond" not in md  # a record from before the breakdown was kept
    # where our cold start's extra time went, from the engine's counters
    rec["engines"]["tri_inductor"]["cold_start_tuning"].update(
        tune_gemm_s=20.0, tune_attention_s=11.5, tune_compile_s=25.0, register_s=3.0, pass_s=8.25,
        mutation_s=2.5, mutation_runs=127)
    (d / "e2e_h100.json").write_text(json.dumps(rec))
    assert ("Our cold start beyond Inductor's own work (s): tuning 31.5 (GEMM 20.0, paged attention 11.5; "
            "compiling candidates 25.0), pattern registration 3.0, pattern pass 8.2, mutation analysis of our "
            "kernels 2.5 (127 runs).") in report.build_markdown(d)
    rec["engines"]["tri_inductor"]["cold_start_tuning"].update(ahead_kernels=212, ahead_compile_s=18.0, ahead_wait_s=1.25)
    (d / "e2e_h100.json").write_text(json.dumps(rec))
    assert ("(127 runs); compiled ahead in the background: 212 kernels in 18.0 s, tuning waited 1.2 s for them."
            in report.build_markdown(d))
    # a "cold" start that found our tuning DB filled by an earlier run says so
    rec["engines"]["tri_inductor"]["cold_start_tuning"] = {"tune_s": 0.0, "benchmarks": 0, "hits": 87}
    (d / "e2e_h100.json").write_text(json.dumps(rec))
    assert _row(report.build_markdown(d), "tri_inductor")[-1] == "tuning DB already filled (87 hits): not cold"


def test_moe_kernels_record_gets_its_table(tmp_path):
    rows = [{"shape": "mixtral_8x7b", "M": m, "ms": {"ours": 0.1 * m, "vllm": 0.2 * m, "grouped_mm": 0.3 * m},
             "vs_vllm": 2.0, "vs_grouped_mm": 3.0} for m in (1, 16)]
    (tmp_path / "moe_kernels_h200.json").write_text(json.dumps(
        {"meta": {"card": "NVIDIA H200", "commit": "abc"}, "rows": rows,
         "summary": {"geomean_vs_vllm": 2.0, "min_vs_vllm": 2.0, "geomean_vs_grouped_mm": 3.0}}))
    md = report.build_markdown(tmp_path)
    assert "MoE layer" in md and "geomean vs fused_moe **2.000x**" in md
    assert md.count("| mixtral_8x7b |") == 2


def test_python_host_diff_and_its_line():
    """cProfile tops of two engines: the functions that grew in ours, largest first (a function
    in one top list only counts 0 on the other side); the report lists those that grew."""
    from _host_profile import diff

    ours = {"top": [{"fn": "a.py:1:launch", "ncalls": 30.0, "own_ms": 5.0, "cum_ms": 9.0},
                    {"fn": "b.py:2:step", "ncalls": 10.0, "own_ms": 2.0, "cum_ms": 20.0}]}
    base = {"top": [{"fn": "b.py:2:step", "ncalls": 10.0, "own_ms": 3.5, "cum_ms": 15.0},
                    {"fn": "c.py:3:mm", "ncalls": 10.0, "own_ms": 1.0, "cum_ms": 1.0}]}
    d = diff(ours, base)
    assert [r["fn"] for r in d] == ["a.py:1:launch", "c.py:3:mm", "b.py:2:step"]
    assert d[0] == {"fn": "a.py:1:launch", "own_ms": 5.0, "ncalls": 30.0} and d[2]["own_ms"] == -1.5
    line = report._python_text({"python_host_diff": d})
    assert "`a.py:1:launch` +5.0 ms (+30 calls)" in line and "b.py" not in line and "c.py" not in line
    assert report._python_text({}) == ""


def test_python_host_diff_uses_every_function_and_cumulative_time():
    """With the full tables (``all``) a function outside one side's top list is compared with its
    real time there, not with 0; ``by="cum_ms"`` ranks by time including callees."""
    from _host_profile import diff

    ours = {"top": [{"fn": "a.py:1:f", "ncalls": 1.0, "own_ms": 5.0, "cum_ms": 9.0}],
            "all": [{"fn": "a.py:1:f", "ncalls": 1.0, "own_ms": 5.0, "cum_ms": 9.0},
                    {"fn": "b.py:2:g", "ncalls": 2.0, "own_ms": 1.0, "cum_ms": 30.0}]}
    base = {"top": [{"fn": "b.py:2:g", "ncalls": 2.0, "own_ms": 6.0, "cum_ms": 10.0}],
            "all": [{"fn": "b.py:2:g", "ncalls": 2.0, "own_ms": 6.0, "cum_ms": 10.0},
                    {"fn": "a.py:1:f", "ncalls": 1.0, "own_ms": 4.5, "cum_ms": 8.0}]}
    own = diff(ours, base)
    assert own[0] == {"fn": "a.py:1:f", "own_ms": 0.5, "ncalls": 0.0} and own[1]["own_ms"] == -5.0
    cum = diff(ours, base, by="cum_ms")
    assert cum[0] == {"fn": "b.py:2:g", "cum_ms": 20.0, "ncalls": 0.0} and cum[1]["cum_ms"] == 1.0


def test_e2e_packs_the_raw_profiles_into_one_file(tmp_path):
    """The GPU machine returns a bounded number of files: the per-engine, per-workload .pstats go
    back as one tar (and nothing is packed where there are none)."""
    import tarfile

    sys.path.insert(0, str(BENCH))
    import e2e_vllm

    e2e_vllm._pack_pstats(tmp_path)
    assert not (tmp_path / "pstats.tar").exists()
    for name in ("tri_inductor_decode1.pstats", "inductor_decode1.pstats"):
        (tmp_path / name).write_bytes(name.encode())
    (tmp_path / "tri_inductor_0.log").write_text("log")
    e2e_vllm._pack_pstats(tmp_path)
    with tarfile.open(tmp_path / "pstats.tar") as tar:
        assert sorted(tar.getnames()) == ["inductor_decode1.pstats", "tri_inductor_decode1.pstats"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pstats.tar", "tri_inductor_0.log"]
