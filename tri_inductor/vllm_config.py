"""What ``{"backend": "tri_inductor"}`` changes in a vLLM ``VllmConfig``, as pure logic.

vLLM 0.26 decides several Triton-relevant defaults by comparing the backend name with
``"inductor"`` (custom_ops, IR-op priority); with any other name it switches its CUDA kernels
back on.  :func:`adjust_vllm_config` restores the Inductor defaults for our backend and picks
a Triton attention backend; :func:`check_final_config` looks at what vLLM itself did
afterwards.  Nothing here patches vLLM: :mod:`tri_inductor.vllm_plugin` decides *when* these
run (around ``VllmConfig.__post_init__``).

Policy (documented in docs/vllm.md):
* a setting the user left unset is set by us (a :class:`Change`, logged at INFO);
* a setting the user set explicitly that defeats Triton-only is kept, with a warning naming
  the setting, what it costs and the fix (a :class:`Conflict`);
* in strict mode (``inductor_compile_config={"tri_inductor": {"strict": true}}`` or
  ``TRI_INDUCTOR_STRICT=1``) any conflict raises :class:`TriInductorConfigError` instead.
"""
from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping, MutableMapping
from typing import TYPE_CHECKING, Any

from .options import OptionsError, TriInductorOptions

if TYPE_CHECKING:  # vLLM is only imported by the caller (the plugin), never by this module
    from vllm.config import VllmConfig

BACKEND_NAME = "tri_inductor"
OPTIONS_KEY = "tri_inductor"
"""``inductor_compile_config[OPTIONS_KEY]``: our options (a dict); stripped before Inductor."""
HASH_KEY = "tri_inductor_package_hash"
"""``inductor_compile_config[HASH_KEY]``: our package hash.  It puts our kernels' version in
``CompilationConfig.compute_hash()``, which keys vLLM's cache dir *and* the AOT model cache
(the latter ignores ``CompilerInterface.compute_hash``).  Stripped before Inductor."""
STRICT_ENV = "TRI_INDUCTOR_STRICT"
SAMPLER_ENV = "VLLM_USE_FLASHINFER_SAMPLER"

# vLLM's attention backends whose kernels (prefill, decode, KV-cache write) are Triton.
TRITON_ATTENTION_BACKENDS = frozenset({"TRITON_ATTN", "TRITON_ATTN_DIFFKV", "TRITON_MLA"})
# Providers of an IR op whose kernels are Triton: "native" = the PyTorch form Inductor compiles,
# "triton" = vLLM's own Triton kernel (vLLM >= 0.32's default for gelu_and_mul_sparse on CUDA).
TRITON_IR_PROVIDERS = frozenset({"native", "triton"})
NATIVE_JIT_ENV = "TORCH_DISABLE_NATIVE_JIT"
GDN_PREFILL_KEY = "gdn_prefill_backend"  # additional_config key (--gdn-prefill-backend)
GDN_DECODE_ENV = "VLLM_GDN_DECODE_KERNEL"  # vLLM >= 0.3x: "cuda" (default) or "triton"
SYMM_MEM_ALLREDUCE_ENV = "VLLM_ALLREDUCE_USE_SYMM_MEM"


def is_triton_attention(backend: str | None) -> bool:
    """vLLM's Triton attention backends, and ours (vLLM's CUSTOM slot holding our backend)."""
    from .vllm_attention_select import is_ours as _ours_attention

    return backend in TRITON_ATTENTION_BACKENDS or _ours_attention(backend)


def torch_has_native_kernels() -> bool:
    """torch >= 2.13 may register CuTeDSL kernels for eager ops (``torch._native``)."""
    from .hooks import torch_at_least

    return torch_at_least(2, 13)


def ir_ops(priority: Any) -> tuple[str, ...]:
    """The IR ops this vLLM's ``IrOpPriorityConfig`` lists (one list field per op; read from the
    config, not hard-coded: 0.26 has rms_norm and fused_add_rms_norm, 0.32 adds gelu_and_mul_sparse)."""
    if dataclasses.is_dataclass(priority):
        names = [f.name for f in dataclasses.fields(priority)]
    else:
        names = list(getattr(type(priority), "model_fields", None) or vars(priority))
    return tuple(n for n in names if not n.startswith("_") and isinstance(getattr(priority, n, None), list))


