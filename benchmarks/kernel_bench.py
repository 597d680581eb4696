"""Kernel benchmarks on one GPU: our Triton ops vs cuBLAS / SDPA flash / Inductor, side by side.

    python benchmarks/kernel_bench.py                 # everything, writes results/kernels_<card>.json
    python benchmarks/kernel_bench.py --only gemm     # gemm | attn | elem | patterns | gate_up (comma separated)
    python benchmarks/kernel_bench.py --only attention   # paged attention (decode, prefill) vs FlashAttention-3:
                                                 # benchmarks/paged_attention.py; alone it writes
                                                 # attention_<card>.json (needs GPU_ENV_FA3=1 .gpu-env)
    python benchmarks/kernel_bench.py --only attention --dry-run   # the plan, on any machine
    python benchmarks/kernel_bench.py --only gemm --gemm-models all   # every GEMM of every registry model
                                                 # (benchmarks/models.py) at MODEL_GEMM_M
    python benchmarks/kernel_bench.py --tune          # sweep GEMM configs per (N, K, M bucket) and
                                                 # attention configs; writes tuned_sm90.json

Timing: CUDA-graph replays (no launch overhead, as under vLLM), median of replays, inputs rotated
over enough copies that each call reads HBM, not L2 (see _common.bench). Ratios are
baseline_time / our_time: > 1 means we are faster.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import re
import statistics
import sys
import time
import traceback

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import bench, card_slug, geomean, inductor_with_pdl, metadata, n_sets, timed_rounds, write_json  # noqa: E402

GEMM_NK = [(6144, 4096), (4096, 4096), (28672, 4096), (4096, 14336)]
LM_HEAD_NK = (128256, 4096)  # Llama-3's logits GEMM: eager in vLLM, every decode step
GEMM_M = [1, 16, 64, 128, 512, 2048, 4096]
MODEL_GEMM_M = [1, 8, 16, 32, 48, 64, 128, 256, 512, 2048, 4096]
ATTN_SEQ = [1024, 2048, 4096, 8192]
DT = torch.bfloat16


def log(*a):
    print(*a, flush=True)


# ------------------------------------------------------------------------------------ GEMM

def _gemm_sets(M, N, K):
    k = n_sets(N * K * 2 + M * K * 2)
    return [(torch.randn(M, K, device="cuda", dtype=DT), torch.randn(N, K, device="cuda", dtype=DT) / 64)
            for _ in range(k)]


def _check_gemm(out, a, w):
    ref = a.float() @ w.float().t()
    return ((out.float() - ref).norm() / ref.norm()).item()


def _inductor_mm():
    import torch._inductor.config as ic

    # One Dynamo compile per (M, N, K), all static: without these Dynamo stops compiling after 8
    # shapes (recompile_limit) or goes dynamic, and the "Inductor" column would be eager cuBLAS.
    torch._dynamo.config.recompile_limit = 1000
    torch._dynamo.config.cache_size_limit = 1000
    torch._dynamo.config.automatic_dynamic_shapes = False
    ic.max_autotune_gemm_backends = "TRITON"
    ic.max_autotune_gemm_search_space = "DEFAULT"

    def f(a, w):
        return a @ w.t()

    return torch.compile(f, mode="max-autotune-no-cudagraphs", dynamic=False)


_AUTOTUNE_LINE = re.compile(r"^\s+(\S+) ([0-9.]+) ms ([0-9.]+)% (.*)$")


def inductor_pick(autotune_log: str) -> dict | None:
    """The winner of Inductor's max-autotune table (its stderr: "AUTOTUNE mm(...)" then one line
    per choice, best first), as {"name", "ms", "BLOCK_M", ..., "num_warps"}: what our tuner's
    candidates should include."""
    for line in autotune_log.splitlines():
        m = _AUTOTUNE_LINE.match(line)
        if m:
            pick = {"name": m.group(1), "ms": float(m.group(2))}
            for key, val in re.findall(r"(\w+)=([^,]+)", m.group(4)):
                pick[key] = int(val) if val.strip().isdigit() else val.strip().strip("'")
            return pick
    return None


class _Tee:
    """stderr copied into a buffer (Inductor writes its autotune table with sys.stderr.write)."""

    def __init__(self):
        self.parts: list[str] = []

    def __enter__(self):
        self.real = sys.stderr
        sys.stderr = self
        return self

    def __exit__(self, *exc):
        sys.stderr = self.real

    def write(self, text):
        self.parts.append(text)
        return self.real.write(text)

    def flush(self):
        self.real.flush()


GEMM_ROUNDS = 3


def bench_gemm(with_inductor=True, ms=None, shapes=None, labels=None):
    """Ours (stored / tuned / modelled config, as a compile would get it) vs cuBLAS (and
    Inductor's autotuned Triton templates), and the cost model's untuned pick next to ours."""
    from tri_inductor.patterns.gemm import configs as GC
    from tri_inductor.patterns.gemm import ops as O
    from tri_inductor.patterns.gemm import tuning as GT

    rows = []
    dev = GC.device_info()
    ind = _inductor_mm() if with_inductor else None
    for N, K in shapes or GEMM_NK:
        for M in ms or GEMM_M:
            sets = _gemm_sets(M, N, K)
            a0, w0 = sets[0]
            t0 = time.time()
            cfg = O.choose_config(M, N, K, DT)  # tunes this bucket now if nothing is stored
            tune_s = time.time() - t0
            model = GT.default_config(N, K, GC.bucket_of(M), dev)
            err = _check_gemm(O.mm(a0, w0.t()), a0, w0)
            fns = {"ours": [lambda a=a, w=w: O.mm_launch(a, w.t(), None, cfg) for a, w in sets],
                   "cublas": [lambda a=a, w=w: torch.mm(a, w.t()) for a, w in sets]}
            if model != cfg:
                fns["model"] = [lambda a=a, w=w: O.mm_launch(a, w.t(), None, model) for a, w in sets]
            tc = float("nan")
            pick = None
            if ind is not None:
                try:
                    t1 = time.time()
                    with _Tee() as tee:
                        ind(a0, w0)
                    tc = time.time() - t1
                    pick = inductor_pick("".join(tee.parts))
                    fns["ind"] = [lambda a=a, w=w: ind(a, w) for a, w in sets]
                except Exception as e:  # noqa: BLE001
                    log(f"inductor mm failed {M}x{N}x{K}: {e!r}"[:300])
            # Rounds in alternating order, medians taken: one back-to-back pass per kernel
            # moved single rows by up to 7% between runs on the same card.
            times = timed_rounds(fns, GEMM_ROUNDS)
            t_ours, t_cublas = statistics.median(times["ours"]), statistics.median(times["cublas"])
            t_ind = statistics.median(times["ind"]) if "ind" in times else float("nan")
            t_model = statistics.median(times["model"]) if "model" in times else t_ours
            tflops = 2 * M * N * K / (t_ours * 1e-3) / 1e12
            row = dict(M=M, N=N, K=K, ours_ms=t_ours, cublas_ms=t_cublas, inductor_ms=t_ind, model_ms=t_model,
                       vs_cublas=t_cublas / t_ours, vs_inductor=t_ind / t_ours, model_vs_cublas=t_cublas / t_model,
                       tflops=tflops, rel_err=err, config=list(cfg), model_config=list(model),
                       choose_s=round(tune_s, 2),  # tuning this bucket (0 when stored)
                       inductor_compile_s=tc,  # Inductor's max-autotune compile of this shape
                       inductor_pick=pick,  # its autotuner's winner (tiles, stages, warps)
                       rounds_vs_cublas=[round(c / o, 4) for o, c in zip(times["ours"], times["cublas"])])
            if labels:
                row["shape"] = labels.get((N, K))
            rows.append(row)
            if os.environ.get("OUT"):  # survives a timeout
                with open(os.path.join(os.environ["OUT"], "gemm_rows.jsonl"), "a") as f:
                    f.write(json.dumps(row) + "\n")
            log(f"gemm M={M:5d} N={N:6d} K={K:6d} ours {t_ours*1e3:8.1f}us cublas {t_cublas*1e3:8.1f}us "
                f"model {t_model*1e3:8.1f}us ind {t_ind*1e3:8.1f}us  x{row['vs_cublas']:.3f} cublas "
                f"(model x{row['model_vs_cublas']:.3f}) x{row['vs_inductor']:.3f} ind {tflops:6.1f}TF err {err:.1e} "
                f"{cfg.short()} (chosen in {tune_s:.1f}s)")
            del sets
    torch.cuda.empty_cache()
    return rows


def _gemm_candidates(M, N, K, wide=False):
    """The whole candidate space of the cost model for this M (the compile-time tuner measures
    only its best-ranked few), the shipped entry first. ``wide``: also the spaces of the
    neighbouring M buckets (M / 4 .. 4 M), to see whether the space itself misses winners."""
    from tri_inductor.patterns.gemm import configs as GC
    from tri_inductor.patterns.gemm import heuristics as H

    dev = GC.device_info()
    prior = GC.shipped(N, K, GC.bucket_of(M), dev)
    out = ([prior] if prior else []) + H.ranked(M, N, K, dev)
    if wide:
        for m in (max(1, M // 4), max(1, M // 2), 2 * M, 4 * M):
            out += [c for c in H.candidates(m, N, K, dev) if c not in out]
    return out


def bucket_choices(report, bucket_of) -> dict:
    """{(N, K, bucket): config} from tuner rows (several M per bucket): the config with the least
    summed time relative to each M's best, among those that ran at every M of the bucket (one
    timed at the last M only would otherwise win on a one-term sum)."""
    from tri_inductor.patterns.gemm.configs import Cfg

    sums: dict[tuple[int, int, int], dict] = {}
    ms: dict[tuple[int, int, int], int] = {}
    for row in report:
        key = (row["N"], row["K"], bucket_of(row["M"]))
        ms[key] = ms.get(key, 0) + 1
        entry = sums.setdefault(key, {})
        best = min(t for t, _ in row["results"])
        for t, c in row["results"]:
            n, total = entry.get(tuple(c), (0, 0.0))
            entry[tuple(c)] = (n + 1, total + t / best)
    out = {}
    for key, e in sums.items():
        everywhere = [c for c, (n, _) in e.items() if n == ms[key]] or list(e)
        out[key] = Cfg(*min(everywhere, key=lambda c: e[c][1]))
    return out


def tune_gemm(out_dir, min_m=1, max_m=1 << 30, only_m=None, shapes=None, wide=False):
    """Offline sweep of the whole candidate space per (N, K, M); writes the shipped table
    (``tuned_sm90.json``: the previous entries plus this sweep's bucket winners)."""
    from tri_inductor.patterns.gemm import configs as GC
    from tri_inductor.patterns.gemm import ops as O
    from tri_inductor.patterns.gemm import tuning as GT

    if out_dir:
        os.makedirs(out_dir, exist_ok=True)
    prior = {f"{n},{k},{b}": list(c) for (n, k, b), c in GC.table_entries().items()}
    report = []
    for N, K in shapes or GEMM_NK:
        for M in only_m or GEMM_M:  # any M: several per bucket are summed into its choice
            if M < min_m or M > max_m:
                continue
            sets = _gemm_sets(M, N, K)
            a0, w0 = sets[0]
            t_cublas = bench([lambda a=a, w=w: torch.mm(a, w.t()) for a, w in sets], reps=10)
            results = []
            cands = _gemm_candidates(M, N, K, wide)
            # compile side by side first (one by one: minutes per shape)
            from tri_inductor import tuning as generic

            failed = generic.compile_side_by_side({c: (lambda c=c: O.mm_launch(a0, w0.t(), None, c)) for c in cands})
            for cfg in cands:
                if cfg in failed:  # never compiled twice (see tuning.compile_side_by_side)
                    log(f"  skip {tuple(cfg)}: did not compile ({type(failed[cfg]).__name__})")
                    continue
                try:
                    err = _check_gemm(O.mm_launch(a0, w0.t(), None, cfg), a0, w0)
                    if not err < 1e-2:
                        log(f"  BAD {cfg} err {err}")
                        continue
                    t = bench([lambda a=a, w=w: O.mm_launch(a, w.t(), None, cfg) for a, w in sets], reps=10)
                    results.append((t, cfg))
                except Exception as e:  # noqa: BLE001  (out of shared memory etc.)
                    log(f"  skip {tuple(cfg)}: {type(e).__name__}")
            results.sort(key=lambda r: r[0])
            # '*': a config the compile-time tuner measures for this bucket (tuning_candidates)
            tuner = set(GT.tuning_candidates(N, K, GC.bucket_of(M), GC.device_info()))
            top = ", ".join(f"x{t_cublas / t:.3f}{'*' if c in tuner else ''} {c.short()}" for t, c in results[:3])
            in_set = [t for t, c in results if c in tuner]
            log(f"tune M={M} N={N} K={K} cublas {t_cublas*1e3:.1f}us ({len(results)} configs) best {top}; "
                f"tuner's set best x{t_cublas / min(in_set) if in_set else float('nan'):.3f}")
            report.append(dict(M=M, N=N, K=K, cublas_ms=t_cublas,
                               results=[(t, list(c)) for t, c in results]))
            if out_dir:  # survives a timeout
                with open(os.path.join(out_dir, "tune_rows.jsonl"), "a") as f:
                    f.write(json.dumps(report[-1]) + "\n")
            del sets
            torch.cuda.empty_cache()
    table = dict(prior)
    table.update({f"{n},{k},{b}": list(c) for (n, k, b), c in bucket_choices(report, GC.bucket_of).items()})
    # The table ships in the package: configs only; every candidate's timing goes to a report.
    path = write_json("tuned_sm90.json", {"configs": table, "meta": metadata()}, out_dir)
    write_json("gemm_tune_report.json", {"meta": metadata(), "report": report}, out_dir)
    log(f"wrote {path} (copy it to tri_inductor/patterns/gemm/; timings: gemm_tune_report.json)")
    return table


# ------------------------------------------------------------------------------- attention

def _sdpa_flash(q, k, v):
    from torch.nn.attention import SDPBackend, sdpa_kernel

    with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
        return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)


