"""The vLLM census's scoring, on synthetic data (the census itself runs on the GPU machine)."""
from __future__ import annotations

import argparse
import json
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
                                     row("fused_moe_kernel"), row("moe_route_kernel"),
                                     row("nvjet_sm90_tst_64x48_64x15_2x4_h_bz_TNT")]}}
    report = {"models": {"m": {"backends": {"tri_inductor": {"ok": True, "census": census}},
                               "teacher_forced": {"pass": True}}}}
    out = vllm_census.reclassify(report)["models"]["m"]
    assert [e["name"] for e in out["non_triton_forward"]] == ["nvjet_sm90_tst_64x48_64x15_2x4_h_bz_TNT"]
    assert out["forward_classes"]["triton"]["launches"] == 10  # vLLM's, ours and Inductor's kernels
    # by family: vLLM's fused_moe experts and our router are one MoE family, apart from attention
    assert {f: v["launches"] for f, v in out["forward_families"].items()} == {
        "attention": 2, "rms_norm": 2, "inductor": 2, "moe": 4}
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



def _same_mode(agree: int, total: int, beyond: int = 0) -> dict:
    """A same-mode score as score_same_mode writes it (rate, beyond-noise list, own pass)."""
    rate = round(agree / total, 5)
    return {"positions": total, "agree": agree, "match_rate": rate, "beyond_noise": [{"gap": 0.5}] * beyond,
            "pass": rate >= 0.99 and not beyond}


@pytest.mark.parametrize("ours, fa3, passes", [
    (_same_mode(1978, 2000), _same_mode(1970, 2000), True),    # 98.9% >= FA3's 98.5%: two attention kernels
    (_same_mode(1960, 2000), _same_mode(1978, 2000), False),   # below FA3's agreement
    (_same_mode(1990, 2000, beyond=1), _same_mode(1900, 2000), False),  # a confident flip is never noise
    (_same_mode(1995, 2000), _same_mode(2000, 2000), True),    # >= 99% on its own
])
def test_fa3_control_is_the_bar_for_our_attention(ours, fa3, passes):
    """Issue 26: with our paged attention selected, same-mode agreement with the TRITON_ATTN engine
    passes when at least what vLLM with FA3 reaches against it, and nothing beyond bf16 noise."""
    entry = {"same_mode": ours, "fa3_control_same_mode": fa3,
             "vs_attention_control": vllm_census.score_vs_attention_control(ours, fa3)}
    v = vllm_census.parity_verdict(entry)
    assert v["pass"] is passes
    assert v["control_match_rate"] == fa3["match_rate"] and v["match_rate"] == ours["match_rate"]


def test_fa3_control_engine_differs_from_the_baseline_in_attention_only():
    base = vllm_census.engine_kwargs("inductor", "/m", "auto")
    fa3 = vllm_census.engine_kwargs(vllm_census.ATTN_CONTROL, "/m", "auto")
    assert fa3.pop("attention_backend") == "FLASH_ATTN" and base.pop("attention_backend") == "TRITON_ATTN"
    assert fa3 == base


def test_only_the_fa3_control_gets_the_stub_kv_write(monkeypatch, tmp_path):
    """GPU_ENV_FA3=1 lets the .gpu-env stub serve the CUDA KV-cache write: any engine but the FA3
    control must run without it, so that a CUDA op call of ours still raises."""
    seen = {}

    def fake_run(cmd, env, **kw):
        seen[cmd[cmd.index("--backend") + 1]] = env.get("GPU_ENV_FA3")
        raise vllm_census.subprocess.TimeoutExpired(cmd, 1)

    monkeypatch.setenv("GPU_ENV_FA3", "1")
    monkeypatch.setattr(vllm_census.subprocess, "run", fake_run)
    args = argparse.Namespace(prompts=1, tokens=1, tp=1, timeout=1, jobs=1)
    for b in ("tri_inductor", "inductor", vllm_census.ATTN_CONTROL):
        vllm_census.run_worker(args, "m", tmp_path, "auto", b, tmp_path / f"{b}.json")
    assert seen == {"tri_inductor": None, "inductor": None, vllm_census.ATTN_CONTROL: "1"}

