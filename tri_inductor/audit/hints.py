"""One-line fixes for the non-Triton kernels the auditor finds, keyed by op."""
from __future__ import annotations

_GEMM = ("GEMM left to cuBLAS: keep the `linear` pattern on (tri_inductor::mm) or tri_inductor's "
         "Triton-only GEMM settings (gemm='native' or 'templates'); an Inductor override "
         "max_autotune_gemm_backends other than 'TRITON' brings cuBLAS back")
_SDPA = ("attention fell back to a CUDA SDPA kernel: keep the `attention` pattern on (tri_inductor::attention "
         "replaces scaled_dot_product_attention with or without attn_mask, dropout off, head dim <= 256, "
         "under torch.no_grad()/inference_mode)")
# In a transformer a batched GEMM is attention's q @ k^T or p @ v (a Linear on [B, S, H] is an mm);
# one with a dim of 1 is written as products and a sum by the `linear` family.
_BMM = ("batched GEMM left to cuBLAS, most likely attention's q @ k^T or p @ v: the `attention` pattern "
        "(tri_inductor::attention) takes scaled_dot_product_attention and softmax(q @ k^T * scale [+ mask]) @ v; "
        "written another way, use F.scaled_dot_product_attention. Not attention: " + _GEMM[len("GEMM left to cuBLAS: "):])

HINTS: dict[str, str] = {
    "mm": _GEMM, "addmm": _GEMM, "bmm": _BMM, "baddbmm": _BMM, "addbmm": _GEMM, "_int_mm": _GEMM,
    "_scaled_mm": _GEMM, "matmul": _GEMM, "linear": _GEMM,
    "_scaled_dot_product_flash_attention": _SDPA, "_scaled_dot_product_efficient_attention": _SDPA,
    "_scaled_dot_product_cudnn_attention": _SDPA, "_scaled_dot_product_attention_math": _SDPA,
    "_flash_attention_forward": _SDPA, "_efficient_attention_forward": _SDPA,
    "scaled_dot_product_attention": _SDPA,
    "topk": "torch 2.11 Inductor always falls back for topk/sort/kthvalue/median: keep it out of the "
            "compiled region (e.g. in the sampler) or replace it with a Triton kernel (a MoE router's "
            "top-k, of softmax/sigmoid scores or of anything computed from a gate projection's logits, "
            "is taken by the `moe` family)",
    "histc": "histc has no Triton lowering: the `moe` family takes histc of integer expert ids "
             "(tokens per expert) with integer bounds; others stay ATen",
    "_grouped_mm": "torch._grouped_mm runs CUTLASS: the `moe` family replaces a 2-D x 3-D grouped_mm "
                   "with offsets (the Hugging Face grouped-mm experts) by tri_inductor::grouped_mm",
    "sort": "torch 2.11 Inductor falls back for sort over 512 elements or of dynamic size: keep it out "
            "of the compiled region or make the size static and small",
    "multinomial": "sampling has no Triton lowering: keep it out of the compiled region",
    "nonzero": "data-dependent output size: no Triton lowering; keep it out of the compiled region",
    "convolution": "convolutions go to cuDNN: a depthwise conv1d (weight [C, 1, K], groups=C, integer padding, "
                   "K <= 64: Mamba's and short-conv layers') is rewritten to Triton (depthwise_conv.py); a dense "
                   "or 2-d convolution is not a transformer op tri_inductor replaces",
    "randint": "random ops seed through an ATen call: set Inductor fallback_random=False and keep RNG "
               "out of the compiled region",
}


def hint_for(op: str | None, namespace: str | None = None) -> str:
    from ..vllm_moe import LAYER_OPS  # torch only at import

    if namespace == "vllm" and op in LAYER_OPS:
        return ("vLLM's FusedMoE layer, an opaque op run eagerly inside the compiled piece: its kernels are "
                "not in this graph's code. Under tri_inductor its routing/alignment/activation/sum ops run on "
                "our Triton kernels (tri_inductor/vllm_moe.py) and its expert GEMMs on vLLM's Triton fused_moe; "
                "the runtime census (benchmarks/vllm_census.py) is what proves it")
    if namespace and namespace not in ("aten", "prims"):
        if namespace == "_C" or namespace.startswith("_C_") or namespace == "_moe_C":
            return (f"vLLM CUDA custom op {namespace}.{op}: set compilation_config custom_ops=['none'] "
                    "(the tri_inductor vLLM plugin does this) so vLLM emits the native form our patterns match")
        return (f"custom op {namespace}.{op} runs its own kernel: write it as a torch.library.triton_op "
                "(then Inductor inlines its Triton source) or keep it out of the compiled region")
    base = (op or "").split(".")[0]
    return HINTS.get(base, f"aten.{base} has no Triton lowering in this torch: write a tri_inductor pattern "
                           "for it or keep it out of the compiled region")