class TriInductorConfigError(RuntimeError):
    """Strict mode: a vLLM setting defeats the Triton-only guarantee (or our options are wrong).

    Not a ValueError on purpose: pydantic (VllmConfig is a pydantic dataclass) would rewrap a
    ValueError raised in ``__post_init__`` as a ValidationError."""


@dataclasses.dataclass(frozen=True)
class Change:
    """A default we set (the user left it unset)."""

    setting: str
    old: Any
    new: Any
    why: str
    apply: Callable[[], None] = dataclasses.field(repr=False, compare=False, default=lambda: None)

    def message(self) -> str:
        return f"{self.setting}: {self.old!r} -> {self.new!r} ({self.why})"


@dataclasses.dataclass(frozen=True)
class Conflict:
    """An explicit setting (or one vLLM made itself) that leaves non-Triton kernels."""

    setting: str
    value: Any
    consequence: str
    fix: str

    def message(self) -> str:
        return f"{self.setting}={self.value!r} conflicts with backend 'tri_inductor': {self.consequence}. Fix: {self.fix}"


@dataclasses.dataclass
class Adjustment:
    options: TriInductorOptions
    changes: list[Change] = dataclasses.field(default_factory=list)
    conflicts: list[Conflict] = dataclasses.field(default_factory=list)

    def messages(self) -> list[str]:
        return [c.message() for c in self.changes] + [c.message() for c in self.conflicts]


MEGA_AOT_ENV = "VLLM_USE_MEGA_AOT_ARTIFACT"


def is_ours(vllm_config: "VllmConfig") -> bool:
    cc = getattr(vllm_config, "compilation_config", None)
    return cc is not None and getattr(cc, "backend", None) == BACKEND_NAME


def options_being_built() -> tuple[Any, TriInductorOptions | None]:
    """The VllmConfig current in this process (vLLM builds models and layer impls under it) and
    our options when it is a tri_inductor config; ``(None, None)`` on a vLLM without the accessor."""
    try:
        from vllm.config import get_current_vllm_config_or_none
    except ImportError:
        return None, None
    cfg = get_current_vllm_config_or_none()
    if cfg is None or not is_ours(cfg):
        return cfg, None
    return cfg, read_options(cfg.compilation_config.inductor_compile_config)


def read_options(inductor_compile_config: Mapping[str, Any] | None,
                 environ: Mapping[str, str] | None = None) -> TriInductorOptions:
    """Our options from ``inductor_compile_config["tri_inductor"]``, environment defaults for the
    keys not given (``TriInductorOptions.from_mapping``). :func:`adjust_vllm_config` writes every
    key back, so later readers (compiler, lm_head, worker processes) decode the same options
    without consulting their own environment."""
    raw = dict((inductor_compile_config or {}).get(OPTIONS_KEY) or {})
    options, rest = TriInductorOptions.from_mapping(raw, environ)
    if rest:
        # Inductor settings belong one level up; a typo must not pass silently.
        raise OptionsError(
            f"unknown tri_inductor option(s) {sorted(rest)} in inductor_compile_config[{OPTIONS_KEY!r}]; "
            f"ours are {[f.name for f in dataclasses.fields(TriInductorOptions)]}. Inductor settings go "
            f"directly in inductor_compile_config.")
    return options


def _enum_name(value: Any) -> str | None:
    return None if value is None else getattr(value, "name", str(value))


def _uses_mla(vllm_config: "VllmConfig") -> bool:
    mc = getattr(vllm_config, "model_config", None)
    try:
        return bool(mc is not None and mc.use_mla)
    except Exception:  # a partial model config (tests) cannot tell: assume standard attention
        return False


