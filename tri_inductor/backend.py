"""The ``tri_inductor`` torch.compile backend.

    Dynamo FX graph
      -> attention rewrite (SDPA -> tri_inductor::attention; must happen before AOT, where SDPA
         would be dispatched to a CUDA kernel)
      -> MoE rewrite (router topk / histc / _grouped_mm -> tri_inductor::moe ops; patterns/moe/hf.py)
      -> compile_fx under Triton-only Inductor settings, with our post-grad pattern pass
         (RMSNorm, RoPE, activations, GEMM -> our Triton kernels)
      -> the auditor reads the output code of every graph (fresh or cache hit), the backward
         graph included (compiled now, not lazily at the first backward, so it is audited here)
      -> graph breaks Dynamo counted since our last graph are reported (ops run eagerly there)
      -> strict: fail on any non-Triton kernel or graph break; default: warn and run.
"""
from __future__ import annotations

import collections
import copy
import logging
from collections.abc import Callable, Sequence
from typing import Any

import torch

from . import audit, graph_undo
from .audit import graph_breaks
from .options import OptionsError, TriInductorOptions
from .passes import TriInductorPatternPass, take_last_stats
from .settings import apply_overrides, triton_only_inductor_config

log = logging.getLogger("tri_inductor")

REPORTS_KEPT = 64
"""How many graph reports :func:`last_audit` keeps (each holds its graph's generated code): a
long-running process that recompiles keeps the newest ones, not all of them."""
_REPORTS: collections.deque[audit.GraphReport] = collections.deque(maxlen=REPORTS_KEPT)
# Dynamo's graph-break counts at our previous graph (or import): see audit.graph_breaks
_breaks_seen = graph_breaks.snapshot()

def last_audit() -> list[audit.GraphReport]:
    """Reports of the last :data:`REPORTS_KEPT` graphs compiled by tri_inductor in this process,
    oldest first."""
    return list(_REPORTS)


def tri_inductor_backend(gm: torch.fx.GraphModule, example_inputs: Sequence[Any], *,
                         options: dict[str, Any] | None = None, mode: str | None = None) -> Callable:
    """Entry point registered as the ``tri_inductor`` Dynamo backend."""
    options = dict(options or {})
    if mode in ("max-autotune", "max-autotune-no-cudagraphs"):
        options.setdefault("gemm", "templates")
    elif mode not in (None, "default", "reduce-overhead"):
        raise OptionsError(f"mode={mode!r} is not supported by tri_inductor")
    opts, overrides = TriInductorOptions.from_mapping(options)
    if mode == "reduce-overhead":
        overrides.setdefault("triton.cudagraphs", True)
    return compile_graph(gm, list(example_inputs), opts, overrides)


