#!/usr/bin/env python3
"""docs/performance.md (and README's one performance line, and a PNG of the ratios) from
``benchmarks/results/*.json``.

    python3 benchmarks/report.py                      # Markdown to stdout
    python3 benchmarks/report.py --write-docs         # write docs/performance.md + README's line
    python3 benchmarks/report.py --write-readme       # README's line only
    python3 benchmarks/report.py --plot perf.png      # bar chart of the ratios (matplotlib)

Reads every ``*.json`` in the results folder, by name: ``e2e_*`` (benchmarks/e2e_vllm.py),
``kernels_*`` (benchmarks/kernel_bench.py), ``moe_kernels_*`` (benchmarks/moe_kernels.py), ``census_*`` (benchmarks/vllm_census.py), ``cache_*``
(compile-cache timings; shown generically), ``serve_load_*`` (benchmarks/serve_load.py), ``hf_prefill_*``
(benchmarks/hf_prefill.py).  Any of them may be absent; files that do not parse
are listed, not fatal.  README gets one line (:func:`headline`): it replaces only the text
between ``<!-- perf-table:start -->`` and ``<!-- perf-table:end -->``; if README has no such
block, the block (markers included) is appended at the end.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
README = ROOT / "README.md"
DOCS_PAGE = ROOT / "docs" / "performance.md"
START, END = "<!-- perf-table:start -->", "<!-- perf-table:end -->"
KINDS = ("e2e", "kernels", "attention", "gemm_models", "moe_kernels", "census", "cache", "serve_load",
         "hf_prefill")
OURS, BASE, DEFAULT = "tri_inductor", "inductor", "default"


# ======================================================================= loading


def load_results(folder: str | Path) -> dict[str, list[tuple[str, Any]]]:
    """{kind: [(file name, data), ...]} for kind in e2e/kernels/census/cache, plus "unreadable"."""
    out: dict[str, list[tuple[str, Any]]] = {k: [] for k in (*KINDS, "unreadable")}
    folder = Path(folder)
    if not folder.is_dir():
        return out
    for path in sorted(folder.glob("*.json")):
        kind = next((k for k in KINDS if path.name.startswith(k + "_")), None)
        if kind is None:
            continue
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            out["unreadable"].append((path.name, repr(e)[:200]))
            continue
        if not isinstance(data, dict):
            out["unreadable"].append((path.name, "not a JSON object"))
            continue
        out[kind].append((path.name, data))
    # full-size e2e runs first, then by name
    out["e2e"].sort(key=lambda nd: (nd[1].get("settings", {}).get("layers", 32) != 32, nd[0]))
    return out


# ======================================================================= formatting


def _cold_start_breakdown(c: dict) -> str | None:
    """Where our cold start's extra time went (the engine's cache counters; records from before
    they were kept have none of these fields)."""
    if "pass_s" not in c:
        return None
    per = ", ".join(f"{name} {_num(c[f])}" for name, f in (("GEMM", "tune_gemm_s"), ("paged attention", "tune_attention_s"),
                                                            ("MoE", "tune_moe_s")) if c.get(f))
    return (f"Our cold start beyond Inductor's own work (s): tuning {_num(c.get('tune_s'))}"
            + (f" ({per}; compiling candidates {_num(c.get('tune_compile_s'))})" if per else "")
            + f", pattern registration {_num(c.get('register_s'))}, pattern pass {_num(c.get('pass_s'))}, "
            f"mutation analysis of our kernels {_num(c.get('mutation_s'))} ({_num(c.get('mutation_runs'), 0)} runs)"
            + (f"; compiled ahead in the background: {_num(c.get('ahead_kernels'), 0)} kernels in "
               f"{_num(c.get('ahead_compile_s'))} s, tuning waited {_num(c.get('ahead_wait_s'))} s for them"
               if c.get("ahead_kernels") else "") + ".")


def _num(x: Any, nd: int = 1, suffix: str = "") -> str:
    if x is None or (isinstance(x, float) and (math.isnan(x) or math.isinf(x))):
        return "-"
    if isinstance(x, (int, float)):
        return f"{x:,.{nd}f}{suffix}"
    return str(x)


def _ratio(x: Any) -> str:
    return "-" if not isinstance(x, (int, float)) or math.isnan(x) else f"{x:.3f}x"


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c).replace("|", "\\|") for c in r) + " |" for r in rows]
    return "\n".join(lines)


def _lens(v: Any) -> str:
    return f"{v[0]}..{v[1]}" if isinstance(v, (list, tuple)) else str(v)


def _meta_line(card: Any, versions: dict[str, Any] | None, commit: Any, extra: str = "") -> str:
    versions = versions or {}
    parts = [f"card **{card or '?'}**"]
    for k in ("torch", "triton", "vllm"):
        if versions.get(k):
            parts.append(f"{k} {versions[k]}")
    parts.append(f"commit `{str(commit or '?')[:10]}`")
    env = versions.get("tri_inductor_env") or {}
    if env:
        parts.append("with " + " ".join(f"`{k}={v}`" for k, v in env.items()))
    if extra:
        parts.append(extra)
    return ", ".join(parts)


# ======================================================================= sections


def e2e_status(w: dict[str, Any]) -> str:
    tr, ir = w.get("throughput_ratio"), w.get("itl_ratio")
    if tr is None:
        return "no ratio (a backend has no result)"
    ok_t = tr >= 1.0
    ok_i = ir is None or ir <= 1.0
    if ok_t and ok_i:
        return "meets 1.0x"
    bad = []
    if not ok_t:
        bad.append("throughput < 1.0x")
    if not ok_i:
        bad.append("ITL > 1.0x")
    note = " (within run-to-run noise)" if w.get("within_noise") else ""
    return "**below**: " + ", ".join(bad) + note


def e2e_status_vs_default(w: dict[str, Any]) -> str:
    tr, target = w.get("throughput_ratio_vs_default"), w.get("target_vs_default", 1.0)
    if tr is None:
        return "no ratio"
    if tr >= target:
        return f"meets {target:.2f}x"
    return f"**below** {target:.2f}x" + (" (within run-to-run noise)" if w.get("within_noise_vs_default") else "")


def e2e_model(name: str, d: dict[str, Any]) -> str:
    """The registry model of an e2e record (benchmarks/models.py): its settings, else its file name
    (``e2e_<card>_<model>.json``; the first records, without a suffix, are Llama-3-8B)."""
    import models

    named = d.get("settings", {}).get("model")
    if named:
        return named
    return next((m for m in models.E2E_MODELS if name.endswith(f"_{m}.json") or f"_{m}_L" in name
                 or f"_{m}_tp" in name), models.DEFAULT_MODEL)


def e2e_section(name: str, d: dict[str, Any]) -> str:
    import models

    s = d.get("settings", {})
    cfg = s.get("model_config", {})
    layers = s.get("layers", cfg.get("num_hidden_layers"))
    model = e2e_model(name, d)
    full = models.E2E_MODELS[model]["num_hidden_layers"]
    shape = (f"{model} shape ({layers} layers{'' if layers == full else f', NOT the full {full}'}, hidden "
             f"{cfg.get('hidden_size', '?')}, {cfg.get('num_attention_heads', '?')}/{cfg.get('num_key_value_heads', '?')}"
             f" heads, vocab {cfg.get('vocab_size', '?')}, bf16 dummy weights)")
    mode = d.get("mode") or s.get("mode", "?")
    tp = s.get("tp", 1)
    ws = d.get("workloads", {})
    has_default = any(DEFAULT in w or "throughput_ratio_vs_default" in w for w in ws.values())
    has_compile = any(BASE in w for w in ws.values()) or not has_default
    title = " and ".join(t for t, on in (("vLLM's own compile path", has_compile),
                                         ("vLLM's default (FlashAttention-3)", has_default)) if on)
    out = [f"#### End to end, vLLM: tri_inductor / {title}{f', tensor parallel {tp}' if tp != 1 else ''} (`{name}`)", "",
           _meta_line(d.get("card"), d.get("versions"), d.get("commit"), f"run wall {_num(d.get('wall_s'), 0)} s"),
           "",
           f"{shape}; baseline `backend: \"inductor\"`, `custom_ops: [\"none\"]`, `TRITON_ATTN`; same engine "
           f"settings (max_num_seqs {s.get('max_num_seqs', '?')}, max_num_batched_tokens "
           f"{s.get('max_num_batched_tokens', '?')}, KV cache {s.get('kv_cache_gib', '?')} GiB, prefix caching off, "
           f"greedy); mode **{mode}**, {s.get('reps', '?')} reps per backend"
           f"{' in ABBA order' if str(mode).startswith('side') else ''}"
           f"{_more_reps_text(s)}"
           f"{', --quick (shorter outputs)' if s.get('quick') else ''}. Ratios: throughput = ours / vLLM's "
           f"(>= 1.0x is better), ITL = ours / vLLM's median (<= 1.0x is better).", ""]
    if s.get("moe_baseline_note"):
        out += [f"MoE baseline: {s['moe_baseline_note']}.", ""]
    if s.get("tri_inductor_env"):
        out += ["tri_inductor settings from the environment: "
                + ", ".join(f"`{k}={v}`" for k, v in sorted(s["tri_inductor_env"].items())) + ".", ""]
    if has_default:
        de = s.get("default_engine") or {}
        out += ["vLLM-default engine: vLLM as a user gets it on this card: `backend: \"inductor\"`, "
                f"{de.get('attention', 'FLASH_ATTN (FlashAttention-3)')}, otherwise vLLM's defaults except what the "
                "environment cannot provide: " + "; ".join(de.get("deviations_from_stock") or
                                                          ["rms_norm native (vLLM's CUDA rms_norm absent)"])
                + ". Its acceptance: throughput >= 1.0x on decode and mixed, >= 0.95x on prefill.", ""]
        fc = d.get("fa3_check") or {}
        if fc:
            agree = "; ".join(f"{k.replace('_vs_', ' vs ')}: {v.get('sequences_equal')}/{v.get('sequences')} sequences "
                              f"equal, {_num((v.get('match_rate') or 0) * 100, 1)}% of positions before the first "
                              "divergence" for k, v in (fc.get("agreement") or {}).items())
            built = ", ".join(f"{b}: " + ", ".join(f"{k} x{n}" for k, n in (v or {}).items())
                              for b, v in (fc.get("attention_impl") or {}).items()) or "?"
            out += [f"Start-up check: FA3_AVAILABLE **{fc.get('fa3_available')}**; attention as built ({built}); "
                    "greedy tokens (8 prompts x 32, same dummy weights): "
                    f"{agree or 'not run'}.", ""]
    if not d.get("complete", True):
        out += ["*Incomplete run* (stopped early): " + "; ".join(map(str, d.get("errors", [])[:3])), ""]
    rows = []
    for wname, w in ws.items():
        o, b, df = w.get(OURS) or {}, w.get(BASE) or {}, w.get(DEFAULT) or {}
        sp = w.get("spec", {})
        row = [wname, w.get("group", ""), f"{sp.get('n', '?')} x {_lens(sp.get('prompt_len'))}/{_lens(sp.get('out_len'))}",
               _num(o.get("tokens_per_s"))]
        if has_compile:
            row += [_num(b.get("tokens_per_s")), _ratio(w.get("throughput_ratio")),
                    f"{_num((o.get('ttft_ms') or {}).get('median'))} / {_num((b.get('ttft_ms') or {}).get('median'))}",
                    f"{_num((o.get('itl_ms') or {}).get('median'), 2)} / {_num((b.get('itl_ms') or {}).get('median'), 2)}",
                    f"{_num((o.get('itl_ms') or {}).get('p90'), 2)} / {_num((b.get('itl_ms') or {}).get('p90'), 2)}",
                    _ratio(w.get("itl_ratio"))]
        if has_default:
            row += [_num(df.get("tokens_per_s")), _ratio(w.get("throughput_ratio_vs_default")),
                    f"{_num((o.get('itl_ms') or {}).get('median'), 2)} / {_num((df.get('itl_ms') or {}).get('median'), 2)}",
                    _ratio(w.get("itl_ratio_vs_default")), e2e_status_vs_default(w)]
        noise = w.get("noise") if has_compile else w.get("noise_vs_default", w.get("noise"))
        n_reps = o.get("reps")
        row += [("-" if noise is None else f"±{noise * 100:.1f}%")
                + (f" ({n_reps} reps)" if n_reps and n_reps != s.get("reps") else "")]
        rows.append(row + ([e2e_status(w)] if has_compile else []))
    if rows:
        out.append(_table(["workload", "kind", "requests x in/out tokens", "tri_inductor tok/s"]
                          + (["vLLM-compile tok/s", "throughput ratio", "TTFT median ms (ours / vLLM)",
                              "ITL median ms (ours / vLLM)", "ITL p90 ms (ours / vLLM)", "ITL ratio"]
                             if has_compile else [])
                          + (["vLLM-default (FA3; rms_norm native) tok/s", "throughput vs default", "ITL median ms (ours / default)",
                              "ITL vs default", "vs default"] if has_default else [])
                          + ["noise (rep spread)"] + (["status"] if has_compile else []), rows))
    else:
        out.append("No workload finished.")
    eng = d.get("engines", {})
    if eng:
        srows = []
        # GEMM tuning per start (records from before it was kept have no such columns)
        tuned = any(k.endswith("_tuning") for e in eng.values() if isinstance(e, dict) for k in e)
        for b, label in ((OURS, "tri_inductor"), (BASE, "vLLM-compile"), (DEFAULT, "vLLM-default (FA3)")):
            if b != OURS and b not in eng:
                continue
            e = eng.get(b) or {}
            ph = e.get("cold_start_phases") or e.get("concurrent_start_phases") or {}
            row = [label, _num(e.get("cold_start_s")), _num(e.get("warm_start_s")),
                   _num(ph.get("torch_compile_total_s")), _num(ph.get("graph_capture_s"), 0)]
            cold, warm = e.get("cold_start_tuning") or {}, e.get("warm_start_tuning") or {}
            if tuned:
                row += [f"{_num(cold.get('tune_s'))} / {_num(warm.get('tune_s'))}",
                        f"{_num(cold.get('benchmarks'), 0)} / {_num(warm.get('benchmarks'), 0)}"]
            note = (e.get("cold_start_error") or e.get("concurrent_start_error")) and "failed" or ""
            if not note and e.get("concurrent_start_s") is not None:
                note = f"started beside the others in {e['concurrent_start_s']} s (contended: not a cold start)"
                cold = e.get("concurrent_start_tuning") or {}
                if tuned:
                    row[-2] = f"{_num(cold.get('tune_s'))} / {_num(warm.get('tune_s'))}"
                    row[-1] = f"{_num(cold.get('benchmarks'), 0)} / {_num(warm.get('benchmarks'), 0)}"
            if not note and cold.get("hits") and not cold.get("benchmarks"):
                # the engine read a tuning DB an earlier run had filled: not a cold start for ours
                note = f"tuning DB already filled ({cold['hits']} hits): not cold"
            srows.append(row + [note])
        out += ["", "Start-up (process start to engine ready; cold = empty vLLM/Inductor/Triton caches, warm = a "
                "new process with those caches filled):", "",
                _table(["backend", "cold start s", "warm start s", "torch.compile s (cold, vLLM log)",
                        "CUDA-graph capture s"]
                       + (["GEMM tuning s (cold / warm)", "configs benchmarked (cold / warm)"] if tuned else [])
                       + ["note"], srows)]
        where = _cold_start_breakdown((eng.get(OURS) or {}).get("cold_start_tuning") or {})
        if where:
            out += ["", where]
        summary = ((eng.get(OURS) or {}).get("audit") or {}).get("summary")
        if summary:
            out += ["", f"Our compiler's audit in that run: {summary.replace('[tri_inductor] ', '')}"]
    below = [(n, w) for n, w in d.get("workloads", {}).items()
             if (w.get("throughput_ratio") is not None or w.get("throughput_ratio_vs_default") is not None)
             and not w.get("pass")]
    if below:
        out += ["", "Below target, with profile and reason:" if has_default else "Below 1.0x, with profile and reason:", ""]
        for n, w in below:
            vs_default = ""
            if w.get("throughput_ratio_vs_default") is not None:
                vs_default = (f" Against vLLM-default: throughput {_ratio(w.get('throughput_ratio_vs_default'))}, ITL "
                              f"{_ratio(w.get('itl_ratio_vs_default'))}"
                              + (f"; {_reason(w, DEFAULT)}" if w.get("reason_vs_default") else "") + ".")
            if not has_compile:
                out.append(f"* **{n}**:" + vs_default + " " + _profile_text(w.get("profile"), DEFAULT))
                continue
            out.append(f"* **{n}**: throughput {_ratio(w.get('throughput_ratio'))}, ITL {_ratio(w.get('itl_ratio'))}"
                       + (" (within run-to-run noise)" if w.get("within_noise") else "") + ". "
                       + (f"Reason: {_reason(w)}. " if w.get("reason") else "Reason: not profiled. ")
                       + _profile_text(w.get("profile")) + _steps_text(w) + _python_text(w) + vs_default)
    if d.get("settings_differences"):
        out += ["", "Effective engine settings that differ (besides the backend): "
                + ", ".join(f"`{k}`" for k in d["settings_differences"])]
    if d.get("settings_differences_vs_default"):
        out += ["", "Effective settings that differ from vLLM-default (besides backend and attention): "
                + ", ".join(f"`{k}`" for k in d["settings_differences_vs_default"])]
    if d.get("skipped"):
        out += ["", "Skipped for time: " + "; ".join(map(str, d["skipped"]))]
    return "\n".join(out)


def _more_reps_text(s: dict[str, Any]) -> str:
    """How a run's short workloads got more reps (``e2e_vllm.py --min-measured-s``), if they did."""
    if not s.get("min_measured_s"):
        return ""
    return (f", more (in pairs, at most {s.get('max_reps_factor', 4)}x) where an engine had measured less than "
            f"{s['min_measured_s']:g} s of a workload: the count is in the noise column")


