#!/usr/bin/env python3
"""End to end on one GPU (or N with ``--tp N``): vLLM with ``{"backend": "tri_inductor"}`` vs
vLLM's own compile path and vLLM as a user gets it (FlashAttention-3).

Model: Llama-3-8B shape (hidden 4096, 32 layers, 32/8 heads, head_dim 128, intermediate 14336,
vocab 128256, bf16), a ``config.json`` with ``load_format="dummy"`` (random weights), token-id
prompts (no tokenizer).  Two engines, everything equal but the compile path:

* ``tri_inductor``: ``compilation_config={"backend": "tri_inductor"}`` (the plugin sets
  TRITON_ATTN, custom_ops none, native IR ops; the effective configs of both engines are
  recorded and compared, differences listed in the JSON under ``settings_differences``);
* ``inductor`` (vLLM's compile path, the baseline): ``backend "inductor"``, custom_ops
  ``["none"]``, ``attention_backend="TRITON_ATTN"``, ``ir_op_priority`` native;
* ``default`` (vLLM as shipped on an H100/H200, ``--baseline default|both``): ``backend
  "inductor"``, ``attention_backend="FLASH_ATTN"`` (FA3; ``export GPU_ENV_FA3=1; source .gpu-env/setup.sh``
  provides vLLM's real FA3 extension), everything else vLLM's defaults except what the environment
  cannot provide: rms_norm ``native`` (vLLM's CUDA rms_norm is absent; native is also vLLM's own
  default with backend inductor), ``VLLM_USE_FLASHINFER_SAMPLER=0`` (no FlashInfer), the FA
  backend's CUDA KV-cache write served by vLLM's Triton kernel of the same signature (the
  ``.gpu-env`` stub does that only in a process with ``GPU_ENV_FA3=1``: this engine's worker; the
  others get the variable removed, so a CUDA KV write there would still raise).  Recorded under
  ``settings.default_engine``.  At start-up each engine generates greedy tokens for 8 fixed
  prompts: the JSON's ``fa3_check`` holds FA3's availability and the agreement of the FA3
  engine's tokens with the TRITON_ATTN engines' (same dummy weights: same seed);
* ``--baseline``: ``compile`` (tri_inductor vs inductor), ``default`` (vs default) or ``both``
  (the default: three engines); ``--backends`` names the engines (and their order) directly;
* ``--tp N``: ``tensor_parallel_size=N`` for every engine, with vLLM's custom all-reduce off
  (``disable_custom_all_reduce=True``: a CUDA extension op); the file is
  ``e2e_<card>_<model>[_L<n>]_tp<N>.json``.  Under TP>1 the GPU work runs in vLLM's worker
  processes: the profiled runs and our audit (taken in the engine's front-end process) see none
  of it and say so;
* all: cascade attention off (``disable_cascade_attn=True``, vLLM 0.26's default, explicit:
  its merge step may be the CUDA ``merge_attn_states`` the environment lacks), max_model_len 4096, max_num_seqs 64, max_num_batched_tokens 8192, prefix caching off,
  the same KV-cache size (``kv_cache_memory_bytes``, so that neither backend gets more KV blocks
  because its activations are smaller), CUDA graphs and async scheduling at vLLM's defaults.

Workloads (all requests submitted at once to ``LLM.generate``, greedy, ``ignore_eos``):
decode1/16/64 (batch 1, 16, 64; 128 in / 512 out), prefill8 (batch 8; 2048 in / 16 out),
mixed (64 requests, log-uniform 32..1536 in and 16..512 out, fixed lengths).  ``--quick``
cuts decode outputs to 128 and mixed outputs to 16..128.

**Three engines** (``--baseline both``): side by side when the estimated footprint of all of them
fits the card (``memory_plan``: weights/TP + KV cache + 4 GiB each; ``gpu_memory_utilization`` is
then chosen so that the last engine passes vLLM's start-up free-memory check), else sequentially.
Repetition order generalises ABBA: rep r runs the engines rotated by r//2, reversed on odd r
(ABC, CBA, BCA, ACB, CAB, BAC), so every pair of reps is a palindrome and linear drift cancels
for each engine.

**Alternation: both engines resident, side by side.**  Each backend runs in its own process
(``--worker``), started once, kept alive for every workload, and serves requests sent over a
pipe.  Both fit on one 80 GB card (8B bf16 weights ~15 GiB + a fixed 10 GiB KV cache + ~3 GiB
activations/graphs each; ``gpu_memory_utilization`` 0.42 only passes vLLM's start-up free-memory
check).  They start one after the other (vLLM profiles memory at start-up and assumes no other
process changes its usage meanwhile), then each workload runs as warm-up A, warm-up B, then
repetitions (3 by default) in ABBA order (rep 0: A,B; rep 1: B,A; ...), so slow drift (clocks, temperature)
cancels and both see the same machine state.  A workload whose reps are short (a small model's
run lasts a fraction of a second, and its host-bound steps move 20-50% between reps) gets more
reps, a palindromic pair at a time, until each engine has measured ``--min-measured-s`` (6 s) of
it, at most 4x ``--reps``, within the budget.  Why not A-then-B-then-A: that needs three
engine start-ups (~2 min each with compile and CUDA-graph capture), which the 9-minute budget
cannot hold, and still compares numbers minutes apart.  Fallback (automatic when the second
engine fails to start for lack of memory, or ``--mode sequential``): A alone for all workloads,
B alone, then A again (warm cache) for the first workload as a drift check.

**TTFT and ITL: per-token arrival times from the output processor.**  vLLM 0.26's
``RequestOutput.metrics`` (``RequestStateStats``) is filled only when log stats are on
(``LLM`` turns them off by default) and holds first/last token timestamps, not per-token
times.  So the worker (engine in-process, ``VLLM_ENABLE_V1_MULTIPROCESSING=0``) wraps
``OutputProcessor.process_outputs`` and records, for every engine step, the time each request
got its new tokens: TTFT = first token time - ``generate()`` call; ITL = gaps between a
request's consecutive tokens (every gap of every request, pooled; median and p90).  If that hook
sees no tokens (vLLM changed), the fallback is TTFT from a 1-token run and ITL per request from
``(total - TTFT) / (n - 1)``; the JSON says which method (``method``: ``hook`` / ``fallback``).
Output tokens/s = output tokens / wall time of ``generate()``.

Start times (``engines.<backend>.cold_start_s``): process start to engine ready, with empty
vLLM/Inductor/Triton caches (fresh cache dirs), i.e. including compile and CUDA-graph capture.
``--starts`` adds the warm start (a new process, same cache dirs) for each backend at the end.
``--concurrent-starts`` (side by side) starts every engine at once: the run's start-up costs the
slowest start instead of their sum, for throughput runs on a device-time budget; those start
times share the CPUs and are kept as ``concurrent_start_s``, never as cold starts.

Workloads below 1.0x throughput or above 1.0x median ITL get a short profiled run on both
engines (``--profile below``): GPU time per kernel class and the host gap, and a one-line reason.

Budget: the whole run stays under ``--budget-s`` (default 520 s): repetitions, profiles and warm
starts that would not fit are skipped (and listed under ``skipped``); partial results are
written after every workload.

GPU command (the lead's; from the repo root, carrying ``.gpu-env``; the JSON and the engines'
logs (``e2e_logs/``) come back through $OUT; copy the JSON to benchmarks/results/):

    export GPU_ENV_FA3=1 && source .gpu-env/setup.sh && python3 -m pip install -q --no-deps --no-build-isolation \\
      --no-index -e . && GIT_COMMIT=<commit> python3 benchmarks/e2e_vllm.py --out $OUT --starts --budget-s 500

(``GPU_ENV_FA3=1`` unpacks vLLM's FA3 extension for the default engine and, exported, lets its
worker write its KV cache; without it, in ``.gpu-env``, the default engine is not started (the
record says why) and the run goes on against the compile path; ``--baseline default`` stops.)

Exit status: 0 every workload meets its targets (against the compile path: >= 1.0x throughput and
<= 1.0x median ITL; against the default path: throughput >= 1.0x, >= 0.95x on prefill8); 1
otherwise (results written); 2 our engine did not start (log tail in the JSON and on stdout).

CPU check: ``python3 benchmarks/e2e_vllm.py --dry-run`` prints the plan and writes the config.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _vllm_common as C  # noqa: E402
import models  # noqa: E402
from _host_profile import diff as python_diff, python_profile  # noqa: E402
from _meta import package_hash, versions  # noqa: E402

STACK_SAMPLER = Path(__file__).resolve().parent / "stack_sampler"  # --sample-stacks: its sitecustomize
OURS, BASE, DEFAULT = "tri_inductor", "inductor", "default"
LABEL = {OURS: "tri_inductor", BASE: "vLLM-compile", DEFAULT: "vLLM-default"}
BASELINES = {"compile": [BASE], "default": [DEFAULT], "both": [BASE, DEFAULT]}
# Issue 26's acceptance against the default path, by workload group (throughput ratio).
DEFAULT_TARGET = {"prefill-heavy": 0.95}
ENGINE_OVERHEAD_GIB = 4.0  # activations, CUDA graphs, allocator slack per engine (seen: ~3 GiB)
CHECK_PROMPTS, CHECK_TOKENS = 8, 32  # the start-up greedy check (FA3 vs TRITON_ATTN)
DEFAULT_WORKLOADS = "decode1,decode16,decode64,prefill8,mixed"
MAX_MODEL_LEN = 4096
MAX_NUM_SEQS = 64
MAX_BATCHED_TOKENS = 8192
MIN_MEASURED_S = 6.0  # --min-measured-s: seconds of a workload each engine measures at least
MAX_REPS_FACTOR = 4   # ... with at most this many times --reps
RESERVE_S = 35.0  # kept back from the budget for stopping engines and writing results (at most 10%)


# ======================================================================= plan


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=models.DEFAULT_MODEL, choices=sorted(models.E2E_MODELS),
                   help="model shape from benchmarks/models.py (dummy weights)")
    p.add_argument("--layers", type=int, default=None, help="decoder layers (default: the model's)")
    p.add_argument("--vocab", type=int, default=None, help="vocab size (default 128256)")
    p.add_argument("--workloads", default=DEFAULT_WORKLOADS,
                   help=f"comma-separated subset of {DEFAULT_WORKLOADS}")
    p.add_argument("--quick", action="store_true", help="shorter outputs (decode 128, mixed 16..128) and 2 reps")
    p.add_argument("--reps", type=int, default=None, help="measured repetitions per backend (default 3; 2 with --quick)")
    p.add_argument("--min-measured-s", type=float, default=MIN_MEASURED_S,
                   help="after --reps, more reps (in pairs, the same palindromic order) while an engine has "
                        f"measured less than this many seconds of a workload, up to {MAX_REPS_FACTOR}x --reps "
                        "and within the budget: a small model's reps last a fraction of a second and its "
                        "median of 2-4 is noise (0: exactly --reps)")
    p.add_argument("--baseline", choices=sorted(BASELINES), default="both",
                   help="compile: vLLM's compile path (TRITON_ATTN); default: vLLM as shipped (FLASH_ATTN, "
                        "FA3); both (three engines)")
    p.add_argument("--backends", default=None,
                   help=f"engines, comma-separated, among {OURS},{BASE},{DEFAULT} (default: {OURS} + the "
                        "--baseline ones); order = start order and rep order")
    p.add_argument("--tp", type=int, default=1, help="tensor_parallel_size of every engine (custom all-reduce off)")
    p.add_argument("--mode", choices=("side-by-side", "sequential"), default="side-by-side")
    p.add_argument("--gpu-util", type=float, default=None,
                   help="gpu_memory_utilization per engine, side by side (default: from the memory plan, <= 0.42)")
    p.add_argument("--gpu-mem-gib", type=float, default=None,
                   help="memory per GPU for the memory plan (default: nvidia-smi; 140 if unknown)")
    p.add_argument("--solo-gpu-util", type=float, default=0.85, help="gpu_memory_utilization, sequential mode")
    p.add_argument("--kv-cache-gib", type=float, default=10.0, help="KV cache per engine (kv_cache_memory_bytes)")
    p.add_argument("--starts", action="store_true", help="also measure warm start (new process, warm caches)")
    p.add_argument("--concurrent-starts", action="store_true",
                   help="side by side: start every engine at once (shorter run; their start times, contended, "
                        "are recorded as concurrent_start_s, not cold starts)")
    p.add_argument("--profile", choices=("below", "all", "none"), default="below",
                   help="profiled run for workloads below 1.0x (or all, or none)")
    p.add_argument("--profile-out-cap", type=int, default=64, help="output tokens per request in profiled runs")
    p.add_argument("--sample-stacks", type=Path, default=None, metavar="DIR",
                   help="sample every engine process's main-thread stack every 0.2 s into DIR/<backend>_<start>/ "
                        "(benchmarks/stack_sampler; summarise with benchmarks/stack_report.py)")
    p.add_argument("--budget-s", type=float, default=520.0, help="wall-time budget of the whole run")
    p.add_argument("--startup-timeout", type=float, default=330.0, help="seconds for one engine to be ready")
    p.add_argument("--run-timeout", type=float, default=180.0, help="seconds for one generate() call")
    p.add_argument("--keep-going", action="store_true", help="run the baseline even if our engine fails to start")
    p.add_argument("--out", default=None, help="results folder (default $OUT if set, else benchmarks/results)")
    p.add_argument("--name", default=None, help="results file name (default e2e_<card>[_L<layers>].json)")
    p.add_argument("--model-dir", default=None, help="where config.json goes (default a temp dir)")
    p.add_argument("--dry-run", action="store_true", help="print the plan, write the model config, run nothing")
    p.add_argument("--reclassify", metavar="FILE", default=None,
                   help="class the profiled kernels of a results JSON again (no GPU) and rewrite its reasons")
    # worker (internal)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--backend", help=argparse.SUPPRESS)
    p.add_argument("--engine-kwargs", help=argparse.SUPPRESS)
    p.add_argument("--cmd-fd", type=int, help=argparse.SUPPRESS)
    p.add_argument("--res-fd", type=int, help=argparse.SUPPRESS)
    p.add_argument("--exit-after-ready", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.reps is None:
        args.reps = 2 if args.quick else 3
    if args.reps < 1:
        p.error("--reps must be >= 1")
    if args.layers is None:
        args.layers = models.E2E_MODELS[args.model]["num_hidden_layers"]
    if args.layers < 1:
        p.error("--layers must be >= 1")
    if args.tp < 1:
        p.error("--tp must be >= 1")
    if args.backends is None:
        args.backends = ",".join([OURS] + BASELINES[args.baseline])
    backends = args.backends.split(",")
    if not args.worker and (not set(backends) <= set(LABEL) or len(set(backends)) != len(backends)):
        p.error(f"--backends: among {', '.join(LABEL)}, each once")
    for w in args.workloads.split(","):
        if w not in C.WORKLOADS:
            p.error(f"unknown workload {w!r}; known: {', '.join(C.WORKLOADS)}")
    args.default_skipped = None
    if not args.worker and not args.dry_run and DEFAULT in backends and not os.environ.get(FAKE_ENV):
        why = C.fa3_env_problem()
        if why and len(backends) == 2:
            p.error(f"the vLLM-default engine cannot run: {why}")
        if why:  # the other baseline still runs; the record says why this one did not
            args.default_skipped = why
            args.backends = ",".join(b for b in backends if b != DEFAULT)
            print(f"[e2e] vLLM-default not run: {why}", flush=True)
    return args


NATIVE_NORMS = {"rms_norm": ["native"], "fused_add_rms_norm": ["native"]}


def engine_kwargs(backend: str, model_dir: str, gpu_util: float, kv_cache_gib: float, tp: int = 1
                  ) -> dict[str, Any]:
    kw: dict[str, Any] = dict(
        model=str(model_dir), load_format="dummy", skip_tokenizer_init=True, dtype="bfloat16", seed=0,
        max_model_len=MAX_MODEL_LEN, max_num_seqs=MAX_NUM_SEQS, max_num_batched_tokens=MAX_BATCHED_TOKENS,
        enable_prefix_caching=False, gpu_memory_utilization=gpu_util,
        kv_cache_memory_bytes=int(kv_cache_gib * 2**30), disable_cascade_attn=True)
    if tp > 1:  # vLLM's custom all-reduce is a CUDA extension op: NCCL instead
        kw.update(tensor_parallel_size=tp, disable_custom_all_reduce=True)
    if backend == OURS:
        kw["compilation_config"] = {"backend": "tri_inductor"}
    elif backend == BASE:  # vLLM's own compile path, runnable without vLLM's CUDA ops
        kw["compilation_config"] = {"backend": "inductor", "custom_ops": ["none"]}
        kw["attention_backend"] = "TRITON_ATTN"
        kw["ir_op_priority"] = dict(NATIVE_NORMS)
    elif backend == DEFAULT:  # vLLM as shipped: custom_ops left to vLLM (it picks "none" with inductor)
        kw["compilation_config"] = {"backend": "inductor"}
        kw["attention_backend"] = "FLASH_ATTN"
        kw["ir_op_priority"] = dict(NATIVE_NORMS)  # vLLM's default with inductor too; its CUDA one is absent
    else:
        raise ValueError(backend)
    return kw


def _torch_moe_note() -> str:
    from _torch_moe_ops import NOTE

    return NOTE


DEFAULT_ENGINE_NOTE = {
    "attention": "FLASH_ATTN (FlashAttention-3, vLLM 0.26's own extension)",
    "compile": "backend inductor, custom_ops left to vLLM (none with inductor), CUDA graphs at vLLM's defaults",
    "deviations_from_stock": [
        "rms_norm / fused_add_rms_norm: native (vLLM's CUDA rms_norm is not in this environment; native is "
        "also vLLM's default priority with backend inductor)",
        "sampler: VLLM_USE_FLASHINFER_SAMPLER=0 (FlashInfer is not installed)",
        "KV-cache write: vLLM's Triton triton_reshape_and_cache_flash in place of the CUDA "
        "reshape_and_cache_flash (.gpu-env stub with GPU_ENV_FA3=1, this engine's worker only)",
        "VLLM_USE_V2_MODEL_RUNNER=0 (the v2 runner needs a CUDA op)"],
    "benchmark_wide": "as every engine here: prefix caching off, fixed KV-cache size, disable_cascade_attn=True "
                      "(vLLM 0.26's default), max_num_seqs / max_num_batched_tokens / max_model_len as settings"}


def rep_orders(backends: list[str], reps: int) -> list[list[str]]:
    """Engine order per repetition. Two engines: ABBA (AB, BA, AB, ...). More: rotated by r//2 and
    reversed on odd r (ABC, CBA, BCA, ACB, CAB, BAC): each pair of reps is a palindrome, so a
    linear drift adds the same to every engine, and over 2n reps each engine holds every slot."""
    n = len(backends)
    out = []
    for r in range(reps):
        if n <= 2:
            seq = list(backends)
        else:
            k = (r // 2) % n
            seq = backends[k:] + backends[:k]
        out.append(seq if r % 2 == 0 else seq[::-1])
    return out


def memory_plan(cfg: dict[str, Any], n_engines: int, kv_cache_gib: float, tp: int, total_gib: float,
                gpu_util: float | None = None) -> dict[str, Any]:
    """Whether ``n_engines`` fit one card side by side, and the ``gpu_memory_utilization`` that
    lets the last one pass vLLM's start-up check (free memory >= utilization x total; with
    ``kv_cache_memory_bytes`` set that check is all the utilization does)."""
    per = C.param_count(cfg) * 2 / 2**30 / tp + kv_cache_gib + ENGINE_OVERHEAD_GIB
    free_last = total_gib - (n_engines - 1) * per  # free memory when the last engine starts
    fits = free_last >= per + 1.0
    util = gpu_util
    if util is None:
        util = max(0.05, min(0.42, int(100 * (free_last - 2.0) / total_gib) / 100))
    return {"per_engine_gib": round(per, 2), "engines": n_engines, "total_gib": round(total_gib, 2),
            "free_when_last_starts_gib": round(free_last, 2), "fits_side_by_side": fits, "gpu_util": util}


def default_out_dir() -> Path:
    out = os.environ.get("OUT")
    return Path(out) if out and os.path.isdir(out) else C.RESULTS_DIR


def build_plan(args: argparse.Namespace, total_gib: float | None = None) -> dict[str, Any]:
    cfg = models.config(args.model, args.layers, args.vocab)
    specs = [C.workload_spec(w, args.quick) for w in args.workloads.split(",")]
    backends = args.backends.split(",")
    weights_gib = C.param_count(cfg) * 2 / 2**30
    # kv_cache_memory_bytes is per worker; each holds its share of the KV heads
    kv_tokens = int(args.kv_cache_gib * 2**30 // (C.kv_bytes_per_token(cfg) / args.tp))
    mem = memory_plan(cfg, len(backends), args.kv_cache_gib, args.tp, total_gib or 140.0, args.gpu_util)
    mem["total_gib_source"] = "given" if total_gib else "assumed (H200)"
    mode = args.mode
    if mode == "side-by-side" and len(backends) > 1 and not mem["fits_side_by_side"]:
        mode = "sequential (planned: the engines do not fit side by side)"
    work = []
    for s in specs:
        p_tok, o_tok = C.workload_tokens(s)
        peak_kv = sum(p + o for p, o in C.request_lengths(s))
        work.append({"name": s["name"], "group": s["group"], "requests": s["n"], "prompt_len": s["prompt_len"],
                     "out_len": s["out_len"], "prompt_tokens": p_tok, "output_tokens": o_tok,
                     "kv_tokens_needed": peak_kv, "fits_kv": peak_kv <= kv_tokens})
    util = mem["gpu_util"] if mode == "side-by-side" else args.solo_gpu_util
    return {"model": args.model, "model_config": cfg, "weights_gib": round(weights_gib, 2), "kv_cache_gib": args.kv_cache_gib,
            "kv_cache_tokens": kv_tokens, "mode": mode, "backends": backends, "reps": args.reps,
            "min_measured_s": args.min_measured_s, "max_reps_factor": MAX_REPS_FACTOR,
            "rep_order": rep_orders(backends, args.reps), "quick": args.quick, "workloads": work, "specs": specs,
            "baseline": args.baseline, "tp": args.tp, "memory_plan": mem, "side_by_side_util": mem["gpu_util"],
            "engine_kwargs": {b: engine_kwargs(b, "<model_dir>", util, args.kv_cache_gib, args.tp) for b in backends},
            "budget_s": args.budget_s, "starts": args.starts, "profile": args.profile,
            "concurrent_starts": bool(args.concurrent_starts and mode == "side-by-side"),
            "estimate_s": estimate_seconds(cfg, specs, args)}


def estimate_seconds(cfg: dict[str, Any], specs: list[dict[str, Any]], args: argparse.Namespace) -> dict[str, float]:
    """Very rough wall-time guide for an H100 (weights read once per decode step at ~2.5 TB/s,
    prefill at ~500 TFLOP/s, plus a fixed per-step host cost); startup from what was seen."""
    wbytes = C.param_count(cfg) * 2
    params = C.param_count(cfg)
    per_backend = 0.0
    for s in specs:
        lens = C.request_lengths(s)
        steps = max(o for _, o in lens)
        t = steps * (wbytes / 2.5e12 + 1.5e-3) + 2 * params * sum(p for p, _ in lens) / 500e12
        per_backend += t * (args.reps + 0.2)  # + a short warm-up
    backends = args.backends.split(",")
    starts = {b: startup_seconds(b, args.layers) for b in backends}
    n = len(backends)
    start_wall = max(starts.values()) if getattr(args, "concurrent_starts", False) else sum(starts.values())
    total = start_wall + n * per_backend + (0.6 * sum(starts.values()) if args.starts else 0)
    return {"startups": {b: round(t) for b, t in starts.items()}, "workloads_per_backend": round(per_backend),
            "total": round(total)}


def startup_seconds(backend: str, layers: int) -> float:
    """Cold start of one engine, near the top of what an H200 showed (aa99ef8, machines differ by
    ~1.5x): vLLM 73-88 s at 16-32 layers; ours 104-178 s (our patterns' compile and the GEMM
    tuning, ~60 s at Llama-3-8B)."""
    base = 50 + 35 * layers / 32
    return base + (60 + 45 * layers / 32 if backend == OURS else 0)


def reserve_s(budget_s: float) -> float:
    """Seconds of the budget kept back for stopping engines and writing results."""
    return min(RESERVE_S, 0.1 * budget_s)


def budget_problem(plan: dict[str, Any], budget_s: float) -> str | None:
    """Why ``budget_s`` cannot hold even the engines' cold starts (a run that would only start
    them and skip every workload), or None."""
    starts = plan["estimate_s"]["startups"]
    usable = budget_s - reserve_s(budget_s)
    need = max(starts.values()) if plan.get("concurrent_starts") else sum(starts.values())
    if need <= usable:
        return None
    each = ", ".join(f"{b} ~{t} s" for b, t in starts.items())
    return (f"--budget-s {budget_s:.0f} leaves ~{usable:.0f} s, and the engines' cold starts alone take ~{need:.0f} s "
            f"({each}): every workload would be skipped. Raise --budget-s (to ~{need / 0.8:.0f} s or more), "
            f"or run fewer backends (--baseline compile) or layers (--layers)")


def print_plan(plan: dict[str, Any], model_dir: str, out_path: Path) -> None:
    cfg = plan["model_config"]
    print(f"e2e plan: {plan['model']} shape, {cfg['num_hidden_layers']} layers, hidden {cfg['hidden_size']}, "
          f"heads {cfg['num_attention_heads']}/{cfg['num_key_value_heads']}, intermediate "
          f"{cfg['intermediate_size']}, vocab {cfg['vocab_size']}, bf16 dummy weights "
          f"({plan['weights_gib']} GiB/engine)")
    print(f"model config: {model_dir}/config.json")
    print(f"mode {plan['mode']}; backends {plan['backends']}; reps {plan['reps']} "
          f"(order {plan['rep_order']}); KV cache {plan['kv_cache_gib']} GiB = {plan['kv_cache_tokens']} tokens/engine"
          + ("" if plan["tp"] == 1 else f"; tensor parallel {plan['tp']} (custom all-reduce off)"))
    m = plan["memory_plan"]
    print(f"memory plan: ~{m['per_engine_gib']} GiB/engine/GPU, {m['engines']} engines on {m['total_gib']} GiB "
          f"({m['total_gib_source']}): {'fit' if m['fits_side_by_side'] else 'do NOT fit'} side by side; "
          f"gpu_memory_utilization {m['gpu_util']}")
    for b, kw in plan["engine_kwargs"].items():
        print(f"  {LABEL[b]:13s} LLM({json.dumps(kw)})")
    print(f"{'workload':10s}{'group':15s}{'reqs':>5s}{'in':>12s}{'out':>12s}{'in tok':>8s}{'out tok':>8s}{'KV tok':>8s}")
    for w in plan["workloads"]:
        print(f"{w['name']:10s}{w['group']:15s}{w['requests']:5d}{str(w['prompt_len']):>12s}{str(w['out_len']):>12s}"
              f"{w['prompt_tokens']:8d}{w['output_tokens']:8d}{w['kv_tokens_needed']:8d}"
              f"{'' if w['fits_kv'] else '  (exceeds KV: preemption)'}")
    e = plan["estimate_s"]
    print(f"rough estimate: start-up {', '.join(f'{b} ~{t} s' for b, t in e['startups'].items())}, "
          f"workloads ~{e['workloads_per_backend']} "
          f"s/backend, total ~{e['total']} s (budget {plan['budget_s']:.0f} s); warm starts: {plan['starts']}; "
          f"profiles: {plan['profile']}")
    print(f"results -> {out_path}")


# ======================================================================= parent: engines


STARTED: list["Engine"] = []


class Engine:
    """One backend's worker process: an ``LLM`` kept alive, serving JSON requests over a pipe."""

    def __init__(self, backend: str, kwargs: dict[str, Any], cache_dir: Path, log_path: Path):
        self.backend, self.kwargs, self.cache_dir, self.log_path = backend, kwargs, cache_dir, log_path
        self.proc: subprocess.Popen | None = None
        self.start_index = 0
        self.sample_stacks: Path | None = None  # --sample-stacks: this engine's folder of samples
        self.ready: dict[str, Any] | None = None
        self.error: str | None = None
        self.start_s: float | None = None
        self._buf = b""
        self._cmd = None
        self._res_fd: int | None = None
        self._log = None

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        # every cache an engine fills, ours (the tuning DB) too: a cold start is cold even on a
        # machine an earlier run left its caches on
        for var, sub in (("VLLM_CACHE_ROOT", "vllm"), ("TORCHINDUCTOR_CACHE_DIR", "inductor"),
                         ("TRITON_CACHE_DIR", "triton"), ("TRI_INDUCTOR_CACHE_DIR", "tri_inductor")):
            env[var] = str(self.cache_dir / sub)
        env["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"  # engine in the worker: our hook and profiler see it
        env.setdefault("VLLM_USE_V2_MODEL_RUNNER", "0")
        env.setdefault("VLLM_USE_FLASHINFER_SAMPLER", "0")
        env.setdefault("PYTHONUNBUFFERED", "1")
        env["TRI_E2E_START"] = str(self.start_index)
        if self.sample_stacks is not None:
            env["TRI_STACK_SAMPLE_DIR"] = str(self.sample_stacks)
            env["PYTHONPATH"] = os.pathsep.join(p for p in (str(STACK_SAMPLER), env.get("PYTHONPATH")) if p)
        if self.backend != DEFAULT:
            # Only the FA3 baseline may have the stub serve the CUDA KV-cache write (setup.sh's
            # GPU_ENV_FA3=1); elsewhere a call to it must still raise.
            env.pop("GPU_ENV_FA3", None)
        return env

    def start(self, exit_after_ready: bool = False) -> None:
        STARTED.append(self)  # every engine ever started is killed at the end, whatever happened
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        cmd_r, cmd_w = os.pipe()
        res_r, res_w = os.pipe()
        argv = [sys.executable, os.path.abspath(__file__), "--worker", "--backend", self.backend,
                "--engine-kwargs", json.dumps(self.kwargs), "--cmd-fd", str(cmd_r), "--res-fd", str(res_w)]
        if exit_after_ready:
            argv.append("--exit-after-ready")
        self._log = open(self.log_path, "ab")
        self.t_popen = time.monotonic()
        self.proc = subprocess.Popen(argv, env=self.env(), stdin=subprocess.DEVNULL, stdout=self._log,
                                     stderr=subprocess.STDOUT, pass_fds=(cmd_r, res_w), start_new_session=True,
                                     cwd=str(C.ROOT))
        os.close(cmd_r)
        os.close(res_w)
        self._cmd = os.fdopen(cmd_w, "w", buffering=1)
        self._res_fd = res_r
        self._buf = b""
        self.ready, self.error, self.start_s = None, None, None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None and self.error is None

    def _recv(self, timeout: float) -> dict[str, Any] | None:
        deadline = time.monotonic() + max(0.0, timeout)
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                self.error = f"timeout after {timeout:.0f} s"
                return None
            r, _, _ = select.select([self._res_fd], [], [], min(left, 5.0))
            if not r:
                if self.proc is not None and self.proc.poll() is not None:
                    self.error = f"worker exited (rc={self.proc.returncode})"
                    return None
                continue
            chunk = os.read(self._res_fd, 1 << 20)
            if not chunk:
                rc = self.proc.wait(timeout=30) if self.proc else None
                self.error = f"worker exited (rc={rc})"
                return None
            self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        return json.loads(line)

    def wait_ready(self, timeout: float) -> bool:
        msg = self._recv(timeout)
        if msg is None or msg.get("event") != "ready":
            if msg is not None:
                self.error = msg.get("error") or f"unexpected message {str(msg)[:200]}"
            self.kill()
            return False
        self.start_s = round(time.monotonic() - self.t_popen, 2)
        self.ready = msg
        return True

    def request(self, msg: dict[str, Any], timeout: float) -> dict[str, Any]:
        if not self.alive():
            return {"ok": False, "error": self.error or "engine not running"}
        try:
            self._cmd.write(json.dumps(msg) + "\n")
            self._cmd.flush()
        except (BrokenPipeError, OSError) as e:
            self.error = f"pipe: {e!r}"
            self.kill()
            return {"ok": False, "error": self.error}
        out = self._recv(timeout)
        if out is None:
            self.kill()
            return {"ok": False, "error": self.error}
        return out

    def stop(self, timeout: float = 60.0) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            try:
                self._cmd.write(json.dumps({"cmd": "exit"}) + "\n")
                self._cmd.flush()
                self.proc.wait(timeout=timeout)
            except Exception:  # noqa: BLE001
                pass
        self.kill()

    def kill(self) -> None:
        """SIGTERM then SIGKILL the worker's process group (its own session)."""
        p = self.proc
        if p is not None and p.poll() is None:
            for sig, wait in ((signal.SIGTERM, 15), (signal.SIGKILL, 10)):
                try:
                    os.killpg(p.pid, sig)
                except (ProcessLookupError, PermissionError):
                    break
                try:
                    p.wait(timeout=wait)
                    break
                except subprocess.TimeoutExpired:
                    continue
        for f in (self._cmd,):
            try:
                f and f.close()
            except Exception:  # noqa: BLE001
                pass
        if self._res_fd is not None:
            try:
                os.close(self._res_fd)
            except OSError:
                pass
            self._res_fd = None
        self._cmd = None
        if self._log:
            self._log.close()
            self._log = None

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def log_tail(self, n: int = 4000) -> str:
        return self.log_text()[-n:]


# ======================================================================= parent: the run


def _our_env() -> dict[str, str]:
    """Our settings (``tri_inductor.envs``) the engine inherits from this environment (the cache
    folder is per engine, not a setting)."""
    from tri_inductor import envs

    return {k: os.environ[k] for k in envs.VARS if k in os.environ and k != "TRI_INDUCTOR_CACHE_DIR"}


class Runner:
    def __init__(self, args: argparse.Namespace, plan: dict[str, Any], model_dir: Path, out_dir: Path,
                 log_dir: Path, cache_root: Path):
        self.args, self.plan, self.model_dir, self.out_dir = args, plan, model_dir, out_dir
        self.saved_to: Path | None = None
        self.log_dir, self.cache_root = log_dir, cache_root
        self.t0 = time.monotonic()
        self.deadline = self.t0 + args.budget_s
        self.reserve = reserve_s(args.budget_s)
        self.n_starts: dict[str, int] = {}
        self.raw: dict[str, dict[str, list[dict[str, Any]]]] = {}  # workload -> backend -> rep results
        git = C.git_info()
        self.report: dict[str, Any] = {
            "benchmark": "e2e_vllm", "card": None, "versions": {}, "commit": git["commit"], "dirty": git["dirty"],
            "settings": {k: plan[k] for k in ("mode", "backends", "reps", "min_measured_s", "max_reps_factor",
                                               "rep_order", "quick", "kv_cache_gib", "kv_cache_tokens", "weights_gib",
                                               "budget_s", "profile", "starts", "baseline", "tp", "memory_plan")}
            | {"model": args.model, "layers": args.layers, "model_config": plan["model_config"], "engine_kwargs": plan["engine_kwargs"],
               "max_model_len": MAX_MODEL_LEN, "max_num_seqs": MAX_NUM_SEQS,
               "max_num_batched_tokens": MAX_BATCHED_TOKENS, "sampling": "greedy, ignore_eos",
               "disable_cascade_attn": True,
               "alternation": "engines resident side by side; per workload: a warm-up on each; reps in ABBA "
                              "order (3 engines: ABC, CBA, BCA, ACB, CAB, BAC)"}
            | ({"default_engine": DEFAULT_ENGINE_NOTE} if DEFAULT in plan["backends"] else {})
            | ({"moe_baseline_note": _torch_moe_note()} if models.is_moe(plan["model_config"]) else {})
            | ({"tri_inductor_env": env} if (env := _our_env()) else {})
            | ({"tp_note": "tensor_parallel_size > 1: GPU work runs in vLLM's worker processes; the profiles and "
                           "our audit are taken in the front-end process and do not see it"}
               if plan["tp"] > 1 else {}),
            "method": {"throughput": "output tokens / wall time of LLM.generate (all requests submitted at once)",
                       "ttft_itl": "per-token arrival times recorded in OutputProcessor.process_outputs "
                                   "(hook); TTFT from the generate() call; ITL = every gap between a request's "
                                   "consecutive tokens, pooled over requests and reps",
                       "ratios": "throughput_ratio = ours / vLLM-compile tokens/s (median over reps); "
                                 "itl_ratio = ours / vLLM-compile median ITL; ttft_ratio likewise; the same "
                                 "with suffix _vs_default against vLLM's default engine (FLASH_ATTN, FA3)",
                       "fa3_check": "each engine's greedy tokens on 8 fixed prompts x 32 tokens at start-up; "
                                    "agreement = positions equal before each sequence's first divergence",
                       "steps": "engine steps recovered from the arrival times (one step's outputs arrive "
                                "together): decode batch = requests that got a token; equal_batch_step_ratio "
                                "= ours / vLLM-compile median step gap at equal batch sizes (geometric mean, "
                                "weighted by step counts, last rep): separates slower steps from a schedule "
                                "that decodes in larger batches"},
            "engines": {}, "workloads": {}, "skipped": [], "errors": [], "complete": False}
        self.check_tokens: dict[str, dict[str, Any]] = {}  # backend -> start-up greedy tokens

    # ------------------------------------------------------------------ helpers
    def left(self) -> float:
        return self.deadline - time.monotonic()

    def note_skip(self, what: str) -> None:
        print(f"[e2e] SKIP {what} (budget: {self.left():.0f} s left)", flush=True)
        self.report["skipped"].append(what)

    def path(self) -> Path:
        """e2e_<card>[_L<layers>].json once the card is known (an engine is ready), before that
        e2e_partial[...].json."""
        if self.args.name:
            return self.out_dir / self.args.name
        card = self.report.get("card")
        return self.out_dir / f"e2e_{C.card_slug(card) if card else 'partial'}{result_suffix(self.args)}.json"

    def save(self) -> Path:
        self.report["wall_s"] = round(time.monotonic() - self.t0, 1)
        path = self.path()
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.report, indent=1))
        tmp.replace(path)
        if self.saved_to is not None and self.saved_to != path and self.saved_to.exists():
            self.saved_to.unlink()  # the partial file, superseded
        self.saved_to = path
        return path

    def engine(self, backend: str, util: float) -> Engine:
        n = self.n_starts.get(backend, 0)
        self.n_starts[backend] = n + 1
        kw = engine_kwargs(backend, str(self.model_dir), util, self.args.kv_cache_gib, self.args.tp)
        eng = Engine(backend, kw, self.cache_root / backend, self.log_dir / f"{backend}_{n}.log")
        eng.start_index = n
        if self.args.sample_stacks is not None:
            eng.sample_stacks = self.args.sample_stacks / f"{backend}_{n}"
        return eng

    def launch(self, backend: str, util: float, what: str, exit_after_ready: bool = False) -> Engine | None:
        """Start an engine's process (not waiting for it)."""
        timeout = min(self.args.startup_timeout, self.left() - self.reserve)
        if timeout < 30:
            self.note_skip(f"{what} start of {backend}")
            return None
        eng = self.engine(backend, util)
        print(f"[e2e] starting {LABEL[backend]} ({what}, gpu util {util}, timeout {timeout:.0f} s) ...", flush=True)
        eng.start(exit_after_ready)
        return eng

    def start(self, backend: str, util: float, what: str, exit_after_ready: bool = False,
              eng: Engine | None = None) -> Engine | None:
        """Start an engine (or take ``eng``, launched already) and wait until it is ready; record
        its start time under ``what`` (``concurrent_start``: started beside others, contended)."""
        if eng is None:
            eng = self.launch(backend, util, what, exit_after_ready)
            if eng is None:
                return None
        ok = eng.wait_ready(max(30.0, min(self.args.startup_timeout, self.left() - self.reserve)))
        info = self.report["engines"].setdefault(backend, {})
        startup = C.parse_startup_log(eng.log_text())
        if ok:
            r = eng.ready
            info[f"{what}_s"] = eng.start_s
            info[f"{what}_phases"] = {"import_s": r.get("import_s"), "llm_init_s": r.get("llm_init_s"), **startup}
            if r.get("tuning") is not None:  # ours: tuning seconds and benchmarks (a warm start: 0)
                info[f"{what}_tuning"] = r["tuning"]
            if what in ("cold_start", "concurrent_start"):
                info["effective_config"] = r.get("effective_config")
                for k in ("fa3", "attention_impl", "moe_torch_ops"):
                    if r.get(k) is not None:
                        info[k] = r[k]
                if r.get("audit"):
                    info["audit"] = r["audit"]
                info["memory"] = r.get("memory")
                info["log"] = str(eng.log_path)
                if not self.report["versions"]:
                    self.report["card"] = r.get("card") or self.report["card"]
                    self.report["versions"] = r.get("versions", {})
            print(f"[e2e] {LABEL[backend]} ready in {eng.start_s:.1f} s ({what}; {startup})", flush=True)
            if exit_after_ready:
                eng.stop()
            elif what in ("cold_start", "concurrent_start") and backend not in self.check_tokens:
                self.greedy_tokens(eng)
            return eng
        tail = eng.log_tail(6000)
        info[f"{what}_error"] = eng.error
        info[f"{what}_log_tail"] = tail
        self.report["errors"].append(f"{backend} {what}: {eng.error}")
        print(f"[e2e] {LABEL[backend]} FAILED to start ({eng.error}); log tail:\n{tail[-3000:]}", flush=True)
        return None

    def greedy_tokens(self, eng: Engine) -> None:
        """The start-up check: greedy tokens for fixed prompts (FA3 vs TRITON_ATTN, same weights)."""
        timeout = min(60.0, self.left() - self.reserve)
        if timeout < 10:
            self.note_skip(f"greedy check on {eng.backend}")
            return
        r = eng.request({"cmd": "tokens", "n": CHECK_PROMPTS, "tokens": CHECK_TOKENS}, timeout)
        if r.get("ok"):
            self.check_tokens[eng.backend] = r
        else:
            self.report["errors"].append(f"{eng.backend} greedy check: {r.get('error')}")
        self.fa3_check()

    def fa3_check(self) -> None:
        """``report["fa3_check"]``: FA3's availability in the default engine and greedy agreement
        of every pair of engines that both ran the start-up check."""
        eng = self.report["engines"]
        out: dict[str, Any] = {"fa3": (eng.get(DEFAULT) or {}).get("fa3"),
                               "attention_impl": {b: e.get("attention_impl") for b, e in eng.items()
                                                  if e.get("attention_impl") is not None}}
        pairs = [(DEFAULT, BASE), (DEFAULT, OURS), (OURS, BASE)]
        out["agreement"] = {f"{a}_vs_{b}": C.greedy_agreement(self.check_tokens[a]["tokens"],
                                                             self.check_tokens[b]["tokens"],
                                                             self.check_tokens[b].get("top2_gap"))
                            for a, b in pairs if a in self.check_tokens and b in self.check_tokens}
        fa3 = out["fa3"] or {}
        ref = out["agreement"].get(f"{DEFAULT}_vs_{BASE}") or out["agreement"].get(f"{DEFAULT}_vs_{OURS}")
        out["fa3_available"] = fa3.get("FA3_AVAILABLE")
        out["fa3_tokens_equal_triton_attn"] = None if ref is None else ref["sequences_equal"] == ref["sequences"]
        self.report["fa3_check"] = out

    def run_one(self, eng: Engine, spec: dict[str, Any], seed: int, tag: str, out_cap: int | None = None
                ) -> dict[str, Any]:
        timeout = min(self.args.run_timeout, self.left() - self.reserve)
        if timeout < 5:
            return {"ok": False, "error": "budget"}
        t = time.monotonic()
        r = eng.request({"cmd": "run", "spec": spec, "seed": seed, "tag": tag, "out_cap": out_cap}, timeout)
        r.setdefault("ok", False)
        r["rpc_s"] = round(time.monotonic() - t, 2)
        if not r["ok"]:
            err = f"{eng.backend} {spec['name']} {tag}: {r.get('error')}"
            self.report["errors"].append(err)
            print(f"[e2e] ERROR {err}\n{str(r.get('traceback', ''))[-2000:]}", flush=True)
            if not eng.alive():
                print(eng.log_tail(3000), flush=True)
        return r

    # ------------------------------------------------------------------ workloads
    def run_workload(self, spec: dict[str, Any], engines: list[Engine], reps: int, seed_base: int,
                     later: int = 0) -> None:
        """``reps`` reps of ``spec`` on ``engines`` (more where they are short: ``_more_reps``);
        ``later``: how many workloads follow this one (budget kept for them)."""
        name = spec["name"]
        per = self.raw.setdefault(name, {})
        for eng in engines:  # warm-up: same shapes, fewer output tokens
            if eng.alive():
                cap = min(32, max(o for _, o in C.request_lengths(spec)))
                self.run_one(eng, spec, seed_base + 999, "warmup", out_cap=cap)
        rep_time: float | None = None
        rep = 0
        while rep < reps or self._more_reps(name, rep, reps, rep_time, later):
            if rep < reps and rep_time is not None and self.left() - self.reserve < 1.3 * rep_time:
                self.note_skip(f"{name} reps {rep}..{reps - 1}")
                break
            t = time.monotonic()
            by_name = {e.backend: e for e in engines}
            order = [by_name[b] for b in rep_orders([e.backend for e in engines], rep + 1)[rep]]
            for eng in order:
                if not eng.alive():
                    continue
                r = self.run_one(eng, spec, seed_base + rep, f"rep{rep}")
                if r["ok"]:
                    per.setdefault(eng.backend, []).append(r)
                    host = r.get("host") or {}
                    print(f"[e2e] {name:9s} rep{rep} {LABEL[eng.backend]:13s} {r['tokens_per_s']:9.1f} tok/s  "
                          f"wall {r['wall_s']:.2f} s  TTFT med {C.summarize_ms(r['ttft_s'])['median']} ms  "
                          f"ITL med {C.summarize_ms(r['itl_s'])['median']} ms  ({r['method']})  "
                          f"cpu {host.get('cpu_s', float('nan')):.2f} s, main thread "
                          f"{host.get('main_thread_cpu_s', float('nan')):.2f} s, "
                          f"{host.get('involuntary_switches', float('nan')):.0f} preemptions", flush=True)
            rep_time = time.monotonic() - t
            rep += 1

    def _more_reps(self, name: str, rep: int, reps: int, rep_time: float | None, later: int) -> bool:
        """After the requested reps: more, a palindromic pair at a time, while an engine has
        measured less than ``--min-measured-s`` of this workload, up to ``MAX_REPS_FACTOR`` x reps,
        if the budget holds them and what is still to come."""
        if rep_time is None or rep >= MAX_REPS_FACTOR * reps:
            return False
        if rep % 2 and rep > reps:
            return True  # the second half of a pair started here
        measured = [sum(r["wall_s"] for r in runs) for runs in self.raw.get(name, {}).values()]
        if not measured or min(measured) >= self.args.min_measured_s:
            return False
        need = (1 if rep % 2 else 2) * rep_time  # complete the requested reps' last pair, or a new pair
        # what is still to come (the later workloads' reps and the profiles), guessed at this rep time
        pending = (later * (reps + 2) + 2) * rep_time
        return self.left() - self.reserve > 1.3 * need + pending

    def summarize(self, name: str, spec: dict[str, Any]) -> dict[str, Any]:
        entry: dict[str, Any] = {"group": spec["group"], "spec": {k: spec[k] for k in ("n", "prompt_len", "out_len")}}
        p_tok, o_tok = C.workload_tokens(spec)
        entry["spec"].update(prompt_tokens=p_tok, output_tokens=o_tok)
        old = self.report["workloads"].get(name, {})
        for k in ("profile", "reason", "reason_vs_default", "python_host_diff", "drift_check"):
            if k in old:
                entry[k] = old[k]
        for b, reps in self.raw.get(name, {}).items():
            tps = [r["tokens_per_s"] for r in reps]
            ttft = [x for r in reps for x in r["ttft_s"]]
            itl = [x for r in reps for x in r["itl_s"]]
            entry[b] = {"tokens_per_s": round(C.median(tps), 2), "tokens_per_s_reps": [round(x, 2) for x in tps],
                        "spread": C.spread(tps), "ttft_ms": C.summarize_ms(ttft), "itl_ms": C.summarize_ms(itl),
                        "wall_s_reps": [r["wall_s"] for r in reps], "out_tokens": reps[0]["out_tokens"],
                        "host_reps": [r.get("host") for r in reps],
                        "method": sorted({r["method"] for r in reps}), "reps": len(reps),
                        "steps": reps[-1].get("steps")}  # the last rep's decode batches and step gaps
        o, b, d = entry.get(OURS), entry.get(BASE), entry.get(DEFAULT)
        if o and b:
            entry.update(C.side_ratios(o, b))
            tr, ir = entry["throughput_ratio"], entry["itl_ratio"]
            entry["pass_vs_compile"] = bool(tr is not None and tr >= 1.0 and (ir is None or ir <= 1.0))
        else:
            entry["throughput_ratio"] = entry["itl_ratio"] = None
        if o and d:  # against vLLM as shipped (FA3): issue 26's throughput targets
            entry.update(C.side_ratios(o, d, "_vs_default"))
            target = DEFAULT_TARGET.get(spec["group"], 1.0)
            tr = entry["throughput_ratio_vs_default"]
            entry["target_vs_default"] = target
            entry["pass_vs_default"] = bool(tr is not None and tr >= target)
        elif DEFAULT in self.plan["backends"]:
            entry["throughput_ratio_vs_default"] = entry["itl_ratio_vs_default"] = None
        verdicts = [entry[k] for k in ("pass_vs_compile", "pass_vs_default") if k in entry]
        entry["pass"] = bool(verdicts) and all(verdicts) and (BASE not in self.plan["backends"] or bool(b)) \
            and (DEFAULT not in self.plan["backends"] or bool(d))
        return entry

    def profile_workload(self, name: str, spec: dict[str, Any], engines: list[Engine]) -> None:
        timeout = min(self.args.run_timeout, self.left() - self.reserve)
        if timeout < 30:
            self.note_skip(f"{name} profile")
            return
        prof = {}
        for eng in engines:
            if not eng.alive():
                continue
            r = eng.request({"cmd": "profile", "spec": spec, "seed": 4242, "out_cap": self.args.profile_out_cap,
                             "pstats": str(self.log_dir / f"{eng.backend}_{name}.pstats")}, timeout)
            prof[eng.backend] = r if r.get("ok") else {"error": r.get("error"), "traceback": r.get("traceback")}
        w = self.report["workloads"].setdefault(name, {})
        w["profile"] = prof
        if BASE in prof:
            w["reason"] = C.explain_gap(prof.get(OURS, {}), prof.get(BASE, {}))
            print(f"[e2e] {name}: {w['reason']}", flush=True)
            if prof.get(OURS, {}).get("python") and prof[BASE].get("python"):
                # the Python functions whose own time (and time with callees) grew most in our
                # engine (cProfile, one run each; the raw profiles are the .pstats beside the logs)
                w["python_host_diff"] = python_diff(prof[OURS]["python"], prof[BASE]["python"])
                w["python_host_diff_cum"] = python_diff(prof[OURS]["python"], prof[BASE]["python"], 12, "cum_ms")
                print(f"[e2e] {name} Python host time, ours - vLLM's (cProfile, ms a run): "
                      + ", ".join(f"{r['fn']} {r['own_ms']:+.1f} ({r['ncalls']:+.0f} calls)"
                                  for r in w["python_host_diff"][:5]), flush=True)
                print(f"[e2e] {name} the same with callees: "
                      + ", ".join(f"{r['fn']} {r['cum_ms']:+.1f}" for r in w["python_host_diff_cum"][:8]), flush=True)
        for r in prof.values():
            (r.get("python") or {}).pop("all", None)  # every function: for the diff only
        for b, r in prof.items():
            if r.get("host"):
                print(f"[e2e] {name} {LABEL.get(b, b)} host: gc collections {r.get('gc_collections')}, "
                      f"{r.get('os_threads')} threads; top runtime calls "
                      f"{dict(list(r['host']['api'].items())[:4])}", flush=True)
        if DEFAULT in prof:
            w["reason_vs_default"] = C.explain_gap(prof.get(OURS, {}), prof.get(DEFAULT, {}))
            print(f"[e2e] {name} vs default: {w['reason_vs_default']}", flush=True)

    def refresh(self, specs: list[dict[str, Any]]) -> None:
        for s in specs:
            if s["name"] in self.raw:
                self.report["workloads"][s["name"]] = self.summarize(s["name"], s)
        self.save()

    # ------------------------------------------------------------------ modes
    def run(self) -> int:
        args, specs = self.args, self.plan["specs"]
        backends = self.plan["backends"]
        seeds = {s["name"]: 10_000 * (i + 1) for i, s in enumerate(specs)}
        mode = self.plan["mode"]
        self.report["mode"] = mode
        util = self.plan["side_by_side_util"]
        if mode == "side-by-side" and args.concurrent_starts and len(backends) > 1:
            # every process first, then the waits: each start is timed from its own launch, but
            # their compiles share the CPUs (hence not reported as cold starts)
            self.report["settings"]["start_order"] = "concurrent"
            launched = [(b, self.launch(b, util, "concurrent_start")) for b in backends]
            engines = [e for b, e in ((b, self.start(b, util, "concurrent_start", eng=e) if e else None)
                                      for b, e in launched) if e is not None]
            if not any(e.backend == backends[0] for e in engines) and backends[0] == OURS and not args.keep_going:
                self.save()
                return 2
        else:
            first = self.start(backends[0], util if mode == "side-by-side" else args.solo_gpu_util, "cold_start")
            if first is None and backends[0] == OURS and not args.keep_going:
                self.save()
                return 2
            engines = [first] if first else []
        if mode == "side-by-side" and self.report["settings"].get("start_order") != "concurrent":
            for b in backends[1:]:
                eng = self.start(b, util, "cold_start")
                if eng is not None:
                    engines.append(eng)
                elif first is not None and _memory_error(self.report["engines"].get(b, {})):
                    print(f"[e2e] {LABEL[b]} did not fit beside the others: falling back to sequential", flush=True)
                    mode = self.report["mode"] = f"sequential (fallback: {b} engine out of memory)"
                    for e in engines[1:]:  # the first one stays up: sequential() runs it first
                        e.stop()
                    engines = engines[:1]
                    break
        if mode != "side-by-side":
            self.report["settings"]["alternation"] = ("sequential: each engine alone for all workloads, in order, "
                                                      "then the first again (warm caches) on the first workload "
                                                      "as a drift check")
        self.compare_settings()
        if mode == "side-by-side" or len(backends) == 1:
            for i, s in enumerate(specs):
                if self.left() - self.reserve < 20:
                    self.note_skip(f"workload {s['name']}")
                    continue
                dead = [e.backend for e in engines if not e.alive()]
                if dead and not args.keep_going:  # no ratio possible: save the device time
                    self.note_skip(f"workload {s['name']} ({', '.join(dead)} engine died; see errors)")
                    continue
                self.run_workload(s, [e for e in engines if e.alive()], args.reps, seeds[s["name"]],
                                  later=len(specs) - i - 1)
                self.refresh(specs)
            self.profiles(specs, engines)
            for e in engines:
                e.stop()
        else:
            self.sequential(specs, backends, seeds, engines[0] if engines else None)
        if args.starts:
            for b in backends:
                if "warm_start_s" in self.report["engines"].get(b, {}):
                    continue
                self.start(b, args.solo_gpu_util, "warm_start", exit_after_ready=True)
        self.compare_settings()
        self.refresh(specs)
        return 0

    IGNORED_SETTINGS = ("backend", "VLLM_USE_FLASHINFER_SAMPLER")
    # Against the default engine the attention backend differs by design (FLASH_ATTN vs TRITON_ATTN).
    EXPECTED_VS_DEFAULT = ("attention_backend",)

    def compare_settings(self) -> None:
        """Effective engine settings that differ between ours and each baseline (should be none
        but the backend name, and the attention backend against the default engine)."""
        for b, key in ((BASE, "settings_differences"), (DEFAULT, "settings_differences_vs_default")):
            eff = {x: (self.report["engines"].get(x) or {}).get("effective_config") for x in (OURS, b)}
            if not all(eff.values()):
                continue
            ignored = self.IGNORED_SETTINGS + (self.EXPECTED_VS_DEFAULT if b == DEFAULT else ())
            diff = {k: {OURS: eff[OURS].get(k), b: eff[b].get(k)}
                    for k in sorted(set(eff[OURS]) | set(eff[b]))
                    if k not in ignored and eff[OURS].get(k) != eff[b].get(k)}
            self.report[key] = diff
            for k, v in diff.items():
                print(f"[e2e] WARNING: effective setting {k} differs: {v}", flush=True)

    def sequential(self, specs, backends, seeds, first: Engine | None) -> None:
        a = backends[0]
        for b in backends:
            eng = first if (b == a and first is not None and first.alive()) else None
            if eng is None:
                kind = "cold_start" if "cold_start_s" not in self.report["engines"].get(b, {}) else "restart"
                eng = self.start(b, self.args.solo_gpu_util, kind)
            if eng is None:
                continue
            for i, s in enumerate(specs):
                if self.left() - self.reserve < 20:
                    self.note_skip(f"workload {s['name']} on {b}")
                    continue
                self.run_workload(s, [eng], self.args.reps, seeds[s["name"]], later=len(specs) - i - 1)
                self.refresh(specs)
            eng.stop()
        # drift check: A again (warm caches: its start is the warm start), first workload, one rep
        s = specs[0]
        before = self.raw.get(s["name"], {}).get(a)
        if not before:
            return
        eng = self.start(a, self.args.solo_gpu_util, "warm_start")
        if eng is None:
            return
        r = None
        if self.left() - self.reserve > 20:
            self.run_one(eng, s, seeds[s["name"]] + 999, "warmup", out_cap=32)
            r = self.run_one(eng, s, seeds[s["name"]] + 500, "drift")
        eng.stop()
        if r and r.get("ok"):
            tb = C.median([x["tokens_per_s"] for x in before])
            self.report["workloads"].setdefault(s["name"], {})["drift_check"] = {
                "backend": a, "tokens_per_s_before": round(tb, 2), "tokens_per_s_after": round(r["tokens_per_s"], 2),
                "drift": C.safe_ratio(r["tokens_per_s"] - tb, tb)}
        # profiles need both engines alive: in sequential mode they are not, so none are taken
        if self.args.profile != "none":
            self.report["skipped"].append("profiles (sequential mode: engines are not resident together)")

    def profiles(self, specs, engines) -> None:
        if self.args.profile == "none":
            return
        for s in specs:
            w = self.report["workloads"].get(s["name"], {})
            # below a target that was measured (an engine that never started is no reason to profile)
            below = any(k in w and not w[k] for k in ("pass_vs_compile", "pass_vs_default"))
            if self.args.profile == "all" or (w.get(OURS) and below):
                self.profile_workload(s["name"], s, engines)
                self.save()


