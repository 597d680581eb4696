"""benchmarks/_vllm_common step statistics: engine steps recovered from per-token arrival times,
and the equal-batch comparison that tells a slower step from a different schedule."""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))

import _vllm_common as C  # noqa: E402


def _timeline(step_ms: dict[int, float], schedule: list[int], jitter_s: float = 1e-5):
    """Requests 0..max-1; step k gives a token to the first schedule[k] requests, steps spaced by
    step_ms[batch] (the time a step of that batch takes)."""
    tl: dict[str, list[tuple[float, int]]] = {}
    t = 0.0
    for n in schedule:
        t += step_ms[n] / 1e3
        for r in range(n):
            tl.setdefault(str(r), []).append((t + r * jitter_s, 1))
    return tl


def test_steps_are_recovered_from_arrivals():
    tl = _timeline({2: 5.0, 4: 6.0}, [2, 2, 4, 4, 4])
    steps = C.step_batches(tl)
    assert [n for _, n in steps] == [2, 2, 4, 4, 4]
    st = C.step_gap_stats(steps)
    assert st["steps"] == 5 and st["mean_batch"] == 3.2
    assert st["by_batch"]["4"] == {"steps": 3, "median_gap_ms": 6.0}
    assert abs(st["by_batch"]["2"]["median_gap_ms"] - 5.0) < 1e-6


def test_equal_batch_ratio_separates_schedule_from_step_time():
    times = {2: 5.0, 4: 6.0}
    # Same step times, but "ours" decodes in larger batches more often: its pooled median ITL is
    # higher, yet at equal batch size the steps are equally fast.
    ours = C.step_gap_stats(C.step_batches(_timeline(times, [2] * 6 + [4] * 20)))
    base = C.step_gap_stats(C.step_batches(_timeline(times, [2] * 20 + [4] * 6)))
    assert ours["mean_batch"] > base["mean_batch"]
    assert C.equal_batch_gap_ratio(ours, base) == 1.0
    # Steps 10% slower at every batch size: the ratio says so.
    slow = C.step_gap_stats(C.step_batches(_timeline({2: 5.5, 4: 6.6}, [2] * 20 + [4] * 6)))
    assert abs(C.equal_batch_gap_ratio(slow, base) - 1.1) < 1e-3
    assert C.equal_batch_gap_ratio(ours, {"by_batch": {}}) is None


def test_host_rows_split_runtime_calls_from_cpu_ops():
    h = C.summarize_host([("cudaLaunchKernel", 5.0), ("cuLaunchKernelEx", 4.0), ("cudaStreamSynchronize", 900.0),
                          ("aten::empty", 2.0), ("aten::empty", 3.0), ("custom_range", 7.0)])
    assert h["api"] == {"cudaStreamSynchronize": [1, 900.0], "cudaLaunchKernel": [1, 5.0],
                        "cuLaunchKernelEx": [1, 4.0]}
    assert h["ops"] == {"custom_range": [1, 7.0], "aten::empty": [2, 5.0]}
    assert not C.is_runtime_call("cutlass_kernel") and not C.is_runtime_call("custom_range")


def test_explain_gap_names_the_host_rows_that_grew():
    """A host-bound gap (equal GPU time, longer wall) is explained by the runtime calls and ops
    our run makes more of: here a sync per step."""
    base = {"wall_ms": 100.0, "gpu_busy_ms": 50.0, "classes_us": {"gemm": 40e3},
            "host": C.summarize_host([("cudaGraphLaunch", 20.0)] * 64)}
    ours = {"wall_ms": 160.0, "gpu_busy_ms": 50.0, "classes_us": {"gemm": 40e3},
            "host": C.summarize_host([("cudaGraphLaunch", 20.0)] * 64 + [("cudaStreamSynchronize", 900.0)] * 64)}
    line = C.explain_gap(ours, base)
    assert "host/launch gaps (wall - GPU busy) +60.0 ms" in line
    assert line.endswith("host: cudaStreamSynchronize +64 calls +57.6 ms")
    assert "host:" not in C.explain_gap(base, base)


