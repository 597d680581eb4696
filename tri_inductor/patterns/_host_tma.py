"""Host-side TMA descriptors for kernels Inductor inlines (``wrap_triton``).

Our TMA GEMM kernels take ``triton.tools.tensor_descriptor.TensorDescriptor`` arguments: the
descriptor is a by-value kernel parameter (a ``CUtensorMap`` the launcher fills on the host),
where ``tl.make_tensor_descriptor`` has every program write one into global memory and fence it
before the first load. Measured on an H100 (``benchmarks/gemm_tma_probe.py``), the same persistent
128x256x64 tiles ran 2048 x 28672 x 4096 in 627 us with host descriptors, 707 us with device ones.

Inductor already lowers a user kernel's host descriptors (Dynamo's path records each as its base
tensor plus ``("stable", (block_shape,))`` in the HOP's ``tma_descriptor_metadata``, and the wrapper
code rebuilds it with ``TensorDescriptor.from_tensor`` before the launch). The non-Dynamo tracing
that ``torch.library.triton_op`` goes through does not ("TMA descriptor capturing not yet supported
in non-dynamo tracing": the descriptor would be stored as a constant holding a fake tensor).
One hook (``tri_inductor.hooks.TABLE``) does what Dynamo does: ``TracingTritonHOPifier.call_HOP``,
given descriptor arguments, calls the mutation HOP with each descriptor replaced by its base tensor
(a graph input or buffer like any other) and its block shape in ``tma_descriptor_metadata``; a
call without descriptors goes to torch's own ``call_HOP`` untouched.

Only descriptors built with ``TensorDescriptor.from_tensor`` can be recorded that way (the
metadata holds the block shape only): :func:`descriptor` is the one way our launches build them.
Where the hook cannot be installed (another torch), :func:`traceable` is False and the GEMM
launches its TMA configs' tiles on the pointer kernel instead (``gemm/launch.py``).
"""
from __future__ import annotations

import functools
import logging
import threading
from typing import Any

from .. import hooks

log = logging.getLogger("tri_inductor.host_tma")

TARGET = "torch._higher_order_ops.triton_kernel_wrap:TracingTritonHOPifier.call_HOP"
_lock = threading.Lock()
_installed: bool | None = None  # None: not tried yet


def descriptor(t, block_shape: list[int]):
    """A host-side TMA descriptor of all of ``t`` (its shape and strides) in ``block_shape`` tiles."""
    from triton.tools.tensor_descriptor import TensorDescriptor

    return TensorDescriptor.from_tensor(t, list(block_shape))


def launch_descriptor(t, block_shape: list[int]):
    """:func:`descriptor` where a launch is traced (Inductor records it by its base and block
    shape); :func:`fast_descriptor` for an eager launch on real GPU tensors (vLLM's lm_head, every
    step), whose block shape the caller's config fixed."""
    import torch

    if type(t) is torch.Tensor and t.is_cuda and torch._C._len_torch_dispatch_stack() == 0:
        return fast_descriptor(t, block_shape)
    return descriptor(t, block_shape)


# --------------------------------------------- descriptors the compiled wrapper builds every call

_FROM_TENSOR = "triton.tools.tensor_descriptor.TensorDescriptor.from_tensor("
FAST_NAME = "_tri_tma_descriptor"
_IMPORT = f"from tri_inductor.patterns._host_tma import fast_descriptor as {FAST_NAME}"


def fast_descriptor(t, block_shape: list[int]):
    """The descriptor ``TensorDescriptor.from_tensor(t, block_shape)`` builds, without its Python
    validation (a dataclass ``__post_init__`` of ~8 calls, ~1.5-5 us a descriptor, paid at every
    eager call of a compiled piece: three per TMA launch). Nothing is left unchecked that matters:
    the block shape was validated when the launch was traced (``descriptor``), a misaligned base
    keeps Triton's own check (the one a view's offset can break), and Triton's launcher encodes the
    descriptor with the driver, which refuses any other bad shape or stride with an error."""
    defaults = _fast_fields()
    if defaults is None or t.data_ptr() % 16:
        return descriptor(t, block_shape)  # Triton's own check and message; or a Triton we cannot mirror
    d = object.__new__(_descriptor_class())
    d.__dict__.update(defaults, base=t, shape=t.shape, strides=t.stride(), block_shape=block_shape)
    return d


@functools.cache
def _fast_fields() -> dict[str, Any] | None:
    """The descriptor's defaulted fields (Triton 3.6: padding; 3.8: and round_f32_to_tf32), or None
    where ``fast_descriptor`` could not build what ``from_tensor`` does: a field without a default
    beyond the four it sets, or an attribute ``__post_init__`` adds (checked on a small tensor)."""
    import dataclasses

    import torch

    cls = _descriptor_class()
    fields = dataclasses.fields(cls)
    given = {"base", "shape", "strides", "block_shape"}
    defaults = {f.name: f.default for f in fields if f.default is not dataclasses.MISSING}
    if {f.name for f in fields} - given - set(defaults):
        return None
    made = descriptor(torch.empty(16, 16, dtype=torch.bfloat16), [16, 16])
    return defaults if set(vars(made)) == given | set(defaults) else None