def _mla_prefill(ac: Any, ch: Callable[[Change], None], cf: Callable[[Conflict], None]) -> None:
    """MLA models: prefill attention on our Triton kernel (vLLM's on Hopper is FlashAttention)."""
    import importlib

    from .vllm_mla import PREFILL_REGISTRY, register_prefill_slot, support_problem

    current = _enum_name(ac.mla_prefill_backend)
    problem = support_problem()
    if problem is not None:  # another vLLM than the one our MLA code implements: all of it is vLLM's
        cf(Conflict("attention_config.mla_prefill_backend", current,
                    f"MLA layers run vLLM's own code (FlashAttention prefill, cuBLAS bmm): {problem}",
                    "serve MLA models Triton-only on vLLM 0.26"))
        return
    try:
        registry = importlib.import_module(PREFILL_REGISTRY)
    except ImportError:
        registry = None
    ours = registry is not None and register_prefill_slot(registry)
    if current is None and ours:
        def _set(registry: Any = registry) -> None:
            ac.mla_prefill_backend = registry.MLAPrefillBackendEnum.CUSTOM

        ch(Change("attention_config.mla_prefill_backend", None, "CUSTOM",
                  "tri_inductor's Triton MLA prefill (vLLM's default on CUDA is FlashAttention)", _set))
    elif current is None or (current == "CUSTOM" and not ours):
        cf(Conflict("attention_config.mla_prefill_backend", current,
                    "MLA prefill runs vLLM's FlashAttention (CUDA)",
                    "free vLLM's MLAPrefillBackendEnum.CUSTOM slot for tri_inductor" if registry is not None
                    else "this vLLM has no MLA prefill registry"))
    elif current != "CUSTOM":
        cf(Conflict("attention_config.mla_prefill_backend", current,
                    f"MLA prefill runs {current}, not Triton", "leave mla_prefill_backend unset"))