# ----------------------------------------------------------------------------- --reference hf
def test_hf_greedy_with_the_cache_is_greedy_on_the_whole_prefix():
    """The reference's cached decode loop picks what a full forward of each prefix picks."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    cfg = transformers.LlamaConfig(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(cfg).eval()
    prompt = [5, 17, 3, 60, 2]
    with torch.no_grad():
        seq, gaps = vllm_census.hf_greedy(model, prompt, 6, "cpu")
        ids = list(prompt)
        for tok, gap in zip(seq, gaps):
            lp = torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0, -1].float(), -1)
            top = lp.topk(2)
            assert tok == int(top.indices[0]) and gap == pytest.approx(float(top.values[0] - top.values[1]), abs=1e-4)
            ids.append(tok)


def _fake_census(monkeypatch, agree_of):
    """run_worker faked: every engine teacher-forced on two positions, the second agreeing when
    ``agree_of(model, backend)``; returns the list of (model, backend, teacher file) calls."""
    calls = []

    def fake_run_worker(args, name, folder, load_format, backend, out, teacher=None):
        calls.append((name, backend, teacher.name if teacher is not None else None))
        out.write_text("{}")
        r = {"ok": True, "tokens": [[1, 2]], "top2_gap": [[1.0, 1.0]], "census": {}}
        if teacher is not None:
            r["teacher_forced"] = [[[True, 0.0], [agree_of(name, backend), 0.05]]]
        return r

    monkeypatch.setattr(vllm_census, "run_worker", fake_run_worker)
    monkeypatch.setattr(vllm_census, "write_model", lambda *a: "auto")
    monkeypatch.setattr(vllm_census, "environment", lambda: {"card": "NVIDIA H200", "versions": {}})
    return calls


def test_reference_hf_teacher_forces_every_engine_on_the_reference(monkeypatch, tmp_path):
    """--reference hf with --sparse-baseline: the HF reference runs first, every vLLM engine is
    teacher-forced on its tokens, and the baseline's agreement with it is recorded next to ours."""
    calls = _fake_census(monkeypatch, lambda name, backend: backend == "inductor")
    out = tmp_path / "c.json"
    rc = vllm_census.main(["--models", "deepseek_v2", "--reference", "hf", "--sparse-baseline", "--out", str(out)])
    assert calls == [("deepseek_v2", "hf", None), ("deepseek_v2", "inductor", "deepseek_v2_hf.json"),
                     ("deepseek_v2", "tri_inductor", "deepseek_v2_hf.json")]
    m = json.loads(out.read_text())["models"]["deepseek_v2"]
    assert m["reference"] == "hf" and m["baseline_teacher_forced"]["match_rate"] == 1.0
    assert m["teacher_forced"]["match_rate"] == 0.5 and "same_mode" not in m and "vs_bar" not in m
    assert rc == 1 and not m["pass"]  # ours disagrees with the reference: no pass


@pytest.mark.parametrize("bar_agrees, ours_agrees, passes", [(True, True, True), (True, False, False),
                                                              (False, False, True)])
