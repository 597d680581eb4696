"""Prefill attention accuracy on the CPU: our paged attention kernel and vLLM's TRITON_ATTN kernel
(``unified_attention``), both in Triton's interpreter on the same paged bf16 cache, each against
a float64 reference.

Why: the GPU census compares engines by top-1 agreement with vLLM's TRITON_ATTN engine, where
ours flipped more bf16 near-ties than FA3 (Llama 97.90% vs 98.78%, nothing beyond noise). Which
kernel is nearer the exact result is a separate question, answered here without a GPU.

    CUDA_VISIBLE_DEVICES= python benchmarks/attention_accuracy_cpu.py --json F

(``CUDA_VISIBLE_DEVICES=`` lets vLLM import its Triton kernels on a machine without a driver.)
"""
from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # this checkout's package
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests"))

# (q heads, kv heads, head dim, tokens, cached prefix)
CASES = ((8, 2, 64, 96, 0), (8, 2, 128, 96, 0), (7, 1, 64, 80, 48), (4, 4, 128, 64, 64))


def measure(case: tuple[int, int, int, int, int]) -> dict:
    import torch

    from test_paged_attention import make_inputs
    from tri_inductor.patterns.paged_attention import paged_attention
    from tri_inductor.patterns.paged_attention.reference import paged_attention_ref
    from tri_inductor.testing.interpret import triton_interpreter

    hq, hk, d, n, prefix = case
    q, kc, vc, cu, sl, bt = make_inputs([n], [n + prefix], hq, hk, d, seed=1)
    scale = d ** -0.5
    ref = paged_attention_ref(q, kc, vc, cu, sl, bt, scale)
    ours, theirs = torch.empty_like(q), torch.empty_like(q)
    with triton_interpreter():
        # imported inside: the interpreter runs the kernels of modules first imported under it
        from vllm.v1.attention.ops.triton_unified_attention import unified_attention

        paged_attention(q, kc, vc, ours, cu, sl, bt, n, n + prefix, scale)
        unified_attention(q, kc, vc, theirs, cu, n, sl, n + prefix, scale, True, (-1, -1), bt.clamp(min=0), 0.0,
                          None, None, None)
    rounded = ref.to(q.dtype).double()

    def score(o):
        err = (o.double() - ref).abs()
        return {"mean_abs_err": err.mean().item(), "max_abs_err": err.max().item(),
                "off_rounded_ref": (o.double() != rounded).float().mean().item()}

    return {"case": dict(zip(("q_heads", "kv_heads", "head_dim", "tokens", "prefix"), case)),
            "ours": score(ours), "vllm_triton_attn": score(theirs), "equal": (ours == theirs).float().mean().item()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json", default=None, help="write the results here")
    args = p.parse_args(argv)
    if os.environ.get("CUDA_VISIBLE_DEVICES") != "":
        print("set CUDA_VISIBLE_DEVICES= (empty): vLLM imports its Triton kernels only then without a driver",
              file=sys.stderr)
        return 2
    from _meta import git_info, versions

    rows = [measure(c) for c in CASES]
    for r in rows:
        c, o, v = r["case"], r["ours"], r["vllm_triton_attn"]
        print(f"{c['q_heads']}/{c['kv_heads']} d{c['head_dim']} {c['tokens']}+{c['prefix']}: mean |err| ours "
              f"{o['mean_abs_err']:.3e} vLLM {v['mean_abs_err']:.3e} (ratio {o['mean_abs_err'] / v['mean_abs_err']:.3f}); "
              f"off the rounded reference ours {o['off_rounded_ref']:.1%} vLLM {v['off_rounded_ref']:.1%}; "
              f"equal {r['equal']:.1%}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"mode": "Triton interpreter (CPU), bf16", "versions": versions(), **git_info(), "rows": rows},
                      f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