def _python_text(w: dict[str, Any]) -> str:
    """The Python functions whose host time grew most in our engine (cProfile, one run each)."""
    rows = [r for r in w.get("python_host_diff") or [] if r.get("own_ms", 0) > 0][:3]
    if not rows:
        return ""
    return (" Python host time, ours - vLLM's (cProfile): "
            + ", ".join(f"`{r['fn']}` {r['own_ms']:+.1f} ms ({r['ncalls']:+.0f} calls)" for r in rows) + ".")


def _reason(w: dict[str, Any], base: str = BASE) -> str:
    """A workload's gap explained from its stored profile with today's rules (host rows compared
    by what they do, not by their labels: ``_vllm_common.host_row_name``), else the stored line."""
    stored = w.get("reason" if base == BASE else "reason_vs_default") or ""
    prof = w.get("profile") or {}
    if not (isinstance(prof.get(OURS), dict) and isinstance(prof.get(base), dict)):
        return stored
    from _vllm_common import explain_gap  # beside this script, as ``models`` above

    return explain_gap(prof[OURS], prof[base])


def _profile_text(prof: Any, base: str = BASE) -> str:
    if not isinstance(prof, dict) or not prof:
        return ""
    o, b = prof.get(OURS) or {}, prof.get(base) or {}
    co, cb = o.get("classes_us") or {}, b.get("classes_us") or {}
    if not co and not cb:
        return ""
    parts = []
    for c in sorted(set(co) | set(cb), key=lambda c: -max(co.get(c, 0), cb.get(c, 0))):
        parts.append(f"{c} {co.get(c, 0) / 1e3:.1f}/{cb.get(c, 0) / 1e3:.1f}")
    host_o = (o.get("wall_ms") or 0) - (o.get("gpu_busy_ms") or 0)
    host_b = (b.get("wall_ms") or 0) - (b.get("gpu_busy_ms") or 0)
    parts.append(f"host gaps {host_o:.1f}/{host_b:.1f}")
    top = (o.get("top") or [{}])[0].get("name")
    label = "vLLM-default" if base == DEFAULT else "vLLM"
    return (f"Profile (short run, GPU ms ours/{label}): " + ", ".join(parts)
            + (f"; our top kernel `{str(top)[:60]}`" if top else "") + ".")


