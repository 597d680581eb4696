"""The post-grad pass that rewrites transformer sub-graphs into our Triton kernels."""
from __future__ import annotations

import functools
import logging
import threading
import time
from collections import Counter
from typing import Any

import torch
from torch._inductor.custom_graph_pass import CustomGraphPass

from .options import FAMILIES

aten = torch.ops.aten

_last = threading.local()
log = logging.getLogger("tri_inductor")


def take_last_stats() -> dict[str, Any] | None:
    """Hits and near misses of the pass's last run on this thread (then forgotten)."""
    stats = getattr(_last, "stats", None)
    _last.stats = None
    return stats


def _our_hop_families(graph: torch.fx.Graph) -> Counter[str]:
    from torch._higher_order_ops.triton_kernel_wrap import kernel_side_table

    from .patterns import our_kernel_names

    names = our_kernel_names()
    found: Counter[str] = Counter()
    for node in graph.nodes:
        if node.target is torch.ops.higher_order.triton_kernel_wrapper_functional:
            name = _jit_name(kernel_side_table.get_kernel(node.kwargs["kernel_idx"]))
            if name in names:
                found[names[name]] += 1
    return found


def realize_triton_kernel_inputs(graph: torch.fx.Graph) -> None:
    """Have Inductor write each computed input of a Triton kernel launch once.

    Inductor lowers every tensor argument of a user Triton kernel with exact strides; an input
    that is still an unrealized pointwise/reduction result is then copied once per argument, the
    copies fused into its producer as extra outputs (a norm feeding the gated GEMM launches of
    one projection wrote its output 12 times).  ``inductor_realize_to_strides`` makes Inductor
    realize the producer itself (graph.py run_node), which every launch then reads."""
    hop = torch.ops.higher_order.triton_kernel_wrapper_functional
    for node in graph.find_nodes(op="call_function", target=hop):
        _realize(node.kwargs["kwargs"].values())


def _realize(args) -> None:
    """Mark each computed tensor among ``args`` for Inductor to realize (graph.py run_node)."""
    for arg in args:
        if (isinstance(arg, torch.fx.Node) and arg.op == "call_function"
                and isinstance(arg.meta.get("val"), torch.Tensor)):
            arg.meta["inductor_realize_to_strides"] = True


def realize_native_matmul_operands(graph: torch.fx.Graph) -> None:
    """Have Inductor write each computed operand of a matmul left to it before the dot reads it.

    Inductor's native matmul (``triton.native_matmul``: ``tl.dot`` in its own kernels) inlines the
    pointwise producer of an operand into the dot's loads, and its codegen asserts on some of
    those (``right tl.dot operand cannot depend on y``: Mamba-2's chunked scan, an ``einsum`` of
    a decayed ``exp`` product). A realized operand is a plain load, which it always handles."""
    for target in (aten.bmm.default, aten.mm.default):
        for node in graph.find_nodes(op="call_function", target=target):
            _realize(node.args[:2])


def user_source_line(stack_trace: str | None) -> str | None:
    """``file:line in fn: code`` of the innermost frame outside torch itself (an op written in a
    model's file, not the torch.nn.functional line it went through), or None."""
    import os

    if not stack_trace:
        return None
    torch_dir = os.path.dirname(torch.__file__) + os.sep
    lines = [ln.strip() for ln in stack_trace.strip().splitlines() if ln.strip()]
    for i in range(len(lines) - 1, -1, -1):
        if lines[i].startswith("File "):
            parts = lines[i].split(",")
            path = parts[0][len("File "):].strip().strip('"')
            if path.startswith(torch_dir):
                continue
            lineno = parts[1].strip().replace("line ", "") if len(parts) > 1 else "?"
            fn = parts[2].strip().replace("in ", "") if len(parts) > 2 else "?"
            code = lines[i + 1] if i + 1 < len(lines) and not lines[i + 1].startswith("File ") else ""
            return f"{path}:{lineno} in {fn}: {code}"
    return None


def _jit_name(kernel) -> str:
    from triton.runtime.jit import JITFunction

    while not isinstance(kernel, JITFunction):  # Autotuner / Heuristics wrap a JITFunction
        kernel = kernel.fn
    return kernel.fn.__name__


