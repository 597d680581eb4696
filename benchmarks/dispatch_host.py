"""Host time of one compiled piece's call: our GEMM dispatch over a symbolic token count vs the
same graph compiled for one token count vs Inductor's own (cuBLAS), at a small model's layer.

    python benchmarks/dispatch_host.py [--piece vllm] [--out DIR]   # dispatch_host_<card>[_vllm][_tma0].json

Why: vLLM runs steps of more than its largest CUDA-graph size (128 tokens) eagerly, piece by
piece, and compiles those pieces for a symbolic token count M in 129..8192. Our GEMM then
launches one kernel per distinct bucket config of that range, each gated to its M range
(``patterns/gemm/ops.py``): the skipped ones cost no GPU time but still run their Python grid
and launcher code. On a small model that host time is the step's time (Llama-3.2-1B mixed:
docs/design/gemm.md, "Host time of the gated dispatch"). This measures it directly: host
microseconds per call (CPU time to enqueue, no sync) and GPU microseconds per call, for

* ``ours_gated``: ``backend="tri_inductor"``, M symbolic, traced in the 129..8192 range (vLLM's);
* ``ours_static``: ``backend="tri_inductor"``, compiled for this M (one launch per GEMM);
* ``inductor``: ``backend="inductor"``, M symbolic (cuBLAS for the GEMMs).

The piece (``--piece``): ``layer`` (default), q/k/v (one GEMM), o, gate_up, SiLU-and-mul, down, at
Llama-3.2-1B's widths by default; ``vllm``, the middle piece vLLM 0.26 compiles, in its native FX forms
(o_proj, add + RMSNorm, gate_up, SiLU-and-mul, down, add + RMSNorm, q/k/v with bias, RoPE: the
same function ``cold_start_cpu.py`` compiles), so a host-time gap seen under vLLM can be checked
outside it. ``--profile`` adds where the gated call's host time goes (cProfile).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import card_slug, metadata, write_json  # noqa: E402

RANGE = (129, 8192)  # vLLM's eager compile range with tri_inductor (compile_ranges_endpoints [128, 8192])


def layer(x, w_qkv, w_o, w_gu, w_d):
    F = torch.nn.functional
    h = F.linear(x, w_qkv)
    h = F.linear(h[:, : x.shape[1]], w_o) + x
    gu = F.linear(h, w_gu)
    n = gu.shape[1] // 2
    return F.linear(F.silu(gu[:, :n]) * gu[:, n:], w_d) + h


def host_and_gpu_us(fn, x, calls: int) -> tuple[float, float]:
    """(median host us to enqueue one call ``fn(*x)``, GPU-bound us per call over ``calls`` back to back)."""
    for _ in range(3):
        fn(*x)
    torch.cuda.synchronize()
    host = []
    for _ in range(calls):
        t = time.perf_counter()
        fn(*x)
        host.append((time.perf_counter() - t) * 1e6)
        if len(host) % 20 == 0:
            torch.cuda.synchronize()  # keep the launch queue short: enqueue time, not back-pressure
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(calls):
        fn(*x)
    end.record()
    end.synchronize()
    return statistics.median(host), start.elapsed_time(end) * 1e3 / calls


def host_profile(fn, x, calls: int, top: int = 20) -> list[dict]:
    """The ``top`` functions by own host time per call of ``fn(*x)``, under cProfile
    (``_host_profile.py``: compare entries with each other, not with host_us)."""
    from _host_profile import python_profile

    prof = python_profile(lambda: fn(*x), calls, top, every=lambda i: i % 20 == 19 and torch.cuda.synchronize())
    torch.cuda.synchronize()
    for r in prof["top"]:
        print(f"[dispatch_host]   {r['own_ms'] * 1e3:8.1f} us  x{r['ncalls']:<6} {r['fn']}", flush=True)
    return prof["top"]


def _flat(out) -> torch.Tensor:
    return torch.cat([t.reshape(-1) for t in out]) if isinstance(out, (tuple, list)) else out


def build_piece(args, dt, dev):
    """(fn, inputs(M) -> list of the piece's token-dimension inputs, weight matrices [N, K], indices of
    the inputs whose dim 0 is the token count)."""
    if args.piece == "layer":
        w = [torch.randn(n, k, dtype=dt, device=dev) / k ** 0.5
             for n, k in ((args.qkv, args.hidden), (args.hidden, args.hidden), (2 * args.inter, args.hidden),
                          (args.hidden, args.inter))]
        return (lambda x: layer(x, *w)), (lambda m: [torch.randn(m, args.hidden, dtype=dt, device=dev)]), w, (0,)
    import cold_start_cpu

    m = dict(hidden=args.hidden, inter=args.inter, heads=args.heads, kv_heads=args.kv_heads,
             head_dim=args.head_dim, eps=1e-6, vocab=1024, qkv_bias=True)
    _, middle, example, dyn = cold_start_cpu.make_pieces(m)[1]
    n_tok = len(dyn)  # attn, residual, positions; then w_o, n1, w_gu, w_down, n2, w_qkv, b_qkv, cos_sin
    *layer_params, table = example[n_tok:]
    params = [torch.randn(t.shape, dtype=dt, device=dev) / (t.shape[-1] ** 0.5 if t.dim() == 2 else 8.0)
              + (1.0 if t.dim() == 1 and t.shape[0] == args.hidden else 0.0)  # norm weights near 1
              for t in layer_params]
    weights = [t for t in params if t.dim() == 2]
    params.append(torch.randn(table.shape, dtype=dt, device=dev))  # the RoPE cos/sin table
    d = args.head_dim

    def inputs(tokens: int) -> list[torch.Tensor]:
        return [torch.randn(tokens, args.heads, d, dtype=dt, device=dev),
                torch.randn(tokens, args.hidden, dtype=dt, device=dev),
                torch.randint(0, 4096, (tokens,), device=dev)]

    return (lambda *x: middle(*x, *params)), inputs, weights, tuple(range(n_tok))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--hidden", type=int, default=2048)
    p.add_argument("--qkv", type=int, default=3072, help="q/k/v output width (32/8 heads of 64: 3072)")
    p.add_argument("--inter", type=int, default=8192)
    p.add_argument("--piece", choices=("layer", "vllm"), default="layer",
                   help="layer: the GEMMs and SiLU-and-mul; vllm: vLLM's middle piece in its native forms")
    p.add_argument("--heads", type=int, default=32, help="--piece vllm: query heads (q/k/v width from heads)")
    p.add_argument("--kv-heads", type=int, default=8)
    p.add_argument("--head-dim", type=int, default=64)
    p.add_argument("--tokens", default="160,300,700,1500,4000", help="token counts in the 129..8192 range")
    p.add_argument("--calls", type=int, default=200)
    p.add_argument("--profile", action="store_true",
                   help="also print where the host time of one gated call goes (cProfile, top functions by own time)")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        print("dispatch_host.py needs a CUDA GPU", file=sys.stderr)
        return 2
    import tri_inductor  # noqa: F401  (registers the backend)
    from tri_inductor.patterns.gemm import ops as O

    torch.manual_seed(0)
    dt, dev = torch.bfloat16, "cuda"
    fn, inputs, weights, dyn = build_piece(args, dt, dev)
    with O.token_range(*RANGE):
        plans = {f"{n}x{k}": [f"{lo}..{hi}" for lo, hi, _ in O.dispatch_plan(n, k, dt, torch.device(dev))]
                 for n, k in ((t.shape[0], t.shape[1]) for t in weights)}
    tokens = [int(t) for t in args.tokens.split(",")]
    x0 = inputs(tokens[0])
    variants = {}
    torch._dynamo.reset()
    # Only the token count is symbolic (``dynamic=True`` would make the weights' dims symbolic too:
    # no GEMM pattern takes a symbolic N or K, and the matmuls fall to Inductor's own kernels).
    gated = torch.compile(fn, backend="tri_inductor")
    for i in dyn:
        torch._dynamo.mark_dynamic(x0[i], 0, min=RANGE[0], max=RANGE[1])
    with O.token_range(*RANGE):
        gated(*x0)  # traced for the range, as vLLM compiles its eager piece
    variants["ours_gated"] = gated
    inductor = torch.compile(fn, backend="inductor")
    inductor(*x0)
    variants["inductor"] = inductor
    rows = []
    for m in tokens:
        x = inputs(m)
        ref = _flat(fn(*x)).double()  # eager (the piece's own bf16 roundings): an error check, not a bar
        static = torch.compile(fn, backend="tri_inductor", dynamic=False)
        row = {"tokens": m}
        for name, f in (*variants.items(), ("ours_static", static)):
            out = _flat(f(*x))
            err = ((out.double() - ref).norm() / ref.norm()).item()
            host, gpu = host_and_gpu_us(f, x, args.calls)
            row[name] = {"host_us": round(host, 1), "gpu_us": round(gpu, 1), "rel_err_vs_eager": float(f"{err:.2e}")}
            print(f"[dispatch_host] M={m:5d} {name:12s} host {host:7.1f} us  gpu-bound {gpu:7.1f} us  "
                  f"rel err vs eager {err:.1e}", flush=True)
        row["gated_extra_host_us"] = round(row["ours_gated"]["host_us"] - row["ours_static"]["host_us"], 1)
        if args.profile:
            row["ours_gated"]["host_profile"] = host_profile(gated, x, args.calls)
        rows.append(row)
    report = {"benchmark": "dispatch_host", **metadata(), "piece": args.piece,
              "shapes": {"hidden": args.hidden, "qkv": args.qkv, "inter": args.inter}
              | ({"heads": args.heads, "kv_heads": args.kv_heads, "head_dim": args.head_dim}
                 if args.piece == "vllm" else {}), "range": list(RANGE), "plans": plans, "rows": rows,
              "method": "host_us: median CPU time of one call (enqueue, no sync; synchronised every 20 calls); "
                        "gpu_us: CUDA-event time of back-to-back calls / calls (host-bound when close to host_us)"}
    print("\nM      " + "  ".join(f"{n:>24s}" for n in ("ours_gated host/gpu", "ours_static host/gpu",
                                                         "inductor host/gpu")) + "  gated extra host us")
    for r in rows:
        print(f"{r['tokens']:<6d} " + "  ".join(f"{r[n]['host_us']:>11.1f} /{r[n]['gpu_us']:>11.1f}"
                                                for n in ("ours_gated", "ours_static", "inductor"))
              + f"  {r['gated_extra_host_us']:>10.1f}")
    print(f"plans (129..8192): {plans}")
    suffix = ("_vllm" if args.piece == "vllm" else "") + ("_tma0" if os.environ.get("TRI_INDUCTOR_TMA") == "0" else "")
    print("wrote", write_json(f"dispatch_host_{card_slug()}{suffix}.json", report, args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
