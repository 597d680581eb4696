"""The package's import graph: no cycle, and no kernel module importing a test harness.

Every import counts, top-level or inside a function (a lazy import still ties two modules
together). Read from the sources (ast), nothing is imported."""
from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parent.parent / "tri_inductor"

HARNESSES = ("tri_inductor.testing",)
KERNEL_PACKAGES = ("tri_inductor.patterns",)


def _module_name(path: Path) -> str:
    parts = ["tri_inductor", *path.relative_to(PKG).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in PKG.rglob("*.py") if "__pycache__" not in p.parts}


def _resolve(current: str, is_pkg: bool, level: int, name: str | None) -> str:
    if level == 0:
        return name or ""
    base = current.split(".")
    base = base if is_pkg else base[:-1]
    base = base[: len(base) - (level - 1)]
    return ".".join(base + ([name] if name else []))


def import_graph() -> dict[str, set[str]]:
    mods = _modules()
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for mod, path in mods.items():
        is_pkg = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text())):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = _resolve(mod, is_pkg, node.level, node.module)
                # `from pkg import sub` imports the submodule when there is one
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base for a in node.names]
            for t in targets:
                while t and t not in mods and "." in t:  # `import a.b.c` of a non-module attribute
                    t = t.rsplit(".", 1)[0]
                if t in mods and t != mod:
                    graph[mod].add(t)
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[set[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[set[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = set()
            while True:
                w = stack.pop()
                on.discard(w)
                comp.add(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(comp)

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_the_graph_sees_known_edges():
    g = import_graph()
    assert "tri_inductor.patterns._launch" in g["tri_inductor.patterns.rms_norm"]
    assert "tri_inductor.testing.codegen_only" in g["tri_inductor.backend"]  # a lazy import


def test_no_import_cycle():
    assert _cycles(import_graph()) == []


def test_no_kernel_module_imports_a_test_harness():
    g = import_graph()
    bad = {m: sorted(t for t in deps if t.startswith(HARNESSES))
           for m, deps in g.items() if m.startswith(KERNEL_PACKAGES)}
    assert {m: d for m, d in bad.items() if d} == {}


# The lead's GEMM files still borrow private helpers (gate_up: activation's source forms and
# linear._mm_ok; linear: activation's launch config); the patterns/gemm/ rewrite imports
# matcher_utils instead. Drop them from this allowance then.
BORROWING_ALLOWED = {"tri_inductor.patterns.gate_up", "tri_inductor.patterns.linear"}
FAMILIES = {f"tri_inductor.patterns.{f}" for f in ("rope", "rms_norm", "gate_up", "activation", "linear", "attention")}


def test_families_share_helpers_through_matcher_utils_not_each_others_privates():
    mods = _modules()
    borrowed = []
    for mod in sorted(FAMILIES & set(mods)):
        if mod in BORROWING_ALLOWED:
            continue
        tree = ast.parse(mods[mod].read_text())
        aliases = {}
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                base = _resolve(mod, False, node.level, node.module)
                for a in node.names:
                    target = f"{base}.{a.name}"
                    if target in FAMILIES:
                        aliases[a.asname or a.name] = target
                    elif base in FAMILIES and base != mod and a.name.startswith("_"):
                        borrowed.append(f"{mod} imports {base}.{a.name}")
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                    and node.value.id in aliases and node.attr.startswith("_")):
                borrowed.append(f"{mod} uses {aliases[node.value.id]}.{node.attr}")
    assert borrowed == []
