"""vLLM's MLA layers (DeepSeek-V2/V3 multi-head latent attention) on Triton only, for models
served with ``{"backend": "tri_inductor"}``.

vLLM runs an MLA layer's attention eagerly between compiled pieces (the opaque
``unified_mla_kv_cache_update`` / ``unified_mla_attention_with_output`` ops).  With ``TRITON_MLA``
(which our config selects for MLA models) its decode attention is vLLM's Triton
``decode_attention_fwd``; what runs around it is not Triton.  Each hook below replaces one piece:

| vLLM (replaced)                                      | what it runs in vLLM                         | ours                              |
|------------------------------------------------------|----------------------------------------------|-----------------------------------|
| ``MLAAttention.forward_impl``                        | ``torch.bmm`` x2 (cuBLAS), ``torch.cat`` and  | ``patterns/mla``: ``head_bmm``,   |
|                                                      | ``torch.zeros`` (ATen); prefill: ``kv_b_proj``| ``copy_``, our GEMM for           |
|                                                      | (cuBLAS), the k concat (ATen), FlashAttention | ``kv_b_proj``, ``varlen_attention``|
|                                                      | (CUDA), ``mask_empty_context`` (ATen zeros)  | and ``merge_states``; decode:     |
|                                                      |                                              | vLLM's Triton kernel, as before   |
| ``vllm._custom_ops.concat_and_cache_mla``            | ``_C_cache_ops`` (CUDA)                      | ``layout.concat_and_cache``       |
| ``vllm._custom_ops.gather_and_maybe_dequant_cache``  | ``_C_cache_ops`` (CUDA)                      | ``layout.gather_cache``           |
| MLA prefill backend ``CUSTOM`` slot (registered)     | FlashAttention ``flash_attn_varlen_func``    | ``vllm_mla_prefill.py``           |

Every hook passes through to vLLM unless :func:`activate` was called (the plugin does, in a
process that builds a ``tri_inductor`` VllmConfig) and the call is one we cover: bf16/fp16
latent cache (``kv_cache_dtype`` auto), no fused output quantization, no decode/prefill context
parallelism, no sparse MLA, an unquantized ``kv_b_proj``, vLLM's ``TritonMLAImpl``.  Anything
else runs vLLM's code, the reason logged once.  Tested on vLLM 0.26.0: :data:`SERVED` holds the
signatures our replacements implement; another vLLM (0.34 added arguments to ``forward_impl`` and
``concat_and_cache_mla`` and changed the prefill backend's context call) leaves every MLA piece to
vLLM.  The wrappers take any arguments and pass them through untouched when they do not serve.
"""
from __future__ import annotations

import functools
import logging
from typing import Any

import torch

log = logging.getLogger("tri_inductor.vllm")

_ACTIVE = False
_logged: set[str] = set()
PREFILL_BACKEND_PATH = "tri_inductor.vllm_mla_prefill.TriMLAPrefillBackend"
PREFILL_REGISTRY = "vllm.v1.attention.backends.mla.prefill.registry"
CACHE_DTYPES = ("auto", "bfloat16", "float16")

_MLA = "vllm.model_executor.layers.attention.mla_attention:MLAAttention.forward_impl"
_PREFILL_BASE = "vllm.v1.attention.backends.mla.prefill.base:MLAPrefillBackend."
# What our replacements implement and rely on (vLLM 0.26); hooks.TABLE also records the other
# signatures seen (the upgrade tripwire).
SERVED: dict[str, str] = {
    _MLA: ("self, q, k_c_normed, k_pe, kv_cache, attn_metadata, output, output_scale, output_block_scale, "
           "quant_group_size, quant_scale_ue8m0, quant_col_major, quant_tma_aligned"),
    "vllm._custom_ops:concat_and_cache_mla": "kv_c, k_pe, kv_cache, slot_mapping, kv_cache_dtype, scale",
    "vllm._custom_ops:gather_and_maybe_dequant_cache": (
        "src_cache, dst, block_table, cu_seq_lens, token_to_seq, num_tokens, kv_cache_dtype, scale, seq_starts"),
    _PREFILL_BASE + "run_prefill_new_tokens": "self, q, k, v, return_softmax_lse, out, output_scale",
    _PREFILL_BASE + "run_prefill_context_chunk": "self, chunk_idx, q, k, v",
    "vllm.v1.attention.ops.triton_decode_attention:decode_attention_fwd": (
        "q, k_buffer, v_buffer, o, lse, req_to_token, b_seq_len, attn_logits, num_kv_splits, sm_scale, "
        "page_size, logit_cap, k_scale, v_scale, is_mla"),
}


