"""Launches of ours whose grid is symbolic are skipped in the wrapper while the grid is empty.

Over a symbolic token count a GEMM launches one kernel per distinct bucket config, each with its
grid multiplied by a 0/1 gate on M (``gemm/ops.py``); the kernels of other buckets get an empty
grid. An empty grid runs nothing on the GPU, but Inductor's wrapper still evaluates the call's
arguments (``reinterpret_tensor`` views of the weight) and runs the launcher's Python for it:
host time in every eager step of vLLM's piecewise range, the whole step on a small model
(docs/design/gemm.md, "Host time of the gated dispatch"). :func:`skip_empty_grids` rewrites the
wrapper Inductor generated (``GraphLowering.codegen``'s output, before it is written, loaded and
cached) so each such call reads ``if <grid>: kernel.run(...)``, on the same line: line numbers,
and with them Inductor's line map, do not change. A TMA launch's host-side descriptors are built
only when a launch that reads them has programs. Each distinct grid expression is evaluated once
in a block (its descriptors and its launch share it: ``:=``). The launches that run are the same.
"""
from __future__ import annotations

import ast
import bisect
import re

_RUN_LINE = re.compile(r"^(?P<indent>[ \t]*)(?P<var>\w+)\.run\(.*\)[ \t]*$")
# A host-side TMA descriptor Inductor builds for launches (patterns/_host_tma.py).
_DESCRIPTOR_LINE = re.compile(r"^(?P<indent>[ \t]*)(?P<var>\w+) = (?P<rhs>[\w.]*TensorDescriptor\.from_tensor\(.*\))[ \t]*$")


def _grid_condition(call_src: str) -> str | None:
    """``(g0) * (g1)`` of the symbolic grid dimensions of a user-kernel ``k.run(*args, g0, g1, g2,
    stream=s)`` call (Inductor passes a user kernel's grid as its last three positional
    arguments); None when the grid is constant or the line is not such a call."""
    try:
        call = ast.parse(call_src, mode="eval").body
    except SyntaxError:
        return None
    if not isinstance(call, ast.Call) or len(call.args) < 4 or not any(k.arg == "stream" for k in call.keywords):
        return None
    dims = [g for g in call.args[-3:] if not isinstance(g, ast.Constant)]
    if not dims or any(isinstance(g, ast.Starred) for g in dims):
        return None
    return " * ".join(f"({ast.unparse(g)})" for g in dims)


def skip_empty_grids(code: str, kernel_vars: set[str]) -> tuple[str, int]:
    """``code`` with each ``.run`` call of a kernel variable in ``kernel_vars`` whose grid is
    symbolic guarded by its grid; (new code, calls guarded)."""
    if not kernel_vars:
        return code, 0
    lines = code.split("\n")
    conds: dict[int, str | None] = {}  # every .run line: its guard (None: it always runs)
    for i, line in enumerate(lines):
        m = _RUN_LINE.match(line)
        if m is not None:
            conds[i] = _grid_condition(line.strip()) if m.group("var") in kernel_vars else None
    guards = {i: [c] for i, c in conds.items() if c is not None}
    guards.update(_descriptor_guards(lines, conds))
    _write_guards(lines, guards)
    return "\n".join(lines), sum(1 for c in conds.values() if c is not None)


def _descriptor_guards(lines: list[str], conds: dict[int, str | None]) -> dict[int, list[str]]:
    """A host-side TMA descriptor is built only when a launch that reads it has programs: its
    line becomes ``buf = TensorDescriptor.from_tensor(...) if <any reader's grid> else None``
    (Inductor builds one descriptor per (tensor, block shape) and may hand it to several
    launches, up to its ``del``; a reader that always runs keeps it unconditional). Returns each
    such line's readers' grid conditions."""
    out: dict[int, list[str]] = {}
    runs = sorted(conds)
    dels: dict[str, list[int]] = {}  # the lines that drop each name, in order
    for i, line in enumerate(lines):
        if line.lstrip().startswith("del "):
            dels.setdefault(line.strip()[4:], []).append(i)
    for j, line in enumerate(lines):
        d = _DESCRIPTOR_LINE.match(line)
        if d is None:
            continue
        var = d.group("var")
        dropped = next((i for i in dels.get(var, ()) if i > j), len(lines))
        name = re.compile(rf"\b{re.escape(var)}\b")
        window = runs[bisect.bisect_right(runs, j):bisect.bisect_left(runs, dropped)]
        readers = [conds[i] for i in window if name.search(lines[i].split(".run(", 1)[1])]
        if readers and all(c is not None for c in readers):
            out[j] = list(dict.fromkeys(readers))
    return out


def _write_guards(lines: list[str], guards: dict[int, list[str]]) -> None:
    """Put each line's guard on it (a launch: ``if <grid>: k.run(...)``; a descriptor: ``... if
    <any reader's grid> else None``), each distinct grid expression evaluated once: where it is
    sure to be evaluated (a guard's first term) it is bound to a local (``:=``), and later guards
    in the same block read the local. A block's bindings are forgotten when a line of lesser
    indentation shows the block may have ended (an ``else``, another function, a kernel source
    string): a guard never reads a name its path may not have bound."""
    bound: dict[str, tuple[str, int]] = {}  # expression -> (local, indentation it was bound at)
    for i, line in enumerate(lines):
        stripped = line.lstrip()
        if not stripped or stripped.startswith("#"):
            continue
        indent = len(line) - len(stripped)
        bound = {e: b for e, b in bound.items() if b[1] <= indent}
        terms = guards.get(i)
        if terms is None:
            continue
        parts = []
        for k, expr in enumerate(terms):
            if expr in bound:
                parts.append(bound[expr][0])
            elif k == 0:
                local = f"_tri_g{i}"
                bound[expr] = (local, indent)
                parts.append(f"({local} := {expr})")
            else:
                parts.append(f"({expr})")
        guard = " or ".join(parts)
        d = _DESCRIPTOR_LINE.match(line)
        if d is not None:
            lines[i] = f"{d.group('indent')}{d.group('var')} = {d.group('rhs')} if {guard} else None"
        else:
            lines[i] = f"{line[:indent]}if {guard}: {stripped}"


def our_kernel_vars(code: str, our_jit_names: set[str] | frozenset[str]) -> set[str]:
    """Wrapper variables (``mm_kernel_0 = async_compile.triton(...)``) bound to a kernel of ours."""
    from ..audit.output_code import kernel_definitions

    return {var for var, d in kernel_definitions(code).items()
            if d["kind"] == "user_triton" and d["jit_name"] in our_jit_names}
