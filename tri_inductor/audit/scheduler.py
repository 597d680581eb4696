"""Structured audit of a fresh compile: Inductor's scheduler nodes, classified.

Runs only on a cache miss (there is no scheduler on a hit); its value over the output-code
audit is provenance: each extern/fallback node knows the FX nodes it came from and their
user stack traces.
"""
from __future__ import annotations

import dataclasses


@dataclasses.dataclass
class ExternSite:
    op: str
    fx_nodes: tuple[str, ...]
    source: str | None


def _short_stack(stack_trace: str | None) -> str | None:
    """``file:line in fn: code`` for the innermost user frame of an FX node's stack trace."""
    if not stack_trace:
        return None
    lines = [ln for ln in stack_trace.strip().splitlines() if ln.strip()]
    for i in range(len(lines) - 1, -1, -1):
        ln = lines[i].strip()
        if ln.startswith("File "):
            parts = ln.split(",")
            path = parts[0][len("File "):].strip().strip('"')
            lineno = parts[1].strip().replace("line ", "") if len(parts) > 1 else "?"
            fn = parts[2].strip().replace("in ", "") if len(parts) > 2 else "?"
            code = lines[i + 1].strip() if i + 1 < len(lines) else ""
            return f"{path}:{lineno} in {fn}: {code}"
    return lines[-1].strip()


def _op_name(node) -> str:
    op = getattr(node, "op_overload", None)
    if op is not None:
        name = (getattr(op, "_name", None) or str(op)).replace("::", ".")  # "aten::mm.out"
        return ".".join(name.split(".")[:2])
    kernel = getattr(node, "python_kernel_name", None) or type(node).__name__
    return "aten." + kernel.split(".")[-1] if kernel.startswith("extern_kernels.") else kernel


def _dynamo_name(node) -> str:
    """The name of the node in the graph the backend was given (AOT records it in from_node)."""
    chain = node.meta.get("from_node") or []
    return chain[0].name if chain else node.name


def extern_sites(scheduler) -> list[ExternSite]:
    """Every non-Triton extern/fallback node of a scheduled graph, in order, with provenance."""
    from torch._inductor import ir
    from torch._inductor.scheduler import ExternKernelSchedulerNode

    sites: list[ExternSite] = []

    def visit(snode) -> None:
        if hasattr(snode, "get_nodes") and type(snode).__name__ != "SchedulerNode" and \
                not isinstance(snode, ExternKernelSchedulerNode):
            subs = list(snode.get_nodes())
            if subs and subs[0] is not snode:
                for s in subs:
                    visit(s)
                return
        if not isinstance(snode, ExternKernelSchedulerNode):
            return
        node = snode.node
        if isinstance(node, (ir.UserDefinedTritonKernel, ir.MultiOutput)):
            return
        op = _op_name(node)
        origins = sorted(getattr(node, "origins", ()) or (), key=lambda n: n.name)
        # The origin that *is* the op (the mm, not the views fused around it) names the user's code.
        own = [n for n in origins
               if ".".join(str(getattr(n, "target", "")).replace("::", ".").split(".")[:2]) == op] or origins
        fx = tuple(dict.fromkeys(_dynamo_name(n) for n in own))
        source = next((s for s in (_short_stack(n.meta.get("stack_trace")) for n in own) if s), None)
        sites.append(ExternSite(op=op, fx_nodes=fx, source=source))

    for snode in getattr(scheduler, "nodes", []):
        visit(snode)
    return sites
