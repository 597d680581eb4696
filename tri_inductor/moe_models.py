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


def deepseek_v2(seq: int = 13, batch: int = 1, layers: int = 2, experts: int = 8, top_k: int = 2):
    """DeepSeek-V2(-Lite) in miniature: multi-head latent attention (q LoRA, split nope/rope head,
    RoPE written with complex numbers), dense first layer when there are two or more, then routed
    experts (greedy top-k of softmax scores, DeepSeek-V2-Lite's router) plus a shared expert."""
    from transformers import DeepseekV2Config

    cfg = DeepseekV2Config(vocab_size=128, hidden_size=64, intermediate_size=96, moe_intermediate_size=32,
                           num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=4, q_lora_rank=48,
                           kv_lora_rank=32, qk_nope_head_dim=16, qk_rope_head_dim=8, v_head_dim=16,
                           n_routed_experts=experts, n_shared_experts=1, num_experts_per_tok=top_k,
                           first_k_dense_replace=min(1, layers - 1), n_group=1, topk_group=1, topk_method="greedy",
                           norm_topk_prob=False, routed_scaling_factor=1.0, max_position_embeddings=256)
    return _build(cfg, seq, batch)


def deepseek_v3(seq: int = 13, batch: int = 1, layers: int = 2, experts: int = 16, top_k: int = 4,
                groups: int = 4, topk_group: int = 2):
    """DeepSeek-V3 in miniature: MLA as DeepSeek-V2, and its router: sigmoid scores plus a
    correction bias, experts in groups, the best ``topk_group`` groups (by the sum of each
    group's top two) kept, then the top-k of what is left; weights renormalised and scaled."""
    from transformers import DeepseekV3Config

    cfg = DeepseekV3Config(vocab_size=128, hidden_size=64, intermediate_size=96, moe_intermediate_size=32,
                           num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=4, q_lora_rank=48,
                           kv_lora_rank=32, qk_nope_head_dim=16, qk_rope_head_dim=8, head_dim=8, v_head_dim=16,
                           n_routed_experts=experts, n_shared_experts=1, num_experts_per_tok=top_k,
                           first_k_dense_replace=min(1, layers - 1), n_group=groups, topk_group=topk_group,
                           norm_topk_prob=True, routed_scaling_factor=2.5, max_position_embeddings=256)
    model, inputs = _build(cfg, seq, batch)
    # a trained router's correction bias is not zero: one that changes which experts are picked
    for m in model.modules():
        if hasattr(m, "e_score_correction_bias"):
            m.e_score_correction_bias.copy_(torch.randn(experts) * 0.1)
    return model, inputs
