"""Launches of ours with a symbolic grid are skipped in the wrapper while their grid is empty
(tri_inductor/patterns/gated_calls.py): the rewrite on its own, and inside a graph compiled
for a symbolic token count, run in the interpreter against float64."""
from __future__ import annotations

import math

import pytest
import torch

from pattern_harness import rel
from tri_inductor.patterns.gated_calls import skip_empty_grids

CALL = ("mm_kernel_0.run(arg1_1, reinterpret_tensor(arg2_1, (64, 96), (1, 64), 0), buf0, s77, 96, 64, "
        "{g0}, {g1}, 1, stream=stream0)")


def test_only_symbolic_grids_of_our_kernels_are_guarded():
    code = "\n".join([
        "def call(args):",
        "    " + CALL.format(g0="3*((15 + s77) // 16)*min(1, ((-1) + s77) // 16)", g1="1"),
        "    " + CALL.format(g0="7", g1="2"),  # constant grid: left alone
        "    " + CALL.format(g0="s77", g1="2").replace("mm_kernel_0", "triton_poi_fused_0"),  # not ours
        "    x = 1"])
    new, n = skip_empty_grids(code, {"mm_kernel_0"})
    lines = new.split("\n")
    assert n == 1 and len(lines) == len(code.split("\n"))  # same line count: Inductor's line map holds
    assert lines[1].startswith("    if (_tri_g1 := (3 * ((15 + s77) // 16) * min(1, (-1 + s77) // 16))): mm_kernel_0.run(")
    assert lines[2:] == code.split("\n")[2:]
    for s77 in (1, 16, 17, 40):  # the guard is the grid: true exactly when the launch has programs
        guard = lines[1].split(": mm_kernel_0", 1)[0].strip()[3:]
        grid0 = 3 * ((15 + s77) // 16) * min(1, (s77 - 1) // 16)
        assert bool(eval(guard, {"s77": s77})) == (grid0 > 0)


def test_a_grid_expression_is_evaluated_once_per_block():
    """Launches (and descriptors) with the same grid expression share one evaluation: bound where
    it is sure to run, read after; never read where the binding's block may not have run."""
    grid = "2*min(1, ((-1) + s77) // 16)"
    run = "    " + CALL.format(g0=grid, g1="1")
    code = "\n".join(["def call(s77):", "    if s77 > 100:", "    " + run, "    else:", "    " + run,
                      run, run, "", "    # a comment", run, "def other(s77):", run])
    new, n = skip_empty_grids(code, {"mm_kernel_0"})
    lines = new.split("\n")
    assert n == 6 and len(lines) == len(code.split("\n"))
    assert ":= (2 * min(1, (-1 + s77) // 16))" in lines[2]  # inside the if: bound there
    assert ":=" in lines[4]  # the else branch cannot read the if branch's local: binds its own
    assert ":=" in lines[5] and lines[6].startswith("    if _tri_g5: ") and lines[9].startswith("    if _tri_g5: ")
    assert ":=" in lines[11]  # another function: its own local
    calls = []
    env = {"mm_kernel_0": type("K", (), {"run": staticmethod(lambda *a, **k: calls.append(a[-3]))}),
           "reinterpret_tensor": lambda *a: None, "arg1_1": 0, "arg2_1": 0, "buf0": 0, "stream0": 0}
    exec(new, env)
    for s77, want in ((8, 0), (40, 5), (200, 5)):  # every launch with programs runs, none without
        calls.clear()
        env["call"](s77)
        env["other"](s77)
        assert len(calls) == want and all(g > 0 for g in calls)


def test_a_tma_launch_builds_its_descriptors_only_with_programs():
    """Inductor builds host-side TMA descriptors for the launches after them, one per (tensor,
    block shape), shared by launches up to its ``del``: each is None while no launch that reads
    it has programs, and the later ``del`` still finds it."""
    desc = "triton.tools.tensor_descriptor.TensorDescriptor.from_tensor"
    run = ("    # Topologically Sorted Source Nodes: [h], Original ATen: [aten.t, aten.mm]\n"
           "    stream0 = get_raw_stream(0)\n"
           "    mm_tma_kernel_{k}.run({a}, {b}, {c}, w, s77, 384, 256, {grid}, 1, 1, stream=stream0)")
    code = "\n".join([
        "def call(s77, buf1, w, out):",
        f"    other = {desc}(buf1, [64, 64])",  # read by no launch of ours: left alone
        f"    buf8 = {desc}(buf1, [64, 128])",  # read by both launches below
        f"    buf9 = {desc}(w, [64, 128])",
        f"    buf10 = {desc}(out, [64, 64])",
        run.format(k=5, a="buf8", b="buf9", c="buf10", grid="6*min(1, ((-1) + s77) // 256)*(1 - min(1, ((-1) + s77) // 512))"),
        "    del buf9",
        f"    buf12 = {desc}(w, [128, 128])",
        run.format(k=6, a="buf8", b="buf12", c="buf10", grid="3*min(1, ((-1) + s77) // 512)"),
        "    del buf8",
        "    del buf10",
        "    del buf12",
        "    return other"])
    new, n = skip_empty_grids(code, {"mm_tma_kernel_5", "mm_tma_kernel_6"})
    assert n == 2 and len(new.split("\n")) == len(code.split("\n"))
    made, ran = [], []

    def kernel(k):
        return type("K", (), {"run": staticmethod(lambda *a, **kw: ran.append((k, a[:3])))})

    tools = type("T", (), {"tensor_descriptor": type("T", (), {
        "TensorDescriptor": type("D", (), {"from_tensor": staticmethod(lambda t, b: made.append((t, b)) or (t, *b))})})})
    env = {"get_raw_stream": lambda i: 0, "triton": type("T", (), {"tools": tools}),
           "mm_tma_kernel_5": kernel(5), "mm_tma_kernel_6": kernel(6)}
    exec(new, env)
    for s77, launches in ((100, []), (300, [5]), (1000, [6])):
        made.clear()
        ran.clear()
        assert env["call"](s77, "b", "w", "o") == ("b", 64, 64)
        assert [k for k, _ in ran] == launches
        for _, args in ran:
            assert None not in args  # every descriptor a launch reads was built
        wanted = {("b", (64, 64))} | ({("b", (64, 128)), ("o", (64, 64))} if launches else set())
        wanted |= {("w", (64, 128))} if 5 in launches else set()
        wanted |= {("w", (128, 128))} if 6 in launches else set()
        assert {(t, tuple(b)) for t, b in made} == wanted


def test_unparseable_or_gridless_calls_are_left_alone():
    code = "    mm_kernel_0.run(a, b, stream=stream0)\n    mm_kernel_0.run(a, b, c, s77 +, 1, 1, stream=stream0)"
    assert skip_empty_grids(code, {"mm_kernel_0"}) == (code, 0)


def test_symbolic_token_count_graph_launches_no_empty_grid(interpreter, monkeypatch):
    """torch.compile(backend="tri_inductor", dynamic=True) on CPU tensors in the interpreter: the
    GEMM's launches are gated per M bucket, every token count matches float64, and no launch
    with an empty grid reaches Inductor's launcher (the wrapper skipped it)."""
    from torch._inductor.runtime.triton_heuristics import CachingAutotuner

    from tri_inductor import last_audit

    launched = []
    real_run = CachingAutotuner.run

    def run(self, *args, stream, **kwargs):
        launched.append(math.prod(int(g) for g in args[-3:]))
        return real_run(self, *args, stream=stream, **kwargs)

    monkeypatch.setattr(CachingAutotuner, "run", run)
    torch.manual_seed(0)
    lin = torch.nn.Linear(96, 80, bias=False).to(torch.bfloat16)
    torch._dynamo.reset()
    f = torch.compile(lambda x: lin(x), backend="tri_inductor", dynamic=True)
    for m in (3, 40, 300):
        x = torch.randn(m, 96).to(torch.bfloat16)
        launched.clear()
        with torch.no_grad():
            out = f(x)
        assert rel(out, x.double() @ lin.weight.double().t()) < 2e-2
        assert launched and all(g > 0 for g in launched), launched
    code = last_audit()[-1].code
    runs = [line.strip() for line in code.splitlines() if ".run(" in line and "mm" in line]
    assert len(runs) >= 2 and all(r.startswith("if (") for r in runs), runs  # one gated launch per bucket config
