"""Codegen-only mode: real CUDA Triton code for an sm_90 card on a machine without a GPU.

Inductor only needs to *believe* there is a CUDA device to write its wrapper and Triton
kernels; the kernels are then compiled by triton's bundled ``ptxas`` into real sm_90 cubins.
Nothing is launched: inputs are FakeTensors on ``cuda``.  This is what CI and
``graph-audit MODULE:CALLABLE`` use where there is no GPU.

The patches are process-wide (torch.cuda queries, the Dynamo device interface, Triton's
active driver), so :func:`fake_sm90` is a context manager that undoes them on exit.
"""
from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator
from types import SimpleNamespace

import torch

from .. import hooks

# An H100 SXM as torch reports it; Inductor reads SM count (is_big_gpu), capability and
# shared-memory size when choosing GEMM templates and block sizes.
H100_PROPS = dict(
    name="NVIDIA H100 80GB HBM3 (codegen-only)",
    major=9,
    minor=0,
    multi_processor_count=132,
    total_memory=80 * 2**30,
    max_threads_per_multi_processor=2048,
    shared_memory_per_block_optin=232448,
    shared_memory_per_multiprocessor=233472,
    shared_memory_per_block=49152,
    regs_per_multiprocessor=65536,
    warp_size=32,
    L2_cache_size=50 * 2**20,
    gcnArchName="",
    uuid="fake-sm90",
    clock_rate=1980000,
    memory_clock_rate=2619000,
    memory_bus_width=5120,
    is_integrated=False,
    is_multi_gpu_board=False,
    pci_bus_id=0,
    pci_device_id=0,
    pci_domain_id=0,
)


def _fake_props(device=None):
    return SimpleNamespace(**H100_PROPS)


class StubDriver:
    """Enough of Triton's CUDA driver to compile (not launch) kernels for sm_90.

    Also the driver Triton's interpreter is given (``torch_device="cpu"``): it still asks the
    active driver for a target and a device.
    """

    def __init__(self, torch_device: str = "cuda"):
        self.backend = torch_device
        self._device = torch_device

    def is_active(self):
        return True

    def get_current_target(self):
        from triton.backends.compiler import GPUTarget

        return GPUTarget("cuda", 90, 32)

    def get_active_torch_device(self):
        return torch.device(self._device, 0) if self._device == "cuda" else torch.device(self._device)

    def get_current_device(self):
        return 0

    def set_current_device(self, device):
        pass

    def get_current_stream(self, device=None):
        return 0

    def get_device_interface(self):
        return torch.cuda if self._device == "cuda" else torch.cpu

    def get_benchmarker(self):
        raise RuntimeError("codegen-only mode: nothing can be benchmarked (no GPU)")

    def get_empty_cache_for_benchmark(self):
        raise RuntimeError("codegen-only mode: nothing can be benchmarked (no GPU)")

    def clear_cache(self, cache):
        pass

    @functools.cached_property
    def utils(self):
        return SimpleNamespace(
            get_device_properties=lambda device: {
                "max_shared_mem": H100_PROPS["shared_memory_per_block_optin"],
                "multiprocessor_count": H100_PROPS["multi_processor_count"],
                "max_num_regs": 65536,
                "warpSize": 32,
                "sm_clock_rate": H100_PROPS["clock_rate"],
                "mem_clock_rate": H100_PROPS["memory_clock_rate"],
                "mem_bus_width": H100_PROPS["memory_bus_width"],
            },
            load_binary=self._no_launch,
        )

    @staticmethod
    def _no_launch(*args, **kwargs):
        raise RuntimeError("codegen-only mode: kernels are compiled, never loaded or launched")


