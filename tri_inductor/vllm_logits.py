"""The logits projection (lm_head) on our Triton GEMM.

vLLM computes logits outside the compiled graph, eagerly: ``LogitsProcessor._apply_head`` ->
``UnquantizedEmbeddingMethod.apply`` -> ``F.linear`` -> cuBLAS.  We wrap ``_apply_head`` (both
``forward`` and ``get_top_tokens`` go through it) to call ``tri_inductor::mm`` (or ``addmm`` with
a bias) from ``tri_inductor/patterns/linear.py``.

The hooks (declared in :mod:`tri_inductor.hooks`, installed by ``vllm_plugin``) are process-wide
but each ``LogitsProcessor`` decides once, when it is built (vLLM builds models under
``set_current_vllm_config``), whether it belongs to a ``tri_inductor`` model; a process running
vLLM's own backend keeps cuBLAS.
"""
from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import torch

log = logging.getLogger("tri_inductor.vllm")

_FLAG = "_tri_inductor_head"
_STRICT = "_tri_inductor_strict"
_MAX_ROWS = "_tri_inductor_max_rows"  # logits rows per step to warm up for (max_num_seqs)
_WARMED = "_tri_inductor_warmed"
_warned: set[str] = set()


def init_hook(real_init: Callable[..., None]) -> Callable[..., None]:
    """Wrapper factory for ``LogitsProcessor.__init__`` (installed by
    ``vllm_plugin.logits_processor``): each processor decides once whether its model uses our
    backend.  A model of ours being built is also where a worker process starts our torch hooks and the warm-start audit: vLLM >= 0.27
    loads warm starts from its AOT artifact without calling our compiler."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        real_init(self, *args, **kwargs)
        from .vllm_config import options_being_built

        cfg, options = options_being_built()  # another vLLM: (None, None), its lm_head path kept
        ours = options is not None
        setattr(self, _FLAG, ours)
        setattr(self, _STRICT, bool(options and options.strict))
        sched = getattr(cfg, "scheduler_config", None) if ours else None
        setattr(self, _MAX_ROWS, int(getattr(sched, "max_num_seqs", 0) or 0))
        if ours:
            from . import audit
            from .vllm_compiler import audit_warm_loads

            audit.install_hooks()
            audit_warm_loads(options)

    return __init__


def apply_head_hook(real_apply: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
    """Wrapper factory for ``LogitsProcessor._apply_head`` (``forward`` and ``get_top_tokens``)."""

    def _apply_head(self, lm_head, hidden_states: torch.Tensor, embedding_bias: torch.Tensor | None):
        if getattr(self, _FLAG, False):
            logits = triton_lm_head(self, lm_head, hidden_states, embedding_bias)
            if logits is not None:
                return logits
        return real_apply(self, lm_head, hidden_states, embedding_bias)

    return _apply_head


def _fallback(processor: Any, reason: str) -> None:
    """Why this lm_head stays on vLLM's path: an error in strict mode, else one warning."""
    msg = f"tri_inductor: the logits projection stays on vLLM's (cuBLAS) path: {reason}"
    if getattr(processor, _STRICT, False):
        raise RuntimeError(msg + " (strict mode)")
    if reason not in _warned:
        _warned.add(reason)
        log.warning(msg)


def _ops():
    if not hasattr(torch.ops.tri_inductor, "mm"):
        from .patterns.gemm import ops  # noqa: F401  (registers tri_inductor::mm / addmm)
    return torch.ops.tri_inductor


def is_unquantized(quant_method: Any) -> bool:
    """An lm_head whose weight is a plain ``[vocab, hidden]`` matrix: vLLM's unquantized embedding
    method, or (vLLM >= 0.33: an unquantized lm_head in a quantized model) its unquantized
    linear method."""
    from vllm.model_executor.layers.vocab_parallel_embedding import UnquantizedEmbeddingMethod

    if isinstance(quant_method, UnquantizedEmbeddingMethod):
        return True
    try:
        from vllm.model_executor.layers.linear import UnquantizedLinearMethod
    except ImportError:
        return False
    return isinstance(quant_method, UnquantizedLinearMethod)


def warm_up(head: Callable[[torch.Tensor], torch.Tensor], flat: torch.Tensor, max_rows: int) -> None:
    """Compile the lm_head GEMM for every M bucket a step can hit (1..max_num_seqs rows) on the
    first call (vLLM's start-up dummy run): otherwise a batch size first seen while serving
    JIT-compiles its kernel then (~1 s stall, measured as mixed-workload throughput noise)."""
    from .patterns.gemm.ops import eager_warm_sizes

    for m in eager_warm_sizes(max(max_rows, flat.shape[0], 1)):
        head(torch.zeros((m, flat.shape[1]), dtype=flat.dtype, device=flat.device))


def triton_lm_head(processor: Any, lm_head: Any, hidden_states: torch.Tensor,
                   embedding_bias: torch.Tensor | None) -> torch.Tensor | None:
    """``hidden_states @ lm_head.weight.T (+ bias)`` on our Triton GEMM, or None to fall back."""
    if not is_unquantized(getattr(lm_head, "quant_method", None)):
        _fallback(processor, f"quantized lm_head ({type(getattr(lm_head, 'quant_method', None)).__name__})")
        return None
    weight = lm_head.weight
    head_dtype = getattr(processor, "head_dtype", None)
    if (head_dtype is not None and head_dtype != hidden_states.dtype) or weight.dtype != hidden_states.dtype:
        # fp32 heads would need an fp32-accumulating mixed-dtype GEMM: not in our contract yet.
        _fallback(processor, f"head dtype {head_dtype} / weight {weight.dtype} / input {hidden_states.dtype}")
        return None
    try:
        ops = _ops()
    except ImportError as e:
        _fallback(processor, f"tri_inductor.patterns.gemm is not importable ({e})")
        return None
    flat = hidden_states.reshape(-1, hidden_states.shape[-1])
    b = weight.t()  # [K, vocab]: our mm takes any strides, no copy
    bias = embedding_bias.to(flat.dtype) if embedding_bias is not None else None
    if flat.is_cuda and type(flat) is torch.Tensor:
        # Eager, every step: the op's body without the dispatcher round trip (host time).
        from .patterns.gemm.ops import mm_launch

        def head(a: torch.Tensor) -> torch.Tensor:
            return mm_launch(a, b, bias)
    else:
        def head(a: torch.Tensor) -> torch.Tensor:
            return ops.addmm(bias, a, b) if bias is not None else ops.mm(a, b)
    if not getattr(processor, _WARMED, False) and flat.is_cuda and not torch.cuda.is_current_stream_capturing():
        setattr(processor, _WARMED, True)
        warm_up(head, flat, getattr(processor, _MAX_ROWS, 0))
    logits = head(flat)
    return logits.reshape(*hidden_states.shape[:-1], logits.shape[-1])
