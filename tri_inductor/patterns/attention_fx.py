"""Attention in a Dynamo graph -> ``tri_inductor::attention`` (before AOT, where SDPA would be
dispatched to a CUDA kernel or decomposed into the unfused math).

Two forms are taken:
* ``scaled_dot_product_attention`` calls, with or without ``attn_mask`` (transformers passes a
  boolean causal & padding mask with ``is_causal=False``);
* the explicit ``softmax(q @ k^T * scale [+ mask]) @ v`` (scale a multiply or a divide, the mask
  added or applied with ``masked_fill`` or ``torch.where``, the softmax in fp32 then cast back or
  not), K/V repeated for GQA (``repeat_kv`` in any of its spellings) read unrepeated.

A mask that transformers' ``masking_utils`` built from index comparisons (causal, sliding window,
``padding_mask[batch, kv]``) is read back into kernel flags (``is_causal``, ``causal_offset``,
``window``) plus a [B, 1, 1, Skv] key-padding mask, so the kernel neither loads a [Sq, Skv]
mask nor visits blocks the causal/window bounds hide. Any other mask is passed as it is.
A call the kernel cannot take (dropout, symbolic head count, D > 256, v's head dim != q's) stays.
"""
from __future__ import annotations

import math
import operator
from typing import Any

import torch

from .attention import SDPA_ARGS  # importing attention also registers tri_inductor::attention
from .matcher_utils import example_value as _val, is_call as _is

Node = torch.fx.Node


def _sdpa_targets():
    import torch.nn.functional as F

    return {torch._C._nn.scaled_dot_product_attention, F.scaled_dot_product_attention}


def _int(x) -> int | None:
    try:
        return int(x)
    except Exception:
        return None


def _shapes_ok(q, k, v) -> bool:
    qv, kv, vv = _val(q), _val(k), _val(v)
    if not all(isinstance(t, torch.Tensor) and t.dim() == 4 for t in (qv, kv, vv)):
        return False
    hq, hkv, d = _int(qv.shape[1]), _int(kv.shape[1]), _int(qv.shape[-1])
    if None in (hq, hkv, d) or hkv == 0 or hq % hkv or d > 256:
        return False
    dv = _int(vv.shape[-1])  # V's head dim may differ (MLA: q/k 192, v 128)
    return _int(kv.shape[-1]) == d and dv is not None and 0 < dv <= 256 and qv.dtype == kv.dtype == vv.dtype


def _mask_ok(mask, q, k) -> bool:
    mv = _val(mask)
    if not isinstance(mv, torch.Tensor) or mv.dim() > 4:
        return False
    return mv.dtype == torch.bool or mv.is_floating_point()


# ------------------------------------------------------------------------------- mask analysis

_CMP = {operator.le: "le", operator.lt: "lt", operator.ge: "ge", operator.gt: "gt",
        torch.le: "le", torch.lt: "lt", torch.ge: "ge", torch.gt: "gt"}
_AND = {operator.and_, torch.logical_and, torch.bitwise_and}


def _strip_casts(node):
    """Skip ``.to(device)`` / ``.expand(...)`` that leave a boolean mask's values as they are."""
    while isinstance(node, Node) and node.op == "call_method" and node.target in ("to", "expand", "contiguous"):
        src = node.args[0]
        if _val(src) is None or _val(node) is None or _val(src).dtype != _val(node).dtype:
            break
        node = src
    return node


def _index(node, sizes: dict[str, int]):
    """(axis, offset) of ``arange(n)[idx] + c`` placed along dim 0 (batch), 2 (q) or 3 (kv) of
    a 4-D index grid; None if ``node`` is anything else."""
    off = 0
    axis = None
    while isinstance(node, Node):
        if node.op == "call_function" and node.target in (operator.add, operator.sub) and isinstance(node.args[1], int):
            off += node.args[1] if node.target is operator.add else -node.args[1]
            node = node.args[0]
        elif node.op == "call_function" and node.target is operator.getitem and isinstance(node.args[1], tuple):
            idx = node.args[1]
            slices = [i for i, x in enumerate(idx) if isinstance(x, slice)]
            if axis is not None or len(idx) != 4 or len(slices) != 1 or idx[slices[0]] != slice(None):
                return None
            if any(x is not None for i, x in enumerate(idx) if i != slices[0]):
                return None
            axis = {0: "b", 2: "q", 3: "kv"}.get(slices[0])
            node = node.args[0]
        elif node.op == "call_function" and node.target is torch.arange:
            if len(node.args) != 1 or axis is None or _int(node.args[0]) != sizes[axis]:
                return None
            return axis, off
        elif node.op == "call_method" and node.target == "to":
            node = node.args[0]
        else:
            return None
    return None


