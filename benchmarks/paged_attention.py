"""Paged attention, kernel against kernel, on one paged KV cache (``kernel_bench.py --only attention``).

Columns (a registry: ``KERNELS``; ``--attn-kernels`` picks them, ``module:function`` plugs any
callable with the ``paged_attention`` signature below):

* ``vllm_triton``: what TRITON_ATTN runs (and tri_inductor where ours declines), vLLM's Triton
  ``kernel_unified_attention`` (``vllm.v1.attention.ops.triton_unified_attention.unified_attention``),
  called as the TRITON_ATTN backend calls it: split-KV 3D kernel + ``reduce_segments`` for decode
  batches up to ``seq_threshold_3D`` (the capture size nearest 128 / KV heads), 16 segments;
* ``fa3``: FlashAttention-3, ``vllm.vllm_flash_attn.flash_attn_varlen_func(fa_version=3)``, called
  as the FLASH_ATTN backend (vLLM's default on Hopper) calls it: AOT ``scheduler_metadata``,
  ``num_splits`` 32 when the step has <= 512 tokens (its CUDA-graph bound), else FA3's heuristic;
* ``tri_inductor``: ``tri_inductor.patterns.paged_attention.paged_attention`` when that module
  imports (added automatically), called by parameter name: ``q, k_cache, v_cache, block_table,
  seq_lens`` and, if it takes them, ``cu_seqlens_q`` / ``query_start_loc``, ``max_seqlen_q``,
  ``max_seqlen_k``, ``scale`` / ``softmax_scale``, ``causal``, ``out``.

Cache: separate K and V ``[num_blocks, 16, Hkv, D]`` bf16 (FLASH_ATTN's layout; TRITON_ATTN packs
K|V per token and head, the same bytes), block tables a random permutation of a region of it,
every call of a timing rotation on its own region (cold L2, as between layers). Points: decode
(batch 1..256 x context 512..32k, one query token each) and prefill (one sequence of 512/2k/8k
query tokens, without and with a cached prefix of the same length: chunked prefill / prefix hit),
GQA 32/8 and 28/4, head dim 64 and 128. A point that does not fit memory is skipped with its
reason. Timing: CUDA-graph replays (``_common.bench``), CUDA events where a kernel cannot be
captured (recorded per kernel), rounds in alternating order, medians. Each kernel's output is
checked against a float32 reference on the first sequence's last query rows; a point where a
kernel is off (rel. err > ``REL_TOL``) keeps its time but leaves the geomeans (listed).
Ratio = FA3 time / kernel time (> 1: faster than FA3).

No torch/vLLM work at import: the plan, the summary and the dry run work on a CPU.
"""
from __future__ import annotations

import functools
import importlib
import inspect
import json
import math
import os
from typing import Any, Callable, Sequence

BLOCK = 16
DECODE_BATCH = (1, 8, 32, 128, 256)
DECODE_CTX = (512, 2048, 8192, 32768)
PREFILL_LEN = (512, 2048, 8192)
# decode at mixed context lengths, as a serving batch has them (the e2e "mixed" workload's
# decode steps): batch x longest context; the others spread over 32 .. longest
MIXED_BATCH = (16, 64, 128)
MIXED_CTX = (2048, 8192)
HEADS = ((32, 8), (28, 4))
HEAD_DIMS = (64, 128)
# vLLM 0.26 defaults the two backends are called with
CAPTURE_SIZES = (1, 2, 4, *range(8, 513, 8))  # cudagraph_capture_sizes, max 512
FA3_CG_SPLITS = 32  # attention_config.flash_attn_max_num_splits_for_cuda_graph
NUM_PAR_SOFTMAX_SEGMENTS, MIN_LAUNCH_GRID_SIZE_2D = 16, 128  # triton_attn.py
REL_TOL = 2e-2
KINDS = ("decode", "decode_mixed", "prefill")
OURS_MODULE = "tri_inductor.patterns.paged_attention"


