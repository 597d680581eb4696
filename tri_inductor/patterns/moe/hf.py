"""Rewrite of the Hugging Face MoE forms on the Dynamo graph (before AOT, as attention is).

transformers 5.x (``integrations/moe.py``, ``grouped_mm`` experts; read from 5.24) writes a MoE
block as: router ``softmax(logits.float())`` -> ``torch.topk`` (Mixtral, Qwen2/3-MoE, OLMoE...),
``torch.sort`` of the expert ids, ``torch.histc`` of them (tokens per expert), then two
``torch._grouped_mm`` over the expert-sorted rows.  Inductor has no Triton lowering for topk,
histc or _grouped_mm; here each becomes our op, one node for one node, so the rest of the block
(sort, gathers, gating, weighting, the reshape+sum) stays Inductor's Triton:

* a router's top-k over the experts (last dim) -> ``tri_inductor::topk_of_scores`` (the router
  top-k kernel, ids int64): of ``softmax(x, -1)`` or ``sigmoid(x)`` in float32 (Mixtral,
  Qwen2/3-MoE, OLMoE), or of a gate projection's logits themselves, through casts and views
  (``linear(x, w_gate)[.float()]``: Granite-MoE, JetMoE, Llama 4, which score the k picks
  afterwards), or of anything a router computes from those logits before its top-k (DeepSeek-V3,
  Nemotron-H, GLM-4.5: a correction bias, groups of experts, the group top-k and its mask; every
  top-k of such a router is ours, the rest of it Inductor's). A top-k of anything else is left
  alone (not a router: the audit still names it);
* ``sort`` (ascending) of the router's expert ids, reshaped -> ``tri_inductor::sort_expert_ids`` (a
  counting sort: Inductor's sort is ATen above 512 elements or at a dynamic size);
* ``histc(ids.float() or ids.int(), bins, min, max)`` of integer ids -> ``tri_inductor::int_histc``;
* ``_grouped_mm(a [M, K], b [G, K, N], offs=...)`` (and transformers' own
  ``grouped_mm_fallback`` custom op) -> ``tri_inductor::grouped_mm``.

A node that does not fit is left as it is (declined, never an error).
"""
from __future__ import annotations

import operator

import torch
import torch.nn.functional as F

from ..matcher_utils import call_arg as _arg, example_value as _val, is_call as _is
from .routing import MAX_EXPERTS

MAX_ROUTER_K = 32  # picks unrolled in the kernel; routers take 1-16


def _last_dim(dim, ndim: int) -> bool:
    return isinstance(dim, int) and dim in (-1, ndim - 1)


_SOFTMAX = (F.softmax, torch.softmax)  # torch.nn.functional.softmax is F.softmax
_SIGMOID = (torch.sigmoid, F.sigmoid)


def _scoring(node) -> tuple[str, torch.fx.Node] | None:
    """('softmax' | 'sigmoid', logits node) if ``node`` is a router's score of the last dim."""
    if _is(node, _SOFTMAX, ("softmax",)):
        x = node.args[0] if node.args else node.kwargs.get("input")
        val = _val(x)
        if val is not None and _last_dim(_arg(node, 1, "dim"), val.dim()):
            return "softmax", x
    if _is(node, _SIGMOID, ("sigmoid",)):
        return "sigmoid", node.args[0]
    return None


# What may sit between a gate projection and the router's top-k: dtype casts and views.
_PASS_THROUGH = ("float", "to", "type_as", "reshape", "view", "contiguous")
_LINEAR = (torch._C._nn.linear, F.linear, torch.matmul, operator.matmul, torch.mm)


def _gate_logits(node) -> bool:
    """Whether ``node`` is a gate projection's output (``linear``/``matmul`` against a weight of
    E rows), possibly cast or viewed: the logits of a router that takes its top-k first."""
    for _ in range(4):
        if not isinstance(node, torch.fx.Node):
            return False
        if node.op == "call_function" and node.target in _LINEAR:
            return True
        if node.op == "call_method" and node.target in _PASS_THROUGH:
            node = node.args[0]
            continue
        return False
    return False


