"""Tiny Hugging Face models of any transformers architecture, for the audit and the survey.

``build(arch)`` makes a model of ``arch`` (a transformers model type) from a tiny config with
random weights, with a batch of token ids and a left-padded attention mask (a batched prefill):
what ``benchmarks/hf_survey.py`` audits and the hybrid-model tests compile. One layer, chosen to
exercise what the architecture adds (its MoE layer, its Mamba or short-convolution layer).
"""
from __future__ import annotations

import inspect

import torch

# Architectures with no SDPA path in transformers: eager attention.
EAGER = {"bloom", "mpt", "codegen", "gpt_oss", "mamba", "mamba2", "falcon_mamba", "zamba2"}
TINY = dict(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=1, num_attention_heads=4,
            num_key_value_heads=2, head_dim=16, max_position_embeddings=64, pad_token_id=0)
_MOE = dict(num_experts_per_tok=2, moe_intermediate_size=32)
_MLA = dict(num_key_value_heads=4, q_lora_rank=48, kv_lora_rank=32, qk_nope_head_dim=16, qk_rope_head_dim=8,
            head_dim=8, v_head_dim=16)
# Per architecture, what its layer must be for the model to exercise what it adds: a sparse MoE layer
# (not the dense first layers most MoE configs start with), the Mamba / short-conv layer of a
# hybrid, and config fields a tiny model needs (MLA head sizes, a head count that divides).
_DEEPSEEK = {**_MOE, **_MLA, "n_routed_experts": 16, "n_group": 4, "topk_group": 2, "first_k_dense_replace": 0}
OVERRIDES = {
    "deepseek_v3": _DEEPSEEK,
    "deepseek_v32": _DEEPSEEK,
    "glm_moe_dsa": _DEEPSEEK,
    "minicpm3": _MLA,
    "sarvam_mla": _MLA,
    "youtu": _MLA,
    "glm4_moe": {**_MOE, "n_routed_experts": 8, "first_k_dense_replace": 0},
    "glm4_moe_lite": {**_MOE, "num_key_value_heads": 4, "mlp_layer_types": ["sparse"], "n_routed_experts": 8},
    "dots1": {**_MOE, "n_routed_experts": 8, "first_k_dense_replace": 0, "n_shared_experts": 1},
    "ernie4_5_moe": {"moe_layer_start_index": 0, "moe_num_experts": 8, "moe_k": 2, "moe_intermediate_size": 32},
    "hunyuan_v1_moe": {"num_experts": 8, "moe_topk": 2},
    "exaone_moe": {**_MOE, "mlp_layer_types": ["sparse"], "first_k_dense_replace": 0, "num_experts": 8,
                   "layer_types": ["full_attention"]},
    "afmoe": {**_MOE, "num_dense_layers": 0, "num_experts": 8, "layer_types": ["full_attention"]},
    "sarvam_moe": {**_MOE, "first_k_dense_replace": 0, "n_routed_experts": 8},
    "minicpm5_moe": {**_MOE, "mlp_layer_types": ["sparse"], "n_routed_experts": 8},
    "longcat_flash": {**_MLA, "num_hidden_layers": 2,  # 2 x num_layers: one layer
                      "n_routed_experts": 8, "zero_expert_num": 2, "moe_topk": 2,
                      "expert_ffn_hidden_size": 32, "qk_head_dim": 24},
    "gpt_oss": {"num_local_experts": 8, "num_experts_per_tok": 2, "layer_types": ["full_attention"]},
    "lfm2_moe": {**_MOE, "layer_types": ["conv", "full_attention"], "num_hidden_layers": 2, "num_experts": 8,
                 "num_dense_layers": 0},
    "lfm2": {"layer_types": ["conv", "full_attention"], "num_hidden_layers": 2},
    "mamba2": {"num_heads": 4, "head_dim": 16, "n_groups": 1, "expand": 1, "state_size": 16},
    "zamba2": {"layers_block_type": ["mamba"], "mamba_headdim": 16, "mamba_d_state": 16, "n_mamba_heads": 8},
}



def config(arch: str):
    import transformers as T

    cfg = T.AutoConfig.for_model(arch, **{**TINY, **OVERRIDES.get(arch, {})})
    cfg._attn_implementation = "eager" if arch in EAGER else "sdpa"
    return cfg


class LastHidden(torch.nn.Module):
    """The base model's last hidden state alone (no cache objects through the compiled graph)."""

    def __init__(self, model):
        super().__init__()
        self.m = model
        self.no_cache = {"use_cache": False} if "use_cache" in inspect.signature(model.forward).parameters else {}

    def forward(self, ids, mask):
        return self.m(input_ids=ids, attention_mask=mask, **self.no_cache).last_hidden_state


def prefill_batch(seq: int = 9, vocab: int = TINY["vocab_size"]) -> list[torch.Tensor]:
    """[ids, mask]: 2 sequences of ``seq`` tokens, the second left-padded by 3 (what a batched
    prefill hands attention: causal and padding)."""
    ids = torch.randint(1, vocab, (2, seq))
    mask = torch.ones(2, seq, dtype=torch.long)
    mask[1, :3] = 0
    return [ids, mask]


def build(arch: str, seq: int = 9) -> tuple[torch.nn.Module, list[torch.Tensor]]:
    """(model, [ids, mask]) of ``arch`` from its tiny config (:func:`prefill_batch`)."""
    import transformers as T

    torch.manual_seed(0)
    model = T.AutoModel.from_config(config(arch)).eval()
    return LastHidden(model), prefill_batch(seq)