# ======================================================================= plan (CPU)


def mixed_lens(batch: int, longest: int) -> list[int]:
    """Deterministic context lengths spread over 32 .. ``longest``; the first is the longest
    (the numerics check reads sequence 0)."""
    return [longest] + [32 + (i * 997) % (longest - 32) for i in range(1, batch)]


def points(kinds: Sequence[str] = ("decode", "prefill")) -> list[dict[str, Any]]:
    out = []
    for hq, hkv in HEADS:
        for d in HEAD_DIMS:
            if "decode" in kinds:
                for b in DECODE_BATCH:
                    for c in DECODE_CTX:
                        out.append(dict(kind="decode", batch=b, q_len=1, ctx=c, prefix=c - 1, hq=hq, hkv=hkv, d=d))
            if "decode_mixed" in kinds:
                for b in MIXED_BATCH:
                    for c in MIXED_CTX:
                        out.append(dict(kind="decode_mixed", batch=b, q_len=1, ctx=c, prefix=c - 1, hq=hq, hkv=hkv,
                                        d=d, lens=mixed_lens(b, c)))
            if "prefill" in kinds:
                for n in PREFILL_LEN:
                    for prefix in (0, n):
                        out.append(dict(kind="prefill", batch=1, q_len=n, ctx=n + prefix, prefix=prefix,
                                        hq=hq, hkv=hkv, d=d))
    for p in out:
        p["id"] = point_id(p)
    return out


def point_id(p: dict[str, Any]) -> str:
    what = (f"decode b{p['batch']} ctx{p['ctx']}" if p["kind"] == "decode"
            else f"decode mixed b{p['batch']} ctx32..{p['ctx']}" if p["kind"] == "decode_mixed"
            else f"prefill {p['q_len']}" + (f"+{p['prefix']} cached" if p["prefix"] else ""))
    return f"{what} {p['hq']}/{p['hkv']} d{p['d']}"


