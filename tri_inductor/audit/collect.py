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
_counter = itertools.count()


def _collectors() -> list[list[GraphReport]]:
    if not hasattr(_state, "collectors"):
        _state.collectors = []
    return _state.collectors


def install_hooks() -> None:
    """Install the compile-time hooks (``tri_inductor.hooks``: GraphLowering.codegen,
    save_output_code, PyCodeCache.load_by_key_path, ...); idempotent."""
    from .. import hooks

    hooks.install_compile_hooks()


def make_codegen_hook(real_codegen):
    """``GraphLowering.codegen``: remember the extern kernels' provenance for the next report."""

    def codegen(self, *args, **kwargs):
        out = real_codegen(self, *args, **kwargs)
        if _collectors():
            try:
                _state.pending_sites = extern_sites(self.scheduler)
            except Exception as e:  # provenance is a bonus; never break a compile for it
                _state.pending_sites = []
                _state.pending_error = repr(e)
        return out

    return codegen


def make_save_output_code_hook(previous):
    """``GraphLowering.save_output_code`` (a slot, None by default): chain, then audit."""

    def save_output_code(code: str) -> None:
        if previous is not None:
            previous(code)
        on_output_code(code)

    return save_output_code


# Sink for output code loaded while no collector is active (vLLM >= 0.27 warm starts from the
# mega AOT artifact never call our compiler's load()); set by tri_inductor.vllm_compiler.
_load_sink = None
_loaded_keys: set[str] = set()


def audit_loads_outside_collectors(sink) -> None:
    """Send a report of every Inductor output module loaded outside ``collect_reports`` to ``sink``."""
    global _load_sink
    _load_sink = sink


def make_code_load_hook(real_load):
    """``PyCodeCache.load_by_key_path``: every Inductor module a process loads goes through it."""

    def load_by_key_path(*args, **kwargs):
        module = real_load(*args, **kwargs)
        sink = _load_sink
        if sink is None or _collectors():
            return module  # inside a compile/load of ours save_output_code already reports it
        try:
            from .. import hooks

            bound = hooks.arguments(real_load, *args, **kwargs)
            key, path = str(bound["key"]), bound["path"]
            if key in _loaded_keys:
                return module
            _loaded_keys.add(key)
            with open(path, encoding="utf-8") as f:
                code = f.read()
        except Exception:  # an audit must never break a load
            return module
        if "def call(" not in code:  # a kernel module, not a graph's output code
            return module
        from ..patterns import our_kernel_names

        report = audit_output_code(code, graph=f"graph{next(_counter)}", origin="warm-load",
                                   our_kernels=our_kernel_names())
        sink(report)
        return module

    return load_by_key_path


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
    from .. import hooks

    hooks.install_compile_hooks()  # also chains again if run_and_get_code replaced our hook
    reports: list[GraphReport] = []
    _collectors().append(reports)
    try:
        yield reports
    finally:
        # By identity: list.remove compares by value, and a nested collector with the same
        # reports (two empty lists) would be taken for this one.
        collectors = _collectors()
        del collectors[next(i for i, c in enumerate(collectors) if c is reports)]
