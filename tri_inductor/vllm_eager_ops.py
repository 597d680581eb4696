"""vLLM's eager unquantized linears and SiLU-and-mul on our Triton kernels (backend ``tri_inductor``).

vLLM runs some layers outside the compiled graph, eagerly, inside opaque custom ops. In 0.26 a
``FusedMoE`` layer's runner (``vllm.moe_forward``) applies the router gate there
(``MoERunner._forward_impl``: ``self.gate(hidden_states)``) and the shared experts (DeepSeek-V2,
Qwen2-MoE: an MLP passed as ``shared_experts=``). Their GEMMs then reach cuBLAS (``nvjet_sm90_*``
in every step of a Qwen3-MoE census), an eager SiluAndMul ATen; nothing we compile sees them.

| vLLM (wrapped)                         | what it runs in vLLM                           | ours                           |
|----------------------------------------|------------------------------------------------|--------------------------------|
| ``UnquantizedLinearMethod.apply``      | ``F.linear`` (cuBLAS): ReplicatedLinear gates,  | ``mm_launch`` (our GEMM)       |
|                                        | shared experts' gate_up / down projections     |                                |
| ``GateLinear.forward`` (DeepSeek-V2/V3)| cuteDSL / dsv3 CUDA kernels (M <= 16), cuBLAS  | ``mm_launch``, fp32 logits      |
|                                        | bf16 x bf16 -> fp32, or ``F.linear`` + a cast  | written by the GEMM itself     |
| ``SiluAndMul.forward_native``          | ``F.silu(x[..., :d]) * x[..., d:]`` (ATen)     | ``_gated_act_kernel``          |

Each wrapper runs ours only when tri_inductor is active in this process (``vllm_moe.activate``:
the plugin calls it when a tri_inductor VllmConfig is built), the call is eager (not traced by
torch.compile: a traced call keeps vLLM's code, which our compile passes then see) and its inputs
are plain CUDA tensors of a form we cover; anything else calls vLLM's original with the same
arguments, so vLLM's own backends never change. The first eager GEMM of each shape compiles the
kernel of every M bucket (never during a CUDA-graph capture), as the lm_head does
(``vllm_logits.warm_up``), so no token count JIT-compiles a kernel while serving.

Not covered: the fused router + shared-expert gate (``_fse_fuse_gate``, Qwen3-Next) calls
``F.linear`` directly in the runner; GateLinear with fp32 weights (its fp32 / bf16x3 tiers).
Note that with custom ops off and a compiling mode vLLM wraps ``forward_native`` in
``torch.compile`` (``CustomOp.maybe_compile``, Inductor): that call is traced, so it keeps
vLLM's code. Hooks declared in ``hooks.TABLE``; tested on vLLM 0.26.0.
"""
from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import torch

from . import hooks
from .vllm_logits import warm_up  # the lm_head's: one launch per M bucket
from .vllm_moe import is_active

TESTED_VLLM = "0.26.0"
DEVICE = "cuda"  # the device our eager path takes (tests set "cpu": our kernels in Triton's interpreter)
_HALF = (torch.bfloat16, torch.float16)

# (N, K, dtype, out dtype, bias, device index): GEMM shapes whose M buckets are compiled.
_warmed: set[tuple] = set()
_warm_lock = threading.Lock()


def _eager(x: Any) -> bool:
    """An eager call on a plain tensor of our device (no FakeTensor, no subclass, no tracing)."""
    return (type(x) is torch.Tensor and x.device.type == DEVICE and x.numel() > 0
            and not torch.compiler.is_compiling())


def _batch_invariant() -> bool:
    import vllm.envs as envs

    return bool(envs.VLLM_BATCH_INVARIANT)


def _max_tokens() -> int:
    """Rows to warm the GEMM for: the config's max_num_batched_tokens, at most one past the last
    M bucket (every larger M runs the top bucket's kernel)."""
    from .patterns.gemm.configs import BUCKETS

    cap = BUCKETS[-1] + 1
    try:
        from vllm.config import get_current_vllm_config_or_none

        cfg = get_current_vllm_config_or_none()
        tokens = int(getattr(getattr(cfg, "scheduler_config", None), "max_num_batched_tokens", 0) or 0)
    except ImportError:
        tokens = 0
    return min(tokens, cap) if tokens > 0 else cap


def _can_warm(a: Any) -> bool:
    """Warm on a GPU only, and never inside a CUDA-graph capture (no compile may happen there)."""
    return bool(a.is_cuda) and not torch.cuda.is_current_stream_capturing()


