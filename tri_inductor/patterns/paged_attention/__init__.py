"""Our Triton paged attention over vLLM's TRITON_ATTN KV cache (issue 26).

``paged_attention(q, k_cache, v_cache, out, cu_seqlens_q, seq_lens, block_table, max_seqlen_q,
max_seqlen_k, scale, causal=True, window=None, softcap=0.0, sinks=None)`` -> ``out``: see
:func:`.ops.paged_attention`.  Modules: ``decode`` (split-KV decode + log-sum-exp reduce),
``prefill`` (prefill / chunked prefill, GQA rows packed per KV head), ``_common`` (device
helpers), ``launch`` (tiles, split count from the SM count), ``tuning`` (prefill tiles measured per
shape), ``ops`` (entry point, declines, start-time tuning),
``reference`` (float64).  vLLM integration: ``tri_inductor.vllm_attention``.
"""
from __future__ import annotations

from .decode import paged_attn_decode_kernel, paged_attn_reduce_kernel
from .ops import compile_prefill_ahead, decline_reason, paged_attention, prepare_prefill, window_keys
from .prefill import paged_attn_prefill_kernel

KERNELS = (paged_attn_decode_kernel, paged_attn_reduce_kernel, paged_attn_prefill_kernel)

__all__ = ["KERNELS", "compile_prefill_ahead", "decline_reason", "paged_attention", "prepare_prefill", "window_keys"]