def _attn_inputs(S, Hq=32, Hkv=8, D=128):
    k = n_sets((Hq + 2 * Hkv) * S * D * 2)
    return [(torch.randn(1, Hq, S, D, device="cuda", dtype=DT), torch.randn(1, Hkv, S, D, device="cuda", dtype=DT),
             torch.randn(1, Hkv, S, D, device="cuda", dtype=DT)) for _ in range(k)]


def bench_attention():
    from tri_inductor.patterns import attention as A

    rows = []
    for S in ATTN_SEQ:
        sets = _attn_inputs(S)
        q, k, v = sets[0]
        scale = 1 / math.sqrt(128)
        ours = A.attention(q, k, v, True, scale)
        try:
            ref = _sdpa_flash(q, k, v)
            flash = _sdpa_flash
        except Exception as e:  # noqa: BLE001  flash without enable_gqa: expand k/v beforehand
            log(f"flash+gqa failed ({e!r:.100}); expanding k/v")
            sets = [(q_, k_.repeat_interleave(4, 1), v_.repeat_interleave(4, 1)) for q_, k_, v_ in sets]
            flash = _sdpa_flash
            ref = flash(*sets[0])
        err = ((ours.float() - ref.float()).norm() / ref.float().norm()).item()
        t_ours = bench([lambda q=q, k=k, v=v: A.attention(q, k, v, True, scale) for q, k, v in _attn_inputs_cache(sets)])
        t_flash = bench([lambda q=q, k=k, v=v: flash(q, k, v) for q, k, v in sets])
        flops = 4 * S * S * 128 * 32 / 2
        row = dict(S=S, ours_ms=t_ours, flash_ms=t_flash, vs_flash=t_flash / t_ours,
                   ours_tflops=flops / t_ours / 1e9, flash_tflops=flops / t_flash / 1e9, rel_err_vs_flash=err)
        rows.append(row)
        log(f"attn S={S:5d} ours {t_ours*1e3:8.1f}us ({row['ours_tflops']:.0f}TF) flash {t_flash*1e3:8.1f}us "
            f"({row['flash_tflops']:.0f}TF) x{row['vs_flash']:.3f} err {err:.1e}")
    return rows


