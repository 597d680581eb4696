"""Tensor parallelism on 2 GPUs: a 2-layer Llama-shaped model under vLLM with
``tensor_parallel_size=2`` and ``{"backend": "tri_inductor"}``: every rank compiles and audits its
pieces (its audit summary names the rank; every launch site Triton, the all-reduces listed as
communication), and the greedy tokens equal vLLM's own compile path at the same TP.

Needs >= 2 GPUs and vLLM (on the GPU machine: ``source .gpu-env/setup.sh``).  Each engine runs in
its own process (vLLM's TP workers are processes; the GPUs are free again when it exits).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

pytestmark = pytest.mark.gpu

TP = 2
CONFIG = dict(architectures=["LlamaForCausalLM"], model_type="llama", hidden_size=1024, intermediate_size=3584,
              num_attention_heads=16, num_key_value_heads=8, head_dim=64, num_hidden_layers=2, vocab_size=32000,
              rms_norm_eps=1e-5, rope_theta=500000.0, max_position_embeddings=4096, torch_dtype="bfloat16",
              tie_word_embeddings=False, hidden_act="silu", bos_token_id=1, eos_token_id=2)

ENGINE = textwrap.dedent("""
    import json, sys
    from vllm import LLM, SamplingParams
    folder, backend, out = sys.argv[1:4]
    llm = LLM(model=folder, load_format="dummy", skip_tokenizer_init=True, dtype="bfloat16", seed=0,
              tensor_parallel_size=%d, attention_backend="TRITON_ATTN", gpu_memory_utilization=0.3,
              max_model_len=512, compilation_config={"backend": backend, "custom_ops": ["none"]},
              ir_op_priority={"rms_norm": ["native"], "fused_add_rms_norm": ["native"]})
    prompts = [{"prompt_token_ids": [(7 * i + 3 * j) %% 31000 + 10 for j in range(12 + i)]} for i in range(8)]
    res = llm.generate(prompts, SamplingParams(temperature=0.0, max_tokens=16, ignore_eos=True))
    json.dump([list(r.outputs[0].token_ids) for r in res], open(out, "w"))
""" % TP)


def _skip_reason() -> str | None:
    if not torch.cuda.is_available() or torch.cuda.device_count() < TP:
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        return f"tensor parallelism needs {TP} GPUs, this machine has {n} (run on nvidia-h200-x2)"
    try:
        import vllm  # noqa: F401
    except ImportError:
        return "vLLM is not importable (on the GPU machine: source .gpu-env/setup.sh)"
    return None


def _engine(tmp_path, backend: str) -> tuple[list[list[int]], str]:
    folder = tmp_path / "model"
    folder.mkdir(exist_ok=True)
    (folder / "config.json").write_text(json.dumps(CONFIG))
    out = tmp_path / f"{backend}.json"
    env = dict(os.environ, VLLM_USE_FLASHINFER_SAMPLER="0")
    proc = subprocess.run([sys.executable, "-c", ENGINE, str(folder), backend, str(out)], env=env,
                          capture_output=True, text=True, timeout=1200)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-6000:]
    return json.loads(out.read_text()), log


def test_tp2_every_rank_audited_triton_only_and_greedy_parity(tmp_path):
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    ours, log = _engine(tmp_path, "tri_inductor")
    summaries = [ln for ln in log.splitlines() if "[tri_inductor] audit summary" in ln]
    for rank in range(TP):
        mine = [ln for ln in summaries if f"(tp {rank}/{TP})" in ln]
        assert mine, f"no audit summary from tp rank {rank}:\n" + "\n".join(summaries)
        assert "every kernel launch site is Triton" in mine[-1], mine[-1]
        assert "communication" in mine[-1], mine[-1]  # the row-parallel all-reduces, listed apart
    assert "disable_custom_all_reduce" in log  # our config change, logged once
    base, _ = _engine(tmp_path, "inductor")
    assert ours == base
