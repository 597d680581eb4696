"""The MoE ops (``tri_inductor::moe_*``), each a ``triton_op`` over the kernels of this package:
traced by torch.compile they decompose into their Triton launches, which Inductor inlines."""
from __future__ import annotations

import torch
import triton
from torch.library import triton_op

from .._launch import launch
from ..attention import _hint
from .align import int_histc_kernel, moe_count_kernel, moe_fill_kernel, moe_offsets_kernel, moe_scatter_kernel
from .experts import grouped_mm_kernel, index_add_rows_kernel, moe_gemm_kernel, moe_sum_kernel
from .routing import MAX_EXPERTS, SCORING, moe_route_kernel
from .tuning import MoeCfg, config_for

ACTIVATIONS = {"silu": 0, "gelu": 1, "gelu_tanh": 2}


# ---------------------------------------------------------------------------------------------
# Routing
def _route(logits: torch.Tensor, k: int, scoring: str, renormalize: bool, num_groups: int,
           topk_group: int, bias: torch.Tensor | None, scale: float, ids_dtype: torch.dtype,
           w_dtype: torch.dtype, out: tuple[torch.Tensor, torch.Tensor] | None = None,
           token_expert_indices: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Route ``logits`` [T, E]; ``out``: (weights, ids) [T, k] contiguous buffers to write
    (vLLM's in-place ops), else new ones of ``w_dtype`` / ``ids_dtype``."""
    torch._check(logits.dim() == 2, lambda: f"moe routing: logits must be [tokens, experts], got {logits.dim()}-D")
    E = int(logits.shape[1])
    torch._check(scoring in SCORING, lambda: f"moe routing: scoring={scoring!r}; use one of {list(SCORING)}")
    torch._check(0 < k <= E and E <= MAX_EXPERTS, lambda: f"moe routing: k={k} of {E} experts (at most {MAX_EXPERTS})")
    torch._check(num_groups >= 1 and E % num_groups == 0 and 1 <= topk_group <= num_groups,
                 lambda: f"moe routing: {E} experts in {num_groups} groups, topk_group={topk_group}")
    torch._check(num_groups == 1 or k <= topk_group * (E // num_groups),
                 lambda: f"moe routing: k={k} exceeds the experts of {topk_group} groups")
    if logits.stride(-1) != 1:
        logits = logits.contiguous()
    T = logits.shape[0]
    if out is None:
        out = (torch.empty((T, k), dtype=w_dtype, device=logits.device),
               torch.empty((T, k), dtype=ids_dtype, device=logits.device))
    w, ids = out
    block_e = max(16, triton.next_power_of_2(E))
    launch(moe_route_kernel, (T,), logits, bias if bias is not None else logits, w, ids,
           token_expert_indices if token_expert_indices is not None else ids, T, E, logits.stride(0),
           float(scale), K=k, SCORING=SCORING[scoring], RENORM=renormalize, N_GROUP=num_groups,
           TOPK_GROUP=topk_group, HAS_BIAS=bias is not None, BLOCK_E=block_e,
           BLOCK_G=max(2, triton.next_power_of_2(num_groups)), BLOCK_K=max(2, triton.next_power_of_2(k)),
           HAS_TEI=token_expert_indices is not None, num_warps=4 if block_e >= 512 else 1)
    return w, ids


@triton_op("tri_inductor::moe_topk", mutates_args={})
def moe_topk(logits: torch.Tensor, k: int, scoring: str = "softmax", renormalize: bool = False,
             num_groups: int = 1, topk_group: int = 1, bias: torch.Tensor | None = None,
             routed_scaling_factor: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """(weights fp32 [T, k], expert ids int32 [T, k]) of a router's logits [T, E]."""
    return _route(logits, k, scoring, renormalize, num_groups, topk_group, bias, routed_scaling_factor,
                  torch.int32, torch.float32)


@triton_op("tri_inductor::topk_of_scores", mutates_args={})
def topk_of_scores(logits: torch.Tensor, k: int, scoring: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``torch.topk(score(logits), k)`` exactly (values in fp32 when the scores are, int64
    indices, descending) over the last dim: what the Hugging Face routers write, for the graph
    rewrite (a grouped router's top-k is of a [tokens, groups, experts per group] view)."""
    lead = logits.shape[:-1]
    w, ids = _route(logits.reshape(-1, logits.shape[-1]), k, scoring, False, 1, 1, None, 1.0, torch.int64,
                    torch.float32 if scoring != "none" else logits.dtype)
    return w.view(*lead, k), ids.view(*lead, k)


# ---------------------------------------------------------------------------------------------
# Alignment
def fill(t: torch.Tensor, value: int) -> None:
    """t[:] = value (t contiguous) with our Triton kernel."""
    n = t.numel()
    launch(moe_fill_kernel, (triton.cdiv(n, 1024),), t, value, n, BLOCK=1024)


def max_padded(numel, num_experts: int, block_m: int):
    return numel + num_experts * (block_m - 1)


def align(topk_ids: torch.Tensor, num_experts: int, block_m: int, sorted_ids: torch.Tensor | None = None,
          expert_ids: torch.Tensor | None = None, n_post_pad: torch.Tensor | None = None
          ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(sorted_ids, expert_ids, n_post_pad, counts); see align.py.  Output buffers may be given
    (vLLM's moe_align_block_size writes into the caller's)."""
    dev = topk_ids.device
    ids = topk_ids.reshape(-1)
    numel = ids.shape[0]
    size = max_padded(numel, num_experts, block_m)
    if sorted_ids is None:
        sorted_ids = torch.empty((size,), dtype=torch.int32, device=dev)
    if expert_ids is None:
        expert_ids = torch.empty((triton.cdiv(size, block_m),), dtype=torch.int32, device=dev)
    if n_post_pad is None:
        n_post_pad = torch.empty((1,), dtype=torch.int32, device=dev)
    n_blocks = expert_ids.shape[0]
    fill(sorted_ids, numel)
    counts = torch.empty((num_experts,), dtype=torch.int32, device=dev)
    fill(counts, 0)
    offsets = torch.empty((num_experts + 1,), dtype=torch.int32, device=dev)
    cursor = torch.empty((num_experts,), dtype=torch.int32, device=dev)
    block = 256
    launch(moe_count_kernel, (triton.cdiv(numel, block),), ids, counts, numel, num_experts, BLOCK=block)
    launch(moe_offsets_kernel, (1,), counts, offsets, cursor, expert_ids, n_post_pad, num_experts, n_blocks,
           BLOCK_M=block_m, BLOCK_E=max(16, triton.next_power_of_2(num_experts)), BLOCK_B=32, num_warps=4)
    launch(moe_scatter_kernel, (triton.cdiv(numel, block),), ids, cursor, sorted_ids, numel, num_experts,
           BLOCK=block)
    return sorted_ids, expert_ids, n_post_pad, counts


@triton_op("tri_inductor::moe_align", mutates_args={})
def moe_align(topk_ids: torch.Tensor, num_experts: int, block_m: int
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    return align(topk_ids, num_experts, block_m)


@triton_op("tri_inductor::sort_expert_ids", mutates_args={})
def sort_expert_ids(ids: torch.Tensor, num_experts: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``torch.sort(ids.reshape(-1))`` for expert ids in [0, num_experts): a counting sort (the
    alignment with blocks of one row), so any length stays Triton (Inductor's sort falls back to
    ATen above 512 elements).  Equal ids come in no fixed order, as torch.sort(stable=False)."""
    flat = ids.reshape(-1)
    perm = align(flat, num_experts, 1)[0].to(torch.int64)
    return flat[perm], perm


@triton_op("tri_inductor::int_histc", mutates_args={})
def int_histc(x: torch.Tensor, bins: int, lo: int, hi: int, out_dtype: torch.dtype) -> torch.Tensor:
    """``torch.histc(x.to(out_dtype), bins, lo, hi)`` for an integer tensor x (expert ids): the
    tokens-per-expert count of the Hugging Face grouped-mm experts."""
    torch._check(not x.is_floating_point() and hi > lo and bins >= 1,
                 lambda: f"int_histc: integer input and hi > lo (got {x.dtype}, [{lo}, {hi}])")
    flat = x.reshape(-1)
    counts = torch.zeros((bins,), dtype=torch.int32, device=x.device)
    block = 256
    launch(int_histc_kernel, (triton.cdiv(flat.shape[0], block),), flat, counts, flat.shape[0], lo, hi,
           BINS=bins, BLOCK=block)
    return counts.to(out_dtype)


# ---------------------------------------------------------------------------------------------
# Expert GEMMs
def gemm_config(tokens, top_k: int, num_experts: int, n: int, k: int, elem: int) -> dict[str, int]:
    """Static tile choice by expected rows per group, for ``grouped_mm`` (the HF ``_grouped_mm``
    form; the fused-MoE experts take theirs from ``tuning.py``)."""
    per_expert = max(1, _hint(tokens) * top_k // max(1, num_experts))
    if per_expert <= 16:
        bm, bn, bk, warps, stages = 16, 64, 128, 4, 4
    elif per_expert <= 64:
        bm, bn, bk, warps, stages = 32, 64, 64, 4, 4
    else:
        bm, bn, bk, warps, stages = 64, 128, 64, 8, 3
    bk = min(bk, max(16, triton.next_power_of_2(k)))
    bn = min(bn, max(16, triton.next_power_of_2(n)))
    if elem >= 4:
        bk, stages = min(bk, 32), min(stages, 3)
    return dict(BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, num_warps=warps, num_stages=stages)


def grouped_gemm(a, w, out, sorted_ids, expert_ids, n_post_pad, numel: int, a_div: int, n: int,
                 cfg: dict[str, int], gated: bool, act: int = 0, routing_w: torch.Tensor | None = None) -> None:
    """out[idx] = act-and-mul or plain (a[idx // a_div] @ w[e].T) for the aligned rows."""
    K = a.shape[1]
    grid = (expert_ids.shape[0] * triton.cdiv(n, cfg["BLOCK_N"]),)
    launch(moe_gemm_kernel, grid, a, w, out, sorted_ids, expert_ids, n_post_pad,
           routing_w if routing_w is not None else out, n, K, numel, a_div,
           a.stride(0), a.stride(1), w.stride(0), w.stride(1), w.stride(2), out.stride(0), out.stride(1),
           GATED=gated, ACT=act, MUL_W=routing_w is not None, EVEN_K=isinstance(K, int) and K % cfg["BLOCK_K"] == 0,
           **cfg)


def moe_sum_into(y: torch.Tensor, w: torch.Tensor | None, out: torch.Tensor) -> None:
    """out[t] = sum_j (w[t, j] *) y[t, j]; y [T, k, H] with unit last stride."""
    T, k, H = y.shape
    block = min(1024, max(16, triton.next_power_of_2(H)))
    launch(moe_sum_kernel, (T, triton.cdiv(H, block)), y, w if w is not None else y, out, H,
           y.stride(0), y.stride(1), out.stride(0), TOPK=k, HAS_W=w is not None, BLOCK_H=block,
           num_warps=4)


def experts(x: torch.Tensor, w13: torch.Tensor, w2: torch.Tensor, topk_weights: torch.Tensor,
            topk_ids: torch.Tensor, activation: str = "silu", apply_weights: bool = True,
            cfg: MoeCfg | None = None) -> torch.Tensor:
    """``cfg``: the tile config of both GEMMs (default: stored/tuned for this shape, ``tuning.py``)."""
    torch._check(activation in ACTIVATIONS, lambda: f"moe experts: activation={activation!r}; use one of {list(ACTIVATIONS)}")
    torch._check(x.dim() == 2 and w13.dim() == 3 and w2.dim() == 3,
                 lambda: "moe experts: x [T, H], w13 [E, 2I, H], w2 [E, H, I]")
    T, H = x.shape
    E, I2, _ = w13.shape
    I = I2 // 2
    k = topk_ids.shape[1]
    if x.stride(-1) != 1:
        x = x.contiguous()
    if cfg is None:
        def run(x, w13, w2, w, ids, c):
            return experts(x, w13, w2, w, ids, activation, apply_weights, c)

        cfg = config_for(_hint(T), int(k), int(I), int(H), int(E), x.dtype, run)
    cfg1 = cfg.kwargs(I, H, True, x.element_size())
    cfg2 = cfg.kwargs(H, I, False, x.element_size())  # one BLOCK_M: one alignment for both GEMMs
    sorted_ids, expert_ids, npp, _ = align(topk_ids, int(E), cfg1["BLOCK_M"])
    numel = T * k
    inter = torch.empty((numel, I), dtype=x.dtype, device=x.device)
    grouped_gemm(x, w13, inter, sorted_ids, expert_ids, npp, numel, k, I, cfg1, True, ACTIVATIONS[activation])
    y = torch.empty((T, k, H), dtype=x.dtype, device=x.device)
    grouped_gemm(inter, w2, y.view(numel, H), sorted_ids, expert_ids, npp, numel, 1, H, cfg2, False)
    out = torch.empty((T, H), dtype=x.dtype, device=x.device)
    moe_sum_into(y, topk_weights if apply_weights else None, out)
    return out


@triton_op("tri_inductor::moe_experts", mutates_args={})
def moe_experts(x: torch.Tensor, w13: torch.Tensor, w2: torch.Tensor, topk_weights: torch.Tensor,
                topk_ids: torch.Tensor, activation: str = "silu") -> torch.Tensor:
    """sum_j w[t, j] * down_e(act(gate_e(x_t)) * up_e(x_t)), e = ids[t, j]: the routed experts
    of a MoE layer (w13 [E, 2I, H] = [gate; up], w2 [E, H, I]), x [T, H]."""
    return experts(x, w13, w2, topk_weights, topk_ids, activation)


@triton_op("tri_inductor::moe_sum", mutates_args={})
def moe_sum(y: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """sum over dim 1 of y [T, k, H], each slice scaled by weights [T, k] when given (fp32 sums)."""
    if y.stride(-1) != 1:
        y = y.contiguous()
    out = torch.empty((y.shape[0], y.shape[2]), dtype=y.dtype, device=y.device)
    moe_sum_into(y, weights, out)
    return out


@triton_op("tri_inductor::index_add_rows", mutates_args={})
def index_add_rows(x: torch.Tensor, index: torch.Tensor, src: torch.Tensor, alpha: float = 1.0) -> torch.Tensor:
    """``x.index_add(0, index, src, alpha=alpha)`` with the sums in fp32 and one rounding at the
    end (Inductor leaves a bf16 ``index_add`` to ATen, whose bf16 atomics round at every add)."""
    torch._check(index.dim() == 1 and src.shape[0] == index.shape[0] and src.shape[1:] == x.shape[1:],
                 lambda: f"index_add_rows: x {tuple(x.shape)}, index {tuple(index.shape)}, src {tuple(src.shape)}")
    N = x.shape[0]
    acc = x.reshape(N, -1).to(torch.float32, copy=True)
    H = acc.shape[1]
    src2 = src.reshape(src.shape[0], H)  # (no -1: an empty index leaves nothing to infer it from)
    if src2.stride(-1) != 1:
        src2 = src2.contiguous()
    block = min(1024, max(16, triton.next_power_of_2(H)))
    launch(index_add_rows_kernel, (index.shape[0], triton.cdiv(H, block)), acc, index, src2, N, H,
           acc.stride(0), src2.stride(0), float(alpha), BLOCK_H=block, num_warps=4)
    return acc.to(x.dtype).view(x.shape)


@triton_op("tri_inductor::grouped_mm", mutates_args={})
def grouped_mm(a: torch.Tensor, b: torch.Tensor, offs: torch.Tensor,
               out_dtype: torch.dtype | None = None) -> torch.Tensor:
    """``torch._grouped_mm(a [M, K], b [G, K, N], offs)``: rows offs[g-1]:offs[g] of a times b[g]."""
    torch._check(a.dim() == 2 and b.dim() == 3 and offs.dim() == 1,
                 lambda: "grouped_mm: a [M, K], b [G, K, N], offs [G] only")
    M, K = a.shape
    G, _, N = b.shape
    out = torch.empty((M, N), dtype=out_dtype or a.dtype, device=a.device)
    cfg = gemm_config(M, 1, int(G), N, K, a.element_size())
    bm, bn = cfg["BLOCK_M"], cfg["BLOCK_N"]
    launch(grouped_mm_kernel, (triton.cdiv(M, bm) + G, triton.cdiv(N, bn)), a, b, out, offs, G, N, K,
           a.stride(0), a.stride(1), b.stride(0), b.stride(1), b.stride(2), out.stride(0), out.stride(1),
           BLOCK_G=max(16, triton.next_power_of_2(int(G))), **cfg)
    return out
