"""patterns/_host_tma.py: the hook that lets Inductor trace our kernels' host-side TMA descriptors
through ``triton_op`` (what it records is checked end to end in test_linear.py's TMA tests: the
wrapper rebuilds each descriptor from its base tensor). Here: what it leaves to torch untouched."""
from __future__ import annotations

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
