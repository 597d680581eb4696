"""A damaged generated ``.py`` in Inductor's cache is rewritten, not imported.

Inductor writes each wrapper and Triton kernel module to ``<TORCHINDUCTOR_CACHE_DIR>/xx/<hash>.py``
and, when that file already exists, imports it as it is (``codecache.write`` and
``CompiledFxGraph.write_to_disk`` skip the write).  A truncated file then fails every compile
until the cache is cleared, and an edited one (``1e-06`` -> ``1.0``) runs with wrong results and
no warning.  The code that belongs in the file is always at hand at that moment (the FX-graph
entry's ``source_code``, the kernel source being loaded), so we compare: a file that differs is
removed, written again from that source, and one warning names it.

Hooks into Inductor internals (two functions); they belong with the other torch hooks in the
``compat`` module when it lands.
"""
from __future__ import annotations

import contextlib
import logging
import os

from .cache_counters import count

log = logging.getLogger("tri_inductor.cache")
_installed = False


def _differs(path: str, content: str | bytes) -> bool:
    try:
        with open(path, "rb") as f:
            on_disk = f.read()
    except OSError:
        return False  # missing or unreadable: Inductor's own path writes/raises as before
    want = content.encode("utf-8") if isinstance(content, str) else content
    return on_disk != want


def _heal(path: str, content: str | bytes) -> None:
    if os.path.exists(path) and _differs(path, content):
        count("corrupt")
        log.warning("tri_inductor cache: %s does not hold the code Inductor generated for it (damaged or "
                    "edited); removing it and writing it again", path)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


def install_output_code_check() -> None:
    """Wrap ``codecache.write`` (``.py`` text only) and ``CompiledFxGraph.write_to_disk``; idempotent."""
    global _installed
    if _installed:
        return
    from torch._inductor import codecache
    from torch._inductor.output_code import CompiledFxGraph

    real_write = codecache.write

    def write(content, extension, extra="", hash_type="code", specified_dir="", key=None):
        if extension == "py" and isinstance(content, str):
            k = key if key is not None else codecache.get_hash(content.strip(), extra, hash_type)
            _heal(codecache.get_path(k, extension, specified_dir)[2], content)
        return real_write(content, extension, extra=extra, hash_type=hash_type,
                          specified_dir=specified_dir, key=key)

    real_to_disk = CompiledFxGraph.write_to_disk

    def write_to_disk(self):
        code = getattr(self, "source_code", None)
        if isinstance(code, str):
            _heal(codecache.get_path(self.cache_key, "py")[2], code)
        return real_to_disk(self)

    codecache.write = write
    CompiledFxGraph.write_to_disk = write_to_disk
    _installed = True
