"""vLLM general plugin: makes ``compilation_config={"backend": "tri_inductor"}`` work.

Entry point ``vllm.general_plugins: tri_inductor = tri_inductor.vllm_plugin:register``.  vLLM
calls ``register()`` in every process (``EngineArgs.__post_init__``, CLI parsing, ``EngineCore``,
``WorkerWrapperBase.init_worker``), so it must be idempotent and cheap.  It imports nothing
heavy: each hook is installed when vLLM imports the module it patches (or at once, if it already
has).  Every hook passes vLLM's arguments through untouched unless the config's backend is
``tri_inductor``: vLLM's own backends must never notice us.

The hooks (targets, tested versions, why) are listed and installed in :mod:`tri_inductor.hooks`;
this module holds what they do:

* ``VllmConfig.__post_init__`` -- before it: our defaults and conflict checks
  (``vllm_config.adjust_vllm_config``); they must precede its custom_ops line ("all" for any
  backend but "inductor") and ``kernel_config.set_platform_defaults``.  After it:
  ``check_final_config`` for what vLLM turned on itself.
* ``CompilationConfig.__post_init__`` -- lets an explicit ``mode=VLLM_COMPILE`` pass its
  "Invalid backend for piecewise compilation" check.
* ``make_compiler`` -- a module global read by ``CompilerManager.__init__``: returns our
  ``TriInductorCompiler`` for our backend (vLLM would otherwise resolve
  ``current_platform.get_compile_backend()``, "inductor" on CUDA, and crash).  Whatever else vLLM
  passes (0.33+: ``use_aot_compile=``) is passed on.
* ``CompilerManager.compile`` -- after the last piece of a compile range, log the audit summary.
* ``LogitsProcessor`` (``vllm_logits``) -- lm_head on our Triton GEMM; a model of ours being built
  also starts our torch hooks and the warm-start audit (vLLM >= 0.27 loads warm starts from its
  AOT artifact without calling our ``load()``).
* ``UnquantizedLinearMethod.apply``, ``GateLinear.forward``, ``SiluAndMul.forward_native``
  (``vllm_eager_ops``) -- the linears and SiLU-and-mul vLLM runs eagerly inside opaque ops (the
  MoE router gate, shared experts) on our GEMM and activation kernels.
* ``InputProcessor._validate_model_input`` (``vllm_input_check``) -- prompt token ids outside the
  vocabulary are refused (HTTP 400) before they reach the embedding kernel, tokenizer or not.

At registration the torch/triton/vLLM versions are checked against ``hooks.TESTED``: an
untested one gets one warning naming the tested range (strict mode: our backend refuses to run;
vLLM's own backends are untouched either way).
"""
from __future__ import annotations

import atexit
import logging
import sys
import threading
from collections.abc import Callable
from typing import Any

log = logging.getLogger("tri_inductor.vllm")

_lock = threading.Lock()
_registered = False
_logged: set[str] = set()
# Versions this process runs under that we have not tested (set by check_versions).
untested: list[str] = []


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
        from . import hooks

        _route_logs_through_vllm()
        check_versions()
        hooks.install_vllm_hooks(sys.modules[__name__])
        from .vllm_mla import HOOKS as MLA_HOOKS  # vLLM's MLA layer pieces -> our Triton kernels
        from .vllm_eager_ops import HOOKS as EAGER_HOOKS  # eager linears / SiluAndMul -> our kernels
        from .vllm_moe import HOOKS as MOE_HOOKS  # vLLM's MoE CUDA ops -> our Triton kernels
        from .vllm_input_check import HOOKS as INPUT_HOOKS  # prompt ids outside the vocabulary: a 400
        from .vllm_compile_ahead import HOOKS as AHEAD_HOOKS  # linear layers' tuning compiled ahead

        for table in (MOE_HOOKS, MLA_HOOKS, EAGER_HOOKS, INPUT_HOOKS, AHEAD_HOOKS):
            for name, hook in table.items():
                hooks.when_imported(name, hook)
        _registered = True


