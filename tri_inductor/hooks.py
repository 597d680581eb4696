"""Every hook tri_inductor puts into torch, Triton and vLLM internals, in one place.

:data:`TABLE` lists each target with the versions it was tested on, why we hook it, what breaks
without the hook and the parameter lists we have seen for it (``tests/test_hooks.py`` fails when
an installed version's signature is not among them: a hook then needs a look before a release).

Rules every hook here follows:

* installed with :func:`wrap_once` (idempotent, marked ``_tri_inductor``, ``functools.wraps``),
  or, for the CPU test harnesses, with :func:`patched` (undone when the ``with`` block ends);
* arguments are read with :func:`arguments` (bound by ``inspect.signature``, never by position);
* installed late: torch/Triton hooks when a compile (or a vLLM model of ours) starts
  (``tri_inductor.audit.install_hooks``), vLLM hooks when vLLM imports the module they patch
  (:func:`when_imported`, :func:`install_vllm_hooks`); nothing here runs at ``import tri_inductor``;
* this module imports nothing of the package: the modules that hold the wrappers install them
  (with the helpers here), so every module can use these helpers without an import cycle;
* a vLLM wrapper passes every argument through untouched unless the config's backend is
  ``tri_inductor``: a plugin loaded into every vLLM process must never break vLLM's own backends.
  An installer that fails (a target this version renamed) leaves its hook out with a warning
  (:func:`when_imported`): the import of vLLM's module never fails because of us.

Version checks (:data:`TESTED`, :func:`untested_versions`) and the version shims (what differs
between torch/vLLM releases: :func:`torch_at_least`, :func:`accepts_keyword`,
:func:`inductor_folds_narrowing_round_trip`, ...) are at the end; ``docs/support.md`` lists them.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import importlib
import importlib.abc
import importlib.machinery
import importlib.metadata
import inspect
import logging
import re
import sys
from collections.abc import Callable, Iterator
from types import ModuleType
from typing import Any


MARK = "_tri_inductor"

# Versions the CPU suite runs on (CI: scripts/install.sh and scripts/install_stack.sh 2.14).
TESTED: dict[str, tuple[str, str]] = {"torch": ("2.11", "2.14"), "triton": ("3.6", "3.8"), "vllm": ("0.26", "0.34")}


@dataclasses.dataclass(frozen=True)
class Hook:
    target: str
    """``module:Qual.name`` of the patched attribute."""
    tested: str
    why: str
    without: str
    """What breaks (or is lost) without the hook."""
    signatures: tuple[str, ...]
    """Parameter lists seen on the tested versions (:func:`signature_of`); () = not a callable."""
    scope: str = "process"
    """``process``: wrapped once, stays; ``harness``: a CPU test harness patch, undone on exit."""
    since: str = ""
    """``"torch 2.13"``: the target exists from that release on (absent before: nothing to hook)."""
    until: str = ""
    """``"torch 2.14"``: the target is gone from that release on (the hook is then not installed)."""


_V = "torch 2.11-2.14 / triton 3.6-3.8 / vLLM 0.26-0.34"
_T = "torch 2.11-2.14 / triton 3.6-3.8"

TABLE: tuple[Hook, ...] = (
    # ---------------------------------------------------------------- vLLM (vllm_plugin)
    Hook("vllm.config.vllm:VllmConfig.__post_init__", _V,
         "set our defaults before vLLM's own post-init (custom_ops, IR priority, attention) and check "
         "what vLLM changed after it", "backend 'tri_inductor' runs vLLM's CUDA custom ops and FLASH_ATTN",
         ("self",)),
    Hook("vllm.config.compilation:CompilationConfig.__post_init__", _V,
         "let an explicit mode=VLLM_COMPILE pass vLLM's backend-name check",
         "mode=3 with backend 'tri_inductor' is rejected", ("self",)),
    Hook("vllm.compilation.backends:make_compiler", _V,
         "return TriInductorCompiler for our backend (vLLM resolves get_compile_backend() otherwise)",
         "backend 'tri_inductor' crashes in vLLM ('not enough values to unpack')",
         ("compilation_config", "compilation_config, *, use_aot_compile")),
    Hook("vllm.compilation.backends:CompilerManager.compile", _V,
         "log the audit summary after the last piece of a compile range", "no per-run audit summary",
         ("self, graph, example_inputs, additional_inductor_config, compilation_config, compile_range, "
          "graph_index, num_graphs, is_encoder",)),
    Hook("vllm.model_executor.layers.logits_processor:LogitsProcessor.__init__", _V,
         "decide once per LogitsProcessor whether its model uses our backend; start our torch hooks",
         "lm_head stays on cuBLAS", ("self, vocab_size, org_vocab_size, scale, logits_as_input, soft_cap",)),
    Hook("vllm.model_executor.layers.logits_processor:LogitsProcessor._apply_head", _V,
         "run the lm_head GEMM on our Triton kernel", "lm_head runs on cuBLAS (a non-Triton kernel each step)",
         ("self, lm_head, hidden_states, embedding_bias",)),
    # vLLM layers run eagerly inside opaque ops (vllm_eager_ops): MoE router gates, shared experts
    Hook("vllm.model_executor.layers.linear:UnquantizedLinearMethod.apply", "vLLM 0.26",
         "eager unquantized linears (a FusedMoE runner's router gate and shared experts, inside the opaque "
         "vllm.moe_forward op) on our GEMM", "those linears run on cuBLAS (nvjet_* in every MoE step)",
         ("self, layer, x, bias",)),
    Hook("vllm.model_executor.layers.linear:UnquantizedLinearMethod.create_weights", "vLLM 0.26, 0.34",
         "queue each new weight shape's GEMM tuning candidates on the compile-ahead thread "
         "(vllm_compile_ahead) as vLLM creates the layer",
         "a cold start's GEMM tuning compiles its candidates when each shape is tuned (on the compile's path)",
         ("self, layer, input_size_per_partition, output_partition_sizes, input_size, output_size, params_dtype, "
          "**extra_weight_attrs",)),
    Hook("vllm.model_executor.layers.vocab_parallel_embedding:UnquantizedEmbeddingMethod.create_weights",
         "vLLM 0.26, 0.34", "queue the lm_head GEMM's tuning candidates (vocabulary x hidden) on the compile-ahead "
         "thread (vllm_compile_ahead)", "the lm_head's tuning compiles its candidates after the compile",
         ("self, layer, input_size_per_partition, output_partition_sizes, input_size, output_size, params_dtype, "
          "**extra_weight_attrs",)),
    Hook("vllm.model_executor.layers.fused_moe.router.gate_linear:GateLinear.forward", "vLLM 0.26",
         "DeepSeek-V2/V3 router logits (fp32 out_dtype too) on our GEMM, run eagerly in the MoE runner",
         "router logits on vLLM's cuteDSL/dsv3 CUDA kernels or cuBLAS", ("self, x",)),
    Hook("vllm.v1.engine.input_processor:InputProcessor._validate_model_input", _V,
         "refuse prompt token ids outside the vocabulary when vLLM has no tokenizer to check them "
         "(vllm_input_check; vLLM 0.34 checks them itself)",
         "with --skip-tokenizer-init one request holding id 10^9 kills the engine (device-side assert "
         "in the embedding kernel)", ("self, prompt_input, prompt_type",)),
    Hook("vllm.model_executor.layers.activation:SiluAndMul.forward_native", "vLLM 0.26",
         "an eager SiluAndMul (custom ops off, not compiled) on our gated-activation kernel",
         "eager ATen silu and mul kernels", ("x",)),
    # vLLM MLA layers (vllm_mla, vllm_mla_prefill): wrappers, a registration and a subclass
    Hook("vllm.model_executor.layers.attention.mla_attention:MLAAttention.forward_impl", "vLLM 0.26",
         "an MLA layer's attention with every kernel Triton (bmm, KV-cache write, prefill, merges)",
         "MLA layers run cuBLAS bmm, ATen copies/fills and FlashAttention prefill around the Triton decode",
         ("self, q, k_c_normed, k_pe, kv_cache, attn_metadata, output, output_scale, output_block_scale, "
          "quant_group_size, quant_scale_ue8m0, quant_col_major, quant_tma_aligned",
          # vLLM 0.34 (passed through: vllm_mla.SERVED holds what we implement)
          "self, q, k_c_normed, k_pe, kv_cache, attn_metadata, output, output_scale, output_block_scale, "
          "quant_group_size, quant_scale_ue8m0, quant_col_major, quant_tma_aligned, q_dcp_replicated, "
          "mqa_q_prepared")),
    Hook("vllm._custom_ops:concat_and_cache_mla", "vLLM 0.26", "the MLA latent KV-cache write on our kernel",
         "the KV-cache write calls vLLM's CUDA op (absent in a Triton-only build)",
         ("kv_c, k_pe, kv_cache, slot_mapping, kv_cache_dtype, scale",
          "kv_c, k_pe, kv_cache, slot_mapping, kv_cache_dtype, scale, skip_scale")),  # 0.34: passed through
    Hook("vllm._custom_ops:gather_and_maybe_dequant_cache", "vLLM 0.26",
         "the MLA context gather on our kernel when vLLM's own forward_mha runs",
         "chunked-context prefill calls vLLM's CUDA op", (
             "src_cache, dst, block_table, cu_seq_lens, token_to_seq, num_tokens, kv_cache_dtype, scale, "
             "seq_starts",)),
    Hook("vllm.v1.attention.backends.mla.prefill.registry:register_mla_prefill_backend", "vLLM 0.26 (read)",
         "put our Triton MLA prefill in vLLM's MLAPrefillBackendEnum.CUSTOM slot (every process)",
         "MLA prefill runs FlashAttention (CUDA); the config reports it as a conflict",
         ("backend, class_path",)),
    Hook("vllm.v1.attention.backends.mla.prefill.base:MLAPrefillBackend.run_prefill_new_tokens", "vLLM 0.26 (read)",
         "TriMLAPrefillBackend overrides it: vLLM's forward_mha calls it with these arguments",
         "a changed signature: our prefill backend fails when vLLM calls it",
         ("self, q, k, v, return_softmax_lse, out, output_scale",)),
    Hook("vllm.v1.attention.backends.mla.prefill.base:MLAPrefillBackend.run_prefill_context_chunk", "vLLM 0.26 (read)",
         "TriMLAPrefillBackend overrides it", "a changed signature: our prefill backend fails when vLLM calls it",
         ("self, chunk_idx, q, k, v", "self, chunk, q, k, v, out")),  # 0.34: not selected (vllm_mla.SERVED)
    Hook("vllm.v1.attention.ops.triton_decode_attention:decode_attention_fwd", "vLLM 0.26 (read)",
         "vllm_mla's decode calls vLLM's Triton MLA decode kernel with these arguments",
         "a changed signature: MLA layers are left to vLLM (vllm_mla.SERVED)",
         ("q, k_buffer, v_buffer, o, lse, req_to_token, b_seq_len, attn_logits, num_kv_splits, sm_scale, page_size, "
          "logit_cap, k_scale, v_scale, is_mla",
          "q, k_buffer, v_buffer, o, lse, req_to_token, b_seq_len, attn_logits, num_kv_splits, sm_scale, page_size, "
          "logit_cap, k_scale, v_scale, is_mla, sliding_window")),
    # vLLM attention (vllm_attention_select / vllm_attention): no wrapper; a registration and a subclass
    Hook("vllm.v1.attention.backends.registry:register_backend", "vLLM 0.26, 0.34 (read)",
         "put our paged attention backend in vLLM's AttentionBackendEnum.CUSTOM slot (every process)",
         "backend 'tri_inductor' runs vLLM's TRITON_ATTN kernel (logged once)",
         ("backend, class_path, is_mamba",)),
    Hook("vllm.v1.attention.backends.triton_attn:TritonAttentionImpl.__init__", "vLLM 0.26, 0.34 (read)",
         "TriPagedAttentionImpl subclasses it: vLLM builds it with these arguments",
         "a changed signature: our backend is not selected (TRITON_ATTN, logged once)",
         ("self, num_heads, head_size, scale, num_kv_heads, alibi_slopes, sliding_window, kv_cache_dtype, "
          "logits_soft_cap, attn_type, kv_sharing_target_layer_name, sinks, use_alibi_sqrt, chunk_lookback",)),
    Hook("vllm.v1.attention.backends.triton_attn:TritonAttentionBackend.get_kv_cache_shape", "vLLM 0.26 (read)",
         "TriPagedAttentionBackend inherits TRITON_ATTN's KV-cache layout, which our kernels read",
         "gone from vLLM 0.34 (its layout is the one below); neither: our backend is not selected (TRITON_ATTN, "
         "logged once)", ("num_blocks, block_size, num_kv_heads, head_size, cache_dtype_str",), until="vllm 0.34"),
    Hook("vllm.v1.kv_cache_interface:compute_layer_kv_cache_shape_bytes", "vLLM 0.34 (read)",
         "vLLM 0.34 views every attention layer's cache as logical (blocks, KV heads, block size, content); "
         "TRITON_ATTN's K|V packing in the content is the layout our kernels read",
         "neither this nor get_kv_cache_shape: our backend is not selected (TRITON_ATTN, logged once)",
         ("spec, num_blocks, kernel_block_size",), since="vllm 0.34"),
    Hook("vllm.v1.attention.backends.triton_attn:TritonAttentionImpl.forward", "vLLM 0.26, 0.34 (read)",
         "TriPagedAttentionImpl.forward sends the attention call to our kernel (KV write, metadata: vLLM's)",
         "a changed signature: our backend is not selected (TRITON_ATTN, logged once)",
         ("self, layer, query, key, value, kv_cache, attn_metadata, output, output_scale, output_block_scale",)),
    # ---------------------------------------------------------------- torch / Triton (compile time)
    Hook("torch._inductor.graph:GraphLowering.codegen", _T,
         "guard each launch of ours with a symbolic grid by that grid in the wrapper it returns "
         "(patterns/gated_calls.py); collect the provenance (FX nodes, source line) of each extern kernel "
         "for the audit", "gated launches of other M buckets run the launcher's Python with an empty grid "
         "(host time per eager step); audit violations name no source line", ("self",)),
    Hook("torch._inductor.graph:GraphLowering.save_output_code", _T,
         "hand every output module (fresh compile and FX/AOTAutograd cache hit) to the auditor",
         "no audit at all", ()),
    Hook("torch._inductor.codecache:PyCodeCache.load_by_key_path", _T,
         "audit output code loaded with no compile/load of ours around it (vLLM >= 0.27 warm starts "
         "from the mega AOT artifact skip the compiler's load())", "warm starts go unaudited",
         ("key, path, linemap, attrs", "key, path, linemap, attrs, *, set_sys_modules")),
    Hook("torch._higher_order_ops.triton_kernel_wrap:identify_mutated_tensors", "torch 2.11 / triton 3.6 (gone in 2.14)",
         "remember the mutation analysis of our kernels per (kernel, argument dtypes, constexprs): Inductor "
         "re-runs Triton's frontend for every launch it functionalizes or lowers (tri_inductor.mutation_memo)",
         "every traced and lowered launch of our kernels re-runs Triton's frontend (cold-start compile time)",
         ("kernel, kwargs, tma_descriptor_metadata",), until="torch 2.14"),
    Hook("torch._higher_order_ops.triton_kernel_wrap:TracingTritonHOPifier.call_HOP", _T,
         "a traced launch of ours with host-side TMA descriptors records each as its base tensor and block "
         "shape, as Dynamo's path does (patterns/_host_tma.py)",
         "the TMA GEMM configs run on the pointer kernel (torch stores the descriptor as a constant)",
         ("self, variable, grids, combined_args, tx",
          "self, variable, grids, combined_args, launch_kwargs, kernel_arg_names, tx")),
    Hook("torch._inductor.ir:Scan.num_splits", _T,
         "one split per scan while a compile of ours lowers (scan_lowering)",
         "a scan of few rows (Mamba-2's chunked cumsum) splits, and its workspace is zero-filled by an ATen kernel",
         ("device, dtype, inner_fn, axis, pointwise_ranges, scan_ranges, combine_fn, scan_numel",)),
    Hook("torch._inductor.runtime.triton_heuristics:TritonCompileResult.make_launcher", _T,
         "set the PDL launch attribute on launchers of our USE_PDL kernels",
         "our kernels run without programmatic dependent launch (correct, slower)", ("self",)),
    Hook("triton.runtime.jit:JITFunction._call_hook", _T + " (read)",
         "knobs.runtime.jit_cache_hook (chained, set on the first compile-ahead batch) gets the kernel's "
         "module, name and specialization record; returning True skips the compile (compile_workers)",
         "the compile-ahead batch compiles in threads of vLLM's process (slower main thread)",
         ("self, hook, key, signature, device, constants, options, configs, is_warmup",
          "self, hook, key, signature, target, device, constants, options, configs, is_warmup")),
    Hook("triton.runtime.jit:JITFunction.preload", _T + " (read)",
         "a compile worker compiles a kernel from that specialization record (compile_workers)",
         "as above", ("self, specialization_data",)),
    Hook("torch._inductor.runtime.compile_tasks:_set_triton_ptxas_path", _T + " (called)",
         "pick the ptxas Inductor's compiles use (torch's own, TRITON_PTXAS_PATH) before any Triton compile "
         "of ours (same_ptxas_as_inductor)", "the cold start keys our kernels on Triton's bundled ptxas and "
         "the warm start, which Inductor reaches first, on torch's: every kernel of ours recompiles on the "
         "first warm start", ("",)),
    Hook("triton.backends.nvidia.compiler:get_ptxas_version", _T + " (cache cleared)",
         "Triton caches the ptxas version it read first and keys every compile on it", "as above",
         ("arch",)),
    # ---------------------------------------------------------------- CPU test harnesses (scoped)
    Hook("triton.runtime.jit:JITFunction.__call__", _T, "interpreter: nested @triton.jit helpers",
         "interpreter harness cannot run Inductor's helpers", ("self, *args, **kwargs",), "harness"),
    Hook("triton.runtime.interpreter:InterpretedFunction.__call__", _T,
         "interpreter: restore triton.language after a device call", "later real compiles break",
         ("self, *args, **kwargs",), "harness"),
    Hook("triton.runtime.interpreter:InterpreterBuilder.create_dot", _T, "interpreter: bf16 tl.dot",
         "bf16 matmuls multiply raw bits", ("self, a, b, d, input_precision, max_num_imprecise_acc",), "harness"),
    Hook("torch._inductor.runtime.triton_heuristics:CachingAutotuner._interpret_args_grid", _T,
         "interpreter: constexpr parameters of user kernels", "our kernels get wrong grids",
         ("self, args, cfg",), "harness"),
    Hook("torch._inductor.runtime.triton_heuristics:CachingAutotuner._make_launchers", _T,
         "codegen-only: never load a cubin without a GPU", "codegen-only harness fails", ("self",), "harness"),
    Hook("torch._inductor.runtime.triton_heuristics:CachingAutotuner._dynamic_scale_rblock", _T,
         "codegen-only: needs device properties of a real GPU", "codegen-only harness fails", ("self",), "harness"),
    Hook("torch._dynamo.device_interface:CpuInterface.raise_if_triton_unavailable", _T,
         "interpreter (torch >= 2.13): user kernels launched with keyword arguments check for a 'cpu' "
         "Triton backend, which the interpreter does not need", "'triton not built with the cpu backend'",
         ("device",), "harness", since="torch 2.13"),
    Hook("torch._inductor.runtime.triton_helpers:try_filter_backend_options_for_target", _T,
         "interpreter (torch >= 2.13): parses launch kwargs against the 'cpu' backend's options",
         "'triton not built with the cpu backend'", ("target, options, kernel_arg_names",), "harness",
         since="torch 2.13"),
    Hook("torch.utils._triton:has_triton_tensor_descriptor_host_tma", _T,
         "both harnesses: the CPU stands in for an sm_90 card that takes host-side TMA descriptors",
         "the mutation analysis of our TMA kernels fails on CPU and Inductor copies their inputs", ("",),
         scope="harness"),
    Hook("torch._inductor.runtime.triton_helpers:libdevice", _T,
         "interpreter: libdevice externs run as numpy", "erf/tanh/... fail in the interpreter", (), "harness"),
    Hook("torch._inductor.runtime.triton_helpers:set_driver_to_cpu", _T, "interpreter: keep our stub driver",
         "the interpreter harness loses its driver", ("",), "harness"),
    Hook("torch._inductor.runtime.triton_helpers:set_driver_to_gpu", _T, "both harnesses: keep our stub driver",
         "codegen-only asks the CUDA driver", ("",), "harness"),
    Hook("torch._subclasses.fake_tensor:init_gpu_context", _T, "codegen-only: no CUDA context",
         "fake CUDA tensors need a GPU", ("device",), "harness"),
    Hook("torch.cuda:get_device_capability", _T,
         "codegen-only: a fake H100 (is_available, device_count, get_device_properties, ... likewise)",
         "codegen-only harness cannot compile for sm_90", ("device",), "harness"),
    Hook("torch._inductor.fx_passes.joint_graph:lazy_init", _T,
         "codegen-only: Inductor's joint-graph patterns traced with CPU examples",
         "joint-graph pattern set-up needs a CUDA driver", ("input_device",), "harness"),
)


def _resolve_owner(target: str) -> tuple[Any, str]:
    module_name, _, qual = target.partition(":")
    owner: Any = importlib.import_module(module_name)
    *path, attr = qual.split(".")
    for part in path:
        owner = getattr(owner, part)
    return owner, attr


def resolve(target: str) -> Any:
    """The object a TABLE target names (imports its module)."""
    owner, attr = _resolve_owner(target)
    return getattr(owner, attr)


def signature_of(fn: Any) -> str:
    """``"a, b, *, c"``: parameter names and kinds, no defaults/annotations (our wrapper removed)."""
    fn = inspect.unwrap(fn, stop=lambda f: not getattr(f, MARK, False))
    parts: list[str] = []
    star = False
    for p in inspect.signature(fn).parameters.values():
        if p.kind is p.VAR_POSITIONAL:
            parts.append("*" + p.name)
            star = True
        elif p.kind is p.VAR_KEYWORD:
            parts.append("**" + p.name)
        else:
            if p.kind is p.KEYWORD_ONLY and not star:
                parts.append("*")
                star = True
            parts.append(p.name)
    return ", ".join(parts)


def signature_problem(target: str) -> str | None:
    """None when ``target`` (a TABLE entry) takes one of its recorded signatures here, else why
    not: code that subclasses a target checks this before relying on it."""
    recorded = {h.target: h.signatures for h in TABLE}.get(target, ())
    try:
        got = signature_of(resolve(target))
    except Exception as e:  # noqa: BLE001  (any failure to import or read it: not usable)
        return f"{target} not importable ({e!r})"
    if got not in recorded:
        return f"{target} takes ({got}), not a signature we built against"
    return None


# ---------------------------------------------------------------- wrapping


def wrap_once(owner: Any, attr: str, make: Callable[[Any], Callable[..., Any]]) -> bool:
    """Replace ``owner.attr`` by ``make(current)`` unless it is already ours; True if installed.

    ``current`` may be None (an empty hook slot such as ``GraphLowering.save_output_code``)."""
    real = getattr(owner, attr, None)  # a classmethod comes bound: the wrapper calls it as is
    if getattr(real, MARK, False):
        return False
    wrapper = make(real)
    if callable(real):
        functools.update_wrapper(wrapper, real)
    setattr(wrapper, MARK, True)
    static = isinstance(inspect.getattr_static(owner, attr, None), (staticmethod, classmethod))
    setattr(owner, attr, staticmethod(wrapper) if static else wrapper)
    return True


@functools.lru_cache(maxsize=None)
def _signature(fn: Callable[..., Any]) -> inspect.Signature:
    return inspect.signature(fn)


def arguments(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> dict[str, Any]:
    """``fn``'s parameters as bound for this call (defaults filled in): read arguments by name."""
    bound = _signature(fn).bind(*args, **kwargs)
    bound.apply_defaults()
    return bound.arguments


