"""PyTorch's fused transformer fast path (and ``F.multi_head_attention_forward``, which Dynamo
keeps as one call), written out in plain ops.

In eval mode under ``torch.no_grad()``, ``nn.TransformerEncoderLayer`` and ``nn.MultiheadAttention``
call ``torch._transformer_encoder_layer_fwd`` / ``torch._native_multi_head_attention``: single
ATen ops with CUDA kernels of their own (and no fake-tensor path without a driver), which Inductor
can only leave as fallbacks. Dynamo has already chosen that path by the time a backend sees the
graph, so each call is replaced here by the same math (layer norms, linears, attention), which
Inductor lowers to Triton and our patterns rewrite like any other layer.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

_ENCODER_ARGS = ("src", "embed_dim", "num_heads", "qkv_weight", "qkv_bias", "proj_weight", "proj_bias",
                 "use_gelu", "norm_first", "eps", "norm_weight_1", "norm_bias_1", "norm_weight_2",
                 "norm_bias_2", "ffn_weight_1", "ffn_bias_1", "ffn_weight_2", "ffn_bias_2", "mask", "mask_type")
_MHA_ARGS = ("query", "key", "value", "embed_dim", "num_head", "qkv_weight", "qkv_bias", "proj_weight",
             "proj_bias", "mask", "need_weights", "average_attn_weights", "mask_type")


def _sdpa_mask(mask, mask_type, B: int, L: int):
    """The fast path's mask (True = masked out, or additive) as an SDPA attn_mask (True = kept)."""
    if mask is None:
        return None
    if mask.dim() == 2 and mask_type == 1:  # key padding [B, L]
        mask = mask[:, None, None, :]
    return ~mask if mask.dtype == torch.bool else mask


def _attention(x_q, x_k, x_v, embed_dim, num_heads, qkv_weight, qkv_bias, proj_weight, proj_bias,
               mask, mask_type, need_weights=False, average_attn_weights=True, ours=False):
    B, L, E = x_q.shape
    S = x_k.shape[1]
    D = E // num_heads
    w_q, w_k, w_v = qkv_weight.chunk(3)
    b_q, b_k, b_v = qkv_bias.chunk(3) if qkv_bias is not None else (None, None, None)
    q = F.linear(x_q, w_q, b_q).view(B, L, num_heads, D).transpose(1, 2)
    k = F.linear(x_k, w_k, b_k).view(B, S, num_heads, D).transpose(1, 2)
    v = F.linear(x_v, w_v, b_v).view(B, S, num_heads, D).transpose(1, 2)
    m = mask  # SDPA's convention: True = kept, or additive
    weights = None
    if need_weights:
        s = (q @ k.transpose(-2, -1)) / math.sqrt(D)
        if m is not None:
            s = s.masked_fill(~m, float("-inf")) if m.dtype == torch.bool else s + m
        p = torch.softmax(s, dim=-1)
        o = p @ v
        weights = p.mean(dim=1) if average_attn_weights else p
    elif ours:
        o = torch.ops.tri_inductor.attention.default(q, k, v, False, 1.0 / math.sqrt(D), m)
    else:
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=m)
    out = F.linear(o.transpose(1, 2).reshape(B, L, E), proj_weight, proj_bias)
    return out, weights


def encoder_layer_fwd(src, embed_dim, num_heads, qkv_weight, qkv_bias, proj_weight, proj_bias, use_gelu,
                      norm_first, eps, norm_weight_1, norm_bias_1, norm_weight_2, norm_bias_2, ffn_weight_1,
                      ffn_bias_1, ffn_weight_2, ffn_bias_2, mask=None, mask_type=None, ours=False):
    """``torch._transformer_encoder_layer_fwd`` (batch-first, eval) in plain ops."""
    E = src.shape[-1]
    x = src
    h = F.layer_norm(x, (E,), norm_weight_1, norm_bias_1, eps) if norm_first else x
    a, _ = _attention(h, h, h, embed_dim, num_heads, qkv_weight, qkv_bias, proj_weight, proj_bias,
                      _sdpa_mask(mask, mask_type, src.shape[0], src.shape[1]), mask_type, ours=ours)
    x = x + a
    if not norm_first:
        x = F.layer_norm(x, (E,), norm_weight_1, norm_bias_1, eps)
    h = F.layer_norm(x, (E,), norm_weight_2, norm_bias_2, eps) if norm_first else x
    h = F.linear(h, ffn_weight_1, ffn_bias_1)
    h = F.gelu(h) if use_gelu else F.relu(h)
    x = x + F.linear(h, ffn_weight_2, ffn_bias_2)
    if not norm_first:
        x = F.layer_norm(x, (E,), norm_weight_2, norm_bias_2, eps)
    return x


