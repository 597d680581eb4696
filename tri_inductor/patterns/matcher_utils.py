"""What the pattern families share for matching (the role vLLM's ``matcher_utils`` plays): the
source-op forms several families search for, and the matcher for vLLM's in-place CUDA ops.

A family imports these from here, never another family's private helpers. The replacement
tracer is :mod:`._trace` (``trace_replacement``).
"""
from __future__ import annotations

import operator
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from ._trace import trace_replacement

# ---------------------------------------------------------------------------------------------
# vLLM custom-op forms: ``getitem(auto_functionalized(torch.ops._C.op, **kwargs), i)``.
# auto_functionalized v1 (vLLM sets ``enable_auto_functionalized_v2=False`` for its own passes);
# the v2 form (``_all_bases`` indices) is not matched.
# ---------------------------------------------------------------------------------------------
def register_auto_functionalized_form(
    pm_pass, op: torch._ops.OpOverload, out_indices: Sequence[int],
    replacement: Callable[..., Any], extra_check: Callable[[Any], bool] | None = None,
) -> None:
    """Replace the outputs ``out_indices`` of an auto_functionalized ``op`` by ``replacement``,
    called with the op's arguments by schema order (traced with ``trace_replacement``)."""
    from torch._higher_order_ops.auto_functionalize import auto_functionalized
    from torch._inductor.pattern_matcher import (CallFunction, KeywordArg, MultiOutputPattern,
                                                 register_graph_pattern)

    names = [a.name for a in op._schema.arguments]
    af = CallFunction(auto_functionalized, op, _users=len(out_indices), **{n: KeywordArg(n) for n in names})
    outs = [CallFunction(operator.getitem, af, i) for i in out_indices]
    pattern = outs[0] if len(outs) == 1 else MultiOutputPattern(outs)

    def check(match) -> bool:
        return extra_check is None or extra_check(match)

    def handler(match, **kwargs) -> None:
        match.replace_by_example(replacement, [kwargs[n] for n in names], trace_fn=trace_replacement)

    register_graph_pattern(pattern, extra_check=check, pass_dict=pm_pass)(handler)


def register_replacement(search_fn: Callable[..., Any], replace_fn: Callable[..., Any], example_inputs: Sequence[Any],
                         trace_fn: Callable[..., Any], pass_dicts: Any, extra_check: Callable[[Any], bool] | None = None,
                         **kwargs: Any) -> Any:
    """Inductor's ``register_replacement``, declining a match that binds an argument the forms
    take as a tensor to anything but a tensor-valued node. Its keyword arguments match any value:
    DiffLlama's ``(1 - lambda_init) * norm(x)`` bound a Python float as an RMSNorm's weight, and
    tracing the replacement then failed the compile (a pattern declines, never fails)."""
    import inspect

    from torch._inductor import pattern_matcher as pm

    names = list(inspect.signature(search_fn).parameters)
    tensor_args = [n for n, x in zip(names, example_inputs) if isinstance(x, torch.Tensor)]

    def check(match) -> bool:
        # (absent: Inductor re-traced the form with the matched values and a constant took the
        # argument's place in the graph, so no node is bound to it)
        for name in tensor_args:
            v = match.kwargs.get(name)
            if not (isinstance(v, torch.fx.Node) and isinstance(v.meta.get("val"), torch.Tensor)):
                return False
        return extra_check is None or extra_check(match)

    return pm.register_replacement(search_fn, replace_fn, example_inputs, trace_fn, pass_dicts, extra_check=check,
                                   **kwargs)


def c_op(name: str) -> torch._ops.OpOverload | None:
    """``torch.ops._C.<name>.default`` if vLLM's CUDA ops (or a test's stand-in schema) are loaded."""
    try:
        return getattr(torch.ops._C, name).default
    except (AttributeError, RuntimeError):
        return None


# ---------------------------------------------------------------------------------------------
# RMSNorm source forms (searched by rms_norm, and by rope for a q/k norm feeding the rotation).
# ---------------------------------------------------------------------------------------------
EPS_SENTINEL = 9.87654321e-7
"""eps is kept general with ``scalar_workaround``: a search graph is traced with this value,
which the pattern turns into ``KeywordArg("eps")``; any literal eps then matches. It must not
collide with any other constant in a form."""


# vLLM IR native (vllm/ir/ops/layernorm.py) and vLLM RMSNorm.forward_native with torch wrap off:
# (x.float() * rsqrt(mean(x.float()^2) + eps)).to(w.dtype) * w, then .to(x.dtype) (a no-op cast).
def vllm_rms(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    h = x.to(torch.float32)
    h = h * torch.rsqrt(h.pow(2).mean(dim=-1, keepdim=True) + eps)
    return (h.to(weight.dtype) * weight).to(x.dtype)


def ir_rms(x, weight, eps):
    """vLLM IR's rms_norm node (torch wrap on, the default with Inductor-like backends)."""
    return torch.ops.vllm_ir.rms_norm.default(x, weight, eps)


def vllm_ir_available() -> bool:
    # vllm_ir nodes can only be in a graph once vLLM has been imported (that defines the ops); no
    # import here: pattern registration may run under a FakeTensorMode.
    ns = torch.ops.vllm_ir
    return hasattr(ns, "rms_norm") and hasattr(ns, "fused_add_rms_norm")


# ---------------------------------------------------------------------------------------------
# Gated-activation source forms (searched by activation, and by gate_up behind its GEMM).
# ---------------------------------------------------------------------------------------------
# vLLM SiluAndMul.forward_native / GeluAndMul.forward_native: slices of one [.., 2d] tensor.
def silu_slices(x):
    d = x.shape[-1] // 2
    return F.silu(x[..., :d]) * x[..., d:]


def gelu_slices(x):
    d = x.shape[-1] // 2
    return F.gelu(x[..., :d]) * x[..., d:]


def gelu_tanh_slices(x):
    d = x.shape[-1] // 2
    return F.gelu(x[..., :d], approximate="tanh") * x[..., d:]


# Phi-3 style fused gate_up: ``gate, up = x.chunk(2, -1); up * act(gate)``.
def silu_chunk(x):
    gate, up = x.chunk(2, dim=-1)
    return up * F.silu(gate)


# The same with the activation first (fused gate_up in custom Llama blocks: ``act(gate) * up``);
# the pattern matcher does not reorder a commutative mul.
def silu_chunk_gate_first(x):
    gate, up = x.chunk(2, dim=-1)
    return F.silu(gate) * up


# ---------------------------------------------------------------------------------------------
# Dynamo-graph node forms (the rewrites that run before AOT: attention_fx, moe/hf, rope_fx,
# complex_pairs): torch-level calls, a function or a tensor method.
# ---------------------------------------------------------------------------------------------
def example_value(node: Any) -> Any:
    """The value Dynamo traced for ``node`` (a FakeTensor), None for a non-node or no record."""
    return node.meta.get("example_value", node.meta.get("val")) if isinstance(node, torch.fx.Node) else None


def is_call(node: Any, fns: Sequence[Any] = (), methods: Sequence[str] = ()) -> bool:
    """``node`` calls one of ``fns`` or one of the tensor ``methods``."""
    return isinstance(node, torch.fx.Node) and (
        (node.op == "call_function" and node.target in fns) or (node.op == "call_method" and node.target in methods))


def call_arg(node: torch.fx.Node, i: int, name: str, default: Any = None) -> Any:
    """Argument ``i`` / ``name`` of a call (for call_method, the tensor is args[0])."""
    if name in node.kwargs:
        return node.kwargs[name]
    return node.args[i] if len(node.args) > i else default