def fast_descriptors(code: str) -> tuple[str, int]:
    """Inductor's wrapper ``code`` building its TMA descriptors with :func:`fast_descriptor`, and how
    many; the import joins the wrapper's ``import torch`` line, so no line moves (Inductor maps
    lines back to source). Code without that line is returned as it is."""
    n = code.count(_FROM_TENSOR)
    if not n:
        return code, 0
    lines = code.split("\n")
    try:
        i = lines.index("import torch")
    except ValueError:
        return code, 0
    lines[i] = f"import torch; {_IMPORT}"
    return "\n".join(lines).replace(_FROM_TENSOR, FAST_NAME + "("), n


def is_descriptor(v: Any) -> bool:
    return _has_tensor_descriptor() and isinstance(v, _descriptor_class())


@functools.cache
def _descriptor_class() -> type:
    from triton.tools.tensor_descriptor import TensorDescriptor

    return TensorDescriptor


def _from_tensor(d) -> bool:
    # the metadata rebuilds it with from_tensor(base, block_shape): nothing else may differ
    base = d.base
    return (tuple(d.shape) == tuple(base.shape) and tuple(d.strides) == tuple(base.stride())
            and d.padding == "zero")


def _call_hop_hook(real):
    def call_HOP(self, variable, grids, combined_args, *rest, **kw):
        descs = {k: v for k, v in combined_args.items() if is_descriptor(v)}
        bound = hooks.arguments(real, self, variable, grids, combined_args, *rest, **kw) if descs else {}
        # Anything but descriptors built by from_tensor (all the metadata can rebuild) goes to
        # torch's own code unchanged, as does a call with a Dynamo tx (never on this path).
        if not descs or bound.get("tx") is not None or not all(map(_from_tensor, descs.values())):
            return real(self, variable, grids, combined_args, *rest, **kw)
        # What the original does (store the non-graphable arguments in the side table, call the
        # mutation HOP), with each descriptor as its base tensor and its block shape recorded as
        # Dynamo records it. Options of ours are constexprs: nothing for torch 2.14's check of
        # dynamic backend options to find.
        args = {**combined_args, **{k: d.base for k, d in descs.items()}}
        graphable, constant_args_idx = self.store_non_graphable_args(args)
        from torch._higher_order_ops import triton_kernel_wrap as twk

        extra = {"launch_kwargs": bound["launch_kwargs"]} if "launch_kwargs" in bound else {}
        return twk.triton_kernel_wrapper_mutation(
            kernel_idx=variable.kernel_idx, constant_args_idx=constant_args_idx, grid=grids,
            tma_descriptor_metadata={k: ("stable", (list(d.block_shape),)) for k, d in descs.items()},
            kwargs=graphable, **extra)
    return call_HOP


def install() -> bool:
    """Install the hook (idempotent); False where this torch lacks its target (logged once)."""
    global _installed
    with _lock:
        if _installed is not None:
            return _installed
        try:
            from torch._higher_order_ops import triton_kernel_wrap as twk

            hopifier = twk.TracingTritonHOPifier
            for name in ("store_non_graphable_args", "call_HOP"):
                if not callable(getattr(hopifier, name, None)):
                    raise AttributeError(f"TracingTritonHOPifier.{name}")
            problem = hooks.signature_problem(TARGET)
            if problem:
                raise AttributeError(problem)
            hooks.wrap_once(hopifier, "call_HOP", _call_hop_hook)
            _installed = True
        except (ImportError, AttributeError) as e:
            log.warning("tri_inductor: host-side TMA descriptors cannot be traced on this torch (%s); "
                        "TMA GEMM configs run on the pointer kernel", e)
            _installed = False
        return _installed


@functools.cache
def _has_tensor_descriptor() -> bool:
    try:
        from triton.tools.tensor_descriptor import TensorDescriptor  # noqa: F401
    except ImportError:
        return False
    return True


def traceable() -> bool:
    """Whether a traced launch may take host descriptors: the hook is in, and torch takes them on
    this device (its mutation analysis types them by ``has_triton_tensor_descriptor_host_tma``)."""
    try:
        from torch.utils._triton import has_triton_tensor_descriptor_host_tma
    except ImportError:
        return False
    return _has_tensor_descriptor() and has_triton_tensor_descriptor_host_tma() and install()


def available() -> bool:
    """Whether this Triton has host descriptors (an eager launch needs nothing else)."""
    return _has_tensor_descriptor()
