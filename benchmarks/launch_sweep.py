"""Launch-config sweep of the memory-bound kernels at the token counts vLLM runs (decode 1..64,
prefill 256..8192), next to Inductor's kernel for the same op, on one GPU.

    python benchmarks/launch_sweep.py [--out DIR]      # writes launch_sweep_<card>.json

Why: inside vLLM our RMSNorm and SiLU-and-mul cost more than Inductor's fused kernels at decode
sizes (benchmarks/results/e2e_*.json profiles), while kernel_bench.py measures them at 4096 tokens
only.  A graph compiled for a symbolic token count keeps one launch config for every count, so
the choice must hold across the whole range: this prints, per op and config, the time at each
token count relative to Inductor (torch.compile of the same PyTorch code, compiled per count,
its own autotuning), and the geometric mean over the decode and the prefill counts.

Ops, in the forms vLLM's Llama-3-8B graph uses them (hidden 4096, intermediate 14336, bf16):
``add_rms_fp32res`` (bf16 x + fp32 residual in, fp32 sum out: the second norm of a layer),
``add_rms`` (bf16 x + bf16 residual), ``silu_mul``, ``rope_vllm`` (positions + cos/sin cache,
q/k [T, H*D], 32/8 heads of 128, NeoX) and ``rope_hf`` (Hugging Face's cos/sin [1, T, D] and
head-major q/k [1, H, T, D]: kernel_bench.py's RoPE row).  RoPE configs are (elements per program,
warps), laid along heads (vLLM) or positions (HF) as ``rope._blocks`` lays them.
Timing: CUDA-graph replays (as under vLLM).
"""
from __future__ import annotations

import argparse
import math
import os
import sys

import torch
import triton

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import bench, card_slug, geomean, metadata, n_sets, write_json  # noqa: E402

TOKENS = [1, 16, 64, 256, 2048, 8192]
DECODE = [t for t in TOKENS if t <= 64]
H, I, DT, EPS = 4096, 14336, torch.bfloat16, 1e-5


def _norm_native(x, r, w, fp32_res: bool):
    s = x.float() + r.float()
    h = s * torch.rsqrt(s.pow(2).mean(-1, keepdim=True) + EPS)
    return (h.to(x.dtype) * w), (s if fp32_res else s.to(x.dtype))


def _norm_ours(x, r, w, fp32_res: bool, block: int, warps: int):
    from tri_inductor.patterns import rms_norm as R

    out = torch.empty_like(x)
    res = torch.empty(x.shape, dtype=torch.float32 if fp32_res else x.dtype, device=x.device)
    R.launch(R._rms_norm_kernel, (x.shape[0],), x, r, w, out, res, r, x.stride(0), r.stride(0), out.stride(0),
             res.stride(0), 0, H, EPS, 0.0, 1, 0, HAS_RESIDUAL=True, BLOCK=block, SINGLE_TILE=block >= H, STRIDED_HEADS=False,
             HAS_RESIDUAL2=False, STORE_RESIDUAL=True,
             num_warps=warps)
    return out, res


def _act_native(x):
    return torch.nn.functional.silu(x[..., :I]) * x[..., I:]


def _act_ours(x, block: int, warps: int):
    from tri_inductor.patterns import activation as A

    out = torch.empty((x.shape[0], I), dtype=x.dtype, device=x.device)
    A.launch_gated(x, out, A._ACTS["silu"], block, warps)
    return out


HQ, HK, D = 32, 8, 128


