"""vLLM's layer creation starts our tuning's compiles (``tri_inductor.compile_ahead``).

When vLLM builds a model for backend ``tri_inductor`` the GEMM and attention shapes are known
long before they are tuned (at compile, and at engine start for attention and the lm_head): each
unquantized linear layer's weight is created (``UnquantizedLinearMethod.create_weights``), and
the vocabulary embedding's (``UnquantizedEmbeddingMethod.create_weights``: the lm_head's GEMM
shape, tied or not), then the weights are loaded, the model traced and compiled. The wrapper below queues each new weight shape's
tuning candidates, every M bucket up to ``max_num_batched_tokens``, on the compile-ahead thread
as the weight is created; ``TriPagedAttentionImpl`` does the same for its prefill tiles
(``vllm_attention``). A merged column linear of two equal halves (an MLP's gate_up) is queued
as the fused GEMM + activation our gate_up pattern runs it as, with the model's ``hidden_act``.

The wrapper changes nothing of what vLLM does (the weight is created by vLLM's own code, then
only read for its shape) and acts only where tri_inductor is active in this process
(``vllm_moe.activate``) and tuning runs. Declared in ``hooks.TABLE``; tested on vLLM 0.26.0
(and 0.34's signature on the CPU).
"""
from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from . import hooks
from .vllm_moe import is_active

log = logging.getLogger("tri_inductor.vllm")

# Hugging Face ``hidden_act`` -> our fused gate_up activation (patterns/gemm/launch.ACTS)
_ACTS = {"silu": "silu", "swish": "silu", "gelu": "gelu", "gelu_pytorch_tanh": "gelu_tanh",
         "gelu_tanh": "gelu_tanh", "gelu_new": "gelu_tanh"}


def gemm_form(output_partition_sizes: list[int], hidden_act: str | None) -> str:
    """The activation a weight's GEMM is tuned with: a gate_up's (two equal halves, a known
    activation), else "" (the plain GEMM)."""
    sizes = list(output_partition_sizes)
    if len(sizes) == 2 and sizes[0] == sizes[1] and hidden_act in _ACTS:
        return _ACTS[hidden_act]
    return ""


def _ours_being_built() -> Any | None:
    """The tri_inductor VllmConfig vLLM builds layers under in this process, else None."""
    from .vllm_config import options_being_built

    cfg, options = options_being_built()
    return cfg if options is not None else None


def _config() -> tuple[int, int, str | None] | None:
    """(max_num_batched_tokens, max_num_seqs, hidden_act) of the model vLLM is building, or None."""
    try:
        cfg = _ours_being_built()
        if cfg is None:
            return None
        sched = cfg.scheduler_config
        hf = getattr(cfg.model_config, "hf_text_config", None) or getattr(cfg.model_config, "hf_config", None)
        return (int(sched.max_num_batched_tokens), int(sched.max_num_seqs),
                getattr(hf, "hidden_act", None) or getattr(hf, "hidden_activation", None))
    except Exception:  # noqa: BLE001  (no current config: not a model build we can read)
        return None


def create_weights(real: Callable[..., Any], head: bool = False) -> Callable[..., Any]:
    """Wrapper factory for ``UnquantizedLinearMethod.create_weights`` and (``head``) for
    ``UnquantizedEmbeddingMethod.create_weights``: a vocabulary x hidden weight, the lm_head's
    GEMM (eager, one row per sequence: buckets up to ``max_num_seqs``)."""

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        out = real(*args, **kwargs)
        if is_active():
            try:
                a = hooks.arguments(real, *args, **kwargs)
                queue_gemm(int(a["input_size_per_partition"]), list(a["output_partition_sizes"]), a["params_dtype"],
                           head)
            except Exception as e:  # noqa: BLE001  (compiling ahead is an optimisation only)
                log.debug("tri_inductor: no compile ahead for a linear layer: %r", e)
        return out

    return wrapper


def queue_gemm(k: int, output_partition_sizes: list[int], dtype: Any, head: bool = False) -> bool:
    from .patterns.gemm.ops import compile_ahead

    cfg = _config()
    if cfg is None:
        return False
    tokens, seqs, act = cfg
    if head:  # tuned after the compile: behind the shapes the compile needs first
        return compile_ahead(sum(output_partition_sizes), k, dtype, seqs, later=True)
    return compile_ahead(sum(output_partition_sizes), k, dtype, tokens, gemm_form(output_partition_sizes, act))


def queue_attention(num_heads: int, num_kv_heads: int, head_size: int) -> bool:
    """An attention layer of ours was built: its prefill candidates (model dtype, cache block size)."""
    try:
        from .patterns.paged_attention import compile_prefill_ahead

        cfg = _ours_being_built()
        if cfg is None:
            return False
        block_size, dtype = cfg.cache_config.block_size, cfg.model_config.dtype
        if not block_size or num_heads % num_kv_heads:
            return False
        return compile_prefill_ahead(num_heads // num_kv_heads, head_size, int(block_size), dtype)
    except Exception as e:  # noqa: BLE001
        log.debug("tri_inductor: no compile ahead for attention: %r", e)
        return False


def hook_linear(module: Any) -> None:
    hooks.wrap_once(module.UnquantizedLinearMethod, "create_weights", create_weights)


def hook_embedding(module: Any) -> None:
    hooks.wrap_once(module.UnquantizedEmbeddingMethod, "create_weights", lambda real: create_weights(real, head=True))


HOOKS: dict[str, Callable[[Any], None]] = {"vllm.model_executor.layers.linear": hook_linear,
                                           "vllm.model_executor.layers.vocab_parallel_embedding": hook_embedding}
