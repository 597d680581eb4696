"""MLA KV-cache layout kernels (``tri_inductor.patterns.mla.layout``): each in Triton's
interpreter against a plain-torch reference (exact equality: they only move data), and each
compiled for sm_90 without a GPU.

Every buffer a kernel writes into is first filled with random values: an entry it should leave
alone (other cache slots, padding tokens, workspace rows past ``num_tokens``, the neighbours of
a strided view) must come out unchanged.
"""
from __future__ import annotations

import pytest
import torch

from tri_inductor.patterns.mla import layout

BF16 = torch.bfloat16


# ----------------------------------------------------------------------------- references
def ref_concat_and_cache(kv_c, k_pe, kv_cache, slot_mapping):
    k_pe = k_pe.reshape(k_pe.shape[0], -1)
    L = kv_c.shape[1]
    bs = kv_cache.shape[1]
    for t, slot in enumerate(slot_mapping.tolist()):  # vLLM: slot_mapping.size(0) tokens
        if slot < 0:
            continue
        kv_cache[slot // bs, slot % bs, :L] = kv_c[t]
        kv_cache[slot // bs, slot % bs, L:] = k_pe[t]


def ref_gather_cache(src_cache, dst, block_table, cu_seq_lens, token_to_seq, num_tokens, seq_starts=None):
    bs = src_cache.shape[1]
    cu = cu_seq_lens.tolist()
    for i in range(int(num_tokens)):
        s = int(token_to_seq[i])
        if i >= cu[s + 1]:
            continue
        pos = i - cu[s] + (int(seq_starts[s]) if seq_starts is not None else 0)
        dst[i] = src_cache[int(block_table[s, pos // bs]), pos % bs]


def _rand(shape, dtype=BF16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g).to(dtype)


def _launches(monkeypatch):
    """Record the kernels layout.py launches (and still launch them)."""
    seen = []
    real = layout.launch

    def rec(kernel, grid, *args, **kwargs):
        seen.append(kernel)
        real(kernel, grid, *args, **kwargs)

    monkeypatch.setattr(layout, "launch", rec)
    return seen


# ----------------------------------------------------------------------------- concat_and_cache
def _scattered_slots(n_tokens, num_blocks, bs, seed, pad_every=3):
    """Slots in scattered, shuffled blocks (not 0, 1, 2...), every ``pad_every``-th one -1."""
    g = torch.Generator().manual_seed(seed)
    blocks = torch.randperm(num_blocks, generator=g)[: (n_tokens + bs - 1) // bs + 1]
    slots = torch.stack([blocks[t % len(blocks)] * bs + (t * 5) % bs for t in range(n_tokens)])
    slots[::pad_every] = -1
    return slots.to(torch.int64)


@pytest.mark.parametrize("L,R", [(40, 8), (512, 64)], ids=["small", "deepseek"])
@pytest.mark.parametrize("bs", [16, 64])
@pytest.mark.parametrize("slot_dtype", [torch.int64, torch.int32])
def test_concat_and_cache(interpreter, L, R, bs, slot_dtype):
    T, num_blocks = (21, 6) if L < 100 else (5, 4)
    slots = _scattered_slots(T, num_blocks, bs, seed=L + bs).to(slot_dtype)
    # strided kv_c / k_pe: views of one [T + 3, L + R + 5] tensor (rows past T: CUDA-graph padding)
    big = _rand((T + 3, L + R + 5), seed=1)
    kv_c, k_pe = big[:, :L], big[:, L:L + R]
    cache = _rand((num_blocks, bs, L + R), seed=2)
    want = cache.clone()
    ref_concat_and_cache(kv_c, k_pe, want, slots)
    layout.concat_and_cache(kv_c, k_pe, cache, slots)
    assert torch.equal(cache, want)
    assert not torch.equal(cache, _rand((num_blocks, bs, L + R), seed=2))  # something was written


def test_concat_and_cache_k_pe_3d_fp16_and_strided_cache(interpreter):
    """k_pe [T, 1, R] as the MLA layer has it, fp16, and a cache that is a view with a block
    stride of its own (vLLM's cross-layer layout: [num_blocks, layers, block_size, L + R])."""
    L, R, bs, T = 40, 8, 16, 9
    kv_c = _rand((T, L), torch.float16, seed=3)
    k_pe = _rand((T, 1, R), torch.float16, seed=4)
    layers = _rand((5, 3, bs, L + R), torch.float16, seed=5)
    before = layers.clone()
    cache = layers[:, 1]
    slots = torch.tensor([17, -1, 3, 79, 64, -1, 40, 0, 15])
    ref_concat_and_cache(kv_c, k_pe, before[:, 1], slots)
    layout.concat_and_cache(kv_c, k_pe, cache, slots)
    assert torch.equal(layers, before)  # layers 0 and 2 untouched


def test_concat_and_cache_no_tokens_no_launch(interpreter, monkeypatch):
    seen = _launches(monkeypatch)
    cache = _rand((2, 16, 48))
    layout.concat_and_cache(_rand((4, 40)), _rand((4, 8)), cache, torch.empty(0, dtype=torch.int64))
    assert seen == []


@pytest.mark.parametrize("case", ["width", "dtype", "short", "slot_dtype", "k_pe_heads"])
def test_concat_and_cache_rejects(case):
    kv_c, k_pe, cache, slots = _rand((4, 40)), _rand((4, 8)), _rand((2, 16, 48)), torch.arange(4)
    if case == "width":
        cache = _rand((2, 16, 50))
    elif case == "dtype":
        k_pe = k_pe.float()
    elif case == "short":
        slots = torch.arange(5)
    elif case == "slot_dtype":
        slots = slots.float()
    else:
        k_pe = _rand((4, 2, 8))
    with pytest.raises(ValueError):
        layout.concat_and_cache(kv_c, k_pe, cache, slots)


# ----------------------------------------------------------------------------- gather_cache
def _gather_inputs(seq_lens, starts, bs, D, num_blocks, seed, tts_pad=4):
    """What vLLM's build_mla_chunked_context_metadata gives the gather: int32 cu_seq_lens and
    token_to_seq (padded with zeros past the chunk's tokens), int32 block table whose unused
    entries point at unrelated blocks (the gather must not follow them)."""
    g = torch.Generator().manual_seed(seed)
    n_seq = len(seq_lens)
    ends = [(st or 0) + n for st, n in zip(starts or [0] * n_seq, seq_lens)]
    width = max((e + bs - 1) // bs for e in ends) + 1
    table = torch.randint(0, num_blocks, (n_seq, width), generator=g, dtype=torch.int32)
    perm = torch.randperm(num_blocks, generator=g).to(torch.int32)
    used = 0
    for s, e in enumerate(ends):
        k = (e + bs - 1) // bs
        table[s, :k] = perm[used:used + k]
        used += k
    lens = torch.tensor(seq_lens, dtype=torch.int32)
    cu = torch.zeros(n_seq + 1, dtype=torch.int32)
    cu[1:] = torch.cumsum(lens, 0)
    tts = torch.zeros(int(cu[-1]) + tts_pad, dtype=torch.int32)
    tts[: int(cu[-1])] = torch.repeat_interleave(torch.arange(n_seq, dtype=torch.int32), lens)
    cache = _rand((num_blocks, bs, D), seed=seed + 1)
    st = torch.tensor(starts, dtype=torch.int32) if starts is not None else None
    return cache, table, cu, tts, st


@pytest.mark.parametrize("D", [48, 576])
@pytest.mark.parametrize("starts", [None, [16, 0, 32, 7]], ids=["no-starts", "starts"])
def test_gather_cache(interpreter, D, starts):
    bs = 16
    seq_lens = [5, 0, 19, 3]
    cache, table, cu, tts, st = _gather_inputs(seq_lens, starts, bs, D, num_blocks=12, seed=D)
    total = int(cu[-1])
    dst = _rand((total + 6, D), seed=9)  # the workspace: rows past num_tokens stay as they are
    want = dst.clone()
    ref_gather_cache(cache, want, table, cu, tts, total, st)
    layout.gather_cache(cache, dst, table, cu, tts, torch.tensor(total, dtype=torch.int32), st)  # 0-d, as vLLM
    assert torch.equal(dst, want)
    assert torch.equal(dst[total:], _rand((total + 6, D), seed=9)[total:])


def test_gather_cache_partial_and_past_sequence_end(interpreter):
    """num_tokens below the chunk's total, then past it: token_to_seq's zero padding maps those
    rows to sequence 0, where i >= cu_seq_lens[1]: vLLM skips them."""
    bs, D = 16, 48
    cache, table, cu, tts, st = _gather_inputs([7, 4, 9], [3, 0, 16], bs, D, num_blocks=8, seed=3)
    total = int(cu[-1])
    for n in (10, total + 4):
        dst = _rand((total + 8, D), seed=n)
        want = dst.clone()
        ref_gather_cache(cache, want, table, cu, tts, n, st)
        layout.gather_cache(cache, dst, table, cu, tts, n, st)
        assert torch.equal(dst, want), n


def test_gather_cache_strided_views(interpreter):
    """A cross-layer cache view, a block table slice (row stride > width), a strided dst."""
    bs, D = 16, 48
    cache, table, cu, tts, st = _gather_inputs([6, 11], [0, 5], bs, D, num_blocks=6, seed=5)
    layers = _rand((6, 2, bs, D), seed=6)
    layers[:, 1] = cache
    wide_table = torch.full((2, table.shape[1] + 3), 5, dtype=torch.int32)
    wide_table[:, : table.shape[1]] = table
    total = int(cu[-1])
    big = _rand((total + 2, D + 10), seed=7)
    want = big.clone()
    ref_gather_cache(cache, want[:, 2:D + 2], table, cu, tts, total, st)
    layout.gather_cache(layers[:, 1], big[:, 2:D + 2], wide_table[:, : table.shape[1]], cu, tts, total, st)
    assert torch.equal(big, want)


def test_gather_cache_no_tokens_no_launch(interpreter, monkeypatch):
    seen = _launches(monkeypatch)
    cache, table, cu, tts, _ = _gather_inputs([3], None, 16, 48, 2, seed=1)
    layout.gather_cache(cache, _rand((4, 48)), table, cu, tts, 0)
    assert seen == []


@pytest.mark.parametrize("case", ["width", "dtype", "too_many", "table_dtype"])
def test_gather_cache_rejects(case):
    cache, table, cu, tts, _ = _gather_inputs([3, 2], None, 16, 48, 2, seed=1)
    dst, n = _rand((5, 48)), 5
    if case == "width":
        dst = _rand((5, 40))
    elif case == "dtype":
        dst = dst.float()
    elif case == "too_many":
        n = 6
    else:
        table = table.float()
    with pytest.raises(ValueError):
        layout.gather_cache(cache, dst, table, cu, tts, n)


# ----------------------------------------------------------------------------- copy_ / fill_
def test_copy_q_pe_into_qbuf_tail(interpreter):
    """q_pe [B, N, R] (itself a strided view) into qbuf[..., L:] of a [B, N, L + R] buffer."""
    B, N, L, R = 3, 5, 32, 8
    qbuf = _rand((B, N, L + R), seed=1)
    want = qbuf.clone()
    q = _rand((B, N, 40 + R), seed=2)
    q_pe = q[..., 40:]
    want[..., L:] = q_pe
    layout.copy_(qbuf[..., L:], q_pe)
    assert torch.equal(qbuf, want)


def test_copy_transposed_and_column_strided(interpreter):
    src = _rand((6, 7, 9), seed=3).transpose(0, 1)  # [7, 6, 9], outer dims swapped
    dst = _rand((7, 6, 9), seed=4)
    layout.copy_(dst, src)
    assert torch.equal(dst, src)
    big = _rand((5, 20), seed=5)
    want = big.clone()
    s2 = _rand((10, 5), seed=6).t()
    want[:, ::2] = s2
    layout.copy_(big[:, ::2], s2)  # every other column, from a transposed source
    assert torch.equal(big, want)


@pytest.mark.parametrize("src_dtype,dst_dtype", [(BF16, torch.float32), (torch.float16, torch.float32),
                                                 (torch.float32, BF16), (torch.int32, torch.int64)])
def test_copy_converts_dtype(interpreter, src_dtype, dst_dtype):
    # float32 -> bf16 from bf16-exact values: the interpreter truncates, the GPU rounds; here both agree
    src = (_rand((4, 6, 10), BF16, seed=7) * 8).to(src_dtype)
    big = torch.zeros((4, 6, 12), dtype=dst_dtype)
    big[..., 10:] = 3
    layout.copy_(big[..., :10], src)
    assert torch.equal(big[..., :10], src.to(dst_dtype))
    assert (big[..., 10:] == 3).all()


def test_copy_collapses_contiguous_4d(interpreter):
    src = _rand((2, 3, 4, 5), seed=8)
    dst = torch.empty_like(src)
    layout.copy_(dst, src)
    assert torch.equal(dst, src)


@pytest.mark.parametrize("case", ["shape", "rank"])
def test_copy_rejects(case):
    if case == "shape":
        dst, src = _rand((3, 4)), _rand((4, 3))
    else:  # four dims that merge with nothing
        dst = _rand((3, 4, 5, 6)).permute(3, 1, 0, 2)
        src = _rand((6, 4, 3, 5))
    with pytest.raises(ValueError):
        layout.copy_(dst, src)


def test_fill_contiguous_uses_moe_fill_kernel(interpreter, monkeypatch):
    from tri_inductor.patterns.moe.align import moe_fill_kernel

    seen = _launches(monkeypatch)
    out = _rand((7, 3, 5), seed=1)
    layout.fill_(out[:4], 0)  # output[:n]: a contiguous row slice
    assert (out[:4] == 0).all() and torch.equal(out[4:], _rand((7, 3, 5), seed=1)[4:])
    ids = torch.full((9,), 5, dtype=torch.int32)
    layout.fill_(ids, -1)
    assert (ids == -1).all()
    assert seen == [moe_fill_kernel, moe_fill_kernel]


def test_fill_strided_views(interpreter, monkeypatch):
    seen = _launches(monkeypatch)
    big = _rand((6, 50), seed=2)
    want = big.clone()
    out = big[:, :40]  # rows of 40 in rows of 50
    want[:4, :40] = float("-inf")
    layout.fill_(out[:4], float("-inf"))
    assert torch.equal(big, want)
    t = _rand((4, 5, 6), seed=3).transpose(1, 2)[:, 1:]
    ref = t.clone().fill_(1.5)
    layout.fill_(t, 1.5)
    assert torch.equal(t, ref)
    assert seen == [layout.strided_copy_kernel] * 2


def test_fill_and_copy_zero_size_no_launch(interpreter, monkeypatch):
    seen = _launches(monkeypatch)
    layout.fill_(torch.empty(0, 4), 1.0)
    layout.copy_(torch.empty(3, 0), torch.empty(3, 0))
    assert seen == []


# ----------------------------------------------------------------------------- sm_90 codegen
def _sm90(kernel, consts, types, num_warps=4, num_stages=3):
    import triton
    from triton.backends.compiler import GPUTarget

    sig = {n: "constexpr" if n in consts else types.get(n, "*bf16" if n.endswith("_ptr") else "i32")
           for n in kernel.arg_names}
    out = triton.compile(triton.compiler.ASTSource(kernel, sig, consts), target=GPUTarget("cuda", 90, 32),
                         options=dict(num_warps=num_warps, num_stages=num_stages))
    assert out.asm.get("cubin")
    return out


@pytest.mark.parametrize("L,R", [(512, 64), (40, 8)])
def test_concat_and_cache_compiles_for_sm90(L, R):
    block_d = min(layout.CACHE_BLOCK_D, 1 << (L + R - 1).bit_length())
    _sm90(layout.mla_concat_and_cache_kernel,
          dict(L=L, R=R, BLOCK_T=layout.CACHE_BLOCK_T, BLOCK_D=block_d),
          {"slot_ptr": "*i64", "s_cache_b": "i64"})


@pytest.mark.parametrize("has_starts", [True, False])
def test_gather_cache_compiles_for_sm90(has_starts):
    i32p = {n: "*i32" for n in ("block_table_ptr", "cu_ptr", "tts_ptr", "starts_ptr")}
    _sm90(layout.mla_gather_cache_kernel,
          dict(D=576, HAS_STARTS=has_starts, BLOCK_T=layout.CACHE_BLOCK_T, BLOCK_D=layout.CACHE_BLOCK_D),
          {**i32p, "s_src_b": "i64"})


@pytest.mark.parametrize("fill,block_b,block_c", [(False, 32, 64), (False, 8, 256), (True, 2048, 1)])
def test_copy_fill_compile_for_sm90(fill, block_b, block_c):
    _sm90(layout.strided_copy_kernel, dict(FILL=fill, BLOCK_B=block_b, BLOCK_C=block_c),
          {"dst_ptr": "*bf16", "src_ptr": "*fp32" if not fill else "*bf16", "value": "fp32"})
    if fill:
        from tri_inductor.patterns.moe.align import moe_fill_kernel

        _sm90(moe_fill_kernel, dict(BLOCK=layout.FILL_BLOCK), {"ptr": "*bf16", "value": "fp32"})
