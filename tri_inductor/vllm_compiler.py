"""``TriInductorCompiler``: the vLLM ``CompilerInterface`` that compiles each piece of the model.

vLLM (mode VLLM_COMPILE) splits the model graph at attention, wraps the pieces in
``PiecewiseBackend``/CUDA graphs and hands each piece to ``CompilerManager.compiler``.  We
subclass ``InductorStandaloneAdaptor`` so vLLM's standalone-compile artifacts, cache layout,
AOT path and its ``PostGradPassManager`` passes all stay as they are, and add:

* Triton-only Inductor settings (``settings.triton_only_inductor_config``) under vLLM's and the
  user's ``inductor_compile_config`` (the user still wins; an unsafe override is warned about);
* our pattern pass *inside* vLLM's pass manager (after vLLM's fusion passes, before its IR
  lowering and defunctionalization, which must stay last);
* the auditor around every compile and load, with a per-run summary (``run_summary()``).

Handles are vLLM's own ``(key, path)`` tuple of strings: ``vllm_compile_cache.py`` is written
with pprint and read with ``ast.literal_eval``.
"""
from __future__ import annotations

import collections
import contextlib
import dataclasses
import logging
import threading
from collections.abc import Callable, Iterator
from typing import Any

import torch.fx as fx
from vllm.compilation.compiler_interface import InductorStandaloneAdaptor
from vllm.compilation.passes.inductor_pass import CallableInductorPass
from vllm.config import VllmConfig
from vllm.config.utils import Range

from . import audit
from .options import TriInductorOptions
from .vllm_config import BACKEND_NAME, HASH_KEY, OPTIONS_KEY, read_options

log = logging.getLogger("tri_inductor.vllm")

POST_PASS_KEY = "post_grad_custom_post_pass"


def build_pattern_pass(families: tuple[str, ...], strict: bool):
    """Our pattern pass. Its patterns are registered when it first runs (once per process), so a
    warm start whose pieces all come from the caches never pays for it; a family that fails to
    register is left out with an error in the log (strict: raised)."""
    from .passes import TriInductorPatternPass

    return TriInductorPatternPass(families, strict)


class TriInductorVllmPass(CallableInductorPass):
    """Our ``TriInductorPatternPass`` as a vLLM ``InductorPass`` (what ``PostGradPassManager.add``
    accepts); its uuid (our package hash + families) enters the pass manager's uuid, hence
    Inductor's FX-graph cache key."""

    def __init__(self, families: tuple[str, ...], strict: bool = False) -> None:
        self.pattern_pass = build_pattern_pass(families, strict)
        super().__init__(self.pattern_pass, uuid=self.pattern_pass.uuid().hex())


@dataclasses.dataclass
class RunAudit:
    """Everything the auditor saw in this process (all pieces, all compile ranges)."""

    graphs: collections.Counter[str] = dataclasses.field(default_factory=collections.Counter)
    kernels: collections.Counter[str] = dataclasses.field(default_factory=collections.Counter)
    pattern_hits: collections.Counter[str] = dataclasses.field(default_factory=collections.Counter)
    non_triton: collections.Counter[str] = dataclasses.field(default_factory=collections.Counter)
    rank: str | None = None
    """This process's place under tensor/pipeline parallelism ("tp 1/2"); None on one GPU."""

    def add(self, reports: list[audit.GraphReport]) -> None:
        if self.rank is None:
            self.rank = rank_label()
        for r in reports:
            self.graphs[r.origin] += 1
            self.kernels.update(k.kind for k in r.kernels)
            self.pattern_hits.update(r.pattern_hits)
            self.non_triton.update(f"{v.op or '?'} ({v.name})" for v in r.violations)

    def summary(self) -> str:
        graphs = ", ".join(f"{n} {o}" for o, n in sorted(self.graphs.items())) or "none"
        kernels = ", ".join(f"{k} {n}" for k, n in sorted(self.kernels.items())) or "none"
        hits = ", ".join(f"{k} {n}" for k, n in sorted(self.pattern_hits.items())) or "none"
        hooked = self.kernels.get("hooked_op", 0)
        bad = ("; NON-TRITON: " + ", ".join(f"{k} x{n}" for k, n in self.non_triton.most_common())
               if self.non_triton else "; every kernel launch site is Triton" + (
                   f" ({hooked} hooked_op: opaque ops run eagerly on our Triton kernels, checked at run time "
                   "by the census)" if hooked else ""))
        rank = f" ({self.rank})" if self.rank else ""
        return (f"[tri_inductor] audit summary{rank}: graphs {graphs}; kernel launch sites by class: {kernels}; "
                f"pattern hits: {hits}{bad}")

    def to_dict(self) -> dict[str, Any]:
        return {"rank": self.rank, "graphs": dict(self.graphs), "kernels": dict(self.kernels),
                "pattern_hits": dict(self.pattern_hits), "non_triton": dict(self.non_triton)}


