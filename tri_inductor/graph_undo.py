"""Undo a graph rewrite that failed half way: a rewrite of ours that raises must not fail the
compile (a pattern declines, never fails), and must not leave a half-rewritten graph behind.

``snapshot(graph)`` copies the nodes (their meta shallow-copied: the fake values are shared, the
weights are not copied; ~7 us a node); ``restore(graph, snap)`` puts them back into the same
``Graph`` object, which Inductor and Dynamo hold on to.
"""
from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Sequence
from typing import Any

import torch.fx

log = logging.getLogger("tri_inductor")


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


def run_steps(graph: torch.fx.Graph, steps: Sequence[tuple[str, Callable[[], Any]]], strict: bool, what: str,
              leaves_all: tuple[str, ...] = (), after_restore: Callable[[], Any] | None = None) -> None:
    """Run ``steps`` (name, fn) in order on ``graph``. One that raises is logged (naming it), the
    graph is restored from the snapshot taken before the steps and they run again without it (a
    step in ``leaves_all`` takes the later ones with it); ``after_restore`` runs after each
    restore. Strict mode raises instead, and takes no snapshot."""
    todo = list(steps)
    while todo:
        saved = None if strict else snapshot(graph)
        name = None
        try:
            for name, fn in todo:
                fn()
            return
        except Exception as e:
            if strict:
                raise
            log.error("tri_inductor: the %r %s failed on this graph (%r); compiling without it (the audit shows "
                      "what that leaves to Inductor)", name, what, e)
            restore(graph, saved)
            if after_restore is not None:
                after_restore()
            todo = [] if name in leaves_all else [t for t in todo if t[0] != name]
