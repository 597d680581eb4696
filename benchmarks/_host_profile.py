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
                   every: Callable[[int], None] | None = None, dump: str | None = None) -> dict[str, Any]:
    """Run ``fn`` ``calls`` times under cProfile (``every(i)`` after each call, outside the
    profile: e.g. a synchronize every few calls); return the wall time per call and the ``top``
    functions by own time per call: ``{"wall_ms", "calls", "top": [{"fn", "ncalls", "own_ms",
    "cum_ms"}], "all": [...]}`` (per call of ``fn``; ``fn`` as ``file:line:name``, the file's last
    two parts; ``all``: every function, for :func:`diff`, too long to keep in a report).
    ``dump``: also write the raw profile there (``pstats``: callers and callees)."""
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
    if dump:
        prof.dump_stats(dump)
    rows = []
    for (fname, line, name), (_cc, nc, tt, ct, _callers) in pstats.Stats(prof).stats.items():
        where = "/".join(fname.replace(os.sep, "/").split("/")[-2:])
        rows.append({"fn": f"{where}:{line}:{name}", "ncalls": round(nc / calls, 1),
                     "own_ms": round(tt * 1e3 / calls, 4), "cum_ms": round(ct * 1e3 / calls, 4)})
    rows.sort(key=lambda r: -r["own_ms"])
    return {"wall_ms": round(wall * 1e3 / calls, 3), "calls": calls, "top": rows[:top], "all": rows}


def diff(ours: dict[str, Any], base: dict[str, Any], n: int = 8, by: str = "own_ms") -> list[dict[str, Any]]:
    """The functions whose own time (``by="cum_ms"``: time including callees) grew most from
    ``base`` to ``ours`` (both from :func:`python_profile`; over every function where both have
    ``all``, else over the top lists, where a function missing from one side counts 0 there)."""
    b = {r["fn"]: r for r in base.get("all") or base.get("top", [])}
    o = {r["fn"]: r for r in ours.get("all") or ours.get("top", [])}
    out = [{"fn": f, by: round(o.get(f, {}).get(by, 0.0) - b.get(f, {}).get(by, 0.0), 4),
            "ncalls": round(o.get(f, {}).get("ncalls", 0.0) - b.get(f, {}).get("ncalls", 0.0), 1)}
           for f in set(o) | set(b)]
    return sorted(out, key=lambda r: -r[by])[:n]
