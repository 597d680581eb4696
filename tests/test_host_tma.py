"""patterns/_host_tma.py: the hook that lets Inductor trace our kernels' host-side TMA descriptors
through ``triton_op`` (what it records is checked end to end in test_linear.py's TMA tests: the
wrapper rebuilds each descriptor from its base tensor). Here: what it leaves to torch untouched,
and the wrapper's descriptors built without per-call validation (``fast_descriptor``)."""
from __future__ import annotations

import inspect

import torch
from triton.tools.tensor_descriptor import TensorDescriptor

from tri_inductor import hooks
from tri_inductor.patterns import _host_tma as HT


def _hooked():
    calls = []

    def real(self, variable, grids, combined_args, tx):  # torch 2.11's parameters
        calls.append(combined_args)
        return "torch's"

    return HT._call_hop_hook(real), calls


def test_calls_without_descriptors_go_to_torch_unchanged():
    hook, calls = _hooked()
    args = {"a": torch.empty(4, 4), "n": 3}
    assert hook(object(), object(), [(1, 1, 1)], args, None) == "torch's"
    assert calls == [args]


def test_a_descriptor_not_built_by_from_tensor_goes_to_torch_unchanged():
    # its shape differs from its base's: the metadata (block shape only) could not rebuild it
    hook, calls = _hooked()
    base = torch.empty(64, 32)
    odd = TensorDescriptor(base, [32, 32], [32, 1], [16, 16])
    args = {"a_desc": odd}
    assert hook(object(), object(), [(1, 1, 1)], args, None) == "torch's"
    assert calls == [args]
    assert HT._from_tensor(TensorDescriptor.from_tensor(base, [16, 16]))


def test_the_hook_is_declared_and_its_signature_known():
    assert HT.TARGET in {h.target for h in hooks.TABLE}
    assert hooks.signature_problem(HT.TARGET) is None


def _launcher_args(desc, metadata, monkeypatch):
    """What Triton's launcher (3.6: ``driver.make_tensordesc_arg``; its driver call stubbed, as
    there is no GPU here) makes of a descriptor: the arguments the kernel receives."""
    from types import SimpleNamespace as NS

    from triton.backends.nvidia import driver as nv

    def fill_tma_descriptor(ptr, swizzle, elem, dtype, block, shape, strides, padding):
        return ("map", ptr, swizzle, elem, dtype, tuple(block), tuple(shape), tuple(strides), padding)

    utils = NS(fill_tma_descriptor=fill_tma_descriptor, fill_tma_descriptor_tiled=fill_tma_descriptor)  # 3.6, 3.8
    monkeypatch.setattr(nv, "triton", NS(runtime=NS(driver=NS(active=NS(utils=utils)))))
    extra = [None] * (len(inspect.signature(nv.make_tensordesc_arg).parameters) - 2)  # Triton 3.8: one more
    return nv.make_tensordesc_arg(desc, metadata, *extra)


def test_fast_descriptor_is_what_from_tensor_builds(monkeypatch):
    meta = {"swizzle": 3, "elem_size": 2, "elem_type": 10, "block_size": [64, 32], "fp4_padded": False}
    w = torch.randn(96, 64, dtype=torch.bfloat16)
    for t in (w, w.t(), w[8:40], torch.empty(300, 96, dtype=torch.bfloat16)[:, 32:]):  # views too
        if t.stride(-1) != 1:
            continue
        slow, fast = TensorDescriptor.from_tensor(t, [64, 32]), HT.fast_descriptor(t, [64, 32])
        assert type(fast) is TensorDescriptor and fast == slow  # the dataclass's field-wise equality
        assert _launcher_args(fast, meta, monkeypatch) == _launcher_args(slow, meta, monkeypatch)
        assert _launcher_args(fast, None, monkeypatch) == _launcher_args(slow, None, monkeypatch)


def test_a_misaligned_base_keeps_tritons_check():
    t = torch.empty(64 * 64 + 8, dtype=torch.bfloat16)[1:64 * 64 + 1].view(64, 64)  # 2 bytes off
    for build in (TensorDescriptor.from_tensor, HT.fast_descriptor):
        try:
            build(t, [16, 16])
        except AssertionError as e:
            assert "16-byte aligned" in str(e)
        else:
            raise AssertionError(f"{build} accepted a misaligned base")


def test_the_wrapper_builds_descriptors_the_fast_way_and_no_line_moves():
    desc = "triton.tools.tensor_descriptor.TensorDescriptor.from_tensor"
    code = "\n".join(["# AOT ID", "from ctypes import c_void_p", "import torch", "import math", "",
                      "def call(x, w):",
                      f"    a = {desc}(x, [64, 32]) if x.shape[0] else None",
                      f"    b = {desc}(w, [64, 32])",
                      "    return a, b"])
    new, n = HT.fast_descriptors(code)
    assert n == 2 and len(new.split("\n")) == len(code.split("\n")) and desc not in new
    assert new.split("\n")[2] == f"import torch; from tri_inductor.patterns._host_tma import fast_descriptor as {HT.FAST_NAME}"
    env: dict = {}
    exec(new, env)
    x, w = torch.randn(128, 64, dtype=torch.bfloat16), torch.randn(96, 64, dtype=torch.bfloat16)
    a, b = env["call"](x, w)
    assert a == TensorDescriptor.from_tensor(x, [64, 32]) and b == TensorDescriptor.from_tensor(w, [64, 32])
    assert env["call"](x[:0], w)[0] is None
    # nothing to do, or no ``import torch`` line to put the import on: unchanged
    assert HT.fast_descriptors("import torch\nx = 1") == ("import torch\nx = 1", 0)
    assert HT.fast_descriptors(f"y = {desc}(x, [16, 16])") == (f"y = {desc}(x, [16, 16])", 0)


def test_compiled_tma_launches_use_fast_descriptors_and_match_float64(interpreter, monkeypatch):
    """A symbolic token count over the prefill range, TMA tiles forced for its buckets: the wrapper
    builds its descriptors with ``fast_descriptor`` and every M matches float64 (interpreter)."""
    import tri_inductor
    from tri_inductor.patterns.gemm import configs as C
    from tri_inductor.patterns.gemm import ops as O
    from tri_inductor.patterns.gemm import tuning as T

    real = T.default_config
    monkeypatch.setattr(T, "default_config", lambda n, k, bucket, dev, elem=2, fused=False: (
        C.Cfg(64, 64, 32, 8, 1, 4, 2, C.Kind.TMA_TILE) if bucket >= 256 else real(n, k, bucket, dev, elem, fused)))
    g = torch.Generator().manual_seed(0)
    w = (torch.randn(96, 64, generator=g) * 0.2).to(torch.bfloat16)
    torch._dynamo.reset()
    f = torch.compile(lambda x: torch.nn.functional.linear(x, w), backend="tri_inductor")
    x0 = torch.randn(200, 64, generator=g).to(torch.bfloat16)
    torch._dynamo.mark_dynamic(x0, 0, min=129, max=8192)
    with O.token_range(129, 8192):
        f(x0)
    code = tri_inductor.last_audit()[-1].code
    assert code.count(f"{HT.FAST_NAME}(") >= 3 and "TensorDescriptor.from_tensor(" not in code
    for m in (200, 300, 1100):
        x = torch.randn(m, 64, generator=g).to(torch.bfloat16)
        ref = x.double() @ w.double().t()
        assert ((f(x).double() - ref).norm() / ref.norm()).item() < 1e-2  # bf16 output rounding