def _terms(node, out: list):
    node = _strip_casts(node)
    if isinstance(node, Node) and node.op == "call_function" and node.target in _AND:
        _terms(node.args[0], out)
        _terms(node.args[1], out)
    elif isinstance(node, Node) and node.op == "call_method" and node.target in ("__and__", "logical_and"):
        _terms(node.args[0], out)
        _terms(node.args[1], out)
    else:
        out.append(node)
    return out


def analyse_mask(mask: Node, B: int, Sq: int, Skv: int):
    """Read a boolean mask built from index comparisons back into
    ``(is_causal, causal_offset, window, padding)``, ``padding`` a [B, Skv] boolean node or None;
    None when any term is something else (the mask is then passed as it is)."""
    mv = _val(mask)
    if not isinstance(mv, torch.Tensor) or mv.dtype != torch.bool or None in (B, Sq, Skv):
        return None
    sizes = {"b": B, "q": Sq, "kv": Skv}
    causal = None   # kv <= q + causal
    lower = None    # kv > q + lower
    padding = None
    for t in _terms(mask, []):
        if not isinstance(t, Node):
            return None
        if t.op == "call_method" and t.target == "new_ones" or t.op == "call_function" and t.target is torch.ones:
            tv = _val(t)
            if tv is None or tv.dtype != torch.bool or tv.numel() != 1:
                return None
            continue
        if t.op == "call_function" and t.target in _CMP:
            a, b = (_index(x, sizes) for x in t.args[:2])
            if a is None or b is None:
                return None
            op = _CMP[t.target]
            if op in ("ge", "gt"):  # x >= y  <=>  y <= x
                a, b, op = b, a, "le" if op == "ge" else "lt"
            # a (<=|<) b, each (axis, offset)
            if a[0] == "kv" and b[0] == "q":
                bound = b[1] - a[1] - (1 if op == "lt" else 0)  # kv <= q + bound
                if causal is not None:
                    return None
                causal = bound
            elif a[0] == "q" and b[0] == "kv":
                # q + a1 (<|<=) kv + b1  <=>  kv > q + a1 - b1 (- 1 when <=)
                bound = a[1] - b[1] - (1 if op == "le" else 0)
                if lower is not None:
                    return None
                lower = bound
            else:
                return None
            continue
        if t.op == "call_function" and t.target is operator.getitem and isinstance(t.args[1], tuple) \
                and len(t.args[1]) == 2 and padding is None:
            pv = _val(t.args[0])
            bi, ki = (_index(x, sizes) for x in t.args[1])
            if (isinstance(pv, torch.Tensor) and pv.dtype == torch.bool and pv.dim() == 2
                    and bi == ("b", 0) and ki == ("kv", 0)):
                padding = t.args[0]
                continue
        return None
    if lower is not None and causal is None:
        return None
    window = 0 if lower is None else causal - lower
    if lower is not None and window <= 0:
        return None
    return causal is not None, causal or 0, window, padding


# ------------------------------------------------------------------------------- graph edits

def _insert_attention(gm, before: Node, q, k, v, is_causal, scale, mask=None, offset=0, window=0,
                      softcap=0.0):
    g = gm.graph
    with g.inserting_before(before):
        new = g.call_function(torch.ops.tri_inductor.attention.default,
                              (q, k, v, is_causal, float(scale), mask, offset, window, float(softcap)))
    new.meta.update(before.meta)
    return new


def _padding_4d(gm, before: Node, pad: Node) -> Node:
    with gm.graph.inserting_before(before):
        n = gm.graph.call_function(operator.getitem, (pad, (slice(None), None, None, slice(None))))
    n.meta["example_value"] = _val(pad)[:, None, None, :]
    return n


