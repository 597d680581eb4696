"""Float64 reference of :func:`..ops.paged_attention` (tests): gathers each sequence's keys
through its block table and runs plain masked softmax attention."""
from __future__ import annotations

from typing import Any

import torch

from .ops import window_keys


def paged_attention_ref(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                        cu_seqlens_q: torch.Tensor, seq_lens: torch.Tensor, block_table: torch.Tensor,
                        scale: float, causal: bool = True, window: Any = None, softcap: float = 0.0,
                        sinks: torch.Tensor | None = None) -> torch.Tensor:
    """``[num_tokens, num_q_heads, head]`` float64 on ``q``'s device (rows of tokens no sequence
    owns: 0)."""
    num_tokens, hq, d = q.shape
    bs, hk = k_cache.shape[1], k_cache.shape[2]
    group = hq // hk
    wkeys = window_keys(window)
    dev = q.device
    out = torch.zeros(num_tokens, hq, d, dtype=torch.float64, device=dev)
    cu = cu_seqlens_q.tolist()
    for s, seq_len in enumerate(seq_lens.tolist()):
        q0, q1 = cu[s], cu[s + 1]
        if q1 == q0:
            continue
        pos = torch.arange(seq_len, device=dev)
        blocks = block_table[s, pos // bs].long()
        k = k_cache[blocks, pos % bs].double().repeat_interleave(group, dim=1)  # [S, hq, d]
        v = v_cache[blocks, pos % bs].double().repeat_interleave(group, dim=1)
        qs = q[q0:q1].double()                                                  # [L, hq, d]
        sc = torch.einsum("lhd,shd->hls", qs, k) * scale
        if softcap:
            sc = softcap * torch.tanh(sc / softcap)
        q_abs = seq_len - (q1 - q0) + torch.arange(q1 - q0, device=dev)
        keep = torch.ones(q1 - q0, seq_len, dtype=torch.bool, device=dev)
        if causal:
            keep &= pos[None, :] <= q_abs[:, None]
        if wkeys:
            keep &= (q_abs[:, None] - pos[None, :]) < wkeys
        sc = sc.masked_fill(~keep[None], float("-inf"))
        if sinks is not None:
            sink = sinks.double()[:, None, None].expand(hq, q1 - q0, 1)
            p = torch.softmax(torch.cat([sc, sink], dim=-1), dim=-1)[..., :-1]
        else:
            p = torch.softmax(sc, dim=-1)
        out[q0:q1] = torch.einsum("hls,shd->lhd", p, v)
    return out
