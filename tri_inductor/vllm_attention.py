"""vLLM attention backend: TRITON_ATTN with the attention call on our Triton paged attention.

:class:`TriPagedAttentionBackend` is vLLM's ``TritonAttentionBackend`` (KV-cache layout and
write ``triton_reshape_and_cache_flash``, metadata builder, CUDA-graph support: all vLLM's) whose
impl, :class:`TriPagedAttentionImpl`, sends ``forward`` to
:func:`tri_inductor.patterns.paged_attention.paged_attention`.  Whatever ours does not take
(quantized KV cache, ALiBi, chunked local attention, multimodal prefix ranges, per-sequence
causal flags, fused output quantization, encoder attention) goes to vLLM's own forward, the
reason logged once.  Selected through ``vllm_attention_select`` (vLLM's CUSTOM slot); this
module is imported by vLLM (by class path) only when that backend is in use.
"""
from __future__ import annotations

import logging
from typing import Any

import torch
from vllm.v1.attention.backend import AttentionType
from vllm.v1.attention.backends.triton_attn import (TritonAttentionBackend, TritonAttentionImpl,
                                                    TritonAttentionMetadataBuilder)

from .patterns.paged_attention import decline_reason, paged_attention, prepare_prefill
from .vllm_compile_ahead import queue_attention
from .patterns.paged_attention.ops import warm_variants
from .tuning import device_fault

log = logging.getLogger("tri_inductor.vllm")
_logged: set[str] = set()
# Kernel signatures whose prefill tile and decode split variants are compiled in this process (warm_variants).
_WARMED: set[tuple] = set()


def _log_decline(why: str) -> None:
    if why not in _logged:
        _logged.add(why)
        log.info("tri_inductor: attention runs vLLM's TRITON_ATTN kernel here: %s", why)


def _strict_mode() -> bool:
    """Strict mode of the tri_inductor config being built (vLLM builds impls under it)."""
    from .vllm_config import options_being_built

    try:
        options = options_being_built()[1]
    except Exception:  # noqa: BLE001  (options the config check already reported: default mode here)
        return False
    return bool(options and options.strict)


def layer_decline_reason(impl: Any) -> str | None:
    """What rules ours out for a whole layer (known when vLLM builds its impl)."""
    if getattr(impl, "attn_type", AttentionType.DECODER) != AttentionType.DECODER:
        return f"attention type {impl.attn_type}"
    if getattr(impl, "kv_cache_dtype", "auto") not in ("auto", "bfloat16", "float16"):
        return f"KV cache dtype {impl.kv_cache_dtype}"
    if getattr(impl, "alibi_slopes", None) is not None or getattr(impl, "use_alibi_sqrt", False):
        return "ALiBi"
    if getattr(impl, "chunk_lookback", -1) > -1:
        return "chunked local attention"
    if getattr(impl, "_is_per_token_head_quant", False):
        return "per-token-head quantized KV cache"
    if getattr(impl, "use_td", False):
        return "VLLM_TRITON_USE_TD (tensor-descriptor variant requested)"
    return None


def kv_layout_decline_reason(kv_cache: torch.Tensor, num_kv_heads: int, head_size: int) -> str | None:
    """The cache is not the logical (blocks, KV heads, block size, K|V) our kernels read (the
    version check in vllm_attention_select is what selects us; this catches what it cannot)."""
    if kv_cache.dim() != 4 or kv_cache.shape[1] != num_kv_heads or kv_cache.shape[3] != 2 * head_size:
        return f"KV cache of shape {tuple(kv_cache.shape)}, not (blocks, {num_kv_heads}, block size, {2 * head_size})"
    return None


def max_step_tokens() -> int:
    """The most query tokens one step can have in the config being built (vLLM's
    max_num_batched_tokens; 8192 when unknown)."""
    from .vllm_config import options_being_built

    try:
        cfg = options_being_built()[0]
    except Exception:  # noqa: BLE001  (options the config check already reported)
        cfg = None
    n = getattr(getattr(cfg, "scheduler_config", None), "max_num_batched_tokens", None)
    return int(n) if n else 8192


def can_compile_ahead(query: torch.Tensor) -> bool:
    """A step whose tensors can compile our kernels ahead: on a GPU, outside a CUDA-graph capture."""
    return query.is_cuda and not torch.cuda.is_current_stream_capturing()


def step_decline_reason(md: Any, output_scale: Any, output_block_scale: Any) -> str | None:
    """What rules ours out for one step's metadata."""
    if output_scale is not None or output_block_scale is not None:
        return "fused output quantization"
    if getattr(md, "use_cascade", False):
        return "cascade attention"
    if getattr(md, "mm_prefix_range_tensor", None) is not None:
        return "multimodal prefix ranges"
    if getattr(md, "rswa_prefix_lens", None) is not None:
        return "R-SWA prefix"
    if isinstance(getattr(md, "causal", True), torch.Tensor):
        return "per-sequence causal flags"
    return None


