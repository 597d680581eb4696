"""User-facing options of the tri_inductor backend.

Given as ``torch.compile(model, backend="tri_inductor", options={...})`` or, under vLLM, as
``compilation_config={"backend": "tri_inductor", "inductor_compile_config": {"tri_inductor": {...}}}``.
Keys that are not ours are passed through to Inductor as config overrides.
"""
from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from typing import Any, Literal

# Applied in this order: RoPE before RMSNorm, so that a q/k norm feeding the rotation (Qwen3) is
# still there for RoPE's fused form (patterns/rope.py) to take; gate_up before activation and
# linear, so that it sees the gate_up mm and its activation before either is taken alone.
FAMILIES = ("rope", "rms_norm", "layer_norm", "gate_up", "activation", "linear", "attention")
GemmMode = Literal["native", "templates"]


class OptionsError(ValueError):
    """A tri_inductor option has a wrong name or value."""


@dataclasses.dataclass(frozen=True)
class TriInductorOptions:
    strict: bool = False
    """Fail the compile (with the audit report) if any kernel is not Triton."""
    patterns: tuple[str, ...] | None = None
    """Pattern families to apply (None: all of FAMILIES; (): none). Default from the environment
    variable TRI_INDUCTOR_PATTERNS (comma-separated, or ``all``) when set."""
    audit: bool = True
    """Audit every compiled graph (reports are kept; printed when ``verbose``)."""
    verbose: bool = False
    """Print each graph's audit table to stderr."""
    gemm: GemmMode = "native"
    """How Inductor writes GEMMs our `linear` pattern did not take: ``native`` (tl.dot inside its
    own kernels, nothing to benchmark) or ``templates`` (Triton templates, autotuned)."""
    codegen_only: bool = False
    """Write and compile (ptxas) the Triton code for a fake sm_90 GPU, then run the graph eagerly:
    for auditing on a machine without a GPU."""

    @property
    def families(self) -> tuple[str, ...]:
        return FAMILIES if self.patterns is None else self.patterns

    @classmethod
    def from_mapping(cls, options: Mapping[str, Any] | None) -> tuple["TriInductorOptions", dict[str, Any]]:
        """Split ``options`` into ours (validated) and the rest (Inductor config overrides)."""
        ours: dict[str, Any] = {}
        rest: dict[str, Any] = {}
        names = {f.name for f in dataclasses.fields(cls)}
        for key, value in dict(options or {}).items():
            (ours if key in names else rest)[key] = value
        if "patterns" not in ours and os.environ.get("TRI_INDUCTOR_PATTERNS") is not None:
            env = os.environ["TRI_INDUCTOR_PATTERNS"].strip()
            ours["patterns"] = tuple(p.strip() for p in env.split(",") if p.strip()) if env != "all" else None
        if "patterns" in ours and ours["patterns"] is not None:
            pats = ours["patterns"]
            pats = (pats,) if isinstance(pats, str) else tuple(pats)
            unknown = [p for p in pats if p not in FAMILIES]
            if unknown:
                raise OptionsError(f"unknown pattern famil{'y' if len(unknown) == 1 else 'ies'} {unknown}; "
                                   f"choose from {list(FAMILIES)}")
            ours["patterns"] = pats
        if ours.get("gemm", "native") not in ("native", "templates"):
            raise OptionsError(f"gemm={ours['gemm']!r}: use 'native' or 'templates'")
        for key in ("strict", "audit", "verbose", "codegen_only"):
            if key in ours and not isinstance(ours[key], bool):
                raise OptionsError(f"{key} must be True or False, got {ours[key]!r}")
        return cls(**ours), rest