def adjust_vllm_config(vllm_config: "VllmConfig", environ: MutableMapping[str, str] | None = None,
                       package_hash: str | None = None) -> Adjustment:
    """Before vLLM's own ``VllmConfig.__post_init__``: set our defaults, find conflicts.

    Idempotent (vLLM re-runs ``__post_init__`` on ``replace``).  In strict mode raises
    :class:`TriInductorConfigError` before changing anything.
    """
    environ = os.environ if environ is None else environ
    cc = vllm_config.compilation_config
    icc = cc.inductor_compile_config
    try:
        options = read_options(icc, environ)
    except OptionsError as e:
        raise TriInductorConfigError(f"tri_inductor: {e}") from e
    adj = Adjustment(options=options)
    ch, cf = adj.changes.append, adj.conflicts.append

    # Our options and hash ride in inductor_compile_config: pickled to the engine and worker
    # processes with the config, and hashed into vLLM's compile-cache keys.
    wanted = {f.name: getattr(options, f.name) for f in dataclasses.fields(options)}
    if wanted["patterns"] is not None:
        wanted["patterns"] = list(wanted["patterns"])
    if icc.get(OPTIONS_KEY) != wanted:
        ch(Change(f"inductor_compile_config[{OPTIONS_KEY!r}]", icc.get(OPTIONS_KEY), wanted,
                  "our options, validated (they enter the compile-cache key)",
                  lambda: icc.__setitem__(OPTIONS_KEY, wanted)))
    if package_hash is not None and icc.get(HASH_KEY) != package_hash:
        ch(Change(f"inductor_compile_config[{HASH_KEY!r}]", icc.get(HASH_KEY), package_hash,
                  "edited kernels must not be served from vLLM's (AOT) compile cache",
                  lambda: icc.__setitem__(HASH_KEY, package_hash)))

    # Combo kernels (horizontal fusion) stay on, but are not benchmarked at compile time: the
    # benchmark runs candidate kernels on synthetic inputs (random token ids and positions, sizes
    # from hints) and on Llama-3.2-1B's pieces one faulted with an illegal address, failing the
    # compile (docs/design/gemm.md). CompilationConfig's own __post_init__ (before this) sets the
    # pair on GPU platforms; any other value of either key (the user's) is kept.
    if icc.get("combo_kernels") is True and icc.get("benchmark_combo_kernel") is True:
        ch(Change("inductor_compile_config['benchmark_combo_kernel']", True, False,
                  "compile-time benchmarks run kernels on synthetic inputs; one faulted on "
                  "Llama-3.2-1B (combo kernels stay on)",
                  lambda: icc.__setitem__("benchmark_combo_kernel", False)))

    # Compile-time autotuning (torch's standalone_compile, vLLM's path, turns it on): Inductor's
    # wrapper then compiles every kernel of a piece, ours included, one after another on vLLM's
    # main thread, and runs them on synthetic inputs (a Llama-3.2-1B cold start on the H200 spent
    # 15 s there, sampled stacks; vLLM's own pieces 2.6 s). Off, the kernels compile in Inductor's
    # worker processes when a piece loads, and Inductor's few multi-config kernels pick theirs at
    # their first run; one eager warm-up run before each CUDA-graph capture keeps that first run
    # out of a capture. A user's value of either is kept.
    if "triton.autotune_at_compile_time" not in icc:
        ch(Change("inductor_compile_config['triton.autotune_at_compile_time']", None, False,
                  "compile-time autotuning compiles every kernel of a piece serially on the main thread "
                  "and runs it on synthetic inputs; Inductor's worker processes compile them instead",
                  lambda: icc.__setitem__("triton.autotune_at_compile_time", False)))
        if getattr(cc, "cudagraph_num_of_warmups", 1) < 1:
            ch(Change("compilation_config.cudagraph_num_of_warmups", cc.cudagraph_num_of_warmups, 1,
                      "Inductor's multi-config kernels pick their config at their first run: an eager "
                      "warm-up before each capture keeps it out of the CUDA graph",
                      lambda: setattr(cc, "cudagraph_num_of_warmups", 1)))

    # Warm starts: without vLLM's "mega" AOT artifact a warm start still sends every piece through
    # compile() so vLLM can re-key its deduplicated artifacts (~0.2 s a piece, most of a warm
    # start); with it the pieces load straight from the artifact.  vLLM turns it on by default
    # from torch 2.12; torch 2.11 supports it (vLLM's CI runs it) but vLLM leaves it off.
    if (MEGA_AOT_ENV not in environ and environ.get("VLLM_USE_AOT_COMPILE", "1") != "0"
            and environ.get("VLLM_USE_STANDALONE_COMPILE", "1") == "1"
            and environ.get("VLLM_DISABLE_COMPILE_CACHE", "0") in ("", "0")):
        ch(Change(f"environment {MEGA_AOT_ENV}", None, "1",
                  "warm starts load every piece from vLLM's AOT artifact instead of re-compiling "
                  "each to re-key it (set it to 0 to keep vLLM's torch-2.11 default)",
                  lambda: environ.__setitem__(MEGA_AOT_ENV, "1")))

    # Compilation mode: None (vLLM picks VLLM_COMPILE) or VLLM_COMPILE keep the piecewise path.
    mode = cc.mode
    mode_value = None if mode is None else int(mode)
    if mode_value in (1, 2):
        cf(Conflict("compilation_config.mode", _enum_name(mode),
                    "Dynamo hands the whole graph to torch.compile's 'tri_inductor' backend: no vLLM graph "
                    "splitting, no piecewise CUDA graphs, attention traced into the graph",
                    "leave mode unset (or VLLM_COMPILE) with backend 'tri_inductor'"))
    elif mode_value == 0:
        cf(Conflict("compilation_config.mode", _enum_name(mode),
                    "nothing is compiled: the model runs eagerly on PyTorch/ATen kernels",
                    "leave mode unset and drop enforce_eager"))
    mc = getattr(vllm_config, "model_config", None)
    if mc is not None and getattr(mc, "enforce_eager", False):
        cf(Conflict("enforce_eager", True, "nothing is compiled: the model runs eagerly on PyTorch/ATen kernels",
                    "drop enforce_eager"))
    if getattr(cc, "use_inductor_graph_partition", False):
        cf(Conflict("compilation_config.use_inductor_graph_partition", True,
                    "vLLM only partitions at attention for backend 'inductor'; with ours attention is not "
                    "split out", "leave use_inductor_graph_partition off (vLLM's FX splitting is used)"))

    # custom_ops: vLLM appends "all" for any backend but "inductor" (its CUDA rms_norm, silu_and_mul,
    # rotary_embedding, ...).  "none" keeps every op in its PyTorch form for Inductor and our patterns.
    custom_ops = cc.custom_ops
    if "all" in custom_ops:
        cf(Conflict("compilation_config.custom_ops", list(custom_ops),
                    "'all' enables vLLM's CUDA custom ops (rms_norm, silu_and_mul, rotary_embedding, ...)",
                    "remove 'all' (tri_inductor sets 'none')"))
    elif "none" not in custom_ops:
        ch(Change("compilation_config.custom_ops", list(custom_ops), ["none", *custom_ops],
                  "vLLM sets 'none' only for backend 'inductor'; otherwise its CUDA ops come back",
                  lambda: custom_ops.insert(0, "none")))
    enabled = [op for op in custom_ops if op.startswith("+")]
    if enabled:
        cf(Conflict("compilation_config.custom_ops", enabled,
                    "these vLLM custom ops run their CUDA/C++ kernels, outside our compiler",
                    f"remove {enabled}"))

    # IR op priority: vLLM's CUDA default for non-"inductor" backends is ["vllm_c", "native"],
    # i.e. rms_norm lowers to _C.rms_norm.  An empty list means "unset" (vLLM appends defaults).
    prio = vllm_config.kernel_config.ir_op_priority
    for op in ir_ops(prio):
        current = getattr(prio, op, None)
        if current is None:
            continue
        if not current:
            ch(Change(f"kernel_config.ir_op_priority.{op}", [], ["native"],
                      "the native PyTorch form compiles to Triton; vllm_c is a CUDA kernel",
                      lambda current=current: current.append("native")))
        elif current[0] not in TRITON_IR_PROVIDERS:
            cf(Conflict(f"kernel_config.ir_op_priority.{op}", list(current),
                        f"{current[0]!r} implements {op} with a non-Triton kernel",
                        f"put 'native' first (ir_op_priority={{{op!r}: ['native']}}) or leave it unset"))

    # Attention runs eagerly between compiled pieces: its kernels are the attention backend's.
    ac = vllm_config.attention_config
    backend = _enum_name(ac.backend)
    if backend is None:
        from .envs import EnvError
        from .hooks import signature_problem
        from .vllm_attention_select import selection

        try:
            target, why = selection(environ, _uses_mla(vllm_config), signature_problem)
        except EnvError as e:  # not a ValueError out of __post_init__: pydantic would rewrap it
            raise TriInductorConfigError(f"tri_inductor: {e}") from None

        def _set_attention(target: str = target) -> None:
            from vllm.v1.attention.backends.registry import AttentionBackendEnum

            ac.backend = AttentionBackendEnum[target]

        ch(Change("attention_config.backend", None, target,
                  f"{why}; Triton KV-cache write (default on CUDA is FLASH_ATTN)", _set_attention))
    elif not is_triton_attention(backend):
        cf(Conflict("attention_backend", backend,
                    "attention and its KV-cache write run non-Triton kernels",
                    f"use one of {sorted(TRITON_ATTENTION_BACKENDS)} or leave attention_backend unset"))
    if _uses_mla(vllm_config) and hasattr(ac, "mla_prefill_backend"):
        _mla_prefill(ac, ch, cf)
    for kind, b in dict(getattr(ac, "backend_per_kind", None) or {}).items():
        if not is_triton_attention(_enum_name(b)):
            cf(Conflict(f"attention_config.backend_per_kind[{kind!r}]", _enum_name(b),
                        "those layers' attention runs non-Triton kernels",
                        f"use one of {sorted(TRITON_ATTENTION_BACKENDS)}"))

    # Sampler: FlashInfer's top-k/top-p kernels are CUDA.  An env var, read lazily by vLLM; set in
    # this process it is inherited by the engine and worker processes started afterwards.
    sampler = environ.get(SAMPLER_ENV)
    if sampler is None:
        ch(Change(SAMPLER_ENV, None, "0", "FlashInfer's sampling kernels are not Triton",
                  lambda: environ.__setitem__(SAMPLER_ENV, "0")))
    elif sampler.strip() not in ("0", "false", "False"):
        cf(Conflict(SAMPLER_ENV, sampler, "top-k/top-p sampling runs FlashInfer's CUDA kernels",
                    f"unset {SAMPLER_ENV} or set it to 0"))

    # torch >= 2.13 with nvidia-cutlass-dsl (vLLM installs it): eager topk/_fused_rms_norm/
    # scatter_add/sum (sampler, runner) launch CuTeDSL kernels, neither Triton nor ours.  torch reads
    # the switch at import: set here (engine-args process) it reaches the engine/worker processes
    # vLLM starts afterwards, before their torch import.
    native = environ.get(NATIVE_JIT_ENV)
    if not torch_has_native_kernels():
        pass  # torch < 2.13: no such kernels, nothing to turn off
    elif native is None:
        ch(Change(NATIVE_JIT_ENV, None, "1", "torch's CuTeDSL eager kernels (topk, _fused_rms_norm, scatter_add, "
                  "sum) are not Triton", lambda: environ.__setitem__(NATIVE_JIT_ENV, "1")))
    elif native.strip().lower() in ("0", "false", "no", "off", ""):
        cf(Conflict(NATIVE_JIT_ENV, native, "torch >= 2.13 runs CuTeDSL kernels for eager topk, "
                    "_fused_rms_norm, scatter_add and sum", f"unset {NATIVE_JIT_ENV} or set it to 1"))

    _tensor_parallel(vllm_config, environ, adj)
    _state_layers(vllm_config, environ, ch, cf)

    if options.strict and adj.conflicts:
        raise TriInductorConfigError(
            "tri_inductor strict mode: vLLM settings that defeat Triton-only execution:\n  - "
            + "\n  - ".join(c.message() for c in adj.conflicts)
            + "\n(strict mode comes from inductor_compile_config['tri_inductor']['strict'] or "
            f"{STRICT_ENV}=1)")
    for c in adj.changes:
        c.apply()
    return adj