@functools.cache
def support_problem() -> str | None:
    """None when this vLLM's MLA pieces have the signatures we implement, else why not (then every
    hook passes through and the config leaves the prefill backend to vLLM)."""
    from . import hooks

    for target, want in SERVED.items():
        try:
            got = hooks.signature_of(hooks.resolve(target))
        except Exception as e:  # noqa: BLE001  (not importable: not usable)
            return f"{target} not importable ({e!r})"
        if got != want:
            return f"{target} takes ({got}); ours implements vLLM 0.26's ({want})"
    return None


def activate(on: bool = True) -> None:
    """Route the hooked MLA pieces to our kernels in this process (the plugin: a tri_inductor model)."""
    global _ACTIVE
    _ACTIVE = on


def _log_decline(why: str) -> None:
    if why not in _logged:
        _logged.add(why)
        log.info("tri_inductor: this MLA layer runs vLLM's own code (not Triton only): %s", why)


# ---------------------------------------------------------------- decline rules
def layer_decline_reason(layer: Any) -> str | None:
    """What keeps a whole MLA layer on vLLM's code (fixed once the model is built)."""
    try:
        from vllm.v1.attention.backends.mla.triton_mla import TritonMLAImpl
    except ImportError as e:
        return f"no TRITON_MLA in this vLLM ({e})"
    impl = getattr(layer, "impl", None)
    if not isinstance(impl, TritonMLAImpl):
        return f"attention impl {type(impl).__name__} (ours covers TRITON_MLA)"
    if getattr(layer, "kv_cache_dtype", "auto") not in CACHE_DTYPES:
        return f"KV cache dtype {layer.kv_cache_dtype}"
    if getattr(impl, "is_sparse", False):
        return "sparse MLA"
    if getattr(layer, "use_pcp", False) or getattr(impl, "dcp_world_size", 1) > 1:
        return "context parallelism"
    if getattr(layer, "q_pad_num_heads", None) is not None:
        return "padded query heads"
    if getattr(layer, "is_aiter_triton_fp4_bmm_enabled", False) or \
            getattr(layer, "is_aiter_triton_fp8_bmm_enabled", False):
        return "AITER quantized bmm"
    for name in ("W_UK_T", "W_UV"):
        if not isinstance(getattr(layer, name, None), torch.Tensor):
            return f"no {name} (weights not post-processed as unquantized)"
    w = _kv_b_weight(layer)
    if w is None:
        return "quantized kv_b_proj"
    if w.dtype != layer.W_UK_T.dtype:
        return f"kv_b_proj weight dtype {w.dtype}, latent projections {layer.W_UK_T.dtype}"
    return None


def _kv_b_weight(layer: Any) -> torch.Tensor | None:
    """``kv_b_proj``'s [N * (P + V), L] weight when it is a plain matrix (None: quantized)."""
    from vllm.model_executor.layers.linear import UnquantizedLinearMethod

    proj = getattr(layer, "kv_b_proj", None)
    if proj is None or not isinstance(getattr(proj, "quant_method", None), UnquantizedLinearMethod):
        return None
    w = getattr(proj, "weight", None)
    return w if isinstance(w, torch.Tensor) and w.dim() == 2 else None


