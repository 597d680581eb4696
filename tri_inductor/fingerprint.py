"""A stable hash of everything that changes the code we generate: our sources and versions."""
from __future__ import annotations

import functools
import hashlib
from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent


@functools.cache
def package_hash() -> str:
    """sha256 over every .py/.json file of the package (kernels, patterns, settings, tuned tables)."""
    h = hashlib.sha256()
    for path in sorted(_PACKAGE.rglob("*")):
        if path.suffix in (".py", ".json") and "__pycache__" not in path.parts:
            h.update(path.relative_to(_PACKAGE).as_posix().encode())
            h.update(path.read_bytes())
    return h.hexdigest()
