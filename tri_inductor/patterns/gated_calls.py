"""Launches of ours whose grid is symbolic are skipped in the wrapper while the grid is empty.

Over a symbolic token count a GEMM launches one kernel per distinct bucket config, each with its
grid multiplied by a 0/1 gate on M (``gemm/ops.py``); the kernels of other buckets get an empty
grid. An empty grid runs nothing on the GPU, but Inductor's wrapper still evaluates the call's
arguments (``reinterpret_tensor`` views of the weight) and runs the launcher's Python for it:
host time in every eager step of vLLM's piecewise range, the whole step on a small model
(docs/design/gemm.md, "Host time of the gated dispatch"). :func:`skip_empty_grids` rewrites the
wrapper Inductor generated (``GraphLowering.codegen``'s output, before it is written, loaded and
cached) so each such call reads ``if <grid>: kernel.run(...)``, on the same line: line numbers,
and with them Inductor's line map, do not change. The launches that run are the same.
"""
from __future__ import annotations

import ast
import re

_RUN_LINE = re.compile(r"^(?P<indent>[ \t]*)(?P<var>\w+)\.run\(.*\)[ \t]*$")


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
    n = 0
    for i, line in enumerate(lines):
        m = _RUN_LINE.match(line)
        if m is None or m.group("var") not in kernel_vars:
            continue
        cond = _grid_condition(line.strip())
        if cond is not None:
            lines[i] = f"{m.group('indent')}if {cond}: {line.strip()}"
            n += 1
    return "\n".join(lines), n


def our_kernel_vars(code: str, our_jit_names: set[str] | frozenset[str]) -> set[str]:
    """Wrapper variables (``mm_kernel_0 = async_compile.triton(...)``) bound to a kernel of ours."""
    from ..audit.output_code import kernel_definitions

    return {var for var, d in kernel_definitions(code).items()
            if d["kind"] == "user_triton" and d["jit_name"] in our_jit_names}
