"""Which attention backend ``{"backend": "tri_inductor"}`` gives vLLM, as logic that needs no GPU.

Ours (``tri_inductor.vllm_attention.TriPagedAttentionBackend``: vLLM's TRITON_ATTN backend with
the attention call on our kernel) sits in vLLM's ``AttentionBackendEnum.CUSTOM`` slot, registered
in every vLLM process when vLLM imports its backend registry (config processes and workers
resolve the slot by themselves).  It is chosen by default (``TRI_INDUCTOR_ATTENTION=triton_attn``
keeps vLLM's kernel) unless the model uses MLA (vLLM's TRITON_MLA) or this vLLM does not look like
one we built it against
(:func:`unavailable_reason`): then TRITON_ATTN, with the reason logged once.  Nothing here
imports vLLM at module import.
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from types import ModuleType

log = logging.getLogger("tri_inductor.vllm")

SLOT = "CUSTOM"
BACKEND_PATH = "tri_inductor.vllm_attention.TriPagedAttentionBackend"
FALLBACK = "TRITON_ATTN"
IMPL_TARGETS = ("vllm.v1.attention.backends.triton_attn:TritonAttentionImpl.__init__",
                "vllm.v1.attention.backends.triton_attn:TritonAttentionImpl.forward")
# The KV-cache layout our kernels read, logical (blocks, KV heads, block size, K|V packed): vLLM up
# to 0.33 declares it per backend (TRITON_ATTN's get_kv_cache_shape); 0.34 gives every attention
# backend that logical (B, H, N, C) view (kv_cache_interface). One of them must be as recorded.
LAYOUT_TARGETS = ("vllm.v1.attention.backends.triton_attn:TritonAttentionBackend.get_kv_cache_shape",
                  "vllm.v1.kv_cache_interface:compute_layer_kv_cache_shape_bytes")
REGISTRY = "vllm.v1.attention.backends.registry"


def choose_attention(requested: str, uses_mla: bool, unavailable: str | None) -> tuple[str, str]:
    """(``AttentionBackendEnum`` member name, why) for a config that left the backend unset."""
    if uses_mla:
        return "TRITON_MLA", "MLA model: vLLM's Triton MLA kernels"
    if requested == "triton_attn":
        return FALLBACK, "TRI_INDUCTOR_ATTENTION=triton_attn: vLLM's Triton unified attention"
    if unavailable is not None:
        return FALLBACK, f"vLLM's Triton unified attention (our paged attention is off: {unavailable})"
    return SLOT, ("tri_inductor's Triton paged attention (vLLM's TRITON_ATTN metadata, KV-cache write and "
                  "CUDA graphs; its kernel for what ours declines)")


def custom_slot_holder(registry: ModuleType, enum_attr: str, overrides_attr: str) -> str | None:
    """Class path registered in a vLLM registry's CUSTOM slot (None: free).  vLLM keeps one such
    slot per registry: attention backends, MLA prefill backends."""
    enum = getattr(registry, enum_attr, None)
    slot = getattr(enum, SLOT, None) if enum is not None else None
    overrides = getattr(registry, overrides_attr, None)
    if slot is None or not isinstance(overrides, dict):
        return None
    return overrides.get(slot)


def claim_custom_slot(registry: ModuleType, enum_attr: str, overrides_attr: str, register_attr: str,
                      path: str) -> bool:
    """Put ``path`` in the registry's CUSTOM slot unless another package holds it (True: it is ours)."""
    enum = getattr(registry, enum_attr, None)
    register = getattr(registry, register_attr, None)
    if enum is None or register is None or not hasattr(enum, SLOT):
        return False
    owner = custom_slot_holder(registry, enum_attr, overrides_attr)
    if owner is not None:
        return owner == path
    try:
        register(getattr(enum, SLOT), path)
    except Exception as e:  # noqa: BLE001 (another registry API: vLLM's backend stays, logged by the caller)
        log.debug("tri_inductor: could not register %s: %r", path, e)
        return False
    return custom_slot_holder(registry, enum_attr, overrides_attr) == path


def slot_owner(registry: ModuleType) -> str | None:
    """Class path registered in the attention CUSTOM slot (None: free)."""
    return custom_slot_holder(registry, "AttentionBackendEnum", "_ATTN_OVERRIDES")


def register_slot(registry: ModuleType) -> bool:
    """Put our backend in the CUSTOM slot unless another package holds it (True: it is ours)."""
    return claim_custom_slot(registry, "AttentionBackendEnum", "_ATTN_OVERRIDES", "register_backend", BACKEND_PATH)


def unavailable_reason(signature_problem: Callable[[str], str | None]) -> str | None:
    """Why our backend cannot serve in this process's vLLM (None: it can).
    ``signature_problem``: ``hooks.signature_problem`` (passed in: hooks imports the config code)."""
    import importlib

    try:
        registry = importlib.import_module(REGISTRY)
    except Exception as e:  # noqa: BLE001
        return f"no vLLM attention registry ({e!r})"
    if not register_slot(registry):
        owner = slot_owner(registry)
        return (f"vLLM's CUSTOM attention slot holds {owner}" if owner else
                "this vLLM has no AttentionBackendEnum.CUSTOM / register_backend")
    for target in IMPL_TARGETS:
        problem = signature_problem(target)
        if problem is not None:
            return problem
    layout = [signature_problem(t) for t in LAYOUT_TARGETS]
    if all(p is not None for p in layout):
        return "no KV-cache layout we read: " + "; ".join(layout)
    return None


def is_ours(backend_name: str | None, registry: ModuleType | None = None) -> bool:
    """Whether a configured backend name is our backend (CUSTOM registered to us)."""
    if backend_name != SLOT:
        return False
    if registry is None:
        import sys

        registry = sys.modules.get(REGISTRY)
    return registry is not None and slot_owner(registry) == BACKEND_PATH


def selection(environ: Mapping[str, str], uses_mla: bool,
              signature_problem: Callable[[str], str | None]) -> tuple[str, str]:
    """:func:`choose_attention` for this process: the env var, the model, this vLLM."""
    from . import envs

    requested = envs.attention(environ)
    unavailable = None if uses_mla or requested != "ours" else unavailable_reason(signature_problem)
    return choose_attention(requested, uses_mla, unavailable)
