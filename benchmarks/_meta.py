"""Run metadata every benchmark records: the card's short name for file names, the commit, the
versions; and how a GPU worker records its failure.

Torch-free at import, so that parent processes which only start GPU workers can use it.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def card_slug(card: str | None) -> str:
    """``h200``, ``h100``, ... for a device name (file names under benchmarks/results/)."""
    card = card or ""
    for key in ("H200", "H100", "A100", "L40S", "L40", "GB200", "B200"):
        if key in card:
            return key.lower()
    return "".join(c for c in card.lower() if c.isalnum())[:20] or "gpu"


def _git(*args: str) -> str | None:
    try:
        proc = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return proc.stdout.strip() if proc.returncode == 0 else None  # no .git: "HEAD" on stdout, rc 128


def git_info() -> dict[str, Any]:
    """commit (env GIT_COMMIT wins: the GPU machine's copy of the tree has no .git) and dirty flag."""
    if os.environ.get("GIT_COMMIT"):
        return {"commit": os.environ["GIT_COMMIT"], "dirty": None}
    commit = _git("rev-parse", "HEAD")
    status = _git("status", "--porcelain") if commit else None
    return {"commit": commit or "unknown", "dirty": None if status is None else bool(status)}


def versions() -> dict[str, Any]:
    """torch, CUDA, triton, vLLM and tri_inductor versions (``error`` if torch cannot load)."""
    v: dict[str, Any] = {}
    try:
        import torch
        import triton

        v.update(torch=torch.__version__, cuda=torch.version.cuda, triton=triton.__version__)
    except Exception as e:  # noqa: BLE001
        v["error"] = repr(e)
    try:
        import importlib.metadata as md

        v["vllm"] = md.version("vllm")
        v["tri_inductor"] = md.version("tri_inductor")
    except Exception:  # noqa: BLE001
        pass
    env = tri_inductor_env()
    if env:
        v["tri_inductor_env"] = env
    return v


def tri_inductor_env(environ: dict[str, str] | None = None) -> dict[str, str]:
    """The ``TRI_INDUCTOR_*`` variables a run was made with (a record says which variant it measured)."""
    environ = os.environ if environ is None else environ
    return {k: environ[k] for k in sorted(environ) if k.startswith("TRI_INDUCTOR_")}


def package_hash() -> str | None:
    """tri_inductor's source hash (what keys its caches), None if it cannot be computed."""
    try:
        from tri_inductor.fingerprint import package_hash as ph

        return ph()
    except Exception:  # noqa: BLE001
        return None


def record_failure(result: dict[str, Any]) -> None:
    """In a worker's ``except`` block: the exception and its traceback's tail into ``result``
    (the parent reads them from the worker's JSON), and the traceback to stderr."""
    import traceback

    result["error"] = repr(sys.exc_info()[1])
    result["traceback"] = traceback.format_exc()[-8000:]
    print(result["traceback"], file=sys.stderr, flush=True)