# What a router may compute from its scores before a top-k (DeepSeek-V3's grouped router: a
# correction bias added, a view into groups, the sum of each group's top-2, a group mask).
_SCORE_METHODS = _PASS_THROUGH + ("expand", "unsqueeze", "squeeze", "masked_fill", "clone", "sigmoid", "softmax",
                                  "add", "sub", "mul", "sum", "amax")
_SCORE_FNS = (operator.add, operator.sub, operator.mul, torch.add, torch.sub, torch.mul, *_SIGMOID, *_SOFTMAX,
              torch.sum, torch.amax, torch.masked_fill)


def _router_derived(node, depth: int = 12) -> bool:
    """Whether ``node`` is computed from a gate projection's logits (through scoring, biases,
    views, masks, group sums and the values of an earlier router top-k): a router's top-k input."""
    if depth == 0 or not isinstance(node, torch.fx.Node):
        return False
    if _gate_logits(node):
        return True
    if node.op == "call_function" and node.target is operator.getitem and node.args[1] == 0:
        src = node.args[0]  # the values of a top-k: of a router's if its input is one
        if isinstance(src, torch.fx.Node) and src.target is torch.ops.tri_inductor.topk_of_scores.default:
            return True
        return _is(src, (torch.topk,), ("topk",)) and _router_derived(src.args[0], depth - 1)
    if _is(node, _SCORE_FNS, _SCORE_METHODS):
        operands = [a for a in node.args[:2] if isinstance(a, torch.fx.Node)]
        return any(_router_derived(a, depth - 1) for a in operands)
    return False


def _router_scores(node) -> tuple[str, torch.fx.Node] | None:
    """(scoring, logits) if ``node``, a top-k's input, is a router's scores: ``softmax`` or
    ``sigmoid`` of logits (float32), or anything computed from a gate projection's logits
    (``"none"``: the top-k of those values as they are)."""
    val = _val(node)
    if val is None or val.dim() < 1 or not val.dtype.is_floating_point:
        return None
    if val.dtype == torch.float32 and val.dim() == 2:
        found = _scoring(node)
        if found is not None:
            return found
    return ("none", node) if _router_derived(node) else None


def _rewrite_topk(gm, node) -> bool:
    k = _arg(node, 1, "k")
    if not node.args or not isinstance(k, int) or not 0 < k <= MAX_ROUTER_K:
        return False
    val = _val(node.args[0])
    if val is None or not _last_dim(_arg(node, 2, "dim", -1), val.dim()) or _arg(node, 3, "largest", True) is not True \
            or _arg(node, 4, "sorted", True) not in (True, False):  # sorted=False: any order will do
        return False
    if not all(u.op == "call_function" and u.target is operator.getitem for u in node.users):
        return False
    found = _router_scores(node.args[0])
    if found is None:
        return False
    scoring, logits = found
    lv = _val(logits)
    try:
        E = int(lv.shape[-1])
    except (TypeError, AttributeError):
        return False
    if not (0 < k <= E <= MAX_EXPERTS) or not lv.dtype.is_floating_point:
        return False
    _replace(gm, node, torch.ops.tri_inductor.topk_of_scores.default, (logits, k, scoring))
    return True


_TO_FLOAT = ("float", "int", "to", "long")


def _integer_source(node):
    """The integer tensor behind ``node`` (itself, or the source of a dtype conversion)."""
    val = _val(node)
    if val is not None and not val.dtype.is_floating_point and val.dtype != torch.bool:
        return node
    if isinstance(node, torch.fx.Node) and node.op == "call_method" and node.target in _TO_FLOAT:
        src = _val(node.args[0])
        if src is not None and not src.dtype.is_floating_point and src.dtype != torch.bool:
            return node.args[0]
    return None


