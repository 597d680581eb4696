"""Hooks that hand every graph Inductor compiles (or loads from its caches) to the auditor."""
from __future__ import annotations

import contextlib
import itertools
import logging
import threading
from collections.abc import Iterator

from .. import hooks
from .output_code import audit_output_code
from .report import GraphReport
from .scheduler import extern_sites

log = logging.getLogger("tri_inductor.hooks")  # the logger these lines had in hooks.py

_state = threading.local()
_counter = itertools.count()


def _collectors() -> list[list[GraphReport]]:
    if not hasattr(_state, "collectors"):
        _state.collectors = []
    return _state.collectors


_install_lock = threading.Lock()


def install_hooks() -> None:
    """The torch/Triton hooks a compile (or a vLLM model of ours) needs, declared in
    ``tri_inductor.hooks.TABLE``: the auditor's (GraphLowering.codegen, save_output_code,
    PyCodeCache.load_by_key_path), the mutation analysis memo (``mutation_memo``) and the PDL
    launcher's (``patterns._pdl``); idempotent, cheap.
    Every compile passes here (:func:`collect_reports`)."""
    with _install_lock:
        from torch._inductor.graph import GraphLowering

        hooks.same_ptxas_as_inductor()  # before any compile of ours: cold and warm starts share keys

        hooks.wrap_once(GraphLowering, "codegen", make_codegen_hook)
        from .. import scan_lowering

        scan_lowering.install(lambda: bool(_collectors()))  # no zero-filled scan workspace in ours
        chain_save_output_code()
        try:
            from torch._higher_order_ops import triton_kernel_wrap

            from .. import mutation_memo

            if not callable(getattr(triton_kernel_wrap, "identify_mutated_tensors", None)):
                raise AttributeError("identify_mutated_tensors")  # torch 2.14 has none (hooks.TABLE)
            hooks.wrap_once(triton_kernel_wrap, "identify_mutated_tensors", mutation_memo.memoized)
        except (ImportError, AttributeError):  # another torch: the analysis runs uncached (slower cold start)
            log.debug("tri_inductor: identify_mutated_tensors not found; mutation analysis not memoized")
        try:
            from torch._inductor.codecache import PyCodeCache

            hooks.wrap_once(PyCodeCache, "load_by_key_path", make_code_load_hook)
        except (ImportError, AttributeError):  # another torch: warm starts then go unaudited (logged)
            log.debug("tri_inductor: PyCodeCache.load_by_key_path not found; warm-start audit off")
        try:
            from torch._inductor.runtime.triton_heuristics import TritonCompileResult
        except ImportError:
            return
        from ..patterns import _pdl

        hooks.wrap_once(TritonCompileResult, "make_launcher", _pdl.make_launcher_hook)


def chain_save_output_code() -> None:
    """(Re)install the output-code hook: ``run_and_get_code`` and others replace the slot."""
    from torch._inductor.graph import GraphLowering

    hooks.wrap_once(GraphLowering, "save_output_code", make_save_output_code_hook)


def make_codegen_hook(real_codegen):
    """``GraphLowering.codegen``: launches of ours with a symbolic grid skipped while it is empty
    (``patterns/gated_calls.py``), host TMA descriptors built without per-call validation
    (``patterns/_host_tma.py``); the extern kernels' provenance kept for the next report."""

    def codegen(self, *args, **kwargs):
        out = real_codegen(self, *args, **kwargs)
        try:
            _rewrite_wrapper(out[0])
        except Exception as e:  # noqa: BLE001  (the code as Inductor wrote it runs the same launches)
            log.debug("tri_inductor: wrapper left as generated (%r)", e)
        if _collectors():
            try:
                _state.pending_sites = extern_sites(self.scheduler)
            except Exception as e:  # provenance is a bonus; never break a compile for it
                _state.pending_sites = []
                _state.pending_error = repr(e)
        return out

    return codegen


def _rewrite_wrapper(wrapper) -> None:
    code = getattr(wrapper, "value", None)
    if not isinstance(code, str) or "async_compile.triton(" not in code:
        return
    from ..patterns import our_kernel_names
    from ..patterns._host_tma import fast_descriptors
    from ..patterns.gated_calls import our_kernel_vars, skip_empty_grids

    new, n = skip_empty_grids(code, our_kernel_vars(code, frozenset(our_kernel_names())))
    new, m = fast_descriptors(new)
    if n or m:
        wrapper.value = new


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
    install_hooks()  # also chains again if run_and_get_code replaced our hook
    reports: list[GraphReport] = []
    _collectors().append(reports)
    try:
        yield reports
    finally:
        # By identity: list.remove compares by value, and a nested collector with the same
        # reports (two empty lists) would be taken for this one.
        collectors = _collectors()
        del collectors[next(i for i, c in enumerate(collectors) if c is reports)]