def _memory_error(info: dict[str, Any]) -> bool:
    text = (str(info.get("cold_start_error", "")) + str(info.get("cold_start_log_tail", ""))).lower()
    return any(k in text for k in ("out of memory", "outofmemory", "free memory on device", "cuda error: out",
                                   "memory on device", "no available memory", "not enough memory"))


def print_table(report: dict[str, Any]) -> None:
    print(f"\n== e2e vLLM: {report.get('card')}  torch {report.get('versions', {}).get('torch')}  triton "
          f"{report.get('versions', {}).get('triton')}  vllm {report.get('versions', {}).get('vllm')}  commit "
          f"{str(report.get('commit'))[:10]}  layers {report['settings']['layers']}  mode {report.get('mode')}  "
          f"wall {report.get('wall_s')} s")
    with_default = any(DEFAULT in w for w in report.get("workloads", {}).values())
    hdr = ("workload", "ours tok/s", "vllm tok/s", "tput x", "TTFT ms o/v", "ITL med ms o/v", "ITL x",
           "ITL p90 o/v", "noise", "status") + (("default tok/s", "tput x dflt", "ITL x dflt") if with_default else ())
    rows = [hdr]

    def f(x, nd=1):
        return "-" if x is None else f"{x:.{nd}f}"

    for name, w in report.get("workloads", {}).items():
        o, b = w.get(OURS) or {}, w.get(BASE) or {}
        rows.append((name, f(o.get("tokens_per_s")), f(b.get("tokens_per_s")), f(w.get("throughput_ratio"), 3),
                     f"{f((o.get('ttft_ms') or {}).get('median'))}/{f((b.get('ttft_ms') or {}).get('median'))}",
                     f"{f((o.get('itl_ms') or {}).get('median'), 2)}/{f((b.get('itl_ms') or {}).get('median'), 2)}",
                     f(w.get("itl_ratio"), 3),
                     f"{f((o.get('itl_ms') or {}).get('p90'), 2)}/{f((b.get('itl_ms') or {}).get('p90'), 2)}",
                     f(w.get("noise"), 3), "PASS" if w.get("pass") else "BELOW")
                    + ((f((w.get(DEFAULT) or {}).get("tokens_per_s")), f(w.get("throughput_ratio_vs_default"), 3),
                        f(w.get("itl_ratio_vs_default"), 3)) if with_default else ()))
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(hdr))]
    for r in rows:
        print("  ".join(str(c).rjust(wd) if i else str(c).ljust(wd) for i, (c, wd) in enumerate(zip(r, widths))))
    for b, info in report.get("engines", {}).items():
        print(f"{LABEL.get(b, b)}: cold start {info.get('cold_start_s', '-')} s, warm start "
              f"{info.get('warm_start_s', '-')} s; phases {info.get('cold_start_phases', {})}")
        if (info.get("audit") or {}).get("summary"):
            print(f"  {info['audit']['summary'][:400]}")
    if report.get("fa3_check"):
        fc = report["fa3_check"]
        print(f"FA3 check: FA3_AVAILABLE {fc.get('fa3_available')}; attention {fc.get('attention_impl')}; greedy "
              + "; ".join(f"{k} {v['sequences_equal']}/{v['sequences']} equal, match {v['match_rate']}"
                          for k, v in (fc.get("agreement") or {}).items()))
    for name, w in report.get("workloads", {}).items():
        if w.get("reason_vs_default"):
            print(f"{name} vs default: {w['reason_vs_default']}")
        if w.get("reason"):
            print(f"{name}: {w['reason']}")
        if w.get("drift_check"):
            print(f"{name}: drift check {w['drift_check']}")
    for s in report.get("skipped", []):
        print(f"skipped: {s}")
    for e in report.get("errors", []):
        print(f"error: {e}")
    print(f"overall: {'PASS' if report.get('pass') else 'FAIL'}")


