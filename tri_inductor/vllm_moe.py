"""vLLM's MoE CUDA ops on our Triton kernels, for models served with ``{"backend": "tri_inductor"}``.

vLLM runs a ``FusedMoE`` layer outside the compiled graph (the opaque ``vllm.moe_forward`` op),
eagerly: its router and its Triton experts call vLLM CUDA ops through module attributes looked
up at call time.  Each hook below replaces one such attribute with a function that calls our
kernels (``patterns/moe``, ``patterns/activation``) in the caller's buffers, in place, as the CUDA
op would.  Tested on vLLM 0.26.0 (the only version read).

| vLLM attribute (replaced)                                    | what it runs in vLLM                     | ours                          |
|--------------------------------------------------------------|------------------------------------------|-------------------------------|
| ``vllm._custom_ops.topk_softmax``                            | ``_moe_C::topk_softmax``                 | ``moe_route_kernel`` softmax  |
| ``vllm._custom_ops.topk_sigmoid``                            | ``_moe_C::topk_sigmoid``                 | ``moe_route_kernel`` sigmoid  |
| ``vllm._custom_ops.grouped_topk``                            | ``_moe_C::grouped_topk``                 | ``moe_route_kernel`` grouped  |
| ``vllm._custom_ops.moe_align_block_size``                    | ``_moe_C::moe_align_block_size``         | ``align.py`` kernels          |
| ``vllm._custom_ops.moe_sum``                                 | ``_moe_C::moe_sum``                      | ``moe_sum_kernel``            |
| ``...fused_moe.router.grouped_topk_router.grouped_topk``     | torch ops under torch.compile (ATen topk)| ``moe_route_kernel`` grouped  |
| ``...fused_moe.modular_kernel.apply_moe_activation``         | ``_C::silu_and_mul`` / ``gelu_and_mul``  | ``_gated_act_kernel``         |
| ``...fused_moe.fused_moe.apply_moe_activation``              | (the same, bound by name there)          | ``_gated_act_kernel``         |
| ``..._prepare_expert_assignment`` (fused_moe, triton_moe)    | ``torch.full`` (ATen fill) when decode   | ``moe_fill_kernel``           |
|                                                              | has <= E/4 (token, expert) pairs         |                               |

The expert GEMMs stay vLLM's Triton ``fused_moe`` kernel.  The router gate linear and the shared
experts the runner applies in the same op (cuBLAS ``F.linear``, GateLinear's CUDA tiers, an eager
SiluAndMul) are hooked in ``vllm_eager_ops.py``, behind the same ``activate()``.  Each hook is installed when vLLM
imports its module (``install_hooks``, from the plugin) and routes to us only after
``activate()`` (the plugin calls it when a ``tri_inductor`` VllmConfig is built in this process)
and only for the argument forms it covers; anything else (expert parallel ``expert_map``,
clamped SwiGLU, ...) goes to vLLM's original, so vLLM's own backends are untouched.
"""
from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any

import torch

log = logging.getLogger("tri_inductor.vllm")

TESTED_VLLM = "0.26.0"
# The opaque op(s) vLLM runs a FusedMoE layer as, inside a compiled piece ("vllm" namespace).
LAYER_OPS = ("moe_forward", "moe_forward_shared")
_ACTIVE = False
_HOOKED = "_tri_inductor_moe"


def activate(on: bool = True) -> None:
    """Route the hooked ops to our kernels in this process (the plugin: a tri_inductor model)."""
    global _ACTIVE
    _ACTIVE = on


def is_active() -> bool:
    return _ACTIVE


_TOLD: set[str] = set()


def _fallback(real: Callable, where: str) -> Callable:
    """``real`` as the hooks call it for a form they do not cover: while active, that runs vLLM's
    own op (a CUDA kernel in a stock build, or ATen topk), which the audit's ``hooked_op`` class
    does not see; said once per op, so the census's non-Triton rows have a named cause."""
    @functools.wraps(real)
    def call(*args, **kwargs):
        if _ACTIVE and where not in _TOLD:
            _TOLD.add(where)
            log.warning("tri_inductor: %s called in a form our MoE hooks do not cover (expert map, "
                        "clamped activation, strided buffers, ...): vLLM's own op runs, not our Triton kernel", where)
        return real(*args, **kwargs)
    return call


