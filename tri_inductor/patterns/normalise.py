"""One spelling per op before any pattern is matched: exact rewrites of a post-grad FX graph.

The same computation reaches us written many ways (``x * x`` or ``x.pow(2)``, ``mean(dim=2)``
or ``mean(dim=-1)`` on a 3-d tensor, ``add.Scalar`` from a decomposition or ``add.Tensor`` from
user code, ``x.float()`` written twice). A traced pattern matches one of them. This pass rewrites
each to one form, and runs on both sides: on the graph being compiled (``passes.py``, before the
families) and on every search and replacement graph we trace (``_trace.trace_replacement``), so
a pattern traced from one spelling matches all of them.

Every rewrite is exact (bit for bit the same values): a graph no pattern then matches computes
what it did before (merging twins is exact because the graph is functional when our pass runs:
Inductor re-inplaces ops only after the post-grad custom passes). Rewrites that change rounding
(``x / sqrt(v)`` as ``x * rsqrt(v)``) are not made here; such spellings are patterns of their own.
"""
from __future__ import annotations

import torch

aten, prims = torch.ops.aten, torch.ops.prims

# Reductions over one dim whose last-dim form patterns are traced with (dim=-1).
_DIM_REDUCTIONS = (aten.mean.dim, aten.sum.dim_IntList, aten.amax.default, aten.amin.default)
# Scalar overloads with a Tensor overload that takes the same Python scalar.
_SCALAR_TO_TENSOR = {aten.add.Scalar: aten.add.Tensor, aten.mul.Scalar: aten.mul.Tensor,
                     aten.sub.Scalar: aten.sub.Tensor, aten.div.Scalar: aten.div.Tensor}


def _ndim(node) -> int | None:
    v = node.meta.get("val") if isinstance(node, torch.fx.Node) else None
    return v.dim() if isinstance(v, torch.Tensor) else None


def _last_dim(graph: torch.fx.Graph) -> int:
    """``mean(x, [ndim - 1])`` -> ``mean(x, [-1])`` (the same reduction)."""
    n_changed = 0
    for target in _DIM_REDUCTIONS:
        for n in graph.find_nodes(op="call_function", target=target):
            dims = n.args[1] if len(n.args) > 1 else n.kwargs.get("dim")
            nd = _ndim(n.args[0])
            if nd is None or not isinstance(dims, (list, tuple)) or len(dims) != 1 or not isinstance(dims[0], int):
                continue
            if nd > 0 and dims[0] == nd - 1:
                if len(n.args) > 1:
                    n.args = (n.args[0], [-1], *n.args[2:])
                else:
                    n.kwargs = {**n.kwargs, "dim": [-1]}
                n_changed += 1
    return n_changed


def _scalar_overloads(graph: torch.fx.Graph) -> int:
    """``add.Scalar(x, 1e-6)`` -> ``add.Tensor(x, 1e-6)`` (the Tensor overload takes a scalar
    ``other`` with the same promotion); ``alpha`` other than 1 is left alone."""
    n_changed = 0
    for scalar, tensor in _SCALAR_TO_TENSOR.items():
        for n in graph.find_nodes(op="call_function", target=scalar):
            if n.kwargs.get("alpha", 1) != 1 or len(n.args) != 2 or isinstance(n.args[1], torch.fx.Node):
                continue
            n.target = tensor
            n_changed += 1
    return n_changed


def _squares(graph: torch.fx.Graph) -> int:
    """``mul(h, h)`` -> ``pow(h, 2)``: one multiply either way (Inductor and ATen lower pow 2 to it)."""
    n_changed = 0
    for n in graph.find_nodes(op="call_function", target=aten.mul.Tensor):
        if (len(n.args) == 2 and isinstance(n.args[0], torch.fx.Node) and n.args[0] is n.args[1] and not n.kwargs
                and _ndim(n.args[0]) is not None):
            n.target = aten.pow.Tensor_Scalar
            n.args = (n.args[0], 2)
            n_changed += 1
    return n_changed


def _sum_over_n(graph: torch.fx.Graph) -> int:
    """``sum(v, [-1], keepdim) / n`` -> ``mean(v, [-1], keepdim)`` where n is the size of v's last
    dim and v is fp32/fp64 (Inductor lowers mean as that sum divided by n: the same values; a
    16-bit v's sum would be rounded first where Inductor stores it, so those are left alone)."""
    n_changed = 0
    for div in list(graph.find_nodes(op="call_function", target=aten.div.Tensor)):
        if len(div.args) != 2 or div.kwargs or not isinstance(div.args[1], (int, float)):
            continue
        s = div.args[0]
        if not (isinstance(s, torch.fx.Node) and s.target is aten.sum.dim_IntList and len(s.users) == 1
                and not s.kwargs.get("dtype") and len(s.args) >= 2 and list(s.args[1]) in ([-1],)):
            continue
        v = s.args[0].meta.get("val") if isinstance(s.args[0], torch.fx.Node) else None
        if not (isinstance(v, torch.Tensor) and v.dtype in (torch.float32, torch.float64) and v.dim() > 0
                and isinstance(v.shape[-1], int) and div.args[1] == v.shape[-1]):
            continue
        keepdim = s.args[2] if len(s.args) > 2 else s.kwargs.get("keepdim", False)
        with graph.inserting_before(div):
            mean = graph.call_function(aten.mean.dim, (s.args[0], [-1], keepdim))
        mean.meta.update(div.meta)
        div.replace_all_uses_with(mean)
        graph.erase_node(div)
        graph.erase_node(s)
        n_changed += 1
    return n_changed


# Pure ops a model may write twice on one input (``x.float()`` on two lines of a norm). Only
# casts: merging views such as ``cos.unsqueeze(1)`` joins the copies every layer makes of one
# cos/sin into one node read by all layers, which a pattern holding it inside cannot replace.
_PURE = (prims.convert_element_type.default,)


def _hashable(a):
    if isinstance(a, (list, tuple)):
        return tuple(_hashable(x) for x in a)
    if isinstance(a, (torch.fx.Node, int, float, bool, str, type(None), torch.dtype, torch.device,
                      torch.memory_format, torch.layout)):
        return a
    raise TypeError(type(a).__name__)


def _duplicates(graph: torch.fx.Graph) -> int:
    """Two applications of one pure op to the same arguments: later readers take the first."""
    n_changed = 0
    seen: dict[tuple, torch.fx.Node] = {}
    for target in _PURE:
        # find_nodes sorts topologically: a first twin comes before every reader of a later one
        for n in list(graph.find_nodes(op="call_function", target=target)):
            try:
                key = (target, _hashable(n.args), _hashable(tuple(sorted(n.kwargs.items()))))
            except TypeError:  # an argument we cannot compare (a SymInt node value, ...): keep it
                continue
            first = seen.get(key)
            if first is None:
                seen[key] = n
                continue
            n.replace_all_uses_with(first)
            graph.erase_node(n)
            n_changed += 1
    return n_changed


def normalise(graph: torch.fx.Graph) -> int:
    """Apply every rewrite; the number of nodes changed."""
    changed = 0
    # twins first: ``x.float() * x.float()`` is a square once its two casts are one node
    while (merged := _duplicates(graph)):  # a merge can make its readers twins (a cast of a cast)
        changed += merged
    changed += _squares(graph) + _scalar_overloads(graph) + _last_dim(graph)
    changed += _sum_over_n(graph)  # after _last_dim (sum over dim ndim-1 as -1) and the Tensor overload
    return changed