def reclassify(path: str) -> int:
    """Re-class the kernels of every stored profile with the current classifier (names, counts
    and times are the measured ones) and rewrite each workload's one-line reason."""
    p = Path(path)
    report = json.loads(p.read_text())
    for name, w in report.get("workloads", {}).items():
        prof = w.get("profile")
        if not prof:
            continue
        for b in list(prof):
            prof[b] = C.reclassify_profile(prof[b])
        if BASE in prof:
            w["reason"] = C.explain_gap(prof.get(OURS, {}), prof.get(BASE, {}))
            print(f"{name}: {w['reason']}")
            if prof.get(OURS, {}).get("python") and prof[BASE].get("python"):
                w["python_host_diff"] = python_diff(prof[OURS]["python"], prof[BASE]["python"])
        if DEFAULT in prof:
            w["reason_vs_default"] = C.explain_gap(prof.get(OURS, {}), prof.get(DEFAULT, {}))
            print(f"{name} vs default: {w['reason_vs_default']}")
    report["reclassified"] = "kernel classes recomputed offline (e2e_vllm.py --reclassify) from the measured top kernels"
    p.write_text(json.dumps(report, indent=1))
    return 0


def result_suffix(args: argparse.Namespace) -> str:
    """``_<model>`` (Llama-3-8B at TP=1, the first record, keeps the bare name), ``_L<n>`` for cut
    layers, ``_tp<N>`` for tensor parallel runs (always with the model's name)."""
    full = models.E2E_MODELS[args.model]["num_hidden_layers"]
    tp = getattr(args, "tp", 1)
    return ("" if args.model == models.DEFAULT_MODEL and tp == 1 else f"_{args.model}") + (
        "" if args.layers == full else f"_L{args.layers}") + ("" if tp == 1 else f"_tp{tp}")