class TriPagedAttentionImpl(TritonAttentionImpl):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._tri_layer_decline = layer_decline_reason(self)
        if self._tri_layer_decline is not None:
            _log_decline(self._tri_layer_decline)
        self._tri_checked: dict[tuple, str | None] = {}
        self._tri_strict = _strict_mode()
        self._tri_max_tokens = max_step_tokens()
        self._tri_warmed: set[tuple] = set()  # this layer's signatures past the warm-up check
        if self._tri_layer_decline is None:  # its prefill tuning's compiles start now, off the critical path
            queue_attention(self.num_heads, self.num_kv_heads, self.head_size)

    def forward(self, layer: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                kv_cache: torch.Tensor, attn_metadata: Any, output: torch.Tensor,
                output_scale: torch.Tensor | None = None,
                output_block_scale: torch.Tensor | None = None) -> torch.Tensor:
        md = attn_metadata
        if md is None or self._tri_layer_decline is not None:
            return super().forward(layer, query, key, value, kv_cache, md, output, output_scale, output_block_scale)
        why = step_decline_reason(md, output_scale, output_block_scale)
        if why is None:
            # vLLM's layout: logical (blocks, kv_heads, block_size, 2 * head) -> K, V (blocks, block_size, kv_heads, head)
            key_cache, value_cache = kv_cache.transpose(1, 2).split(self.head_size, dim=-1)
            sig = (query.dtype, key_cache.dtype, output.dtype, query.stride(-1), output.stride(-1), bool(md.causal))
            why = self._tri_checked.get(sig, "?")
            if why == "?":
                n = md.num_actual_tokens
                why = kv_layout_decline_reason(kv_cache, self.num_kv_heads, self.head_size) or decline_reason(
                    query[:n], key_cache, value_cache, output[:n], md.causal, self.sliding_window, self.sinks)
                self._tri_checked[sig] = why
        if why is not None:
            _log_decline(why)
            return super().forward(layer, query, key, value, kv_cache, md, output, output_scale, output_block_scale)
        n = md.num_actual_tokens
        if sig not in self._tri_warmed and can_compile_ahead(query):
            self._tri_warmed.add(sig)
            key = (sig, tuple(key_cache.shape[1:]), self.sliding_window, bool(self.logits_soft_cap),
                   self.sinks is not None)
            if key not in _WARMED:
                self._warm(key, query[:n], key_cache, value_cache, output[:n], md)
        try:
            paged_attention(query[:n], key_cache, value_cache, output[:n], md.query_start_loc, md.seq_lens,
                            md.block_table, md.max_query_len, md.max_seq_len, self.scale, causal=bool(md.causal),
                            window=self.sliding_window, softcap=self.logits_soft_cap, sinks=self.sinks,
                            check=False)
        except Exception as e:
            # A kernel this device's Triton cannot build (shared memory, registers, an unsupported
            # op) must not stop vLLM: its kernel from now on for these inputs, unless strict. A
            # device fault has lost the CUDA context: nothing can run after it.
            if self._tri_strict or device_fault(e):
                raise
            why = f"our kernel failed ({type(e).__name__}: {str(e)[:200]})"
            self._tri_checked[sig] = why
            log.warning("tri_inductor: attention runs vLLM's TRITON_ATTN kernel here: %s", why)
            return super().forward(layer, query, key, value, kv_cache, md, output, output_scale, output_block_scale)
        return output

    def _warm(self, key: tuple, q: torch.Tensor, key_cache: torch.Tensor, value_cache: torch.Tensor,
              out: torch.Tensor, md: Any) -> None:
        """At the first step a kernel signature meets (vLLM's warm-up, before serving), compile
        its prefill kernel for every tile config a step can pick and its decode kernels for
        every split pad. A failure here only costs the compile at first use (a config that
        cannot compile is declined there)."""
        import time

        from . import cache

        _WARMED.add(key)
        t0 = time.perf_counter()
        try:
            done, failed = warm_variants(q, key_cache, value_cache, out, md.query_start_loc, md.seq_lens,
                                         md.block_table, self.scale, bool(md.causal), self.sliding_window,
                                         self.logits_soft_cap, self.sinks, self._tri_max_tokens)
        except Exception as e:
            if self._tri_strict or device_fault(e):
                raise
            log.warning("tri_inductor: attention kernel variants not compiled ahead (%s: %s); each compiles "
                        "at its first use", type(e).__name__, str(e)[:200])
            return
        cache.progress(f"compiled {done} kernel variants of our paged attention (prefill tiles, decode split "
                       f"pads; head {q.shape[-1]}, {q.shape[1]}/{key_cache.shape[2]} heads) in "
                       f"{time.perf_counter() - t0:.1f} s"
                       + (f"; {len(failed)} did not compile" if failed else ""))


class TriPagedAttentionMetadataBuilder(TritonAttentionMetadataBuilder):
    """vLLM's builder; built once per KV-cache group after the compile and before CUDA-graph
    capture, when the group's attention shape is known: our prefill tiles are tuned here, so
    engine start pays for it, not the first request (measured on an H200 when it was the first
    prefill: 30-40 s per query bucket inside a request)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)  # vLLM's parameters, whatever the version
        model_dtype = getattr(getattr(self.vllm_config, "model_config", None), "dtype", None)
        if (torch.device(self.device).type != "cuda" or self.kv_cache_spec.dtype != model_dtype
                or self.num_heads_q % self.num_heads_kv):
            return  # a quantized cache (our kernel declines it) or no GPU: nothing to tune
        try:
            prepare_prefill(self.num_heads_q // self.num_heads_kv, self.headdim, self.block_size, model_dtype)
        except Exception as e:
            if _strict_mode() or device_fault(e):
                raise
            log.warning("tri_inductor: attention prefill tiles not tuned at start (%s: %s); the heuristic's "
                        "are used", type(e).__name__, str(e)[:200])


class TriPagedAttentionBackend(TritonAttentionBackend):
    """TRITON_ATTN with our kernel; registered in vLLM's CUSTOM slot (``get_name`` says so, which
    is how vLLM's layers map the class back to its enum member)."""

    @staticmethod
    def get_name() -> str:
        return "CUSTOM"

    @staticmethod
    def get_impl_cls() -> type[TriPagedAttentionImpl]:
        return TriPagedAttentionImpl

    @staticmethod
    def get_builder_cls() -> type[TriPagedAttentionMetadataBuilder]:
        return TriPagedAttentionMetadataBuilder
