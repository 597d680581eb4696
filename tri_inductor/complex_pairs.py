"""Complex-number arithmetic rewritten as real (re, im) pairs on the Dynamo graph.

RoPE is often written with complex numbers: Meta's Llama reference code, DeepSeek-V2/V3 in
transformers (``apply_rotary_emb``: ``view_as_real(view_as_complex(x.reshape(..., -1, 2)) *
polar(1, freqs))``).  Inductor has no lowering for complex tensors (``view_as_complex``, the
complex ``mul``, ``view_as_real`` and ``polar`` fall back to ATen), so the audit failed on them
although the arithmetic is four multiplies and two adds.  This pass keeps every complex value of a
graph as a real tensor with a trailing dimension of 2 (what ``view_as_real`` gives) and rewrites
the ops that make and use it:

| complex op                         | on pairs                                              |
|------------------------------------|-------------------------------------------------------|
| ``view_as_complex(x)``             | ``x``                                                 |
| ``polar(r, t)``                    | ``stack([r * cos t, r * sin t], -1)``                 |
| ``a * b`` (both complex)           | ``stack([ar br - ai bi, ar bi + ai br], -1)``         |
| ``a * s`` (s real: number, tensor) | ``a * s`` (a tensor gets a trailing unit dim)         |
| ``unsqueeze``, ``reshape``/``view``, ``to(device)``, ``contiguous`` | the same on the pair tensor (dims shifted) |
| ``view_as_real(c)``                | ``c``                                                 |

Only a graph whose every complex value is made and used by these ops is rewritten (a complex
graph input, or any other op on a complex value, leaves the graph as it was: declined, never an
error; the audit then names the op as before).
"""
from __future__ import annotations

import numbers
import operator
from typing import Any

import torch
import torch.fx

from .patterns.matcher_utils import example_value as _val

_MUL = (operator.mul, torch.mul)
_SHAPE_METHODS = ("reshape", "view")


def _is_complex(node: Any) -> bool:
    v = _val(node)
    return isinstance(v, torch.Tensor) and v.dtype.is_complex


def _supported(node: torch.fx.Node) -> bool:
    """A node making a complex value in a form this pass rewrites."""
    if node.op == "call_function":
        if node.target in (torch.view_as_complex, torch.polar):
            return not node.kwargs and not any(_is_complex(a) for a in node.args)
        if node.target in _MUL:
            a, b = node.args[:2] if len(node.args) >= 2 else (None, None)
            return not node.kwargs and len(node.args) == 2 and any(_is_complex(x) for x in (a, b)) and all(
                _is_complex(x) or isinstance(x, numbers.Number) and not isinstance(x, complex)
                or isinstance(x, torch.fx.Node) and isinstance(_val(x), torch.Tensor) for x in (a, b))
        if node.target is operator.getitem:  # basic indexing: ints, slices, None, Ellipsis
            idx = node.args[1] if isinstance(node.args[1], tuple) else (node.args[1],)
            return _is_complex(node.args[0]) and all(
                i is None or i is Ellipsis or isinstance(i, (int, slice)) for i in idx)
        return False
    if node.op in ("placeholder", "get_attr"):  # a complex input: its pairs are a view of it
        return True
    if node.op == "call_method":
        if node.target == "unsqueeze":
            return len(node.args) == 2 and isinstance(node.args[1], int) and not node.kwargs
        if node.target in _SHAPE_METHODS:
            return not node.kwargs and all(isinstance(d, int) for d in _shape(node))
        if node.target == "contiguous":
            return len(node.args) == 1 and not node.kwargs
        if node.target == "to":
            args = list(node.args[1:]) + list(node.kwargs.values())
            return all(isinstance(a, (torch.device, str)) for a in args) and set(node.kwargs) <= {"device"}
    return False


def _shape(node: torch.fx.Node) -> tuple:
    """The target shape of ``x.reshape(*shape)`` / ``x.view(shape)``."""
    return tuple(node.args[1]) if len(node.args) == 2 and isinstance(node.args[1], (tuple, list)) \
        else tuple(node.args[1:])


def _is_exit(node: torch.fx.Node) -> bool:
    return node.op == "call_function" and node.target is torch.view_as_real and len(node.args) == 1


