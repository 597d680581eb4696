"""vLLM's MoE CUDA ops in plain torch, for **baseline** engines and benchmarks only.

``.gpu-env`` has no vLLM CUDA extension (its ops raise), so vLLM's own MoE path cannot run there:
its router (``topk_softmax`` / ``topk_sigmoid``), token alignment (``moe_align_block_size``), the
activation between the expert GEMMs (``_C.silu_and_mul``) and the reduction (``moe_sum``) are CUDA
ops.  :func:`install` puts these torch versions in their place (the expert GEMMs stay vLLM's Triton
``fused_moe`` kernel), so a baseline engine runs vLLM's MoE layer with torch glue; every table
built on it says so.  Never installed in a tri_inductor engine: ours must need none of them.
Semantics as vLLM 0.26's CUDA ops (in-place into the caller's buffers, no host sync).
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator

import torch
import torch.nn.functional as F

NOTE = ("vLLM's MoE CUDA ops (topk_softmax/topk_sigmoid routing, moe_align_block_size, the SiLU-and-mul "
        "between the expert GEMMs, moe_sum) replaced by plain torch equivalents in the baseline engine only "
        "(no vLLM CUDA extension here); its expert GEMMs are vLLM's Triton fused_moe kernel")


def torch_topk(scoring: str):
    def fn(topk_weights, topk_ids, token_expert_indices, gating_output, renormalize=False,
           e_score_correction_bias=None, routed_scaling_factor=1.0):
        x = gating_output.float()
        s = x.softmax(-1) if scoring == "softmax" else torch.sigmoid(x)
        sel = s + e_score_correction_bias.float() if e_score_correction_bias is not None else s
        k = topk_ids.shape[1]
        ids = sel.topk(k, dim=-1).indices
        w = s.gather(1, ids)
        if renormalize:
            w = w / w.sum(-1, keepdim=True)
        topk_weights.copy_(w * routed_scaling_factor)
        topk_ids.copy_(ids)
        T = ids.shape[0]
        token_expert_indices.copy_(torch.arange(k, device=ids.device)[None, :] * T
                                   + torch.arange(T, device=ids.device)[:, None])
    return fn


def torch_align(topk_ids, num_experts, block_size, sorted_token_ids, experts_ids, num_tokens_post_pad,
                expert_map=None):
    """vLLM's moe_align_block_size in plain torch, writing the caller's buffers (no host sync)."""
    flat = topk_ids.reshape(-1).long()
    numel = flat.numel()
    counts = torch.zeros(num_experts, dtype=torch.long, device=flat.device).scatter_add_(0, flat, torch.ones_like(flat))
    padded = (counts + block_size - 1) // block_size * block_size
    ends = padded.cumsum(0)
    order = torch.sort(flat, stable=True).indices
    e_sorted = flat[order]
    rank = torch.arange(numel, device=flat.device) - (counts.cumsum(0) - counts)[e_sorted]
    sorted_token_ids.fill_(numel)
    sorted_token_ids[(ends - padded)[e_sorted] + rank] = order.to(torch.int32)
    starts = torch.arange(experts_ids.numel(), device=flat.device) * block_size
    e_of = torch.searchsorted(ends, starts, right=True)
    experts_ids.copy_(torch.where(starts < ends[-1], e_of, -1).to(torch.int32))
    num_tokens_post_pad.copy_(ends[-1:].to(torch.int32))


def torch_act(activation, output, input, **_):  # noqa: A002  (vLLM's names)
    d = output.shape[-1]
    name = str(getattr(activation, "name", activation)).lower()
    if "gelu" in name:
        gate = F.gelu(input[:, :d], approximate="tanh" if "tanh" in name else "none")
    else:
        gate = F.silu(input[:, :d])
    output.copy_(gate * input[:, d:])
    return output


def torch_moe_sum(input, output, topk_ids=None, expert_map=None):  # noqa: A002
    torch.sum(input, dim=1, out=output)


def _targets() -> list[tuple[Any, str, Any]]:
    import vllm._custom_ops as ops
    import vllm.model_executor.layers.fused_moe.fused_moe as fm

    out = [(ops, "topk_softmax", torch_topk("softmax")), (ops, "topk_sigmoid", torch_topk("sigmoid")),
           (ops, "moe_align_block_size", torch_align), (ops, "moe_sum", torch_moe_sum),
           (fm, "apply_moe_activation", torch_act)]
    try:
        import vllm.model_executor.layers.fused_moe.modular_kernel as mk
    except ImportError:
        return out
    return out + [(mk, "apply_moe_activation", torch_act)]


def install() -> list[str]:
    """Replace vLLM's MoE CUDA ops with the torch versions in this process (a baseline engine's
    worker, before the engine is built); returns the names replaced."""
    done = []
    for module, name, fn in _targets():
        if hasattr(module, name):
            setattr(module, name, fn)
            done.append(f"{module.__name__}.{name}")
    return done


@contextmanager
def installed(names: tuple[str, ...] = ("moe_align_block_size", "moe_sum", "apply_moe_activation")) -> Iterator[None]:
    """:func:`install` for a block only, restoring vLLM's ops after (kernel benchmarks); ``names``:
    which of them (moe_kernels.py routes with torch itself)."""
    chosen = [(m, n, fn) for m, n, fn in _targets() if n in names and hasattr(m, n)]
    saved = [(m, n, getattr(m, n)) for m, n, _ in chosen]
    for m, n, fn in chosen:
        setattr(m, n, fn)
    try:
        yield
    finally:
        for m, n, old in saved:
            setattr(m, n, old)
