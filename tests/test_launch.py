"""``_launch``'s eager GPU path: a repeat call with the same specialisation goes straight to the
compiled kernel's launcher, with the constexprs in signature order; anything Triton would
specialise differently goes back through ``kernel[grid]``.  CPU-only: Triton's compile and
launch are replaced by recorders (the real launch is covered on the GPU by test_gpu_block and
test_gemm_eager's GPU test)."""
from __future__ import annotations

import pytest
import torch
import triton
import triton.language as tl
from triton import knobs
from triton.knobs import HookChain
from triton.runtime.jit import JITFunction

from tri_inductor.patterns import _launch as L


@triton.jit
def _kernel(x_ptr, n, eps, BLOCK: tl.constexpr, FLAG: tl.constexpr = 3):
    pass


class _Compiled:
    function, packed_metadata = "function", "packed_metadata"

    def __init__(self) -> None:
        self.runs: list[tuple] = []

    def run(self, *args) -> None:
        self.runs.append(args)


@pytest.fixture
def rec(monkeypatch):
    compiled, slow = _Compiled(), []

    def getitem(self, grid):
        def call(*args, **kwargs):
            slow.append((grid, args, kwargs))
            return compiled
        return call

    monkeypatch.setattr(JITFunction, "__getitem__", getitem)
    monkeypatch.setattr(L, "_COMPILED", {})
    device = {"index": 0}
    monkeypatch.setattr(L, "_current_device", lambda: device["index"])
    monkeypatch.setattr(L, "_current_stream", lambda d: 77 + d)
    return compiled, slow, device


def test_repeat_call_uses_the_compiled_launcher(rec) -> None:
    compiled, slow, _ = rec
    x, y = torch.zeros(64, dtype=torch.bfloat16), torch.zeros(64, dtype=torch.bfloat16)
    L._launch_gpu(_kernel, (4,), (x, 10, 1e-5), {"BLOCK": 64, "num_warps": 4})
    assert len(slow) == 1 and not compiled.runs  # first call: Triton compiles and launches
    L._launch_gpu(_kernel, (4, 2), (y, 10, 2e-5), {"BLOCK": 64, "num_warps": 4})
    assert len(slow) == 1
    # grid padded to 3-D, the stream, no launch hooks, then every parameter in signature order
    # (the unpassed FLAG from its default); a float is a runtime value, not part of the key.
    assert compiled.runs == [(4, 2, 1, 77, "function", "packed_metadata", None, None, None, y, 10, 2e-5, 64, 3)]


@triton.jit(do_not_specialize=["n"])
def _count_kernel(x_ptr, n, BLOCK: tl.constexpr):
    pass


def test_an_int_triton_does_not_specialise_on_is_keyed_by_width(rec) -> None:
    # a per-step count (do_not_specialize: one compiled kernel whatever its value) reuses the
    # launcher for every value of the same width; a value past 32 bits is a new kernel for Triton
    compiled, slow, _ = rec
    x = torch.zeros(64, dtype=torch.bfloat16)
    for n in (1, 16, 17, 1000):
        L._launch_gpu(_count_kernel, (4,), (x, n), {"BLOCK": 64})
    assert len(slow) == 1 and [r[-2] for r in compiled.runs] == [16, 17, 1000]
    L._launch_gpu(_count_kernel, (4,), (x, 2**33), {"BLOCK": 64})
    assert len(slow) == 2


@pytest.mark.parametrize("change", ["int", "dtype", "alignment", "constexpr", "option", "device"])
def test_a_different_specialisation_goes_back_to_triton(rec, change) -> None:
    compiled, slow, device = rec
    x = torch.zeros(64, dtype=torch.bfloat16)
    args, kwargs = (x, 16, 1e-5), {"BLOCK": 64, "num_warps": 4}
    L._launch_gpu(_kernel, (4,), args, kwargs)
    if change == "int":
        args = (x, 17, 1e-5)  # Triton specialises ints (== 1, % 16): we key on the value
    elif change == "dtype":
        args = (torch.zeros(64, dtype=torch.float16), 16, 1e-5)
    elif change == "alignment":
        args = (x[1:], 16, 1e-5)  # 2 bytes past a 16-byte boundary
    elif change == "constexpr":
        kwargs = {"BLOCK": 128, "num_warps": 4}
    elif change == "option":
        kwargs = {"BLOCK": 64, "num_warps": 8}
    else:
        device["index"] = 1  # another current device: Triton compiles and loads the kernel there
    L._launch_gpu(_kernel, (4,), args, kwargs)
    assert len(slow) == 2 and not compiled.runs