def _rewrite_histc(gm, node) -> bool:
    out = _val(node)
    x = node.args[0] if node.args else node.kwargs.get("input")
    bins, lo, hi = _arg(node, 1, "bins", 100), _arg(node, 2, "min", 0), _arg(node, 3, "max", 0)
    src = _integer_source(x)
    if out is None or src is None or not all(isinstance(v, (int, float)) and float(v).is_integer()
                                             for v in (bins, lo, hi)):
        return False
    if hi <= lo or bins < 1:  # min == max: torch takes the data's range; left alone
        return False
    _replace(gm, node, torch.ops.tri_inductor.int_histc.default, (src, int(bins), int(lo), int(hi), out.dtype))
    return True


def _grouped_mm_targets():
    out = {torch._grouped_mm}
    try:
        fallback = torch.ops.transformers.grouped_mm_fallback
        out |= {fallback, fallback.default}
    except (AttributeError, RuntimeError):
        pass
    return out


_VIEWS = ("reshape", "view", "flatten", "contiguous")


def _router_experts(node) -> int | None:
    """E if ``node`` is (a reshape of) the expert ids of a router top-k we rewrote, else None."""
    while isinstance(node, torch.fx.Node) and node.op == "call_method" and node.target in _VIEWS:
        node = node.args[0]
    if not (isinstance(node, torch.fx.Node) and node.op == "call_function" and node.target is operator.getitem
            and node.args[1] == 1):
        return None
    src = node.args[0]
    if not (isinstance(src, torch.fx.Node) and src.target is torch.ops.tri_inductor.topk_of_scores.default):
        return None
    return int(_val(src.args[0]).shape[-1])


def _rewrite_sort(gm, node) -> bool:
    x = node.args[0] if node.args else node.kwargs.get("input")
    val = _val(x)
    E = _router_experts(x)
    if E is None or val is None or val.dim() != 1:
        return False
    if _arg(node, 1, "dim", -1) not in (-1, 0) or _arg(node, 2, "descending", False) is not False:
        return False
    if not all(u.op == "call_function" and u.target is operator.getitem for u in node.users):
        return False
    _replace(gm, node, torch.ops.tri_inductor.sort_expert_ids.default, (x, E))
    return True


def _rewrite_grouped_mm(gm, node) -> bool:
    a, b = node.args[:2] if len(node.args) >= 2 else (node.kwargs.get("input"), node.kwargs.get("weight"))
    offs = _arg(node, 2, "offs")
    if _arg(node, 3, "bias") is not None:
        return False
    out_dtype = _arg(node, 4, "out_dtype")
    av, bv, ov = _val(a), _val(b), _val(offs)
    if av is None or bv is None or ov is None or av.dim() != 2 or bv.dim() != 3 or ov.dim() != 1:
        return False
    if av.dtype != bv.dtype or not av.dtype.is_floating_point:
        return False
    _replace(gm, node, torch.ops.tri_inductor.grouped_mm.default, (a, b, offs, out_dtype))
    return True


def _replace(gm, node, target, args) -> None:
    with gm.graph.inserting_before(node):
        new = gm.graph.call_function(target, args)
    new.meta.update(node.meta)
    node.replace_all_uses_with(new)
    gm.graph.erase_node(node)


def rewrite_moe_in_dynamo_graph(gm: torch.fx.GraphModule) -> int:
    """Rewrite the MoE forms above in place; returns how many nodes were replaced."""
    from . import ops  # noqa: F401  (registers the tri_inductor:: ops)

    grouped = _grouped_mm_targets()
    n = 0
    for node in list(gm.graph.nodes):
        if _is(node, (torch.topk,), ("topk",)):
            n += _rewrite_topk(gm, node)
        elif _is(node, (torch.sort,), ("sort",)):
            n += _rewrite_sort(gm, node)
        elif _is(node, (torch.histc,), ("histc",)):
            n += _rewrite_histc(gm, node)
        elif node.op == "call_function" and node.target in grouped:
            n += _rewrite_grouped_mm(gm, node)
    if n:
        gm.graph.lint()
        gm.recompile()
    return n