def rank_label() -> str | None:
    """"tp R/N" (and "pp R/N") of this worker once vLLM's parallel groups exist and one of them
    spans more than one GPU; None otherwise.  Each TP rank compiles and audits its own pieces (its
    slices of the weights), so its summary names it."""
    try:
        from vllm.distributed import parallel_state as ps

        if not ps.model_parallel_is_initialized():
            return None
        parts = [f"{name} {g.rank_in_group}/{g.world_size}"
                 for name, g in (("tp", ps.get_tp_group()), ("pp", ps.get_pp_group())) if g.world_size > 1]
    except Exception:  # noqa: BLE001  (another vLLM's layout: the audit goes on without a rank)
        return None
    return ", ".join(parts) or None


_RUN = RunAudit()
_RUN_LOCK = threading.Lock()


def run_audit() -> RunAudit:
    """This process's aggregate audit (the census script reads it)."""
    return _RUN


def log_run_summary() -> None:
    log.info(_RUN.summary())


def split_compiler_config(compiler_config: dict[str, Any] | None) -> tuple[TriInductorOptions, dict[str, Any]]:
    """(our options, the rest): our keys must never reach Inductor's ``config.patch``."""
    cfg = dict(compiler_config or {})
    options = read_options(cfg)
    cfg.pop(OPTIONS_KEY, None)
    cfg.pop(HASH_KEY, None)
    return options, cfg


def inductor_config(compiler_config: dict[str, Any] | None) -> tuple[TriInductorOptions, dict[str, Any]]:
    """The Inductor config one piece is compiled with: Triton-only defaults, then vLLM's and the
    user's settings over them, then our pattern pass added to vLLM's pass manager."""
    from .backend import _compose_post_pass
    from .settings import apply_overrides, triton_only_inductor_config

    options, given = split_compiler_config(compiler_config)
    cfg = apply_overrides(triton_only_inductor_config(options), given, options.strict,
                          what="inductor_compile_config")
    if options.codegen_only:
        # No GPU to run benchmarks on (CI under codegen_only.fake_sm90): standalone_compile turns
        # on compile-time autotuning and vLLM on combo-kernel benchmarking; both launch kernels.
        cfg["triton.autotune_at_compile_time"] = False
        cfg["benchmark_combo_kernel"] = False

    manager = cfg.get(POST_PASS_KEY)
    from vllm.compilation.passes.pass_manager import PostGradPassManager

    if isinstance(manager, PostGradPassManager):
        # vLLM's manager is shared by every piece and range of this model: add ours once.  It runs
        # our pass after vLLM's configured passes and before IR lowering + fix_functionalization.
        if not any(isinstance(p, TriInductorVllmPass) for p in manager.passes):
            manager.add(TriInductorVllmPass(options.families, options.strict))
    else:
        # Outside vLLM's backend (tests, direct use): ours alone, or after the given pass.
        cfg[POST_PASS_KEY] = _compose_post_pass(manager, build_pattern_pass(options.families, options.strict))
    return options, cfg


@contextlib.contextmanager
def _audited(options: TriInductorOptions, what: str) -> Iterator[list[audit.GraphReport]]:
    """Collect the reports of the graphs compiled/loaded inside; record and enforce them."""
    from .passes import take_last_stats

    take_last_stats()
    with audit.collect_reports() as reports:
        yield reports
    stats = take_last_stats() or {}
    label = rank_label()
    for r in reports:
        hits: collections.Counter[str] = collections.Counter(
            k.family for k in r.kernels if k.kind == "our_triton" and k.family)
        r.pattern_hits = dict(hits)
        r.near_misses = list(stats.get("near_misses", []))
        r.graph = f"{label}: {what}:{r.graph}" if label else f"{what}:{r.graph}"
    with _RUN_LOCK:
        _RUN.add(reports)
    if options.audits:
        audit.enforce(reports, strict=options.strict, verbose=options.verbose)


