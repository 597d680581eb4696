"""vLLM general plugin: makes ``compilation_config={"backend": "tri_inductor"}`` work.

Entry point ``vllm.general_plugins: tri_inductor = tri_inductor.vllm_plugin:register``.  vLLM
calls ``register()`` in every process (``EngineArgs.__post_init__``, CLI parsing, ``EngineCore``,
``WorkerWrapperBase.init_worker``), so it must be idempotent and cheap.  It imports nothing
heavy: each patch is applied when vLLM imports the module it patches (or at once, if it already
has).  Every patch is a no-op unless the config's backend is ``tri_inductor``.

Hooks (vLLM 0.26.0):
* ``vllm.config.vllm.VllmConfig.__post_init__`` -- before it: our defaults and conflict
  checks (``vllm_config.adjust_vllm_config``); they must precede its custom_ops line ("all"
  for any backend but "inductor") and ``kernel_config.set_platform_defaults``.  After it:
  ``check_final_config`` for what vLLM turned on itself.
* ``vllm.config.compilation.CompilationConfig.__post_init__`` -- lets an explicit
  ``mode=VLLM_COMPILE`` pass its "Invalid backend for piecewise compilation" check.
* ``vllm.compilation.backends.make_compiler`` -- a module global read by
  ``CompilerManager.__init__``: returns our ``TriInductorCompiler`` for our backend (vLLM would
  otherwise resolve ``current_platform.get_compile_backend()``, "inductor" on CUDA, and crash).
* ``vllm.compilation.backends.CompilerManager.compile`` -- after the last piece of a compile
  range, log the audit summary of the run so far.
* ``vllm.model_executor.layers.logits_processor.LogitsProcessor`` -- lm_head on our Triton GEMM.
* the MoE layer's CUDA ops (``vllm._custom_ops.topk_softmax`` ... ``apply_moe_activation``): see
  the table in ``vllm_moe.py``; active once a tri_inductor VllmConfig is built in the process.
"""
from __future__ import annotations

import functools
import importlib.abc
import importlib.machinery
import logging
import sys
import threading
from collections.abc import Callable
from types import ModuleType
from typing import Any

log = logging.getLogger("tri_inductor.vllm")

_lock = threading.Lock()
_registered = False
_logged: set[str] = set()


def register() -> None:
    """Install the hooks (idempotent; a no-op unless vLLM is importing us)."""
    global _registered
    if _registered:
        return
    if "vllm" not in sys.modules:  # not called by vLLM: import nothing, patch nothing
        return
    with _lock:
        if _registered:
            return
        _route_logs_through_vllm()
        _when_imported("vllm.config.vllm", _patch_vllm_config)
        _when_imported("vllm.config.compilation", _patch_compilation_config)
        _when_imported("vllm.compilation.backends", _patch_backends)
        _when_imported("vllm.model_executor.layers.logits_processor", _patch_logits)
        from .vllm_moe import HOOKS

        for name, hook in HOOKS.items():
            _when_imported(name, hook)
        _registered = True


def _route_logs_through_vllm() -> None:
    """Our INFO lines (changes made, per-graph audit, run summary) belong in vLLM's log: vLLM
    configures only the "vllm" logger, so borrow its handlers unless the user configured ours."""
    ours = logging.getLogger("tri_inductor")
    if ours.handlers:
        return
    vllm_logger = logging.getLogger("vllm")
    if not vllm_logger.handlers:
        return
    for handler in vllm_logger.handlers:
        ours.addHandler(handler)
    ours.setLevel(vllm_logger.level or logging.INFO)
    ours.propagate = False


# ---------------------------------------------------------------- lazy patching of vLLM modules


class _PostImportHook(importlib.abc.MetaPathFinder):
    """Runs callbacks right after a module's code has executed (first import only)."""

    def __init__(self) -> None:
        self.pending: dict[str, list[Callable[[ModuleType], None]]] = {}

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> importlib.machinery.ModuleSpec | None:
        if fullname not in self.pending:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                break
        else:
            return None
        loader = spec.loader
        if loader is None or not hasattr(loader, "exec_module"):
            return spec
        real_exec = loader.exec_module
        pending = self.pending

        def exec_module(module: ModuleType) -> None:
            real_exec(module)
            # Popped here, not in find_spec: importlib.util.find_spec() probes without importing.
            for cb in pending.pop(fullname, []):
                cb(module)

        loader.exec_module = exec_module  # type: ignore[method-assign]  (per-module loader object)
        return spec


_hook = _PostImportHook()