def _repeats_heads(x, node) -> bool:
    """Whether ``node`` [B, Hkv * n, S, D] repeats each of ``x``'s [B, Hkv, S, D] heads n times in a row."""
    xv, nv = _val(x), _val(node)
    if xv is None or nv is None or xv.dim() != 4 or nv.dim() != 4:
        return False
    return (_int(xv.shape[0]) == _int(nv.shape[0]) and _int(xv.shape[2]) == _int(nv.shape[2])
            and _int(xv.shape[3]) == _int(nv.shape[3]) and _int(nv.shape[1]) is not None
            and _int(nv.shape[1]) % max(_int(xv.shape[1]) or 1, 1) == 0)


def _new_axis_at_2(node):
    """x when ``node`` is ``x[:, :, None]`` (any trailing ``:`` or ``...``) or ``x.unsqueeze(2)``."""
    if not isinstance(node, Node):
        return None
    if node.op == "call_function" and node.target is operator.getitem and isinstance(node.args[1], tuple):
        idx = node.args[1]
        full = slice(None)
        if len(idx) >= 3 and idx[:3] == (full, full, None) and all(i == full or i is Ellipsis for i in idx[3:]):
            return node.args[0]
        return None
    if _is(node, (torch.unsqueeze,), ("unsqueeze",)) and len(node.args) == 2 and node.args[1] == 2:
        return node.args[0]
    return None


def _unrepeat_kv(node):
    """transformers' ``repeat_kv`` and the ways it is written again (``x[:, :, None]`` or
    ``unsqueeze(2)``, ``expand``, then ``reshape``/``flatten(1, 2)``; ``repeat_interleave(n,
    dim=1)``) -> x: our kernel reads each KV head once for its query-head group."""
    if not isinstance(node, Node):
        return node
    if _is(node, (torch.repeat_interleave,), ("repeat_interleave",)):
        reps = node.args[1] if len(node.args) > 1 else node.kwargs.get("repeats")
        dim = node.args[2] if len(node.args) > 2 else node.kwargs.get("dim")
        x = node.args[0]
        if isinstance(reps, int) and dim == 1 and _repeats_heads(x, node):
            return x
        return node
    if not (_is(node, (torch.reshape, torch.flatten), ("reshape", "view", "flatten"))):
        return node
    if _is(node, (torch.flatten,), ("flatten",)) and tuple(node.args[1:3]) != (1, 2):
        return node
    ex = node.args[0]
    if not _is(ex, (), ("expand",)):
        return node
    x = _new_axis_at_2(ex.args[0])
    return x if x is not None and _repeats_heads(x, node) else node


def _bool_of_additive(mask):
    """The boolean ``cond`` of ``torch.where(cond, zeros(()), finfo.min)`` (transformers' eager
    masks), else None."""
    if not (_is(mask, (torch.where,)) and len(mask.args) == 3):
        return None
    cond, zero, neg = mask.args
    cv = _val(cond)
    if not (isinstance(cv, torch.Tensor) and cv.dtype == torch.bool and isinstance(neg, (int, float)) and neg <= -1e30):
        return None
    if _is(zero, (torch.zeros,), ("new_zeros",)) or zero == 0:
        return cond
    return None


def _take_mask(gm, before, mask, q, k):
    """(is_causal, offset, window, mask node or None) for an SDPA/explicit attention mask."""
    qv, kv = _val(q), _val(k)
    B, Sq, Skv = (_int(x) for x in (qv.shape[0], qv.shape[2], kv.shape[2]))
    cond = _bool_of_additive(mask)
    # An additive finfo.min mask read as flags: a row that sees no key then gives 0 where the
    # additive form averages every key (padding rows only, whose output nothing reads).
    found = analyse_mask(cond if cond is not None else mask, B, Sq, Skv)
    if found is None:
        return False, 0, 0, mask
    causal, offset, window, pad = found
    return causal, offset, window, (_padding_4d(gm, before, pad) if pad is not None else None)