def _has_state_layers(vllm_config: "VllmConfig") -> bool:
    """Whether the model has Mamba / linear-attention layers (vLLM's hybrid or attention-free
    models); False when there is no model config or it cannot say."""
    mc = getattr(vllm_config, "model_config", None)
    try:
        return bool(mc is not None and (mc.is_hybrid or mc.has_inner_state or mc.is_attention_free))
    except Exception:  # noqa: BLE001  (a config without model info: nothing to adjust)
        return False


def _gdn_decode_env_known() -> bool:
    try:
        import vllm.envs as envs

        return GDN_DECODE_ENV in getattr(envs, "environment_variables", {})
    except ImportError:
        return False


def _state_layers(vllm_config: "VllmConfig", environ: MutableMapping[str, str],
                  ch: Callable[[Change], None], cf: Callable[[Conflict], None]) -> None:
    """Mamba's selective state update must stay on vLLM's Triton kernel (its default). Gated
    delta-net layers (Qwen3-Next, Qwen3.5, Kimi-Linear) run eagerly inside vLLM's opaque
    op, on kernels vLLM picks outside custom_ops: prefill by ``additional_config
    ['gdn_prefill_backend']`` ('auto' is FlashInfer's CUDA kernel on Hopper, CuTeDSL on some
    Blackwell shapes), decode by ``VLLM_GDN_DECODE_KERNEL`` (vLLM 0.34: 'cuda' by default). 'triton'
    is vLLM's FLA Triton kernels for both. Only for models with such layers."""
    if not _has_state_layers(vllm_config):
        return
    ssu = _enum_name(getattr(getattr(vllm_config, "mamba_config", None), "backend", None))
    if ssu is not None and ssu != "TRITON":  # vLLM's default is its Triton selective state update
        cf(Conflict("mamba_config.backend", ssu, "Mamba's selective state update runs a non-Triton kernel",
                    "leave it unset (triton)"))
    extra = getattr(vllm_config, "additional_config", None)
    if isinstance(extra, dict):
        requested = str(extra.get(GDN_PREFILL_KEY, "auto")).strip().lower()
        if requested == "auto":
            ch(Change(f"additional_config[{GDN_PREFILL_KEY!r}]", extra.get(GDN_PREFILL_KEY), "triton",
                      "gated delta-net prefill: 'auto' picks FlashInfer's CUDA kernel on Hopper; 'triton' "
                      "is vLLM's FLA Triton kernels", lambda: extra.__setitem__(GDN_PREFILL_KEY, "triton")))
        elif requested != "triton":
            cf(Conflict(f"additional_config[{GDN_PREFILL_KEY!r}]", requested,
                        "the gated delta-net prefill runs a non-Triton kernel",
                        "leave it unset or 'triton' (--gdn-prefill-backend triton)"))
    if not _gdn_decode_env_known():
        return  # this vLLM has one (Triton) decode path
    decode = environ.get(GDN_DECODE_ENV)
    if decode is None:
        ch(Change(f"environment {GDN_DECODE_ENV}", None, "triton",
                  "gated delta-net decode: vLLM's default 'cuda' kernel is not Triton",
                  lambda: environ.__setitem__(GDN_DECODE_ENV, "triton")))
    elif decode.strip().lower() != "triton":
        cf(Conflict(f"environment {GDN_DECODE_ENV}", decode, "the gated delta-net decode runs a CUDA kernel",
                    f"unset {GDN_DECODE_ENV} or set it to triton"))