def _steps_text(w: dict[str, Any]) -> str:
    """Step gaps at equal decode batch (e2e_vllm.py's step statistics), where recorded."""
    r, mb = w.get("equal_batch_step_ratio"), w.get("mean_batch")
    if r is None or not mb:
        return ""
    return (f" Engine steps at equal decode batch size: ours / vLLM median step gap {r:.3f}x; mean decode "
            f"batch {mb[0]} / {mb[1]} (a ratio <= 1.0x with a larger batch of ours: a different schedule, "
            "not slower steps).")


def kernels_section(name: str, d: dict[str, Any]) -> str:
    m = d.get("meta", {})
    out = [f"#### Kernels: our Triton vs cuBLAS / SDPA flash / Inductor (`{name}`)", "",
           _meta_line(m.get("card"), m, m.get("commit")), ""]
    rows = []
    if d.get("gemm_geomean_vs_cublas") is not None:
        rows.append(["GEMM (bf16, Llama-8B linear shapes) vs cuBLAS", _ratio(d.get("gemm_geomean_vs_cublas")),
                     _ratio(d.get("gemm_min_vs_cublas")), f"{len(d.get('gemm') or [])} shapes"])
    if d.get("gemm_geomean_vs_inductor") is not None:
        rows.append(["GEMM vs Inductor's Triton templates (max-autotune)", _ratio(d.get("gemm_geomean_vs_inductor")),
                     "-", ""])
    if isinstance(d.get("attn"), list) and d["attn"]:
        vs = [r.get("vs_flash") for r in d["attn"] if isinstance(r.get("vs_flash"), (int, float))]
        rows.append(["attention (prefill, d=128) vs SDPA flash", _ratio(d.get("attn_geomean_vs_flash")),
                     _ratio(min(vs) if vs else None), "S=" + ",".join(str(r.get("S")) for r in d["attn"])])
    if isinstance(d.get("gate_up"), list) and d["gate_up"]:
        g = d["gate_up"]
        ms = ",".join(str(r.get("M")) for r in g)
        for key, total, what in (("vs_stock", "gate_up_geomean_vs_stock", "cuBLAS + Inductor's SiLU-and-mul"),
                                 ("vs_unfused", "gate_up_geomean_vs_unfused", "our GEMM + our SiLU-and-mul apart")):
            vs = [r.get(key) for r in g if isinstance(r.get(key), (int, float))]
            rows.append([f"gate_up GEMM + SiLU-and-mul fused (2x14336x4096) vs {what}", _ratio(d.get(total)),
                         _ratio(min(vs) if vs else None), f"M={ms}"])
    if isinstance(d.get("elem"), list):
        for r in d["elem"]:
            if r.get("op") == "copy":
                continue
            rows.append([f"{r.get('op')} ({_num(r.get('tbps'), 2)} TB/s, {_num((r.get('frac_of_copy') or 0) * 100, 0)}% of copy)"
                         " vs Inductor", _ratio(r.get("vs_inductor")), "-",
                         "" if r.get("vs_inductor_pdl") is None else
                         f"ours launched with PDL; vs Inductor with its opt-in enable_pdl: {_ratio(r['vs_inductor_pdl'])}"])
    out.append(_table(["kernel", "ratio (baseline time / ours; geomean)", "min", "note"], rows) if rows
               else "No kernel rows.")
    if d.get("attention_ours"):
        out += ["", attention_section(name, d)]
    return "\n".join(out)


