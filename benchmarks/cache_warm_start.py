#!/usr/bin/env python3
"""GPU acceptance for compile-cache reuse (issue 5): cold start, warm start, and a warm start from
an exported-then-imported cache, each a fresh process building the same vLLM ``LLM``.

Model: Llama-3-8B-shaped (hidden 4096, 32/8 heads, intermediate 14336, vocab 128256), dummy
weights, ``compilation_config={"backend": "tri_inductor"}`` and nothing else Triton-related.

Phases (one subprocess each, all caches under one temporary root, nothing else shared):

1. ``cold``          empty caches: compile every piece, tune every GEMM shape;
2. ``warm``          same caches: vLLM/Inductor cache hits, no benchmark at all;
3. ``tri-inductor cache export F --key-file K`` -> ``cache clear --vllm`` (checked empty) ->
   ``cache import F --trust --key-file K`` (compiled artifacts need both: docs/cache.md, "Trust");
4. ``after_import``  must be as warm as 2.

Measured per start: vLLM's "torch.compile took X s in total" (the compile+tune phase: our GEMM
tuning runs inside the compile, in our pattern pass), ``LLM(...)`` construction time, our cache
counters (lookups hit/miss, benchmarks run, shapes tuned, tuning seconds), Inductor's FX/AOTAutograd
cache counters, Inductor autotune benchmark calls, vLLM's compilation counters, and the log lines
vLLM writes per compiled or loaded piece.  ``warm_speedup`` = cold / warm compile seconds.

On the GPU machine, from the repo root:

    source .gpu-env/setup.sh && python3 -m pip install -q --no-deps --no-build-isolation --no-index -e . \\
      && python3 benchmarks/cache_warm_start.py            # 32 layers; --layers 4 --quick for a smoke run

Writes benchmarks/results/cache_<card>.json (or --out) and prints a table last.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _meta import record_failure  # noqa: E402

LLAMA3_8B = dict(architectures=["LlamaForCausalLM"], model_type="llama", hidden_size=4096,
                 intermediate_size=14336, num_attention_heads=32, num_key_value_heads=8, head_dim=128,
                 rms_norm_eps=1e-5, rope_theta=500000.0, hidden_act="silu", tie_word_embeddings=False,
                 vocab_size=128256, max_position_embeddings=8192, torch_dtype="bfloat16",
                 bos_token_id=128000, eos_token_id=128001, initializer_range=0.02)
COMPILE_RE = re.compile(r"torch\.compile (?:takes|took) ([0-9.]+) s in total")
PIECE_COMPILED_RE = re.compile(r"Compiling a graph for compile range")
LOADED_RE = re.compile(r"Directly load (?:AOT compilation|the compiled graph)")
SPEEDUP_TARGET = 5.0


# ======================================================================= worker: one LLM start


def _wrap_counting(cls: type, name: str, counts: dict[str, int], key: str) -> None:
    """Count calls of ``cls.name``, keeping it a staticmethod/classmethod if it was one."""
    raw = cls.__dict__.get(name)
    if raw is None:
        return
    kind = type(raw) if isinstance(raw, (staticmethod, classmethod)) else None
    fn = raw.__func__ if kind else raw

    def counting(*a, **k):  # type: ignore[no-untyped-def]
        counts[key] += 1
        return fn(*a, **k)

    setattr(cls, name, kind(counting) if kind else counting)


BENCHMARKED: list[dict[str, Any]] = []  # which Inductor kernels ran their config search


def _count_inductor_benchmarks() -> dict[str, int]:
    """Count Inductor's own autotuning benchmarks (pointwise/reduction config search at first
    launch, GEMM template selection); a warm start must run none.  Each config search is also
    named (kernel, source file, autotune-cache state) in ``BENCHMARKED``."""
    counts = {"triton_heuristics_benchmark_all_configs": 0, "select_algorithm_benchmarks": 0}
    try:
        from torch._inductor.runtime.triton_heuristics import CachingAutotuner

        real = CachingAutotuner.benchmark_all_configs

        def counting_and_naming(self, *a, **k):  # type: ignore[no-untyped-def]
            counts["triton_heuristics_benchmark_all_configs"] += 1
            if len(BENCHMARKED) < 64:
                BENCHMARKED.append({
                    "kernel": getattr(getattr(self, "fn", None), "__name__", "?"),
                    "file": getattr(self, "filename", None),
                    "configs": len(getattr(self, "launchers", []) or []),
                    "autotune_cache": dict(getattr(self, "autotune_cache_info", None) or {}),
                    "heuristic": (getattr(self, "heuristic_type", None) or "").__str__(),
                })
            return real(self, *a, **k)

        CachingAutotuner.benchmark_all_configs = counting_and_naming
    except Exception:  # noqa: BLE001
        pass
    try:
        from torch._inductor.select_algorithm import AlgorithmSelectorCache

        for name in ("benchmark_in_current_process", "benchmark_in_sub_process"):
            _wrap_counting(AlgorithmSelectorCache, name, counts, "select_algorithm_benchmarks")
    except Exception:  # noqa: BLE001
        pass
    return counts


def main_worker(args: argparse.Namespace) -> int:
    result: dict[str, Any] = {"ok": False, "phase": args.phase}
    out = Path(args.worker_out)
    try:
        import torch

        inductor_bench = _count_inductor_benchmarks()
        from vllm import LLM, SamplingParams

        from tri_inductor import cache

        t0 = time.perf_counter()
        llm = LLM(model=args.model_dir, load_format="dummy", skip_tokenizer_init=True, dtype="bfloat16", seed=0,
                  max_model_len=args.max_model_len, max_num_seqs=args.max_num_seqs,
                  gpu_memory_utilization=args.gpu_memory_utilization,
                  compilation_config={"backend": "tri_inductor"})
        result["init_s"] = round(time.perf_counter() - t0, 2)
        sp = SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True, detokenize=False)
        t0 = time.perf_counter()
        outs = llm.generate([{"prompt_token_ids": list(range(100, 100 + 16 + i))} for i in range(4)], sp,
                            use_tqdm=False)
        result["generate_s"] = round(time.perf_counter() - t0, 2)
        result["tokens"] = [list(o.outputs[0].token_ids) for o in outs]
        result["tri_inductor"] = cache.counters()
        from torch._dynamo.utils import counters

        result["inductor"] = {k: v for k, v in counters["inductor"].items() if "cache" in k}
        result["aot_autograd"] = dict(counters["aot_autograd"])
        result["inductor_benchmarks"] = dict(inductor_bench)
        result["inductor_benchmarked_kernels"] = list(BENCHMARKED)
        try:
            import dataclasses

            from vllm.compilation.counter import compilation_counter

            result["vllm_counters"] = dataclasses.asdict(compilation_counter)
        except Exception as e:  # noqa: BLE001
            result["vllm_counters"] = {"error": repr(e)}
        result["tuning_db"] = str(cache.db().path)
        result["ok"] = True
        del llm
        torch.cuda.synchronize()
    except BaseException:  # noqa: BLE001  (report, then fail)
        record_failure(result)
    out.write_text(json.dumps(result))
    return 0 if result["ok"] else 1


# ======================================================================= parent


def cache_env(root: Path) -> dict[str, str]:
    """Every cache of the run under ``root``: ours, vLLM's, Inductor's and Triton's (a cold start
    must not be warmed by ~/.triton or /tmp/torchinductor_* from earlier runs)."""
    env = dict(os.environ)
    env.update(TRI_INDUCTOR_CACHE_DIR=str(root / "tri"), VLLM_CACHE_ROOT=str(root / "vllm"),
               TRITON_CACHE_DIR=str(root / "tri" / "triton"),
               TORCHINDUCTOR_CACHE_DIR=str(root / "tri" / "inductor"))
    env.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # counters of the engine in this process
    env.setdefault("VLLM_USE_V2_MODEL_RUNNER", "0")
    env.pop("VLLM_DISABLE_COMPILE_CACHE", None)
    env.pop("TORCHINDUCTOR_FORCE_DISABLE_CACHES", None)
    return env


def run_start(args: argparse.Namespace, phase: str, root: Path, model_dir: Path) -> dict[str, Any]:
    out = root / f"{phase}.json"
    cmd = [sys.executable, __file__, "--worker", "--phase", phase, "--model-dir", str(model_dir),
           "--worker-out", str(out), "--max-model-len", str(args.max_model_len),
           "--max-num-seqs", str(args.max_num_seqs), "--gpu-memory-utilization", str(args.gpu_memory_utilization)]
    print(f"[cache] {phase}: starting", flush=True)
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, env=cache_env(root), timeout=args.timeout, capture_output=True, text=True)
        log, rc = proc.stdout + proc.stderr, proc.returncode
    except subprocess.TimeoutExpired as e:
        log, rc = str(e.stdout or "") + str(e.stderr or ""), "timeout"
    result: dict[str, Any] = json.loads(out.read_text()) if out.exists() else {"ok": False}
    result["process_s"] = round(time.perf_counter() - t0, 1)
    times = [float(m) for m in COMPILE_RE.findall(log)]
    result["compile_s"] = round(sum(times), 2) if times else None
    result["compile_log_values"] = times
    result["pieces_compiled_log_lines"] = len(PIECE_COMPILED_RE.findall(log))
    result["loaded_log_lines"] = len(LOADED_RE.findall(log))
    result["progress_lines"] = [l for l in log.splitlines() if "tuning mm" in l or "tuned mm" in l][:40]
    result["tri_inductor_log"] = [l for l in log.splitlines() if "tri_inductor" in l][-25:]
    if rc != 0 or not result.get("ok"):
        result["ok"] = False
        result["rc"] = rc
        result["log_tail"] = log[-6000:]
        print(f"[cache] {phase} FAILED (rc={rc}); log tail:\n{log[-3000:]}", flush=True)
    else:
        print(f"[cache] {phase}: compile {result['compile_s']} s, LLM() {result.get('init_s')} s, "
              f"benchmarks {result['tri_inductor'].get('benchmarks')}", flush=True)
    return result


def cli(root: Path, *argv: str) -> dict[str, Any]:
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "tri_inductor.cache_cli", *argv], env=cache_env(root),
                          capture_output=True, text=True, timeout=900)
    print(f"[cache] tri-inductor cache {' '.join(argv)} -> rc {proc.returncode}: {proc.stdout.strip()[-300:]} "
          f"{proc.stderr.strip()[-500:]}", flush=True)
    return {"rc": proc.returncode, "stdout": proc.stdout[-2000:], "stderr": proc.stderr[-2000:],
            "s": round(time.perf_counter() - t0, 2)}


def tree_files(path: Path) -> int:
    return sum(1 for p in path.rglob("*") if p.is_file()) if path.exists() else 0


def warm_checks(cold: dict[str, Any], warm: dict[str, Any]) -> dict[str, Any]:
    c = {}
    if cold.get("compile_s") and warm.get("compile_s"):
        c["speedup"] = round(cold["compile_s"] / max(warm["compile_s"], 1e-3), 2)
    else:
        c["speedup"] = None
    tri = warm.get("tri_inductor", {})
    ib = warm.get("inductor_benchmarks", {})
    vc = warm.get("vllm_counters", {})
    c["zero_tri_benchmarks"] = tri.get("benchmarks", -1) == 0 and tri.get("tuned", -1) == 0
    c["zero_inductor_benchmarks"] = bool(ib) and sum(ib.values()) == 0
    # Every piece a cache hit: no piece compiled by vLLM, no Inductor FX-graph miss.
    c["no_piece_compiled"] = (warm.get("pieces_compiled_log_lines", 1) == 0
                              and vc.get("num_inductor_compiles", 0) == 0)
    c["no_fx_miss"] = warm.get("inductor", {}).get("fxgraph_cache_miss", 0) == 0
    c["same_tokens_as_cold"] = warm.get("tokens") == cold.get("tokens")
    c["pass"] = bool(warm.get("ok") and c["speedup"] and c["speedup"] >= SPEEDUP_TARGET
                     and c["zero_tri_benchmarks"] and c["zero_inductor_benchmarks"] and c["no_piece_compiled"]
                     and c["no_fx_miss"])
    return c


def print_table(report: dict[str, Any]) -> None:
    rows = [("start", "compile s", "LLM() s", "our benchmarks", "shapes tuned", "tuning lookups hit/miss",
             "inductor autotune", "fx hit/miss", "pieces compiled", "loaded", "speedup", "pass")]
    for phase in ("cold", "warm", "after_import"):
        r = report["starts"].get(phase, {})
        tri = r.get("tri_inductor", {})
        ind = r.get("inductor", {})
        chk = report["checks"].get(phase, {})
        rows.append((phase, str(r.get("compile_s")), str(r.get("init_s")), str(tri.get("benchmarks")),
                     str(tri.get("tuned")), f"{tri.get('hits')}/{tri.get('misses')}",
                     str(sum((r.get("inductor_benchmarks") or {}).values())),
                     f"{ind.get('fxgraph_cache_hit', 0)}/{ind.get('fxgraph_cache_miss', 0)}",
                     str(r.get("pieces_compiled_log_lines")), str(r.get("loaded_log_lines")),
                     str(chk.get("speedup", "-")), {True: "PASS", False: "FAIL"}.get(chk.get("pass"), "-")))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    print(f"\ncard {report.get('card')}  torch {report['versions'].get('torch')}  triton "
          f"{report['versions'].get('triton')}  vllm {report['versions'].get('vllm')}  layers {report['layers']}  "
          f"commit {str(report.get('commit'))[:12]}")
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)))
    print(f"warm_speedup {report.get('warm_speedup')}  after_import_speedup {report.get('after_import_speedup')}  "
          f"(target >= {SPEEDUP_TARGET})  overall {'PASS' if report.get('pass') else 'FAIL'}")


def summarize(report: dict[str, Any]) -> None:
    """Top-level figures (compile seconds, speedups, pass) from the starts and checks recorded."""
    starts, checks = report.get("starts", {}), report.get("checks", {})
    if "warm" not in starts or "cold" not in starts:
        return
    cold, warm = starts["cold"], starts["warm"]
    report["cold_compile_s"], report["warm_compile_s"] = cold.get("compile_s"), warm.get("compile_s")
    report["warm_speedup"] = checks.get("warm", {}).get("speedup")
    if "after_import" in starts:
        report["after_import_compile_s"] = starts["after_import"].get("compile_s")
        report["after_import_speedup"] = checks.get("after_import", {}).get("speedup")
        report.pop("missing_phases", None)  # set by an earlier call, before the import start ran
    else:
        report["missing_phases"] = ["after_import"]
    report["init_speedup"] = (round(cold["init_s"] / warm["init_s"], 2)
                              if cold.get("init_s") and warm.get("init_s") else None)
    report["pass"] = "after_import" in starts and all(c.get("pass") for c in checks.values())


def main_parent(args: argparse.Namespace) -> int:
    from vllm_census import card_slug, environment  # same folder: card, versions, commit

    report: dict[str, Any] = environment()
    report.update(layers=args.layers, quick=args.quick, model=dict(LLAMA3_8B, num_hidden_layers=args.layers),
                  starts={}, checks={}, cli={})
    name = f"cache_{card_slug(report['card'])}.json"
    out = Path(args.out) if args.out else ROOT / "benchmarks" / "results" / name
    if out.is_dir():  # a results folder (as the other benchmarks take), not a file name
        out = out / name
    out.parent.mkdir(parents=True, exist_ok=True)
    root = Path(args.root or tempfile.mkdtemp(prefix="tri_cache_bench_"))
    phases = args.phases.split(",")
    if "cold" not in phases:  # resuming (each call <= 10 min): earlier starts from --out, same --root
        if not (args.root and out.exists()):
            raise SystemExit("--phases without 'cold' needs --root (kept by the earlier call) and its --out file")
        earlier = json.loads(out.read_text())
        for k in ("starts", "checks", "cli"):
            report[k].update(earlier.get(k, {}))
    model_dir = root / "model"
    model_dir.mkdir(parents=True, exist_ok=True)
    (model_dir / "config.json").write_text(json.dumps(dict(LLAMA3_8B, num_hidden_layers=args.layers), indent=1))
    report["cache_root"] = str(root)

    def save() -> None:
        summarize(report)  # top-level figures from whatever phases have run (a cut-off run keeps them)
        out.write_text(json.dumps(report, indent=1, default=str))

    try:
        if "cold" in phases:
            report["starts"]["cold"] = run_start(args, "cold", root, model_dir)
            save()
        if "warm" in phases:
            report["starts"]["warm"] = run_start(args, "warm", root, model_dir)
            report["checks"]["warm"] = warm_checks(report["starts"]["cold"], report["starts"]["warm"])
            save()
        if "roundtrip" in phases and not args.quick:
            archive = root / "exported_cache.tar.gz"
            report["cli"]["info_before"] = cli(root, "info")
            key = root / "cache.key"  # compiled artifacts are imported only from a signed archive
            key.write_bytes(os.urandom(32).hex().encode())
            report["cli"]["export"] = cli(root, "export", str(archive), "--key-file", str(key))
            report["archive_bytes"] = archive.stat().st_size if archive.exists() else None
            report["cli"]["clear"] = cli(root, "clear", "--vllm")
            left = {"tri": tree_files(root / "tri"),
                    "vllm_torch_compile_cache": tree_files(root / "vllm" / "torch_compile_cache")}
            report["files_left_after_clear"] = left
            report["cli"]["import"] = cli(root, "import", str(archive), "--trust", "--key-file", str(key))
            report["starts"]["after_import"] = run_start(args, "after_import", root, model_dir)
            chk = warm_checks(report["starts"]["cold"], report["starts"]["after_import"])
            chk["clear_emptied_caches"] = sum(left.values()) == 0
            chk["cli_ok"] = all(report["cli"][k]["rc"] == 0 for k in ("export", "clear", "import"))
            chk["pass"] = chk["pass"] and chk["clear_emptied_caches"] and chk["cli_ok"]
            report["checks"]["after_import"] = chk
    finally:
        save()
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    if "warm" not in report["starts"]:
        print(f"\nwrote {out} (partial: run the remaining phases with the same --root and --out)")
        return 0
    print_table(report)
    print(f"\nwrote {out}")
    return 0 if report.get("pass") else 1


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--layers", type=int, default=32, help="decoder layers (Llama-3-8B: 32)")
    p.add_argument("--quick", action="store_true", help="cold + warm only (no export/clear/import round)")
    p.add_argument("--out", default=None, help="results file or folder")
    p.add_argument("--root", default=None, help="cache root to use (default: a fresh temporary folder)")
    p.add_argument("--keep", action="store_true", help="keep the cache root afterwards")
    p.add_argument("--phases", default="cold,warm,roundtrip",
                   help="subset to run now, e.g. 'cold' then 'warm,roundtrip' in a second call with the "
                        "same --root/--out (--keep on the first)")
    p.add_argument("--timeout", type=int, default=540, help="seconds per start")
    p.add_argument("--max-model-len", type=int, default=2048)
    p.add_argument("--max-num-seqs", type=int, default=64)
    p.add_argument("--gpu-memory-utilization", type=float, default=0.85)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--phase", help=argparse.SUPPRESS)
    p.add_argument("--model-dir", help=argparse.SUPPRESS)
    p.add_argument("--worker-out", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        return main_worker(args)
    return main_parent(args)


if __name__ == "__main__":
    sys.exit(main())