@contextlib.contextmanager
def patched(owner: Any, attr: str, value: Any) -> Iterator[None]:
    """A harness patch: ``owner.attr = value`` inside the block only (what ``mock.patch.object`` does)."""
    from unittest import mock

    with mock.patch.object(owner, attr, value):
        yield


# ---------------------------------------------------------------- post-import hooks (vLLM)


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
                _install(fullname, cb, module)

        loader.exec_module = exec_module  # type: ignore[method-assign]  (per-module loader object)
        return spec


_post_import = _PostImportHook()


def _install(name: str, callback: Callable[[ModuleType], None], module: ModuleType) -> None:
    """Run one hook's installer; a target this version lacks (renamed class, moved function)
    leaves that hook out with a warning instead of failing the import of ``name`` -- which would
    break every user of that module, vLLM's own backends included."""
    try:
        callback(module)
    except Exception as e:  # noqa: BLE001
        logging.getLogger("tri_inductor").warning(
            "tri_inductor: hook %s on %s not installed (%s: %s); that module runs unchanged. Tested "
            "versions: %s", getattr(callback, "__name__", callback), name, type(e).__name__, e, TESTED)


def when_imported(name: str, callback: Callable[[ModuleType], None]) -> None:
    """``callback(module)`` now if ``name`` is imported, else right after its first import."""
    module = sys.modules.get(name)
    if module is not None:
        _install(name, callback, module)
        return
    _post_import.pending.setdefault(name, []).append(callback)
    if _post_import not in sys.meta_path:
        sys.meta_path.insert(0, _post_import)