def tensor_parallel_size(vllm_config: "VllmConfig") -> int:
    pc = getattr(vllm_config, "parallel_config", None)
    return int(getattr(pc, "tensor_parallel_size", 1) or 1)


def _tensor_parallel(vllm_config: "VllmConfig", environ: MutableMapping[str, str], adj: Adjustment) -> None:
    """TP > 1: the all-reduces of row-parallel layers (and the vocab-parallel embedding) go to NCCL,
    allowed as communication; vLLM's other all-reduce paths run kernels that are not NCCL.

    * ``parallel_config.disable_custom_all_reduce``: vLLM's custom all-reduce is a CUDA extension
      kernel (``_C_custom_ar``).  vLLM reads it in each worker (``set_custom_all_reduce``), from
      the config pickled to it; it is not in vLLM's config hash.  False (its default) cannot be
      told from "left unset", so it is always turned on.
    * ``VLLM_ALLREDUCE_USE_SYMM_MEM``: torch's symmetric-memory all-reduce kernels, and the
      NVLink-multicast set-up they need: NCCL instead unless the user chose.
    * ``pass_config.fuse_allreduce_rms``: FlashInfer's fused all-reduce + RMSNorm, a CUDA kernel
      (vLLM's default on sm_90/sm_100 with FlashInfer installed).  ``fuse_gemm_comms`` (async TP):
      torch's fused matmul + collective ops, cuBLAS GEMMs.
    """
    if tensor_parallel_size(vllm_config) <= 1:
        return
    ch, cf = adj.changes.append, adj.conflicts.append
    pc = vllm_config.parallel_config
    if not pc.disable_custom_all_reduce:
        ch(Change("parallel_config.disable_custom_all_reduce", False, True,
                  "vLLM's custom all-reduce is a CUDA extension kernel; NCCL does the all-reduce",
                  lambda: setattr(pc, "disable_custom_all_reduce", True)))
    symm = environ.get(SYMM_MEM_ALLREDUCE_ENV)
    if symm is None:
        ch(Change(SYMM_MEM_ALLREDUCE_ENV, None, "0",
                  "torch's symmetric-memory all-reduce kernels are not NCCL (and need NVLink multicast)",
                  lambda: environ.__setitem__(SYMM_MEM_ALLREDUCE_ENV, "0")))
    pass_config = vllm_config.compilation_config.pass_config
    fields = {f.name for f in dataclasses.fields(pass_config)}
    for field, what in (("fuse_allreduce_rms", "FlashInfer's fused all-reduce + RMSNorm CUDA kernel"),
                        ("fuse_gemm_comms", "torch's fused matmul + collective ops (cuBLAS GEMMs)")):
        if field not in fields:
            continue  # this vLLM has no such pass (0.34: no fuse_gemm_comms)
        value = getattr(pass_config, field, None)
        if value is None:
            ch(Change(f"compilation_config.pass_config.{field}", None, False,
                      f"{what} replaces our Triton GEMM/norm", lambda field=field: setattr(pass_config, field, False)))
        elif value:
            cf(Conflict(f"compilation_config.pass_config.{field}", True, f"{what} replaces our Triton GEMM/norm",
                        f"leave pass_config.{field} unset (tri_inductor turns it off)"))


