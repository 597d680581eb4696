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
        if c.kernel in C.TMA_KINDS:
            key = (c.kernel, c.block_m, c.block_n, c.block_k, c.num_warps)
            # the deepest pipeline of the tile: the most shared memory, the longest schedule
            if key not in seen or c.num_stages > seen[key].num_stages:
                seen[key] = c
    return sorted(seen.values())


def _compile_sm90(cfg: C.Cfg) -> None:
    import triton
    from triton.backends.compiler import GPUTarget

    from tri_inductor.patterns.gemm import launch as LA

    k = mm_tma_kernel
    consts = LA.tma_constexprs(cfg, True, False, C.DEFAULT_DEVICE.sms)
    sig = {n: "i32" for n in k.arg_names}
    sig.update({n: f"tensordesc<bf16{shape}>" for n, shape in LA.tma_blocks(cfg, True).items()}, bias="*bf16")
    sig.update({c: "constexpr" for c in consts})
    # N and K 16-divisible as in a model; M (a token count) is not
    attrs = {(i,): [["tt.divisibility", 16]] for i, n in enumerate(k.arg_names) if n in ("bias", "N", "K")}
    src = triton.compiler.ASTSource(k, sig, consts, attrs)
    triton.compile(src, target=GPUTarget("cuda", 90, 32),
                   options=dict(num_warps=cfg.num_warps, num_stages=cfg.num_stages))


def test_space_has_tma_tiles():
    tiles = _tma_tiles()
    assert {c.kernel for c in tiles} == set(C.TMA_KINDS)


@pytest.mark.parametrize("cfg", _tma_tiles(), ids=lambda c: c.short().replace(" ", "-"))
def test_tma_tile_compiles_for_sm90(cfg):
    _compile_sm90(cfg)


def test_refused_tile_is_the_one_the_compiler_rejects():
    # the rule in invalid_reason stands for a real compiler failure (if Triton fixes it, the
    # rule can go: this test then fails and says so)
    for bad in (C.Cfg(64, 256, 64, 8, 1, 4, 3, C.Kind.TMA_WS), C.Cfg(128, 128, 64, 8, 1, 4, 3, C.Kind.TMA_WS)):
        assert C.invalid_reason(bad) is not None
        with pytest.raises(Exception, match="PassManager"):
            _compile_sm90(bad)
