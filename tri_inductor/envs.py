"""Every ``TRI_INDUCTOR_*`` environment variable, in one table, with one parser each.

Rules, the same for every variable:

* read from ``os.environ`` on each call (nothing at import time), so a test or a launcher that
  sets a variable after ``import tri_inductor`` is obeyed;
* unset means the default; set, the value must parse: an empty value or one not among the
  accepted values raises :class:`EnvError` naming the variable and the accepted values (a typo
  never silently means "off");
* booleans: ``1/true/yes/on`` and ``0/false/no/off``, case-insensitive.

``python3 -m tri_inductor.envs`` prints docs/configuration.md (the README links it).
"""
from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

TRUE = ("1", "true", "yes", "on")
FALSE = ("0", "false", "no", "off")
# Pattern families, in the order they are applied (options.FAMILIES re-exports it): RoPE before
# RMSNorm, so that a q/k norm feeding the rotation (Qwen3) is still there for RoPE's fused form to
# take; gate_up before activation and linear, so that it sees the gate_up mm and its activation
# before either is taken alone.
FAMILIES = ("rope", "rms_norm", "layer_norm", "gate_up", "activation", "linear", "attention", "moe")


class EnvError(ValueError):
    """A ``TRI_INDUCTOR_*`` variable is set to a value we cannot use."""


@dataclasses.dataclass(frozen=True)
class Var:
    name: str
    kind: str  # "bool", "families", "dir", "file", "new_file", "seconds", "choice", "count"
    default: Any
    default_doc: str
    accepted: str
    doc: str
    parse: Callable[["Var", str], Any] = dataclasses.field(repr=False, compare=False, default=None)

    def get(self, environ: Mapping[str, str] | None = None) -> Any:
        raw = (os.environ if environ is None else environ).get(self.name)
        if raw is None:
            return self.default
        if not raw.strip():
            raise self.error(raw, "is empty")
        return self.parse(self, raw.strip())

    def is_set(self, environ: Mapping[str, str] | None = None) -> bool:
        return self.name in (os.environ if environ is None else environ)

    def error(self, raw: str, why: str = "is not accepted") -> EnvError:
        return EnvError(f"{self.name}={raw!r} {why}; accepted values: {self.accepted} "
                        f"(unset: {self.default_doc})")


def _choice(var: Var, raw: str) -> str:
    low = raw.lower()
    if low not in [a.strip() for a in var.accepted.split(",")]:
        raise var.error(raw)
    return low


def _bool(var: Var, raw: str) -> bool:
    low = raw.lower()
    if low in TRUE:
        return True
    if low in FALSE:
        return False
    raise var.error(raw)


def _families(var: Var, raw: str) -> tuple[str, ...] | None:
    low = raw.lower()
    if low == "all":
        return None
    if low == "none":
        return ()
    names = [p.strip() for p in raw.split(",")]
    bad = [p for p in names if p not in FAMILIES]
    if bad:
        raise var.error(raw, f"names unknown famil{'y' if len(bad) == 1 else 'ies'} {bad}")
    return tuple(names)


def _dir(var: Var, raw: str) -> Path:
    path = Path(raw).expanduser()
    if path.exists() and not path.is_dir():
        raise var.error(raw, "is a file, not a folder")
    return path


def _file(var: Var, raw: str) -> Path:
    path = Path(raw).expanduser()
    if not path.is_file():
        raise var.error(raw, "is not an existing file")
    return path


def _new_file(var: Var, raw: str) -> Path:
    path = Path(raw).expanduser()
    if path.is_dir():
        raise var.error(raw, "is a folder, not a file")
    return path


