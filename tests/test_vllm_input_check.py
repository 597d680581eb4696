"""Prompt token ids outside the vocabulary (tri_inductor/vllm_input_check.py): with backend
``tri_inductor`` vLLM's InputProcessor refuses them with a ValueError (its OpenAI server answers
400) even without a tokenizer, where vLLM 0.26 lets them reach the embedding kernel (one id of
10^9 killed the engine: shared notes/serving.md); with vLLM's own backends nothing changes."""
from __future__ import annotations

import types

import pytest

from tri_inductor import vllm_input_check as C

pytest.importorskip("vllm", reason="vLLM needed for its InputProcessor")

VOCAB = 128


def test_out_of_vocabulary_bounds():
    assert C.out_of_vocabulary([0, 5, VOCAB - 1], VOCAB) is None
    assert C.out_of_vocabulary([0, VOCAB], VOCAB) == VOCAB
    assert C.out_of_vocabulary([3, -1, 10**9], VOCAB) == -1
    assert C.out_of_vocabulary([], VOCAB) is None


def _processor(monkeypatch, backend: str):
    """vLLM's real InputProcessor class, hooked, on an instance without a tokenizer (as under
    ``--skip-tokenizer-init``); the prompt-length check and vLLM 0.34's renderer check stubbed out,
    so what is left is vLLM's own code path for token prompts plus ours."""
    from vllm.v1.engine import input_processor as module

    monkeypatch.setattr(module.InputProcessor, "_validate_prompt_len", lambda self, n, kind: None, raising=False)
    C.hook_input_processor(module)
    assert getattr(module.InputProcessor._validate_model_input, "_tri_inductor", False)
    model_config = types.SimpleNamespace(get_vocab_size=lambda: VOCAB, max_model_len=4096)
    proc = object.__new__(module.InputProcessor)
    proc.vllm_config = types.SimpleNamespace(compilation_config=types.SimpleNamespace(backend=backend),
                                             model_config=model_config)
    proc.model_config = model_config
    proc.renderer = types.SimpleNamespace(tokenizer=None, validate_token_ids=lambda ids, **kw: None)
    return proc


@pytest.mark.parametrize("ids", [[1, 2, VOCAB], [1, 10**9], [-1, 3]])
def test_out_of_range_ids_refused_with_our_backend(monkeypatch, ids):
    proc = _processor(monkeypatch, "tri_inductor")
    with pytest.raises(ValueError, match=f"Token id {[i for i in ids if not 0 <= i < VOCAB][0]} is out of vocabulary"):
        proc._validate_model_input({"type": "token", "prompt_token_ids": ids}, "decoder")
    proc._validate_model_input({"type": "token", "prompt_token_ids": [0, VOCAB - 1]}, "decoder")  # in range: fine


def test_vllm_backends_unchanged(monkeypatch):
    proc = _processor(monkeypatch, "inductor")
    proc._validate_model_input({"type": "token", "prompt_token_ids": [1, 10**9]}, "decoder")  # vLLM's behaviour
