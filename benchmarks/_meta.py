"""Run metadata every benchmark records: the card's short name for file names, and the commit.

Torch-free, so that parent processes which only start GPU workers can use it.
"""
from __future__ import annotations

import os
import subprocess
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
