"""Hooks that hand every graph Inductor compiles (or loads from its caches) to the auditor."""
from __future__ import annotations

import contextlib
import itertools
import threading
from collections.abc import Iterator

from .output_code import audit_output_code
from .report import GraphReport
from .scheduler import extern_sites

_state = threading.local()
_installed = False
_counter = itertools.count()


def _collectors() -> list[list[GraphReport]]:
    if not hasattr(_state, "collectors"):
        _state.collectors = []
    return _state.collectors


def install_hooks() -> None:
    """Wrap ``GraphLowering.codegen`` and ``save_output_code`` once per process (idempotent)."""
    global _installed
    if _installed:
        return
    from torch._inductor.graph import GraphLowering

    real_codegen = GraphLowering.codegen

    def codegen(self, *args, **kwargs):
        out = real_codegen(self, *args, **kwargs)
        if _collectors():
            try:
                _state.pending_sites = extern_sites(self.scheduler)
            except Exception as e:  # provenance is a bonus; never break a compile for it
                _state.pending_sites = []
                _state.pending_error = repr(e)
        return out

    GraphLowering.codegen = codegen
    _chain_save_output_code()
    _installed = True


def _chain_save_output_code() -> None:
    from torch._inductor.graph import GraphLowering

    previous = GraphLowering.save_output_code

    def save_output_code(code: str) -> None:
        if previous is not None:
            previous(code)
        on_output_code(code)

    save_output_code._tri_inductor = True  # type: ignore[attr-defined]
    GraphLowering.save_output_code = save_output_code


def on_output_code(code: str) -> None:
    collectors = _collectors()
    if not collectors:
        return
    sites = getattr(_state, "pending_sites", None)
    _state.pending_sites = None
    from ..patterns import our_kernel_names

    report = audit_output_code(code, graph=f"graph{next(_counter)}",
                               origin="compile" if sites is not None else "cache",
                               our_kernels=our_kernel_names())
    _attach_provenance(report, sites or [])
    for c in collectors:
        c.append(report)


def _attach_provenance(report: GraphReport, sites) -> None:
    remaining = list(sites)
    for entry in report.violations:
        for i, site in enumerate(remaining):
            if entry.op and (site.op == entry.op or site.op.split(".")[:2] == entry.op.split(".")[:2]):
                # The op's own FX node beats the fused kernel's node list in Inductor's comment.
                entry.fx_nodes = site.fx_nodes or entry.fx_nodes
                entry.source = site.source or entry.source
                del remaining[i]
                break


@contextlib.contextmanager
def collect_reports() -> Iterator[list[GraphReport]]:
    """Collect a report for each graph compiled or cache-loaded inside the block (this thread)."""
    install_hooks()
    from torch._inductor.graph import GraphLowering

    if not getattr(GraphLowering.save_output_code, "_tri_inductor", False):
        _chain_save_output_code()  # someone (e.g. run_and_get_code) replaced our hook: chain again
    reports: list[GraphReport] = []
    _collectors().append(reports)
    try:
        yield reports
    finally:
        # By identity: list.remove compares by value, and a nested collector with the same
        # reports (two empty lists) would be taken for this one.
        collectors = _collectors()
        del collectors[next(i for i, c in enumerate(collectors) if c is reports)]