def gemm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
         out_dtype: torch.dtype | None = None) -> torch.Tensor:
    """``x @ weight.T (+ bias)`` on our GEMM, leading dims of ``x`` kept, in ``out_dtype``
    (default: x's). An fp32 ``out_dtype`` is written by the kernels' own store (they cast the
    fp32 accumulator to C's element type); nothing is computed in bf16 and converted."""
    from .patterns.gemm.ops import mm_launch

    a = x.reshape(-1, x.shape[-1])
    b = weight.t()  # [K, N]: our GEMM takes any strides, no copy

    def run(rows: torch.Tensor) -> torch.Tensor:
        return mm_launch(rows, b, bias, out_dtype=out_dtype)

    if _can_warm(a):
        key = (weight.shape[0], weight.shape[1], a.dtype, out_dtype or a.dtype, bias is not None, a.device.index)
        if key not in _warmed:
            with _warm_lock:
                if key not in _warmed:
                    warm_up(run, a, max(_max_tokens(), a.shape[0]))
                    _warmed.add(key)
    out = run(a)
    return out.view(*x.shape[:-1], out.shape[-1])


def _gemm_ok(x: torch.Tensor, weight: Any, bias: Any) -> bool:
    return (isinstance(weight, torch.Tensor) and weight.dim() == 2 and x.dtype in _HALF
            and weight.dtype == x.dtype and weight.device == x.device and weight.shape[1] == x.shape[-1]
            and (bias is None or (isinstance(bias, torch.Tensor) and bias.shape == (weight.shape[0],)
                                  and bias.device == x.device)))


# ---------------------------------------------------------------- UnquantizedLinearMethod.apply
def linear_apply(real: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
    """Wrapper factory for ``UnquantizedLinearMethod.apply(self, layer, x, bias)``."""

    def apply(*args: Any, **kwargs: Any) -> torch.Tensor:
        if not torch.compiler.is_compiling() and is_active():
            a = hooks.arguments(real, *args, **kwargs)
            x, layer, bias = a["x"], a["layer"], a["bias"]
            if _eager(x) and _gemm_ok(x, getattr(layer, "weight", None), bias) and not _batch_invariant():
                return gemm(x, layer.weight, bias)
        return real(*args, **kwargs)

    return apply


# ---------------------------------------------------------------- GateLinear.forward
def gate_forward(real: Callable[..., Any]) -> Callable[..., Any]:
    """Wrapper factory for ``GateLinear.forward(self, x)``: the router logits in the gate's
    ``out_dtype`` (fp32 for DeepSeek-V3) straight from our GEMM, whichever of vLLM's tiers
    (cuteDSL, dsv3, cuBLAS bf16 -> fp32, F.linear + cast) would have run."""

    def forward(*args: Any, **kwargs: Any) -> Any:
        if not torch.compiler.is_compiling() and is_active():
            a = hooks.arguments(real, *args, **kwargs)
            self, x = a["self"], a["x"]
            out_dtype = getattr(self, "out_dtype", None) or x.dtype
            bias = getattr(self, "bias", None)
            if (_eager(x) and x.dim() == 2 and out_dtype in (x.dtype, torch.float32)
                    and getattr(self, "return_bias", True) and not getattr(self, "skip_bias_add", False)
                    and _gemm_ok(x, getattr(self, "weight", None), bias) and not _batch_invariant()):
                return gemm(x, self.weight, bias, out_dtype=out_dtype), None
        return real(*args, **kwargs)

    return forward


# ---------------------------------------------------------------- SiluAndMul.forward_native
def silu_and_mul_native(real: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
    """Wrapper factory for the static ``SiluAndMul.forward_native(x)``."""

    def forward_native(*args: Any, **kwargs: Any) -> torch.Tensor:
        if not torch.compiler.is_compiling() and is_active():
            x = hooks.arguments(real, *args, **kwargs)["x"]
            if (_eager(x) and x.dtype in (*_HALF, torch.float32) and x.dim() >= 1 and x.shape[-1] % 2 == 0
                    and x.stride(-1) == 1):
                try:
                    rows = x.view(-1, x.shape[-1])  # a view or nothing: no copy of the input
                except RuntimeError:
                    rows = None
                if rows is not None:
                    from .patterns.activation import _launch_config, launch_gated

                    d = x.shape[-1] // 2
                    out = torch.empty((rows.shape[0], d), dtype=x.dtype, device=x.device)
                    launch_gated(rows, out, 0, *_launch_config(d, x.element_size()))
                    return out.view(*x.shape[:-1], d)
        return real(*args, **kwargs)

    return forward_native


# ---------------------------------------------------------------- installation
def hook_linear(module: Any) -> None:
    hooks.wrap_once(module.UnquantizedLinearMethod, "apply", linear_apply)


def hook_gate_linear(module: Any) -> None:
    hooks.wrap_once(module.GateLinear, "forward", gate_forward)


def hook_activation(module: Any) -> None:
    hooks.wrap_once(module.SiluAndMul, "forward_native", silu_and_mul_native)


# module vLLM imports -> the hook to apply then (vllm_plugin.register, hooks.when_imported)
HOOKS: dict[str, Callable[[Any], None]] = {
    "vllm.model_executor.layers.linear": hook_linear,
    "vllm.model_executor.layers.fused_moe.router.gate_linear": hook_gate_linear,
    "vllm.model_executor.layers.activation": hook_activation,
}
