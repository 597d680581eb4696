"""Helpers for the vLLM end-to-end benchmark and the report (no torch, no vLLM imports here).

Pure functions only, so that ``tests/test_report.py`` can check them on a CPU machine:
model configs, workload specs and prompts, percentiles and summaries of latency samples,
a kernel-name classifier for profiles, card slugs and git metadata.
"""
from __future__ import annotations

import json
import math
import os
import random
import re
import subprocess
from pathlib import Path
from typing import Any, Iterable, Sequence

import models
from _meta import card_slug, git_info  # noqa: F401  (re-exported for e2e_vllm)

ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = ROOT / "benchmarks" / "results"

# --------------------------------------------------------------------------- model config

def llama3_8b_config(layers: int = 32, vocab: int | None = None) -> dict[str, Any]:
    return models.config("llama-3-8b", layers, vocab)


def write_model_config(folder: str | os.PathLike, cfg: dict[str, Any]) -> Path:
    """``folder/config.json`` for ``load_format="dummy"`` (vLLM draws random weights)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "config.json"
    path.write_text(json.dumps(cfg, indent=1))
    return path


def param_count(cfg: dict[str, Any]) -> int:
    h, i, v, n = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"], cfg["num_hidden_layers"]
    d = cfg.get("head_dim") or h // cfg["num_attention_heads"]
    q, kv = cfg["num_attention_heads"] * d, cfg["num_key_value_heads"] * d
    experts = cfg.get("num_experts") or cfg.get("num_local_experts") or 0
    if experts:  # every layer a MoE block (Qwen3-MoE, Mixtral): the experts and the router
        i = cfg.get("moe_intermediate_size") or i
        mlp = experts * 3 * h * i + h * experts
    else:
        mlp = 3 * h * i
    per_layer = h * (q + 2 * kv) + q * h + mlp + 2 * h
    emb = v * h * (1 if cfg.get("tie_word_embeddings") else 2)
    return n * per_layer + emb + h


def kv_bytes_per_token(cfg: dict[str, Any], dtype_bytes: int = 2) -> int:
    d = cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]
    return 2 * cfg["num_hidden_layers"] * cfg["num_key_value_heads"] * d * dtype_bytes


# --------------------------------------------------------------------------- workloads

# name -> spec.  prompt_len / out_len: an int, or (lo, hi) for log-uniform lengths drawn per request
# from a fixed seed (the same lengths in every repetition and for both backends).
WORKLOADS: dict[str, dict[str, Any]] = {
    "decode1": dict(group="decode-heavy", n=1, prompt_len=128, out_len=512),
    "decode16": dict(group="decode-heavy", n=16, prompt_len=128, out_len=512),
    "decode64": dict(group="decode-heavy", n=64, prompt_len=128, out_len=512),
    "prefill8": dict(group="prefill-heavy", n=8, prompt_len=2048, out_len=16),
    "mixed": dict(group="mixed", n=64, prompt_len=(32, 1536), out_len=(16, 512)),
}
QUICK_OUT = {"decode1": 128, "decode16": 128, "decode64": 128, "prefill8": 16, "mixed": (16, 128)}
LENGTH_SEED = 7


def workload_spec(name: str, quick: bool = False) -> dict[str, Any]:
    if name not in WORKLOADS:
        raise KeyError(f"unknown workload {name!r}; known: {', '.join(WORKLOADS)}")
    spec = dict(WORKLOADS[name], name=name)
    if quick:
        spec["out_len"] = QUICK_OUT[name]
    return spec


def _draw(rng: random.Random, x: int | Sequence[int]) -> int:
    if isinstance(x, int):
        return x
    lo, hi = x
    return int(round(math.exp(rng.uniform(math.log(lo), math.log(hi)))))


def request_lengths(spec: dict[str, Any]) -> list[tuple[int, int]]:
    """(prompt_len, out_len) per request; deterministic."""
    rng = random.Random(LENGTH_SEED)
    return [(_draw(rng, spec["prompt_len"]), _draw(rng, spec["out_len"])) for _ in range(spec["n"])]


def make_prompts(spec: dict[str, Any], vocab: int, seed: int) -> list[tuple[list[int], int]]:
    """(token ids, max_tokens) per request; token ids from ``seed`` (vary it per repetition so no
    prompt repeats: no prefix-cache hits even if the cache were on)."""
    rng = random.Random(seed)
    return [([rng.randrange(100, vocab - 1) for _ in range(p)], o) for p, o in request_lengths(spec)]


def workload_tokens(spec: dict[str, Any]) -> tuple[int, int]:
    lens = request_lengths(spec)
    return sum(p for p, _ in lens), sum(o for _, o in lens)


def max_seq_len(specs: Iterable[dict[str, Any]]) -> int:
    return max(p + o for s in specs for p, o in request_lengths(s))


# --------------------------------------------------------------------------- statistics


def percentile(xs: Sequence[float], q: float) -> float | None:
    """Linear-interpolated percentile (numpy's default); None for no samples."""
    xs = sorted(x for x in xs if x is not None and not (isinstance(x, float) and math.isnan(x)))
    if not xs:
        return None
    if len(xs) == 1:
        return float(xs[0])
    pos = (len(xs) - 1) * q / 100.0
    lo = int(math.floor(pos))
    hi = min(lo + 1, len(xs) - 1)
    return float(xs[lo] + (xs[hi] - xs[lo]) * (pos - lo))


def median(xs: Sequence[float]) -> float | None:
    return percentile(xs, 50)


def summarize_ms(samples_s: Sequence[float]) -> dict[str, Any]:
    """Seconds in, milliseconds out: median, p90, mean, n."""
    xs = [x for x in samples_s if x is not None]
    if not xs:
        return {"median": None, "p90": None, "mean": None, "n": 0}
    return {"median": round(percentile(xs, 50) * 1e3, 4), "p90": round(percentile(xs, 90) * 1e3, 4),
            "mean": round(sum(xs) / len(xs) * 1e3, 4), "n": len(xs)}


def token_timeline_stats(timeline: dict[str, list[tuple[float, int]]], t_submit: float
                         ) -> tuple[list[float], list[float], dict[str, int]]:
    """From per-request [(arrival time, new tokens), ...]: TTFT per request (first arrival minus
    submission) and inter-token gaps (a step that brought n > 1 tokens counts n gaps of dt/n)."""
    ttft, itl, ntok = [], [], {}
    for rid, events in timeline.items():
        events = sorted(events)
        if not events:
            continue
        ttft.append(events[0][0] - t_submit)
        ntok[rid] = sum(n for _, n in events)
        prev = events[0][0]
        for t, n in events[1:]:
            gap = (t - prev) / max(1, n)
            itl.extend([gap] * max(1, n))
            prev = t
    return ttft, itl, ntok


def step_batches(timeline: dict[str, list[tuple[float, int]]], same_step_s: float = 5e-4
                 ) -> list[tuple[float, int]]:
    """The engine steps seen in a token timeline: [(arrival time, requests that got tokens)].
    One step's outputs are processed together, so their arrivals lie microseconds apart;
    arrivals within ``same_step_s`` of a step's first one belong to it (steps are ms apart)."""
    steps: list[list[float]] = []
    for t in sorted(t for events in timeline.values() for t, _ in events):
        if steps and t - steps[-1][0] <= same_step_s:
            steps[-1][1] += 1
        else:
            steps.append([t, 1])
    return [(t, int(n)) for t, n in steps]


def step_gap_stats(steps: Sequence[tuple[float, int]]) -> dict[str, Any]:
    """Per decode batch size (requests that got a token in a step): how many steps, and the
    median gap to the step before in ms. Comparing engines at equal batch size separates a
    slower step from a different schedule (e.g. requests reaching decode sooner)."""
    by: dict[int, list[float]] = {}
    for (t0, _), (t1, n) in zip(steps, steps[1:]):
        by.setdefault(n, []).append((t1 - t0) * 1e3)
    batches = [n for _, n in steps]
    return {"steps": len(steps), "mean_batch": round(sum(batches) / len(batches), 2) if batches else None,
            "by_batch": {str(n): {"steps": len(g), "median_gap_ms": round(median(g), 4)}
                         for n, g in sorted(by.items())}}


def equal_batch_gap_ratio(ours: dict[str, Any], base: dict[str, Any], min_steps: int = 5) -> float | None:
    """Geometric mean over batch sizes both engines ran >= ``min_steps`` times of the ratio of
    median step gaps (ours / base), weighted by the smaller step count: <= 1 means our steps are
    no slower at the same batch size."""
    num = den = 0.0
    for n, o in (ours.get("by_batch") or {}).items():
        b = (base.get("by_batch") or {}).get(n)
        if not b or min(o["steps"], b["steps"]) < min_steps or not b["median_gap_ms"] or not o["median_gap_ms"]:
            continue
        w = min(o["steps"], b["steps"])
        num += w * math.log(o["median_gap_ms"] / b["median_gap_ms"])
        den += w
    return round(math.exp(num / den), 4) if den else None


def safe_ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or not b or (isinstance(a, float) and math.isnan(a)):
        return None
    return round(a / b, 4)


def spread(xs: Sequence[float]) -> float | None:
    """(max - min) / median of repeated measurements; None with fewer than two."""
    xs = [x for x in xs if x]
    if len(xs) < 2:
        return None
    return round((max(xs) - min(xs)) / median(xs), 4)


# --------------------------------------------------------------------------- profiles

KERNEL_CLASSES: list[tuple[str, re.Pattern[str]]] = [
    ("moe", re.compile(r"moe_|fused_moe|grouped_mm_kernel|int_histc", re.I)),
    # MLA: ours (mla_*) and vLLM's Triton MLA decode (_fwd_grouped_kernel_stage1, _fwd_kernel_stage2)
    ("attention", re.compile(r"unified_attention|reduce_segments|reshape_and_cache|attn|attention|flash|^mla_|"
                             r"_fwd_(grouped_)?kernel_stage", re.I)),
    ("gemm", re.compile(r"nvjet|gemm|cutlass|xmma|cublas|splitKreduce|splitk_reduce|^mm_(gemv_|tma_)?kernel|_mm_kernel|"
                        r"bmm|triton_tem_fused.*mm|matmul|_mm$", re.I)),
    ("fused elementwise (norm/act/rope)", re.compile(r"^triton_(poi|red|per)_|rms|norm|silu|gelu|rope|rotary|"
                                                      r"and_mul|gated_act", re.I)),
    ("sampler", re.compile(r"argmax|softmax|top_?k|top_?p|sampl|gumbel|exponential|logit|Reduce", re.I)),
    ("copy/fill/index", re.compile(r"copy|fill|memcpy|memset|index|gather|scatter|CatArray|slot_mapping", re.I)),
]


def kernel_class(name: str) -> str:
    for cls, rx in KERNEL_CLASSES:
        if rx.search(name):
            return cls
    return "other"


def classify_profile(kernels: Iterable[dict[str, Any]]) -> dict[str, float]:
    """{class: GPU microseconds} from rows {"name", "gpu_us"}."""
    out: dict[str, float] = {}
    for k in kernels:
        c = kernel_class(k["name"])
        out[c] = round(out.get(c, 0.0) + float(k.get("gpu_us", 0.0)), 1)
    return out


def reclassify_profile(prof: dict[str, Any]) -> dict[str, Any]:
    """Class a stored profile's kernels again with the current classifier: each ``top`` row's time
    moves from the class it was stored under to its class now (kernels outside ``top`` keep theirs)."""
    if "classes_us" not in prof or "top" not in prof:
        return prof
    classes = dict(prof["classes_us"])
    top = []
    for row in prof["top"]:
        old, new = row.get("class"), kernel_class(row["name"])
        if old is not None and old != new:
            us = float(row.get("gpu_us", 0.0))
            classes[old] = round(classes.get(old, 0.0) - us, 1)
            classes[new] = round(classes.get(new, 0.0) + us, 1)
        top.append(dict(row, **{"class": new}))
    return dict(prof, classes_us={c: v for c, v in classes.items() if abs(v) >= 0.05}, top=top)


HOST_TOP = 15  # host rows kept per profile


def is_runtime_call(name: str) -> bool:
    """A CUDA runtime/driver API call as the profiler names it (cudaLaunchKernel, cuLaunchKernelEx,
    cudaGraphLaunch, cudaStreamSynchronize, cudaMemcpyAsync, ...)."""
    return name.startswith(("cuda", "cu")) and len(name) > 4 and name[4 if name.startswith("cuda") else 2].isupper()


def host_row_name(name: str) -> str:
    """A host row's name with what differs between engines for the same work taken out: Inductor
    labels each compiled graph's call with its FX-graph cache key (``## Call CompiledFxGraph <key>
    ##``; ours has ``None`` there), so the same calls would otherwise count as ours extra."""
    if name.startswith("## Call CompiledFxGraph ") and name.endswith(" ##"):
        return "## Call CompiledFxGraph ##"
    return name


def summarize_host(cpu_events: Iterable[tuple[str, float]]) -> dict[str, Any]:
    """Host-side rows of a profiled run: CUDA runtime calls and CPU ops (aten ops, labelled
    ranges; inclusive times, so nested rows overlap), each {name: [calls, total us]}, the largest
    ``HOST_TOP`` of each. A host-bound gap shows up here: a sync per step, extra launches, a
    Python-side op the baseline does not run."""
    api: dict[str, list[float]] = {}
    ops: dict[str, list[float]] = {}
    for name, us in cpu_events:
        name = host_row_name(name)
        row = (api if is_runtime_call(name) else ops).setdefault(name, [0, 0.0])
        row[0] += 1
        row[1] += us

    def top(rows: dict[str, list[float]]) -> dict[str, list[float]]:
        ranked = sorted(rows.items(), key=lambda kv: -kv[1][1])[:HOST_TOP]
        return {k: [int(v[0]), round(v[1], 1)] for k, v in ranked}

    return {"api": top(api), "ops": top(ops)}


def host_differences(ours: dict[str, Any], base: dict[str, Any], n: int = 3) -> list[str]:
    """The host rows where our run spends most more than the baseline's, as 'name +calls, +ms'."""
    def rows(prof: dict[str, Any], part: str) -> dict[str, list[float]]:
        merged: dict[str, list[float]] = {}  # records written before host_row_name: merged here
        for name, (calls, us) in ((prof.get("host") or {}).get(part) or {}).items():
            row = merged.setdefault(host_row_name(name), [0, 0.0])
            row[0] += calls
            row[1] += us
        return merged

    out = []
    for part in ("api", "ops"):
        o, b = rows(ours, part), rows(base, part)
        for name in set(o) | set(b):
            co, uo = o.get(name, [0, 0.0])
            cb, ub = b.get(name, [0, 0.0])
            out.append(((uo - ub) / 1e3, f"{name} {co - cb:+d} calls {(uo - ub) / 1e3:+.1f} ms"))
    out.sort(reverse=True)
    return [t for d, t in out if d >= 0.5][:n]


def explain_gap(ours: dict[str, Any], base: dict[str, Any]) -> str:
    """One line: where our profiled run spends more time than the baseline's.

    ``ours``/``base``: {"wall_ms", "gpu_busy_ms", "classes_us": {class: us}}."""
    if not ours or not base or "classes_us" not in ours or "classes_us" not in base:
        return "no profile"
    deltas = []
    for c in set(ours["classes_us"]) | set(base["classes_us"]):
        d = (ours["classes_us"].get(c, 0.0) - base["classes_us"].get(c, 0.0)) / 1e3
        deltas.append((d, c))
    host_o = (ours.get("wall_ms") or 0) - (ours.get("gpu_busy_ms") or 0)
    host_b = (base.get("wall_ms") or 0) - (base.get("gpu_busy_ms") or 0)
    deltas.append((host_o - host_b, "host/launch gaps (wall - GPU busy)"))
    deltas.sort(reverse=True)
    wall_d = (ours.get("wall_ms") or 0) - (base.get("wall_ms") or 0)
    parts = [f"{c} {d:+.1f} ms" for d, c in deltas if abs(d) >= 0.05][:3]
    host = host_differences(ours, base)
    return (f"profiled run {ours.get('wall_ms', 0):.1f} vs {base.get('wall_ms', 0):.1f} ms ({wall_d:+.1f} ms); "
            f"largest differences: " + (", ".join(parts) if parts else "none")
            + (f"; host: {', '.join(host)}" if host else ""))


# --------------------------------------------------------------------------- metadata


def nvidia_smi_card() -> str | None:
    """The first GPU's name without touching CUDA in this process (None if no nvidia-smi)."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=20).stdout.strip().splitlines()
        return out[0].strip() if out and out[0].strip() else None
    except Exception:  # noqa: BLE001
        return None


STARTUP_LOG_PATTERNS = {
    "model_load_s": re.compile(r"Model loading took .*? and ([\d.]+) seconds"),
    "dynamo_s": re.compile(r"Dynamo bytecode transform time: ([\d.]+) s"),
    "torch_compile_total_s": re.compile(r"torch\.compile took ([\d.]+) s in total"),
    "graph_capture_s": re.compile(r"Graph capturing finished in ([\d.]+) secs"),
    "init_engine_s": re.compile(r"init engine \(profile, create kv cache, warmup model\) took ([\d.]+)"),
}


def parse_startup_log(text: str) -> dict[str, float]:
    """Startup phases from vLLM's log (last occurrence of each)."""
    out: dict[str, float] = {}
    for key, rx in STARTUP_LOG_PATTERNS.items():
        found = rx.findall(text)
        if found:
            out[key] = float(found[-1])
    return out


# --------------------------------------------------------------------------- engine comparisons


def side_ratios(ours: dict[str, Any], base: dict[str, Any], suffix: str = "") -> dict[str, Any]:
    """Ours against one baseline engine (summaries of ``tokens_per_s``, ``itl_ms``, ``ttft_ms``,
    ``spread``, ``steps``): throughput, ITL (median, p90) and TTFT ratios, the equal-batch step
    ratio, the noise (the larger rep spread) and whether the throughput ratio is within it.
    Keys carry ``suffix`` (``""`` for vLLM's compile path, ``"_vs_default"`` for its default)."""
    out = {"throughput_ratio": safe_ratio(ours["tokens_per_s"], base["tokens_per_s"]),
           "itl_ratio": safe_ratio(ours["itl_ms"]["median"], base["itl_ms"]["median"]),
           "itl_p90_ratio": safe_ratio(ours["itl_ms"]["p90"], base["itl_ms"]["p90"]),
           "ttft_ratio": safe_ratio(ours["ttft_ms"]["median"], base["ttft_ms"]["median"])}
    if ours.get("steps") and base.get("steps"):  # a slower step, or a different schedule?
        out["equal_batch_step_ratio"] = equal_batch_gap_ratio(ours["steps"], base["steps"])
        out["mean_batch"] = [ours["steps"]["mean_batch"], base["steps"]["mean_batch"]]
    noise = max([s for s in (ours.get("spread"), base.get("spread")) if s is not None], default=None)
    tr = out["throughput_ratio"]
    out["noise"] = noise
    out["within_noise"] = bool(noise is not None and tr is not None and abs(tr - 1.0) <= noise)
    return {k + suffix: v for k, v in out.items()}


def greedy_agreement(a: Sequence[Sequence[int]], b: Sequence[Sequence[int]],
                     b_gaps: Sequence[Sequence[float | None]] | None = None) -> dict[str, Any]:
    """Greedy tokens of engine ``a`` against engine ``b`` on the same prompts: sequences equal,
    positions equal before each sequence's first divergence (a flip changes every later token),
    and at each divergence ``b``'s top-2 logprob gap (small: a bf16 near-tie, not a wrong kernel)."""
    n = min(len(a), len(b))
    total = agree = equal = 0
    first = []
    for i in range(n):
        x, y = list(a[i]), list(b[i])
        m = min(len(x), len(y))
        k = next((j for j in range(m) if x[j] != y[j]), m)
        total += max(len(x), len(y))
        agree += k
        if k == m and len(x) == len(y):
            equal += 1
        else:
            gap = None
            if b_gaps is not None and i < len(b_gaps) and k < len(b_gaps[i]):
                gap = b_gaps[i][k]
            first.append({"seq": i, "pos": k, "top2_gap": gap})
    return {"sequences": n, "sequences_equal": equal, "positions": total,
            "match_rate": round(agree / total, 4) if total else None, "first_divergence": first}


def nvidia_smi_memory_gib() -> float | None:
    """The first GPU's total memory in GiB without touching CUDA here (None if no nvidia-smi)."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=memory.total", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=20).stdout.strip().splitlines()
        return round(float(out[0]) / 1024, 2) if out and out[0].strip() else None
    except Exception:  # noqa: BLE001
        return None


# --------------------------------------------------------------------------- .gpu-env


def fa3_env_problem(environ: dict[str, str] | None = None) -> str | None:
    """Why a FLASH_ATTN (FA3) engine cannot run here, or None. In ``.gpu-env`` (vLLM's CUDA
    extension replaced by a stub) its KV-cache write is served only in processes that see
    ``GPU_ENV_FA3=1``; ``GPU_ENV_FA3=1 source .gpu-env/setup.sh`` unpacks FA3 but does not export
    the variable to the engines' processes, which then fail after a minute of start-up."""
    import importlib.util

    environ = os.environ if environ is None else environ
    spec = importlib.util.find_spec("vllm")
    if spec is None or not spec.origin:
        return None
    try:
        stubbed = "extension is absent" in (Path(spec.origin).parent / "_C_stable_libtorch.py").read_text()
    except OSError:
        return None  # a vLLM with its own CUDA extension: nothing to serve
    if stubbed and environ.get("GPU_ENV_FA3") != "1":
        return ("vLLM's CUDA extension is the .gpu-env stub and GPU_ENV_FA3=1 is not in this process's environment: "
                "the FLASH_ATTN engine's KV-cache write would raise; run `export GPU_ENV_FA3=1; source "
                ".gpu-env/setup.sh` first (a `GPU_ENV_FA3=1 source ...` prefix does not reach the engines)")
    return None