def install_vllm_hooks(plugin: ModuleType) -> None:
    """The vLLM hooks (``plugin`` is ``tri_inductor.vllm_plugin``, which holds what they do),
    each installed when vLLM imports its module."""

    def config(module: ModuleType) -> None:
        wrap_once(module.VllmConfig, "__post_init__", plugin.vllm_config_post_init)

    def compilation(module: ModuleType) -> None:
        wrap_once(module.CompilationConfig, "__post_init__", plugin.compilation_config_post_init)

    def backends(module: ModuleType) -> None:
        wrap_once(module, "make_compiler", plugin.make_compiler_hook)
        wrap_once(module.CompilerManager, "compile", plugin.compiler_manager_compile)

    when_imported("vllm.config.vllm", config)
    when_imported("vllm.v1.attention.backends.registry", plugin.attention_registry)
    when_imported("vllm.config.compilation", compilation)
    when_imported("vllm.compilation.backends", backends)
    when_imported("vllm.model_executor.layers.logits_processor", plugin.logits_processor)


# ---------------------------------------------------------------- version checks


def _minor(version: str) -> tuple[int, int]:
    m = re.match(r"(\d+)\.(\d+)", version)
    return (int(m.group(1)), int(m.group(2))) if m else (0, 0)


def installed_version(package: str) -> str | None:
    module = sys.modules.get(package)
    version = getattr(module, "__version__", None) if module is not None else None
    if version is None:
        try:
            version = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            return None
    return str(version)


