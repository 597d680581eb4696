"""Scans (``cumsum``, ``cumprod``, associative scans) lowered in one pass in our compiles.

Inductor splits a scan with few rows across blocks (``SplitScan``): the blocks exchange partial
sums through a workspace the wrapper zero-fills with ``workspace.zero_()`` before every call, an
ATen fill kernel, not Triton. Mamba-2's chunked scan (Bamba, Falcon-H1, Granite-4, Zamba-2 in
transformers: ``torch.cumsum`` over each chunk of a head's decay) hits it at every size. While a
compile of ours is lowering (:func:`install`'s ``active``), ``Scan.num_splits`` answers one split:
each row is scanned by one program (a scan up to a few thousand elements, as these are: no slower;
a long scan of very few rows is slower, but Triton). Installed by ``audit.install_hooks``; the
target is in ``hooks.TABLE``.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

from . import hooks


def install(active: Callable[[], bool]) -> None:
    """Wrap ``torch._inductor.ir.Scan.num_splits`` (once): one split while ``active()``."""
    from torch._inductor import ir

    def make(real: Any) -> Callable[..., Any]:
        def num_splits(*args: Any, **kwargs: Any) -> Any:
            hint, splits = real(*args, **kwargs)
            return (hint, 1) if splits != 1 and active() else (hint, splits)
        return num_splits

    if callable(getattr(ir.Scan, "num_splits", None)):
        hooks.wrap_once(ir.Scan, "num_splits", make)