def main_parent(args: argparse.Namespace) -> int:
    total = args.gpu_mem_gib or (None if args.dry_run else C.nvidia_smi_memory_gib())
    plan = build_plan(args, total)
    out_dir = Path(args.out) if args.out else default_out_dir()
    model_dir = Path(args.model_dir) if args.model_dir else Path(tempfile.mkdtemp(prefix="tri_e2e_model_"))
    C.write_model_config(model_dir, plan["model_config"])
    suffix = result_suffix(args)
    if args.dry_run:
        name = args.name or f"e2e_<card>{suffix}.json"
        print_plan(plan, str(model_dir), out_dir / name)
        for b in plan["backends"]:  # the exact worker command line, for copying into a shell
            kw = engine_kwargs(b, str(model_dir), plan["engine_kwargs"][b]["gpu_memory_utilization"],
                               args.kv_cache_gib, args.tp)
            print(f"worker[{b}]: {sys.executable} {os.path.abspath(__file__)} --worker --backend {b} "
                  f"--engine-kwargs '{json.dumps(kw)}' --cmd-fd N --res-fd M")
        return 0
    why = budget_problem(plan, args.budget_s)
    if why is not None:
        print(f"[e2e] not started: {why}", file=sys.stderr, flush=True)
        return 2
    log_dir = (out_dir / "e2e_logs") if os.environ.get("OUT") and out_dir == Path(os.environ["OUT"]) \
        else Path(tempfile.mkdtemp(prefix="tri_e2e_logs_"))
    cache_root = Path(tempfile.mkdtemp(prefix="tri_e2e_cache_"))
    runner = Runner(args, plan, model_dir, out_dir, log_dir, cache_root)
    runner.report["card"] = C.nvidia_smi_card()  # replaced by the first engine's torch.cuda name
    if args.default_skipped:
        runner.report["errors"].append(f"{DEFAULT} not started: {args.default_skipped}")
    print(f"[e2e] logs in {log_dir}; caches in {cache_root}; budget {args.budget_s:.0f} s", flush=True)

    def on_term(signum, frame):  # the caller's timeout: stop the engines, keep what was measured
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_term)
    rc = 1
    try:
        rc = runner.run()
        runner.report["complete"] = rc == 0
    except BaseException as e:  # noqa: BLE001
        runner.report["errors"].append(f"parent: {e!r}")
        traceback.print_exc()
    finally:
        for eng in STARTED:
            eng.kill()
        ws = runner.report["workloads"]
        done = [w for w in ws.values() if w.get("throughput_ratio") is not None
                or w.get("throughput_ratio_vs_default") is not None]
        runner.report["pass"] = bool(done) and len(done) == len(plan["specs"]) and all(w.get("pass") for w in done)
        runner.report["below"] = [n for n, w in ws.items() if not w.get("pass")]
        final = runner.save()
        shutil.rmtree(cache_root, ignore_errors=True)
        _pack_pstats(log_dir)
        print_table(runner.report)
        print(f"\nwrote {final}")
    if rc != 0:
        return rc
    return 0 if runner.report["pass"] else 1


