"""Public entry point: :func:`paged_attention` (vLLM ``unified_attention``'s argument meanings)
and :func:`decline_reason` (what it does not take; the vLLM backend then runs vLLM's kernel)."""
from __future__ import annotations

from typing import Any

import torch

from .. import _pdl
from .._launch import compiled_kernel, launch, plain_gpu_call
from ..occupancy import compiled_programs_per_sm
from .decode import paged_attn_decode_kernel, paged_attn_reduce_kernel
from .launch import (DEFAULT_PROGRAMS_PER_SM, MAX_SPLITS, MIN_TILES_PER_SPLIT, SPLIT_POLICIES, DecodeCfg,
                     PrefillCfg, decode_cfg, head_pad, splits_pad)
from .prefill import paged_attn_prefill_kernel
from .tuning import prefill_config

DTYPES = (torch.bfloat16, torch.float16)
MAX_HEAD = 256


def window_keys(window: Any) -> int:
    """Keys a query sees under a sliding window (0: no window).  ``window`` is None, the layer's
    ``sliding_window`` (an int: keys with ``q - k < window``), or unified_attention's
    ``window_size`` pair ``(left, right)`` (``left = sliding_window - 1``; -1: none)."""
    if window is None:
        return 0
    if isinstance(window, (tuple, list)):
        left = int(window[0])
        return left + 1 if left >= 0 else 0
    return max(0, int(window))


def decline_reason(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, out: torch.Tensor,
                   causal: Any = True, window: Any = None, sinks: torch.Tensor | None = None,
                   block_size: int | None = None) -> str | None:
    """None when :func:`paged_attention` takes these inputs, else why not (one line)."""
    if q.dtype not in DTYPES:
        return f"query dtype {q.dtype} (ours: bf16/fp16)"
    if k_cache.dtype != q.dtype or v_cache.dtype != q.dtype:
        return f"KV cache dtype {k_cache.dtype} differs from the query's {q.dtype} (quantized cache)"
    if out.dtype != q.dtype:
        return f"output dtype {out.dtype} differs from the query's (fused output quantization)"
    if q.dim() != 3 or k_cache.dim() != 4 or v_cache.dim() != 4:
        return "shapes are not q [tokens, heads, dim] and a 4-d paged cache"
    head = q.shape[2]
    if head > MAX_HEAD or k_cache.shape[3] != head or v_cache.shape[3] != head:
        return f"head dim {head} (ours: <= {MAX_HEAD}, same for q, k and v)"
    if q.shape[1] % k_cache.shape[2]:
        return f"{q.shape[1]} query heads over {k_cache.shape[2]} KV heads"
    if q.stride(2) != 1 or out.stride(2) != 1:
        return "query/output head dim not contiguous"
    if isinstance(causal, torch.Tensor):
        return "per-sequence causal flags"
    if not causal and window_keys(window):
        return "sliding window without causal masking"
    if isinstance(window, (tuple, list)) and len(window) > 1 and int(window[1]) > 0:
        return f"window {tuple(window)} looks ahead of the query"
    if sinks is not None and (sinks.dim() != 1 or sinks.shape[0] != q.shape[1]):
        return "sinks not one per query head"
    if block_size is not None and block_size < 1:
        return f"block size {block_size}"
    return None


# Resident decode programs per SM, per (device, kernel specialisation other than the split count):
# read once from the compiled kernel (occupancy.py), so the split count fills one wave on any GPU.
_PER_SM: dict[tuple, int] = {}


def _decode_programs_per_sm(q: torch.Tensor, cfg: DecodeCfg, consts: dict, build: Any) -> int:
    """``build(cfg) -> (grid, args, kwargs, parts)``: called (and the kernel compiled) only the
    first time a specialisation is met; every later call is a dict lookup."""
    if not q.is_cuda or not plain_gpu_call((q,)):
        return DEFAULT_PROGRAMS_PER_SM  # traced or CPU: no compiled kernel to ask
    index = q.device.index if q.device.index is not None else torch.cuda.current_device()
    key = (index, q.dtype, *sorted(consts.items()), cfg.block_g, cfg.tile_n, cfg.num_warps, cfg.num_stages)
    hit = _PER_SM.get(key)
    if hit is None:
        per_sm = None
        try:
            grid, args, kwargs, _ = build(cfg)
            compiled = compiled_kernel(paged_attn_decode_kernel, grid, *args, **kwargs)
            per_sm = compiled_programs_per_sm(compiled, index) if compiled is not None else None
        except Exception:  # noqa: BLE001  (the real launch reports a kernel that cannot compile)
            per_sm = None
        hit = _PER_SM[key] = per_sm or DEFAULT_PROGRAMS_PER_SM
    return hit


