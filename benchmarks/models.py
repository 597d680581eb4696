"""The model shapes the benchmarks run: Hugging Face ``config.json`` dicts, in one place.

``e2e_vllm.py --model NAME`` writes one of these (with ``load_format="dummy"``: random weights);
``kernel_bench.py --gemm-models`` sweeps the GEMMs each one runs (``gemm_shapes``).
"""
from __future__ import annotations

from typing import Any

_COMMON = dict(torch_dtype="bfloat16", hidden_act="silu", initializer_range=0.02, max_position_embeddings=8192)

MODELS: dict[str, dict[str, Any]] = {
    "qwen2.5-0.5b": dict(_COMMON, architectures=["Qwen2ForCausalLM"], model_type="qwen2", hidden_size=896,
                         intermediate_size=4864, num_attention_heads=14, num_key_value_heads=2,
                         num_hidden_layers=24, vocab_size=151936, rms_norm_eps=1e-6, rope_theta=1000000.0,
                         tie_word_embeddings=True, bos_token_id=151643, eos_token_id=151643),
    "llama-3.2-1b": dict(_COMMON, architectures=["LlamaForCausalLM"], model_type="llama", hidden_size=2048,
                         intermediate_size=8192, num_attention_heads=32, num_key_value_heads=8, head_dim=64,
                         num_hidden_layers=16, vocab_size=128256, rms_norm_eps=1e-5, rope_theta=500000.0,
                         tie_word_embeddings=True, attention_bias=False, mlp_bias=False,
                         bos_token_id=128000, eos_token_id=128001),
    "qwen3-4b": dict(_COMMON, architectures=["Qwen3ForCausalLM"], model_type="qwen3", hidden_size=2560,
                     intermediate_size=9728, num_attention_heads=32, num_key_value_heads=8, head_dim=128,
                     num_hidden_layers=36, vocab_size=151936, rms_norm_eps=1e-6, rope_theta=1000000.0,
                     tie_word_embeddings=True, attention_bias=False, bos_token_id=151643, eos_token_id=151645),
    "qwen2.5-7b": dict(_COMMON, architectures=["Qwen2ForCausalLM"], model_type="qwen2", hidden_size=3584,
                       intermediate_size=18944, num_attention_heads=28, num_key_value_heads=4,
                       num_hidden_layers=28, vocab_size=152064, rms_norm_eps=1e-6, rope_theta=1000000.0,
                       tie_word_embeddings=False, bos_token_id=151643, eos_token_id=151643),
    "llama-3-8b": dict(_COMMON, architectures=["LlamaForCausalLM"], model_type="llama", hidden_size=4096,
                       intermediate_size=14336, num_attention_heads=32, num_key_value_heads=8, head_dim=128,
                       num_hidden_layers=32, vocab_size=128256, rms_norm_eps=1e-5, rope_theta=500000.0,
                       tie_word_embeddings=False, attention_bias=False, mlp_bias=False,
                       bos_token_id=128000, eos_token_id=128001),
    "llama-3-70b": dict(_COMMON, architectures=["LlamaForCausalLM"], model_type="llama", hidden_size=8192,
                        intermediate_size=28672, num_attention_heads=64, num_key_value_heads=8, head_dim=128,
                        num_hidden_layers=80, vocab_size=128256, rms_norm_eps=1e-5, rope_theta=500000.0,
                        tie_word_embeddings=False, attention_bias=False, mlp_bias=False,
                        bos_token_id=128000, eos_token_id=128001),
    "qwen3-32b": dict(_COMMON, architectures=["Qwen3ForCausalLM"], model_type="qwen3", hidden_size=5120,
                      intermediate_size=25600, num_attention_heads=64, num_key_value_heads=8, head_dim=128,
                      num_hidden_layers=64, vocab_size=151936, rms_norm_eps=1e-6, rope_theta=1000000.0,
                      tie_word_embeddings=False, attention_bias=False, bos_token_id=151643, eos_token_id=151645),
}
# Mixture-of-experts shapes: end to end only (their dense GEMMs are the attention's and the
# logits'; the experts are benchmarks/moe_kernels.py's). vLLM's own MoE path needs CUDA ops that
# .gpu-env lacks: the baseline engine gets torch versions of them (benchmarks/_torch_moe_ops.py).
MOE_MODELS: dict[str, dict[str, Any]] = {
    "qwen3-30b-a3b": dict(_COMMON, architectures=["Qwen3MoeForCausalLM"], model_type="qwen3_moe", hidden_size=2048,
                          intermediate_size=6144, moe_intermediate_size=768, num_experts=128, num_experts_per_tok=8,
                          norm_topk_prob=True, decoder_sparse_step=1, mlp_only_layers=[], num_attention_heads=32,
                          num_key_value_heads=4, head_dim=128, num_hidden_layers=48, vocab_size=151936,
                          rms_norm_eps=1e-6, rope_theta=1000000.0, tie_word_embeddings=False, attention_bias=False,
                          use_sliding_window=False, sliding_window=None, bos_token_id=151643, eos_token_id=151645),
}
E2E_MODELS: dict[str, dict[str, Any]] = {**MODELS, **MOE_MODELS}
DEFAULT_MODEL = "llama-3-8b"
# Where two engines side by side do not fit one card (weights alone > ~40% of it) at TP=1.
SEQUENTIAL = {"qwen3-32b", "llama-3-70b"}


def config(name: str, layers: int | None = None, vocab: int | None = None) -> dict[str, Any]:
    if name not in E2E_MODELS:
        raise KeyError(f"unknown model {name!r}; known: {', '.join(E2E_MODELS)}")
    cfg = dict(E2E_MODELS[name])
    if layers:
        cfg["num_hidden_layers"] = int(layers)
    if vocab:
        cfg["vocab_size"] = int(vocab)
    return cfg


def is_moe(cfg: dict[str, Any]) -> bool:
    return any(cfg.get(k) for k in ("num_experts", "num_local_experts", "n_routed_experts"))


def head_dim(cfg: dict[str, Any]) -> int:
    return cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]


def gemm_shapes(cfg: dict[str, Any], tp: int = 1) -> dict[str, tuple[int, int]]:
    """{projection: (N, K)} of one decoder layer and the logits as one tensor-parallel rank runs
    them (q/k/v fused, gate/up fused; vLLM's splitting rules: tri_inductor.tp_shapes)."""
    from tri_inductor.tp_shapes import hf_gemm_shapes

    return hf_gemm_shapes(cfg, tp)