@pytest.mark.parametrize("change", [None, "block", "dtype", "alignment"])
def test_descriptor_launches_are_cached_by_what_triton_specialises(rec, change) -> None:
    """A host TMA descriptor (the lm_head's TMA configs, every step) takes the launcher path on a
    repeat call: Triton specialises it on dtype and block shape (checked against Triton's own
    specialisation below), and a descriptor that differs there goes back to ``kernel[grid]``."""
    from triton._C.libtriton import native_specialize_impl
    from triton.backends.nvidia.compiler import CUDABackend
    from triton.tools.tensor_descriptor import TensorDescriptor

    compiled, slow, _ = rec
    x = torch.zeros(64, 256, dtype=torch.bfloat16)
    d0 = TensorDescriptor.from_tensor(x, [64, 128])
    L._launch_gpu(_kernel, (4,), (d0, 16, 1e-5), {"BLOCK": 64})
    y = torch.zeros(64, 256, dtype=torch.bfloat16) if change != "dtype" else torch.zeros(64, 256, dtype=torch.float16)
    if change == "alignment":
        y = torch.zeros(64 * 256 + 1, dtype=torch.bfloat16)[1:].view(64, 256)
    if change == "alignment":  # from_tensor refuses it; Triton's launcher would too, but not its cache key
        d1 = object.__new__(TensorDescriptor)
        d1.__dict__.update(vars(d0), base=y)
    else:
        d1 = TensorDescriptor.from_tensor(y, [64, 64] if change == "block" else [64, 128])
    L._launch_gpu(_kernel, (4,), (d1, 16, 1e-5), {"BLOCK": 64})
    same_for_triton = native_specialize_impl(CUDABackend, d0, False, True, True) == \
        native_specialize_impl(CUDABackend, d1, False, True, True)
    if change is None:
        assert same_for_triton and len(slow) == 1 and compiled.runs[0][9] is d1
    else:
        assert len(slow) == 2 and not compiled.runs
        assert change == "alignment" or not same_for_triton  # ours is never coarser than Triton's


def test_eager_launches_build_descriptors_the_fast_way(monkeypatch) -> None:
    """Traced launches keep ``from_tensor`` (Inductor records it); an eager call on real GPU
    tensors builds the same descriptor without re-validating it every step."""
    from tri_inductor.patterns import _host_tma as HT

    made = []
    monkeypatch.setattr(HT, "fast_descriptor", lambda t, b: made.append("fast") or "fast")
    monkeypatch.setattr(HT, "descriptor", lambda t, b: made.append("checked") or "checked")
    assert HT.launch_descriptor(torch.zeros(4, 4), [4, 4]) == "checked"  # CPU: the interpreter's call

    class _Cuda(torch.Tensor):
        pass
    monkeypatch.setattr(torch.Tensor, "is_cuda", property(lambda self: True))
    assert HT.launch_descriptor(torch.zeros(4, 4), [4, 4]) == "fast"
    assert HT.launch_descriptor(torch.zeros(4, 4).as_subclass(_Cuda), [4, 4]) == "checked"  # a tracing subclass


@pytest.mark.parametrize("how", ["chain", "callable"])
def test_launch_hooks_keep_tritons_path(rec, monkeypatch, how) -> None:
    # A profiler's launch hook (proton adds to Triton's HookChain) needs Triton's launch
    # metadata: never bypassed.  The default, an empty chain, is no hook.
    compiled, slow, _ = rec
    if how == "chain":
        chain = HookChain()
        chain.add(lambda *a: None)
        monkeypatch.setattr(knobs.runtime, "launch_enter_hook", chain)
    else:
        monkeypatch.setattr(knobs.runtime, "launch_exit_hook", lambda *a: None)
    x = torch.zeros(64, dtype=torch.bfloat16)
    for _ in range(3):
        L._launch_gpu(_kernel, (4,), (x, 10, 1e-5), {"BLOCK": 64})
    assert len(slow) == 3 and not compiled.runs


def test_callable_grid_keeps_tritons_path(rec) -> None:
    # Triton calls a callable grid with its bound arguments, which only its own path has.
    compiled, slow, _ = rec
    x = torch.zeros(64, dtype=torch.bfloat16)
    for _ in range(3):
        L._launch_gpu(_kernel, lambda meta: (4,), (x, 10, 1e-5), {"BLOCK": 64})
    assert len(slow) == 3 and not compiled.runs


def test_cache_is_bounded(rec, monkeypatch) -> None:
    compiled, slow, _ = rec
    monkeypatch.setattr(L, "_COMPILED_MAX", 4)
    x = torch.zeros(64, dtype=torch.bfloat16)
    for n in range(10):
        L._launch_gpu(_kernel, (4,), (x, n, 1e-5), {"BLOCK": 64})
    assert len(L._COMPILED) <= 4 and len(slow) == 10


