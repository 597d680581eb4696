"""One-line fixes for the non-Triton kernels the auditor finds, keyed by op."""
from __future__ import annotations

_GEMM = ("GEMM left to cuBLAS: keep the `linear` pattern on (tri_inductor::mm) or tri_inductor's "
         "Triton-only GEMM settings (gemm='native' or 'templates'); an Inductor override "
         "max_autotune_gemm_backends other than 'TRITON' brings cuBLAS back")
_SDPA = ("attention fell back to a CUDA SDPA kernel: keep the `attention` pattern on (tri_inductor::attention "
         "replaces scaled_dot_product_attention with or without attn_mask, dropout off, head dim <= 256, "
         "under torch.no_grad()/inference_mode)")
# In a transformer a batched GEMM is attention's q @ k^T or p @ v (a Linear on [B, S, H] is an mm).
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
            "compiled region (e.g. in the sampler) or replace it with a Triton kernel",
    "sort": "torch 2.11 Inductor falls back for sort over 512 elements or of dynamic size: keep it out "
            "of the compiled region or make the size static and small",
    "multinomial": "sampling has no Triton lowering: keep it out of the compiled region",
    "nonzero": "data-dependent output size: no Triton lowering; keep it out of the compiled region",
    "convolution": "convolutions go to cuDNN: not a transformer op tri_inductor replaces",
    "randint": "random ops seed through an ATen call: set Inductor fallback_random=False and keep RNG "
               "out of the compiled region",
}


def hint_for(op: str | None, namespace: str | None = None) -> str:
    if namespace and namespace not in ("aten", "prims"):
        if namespace == "_C" or namespace.startswith("_C_") or namespace == "_moe_C":
            return (f"vLLM CUDA custom op {namespace}.{op}: set compilation_config custom_ops=['none'] "
                    "(the tri_inductor vLLM plugin does this) so vLLM emits the native form our patterns match")
        return (f"custom op {namespace}.{op} runs its own kernel: write it as a torch.library.triton_op "
                "(then Inductor inlines its Triton source) or keep it out of the compiled region")
    base = (op or "").split(".")[0]
    return HINTS.get(base, f"aten.{base} has no Triton lowering in this torch: write a tri_inductor pattern "
                           "for it or keep it out of the compiled region")
