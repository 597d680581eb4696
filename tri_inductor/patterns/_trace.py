"""Tracing replacement graphs so our kernels stay visible to Inductor.

A ``triton_op`` call inserted into a post-grad graph as-is becomes an opaque fallback (an
extern call).  Traced under FunctionalTensorMode, the op decomposes into its body and each
``wrap_triton`` launch becomes the functional HOP ``triton_kernel_wrapper_functional``, which
Inductor lowers to an inlined user Triton kernel.  The stock ``fwd_only`` tracer would instead
leave the mutation HOP and dead-code-eliminate it (silently wrong results).
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch.fx.experimental.proxy_tensor import make_fx
from torch._subclasses.functional_tensor import dispatch_functionalize
from torch._dispatch.python import enable_python_dispatcher
from torch.fx.traceback import preserve_node_meta

from .normalise import normalise


def trace_replacement(fn: Callable[..., Any], args: Sequence[Any], **_: Any) -> torch.fx.GraphModule:
    """``trace_fn`` for ``register_replacement``: a functional graph with our kernels as HOPs."""
    from torch._inductor.decomposition import select_decomp_table

    try:
        with enable_python_dispatcher(), preserve_node_meta():
            gm = make_fx(dispatch_functionalize(fn), select_decomp_table(), tracing_mode="real")(*args)
    except (AttributeError, TypeError) as e:
        # Inductor re-traces a search form with the values a match bound (a Python float where the
        # form takes a weight tensor: DiffLlama's scaled norm) and declines the match only on a
        # RuntimeError: say it that way, so the pattern declines instead of failing the compile.
        raise RuntimeError(f"cannot trace {getattr(fn, '__name__', fn)} with the matched values: {e}") from e
    from torch._inductor.fx_passes.post_grad import remove_noop_ops

    remove_noop_ops(gm.graph)  # as fwd_only does, so search graphs look like post-grad graphs
    normalise(gm.graph)  # the spelling the compiled graph is rewritten to (passes.py)
    gm.graph.eliminate_dead_code()  # safe: everything is functional now
    gm.recompile()
    return gm
