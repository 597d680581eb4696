"""GPU: the GEMM configs chosen (stored, tuned now, or modelled) for real model shapes run and
match an fp32 reference at every M a serving step can have, eager and in the gated (symbolic-M)
form. Tolerance ||out - ref|| / ||ref|| < 1e-2 (bf16 output rounding)."""
from __future__ import annotations

import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))

import models  # noqa: E402

pytestmark = pytest.mark.gpu
MS = [1, 2, 3, 5, 8, 16, 17, 24, 32, 33, 48, 64, 65, 96, 128, 129, 200, 256, 300, 512, 1000, 2048, 3000]


@pytest.mark.parametrize("model", ["llama-3.2-1b", "qwen2.5-0.5b"])
def test_chosen_configs_run_and_match_on_model_shapes(model):
    from tri_inductor.patterns.gemm import ops as O

    g = torch.Generator(device="cuda").manual_seed(0)
    for proj, (n, k) in models.gemm_shapes(models.config(model)).items():
        w = torch.randn(n, k, device="cuda", dtype=torch.bfloat16, generator=g) / 32
        for m in MS:
            a = torch.randn(m, k, device="cuda", dtype=torch.bfloat16, generator=g)
            ref = a.float() @ w.float().t()
            for dispatch in (False, True):
                cfg = O.choose_config(m, n, k, torch.bfloat16)
                print(f"{model}:{proj} M={m} N={n} K={k} dispatch={dispatch} {cfg.short()}", flush=True)
                out = O.mm_launch(a, w.t(), None, dispatch=dispatch)
                torch.cuda.synchronize()
                err = ((out.float() - ref).norm() / ref.norm()).item()
                assert err < 1e-2, (proj, m, dispatch, cfg, err)
