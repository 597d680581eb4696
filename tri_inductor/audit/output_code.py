"""Audit of Inductor's output code (the Python wrapper module it writes for a graph).

The wrapper is the ground truth of what a compiled graph launches, and Inductor hands it to
``GraphLowering.save_output_code`` on a fresh compile *and* on FX/AOTAutograd cache hits, so
reading it is how the auditor sees every graph. We match calls, not words: kernel sources are
inside triple-quoted strings and comments mention ``aten.mm`` freely; both are removed first.
"""
from __future__ import annotations

import re

from .hints import hint_for
from .report import GraphReport, KernelEntry

_KERNEL_DEF = re.compile(
    r"^(\w+) = async_compile\.(\w+)\(\s*['\"](\w+)['\"],\s*(?:r?'''(.*?)'''|r?\"\"\"(.*?)\"\"\")",
    re.S | re.M)
_TRIPLE = re.compile(r"r?'''.*?'''|r?\"\"\".*?\"\"\"", re.S)
_SOURCE_NODES = re.compile(r"#\s*Topologically Sorted Source Nodes:\s*\[(.*?)\](?:,\s*Original ATen:\s*\[(.*?)\])?")
_RUN = re.compile(r"\b(\w+)\.run\(")
_EXTERN = re.compile(r"\bextern_kernels\.(\w+)\(")
_TORCH_OPS = re.compile(r"\btorch\.ops\.(\w+)\.(\w+)(?:\.(\w+))?\(")
_BARE_ATEN = re.compile(r"(?<![\w.])aten\.(\w+)(?:\.(\w+))?\(")
_INPLACE_FILL = re.compile(r"\b(\w+)\.(zero_|fill_|copy_|normal_|uniform_)\(")
_CALL = re.compile(r"(?<![\w.])(\w+)\(")

# Calls that launch no kernel: allocation, views, asserts, symbolic sizes.
_NO_KERNEL_OPS = {
    "empty", "empty_strided", "as_strided", "view", "reshape", "alias", "_reinterpret_tensor",
    "reinterpret_tensor", "_alloc_from_pool", "_assert_scalar", "_assert_tensor_metadata",
    "sym_size", "sym_stride", "sym_numel", "sym_storage_offset", "resize_storage_bytes_",
    "record_stream", "set_", "detach", "_unsafe_view", "expand", "permute", "t", "transpose",
    "unsqueeze", "squeeze", "slice", "select", "split", "_foobar",
    "view_as_real", "view_as_complex",  # a complex tensor's (re, im) pairs as a view, and back
}
# Wrapper helpers the audit allows.  ``copy_if_misaligned`` (torch >= 2.13 emits
# ``arg = copy_if_misaligned(arg)`` in ``call``) clones an input only when it breaks the alignment
# the kernels were compiled for (torch < 2.13 guarded on alignment and recompiled instead): an
# input-layout fix-up, not a kernel of the graph.  Listed so no call-matching rule flags it.
_WRAPPER_HELPERS = {"copy_if_misaligned"}
# Collectives a compiled graph may call (tensor parallelism): vLLM's custom ops, which dispatch to
# NCCL (pynccl) once our vLLM config turns its custom all-reduce off, and torch's functional
# collectives (NCCL).  Communication, not compute: listed apart, never a violation.
COMMUNICATION_OPS = frozenset({("vllm", "all_reduce"), ("vllm", "reduce_scatter"), ("vllm", "all_gather"),
                               ("vllm", "all_reduce_symmetric_with_copy")})
COMMUNICATION_NAMESPACES = frozenset({"_c10d_functional", "c10d_functional"})


def is_communication_op(namespace: str, op: str) -> bool:
    return namespace in COMMUNICATION_NAMESPACES or (namespace, op) in COMMUNICATION_OPS


def hooked_op_family(namespace: str, op: str) -> str | None:
    """The family of an opaque op whose kernels run on our hooks in this process, else None."""
    if namespace != "vllm":
        return None
    from .. import vllm_moe  # torch only at import: no vLLM needed to ask

    return "moe" if op in vllm_moe.LAYER_OPS and vllm_moe.is_active() else None


_USER_DECORATOR = "@triton_heuristics.user_autotune("
_TEMPLATE_DECORATOR = "@triton_heuristics.template("


def _jit_name(source: str) -> str | None:
    m = re.search(r"@triton\.jit\s*\n\s*def\s+(\w+)\s*\(", source)
    return m.group(1) if m else None