def step_decline_reason(layer: Any, q: torch.Tensor, kv_cache: torch.Tensor, output: torch.Tensor,
                        output_scale: Any, output_block_scale: Any) -> str | None:
    if output_scale is not None or output_block_scale is not None or output.dtype != q.dtype:
        return "fused output quantization"
    if kv_cache.numel() and kv_cache.dtype != q.dtype:
        return f"KV cache dtype {kv_cache.dtype} with {q.dtype} queries"
    if layer.W_UK_T.dtype != q.dtype:
        return f"latent projections in {layer.W_UK_T.dtype} with {q.dtype} queries"
    return None


# ---------------------------------------------------------------- MLAAttention.forward_impl
def forward_impl_hook(real):
    """Wrapper factory for ``MLAAttention.forward_impl``."""

    def forward_impl(self, *args, **kwargs):
        if not _ACTIVE:
            return real(self, *args, **kwargs)
        why = support_problem() or _layer_reason(self)
        if why is None:
            from . import hooks

            a = hooks.arguments(real, self, *args, **kwargs)
            if a["attn_metadata"] is not None and getattr(self.impl, "dcp_world_size", 1) == -1:
                from vllm.distributed.parallel_state import get_dcp_group  # vLLM sets it on the first call too

                self.impl.dcp_world_size = get_dcp_group().world_size
            why = step_decline_reason(self, a["q"], a["kv_cache"], a["output"], a["output_scale"],
                                      a["output_block_scale"])
            if why is None:
                return triton_forward(self, a["q"], a["k_c_normed"], a["k_pe"], a["kv_cache"], a["attn_metadata"],
                                      a["output"])
        _log_decline(why)
        return real(self, *args, **kwargs)
    return forward_impl


_REASON = "_tri_inductor_mla_decline"


def _layer_reason(layer: Any) -> str | None:
    if hasattr(layer, _REASON):
        return getattr(layer, _REASON)
    why = layer_decline_reason(layer)
    setattr(layer, _REASON, why)
    return why


def triton_forward(layer: Any, q: torch.Tensor, kv_c: torch.Tensor, k_pe: torch.Tensor,
                   kv_cache: torch.Tensor, md: Any, output: torch.Tensor) -> torch.Tensor:
    """``MLAAttention.forward_impl`` for the cases we cover, every kernel Triton."""
    from .patterns.mla.layout import fill_

    if md is None:  # profile run: vLLM sizes the chunked-context peak with an empty tensor
        _ = torch.empty((layer.chunked_prefill_workspace_size, layer.num_heads,
                         layer.qk_nope_head_dim + layer.v_head_dim), device=kv_c.device, dtype=kv_c.dtype)
        fill_(output, 0)
        return output
    n = md.num_actual_tokens
    nd = md.num_decode_tokens
    out = output[:n]  # inputs and output may be padded for CUDA graphs
    if k_pe.dim() == 2:
        k_pe = k_pe.unsqueeze(1)
    if n > nd:
        prefill(layer, q[nd:n], kv_c[nd:n], k_pe[nd:n], kv_cache, md, out[nd:])
    if nd > 0:
        decode(layer, q[:nd], kv_cache, md, out[:nd])
    return output