def rewrite_sdpa(gm: torch.fx.GraphModule) -> int:
    targets = _sdpa_targets()
    n = 0
    for node in list(gm.graph.nodes):
        if node.op != "call_function" or node.target not in targets:
            continue
        bound = dict(zip(SDPA_ARGS, node.args))
        bound.update(node.kwargs)
        dropout = bound.get("dropout_p", 0.0)
        if not isinstance(dropout, (int, float)) or dropout != 0.0:
            continue
        is_causal = bound.get("is_causal", False)
        mask = bound.get("attn_mask")
        if not isinstance(is_causal, bool) or (mask is not None and (is_causal or not isinstance(mask, Node))):
            continue
        q, k, v = bound["query"], bound["key"], bound["value"]
        if not _shapes_ok(q, k, v) or (mask is not None and not _mask_ok(mask, q, k)):
            continue
        scale = bound.get("scale")
        if scale is None:
            scale = 1.0 / math.sqrt(int(_val(q).shape[-1]))
        if not isinstance(scale, (int, float)):
            continue
        offset, window = 0, 0
        if mask is not None:
            is_causal, offset, window, mask = _take_mask(gm, node, mask, q, k)
        k, v = _unrepeat_kv(k), _unrepeat_kv(v)
        new = _insert_attention(gm, node, q, k, v, is_causal, scale, mask, offset, window)
        node.replace_all_uses_with(new)
        _erase_dead(gm.graph, node)
        n += 1
    return n


def _erase_dead(graph, node: Node) -> None:
    """Erase ``node`` and the producers only it used (the replaced scores, softmax, mask math);
    in-place methods (``x.add_``) are never erased."""
    todo = [node]
    while todo:
        n = todo.pop()
        if n.users or n.op not in ("call_function", "call_method") or str(n.target).endswith("_"):
            continue
        inputs = [a for a in n.all_input_nodes]
        graph.erase_node(n)
        todo.extend(inputs)


# ------------------------------------------------------------------------------- explicit form

def _softmax_fns():
    import torch.nn.functional as F

    return (torch.softmax, F.softmax, torch._C._nn.softmax if hasattr(torch._C._nn, "softmax") else torch.softmax)


_MATMUL = (torch.matmul, operator.matmul)


def _key_of_transpose(node):
    """k for k.transpose(-2, -1) / k.transpose(2, 3) / k.permute(0, 1, 3, 2) / k.mT."""
    if _is(node, (torch.transpose,), ("transpose",)) and len(node.args) == 3:
        dims = {d % 4 for d in node.args[1:]}
        return node.args[0] if dims == {2, 3} else None
    if _is(node, (torch.permute,), ("permute",)):
        dims = node.args[1] if len(node.args) == 2 else node.args[1:]
        return node.args[0] if tuple(d % 4 for d in dims) == (0, 1, 3, 2) else None
    if _is(node, (getattr,)) and node.args[1] == "mT":
        return node.args[0]
    return None


def _softmax_dim_last(node) -> bool:
    dim = node.kwargs.get("dim", node.args[1] if len(node.args) > 1 else None)
    v = _val(node)
    return isinstance(dim, int) and v is not None and dim % v.dim() == v.dim() - 1


def _scores(node):
    """(q, k, scale) of ``q @ k^T`` times/divided by a number (either order), else None."""
    scale = 1.0
    while True:
        if _is(node, (operator.mul, torch.mul)) and isinstance(node.args[1], (int, float)):
            scale *= node.args[1]
            node = node.args[0]
        elif _is(node, (operator.mul, torch.mul)) and isinstance(node.args[0], (int, float)):
            scale *= node.args[0]
            node = node.args[1]
        elif _is(node, (operator.truediv, torch.div)) and isinstance(node.args[1], (int, float)) \
                and len(node.args) == 2 and not node.kwargs:
            scale /= node.args[1]
            node = node.args[0]
        elif _is(node, (), ("to", "float")) and len(node.users) == 1:
            node = node.args[0]
        else:
            break
    if not (_is(node, _MATMUL, ("matmul",)) and len(node.args) == 2):
        return None
    q, kt = node.args
    k = _key_of_transpose(kt)
    return None if k is None else (q, k, float(scale))


def _are_scores(node) -> bool:
    """``node`` is the scaled q @ k^T (soft-capped or not)."""
    return isinstance(node, Node) and _scores(_softcap(node)[0]) is not None


