"""A stable hash of what changes the code we generate: our sources that shape it, and the inputs
(tuning table, codegen-relevant environment) they read.

Every ``.py``/``.json`` file of the package counts unless :data:`NOT_CODEGEN` names it: a file
nobody classified is hashed (a stale compiled graph costs more than a needless recompile). A
file listed there must not influence a compiled graph's code: the CLIs, the auditor (it reads
output code, never writes it), the cache plumbing itself, docs-only modules.
"""
from __future__ import annotations

import functools
import hashlib
from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent

NOT_CODEGEN: tuple[str, ...] = (
    "__init__.py",  # re-exports
    "audit/",  # reads output code and FX provenance; never changes what is generated
    "cache.py",  # where caches live and how keys are formed (the key's fields are versioned there)
    "cache_cli.py",  # `tri-inductor cache` CLI
    "cache_counters.py",  # counts of cache hits/misses/damage, for stats and tests
    "cli.py",  # `graph-audit` / `tri-inductor` CLI (help texts)
    "demo.py",  # the demo model
    "envs.py",  # parsing and docs of TRI_INDUCTOR_*; the parsed values that shape code are hashed
    "fingerprint.py",  # this file
    "tp_shapes.py",  # per-rank GEMM shapes for benchmarks and tests; the compiler never reads it
    "mutation_memo.py",  # memoizes an analysis Inductor runs; a hit returns what it would compute
    "testing/interpret.py",  # CPU interpreter harness: runs code, does not write it
    "testing/vllm_platform.py",  # a CUDA-like vLLM platform for CPU tests
    # vLLM's attention runs eagerly between compiled pieces: our paged attention and its backend
    # are never in a compiled graph (the chosen backend is in vLLM's own config hash)
    "patterns/paged_attention/",
    "vllm_attention.py",
    "vllm_attention_select.py",
    # MLA layers run eagerly too (vLLM's opaque unified_mla_* ops): the same holds for our MLA code
    "patterns/mla/",
    "vllm_mla.py",
    "vllm_mla_prefill.py",
)


def _excluded(rel: str) -> bool:
    return any(rel == p or (p.endswith("/") and rel.startswith(p)) for p in NOT_CODEGEN)


def codegen_files(root: Path = _PACKAGE) -> list[Path]:
    """The package files whose content is in :func:`package_hash`, in hashing order."""
    out = []
    for path in sorted(root.rglob("*")):
        if path.suffix in (".py", ".json") and "__pycache__" not in path.parts and path.is_file():
            if not _excluded(path.relative_to(root).as_posix()):
                out.append(path)
    return out


def _hash_files(root: Path) -> str:
    h = hashlib.sha256()
    for path in codegen_files(root):
        h.update(path.relative_to(root).as_posix().encode())
        h.update(path.read_bytes())
    return h.hexdigest()


@functools.cache
def _package_hash_cached() -> str:
    return _hash_files(_PACKAGE)


def package_hash(root: Path | None = None) -> str:
    """sha256 over the package files that shape generated code (:func:`codegen_files`): kernels,
    patterns, passes, settings, the shipped tuned tables. Cached for the installed package."""
    return _package_hash_cached() if root is None else _hash_files(Path(root))


def codegen_inputs() -> dict[str, str]:
    """What besides our sources and versions changes generated code, read now: part of
    ``cache.compile_hash``. Add an entry here for any new input a kernel's code depends on.

    * ``pdl``: ``TRI_INDUCTOR_PDL`` (the kernels' ``USE_PDL`` is baked into compiled graphs);
    * ``tma``: ``TRI_INDUCTOR_TMA`` (0: compiled graphs launch no TMA kernel);
    * ``linear_tuned``: sha256 of the GEMM tuning table in use (``TRI_INDUCTOR_LINEAR_TUNED`` or
      the shipped one): a changed table must miss the compile cache, not serve graphs compiled
      with the old tile configs.
    """
    from . import envs

    table = envs.linear_tuned()
    try:
        table_hash = hashlib.sha256(table.read_bytes()).hexdigest()
    except OSError:  # no shipped table in this install: nothing to key on
        table_hash = "none"
    return {"pdl": str(envs.pdl()), "tma": str(envs.tma()), "linear_tuned": table_hash}
