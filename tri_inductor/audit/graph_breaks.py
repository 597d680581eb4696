"""Graph breaks: the code between compiled graphs (and under ``torch._dynamo.disable``) runs eagerly
in PyTorch, on ATen kernels the output-code audit never sees.  Dynamo counts each break with its
reason; a new one is reported as a non-Triton entry, so strict fails on it and default mode warns."""
from __future__ import annotations

from collections import Counter

from .report import GraphReport, KernelEntry

HINT = ("the ops after this break (or inside the disabled function) run eagerly in PyTorch, not in a "
        "compiled graph; remove the break (see the reason) or compile with fullgraph=True to find it")


def snapshot() -> Counter:
    from torch._dynamo.utils import counters

    return Counter(dict(counters["graph_break"]))


def new_reasons(before: Counter) -> list[str]:
    """One short line per graph break counted since ``before``."""
    now = snapshot()
    if any(now.get(r, 0) < n for r, n in before.items()):
        before = Counter()  # the counters were cleared (torch._dynamo.reset) since
    out = []
    for reason, n in now.items():
        for _ in range(n - before.get(reason, 0)):
            out.append(_short(reason))
    return out


def _short(reason: str) -> str:
    lines = [l.strip() for l in reason.splitlines() if l.strip()]
    head = lines[0] if lines else "graph break"
    why = next((l for l in lines[1:] if l.startswith("Explanation:")), "")
    return f"{head} ({why[len('Explanation:'):].strip()})" if why else head


def breaks_report(reasons: list[str], graph: str = "graph breaks") -> GraphReport:
    return GraphReport(graph=graph, origin="compile", kernels=[
        KernelEntry(kind="non_triton", name="graph break", op=r, hint=HINT) for r in reasons])
