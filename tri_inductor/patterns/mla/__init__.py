"""Multi-head latent attention (DeepSeek-V2/V3 MLA) on Triton only, for vLLM's MLA layers.

vLLM's ``TRITON_MLA`` backend runs its decode attention in Triton, but the rest of an MLA layer
runs eagerly around it: per-head ``torch.bmm`` for the latent up/down projections (cuBLAS), the
KV-cache write and the chunked-context gather (vLLM CUDA ops), FlashAttention for prefill, and
ATen copies, concatenations and fills.  These modules replace each of those:

* ``bmm.py``: per-head batched GEMM on strided views (``W_UK_T``, ``W_UV``);
* ``prefill.py``: variable-length flash attention with a split key (per-head ``k_nope`` plus a
  shared ``k_pe``), a value head size of its own, log-sum-exp out, and the merge of two partial
  results by their log-sum-exp;
* ``layout.py``: the latent KV-cache write, the context gather from the paged cache, strided
  copies and fills.

``tri_inductor/vllm_mla.py`` wires them into vLLM.
"""
