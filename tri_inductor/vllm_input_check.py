"""Prompt token ids outside the vocabulary get a 400, not a dead engine (backend ``tri_inductor``).

vLLM 0.26 checks prompt token ids against the vocabulary only when it has a tokenizer
(``InputProcessor._validate_model_input``). Served with ``--skip-tokenizer-init``, a prompt holding
id 10^9 reached the embedding lookup of the compiled graph, whose Triton kernel hit its device-side
bounds assert: the CUDA context was lost, every request in flight failed and the server exited
(H200, shared notes/serving.md). vLLM 0.34 checks ids without a tokenizer too
(``renderer.validate_token_ids``); the check here is the same bound (``[0, vocab_size)``) and adds
nothing there but a second look.

The wrapper runs vLLM's own validation first and checks the ids only when the config's backend is
``tri_inductor``; vLLM's own backends see vLLM's behaviour unchanged. The error is vLLM's own kind
(``ValueError``, which its OpenAI server answers with HTTP 400). Hook declared in ``hooks.TABLE``.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

from . import hooks
from .vllm_config import is_ours


def out_of_vocabulary(token_ids: Any, vocab_size: int) -> int | None:
    """The first id outside ``[0, vocab_size)``, or None (ids that are not ints: vLLM's concern)."""
    try:  # every request, every id: the bounds in C first (a 1.5k-id prompt: ~60 -> ~10 us)
        if 0 <= min(token_ids) and max(token_ids) < vocab_size:
            return None
    except (TypeError, ValueError):  # empty, or ids that do not compare: one by one below
        pass
    for t in token_ids:
        if isinstance(t, int) and not 0 <= t < vocab_size:
            return t
    return None


def validate_model_input(real: Callable[..., Any]) -> Callable[..., Any]:
    def _validate_model_input(*args: Any, **kwargs: Any) -> Any:
        out = real(*args, **kwargs)
        a = hooks.arguments(real, *args, **kwargs)
        self, prompt = a["self"], a["prompt_input"]
        vllm_config = getattr(self, "vllm_config", None)
        if vllm_config is None or not is_ours(vllm_config) or not isinstance(prompt, dict):
            return out
        ids = prompt.get("prompt_token_ids") if prompt.get("type") != "embeds" else None
        if ids:
            vocab = vllm_config.model_config.get_vocab_size()
            bad = out_of_vocabulary(ids, vocab)
            if bad is not None:
                raise ValueError(f"Token id {bad} is out of vocabulary (the model's vocab_size is {vocab})")
        return out

    return _validate_model_input


def hook_input_processor(module: Any) -> None:
    hooks.wrap_once(module.InputProcessor, "_validate_model_input", validate_model_input)


# module vLLM imports -> the hook to apply then (vllm_plugin.register, hooks.when_imported)
HOOKS: dict[str, Callable[[Any], None]] = {"vllm.v1.engine.input_processor": hook_input_processor}
