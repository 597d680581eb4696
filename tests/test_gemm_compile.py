"""Every TMA tile of the GEMM candidate space compiles for sm_90 (codegen only, no GPU).

The tuner compiles its candidates at a vLLM start; Triton 3.6's compiler asserted on
warp-specialized 64 x 256 tiles on 4 warps ("Instruction shape is too large for the layout"),
a crash it recovers from in-process. ``configs.invalid_reason`` now refuses those; this test
compiles each distinct (kind, tile, warps) the space or the shipped table can hand the tuner,
specialised as vLLM's launches are (``b = w.t()``: the K stride is 1), so a config the compiler
rejects is found here, not at a user's start."""
from __future__ import annotations

import pytest

from tri_inductor.patterns.gemm import configs as C
from tri_inductor.patterns.gemm import heuristics as H
from tri_inductor.patterns.gemm.kernels import mm_tma_kernel

MS = [128, 256, 512, 1024, 2048, 4096]
NK = [(4096, 4096), (1152, 896), (128256, 2048)]


def _tma_tiles() -> list[C.Cfg]:
    seen: dict[tuple, C.Cfg] = {}
    cfgs = [c for m in MS for n, k in NK for c in H.candidates(m, n, k, C.DEFAULT_DEVICE)]
    cfgs += list(C.table_entries().values())
    for c in cfgs:
        if c.kernel in (C.Kind.TMA, C.Kind.TMA_WS):
            key = (c.kernel, c.block_m, c.block_n, c.block_k, c.num_warps)
            # the deepest pipeline of the tile: the most shared memory, the longest schedule
            if key not in seen or c.num_stages > seen[key].num_stages:
                seen[key] = c
    return sorted(seen.values())


def _compile_sm90(cfg: C.Cfg) -> None:
    import triton
    from triton.backends.compiler import GPUTarget

    k = mm_tma_kernel
    consts = dict(HAS_BIAS=False, B_KMAJOR=True, NUM_SMS=C.DEFAULT_DEVICE.sms,
                  WARP_SPECIALIZE=cfg.kernel == C.Kind.TMA_WS, BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n,
                  BLOCK_K=cfg.block_k, GROUP_M=cfg.group_m, stride_bk=1)
    sig = {n: "i32" for n in k.arg_names}
    sig.update({"A": "*bf16", "B": "*bf16", "C": "*bf16", "bias": "*bf16"})
    sig.update({c: "constexpr" for c in consts})
    # pointers, N, K and the other strides 16-divisible as in a model; M (a token count) is not
    attrs = {(i,): [["tt.divisibility", 16]] for i, n in enumerate(k.arg_names)
             if n != "M" and (sig[n].startswith("*") or sig[n] == "i32")}
    src = triton.compiler.ASTSource(k, sig, consts, attrs)
    triton.compile(src, target=GPUTarget("cuda", 90, 32),
                   options=dict(num_warps=cfg.num_warps, num_stages=cfg.num_stages))


def test_space_has_tma_tiles():
    tiles = _tma_tiles()
    assert any(c.kernel == C.Kind.TMA_WS for c in tiles) and any(c.kernel == C.Kind.TMA for c in tiles)


@pytest.mark.parametrize("cfg", _tma_tiles(), ids=lambda c: c.short().replace(" ", "-"))
def test_tma_tile_compiles_for_sm90(cfg):
    _compile_sm90(cfg)


def test_refused_tile_is_the_one_the_compiler_rejects():
    # the rule in invalid_reason stands for a real compiler failure (if Triton fixes it, the
    # rule can go: this test then fails and says so)
    bad = C.Cfg(64, 256, 64, 8, 1, 4, 3, C.Kind.TMA_WS)
    assert C.invalid_reason(bad) is not None
    with pytest.raises(Exception, match="PassManager"):
        _compile_sm90(bad)
