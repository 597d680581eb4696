"""benchmarks/paged_attention.py (``kernel_bench.py --only attention``) without a GPU: the points, the
memory plan, how vLLM's two backends would be called, the summary keys, the adapter that plugs a
``paged_attention``-like callable, and the float32 reference the benchmark checks kernels against
(itself checked here against a float64 dense attention over a block table with scattered blocks)."""
from __future__ import annotations

import importlib
import math
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
PA = importlib.import_module("paged_attention")


def test_points_cover_the_grid():
    pts = PA.points()
    assert len({p["id"] for p in pts}) == len(pts)
    dec = [p for p in pts if p["kind"] == "decode"]
    pre = [p for p in pts if p["kind"] == "prefill"]
    assert len(dec) == 5 * 4 * 2 * 2 and len(pre) == 3 * 2 * 2 * 2
    assert {(p["hq"], p["hkv"]) for p in pts} == {(32, 8), (28, 4)} and {p["d"] for p in pts} == {64, 128}
    assert {p["batch"] for p in dec} == {1, 8, 32, 128, 256} and {p["ctx"] for p in dec} == {512, 2048, 8192, 32768}
    assert all(p["q_len"] == 1 for p in dec)
    assert {(p["q_len"], p["prefix"]) for p in pre} == {(n, c) for n in (512, 2048, 8192) for c in (0, n)}
    assert all(p["ctx"] == p["q_len"] + p["prefix"] for p in pre)
    assert [p["kind"] for p in PA.points(["prefill"])] == ["prefill"] * 24


def test_mixed_length_decode_points():
    """decode_mixed: serving-like batches, lengths 32 .. longest, the first the longest (the
    numerics check reads sequence 0); summarized on their own."""
    pts = PA.points(["decode_mixed"])
    assert len(pts) == len(PA.MIXED_BATCH) * len(PA.MIXED_CTX) * 2 * 2 and len({p["id"] for p in pts}) == len(pts)
    for p in pts:
        assert len(p["lens"]) == p["batch"] and max(p["lens"]) == p["lens"][0] == p["ctx"]
        assert min(p["lens"]) >= 32 and len(set(p["lens"])) > p["batch"] // 2
    assert pts[0]["id"].startswith("decode mixed b16 ctx32..2048")
    rows = [{"id": "m", "kind": "decode_mixed", "vs_fa3": {"k": 0.5}, "numerics_ok": {"k": True}},
            {"id": "d", "kind": "decode", "vs_fa3": {"k": 2.0}, "numerics_ok": {"k": True}}]
    s = PA.summarize(rows, "k")
    assert s["attention_decode_mixed_geomean_vs_fa3"] == 0.5 and s["attention_decode_geomean_vs_fa3"] == 2.0
    assert s["attention_geomeans_vs_fa3"]["k"] == {"decode": 2.0, "decode_mixed": 0.5}


def test_memory_plan_skips_what_does_not_fit():
    pts = PA.points(["decode"])
    big = next(p for p in pts if p["batch"] == 256 and p["ctx"] == 32768 and p["hkv"] == 8 and p["d"] == 128)
    assert abs(PA.kv_gib(big) - 256 * 32768 * 8 * 128 * 4 / 2**30) < 1e-9  # K and V, bf16
    m = PA.plan_memory(pts, 140.0)
    assert not m["skipped"] and m["cache_gib"]["32/8 d128"] == 32.0
    m = PA.plan_memory(pts, 24.0)  # 16 GiB after the reserve
    assert big["id"] in m["skipped_ids"] and "needs 32.0 GiB" in m["skipped"][0]["reason"]
    assert all(PA.kv_gib(p) > m["budget_gib"] for p in pts if p["id"] in m["skipped_ids"])
    assert m["cache_gib"]["32/8 d128"] <= m["budget_gib"]


def test_backend_call_settings_follow_vllm():
    # TRITON_ATTN: seq_threshold_3D = capture size nearest 128 // Hkv; FLASH_ATTN: 32 splits up to 512 tokens
    assert PA.seq_threshold_3d(8) == 16 and PA.seq_threshold_3d(4) == 32 and PA.seq_threshold_3d(1) == 128
    assert PA.fa3_num_splits(dict(batch=256, q_len=1)) == 32 and PA.fa3_num_splits(dict(batch=1, q_len=512)) == 32
    assert PA.fa3_num_splits(dict(batch=1, q_len=2048)) == 0
    text = PA.describe(PA.points(["decode"])[:6], PA.plan_memory(PA.points(["decode"])[:6], 140.0), ["fa3"])
    assert "decode b1 ctx512 32/8 d64" in text and "triton 3d" in text


