"""Our Triton paged attention (tri_inductor.patterns.paged_attention) on the CPU.

* numerics in Triton's interpreter against a float64 reference: vLLM's TRITON_ATTN cache layout
  (packed K|V, blocks scattered, table rows padded with holes), odd context lengths, GQA 1/4/7,
  head dims 64/128/80, decode with one and several splits, prefill and chunked prefill with a
  cached prefix, mixed batches, sliding window, soft-cap, sinks;
* every kernel variant compiled for sm_90 (triton's ptxas, no GPU), within H100 shared memory;
* the decode split count from the SM count, and the vLLM backend selection / decline logic.

Tolerances: outputs are bf16 (fp16) of values |o| <= ~3; the kernel rounds P to the input dtype
before P @ V (as FlashAttention does), so the error bound is a few output ulps:
bf16 atol 2e-2 / rtol 2e-2, fp16 atol 3e-3 / rtol 3e-3.
"""
from __future__ import annotations

import types

import pytest
import torch

from tri_inductor.patterns.paged_attention import decline_reason, paged_attention
from tri_inductor.patterns.paged_attention import launch as L
from tri_inductor.patterns.paged_attention.reference import paged_attention_ref

TOL = {torch.bfloat16: dict(atol=2e-2, rtol=2e-2), torch.float16: dict(atol=3e-3, rtol=3e-3)}