@functools.cache
def _registered_patterns(families: tuple[str, ...], strict: bool) -> tuple[tuple[str, Any], ...]:
    """One PatternMatcherPass per family, in FAMILIES order. A family whose patterns fail to
    register (a vLLM or torch version whose graphs we cannot trace) is left out with an error in
    the log, so the compile goes on without it and the audit shows what it left to Inductor;
    strict mode raises instead."""
    from torch._inductor.pattern_matcher import PatternMatcherPass
    from torch._subclasses.fake_tensor import FakeTensorMode, unset_fake_temporarily

    from .cache_counters import count
    from .patterns import load_all

    t0 = time.perf_counter()
    modules = load_all()
    out = []
    for family in (f for f in FAMILIES if f in families):  # FAMILIES order, however they were listed
        if family not in modules:
            continue
        pm = PatternMatcherPass(pass_name=f"tri_inductor_{family}")
        try:
            # Pattern tracing must not see the compile's fake mode / tracing context.
            with torch._guards.tracing(None), unset_fake_temporarily(), FakeTensorMode():
                modules[family].register_patterns(pm)
        except Exception as e:
            if strict:
                raise
            log.error("tri_inductor: pattern family %r failed to register (%r); compiling without it "
                      "(the audit shows what that leaves to Inductor)", family, e)
            continue
        out.append((family, pm))
    count("register_s", time.perf_counter() - t0)
    return tuple(out)


class TriInductorPatternPass(CustomGraphPass):
    """Apply the enabled pattern families to a post-grad (aten, functional) graph.

    Its ``uuid()`` covers our sources and the enabled families, so Inductor's FX cache and
    vLLM's caches are invalidated whenever a kernel or pattern changes.
    """

    def __init__(self, families: tuple[str, ...] = FAMILIES, strict: bool = False):
        self.families = tuple(families)
        self.strict = strict

    def _pattern_passes(self):
        """Registered on first use (a warm start that hits every cache never pays for it), once
        per process and set of families."""
        return _registered_patterns(self.families, self.strict)

    def __call__(self, graph: torch.fx.Graph) -> None:
        from .cache_counters import count, counters

        passes = self._pattern_passes()  # registered on first use: timed apart (register_s)
        # tuning runs inside the pass (a GEMM's config is chosen as its replacement is traced):
        # counted in tune_s, not here
        t0, tuned0 = time.perf_counter(), counters()["tune_s"]
        try:
            self._apply(graph, passes)
        finally:
            count("pass_s", time.perf_counter() - t0 - (counters()["tune_s"] - tuned0))

    def _apply(self, graph: torch.fx.Graph, passes) -> None:
        """Normalise, then the families in order. A step that raises (a bug, or a graph its checks
        did not foresee) must not fail the compile: the graph goes back to what it was before our
        pass (``graph_undo``) and the pass runs again without that family (without any, where
        ``normalise`` failed: every pattern was traced in its forms); Inductor then writes those
        ops, and the audit and the near misses show them. Strict mode raises instead."""
        from . import graph_undo
        from .patterns.normalise import normalise

        before = _our_hop_families(graph)
        steps = [("normalise", lambda: normalise(graph))]
        steps += [(f, lambda step=self._family_step(f, pm): step(graph)) for f, pm in passes]
        graph_undo.run_steps(graph, steps, self.strict, "pattern step", leaves_all=("normalise",))
        realize_triton_kernel_inputs(graph)
        realize_native_matmul_operands(graph)
        after = _our_hop_families(graph)
        hits = {f: after[f] - before[f] for f in self.families if after[f] - before[f]}
        _last.stats = {"hits": hits, "near_misses": self.near_misses(graph)}

    @staticmethod
    def _family_step(family: str, pm):
        from .patterns import load_all

        prepare = getattr(load_all().get(family), "prepare_graph", None)

        def step(graph: torch.fx.Graph) -> None:
            if prepare is not None:  # a family's graph rewrite that its patterns then match
                prepare(graph)
            pm.apply(graph)
        return step

    def near_misses(self, graph: torch.fx.Graph) -> list[str]:
        """Nodes that anchor a sub-graph of an enabled family but were left to Inductor."""
        from .patterns import load_all

        modules = load_all()
        out = []
        for family in self.families:
            module = modules.get(family)
            anchors = set(getattr(module, "ANCHOR_OPS", ()))
            # A family may say which anchor nodes really are its op (rope: a neg feeding
            # rotate_half's cat, not silu's); without a source line there is nothing to point at.
            is_miss = getattr(module, "is_near_miss", None)
            for node in graph.nodes:
                if node.op == "call_function" and node.target in anchors and (is_miss is None or is_miss(node)):
                    where = user_source_line(node.meta.get("stack_trace"))
                    if where:
                        out.append(f"{family}: {node.target} at node {node.name} was not rewritten ({where})")
        return out

    def uuid(self) -> bytes:
        # Our sources + card + torch/CUDA/triton versions + the enabled families (cache.compile_hash).
        from .cache import compile_hash

        # strict too: a strict compile must run the pass itself (a step that failed in a default
        # compile was left out there; strict fails on it), not reuse that graph from the cache
        return bytes.fromhex(compile_hash(",".join(self.families) + (";strict" if self.strict else "")))