def test_summary_keys():
    rows = [{"id": "a", "kind": "decode", "vs_fa3": {"k": 2.0, "j": 1.0}, "numerics_ok": {"k": True, "j": True}},
            {"id": "b", "kind": "decode", "vs_fa3": {"k": 0.5, "j": 1.0}, "numerics_ok": {"k": True, "j": True}},
            {"id": "c", "kind": "prefill", "vs_fa3": {"k": 0.9, "j": 4.0}, "numerics_ok": {"k": True, "j": False},
             "rel_err": {"j": 0.3}},
            {"id": "d", "kind": "prefill", "vs_fa3": {}, "errors": {"k": "boom"}}]
    s = PA.summarize(rows, "k")
    assert s["attention_ours"] == "k" and s["attention_decode_geomean_vs_fa3"] == 1.0
    assert s["attention_prefill_geomean_vs_fa3"] == 0.9 and s["attention_min_vs_fa3"] == 0.5
    assert [w["id"] for w in s["attention_worst5"]] == ["b", "c", "a"] and s["attention_points"] == 3
    assert s["attention_geomeans_vs_fa3"]["j"] == {"decode": 1.0, "prefill": None}  # its bad point left out
    assert s["attention_numerics_failed"] == [{"id": "c", "kernel": "j", "rel_err": 0.3}]
    assert PA.summarize([], "k")["attention_decode_geomean_vs_fa3"] is None