def blocks_per_seq(p: dict[str, Any]) -> int:
    return -(-p["ctx"] // BLOCK)


def kv_gib(p: dict[str, Any]) -> float:
    """K and V bytes one call reads (whole blocks)."""
    return p["batch"] * blocks_per_seq(p) * BLOCK * p["hkv"] * p["d"] * 2 * 2 / 2**30


def plan_memory(pts: list[dict[str, Any]], mem_gib: float, reserve_gib: float = 8.0) -> dict[str, Any]:
    """Per head shape (Hq, Hkv, D) one cache, sized for its largest point that fits in
    ``mem_gib - reserve_gib`` (queries, outputs, the reference and the kernels' scratch live in the
    reserve); larger points are skipped with the reason."""
    budget = mem_gib - reserve_gib
    groups: dict[tuple[int, int, int], float] = {}
    skipped = []
    for p in pts:
        key = (p["hq"], p["hkv"], p["d"])
        if kv_gib(p) > budget:
            skipped.append({"id": p["id"], "reason": f"needs {kv_gib(p):.1f} GiB of KV cache; {budget:.1f} GiB "
                                                     f"available ({mem_gib:.1f} GiB less {reserve_gib} GiB reserve)"})
            continue
        groups[key] = max(groups.get(key, 0.0), kv_gib(p))
    return {"cache_gib": {f"{hq}/{hkv} d{d}": round(g, 2) for (hq, hkv, d), g in groups.items()},
            "budget_gib": round(budget, 2), "skipped": skipped,
            "skipped_ids": {s["id"] for s in skipped}}


def seq_threshold_3d(hkv: int) -> int:
    """vLLM's TRITON_ATTN: decode batches up to this use the split-KV 3D kernel."""
    t = MIN_LAUNCH_GRID_SIZE_2D // hkv
    return min(CAPTURE_SIZES, key=lambda x: abs(x - t))


def fa3_num_splits(p: dict[str, Any]) -> int:
    """vLLM's FLASH_ATTN: the CUDA-graph split bound when the step fits a captured graph, else 0
    (FA3's own heuristic)."""
    return FA3_CG_SPLITS if p["batch"] * p["q_len"] <= max(CAPTURE_SIZES) else 0


def _geomean(xs: Sequence[float]) -> float | None:
    xs = [x for x in xs if isinstance(x, (int, float)) and x > 0 and math.isfinite(x)]
    return round(math.exp(sum(math.log(x) for x in xs) / len(xs)), 4) if xs else None


def summarize(rows: list[dict[str, Any]], ours: str) -> dict[str, Any]:
    """JSON keys for report.py: geomean of FA3 time / ``ours`` time over decode and over prefill
    points (points where ``ours`` failed numerics are left out and listed), per kernel too, the
    minimum and the worst five of ``ours``."""
    good = [r for r in rows if isinstance((r.get("vs_fa3") or {}).get(ours), (int, float))
            and (r.get("numerics_ok") or {}).get(ours, True)]
    by_kind = {k: [r["vs_fa3"][ours] for r in good if r["kind"] == k] for k in KINDS}
    kernels = sorted({k for r in rows for k in (r.get("vs_fa3") or {})})
    per_kernel = {k: {kind: _geomean([r["vs_fa3"][k] for r in rows if r["kind"] == kind
                                      and isinstance(r["vs_fa3"].get(k), (int, float))
                                      and (r.get("numerics_ok") or {}).get(k, True)])
                      for kind in KINDS if any(r["kind"] == kind for r in rows)} for k in kernels}
    worst = sorted(good, key=lambda r: r["vs_fa3"][ours])[:5]
    return {"attention_ours": ours,
            "attention_decode_geomean_vs_fa3": _geomean(by_kind["decode"]),
            "attention_prefill_geomean_vs_fa3": _geomean(by_kind["prefill"]),
            "attention_decode_mixed_geomean_vs_fa3": _geomean(by_kind["decode_mixed"]),
            "attention_min_vs_fa3": round(min(r["vs_fa3"][ours] for r in good), 4) if good else None,
            "attention_points": len(good),
            "attention_geomeans_vs_fa3": per_kernel,
            "attention_worst5": [{"id": r["id"], "vs_fa3": r["vs_fa3"][ours]} for r in worst],
            "attention_numerics_failed": [{"id": r["id"], "kernel": k, "rel_err": e} for r in rows
                                          for k, ok in (r.get("numerics_ok") or {}).items() if not ok
                                          for e in [(r.get("rel_err") or {}).get(k)]]}


def describe(pts: list[dict[str, Any]], mem: dict[str, Any], kernels: list[str]) -> str:
    lines = [f"paged attention: {len(pts)} points, kernels {', '.join(kernels)}; block {BLOCK}, bf16; "
             f"memory budget {mem['budget_gib']} GiB; caches {mem['cache_gib']}"]
    for p in pts:
        skip = next((s["reason"] for s in mem["skipped"] if s["id"] == p["id"]), None)
        lines.append(f"  {p['id']:36s} KV {kv_gib(p):7.2f} GiB  fa3 num_splits {fa3_num_splits(p):2d}  "
                     f"triton {'3d' if p['kind'].startswith('decode') and p['batch'] <= seq_threshold_3d(p['hkv']) else '2d'}"
                     + (f"  SKIP: {skip}" if skip else ""))
    return "\n".join(lines)


# ======================================================================= kernels (GPU)


def _vllm_triton(t) -> Callable[[], Any]:
    import torch
    from vllm.v1.attention.ops.triton_unified_attention import unified_attention

    p = t.point
    thr = seq_threshold_3d(p["hkv"])
    dpad = 1 << (p["d"] - 1).bit_length()
    dev = t.q.device
    segm = dict(seq_threshold_3D=thr, num_par_softmax_segments=NUM_PAR_SOFTMAX_SEGMENTS,
                softmax_segm_output=torch.empty(thr, p["hq"], NUM_PAR_SOFTMAX_SEGMENTS, dpad, dtype=torch.float32,
                                                device=dev),
                softmax_segm_max=torch.empty(thr, p["hq"], NUM_PAR_SOFTMAX_SEGMENTS, dtype=torch.float32, device=dev),
                softmax_segm_expsum=torch.empty(thr, p["hq"], NUM_PAR_SOFTMAX_SEGMENTS, dtype=torch.float32,
                                                device=dev))
    ones = torch.ones(1, dtype=torch.float32, device=dev).expand(p["batch"], p["hkv"])  # as the backend's k/v scales
    kw = vllm_triton_kwargs(t, ones) | segm

    def call():
        unified_attention(**kw)
    return call


def vllm_triton_kwargs(t, descale) -> dict[str, Any]:
    """unified_attention's arguments as vLLM 0.26's TRITON_ATTN backend passes them (bf16 cache)."""
    p = t.point
    return dict(q=t.q, k=t.k_cache, v=t.v_cache, out=t.out, cu_seqlens_q=t.cu_seqlens_q, max_seqlen_q=p["q_len"],
                seqused_k=t.seq_lens, max_seqlen_k=p["ctx"], softmax_scale=t.scale, causal=True,
                window_size=(-1, -1), block_table=t.block_table, softcap=0, q_descale=None, k_descale=descale,
                v_descale=descale)


def fa3_meta_kwargs(t) -> dict[str, Any]:
    """get_scheduler_metadata's arguments as FLASH_ATTN's metadata builder passes them."""
    import torch

    p = t.point
    return dict(batch_size=p["batch"], max_seqlen_q=p["q_len"], max_seqlen_k=p["ctx"], num_heads_q=p["hq"],
                num_heads_kv=p["hkv"], headdim=p["d"], cache_seqlens=t.seq_lens, qkv_dtype=torch.bfloat16,
                cu_seqlens_q=t.cu_seqlens_q, page_size=BLOCK, causal=True, window_size=(-1, -1),
                num_splits=fa3_num_splits(p))


def fa3_kwargs(t, meta) -> dict[str, Any]:
    """flash_attn_varlen_func's arguments as FLASH_ATTN's forward passes them (FA3)."""
    p = t.point
    return dict(q=t.q, k=t.k_cache, v=t.v_cache, out=t.out, cu_seqlens_q=t.cu_seqlens_q, max_seqlen_q=p["q_len"],
                seqused_k=t.seq_lens, max_seqlen_k=p["ctx"], softmax_scale=t.scale, causal=True,
                block_table=t.block_table, scheduler_metadata=meta, fa_version=3, num_splits=fa3_num_splits(p))


def _fa3(t) -> Callable[[], Any]:
    from vllm.vllm_flash_attn import flash_attn_varlen_func, get_scheduler_metadata

    kw = fa3_kwargs(t, get_scheduler_metadata(**fa3_meta_kwargs(t)))

    def call():
        flash_attn_varlen_func(**kw)
    return call


ARG_NAMES = {  # our canonical argument -> the names a paged_attention entry point may give it
    "q": ("q", "query"), "k_cache": ("k_cache", "key_cache"), "v_cache": ("v_cache", "value_cache"),
    "block_table": ("block_table", "block_tables"), "seq_lens": ("seq_lens", "seqused_k", "context_lens"),
    "cu_seqlens_q": ("cu_seqlens_q", "query_start_loc"), "max_seqlen_q": ("max_seqlen_q", "max_query_len"),
    "max_seqlen_k": ("max_seqlen_k", "max_seq_len"), "scale": ("scale", "softmax_scale", "sm_scale"),
    "causal": ("causal",), "out": ("out", "output")}


def signature_call(fn: Callable[..., Any]) -> Callable[[Any], Callable[[], Any]]:
    """An adapter calling ``fn`` by parameter name (see ``ARG_NAMES``); a required parameter we
    cannot supply raises ValueError naming it (the column is then dropped, with that reason)."""
    params = inspect.signature(fn).parameters
    mapping, missing = {}, []
    for name, prm in params.items():
        if prm.kind in (prm.VAR_KEYWORD, prm.VAR_POSITIONAL):
            continue
        canon = next((c for c, names in ARG_NAMES.items() if name in names), None)
        if canon is not None:
            mapping[name] = canon
        elif prm.default is prm.empty:
            missing.append(name)
    if missing:
        raise ValueError(f"{fn.__module__}.{fn.__qualname__}: cannot supply required parameter(s) {missing}")
    writes_out = "out" in mapping.values()
    # an entry point that validates its inputs on every call (``check=True``) validates once here;
    # timed calls skip it, as a vLLM backend calling it every layer would
    has_check = "check" in params and params["check"].default is not inspect.Parameter.empty

    def make(t) -> Callable[[], Any]:
        vals = {"q": t.q, "k_cache": t.k_cache, "v_cache": t.v_cache, "block_table": t.block_table,
                "seq_lens": t.seq_lens, "cu_seqlens_q": t.cu_seqlens_q, "max_seqlen_q": t.point["q_len"],
                "max_seqlen_k": t.point["ctx"], "scale": t.scale, "causal": True, "out": t.out}
        kw = {name: vals[c] for name, c in mapping.items()}
        if has_check:
            fn(**kw, check=True)  # raises if it declines these inputs: recorded as this kernel's error
            kw["check"] = False

        def call():
            r = fn(**kw)
            if not writes_out and r is not None:
                t.out.copy_(r.view_as(t.out))
        return call
    return make


def _load_callable(spec: str) -> Callable[..., Any]:
    mod, _, attr = spec.partition(":")
    return getattr(importlib.import_module(mod), attr or "paged_attention")


KERNELS: dict[str, Callable[[Any], Callable[[], Any]]] = {"vllm_triton": _vllm_triton, "fa3": _fa3}


def resolve_kernels(names: Sequence[str] | None) -> tuple[dict[str, Callable], dict[str, str]]:
    """{name: factory} of the kernels that can run here, {name: why not} of the others.
    ``None``: vllm_triton, fa3, and tri_inductor's own when its module imports."""
    ok: dict[str, Callable] = {}
    why: dict[str, str] = {}
    for name in (list(names) if names else ["vllm_triton", "fa3", "tri_inductor"]):
        try:
            if name in KERNELS:
                if name == "fa3":
                    from vllm.vllm_flash_attn import flash_attn_interface as fi

                    if not fi.FA3_AVAILABLE:
                        raise RuntimeError(f"FA3 unavailable: {getattr(fi, 'FA3_UNAVAILABLE_REASON', '?')}"[:300])
                elif name == "vllm_triton":
                    importlib.import_module("vllm.v1.attention.ops.triton_unified_attention")
                ok[name] = KERNELS[name]
            elif name == "tri_inductor":
                ok[name] = signature_call(_load_callable(OURS_MODULE))
            elif name == "tri_inductor_balanced":  # ours with the decode split policy under evaluation
                ok[name] = signature_call(functools.partial(_load_callable(OURS_MODULE), split_policy="balanced"))
            else:
                ok[name] = signature_call(_load_callable(name))
        except Exception as e:  # noqa: BLE001  recorded, not fatal
            why[name] = repr(e)[:300]
    return ok, why


# ======================================================================= measurement (GPU)


def _reference(t, rows: int = 64):
    """float32 attention of the first sequence's last ``rows`` query rows, from the paged cache."""
    import torch

    p = t.point
    nb = blocks_per_seq(p)
    blocks = t.block_table[0, :nb]
    k = t.k_cache[blocks].reshape(-1, p["hkv"], p["d"])[:p["ctx"]].float()
    v = t.v_cache[blocks].reshape(-1, p["hkv"], p["d"])[:p["ctx"]].float()
    r = min(rows, p["q_len"])
    q = t.q[p["q_len"] - r:p["q_len"]].float()  # sequence 0's queries come first
    g = p["hq"] // p["hkv"]
    k, v = k.repeat_interleave(g, 1), v.repeat_interleave(g, 1)
    s = torch.einsum("qhd,khd->hqk", q, k) * t.scale
    pos = torch.arange(p["ctx"] - r, p["ctx"], device=q.device)[:, None]
    s = s.masked_fill(torch.arange(p["ctx"], device=q.device)[None, :] > pos, float("-inf"))
    return torch.einsum("hqk,khd->qhd", s.softmax(-1), v), slice(p["q_len"] - r, p["q_len"])


def run(kernel_names: Sequence[str] | None = None, ours: str | None = None, kinds=("decode", "prefill"),
        rounds: int = 3, log=print, device: str = "cuda", mem_gib: float | None = None,
        factories: dict[str, Callable] | None = None) -> dict[str, Any]:
    """Measure every point; ``device``/``mem_gib``/``factories`` let a CPU test drive the loop."""
    import types

    import torch

    import _common

    bench, bench_events, n_sets = _common.bench, _common.bench_events, _common.n_sets
    dev = torch.device(device)

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize()

    unavailable: dict[str, str] = {}
    if factories is None:
        factories, unavailable = resolve_kernels(kernel_names)
    for k, why in unavailable.items():
        log(f"attention: kernel {k} not measured: {why}")
    if "fa3" not in factories:
        return {"error": "FA3 is needed as the reference column", "unavailable": unavailable}
    ours = ours or ("tri_inductor" if "tri_inductor" in factories else "vllm_triton")
    if mem_gib is None:
        mem_gib = torch.cuda.mem_get_info()[0] / 2**30
    pts = points(kinds)
    mem = plan_memory(pts, mem_gib)
    rows: list[dict[str, Any]] = []
    gen = torch.Generator(device=dev).manual_seed(0)
    for (hq, hkv, d) in sorted({(p["hq"], p["hkv"], p["d"]) for p in pts}):
        group = [p for p in pts if (p["hq"], p["hkv"], p["d"]) == (hq, hkv, d) and p["id"] not in mem["skipped_ids"]]
        if not group:
            continue
        cap_blocks = max(p["batch"] * blocks_per_seq(p) for p in group)
        cap_blocks = max(cap_blocks, 16 * max(1, min(p["batch"] * blocks_per_seq(p) for p in group)))
        k_cache = torch.randn(cap_blocks, BLOCK, hkv, d, device=dev, dtype=torch.bfloat16, generator=gen)
        v_cache = torch.randn(cap_blocks, BLOCK, hkv, d, device=dev, dtype=torch.bfloat16, generator=gen)
        for p in group:
            row = dict(p, kv_gib=round(kv_gib(p), 3), fa3_num_splits=fa3_num_splits(p),
                       triton_path="3d" if p["kind"].startswith("decode") and p["batch"] <= seq_threshold_3d(hkv) else "2d",
                       ms={}, vs_fa3={}, rel_err={}, numerics_ok={}, timing={}, errors={})
            need = p["batch"] * blocks_per_seq(p)
            nsets = max(1, min(n_sets(int(kv_gib(p) * 2**30)), cap_blocks // need))
            sets = []
            for i in range(nsets):
                perm = torch.randperm(need, device=dev, generator=gen) + i * need
                tt = types.SimpleNamespace(
                    point=p, k_cache=k_cache, v_cache=v_cache, scale=1 / math.sqrt(d),
                    block_table=perm.view(p["batch"], -1).to(torch.int32),
                    q=torch.randn(p["batch"] * p["q_len"], hq, d, device=dev, dtype=torch.bfloat16, generator=gen),
                    cu_seqlens_q=torch.arange(p["batch"] + 1, device=dev, dtype=torch.int32) * p["q_len"],
                    seq_lens=(torch.tensor(p["lens"], device=dev, dtype=torch.int32) if "lens" in p
                              else torch.full((p["batch"],), p["ctx"], device=dev, dtype=torch.int32)))
                sets.append(tt)
            ref, rsl = _reference(sets[0])
            fns = {}
            for name, make in factories.items():
                calls = []
                try:
                    for tt in sets:
                        t2 = types.SimpleNamespace(**vars(tt))
                        t2.out = torch.empty_like(tt.q)
                        calls.append((make(t2), t2))
                    calls[0][0]()
                    sync()
                    o = calls[0][1].out[rsl].float()
                    err = ((o - ref).norm() / ref.norm()).item()
                    row["rel_err"][name] = round(err, 5)
                    row["numerics_ok"][name] = err < REL_TOL
                    fns[name] = [c for c, _ in calls]
                except Exception as e:  # noqa: BLE001  one kernel failing a point must not sink the rest
                    row["errors"][name] = repr(e)[:300]
            times: dict[str, list[float]] = {n: [] for n in fns}
            for r in range(rounds):
                for name in (list(fns) if r % 2 == 0 else list(fns)[::-1]):
                    if row["timing"].get(name) == "failed":
                        continue
                    try:
                        if row["timing"].get(name, "cuda_graph") == "cuda_graph":
                            try:
                                times[name].append(bench(fns[name]))
                                row["timing"][name] = "cuda_graph"
                                continue
                            except Exception as e:  # noqa: BLE001  not capturable: eager, timed with events
                                row["errors"][f"{name}_graph"] = repr(e)[:200]
                                sync()
                        times[name].append(bench_events(fns[name]))
                        row["timing"][name] = "cuda_events"
                    except Exception as e:  # noqa: BLE001
                        row["errors"][name] = repr(e)[:300]
                        row["timing"][name] = "failed"
            for name, ts in times.items():
                if ts and row["timing"].get(name) != "failed":
                    row["ms"][name] = round(sorted(ts)[len(ts) // 2], 5)
            if "fa3" in row["ms"]:
                row["vs_fa3"] = {n: round(row["ms"]["fa3"] / ms, 4) for n, ms in row["ms"].items() if n != "fa3"}
            rows.append(row)
            if os.environ.get("OUT"):  # survives a timeout
                with open(os.path.join(os.environ["OUT"], "attention_rows.jsonl"), "a") as f:
                    f.write(json.dumps(row) + "\n")
            log(f"attn {p['id']:36s} " + "  ".join(f"{n} {ms * 1e3:8.1f}us" for n, ms in row["ms"].items())
                + "  " + "  ".join(f"x{v:.3f} {n}" for n, v in row["vs_fa3"].items())
                + (f"  errors {list(row['errors'])}" if row["errors"] else ""))
            del sets, fns
        del k_cache, v_cache
        if dev.type == "cuda":
            torch.cuda.empty_cache()
    out = {"settings": {"block_size": BLOCK, "dtype": "bfloat16", "kv_layout": "separate K, V [blocks, 16, Hkv, D]",
                        "rounds": rounds, "rel_tol": REL_TOL, "kinds": list(kinds),
                        "vllm_triton": "unified_attention as TRITON_ATTN calls it (3D split-KV up to seq_threshold_3D, "
                                       f"{NUM_PAR_SOFTMAX_SEGMENTS} segments)",
                        "fa3": f"flash_attn_varlen_func fa_version=3 with AOT scheduler_metadata, num_splits "
                               f"{FA3_CG_SPLITS} for steps <= {max(CAPTURE_SIZES)} tokens else 0, as FLASH_ATTN",
                        "memory": {k: v for k, v in mem.items() if k != "skipped_ids"}},
           "kernels": sorted(factories), "unavailable": unavailable, "rows": rows, "skipped": mem["skipped"]}
    out.update(summarize(rows, ours))
    return out
