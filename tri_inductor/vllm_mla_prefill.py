"""vLLM MLA prefill backend on our Triton varlen attention (``patterns/mla/prefill.py``).

vLLM's MLA layers pick a prefill backend when they are built; on Hopper the only one is
FlashAttention's ``flash_attn_varlen_func`` (a CUDA extension).  This class sits in vLLM's
``MLAPrefillBackendEnum.CUSTOM`` slot (``vllm_mla.register_prefill_slot``) and our config selects
it for MLA models.  When ``vllm_mla``'s ``forward_impl`` hook serves a layer it calls our kernels
directly; this backend covers the layers that hook leaves to vLLM (vLLM's ``forward_mha`` then
calls it), so their prefill attention is Triton too.  Imported by vLLM by class path only.
"""
from __future__ import annotations

from typing import ClassVar

import torch
from vllm.v1.attention.backends.mla.prefill.base import MLADimensions, MLAPrefillBackend

from .patterns.mla.prefill import varlen_attention

MAX_HEAD = 256  # per part (nope, rope, value): the kernel's tiles are sized up to this


class TriMLAPrefillBackend(MLAPrefillBackend):
    supported_mla_dimensions: ClassVar[list[MLADimensions]] = []

    @staticmethod
    def get_name() -> str:
        return "TRI_INDUCTOR"

    @classmethod
    def supports_mla_dimensions(cls, mla_dimensions: MLADimensions) -> bool:
        return all(0 < d <= MAX_HEAD for d in (mla_dimensions.qk_nope_head_dim, mla_dimensions.qk_rope_head_dim,
                                               mla_dimensions.v_head_dim))

    def _run(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_k: torch.Tensor, max_k: int,
             causal: bool, return_lse: bool, out: torch.Tensor | None = None):
        md = self._prefill_metadata
        P = self.qk_nope_head_dim  # k = [k_nope | k_pe]: the kernel reads the two parts as views
        return varlen_attention(q, k[..., :P], k[..., P:], v, md.query_start_loc, cu_k, md.max_query_len, max_k,
                                self.scale, causal, out=out, return_lse=return_lse)

    def run_prefill_new_tokens(self, q, k, v, return_softmax_lse, out=None, output_scale=None):
        if output_scale is not None:  # supports_quant_output is False: vLLM never asks
            raise NotImplementedError("tri_inductor's MLA prefill does not write quantized output")
        md = self._prefill_metadata
        return self._run(q, k, v, md.query_start_loc, md.max_query_len, True, return_softmax_lse, out)

    def run_prefill_context_chunk(self, chunk_idx, q, k, v):
        cc = self._prefill_metadata.chunked_context
        return self._run(q, k, v, cc.cu_seq_lens[chunk_idx], cc.max_seq_lens[chunk_idx], False, True)
