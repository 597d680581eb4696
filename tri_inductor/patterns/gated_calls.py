"""Launches of ours whose grid is symbolic are skipped in the wrapper while the grid is empty.

Over a symbolic token count a GEMM launches one kernel per distinct bucket config, each with its
grid multiplied by a 0/1 gate on M (``gemm/ops.py``); the kernels of other buckets get an empty
grid. An empty grid runs nothing on the GPU, but Inductor's wrapper still evaluates the call's
arguments (``reinterpret_tensor`` views of the weight) and runs the launcher's Python for it:
host time in every eager step of vLLM's piecewise range, the whole step on a small model
(docs/design/gemm.md, "Host time of the gated dispatch"). :func:`skip_empty_grids` rewrites the
wrapper Inductor generated (``GraphLowering.codegen``'s output, before it is written, loaded and
cached) so each such call reads ``if <grid>: kernel.run(...)``, on the same line: line numbers,
and with them Inductor's line map, do not change. A TMA launch's host-side descriptors, built on
the lines before it, are built only under the same condition. The launches that run are the same.
"""
from __future__ import annotations

import ast
import re

_RUN_LINE = re.compile(r"^(?P<indent>[ \t]*)(?P<var>\w+)\.run\(.*\)[ \t]*$")
# A host-side TMA descriptor Inductor builds for a launch (patterns/_host_tma.py), on the lines
# just before it; with the stream lookup in between.
_DESCRIPTOR_LINE = re.compile(r"^(?P<indent>[ \t]*)(?P<var>\w+) = (?P<rhs>[\w.]*TensorDescriptor\.from_tensor\(.*\))[ \t]*$")
_STREAM_LINE = re.compile(r"^[ \t]*\w+ = get_raw_stream\(.*\)[ \t]*$")


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
            _skip_descriptors(lines, i, cond)
    return "\n".join(lines), n


def _skip_descriptors(lines: list[str], run: int, cond: str) -> None:
    """The launch at ``run``'s descriptors, built just before it, become None while its grid is
    empty (``del`` of them later still finds the name; the launch reads none of them then)."""
    args = set(re.findall(r"\w+", lines[run][lines[run].index(".run("):]))
    j = run - 1
    while j >= 0:
        d = _DESCRIPTOR_LINE.match(lines[j])
        if d is not None and d.group("var") in args:
            lines[j] = f"{d.group('indent')}{d.group('var')} = {d.group('rhs')} if {cond} else None"
        elif d is None and not _STREAM_LINE.match(lines[j]):
            return
        j -= 1


def our_kernel_vars(code: str, our_jit_names: set[str] | frozenset[str]) -> set[str]:
    """Wrapper variables (``mm_kernel_0 = async_compile.triton(...)``) bound to a kernel of ours."""
    from ..audit.output_code import kernel_definitions

    return {var for var, d in kernel_definitions(code).items()
            if d["kind"] == "user_triton" and d["jit_name"] in our_jit_names}