# --------------------------------------------------------------------- programmatic dependent launch
@triton.jit
def _pdl_kernel(x_ptr, n, BLOCK: tl.constexpr, USE_PDL: tl.constexpr):
    pass


@pytest.mark.parametrize("use_pdl", [True, False])
def test_use_pdl_asks_triton_for_the_launch_attribute(rec, use_pdl) -> None:
    compiled, slow, _ = rec
    x = torch.zeros(64, dtype=torch.bfloat16)
    L._launch_gpu(_pdl_kernel, (4,), (x, 10), {"BLOCK": 64, "USE_PDL": use_pdl})
    assert slow[0][2].get("launch_pdl", False) is use_pdl  # Triton's option: launcher sets the attribute
    L._launch_gpu(_pdl_kernel, (4,), (x, 10), {"BLOCK": 64, "USE_PDL": use_pdl})
    assert len(slow) == 1 and compiled.runs[-1][-2:] == (64, use_pdl)  # then the compiled launcher


def test_pdl_enabled_on_cuda_sm90_only(monkeypatch) -> None:
    from tri_inductor.testing.codegen_only import fake_sm90
    from tri_inductor.patterns import _pdl

    cuda = torch.device("cuda", 0)
    monkeypatch.delenv(_pdl.ENV, raising=False)
    with fake_sm90():
        assert not _pdl.pdl_enabled(cuda)  # opt-in: off unless asked for
    monkeypatch.setenv(_pdl.ENV, "1")
    assert not _pdl.pdl_enabled(torch.device("cpu"))  # the interpreter: no PDL instructions
    with fake_sm90():
        assert _pdl.pdl_enabled(cuda)
        for off in ("0", "false", " Off ", "no"):
            monkeypatch.setenv(_pdl.ENV, off)
            assert not _pdl.pdl_enabled(cuda), off
        monkeypatch.setenv(_pdl.ENV, "1")
        assert _pdl.pdl_enabled(cuda)
        monkeypatch.delenv(_pdl.ENV)
        monkeypatch.setattr(torch.version, "hip", "6.4")
        assert not _pdl.pdl_enabled(cuda)
        monkeypatch.setattr(torch.version, "hip", None)
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 0))
        assert not _pdl.pdl_enabled(cuda)


def test_pdl_setting_is_part_of_the_compile_key(monkeypatch) -> None:
    from tri_inductor import cache
    from tri_inductor.patterns import _pdl

    monkeypatch.delenv(_pdl.ENV, raising=False)
    default = cache.compile_hash("x", avoid_cuda_init=True)
    monkeypatch.setenv(_pdl.ENV, "0")
    assert cache.compile_hash("x", avoid_cuda_init=True) == default  # off is the default
    monkeypatch.setenv(_pdl.ENV, "1")
    assert cache.compile_hash("x", avoid_cuda_init=True) != default


def test_inductor_launcher_hook_sets_the_attribute() -> None:
    # Inductor compiles user kernels without launch_pdl; the hook on TritonCompileResult's
    # make_launcher sets it on the launcher of a kernel compiled with USE_PDL=True, and only there.
    from types import SimpleNamespace

    from torch._inductor.runtime.triton_heuristics import TritonCompileResult

    from tri_inductor import audit, hooks
    from tri_inductor.patterns import _pdl

    audit.install_hooks()  # what every compile does first
    assert getattr(TritonCompileResult.make_launcher, hooks.MARK, False)

    def result(constants):
        return SimpleNamespace(compile_meta={"constants": constants},
                               kernel=SimpleNamespace(run=SimpleNamespace(launch_pdl=False)))

    on, off, other = result({"USE_PDL": True, "BLOCK": 64}), result({"USE_PDL": False}), result({"XBLOCK": 1024})
    for r in (on, off, other):
        _pdl._launch_with_pdl(r)
    assert on.kernel.run.launch_pdl and not off.kernel.run.launch_pdl and not other.kernel.run.launch_pdl


def test_compile_only_compiles_what_the_launch_will_run(monkeypatch) -> None:
    # compiled ahead (the tuner, the attention warm-up) with the options of the real launch,
    # launch_pdl included: otherwise the first real launch would compile the kernel again
    seen = []
    monkeypatch.setattr(JITFunction, "warmup", lambda self, *a, **k: seen.append(k))
    x = torch.zeros(64, dtype=torch.bfloat16)
    with L.compile_only():
        L._launch_gpu(_pdl_kernel, (4,), (x, 10), {"BLOCK": 64, "USE_PDL": True})
        L._launch_gpu(_pdl_kernel, (4,), (x, 10), {"BLOCK": 64, "USE_PDL": False})
    assert seen[0].get("launch_pdl") is True and "launch_pdl" not in seen[1]