def test_compiled_graph_calls_compare_across_engines():
    """Inductor labels each compiled graph's call with its cache key (ours: None): the same calls
    must not count as ours extra, in new records and in stored ones."""
    ours = {"host": C.summarize_host([("## Call CompiledFxGraph None ##", 1500.0)] * 33)}
    base = {"host": {"ops": {"## Call CompiledFxGraph fi5v6y ##": [20, 10000.0],
                             "## Call CompiledFxGraph ab12cd ##": [11, 7000.0]}}}
    assert ours["host"]["ops"] == {"## Call CompiledFxGraph ##": [33, 49500.0]}
    assert C.host_differences(ours, base) == ["## Call CompiledFxGraph ## +2 calls +32.5 ms"]


def test_a_budget_too_small_for_the_cold_starts_is_refused_before_any_engine_starts(tmp_path, capsys):
    """The e2e refuses at once (exit 2, the reason and the way out) when its budget cannot hold the
    engines' cold starts: on an H200 such a run started both engines for ~4 minutes of device time
    and skipped every workload."""
    import e2e_vllm as E

    args = E.parse_args(["--model", "qwen2.5-7b", "--quick", "--baseline", "compile", "--budget-s", "262",
                         "--gpu-mem-gib", "140", "--out", str(tmp_path)])
    plan = E.build_plan(args, 140.0)
    starts = plan["estimate_s"]["startups"]
    assert starts["tri_inductor"] > starts["inductor"]  # ours compiles and tunes more
    why = E.budget_problem(plan, 262)
    assert why and "Raise --budget-s" in why and "tri_inductor" in why
    assert E.budget_problem(plan, 540) is None
    assert E.main_parent(args) == 2
    assert "not started" in capsys.readouterr().err
    assert not list(tmp_path.glob("*.json"))  # nothing measured, nothing written


def test_each_engine_gets_fresh_caches_of_every_kind(tmp_path, monkeypatch):
    """A cold start is cold: vLLM's, Inductor's, Triton's caches and our tuning DB all live under
    the engine's own folder, whatever an earlier run left in the user's cache folders."""
    import e2e_vllm as E

    monkeypatch.setenv("TRI_INDUCTOR_CACHE_DIR", "/somewhere/warm")
    env = E.Engine("tri_inductor", {}, tmp_path / "eng", tmp_path / "log").env()
    for var in ("VLLM_CACHE_ROOT", "TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR", "TRI_INDUCTOR_CACHE_DIR"):
        assert env[var].startswith(str(tmp_path / "eng")), var


def test_concurrent_starts_launch_every_engine_before_waiting(tmp_path, monkeypatch):
    """``--concurrent-starts``: every engine process is started before the first wait (the run's
    start-up wall is the slowest start, not the sum), and the contended start times are kept
    apart from cold starts."""
    import e2e_vllm as E

    events = []

    class FakeEngine:
        def __init__(self, backend, kwargs, cache_dir, log_path):
            self.backend, self.error, self.ready, self.start_s, self.start_index = backend, None, None, None, 0
            self.log_path = log_path

        def start(self, exit_after_ready=False):
            events.append(("start", self.backend))

        def wait_ready(self, timeout):
            events.append(("wait", self.backend))
            self.ready, self.start_s = {"import_s": 1.0, "llm_init_s": 2.0}, 3.0
            return True

        def log_text(self):
            return ""

        def alive(self):
            return True

        def stop(self):
            events.append(("stop", self.backend))

    monkeypatch.setattr(E, "Engine", FakeEngine)
    monkeypatch.setenv("TRI_INDUCTOR_DECODE_SPLITS", "balanced")  # recorded with the run, shown by report.py
    monkeypatch.delenv("TRI_INDUCTOR_CHECK_MUTATIONS", raising=False)  # the suite's own (conftest.py)
    args_list = ["--model", "llama-3.2-1b", "--quick", "--baseline", "both", "--concurrent-starts",
                 "--gpu-mem-gib", "140", "--out", str(tmp_path)]
    args = E.parse_args(args_list)
    plan = E.build_plan(args, 140.0)
    starts = plan["estimate_s"]["startups"]  # the budget holds the slowest start, not their sum
    assert E.budget_problem(plan, max(starts.values()) / 0.8) is None
    assert E.budget_problem(E.build_plan(E.parse_args([a for a in args_list if a != "--concurrent-starts"]), 140.0),
                            max(starts.values()) / 0.8)
    runner = E.Runner(args, plan, tmp_path / "model", tmp_path, tmp_path / "logs", tmp_path / "cache")
    for name in ("greedy_tokens", "run_workload", "profiles", "refresh", "compare_settings"):
        monkeypatch.setattr(runner, name, lambda *a, **k: None)
    assert runner.run() == 0
    kinds = [k for k, _ in events]
    n = len(plan["backends"])
    assert n == 3 and kinds[:n] == ["start"] * n and kinds[n:2 * n] == ["wait"] * n
    assert runner.report["settings"]["start_order"] == "concurrent"
    for b in plan["backends"]:
        info = runner.report["engines"][b]
        assert info["concurrent_start_s"] == 3.0 and "cold_start_s" not in info
    assert runner.report["settings"]["tri_inductor_env"] == {"TRI_INDUCTOR_DECODE_SPLITS": "balanced"}
    import report as R

    text = R.e2e_section("e2e_test.json", runner.report)
    assert "`TRI_INDUCTOR_DECODE_SPLITS=balanced`" in text and "not a cold start" in text