def _masked_scores(node):
    """(scores node, mask node or None, mask is 'keep'-boolean) of the softmax input."""
    while _is(node, (), ("to", "float")) and len(node.users) == 1:
        node = node.args[0]
    if _is(node, (operator.add, torch.add)) and len(node.args) == 2 and not node.kwargs:
        a, b = node.args
        if _are_scores(a) and isinstance(b, Node):
            return a, b, False
        if _are_scores(b) and isinstance(a, Node):
            return b, a, False
        return None
    if _is(node, (torch.masked_fill,), ("masked_fill",)) and len(node.args) == 3:
        s, drop, value = node.args
        if isinstance(value, (int, float)) and value <= -1e30 and isinstance(drop, Node) \
                and _val(drop) is not None and _val(drop).dtype == torch.bool:
            return s, drop, True
        return None
    if _is(node, (torch.where,)) and len(node.args) == 3 and not node.kwargs:
        # torch.where(keep, s, finfo.min) or torch.where(drop, finfo.min, s)
        cond, a, b = node.args
        if not (isinstance(cond, Node) and _val(cond) is not None and _val(cond).dtype == torch.bool):
            return None
        if isinstance(b, (int, float)) and b <= -1e30 and _are_scores(a):
            return a, cond, False
        if isinstance(a, (int, float)) and a <= -1e30 and _are_scores(b):
            return b, cond, True
        return None
    return node, None, False


def _no_dropout(node) -> bool:
    """``F.dropout(p, p=0.0)`` or ``F.dropout(p, ..., training=False)``: the identity."""
    import torch.nn.functional as F

    if not _is(node, (F.dropout, torch.dropout, torch.nn.functional.dropout)):
        return False
    a = dict(zip(("input", "p", "training"), node.args))
    a.update(node.kwargs)
    return a.get("p", 0.5) == 0.0 or a.get("training", True) is False


def _softcap(node):
    """(scores, softcap) for Gemma 2's ``tanh(s / c) * c`` (0.0 when there is none)."""
    if _is(node, (operator.mul, torch.mul)) and len(node.args) == 2 and isinstance(node.args[1], (int, float)):
        t = node.args[0]
        if _is(t, (torch.tanh,), ("tanh",)) and len(t.users) == 1:
            d = t.args[0]
            c = float(node.args[1])
            if _is(d, (operator.truediv, torch.div)) and d.args[1] == c and len(d.users) == 1 and c > 0:
                return d.args[0], c
    return node, 0.0


def rewrite_explicit(gm: torch.fx.GraphModule) -> int:
    n = 0
    for sm in list(gm.graph.nodes):
        if not _is(sm, _softmax_fns(), ("softmax",)) or not _softmax_dim_last(sm):
            continue
        # softmax -> [.to(dtype) / .type_as(x)] -> @ v, the probabilities used nowhere else
        p = sm
        while len(p.users) == 1 and (_is(next(iter(p.users)), (), ("to", "type_as", "half", "bfloat16"))
                                     or _no_dropout(next(iter(p.users)))):
            p = next(iter(p.users))
        if len(p.users) != 1:
            continue
        mm = next(iter(p.users))
        if not (_is(mm, _MATMUL, ("matmul",)) and len(mm.args) == 2 and mm.args[0] is p):
            continue
        v = mm.args[1]
        found = _masked_scores(sm.args[0])
        if found is None:
            continue
        s, mask, drop = found
        s, softcap = _softcap(s)
        sc = _scores(s)
        if sc is None:
            continue
        q, k, scale = sc
        if not _shapes_ok(q, k, v) or (mask is not None and not _mask_ok(mask, q, k)):
            continue
        if _val(mm) is None or _val(mm).dtype != _val(q).dtype:
            continue
        if drop and _is(mask, (operator.invert, torch.logical_not, torch.bitwise_not), ("logical_not", "bitwise_not")):
            mask = mask.args[0]  # masked_fill(~keep, -inf): keep itself, not ~~keep
        elif drop:
            with gm.graph.inserting_before(mm):
                keep = gm.graph.call_function(operator.invert, (mask,))
            keep.meta["example_value"] = ~_val(mask)
            mask = keep
        is_causal, offset, window = False, 0, 0
        if mask is not None:
            is_causal, offset, window, mask = _take_mask(gm, mm, mask, q, k)
        new = _insert_attention(gm, mm, q, _unrepeat_kv(k), _unrepeat_kv(v), is_causal, scale, mask,
                                offset, window, softcap)
        mm.replace_all_uses_with(new)
        _erase_dead(gm.graph, mm)
        n += 1
    return n


def rewrite_attention_in_dynamo_graph(gm: torch.fx.GraphModule) -> int:
    """Both rewrites; returns how many attentions now call ``tri_inductor::attention``."""
    n = rewrite_sdpa(gm) + rewrite_explicit(gm)
    if n:
        gm.graph.lint()
        gm.recompile()
    return n