def attention_section(name: str, d: dict[str, Any]) -> str:
    """``kernel_bench.py --only attention`` (benchmarks/paged_attention.py): paged attention against
    FlashAttention-3 on one paged KV cache; in a kernels_* file too, when it carries the keys."""
    m = d.get("meta", {})
    a = d.get("attention") if isinstance(d.get("attention"), dict) else {}
    rows = a.get("rows") or []
    ours = d.get("attention_ours", "?")
    out = [f"#### Paged attention vs FlashAttention-3 (`{name}`)", "",
           _meta_line(m.get("card"), m, m.get("commit")), "",
           "Block size 16, bf16, the same paged KV cache for every kernel; ratio = FA3 time / kernel time "
           f"(> 1.0x: faster than FA3); `{ours}` is the kernel the summary is about; `vllm_triton` is vLLM's "
           "Triton `unified_attention` (what TRITON_ATTN runs; tri_inductor falls back to it where ours declines), called as TRITON_ATTN calls it, "
           "`fa3` as FLASH_ATTN calls it. Targets (issue 26): decode geomean >= 1.0x, prefill >= 0.85x, no point "
           "below 0.7x.", ""]
    if a.get("error"):
        out += [f"Not measured: {a['error']}" + ("; " + "; ".join(f"{k}: {v[:160]}" for k, v in
                                                                (a.get("unavailable") or {}).items())
                                                 if a.get("unavailable") else "")]
        return "\n".join(out)
    grows = []
    gms = d.get("attention_geomeans_vs_fa3") or {}
    mixed = any("decode_mixed" in g for g in gms.values())  # decode at mixed context lengths, where measured
    for k, g in gms.items():
        grows.append([k, _ratio(g.get("decode"))] + ([_ratio(g.get("decode_mixed"))] if mixed else [])
                     + [_ratio(g.get("prefill")),
                        _ratio(min((r["vs_fa3"][k] for r in rows if isinstance((r.get("vs_fa3") or {}).get(k), (int, float))),
                                   default=None))])
    if grows:
        out.append(_table(["kernel", "decode geomean vs FA3"]
                          + (["decode, mixed context lengths, geomean vs FA3"] if mixed else [])
                          + ["prefill geomean vs FA3", "min"], grows))
    out += ["", f"`{ours}`: decode **{_ratio(d.get('attention_decode_geomean_vs_fa3'))}**, prefill "
            f"**{_ratio(d.get('attention_prefill_geomean_vs_fa3'))}**, min {_ratio(d.get('attention_min_vs_fa3'))} "
            f"over {d.get('attention_points', '?')} points; worst five: "
            + (", ".join(f"{w['id']} {_ratio(w['vs_fa3'])}" for w in d.get("attention_worst5") or []) or "-")]
    if d.get("attention_numerics_failed"):
        out += ["", "Left out of the geomeans (output off the float32 reference): "
                + ", ".join(f"{f['id']} ({f['kernel']}, rel. err {f['rel_err']})" for f in d["attention_numerics_failed"])]
    if a.get("unavailable"):
        out += ["", "Not measured: " + "; ".join(f"{k}: {v[:120]}" for k, v in a["unavailable"].items())]
    if a.get("skipped"):
        out += ["", "Skipped (memory): " + "; ".join(f"{s_['id']}" for s_ in a["skipped"])]
    return "\n".join(out)