def _paged_case(batch=2, q_len=5, ctx=37, hq=6, hkv=2, d=16, seed=0):
    """A paged cache with the sequences' blocks scattered (and unused blocks between them)."""
    g = torch.Generator().manual_seed(seed)
    nb = -(-ctx // PA.BLOCK)
    total = 3 * batch * nb
    k = torch.randn(total, PA.BLOCK, hkv, d, generator=g).bfloat16()
    v = torch.randn(total, PA.BLOCK, hkv, d, generator=g).bfloat16()
    bt = torch.randperm(total, generator=g)[:batch * nb].view(batch, nb).to(torch.int32)
    p = dict(kind="prefill", batch=batch, q_len=q_len, ctx=ctx, prefix=ctx - q_len, hq=hq, hkv=hkv, d=d)
    return types.SimpleNamespace(point=p, k_cache=k, v_cache=v, block_table=bt, scale=1 / math.sqrt(d),
                                 q=torch.randn(batch * q_len, hq, d, generator=g).bfloat16(),
                                 cu_seqlens_q=torch.arange(batch + 1, dtype=torch.int32) * q_len,
                                 seq_lens=torch.full((batch,), ctx, dtype=torch.int32))


def _dense64(t, seq):
    """float64 causal GQA attention of one sequence, from its blocks, written independently."""
    p = t.point
    keys = torch.cat([t.k_cache[b] for b in t.block_table[seq].tolist()])[:p["ctx"]].double()
    vals = torch.cat([t.v_cache[b] for b in t.block_table[seq].tolist()])[:p["ctx"]].double()
    q = t.q[seq * p["q_len"]:(seq + 1) * p["q_len"]].double()
    out = torch.empty_like(q)
    for h in range(p["hq"]):
        kh = h // (p["hq"] // p["hkv"])
        for i in range(p["q_len"]):
            last = p["ctx"] - p["q_len"] + i  # causal, bottom-right aligned
            s = (keys[:last + 1, kh] @ q[i, h]) * t.scale
            out[i, h] = torch.softmax(s, 0) @ vals[:last + 1, kh]
    return out


@pytest.mark.parametrize("q_len,ctx,hq,hkv,d", [(5, 37, 6, 2, 16), (1, 64, 4, 4, 8), (3, 3, 8, 1, 32)])
def test_reference_matches_float64_dense(q_len, ctx, hq, hkv, d):
    t = _paged_case(q_len=q_len, ctx=ctx, hq=hq, hkv=hkv, d=d)
    ref, rows = PA._reference(t, rows=4)
    want = _dense64(t, 0)[rows]
    assert ref.shape == want.shape
    assert torch.allclose(ref.double(), want, atol=1e-5, rtol=1e-5)  # float32 vs float64, same bf16 inputs


def test_signature_adapter_plugs_a_paged_attention_callable():
    seen = {}

    def paged_attention(query, key_cache, value_cache, block_tables, seq_lens, query_start_loc, max_seqlen_q,
                        max_seqlen_k, softmax_scale, causal=True, alibi=None):
        seen.update(block_tables=block_tables, scale=softmax_scale, causal=causal, mq=max_seqlen_q, mk=max_seqlen_k)
        t = types.SimpleNamespace(point=case.point, k_cache=key_cache, v_cache=value_cache, block_table=block_tables,
                                  q=query, scale=softmax_scale)
        out = torch.cat([_dense64(t, s) for s in range(case.point["batch"])]).to(query.dtype)
        return out  # returns its output: the adapter copies it into out

    case = _paged_case()
    case.out = torch.zeros_like(case.q)
    PA.signature_call(paged_attention)(case)()
    assert seen["block_tables"] is case.block_table and seen["scale"] == case.scale and seen["causal"] is True
    assert (seen["mq"], seen["mk"]) == (5, 37)
    ref, rows = PA._reference(case)
    assert ((case.out[rows].float() - ref).norm() / ref.norm()).item() < PA.REL_TOL

    def needs_more(q, k_cache, v_cache, block_table, seq_lens, workspace):
        return q

    with pytest.raises(ValueError, match="workspace"):
        PA.signature_call(needs_more)


def test_kernels_resolve_and_dry_run_on_cpu():
    found, why = PA.resolve_kernels(None)
    if importlib.util.find_spec("tri_inductor.patterns.paged_attention") is None:
        assert "tri_inductor" in why and "tri_inductor" not in found
    else:
        assert "tri_inductor" in found or "tri_inductor" in why  # present: a column, or the reason it is not
    if not torch.cuda.is_available():
        assert "fa3" in why  # no FA3 extension on a CPU machine: said, not silently dropped
    _, why = PA.resolve_kernels(["no_such_module:fn"])
    assert "no_such_module" in why["no_such_module:fn"]
    found, _ = PA.resolve_kernels(["tri_inductor_balanced"])  # ours under the decode split policy being evaluated
    assert "tri_inductor_balanced" in found
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    p = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "kernel_bench.py"), "--only", "attention", "--dry-run"],
                       capture_output=True, text=True, timeout=300, cwd=str(ROOT), env=env)
    assert p.returncode == 0, p.stderr
    assert "paged attention: 104 points" in p.stdout and "prefill 8192+8192 cached 28/4 d128" in p.stdout
    h = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "kernel_bench.py"), "--help"], capture_output=True,
                       text=True, timeout=300, cwd=str(ROOT), env=env)
    assert h.returncode == 0 and "--attn-kernels" in h.stdout


def test_adapter_for_an_out_writing_entry_point_with_checks():
    """The form tri_inductor.patterns.paged_attention takes: writes ``out``, validates inputs when
    ``check`` is true (once, at set-up; timed calls pass check=False)."""
    checks = []

    def paged_attention(q, k_cache, v_cache, out, cu_seqlens_q, seq_lens, block_table, max_seqlen_q, max_seqlen_k,
                        scale, causal=True, window=None, softcap=0.0, sinks=None, *, num_splits=None, check=True):
        checks.append(check)
        t = types.SimpleNamespace(point=case.point, k_cache=k_cache, v_cache=v_cache, block_table=block_table,
                                  q=q, scale=scale)
        out.copy_(torch.cat([_dense64(t, s) for s in range(len(seq_lens))]).to(out.dtype))
        return out

    case = _paged_case(batch=3, q_len=1, ctx=50, hq=8, hkv=2, d=32)
    case.out = torch.zeros_like(case.q)
    call = PA.signature_call(paged_attention)(case)
    call()
    assert checks == [True, False]
    ref, rows = PA._reference(case)
    assert ((case.out[rows].float() - ref).norm() / ref.norm()).item() < PA.REL_TOL


