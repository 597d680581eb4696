"""float64 references of the MoE ops (the tests' ground truth)."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def reference_route(logits, k, scoring="softmax", renormalize=False, num_groups=1, topk_group=1,
                    bias=None, routed_scaling_factor=1.0):
    """(weights float64 [T, k], ids int64 [T, k]); ties: lowest expert index first."""
    x = logits.double()
    s = {"softmax": lambda v: v.softmax(-1), "sigmoid": torch.sigmoid, "none": lambda v: v}[scoring](x)
    sel = s + bias.double() if bias is not None else s.clone()
    T, E = s.shape
    if num_groups > 1:
        g = sel.view(T, num_groups, E // num_groups)
        gs = g.sort(stable=True, dim=-1, descending=True).values
        gscore = gs[..., :2].sum(-1) if bias is not None else gs[..., 0]
        keep_g = gscore.sort(stable=True, dim=-1, descending=True).indices[:, :topk_group]
        mask = torch.zeros(T, num_groups, dtype=torch.bool).scatter_(1, keep_g, True)
        sel = sel.masked_fill(~mask.repeat_interleave(E // num_groups, 1), float("-inf"))
    ids = sel.sort(stable=True, dim=-1, descending=True).indices[:, :k]
    w = s.gather(1, ids)
    if renormalize:
        w = w / w.sum(-1, keepdim=True)
    return w * routed_scaling_factor, ids


def reference_experts(x, w13, w2, topk_weights, topk_ids, activation="silu"):
    """sum_j w[t, j] * w2[e] @ (act(w13[e, :I] @ x_t) * (w13[e, I:] @ x_t)) in float64."""
    x, w13, w2, tw = x.double(), w13.double(), w2.double(), topk_weights.double()
    I = w13.shape[1] // 2
    act = {"silu": F.silu, "gelu": F.gelu, "gelu_tanh": lambda v: F.gelu(v, approximate="tanh")}[activation]
    out = torch.zeros(x.shape, dtype=torch.float64)
    for e in range(w13.shape[0]):
        t, j = (topk_ids == e).nonzero(as_tuple=True)
        if t.numel() == 0:
            continue
        h = x[t] @ w13[e].T
        y = (act(h[:, :I]) * h[:, I:]) @ w2[e].T
        out.index_add_(0, t, y * tw[t, j][:, None])
    return out


def reference_align(topk_ids, num_experts):
    """Tokens per expert and each expert's flat indices (sorted), float64-free: exact."""
    flat = topk_ids.reshape(-1).long()
    counts = torch.bincount(flat, minlength=num_experts)
    runs = [sorted((flat == e).nonzero().flatten().tolist()) for e in range(num_experts)]
    return counts, runs


def reference_grouped_mm(a, b, offs):
    out = torch.zeros(a.shape[0], b.shape[2], dtype=torch.float64)
    start = 0
    for g, end in enumerate(offs.tolist()):
        out[start:end] = a[start:end].double() @ b[g].double()
        start = end
    return out


def reference_sum(y, weights=None):
    y = y.double()
    if weights is not None:
        y = y * weights.double()[..., None]
    return y.sum(1)
