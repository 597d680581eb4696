"""What the auditor found in one compiled graph, and how it is printed."""
from __future__ import annotations

import dataclasses
import json
from collections import Counter
from typing import Any, Literal

KernelKind = Literal["inductor_triton", "triton_template", "our_triton", "user_triton", "communication",
                     "hooked_op", "non_triton"]
TRITON_KINDS = ("inductor_triton", "triton_template", "our_triton", "user_triton")
COMMUNICATION = "communication"
"""A collective (NCCL all-reduce/all-gather/reduce-scatter under tensor parallelism): allowed, and
listed apart from compute; it moves data between GPUs and computes nothing a Triton kernel would."""
HOOKED_OP = "hooked_op"
"""An opaque op the graph calls and runs eagerly, whose kernel calls we route to our Triton kernels
(vLLM's ``vllm.moe_forward`` while ``vllm_moe`` is active): allowed, with its family. Its
kernels are not in the graph's code; the runtime census (``benchmarks/vllm_census.py``) is what
checks them, and a form our hooks do not cover is logged where it falls back."""


@dataclasses.dataclass
class KernelEntry:
    """One launch site in a compiled graph's wrapper code."""

    kind: KernelKind
    name: str
    """Kernel name (Triton) or the call (`extern_kernels.mm`, `torch.ops.aten.topk.default`)."""
    op: str | None = None
    """The aten/custom op behind a non-Triton call, e.g. ``aten.mm``."""
    fx_nodes: tuple[str, ...] = ()
    """FX nodes (of the graph given to the backend) this launch comes from."""
    source: str | None = None
    """User source line, where known (``file.py:12 in forward: x = self.proj(x)``)."""
    hint: str | None = None
    """How to make it Triton (non-Triton entries only)."""
    family: str | None = None
    """Our pattern family (our_triton and hooked_op entries)."""

    @property
    def is_triton(self) -> bool:
        return self.kind in TRITON_KINDS

    @property
    def allowed(self) -> bool:
        """Triton compute, communication (a collective, never compute) or an op on our hooks."""
        return self.kind in TRITON_KINDS or self.kind in (COMMUNICATION, HOOKED_OP)


@dataclasses.dataclass
class GraphReport:
    """The audit of one compiled graph."""

    graph: str
    kernels: list[KernelEntry]
    origin: str = "compile"
    """``compile`` (fresh Inductor compile) or ``cache`` (FX/AOT cache hit) or ``file``."""
    pattern_hits: dict[str, int] = dataclasses.field(default_factory=dict)
    near_misses: list[str] = dataclasses.field(default_factory=list)
    code: str | None = dataclasses.field(default=None, repr=False)
    """The output code audited (for graph-audit files and the runtime check's kernel names)."""

    @property
    def violations(self) -> list[KernelEntry]:
        return [k for k in self.kernels if not k.allowed]

    @property
    def ok(self) -> bool:
        return not self.violations

    def counts(self) -> dict[str, int]:
        return dict(Counter(k.kind for k in self.kernels))

    def summary_line(self) -> str:
        counts = ", ".join(f"{kind} {n}" for kind, n in sorted(self.counts().items())) or "no kernels"
        hits = ", ".join(f"{f} {n}" for f, n in sorted(self.pattern_hits.items()) if n) or "none"
        verdict = "all Triton" if self.ok else f"{len(self.violations)} NON-TRITON: " + "; ".join(
            f"{v.op or v.name}" for v in self.violations)
        return f"[tri_inductor audit] {self.graph} ({self.origin}): {counts}; pattern hits: {hits}; {verdict}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "graph": self.graph,
            "origin": self.origin,
            "ok": self.ok,
            "counts": self.counts(),
            "pattern_hits": self.pattern_hits,
            "near_misses": self.near_misses,
            "kernels": [dataclasses.asdict(k) for k in self.kernels],
        }

    def format_table(self) -> str:
        rows = [("#", "class", "kernel / call", "op", "from FX node")]
        for i, k in enumerate(self.kernels):
            rows.append((str(i), k.kind, k.name, k.op or "", ",".join(k.fx_nodes)[:40]))
        widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]))]
        lines = [f"graph {self.graph} ({self.origin})"]
        for j, r in enumerate(rows):
            lines.append("  " + "  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip())
            if j == 0:
                lines.append("  " + "  ".join("-" * w for w in widths))
        lines.append("  " + self.summary_line().split(": ", 1)[1])
        for v in self.violations:
            lines.append(f"  NON-TRITON {v.op or v.name}: {v.name}")
            if v.fx_nodes:
                lines.append(f"    from FX node(s): {', '.join(v.fx_nodes)}")
            if v.source:
                lines.append(f"    source: {v.source}")
            if v.hint:
                lines.append(f"    fix: {v.hint}")
        for m in self.near_misses:
            lines.append(f"  near miss: {m}")
        return "\n".join(lines)


def reports_to_json(reports: list[GraphReport]) -> str:
    return json.dumps({"ok": all(r.ok for r in reports), "graphs": [r.to_dict() for r in reports]}, indent=2)


def format_reports(reports: list[GraphReport]) -> str:
    if not reports:
        return "no compiled graphs were found"
    total = sum(len(r.kernels) for r in reports)
    bad = sum(len(r.violations) for r in reports)
    body = "\n\n".join(r.format_table() for r in reports)
    verdict = "every kernel is Triton" if not bad else f"{bad} non-Triton kernel launch(es)"
    return f"{body}\n\n{len(reports)} graph(s), {total} kernel launch site(s): {verdict}"


class TritonOnlyViolation(RuntimeError):
    """Raised in strict mode when a compiled graph launches a non-Triton kernel."""

    def __init__(self, reports: list[GraphReport]):
        self.reports = reports
        bad = [r for r in reports if not r.ok]
        super().__init__(
            "tri_inductor strict mode: non-Triton kernels in the compiled graph\n\n"
            + "\n\n".join(r.format_table() for r in bad))