def make_inputs(q_lens, seq_lens, hq, hk, d, block_size=16, dtype=torch.bfloat16, seed=0, device="cpu"):
    """vLLM's TRITON_ATTN layout: a packed cache (blocks, kv_heads, block_size, 2*d) stored
    NHD, split into K and V views; blocks taken in a random order, table rows padded with -1.
    Drawn on the CPU (the same values on any ``device``), then moved there."""
    g = torch.Generator().manual_seed(seed)
    nblk = [(s + block_size - 1) // block_size for s in seq_lens]
    total = sum(nblk) + 3  # blocks no sequence owns
    perm = torch.randperm(total, generator=g)
    table = torch.full((len(seq_lens), max(nblk) + 2), -1, dtype=torch.int32)
    i = 0
    for s, n in enumerate(nblk):
        table[s, :n] = perm[i:i + n].int()
        i += n
    phys = torch.randn(total, block_size, hk, 2 * d, generator=g).to(dtype)  # NHD storage
    cache = phys.to(device).permute(0, 2, 1, 3)                              # logical (B, H, N, 2d)
    k_cache, v_cache = cache.transpose(1, 2).split(d, dim=-1)                # what the backend passes
    q = torch.randn(sum(q_lens), hq, d, generator=g).to(dtype).to(device)
    cu = torch.tensor([0, *torch.tensor(q_lens).cumsum(0).tolist()], dtype=torch.int32, device=device)
    return q, k_cache, v_cache, cu, torch.tensor(seq_lens, dtype=torch.int32, device=device), table.to(device)


def run_case(q_lens, seq_lens, hq, hk, d, block_size=16, dtype=torch.bfloat16, window=None, softcap=0.0,
             with_sinks=False, num_splits=None, seed=0, split_policy=None, prefill=None):
    q, kc, vc, cu, sl, bt = make_inputs(q_lens, seq_lens, hq, hk, d, block_size, dtype, seed)
    sinks = torch.randn(hq, generator=torch.Generator().manual_seed(seed + 1)) if with_sinks else None
    out = torch.full_like(q, float("nan"))
    scale = d ** -0.5
    paged_attention(q, kc, vc, out, cu, sl, bt, max(q_lens), max(seq_lens), scale, window=window,
                    softcap=softcap, sinks=sinks, num_splits=num_splits, split_policy=split_policy,
                    prefill=prefill)
    ref = paged_attention_ref(q, kc, vc, cu, sl, bt, scale, window=window, softcap=softcap, sinks=sinks)
    assert not out.isnan().any()
    torch.testing.assert_close(out.double(), ref, **TOL[dtype])


# ----------------------------------------------------------------------------- decode

@pytest.mark.parametrize("hq,hk,d,splits", [
    (4, 4, 64, 1),     # MHA (group 1), one split: no reduce
    (8, 2, 128, 3),    # GQA 4, three splits + reduce
    (7, 1, 80, 4),     # GQA 7 (not a power of 2), head dim 80 (padded to 128)
    (14, 2, 64, 2),    # GQA 7 over two KV heads
], ids=["mha-1split", "gqa4-d128-3splits", "gqa7-d80-4splits", "gqa7x2-2splits"])
def test_decode(interpreter, hq, hk, d, splits):
    run_case([1, 1, 1], [1, 37, 130], hq, hk, d, num_splits=splits)


def test_decode_more_splits_than_tiles(interpreter):
    """Splits past a short sequence's tiles are empty (max -inf, sum 0) and weigh nothing."""
    run_case([1, 1], [5, 70], 8, 2, 64, num_splits=6)


@pytest.mark.parametrize("block_size", [32, 64])
def test_decode_other_block_sizes(interpreter, block_size):
    run_case([1, 1], [45, 150], 8, 2, 64, block_size=block_size, num_splits=2)


@pytest.mark.parametrize("splits", [1, 3])
def test_decode_window_softcap_sinks(interpreter, splits):
    run_case([1, 1, 1], [9, 100, 161], 8, 2, 64, window=40, softcap=5.0, with_sinks=True, num_splits=splits)


def test_decode_window_pair_form(interpreter):
    """unified_attention's window_size pair: (sliding_window - 1, 0)."""
    run_case([1, 1], [50, 100], 4, 1, 64, window=(32, 0), num_splits=2)


def test_decode_fp16(interpreter):
    run_case([1, 1], [33, 90], 8, 2, 64, dtype=torch.float16, num_splits=2)


def test_decode_auto_splits(interpreter):
    """num_splits from the (CPU stand-in) SM count: several for a batch of 2."""
    assert L.decode_cfg(2, 8, 2, 64, 700, torch.device("cpu")).num_splits > 1
    run_case([1, 1], [17, 700], 8, 2, 64)


def test_decode_tile_keeps_its_bytes_across_head_dims():
    """Keys a decode iteration loads: the same K/V tile bytes for d64, d128 and d256."""
    assert [L.decode_tile_n(d) * L.head_pad(d) for d in (64, 128, 256)] == [L.DECODE_TILE_ELEMS] * 3


@pytest.mark.parametrize("hq,hk,d", [(8, 2, 64), (8, 2, 128)], ids=["d64", "d128"])
def test_decode_mixed_lengths_use_their_own_split_counts(interpreter, monkeypatch, hq, hk, d):
    """A batch of mixed lengths under a split count sized for the longest: each sequence uses
    the splits its length fills (the shortest one, in one split, is written by the decode kernel;
    a sequence with no key gets its zero row) and the reduce reads only the used partials: the
    partial buffers start as NaN, so reading an unused one would show."""
    real_empty, real_empty_like = torch.empty, torch.empty_like

    def nan_filled(t):
        return t.fill_(float("nan")) if t.is_floating_point() else t

    monkeypatch.setattr(torch, "empty", lambda *a, **k: nan_filled(real_empty(*a, **k)))
    monkeypatch.setattr(torch, "empty_like", lambda *a, **k: nan_filled(real_empty_like(*a, **k)))
    lens = [3, 40, 300, 1100, 0]
    tiles = [-(-n // L.decode_tile_n(d)) for n in lens]
    used = [min(8, max(1, -(-t // L.MIN_TILES_PER_SPLIT))) for t in tiles]
    assert used[0] == 1 and used[-1] == 1 and 1 < used[2] < used[3] <= 8  # what the case covers
    run_case([1] * len(lens), lens, hq, hk, d, num_splits=8)


@pytest.mark.parametrize("feat", [False, True], ids=["plain", "window-softcap-sinks"])
def test_balanced_split_policy_cuts_by_the_batchs_share(interpreter, monkeypatch, feat):
    """Split policy ``balanced``: each sequence's split count comes from its share of the batch's
    tiles over the device's working programs (here a 1-SM device: 4 programs), computed alike by
    the decode programs and the reduce on the device. Partials start as NaN, so a reduce reading
    a partial the decode kernel did not write would show; the output matches float64."""
    real_empty = torch.empty
    monkeypatch.setattr(torch, "empty", lambda *a, **k: (lambda t: t.fill_(float("nan")) if t.is_floating_point()
                                                         else t)(real_empty(*a, **k)))
    monkeypatch.setattr(L, "sm_count", lambda device: 1)
    lens, hq, hk, d = [3, 40, 300, 1100, 0], 8, 2, 64
    tile = L.decode_tile_n(d)
    tiles = [-(-n // tile) for n in lens]
    used = [min(8, max(1, -(-t // L.MIN_TILES_PER_SPLIT))) for t in tiles]
    target = max(-(-sum(tiles) * hk // (1 * L.DEFAULT_PROGRAMS_PER_SM)), L.MIN_TILES_PER_SPLIT)
    balanced = [min(u, max(1, -(-t // target))) for u, t in zip(used, tiles)]
    assert balanced != used and balanced[3] > 1  # the case cuts differently, and still splits the longest
    run_case([1] * len(lens), lens, hq, hk, d, num_splits=8, split_policy="balanced",
             window=500 if feat else None, softcap=5.0 if feat else 0.0, with_sinks=feat)


def test_balanced_policy_raises_the_split_bound():
    """The captured bound holds a replay's longest sequence (a fixed bound); outside capture it
    is what the step's longest sequence can use; a small batch keeps the wave's larger count."""
    cpu = torch.device("cpu")
    wave = L.decode_cfg(64, 32, 8, 128, 4096, cpu).num_splits
    assert wave == 1 and L.decode_cfg(64, 32, 8, 128, 4096, cpu, balanced=True).num_splits == L.BALANCED_SPLITS
    assert L.decode_cfg(64, 32, 8, 128, 200, cpu, balanced=True).num_splits == 2  # 200 keys: 2 splits at most
    assert L.decode_cfg(1, 32, 8, 128, 4096, cpu, balanced=True).num_splits == L.decode_cfg(1, 32, 8, 128, 4096,
                                                                                             cpu).num_splits
    with pytest.raises(ValueError, match="split_policy"):
        run_case([1], [10], 8, 2, 64, split_policy="fast")


def test_decode_split_policy_from_the_environment(interpreter, monkeypatch):
    from tri_inductor import envs

    monkeypatch.setenv("TRI_INDUCTOR_DECODE_SPLITS", "Balanced")
    assert envs.decode_splits() == "balanced"
    run_case([1, 1], [30, 700], 8, 2, 64)  # the policy the variable names, correct either way
    monkeypatch.setenv("TRI_INDUCTOR_DECODE_SPLITS", "fastest")
    with pytest.raises(envs.EnvError, match="wave, balanced"):
        run_case([1, 1], [30, 700], 8, 2, 64)


def test_split_partials_are_disjoint_aligned_views_of_one_buffer():
    """One allocation for the three fp32 partials: contiguous, each 16-byte aligned (the kernel's
    specialisation), none overlapping another."""
    from tri_inductor.patterns.paged_attention.ops import _partials

    o, m, l = _partials(3, 7, 4, 80, torch.device("cpu"))
    assert o.shape == (3, 7, 4, 80) and m.shape == l.shape == (3, 7, 4)
    assert all(t.is_contiguous() and t.dtype == torch.float32 and t.data_ptr() % 16 == 0 for t in (o, m, l))
    assert o.untyped_storage().data_ptr() == m.untyped_storage().data_ptr() == l.untyped_storage().data_ptr()
    spans = sorted((t.data_ptr(), t.data_ptr() + 4 * t.numel()) for t in (o, m, l))
    assert all(end <= start for (_, end), (start, _) in zip(spans, spans[1:]))


def test_decode_skips_empty_query_rows(interpreter):
    """CUDA-graph padding: sequences with no query token write nothing."""
    q, kc, vc, cu, sl, bt = make_inputs([1, 1], [20, 40], 4, 2, 64)
    cu3 = torch.tensor([0, 1, 1, 2], dtype=torch.int32)  # middle sequence: no queries
    sl3 = torch.tensor([20, 7, 40], dtype=torch.int32)
    bt3 = torch.stack([bt[0], bt[0], bt[1]])
    out = torch.full_like(q, float("nan"))
    paged_attention(q, kc, vc, out, cu3, sl3, bt3, 1, 40, 0.125, num_splits=2)
    ref = paged_attention_ref(q, kc, vc, cu3, sl3, bt3, 0.125)
    torch.testing.assert_close(out.double(), ref, **TOL[torch.bfloat16])


# ----------------------------------------------------------------------------- prefill

@pytest.mark.parametrize("hq,hk,d", [(4, 4, 64), (8, 2, 128), (7, 1, 64), (4, 1, 96)],
                         ids=["mha", "gqa4-d128", "gqa7", "gqa4-d96"])
def test_prefill(interpreter, hq, hk, d):
    run_case([19, 5], [19, 5], hq, hk, d)


def test_chunked_prefill_with_cached_prefix_and_decode_rows(interpreter):
    """Chunks after a cached prefix (context 40 and 77) next to decode rows, one batch."""
    run_case([1, 24, 1, 9], [33, 64, 70, 86], 8, 2, 64)


@pytest.mark.parametrize("window", [None, 200], ids=["causal", "window"])
def test_prefill_long_prefix_runs_unmasked_tiles(interpreter, window):
    """Contexts of 292/124 keys before the chunk: whole tiles below every row's diagonal (and
    inside every row's window) take the unmasked loop; the window edge and diagonal the masked."""
    run_case([8, 1, 16], [300, 200, 140], 8, 2, 64, window=window)


def test_prefill_window_softcap_sinks(interpreter):
    run_case([30, 3], [45, 20], 8, 2, 64, window=12, softcap=10.0, with_sinks=True)


def test_prefill_register_capped_twin(interpreter):
    """A tuning candidate with a register cap (two programs an SM) is the same kernel with one
    more compile option: same results, whatever the tile."""
    cfg = L.PrefillCfg(block_m=128, block_q=32, tile_n=64, num_warps=8, num_stages=3, max_regs=128)
    run_case([40, 3], [100, 30], 8, 2, 128, prefill=cfg)


def test_prefill_block_size_32_fp16(interpreter):
    run_case([20, 7], [50, 7], 8, 2, 64, block_size=32, dtype=torch.float16)


def test_prefill_not_causal(interpreter):
    q, kc, vc, cu, sl, bt = make_inputs([6, 9], [6, 9], 4, 2, 64)
    out = torch.full_like(q, float("nan"))
    paged_attention(q, kc, vc, out, cu, sl, bt, 9, 9, 0.125, causal=False)
    ref = paged_attention_ref(q, kc, vc, cu, sl, bt, 0.125, causal=False)
    torch.testing.assert_close(out.double(), ref, **TOL[torch.bfloat16])


# ----------------------------------------------------------------------------- declines

def test_declines_name_the_reason():
    q, kc, vc, *_ = make_inputs([1], [16], 4, 2, 64)
    out = torch.empty_like(q)
    assert decline_reason(q, kc, vc, out) is None
    assert "KV cache dtype" in decline_reason(q, kc.view(torch.int16), vc, out)
    assert "query dtype" in decline_reason(q.float(), kc, vc, out)
    assert "per-sequence causal" in decline_reason(q, kc, vc, out, causal=torch.ones(1, dtype=torch.bool))
    assert "without causal" in decline_reason(q, kc, vc, out, causal=False, window=8)
    assert "sinks" in decline_reason(q, kc, vc, out, sinks=torch.zeros(3))
    big = torch.empty(1, 4, 320, dtype=torch.bfloat16)
    assert "head dim 320" in decline_reason(big, kc, vc, big)
    with pytest.raises(ValueError, match="does not take these inputs"):
        paged_attention(q.float(), kc, vc, out, torch.tensor([0, 1]), torch.tensor([16]),
                        torch.zeros(1, 1, dtype=torch.int32), 1, 16, 0.1)


# ----------------------------------------------------------------------------- launch config

def test_split_count_fills_one_wave():
    # batch 1 x 8 KV heads on 132 SMs holding 4 programs each: the most splits within 528 programs
    slots = 132 * L.DEFAULT_PROGRAMS_PER_SM
    n = L.num_splits_for(1, 8, None, 132, 64)
    assert n == L.MAX_SPLITS or (n * 8 <= slots < (n + 1) * 8)
    assert L.num_splits_for(32, 8, None, 132, 64) == 2           # 512 programs: 2 x 256 fit, 3 x 256 do not
    assert L.num_splits_for(32, 4, None, 132, 64) == 4           # 512 of 528, not 640
    assert L.num_splits_for(3, 8, None, 132, 64) * 3 * 8 <= slots
    assert L.num_splits_for(67, 8, None, 132, 64) == 1           # 536 programs: the batch fills the wave
    assert L.num_splits_for(1, 8, 512, 132, 64) == 4             # 512 keys: 2 tiles of 64 a split at least
    assert L.num_splits_for(256, 8, 32768, 132, 64) == 1         # the grid alone fills the device
    assert L.num_splits_for(1, 1, None, 132, 64) == L.MAX_SPLITS
    assert L.num_splits_for(4, 8, None, 78, 64) < L.num_splits_for(4, 8, None, 132, 64)  # from the SM count
    assert L.num_splits_for(4, 8, None, 132, 64, per_sm=7) > L.num_splits_for(4, 8, None, 132, 64, per_sm=3)
    for b in range(1, 80):                                        # never past one wave unless unsplit
        for per_sm in (2, 3, 4, 7):
            s = L.num_splits_for(b, 8, None, 132, 64, per_sm)
            assert s == 1 or b * 8 * s <= 132 * per_sm


def test_programs_per_sm_follows_cuda_occupancy_rules():
    """CUDA's rule: registers in 256-register warp units of a 64K file, threads, shared memory
    plus 1 KB a block. The decode kernel on sm_90 (ptxas: 122 registers, 39,424 bytes shared,
    4 warps) is register-bound at 4; its d64 64-key variant (70, 20,992) at 7."""
    from tri_inductor.patterns.occupancy import programs_per_sm

    assert programs_per_sm(122, 39424, 4) == 4
    assert programs_per_sm(70, 20992, 4) == 7
    assert programs_per_sm(32, 100 * 1024, 4) == 2                # shared-memory bound
    assert programs_per_sm(32, 0, 16) == 4                        # thread bound: 2048 / 512
    assert programs_per_sm(255, 0, 8) == 1


def test_decode_asks_no_compiled_kernel_off_the_gpu(interpreter):
    """CPU (interpreter) and traced calls size splits with the default programs per SM."""
    from tri_inductor.patterns._launch import compiled_kernel
    from tri_inductor.patterns.paged_attention import ops

    t = torch.zeros(4)
    assert compiled_kernel(None, (1,), t) is None
    cfg = L.decode_cfg(1, 1, 1, 8, 8, torch.device("cpu"))
    assert ops._decode_programs_per_sm(torch.zeros(1, 1, 8), cfg, {}, None) == L.DEFAULT_PROGRAMS_PER_SM
    run_case([1, 1], [17, 700], 8, 2, 64)


def test_prefill_tiles_for_hopper():
    assert L.prefill_cfg(4, 128, 512) == L.PrefillCfg(128, 32, 64, 8, L.PIPELINE_STAGES)
    assert L.prefill_cfg(7, 128, 512).block_q == 18             # 126 of 128 rows used
    assert L.prefill_cfg(7, 128, 2048).block_q == 36            # 252 of 256
    assert L.prefill_cfg(8, 256, 2048).block_m == 64            # shared memory for head 256
    assert L.prefill_cfg(4, 64, 2).block_m == 16                # a short chunk: small tile
    # a long prefill: 256-row programs on 16 warps once they fill FILL_TILES per KV head
    assert L.prefill_cfg(4, 128, 4096) == L.PrefillCfg(256, 64, 64, 16, L.PIPELINE_STAGES)
    assert L.prefill_cfg(4, 128, 1000).block_m == 128
    assert L.prefill_cfg(8, 256, 8192).block_m == 64


# ----------------------------------------------------------------------------- sm_90 codegen

def _sm90(kernel, consts, num_warps, num_stages, fp32=("part_o_ptr", "part_m_ptr", "part_l_ptr", "sinks_ptr"),
          i32ptr=("block_table_ptr", "seq_lens_ptr", "cu_q_ptr"), **options):
    """Compile for sm_90 as a real launch specializes: unit head-dim strides (``sk3``/``sv3``) are
    constants, pointers and other strides divisible by 16."""
    import triton
    from triton.backends.compiler import GPUTarget

    consts = {**consts, **{n: 1 for n in ("sk3", "sv3") if n in kernel.arg_names}}
    sig, attrs = {}, {}
    for i, n in enumerate(kernel.arg_names):
        if n in consts:
            sig[n] = "constexpr"
        elif n in fp32:
            sig[n] = "*fp32"
        elif n in i32ptr:
            sig[n] = "*i32"
        elif n.endswith("_ptr"):
            sig[n] = "*bf16"
        elif n in ("scale", "softcap"):
            sig[n] = "fp32"
        else:
            sig[n] = "i32"
        if n not in consts and (n.endswith("_ptr") or n.startswith(("stride", "sk", "sv"))):
            attrs[(i,)] = [["tt.divisibility", 16]]
    src = triton.compiler.ASTSource(kernel, sig, consts, attrs)
    out = triton.compile(src, target=GPUTarget("cuda", 90, 32), options=dict(num_warps=num_warps, num_stages=num_stages, **options))
    assert out.asm.get("cubin")
    assert out.metadata.shared <= 232448, out.metadata.shared  # H100/H200 opt-in shared memory
    return out


def synchronous_loads_in_loops(ttgir: str) -> list[str]:
    """``tt.load`` ops left inside an ``scf.for`` body after software pipelining: each one stalls
    every iteration (the pipelined ones became ``async_copy_global_to_local``)."""
    stack, found = [], []
    for line in ttgir.splitlines():
        s = line.strip()
        if " tt.load " in f" {s} " and "for" in stack:
            found.append(s[:120])
        for ch in s:
            if ch == "{":
                stack.append("for" if "scf.for" in s else "other")
            elif ch == "}" and stack:
                stack.pop()
    return found


@pytest.mark.parametrize("group,head,split,feat", [
    (4, 128, True, False), (4, 128, False, True), (7, 64, True, True), (1, 256, True, False)],
    ids=["gqa4-d128-split", "gqa4-d128-1split-win-cap-sinks", "gqa7-d64-split-all", "mha-d256-split"])
def test_decode_kernels_compile_for_sm90(group, head, split, feat):
    from tri_inductor.patterns.paged_attention.decode import paged_attn_decode_kernel, paged_attn_reduce_kernel

    balanced = split and group > 1  # the balanced split policy's variant of the split kernels
    cfg = L.decode_cfg(2, 8 * group, 8, head, 4096, torch.device("cpu"), num_splits=8 if split else 1)
    consts = dict(NUM_Q_HEADS=8 * group, GROUP=group, BLOCK_G=cfg.block_g, HEAD=head, HEAD_PAD=L.head_pad(head),
                  BLOCK_SIZE=16, TILE_N=cfg.tile_n, WINDOW=4096 if feat else 0, USE_SOFTCAP=feat, USE_SINKS=feat,
                  SPLIT=split, SPLITS_PAD=cfg.splits_pad, MIN_TILES=L.MIN_TILES_PER_SPLIT, BALANCED=balanced,
                  USE_PDL=True)
    out = _sm90(paged_attn_decode_kernel, consts, cfg.num_warps, cfg.num_stages)
    # the block-table lookups and the K/V tiles they address are all asynchronous (pipelined); the
    # balanced policy adds one read of the batch's lengths before the KV loop (once for <= 256 sequences)
    assert len(synchronous_loads_in_loops(out.asm["ttgir"])) == (1 if balanced else 0)
    if split:
        _sm90(paged_attn_reduce_kernel, dict(NUM_Q_HEADS=8 * group, NUM_KV_HEADS=8, HEAD=head,
                                             HEAD_PAD=L.head_pad(head), SPLITS_PAD=cfg.splits_pad,
                                             WINDOW=4096 if feat else 0, TILE_N=cfg.tile_n,
                                             MIN_TILES=L.MIN_TILES_PER_SPLIT, BALANCED=balanced, USE_SINKS=feat,
                                             USE_PDL=True), 4, 1)


@pytest.mark.parametrize("group,head,max_q,feat", [
    (4, 128, 4096, False), (7, 128, 4096, True), (8, 64, 512, False), (4, 256, 4096, True), (4, 80, 3, False)],
    ids=["gqa4-d128", "gqa7-d128-win-cap-sinks", "gqa8-d64", "gqa4-d256-all", "gqa4-d80-short"])
def test_prefill_kernel_compiles_for_sm90(group, head, max_q, feat):
    from tri_inductor.patterns.paged_attention.prefill import paged_attn_prefill_kernel

    cfg = L.prefill_cfg(group, head, max_q)
    consts = dict(GROUP=group, BLOCK_M=cfg.block_m, BLOCK_Q=cfg.block_q, HEAD=head, HEAD_PAD=L.head_pad(head),
                  BLOCK_SIZE=16, TILE_N=cfg.tile_n, WINDOW=1024 if feat else 0, CAUSAL=True, USE_SOFTCAP=feat,
                  USE_SINKS=feat, USE_PDL=True)
    out = _sm90(paged_attn_prefill_kernel, consts, cfg.num_warps, cfg.num_stages)
    assert synchronous_loads_in_loops(out.asm["ttgir"]) == []


def _ptxas_usage(ptx: str) -> tuple[int, int]:
    """(registers a thread, bytes of spill stores) of an sm_90 PTX, from the ptxas Triton uses
    (the one whose version the PTX was written for)."""
    import os
    import re
    import subprocess
    import tempfile

    from triton import knobs

    ptxas = knobs.nvidia.ptxas.path
    with tempfile.TemporaryDirectory() as d:
        src = os.path.join(d, "k.ptx")
        with open(src, "w") as f:
            f.write(ptx)
        log = subprocess.run([ptxas, "-arch=sm_90a", "-v", src, "-o", os.path.join(d, "k.cubin")],
                             capture_output=True, text=True)
    assert log.returncode == 0, log.stderr[-2000:]
    log = log.stderr
    return int(re.search(r"Used (\d+) registers", log).group(1)), int(re.search(r"(\d+) bytes spill stores", log).group(1))


def test_register_capped_twin_fits_two_programs_an_sm():
    """The tuner's two-programs-an-SM candidate: capped at 128 registers on 8 warps (two programs
    fill the 64K register file) with at most a few spills, where the uncapped kernel takes more
    than 128 (one program an SM); twice its shared memory fits an H100's."""
    from tri_inductor.patterns.gemm.configs import DEFAULT_DEVICE
    from tri_inductor.patterns.paged_attention import tuning as PT
    from tri_inductor.patterns.paged_attention.prefill import paged_attn_prefill_kernel

    group, head = 4, 128
    twin = next(c for c in PT.candidates(group, head, PT.Q_BUCKETS[-1], DEFAULT_DEVICE) if c.max_regs)
    assert twin.num_warps == 8 and twin.max_regs == PT.SHARED_SM_REGS
    consts = dict(GROUP=group, BLOCK_M=twin.block_m, BLOCK_Q=twin.block_q, HEAD=head, HEAD_PAD=L.head_pad(head),
                  BLOCK_SIZE=16, TILE_N=twin.tile_n, WINDOW=0, CAUSAL=True, USE_SOFTCAP=False, USE_SINKS=False,
                  USE_PDL=True)
    capped = _sm90(paged_attn_prefill_kernel, consts, twin.num_warps, twin.num_stages, maxnreg=twin.max_regs)
    free = _sm90(paged_attn_prefill_kernel, consts, twin.num_warps, twin.num_stages)
    regs, spills = _ptxas_usage(capped.asm["ptx"])
    assert regs <= twin.max_regs and spills <= 128, (regs, spills)
    assert _ptxas_usage(free.asm["ptx"])[0] > twin.max_regs
    shared = capped.metadata.shared
    assert PT.allocated_smem_bytes(twin, head) <= shared <= PT.allocated_smem_bytes(twin, head) + 1024
    assert 2 * (shared + 1024) <= DEFAULT_DEVICE.smem  # two programs' shared memory (+1 KB each, CUDA's)
    assert synchronous_loads_in_loops(capped.asm["ttgir"]) == []


# ----------------------------------------------------------------------------- backend selection

def test_choose_attention():
    from tri_inductor.vllm_attention_select import FALLBACK, SLOT, choose_attention

    assert choose_attention("ours", False, None)[0] == SLOT
    assert choose_attention("triton_attn", False, None)[0] == FALLBACK
    name, why = choose_attention("ours", False, "vLLM's CUSTOM attention slot holds x.Y")
    assert name == FALLBACK and "x.Y" in why
    assert choose_attention("ours", True, None)[0] == "TRITON_MLA"


def _fake_registry(owner=None, with_custom=True):
    import enum

    members = {"TRITON_ATTN": "a.B", **({"CUSTOM": None} if with_custom else {})}
    Enum = enum.Enum("AttentionBackendEnum", members)
    overrides = {}
    if owner is not None:
        overrides[Enum.CUSTOM] = owner

    def register_backend(backend, class_path=None, is_mamba=False):
        overrides[backend] = class_path

    return types.SimpleNamespace(AttentionBackendEnum=Enum, _ATTN_OVERRIDES=overrides,
                                 register_backend=register_backend)


def test_slot_registration_claims_only_a_free_slot():
    from tri_inductor.vllm_attention_select import BACKEND_PATH, is_ours, register_slot

    free = _fake_registry()
    assert register_slot(free) and is_ours("CUSTOM", free) and not is_ours("TRITON_ATTN", free)
    assert register_slot(free)  # idempotent
    taken = _fake_registry(owner="someone.Else")
    assert not register_slot(taken) and taken._ATTN_OVERRIDES[taken.AttentionBackendEnum.CUSTOM] == "someone.Else"
    assert not is_ours("CUSTOM", taken)
    old = _fake_registry(with_custom=False)  # a vLLM without the slot: nothing registered
    assert not register_slot(old) and not old._ATTN_OVERRIDES
    assert BACKEND_PATH.endswith("TriPagedAttentionBackend")


def test_selection_on_this_vllm(monkeypatch):
    pytest.importorskip("vllm", reason="vLLM is not installed")
    from tri_inductor.hooks import signature_problem
    from tri_inductor.vllm_attention_select import selection, unavailable_reason

    assert unavailable_reason(signature_problem) is None
    assert selection({"TRI_INDUCTOR_ATTENTION": "ours"}, False, signature_problem)[0] == "CUSTOM"
    assert selection({}, False, signature_problem)[0] == "CUSTOM"  # the default
    assert selection({"TRI_INDUCTOR_ATTENTION": "triton_attn"}, False, signature_problem)[0] == "TRITON_ATTN"
    # a vLLM whose TritonAttentionImpl changed: TRITON_ATTN, saying why
    name, why = selection({"TRI_INDUCTOR_ATTENTION": "ours"}, False, lambda target: f"{target} takes (self, x)")
    assert name == "TRITON_ATTN" and "takes (self, x)" in why


def test_backend_declines_per_layer_and_per_step():
    pytest.importorskip("vllm", reason="vLLM is not installed")
    from tri_inductor.vllm_attention import layer_decline_reason, step_decline_reason

    layer = types.SimpleNamespace(attn_type="decoder", kv_cache_dtype="auto", alibi_slopes=None, use_alibi_sqrt=False,
                                  chunk_lookback=-1, _is_per_token_head_quant=False, use_td=False)
    assert layer_decline_reason(layer) is None
    assert "fp8" in layer_decline_reason(types.SimpleNamespace(**{**vars(layer), "kv_cache_dtype": "fp8"}))
    assert "ALiBi" in layer_decline_reason(types.SimpleNamespace(**{**vars(layer), "alibi_slopes": torch.ones(2)}))
    assert "chunked" in layer_decline_reason(types.SimpleNamespace(**{**vars(layer), "chunk_lookback": 1}))
    assert "encoder" in layer_decline_reason(types.SimpleNamespace(**{**vars(layer), "attn_type": "encoder"}))
    md = types.SimpleNamespace(use_cascade=False, mm_prefix_range_tensor=None, rswa_prefix_lens=None, causal=True)
    assert step_decline_reason(md, None, None) is None
    assert "quantization" in step_decline_reason(md, torch.ones(1), None)
    assert "per-sequence" in step_decline_reason(types.SimpleNamespace(**{**vars(md), "causal": torch.ones(2)}), None, None)


def test_backend_declines_a_kv_cache_layout_it_does_not_read():
    """The logical (blocks, KV heads, block size, K|V) cache vLLM 0.26 declares and 0.34 builds
    for every layer; another arrangement goes to vLLM's kernel (where shapes can tell)."""
    pytest.importorskip("vllm", reason="vLLM is not installed")
    from tri_inductor.vllm_attention import kv_layout_decline_reason

    assert kv_layout_decline_reason(torch.empty(10, 8, 16, 256), 8, 128) is None
    assert "not (blocks, 8, block size, 256)" in kv_layout_decline_reason(torch.empty(10, 16, 8, 256), 8, 128)
    assert kv_layout_decline_reason(torch.empty(10, 8, 16, 128), 8, 128) is not None  # K only
    assert kv_layout_decline_reason(torch.empty(2, 10, 16, 8, 128), 8, 128) is not None  # K and V apart


def test_census_and_profiles_count_our_kernels_as_triton_attention():
    """vllm_census / profile_kernels class kernels by the @triton.jit names in our sources; the
    e2e profiles put them in the attention class."""
    import sys
    from pathlib import Path

    from tri_inductor.audit.runtime import classify_kernel, source_triton_kernel_names
    from tri_inductor.patterns.paged_attention import KERNELS

    names = source_triton_kernel_names(("tri_inductor",))
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    try:
        from _vllm_common import kernel_class
    finally:
        sys.path.pop(0)
    for k in KERNELS:
        assert k.fn.__name__ in names
        assert classify_kernel(k.fn.__name__, set(names)) == (True, "triton")
        assert kernel_class(k.fn.__name__) == "attention"


@pytest.mark.parametrize("error,strict,falls_back", [
    (RuntimeError("out of resource: shared memory, Required: 300000"), False, True),
    (RuntimeError("out of resource: shared memory, Required: 300000"), True, False),
    (RuntimeError("CUDA error: an illegal memory access was encountered"), False, False)],
    ids=["compile-error", "strict", "device-fault"])
def test_backend_falls_back_when_our_kernel_fails(monkeypatch, error, strict, falls_back):
    """A kernel this device cannot build must not stop vLLM: vLLM's kernel runs instead (logged,
    remembered for these inputs); strict mode raises; a device fault (context lost) raises."""
    pytest.importorskip("vllm", reason="vLLM is not installed")
    from vllm.v1.attention.backends.triton_attn import TritonAttentionImpl

    from tri_inductor import vllm_attention as VA

    calls = []

    def failing(*a, **k):
        calls.append("ours")
        raise error

    monkeypatch.setattr(VA, "paged_attention", failing)
    monkeypatch.setattr(TritonAttentionImpl, "forward", lambda self, *a, **k: calls.append("vllm") or "vllm")
    impl = object.__new__(VA.TriPagedAttentionImpl)
    impl.__dict__.update(_tri_layer_decline=None, _tri_checked={}, _tri_strict=strict, _tri_warmed=set(),
                         _tri_max_tokens=8192, head_size=64, num_kv_heads=2,
                         scale=0.125, sliding_window=None, logits_soft_cap=0.0, sinks=None)
    md = types.SimpleNamespace(use_cascade=False, mm_prefix_range_tensor=None, rswa_prefix_lens=None, causal=True,
                               num_actual_tokens=3, query_start_loc=None, seq_lens=None, block_table=None,
                               max_query_len=3, max_seq_len=3)
    q = torch.zeros(3, 4, 64, dtype=torch.bfloat16)
    kv = torch.zeros(2, 2, 16, 128, dtype=torch.bfloat16)
    if not falls_back:
        with pytest.raises(RuntimeError):
            impl.forward(None, q, q, q, kv, md, torch.zeros_like(q))
        return
    assert impl.forward(None, q, q, q, kv, md, torch.zeros_like(q)) == "vllm"
    assert impl.forward(None, q, q, q, kv, md, torch.zeros_like(q)) == "vllm"
    assert calls == ["ours", "vllm", "vllm"]  # ours tried once for these inputs


# ----------------------------------------------------------------------------- start-time tuning

def _builder(monkeypatch, kv_dtype, calls, fail=None, strict=False):
    """Our metadata builder with vLLM's __init__ replaced by the attributes it sets (no GPU here)."""
    import types

    import tri_inductor.vllm_attention as VA

    def fake_init(self, kv_cache_spec, layer_names, vllm_config, device):
        self.kv_cache_spec, self.vllm_config, self.device = kv_cache_spec, vllm_config, device
        self.num_heads_q, self.num_heads_kv, self.headdim, self.block_size = 32, 8, 128, 16

    def prepare(*args):
        calls.append(args)
        if fail is not None:
            raise fail

    monkeypatch.setattr(VA.TritonAttentionMetadataBuilder, "__init__", fake_init)
    monkeypatch.setattr(VA, "prepare_prefill", prepare)
    monkeypatch.setattr(VA, "_strict_mode", lambda: strict)
    cfg = types.SimpleNamespace(model_config=types.SimpleNamespace(dtype=torch.bfloat16))
    return VA.TriPagedAttentionMetadataBuilder(types.SimpleNamespace(dtype=kv_dtype), ["l0"], cfg,
                                               torch.device("cuda", 0))


def test_builder_tunes_prefill_tiles_at_engine_start(monkeypatch, caplog):
    """vLLM builds the metadata builder before CUDA-graph capture: the shape's prefill tiles are
    tuned there (not at the first request); a quantized cache is not tuned; a tuning failure
    warns and keeps the heuristic, unless strict."""
    calls = []
    _builder(monkeypatch, torch.bfloat16, calls)
    assert calls == [(4, 128, 16, torch.bfloat16)]
    calls.clear()
    _builder(monkeypatch, torch.float8_e4m3fn, calls)
    assert calls == []
    with caplog.at_level("WARNING", logger="tri_inductor.vllm"):
        _builder(monkeypatch, torch.bfloat16, calls, fail=RuntimeError("no shared memory"))
    assert "not tuned at start" in caplog.text and "no shared memory" in caplog.text
    with pytest.raises(RuntimeError, match="no shared memory"):
        _builder(monkeypatch, torch.bfloat16, calls, fail=RuntimeError("no shared memory"), strict=True)


def test_prepare_prefill_without_gpu_uses_stored_or_heuristic_tiles():
    from tri_inductor.patterns.paged_attention import prepare_prefill
    from tri_inductor.patterns.paged_attention import tuning as PT

    PT.forget_choices()
    # nothing stored, no GPU: the heuristic's tiles
    assert prepare_prefill(4, 128, 16, torch.bfloat16) == L.prefill_cfg(4, 128, PT.Q_BUCKETS[-1])
    assert prepare_prefill(4, 128, 16, torch.float32) is None     # a dtype ours declines: nothing to do


# ----------------------------------------------------------------------------- compiled ahead

def _warm_recording(monkeypatch, record):
    """warm_variants on one step's tensors (GQA 28/4, d64), its compiles run one by one and every
    launch given to ``record`` instead: (variants, failures)."""
    from tri_inductor import tuning as generic
    from tri_inductor.patterns.paged_attention import ops

    def sequential(fns):
        for f in fns.values():
            f()
        return {}

    monkeypatch.setattr(ops, "launch", record)
    monkeypatch.setattr(generic, "compile_side_by_side", sequential)
    q, kc, vc, cu, sl, bt = make_inputs([3, 1], [40, 9], 28, 4, 64)
    return ops.warm_variants(q, kc, vc, torch.empty_like(q), cu, sl, bt, 0.125, True, None, 0.0, None, 4096)


def test_warm_up_compiles_every_prefill_config_a_step_can_pick(monkeypatch):
    """warm_variants compiles (here: records) the prefill kernel for every tile config; then steps
    of any query count up to the limit (short chunks, decode rows mixed in, long prefills) launch
    only configs it compiled: no JIT compile while serving."""
    from tri_inductor.patterns.paged_attention import ops

    seen: list[tuple] = []

    def record(kernel, grid, *args, **kwargs):
        if kernel is ops.paged_attn_prefill_kernel:
            seen.append(tuple(sorted((k, v) for k, v in kwargs.items())))

    done, failed = _warm_recording(monkeypatch, record)
    warmed = set(seen)
    assert done == len(warmed) + len(ops.decode_split_variants()) and len(warmed) >= 3 and not failed
    for n in (2, 3, 5, 9, 17, 100, 255, 256, 257, 1000, 4096):
        seen.clear()
        qn, kn, vn, cun, sln, btn = make_inputs([n, 1], [n + 5, 30], 28, 4, 64)
        paged_attention(qn, kn, vn, torch.empty_like(qn), cun, sln, btn, n, n + 5, 0.125)
        assert seen and set(seen) <= warmed, n


def test_impl_compiles_ahead_once_per_signature_and_never_fails_a_step(monkeypatch, caplog):
    """vLLM's impl warms at the first step it can (GPU, not capturing), once per kernel signature
    for all layers; a warm-up error is a warning and the step still runs (strict: raises)."""
    pytest.importorskip("vllm", reason="vLLM is not installed")
    from tri_inductor import vllm_attention as VA

    warms, runs = [], []
    monkeypatch.setattr(VA, "_WARMED", set())
    monkeypatch.setattr(VA, "can_compile_ahead", lambda q: True)
    monkeypatch.setattr(VA, "warm_variants", lambda *a: warms.append(a[-1]) or (5, {}))
    monkeypatch.setattr(VA, "paged_attention", lambda *a, **k: runs.append(1))

    def impl(strict=False):
        i = object.__new__(VA.TriPagedAttentionImpl)
        i.__dict__.update(_tri_layer_decline=None, _tri_checked={}, _tri_strict=strict, _tri_warmed=set(),
                          _tri_max_tokens=2048, head_size=64, num_kv_heads=2, scale=0.125, sliding_window=None,
                          logits_soft_cap=0.0, sinks=None)
        return i

    md = types.SimpleNamespace(use_cascade=False, mm_prefix_range_tensor=None, rswa_prefix_lens=None, causal=True,
                               num_actual_tokens=3, query_start_loc=None, seq_lens=None, block_table=None,
                               max_query_len=3, max_seq_len=3)
    q = torch.zeros(3, 4, 64, dtype=torch.bfloat16)
    kv = torch.zeros(2, 2, 16, 128, dtype=torch.bfloat16)
    layers = [impl(), impl()]
    for _ in range(3):
        for layer in layers:
            layer.forward(None, q, q, q, kv, md, torch.zeros_like(q))
    assert warms == [2048] and len(runs) == 6  # once for both layers, every step ran

    def broken(*a):
        raise RuntimeError("out of resources")

    monkeypatch.setattr(VA, "_WARMED", set())
    monkeypatch.setattr(VA, "warm_variants", broken)
    with caplog.at_level("WARNING", logger="tri_inductor.vllm"):
        impl().forward(None, q, q, q, kv, md, torch.zeros_like(q))
    assert "not compiled ahead" in caplog.text and len(runs) == 7
    monkeypatch.setattr(VA, "_WARMED", set())
    with pytest.raises(RuntimeError, match="out of resources"):
        impl(strict=True).forward(None, q, q, q, kv, md, torch.zeros_like(q))


def test_warm_up_compiles_every_decode_split_variant_a_step_can_launch(monkeypatch):
    """warm_variants also compiles (here: records) the decode and reduce kernels for every split
    pad on the call's own tensors; decode steps of any batch size and context length then launch
    only specialisations it compiled (no JIT compile in a CUDA-graph capture or while serving)."""
    from tri_inductor.patterns.paged_attention import ops

    seen: list[tuple] = []

    def specialisation(kernel, args):  # what Triton keys a launch on (its binder needs a driver)
        out = []
        for p, a in zip(kernel.params, args):
            if p.do_not_specialize:
                out.append("any")
            elif isinstance(a, torch.Tensor):
                out.append((a.dtype, a.data_ptr() % 16 == 0))
            elif isinstance(a, int) and not isinstance(a, bool):
                out.append((a == 1, a % 16 == 0))
            else:
                out.append(type(a).__name__)
        return tuple(out)

    def record(kernel, grid, *args, **kwargs):
        if kernel in (ops.paged_attn_decode_kernel, ops.paged_attn_reduce_kernel):
            seen.append((kernel.fn.__name__, specialisation(kernel, args), tuple(sorted(kwargs.items()))))

    _warm_recording(monkeypatch, record)
    warmed = set(seen)
    assert {name for name, _, _ in warmed} == {"paged_attn_decode_kernel", "paged_attn_reduce_kernel"}
    for seqs, ctx in ((1, 7), (1, 3000), (5, 100), (33, 900), (64, 4000), (200, 50)):
        seen.clear()
        qn, kn, vn, cun, sln, btn = make_inputs([1] * seqs, [ctx] * seqs, 28, 4, 64)
        paged_attention(qn, kn, vn, torch.empty_like(qn), cun, sln, btn, 1, ctx, 0.125)
        assert seen and set(seen) <= warmed, (seqs, ctx)