def decode(layer: Any, q: torch.Tensor, kv_cache: torch.Tensor, md: Any, out: torch.Tensor) -> None:
    """Decode tokens: the query's latent projection, vLLM's Triton MLA decode kernel, the value
    projection, as ``forward_impl`` + ``TritonMLAImpl.forward_mqa`` do, with our kernels for the
    bmm, the concat and no zero fills (the decode kernel's second stage writes every element)."""
    import vllm.envs as envs
    from vllm.v1.attention.backends.mla import triton_mla
    from vllm.v1.attention.ops.triton_decode_attention import decode_attention_fwd

    from .patterns.mla.bmm import head_bmm
    from .patterns.mla.layout import copy_

    impl = layer.impl
    B, N = q.shape[0], q.shape[1]
    P, L, V = layer.qk_nope_head_dim, layer.kv_lora_rank, layer.v_head_dim
    R = q.shape[2] - P
    qbuf = torch.empty((B, N, L + R), dtype=q.dtype, device=q.device)
    head_bmm(q[..., :P], layer.W_UK_T, out=qbuf[..., :L])
    copy_(qbuf[..., L:], q[..., P:])
    o = torch.empty((B, N, L), dtype=q.dtype, device=q.device)
    lse = torch.empty((B, N), dtype=q.dtype, device=q.device)
    splits = 1 if envs.VLLM_BATCH_INVARIANT else triton_mla._compute_num_kv_splits(md.max_seq_len, impl._sm_count)
    shape = (B, N, splits, L + 1)  # +1: each split's log-sum-exp, for the second stage
    if triton_mla.is_workspace_manager_initialized():
        (logits,) = triton_mla.current_workspace_manager().get_simultaneous((shape, torch.float32))
    else:
        logits = torch.empty(shape, dtype=torch.float32, device=q.device)
    cache = kv_cache.unsqueeze(2)
    decode_attention_fwd(qbuf, cache, cache[..., :L], o, lse, md.decode.block_table, md.decode.seq_lens, logits,
                         splits, impl.scale, cache.size(1), k_scale=layer._k_scale, v_scale=layer._k_scale,
                         is_mla=True)
    head_bmm(o, layer.W_UV, out=out.view(B, N, V))