def test_moe_and_mla_models_are_scored_against_the_dense_bar(monkeypatch, tmp_path, bar_agrees, ours_agrees, passes):
    """--reference hf: the bar model runs first, and a MoE/MLA model passes when our agreement
    with its reference is at least the bar's (vLLM's compile path on the dense model). vLLM's own
    engine is not run on an MLA model (its CUDA MLA ops are stubs in a Triton-only environment);
    on a MoE model it runs with torch glue for its MoE CUDA ops, scored beside the bar."""
    def agree(name, backend):
        return bar_agrees if (name, backend) == ("llama", "inductor") else (ours_agrees or name == "llama")

    calls = _fake_census(monkeypatch, agree)
    out = tmp_path / "c.json"
    rc = vllm_census.main(["--models", "mixtral,deepseek_v2", "--reference", "hf", "--out", str(out)])
    assert calls == [("llama", "hf", None), ("llama", "inductor", "llama_hf.json"),
                     ("llama", "tri_inductor", "llama_hf.json"),
                     ("mixtral", "hf", None), ("mixtral", "inductor", "mixtral_hf.json"),
                     ("mixtral", "tri_inductor", "mixtral_hf.json"),
                     ("deepseek_v2", "hf", None), ("deepseek_v2", "tri_inductor", "deepseek_v2_hf.json")]
    models = json.loads(out.read_text())["models"]
    for name in ("mixtral", "deepseek_v2"):
        vs = models[name]["vs_bar"]
        assert vs["bar_model"] == "llama" and vs["bar_match_rate"] == (1.0 if bar_agrees else 0.5)
        assert vs["match_rate"] == (1.0 if ours_agrees else 0.5)
        assert vs["pass"] is passes and models[name]["pass"] is passes
    assert "baseline_teacher_forced" not in models["deepseek_v2"] and "own_moe_baseline" not in models["deepseek_v2"]
    own = models["mixtral"]["own_moe_baseline"]  # vLLM's MoE path (torch glue) on the model itself
    assert own["bar_model"] == "mixtral" and own["match_rate"] == (1.0 if ours_agrees else 0.5)
    assert own["bar_match_rate"] == (1.0 if ours_agrees else 0.5)  # agree() of mixtral's inductor run
    assert (rc == 0) is (passes and models["llama"]["pass"])


def test_reference_hf_needs_the_random_weights():
    with pytest.raises(SystemExit):
        vllm_census.main(["--models", "llama", "--reference", "hf", "--weights", "dummy", "--dry-run"])


def test_parts_are_scored_against_the_bar_when_combined(monkeypatch, tmp_path):
    """One GPU call each: the bar model in one part, MoE/MLA models in another (--bar-elsewhere);
    --combine scores them against the bar wherever it ran."""
    calls = _fake_census(monkeypatch, lambda name, backend: True)
    a, b, out = tmp_path / "a.json", tmp_path / "b.json", tmp_path / "all.json"
    assert vllm_census.main(["--models", "llama", "--reference", "hf", "--out", str(a)]) == 0
    rc = vllm_census.main(["--models", "qwen3_moe", "--reference", "hf", "--bar-elsewhere", "--out", str(b)])
    assert [c[0] for c in calls] == ["llama"] * 3 + ["qwen3_moe"] * 3  # the bar model ran once
    part = json.loads(b.read_text())["models"]["qwen3_moe"]
    assert rc == 1 and not part["pass"] and "no baseline score" in part["vs_bar"]["error"]
    assert vllm_census.main(["--combine", str(a), str(b), "--out", str(out)]) == 0
    merged = json.loads(out.read_text())["models"]["qwen3_moe"]
    assert merged["pass"] and merged["vs_bar"]["bar_match_rate"] == 1.0


@pytest.mark.parametrize("bar_agrees, passes", [(True, True), (False, True)])
def test_jobs_run_models_side_by_side_with_the_same_scores(monkeypatch, tmp_path, bar_agrees, passes):
    """--jobs: models in parallel (each model's engines still one after another, the reference
    first); a MoE model that finishes before its bar model is scored against it at the end; the
    result equals the sequential run's."""
    def agree(name, backend):
        return bar_agrees if (name, backend) == ("llama", "inductor") else True

    results = {}
    for jobs in (1, 3):
        calls = _fake_census(monkeypatch, agree)
        out = tmp_path / f"c{jobs}.json"
        rc = vllm_census.main(["--models", "qwen3,mixtral", "--reference", "hf", "--jobs", str(jobs),
                               "--out", str(out)])
        for model in ("llama", "qwen3", "mixtral"):  # per model: the reference, then its engines
            mine = [c for c in calls if c[0] == model]
            assert mine[0][1] == "hf" and all(c[2] == f"{model}_hf.json" for c in mine[1:])
        models = json.loads(out.read_text())["models"]
        results[jobs] = {k: (v["pass"], v.get("vs_bar", {}).get("bar_match_rate")) for k, v in models.items()}
        assert (rc == 0) is all(p for p, _ in results[jobs].values())
    assert results[1] == results[3] and results[3]["mixtral"] == (passes, 1.0 if bar_agrees else 0.5)


