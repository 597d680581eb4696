"""The ``linear`` pattern family: post-grad ``mm`` / ``addmm`` -> our Triton GEMM; matmuls with a
dim of 1 -> products and a sum; small ``linalg_solve_triangular`` -> our substitution kernel.

The GEMM itself (kernels, configs, cost model, tuning, dispatch over M) is the ``gemm``
package beside this module; this module only matches the graph.
"""
from __future__ import annotations

import os

import torch

from .gemm import kernels as _kernels
from .gemm import triangular as _triangular
from .gemm.triangular import solve_triangular  # noqa: F401  (registers tri_inductor::solve_triangular)
from .gemm.ops import addmm, mm  # noqa: F401  (registers tri_inductor::mm / addmm)

aten = torch.ops.aten

# The Triton kernels the audit attributes to this family (gate_up's fused GEMM runs them too).
KERNELS = (_kernels.mm_kernel, _kernels.mm_tma_kernel, _kernels.mm_gemv_kernel, _kernels.splitk_reduce_kernel,
           _triangular.solve_triangular_kernel)

# Near misses: an mm/addmm (or triangular solve) our kernels declined. A bmm (attention's, a
# state-space einsum's, Llama 4's experts) is Inductor's Triton matmul by design, not a miss
# (attention's is reported by its family's softmax anchor); one that is not Triton is a violation.
ANCHOR_OPS = [aten.mm.default, aten.addmm.default, aten.linalg_solve_triangular.default]

_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def _val(n):
    return n.meta.get("val") if isinstance(n, torch.fx.Node) else None


def mm_operands_ok(a, b) -> bool:
    """2-D operands of one float dtype, a static weight (N and K known), on a CUDA device or in
    the CPU interpreter harness (where our kernels run through Triton's interpreter)."""
    av, bv = _val(a), _val(b)
    return (av is not None and bv is not None and av.dim() == 2 and bv.dim() == 2
            and av.dtype in _DTYPES and av.dtype == bv.dtype and _device_ok(av.device)
            and isinstance(bv.shape[0], int) and isinstance(bv.shape[1], int))


def _device_ok(device) -> bool:
    # CPU tensors only under Triton's interpreter (the CPU test harness sets TRITON_INTERPRET):
    # a plain CPU compile keeps Inductor's own GEMM.
    return device.type == "cuda" or (device.type == "cpu" and os.environ.get("TRITON_INTERPRET") == "1")


def register_patterns(pm_pass) -> None:
    from torch._inductor.pattern_matcher import CallFunction, KeywordArg, register_graph_pattern

    from tri_inductor.patterns._trace import trace_replacement

    # mm(x, w.t()) is the common case; ``b`` can be any strided 2-D tensor, a permute view
    # included, so one pattern on mm covers it (the permute stays a free view feeding the kernel).
    def mm_check(match):
        return mm_operands_ok(match.kwargs["a"], match.kwargs["b"])

    @register_graph_pattern(CallFunction(aten.mm.default, KeywordArg("a"), KeywordArg("b")),
                            extra_check=mm_check, pass_dict=pm_pass)
    def mm_handler(match, a, b):
        match.replace_by_example(lambda a, b: torch.ops.tri_inductor.mm(a, b), [a, b],
                                 trace_fn=trace_replacement)

    def addmm_check(match):
        bias, a, b = match.kwargs["bias"], match.kwargs["a"], match.kwargs["b"]
        node = match.output_node()
        if node.kwargs.get("beta", 1) != 1 or node.kwargs.get("alpha", 1) != 1:
            return False
        bv = _val(bias)
        return (mm_operands_ok(a, b) and bv is not None and bv.dim() == 1 and bv.dtype == _val(a).dtype
                and bv.shape[0] == _val(b).shape[1])

    @register_graph_pattern(CallFunction(aten.addmm.default, KeywordArg("bias"), KeywordArg("a"),
                                         KeywordArg("b")),
                            extra_check=addmm_check, pass_dict=pm_pass)
    def addmm_handler(match, bias, a, b):
        match.replace_by_example(lambda bias, a, b: torch.ops.tri_inductor.addmm(bias, a, b),
                                 [bias, a, b], trace_fn=trace_replacement)

    # Any other addmm: a linear plus a residual (``x + fc(h)``: the input is [M, N]), a scaled
    # one (alpha, beta). Our GEMM, then the sum as Inductor's pointwise kernel (fused with its
    # consumers), as Inductor itself unfuses a bias add it can fuse better (rounded once more).
    def addmm_any_check(match):
        bias, a, b = match.kwargs["bias"], match.kwargs["a"], match.kwargs["b"]
        if addmm_check(match) or not mm_operands_ok(a, b):
            return False
        node = match.output_node()
        alpha, beta = node.kwargs.get("alpha", 1), node.kwargs.get("beta", 1)
        bv, av, wv = _val(bias), _val(a), _val(b)
        if bv is None or bv.dtype != av.dtype or not all(isinstance(v, (int, float)) for v in (alpha, beta)):
            return False
        try:
            return tuple(torch.broadcast_shapes(bv.shape, (av.shape[0], wv.shape[1]))) == (av.shape[0], wv.shape[1])
        except RuntimeError:
            return False

    @register_graph_pattern(CallFunction(aten.addmm.default, KeywordArg("bias"), KeywordArg("a"),
                                         KeywordArg("b")),
                            extra_check=addmm_any_check, pass_dict=pm_pass)
    def addmm_any_handler(match, bias, a, b):
        node = match.output_node()
        alpha, beta = node.kwargs.get("alpha", 1), node.kwargs.get("beta", 1)

        def repl(bias, a, b):
            out = torch.ops.tri_inductor.mm(a, b)
            return (out if alpha == 1 else out * alpha) + (bias if beta == 1 else bias * beta)

        match.replace_by_example(repl, [bias, a, b], trace_fn=trace_replacement)

    # A matmul with a dim of 1 left to Inductor (a batched GEMV, an outer product, or an mm our
    # GEMM does not take): Inductor's native matmul declines any dim of 1 and calls ATen's bmm/mm.
    # Written as the products and their sum over K (accumulated in fp32, rounded once), it is an
    # Inductor Triton reduction (K == 1: a plain product).
    def unit_check(match):
        a, b = match.kwargs["a"], match.kwargs["b"]
        av, bv = _val(a), _val(b)
        if av is not None and av.dim() == 2 and mm_operands_ok(a, b):
            return False  # our GEMM's (its GEMV at M == 1)
        return (av is not None and bv is not None and av.dim() == bv.dim() and av.dim() in (2, 3)
                and av.dtype in _DTYPES and av.dtype == bv.dtype and unit_dim(av, bv) is not None)

    for target in (aten.bmm.default, aten.mm.default):
        @register_graph_pattern(CallFunction(target, KeywordArg("a"), KeywordArg("b")),
                                extra_check=unit_check, pass_dict=pm_pass)
        def unit_handler(match, a, b):
            match.replace_by_example(matmul_by_products, [a, b], trace_fn=trace_replacement)

    register_solve_patterns(pm_pass)


