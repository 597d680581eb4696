"""Probe: would TMA kernels with *host-side* descriptors close the mid-M gap to cuBLAS?

``docs/design/gemm.md`` ("Open"): at M 128-4096 against narrow N our best configs reach
0.68-0.80x cuBLAS, and the fitted cost model charges our persistent TMA kernel ~3 us per launch
for its device-side descriptors (``tl.make_tensor_descriptor``: built in global memory by every
program, then fenced). This script measures, side by side on one card and one timer
(``_common.timed_rounds``: CUDA-graph replays over rotated weights, alternating rounds):

* cuBLAS (``torch.mm``), and the kernel names it runs (tile, cluster, split/stream-K);
* ours: the config a compile gets (``ops.choose_config``: stored, tuned now, or modelled);
* ``mm_tma_kernel`` with host-side descriptors (``TensorDescriptor``: a by-value kernel
  parameter, no global-memory descriptor, no fence), one program per tile and persistent
  (optionally warp-specialized), over a small tile space; the best of them.

    python benchmarks/gemm_tma_probe.py [--points M:N:K,...] [--out DIR]

Writes ``gemm_tma_probe_<card>.json``. ``results/gemm_tma_probe_h100.json`` was taken at 4f7d2e9,
with the host-descriptor kernels then in this file (now the package's: docs/design/gemm.md).
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

# The weakest points of gemm_models_h200.json (0ad3d4d) and two controls where we match cuBLAS.
POINTS = [(2048, 1152, 896), (4096, 1152, 896), (256, 10240, 8192), (256, 10240, 5120), (512, 2560, 4096),
          (512, 2560, 9728), (256, 4608, 3584), (512, 4608, 3584), (128, 10240, 5120), (2048, 2560, 9728),
          (2048, 2560, 4096), (512, 896, 4864), (128, 9728, 896), (512, 2048, 8192),
          (4096, 6144, 4096), (2048, 28672, 4096)]

# (BLOCK_M, BLOCK_N, BLOCK_K, num_warps, num_stages)
NP_TILES = [(128, 128, 64, 4, 3), (128, 128, 64, 4, 4), (128, 128, 64, 4, 5), (128, 128, 64, 8, 3),
            (128, 128, 64, 8, 4), (128, 256, 64, 8, 3), (128, 256, 64, 8, 4), (64, 128, 64, 4, 3),
            (64, 128, 64, 4, 4), (64, 128, 64, 4, 5), (64, 256, 64, 4, 3), (64, 256, 64, 4, 4),
            (128, 64, 64, 4, 3), (128, 64, 64, 4, 4), (128, 64, 64, 4, 5), (64, 64, 64, 4, 4),
            (64, 64, 64, 4, 6), (128, 128, 128, 8, 2), (128, 128, 128, 8, 3), (64, 128, 128, 4, 3),
            (64, 128, 128, 4, 4), (256, 128, 64, 8, 3)]
P_TILES = [(128, 128, 64, 4, 3), (128, 128, 64, 4, 4), (128, 256, 64, 8, 3), (64, 128, 64, 4, 4),
           (128, 64, 64, 4, 4), (128, 128, 128, 8, 3)]


KINDS = {"np": "TMA_TILE", "p": "TMA", "pws": "TMA_WS"}


def launch(a, w, c, tile, kind: str):
    """c = a @ w.T on the package's ``mm_tma_kernel`` (host-side descriptors); kind: "np" (one
    program per tile) | "p" (persistent) | "pws" (persistent, warp-specialized)."""
    from tri_inductor.patterns.gemm import configs as C
    from tri_inductor.patterns.gemm import launch as LA

    bm, bn, bk, warps, stages = tile
    LA.launch_cfg(a, w.t(), None, c, C.Cfg(bm, bn, bk, 8, 1, warps, stages, C.Kind[KINDS[kind]]))
    return c


def _variants():
    return [("np", t) for t in NP_TILES] + [(k, t) for t in P_TILES for k in ("p", "pws")]


def _name(kind, tile):
    return f"{kind} {tile[0]}x{tile[1]}x{tile[2]} w{tile[3]} st{tile[4]}"


def cublas_kernels(a, w) -> list[str]:
    from torch.profiler import ProfilerActivity, profile

    torch.mm(a, w.t())
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        torch.mm(a, w.t())
        torch.cuda.synchronize()
    return sorted({e.name for e in prof.events() if e.device_type.name == "CUDA"})


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--points", help="M:N:K,... (default: the weakest registry points and two controls)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", default=os.environ.get("OUT"))
    args = ap.parse_args()

    from _common import bench, metadata, n_sets, timed_rounds, write_json

    from tri_inductor.patterns.gemm import ops as O

    points = ([tuple(int(x) for x in p.split(":")) for p in args.points.split(",")] if args.points else POINTS)
    dt = torch.bfloat16
    rows = []
    t_start = time.time()
    for M, N, K in points:
        sets = [(torch.randn(M, K, device="cuda", dtype=dt), torch.randn(N, K, device="cuda", dtype=dt) / 64)
                for _ in range(n_sets(N * K * 2 + M * K * 2))]
        outs = [torch.empty(M, N, device="cuda", dtype=dt) for _ in sets]
        a0, w0 = sets[0]
        ref = a0.float() @ w0.float().t()
        cfg = O.choose_config(M, N, K, dt)
        sweep = {}
        for kind, tile in _variants():
            name = _name(kind, tile)
            try:
                got = launch(a0, w0, outs[0], tile, kind)
                torch.cuda.synchronize()
                err = ((got.float() - ref).norm() / ref.norm()).item()
                if not err < 1e-2:
                    print(f"  {name}: wrong (rel err {err:.2e})", flush=True)
                    continue
                sweep[name] = bench([lambda a=a, w=w, c=c: launch(a, w, c, tile, kind)
                                     for (a, w), c in zip(sets, outs)], reps=10)
            except Exception as e:  # noqa: BLE001  (a tile the compiler or the card refuses)
                print(f"  {name}: {type(e).__name__}: {str(e)[:120]}", flush=True)
        best = min(sweep, key=sweep.get)
        kind, tile = next((k, t) for k, t in _variants() if _name(k, t) == best)
        fns = {"cublas": [lambda a=a, w=w: torch.mm(a, w.t()) for a, w in sets],
               "ours": [lambda a=a, w=w: O.mm_launch(a, w.t(), None, cfg) for a, w in sets],
               "host_tma": [lambda a=a, w=w, c=c: launch(a, w, c, tile, kind) for (a, w), c in zip(sets, outs)]}
        times = {k: statistics.median(v) for k, v in timed_rounds(fns, args.rounds).items()}
        row = dict(M=M, N=N, K=K, cublas_us=times["cublas"] * 1e3, ours_us=times["ours"] * 1e3,
                   host_tma_us=times["host_tma"] * 1e3, ours_vs_cublas=times["cublas"] / times["ours"],
                   host_tma_vs_cublas=times["cublas"] / times["host_tma"], host_tma_best=best,
                   ours_config=cfg.short(), cublas_kernels=cublas_kernels(a0, w0),
                   sweep_us={k: round(v * 1e3, 2) for k, v in sorted(sweep.items(), key=lambda kv: kv[1])[:8]})
        rows.append(row)
        print(f"M={M:5d} N={N:6d} K={K:6d} cublas {row['cublas_us']:7.1f}us ours {row['ours_us']:7.1f}us "
              f"x{row['ours_vs_cublas']:.3f} ({cfg.short()})  host-TMA {row['host_tma_us']:7.1f}us "
              f"x{row['host_tma_vs_cublas']:.3f} ({best})  cuBLAS: {' | '.join(row['cublas_kernels'])[:160]}",
              flush=True)
        del sets, outs
        torch.cuda.empty_cache()
    data = dict(meta=metadata(), points=rows, wall_s=round(time.time() - t_start, 1),
                method="ratios = cuBLAS time / kernel time, medians of alternating rounds of CUDA-graph "
                       "replays over rotated weights (2x L2); host_tma = the best of the probe's tile space at "
                       "that point (its sweep: one pass, 10 replays)")
    path = write_json(f"gemm_tma_probe_{__import__('_common').card_slug()}.json", data, args.out)
    print("wrote", path)
    print("\n| M | N | K | ours / cuBLAS | host-TMA / cuBLAS | host-TMA best |")
    for r in rows:
        print(f"| {r['M']} | {r['N']} | {r['K']} | {r['ours_vs_cublas']:.3f} | {r['host_tma_vs_cublas']:.3f} | "
              f"{r['host_tma_best']} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