def check_versions() -> list[str]:
    """Warn once if torch/triton/vLLM are outside the tested range (strict mode refuses our
    backend later, in ``VllmConfig.__post_init__``; vLLM's own backends never see an error)."""
    from . import hooks

    untested[:] = hooks.untested_versions()
    if untested and _once("versions"):
        log.warning("tri_inductor: %s", hooks.version_message(untested))
    return list(untested)


class ToVllmLog(logging.Handler):
    """Forwards our records to vLLM's "vllm" logger.  vLLM >= 0.32 configures its logging lazily,
    after plugins load: records logged before it has handlers are held (at most ``limit``) and
    sent first once it has; any still held at exit go to stderr, so none is lost."""

    limit = 500

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.held: list[logging.LogRecord] = []
        atexit.register(self.flush_held)

    def emit(self, record: logging.LogRecord) -> None:
        target = logging.getLogger("vllm")
        if not target.handlers:
            if len(self.held) < self.limit:
                self.held.append(record)
            return
        held, self.held = self.held, []
        for r in held:
            target.handle(r)
        target.handle(record)

    def flush_held(self) -> None:
        held, self.held = self.held, []
        target = logging.getLogger("vllm")
        for r in held:
            if target.handlers:
                target.handle(r)
            elif logging.lastResort is not None and r.levelno >= logging.INFO:
                logging.lastResort.handle(r)


def _route_logs_through_vllm() -> None:
    """Our INFO lines (changes made, per-graph audit, run summary) belong in vLLM's log: vLLM
    configures only the "vllm" logger, so forward ours there unless the user configured ours."""
    ours = logging.getLogger("tri_inductor")
    if ours.handlers:
        return
    ours.addHandler(ToVllmLog())
    if ours.level == logging.NOTSET:
        ours.setLevel(logging.INFO)
    ours.propagate = False


def _once(key: str) -> bool:
    if key in _logged:
        return False
    _logged.add(key)
    return True


# ---------------------------------------------------------------- logits processor


def logits_processor(module: Any) -> None:
    """When vLLM imports its logits processor: the lm_head hooks (``vllm_logits``: decide per
    processor whether its model is ours, run its GEMM on our kernel)."""
    from . import hooks, vllm_logits

    hooks.wrap_once(module.LogitsProcessor, "__init__", vllm_logits.init_hook)
    hooks.wrap_once(module.LogitsProcessor, "_apply_head", vllm_logits.apply_head_hook)


# ---------------------------------------------------------------- attention backend registry


def attention_registry(module: Any) -> None:
    """When vLLM imports its attention backend registry: our backend into the CUSTOM slot
    (``vllm_attention_select``); selected only for backend ``tri_inductor``."""
    from .vllm_attention_select import register_slot

    register_slot(module)


# ---------------------------------------------------------------- VllmConfig


