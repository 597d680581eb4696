"""Fit the GEMM cost model's free constants to a measured candidate sweep (no GPU needed).

    python3 benchmarks/fit_cost_model.py                       # the committed H200 sweep
    python3 benchmarks/fit_cost_model.py --sweep FILE --grid TMA_SETUP_S=0,2e-6,4e-6 ...

The sweep (``kernel_bench.py --tune --tune-wide``; ``results/gemm_space_<card>.json``) holds every
candidate's time at each point. For a setting of the constants in
``tri_inductor/patterns/gemm/heuristics.py`` this scores what the compile-time tuner would get:
of the configs in the point's candidate space that were measured, the fastest among the
``CANDIDATES`` the model sends to measurement (``heuristics.diverse``), over the fastest of all
(1.0: the tuner finds the best config), geometric mean over points; and the model's first choice
alone (what a compile without tuning gets). Constants are chosen by leave-one-shape-out cross
validation (fit on the other (N, K) shapes, score the held-out one), so the reported figure is
for shapes the fit did not see.
"""
from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tri_inductor.patterns.gemm import heuristics as H  # noqa: E402
from tri_inductor.patterns.gemm.configs import Cfg, Device  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_SWEEP = os.path.join(HERE, "results", "gemm_space_h200.json")
DEFAULT_GRID = {"TMA_SETUP_S": (0.0, 1e-6, 2e-6, 3e-6, 4e-6), "PROGRAM_FILL_S": (0.4e-6, 0.8e-6, 1.2e-6)}


def _geomean(xs: list[float]) -> float:
    return math.exp(sum(map(math.log, xs)) / len(xs))


def load(path: str, dev: Device) -> list[tuple]:
    rows = []
    for r in json.load(open(path))["rows"]:
        m, n, k = r["M"], r["N"], r["K"]
        meas = {Cfg(*c): t for t, c in r["results"]}
        own = [c for c in H.candidates(m, n, k, dev) if c in meas]
        if own:
            rows.append((m, n, k, own, meas, min(meas[c] for c in own)))
    return rows


def score_points(params: dict[str, float], rows: list[tuple], dev: Device, count: int) -> list[tuple[float, float]]:
    """[(tuner's best / best, model's first / best)] per point under ``params``."""
    saved = {k: getattr(H, k) for k in params}
    try:
        for k, v in params.items():
            setattr(H, k, v)
        out = []
        for m, n, k, own, meas, best in rows:
            sent = H.diverse(own, m, n, k, dev, count)
            first = min(own, key=lambda c: H.estimate_s(c, m, n, k, dev))
            out.append((best / min(meas[c] for c in sent), best / meas[first]))
        return out
    finally:
        for k, v in saved.items():
            setattr(H, k, v)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sweep", default=DEFAULT_SWEEP)
    p.add_argument("--count", type=int, default=12, help="configs the tuner measures (tuning.CANDIDATES)")
    p.add_argument("--grid", nargs="*", default=[], help="NAME=v1,v2,... (heuristics constants)")
    args = p.parse_args()
    grid = dict(DEFAULT_GRID)
    for g in args.grid:
        name, _, vals = g.partition("=")
        if not hasattr(H, name):
            p.error(f"heuristics has no constant {name}")
        grid[name] = tuple(float(v) for v in vals.split(","))
    meta = json.load(open(args.sweep))["meta"]
    dev = Device(meta["card"], meta.get("sms", 132), 232448, (9, 0), 50 << 20)
    rows = load(args.sweep, dev)
    current = {k: getattr(H, k) for k in grid}
    cur = score_points(current, rows, dev, args.count)
    print(f"{len(rows)} points from {os.path.basename(args.sweep)} ({meta['card']}); current constants "
          f"{current}: tuner {_geomean([a for a, _ in cur]):.3f} (min {min(a for a, _ in cur):.3f}), "
          f"model alone {_geomean([b for _, b in cur]):.3f}")
    settings = [dict(zip(grid, vals)) for vals in itertools.product(*grid.values())]
    scores = {i: score_points(s, rows, dev, args.count) for i, s in enumerate(settings)}
    shapes = sorted({(r[1], r[2]) for r in rows})
    held_out = []
    for shape in shapes:
        train = [i for i, r in enumerate(rows) if (r[1], r[2]) != shape]
        test = [i for i, r in enumerate(rows) if (r[1], r[2]) == shape]
        best = max(scores, key=lambda s: _geomean([scores[s][i][0] for i in train]))
        held_out += [scores[best][i][0] for i in test]
        print(f"  held out N={shape[0]} K={shape[1]}: fit {settings[best]} -> "
              f"{_geomean([scores[best][i][0] for i in test]):.3f} (current {_geomean([cur[i][0] for i in test]):.3f})")
    print(f"cross-validated tuner score {_geomean(held_out):.3f} (min {min(held_out):.3f}); "
          f"current constants {_geomean([a for a, _ in cur]):.3f}")
    top = max(scores, key=lambda s: _geomean([a for a, _ in scores[s]]))
    print(f"best on all points: {settings[top]} -> {_geomean([a for a, _ in scores[top]]):.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