def rewrite_complex_in_dynamo_graph(gm: torch.fx.GraphModule) -> int:
    """Rewrite the graph's complex arithmetic as real pairs; returns how many complex values were
    rewritten (0: nothing complex, or declined)."""
    graph = gm.graph
    cplx = [n for n in graph.nodes if _is_complex(n)]
    if not cplx:
        return 0
    members = set(cplx)
    for n in cplx:
        if not _supported(n):
            return 0
        for user in n.users:
            if user not in members and not _is_exit(user):
                return 0
    fake = next((v.fake_mode for n in graph.nodes if (v := _val(n)) is not None and hasattr(v, "fake_mode")), None)
    pair: dict[torch.fx.Node, torch.fx.Node] = {}

    def emit(anchor: torch.fx.Node, kind: str, target: Any, args: tuple, kwargs: dict | None = None) -> torch.fx.Node:
        with graph.inserting_before(anchor):
            new = graph.create_node(kind, target, args, kwargs or {})
        new.meta["stack_trace"] = anchor.meta.get("stack_trace")
        vals = torch.fx.node.map_arg((args, kwargs or {}), _val)
        if fake is not None:
            try:
                with fake:
                    fn = getattr(vals[0][0], target) if kind == "call_method" else target
                    out = fn(*(vals[0][1:] if kind == "call_method" else vals[0]), **vals[1])
                new.meta["example_value"] = out
            except Exception:  # noqa: BLE001 (meta is a convenience for later passes, not needed)
                pass
        return new

    def part(anchor, p: torch.fx.Node, i: int) -> torch.fx.Node:
        return emit(anchor, "call_function", operator.getitem, (p, (Ellipsis, i)))

    def f(anchor, target, *args):
        return emit(anchor, "call_function", target, args)

    for n in cplx:
        if n.op in ("placeholder", "get_attr"):
            with graph.inserting_after(n):
                pair[n] = graph.call_function(torch.view_as_real, (n,))
            pair[n].meta["example_value"] = torch.view_as_real(_val(n)) if _val(n) is not None else None
        elif n.target is torch.view_as_complex:
            pair[n] = n.args[0]
        elif n.target is operator.getitem:
            idx = n.args[1] if isinstance(n.args[1], tuple) else (n.args[1],)
            pair[n] = emit(n, "call_function", operator.getitem, (pair[n.args[0]], (*idx, slice(None))))
        elif n.target is torch.polar:
            r, t = n.args
            pair[n] = emit(n, "call_function", torch.stack, ([f(n, operator.mul, r, f(n, torch.cos, t)),
                                                              f(n, operator.mul, r, f(n, torch.sin, t))], -1))
        elif n.target in _MUL:
            a, b = n.args
            if _is_complex(a) and _is_complex(b):
                ar, ai, br, bi = part(n, pair[a], 0), part(n, pair[a], 1), part(n, pair[b], 0), part(n, pair[b], 1)
                re = f(n, operator.sub, f(n, operator.mul, ar, br), f(n, operator.mul, ai, bi))
                im = f(n, operator.add, f(n, operator.mul, ar, bi), f(n, operator.mul, ai, br))
                pair[n] = emit(n, "call_function", torch.stack, ([re, im], -1))
            else:
                c, s = (a, b) if _is_complex(a) else (b, a)
                if isinstance(s, torch.fx.Node):
                    s = emit(n, "call_method", "unsqueeze", (s, -1))
                pair[n] = f(n, operator.mul, pair[c], s)
        elif n.target == "unsqueeze":
            d = n.args[1]
            pair[n] = emit(n, "call_method", "unsqueeze", (pair[n.args[0]], d if d >= 0 else d - 1))
        elif n.target in _SHAPE_METHODS:
            pair[n] = emit(n, "call_method", n.target, (pair[n.args[0]], *_shape(n), 2))
        else:  # contiguous, to(device)
            pair[n] = emit(n, "call_method", n.target, (pair[n.args[0]], *n.args[1:]), dict(n.kwargs))
    for n in cplx:
        for user in list(n.users):
            if _is_exit(user) and user is not pair[n]:
                user.replace_all_uses_with(pair[n])
                graph.erase_node(user)
    for n in reversed(cplx):
        if not n.users and n.op not in ("placeholder", "get_attr"):
            graph.erase_node(n)
    graph.lint()
    gm.recompile()
    return len(cplx)