def test_shared_gpu_engines_get_a_fixed_kv_cache():
    """--jobs > 1: vLLM's memory profiling would count the other engines' memory as its own."""
    import dataclasses

    # the fields, not an EngineArgs(...): building one loads vLLM's plugins (ours) process-wide
    fields = {f.name for f in dataclasses.fields(pytest.importorskip("vllm.engine.arg_utils").EngineArgs)}
    for b in ("tri_inductor", "inductor", vllm_census.ATTN_CONTROL):
        kw = vllm_census.engine_kwargs(b, "/m", "auto", shared_gpu=True)
        assert kw["kv_cache_memory_bytes"] == vllm_census.SHARED_KV_CACHE_BYTES
        assert kw["gpu_memory_utilization"] * 8 < 1  # eight engines' shares fit at once
        assert set(kw) <= fields, set(kw) - fields  # vLLM takes every key
    assert "kv_cache_memory_bytes" not in vllm_census.engine_kwargs("inductor", "/m", "auto")


def test_a_non_triton_launch_is_traced_to_the_outermost_aten_op_and_its_python_frames():
    ops = [(0, 100, 1, "aten::zeros", ["/site/torch/_ops.py(9): call", "/vllm/runner.py(10): prepare",
                                        "<built-in method zeros of type object>"]),
           (10, 20, 1, "aten::fill_", ["/vllm/runner.py(10): prepare"]),
           (0, 100, 2, "aten::mm", ["/other.py(1): f"])]
    src = vllm_census.launch_source(ops, 15, 1)
    assert src == {"op": "aten::zeros", "stack": ["/vllm/runner.py(10): prepare"]}  # torch frames dropped
    assert vllm_census.launch_source(ops, 150, 1) == {}  # no op around it: a direct driver call
    assert vllm_census.launch_source(ops, 15, 2)["op"] == "aten::mm"  # only the launching thread's ops


def _event(name, dev, start, end, corr=0, thread=1, stack=()):
    """A Kineto event as Census.attribute reads it (its accessor methods)."""
    from types import SimpleNamespace

    return SimpleNamespace(name=lambda: name, device_type=lambda: dev, start_ns=lambda: start, end_ns=lambda: end,
                           correlation_id=lambda: corr, start_thread_id=lambda: thread, stack=lambda: list(stack))


C, G = "DeviceType.CPU", "DeviceType.CUDA"
fill = "void at::native::vectorized_elementwise_kernel<4, at::native::FillFunctor<int>>"
MIXED_STEP_FORWARD = [_event("tri_census:step:mixed", C, 0, 100, thread=1),
                      _event("tri_census:part:forward", C, 10, 90, thread=1)]


def _census_without_triton_names(monkeypatch):
    census = vllm_census.Census()
    monkeypatch.setattr(census, "triton_names", lambda: set())
    return census