def _seconds(var: Var, raw: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise var.error(raw, "is not a number of seconds") from None
    if not value >= 0:  # NaN too
        raise var.error(raw, "is not a number of seconds >= 0")
    return value


def _count(var: Var, raw: str) -> int:
    try:
        value = int(raw)
    except ValueError:
        raise var.error(raw, "is not a whole number") from None
    if value < 0:
        raise var.error(raw, "is negative")
    return value


_BOOL = "1/true/yes/on or 0/false/no/off"
SHIPPED_LINEAR_TUNED = Path(__file__).resolve().parent / "patterns" / "gemm" / "tuned_sm90.json"

VARS: dict[str, Var] = {v.name: v for v in (
    Var("TRI_INDUCTOR_STRICT", "bool", False, "0", _BOOL,
        "Strict mode (the `strict` option's default on every front end): any non-Triton kernel, "
        "or a vLLM setting that lets one in, fails the compile.", _bool),
    Var("TRI_INDUCTOR_PATTERNS", "families", None, "all",
        "all, none, or a comma-separated list of " + ", ".join(FAMILIES),
        "Pattern families to apply (the `patterns` option's default).", _families),
    Var("TRI_INDUCTOR_PDL", "bool", False, "0", _BOOL,
        "1: launch our kernels that support it with programmatic dependent launch on sm_90+ "
        "(part of the compile cache key). Off by default: with it, small-model decode steps in vLLM's "
        "CUDA graphs were slower on an H200 (docs/design/kernels.md).", _bool),
    Var("TRI_INDUCTOR_TMA", "bool", True, "1", _BOOL,
        "0: GEMM configs of the TMA kernels run their tiles on the pointer kernel instead (no host-side "
        "tensor descriptors: a TMA launch builds three on the host; part of the compile cache key). For "
        "comparing host time on small models (docs/design/gemm.md).", _bool),
    Var("TRI_INDUCTOR_TUNE", "bool", True, "1 (on a GPU)", _BOOL,
        "Tune GEMM, MoE-expert and paged-attention prefill shapes missing from the tuning DB on the "
        "GPU (at compile time, at vLLM engine start for attention, or at an eager call's first use; "
        "candidates measured once, stored); 0: "
        "the shipped table and the default configs, nothing benchmarked. Never tunes without a GPU.", _bool),
    Var("TRI_INDUCTOR_TUNE_BUDGET_S", "seconds", 120.0, "120",
        "a number of seconds >= 0 (0: tune nothing new)",
        "Seconds of tuning one process may spend; past it untuned shapes use the cost model's "
        "config and are tuned by a later start.", _seconds),
    Var("TRI_INDUCTOR_LINEAR_TUNED", "file", SHIPPED_LINEAR_TUNED, "the shipped patterns/gemm/tuned_sm90.json",
        "a path to an existing JSON tuning table",
        "GEMM tuning table to use instead of the shipped one (its content is in the compile "
        "cache key).", _file),
    Var("TRI_INDUCTOR_ATTENTION", "choice", "ours", "ours", "ours, triton_attn",
        "Attention under vLLM with backend tri_inductor: `ours` (our Triton paged attention; vLLM's "
        "kernel for what it declines) or `triton_attn` (vLLM's Triton TRITON_ATTN kernel). On an H200 "
        "ours was faster than vLLM's Triton kernel at all 104 points of `kernel_bench.py --only "
        "attention` (decode 1.01-6.4x, prefill up to 5.8x) and matched float64 there.",
        _choice),
    Var("TRI_INDUCTOR_DECODE_SPLITS", "choice", "wave", "wave", "wave, balanced",
        "Split policy of our paged decode kernel: `wave` (split count sized so the batch fills one "
        "wave of the GPU; each sequence uses what its length fills) or `balanced` (each sequence's "
        "count from its share of the step's keys, for batches of mixed lengths; being measured, "
        "docs/design/paged_attention.md).", _choice),
    Var("TRI_INDUCTOR_COMPILE_AHEAD", "bool", True, "1 (where tuning runs)", _BOOL,
        "Compile the tuning candidates of a shape on a background thread as soon as vLLM creates "
        "the layer (linear weights, attention), so a cold start's tuning only measures "
        "(docs/design/cold_start.md); 0: compile them when each shape is tuned.", _bool),
    Var("TRI_INDUCTOR_COMPILE_PROCS", "count", None, "half the CPUs, 1 to 8",
        "a whole number >= 0 (0: compile threads in the process)",
        "Worker processes that compile the tuning candidates ahead into Triton's cache (Triton's "
        "frontend holds the GIL: compile threads in vLLM's process slow its main thread).", _count),
    Var("TRI_INDUCTOR_COMPILE_RANGES", "choice", "split", "split", "split, one",
        "Under vLLM: `split` adds a compile range ending at the largest CUDA-graph size (each piece "
        "is compiled for decode sizes and for prefill sizes: eager prefill steps carry only the "
        "prefill GEMM tiles) or `one` (vLLM's single range: one compile per piece, every bucket's "
        "launch gated in it; ~9% less compile time on the CPU harness; being measured, "
        "docs/design/cold_start.md).", _choice),
    Var("TRI_INDUCTOR_CHECK_MUTATIONS", "bool", False, "0", _BOOL,
        "1: answers of the compile-time memo of Inductor's mutation analysis of our kernels are "
        "checked against the analysis itself, once per variant the memo's key lumps together; a "
        "difference raises (the test suite runs with it).", _bool),
    Var("TRI_INDUCTOR_CACHE_DIR", "dir", None, "$XDG_CACHE_HOME/tri_inductor or ~/.cache/tri_inductor",
        "a folder path (created when needed)",
        "Root of our tuning DB and, unless set by you, Inductor's and Triton's caches.", _dir),
    Var("TRI_INDUCTOR_CACHE_KEY_FILE", "file", None, "none (archives unsigned)",
        "a path to an existing key file",
        "Key that `tri-inductor cache export` signs with and `cache import --trust` verifies "
        "(HMAC-SHA256 over the manifest).", _file),
    Var("TRI_INDUCTOR_CACHE_STATS", "new_file", None, "no stats written",
        "a file path (written at exit)",
        "Write our cache counters and Inductor's as JSON to this file when the process exits.",
        _new_file),
)}


def get(name: str, environ: Mapping[str, str] | None = None) -> Any:
    """The parsed value of ``name`` (one of :data:`VARS`) now."""
    return VARS[name].get(environ)


def strict(environ: Mapping[str, str] | None = None) -> bool:
    return get("TRI_INDUCTOR_STRICT", environ)


def patterns(environ: Mapping[str, str] | None = None) -> tuple[str, ...] | None:
    """None: every family; (): none."""
    return get("TRI_INDUCTOR_PATTERNS", environ)


def pdl(environ: Mapping[str, str] | None = None) -> bool:
    return get("TRI_INDUCTOR_PDL", environ)


def tma(environ: Mapping[str, str] | None = None) -> bool:
    return get("TRI_INDUCTOR_TMA", environ)


def tune(environ: Mapping[str, str] | None = None) -> bool:
    """Whether tuning is allowed (whether it can run, a GPU, is the tuner's question)."""
    return get("TRI_INDUCTOR_TUNE", environ)


def tune_budget_s(environ: Mapping[str, str] | None = None) -> float:
    return get("TRI_INDUCTOR_TUNE_BUDGET_S", environ)


def linear_tuned(environ: Mapping[str, str] | None = None) -> Path:
    return get("TRI_INDUCTOR_LINEAR_TUNED", environ)


def attention(environ: Mapping[str, str] | None = None) -> str:
    return get("TRI_INDUCTOR_ATTENTION", environ)


def decode_splits(environ: Mapping[str, str] | None = None) -> str:
    return get("TRI_INDUCTOR_DECODE_SPLITS", environ)


def compile_ahead(environ: Mapping[str, str] | None = None) -> bool:
    return get("TRI_INDUCTOR_COMPILE_AHEAD", environ)


def compile_procs(environ: Mapping[str, str] | None = None) -> int | None:
    return get("TRI_INDUCTOR_COMPILE_PROCS", environ)


def compile_ranges(environ: Mapping[str, str] | None = None) -> str:
    return get("TRI_INDUCTOR_COMPILE_RANGES", environ)


def check_mutations(environ: Mapping[str, str] | None = None) -> bool:
    return get("TRI_INDUCTOR_CHECK_MUTATIONS", environ)


def cache_dir(environ: Mapping[str, str] | None = None) -> Path | None:
    return get("TRI_INDUCTOR_CACHE_DIR", environ)


def cache_stats(environ: Mapping[str, str] | None = None) -> Path | None:
    return get("TRI_INDUCTOR_CACHE_STATS", environ)


def check_all(environ: Mapping[str, str] | None = None) -> None:
    """Parse every variable that is set (raises the first :class:`EnvError`)."""
    for var in VARS.values():
        var.get(environ)


def markdown_page() -> str:
    """docs/configuration.md (``python3 -m tri_inductor.envs > docs/configuration.md``)."""
    rows = ["| variable | unset means | accepted values | meaning |", "|---|---|---|---|"]
    rows += [f"| `{v.name}` | {v.default_doc} | {v.accepted} | {v.doc} |" for v in VARS.values()]
    return ("# Configuration: environment variables\n\n"
            "Generated from `tri_inductor/envs.py` (`python3 -m tri_inductor.envs > docs/configuration.md`).\n"
            "Read when used, not at import. Booleans: `1/true/yes/on`, `0/false/no/off`. An empty value or\n"
            "one not accepted is an error naming the accepted values. An option passed in code\n"
            "(`strict`, `patterns`) wins over its variable.\n\n" + "\n".join(rows) + "\n")


if __name__ == "__main__":
    print(markdown_page(), end="")
