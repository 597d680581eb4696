"""Undo a graph rewrite that failed half way: a rewrite of ours that raises must not fail the
compile (a pattern declines, never fails), and must not leave a half-rewritten graph behind.

``snapshot(graph)`` copies the nodes (their meta shallow-copied: the fake values are shared, the
weights are not copied; ~7 us a node); ``restore(graph, snap)`` puts them back into the same
``Graph`` object, which Inductor and Dynamo hold on to.
"""
from __future__ import annotations

import copy
from typing import Any

import torch.fx


def snapshot(graph: torch.fx.Graph) -> torch.fx.Graph:
    """A copy of ``graph``'s nodes."""
    out = torch.fx.Graph()
    _copy_into(out, graph)
    return out


def restore(graph: torch.fx.Graph, snap: torch.fx.Graph) -> None:
    """Make ``graph`` hold ``snap``'s nodes again (in place; ``snap`` is left as it was)."""
    for n in reversed(list(graph.nodes)):  # users before what they read
        graph.erase_node(n)
    _copy_into(graph, snap)
    graph.lint()


def _copy_into(dst: torch.fx.Graph, src: torch.fx.Graph) -> None:
    """``src``'s nodes appended to ``dst`` (public ``Graph.graph_copy``), with the attributes
    Dynamo sets on a node beside its meta (``_dynamo_source``, which AOT reads)."""
    memo: dict[Any, Any] = {}
    copied = dst.graph_copy(src, memo, return_output_node=True)
    for old, new in memo.items():
        if isinstance(old, torch.fx.Node) and isinstance(new, torch.fx.Node):
            for k, v in vars(old).items():
                if k not in vars(new):
                    setattr(new, k, v)
    if copied is not None:
        value, old_output = copied
        out = dst.output(value, type_expr=getattr(old_output, "type", None))
        out.meta = copy.copy(old_output.meta)
