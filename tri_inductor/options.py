"""User-facing options of the tri_inductor backend.

Given as ``torch.compile(model, backend="tri_inductor", options={...})`` or, under vLLM, as
``compilation_config={"backend": "tri_inductor", "inductor_compile_config": {"tri_inductor": {...}}}``.
Keys that are not ours are passed through to Inductor as config overrides.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, Literal

from . import envs
from .envs import FAMILIES  # applied in this order (why: envs.FAMILIES)
GemmMode = Literal["native", "templates"]


class OptionsError(ValueError):
    """A tri_inductor option has a wrong name or value."""


@dataclasses.dataclass(frozen=True)
class TriInductorOptions:
    strict: bool = False
    """Fail the compile (with the audit report) if any kernel is not Triton. Default from
    ``TRI_INDUCTOR_STRICT`` when set (see :meth:`from_mapping`)."""
    patterns: tuple[str, ...] | None = None
    """Pattern families to apply (None: all of FAMILIES; (): none). Default from the environment
    variable TRI_INDUCTOR_PATTERNS (``all``, ``none`` or comma-separated) when set."""
    audit: bool = True
    """Log each compiled graph's audit (a warning naming every non-Triton kernel). Off: reports
    are still kept (``last_audit()``) but not logged; ``strict`` audits regardless."""
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

    @property
    def audits(self) -> bool:
        """Whether each graph's report is logged and enforced (the same rule on every front end)."""
        return self.audit or self.strict

    @classmethod
    def from_mapping(cls, options: Mapping[str, Any] | None,
                     environ: Mapping[str, str] | None = None) -> tuple["TriInductorOptions", dict[str, Any]]:
        """Split ``options`` into ours (validated) and the rest (Inductor config overrides).

        The one place options are parsed, on every front end: a key the caller did not give takes
        its default from the environment (``TRI_INDUCTOR_STRICT``, ``TRI_INDUCTOR_PATTERNS``);
        one the caller gave wins over the environment."""
        ours: dict[str, Any] = {}
        rest: dict[str, Any] = {}
        names = {f.name for f in dataclasses.fields(cls)}
        for key, value in dict(options or {}).items():
            (ours if key in names else rest)[key] = value
        try:
            if "patterns" not in ours and envs.VARS["TRI_INDUCTOR_PATTERNS"].is_set(environ):
                ours["patterns"] = envs.patterns(environ)
            if "strict" not in ours and envs.VARS["TRI_INDUCTOR_STRICT"].is_set(environ):
                ours["strict"] = envs.strict(environ)
        except envs.EnvError as e:
            raise OptionsError(str(e)) from None
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
