"""Issue #2 acceptance on CPU: a Llama-style decoder block is Triton-only under tri_inductor.

(A) codegen-only for a fake sm_90: tri_inductor audits to 0 non-Triton kernels; stock Inductor
    audits to > 0 (its cuBLAS GEMMs named).
(B) interpreter: the compiled block's output matches a float64 eager reference.
"""
from __future__ import annotations

import copy

import pytest
import torch

from tri_inductor.demo import llama_block

# ||out - ref|| / ||ref|| against float64 eager: fp32 arithmetic with another summation order
# lands far under 1e-4; bf16 operands between 1e-3 and 1e-2.
TOL = {torch.float32: 1e-4, torch.bfloat16: 1e-2}


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=["bf16", "fp32"])
@pytest.mark.parametrize("qkv_bias", [False, True], ids=["no_bias", "qkv_bias"])
def test_block_is_triton_only(codegen_only, dtype, qkv_bias):
    block, inputs = llama_block(qkv_bias=qkv_bias)
    reports = codegen_only(block, inputs, dtype=dtype)
    kernels = [k for r in reports for k in r.kernels]
    assert all(r.ok for r in reports), "\n".join(r.format_table() for r in reports)
    assert any(k.kind == "our_triton" and k.family == "attention" for k in kernels)
    assert len(kernels) >= 5


def test_stock_inductor_block_is_not_triton_only(codegen_only):
    block, inputs = llama_block(qkv_bias=True)
    reports = codegen_only(block, inputs, backend="inductor")
    violations = [v for r in reports for v in r.violations]
    ops = {v.op for v in violations}
    assert {"aten.mm", "aten.addmm"} <= ops, ops  # the projections go to cuBLAS ...
    names = {v.name for v in violations}
    assert "extern_kernels.mm" in names and "extern_kernels.addmm" in names
    # ... and each is traced back to the user's line.
    assert all(v.source and "demo.py" in v.source for v in violations if v.op in ("aten.mm", "aten.addmm"))


def _float64_reference(block, inputs):
    ref_block = copy.deepcopy(block).double()
    x, pos = inputs
    with torch.no_grad():
        return ref_block(x.double(), pos)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_block_numerics_in_interpreter(interpreter, dtype):
    block, (x, pos) = llama_block(batch=1, seq=8, hidden=128)
    block = block.to(dtype)
    x = x.to(dtype)
    ref = _float64_reference(block, (x, pos))
    with torch.no_grad():
        out = torch.compile(block, backend="tri_inductor")(x, pos)
    import tri_inductor

    last = tri_inductor.last_audit()[-1]
    assert last.pattern_hits.get("attention") == 1, last.format_table()
    err = ((out.double() - ref).norm() / ref.norm()).item()
    assert out.dtype == dtype and torch.isfinite(out).all()
    assert err < TOL[dtype], err
