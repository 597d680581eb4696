"""Output code inside compiled artifacts, read as bytes: never unpickled, never imported.

vLLM's ``torch_compile_cache`` and Inductor's FX-graph cache keep each graph as a pickle whose
``source_code`` string is the wrapper module the auditor needs.  Loading such a pickle runs
whatever its author put in it, so a folder someone hands us is read as data: a pickle stores a
``str`` as an opcode, its length and the UTF-8 bytes (``BINUNICODE`` / ``BINUNICODE8``), so the
wrapper text can be cut out of the raw bytes without executing a single opcode.  A compressed or
unknown layout simply yields nothing (the caller says so); it is never loaded instead.
"""
from __future__ import annotations

import struct
from pathlib import Path

MARKER = b"async_compile"
# Pickle string opcodes: (opcode byte, length format).  BINBYTES too: some layouts keep text as bytes.
_OPCODES = ((b"X", "<I"), (b"\x8d", "<Q"), (b"\x8c", "<B"), (b"B", "<I"), (b"\x8e", "<Q"), (b"C", "<B"))
WINDOW = 16 << 20  # look this far back from a marker for the string that holds it
MAX_FILE_BYTES = 1 << 30


def is_output_code(text: str) -> bool:
    return "async_compile" in text and ("def call(" in text or "def partition_" in text)


def output_code_in_bytes(data: bytes) -> list[str]:
    """Every Inductor wrapper module stored as a pickle string in ``data`` (in order, no repeats)."""
    found: list[str] = []
    pos = 0
    while (i := data.find(MARKER, pos)) >= 0:
        hit = _enclosing_string(data, i)
        if hit is None:
            pos = i + 1
            continue
        text, end = hit
        if text not in found:
            found.append(text)
        pos = end
    return found


def _enclosing_string(data: bytes, i: int) -> tuple[str, int] | None:
    lo = max(0, i - WINDOW)
    hi = i
    while True:
        j, fmt = max(((data.rfind(op, lo, hi), fmt) for op, fmt in _OPCODES), key=lambda t: t[0])
        if j < 0:
            return None
        width = struct.calcsize(fmt)
        if j + 1 + width <= len(data):
            (n,) = struct.unpack_from(fmt, data, j + 1)
            start, end = j + 1 + width, j + 1 + width + n
            if start <= i and i + len(MARKER) <= end <= len(data):
                try:
                    text = data[start:end].decode("utf-8")
                except UnicodeDecodeError:
                    text = ""
                if is_output_code(text):
                    return text, end
        hi = j


def output_code_in_artifact(path: Path) -> list[str]:
    """Wrapper modules in an artifact file, or in every file of an artifact folder."""
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    found: list[str] = []
    for f in files:
        if f.stat().st_size > MAX_FILE_BYTES:
            continue
        for text in output_code_in_bytes(f.read_bytes()):
            if text not in found:
                found.append(text)
    return found
