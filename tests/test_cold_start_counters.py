"""What a cold start counts about itself (``cache.counters()``, recorded by the GPU benchmark as
``cold_start_tuning``; docs/design/cold_start.md): pattern registration and our pattern pass are
timed apart, so a start's extra time over Inductor's own can be split without a profiler."""
from __future__ import annotations

import torch

from pattern_harness import assert_our_kernel, backend_output_code


def _norm(x, w):
    v = x.float().pow(2).mean(-1, keepdim=True)
    return (x.float() * torch.rsqrt(v + 1e-6)).to(x.dtype) * w


def test_a_compile_counts_registration_and_its_pattern_pass_apart():
    from tri_inductor import cache, passes

    passes._registered_patterns.cache_clear()  # this compile registers the patterns, as a cold start does
    before = cache.counters()
    code = backend_output_code(_norm, torch.randn(8, 256, dtype=torch.bfloat16), torch.randn(256, dtype=torch.bfloat16))
    assert_our_kernel(code, "_rms_norm_kernel")
    after = cache.counters()
    assert after["register_s"] > before["register_s"] and after["pass_s"] > before["pass_s"]
    # a second compile of another graph registers nothing again; its pass is counted
    mid = after
    backend_output_code(_norm, torch.randn(4, 128, dtype=torch.bfloat16), torch.randn(128, dtype=torch.bfloat16))
    after = cache.counters()
    assert after["register_s"] == mid["register_s"] and after["pass_s"] > mid["pass_s"]