def _pct(score: dict[str, Any] | None) -> str:
    rate = (score or {}).get("match_rate")
    return "-" if rate is None else f"{rate * 100:.2f}%"


def _launches(m: dict[str, Any]) -> tuple[int, int]:
    cls = m.get("forward_classes") or {}
    return (sum(v.get("launches", 0) for k, v in cls.items() if k == "triton"),
            sum(v.get("launches", 0) for k, v in cls.items() if k != "triton"))


def hf_census_section(name: str, d: dict[str, Any]) -> str:
    """A census against Hugging Face eager (``--reference hf``: the MoE/MLA models): each engine's
    top-1 agreement with the reference, the dense bar model's, and vLLM's own MoE path's."""
    out = [f"#### vLLM kernel census, top-1 agreement with Hugging Face eager (`{name}`)", "",
           _meta_line(d.get("card"), d.get("versions"), d.get("commit")), "",
           "Every engine teacher-forced on the reference's greedy tokens (transformers eager, bf16, the same "
           "random weights). Bar: vLLM's compile path on the dense bar model against its own reference; "
           "vLLM's own MoE path: its compile path on the model itself with its MoE CUDA ops replaced by torch "
           "glue (baseline only; not runnable here for MLA). Beyond noise: disagreements with a top-2 gap over "
           f"{(d.get('settings') or {}).get('gap_tol', 0.1)} nat.", ""]
    rows = []
    for model, m in (d.get("models") or {}).items():
        tri, non = _launches(m)
        tf, bar, own = m.get("teacher_forced") or {}, m.get("vs_bar") or {}, m.get("own_moe_baseline") or {}
        vllm_self = m.get("baseline_teacher_forced") if not bar else None
        rows.append([model, "PASS" if m.get("pass") else "FAIL", _pct(tf), str(len(tf.get("beyond_noise", []))),
                     _pct(vllm_self) if vllm_self else "-",
                     f"{bar['bar_match_rate'] * 100:.2f}% ({bar.get('bar_model')})" if "bar_match_rate" in bar else "-",
                     (f"{own['bar_match_rate'] * 100:.2f}% ({own.get('bar_beyond_noise')})"
                      if "bar_match_rate" in own else "-"),
                     str(tri), str(non), ", ".join(e.get("name", "?")[:40] for e in m.get("non_triton_forward", [])[:3]),
                     str(m.get("commit") or d.get("commit") or "?")[:10]])
    out.append(_table(["model", "status", "ours vs reference", "ours beyond noise",
                       "vLLM compile vs reference (a dense model)", "bar: vLLM compile on the bar model",
                       "vLLM's own MoE path vs reference (beyond noise)", "forward Triton launches",
                       "forward non-Triton launches", "non-Triton kernels", "commit"], rows) if rows else "No models.")
    return "\n".join(out)