def kernel_definitions(code: str) -> dict[str, dict]:
    """Kernels defined in the module: wrapper variable -> {compiler, kind, jit_name, source}."""
    defs = {}
    for m in _KERNEL_DEF.finditer(code):
        var, compiler, _name, src1, src2 = m.groups()
        source = src1 if src1 is not None else (src2 or "")
        if compiler == "triton":
            if _USER_DECORATOR in source:
                kind = "user_triton"
            elif _TEMPLATE_DECORATOR in source:
                kind = "triton_template"
            else:
                kind = "inductor_triton"
        else:
            kind = "non_triton"
        defs[var] = {"compiler": compiler, "kind": kind, "jit_name": _jit_name(source), "source": source}
    return defs


def audit_output_code(code: str, graph: str = "graph", origin: str = "compile",
                      our_kernels: dict[str, str] | None = None) -> GraphReport:
    """Classify every launch site of an Inductor output-code module.

    ``our_kernels`` maps a Triton function name of ours to its pattern family.
    """
    our_kernels = our_kernels or {}
    defs = kernel_definitions(code)
    body = _TRIPLE.sub("''", code)
    entries: list[KernelEntry] = []
    fx_nodes: tuple[str, ...] = ()
    for raw in body.splitlines():
        line = raw.strip()
        if line.startswith("#"):
            m = _SOURCE_NODES.search(line)
            if m:
                fx_nodes = tuple(s.strip() for s in m.group(1).split(",") if s.strip())
            continue
        if not line or line.startswith(("def ", "class ", "import ", "from ")) or "async_compile." in line:
            continue
        code_part = line.split("  #", 1)[0]
        for m in _RUN.finditer(code_part):
            var = m.group(1)
            if var not in defs:
                continue
            d = defs[var]
            kind, family = d["kind"], None
            if kind == "user_triton" and d["jit_name"] in our_kernels:
                kind, family = "our_triton", our_kernels[d["jit_name"]]
            entries.append(KernelEntry(kind=kind, name=d["jit_name"] or var, fx_nodes=fx_nodes, family=family,
                                       hint=None if kind != "non_triton" else hint_for(var)))
        for m in _EXTERN.finditer(code_part):
            op = m.group(1)
            entries.append(KernelEntry("non_triton", f"extern_kernels.{op}", op=f"aten.{op}", fx_nodes=fx_nodes,
                                       hint=hint_for(op)))
        for m in _TORCH_OPS.finditer(code_part):
            ns, op, overload = m.groups()
            if ns in ("higher_order",) or op in _NO_KERNEL_OPS:
                continue
            call = f"torch.ops.{ns}.{op}" + (f".{overload}" if overload else "")
            if is_communication_op(ns, op):
                entries.append(KernelEntry("communication", call, op=f"{ns}.{op}", fx_nodes=fx_nodes))
                continue
            family = hooked_op_family(ns, op)
            if family:
                entries.append(KernelEntry("hooked_op", call, op=f"{ns}.{op}", fx_nodes=fx_nodes, family=family))
                continue
            entries.append(KernelEntry("non_triton", call, op=f"{ns}.{op}", fx_nodes=fx_nodes, hint=hint_for(op, ns)))
        for m in _BARE_ATEN.finditer(code_part):
            op, overload = m.groups()
            if op in _NO_KERNEL_OPS:
                continue
            entries.append(KernelEntry("non_triton", f"aten.{op}" + (f".{overload}" if overload else ""),
                                       op=f"aten.{op}", fx_nodes=fx_nodes, hint=hint_for(op)))
        for m in _INPLACE_FILL.finditer(code_part):
            if m.group(1) in ("torch", "extern_kernels", "aten"):
                continue
            op = m.group(2)
            entries.append(KernelEntry("non_triton", f"{m.group(1)}.{op}()", op=f"aten.{op}", fx_nodes=fx_nodes,
                                       hint="an ATen fill/copy kernel launched by the wrapper: Inductor emits this "
                                            "for buffers it zero-fills (atomic accumulation, split reductions)"))
        for m in _CALL.finditer(code_part):
            var = m.group(1)
            if var in _WRAPPER_HELPERS:
                continue
            if var in defs and defs[var]["kind"] == "non_triton":
                entries.append(KernelEntry("non_triton", var, op=f"{defs[var]['compiler']} kernel", fx_nodes=fx_nodes,
                                           hint=f"Inductor wrote a {defs[var]['compiler']} kernel: inputs are not on a "
                                                "Triton device (CPU tensors?); tri_inductor targets GPUs"))
    hits: dict[str, int] = {}
    for e in entries:
        if e.family:
            hits[e.family] = hits.get(e.family, 0) + 1
    return GraphReport(graph=graph, kernels=entries, origin=origin, pattern_hits=hits, code=code)


def triton_kernel_names(code: str) -> set[str]:
    """Names Triton kernels of this module have at run time (what the profiler shows)."""
    return {d["jit_name"] for d in kernel_definitions(code).values() if d["compiler"] == "triton" and d["jit_name"]}