def _when_imported(name: str, callback: Callable[[ModuleType], None]) -> None:
    module = sys.modules.get(name)
    if module is not None:
        callback(module)
        return
    _hook.pending.setdefault(name, []).append(callback)
    if _hook not in sys.meta_path:
        sys.meta_path.insert(0, _hook)


def _once(key: str) -> bool:
    if key in _logged:
        return False
    _logged.add(key)
    return True


# ---------------------------------------------------------------- VllmConfig


def _patch_vllm_config(module: ModuleType) -> None:
    cls = module.VllmConfig
    real = cls.__post_init__
    if getattr(real, "_tri_inductor", False):
        return

    @functools.wraps(real)
    def __post_init__(self) -> None:
        from .vllm_config import is_ours

        if not is_ours(self):
            return real(self)
        from .cache import compile_hash
        from .vllm_config import (adjust_vllm_config, check_final_config, split_range_at_cudagraph_size,
                                  trim_ir_priorities)
        from .vllm_moe import activate

        # Sources + card (NVML: no CUDA context before vLLM forks) + versions: keys the AOT cache too.
        adj = adjust_vllm_config(self, package_hash=compile_hash(avoid_cuda_init=True))  # strict: raises here
        for c in adj.changes:
            if _once("change:" + c.setting):
                log.info("tri_inductor: %s", c.message())
        for c in adj.conflicts:
            if _once("conflict:" + c.message()):
                log.warning("tri_inductor: %s", c.message())
        out = real(self)
        activate()  # this process serves a tri_inductor model: MoE ops on our kernels (vllm_moe.py)
        trim_ir_priorities(self)
        split = split_range_at_cudagraph_size(self)
        if split is not None:
            split.apply()
            if _once("change:" + split.setting):
                log.info("tri_inductor: %s", split.message())
        late = check_final_config(self)
        if late and adj.options.strict:
            from .vllm_config import TriInductorConfigError

            raise TriInductorConfigError("tri_inductor strict mode: vLLM changed settings that defeat "
                                         "Triton-only execution:\n  - " + "\n  - ".join(c.message() for c in late))
        for c in late:
            if _once("late:" + c.message()):
                log.warning("tri_inductor: %s", c.message())
        return out

    __post_init__._tri_inductor = True  # type: ignore[attr-defined]
    cls.__post_init__ = __post_init__


def _patch_compilation_config(module: ModuleType) -> None:
    cls = module.CompilationConfig
    real = cls.__post_init__
    if getattr(real, "_tri_inductor", False):
        return

    @functools.wraps(real)
    def __post_init__(self) -> None:
        # vLLM rejects any backend but ""/eager/inductor when mode == VLLM_COMPILE is explicit;
        # ours is a VLLM_COMPILE backend.  Hide the mode from that one check only.
        if self.backend == "tri_inductor" and self.mode is not None and int(self.mode) == 3:
            mode, self.mode = self.mode, None
            try:
                return real(self)
            finally:
                self.mode = mode
        return real(self)

    __post_init__._tri_inductor = True  # type: ignore[attr-defined]
    cls.__post_init__ = __post_init__


# ---------------------------------------------------------------- compiler


def _patch_backends(module: ModuleType) -> None:
    real_make = module.make_compiler
    if getattr(real_make, "_tri_inductor", False):
        return

    @functools.wraps(real_make)
    def make_compiler(compilation_config):  # type: ignore[no-untyped-def]
        if compilation_config.backend != "tri_inductor":
            return real_make(compilation_config)
        from .vllm_compiler import TriInductorCompiler

        compiler = TriInductorCompiler()
        compiler.save_format = compilation_config.compile_cache_save_format
        if _once("compiler"):
            log.info("tri_inductor: compiling vLLM's pieces with TriInductorCompiler "
                     "(Triton-only Inductor + tri_inductor patterns + audit)")
        return compiler

    make_compiler._tri_inductor = True  # type: ignore[attr-defined]
    module.make_compiler = make_compiler

    manager = module.CompilerManager
    real_compile = manager.compile

    @functools.wraps(real_compile)
    def compile(self, *args: Any, **kwargs: Any) -> Any:  # noqa: A001
        out = real_compile(self, *args, **kwargs)
        if getattr(self.compiler, "name", None) == "tri_inductor":
            graph_index = kwargs.get("graph_index", args[5] if len(args) > 5 else 0)
            num_graphs = kwargs.get("num_graphs", args[6] if len(args) > 6 else 1)
            if graph_index == num_graphs - 1:
                from .vllm_compiler import log_run_summary

                log_run_summary()
        return out

    compile._tri_inductor = True  # type: ignore[attr-defined]
    manager.compile = compile


def _patch_logits(module: ModuleType) -> None:
    from . import vllm_logits

    vllm_logits.install()