def test_sample_stacks_puts_the_sampler_first_on_each_engines_path(tmp_path, monkeypatch):
    """``--sample-stacks DIR``: each engine process loads benchmarks/stack_sampler's
    sitecustomize (first on PYTHONPATH) and writes its samples under DIR/<backend>_<start>/;
    without the option nothing changes. The sampler itself writes a file of main-thread stacks
    that stack_report.py reads."""
    import subprocess
    import sys

    import e2e_vllm as E
    import stack_report

    monkeypatch.setenv("PYTHONPATH", "/already/there")
    eng = E.Engine("tri_inductor", {}, tmp_path / "eng", tmp_path / "log")
    assert "TRI_STACK_SAMPLE_DIR" not in eng.env()
    eng.sample_stacks = tmp_path / "stacks" / "tri_inductor_0"
    env = eng.env()
    assert env["TRI_STACK_SAMPLE_DIR"] == str(tmp_path / "stacks" / "tri_inductor_0")
    assert env["PYTHONPATH"].split(os.pathsep) == [str(E.STACK_SAMPLER), "/already/there"]
    env["PYTHONPATH"] = str(E.STACK_SAMPLER)
    code = ("import threading, time\n"
            "def tuning_in_benchmarks():\n    time.sleep(0.7)\n"
            "def busy_in_benchmarks():\n    time.sleep(0.7)\n"
            "t = threading.Thread(target=tuning_in_benchmarks, name='tri_inductor-tune')\n"
            "t.start()\nbusy_in_benchmarks()\nt.join()\n")
    script = tmp_path / "benchmarks" / "probe.py"
    script.parent.mkdir()
    script.write_text(code)
    subprocess.run([sys.executable, str(script)], env=env, check=True, timeout=60)
    (samples,) = (tmp_path / "stacks" / "tri_inductor_0").glob("*.txt")
    argv, rows = stack_report.read(samples)
    assert "probe.py" in argv and rows and any("busy_in_benchmarks" in fr for _, st in rows for fr in st)
    assert not any("tuning_in_benchmarks" in fr for _, st in rows for fr in st)  # the main thread's only
    _, tuning = stack_report.read(samples, thread="tri_inductor-tune")
    assert tuning and any("tuning_in_benchmarks" in fr for _, st in tuning for fr in st)
    # the report reads each file's sampling period from its timestamps (the sampler's default here;
    # TRI_STACK_SAMPLE_PERIOD_S sets another), and --within keeps the samples under one frame
    assert abs(stack_report.period_s(samples) - 0.2) < 0.05
    fine = tmp_path / "stacks" / "fine"
    subprocess.run([sys.executable, str(script)], env={**env, "TRI_STACK_SAMPLE_DIR": str(fine),
                                                       "TRI_STACK_SAMPLE_PERIOD_S": "0.05"}, check=True, timeout=60)
    (fine_samples,) = fine.glob("*.txt")
    assert abs(stack_report.period_s(fine_samples) - 0.05) < 0.02
    assert len(stack_report.read(fine_samples)[1]) > 2 * len(rows)
    _, within = stack_report.read(fine_samples, within="busy_in_benchmarks")
    assert within and all(any("busy_in_benchmarks" in fr for fr in st) for _, st in within)
