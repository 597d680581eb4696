"""Issue #2 acceptance on a GPU: the bf16 Llama-style block under tri_inductor matches eager, and
both the static audit and the profiler see only Triton kernels; stock Inductor launches cuBLAS."""
from __future__ import annotations

import pytest
import torch

from tri_inductor.audit import format_reports
from tri_inductor.audit.model import audit_model
from tri_inductor.audit.runtime import format_runtime, profile_kernels
from tri_inductor.demo import llama_block

pytestmark = pytest.mark.gpu


def _compiled_triton_names(reports):
    from tri_inductor.audit import triton_kernel_names

    names = set()
    for r in reports:
        names |= triton_kernel_names(r.code)
    return names


@pytest.mark.parametrize("qkv_bias", [False, True], ids=["no_bias", "qkv_bias"])
def test_block_on_gpu_is_triton_only_and_correct(qkv_bias):
    block, (x, pos) = llama_block(batch=4, seq=128, hidden=512, qkv_bias=qkv_bias)
    block = block.cuda().to(torch.bfloat16)
    x, pos = x.cuda().to(torch.bfloat16), pos.cuda()
    with torch.no_grad():
        ref = block(x, pos)
        reports, _ = audit_model(block, [x, pos], backend="tri_inductor")
        compiled = torch.compile(block, backend="tri_inductor")
        out = compiled(x, pos)
        runtime = profile_kernels(lambda: compiled(x, pos), _compiled_triton_names(reports))
    print("\n" + format_reports(reports))
    print(format_runtime(runtime))
    err = ((out.float() - ref.float()).norm() / ref.float().norm()).item()
    print(f"||out - eager|| / ||eager|| = {err:.2e} (bf16, qkv_bias={qkv_bias})")
    assert err < 1e-2
    assert all(r.ok for r in reports)
    assert runtime and all(k.triton for k in runtime), format_runtime(runtime)


def test_stock_inductor_block_launches_cublas():
    block, (x, pos) = llama_block(batch=4, seq=128, hidden=512)
    block = block.cuda().to(torch.bfloat16)
    x, pos = x.cuda().to(torch.bfloat16), pos.cuda()
    with torch.no_grad():
        reports, _ = audit_model(block, [x, pos], backend="inductor")
        compiled = torch.compile(block, backend="inductor")
        compiled(x, pos)
        runtime = profile_kernels(lambda: compiled(x, pos), _compiled_triton_names(reports))
    print("\n" + format_reports(reports))
    print(format_runtime(runtime))
    assert any(not r.ok for r in reports)
    assert any(k.library == "cublas" for k in runtime), format_runtime(runtime)