def inductor_config_for(opts: TriInductorOptions, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Triton-only settings + our pattern pass + the user's overrides (checked)."""
    cfg = apply_overrides(triton_only_inductor_config(opts), overrides or {}, opts.strict)
    user_pass = overrides.get("post_grad_custom_post_pass") if overrides else None
    cfg["post_grad_custom_post_pass"] = _compose_post_pass(user_pass, TriInductorPatternPass(opts.families, opts.strict))
    return cfg


def _compose_post_pass(user_pass, ours: TriInductorPatternPass):
    if user_pass is None:
        return ours
    from torch._inductor.custom_graph_pass import CustomGraphPass

    class _Both(CustomGraphPass):
        def __call__(self, graph):
            user_pass(graph)
            ours(graph)

        def uuid(self):
            return (repr(user_pass.uuid()) + repr(ours.uuid())).encode()

    return _Both()


def compile_graph(gm: torch.fx.GraphModule, example_inputs: list[Any], opts: TriInductorOptions,
                  overrides: dict[str, Any] | None = None) -> Callable:
    from torch._inductor.compile_fx import compile_fx

    from .cache import claim_default_dirs

    claim_default_dirs()  # Inductor's/Triton's caches under ours unless the user chose folders
    eager = gm  # what codegen-only mode runs
    if opts.codegen_only:
        gm = copy.deepcopy(gm)
    _rewrite_dynamo_graph(gm, example_inputs, opts)
    cfg = inductor_config_for(opts, overrides)
    stack_traces = {n.name: n.meta.get("stack_trace") for n in gm.graph.nodes}

    breaks = _new_graph_breaks()
    needs_grad = torch.is_grad_enabled() and (
        any(isinstance(x, torch.Tensor) and x.requires_grad for x in example_inputs)
        or any(p.requires_grad for p in gm.parameters()))  # parameters not lifted to inputs

    def run_compile(inputs):
        take_last_stats()
        with audit.collect_reports() as reports, _backward_now(needs_grad):
            compiled = compile_fx(gm, inputs, config_patches=cfg)
        _finish_reports(reports, stack_traces)
        for r in reports if needs_grad else []:
            if r.code and "tangents_" in r.code:  # the backward graph takes the incoming gradients
                r.graph += " (backward)"
        return compiled, reports

    if opts.codegen_only:
        from .testing.codegen_only import fake_cuda_inputs, fake_sm90, retarget_to_cuda

        with fake_sm90():
            retarget_to_cuda(gm)
            fake_inputs, _ = fake_cuda_inputs(example_inputs)
            _, reports = run_compile(fake_inputs)
        compiled = eager.forward
    else:
        compiled, reports = run_compile(example_inputs)
    if breaks:
        reports = [*reports, breaks]
    _REPORTS.extend(reports)
    if opts.audits:
        audit.enforce(reports, strict=opts.strict, verbose=opts.verbose)
    return compiled


def _new_graph_breaks() -> audit.GraphReport | None:
    """Graph breaks Dynamo counted since our previous graph: this graph ends where one happened.
    (Process-wide counts: a break in another backend's compile in between is reported here too.)"""
    global _breaks_seen
    reasons = graph_breaks.new_reasons(_breaks_seen)
    _breaks_seen = graph_breaks.snapshot()
    return graph_breaks.breaks_report(reasons) if reasons else None


def _backward_now(needs_grad: bool):
    """AOTAutograd compiles the backward lazily, at the first ``.backward()``, outside our audit:
    ask for it now, so its output code is audited (and strict fails) at compile time."""
    import contextlib

    if not needs_grad:
        return contextlib.nullcontext()
    return torch._functorch.config.patch(force_non_lazy_backward_lowering=True)


def _needs_grad(example_inputs: list[Any]) -> bool:
    return torch.is_grad_enabled() and any(isinstance(x, torch.Tensor) and x.requires_grad for x in example_inputs)


def _dynamo_rewrites(opts: TriInductorOptions) -> list[tuple[str, Callable[..., Any]]]:
    """The rewrites of the Dynamo graph (before AOT), in order: (name, fn(gm, example_inputs))."""
    fam = opts.families
    table = [
        ("fast path", lambda gm, xs: _decompose_fast_path(gm, xs, "attention" in fam)),
        ("complex pairs", lambda gm, xs: _rewrite_complex(gm)),
        ("depthwise conv1d", lambda gm, xs: _rewrite_depthwise_conv1d(gm)),
        ("attention", _rewrite_attention if "attention" in fam else None),
        ("moe", (lambda gm, xs: _rewrite_moe(gm)) if "moe" in fam else None),
        ("interleaved rope", (lambda gm, xs: _rewrite_interleaved_rope(gm)) if "rope" in fam else None),
    ]
    return [(name, fn) for name, fn in table if fn is not None]


def _rewrite_dynamo_graph(gm: torch.fx.GraphModule, example_inputs: list[Any], opts: TriInductorOptions) -> None:
    """Apply every Dynamo-graph rewrite. One that raises (a bug, or a graph it did not foresee)
    must not fail the compile: ``graph_undo.run_steps`` restores the graph and runs the others
    without it; the audit then shows what it left to Inductor. Strict mode raises instead."""
    steps = [(name, lambda fn=fn: fn(gm, example_inputs)) for name, fn in _dynamo_rewrites(opts)]
    graph_undo.run_steps(gm.graph, steps, opts.strict, "rewrite", after_restore=gm.recompile)


def _decompose_fast_path(gm: torch.fx.GraphModule, example_inputs: list[Any], attention: bool) -> int:
    from .fastpath import decompose_fast_path

    return decompose_fast_path(gm, use_our_attention=attention and not _needs_grad(example_inputs))


def _rewrite_complex(gm: torch.fx.GraphModule) -> int:
    from .complex_pairs import rewrite_complex_in_dynamo_graph

    return rewrite_complex_in_dynamo_graph(gm)


def _rewrite_depthwise_conv1d(gm: torch.fx.GraphModule) -> int:
    from .depthwise_conv import rewrite_depthwise_conv1d_in_dynamo_graph

    return rewrite_depthwise_conv1d_in_dynamo_graph(gm)


def _rewrite_attention(gm: torch.fx.GraphModule, example_inputs: list[Any]) -> int:
    from .patterns.attention_fx import rewrite_attention_in_dynamo_graph

    if _needs_grad(example_inputs):
        # Our attention kernel is forward-only: a graph that needs gradients keeps SDPA (the
        # audit names it). Compile under torch.no_grad() / inference_mode for inference.
        log.warning("tri_inductor: graph needs gradients; scaled_dot_product_attention left to PyTorch")
        return 0
    n = rewrite_attention_in_dynamo_graph(gm)
    if n:
        gm.recompile()
    return n


def _rewrite_interleaved_rope(gm: torch.fx.GraphModule) -> int:
    from .patterns.rope_fx import rewrite_interleaved_rope_in_dynamo_graph

    return rewrite_interleaved_rope_in_dynamo_graph(gm)


def _rewrite_moe(gm: torch.fx.GraphModule) -> int:
    from .patterns import family_module

    return family_module("moe").rewrite_moe_in_dynamo_graph(gm)


def _finish_reports(reports: list[audit.GraphReport],
                    stack_traces: dict[str, str | None]) -> None:
    from .audit.scheduler import _short_stack

    stats = take_last_stats() or {}
    for r in reports:
        r.near_misses = list(stats.get("near_misses", []))
        for v in r.violations:
            if v.source is None:
                # The op is usually the last node of its fused group (the views come first).
                v.source = next((s for s in (_short_stack(stack_traces.get(n)) for n in reversed(v.fx_nodes)) if s), None)