def untested_versions(versions: dict[str, str | None] | None = None) -> list[str]:
    """One line per installed package outside :data:`TESTED` (empty: all tested)."""
    out = []
    for package, (lo, hi) in TESTED.items():
        version = installed_version(package) if versions is None else versions.get(package)
        if version is None:
            continue
        if not _minor(lo) <= _minor(version) <= _minor(hi):
            out.append(f"{package} {version} (tested: {lo} to {hi})")
    return out


def version_message(problems: list[str]) -> str:
    return ("tri_inductor has not been tested with " + ", ".join(problems)
            + f"; tested range: {_V}. vLLM's own backends are unaffected; backend 'tri_inductor' may "
            "fail or fall back (strict mode refuses to run).")


# ---------------------------------------------------------------- version shims


def torch_at_least(major: int, minor: int) -> bool:
    import torch

    return _minor(torch.__version__) >= (major, minor)


def vllm_at_least(major: int, minor: int) -> bool:
    version = installed_version("vllm")
    return version is not None and _minor(version) >= (major, minor)


def accepts_keyword(fn: Callable[..., Any], name: str) -> bool:
    """Whether ``fn`` takes a parameter ``name`` (vLLM threads new keyword-only ones through)."""
    try:
        params = _signature(fn).parameters
    except (TypeError, ValueError):
        return False
    return name in params or any(p.kind is p.VAR_KEYWORD for p in params.values())


