"""Tiny Hugging Face MoE models for the audit (``graph-audit tri_inductor.moe_models:mixtral``).

Built from small configs with random weights (CPU, float32, as ``graph-audit MODULE:CALLABLE``
expects); the whole causal LM, so the routers, experts, attention and norms are all compiled.
"""
from __future__ import annotations

import torch


def _build(config, seq: int, batch: int):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, torch_dtype=torch.float32).eval()
    model.config.use_cache = False
    ids = torch.randint(0, config.vocab_size, (batch, seq))
    return _LogitsOnly(model), [ids]


class _LogitsOnly(torch.nn.Module):
    """The model's logits alone (no cache objects to return through the compiled graph)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids):
        return self.model(input_ids=input_ids, use_cache=False).logits


def mixtral(seq: int = 13, batch: int = 1, layers: int = 2, experts: int = 8, top_k: int = 2):
    from transformers import MixtralConfig

    cfg = MixtralConfig(vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=layers,
                        num_attention_heads=4, num_key_value_heads=2, head_dim=16, num_local_experts=experts,
                        num_experts_per_tok=top_k, max_position_embeddings=256)
    return _build(cfg, seq, batch)


def qwen3_moe(seq: int = 13, batch: int = 1, layers: int = 2, experts: int = 8, top_k: int = 2,
              norm_topk_prob: bool = True):
    from transformers import Qwen3MoeConfig

    cfg = Qwen3MoeConfig(vocab_size=128, hidden_size=64, intermediate_size=128, moe_intermediate_size=32,
                         num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                         num_experts=experts, num_experts_per_tok=top_k, norm_topk_prob=norm_topk_prob,
                         decoder_sparse_step=1, mlp_only_layers=[], max_position_embeddings=256)
    return _build(cfg, seq, batch)