def _hook(module: Any, name: str, make: Callable[[Callable], Callable], told: bool = True) -> bool:
    """``told``: the original's own work is not hooked (False: it only calls ops that are)."""
    real = getattr(module, name, None)
    if real is None or getattr(real, _HOOKED, False):
        return False
    new = functools.wraps(real)(make(_fallback(real, f"{getattr(module, '__name__', module)}.{name}") if told
                                     else real))
    setattr(new, _HOOKED, True)
    setattr(module, name, new)
    return True


def _rows_ok(*ts: torch.Tensor | None) -> bool:
    return all(t is None or t.is_contiguous() for t in ts)


# ---------------------------------------------------------------- vllm._custom_ops
def _topk(scoring: str):
    def make(real):
        def fn(topk_weights, topk_ids, token_expert_indices, gating_output, renormalize=False,
               e_score_correction_bias=None, routed_scaling_factor=1.0):
            from .patterns.moe.routing import MAX_EXPERTS

            if not (_ACTIVE and gating_output.dim() == 2 and gating_output.shape[1] <= MAX_EXPERTS
                    and _rows_ok(topk_weights, topk_ids, token_expert_indices)):
                args = (topk_weights, topk_ids, token_expert_indices, gating_output, renormalize,
                        e_score_correction_bias)
                return real(*args) if scoring == "softmax" else real(*args, routed_scaling_factor)
            from .patterns.moe.ops import _route

            _route(gating_output, topk_ids.shape[1], scoring, renormalize, 1, 1, e_score_correction_bias,
                   routed_scaling_factor, topk_ids.dtype, topk_weights.dtype, out=(topk_weights, topk_ids),
                   token_expert_indices=token_expert_indices)
        return fn
    return make


def _grouped_topk_op(real):
    def fn(scores, num_expert_group, topk_group, topk, renormalize, routed_scaling_factor, bias,
           scoring_func=0):
        if not _ACTIVE or scores.dim() != 2:
            return real(scores, num_expert_group, topk_group, topk, renormalize, routed_scaling_factor,
                        bias, scoring_func)
        from .patterns.moe.ops import _route

        return _route(scores, topk, "sigmoid" if scoring_func == 1 else "none", renormalize, num_expert_group,
                      topk_group, bias, routed_scaling_factor, torch.int32, torch.float32)
    return fn


def _align(real):
    def fn(topk_ids, num_experts, block_size, sorted_token_ids, experts_ids, num_tokens_post_pad,
           expert_map=None):
        if not _ACTIVE or expert_map is not None or not _rows_ok(topk_ids, sorted_token_ids, experts_ids):
            return real(topk_ids, num_experts, block_size, sorted_token_ids, experts_ids, num_tokens_post_pad,
                        expert_map)
        from .patterns.moe.ops import align

        align(topk_ids, num_experts, block_size, sorted_token_ids, experts_ids, num_tokens_post_pad)
    return fn


def _moe_sum(real):
    def fn(input, output, topk_ids=None, expert_map=None):  # noqa: A002 (vLLM's names)
        if not _ACTIVE or expert_map is not None or input.dim() != 3 or input.stride(-1) != 1 \
                or output.stride(-1) != 1:
            return real(input, output, topk_ids, expert_map)
        from .patterns.moe.ops import moe_sum_into

        moe_sum_into(input, None, output)
    return fn


# ---------------------------------------------------------------- fused_moe modules
def _grouped_topk_fn(real):
    def fn(hidden_states, gating_output, topk, renormalize, num_expert_group=0, topk_group=0,
           scoring_func="softmax", routed_scaling_factor=1.0, e_score_correction_bias=None):
        E = gating_output.shape[-1]
        if not (_ACTIVE and scoring_func in ("softmax", "sigmoid") and gating_output.dim() == 2
                and num_expert_group >= 1 and E % num_expert_group == 0):
            return real(hidden_states, gating_output, topk, renormalize, num_expert_group, topk_group,
                        scoring_func, routed_scaling_factor, e_score_correction_bias)
        from .patterns.moe.ops import _route

        return _route(gating_output, topk, scoring_func, renormalize, num_expert_group, topk_group,
                      e_score_correction_bias, routed_scaling_factor, torch.int32, torch.float32)
    return fn


