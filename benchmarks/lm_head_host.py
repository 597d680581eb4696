"""Host and GPU time of the eager logits projection (vLLM computes logits outside its CUDA graphs,
every step): our GEMM as vLLM's lm_head hook runs it vs cuBLAS (``F.linear``), at one registry
model's vocabulary and hidden size, for the batch sizes a decode step has.

    python benchmarks/lm_head_host.py [--model qwen2.5-0.5b] [--out DIR]   # lm_head_host_<card>.json

Rows per M: ``ours`` (``mm_launch``: the hook's call, replayed from its plan,
``patterns/gemm/eager.py``), ``ours_no_plan`` (``launch_cfg`` each call, then the compiled
launcher), ``ours_triton_path`` (every call through Triton's ``kernel[grid]``, as TMA launches went
before they were cached), ``ours_ptr`` (the same tiles on the pointer kernel, where the config is a
TMA one, without a plan: what the descriptors cost), ``cublas``. On a small model a decode step is host-bound (the engine's main
thread never waits for the GPU), so the host microseconds add to every step.
"""
from __future__ import annotations

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import models  # noqa: E402
from _common import card_slug, metadata, write_json  # noqa: E402
from dispatch_host import host_and_gpu_us  # noqa: E402


class _NeverCached(dict):
    def get(self, key, default=None):
        return default


class _NoPlan(dict):
    def get(self, key, default=None):
        return None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="qwen2.5-0.5b", choices=sorted(models.E2E_MODELS))
    p.add_argument("--m", default="1,8,16,32,64,128,256", help="logits rows (sequences in the step)")
    p.add_argument("--calls", type=int, default=200)
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    from tri_inductor.patterns import _launch as L
    from tri_inductor.patterns.gemm import eager as E
    from tri_inductor.patterns.gemm.configs import TMA_KINDS, Kind
    from tri_inductor.patterns.gemm.ops import eager_config, mm_launch

    cfg_model = models.config(args.model)
    n, k = int(cfg_model["vocab_size"]), int(cfg_model["hidden_size"])
    dev, dt = torch.device("cuda"), torch.bfloat16
    g = torch.Generator(device=dev).manual_seed(0)
    w = torch.randn(n, k, device=dev, dtype=dt, generator=g) / k ** 0.5
    b = w.t()
    rows = []
    for m in (int(v) for v in args.m.split(",")):
        a = torch.randn(m, k, device=dev, dtype=dt, generator=g)
        cfg = eager_config(m, n, k, dt, dev)
        ref = a.double() @ b.double()
        variants = {"ours": lambda: mm_launch(a, b, None), "cublas": lambda: torch.nn.functional.linear(a, w)}
        if cfg.kernel in TMA_KINDS:
            ptr = cfg._replace(kernel=Kind.PTR, num_stages=min(cfg.num_stages, 4))
            variants["ours_ptr"] = lambda: mm_launch(a, b, None, cfg=ptr)
        row = {"M": m, "N": n, "K": k, "config": cfg.short()}
        for name, fn in variants.items():
            out = fn()
            row[f"{name}_rel_err"] = round(((out.double() - ref).norm() / ref.norm()).item(), 5)
            row[f"{name}_host_us"], row[f"{name}_gpu_us"] = (round(v, 2) for v in host_and_gpu_us(fn, (), args.calls))
        saved = L._COMPILED, E._PLANS
        try:
            E._PLANS = _NoPlan()  # launch_cfg each call, then the compiled launcher
            row["ours_no_plan_host_us"], row["ours_no_plan_gpu_us"] = (
                round(v, 2) for v in host_and_gpu_us(variants["ours"], (), args.calls))
            L._COMPILED = _NeverCached()  # and Triton's kernel[grid] each call
            row["ours_triton_path_host_us"], row["ours_triton_path_gpu_us"] = (
                round(v, 2) for v in host_and_gpu_us(variants["ours"], (), args.calls))
        finally:
            L._COMPILED, E._PLANS = saved
        rows.append(row)
        print(f"[lm_head_host] M={m:4d} {cfg.short():38s} host us: ours {row['ours_host_us']:6.1f} "
              f"(no plan {row['ours_no_plan_host_us']:6.1f}, Triton's path {row['ours_triton_path_host_us']:6.1f}"
              + (f", pointer kernel {row['ours_ptr_host_us']:6.1f}" if "ours_ptr_host_us" in row else "")
              + f") cuBLAS {row['cublas_host_us']:6.1f}; GPU us: ours {row['ours_gpu_us']:7.1f}"
              + (f" (pointer {row['ours_ptr_gpu_us']:7.1f})" if "ours_ptr_gpu_us" in row else "")
              + f" cuBLAS {row['cublas_gpu_us']:7.1f}; rel err {row['ours_rel_err']}", flush=True)
    out = {"benchmark": "lm_head_host", **metadata(), "model": args.model, "rows": rows,
           "method": "host_us: median CPU time to enqueue one call (no sync; synchronised every 20 calls); "
                     "gpu_us: CUDA-event time of back-to-back calls / calls"}
    print("wrote", write_json(f"lm_head_host_{card_slug()}.json", out, args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