def census_section(name: str, d: dict[str, Any]) -> str:
    if (d.get("settings") or {}).get("reference") == "hf":
        return hf_census_section(name, d)
    out = [f"#### vLLM kernel census and greedy tokens vs vLLM's compile path (`{name}`)", "",
           _meta_line(d.get("card"), d.get("versions"), d.get("commit")), ""]
    rows = []
    for model, m in (d.get("models") or {}).items():
        tri, non = _launches(m)
        g = m.get("greedy") or {}
        tf = m.get("teacher_forced") or {}
        sm = m.get("same_mode") or {}
        gap = (sm or tf).get("max_disagreement_gap")
        rows.append([model, "PASS" if m.get("pass") else "FAIL", _pct(sm), _pct(m.get("fa3_control_same_mode")),
                     _pct(m.get("eager_control_same_mode")),
                     "-" if g.get("match_rate") is None else f"{g['match_rate'] * 100:.2f}%",
                     _pct(tf), _pct(m.get("baseline_self_teacher_forced")), _pct(m.get("eager_control_teacher_forced")),
                     "-" if gap is None else f"{gap:.4f}",
                     str(tri), str(non), ", ".join(e.get("name", "?")[:40] for e in m.get("non_triton_forward", [])[:3]),
                     str(m.get("commit") or d.get("commit") or "?")[:10]])
    out.append(_table(["model", "status",
                       "top-1 agreement, same mode: ours vs vLLM compile (both prefill the same sequences)",
                       "control, same mode: vLLM with FA3 vs vLLM compile (TRITON_ATTN)",
                       "control, same mode: vLLM eager vs vLLM compile",
                       "greedy tokens equal (free-running)",
                       "top-1 agreement on vLLM compile's generated tokens: ours",
                       "control: vLLM compile vs itself (prefill vs its decode)", "control: vLLM eager",
                       "max logprob gap where ours disagrees (nat)", "forward Triton launches",
                       "forward non-Triton launches", "non-Triton kernels", "commit"], rows) if rows else "No models.")
    return "\n".join(out)


def generic_section(name: str, d: dict[str, Any]) -> str:
    """Unknown layout (cache_*): the top-level numbers, booleans and short strings."""
    meta = d.get("meta") if isinstance(d.get("meta"), dict) else {}
    rows = []
    for k, v in d.items():
        if isinstance(v, bool) or isinstance(v, (int, float)) or (isinstance(v, str) and len(v) <= 60):
            rows.append([k, _num(v, 2) if isinstance(v, float) else str(v)])
        elif isinstance(v, dict) and all(isinstance(x, (int, float, bool, str)) for x in v.values()) and len(v) <= 12:
            rows.append([k, ", ".join(f"{a}={_num(b, 2) if isinstance(b, float) else b}" for a, b in v.items())])
    out = [f"#### `{name}`", ""]
    if meta:
        out += [_meta_line(meta.get("card"), meta, meta.get("commit")), ""]
    out.append(_table(["field", "value"], rows[:40]) if rows else "No summary fields.")
    return "\n".join(out)


def cache_section(name: str, d: dict[str, Any]) -> str:
    """Cold / warm / after-import starts of benchmarks/cache_warm_start.py."""
    out = [f"#### Compile cache: cold vs warm start (`{name}`)", "",
           _meta_line(d.get("card"), d.get("versions"), d.get("commit")), "",
           f"vLLM `{{\"backend\": \"tri_inductor\"}}`, Llama-3-8B shape ({d.get('layers')} layers), each start a new "
           "process; compile = vLLM's \"torch.compile took X s in total\" (our GEMM tuning runs inside it).", ""]
    rows = []
    for phase in ("cold", "warm", "after_import"):
        r = (d.get("starts") or {}).get(phase)
        if not r:
            rows.append([phase, "not run", "-", "-", "-", "-"])
            continue
        vc = r.get("vllm_counters") or {}
        rows.append([phase, _num(r.get("compile_s"), 2), _num(r.get("init_s"), 1),
                     str((r.get("tri_inductor") or {}).get("benchmarks", "-")),
                     str(sum((r.get("inductor_benchmarks") or {}).values())),
                     f"{vc.get('num_aot_artifacts_loaded', 0)} / {vc.get('num_compiled_artifacts_loaded', 0)}"])
    out.append(_table(["start", "compile s", "LLM() s", "our tuning benchmarks",
                       "Inductor autotune benchmarks", "AOT artifacts / pieces loaded"], rows))
    out += ["", f"warm speedup (cold / warm compile): **{_num(d.get('warm_speedup'), 1)}x**; after export -> "
            f"clear -> import: {_num(d.get('after_import_speedup'), 1) if d.get('after_import_speedup') else 'not run'}"]
    if d.get("note"):
        out += ["", f"Note: {d['note']}"]
    return "\n".join(out)


