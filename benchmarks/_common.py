"""Shared benchmark helpers: metadata, CUDA-graph timing with cold-cache rotation, JSON output."""
from __future__ import annotations

import json
import os
import statistics
from typing import Any, Callable, Literal, Sequence

import torch

import _meta
from tri_inductor.tuning import graph_time_ms

RESULTS_DIR = os.path.join(os.path.dirname(__file__), "results")


def card_slug() -> str:
    return _meta.card_slug(torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu")


def metadata() -> dict[str, Any]:
    import triton

    props = torch.cuda.get_device_properties(0) if torch.cuda.is_available() else None
    return {
        "card": torch.cuda.get_device_name() if props else "cpu",
        "sms": props.multi_processor_count if props else 0,
        "torch": torch.__version__,
        "triton": triton.__version__,
        "cuda": torch.version.cuda,
        "commit": _meta.git_info()["commit"],
        **({"tri_inductor_env": env} if (env := _meta.tri_inductor_env()) else {}),
    }


def bench(fns: Sequence[Callable[[], Any]], reps: int = 20, inner: int = 1) -> float:
    """Median time (ms) of one call on CUDA-graph replays: the package's timer
    (``tri_inductor.tuning.graph_time_ms``: ``fns`` over *different* input sets, so with enough
    sets every call reads from HBM), with the benchmarks' default of 20 replays."""
    return graph_time_ms(fns, reps=reps, inner=inner)


def timed_rounds(fns: dict[str, Sequence[Callable[[], Any]]], rounds: int,
                 order: Literal["alternate", "rotate"] = "alternate") -> dict[str, list[float]]:
    """``bench`` each entry of ``fns`` once a round, ``rounds`` times: {name: [ms per round]}.
    Single back-to-back passes moved ratios by up to 7-10% between runs on one card, so callers
    take medians over rounds whose order changes: ``"alternate"`` reverses every other round,
    ``"rotate"`` starts each round one entry later (no entry keeps one slot)."""
    names = list(fns)
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds):
        if order == "rotate":
            seq = names[r % len(names):] + names[:r % len(names)]
        else:
            seq = names if r % 2 == 0 else names[::-1]
        for n in seq:
            times[n].append(bench(fns[n]))
    return times


def inductor_with_pdl(fn: Callable[..., Any], *example: Any) -> Callable[..., Any]:
    """``fn`` compiled by stock Inductor with its opt-in ``triton.enable_pdl`` (off by default):
    the reference next to our PDL-launched kernels. Compiled here, on ``example``, inside the
    config patch (torch.compile compiles at the first call); a new code object, so no compile
    of ``fn`` under the default settings is reused."""
    with torch._inductor.config.patch({"triton.enable_pdl": True}):
        compiled = torch.compile(lambda *a: fn(*a), backend="inductor", dynamic=False)
        compiled(*example)
    return compiled


def n_sets(bytes_per_set: int, l2_bytes: int = 60 * 2**20) -> int:
    """How many input sets make the rotation exceed the L2 twice over."""
    return max(1, min(16, -(-2 * l2_bytes // max(1, bytes_per_set))))


def write_json(name: str, data: dict[str, Any], out_dir: str | None = None) -> str:
    out_dir = out_dir or RESULTS_DIR
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, name)
    with open(path, "w") as f:
        json.dump(data, f, indent=1, sort_keys=False)
    return path


def geomean(xs: Sequence[float]) -> float:
    xs = [x for x in xs if x and x > 0]
    return float(torch.tensor(xs, dtype=torch.float64).log().mean().exp()) if xs else float("nan")


def bench_events(fns: Sequence[Callable[[], Any]], reps: int = 20) -> float:
    """Median time (ms) of one call, eager launches timed with CUDA events: for kernels that
    cannot be captured in a CUDA graph (then launch overhead is in the number; say so)."""
    for f in fns:
        f()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    for _ in range(reps):
        start.record()
        for f in fns:
            f()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / len(fns))
    return statistics.median(times)