def trim_ir_priorities(vllm_config: "VllmConfig") -> None:
    """After vLLM's ``__post_init__``: ``set_platform_defaults`` appended its CUDA default
    (``vllm_c``) behind our ``native``.  Native always applies, so the tail is never used; drop
    it so the config (and its hash, which looks up every listed provider's implementation)
    matches vLLM's own Inductor path, ``["native"]``."""
    prio = vllm_config.kernel_config.ir_op_priority
    for op in ir_ops(prio):
        current = getattr(prio, op, None)
        if current and current[0] == "native" and len(current) > 1:
            del current[1:]


def split_range_at_cudagraph_size(vllm_config: "VllmConfig") -> Change | None:
    """After vLLM's ``__post_init__`` (capture sizes known): add ``max_cudagraph_capture_size`` to
    the compile-range endpoints.  Our GEMM picks its tiles per M bucket; one graph for every token
    count launches each bucket's kernel gated on M (free inside a CUDA graph, a host launch each
    outside one).  With the split, the graph for the eager range (big prefill steps) holds only
    the prefill buckets' kernels; the cost is one more compile per piece (cold start only).
    ``TRI_INDUCTOR_COMPILE_RANGES=one`` keeps vLLM's ranges (the gated-off launches are skipped
    on the host now: patterns/gated_calls.py)."""
    from . import envs

    if envs.compile_ranges() == "one":
        return None
    cc = vllm_config.compilation_config
    cap = cc.max_cudagraph_capture_size or 0
    end = getattr(getattr(vllm_config, "scheduler_config", None), "max_num_batched_tokens", None)
    endpoints = list(cc.compile_ranges_endpoints or [])
    if not endpoints or end is None or not 1 < cap < end or cap in endpoints:
        return None
    new = sorted({*endpoints, cap})

    def _apply() -> None:
        cc.compile_ranges_endpoints = new

    return Change("compilation_config.compile_ranges_endpoints", endpoints, new,
                  "a compile range ends at the largest CUDA-graph size: eager prefill steps launch "
                  "only the prefill GEMM tiles", _apply)