def _solve_flags(node) -> tuple[bool, bool, bool] | None:
    """(upper, left, unitriangular) of an ``aten.linalg_solve_triangular`` call, if plain bools."""
    args = dict(zip(("A", "B", "upper", "left", "unitriangular"), node.args))
    flags = (args.get("upper", node.kwargs.get("upper")), args.get("left", node.kwargs.get("left", True)),
             args.get("unitriangular", node.kwargs.get("unitriangular", False)))
    return flags if all(isinstance(f, bool) for f in flags) else None


def register_solve_patterns(pm_pass) -> None:
    """``linalg_solve_triangular`` of a small system (gated delta-net's UT transform): ATen's
    (cuBLAS trsm) in Inductor, our substitution kernel here."""
    from torch._inductor.pattern_matcher import CallFunctionVarArgs, register_graph_pattern

    from tri_inductor.patterns._trace import trace_replacement

    target = aten.linalg_solve_triangular.default

    def check(match):
        node = match.output_node()
        av, bv = _val(node.args[0]), _val(node.args[1]) if len(node.args) > 1 else None
        if av is None or bv is None or _solve_flags(node) is None or av.dim() < 2 or bv.dim() < 2:
            return False
        if av.dtype not in _DTYPES or av.dtype != bv.dtype or not _device_ok(av.device):
            return False
        n = av.shape[-1]
        return isinstance(n, int) and n <= _triangular.MAX_N

    def handler(match, *args, **kwargs):
        node = match.output_node()
        upper, left, unit = _solve_flags(node)
        match.replace_by_example(
            lambda a, b: torch.ops.tri_inductor.solve_triangular(a, b, upper, left, unit),
            list(node.args[:2]), trace_fn=trace_replacement)

    register_graph_pattern(CallFunctionVarArgs(target), extra_check=check, pass_dict=pm_pass)(handler)


def unit_dim(av, bv) -> str | None:
    """Which of M, N, K of ``av @ bv`` is statically 1 (K first), else None."""
    from torch.fx.experimental.symbolic_shapes import statically_known_true

    m, k, n = av.shape[-2], av.shape[-1], bv.shape[-1]
    for name, size in (("K", k), ("N", n), ("M", m)):
        if statically_known_true(size == 1):
            return name
    return None


def matmul_by_products(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a @ b`` (2-d or batched 3-d, a dim of 1) as products and an fp32 sum over K."""
    which = unit_dim(a, b)
    if which == "K":
        return a * b  # [.., M, 1] * [.., 1, N]: one product per output, rounded once as the dot's
    if which == "N":  # [.., M, K] * [.., 1, K] summed over K
        return (a.float() * b.transpose(-2, -1).float()).sum(-1, keepdim=True).to(a.dtype)
    return (a.transpose(-2, -1).float() * b.float()).sum(-2, keepdim=True).to(a.dtype)  # M == 1
