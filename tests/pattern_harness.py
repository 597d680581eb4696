"""Shared by the per-family pattern tests: compile a Dynamo-captured function for a fake sm_90
with one family's patterns as the post-grad pass, and check our kernel was inlined."""
from __future__ import annotations

import re

import torch
import torch._inductor.config as ic
from torch._inductor.compile_fx import compile_fx
from torch._inductor.custom_graph_pass import CustomGraphPass
from torch._inductor.graph import GraphLowering
from torch._inductor.pattern_matcher import PatternMatcherPass

from tri_inductor.testing.codegen_only import fake_cuda_inputs, fake_sm90


def rel(out: torch.Tensor, ref: torch.Tensor) -> float:
    """||out - ref|| / ||ref||, in float64."""
    return ((out.double() - ref).norm() / ref.norm()).item()


class _Pass(CustomGraphPass):
    def __init__(self, pm: PatternMatcherPass) -> None:
        self.pm, self.hits = pm, 0  # a test-local pass: Inductor's caches are disabled below

    def __call__(self, graph: torch.fx.Graph) -> None:
        from tri_inductor.passes import realize_triton_kernel_inputs
        from tri_inductor.patterns.normalise import normalise

        normalise(graph)  # as TriInductorPatternPass does before every family
        self.hits += self.pm.apply(graph)
        realize_triton_kernel_inputs(graph)  # as TriInductorPatternPass does

    def uuid(self) -> str:
        return "tri_inductor-test-patterns"


def compile_codegen(fn, args, pm: PatternMatcherPass, dynamic: list[tuple[int, int]] | None = None,
                    **config) -> tuple[int, str]:
    """Capture ``fn`` with Dynamo (``dynamic``: (arg, dim) pairs; default dim 0 of every tensor),
    compile its graph for a fake sm_90 with our patterns as the post-grad custom pass; return
    (hits, output code). ``fn`` itself runs eagerly on the CPU."""
    p, codes = _Pass(pm), []

    def backend(gm, inputs):
        from torch._guards import TracingContext

        vals = [n.meta["example_value"] for n in gm.graph.find_nodes(op="placeholder")]
        with fake_sm90():
            fake, _ = fake_cuda_inputs(vals, fake_mode=TracingContext.get().fake_mode)
            with ic.patch(post_grad_custom_post_pass=p, force_disable_caches=True, **config):
                compile_fx(gm, fake)
        return gm.forward

    torch._dynamo.reset()
    if dynamic is None:
        dynamic = [(i, 0) for i, a in enumerate(args) if isinstance(a, torch.Tensor)]
    for i, dim in dynamic:
        torch._dynamo.mark_dynamic(args[i], dim)
    saved = GraphLowering.save_output_code
    GraphLowering.save_output_code = staticmethod(codes.append)
    try:
        torch.compile(fn, backend=backend, fullgraph=True)(*args)
    finally:
        GraphLowering.save_output_code = saved
    assert codes, "no output code was written"
    return p.hits, codes[-1]


def assert_our_kernel(code: str, kernel: str) -> None:
    assert f"def {kernel}(" in code, f"{kernel} source not inlined"
    assert "torch.ops.tri_inductor" not in code  # inlined as a user kernel, not an opaque call
    assert re.search(rf"{kernel}_\d+\.run\(", code)


def backend_output_code(fn, *args) -> str:
    """Compile ``fn(*args)`` with the project backend (every family, codegen-only for a fake
    sm_90) and return the output code of the last graph, as the auditor kept it."""
    import tri_inductor

    torch._dynamo.reset()
    out = torch.compile(fn, backend="tri_inductor", options={"codegen_only": True})(*args)
    assert out is not None
    return tri_inductor.last_audit()[-1].code


def sm90_ptx(kernel, types: dict[str, str], constants: dict, num_warps: int,
             unaligned: tuple[str, ...] = ()) -> str:
    """PTX of a ``@triton.jit`` kernel compiled for sm_90 by triton's bundled toolchain (no GPU).
    ``types``: pointer/float argument types (other arguments i32). Pointer and integer arguments
    are marked 16-divisible, as the launchers mark aligned pointers and multiples of 16 (hidden
    sizes, strides), except those named in ``unaligned`` (e.g. a token count)."""
    import triton
    from triton.backends.compiler import GPUTarget

    sig = {n: "i32" for n in kernel.arg_names}
    sig.update(types)
    sig.update({c: "constexpr" for c in constants})
    attrs = {(i,): [["tt.divisibility", 16]] for i, n in enumerate(kernel.arg_names)
             if n not in unaligned and (sig[n].startswith("*") or sig[n] == "i32")}
    src = triton.compiler.ASTSource(kernel, sig, constants, attrs)
    return triton.compile(src, target=GPUTarget("cuda", 90, 32), options=dict(num_warps=num_warps)).asm["ptx"]


def global_memory_ops(ptx: str, griddep: bool = False) -> list[str]:
    """The PTX's global loads/stores and barriers, in program order (with ``griddep``, also the
    programmatic-dependent-launch instructions ``griddepcontrol.wait/launch_dependents``)."""
    extra = r"|griddepcontrol\.\w+" if griddep else ""
    return re.findall(rf"\b(ld\.global[\w:.]*|st\.global[\w:.]*|bar\.sync{extra})", ptx)


def dynamo_graph(fn, *inputs, fullgraph: bool = False) -> torch.fx.GraphModule:
    """The graph Dynamo hands a backend for ``fn(*inputs)`` (what our Dynamo-graph rewrites see)."""
    seen = {}

    def backend(gm, example_inputs):
        seen["gm"] = gm
        return gm.forward

    torch._dynamo.reset()
    torch.compile(fn, backend=backend, fullgraph=fullgraph)(*inputs)
    return seen["gm"]
