"""A Llama-style decoder block, and the demo: compile it with tri_inductor and print the audit.

    python -m tri_inductor.demo            # GPU if there is one, else codegen-only for a fake sm_90
    graph-audit tri_inductor.demo:llama_block

The block is plain PyTorch (RMSNorm, fused QKV and gate/up projections, rotary embedding in the
Hugging Face form, causal grouped-query SDPA, SiLU-and-mul, residuals), so it shows what any
model looks like to the backend.
"""
from __future__ import annotations

import argparse
import sys

import torch
import torch.nn.functional as F
from torch import nn


class RMSNorm(nn.Module):
    def __init__(self, hidden: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(1.0 + 0.1 * torch.randn(hidden))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * h.to(x.dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x[..., : x.shape[-1] // 2], x[..., x.shape[-1] // 2:]
    return torch.cat((-x2, x1), dim=-1)


class LlamaBlock(nn.Module):
    def __init__(self, hidden: int = 256, heads: int = 4, kv_heads: int = 2, intermediate: int = 512,
                 qkv_bias: bool = False, eps: float = 1e-6, theta: float = 10000.0):
        super().__init__()
        self.heads, self.kv_heads, self.head_dim = heads, kv_heads, hidden // heads
        self.input_norm = RMSNorm(hidden, eps)
        self.qkv = nn.Linear(hidden, (heads + 2 * kv_heads) * self.head_dim, bias=qkv_bias)
        self.o_proj = nn.Linear(heads * self.head_dim, hidden, bias=False)
        self.post_norm = RMSNorm(hidden, eps)
        self.gate_up = nn.Linear(hidden, 2 * intermediate, bias=False)
        self.down = nn.Linear(intermediate, hidden, bias=False)
        inv_freq = 1.0 / theta ** (torch.arange(0, self.head_dim, 2, dtype=torch.float32) / self.head_dim)
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def rope(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        freqs = positions[..., None].float() * self.inv_freq.float()
        emb = torch.cat((freqs, freqs), dim=-1)
        return emb.cos().to(dtype), emb.sin().to(dtype)

    def forward(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        b, s, _ = x.shape
        h = self.input_norm(x)
        q, k, v = self.qkv(h).split([self.heads * self.head_dim, self.kv_heads * self.head_dim,
                                     self.kv_heads * self.head_dim], dim=-1)
        q = q.view(b, s, self.heads, self.head_dim).transpose(1, 2)
        k = k.view(b, s, self.kv_heads, self.head_dim).transpose(1, 2)
        v = v.view(b, s, self.kv_heads, self.head_dim).transpose(1, 2)
        cos, sin = self.rope(positions, x.dtype)
        cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        attn = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
        x = x + self.o_proj(attn.transpose(1, 2).reshape(b, s, -1))
        gate, up = self.gate_up(self.post_norm(x)).chunk(2, dim=-1)
        return x + self.down(F.silu(gate) * up)


def llama_block(batch: int = 2, seq: int = 16, hidden: int = 256, qkv_bias: bool = False,
                seed: int = 0) -> tuple[nn.Module, tuple[torch.Tensor, torch.Tensor]]:
    """``(module, example_inputs)`` on CPU in float32 (the ``graph-audit MODULE:CALLABLE`` form)."""
    torch.manual_seed(seed)
    block = LlamaBlock(hidden=hidden, heads=hidden // 64, kv_heads=max(1, hidden // 128), intermediate=2 * hidden,
                       qkv_bias=qkv_bias).eval()
    x = torch.randn(batch, seq, hidden)
    positions = torch.arange(seq).expand(batch, seq)
    return block, (x, positions)


def llama_block_with_bias():
    """The Qwen2 form: bias on the QKV projection (an addmm in the graph)."""
    return llama_block(qkv_bias=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Compile a Llama-style block with tri_inductor and print the audit")
    p.add_argument("--backend", default="tri_inductor", choices=["tri_inductor", "inductor"])
    p.add_argument("--dtype", default="bf16", choices=["bf16", "fp16", "fp32"])
    args = p.parse_args(argv)
    from .audit import format_reports
    from .audit.model import audit_model

    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[args.dtype]
    block, inputs = llama_block()
    where = "GPU" if torch.cuda.is_available() else "no GPU: codegen-only for a fake sm_90 (Triton code + cubins, nothing run)"
    print(f"tri_inductor demo: Llama-style block, {args.dtype}, backend={args.backend}, {where}", flush=True)
    reports, out = audit_model(block, inputs, backend=args.backend, dtype=dtype)
    print(format_reports(reports))
    return 0 if all(r.ok for r in reports) else 1


if __name__ == "__main__":
    sys.exit(main())
