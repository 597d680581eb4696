"""The compile cache key covers what changes generated code, and only that."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tri_inductor import fingerprint

PKG = Path(fingerprint.__file__).resolve().parent


@pytest.fixture
def pkg_copy(tmp_path):
    dest = tmp_path / "tri_inductor"
    shutil.copytree(PKG, dest, ignore=shutil.ignore_patterns("__pycache__"))
    return dest


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, f"{old!r} not in {path}"
    path.write_text(text.replace(old, new, 1))


def test_cli_help_text_edit_keeps_the_key(pkg_copy):
    before = fingerprint.package_hash(pkg_copy)
    assert before == fingerprint.package_hash(PKG) == fingerprint.package_hash()
    _edit(pkg_copy / "cli.py", '"""', '"""Edited help text. ')
    _edit(pkg_copy / "cache_cli.py", "description=", "epilog='an edited epilog', description=")
    assert fingerprint.package_hash(pkg_copy) == before


def test_kernel_settings_and_unclassified_files_change_the_key(pkg_copy):
    before = fingerprint.package_hash(pkg_copy)
    for rel in ("patterns/rms_norm.py", "settings.py", "passes.py"):
        (pkg_copy / rel).write_text((pkg_copy / rel).read_text() + "\n# edited\n")
        after = fingerprint.package_hash(pkg_copy)
        assert after != before, rel
        before = after
    # A file nobody classified counts (safe default: a needless recompile, never a stale graph).
    (pkg_copy / "new_module.py").write_text("X = 1\n")
    assert fingerprint.package_hash(pkg_copy) != before


def test_every_exclusion_names_a_file_that_exists():
    for rel in fingerprint.NOT_CODEGEN:
        assert (PKG / rel).exists(), f"NOT_CODEGEN names {rel}, which is gone: drop it"
    hashed = {p.relative_to(PKG).as_posix() for p in fingerprint.codegen_files()}
    assert {"passes.py", "settings.py", "patterns/rms_norm.py"} <= hashed
    assert not {"cli.py", "cache_cli.py", "demo.py"} & hashed


def test_tuning_table_content_is_in_the_compile_key(monkeypatch, tmp_path):
    from tri_inductor import cache

    table = tmp_path / "tuned.json"
    table.write_text('{"configs": {}}')
    monkeypatch.setenv("TRI_INDUCTOR_LINEAR_TUNED", str(table))
    first = cache.compile_hash("x", avoid_cuda_init=True)
    assert cache.compile_hash("x", avoid_cuda_init=True) == first
    table.write_text('{"configs": {"4096,4096,1": [16, 64, 128, 1, 1, 4, 4]}}')
    assert cache.compile_hash("x", avoid_cuda_init=True) != first


def test_forget_loaded_calls_registered_hooks():
    from tri_inductor import cache

    calls = []
    hook = lambda: calls.append(1)  # noqa: E731
    cache.on_forget(hook)
    cache.on_forget(hook)  # once only
    try:
        cache.forget_loaded()
        assert calls == [1]
    finally:
        cache._FORGET_HOOKS.remove(hook)