def gemm_models_section(name: str, d: dict[str, Any]) -> str:
    """``kernel_bench.py --gemm-models``: every GEMM of the registry models against cuBLAS."""
    meta = d.get("meta", {})
    rows = d.get("gemm") if isinstance(d.get("gemm"), list) else []
    out = [f"#### GEMM over the registry models: ours / cuBLAS (`{name}`)", "",
           _meta_line(meta.get("card"), {k: meta.get(k) for k in ("torch", "triton")}, meta.get("commit"), ""), "",
           f"{len(rows)} points (q/k/v, o, gate_up, down, lm_head of every model in `benchmarks/models.py`, "
           f"M in {sorted({r['M'] for r in rows})}); ours = the config a compile gets (tuned at first use), "
           "\"model\" = the cost model's pick untuned. Ratios > 1.0x: ours faster.", "",
           f"geomean **{_ratio(d.get('gemm_geomean_vs_cublas'))}**, min {_ratio(d.get('gemm_min_vs_cublas'))}; "
           f"cost model alone {_ratio(d.get('gemm_model_geomean_vs_cublas'))}", "",
           "| worst ten | M | N | K | ours us | cuBLAS us | ours / cuBLAS | model / cuBLAS |", "|---|---|---|---|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: r["vs_cublas"])[:10]:
        out.append(f"| {r.get('shape') or ''} | {r['M']} | {r['N']} | {r['K']} | {_num(r['ours_ms'] * 1e3)} | "
                   f"{_num(r['cublas_ms'] * 1e3)} | {_ratio(r['vs_cublas'])} | {_ratio(r.get('model_vs_cublas'))} |")
    return "\n".join(out)


def moe_kernels_section(name: str, d: dict[str, Any]) -> str:
    """``moe_kernels.py``: our MoE layer vs vLLM's Triton fused_moe and torch._grouped_mm."""
    meta, s = d.get("meta", {}), d.get("summary", {})
    rows = d.get("rows") if isinstance(d.get("rows"), list) else []
    out = [f"#### MoE layer: ours / vLLM's Triton fused_moe (`{name}`)", "",
           _meta_line(meta.get("card"), {k: meta.get(k) for k in ("torch", "triton")}, meta.get("commit"), ""), "",
           "Routed experts of one layer (same routing for every contender). Ratios > 1.0x: ours faster. "
           + (f"Baseline: {d['baseline_note']}." if d.get("baseline_note") else ""), "",
           f"geomean vs fused_moe **{_ratio(s.get('geomean_vs_vllm'))}** (min {_ratio(s.get('min_vs_vllm'))}); "
           f"vs torch._grouped_mm {_ratio(s.get('geomean_vs_grouped_mm'))}", "",
           _table(["shape", "M", "ours us", "fused_moe us", "_grouped_mm us", "ours / fused_moe", "ours / _grouped_mm"],
                  [[r.get("shape", ""), r.get("M"), _num(r["ms"].get("ours", math.nan) * 1e3),
                    _num(r["ms"].get("vllm", math.nan) * 1e3), _num(r["ms"].get("grouped_mm", math.nan) * 1e3),
                    _ratio(r.get("vs_vllm")), _ratio(r.get("vs_grouped_mm"))] for r in rows])]
    return "\n".join(out)


def serve_load_section(name: str, d: dict[str, Any]) -> str:
    """``serve_load.py``: ``vllm serve`` under concurrent load and bad requests, ours vs vLLM's compile path."""
    a = d.get("args", {})
    out = [f"#### `vllm serve` under load (`{name}`)", "",
           _meta_line(d.get("card"), d.get("versions"), (d.get("git") or {}).get("commit"),
                      f"{a.get('clients')} clients, {a.get('requests')} good requests, one bad in {a.get('bad_every')}"),
           "", f"**{'PASS' if d.get('pass') else 'FAIL'}**; ours / baseline: "
           + ", ".join(f"{k} {_ratio(v)}" for k, v in (d.get("ratios_ours_over_baseline") or {}).items()), ""]
    rows = []
    for r in (d.get("ours") or {}, d.get("baseline") or {}):
        probes = r.get("probes") or []
        rows.append([r.get("backend", "?"), _num(r.get("startup_s")), _num(r.get("p50_ms")), _num(r.get("p99_ms")),
                     _num(r.get("out_tok_per_s")), str(r.get("n_wrong_length")), str(len(r.get("bad_not_4xx") or [])),
                     ", ".join(f"{p['name']} {p['status']}" for p in probes) or "not sent",
                     str(r.get("healthy_after")), r.get("error") or ""])
    out.append(_table(["server", "start-up s", "p50 ms", "p99 ms", "output tok/s", "wrong length", "bad not 4xx",
                       "out-of-range ids", "healthy after", "error"], rows))
    return "\n".join(out)


def hf_prefill_section(name: str, d: dict[str, Any]) -> str:
    """``hf_prefill.py``: HF models' padded prefill, ours vs Inductor and eager; masked attention vs SDPA."""
    m = d.get("meta", {})
    out = [f"#### Hugging Face prefill with a padding mask (`{name}`)", "",
           _meta_line(m.get("card"), {k: m.get(k) for k in ("torch", "triton")}, m.get("commit"),
                      f"batch {d.get('batch')} x {d.get('seq')} tokens, {d.get('layers')} layers, bf16"),
           "", f"**{'PASS' if d.get('pass') else 'FAIL'}**", "",
           _table(["model", "tri_inductor ms", "Inductor ms", "eager ms", "vs Inductor", "vs eager", "eager timer",
                   "all Triton"],
                  [[k, _num(v.get("tri_inductor_ms"), 2), _num(v.get("inductor_ms"), 2), _num(v.get("eager_ms"), 2),
                    _ratio(v.get("vs_inductor")), _ratio(v.get("vs_eager")), (v.get("timer") or {}).get("eager", ""),
                    str(v.get("all_triton"))] for k, v in (d.get("models") or {}).items()]), "",
           _table(["heads (q/kv)", "head dim", "ours ms", "best SDPA", "vs best SDPA"],
                  [[f"{r['heads'][0]}/{r['heads'][1]}", r.get("head_dim"), _num(r.get("ours_ms"), 3),
                    ", ".join(f"{b} {v if isinstance(v, str) else _num(v, 3)}" for b, v in (r.get("sdpa") or {}).items()),
                    _ratio(r.get("vs_best_sdpa"))] for r in d.get("attention", [])])]
    return "\n".join(out)


def build_markdown(folder: str | Path = RESULTS) -> str:
    res = load_results(folder)
    parts = ["## Performance", "",
             "Generated by `python3 benchmarks/report.py --write-docs` from `benchmarks/results/*.json`; each "
             "number was measured on the card named with it."]
    if not any(res[k] for k in KINDS):
        parts += ["", "No results yet."]
    for kind, fn in (("e2e", e2e_section), ("kernels", kernels_section), ("attention", attention_section),
                     ("gemm_models", gemm_models_section), ("moe_kernels", moe_kernels_section),
                     ("census", census_section), ("cache", cache_section), ("serve_load", serve_load_section),
                     ("hf_prefill", hf_prefill_section)):
        for name, data in res[kind]:
            try:
                parts += ["", fn(name, data)]
            except Exception as e:  # noqa: BLE001  one odd file must not sink the report
                parts += ["", f"#### `{name}`", "", f"(could not summarize: {e!r:.200})"]
    for name, err in res["unreadable"]:
        parts += ["", f"`{name}`: unreadable ({err})"]
    return "\n".join(parts).rstrip() + "\n"


# ======================================================================= docs page, README line, plot


def performance_page(folder: str | Path = RESULTS) -> str:
    """docs/performance.md: every table, under a page title."""
    md = build_markdown(folder)
    return "# Performance\n\n" + md[len("## Performance"):].lstrip("\n") if md.startswith("## Performance") else md


def headline(folder: str | Path = RESULTS) -> str:
    """README's one performance line: end-to-end throughput per card (full-size, single-GPU runs
    only) against vLLM's default path (FlashAttention-3) where a record has it, else against vLLM's
    own compile path; and the link to the tables."""
    res = load_results(folder)
    cards, default_cards = [], []

    def span(d, key):
        rs = [w[key] for w in d.get("workloads", {}).values() if isinstance(w.get(key), (int, float))]
        return f"{_ratio(min(rs))}-{_ratio(max(rs))}" if rs else None

    for name, d in res["e2e"]:
        s = d.get("settings", {})
        if s.get("layers", 32) != 32 or e2e_model(name, d) != "llama-3-8b" or s.get("tp", 1) != 1:
            continue  # the headline stays one model's full-size runs; the rest are in the docs
        vs_compile, vs_default = span(d, "throughput_ratio"), span(d, "throughput_ratio_vs_default")
        if vs_default:
            default_cards.append(f"{vs_default} on {d.get('card', '?')}"
                                 + (f" ({vs_compile} against its compile path)" if vs_compile else ""))
        elif vs_compile:
            cards.append(f"{vs_compile} on {d.get('card', '?')}")
    link = "every table (kernels, census, compile cache): [docs/performance.md](docs/performance.md)"
    if not cards and not default_cards:
        return f"**Performance:** {link}.\n"
    parts = []
    if default_cards:
        parts.append("throughput relative to vLLM as shipped (FlashAttention-3 attention; >1 is faster): "
                     + "; ".join(default_cards))
    if cards:
        parts.append("throughput relative to vLLM's own compile path (>1 is faster): " + "; ".join(cards))
    return (f"**Performance:** Llama-3-8B shape under vLLM, {'; '.join(parts)}. "
            f"Every table ({link[len('every table ('):]}.\n")


def replace_block(text: str, block: str) -> str:
    """Replace what lies between the markers (markers kept); append the block if absent."""
    body = f"{START}\n{block.rstrip()}\n{END}"
    i, j = text.find(START), text.find(END)
    if i >= 0 and j > i:
        return text[:i] + body + text[j + len(END):]
    if i >= 0 or j >= 0:
        raise ValueError("README has only one of the perf-table markers (or they are out of order)")
    return text.rstrip("\n") + "\n\n" + body + "\n"


def plot(folder: str | Path, path: str | Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    res = load_results(folder)
    panels = []
    for name, d in res["e2e"]:
        ws = [(n, w) for n, w in d.get("workloads", {}).items() if w.get("throughput_ratio") is not None]
        if ws:
            panels.append(("e2e", name, d, ws))
    for name, d in res["kernels"]:
        if isinstance(d.get("gemm"), list) and d["gemm"]:
            panels.append(("gemm", name, d, d["gemm"]))
    if not panels:
        panels.append(("empty", "", {}, []))
    fig, axes = plt.subplots(len(panels), 1, figsize=(10, 3.6 * len(panels)), squeeze=False)
    for ax, (kind, name, d, rows) in zip(axes[:, 0], panels):
        ax.axhline(1.0, color="k", lw=0.8, ls="--")
        if kind == "e2e":
            labels = [n for n, _ in rows]
            x = range(len(rows))
            tr = [w["throughput_ratio"] for _, w in rows]
            # ITL as a speed ratio (vLLM / ours) so that, like throughput, higher is better
            il = [1.0 / w["itl_ratio"] if w.get("itl_ratio") else 0.0 for _, w in rows]
            b1 = ax.bar([i - 0.2 for i in x], tr, 0.4, label="throughput: ours / vLLM-compile")
            b2 = ax.bar([i + 0.2 for i in x], il, 0.4, label="median ITL: vLLM-compile / ours")
            for bars in (b1, b2):
                ax.bar_label(bars, fmt="%.2f", fontsize=7)
            ax.set_xticks(list(x), labels)
            ax.set_title(f"{d.get('card', '?')}: tri_inductor vs vLLM compile path ({name}); > 1 = we are faster")
            ax.legend(loc="lower right", fontsize=8)
        elif kind == "gemm":
            labels = [f"M={r.get('M')} {r.get('N')}x{r.get('K')}" for r in rows]
            ax.bar(range(len(rows)), [r.get("vs_cublas") or 0 for r in rows], color="tab:green")
            ax.set_xticks(range(len(rows)), labels, fontsize=6, rotation=90)
            ax.axhline(0.85, color="tab:red", lw=0.8, ls=":", label="0.85x: no shape below (issue #3)")
            ax.legend(loc="lower right", fontsize=8)
            ax.set_title(f"{d.get('meta', {}).get('card', '?')}: our Triton GEMM vs cuBLAS (time ratio; > 1 = faster) ({name})")
        else:
            ax.text(0.5, 0.5, "no results", ha="center", va="center")
        ax.set_ylabel("ratio")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--results", default=str(RESULTS), help="folder of result JSON files")
    p.add_argument("--write-docs", action="store_true", help="write docs/performance.md and README's line")
    p.add_argument("--write-readme", action="store_true", help="replace README's performance line only")
    p.add_argument("--readme", default=str(README))
    p.add_argument("--docs-page", default=str(DOCS_PAGE))
    p.add_argument("--plot", default=None, metavar="FILE.png", help="bar chart of the ratios")
    args = p.parse_args(argv)
    md = build_markdown(args.results)
    sys.stdout.write(md)
    if args.write_docs:
        page = Path(args.docs_page)
        page.parent.mkdir(parents=True, exist_ok=True)
        page.write_text(performance_page(args.results))
        print(f"\n(wrote {page})", file=sys.stderr)
    if args.write_docs or args.write_readme:
        readme = Path(args.readme)
        readme.write_text(replace_block(readme.read_text(), headline(args.results)))
        print(f"(updated {readme})", file=sys.stderr)
    if args.plot:
        try:
            print(f"(plot: {plot(args.results, args.plot)})", file=sys.stderr)
        except ImportError as e:
            print(f"(no plot: {e}; pip install matplotlib)", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