def native_mha(query, key, value, embed_dim, num_head, qkv_weight, qkv_bias, proj_weight, proj_bias,
               mask=None, need_weights=True, average_attn_weights=True, mask_type=None, ours=False):
    """``torch._native_multi_head_attention`` (batch-first, eval) in plain ops: (out, weights)."""
    out, w = _attention(query, key, value, embed_dim, num_head, qkv_weight, qkv_bias, proj_weight, proj_bias,
                        _sdpa_mask(mask, mask_type, query.shape[0], key.shape[1]), mask_type, need_weights,
                        average_attn_weights, ours)
    return out, (w if w is not None else out.new_empty(0))


_F_MHA_ARGS = ("query", "key", "value", "embed_dim_to_check", "num_heads", "in_proj_weight", "in_proj_bias",
               "bias_k", "bias_v", "add_zero_attn", "dropout_p", "out_proj_weight", "out_proj_bias", "training",
               "key_padding_mask", "need_weights", "attn_mask", "use_separate_proj_weight", "q_proj_weight",
               "k_proj_weight", "v_proj_weight", "static_k", "static_v", "average_attn_weights", "is_causal")


def _plain_f_mha(kw: dict) -> bool:
    """F.multi_head_attention_forward calls that are one packed projection, attention, output
    projection (what nn.MultiheadAttention does in eval): the rest stays as PyTorch wrote it."""
    return (kw.get("bias_k") is None and kw.get("bias_v") is None and not kw.get("add_zero_attn", False)
            and (kw.get("dropout_p", 0.0) == 0.0 or kw.get("training", True) is False)
            and not kw.get("use_separate_proj_weight", False) and kw.get("static_k") is None
            and kw.get("static_v") is None and kw.get("need_weights", True) is False
            and kw.get("is_causal", False) is False and kw.get("in_proj_weight") is not None)


def f_mha(query, key, value, embed_dim_to_check, num_heads, in_proj_weight, in_proj_bias, out_proj_weight,
          out_proj_bias, key_padding_mask=None, attn_mask=None, ours=False):
    """A :func:`_plain_f_mha` call of ``F.multi_head_attention_forward`` (sequence-first
    [L, B, E] inputs) in plain ops: (out, None)."""
    L, B, E = query.shape
    q, k, v = (t.transpose(0, 1) for t in (query, key, value))
    mask = None
    if key_padding_mask is not None:  # [B, S]: True or -inf = ignore
        kp = key_padding_mask[:, None, None, :]
        mask = ~kp if kp.dtype == torch.bool else kp
    if attn_mask is not None:  # [L, S] or [B * H, L, S]: True or -inf = masked
        am = attn_mask if attn_mask.dim() == 2 else attn_mask.view(B, num_heads, L, -1)
        am = ~am if am.dtype == torch.bool else am
        if mask is None:
            mask = am
        elif mask.dtype == torch.bool and am.dtype == torch.bool:
            mask = mask & am
        else:
            neg = torch.finfo(q.dtype).min
            as_add = [m if m.dtype != torch.bool else torch.zeros((), dtype=q.dtype).masked_fill(~m, neg)
                      for m in (mask, am)]
            mask = as_add[0].to(q.dtype) + as_add[1].to(q.dtype)
    out, _ = _attention(q, k, v, E, num_heads, in_proj_weight, in_proj_bias, out_proj_weight, out_proj_bias,
                        mask, None, ours=ours)
    return out.transpose(0, 1), None


def decompose_fast_path(gm: torch.fx.GraphModule, use_our_attention: bool) -> int:
    """Replace the fused fast-path calls of a Dynamo graph by :func:`encoder_layer_fwd` /
    :func:`native_mha` (their attention ``tri_inductor::attention`` when ``use_our_attention``, else SDPA)."""
    if use_our_attention:
        from .patterns import family_module

        family_module("attention")  # registers the op
    table = {torch._transformer_encoder_layer_fwd: (encoder_layer_fwd, _ENCODER_ARGS),
             torch._native_multi_head_attention: (native_mha, _MHA_ARGS)}
    n = 0
    for node in list(gm.graph.nodes):
        if node.op != "call_function":
            continue
        if node.target is F.multi_head_attention_forward:
            kwargs = dict(zip(_F_MHA_ARGS, node.args))
            kwargs.update(node.kwargs)
            if not _plain_f_mha(kwargs):
                continue
            keep = ("query", "key", "value", "embed_dim_to_check", "num_heads", "in_proj_weight", "in_proj_bias",
                    "out_proj_weight", "out_proj_bias", "key_padding_mask", "attn_mask")
            node.target, node.args = f_mha, ()
            node.kwargs = {**{k: kwargs.get(k) for k in keep}, "ours": use_our_attention}
            n += 1
            continue
        if node.target not in table:
            continue
        fn, names = table[node.target]
        kwargs = dict(zip(names, node.args))
        kwargs.update(node.kwargs)
        node.target = fn
        node.args = ()
        node.kwargs = {**kwargs, "ours": use_our_attention}
        n += 1
    if n:
        gm.graph.lint()
        gm.recompile()
    return n

