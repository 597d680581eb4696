"""SiLU/GELU-and-mul: launch and cache variants of our kernel, next to Inductor's, on one GPU.

    python benchmarks/activation_variants.py [--out DIR]    # writes activation_variants_<card>.json

Why: our kernel and Inductor's both stream at the memory wall (1024 elements x 4 warps a
program), so what is left is around the kernel: how it is launched and how its loads and store
treat the caches (every byte is touched once). This times
* the shipped kernel: programmatic dependent launch (PDL, tri_inductor/patterns/_pdl.py), no hints;
* the same kernel without PDL (the form before PDL);
* evict-first loads and store (the form shipped at 21babff), without and with PDL;
next to Inductor's kernel for the same op, with its default settings (what the acceptance and
kernel_bench.py compare against) and with its opt-in ``triton.enable_pdl`` (for reference).
Cases: kernel_bench.py's 4096 x 4096 (SiLU and GELU-tanh) with the outputs rotating over the input
sets (each call writes a buffer that is cold in L2) and with one output buffer written by every
call (as an allocator hands the same block back), then Llama-3-8B's width (14336) from batch-1
decode to 4096-token prefill. The evict-first hints went 0.97x or 1.00-1.02x Inductor at
4096 x 4096 from run to run (06f2fbc-21babff records); in one probe run they were 0.97x with
rotating outputs and 1.01x with one, hence both cases here.
Timing: CUDA-graph replays over HBM-cold input sets (PDL launches become programmatic edges
there, as in vLLM's graphs), all variants in rounds whose order rotates, medians.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys

import torch
import triton
import triton.language as tl

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import card_slug, inductor_with_pdl, metadata, n_sets, timed_rounds, write_json  # noqa: E402
from tri_inductor.patterns import activation as A  # noqa: E402
from tri_inductor.patterns._pdl import pdl_launch_dependents, pdl_wait  # noqa: E402

DT = torch.bfloat16
# (tokens, width, activation, outputs): "rotate" (one output per input set) or "reuse" (one).
CASES = ([(4096, 4096, "silu", "rotate"), (4096, 4096, "silu", "reuse"), (4096, 4096, "tanh", "rotate")]
         + [(t, 14336, "silu", "rotate") for t in (1, 16, 64, 256, 1024, 4096)])
ROUNDS = 7


@triton.jit
def _evict_first_kernel(x_ptr, out_ptr, D: tl.constexpr, BLOCK: tl.constexpr, ACT: tl.constexpr,
                        USE_PDL: tl.constexpr):
    # The shipped kernel's static-width, unmasked path with evict-first loads and store.
    pid = tl.program_id(0)
    if USE_PDL:
        pid += pdl_wait()
    n_blocks: tl.constexpr = D // BLOCK
    row = (pid // n_blocks).to(tl.int64)
    cols = (pid % n_blocks) * BLOCK + tl.arange(0, BLOCK)
    a = tl.load(x_ptr + row * (2 * D) + cols, eviction_policy="evict_first").to(tl.float32)
    b = tl.load(x_ptr + row * (2 * D) + D + cols, eviction_policy="evict_first").to(tl.float32)
    y = A.act_mul(a, b, ACT).to(out_ptr.dtype.element_ty)
    if USE_PDL:
        row += pdl_launch_dependents()
    tl.store(out_ptr + row * D + cols, y, eviction_policy="evict_first")


def _ours(act: int, pdl: bool):
    def run(x, out):
        A.launch_gated(x, out, act, *A._launch_config(out.shape[1], x.element_size()), pdl=pdl)
    return run


def _evict_first(act: int, pdl: bool):
    def run(x, out):
        d = out.shape[1]
        block, warps = A._launch_config(d, x.element_size())
        _evict_first_kernel[(x.shape[0] * (d // block),)](x, out, D=d, BLOCK=block, ACT=act, USE_PDL=pdl,
                                                          num_warps=warps, launch_pdl=pdl)
    return run


def measure(tokens: int, d: int, act_name: str, outputs: str) -> dict:
    act = A._ACTS[act_name]
    moved = 3 * tokens * d * 2
    xs = [torch.randn(tokens, 2 * d, device="cuda", dtype=DT) for _ in range(max(4, n_sets(moved)))]
    outs = [torch.empty(tokens, d, device="cuda", dtype=DT) for _ in (xs if outputs == "rotate" else xs[:1])]
    sets = [(x, outs[i % len(outs)]) for i, x in enumerate(xs)]
    F = torch.nn.functional
    approximate = "tanh" if act_name == "tanh" else None

    def eager(x):
        h = x[..., :d]
        return (F.silu(h) if approximate is None else F.gelu(h, approximate=approximate)) * x[..., d:]

    ref = A.reference_silu_and_mul(xs[0]) if approximate is None else A.reference_gelu_and_mul(xs[0], approximate)
    # Inductor writes into its own output (from the graph's pool); ``out.copy_`` would add a pass.
    ind = torch.compile(eager, backend="inductor", dynamic=False)
    ind_pdl = inductor_with_pdl(eager, xs[0])
    runs = {"ours (PDL, shipped)": _ours(act, True), "ours, no PDL": _ours(act, False),
            "evict-first, no PDL": _evict_first(act, False), "evict-first + PDL": _evict_first(act, True)}
    fns = {"inductor": [lambda x=x: ind(x) for x in xs], "inductor enable_pdl": [lambda x=x: ind_pdl(x) for x in xs]}
    errs = {n: ((f(xs[0]).double() - ref).norm() / ref.norm()).item()
            for n, f in (("inductor", ind), ("inductor enable_pdl", ind_pdl))}
    for name, run in runs.items():
        x, out = sets[0]
        out.fill_(float("nan"))
        run(x, out)
        errs[name] = ((out.double() - ref).norm() / ref.norm()).item()
        fns[name] = [lambda x=x, o=o, run=run: run(x, o) for x, o in sets]
    for name, err in errs.items():
        assert err < 1e-2, f"{name}: relative error {err:.2e} at {tokens}x{d}"
    times = timed_rounds(fns, ROUNDS, order="rotate")
    med = {n: statistics.median(t) for n, t in times.items()}
    return {n: dict(us=med[n] * 1e3, vs_inductor=med["inductor"] / med[n], tbps=moved / med[n] / 1e9,
                    rounds_vs_inductor=[round(i / t, 4) for i, t in zip(times["inductor"], times[n])],
                    rel_err=errs[n]) for n in fns}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=os.environ.get("OUT") or None)
    args = p.parse_args()
    result = {"benchmark": "activation_variants", **metadata(), "rounds": ROUNDS, "cases": {}}
    for tokens, d, act, outputs in CASES:
        key = f"{'silu' if act == 'silu' else 'gelu_tanh'} {tokens}x{d}{' one out' if outputs == 'reuse' else ''}"
        result["cases"][key] = measure(tokens, d, act, outputs)
        print(f"{key}: " + ", ".join(f"{n} {r['vs_inductor']:.3f}" for n, r in result["cases"][key].items()), flush=True)
        path = write_json(f"activation_variants_{card_slug()}.json", result, args.out)
    cases = list(result["cases"])
    print(f"\n== gated activation variants: {result['card']}  commit {result['commit'][:12]}"
          "  (Inductor time / variant time: > 1 = faster than Inductor's default; median of rotated rounds)")
    print(f"{'case':24s}" + "".join(f"{n:>21s}" for n in result["cases"][cases[0]]))
    for c in cases:
        print(f"{c:24s}" + "".join(f"{r['vs_inductor']:21.3f}" for r in result["cases"][c].values()))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
