"""Where a process's Python host time goes: cProfile around a call, the costliest functions by
own time. Shared by ``dispatch_host.py --profile`` (one compiled piece) and ``e2e_vllm.py``'s
profiled runs (one ``LLM.generate`` of a workload in each engine).

cProfile inflates every Python call alike (C calls are not inflated): compare entries with each
other and across engines measured the same way, not with unprofiled wall times. Torch-free.
"""
from __future__ import annotations

import cProfile
import os
import pstats
import time
from collections.abc import Callable
from typing import Any


def python_profile(fn: Callable[[], Any], calls: int = 1, top: int = 25,
                   every: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Run ``fn`` ``calls`` times under cProfile (``every(i)`` after each call, outside the
    profile: e.g. a synchronize every few calls); return the wall time per call and the ``top``
    functions by own time per call: ``{"wall_ms", "calls", "top": [{"fn", "ncalls", "own_ms",
    "cum_ms"}]}`` (per call of ``fn``; ``fn`` as ``file:line:name``, the file's last two parts)."""
    prof = cProfile.Profile()
    wall = 0.0
    for i in range(calls):
        t0 = time.perf_counter()
        prof.enable()
        fn()
        prof.disable()
        wall += time.perf_counter() - t0
        if every is not None:
            every(i)
    rows = []
    for (fname, line, name), (_cc, nc, tt, ct, _callers) in pstats.Stats(prof).stats.items():
        where = "/".join(fname.replace(os.sep, "/").split("/")[-2:])
        rows.append({"fn": f"{where}:{line}:{name}", "ncalls": round(nc / calls, 1),
                     "own_ms": round(tt * 1e3 / calls, 4), "cum_ms": round(ct * 1e3 / calls, 4)})
    rows.sort(key=lambda r: -r["own_ms"])
    return {"wall_ms": round(wall * 1e3 / calls, 3), "calls": calls, "top": rows[:top]}


def diff(ours: dict[str, Any], base: dict[str, Any], n: int = 8) -> list[dict[str, Any]]:
    """The functions whose own time grew most from ``base`` to ``ours`` (both from
    :func:`python_profile`; a function missing from one side's top list counts 0 there)."""
    b = {r["fn"]: r for r in base.get("top", [])}
    o = {r["fn"]: r for r in ours.get("top", [])}
    out = [{"fn": f, "own_ms": round(o.get(f, {}).get("own_ms", 0.0) - b.get(f, {}).get("own_ms", 0.0), 4),
            "ncalls": round(o.get(f, {}).get("ncalls", 0.0) - b.get(f, {}).get("ncalls", 0.0), 1)}
           for f in set(o) | set(b)]
    return sorted(out, key=lambda r: -r["own_ms"])[:n]