_ALIGN = 32  # elements (128 bytes): each partial starts where the kernel's 16-byte alignment holds


def _partials(num_seqs: int, num_q_heads: int, splits_pad: int, hp: int,
              device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The split decode's fp32 partials (acc ``[seqs, q heads, splits, hp]``, running max and sum
    ``[seqs, q heads, splits]``), contiguous views of one allocation: one allocator call a step
    instead of three (host time in the steps vLLM runs outside CUDA graphs)."""
    def up(n: int) -> int:
        return -(-n // _ALIGN) * _ALIGN

    n_m = num_seqs * num_q_heads * splits_pad
    n_o = n_m * hp
    buf = torch.empty(up(n_o) + 2 * up(n_m), dtype=torch.float32, device=device)
    part_o = buf[:n_o].view(num_seqs, num_q_heads, splits_pad, hp)
    part_m = buf[up(n_o):up(n_o) + n_m].view(num_seqs, num_q_heads, splits_pad)
    part_l = buf[up(n_o) + up(n_m):up(n_o) + up(n_m) + n_m].view(num_seqs, num_q_heads, splits_pad)
    return part_o, part_m, part_l


def paged_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, out: torch.Tensor,
                    cu_seqlens_q: torch.Tensor, seq_lens: torch.Tensor, block_table: torch.Tensor,
                    max_seqlen_q: int, max_seqlen_k: int, scale: float, causal: bool = True,
                    window: Any = None, softcap: float = 0.0, sinks: torch.Tensor | None = None,
                    *, num_splits: int | None = None, prefill: PrefillCfg | None = None,
                    check: bool = True, split_policy: str | None = None) -> torch.Tensor:
    """Paged attention over vLLM's KV cache, written into ``out`` (returned).

    q ``[num_tokens, num_q_heads, head]``; ``k_cache``/``v_cache`` ``[num_blocks, block_size,
    num_kv_heads, head]`` (any strides: vLLM's views of its packed TRITON_ATTN cache);
    ``cu_seqlens_q`` int32 ``[num_seqs + 1]``; ``seq_lens`` int32 ``[num_seqs]`` keys per
    sequence, cached prefix plus this step's queries (vLLM's ``seqused_k``); ``block_table``
    int32 ``[num_seqs, max_blocks]`` (entries past a sequence's last block are never read);
    ``max_seqlen_q``/``max_seqlen_k`` host ints (``max_seqlen_q == 1``: the split-KV decode
    path); ``window`` see :func:`window_keys`; ``softcap`` 0 = off; ``sinks`` ``[num_q_heads]``
    logits of a value-less extra key per head.  ``num_splits`` forces the decode split count
    (tests, benchmarks); None sizes it from the device (``launch.decode_cfg``).  ``prefill``
    forces the prefill tiles (the tuner, tests); None: stored/tuned per shape
    (``tuning.prefill_config``), else the heuristic (``launch.prefill_cfg``).  ``check=False``
    skips :func:`decline_reason` (a caller that has run it for these inputs' kind: vLLM's backend,
    every layer every step).  ``split_policy``: the decode split policy (``launch.SPLIT_POLICIES``;
    None: ``TRI_INDUCTOR_DECODE_SPLITS``, default ``wave``).
    """
    if check:
        why = decline_reason(q, k_cache, v_cache, out, causal, window, sinks)
        if why is not None:
            raise ValueError(f"paged_attention does not take these inputs: {why}")
    num_tokens, num_q_heads, head = q.shape
    block_size, num_kv_heads = k_cache.shape[1], k_cache.shape[2]
    num_seqs = seq_lens.shape[0]
    group = num_q_heads // num_kv_heads
    wkeys = window_keys(window)
    use_softcap = bool(softcap) and softcap > 0
    pdl = _pdl.pdl_enabled(q.device)
    if num_tokens == 0 or num_seqs == 0:
        return out
    kv_strides = (*k_cache.stride(), *v_cache.stride())
    common = (float(scale), float(softcap) if use_softcap else 1.0)
    sinks_arg = sinks if sinks is not None else q  # never read without USE_SINKS

    if max_seqlen_q <= 1 and causal:
        if split_policy is None:
            from ... import envs

            split_policy = envs.decode_splits()
        if split_policy not in SPLIT_POLICIES:
            raise ValueError(f"split_policy {split_policy!r}; use one of {SPLIT_POLICIES}")
        balanced = split_policy == "balanced"
        hp = head_pad(head)
        consts = dict(NUM_Q_HEADS=num_q_heads, GROUP=group, HEAD=head, HEAD_PAD=hp, BLOCK_SIZE=block_size,
                      WINDOW=wkeys, USE_SOFTCAP=use_softcap, USE_SINKS=sinks is not None,
                      MIN_TILES=MIN_TILES_PER_SPLIT, BALANCED=balanced, USE_PDL=pdl)

        def decode_launch(cfg):
            split = cfg.num_splits > 1
            if split:
                part_o, part_m, part_l = _partials(num_seqs, num_q_heads, cfg.splits_pad, hp, q.device)
            else:
                part_o = part_m = part_l = out  # never touched without SPLIT
            args = (out, part_o, part_m, part_l, q, k_cache, v_cache, sinks_arg, block_table, seq_lens, cu_seqlens_q,
                    *common, cfg.num_splits, cfg.wave, q.stride(0), q.stride(1), out.stride(0), out.stride(1),
                    block_table.stride(0), *kv_strides)
            kwargs = dict(consts, BLOCK_G=cfg.block_g, TILE_N=cfg.tile_n, SPLIT=split, SPLITS_PAD=cfg.splits_pad,
                          num_warps=cfg.num_warps, num_stages=cfg.num_stages)
            return (num_seqs, num_kv_heads, cfg.num_splits), args, kwargs, (part_o, part_m, part_l)

        cfg = decode_cfg(num_seqs, num_q_heads, num_kv_heads, head, max_seqlen_k, q.device, num_splits,
                         balanced=balanced)
        if num_splits is None:
            per_sm = _decode_programs_per_sm(q, cfg, consts, decode_launch)
            if per_sm != DEFAULT_PROGRAMS_PER_SM:
                cfg = decode_cfg(num_seqs, num_q_heads, num_kv_heads, head, max_seqlen_k, q.device, None, per_sm,
                                 balanced)
        grid, args, kwargs, parts = decode_launch(cfg)
        launch(paged_attn_decode_kernel, grid, *args, **kwargs)
        if cfg.num_splits > 1:
            launch(paged_attn_reduce_kernel, (num_seqs, num_q_heads),
                   out, *parts, sinks_arg, seq_lens, cu_seqlens_q, cfg.num_splits, cfg.wave,
                   out.stride(0), out.stride(1),
                   NUM_Q_HEADS=num_q_heads, NUM_KV_HEADS=num_kv_heads, HEAD=head, HEAD_PAD=hp,
                   SPLITS_PAD=cfg.splits_pad, WINDOW=wkeys, TILE_N=cfg.tile_n, MIN_TILES=MIN_TILES_PER_SPLIT,
                   BALANCED=balanced, USE_SINKS=sinks is not None, USE_PDL=pdl, num_warps=4)
        return out

    cfg = prefill
    if cfg is None:
        eager_gpu = q.is_cuda and type(q) is torch.Tensor  # not traced: the tuner may run it
        cfg = prefill_config(group, head, block_size, q.dtype, bool(causal), max_seqlen_q,
                             _tuning_run if eager_gpu else None)
    grid = (num_tokens // cfg.block_q + num_seqs, num_kv_heads)
    launch(paged_attn_prefill_kernel, grid,
           out, q, k_cache, v_cache, sinks_arg, block_table, seq_lens, cu_seqlens_q,
           *common, num_seqs, q.stride(0), q.stride(1), out.stride(0), out.stride(1),
           block_table.stride(0), *kv_strides,
           GROUP=group, BLOCK_M=cfg.block_m, BLOCK_Q=cfg.block_q, HEAD=head, HEAD_PAD=head_pad(head),
           BLOCK_SIZE=block_size, TILE_N=cfg.tile_n, WINDOW=wkeys, CAUSAL=bool(causal),
           USE_SOFTCAP=use_softcap, USE_SINKS=sinks is not None, USE_PDL=pdl, **cfg.launch_options())
    return out


def prefill_variants(group: int, head: int, block_size: int, dtype: torch.dtype, causal: bool, max_tokens: int,
                     run: Any = None) -> list[PrefillCfg]:
    """Every prefill tile config a step of up to ``max_tokens`` queries can pick (each bucket's
    stored or tuned config fitted to the step, or the heuristic's): what :func:`warm_variants`
    compiles.  A causal step of one query is a decode step."""
    out: list[PrefillCfg] = []
    for n in range(2 if causal else 1, max(2, max_tokens) + 1):
        cfg = prefill_config(group, head, block_size, dtype, causal, n, run)
        if cfg not in out:
            out.append(cfg)
    return out


def decode_split_variants() -> tuple[int, ...]:
    """A split count for each decode kernel specialisation a step can launch: 1 (no split) and
    one count per split pad up to ``MAX_SPLITS`` (the count itself is not specialised, its pad is)."""
    return (1, *sorted({splits_pad(n) for n in range(2, MAX_SPLITS + 1)}))


def warm_variants(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, out: torch.Tensor,
                  cu_seqlens_q: torch.Tensor, seq_lens: torch.Tensor, block_table: torch.Tensor, scale: float,
                  causal: bool, window: Any, softcap: float, sinks: torch.Tensor | None,
                  max_tokens: int) -> tuple[int, dict]:
    """Compile, without launching, the prefill kernel for every tile config a step of up to
    ``max_tokens`` queries can pick and (causal) the decode and reduce kernels for every split
    pad, on a real call's tensors (the same argument specialisation as the steps to come), side
    by side: no request of a new length, and no CUDA-graph capture of a new batch size, then
    waits for a Triton JIT compile (~1 s each; on the H200 the decode variants compiled one by
    one in the capture, ~4-5 s).  Returns (variants compiled, failures)."""
    from ... import tuning as generic

    group, head = q.shape[1] // k_cache.shape[2], q.shape[2]
    cfgs = prefill_variants(group, head, k_cache.shape[1], q.dtype, bool(causal), max_tokens, _tuning_run)
    calls: dict[Any, Any] = {
        c: (lambda c=c: paged_attention(q, k_cache, v_cache, out, cu_seqlens_q, seq_lens, block_table, 2, 2,
                                        scale, causal, window, softcap, sinks, prefill=c, check=False))
        for c in cfgs}
    if causal:  # one sequence's row: the decode kernel's tensors as a decode step has them
        for splits in decode_split_variants():
            calls[("decode", splits)] = (
                lambda splits=splits: paged_attention(q[:1], k_cache, v_cache, out[:1], cu_seqlens_q[:2],
                                                      seq_lens[:1], block_table[:1], 1, 2, scale, True, window,
                                                      softcap, sinks, num_splits=splits, check=False))
    failed = generic.compile_side_by_side(calls)
    return len(calls) - len(failed), failed


def prepare_prefill(group: int, head: int, block_size: int, dtype: torch.dtype) -> PrefillCfg | None:
    """Tune (on a GPU with tuning on; else look up) the causal prefill tiles of one attention
    shape for every query bucket now, at engine start (vLLM's metadata builder), so no request
    waits for it. Returns the tiles a long prefill of this shape will use (stored, just tuned or
    the heuristic's); None for inputs ours declines."""
    from .tuning import Q_BUCKETS

    if dtype not in DTYPES or head > MAX_HEAD:
        return None
    return prefill_config(group, head, block_size, dtype, True, Q_BUCKETS[-1],
                          _tuning_run if torch.cuda.is_available() else None)


def compile_prefill_ahead(group: int, head: int, block_size: int, dtype: torch.dtype) -> bool:
    """Queue the causal prefill tuning candidates of one attention shape on the compile-ahead
    thread (``tri_inductor.compile_ahead``); False where that is off or ours declines the shape."""
    from ... import compile_ahead
    from .tuning import ahead_jobs, ahead_key

    if dtype not in DTYPES or head > MAX_HEAD:
        return False
    return compile_ahead.submit(ahead_key(group, head, block_size, dtype),
                                lambda: ahead_jobs(group, head, block_size, dtype, _tuning_run),
                                label=f"paged attention prefill G={group} D={head} block {block_size} "
                                      f"{str(dtype).replace('torch.', '')}")


def _tuning_run(q, k_cache, v_cache, out, cu_seqlens_q, seq_lens, block_table, max_seqlen_q, max_seqlen_k, causal,
                cfg: PrefillCfg) -> torch.Tensor:
    """One prefill with the given tiles (the tuner's measurement)."""
    return paged_attention(q, k_cache, v_cache, out, cu_seqlens_q, seq_lens, block_table, max_seqlen_q, max_seqlen_k,
                           q.shape[-1] ** -0.5, causal=causal, prefill=cfg, check=False)