def _make_interface():
    from torch._dynamo.device_interface import CudaInterface

    class FakeCudaInterface(CudaInterface):
        @staticmethod
        def is_available() -> bool:
            return True

        @staticmethod
        def device_count() -> int:
            return 1

        @staticmethod
        def current_device() -> int:
            return 0

        @staticmethod
        def set_device(device) -> None:
            pass

        @staticmethod
        def get_device_properties(device=None):
            return _fake_props(device)

        @staticmethod
        def get_compute_capability(device=None):
            return 90

        @staticmethod
        def get_raw_stream(device_idx: int) -> int:
            return 0

        @staticmethod
        def synchronize(device=None) -> None:
            pass

        @staticmethod
        def is_bf16_supported(including_emulation: bool = False) -> bool:
            return True

        class Worker(CudaInterface.Worker):
            @staticmethod
            def set_device(device: int):
                pass

            @staticmethod
            def current_device() -> int:
                return 0

            @staticmethod
            def get_device_properties(device=None):
                return _fake_props(device)

    return FakeCudaInterface


@contextlib.contextmanager
def fake_sm90() -> Iterator[None]:
    """Make this process look like it has one H100 for codegen; undo on exit.

    Inside, build inputs with :func:`fake_cuda_inputs` (FakeTensors on ``cuda``) and compile.
    The compiled callable cannot be run.
    """
    if torch.cuda.is_available():
        raise RuntimeError("codegen-only mode is for machines without a GPU; this one has one")
    import triton
    from torch._dynamo import device_interface as di
    from torch._inductor.runtime import triton_helpers
    from torch._subclasses import fake_tensor

    di.get_interface_for_device("cpu")  # registers the real interfaces first
    saved_iface = dict(di.device_interfaces)
    iface = _make_interface()
    driver = triton.runtime.driver
    saved_active = driver._active  # may be None: no driver is active on a CPU machine
    with contextlib.ExitStack() as stack:
        for name, value in [
            ("is_available", lambda: True),
            ("device_count", lambda: 1),
            ("current_device", lambda: 0),
            ("set_device", lambda d: None),
            ("get_device_properties", _fake_props),
            ("get_device_capability", lambda device=None: (9, 0)),
            ("get_device_name", lambda device=None: H100_PROPS["name"]),
            ("is_bf16_supported", lambda including_emulation=True: True),
            ("synchronize", lambda device=None: None),
            ("_lazy_init", lambda: None),
            ("is_initialized", lambda: True),
            ("_exchange_device", lambda idx: 0),
            ("_maybe_exchange_device", lambda idx: 0),
            ("get_rng_state", lambda device="cuda": torch.zeros(16, dtype=torch.uint8)),
            ("set_rng_state", lambda state, device="cuda": None),
        ]:
            stack.enter_context(hooks.patched(torch.cuda, name, value))
        stack.enter_context(hooks.patched(triton_helpers, "set_driver_to_gpu", lambda: None))
        stack.enter_context(hooks.patched(fake_tensor, "init_gpu_context", lambda device: None))
        # Compile every kernel to a cubin in this process (the stub driver lives here), but never
        # load it: loading needs a CUDA context.
        from torch._inductor import config as inductor_config
        from torch._inductor.runtime.triton_heuristics import CachingAutotuner

        # Constant folding evaluates ops for real (e.g. a causal mask built with aten.full on cuda).
        stack.enter_context(inductor_config.patch(compile_threads=1, joint_graph_constant_folding=False))
        stack.enter_context(hooks.patched(CachingAutotuner, "_make_launchers", lambda self: None))
        stack.enter_context(hooks.patched(CachingAutotuner, "_dynamic_scale_rblock", lambda self: None))
        di.register_interface_for_device("cuda", iface)
        di.register_interface_for_device("cuda:0", iface)
        driver.set_active(StubDriver())
        # Cached answers computed before the patches (no GPU, no triton device) must be redone.
        from torch.utils import _triton as triton_utils

        triton_utils.has_triton.cache_clear()
        stack.callback(triton_utils.has_triton.cache_clear)
        stack.enter_context(host_tensor_descriptors())
        _init_joint_patterns_for_cuda()
        try:
            yield
        finally:
            di.device_interfaces.clear()
            di.device_interfaces.update(saved_iface)
            driver._active = saved_active