_ptxas_aligned = False


def same_ptxas_as_inductor() -> None:
    """Point Triton at the ptxas Inductor's own compiles will use (torch's bundled one, through
    ``TRITON_PTXAS_PATH``, as Inductor sets it before its first compile), before any Triton compile
    of ours in this process. Triton keys its cache on the ptxas version it read first: a cold start
    that compiled our kernels before Inductor's first compile keyed them on Triton's own ptxas,
    while a warm start (Inductor first) keyed them on torch's, so every kernel of ours compiled again
    on the first warm start. Idempotent; a user's ``TRITON_PTXAS_PATH`` is kept."""
    global _ptxas_aligned
    if _ptxas_aligned:
        return
    _ptxas_aligned = True
    import os

    before = os.environ.get("TRITON_PTXAS_PATH")
    try:
        from torch._inductor.runtime.compile_tasks import _set_triton_ptxas_path

        _set_triton_ptxas_path()
    except (ImportError, AttributeError):  # another torch: Triton's own choice stands (logged)
        logging.getLogger("tri_inductor").debug("tri_inductor: torch has no _set_triton_ptxas_path")
        return
    if os.environ.get("TRITON_PTXAS_PATH") != before:
        try:
            from triton.backends.nvidia.compiler import get_ptxas_version

            get_ptxas_version.cache_clear()  # a version read from the other ptxas: forget it
        except (ImportError, AttributeError):
            pass


def inductor_folds_narrowing_round_trip() -> bool:
    """torch < 2.13: Inductor's ``pointless_convert`` folds ``x.to(bf16).to(fp32)`` to ``x``
    (rms_norm's chain forms exist only then); from 2.13 the round trip stays in the graph."""
    return not torch_at_least(2, 13)