def _activation(real):
    def fn(activation, output, input, *, clamp_limit=None, **kwargs):  # noqa: A002
        from vllm.model_executor.layers.fused_moe.activation import MoEActivation

        acts = {MoEActivation.SILU: 0, MoEActivation.GELU: 1, MoEActivation.GELU_TANH: 2}
        if not (_ACTIVE and activation in acts and clamp_limit is None and input.dim() == 2
                and input.stride(-1) == 1 and output.stride(-1) == 1 and output.shape[-1] * 2 == input.shape[-1]):
            return real(activation, output, input, clamp_limit=clamp_limit, **kwargs)
        from .patterns.activation import _launch_config, launch_gated

        launch_gated(input, output, acts[activation], *_launch_config(output.shape[-1], input.element_size()))
        return output
    return fn


def _expert_assignment(real):
    # vLLM's "naive block assignment" (few pairs, many experts): one block per (token, expert)
    # pair, and a torch.full for the padded count -- an ATen fill launch in the decode step.
    def fn(topk_ids, config, num_tokens, top_k_num, global_num_experts, expert_map, *, use_int8_w8a16=False,
           use_int4_w4a16=False, block_shape=None, **kwargs):
        naive = (expert_map is None and num_tokens * top_k_num * 4 <= global_num_experts
                 and not ((use_int8_w8a16 or use_int4_w4a16) and block_shape is not None and block_shape[1] > 0))
        if not (_ACTIVE and naive and topk_ids.is_contiguous()):
            return real(topk_ids, config, num_tokens, top_k_num, global_num_experts, expert_map,
                        use_int8_w8a16=use_int8_w8a16, use_int4_w4a16=use_int4_w4a16, block_shape=block_shape,
                        **kwargs)
        from .patterns.moe.ops import fill

        n = torch.empty((1,), dtype=torch.int32, device=topk_ids.device)
        fill(n, topk_ids.numel() * config["BLOCK_SIZE_M"])
        return None, topk_ids.view(-1), n
    return fn


def hook_fused_moe(module: Any) -> None:
    """``fused_moe.fused_moe``: its own by-name bindings of the activation and expert assignment."""
    _hook(module, "apply_moe_activation", _activation)
    _hook(module, "_prepare_expert_assignment", _expert_assignment, told=False)  # aligns via our hook


def hook_triton_moe(module: Any) -> None:
    _hook(module, "_prepare_expert_assignment", _expert_assignment, told=False)  # aligns via our hook


def hook_custom_ops(module: Any) -> None:
    """``vllm._custom_ops``: the routing, alignment and reduction ops."""
    _hook(module, "topk_softmax", _topk("softmax"))
    _hook(module, "topk_sigmoid", _topk("sigmoid"))
    _hook(module, "grouped_topk", _grouped_topk_op)
    _hook(module, "moe_align_block_size", _align)
    _hook(module, "moe_sum", _moe_sum)


def hook_grouped_topk_router(module: Any) -> None:
    _hook(module, "grouped_topk", _grouped_topk_fn)


def hook_modular_kernel(module: Any) -> None:
    _hook(module, "apply_moe_activation", _activation)


# module vLLM imports -> the hook to apply then (vllm_plugin.register)
HOOKS: dict[str, Callable[[Any], None]] = {
    "vllm._custom_ops": hook_custom_ops,
    "vllm.model_executor.layers.fused_moe.router.grouped_topk_router": hook_grouped_topk_router,
    "vllm.model_executor.layers.fused_moe.modular_kernel": hook_modular_kernel,
    "vllm.model_executor.layers.fused_moe.fused_moe": hook_fused_moe,
    "vllm.model_executor.layers.fused_moe.experts.triton_moe": hook_triton_moe,
}