def test_a_launch_from_another_thread_during_the_forward_is_not_the_forwards(monkeypatch):
    """Attribution by CPU launch time alone put vLLM's bookkeeping fill (another thread) into an
    eager forward's window; a launch counts for a part only from the thread that ran it."""
    from types import SimpleNamespace

    census = _census_without_triton_names(monkeypatch)
    events = [
        *MIXED_STEP_FORWARD,
        _event("aten::fill_", C, 19, 22, thread=2, stack=["/vllm/runner.py(5): prep"]),
        _event("cudaLaunchKernel", C, 20, 21, corr=7, thread=2),  # the other thread's fill
        _event("aten::mm", C, 29, 32, thread=1),
        _event("cudaLaunchKernel", C, 30, 31, corr=8, thread=1),  # the forward's own launch
        _event(fill, G, 40, 41, corr=7),
        _event("nvjet_sm90_gemm", G, 42, 45, corr=8),
    ]
    prof = SimpleNamespace(profiler=SimpleNamespace(kineto_results=SimpleNamespace(events=lambda: events)))
    table = census.attribute(prof)
    forward = {r["name"] for r in table["mixed"]["forward"]}
    assert forward == {"nvjet_sm90_gemm"}  # the main thread's non-Triton launch stays in the forward
    (row,) = table["mixed"]["other_thread"]
    assert row["name"] == fill and row["source"] == {"op": "aten::fill_", "stack": ["/vllm/runner.py(5): prep"]}


def test_a_launch_no_aten_op_encloses_is_named_by_its_python_frames(monkeypatch):
    """A kernel whose launch no ATen op encloses (a CUDA-graph replay, a direct C++ launch) is
    named by the launch API and the deepest Python call chain running at that moment."""
    from types import SimpleNamespace

    census = _census_without_triton_names(monkeypatch)
    events = [
        *MIXED_STEP_FORWARD,
        _event("cudaGraphLaunch", C, 50, 52, corr=9, thread=1),
        _event(fill, G, 60, 61, corr=9),
    ]

    def node(name, start, end, tid, children=(), tag="_EventType.PyCall"):
        return SimpleNamespace(name=name, start_time_ns=start, end_time_ns=end, start_tid=tid, tag=tag,
                               children=list(children))

    tree = [node("vllm/runner.py(1): execute_model", 0, 100, 1, [
        node("torch/profiler/profiler.py(3): step", 0, 5, 1),
        node("vllm/compilation/cuda_graph.py(7): __call__", 45, 55, 1, [
            node("<built-in method replay of CUDAGraph>", 49, 53, 1, tag="_EventType.PyCCall")])]),
        node("threading.py(2): run", 0, 100, 2)]
    prof = SimpleNamespace(profiler=SimpleNamespace(kineto_results=SimpleNamespace(
        events=lambda: events, experimental_event_tree=lambda: tree)))
    (row,) = census.attribute(prof)["mixed"]["forward"]
    assert row["source"] == {"op": None, "launch_api": "cudaGraphLaunch",
                             "python": ["vllm/runner.py(1): execute_model",
                                        "vllm/compilation/cuda_graph.py(7): __call__",
                                        "<built-in method replay of CUDAGraph>"],
                             "gpu_neighbours": [">> " + fill]}


@pytest.mark.parametrize("base_agrees, ours_agrees, passes", [(False, False, True), (True, False, False)])
def test_reference_hf_passes_a_model_that_agrees_as_well_as_vllms_compile_path(monkeypatch, tmp_path, base_agrees,
                                                                               ours_agrees, passes):
    """--reference hf on a dense model: neither engine reproduces bf16 HF eager exactly; ours
    passes when its agreement with the reference is at least vLLM's compile path's."""
    calls = _fake_census(monkeypatch, lambda name, backend: base_agrees if backend == "inductor" else ours_agrees)
    out = tmp_path / "c.json"
    rc = vllm_census.main(["--models", "llama", "--reference", "hf", "--out", str(out)])
    assert [c[1] for c in calls] == ["hf", "inductor", "tri_inductor"]
    m = json.loads(out.read_text())["models"]["llama"]
    vs = m["vs_reference_baseline"]
    assert vs["match_rate"] == 0.5 and vs["bar_match_rate"] == (1.0 if base_agrees else 0.5)
    assert m["pass"] is passes and (rc == 0) is passes