def _pack_pstats(log_dir: Path) -> None:
    """The profiled runs' raw cProfiles in one ``pstats.tar`` (the GPU machine returns a bounded
    number of files from $OUT: one file per engine and workload lost some)."""
    import tarfile

    files = sorted(log_dir.glob("*.pstats"))
    if not files:
        return
    with tarfile.open(log_dir / "pstats.tar", "w") as tar:
        for f in files:
            tar.add(f, arcname=f.name)
    for f in files:
        f.unlink()


# ======================================================================= worker: one LLM


FAKE_ENV = "TRI_E2E_FAKE"
"""Set (to a JSON {backend: seconds per decode step}) for CPU tests: the worker serves a simulated
engine, so the parent, the pipe protocol, ABBA order, summaries and the JSON are exercised
without a GPU or vLLM."""


class TokenTimes:
    """Per request, the (time, new tokens) of every engine step that gave it tokens."""

    def __init__(self) -> None:
        self.active = False
        self.timeline: dict[str, list[tuple[float, int]]] = {}
        self.installed = False

    def record(self, engine_core_outputs) -> None:
        if self.active:
            now = time.perf_counter()
            for o in engine_core_outputs:
                n = len(getattr(o, "new_token_ids", None) or ())
                if n:
                    self.timeline.setdefault(str(o.request_id), []).append((now, n))

    def install(self) -> None:
        from vllm.v1.engine.output_processor import OutputProcessor

        rec = self
        real = OutputProcessor.process_outputs

        def process_outputs(self_, engine_core_outputs, *a, **k):
            rec.record(engine_core_outputs)
            return real(self_, engine_core_outputs, *a, **k)

        OutputProcessor.process_outputs = process_outputs
        self.installed = True