def _attn_inputs_cache(sets):
    # our kernel reads k/v of the Hkv heads; if flash needed expanded k/v, give ours the originals
    return [(q, k[:, ::4] if k.shape[1] == q.shape[1] else k, v[:, ::4] if v.shape[1] == q.shape[1] else v)
            for q, k, v in sets]


def tune_attention():
    from tri_inductor.patterns import attention as A

    sweeps = {
        128: [(128, 64, 8, 3), (128, 128, 8, 3), (128, 64, 4, 3), (128, 128, 8, 2), (64, 64, 4, 3),
              (128, 32, 4, 4), (64, 128, 4, 3), (128, 64, 8, 4), (128, 128, 4, 3)],
        64: [(128, 64, 4, 3), (128, 128, 8, 3), (128, 64, 8, 3), (128, 128, 4, 3), (64, 64, 4, 4)],
        256: [(128, 64, 8, 2), (64, 64, 4, 2), (64, 32, 4, 3), (128, 32, 8, 2), (64, 64, 8, 2)],
    }
    out = {}
    saved = dict(A.PREFILL_CONFIGS)
    for D, cands in sweeps.items():
        for S in ((1024, 4096) if D == 128 else (2048,)):
            sets = _attn_inputs(S, D=D)
            ref = _sdpa_flash(*sets[0])
            t_flash = bench([lambda q=q, k=k, v=v: _sdpa_flash(q, k, v) for q, k, v in sets], reps=10)
            res = []
            for cfg in cands:
                A.PREFILL_CONFIGS[(D, False)] = cfg
                try:
                    o = A.attention(*sets[0], True, 1 / math.sqrt(D))
                    err = ((o.float() - ref.float()).norm() / ref.float().norm()).item()
                    if not err < 2e-2:
                        log(f"  BAD attn {cfg} err {err}")
                        continue
                    t = bench([lambda q=q, k=k, v=v: A.attention(q, k, v, True, 1 / math.sqrt(D))
                               for q, k, v in sets], reps=10)
                    res.append((t, cfg))
                except Exception as e:  # noqa: BLE001
                    log(f"  skip attn {cfg}: {type(e).__name__}")
            res.sort()
            out[f"D{D}_S{S}"] = dict(flash_ms=t_flash, results=res)
            log(f"attn-tune D={D} S={S} flash {t_flash*1e3:.1f}us: " +
                ", ".join(f"{c}:{t*1e3:.1f}us(x{t_flash/t:.2f})" for t, c in res[:5]))
            A.PREFILL_CONFIGS.update(saved)
    return out