def test_run_loop_on_cpu(monkeypatch):
    """The measurement loop, driven on a CPU: a float64-exact stand-in as "fa3", the same scaled
    wrong (left out of the geomeans, listed), one that raises (recorded), one that cannot be
    graph-captured (timed with events instead, said so). Times are the stand-ins' fixed costs."""
    import _common

    pts = [dict(kind="decode", batch=3, q_len=1, ctx=40, prefix=39, hq=4, hkv=2, d=16),
           dict(kind="prefill", batch=1, q_len=6, ctx=12, prefix=6, hq=4, hkv=2, d=16)]
    for p in pts:
        p["id"] = PA.point_id(p)
    monkeypatch.setattr(PA, "points", lambda kinds: [p for p in pts if p["kind"] in kinds])
    cost = {}

    def timed(fns, reps=20):
        for f in fns:
            f()
        name = fns[0].kernel
        if name == "eager_only":
            raise RuntimeError("operation not permitted when stream is capturing")
        return cost[name]

    def events(fns, reps=20):
        for f in fns:
            f()
        return cost[fns[0].kernel] * 1.5

    monkeypatch.setattr(_common, "bench", timed)
    monkeypatch.setattr(_common, "bench_events", events)

    def dense(name, scale_out=1.0, fail=False):
        def make(t):
            if fail:
                raise RuntimeError("no kernel for this head dim")

            def call():
                o = torch.cat([_dense64(t, s) for s in range(t.point["batch"])])
                t.out.copy_((o * scale_out).to(t.out.dtype))
            call.kernel = name
            return call
        return make

    cost.update(fa3=2.0, good=1.0, wrong=0.5, eager_only=4.0)
    factories = {"fa3": dense("fa3"), "good": dense("good"), "wrong": dense("wrong", 1.5),
                 "broken": dense("broken", fail=True), "eager_only": dense("eager_only")}
    res = PA.run(ours="good", rounds=2, log=lambda *a: None, device="cpu", mem_gib=16.0, factories=factories)
    assert [r["id"] for r in res["rows"]] == [p["id"] for p in pts] and not res["skipped"]
    for r in res["rows"]:
        assert r["vs_fa3"]["good"] == 2.0 and r["numerics_ok"]["good"] and r["rel_err"]["good"] < 1e-2
        assert r["numerics_ok"]["wrong"] is False and "broken" in r["errors"] and "broken" not in r["ms"]
        assert r["timing"]["eager_only"] == "cuda_events" and r["vs_fa3"]["eager_only"] == round(2.0 / 6.0, 4)
        assert r["timing"]["good"] == "cuda_graph"
    assert res["attention_decode_geomean_vs_fa3"] == 2.0 and res["attention_prefill_geomean_vs_fa3"] == 2.0
    assert res["attention_geomeans_vs_fa3"]["wrong"] == {"decode": None, "prefill": None}
    assert {f["kernel"] for f in res["attention_numerics_failed"]} == {"wrong"}
    assert res["attention_ours"] == "good" and len(res["attention_worst5"]) == 2


def _source_params(path: Path, fn: str) -> tuple[set[str], set[str]]:
    """(parameters, required parameters) of ``fn`` read from the source (the module itself needs
    the CUDA extension to import)."""
    import ast

    tree = ast.parse(path.read_text())
    node = next(n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name == fn)
    pos = node.args.posonlyargs + node.args.args
    required = {a.arg for a in pos[:len(pos) - len(node.args.defaults)]}
    required |= {a.arg for a, d in zip(node.args.kwonlyargs, node.args.kw_defaults) if d is None}
    return {a.arg for a in pos + node.args.kwonlyargs}, required


def test_backend_calls_match_the_installed_vllm():
    """The arguments we pass are ones vLLM's functions take (names drift between releases)."""
    vllm = pytest.importorskip("vllm")
    t = _paged_case(batch=2, q_len=1, ctx=40)
    t.out = torch.zeros_like(t.q)
    src = Path(vllm.__file__).parent
    ua = src / "v1" / "attention" / "ops" / "triton_unified_attention.py"
    fa = src / "vllm_flash_attn" / "flash_attn_interface.py"
    for path, fn, kw in ((ua, "unified_attention", PA.vllm_triton_kwargs(t, None)),
                         (fa, "flash_attn_varlen_func", PA.fa3_kwargs(t, None)),
                         (fa, "get_scheduler_metadata", PA.fa3_meta_kwargs(t))):
        params, required = _source_params(path, fn)
        assert set(kw) <= params, (fn, set(kw) - params)
        extra = {"seq_threshold_3D", "num_par_softmax_segments", "softmax_segm_output", "softmax_segm_max",
                 "softmax_segm_expsum"} if fn == "unified_attention" else set()
        assert required <= set(kw) | extra, (fn, required - set(kw))
        assert extra <= params
