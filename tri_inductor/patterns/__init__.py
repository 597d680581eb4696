"""Our FX pattern families, one module each: the Triton kernel, its op, its reference, its patterns.

| family       | module                 | ops (tri_inductor::...)                          |
|--------------|------------------------|--------------------------------------------------|
| rope         | patterns/rope.py       | rope_cache, rope_cos_sin, qk_norm_rope_cache     |
| rms_norm     | patterns/rms_norm.py   | rms_norm, fused_add_rms_norm                     |
| layer_norm   | patterns/layer_norm.py | layer_norm                                       |
| gate_up      | patterns/gate_up.py    | mm_act_mul (the gemm kernels, fused epilogue)    |
| activation   | patterns/activation.py | silu_and_mul, gelu_and_mul, act_and_mul, gelu    |
| linear       | patterns/linear.py     | mm, addmm (kernels, configs, tuning: gemm/)      |
| attention    | patterns/attention.py  | attention                                        |
| moe          | patterns/moe/ (package)| moe_topk, moe_align, moe_experts, moe_sum,       |
|              |                        | grouped_mm, int_histc, topk_of_scores            |

Applied in this order (``options.FAMILIES``): RoPE first, so that its fused form can take a q/k
RMSNorm feeding the rotation (Qwen3) before the rms_norm family replaces that norm on its own;
gate_up before activation and linear, which would otherwise take its mm and activation apart.
"""
from __future__ import annotations

import functools
import importlib
from types import ModuleType

from ..options import FAMILIES


@functools.cache
def family_module(family: str) -> ModuleType:
    if family not in FAMILIES:
        raise ValueError(f"unknown pattern family {family!r}; known: {list(FAMILIES)}")
    return importlib.import_module(f"{__name__}.{family}")


def load_all() -> dict[str, ModuleType]:
    """Import every family there is (registers all tri_inductor:: ops)."""
    out = {}
    for f in FAMILIES:
        try:
            out[f] = family_module(f)
        except ModuleNotFoundError as e:
            if e.name != f"{__name__}.{f}":
                raise
    return out


@functools.cache
def our_kernel_names() -> dict[str, str]:
    """Triton function name -> family, for every kernel defined in our family modules."""
    from triton.runtime.jit import JITFunction

    names: dict[str, str] = {}
    for family, module in load_all().items():
        for kernel in getattr(module, "KERNELS", ()):  # kernels a family keeps in a package of its own
            names[kernel.fn.__name__] = family
        for value in vars(module).values():
            fn = value
            while fn is not None and not isinstance(fn, JITFunction):
                fn = getattr(fn, "fn", None)  # Autotuner / Heuristics wrap a JITFunction
            home = getattr(fn, "__module__", module.__name__) if fn is not None else ""
            # a family that is a package (moe) defines its kernels in submodules
            if fn is not None and (home == module.__name__ or home.startswith(module.__name__ + ".")):
                names[fn.__name__] = family
    return names