def _up_project(layer: Any, kv_c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``kv_b_proj(kv_c)`` on our GEMM, split into (k_nope, v) views [T, N, P] / [T, N, V]."""
    from .patterns.gemm.ops import mm_launch

    w = _kv_b_weight(layer)
    bias = getattr(layer.kv_b_proj, "bias", None)
    kv = mm_launch(kv_c, w.t(), bias).view(-1, layer.num_heads, layer.qk_nope_head_dim + layer.v_head_dim)
    return kv[..., :layer.qk_nope_head_dim], kv[..., layer.qk_nope_head_dim:]


def prefill(layer: Any, q: torch.Tensor, kv_c: torch.Tensor, k_pe: torch.Tensor, kv_cache: torch.Tensor,
            md: Any, out: torch.Tensor) -> None:
    """Prefill tokens: attention over the new tokens (causal) and, for requests with cached
    context, over that context chunk by chunk (gathered from the paged cache), merged by
    log-sum-exp, as ``forward_mha`` / ``_compute_prefill_context`` do."""
    from .patterns.mla.prefill import merge_states, varlen_attention

    pm = md.prefill
    scale = layer.impl.scale
    k_nope, v = _up_project(layer, kv_c)
    o = out.view(-1, layer.num_heads, layer.v_head_dim)
    cc = pm.chunked_context
    if cc is None:
        varlen_attention(q, k_nope, k_pe, v, pm.query_start_loc, pm.query_start_loc, pm.max_query_len,
                         pm.max_query_len, scale, True, out=o)
        return
    new_o, new_lse = varlen_attention(q, k_nope, k_pe, v, pm.query_start_loc, pm.query_start_loc,
                                      pm.max_query_len, pm.max_query_len, scale, True, return_lse=True)
    ctx_o, ctx_lse = context(layer, q, kv_cache, pm, scale)
    merge_states(o, None, ctx_o, ctx_lse, new_o, new_lse, rows_with_a=cc.prefill_tokens_with_context)


def context(layer: Any, q: torch.Tensor, kv_cache: torch.Tensor, pm: Any, scale: float):
    """Attention of the prefill queries over their cached context, one workspace chunk at a time.
    A request with no context in a chunk gets output 0 and log-sum-exp -inf from our kernel, so
    vLLM's ``mask_empty_context`` (ATen zeros) is not needed."""
    from .patterns.mla.layout import gather_cache
    from .patterns.mla.prefill import merge_states, varlen_attention

    cc = pm.chunked_context
    L = layer.kv_lora_rank
    acc = acc_lse = spare = spare_lse = None
    for i in range(len(cc.seq_tot)):
        toks = cc.seq_tot[i]
        gather_cache(kv_cache, cc.workspace, pm.block_table, cc.cu_seq_lens[i], cc.token_to_seq[i],
                     cc.chunk_total_token[i], cc.starts[i])
        chunk = cc.workspace[:toks]
        k_nope, v = _up_project(layer, chunk[..., :L])
        o, lse = varlen_attention(q, k_nope, chunk[..., L:].unsqueeze(1), v, pm.query_start_loc,
                                  cc.cu_seq_lens[i], pm.max_query_len, cc.max_seq_lens[i], scale, False,
                                  return_lse=True)
        if acc is None:
            acc, acc_lse = o, lse
            continue
        if spare is None:
            spare, spare_lse = torch.empty_like(acc), torch.empty_like(acc_lse)
        merge_states(spare, spare_lse, acc, acc_lse, o, lse)
        acc, spare, acc_lse, spare_lse = spare, acc, spare_lse, acc_lse
    return acc, acc_lse


# ---------------------------------------------------------------- vllm._custom_ops
def concat_and_cache_hook(real):
    def concat_and_cache_mla(*args, **kwargs):
        if _ACTIVE and support_problem() is None:
            from . import hooks

            a = hooks.arguments(real, *args, **kwargs)
            if a["kv_cache_dtype"] in CACHE_DTYPES and a["kv_cache"].dtype == a["kv_c"].dtype:
                from .patterns.mla.layout import concat_and_cache

                return concat_and_cache(a["kv_c"], a["k_pe"], a["kv_cache"], a["slot_mapping"])
        return real(*args, **kwargs)
    return concat_and_cache_mla


def gather_cache_hook(real):
    def gather_and_maybe_dequant_cache(*args, **kwargs):
        if _ACTIVE and support_problem() is None:
            from . import hooks

            a = hooks.arguments(real, *args, **kwargs)
            if a["kv_cache_dtype"] in CACHE_DTYPES and a["src_cache"].dtype == a["dst"].dtype:
                from .patterns.mla.layout import gather_cache

                return gather_cache(a["src_cache"], a["dst"], a["block_table"], a["cu_seq_lens"],
                                    a["token_to_seq"], a["num_tokens"], a["seq_starts"])
        return real(*args, **kwargs)
    return gather_and_maybe_dequant_cache


# ---------------------------------------------------------------- MLA prefill backend slot
def register_prefill_slot(registry: Any) -> bool:
    """Our Triton MLA prefill into vLLM's ``MLAPrefillBackendEnum.CUSTOM`` slot unless another
    package holds it (True: the slot is ours).  Selected only by a tri_inductor config."""
    from .vllm_attention_select import claim_custom_slot

    return claim_custom_slot(registry, "MLAPrefillBackendEnum", "_MLA_PREFILL_OVERRIDES",
                             "register_mla_prefill_backend", PREFILL_BACKEND_PATH)


def prefill_registry(module: Any) -> None:
    """When vLLM imports its MLA prefill registry (every process: workers build the layers)."""
    register_prefill_slot(module)


# ---------------------------------------------------------------- install
def hook_custom_ops(module: Any) -> None:
    from . import hooks

    hooks.wrap_once(module, "concat_and_cache_mla", concat_and_cache_hook)
    hooks.wrap_once(module, "gather_and_maybe_dequant_cache", gather_cache_hook)


def hook_mla_attention(module: Any) -> None:
    from . import hooks

    hooks.wrap_once(module.MLAAttention, "forward_impl", forward_impl_hook)


# module vLLM imports -> the hook to apply then (vllm_plugin.register)
HOOKS = {
    "vllm._custom_ops": hook_custom_ops,
    "vllm.model_executor.layers.attention.mla_attention": hook_mla_attention,
    PREFILL_REGISTRY: prefill_registry,
}
