"""The GEMM shapes one tensor-parallel rank runs, as vLLM 0.26 slices a decoder layer.

Pure arithmetic (no torch, no vLLM), so benchmarks and tests can list per-rank shapes without
building a model.  Under ``tensor_parallel_size = tp`` each rank holds:

* column-parallel ``qkv_proj`` (``QKVParallelLinear``): ``heads / tp`` query heads and
  ``kv_heads / tp`` key/value heads, or one replicated kv head when ``tp >= kv_heads``;
* column-parallel ``gate_up_proj`` (``MergedColumnParallelLinear``): ``intermediate / tp`` rows
  of gate and of up;
* row-parallel ``o_proj`` / ``down_proj`` (``RowParallelLinear``): the full output, a ``1/tp``
  slice of the input (their partial sums meet in an all-reduce);
* vocab-parallel ``lm_head`` (``ParallelLMHead``): the vocabulary padded to a multiple of 64,
  then ``1/tp`` of it (the logits are gathered afterwards).

Shapes are ``(N, K)`` of ``out[M, N] = x[M, K] @ W[N, K].T``, the key our GEMM tunes and picks
configs by.  ``tests/test_tp.py`` checks them against vLLM's real layers.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

VOCAB_PADDING = 64  # vllm/model_executor/layers/vocab_parallel_embedding.py: DEFAULT_VOCAB_PADDING_SIZE

COLUMN_PARALLEL = ("qkv", "gate_up")
ROW_PARALLEL = ("o", "down")
VOCAB_PARALLEL = ("lm_head",)


def _divide(total: int, tp: int, what: str) -> int:
    if total % tp:
        raise ValueError(f"{what} = {total} is not divisible by tensor_parallel_size {tp} "
                         "(vLLM refuses this model at that TP size)")
    return total // tp


def pad_vocab(vocab: int, pad_to: int = VOCAB_PADDING) -> int:
    return -(-vocab // pad_to) * pad_to


def kv_heads_per_rank(kv_heads: int, tp: int) -> int:
    """vLLM's ``QKVParallelLinear``: a slice of the kv heads, or one replicated head per rank."""
    if tp >= kv_heads:
        _divide(tp, kv_heads, "tensor_parallel_size over num_key_value_heads")
        return 1
    return _divide(kv_heads, tp, "num_key_value_heads")


def per_rank_gemm_shapes(hidden: int, intermediate: int, heads: int, kv_heads: int, head_dim: int,
                         vocab: int, tp: int = 1) -> dict[str, tuple[int, int]]:
    """{projection: (N, K)} one rank runs: qkv, o, gate_up, down (one decoder layer) and lm_head."""
    if tp < 1:
        raise ValueError(f"tensor_parallel_size must be >= 1, not {tp}")
    q = _divide(heads, tp, "num_attention_heads") * head_dim
    kv = kv_heads_per_rank(kv_heads, tp) * head_dim
    inter = _divide(intermediate, tp, "intermediate_size")
    return {"qkv": (q + 2 * kv, hidden), "o": (hidden, q), "gate_up": (2 * inter, hidden),
            "down": (hidden, inter), "lm_head": (_divide(pad_vocab(vocab), tp, "padded vocab_size"), hidden)}


def hf_gemm_shapes(cfg: Mapping[str, Any], tp: int = 1) -> dict[str, tuple[int, int]]:
    """:func:`per_rank_gemm_shapes` from a Hugging Face ``config.json`` dict."""
    heads = cfg["num_attention_heads"]
    return per_rank_gemm_shapes(hidden=cfg["hidden_size"], intermediate=cfg["intermediate_size"], heads=heads,
                                kv_heads=cfg.get("num_key_value_heads") or heads,
                                head_dim=cfg.get("head_dim") or cfg["hidden_size"] // heads,
                                vocab=cfg["vocab_size"], tp=tp)