class _FakeLLM:
    """A simulated engine (CPU tests): one step per output token, prefill first, sleeping
    ``step_s`` per decode step; reports tokens through ``TokenTimes.record`` as vLLM would."""

    def __init__(self, backend: str, rec: TokenTimes, step_s: float, token_shift: int = 0):
        self.backend, self.rec, self.step_s, self.token_shift = backend, rec, step_s, token_shift

    def generate(self, inputs, sps, use_tqdm=False):
        from types import SimpleNamespace as NS

        todo = {str(i): sp.max_tokens for i, sp in enumerate(sps)}
        got: dict[str, list[int]] = {k: [] for k in todo}
        time.sleep(self.step_s * (1 + sum(len(x["prompt_token_ids"]) for x in inputs) / 4096))  # prefill
        while any(len(got[k]) < n for k, n in todo.items()):
            outs = []
            for k, n in todo.items():
                if len(got[k]) < n:
                    got[k].append(7)
                    outs.append(NS(request_id=k, new_token_ids=[7]))
            self.rec.record(outs)
            time.sleep(self.step_s)
        return [NS(outputs=[NS(token_ids=got[str(i)])]) for i in range(len(sps))]


def _sync() -> None:
    if os.environ.get(FAKE_ENV):
        return
    import torch

    torch.cuda.synchronize()


