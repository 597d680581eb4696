"""Depthwise 1-d convolutions rewritten as shifted multiply-adds on the Dynamo graph.

Mamba, Mamba-2 and the hybrids built on them (Jamba, Bamba, Falcon-H1, Granite-4, Nemotron-H,
Zamba), the linear-attention layers of Qwen3-Next / Qwen3.5 and Kimi-Linear, and LFM2's short
convolutions all mix each channel with its last few tokens: ``F.conv1d(x, w [C, 1, K], b,
padding=K - 1, groups=C)`` (or ``nn.Conv1d(C, C, K, groups=C)``), sliced to the sequence length,
usually followed by SiLU. Inductor sends every convolution to cuDNN, so the audit failed on these
models although the work is K multiply-adds per output. Here each depthwise ``conv1d`` becomes

    out[..., c, t] = b[c] + sum_j w[c, 0, j] * pad(x)[..., c, t * stride + j * dilation]

in float32 (one rounding at the end, as cuDNN accumulates), written as K shifted slices of the
padded input: plain torch ops that Inductor fuses into one Triton kernel with the slice and the
activation around the convolution (one read of x, one write of the output).

A ``conv1d`` that is not depthwise (a weight of more than one input channel per group, or a
channel multiplier), has a string padding or a kernel longer than ``MAX_TAPS`` is left to Inductor
(declined, never an error: the audit names it as before).
"""
from __future__ import annotations

import torch
import torch.fx
import torch.nn.functional as F

from .patterns.matcher_utils import call_arg as _arg, example_value as _val

MAX_TAPS = 64  # taps unrolled into the fused kernel; short convolutions have 2-4


def depthwise_conv1d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, stride: int,
                     padding: int, dilation: int) -> torch.Tensor:
    """``F.conv1d(x, weight, bias, stride, padding, dilation, groups=C)`` for a depthwise weight
    [C, 1, K] and x [..., C, L], accumulated in float32, returned in x's dtype."""
    K, L = weight.shape[-1], x.shape[-1]
    L_out = (L + 2 * padding - dilation * (K - 1) - 1) // stride + 1
    xp = F.pad(x.float(), (padding, padding)) if padding else x.float()
    w = weight.float()
    acc = None
    for j in range(K):
        start = j * dilation
        tap = xp[..., start:start + (L_out - 1) * stride + 1:stride] * w[:, 0, j].unsqueeze(-1)
        acc = tap if acc is None else acc + tap
    if bias is not None:
        acc = acc + bias.float().unsqueeze(-1)
    return acc.to(x.dtype)


def _one(v):
    """An int from ``v`` (an int or a 1-tuple of one), else None."""
    if isinstance(v, (tuple, list)) and len(v) == 1:
        v = v[0]
    return v if isinstance(v, int) and not isinstance(v, bool) else None


def _depthwise_args(node: torch.fx.Node) -> tuple | None:
    """(x, weight, bias, stride, padding, dilation) if ``node`` is a depthwise conv1d we rewrite."""
    x, w = _arg(node, 0, "input"), _arg(node, 1, "weight")
    b = _arg(node, 2, "bias")
    stride, padding, dilation = (_one(_arg(node, 3, "stride", 1)), _one(_arg(node, 4, "padding", 0)),
                                 _one(_arg(node, 5, "dilation", 1)))
    groups = _arg(node, 6, "groups", 1)
    xv, wv, bv = _val(x), _val(w), _val(b)
    if not isinstance(xv, torch.Tensor) or not isinstance(wv, torch.Tensor) or (b is not None and bv is None):
        return None
    if None in (stride, padding, dilation) or stride < 1 or dilation < 1 or padding < 0:
        return None  # 'same' / 'valid' strings and 2-tuples: left alone
    if xv.dim() not in (2, 3) or wv.dim() != 3 or not xv.dtype.is_floating_point or xv.dtype != wv.dtype:
        return None
    try:
        C, per_group, K = (int(s) for s in wv.shape)
        channels = int(xv.shape[-2])
    except TypeError:  # a symbolic channel count or kernel size: not a layer's fixed weight
        return None
    if not (per_group == 1 and isinstance(groups, int) and groups == C == channels and 1 <= K <= MAX_TAPS):
        return None
    return x, w, b, stride, padding, dilation


def rewrite_depthwise_conv1d_in_dynamo_graph(gm: torch.fx.GraphModule) -> int:
    """Rewrite every depthwise ``conv1d`` of ``gm`` in place; returns how many."""
    n = 0
    for node in list(gm.graph.nodes):
        if not (node.op == "call_function" and node.target in (torch.conv1d, F.conv1d)):
            continue
        args = _depthwise_args(node)
        if args is None:
            continue
        node.target, node.args, node.kwargs = depthwise_conv1d, args, {}
        n += 1
    if n:
        gm.graph.lint()
        gm.recompile()
    return n