def check_final_config(vllm_config: "VllmConfig") -> list[Conflict]:
    """After vLLM's ``__post_init__``: conflicts vLLM introduced itself (e.g. '+quant_fp8' for
    block-quantized weights, '+rms_norm' for sequence parallelism with pipeline parallelism,
    a model-specific attention backend)."""
    out: list[Conflict] = []
    cc = vllm_config.compilation_config
    enabled = [op for op in cc.custom_ops if op.startswith("+")]
    if enabled:
        out.append(Conflict("compilation_config.custom_ops", enabled,
                            "vLLM enabled these CUDA custom ops for this model/config",
                            f"find the option that implies {enabled} (quantization, sequence parallelism, "
                            "rope fusion passes) and turn it off"))
    if cc.mode is not None and int(cc.mode) != 3 and not getattr(vllm_config.model_config, "enforce_eager", False):
        out.append(Conflict("compilation_config.mode", _enum_name(cc.mode),
                            "vLLM turned compilation off; the model runs on PyTorch/ATen kernels",
                            "see vLLM's log for the reason (TORCH_COMPILE_DISABLE, breakable CUDA graphs)"))
    backend = _enum_name(vllm_config.attention_config.backend)
    if backend is not None and not is_triton_attention(backend):
        out.append(Conflict("attention_config.backend", backend, "attention runs non-Triton kernels",
                            f"choose one of {sorted(TRITON_ATTENTION_BACKENDS)}"))
    pc = getattr(vllm_config, "parallel_config", None)
    if tensor_parallel_size(vllm_config) > 1 and not getattr(pc, "disable_custom_all_reduce", True):
        out.append(Conflict("parallel_config.disable_custom_all_reduce", False,
                            "vLLM's custom all-reduce (a CUDA extension kernel) is on",
                            "set disable_custom_all_reduce=True"))
    return out