def vllm_config_post_init(real: Callable[..., Any]) -> Callable[..., Any]:
    """Wrapper factory for ``VllmConfig.__post_init__`` (installed by ``hooks``)."""

    def __post_init__(self, *args: Any, **kwargs: Any) -> Any:
        from .vllm_config import is_ours

        if not is_ours(self):
            return real(self, *args, **kwargs)
        from .cache import compile_hash
        from .envs import EnvError
        from .vllm_mla import activate as activate_mla
        from .vllm_moe import activate
        from .vllm_config import (TriInductorConfigError, adjust_vllm_config, check_final_config,
                                  read_options, split_range_at_cudagraph_size, trim_ir_priorities)

        if untested and read_options(self.compilation_config.inductor_compile_config).strict:
            from . import hooks

            raise TriInductorConfigError("tri_inductor strict mode: " + hooks.version_message(untested))
        # Sources + card (NVML: no CUDA context before vLLM forks) + versions: keys the AOT cache too.
        try:
            package_hash = compile_hash(avoid_cuda_init=True)
        except EnvError as e:  # not a ValueError out of __post_init__: pydantic would rewrap it
            raise TriInductorConfigError(f"tri_inductor: {e}") from None
        adj = adjust_vllm_config(self, package_hash=package_hash)  # strict: raises here
        for c in adj.changes:
            if _once("change:" + c.setting):
                log.info("tri_inductor: %s", c.message())
        for c in adj.conflicts:
            if _once("conflict:" + c.message()):
                log.warning("tri_inductor: %s", c.message())
        out = real(self, *args, **kwargs)
        activate()  # this process serves a tri_inductor model: MoE ops on our kernels (vllm_moe.py)
        activate_mla()  # and MLA layers (vllm_mla.py)
        trim_ir_priorities(self)
        split = split_range_at_cudagraph_size(self)
        if split is not None:
            split.apply()
            if _once("change:" + split.setting):
                log.info("tri_inductor: %s", split.message())
        late = check_final_config(self)
        if late and adj.options.strict:
            raise TriInductorConfigError("tri_inductor strict mode: vLLM changed settings that defeat "
                                         "Triton-only execution:\n  - " + "\n  - ".join(c.message() for c in late))
        for c in late:
            if _once("late:" + c.message()):
                log.warning("tri_inductor: %s", c.message())
        return out

    return __post_init__


def compilation_config_post_init(real: Callable[..., Any]) -> Callable[..., Any]:
    """Wrapper factory for ``CompilationConfig.__post_init__``."""

    def __post_init__(self, *args: Any, **kwargs: Any) -> Any:
        # vLLM rejects any backend but ""/eager/inductor when mode == VLLM_COMPILE is explicit;
        # ours is a VLLM_COMPILE backend.  Hide the mode from that one check only.
        if self.backend == "tri_inductor" and self.mode is not None and int(self.mode) == 3:
            mode, self.mode = self.mode, None
            try:
                return real(self, *args, **kwargs)
            finally:
                self.mode = mode
        return real(self, *args, **kwargs)

    return __post_init__


# ---------------------------------------------------------------- compiler


def make_compiler_hook(real_make: Callable[..., Any]) -> Callable[..., Any]:
    """Wrapper factory for ``vllm.compilation.backends.make_compiler``: takes whatever vLLM
    passes (0.26: ``(compilation_config)``; 0.33+: ``use_aot_compile=`` too) and passes it on."""

    def make_compiler(*args: Any, **kwargs: Any) -> Any:
        from . import hooks

        try:
            bound = hooks.arguments(real_make, *args, **kwargs)
        except TypeError:  # not a call vLLM's own make_compiler accepts: let it say so
            return real_make(*args, **kwargs)
        compilation_config = bound.get("compilation_config", args[0] if args else None)
        if getattr(compilation_config, "backend", None) != "tri_inductor":
            return real_make(*args, **kwargs)
        from .vllm_compiler import TriInductorCompiler

        extra = {"use_aot_compile": bound["use_aot_compile"]} if "use_aot_compile" in bound else {}
        compiler = TriInductorCompiler(save_format=compilation_config.compile_cache_save_format, **extra)
        if _once("compiler"):
            log.info("tri_inductor: compiling vLLM's pieces with TriInductorCompiler "
                     "(Triton-only Inductor + tri_inductor patterns + audit)")
        return compiler

    return make_compiler


def compiler_manager_compile(real_compile: Callable[..., Any]) -> Callable[..., Any]:
    """Wrapper factory for ``CompilerManager.compile``: the audit summary after a range's last piece."""

    def compile(self, *args: Any, **kwargs: Any) -> Any:  # noqa: A001
        out = real_compile(self, *args, **kwargs)
        if getattr(getattr(self, "compiler", None), "name", None) == "tri_inductor":
            from . import hooks

            bound = hooks.arguments(real_compile, self, *args, **kwargs)  # vLLM's call succeeded: binds
            if bound.get("graph_index", 0) == bound.get("num_graphs", 1) - 1:
                from .vllm_compiler import log_run_summary

                log_run_summary()
        return out

    return compile