class TriInductorCompiler(InductorStandaloneAdaptor):
    """vLLM ``CompilerInterface`` for ``compilation_config.backend == "tri_inductor"``."""

    name = BACKEND_NAME

    def __init__(self, save_format: str | None = None, **kwargs: Any) -> None:
        # vLLM builds custom compilers with no arguments; take the save format from the config
        # being compiled (the plugin's make_compiler passes it, and vLLM >= 0.33's keyword-only
        # use_aot_compile, which InductorStandaloneAdaptor then requires).
        if save_format is None:
            from vllm.config import get_current_vllm_config_or_none

            save_format = "binary"
            cfg = get_current_vllm_config_or_none()
            if cfg is not None:
                save_format = cfg.compilation_config.compile_cache_save_format
        super().__init__(save_format, **_adaptor_kwargs(kwargs))
        self.options = TriInductorOptions()

    def _our_factor(self, vllm_config: VllmConfig) -> str:
        from .cache import compile_hash

        self.options = read_options(vllm_config.compilation_config.inductor_compile_config)
        # Our sources + card + torch/CUDA/triton versions + our options (tri_inductor.cache).
        return compile_hash(repr(self.options))

    if hasattr(InductorStandaloneAdaptor, "compile_factors"):
        # vLLM >= 0.34: a subclass that still defines compute_hash is refused at class creation.
        def compile_factors(self, vllm_config: VllmConfig) -> dict[str, Any]:
            """vLLM's Inductor factors + ours (our package hash + options: the compile-cache dir key)."""
            factors = dict(super().compile_factors(vllm_config))
            factors[BACKEND_NAME] = self._our_factor(vllm_config)
            return factors
    else:
        def compute_hash(self, vllm_config: VllmConfig) -> str:
            """vLLM's Inductor factors + our package hash + our options (the compile-cache dir key)."""
            from vllm.utils.hashing import safe_hash

            factors = [super().compute_hash(vllm_config), self._our_factor(vllm_config)]
            return safe_hash(str(factors).encode(), usedforsecurity=False).hexdigest()[:10]

    def initialize_cache(self, cache_dir: str, disable_cache: bool = False, prefix: str = "") -> None:
        super().initialize_cache(cache_dir, disable_cache, prefix)
        if not disable_cache:
            from .cache import claim_default_dirs

            claim_default_dirs()  # Triton's cubins (vLLM leaves TRITON_CACHE_DIR unset here) under ours

    def compile(
        self,
        graph: fx.GraphModule,
        example_inputs: list[Any],
        compiler_config: dict[str, Any],
        compile_range: Range,
        key: str | None = None,
    ) -> tuple[Callable[..., Any] | None, Any | None]:
        options, cfg = inductor_config(compiler_config)
        self.options = options
        what = f"{key or 'piece'}[{compile_range}]"
        # vLLM's StopCompiling (a BaseException: "identical artifact already compiled") passes
        # through untouched; the audited copy is the one compiled first.
        from .patterns.gemm.ops import token_range

        with _audited(options, what), token_range(compile_range.start, compile_range.end):
            compiled, handle = super().compile(graph, example_inputs, cfg, compile_range, key)
        return compiled, _literal(handle)

    def load(
        self,
        handle: Any,
        graph: fx.GraphModule,
        example_inputs: list[Any],
        graph_index: int,
        compile_range: Range,
    ) -> Callable[..., Any]:
        _trigger_lazy_init_once()
        with _audited(self.options, f"load:{graph_index}[{compile_range}]"):
            return super().load(handle, graph, example_inputs, graph_index, compile_range)


def compiler_key(compiler: InductorStandaloneAdaptor, vllm_config: VllmConfig) -> str:
    """The compiler's part of vLLM's compile-cache key, on any vLLM (0.34: ``compile_factors``)."""
    if hasattr(compiler, "compile_factors"):
        return repr(sorted(compiler.compile_factors(vllm_config).items()))
    return compiler.compute_hash(vllm_config)


def _adaptor_kwargs(given: dict[str, Any]) -> dict[str, Any]:
    """The keyword arguments this vLLM's ``InductorStandaloneAdaptor.__init__`` takes: 0.33+ requires
    ``use_aot_compile`` (vLLM's default, ``envs.VLLM_USE_AOT_COMPILE``, when the caller gave none)."""
    from . import hooks

    init = InductorStandaloneAdaptor.__init__
    if not hooks.accepts_keyword(init, "use_aot_compile"):
        return {k: v for k, v in given.items() if k != "use_aot_compile"}
    out = dict(given)
    if out.get("use_aot_compile") is None:
        import vllm.envs as envs

        out["use_aot_compile"] = bool(getattr(envs, "VLLM_USE_AOT_COMPILE", False))
    return out


def audit_warm_loads(options: TriInductorOptions) -> None:
    """Audit the output code a process loads outside our compile()/load() (vLLM >= 0.27 warm
    starts from the mega AOT artifact): recorded in the run audit, logged, enforced as usual."""
    from .audit.collect import audit_loads_outside_collectors

    def sink(report: audit.GraphReport) -> None:
        report.graph = f"warm:{report.graph}"
        with _RUN_LOCK:
            _RUN.add([report])
        if options.audit or options.strict:
            audit.enforce([report], strict=options.strict, verbose=options.verbose)

    audit_loads_outside_collectors(sink)


def _literal(handle: Any) -> Any:
    """Handles go through pprint + ast.literal_eval: only str/int/tuple/None survive."""
    if handle is None or isinstance(handle, str):
        return handle
    if isinstance(handle, (tuple, list)):
        return tuple(_literal(h) for h in handle)
    if isinstance(handle, (int, float, bool)):
        return handle
    raise TypeError(f"tri_inductor: compile handle {handle!r} is not a plain literal")


_lazy_init_done = False


def _trigger_lazy_init_once() -> None:
    """vLLM pre-triggers Inductor's one-time CUDA-syncing lazy init at warm-up only for backend
    'inductor' (gpu_worker.py); on a full cache hit nothing else would, and the first later
    compile would sync inside the JIT monitor's window.  Best effort."""
    global _lazy_init_done
    if _lazy_init_done:
        return
    _lazy_init_done = True
    import torch

    if torch.cuda.is_available():
        from vllm.compilation.compiler_interface import trigger_inductor_lazy_init

        trigger_inductor_lazy_init(torch.device("cuda", torch.cuda.current_device()))