def _effective_config(llm) -> dict[str, Any]:
    if isinstance(llm, _FakeLLM):
        return {"backend": llm.backend, "attention_backend": "FLASH_ATTN" if llm.backend == DEFAULT else "TRITON_ATTN",
                "cudagraph_mode": "FAKE"}
    eng = llm.llm_engine
    cfg = getattr(eng, "vllm_config", None) or eng.get_vllm_config()
    out: dict[str, Any] = {}

    def put(key, fn):
        try:
            v = fn()
            out[key] = v if isinstance(v, (int, float, bool, type(None))) else str(v)
        except Exception as e:  # noqa: BLE001
            out[key] = f"? {e!r}"[:120]

    cc = cfg.compilation_config
    put("mode", lambda: cc.mode)
    put("backend", lambda: cc.backend)
    put("custom_ops", lambda: list(cc.custom_ops))
    put("cudagraph_mode", lambda: cc.cudagraph_mode)
    put("cudagraph_capture_sizes", lambda: list(cc.cudagraph_capture_sizes or []))
    put("compile_sizes", lambda: list(cc.compile_sizes or []))
    put("attention_backend", lambda: cfg.attention_config.backend)
    put("ir_op_priority", lambda: cfg.kernel_config.ir_op_priority)
    put("async_scheduling", lambda: cfg.scheduler_config.async_scheduling)
    put("max_num_seqs", lambda: cfg.scheduler_config.max_num_seqs)
    put("max_num_batched_tokens", lambda: cfg.scheduler_config.max_num_batched_tokens)
    put("enable_chunked_prefill", lambda: cfg.scheduler_config.enable_chunked_prefill)
    put("enable_prefix_caching", lambda: cfg.cache_config.enable_prefix_caching)
    put("num_gpu_blocks", lambda: cfg.cache_config.num_gpu_blocks)
    put("block_size", lambda: cfg.cache_config.block_size)
    put("max_model_len", lambda: cfg.model_config.max_model_len)
    put("dtype", lambda: cfg.model_config.dtype)
    put("enforce_eager", lambda: cfg.model_config.enforce_eager)
    put("disable_cascade_attn", lambda: cfg.model_config.disable_cascade_attn)
    put("tensor_parallel_size", lambda: cfg.parallel_config.tensor_parallel_size)
    put("disable_custom_all_reduce", lambda: cfg.parallel_config.disable_custom_all_reduce)
    put("VLLM_USE_FLASHINFER_SAMPLER", lambda: os.environ.get("VLLM_USE_FLASHINFER_SAMPLER"))
    return out


def _fa3_status() -> dict[str, Any]:
    """Is vLLM's FA3 extension importable here, and which FA version would vLLM pick."""
    out: dict[str, Any] = {"GPU_ENV_FA3": os.environ.get("GPU_ENV_FA3")}
    try:
        from vllm.vllm_flash_attn import flash_attn_interface as fi

        out["FA3_AVAILABLE"] = bool(getattr(fi, "FA3_AVAILABLE", False))
        if not out["FA3_AVAILABLE"]:
            out["reason"] = str(getattr(fi, "FA3_UNAVAILABLE_REASON", "?"))[:300]
    except Exception as e:  # noqa: BLE001
        out.update(FA3_AVAILABLE=False, reason=repr(e)[:300])
    try:
        from vllm.v1.attention.backends.fa_utils import get_flash_attn_version

        out["fa_version"] = get_flash_attn_version()
    except Exception as e:  # noqa: BLE001
        out["fa_version_error"] = repr(e)[:200]
    return out


def _attention_impl(llm) -> dict[str, Any] | None:
    """{attention backend (FA version): layers} as built, from the forward context (TP=1: the
    model lives in this process; under TP>1 it does not and this is None)."""
    if isinstance(llm, _FakeLLM):
        return {"FLASH_ATTN (FA3)" if llm.backend == DEFAULT else "TRITON_ATTN": 2}
    def contexts():
        eng = llm.llm_engine
        cfg = getattr(eng, "vllm_config", None) or eng.get_vllm_config()
        yield cfg.compilation_config.static_forward_context
        # the worker's own config, where the front end holds a copy (in-process engine, TP=1)
        runner = eng.engine_core.engine_core.model_executor.driver_worker.worker.model_runner
        yield runner.vllm_config.compilation_config.static_forward_context

    try:
        ctx = next((c for c in contexts() if c), {})
        impls: dict[str, Any] = {}
        for layer in ctx.values():
            b = getattr(layer, "attn_backend", None)
            if b is None:
                continue
            name = b.get_name() if hasattr(b, "get_name") else getattr(b, "__name__", str(b))
            v = getattr(getattr(layer, "impl", None), "vllm_flash_attn_version", None)
            key = name + (f" (FA{v})" if v else "")
            impls[key] = impls.get(key, 0) + 1
        return impls or None
    except Exception as e:  # noqa: BLE001
        return {"error": repr(e)[:200]}