@contextlib.contextmanager
def host_tensor_descriptors() -> Iterator[None]:
    """Torch's answer to "does this device take host-side TMA descriptors" is yes inside (a
    CPU harness standing in for an sm_90 card): its mutation analysis of our TMA kernels then
    types their descriptor arguments as a real card's compile does (torch reads the answer from
    the module at each call; the cached ``has_triton_tma`` that builds on it is redone)."""
    from torch.utils import _triton as triton_utils

    def yes() -> bool:
        return True

    yes.cache_clear = lambda: None  # type: ignore[attr-defined]  (callers may clear it as torch's)
    cached = getattr(triton_utils, "has_triton_tma", None)
    with hooks.patched(triton_utils, "has_triton_tensor_descriptor_host_tma", yes):
        if hasattr(cached, "cache_clear"):
            cached.cache_clear()
        try:
            yield
        finally:
            if hasattr(cached, "cache_clear"):
                cached.cache_clear()


def _init_joint_patterns_for_cuda() -> None:
    """Run Inductor's one-time joint-graph pattern set-up for ``cuda`` with CPU example tensors.

    Its pattern tracers build example tensors (``torch.tensor(2.0, device="cuda")``,
    ``randperm``) that need a driver even under FakeTensorMode. The traced patterns do not
    depend on the example device, so tracing them on CPU registers the same patterns.
    """
    from torch._inductor.fx_passes import fuse_attention, joint_graph, misc_patterns, pad_mm

    cpu = torch.device("cpu")
    with contextlib.ExitStack() as stack:
        for module, name in [(fuse_attention, "_sfdp_init"), (misc_patterns, "_misc_patterns_init"),
                             (pad_mm, "_pad_mm_init")]:
            real = getattr(module, name)
            stack.enter_context(hooks.patched(module, name, functools.partial(lambda f, d=None: f(cpu), real)))
        for device in (torch.device("cuda"), torch.device("cuda", 0)):  # lazy_init caches per device
            joint_graph.lazy_init(device)


def retarget_to_cuda(gm: torch.fx.GraphModule) -> None:
    """Point every explicit ``device=cpu`` in a Dynamo graph (arange, ones, .to, ...) at ``cuda``."""

    def fix(value):
        if isinstance(value, torch.device) and value.type == "cpu":
            return torch.device("cuda", 0)
        if isinstance(value, str) and value == "cpu":
            return "cuda"
        return value

    for node in gm.graph.nodes:
        node.args = torch.fx.node.map_aggregate(node.args, fix)
        node.kwargs = torch.fx.node.map_aggregate(node.kwargs, fix)
        _list_index_to_slice(node)
    gm.recompile()


def _list_index_to_slice(node: torch.fx.Node) -> None:
    """``x[..., [-2]]`` (Falcon's fused qkv split) -> ``x[..., -2:-1]``: a Python list index becomes
    a constant index tensor made on the device while tracing, which needs a real driver. A list
    of consecutive ints selects what the slice selects (dimension kept)."""
    import operator

    if node.op != "call_function" or node.target is not operator.getitem or not isinstance(node.args[1], tuple):
        return
    idx = list(node.args[1])
    lists = [i for i, x in enumerate(idx) if isinstance(x, list)]
    if len(lists) != 1:
        return
    vals = idx[lists[0]]
    if not vals or not all(type(v) is int for v in vals) or any(b - a != 1 for a, b in zip(vals, vals[1:])):
        return
    if (vals[0] < 0) != (vals[-1] < 0):
        return
    stop = vals[-1] + 1
    idx[lists[0]] = slice(vals[0], None if stop == 0 else stop)
    node.args = (node.args[0], tuple(idx))


def fake_cuda_inputs(tensors, fake_mode=None):
    """FakeTensor copies of ``tensors`` on ``cuda`` (shapes, strides and dtypes kept)."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    fake_mode = fake_mode or FakeTensorMode(allow_non_fake_inputs=True)
    out = []
    with fake_mode:
        for t in tensors:
            if isinstance(t, torch.Tensor):
                out.append(torch.empty_strided(t.shape, t.stride(), dtype=t.dtype, device="cuda"))
            else:
                out.append(t)
    return out, fake_mode