def check_attention_patterns():
    """On a real GPU (SDPA dispatch works): does the explicit softmax(QK^T)V form reach our kernel
    through Inductor's sfdp fusion + our post-grad patterns? And SDPA itself?"""
    import torch._inductor.config as ic
    from torch._inductor.custom_graph_pass import CustomGraphPass
    from torch._inductor.pattern_matcher import PatternMatcherPass
    from torch._inductor.utils import run_and_get_code

    from tri_inductor.patterns import attention as A

    pm = PatternMatcherPass()
    A.register_patterns(pm)
    hits = []

    class Pass(CustomGraphPass):
        def __call__(self, g):
            hits.append(pm.apply(g))

        def uuid(self):
            return "bench-attn"

    def explicit(q, k, v):
        return torch.softmax((q @ k.transpose(-2, -1)) * 0.125, dim=-1) @ v

    def explicit_causal(q, k, v):
        s = (q @ k.transpose(-2, -1)) * 0.125
        m = torch.ones(s.shape[-2], s.shape[-1], dtype=torch.bool, device=s.device).tril()
        return torch.softmax(s.masked_fill(~m, float("-inf")), dim=-1) @ v

    def sdpa(q, k, v):
        return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)

    out = {}
    q, k, v = (torch.randn(2, 8, 256, 64, device="cuda", dtype=DT) for _ in range(3))
    for fn in (explicit, explicit_causal, sdpa):
        hits.clear()
        torch._dynamo.reset()
        try:
            with ic.patch(post_grad_custom_post_pass=Pass(), force_disable_caches=True):
                res, codes = run_and_get_code(torch.compile(fn, backend="inductor"), q, k, v)
            ok = "attention_fwd_kernel" in "".join(codes)
            err = ((res.float() - fn(q, k, v).float()).norm() / fn(q, k, v).float().norm()).item()
            out[fn.__name__] = dict(hits=sum(hits), ours=ok, rel_err=err)
        except Exception as e:  # noqa: BLE001
            out[fn.__name__] = dict(error=repr(e)[:300])
        log(f"pattern check {fn.__name__}: {out[fn.__name__]}")
    return out