def _handle_tokens(llm, msg, vocab) -> dict[str, Any]:
    """Greedy tokens (and the top-2 logprob gap per position) for fixed prompts: the start-up
    check that the FA3 engine and the TRITON_ATTN ones compute the same model."""
    import random

    rng = random.Random(4321)
    prompts = [[rng.randrange(100, vocab - 1) for _ in range(64)] for _ in range(msg["n"])]
    if isinstance(llm, _FakeLLM):
        toks = [[(sum(p) + 7 * j + llm.token_shift * (j >= msg["tokens"] // 2)) % vocab for j in range(msg["tokens"])]
                for p in prompts]
        return {"ok": True, "error": None, "tokens": toks, "top2_gap": [[0.25] * len(t) for t in toks]}
    from vllm import SamplingParams

    sp = SamplingParams(temperature=0.0, max_tokens=msg["tokens"], logprobs=2, ignore_eos=True, detokenize=False)
    outs = llm.generate([{"prompt_token_ids": p} for p in prompts], sp, use_tqdm=False)
    tokens, gaps = [], []
    for o in outs:
        c = o.outputs[0]
        tokens.append(list(c.token_ids))
        g = []
        for pos in c.logprobs or []:
            ranked = sorted(pos.values(), key=lambda lp: lp.rank if lp.rank is not None else 99)
            g.append(round(ranked[0].logprob - ranked[1].logprob, 5) if len(ranked) > 1 else None)
        gaps.append(g)
    return {"ok": True, "error": None, "tokens": tokens, "top2_gap": gaps}


def _versions() -> dict[str, Any]:
    v = versions()
    if (ph := package_hash()) is not None:
        v["tri_inductor_package_hash"] = ph
    return v


def _generate(llm, spec, seed, out_cap, vocab):
    if isinstance(llm, _FakeLLM):
        from types import SimpleNamespace as SamplingParams  # noqa: N813
    else:
        from vllm import SamplingParams

    prompts = C.make_prompts(spec, vocab, seed)
    if out_cap:
        prompts = [(ids, min(o, out_cap)) for ids, o in prompts]
    inputs = [{"prompt_token_ids": ids} for ids, _ in prompts]
    sps = [SamplingParams(temperature=0.0, max_tokens=o, ignore_eos=True, detokenize=False) for _, o in prompts]
    return prompts, inputs, sps


def _handle_run(llm, rec: TokenTimes, msg, vocab) -> dict[str, Any]:
    spec, seed, out_cap = msg["spec"], msg["seed"], msg.get("out_cap")
    prompts, inputs, sps = _generate(llm, spec, seed, out_cap, vocab)
    rec.timeline = {}
    _sync()
    rec.active = True
    cpu0 = _host_cpu()
    t0 = time.perf_counter()
    outs = llm.generate(inputs, sps, use_tqdm=False)
    t1 = time.perf_counter()
    cpu1 = _host_cpu()
    rec.active = False
    wall = t1 - t0
    out_tokens = sum(len(o.outputs[0].token_ids) for o in outs)
    expected = sum(o for _, o in prompts)
    ttft, itl, ntok = C.token_timeline_stats(rec.timeline, t0)
    method = "hook"
    if len(ttft) != len(prompts) or sum(ntok.values()) != out_tokens:
        # fallback: TTFT from a 1-token run of the same prompts, ITL = (total - TTFT) / (n - 1)
        method = "fallback"
        one = [type(sp)(temperature=0.0, max_tokens=1, ignore_eos=True, detokenize=False) for sp in sps]
        _sync()
        ta = time.perf_counter()
        llm.generate(inputs, one, use_tqdm=False)
        t_first = time.perf_counter() - ta
        ttft = [t_first] * len(prompts)
        itl = []
        for o in outs:
            n = len(o.outputs[0].token_ids)
            if n > 1:
                itl.extend([(wall - t_first) / (n - 1)] * (n - 1))
    return {"ok": out_tokens == expected, "error": None if out_tokens == expected else
            f"got {out_tokens} output tokens, expected {expected}",
            "wall_s": round(wall, 4), "out_tokens": out_tokens, "expected_out_tokens": expected,
            "in_tokens": sum(len(ids) for ids, _ in prompts), "tokens_per_s": out_tokens / wall,
            "ttft_s": [round(x, 6) for x in ttft], "itl_s": [round(x, 6) for x in itl], "method": method,
            "hook_requests": len(rec.timeline),
            "host": {k: round(cpu1[k] - cpu0[k], 4) for k in cpu0},
            "steps": C.step_gap_stats(C.step_batches(rec.timeline)) if method == "hook" else None}


def _host_cpu() -> dict[str, float]:
    """This process's CPU seconds (all threads), its main thread's, and its involuntary context
    switches: a rep slower in wall time but not in CPU time waited (for the GPU, or for a CPU
    another process held: many involuntary switches), one slower in both did more work."""
    import resource

    ru = resource.getrusage(resource.RUSAGE_SELF)
    return {"cpu_s": time.process_time(), "main_thread_cpu_s": time.thread_time(),
            "involuntary_switches": float(ru.ru_nivcsw)}


def _handle_profile(llm, msg, vocab) -> dict[str, Any]:
    if isinstance(llm, _FakeLLM) and os.environ.get(FAKE_ENV):
        t0 = time.perf_counter()
        _, inputs, sps = _generate(llm, msg["spec"], msg["seed"], msg.get("out_cap"), vocab)
        llm.generate(inputs, sps)
        wall = (time.perf_counter() - t0) * 1e3
        top = [{"name": "mm_kernel" if llm.backend == OURS else "nvjet_sm90_tst_128x256", "launches": 10,
                "gpu_us": wall * 600.0}, {"name": "kernel_unified_attention_2d", "launches": 10, "gpu_us": wall * 200.0}]
        for r in top:
            r["class"] = C.kernel_class(r["name"])
        return {"ok": True, "error": None, "wall_ms": round(wall, 2), "gpu_busy_ms": round(wall * 0.8, 2),
                "classes_us": C.classify_profile(top), "top": top, "kernel_names": 2,
                "host": C.summarize_host([("cudaGraphLaunch", 12.0), ("aten::empty", 3.0)] * 10),
                "python": python_profile(lambda: llm.generate(inputs, sps)),
                "gc_collections": [0, 0, 0], "threads": ["MainThread"], "os_threads": _os_threads()}
    import torch
    from torch.profiler import ProfilerActivity, profile

    prompts, inputs, sps = _generate(llm, msg["spec"], msg["seed"], msg.get("out_cap"), vocab)
    _sync()
    gc_before = [g["collections"] for g in gc.get_stats()]
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:  # as the census (known to work)
        t0 = time.perf_counter()
        llm.generate(inputs, sps, use_tqdm=False)
        _sync()
        wall = time.perf_counter() - t0
    gc_runs = [g["collections"] - b for g, b in zip(gc.get_stats(), gc_before)]
    # the same requests again under cProfile: which Python functions the host time goes to
    python = python_profile(lambda: (llm.generate(inputs, sps, use_tqdm=False), _sync()), dump=msg.get("pstats"))
    rows: dict[str, dict[str, Any]] = {}
    cpu_events: list[tuple[str, float]] = []
    try:
        events = []
        for e in prof.profiler.kineto_results.events():
            us = (e.end_ns() - e.start_ns()) / 1e3
            (events if str(e.device_type()).endswith("CUDA") else cpu_events).append((e.name(), us))
    except Exception:  # noqa: BLE001  older/newer profiler API
        events = [(e.name, float(getattr(e, "device_time", None) or getattr(e, "cuda_time", 0.0)))
                  for e in prof.events() if str(getattr(e, "device_type", "")).endswith("CUDA")]
    from tri_inductor.audit.runtime import is_memory_op

    for name, us in events:
        if is_memory_op(name):
            continue
        r = rows.setdefault(name, {"name": name, "launches": 0, "gpu_us": 0.0})
        r["launches"] += 1
        r["gpu_us"] += us
    ranked = sorted(rows.values(), key=lambda r: -r["gpu_us"])
    busy_us = sum(r["gpu_us"] for r in ranked)
    for r in ranked:
        r["gpu_us"] = round(r["gpu_us"], 1)
        r["class"] = C.kernel_class(r["name"])
    return {"ok": bool(ranked), "error": None if ranked else "profiler saw no kernels",
            "wall_ms": round(wall * 1e3, 2), "gpu_busy_ms": round(busy_us / 1e3, 2),
            "classes_us": C.classify_profile(ranked), "top": ranked[:20], "kernel_names": len(ranked),
            "requests": len(prompts), "out_tokens": sum(o for _, o in prompts),
            # where host time goes (issue 19: small models lose on host gaps, not kernels)
            "host": C.summarize_host(cpu_events), "python": python, "gc_collections": gc_runs,
            "threads": sorted(t.name for t in threading.enumerate()), "os_threads": _os_threads()}


def _os_threads() -> int | None:
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:
        return None


class _AlreadyUp(Exception):
    """Fake mode: the simulated engine is up; skip vLLM's start-up."""


def main_worker(args: argparse.Namespace) -> int:
    for fd in (args.res_fd, args.cmd_fd):  # not inherited by anything vLLM/Inductor starts (EOF = we died)
        os.set_inheritable(fd, False)
    res = os.fdopen(args.res_fd, "w", buffering=1)
    cmds = os.fdopen(args.cmd_fd, "r")

    def send(d: dict[str, Any]) -> None:
        res.write(json.dumps(d) + "\n")
        res.flush()

    t_proc = time.monotonic()
    fake = os.environ.get(FAKE_ENV)
    if fake:
        rec = TokenTimes()
        kw = json.loads(args.engine_kwargs)
        vocab = json.loads((Path(kw["model"]) / "config.json").read_text())["vocab_size"]
        conf = json.loads(fake).get(args.backend, 0.001)
        conf = conf if isinstance(conf, dict) else {"step": conf}
        step = conf.get("step", 0.001)
        if int(os.environ.get("TRI_E2E_START", "0")) in conf.get("fail_starts", []):
            send({"event": "error", "error": conf.get("fail_error", "simulated start-up failure: CUDA out of memory")})
            return 1
        llm = _FakeLLM(args.backend, rec, step, conf.get("token_shift", 0))
        send({"event": "ready", "backend": args.backend, "import_s": 0.0, "llm_init_s": 0.0, "card": "FAKE H100",
              "versions": {"torch": "fake", "triton": "fake", "vllm": "fake"}, "effective_config": _effective_config(llm),
              "memory": {}, "attention_impl": _attention_impl(llm),
              "fa3": {"FA3_AVAILABLE": True, "fake": True} if args.backend == DEFAULT else None})
        if args.exit_after_ready:
            return 0
    try:
        if fake:
            raise _AlreadyUp
        import torch
        from vllm import LLM

        rec = TokenTimes()
        try:
            rec.install()
        except Exception as e:  # noqa: BLE001  the fallback method takes over
            print(f"[e2e worker] token hook not installed: {e!r}", flush=True)
        t_import = time.monotonic() - t_proc
        kw = json.loads(args.engine_kwargs)
        model_cfg = json.loads((Path(kw["model"]) / "config.json").read_text())
        vocab = model_cfg["vocab_size"]
        moe_torch_ops = None
        if args.backend != OURS and models.is_moe(model_cfg):
            # vLLM's own MoE path in .gpu-env: torch glue for its CUDA ops (baseline engines only)
            import _torch_moe_ops

            moe_torch_ops = _torch_moe_ops.install()
        t = time.monotonic()
        llm = LLM(**kw)
        t_init = time.monotonic() - t
        free, total = torch.cuda.mem_get_info()
        audit = None
        if args.backend == OURS:  # what our compiler saw: launch sites by class, pattern hits, non-Triton
            try:
                from tri_inductor.vllm_compiler import run_audit

                audit = {"summary": run_audit().summary(), **run_audit().to_dict()}
            except Exception as e:  # noqa: BLE001
                audit = {"error": repr(e)[:300]}
            if kw.get("tensor_parallel_size", 1) > 1:
                audit["note"] = "TP > 1: the ranks compile in vLLM's worker processes; this is the front end's view"
        tuning = None
        if args.backend == OURS:  # GEMM tuning in this start: seconds, configs benchmarked (0: all stored)
            try:
                from tri_inductor import cache as _tcache

                c = _tcache.counters()
                tuning = {k: (round(v, 2) if isinstance(v, float) else v) for k, v in c.items()}
            except Exception as e:  # noqa: BLE001
                tuning = {"error": repr(e)[:300]}
        send({"event": "ready", "audit": audit, "tuning": tuning, "moe_torch_ops": moe_torch_ops,
              "backend": args.backend, "import_s": round(t_import, 2), "llm_init_s": round(t_init, 2),
              "card": torch.cuda.get_device_name(0), "versions": _versions(),
              "effective_config": _effective_config(llm), "attention_impl": _attention_impl(llm),
              "fa3": _fa3_status() if args.backend == DEFAULT else None,
              "memory": {"device_free_gib": round(free / 2**30, 2), "device_total_gib": round(total / 2**30, 2),
                         "torch_reserved_gib": round(torch.cuda.memory_reserved() / 2**30, 2)}})
    except _AlreadyUp:
        pass
    except BaseException as e:  # noqa: BLE001
        tb = traceback.format_exc()
        print(tb, file=sys.stderr, flush=True)
        try:
            send({"event": "error", "error": repr(e)[:2000], "traceback": tb[-6000:]})
        except Exception:  # noqa: BLE001
            pass
        return 1
    if args.exit_after_ready:
        return 0
    for line in cmds:
        msg = json.loads(line)
        if msg.get("cmd") == "exit":
            break
        if fake and msg.get("spec", {}).get("name") in conf.get("crash_on", ()):
            os._exit(3)  # simulated engine crash (tests)
        try:
            if msg["cmd"] == "run":
                out = _handle_run(llm, rec, msg, vocab)
            elif msg["cmd"] == "profile":
                out = _handle_profile(llm, msg, vocab)
            elif msg["cmd"] == "tokens":
                out = _handle_tokens(llm, msg, vocab)
            else:
                out = {"ok": False, "error": f"unknown command {msg.get('cmd')!r}"}
        except BaseException as e:  # noqa: BLE001  report, keep serving
            out = {"ok": False, "error": repr(e)[:2000], "traceback": traceback.format_exc()[-6000:]}
            print(out["traceback"], file=sys.stderr, flush=True)
        out["event"] = "result"
        send(out)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        code = main_worker(args)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)  # skip vLLM/torch teardown (slow, sometimes hangs); the GPU memory goes with the process
    if args.reclassify:
        return reclassify(args.reclassify)
    return main_parent(args)


if __name__ == "__main__":
    sys.exit(main())
