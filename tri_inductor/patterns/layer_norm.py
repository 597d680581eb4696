"""LayerNorm over the last dim: ``(x - mean) * rstd * w + b`` in one pass over each row.

For the LayerNorm models (GPT-2, GPT-J, GPT-NeoX, Falcon, BERT, Cohere, OLMo): ``F.layer_norm`` with
a weight and a bias, a weight only (``bias=False``) or neither (``elementwise_affine=False``).
Statistics in fp32, output in x's dtype.
Interpreter note: builtins only (``tl.reduce`` with ``_sum_combine``, see rms_norm.py).
"""
from __future__ import annotations

import operator
from typing import Optional

import torch
import torch.nn.functional as F
import triton
import triton.language as tl
from torch.library import triton_op

from ._launch import launch
from ._trace import trace_replacement


@triton.jit
def _layer_norm_kernel(x_ptr, w_ptr, b_ptr, out_ptr, x_stride, out_stride, H, eps,
                       HAS_W: tl.constexpr, HAS_B: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    ok = cols < H
    x = tl.load(x_ptr + row * x_stride + cols, mask=ok, other=0.0).to(tl.float32)
    mean = tl.reduce(x, 0, tl.standard._sum_combine) / H
    d = tl.where(ok, x - mean, 0.0)
    rstd = tl.rsqrt(tl.reduce(d * d, 0, tl.standard._sum_combine) / H + tl.cast(eps, tl.float32))
    y = d * rstd
    if HAS_W:
        y = y * tl.load(w_ptr + cols, mask=ok, other=0.0).to(tl.float32)
    if HAS_B:
        y += tl.load(b_ptr + cols, mask=ok, other=0.0).to(tl.float32)
    tl.store(out_ptr + row * out_stride + cols, y.to(out_ptr.dtype.element_ty), mask=ok)


@triton_op("tri_inductor::layer_norm", mutates_args={})
def layer_norm(x: torch.Tensor, weight: Optional[torch.Tensor], bias: Optional[torch.Tensor], eps: float) -> torch.Tensor:
    H = x.shape[-1]
    for name, t in (("weight", weight), ("bias", bias)):
        torch._check(t is None or (t.dim() == 1 and t.shape[0] == H),
                     lambda: f"layer_norm: {name} {tuple(t.shape)} does not match hidden size {H}")
    xk = x if x.stride(-1) == 1 else x.contiguous()
    x2 = xk.reshape(-1, H)
    out = torch.empty((x2.shape[0], H), dtype=x.dtype, device=x.device)
    block = triton.next_power_of_2(int(H))
    launch(_layer_norm_kernel, (x2.shape[0],), x2, weight if weight is not None else x2,
           bias if bias is not None else x2, out, x2.stride(0), out.stride(0), H, float(eps),
           HAS_W=weight is not None, HAS_B=bias is not None, BLOCK=block,
           num_warps=max(1, min(16, block // 256)))
    return out.view(x.shape)


def reference_layer_norm(x, weight, bias, eps: float) -> torch.Tensor:
    return F.layer_norm(x.double(), (x.shape[-1],), weight.double() if weight is not None else None,
                        bias.double() if bias is not None else None, eps)


_EPS = 9.87654321e-7  # tracing sentinel (scalar_workaround), as in rms_norm.py


def _ln(x, w, b, eps):
    return F.layer_norm(x, (x.shape[-1],), w, b, eps)


def _ln_no_bias(x, w, eps):
    return F.layer_norm(x, (x.shape[-1],), w, None, eps)


# LayerNorm written out by hand (no F.layer_norm): the spellings tutorials and model code use.
def _ln_mean_sq_div(x, w, b, eps):
    mu = x.mean(-1, keepdim=True)
    var = ((x - mu) ** 2).mean(-1, keepdim=True)
    return (x - mu) / torch.sqrt(var + eps) * w + b


def _ln_mean_sq_rsqrt(x, w, b, eps):
    mu = x.mean(-1, keepdim=True)
    var = (x - mu).pow(2).mean(-1, keepdim=True)
    return (x - mu) * torch.rsqrt(var + eps) * w + b


def _ln_var_div(x, w, b, eps):
    mu = x.mean(-1, keepdim=True)
    var = x.var(-1, keepdim=True, unbiased=False)
    return w * ((x - mu) / torch.sqrt(var + eps)) + b


def _ln_var_rsqrt(x, w, b, eps):
    mu = x.mean(-1, keepdim=True)
    var = x.var(-1, keepdim=True, unbiased=False)
    return w * (x - mu) * torch.rsqrt(var + eps) + b


def _ln_upcast(x, w, b, eps):
    h = x.float()
    mu = h.mean(-1, keepdim=True)
    var = (h - mu).pow(2).mean(-1, keepdim=True)
    return ((h - mu) * torch.rsqrt(var + eps)).to(x.dtype) * w + b


HAND_WRITTEN = (_ln_mean_sq_div, _ln_mean_sq_rsqrt, _ln_var_div, _ln_var_rsqrt, _ln_upcast)


# Cohere's LayerNorm: no bias, statistics and the weight product in fp32, one cast at the end.
def _ln_upcast_weight_fp32(x, w, eps):
    h = x.float()
    mu = h.mean(-1, keepdim=True)
    var = (h - mu).pow(2).mean(-1, keepdim=True)
    return (w.float() * ((h - mu) * torch.rsqrt(var + eps))).to(x.dtype)


# Without weight or bias (OLMo's LayerNorm, ``nn.LayerNorm(elementwise_affine=False)``).
def _ln_unit(x, eps):
    return F.layer_norm(x, (x.shape[-1],), None, None, eps)


def _ln_unit_upcast(x, eps):
    return F.layer_norm(x.float(), (x.shape[-1],), None, None, eps).to(x.dtype)


UNIT = (_ln_unit, _ln_unit_upcast)


def _repl(x, w, b, eps):
    return layer_norm(x, w, b, eps)


def _repl_no_bias(x, w, eps):
    return layer_norm(x, w, None, eps)


def _repl_unit(x, eps):
    return layer_norm(x, None, None, eps)


def _check(match) -> bool:
    x = match.kwargs["x"].meta.get("val")
    ws = [match.kwargs[n].meta.get("val") for n in ("w", "b") if n in match.kwargs]
    if not (isinstance(x, torch.Tensor) and x.is_floating_point() and x.dim() >= 1):
        return False
    try:
        H = int(x.shape[-1])
    except Exception:
        return False
    if not (H <= 16384 and all(isinstance(w, torch.Tensor) and w.dim() == 1 and w.shape[0] == H
                               and w.is_floating_point() for w in ws)):
        return False
    out = match.output_nodes()[0].meta.get("val")  # our op returns x's dtype
    return isinstance(out, torch.Tensor) and out.dtype == x.dtype


def register_patterns(pm_pass) -> None:
    from .matcher_utils import register_replacement

    for dt in (torch.bfloat16, torch.float32):
        x, w, b = torch.empty(8, 64, dtype=dt), torch.empty(64, dtype=dt), torch.empty(64, dtype=dt)
        register_replacement(_ln, _repl, [x, w, b], trace_replacement, pm_pass, extra_check=_check,
                             scalar_workaround={"eps": _EPS}, skip_duplicates=True)
        register_replacement(_ln_no_bias, _repl_no_bias, [x, w], trace_replacement, pm_pass,
                             extra_check=_check, scalar_workaround={"eps": _EPS}, skip_duplicates=True)
        for form in HAND_WRITTEN:
            register_replacement(form, _repl, [x, w, b], trace_replacement, pm_pass, extra_check=_check,
                                 scalar_workaround={"eps": _EPS}, skip_duplicates=True)
        register_replacement(_ln_upcast_weight_fp32, _repl_no_bias, [x, w], trace_replacement, pm_pass,
                             extra_check=_check, scalar_workaround={"eps": _EPS}, skip_duplicates=True)
        for form in UNIT:
            register_replacement(form, _repl_unit, [x], trace_replacement, pm_pass, extra_check=_check,
                                 scalar_workaround={"eps": _EPS}, skip_duplicates=True)


# A LayerNorm left to Inductor keeps var_mean -> add(eps) -> rsqrt.
ANCHOR_OPS = (torch.ops.aten.rsqrt.default,)


def is_near_miss(node: torch.fx.Node) -> bool:
    from .rms_norm import rsqrt_source

    src = rsqrt_source(node)
    return (isinstance(src, torch.fx.Node) and src.target is operator.getitem
            and getattr(src.args[0], "target", None) is torch.ops.aten.var_mean.correction)