# ---------------------------------------------------------------------- elementwise / norms

ELEM_ROUNDS = 5


def bench_elementwise():
    rows = []
    T, H = 4096, 4096
    nbytes = T * H * 2

    # Copy bandwidth: the ceiling for these memory-bound ops.
    xs = [torch.randn(T, H, device="cuda", dtype=DT) for _ in range(max(4, n_sets(2 * nbytes)))]
    t_copy = statistics.median(bench([lambda x=x: x.clone() for x in xs]) for _ in range(ELEM_ROUNDS))
    copy_bw = 2 * nbytes / t_copy / 1e9
    log(f"copy {t_copy*1e3:.1f}us {copy_bw:.2f} TB/s")
    rows.append(dict(op="copy", ours_ms=t_copy, tbps=copy_bw))

    def add_row(name, ours, eager, make_inputs, moved_bytes, pdl_reference=False):
        # >= 4 input sets (only 2 would fit the rotation in HBM-cold terms for 80 MB ops, and
        # then placement decides how much stays in L2), and ours / Inductor measured in
        # alternating rounds, medians taken: single back-to-back passes moved ratios by +-10%.
        # pdl_reference: our kernel launches with PDL (TRI_INDUCTOR_PDL=1, patterns/_pdl.py);
        # Inductor's default does not, so Inductor with its opt-in ``triton.enable_pdl`` is timed too.
        sets = [make_inputs() for _ in range(max(4, n_sets(moved_bytes)))]
        ind = torch.compile(eager, backend="inductor", dynamic=False)
        fns = {"ours": [lambda s=s: ours(*s) for s in sets], "inductor": [lambda s=s: ind(*s) for s in sets]}
        if pdl_reference:
            ind_pdl = inductor_with_pdl(eager, *sets[0])
            fns["inductor_pdl"] = [lambda s=s: ind_pdl(*s) for s in sets]
        o, r = ours(*sets[0]), eager(*sets[0])
        o, r = (o if isinstance(o, (tuple, list)) else (o,)), (r if isinstance(r, (tuple, list)) else (r,))
        err = max(((a.float() - b.float()).norm() / b.float().norm()).item() for a, b in zip(o, r))
        times = timed_rounds(fns, ELEM_ROUNDS)
        t_ours, t_ind = statistics.median(times["ours"]), statistics.median(times["inductor"])
        tb = moved_bytes / t_ours / 1e9
        row = dict(op=name, ours_ms=t_ours, inductor_ms=t_ind, vs_inductor=t_ind / t_ours, tbps=tb,
                   frac_of_copy=tb / copy_bw, inductor_tbps=moved_bytes / t_ind / 1e9, rel_err=err,
                   rounds_ratio=[round(i / o_, 4) for o_, i in zip(times["ours"], times["inductor"])])
        if pdl_reference:
            t_pdl = statistics.median(times["inductor_pdl"])
            row.update(inductor_pdl_ms=t_pdl, vs_inductor_pdl=t_pdl / t_ours)
        rows.append(row)
        log(f"{name:12s} ours {t_ours*1e3:7.1f}us ({tb:.2f} TB/s, {row['frac_of_copy']:.0%} of copy) "
            f"inductor {t_ind*1e3:7.1f}us x{row['vs_inductor']:.3f} err {err:.1e}"
            + (f"; inductor enable_pdl x{row['vs_inductor_pdl']:.3f}" if pdl_reference else ""))

    eps = 1e-6
    try:
        from tri_inductor.patterns import rms_norm as R

        def rms_eager(x, w):
            xf = x.float()
            return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype) * w

        def add_rms_eager(x, r, w):
            h = x + r
            return rms_eager(h, w), h

        w = torch.randn(H, device="cuda", dtype=DT)
        add_row("rms_norm", lambda x, w: R.rms_norm(x, w, eps), rms_eager,
                lambda: (torch.randn(T, H, device="cuda", dtype=DT), w), 2 * nbytes)
        add_row("add_rms_norm", lambda x, r, w: R.fused_add_rms_norm(x, r, w, eps), add_rms_eager,
                lambda: (torch.randn(T, H, device="cuda", dtype=DT), torch.randn(T, H, device="cuda", dtype=DT), w),
                4 * nbytes)
    except Exception as e:  # noqa: BLE001
        log(f"NOTE: rms_norm rows skipped: {e!r:.200}")
    try:
        from tri_inductor.patterns import rope as RP

        Hq, Hk, D = 32, 8, 128

        def rope_eager(q, k, cos, sin):
            def rot(x):
                x1, x2 = x[..., : D // 2], x[..., D // 2:]
                return torch.cat((-x2, x1), -1)
            c, s = cos.unsqueeze(1), sin.unsqueeze(1)
            return (q * c + rot(q) * s), (k * c + rot(k) * s)

        def mk():
            ang = torch.rand(1, T, D // 2, device="cuda") * 6
            cos = torch.cat([ang.cos(), ang.cos()], -1).to(DT)
            sin = torch.cat([ang.sin(), ang.sin()], -1).to(DT)
            return (torch.randn(1, Hq, T, D, device="cuda", dtype=DT), torch.randn(1, Hk, T, D, device="cuda", dtype=DT),
                    cos, sin)

        add_row("rope", lambda q, k, c, s: RP.rope_cos_sin(q, k, c, s, True), rope_eager, mk,
                2 * (Hq + Hk) * T * D * 2)
    except Exception as e:  # noqa: BLE001
        log(f"NOTE: rope row skipped: {e!r:.200}")
    try:
        from tri_inductor.patterns import activation as AC

        F = torch.nn.functional
        d = H

        def silu_eager(x):
            return F.silu(x[..., :d]) * x[..., d:]

        def gelu_eager(x):
            return F.gelu(x[..., :d], approximate="tanh") * x[..., d:]

        mk = lambda: (torch.randn(T, 2 * d, device="cuda", dtype=DT),)  # noqa: E731
        pdl = AC.pdl_enabled(torch.device("cuda"))
        add_row("silu_mul", lambda x: AC.silu_and_mul(x), silu_eager, mk, 3 * nbytes, pdl_reference=pdl)
        add_row("gelu_mul", lambda x: AC.gelu_and_mul(x, "tanh"), gelu_eager, mk, 3 * nbytes, pdl_reference=pdl)
    except Exception as e:  # noqa: BLE001
        log(f"NOTE: activation rows skipped: {e!r:.200}")
    return rows


# ------------------------------------------------------------------- fused gate_up + SiLU-and-mul

GATE_UP_NK = (28672, 4096)  # Llama-3-8B's merged gate_up projection: I = 14336
GATE_UP_ROUNDS = 3


def bench_gate_up(ms=None):
    """The MLP's first half, act(x @ w_gate.T) * (x @ w_up.T), three ways, side by side:
    ``fused``: our mm_act_mul (one GEMM, the activation in its epilogue: what the gate_up family
    compiles to); ``ours``: our GEMM then our SiLU-and-mul kernel (the families apart);
    ``stock``: cuBLAS then Inductor's SiLU-and-mul kernel (vLLM's compile path with Inductor)."""
    from tri_inductor.patterns import activation as AC
    from tri_inductor.patterns.gemm import ops as L

    F = torch.nn.functional
    N, K = GATE_UP_NK
    d = N // 2
    silu_ind = torch.compile(lambda h: F.silu(h[..., :d]) * h[..., d:], backend="inductor", dynamic=False)
    rows = []
    for M in ms or GEMM_M:
        sets = _gemm_sets(M, N, K)
        a0, w0 = sets[0]
        ref = AC.reference_silu_and_mul(a0.double() @ w0.double().t())
        fused0 = L.mm_act_mul(a0, w0.t(), "silu")
        err = ((fused0.double() - ref).norm() / ref.norm()).item()
        unfused_diff = ((fused0.float() - AC.silu_and_mul(L.mm(a0, w0.t())).float()).norm()
                        / ref.norm()).item()
        fns = {"fused": [lambda a=a, w=w: L.mm_act_mul(a, w.t(), "silu") for a, w in sets],
               "ours": [lambda a=a, w=w: AC.silu_and_mul(L.mm(a, w.t())) for a, w in sets],
               "stock": [lambda a=a, w=w: silu_ind(torch.mm(a, w.t())) for a, w in sets]}
        times = timed_rounds(fns, GATE_UP_ROUNDS)  # alternating order, medians (as the GEMM rows)
        t = {k: statistics.median(v) for k, v in times.items()}
        row = dict(M=M, N=N, K=K, fused_ms=t["fused"], ours_unfused_ms=t["ours"], stock_ms=t["stock"],
                   vs_unfused=t["ours"] / t["fused"], vs_stock=t["stock"] / t["fused"], rel_err=err,
                   rel_diff_vs_unfused=unfused_diff,
                   rounds_vs_stock=[round(s_ / f, 4) for f, s_ in zip(times["fused"], times["stock"])])
        rows.append(row)
        log(f"gate_up M={M:5d} fused {t['fused']*1e3:8.1f}us ours-unfused {t['ours']*1e3:8.1f}us "
            f"cuBLAS+Inductor {t['stock']*1e3:8.1f}us  x{row['vs_unfused']:.3f} vs unfused, "
            f"x{row['vs_stock']:.3f} vs stock, err {err:.1e}")
    return rows


# -------------------------------------------------------------------------------------- main

def main():
    p = argparse.ArgumentParser()
    p.add_argument("--tune", action="store_true")
    p.add_argument("--only", default="elem,gemm,attn,patterns,gate_up")
    p.add_argument("--out", default=os.environ.get("OUT") or None, help="results folder")
    p.add_argument("--no-inductor", action="store_true")
    p.add_argument("--tune-min-m", type=int, default=1)
    p.add_argument("--tune-what", default="gemm,attn")
    p.add_argument("--tune-max-m", type=int, default=1 << 30)
    p.add_argument("--tune-m", default="", help="comma-separated M values to tune, any M "
                   "(default: --gemm-m, else the acceptance grid)")
    p.add_argument("--tune-nk", default="", help="comma-separated NxK shapes to tune (default: the Llama-8B "
                   "linear shapes; 'lm_head' adds 128256x4096)")
    p.add_argument("--tune-wide", action="store_true", help="also sweep the neighbouring M buckets' "
                   "candidate spaces (does the space miss winners?)")
    p.add_argument("--bench-after-tune", action="store_true", help="then benchmark with the new table")
    p.add_argument("--gemm-m", default="", help="comma-separated M values of the GEMM table (default: the "
                   "acceptance grid " + ",".join(map(str, GEMM_M)) + "); also the M values --tune-m defaults to")
    p.add_argument("--gemm-nk", default="", help="NxK shapes of the GEMM table, as --tune-nk")
    p.add_argument("--gemm-models", default="", help="comma-separated models of benchmarks/models.py (or "
                   "'all'): their q/k/v, o, gate_up, down and lm_head GEMMs at " + ",".join(map(str, MODEL_GEMM_M)))
    p.add_argument("--attn-kernels", default="", help="paged attention columns (default vllm_triton,fa3 and "
                   "tri_inductor when its module imports); module:function plugs any paged_attention-like callable")
    p.add_argument("--attn-ours", default=None, help="the column the JSON's attention_*_vs_fa3 keys are about "
                   "(default tri_inductor if present, else vllm_triton)")
    p.add_argument("--attn-kinds", default="decode,prefill", help="paged attention points: any of decode, decode_mixed (mixed context lengths), prefill")
    p.add_argument("--attn-rounds", type=int, default=3)
    p.add_argument("--dry-run", action="store_true", help="print what would run (paged attention's points, "
                   "memory plan, kernels found); touches no GPU")
    p.add_argument("--gemm-tp", type=int, default=1, help="with --gemm-models: the per-rank shapes at this "
                   "tensor-parallel size")
    args = p.parse_args()
    if args.dry_run:
        import paged_attention as PA

        only = args.only.split(",")
        print(f"sections: {', '.join(only)}")
        if "attention" in only:
            found, why = PA.resolve_kernels(args.attn_kernels.split(",") if args.attn_kernels else None)
            pts = PA.points(args.attn_kinds.split(","))
            mem_gib = torch.cuda.mem_get_info()[0] / 2**30 if torch.cuda.is_available() else 140.0
            print(PA.describe(pts, PA.plan_memory(pts, mem_gib), list(found)))
            for k, w in why.items():
                print(f"  kernel {k} not available here: {w}")
        return

    def nk_list(text, flag):
        try:
            return [LM_HEAD_NK if x == "lm_head" else tuple(int(v) for v in x.split("x"))
                    for x in text.split(",") if x] or None
        except ValueError:
            p.error(f"{flag} {text!r}: give NxK shapes such as 6144x4096, or lm_head")

    def m_list(text, flag):
        try:
            return [int(m) for m in text.split(",") if m] or None
        except ValueError:
            p.error(f"{flag} {text!r}: give comma-separated integers such as 24,32,48")

    gemm_m, gemm_nk = m_list(args.gemm_m, "--gemm-m"), nk_list(args.gemm_nk, "--gemm-nk")
    labels = None
    if args.gemm_models:
        import models

        names = list(models.MODELS) if args.gemm_models == "all" else args.gemm_models.split(",")
        labels = {}
        for name in names:
            for proj, nk in models.gemm_shapes(models.config(name), args.gemm_tp).items():
                labels.setdefault(nk, f"{name}:{proj}" + (f"@tp{args.gemm_tp}" if args.gemm_tp > 1 else ""))
        gemm_nk = list(labels)
        gemm_m = gemm_m or MODEL_GEMM_M
    torch.manual_seed(0)
    meta = metadata()
    log(meta)
    t0 = time.time()
    if args.tune:
        table = {}
        attn = {}
        if "gemm" in args.tune_what:
            table = tune_gemm(args.out, args.tune_min_m, args.tune_max_m,
                              m_list(args.tune_m, "--tune-m") or gemm_m, nk_list(args.tune_nk, "--tune-nk"),
                              args.tune_wide)
        if "attn" in args.tune_what:
            attn = tune_attention()
        write_json("tune_summary.json", {"meta": meta, "gemm": table, "attn": attn}, args.out)
        log(f"tuned in {time.time() - t0:.0f}s")
        if not args.bench_after_tune:
            return
    res = {"meta": meta}
    only = args.only.split(",")
    # Off the acceptance grid the table is a sweep, not the record report.py reads
    out_name = f"{'gemm_models' if labels else 'gemm_sweep' if gemm_m or gemm_nk else 'kernels'}_{card_slug()}.json"
    if only == ["attention"]:  # its own record: does not replace the kernels one
        out_name = f"attention_{card_slug()}.json"

    def paged():
        import paged_attention as PA

        return PA.run(args.attn_kernels.split(",") if args.attn_kernels else None, args.attn_ours,
                      args.attn_kinds.split(","), args.attn_rounds, log)
    for name, fn in (("elem", bench_elementwise), ("attn", bench_attention),
                     ("patterns", check_attention_patterns),
                     ("gemm", lambda: bench_gemm(not args.no_inductor, gemm_m, gemm_nk, labels)),
                     ("gate_up", lambda: bench_gate_up(gemm_m)), ("attention", paged)):
        if name in only:
            try:
                res[name] = fn()
            except Exception:  # noqa: BLE001
                traceback.print_exc()
                res[name] = "failed"
            write_json(out_name, res, args.out)  # partial results survive a timeout
    if isinstance(res.get("gemm"), list):
        g = res["gemm"]
        res["gemm_geomean_vs_cublas"] = geomean([r["vs_cublas"] for r in g])
        res["gemm_min_vs_cublas"] = min(r["vs_cublas"] for r in g)
        res["gemm_geomean_vs_inductor"] = geomean([r["vs_inductor"] for r in g])
        res["gemm_model_geomean_vs_cublas"] = geomean([r["model_vs_cublas"] for r in g])
        from tri_inductor import cache as _cache

        res["tuning"] = _cache.counters()
    if isinstance(res.get("gate_up"), list):
        res["gate_up_geomean_vs_stock"] = geomean([r["vs_stock"] for r in res["gate_up"]])
        res["gate_up_geomean_vs_unfused"] = geomean([r["vs_unfused"] for r in res["gate_up"]])
    if isinstance(res.get("attn"), list):
        res["attn_geomean_vs_flash"] = geomean([r["vs_flash"] for r in res["attn"]])
    if isinstance(res.get("attention"), dict):  # the summary keys at the top, as the other sections'
        res.update({k: v for k, v in res["attention"].items() if k.startswith("attention_")})
    path = write_json(out_name, res, args.out)
    log(f"\nwrote {path} in {time.time() - t0:.0f}s")
    # ---- the table
    log(f"\n== {meta['card']} torch {meta['torch']} triton {meta['triton']} commit {meta['commit'][:10]}")
    if isinstance(res.get("elem"), list):
        log(f"{'op':14s}{'ours us':>9s}{'TB/s':>7s}{'%copy':>7s}{'ind us':>9s}{'vs ind':>8s}")
        for r in res["elem"]:
            log(f"{r['op']:14s}{r['ours_ms']*1e3:9.1f}{r['tbps']:7.2f}{r.get('frac_of_copy', 1):7.0%}"
                f"{r.get('inductor_ms', float('nan'))*1e3:9.1f}{r.get('vs_inductor', float('nan')):8.3f}")
    if isinstance(res.get("attn"), list):
        log(f"{'attn S':>8s}{'ours us':>10s}{'flash us':>10s}{'vs flash':>9s}{'TF ours':>8s}")
        for r in res["attn"]:
            log(f"{r['S']:8d}{r['ours_ms']*1e3:10.1f}{r['flash_ms']*1e3:10.1f}{r['vs_flash']:9.3f}{r['ours_tflops']:8.0f}")
    if isinstance(res.get("gemm"), list):
        log(f"{'M':>5s}{'N':>6s}{'K':>6s}{'ours us':>9s}{'cublas':>9s}{'ind':>9s}{'vs cub':>7s}{'vs ind':>7s}{'TF':>6s}")
        for r in res["gemm"]:
            log(f"{r['M']:5d}{r['N']:6d}{r['K']:6d}{r['ours_ms']*1e3:9.1f}{r['cublas_ms']*1e3:9.1f}"
                f"{r['inductor_ms']*1e3:9.1f}{r['vs_cublas']:7.3f}{r['vs_inductor']:7.3f}{r['tflops']:6.0f}")
        log("worst ten vs cuBLAS:")
        for r in sorted(res["gemm"], key=lambda r: r["vs_cublas"])[:10]:
            log(f"  {r.get('shape') or ''} M={r['M']} N={r['N']} K={r['K']} x{r['vs_cublas']:.3f} "
                f"(model x{r['model_vs_cublas']:.3f})")
        log(f"gemm geomean vs cuBLAS {res['gemm_geomean_vs_cublas']:.3f}, min {res['gemm_min_vs_cublas']:.3f}, "
            f"cost model alone {res['gemm_model_geomean_vs_cublas']:.3f}, "
            f"geomean vs Inductor-Triton {res['gemm_geomean_vs_inductor']:.3f}; tuning {res['tuning']}")
    if isinstance(res.get("gate_up"), list):
        log(f"{'gate_up M':>9s}{'fused us':>10s}{'unfused':>9s}{'stock':>9s}{'vs unf':>8s}{'vs stock':>9s}")
        for r in res["gate_up"]:
            log(f"{r['M']:9d}{r['fused_ms']*1e3:10.1f}{r['ours_unfused_ms']*1e3:9.1f}{r['stock_ms']*1e3:9.1f}"
                f"{r['vs_unfused']:8.3f}{r['vs_stock']:9.3f}")
        log(f"gate_up fused geomean vs cuBLAS+Inductor SiLU {res['gate_up_geomean_vs_stock']:.3f}, "
            f"vs our GEMM + SiLU apart {res['gate_up_geomean_vs_unfused']:.3f}")
    if "attn_geomean_vs_flash" in res:
        log(f"attention geomean vs SDPA flash {res['attn_geomean_vs_flash']:.3f}")
    if "attention_ours" in res:
        log(f"paged attention ({res['attention_ours']}) vs FA3: decode geomean {res['attention_decode_geomean_vs_fa3']}, "
            f"prefill geomean {res['attention_prefill_geomean_vs_fa3']}, min {res['attention_min_vs_fa3']}; "
            f"per kernel {res['attention_geomeans_vs_fa3']}; worst five {res['attention_worst5']}")


if __name__ == "__main__":
    main()