def _rope_native_vllm(pos, q, k, cache):
    cos, sin = cache.index_select(0, pos).float().chunk(2, -1)
    T = pos.shape[0]

    def rot(x, nh):
        x = x.float().view(T, nh, D)
        x1, x2 = x[..., : D // 2], x[..., D // 2:]
        c, s_ = cos[:, None, :], sin[:, None, :]
        return torch.cat((x1 * c - x2 * s_, x2 * c + x1 * s_), -1).to(DT).view(T, nh * D)

    return rot(q, HQ), rot(k, HK)


def _rope_native_hf(q, k, cos, sin):
    def rot(x):
        return torch.cat((-x[..., D // 2:], x[..., : D // 2]), -1)
    c, s_ = cos.unsqueeze(1), sin.unsqueeze(1)
    return q * c + rot(q) * s_, k * c + rot(k) * s_


def _rope_ours(op: str, args, elems: int, warps: int):
    from tri_inductor.patterns import rope as RP

    real = RP._blocks

    def forced(head, rot, n_heads, n_seq, heads_adjacent):
        _, _, half, pas, _ = real(head, rot, n_heads, n_seq, heads_adjacent)
        span = max(1, elems // triton.next_power_of_2(head))
        if heads_adjacent:
            return 1, min(span, triton.next_power_of_2(n_heads)), half, pas, warps
        return min(span, triton.next_power_of_2(n_seq)), 1, half, pas, warps

    RP._blocks = forced
    try:
        if op == "rope_vllm":
            return RP.rope_cache(*args, D, D, True)
        return RP.rope_cos_sin(*args, True)
    finally:
        RP._blocks = real


def _configs(op: str) -> list[tuple[int, int]]:
    if op.startswith("rope"):
        return [(e, w) for e in (1024, 2048, 4096, 8192) for w in (2, 4, 8, 16) if e // (32 * w) >= 4]
    if op.startswith("add_rms"):
        return [(4096, w) for w in (1, 2, 4, 8, 16)] + [(2048, w) for w in (4, 8)]
    return [(b, w) for b in (512, 1024, 2048, 4096) for w in (1, 2, 4, 8) if b // (32 * w) >= 1]


def _current(op: str) -> tuple[int, int]:
    """The (BLOCK, num_warps) our op launches with today."""
    from tri_inductor.patterns import activation as A, rms_norm as R

    if op.startswith("add_rms"):
        return R._launch_config(H, 2)[:2]
    if op.startswith("rope"):
        from tri_inductor.patterns import rope as RP

        bt, bh, _, _, w = RP._blocks(D, D, HQ, 4096, op == "rope_vllm")
        return bt * bh * D, w
    return A._launch_config(I, 2)


def sweep(op: str) -> dict:
    fp32 = op == "add_rms_fp32res"
    rows: dict[str, dict[int, float]] = {}
    inductor: dict[int, float] = {}
    for T in TOKENS:
        if op.startswith("rope"):
            per = 2 * T * (HQ + HK) * D * 2
            if op == "rope_vllm":
                cache = torch.randn(8192, D, device="cuda", dtype=DT)
                sets = [(torch.randint(0, 8192, (T,), device="cuda"), torch.randn(T, HQ * D, device="cuda", dtype=DT),
                         torch.randn(T, HK * D, device="cuda", dtype=DT), cache) for _ in range(max(4, n_sets(per)))]
                native = torch.compile(_rope_native_vllm, dynamic=False)
            else:
                def mk():
                    ang = torch.rand(1, T, D // 2, device="cuda") * 6
                    return (torch.randn(1, HQ, T, D, device="cuda", dtype=DT), torch.randn(1, HK, T, D, device="cuda", dtype=DT),
                            torch.cat([ang.cos(), ang.cos()], -1).to(DT), torch.cat([ang.sin(), ang.sin()], -1).to(DT))
                sets = [mk() for _ in range(max(4, n_sets(per)))]
                native = torch.compile(_rope_native_hf, dynamic=False)
            ours = lambda s, b, w, op=op: _rope_ours(op, s, b, w)  # noqa: E731
        elif op.startswith("add_rms"):
            per = T * H * (2 + (4 if fp32 else 2) * 2 + 2)
            sets = [(torch.randn(T, H, device="cuda", dtype=DT),
                     torch.randn(T, H, device="cuda", dtype=torch.float32 if fp32 else DT),
                     torch.randn(H, device="cuda", dtype=DT)) for _ in range(n_sets(per))]
            native = torch.compile(lambda x, r, w: _norm_native(x, r, w, fp32), dynamic=False)
            ours = lambda s, b, w: _norm_ours(*s, fp32, b, w)  # noqa: E731
        else:
            per = T * I * 2 * 3
            sets = [(torch.randn(T, 2 * I, device="cuda", dtype=DT),) for _ in range(n_sets(per))]
            native = torch.compile(_act_native, dynamic=False)
            ours = lambda s, b, w: _act_ours(*s, b, w)  # noqa: E731
        inductor[T] = bench([lambda s=s: native(*s) for s in sets])
        for b, w in _configs(op):
            try:
                t = bench([lambda s=s: ours(s, b, w) for s in sets])
            except Exception as e:  # noqa: BLE001  (too many registers, ...)
                print(f"  {op} T={T} block {b} warps {w}: {type(e).__name__}", flush=True)
                continue
            rows.setdefault(f"{b}x{w}", {})[T] = t
        del sets
        torch.cuda.empty_cache()
    cur = "{}x{}".format(*_current(op))
    out = {"inductor_ms": inductor, "configs": {}, "current": cur}
    for name, ts in rows.items():
        ratio = {T: inductor[T] / ts[T] for T in ts}  # > 1: ours faster
        out["configs"][name] = {"ms": ts, "vs_inductor": ratio,
                                "decode_geomean": geomean([ratio[T] for T in DECODE if T in ratio]),
                                "prefill_geomean": geomean([ratio[T] for T in TOKENS if T not in DECODE and T in ratio]),
                                "all_geomean": geomean(list(ratio.values()))}
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ops", default="add_rms_fp32res,add_rms,silu_mul")
    p.add_argument("--out", default=os.environ.get("OUT") or None)
    args = p.parse_args()
    result = {"benchmark": "launch_sweep", **metadata(), "tokens": TOKENS, "ops": {}}
    for op in args.ops.split(","):
        result["ops"][op] = sweep(op)
        path = write_json(f"launch_sweep_{card_slug()}.json", result, args.out)
    print(f"\n== launch sweep: {result['card']}  commit {result['commit'][:12]}  (Inductor time / ours: > 1 = ours faster)")
    for op, r in result["ops"].items():
        print(f"{op}: Inductor us " + " ".join(f"{T}:{r['inductor_ms'][T] * 1e3:.1f}" for T in TOKENS))
        ranked = sorted(r["configs"].items(), key=lambda kv: -kv[1]["all_geomean"])
        for name, c in ranked:
            mark = " <- current" if name == r["current"] else ""
            print(f"  {name:10s} decode {c['decode_geomean']:.3f} prefill {c['prefill_geomean']:.3f} all "
                  f"{c['all_geomean']:.3f} | " + " ".join(f"{T}:{c['vs_inductor'].get(T, math.nan):.2f}" for T in TOKENS)
                  + mark)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
