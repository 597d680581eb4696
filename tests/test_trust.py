"""Trust and robustness (issue 22), CPU only: nothing we are handed runs code unless the user
trusts it; bad archives and cache damage give clear errors or heal, never tracebacks or half-work.

* graph-audit FOLDER reads artifacts as bytes: a crafted pickle runs nothing;
* cache import: tuning data only by default; compiled artifacts need trust + a verifying HMAC key;
  limits, staging, member names and types, malformed manifests, non-regular files;
* export: no symlinks followed, no temp file left, clear error on "";
* cache clear / claim: a file where a cache folder belongs; cache info "in use";
* a damaged generated .py is rewritten (one warning); a tuning DB nested 200k deep is ignored.
"""
from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import pickle
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

from tri_inductor import cache_archive
from tri_inductor.cli import EXIT_BAD_INPUT, EXIT_OK, graph_audit_main

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _our_loggers_reach_caplog(monkeypatch):
    """Earlier tests in the same session may configure logging (dictConfig disables existing
    loggers; a handler may stop propagation): the warnings checked here must reach caplog."""
    for name in ("tri_inductor", "tri_inductor.cache", "tri_inductor.audit"):
        logger = logging.getLogger(name)
        monkeypatch.setattr(logger, "disabled", False)
        monkeypatch.setattr(logger, "propagate", True)
        monkeypatch.setattr(logger, "level", logging.NOTSET)


# ============================================================================ graph-audit never unpickles


class _Payload:
    """Unpickling this creates ``marker``: the stand-in for 'ran a command'."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('pwned')",))


OUTPUT_CODE = '''
from torch._inductor.async_compile import AsyncCompile
async_compile = AsyncCompile()
triton_poi_fused_add_0 = async_compile.triton('triton_poi_fused_add_0', """...""")
async_compile.wait(globals())
def call(args):
    arg0_1, = args
    buf0 = empty_strided_cuda((8, ), (1, ), torch.float32)
    triton_poi_fused_add_0.run(arg0_1, buf0, 8, stream=stream0)
    buf1 = extern_kernels.mm(buf0, buf0)
    return (buf0, )
'''


def test_graph_audit_folder_with_crafted_pickle_runs_nothing(tmp_path, capsys):
    marker = tmp_path / "ran"
    folder = tmp_path / "torch_compile_cache" / "abc" / "rank_0_0" / "backbone"
    folder.mkdir(parents=True)
    (folder / "artifact_compile_range_1_8_subgraph_0").write_bytes(pickle.dumps(_Payload(str(marker))))
    pickle.loads(pickle.dumps(_Payload(str(tmp_path / "control"))))  # the payload does work when loaded
    assert (tmp_path / "control").exists()
    assert graph_audit_main([str(tmp_path / "torch_compile_cache")]) == EXIT_BAD_INPUT
    assert graph_audit_main([str(folder / "artifact_compile_range_1_8_subgraph_0")]) == EXIT_BAD_INPUT
    assert not marker.exists()
    err = capsys.readouterr().err
    assert "never unpickles" in err and "Traceback" not in err


def test_graph_audit_reads_output_code_out_of_an_artifact_as_data(tmp_path, capsys):
    """The output code inside a pickled artifact is audited without loading it (and a payload
    next to it in the same pickle stays inert)."""
    marker = tmp_path / "ran"
    folder = tmp_path / "cache"
    folder.mkdir()
    blob = pickle.dumps({"source_code": OUTPUT_CODE, "other": _Payload(str(marker))}, protocol=4)
    (folder / "artifact_compile_range_1_8_subgraph_0").write_bytes(b"header" + blob)
    assert graph_audit_main([str(folder), "--json"]) == 1  # finds extern_kernels.mm in that code
    report = json.loads(capsys.readouterr().out)
    names = {k["name"] for g in report["graphs"] for k in g["kernels"]}
    assert {"triton_poi_fused_add_0", "extern_kernels.mm"} <= names
    assert report["graphs"][0]["graph"] == "artifact_compile_range_1_8_subgraph_0"
    assert graph_audit_main([str(folder / "artifact_compile_range_1_8_subgraph_0")]) == 1  # the file alone
    assert not marker.exists()


# ============================================================================ archives


@pytest.fixture
def cache_env(tmp_path, monkeypatch):
    from tri_inductor import cache

    monkeypatch.setenv("TRI_INDUCTOR_CACHE_DIR", str(tmp_path / "tri"))
    monkeypatch.setenv("VLLM_CACHE_ROOT", str(tmp_path / "vllm"))
    monkeypatch.delenv("TRI_INDUCTOR_CACHE_KEY_FILE", raising=False)
    cache.forget_loaded()
    cache.reset_counters()
    yield cache
    cache.forget_loaded()
    cache.reset_counters()


@pytest.fixture
def key(tmp_path):
    k = tmp_path / "cache.key"
    k.write_bytes(os.urandom(32).hex().encode())
    return k


def _populate(cache):
    cache.store("mm", "s", [16, 64, 256, 1, 1, 4, 4])
    root = cache.cache_root()
    (root / "inductor" / "fxgraph" / "ab").mkdir(parents=True)
    (root / "inductor" / "fxgraph" / "ab" / "entry").write_bytes(b"artifact")
    (root / "inductor" / "ab").mkdir(parents=True)
    (root / "inductor" / "ab" / "cab.py").write_text("eps = 1e-06\n")


def _members(archive: Path) -> list[tuple[str, bytes]]:
    with tarfile.open(archive) as tar:
        return [(m.name, tar.extractfile(m).read()) for m in tar if m.isfile()]


def _write_archive(archive: Path, manifest: dict | bytes | str, members: list[tuple[str, bytes]],
                   extra: list[tarfile.TarInfo] = ()) -> None:
    with tarfile.open(archive, "w:gz") as tar:
        blob = manifest if isinstance(manifest, bytes) else json.dumps(manifest).encode()
        ti = tarfile.TarInfo("manifest.json")
        ti.size = len(blob)
        tar.addfile(ti, io.BytesIO(blob))
        for name, data in members:
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            tar.addfile(ti, io.BytesIO(data))
        for ti in extra:
            tar.addfile(ti)


def _tamper(archive: Path, name: str, data: bytes, key: Path | None = None) -> None:
    """Swap one member and fix its sha256 in the manifest, as an attacker would (re-signing only
    if handed the key)."""
    members = _members(archive)
    manifest = json.loads(dict(members)["manifest.json"])
    manifest["files"][name] = hashlib.sha256(data).hexdigest()
    if key is not None:
        manifest["hmac_sha256"] = cache_archive.sign(manifest, key.read_bytes().strip())
    _write_archive(archive, manifest, [(n, data if n == name else d) for n, d in members if n != "manifest.json"])


def test_default_import_brings_tuning_data_only_and_runs_nothing(cache_env, tmp_path):
    cache = cache_env
    _populate(cache)
    archive = tmp_path / "c.tgz"
    cache_archive.export(archive)
    cache.clear()
    marker = tmp_path / "ran"
    _tamper(archive, "inductor/fxgraph/ab/entry", pickle.dumps(_Payload(str(marker))))
    got = cache_archive.import_(archive)
    root = cache.cache_root()
    assert got["imported"] == [f"tuning/{cache.key_id()}.json"]
    assert "inductor/fxgraph/ab/entry" in got["skipped"] and "inductor/ab/cab.py" in got["skipped"]
    assert not (root / "inductor").exists() and not marker.exists()
    assert cache.lookup("mm", "s") == [16, 64, 256, 1, 1, 4, 4]


def test_trusted_import_needs_a_key_that_verifies(cache_env, tmp_path, key):
    cache = cache_env
    _populate(cache)
    unsigned, signed = tmp_path / "u.tgz", tmp_path / "s.tgz"
    cache_archive.export(unsigned)
    cache_archive.export(signed, key_file=key)
    cache.clear()
    root = cache.cache_root()
    with pytest.raises(cache.CacheError, match="needs the key"):
        cache_archive.import_(signed, trust=True)
    with pytest.raises(cache.CacheError, match="not signed"):
        cache_archive.import_(unsigned, trust=True, key_file=key)
    other = tmp_path / "other.key"
    other.write_bytes(b"x" * 40)
    with pytest.raises(cache.CacheError, match="does not verify"):
        cache_archive.import_(signed, trust=True, key_file=other)
    # The wrapper edited (1e-06 -> 1.0) with its sha256 fixed, but not re-signed: refused.
    _tamper(signed, "inductor/ab/cab.py", b"eps = 1.0\n")
    with pytest.raises(cache.CacheError, match="does not verify"):
        cache_archive.import_(signed, trust=True, key_file=key)
    assert not (root / "tuning").exists() and not (root / "inductor").exists()  # nothing written
    # Re-signed by the key holder: accepted, as-is.
    _tamper(signed, "inductor/ab/cab.py", b"eps = 1e-06\n", key=key)
    cache_archive.import_(signed, trust=True, key_file=key)
    assert (root / "inductor" / "ab" / "cab.py").read_bytes() == b"eps = 1e-06\n"
    assert (root / "inductor" / "fxgraph" / "ab" / "entry").read_bytes() == b"artifact"


def test_key_from_environment_and_short_key_refused(cache_env, tmp_path, key, monkeypatch):
    cache = cache_env
    _populate(cache)
    monkeypatch.setenv("TRI_INDUCTOR_CACHE_KEY_FILE", str(key))
    archive = tmp_path / "c.tgz"
    assert "hmac_sha256" in cache_archive.export(archive)
    cache.clear()
    cache_archive.import_(archive, trust=True)
    assert (cache.cache_root() / "inductor" / "ab" / "cab.py").exists()
    short = tmp_path / "short.key"
    short.write_bytes(b"abc")
    with pytest.raises(cache.CacheError, match="at least 16"):
        cache_archive.export(archive, key_file=short)


def _manifest_for(cache, files: dict) -> dict:
    key = cache.environment_key()
    return {"format": 1, "tool": "tri_inductor", "created": "now", "key": key, "key_id": cache.key_id(key),
            "files": files}


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize("name", ["inductor/", "vllm/", "inductor", "entry", "tuning/x.json",
                                  "inductor//a", "inductor/./a", "inductor/../../etc/passwd",
                                  "/etc/passwd", "triton/a", "triton/a/b/c", "tuning/0123456789abcdef.py"])
def test_member_names_that_could_replace_a_folder_are_refused(cache_env, tmp_path, key, name):
    cache = cache_env
    root = cache.cache_root()
    (root / "inductor").mkdir(parents=True)
    cache.vllm_compile_cache_dir().mkdir(parents=True)
    m = _manifest_for(cache, {name: _sha(b"x")})
    m["hmac_sha256"] = cache_archive.sign(m, key.read_bytes().strip())
    archive = tmp_path / "c.tgz"
    _write_archive(archive, m, [(name, b"x")])
    with pytest.raises(cache.CacheError, match="malformed manifest"):
        cache_archive.import_(archive, trust=True, key_file=key)
    assert (root / "inductor").is_dir() and cache.vllm_compile_cache_dir().is_dir()


@pytest.mark.parametrize("manifest, message", [
    ({"key": "NVIDIA H200"}, "'key' must be an object"),
    ({"files": ["inductor/a"]}, "'files' must be an object"),
    ({"files": {"inductor/a": 5}}, "64 hex digits"),
    (b"[1, 2]", "not a tri_inductor cache manifest"),
    (b"{" * 200_000, "not a tri_inductor cache archive"),
])
def test_malformed_manifests_give_clear_errors(cache_env, tmp_path, manifest, message, capsys):
    from tri_inductor.cli import main

    cache = cache_env
    if isinstance(manifest, dict):
        manifest = {**_manifest_for(cache, {}), **manifest}
    archive = tmp_path / "c.tgz"
    _write_archive(archive, manifest, [])
    with pytest.raises(cache.CacheError, match=message):
        cache_archive.import_(archive)
    assert main(["cache", "import", str(archive)]) == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert message.split("'")[0] in err and "Traceback" not in err


def test_links_and_unlisted_members_are_refused(cache_env, tmp_path):
    cache = cache_env
    link = tarfile.TarInfo("inductor/evil")
    link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
    archive = tmp_path / "c.tgz"
    _write_archive(archive, _manifest_for(cache, {}), [], extra=[link])
    with pytest.raises(cache.CacheError, match="unexpected member 'inductor/evil'"):
        cache_archive.import_(archive)
    _write_archive(archive, _manifest_for(cache, {}), [("inductor/extra", b"x")])
    with pytest.raises(cache.CacheError, match="not in the manifest"):
        cache_archive.import_(archive)


@pytest.mark.parametrize("limit, value", [("MAX_MEMBER_BYTES", 1000), ("MAX_TOTAL_BYTES", 1500),
                                          ("MAX_MEMBERS", 3)])
def test_size_and_count_limits(cache_env, tmp_path, key, monkeypatch, limit, value):
    """A bomb (one huge member, many members, too many bytes) is refused while streaming, before
    anything is moved in place, and never held in memory whole."""
    cache = cache_env
    monkeypatch.setattr(cache_archive, limit, value)
    members = [(f"inductor/m{i}", bytes(800)) for i in range(3)] if limit != "MAX_MEMBER_BYTES" else \
        [("inductor/big", bytes(5000))]
    if limit == "MAX_MEMBERS":
        members += [("inductor/m3", b"x")]
    m = _manifest_for(cache, {n: _sha(d) for n, d in members})
    m["hmac_sha256"] = cache_archive.sign(m, key.read_bytes().strip())
    archive = tmp_path / "c.tgz"
    _write_archive(archive, m, members)
    with pytest.raises(cache.CacheError, match="limit|more than"):
        cache_archive.import_(archive, trust=True, key_file=key)
    assert not (cache.cache_root() / "inductor").exists()
    root = cache.cache_root()
    assert not root.exists() or not [p for p in root.iterdir() if p.name.startswith(".import-")]  # staging gone


def test_half_done_import_is_impossible(cache_env, tmp_path, key):
    """The archive has a file where this machine has a folder: refused before anything moves."""
    cache = cache_env
    _populate(cache)
    archive = tmp_path / "c.tgz"
    cache_archive.export(archive, key_file=key)
    root = cache.cache_root()
    (root / "inductor" / "ab" / "cab.py").unlink()
    (root / "inductor" / "ab" / "cab.py").mkdir()  # a folder now
    (root / "inductor" / "fxgraph" / "ab" / "entry").write_bytes(b"local")
    with pytest.raises(cache.CacheError, match="is a folder where the archive has a file"):
        cache_archive.import_(archive, trust=True, key_file=key)
    assert (root / "inductor" / "fxgraph" / "ab" / "entry").read_bytes() == b"local"  # untouched


def test_non_regular_file_is_refused_quickly(cache_env):
    t0 = time.monotonic()
    with pytest.raises(cache_env.CacheError, match="not a regular file"):
        cache_archive.import_("/dev/zero")
    assert time.monotonic() - t0 < 5


def test_tuning_import_is_validated_entry_by_entry_and_merged(cache_env, tmp_path, caplog):
    cache = cache_env
    cache.store("probe", "local", [1])
    key = cache.environment_key()
    entries = {"probe": {"shipped": {"config": [2]}, "broken": {"no": "config"}}, "rms": "not a table"}
    tfile = f"tuning/{cache.key_id(key)}.json"
    data = cache._encode(key, entries)
    archive = tmp_path / "c.tgz"
    _write_archive(archive, _manifest_for(cache, {tfile: _sha(data)}), [(tfile, data)])
    with caplog.at_level(logging.WARNING, logger="tri_inductor.cache"):
        cache_archive.import_(archive)
    assert "unusable entr" in caplog.text
    assert cache.lookup("probe", "local") == [1] and cache.lookup("probe", "shipped") == [2]
    assert cache.lookup("probe", "broken") is None
    assert set(cache.db().entries()) == {"probe"}


def test_export_does_not_follow_symlinks_out_of_the_cache(cache_env, tmp_path):
    cache = cache_env
    _populate(cache)
    secret = tmp_path / "secret"
    secret.mkdir()
    (secret / "id_rsa").write_text("PRIVATE")
    (cache.cache_root() / "inductor" / "link_dir").symlink_to(secret)
    (cache.cache_root() / "inductor" / "link_file").symlink_to(secret / "id_rsa")
    archive = tmp_path / "c.tgz"
    m = cache_archive.export(archive)
    assert not [n for n in m["files"] if "link" in n]
    assert b"PRIVATE" not in b"".join(d for _, d in _members(archive))


def test_export_errors_leave_no_temp_file(cache_env, tmp_path, monkeypatch, capsys):
    from tri_inductor.cli import main

    cache = cache_env
    _populate(cache)
    assert main(["cache", "export", ""]) == EXIT_BAD_INPUT
    assert "empty" in capsys.readouterr().err
    out = tmp_path / "out"
    out.mkdir()

    def boom(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(cache_archive, "_prepend_manifest", boom)
    with pytest.raises(OSError):
        cache_archive.export(out / "c.tgz")
    assert list(out.iterdir()) == []


def test_clear_removes_a_file_where_a_folder_belongs_and_says_so(cache_env, capsys):
    from tri_inductor.cli import main

    cache = cache_env
    root = cache.cache_root()
    root.mkdir(parents=True)
    (root / "inductor").write_bytes(b"not a folder")
    cache.store("probe", "s", [1])
    assert main(["cache", "clear"]) == EXIT_OK
    out = capsys.readouterr().out
    assert f"{root / 'inductor'} (a file, not a folder)" in out and f"{root / 'tuning'} (2 files" in out  # the DB and its lock
    assert not (root / "inductor").exists() and not (root / "tuning").exists()
    assert main(["cache", "clear"]) == EXIT_OK
    assert "nothing to remove" in capsys.readouterr().out


def test_claim_heals_a_file_where_a_folder_belongs(cache_env, monkeypatch, caplog):
    cache = cache_env
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    monkeypatch.delenv("TRITON_CACHE_DIR", raising=False)
    root = cache.cache_root()
    root.mkdir(parents=True)
    (root / "inductor").write_bytes(b"x")
    with caplog.at_level(logging.WARNING, logger="tri_inductor.cache"):
        cache.claim_default_dirs()
    assert (root / "inductor").is_dir() and "is a file, not a folder" in caplog.text


def test_cache_info_reports_our_folders_in_use(cache_env, tmp_path):
    """The CLI itself makes Inductor write its /tmp default into the environment; that must not
    make our own folder look unused."""
    env = {k: v for k, v in os.environ.items() if k not in ("TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR")}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run([sys.executable, "-c", "from tri_inductor.cli import main; main(['cache', 'info', '--json'])"],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads(proc.stdout)
    assert data["dirs"]["inductor"]["in_use"] and data["dirs"]["triton"]["in_use"], data


# ============================================================================ damaged cache files


def test_tuning_db_nested_deep_is_ignored_with_a_warning(cache_env, caplog):
    cache = cache_env
    path = cache.db().path
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("[" * 200_000 + "]" * 200_000)
    cache.forget_loaded()
    with caplog.at_level(logging.WARNING, logger="tri_inductor.cache"):
        assert cache.lookup("probe", "s") is None
        cache.store("probe", "s", [3])  # rewritten
    assert "nested too deeply" in caplog.text and cache.counters()["corrupt"] == 1
    cache.forget_loaded()
    assert cache.lookup("probe", "s") == [3]
    assert cache.info()["tuning"][0].get("damaged") is None


def test_registered_validator_drops_bad_configs(cache_env, caplog, monkeypatch):
    """The hook the GEMM package uses: a stored config that fails it is a miss, never compiled."""
    cache = cache_env
    monkeypatch.setitem(cache._VALIDATORS, "mm", lambda c: None if c[5] > 0 else "num_warps must be > 0")
    cache.store("mm", "good", [16, 64, 256, 1, 1, 4, 4])
    cache.store("mm", "bad", [16, 64, 256, 1, 1, 0, 4])
    cache.forget_loaded()
    with caplog.at_level(logging.WARNING, logger="tri_inductor.cache"):
        assert cache.lookup("mm", "bad") is None
    assert cache.lookup("mm", "good") == [16, 64, 256, 1, 1, 4, 4]
    assert "num_warps must be > 0" in caplog.text


def test_damaged_generated_py_is_rewritten_with_one_warning(tmp_path, monkeypatch, caplog):
    """Inductor imports an existing <hash>.py as it is; ours compares it with the code it must hold."""
    from torch._inductor.codecache import PyCodeCache

    from tri_inductor.cache_heal import install_output_code_check

    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    install_output_code_check()
    src = "EPS = 1e-06\ndef f():\n    return EPS\n"
    key, path = PyCodeCache.write(src)
    for damage in ("EPS = 1.0\ndef f():\n    return EPS\n", "EPS = 1e-06\ndef f(:\n"):  # edited, truncated
        Path(path).write_text(damage)
        PyCodeCache.modules_no_attr.pop(path, None)
        with caplog.at_level(logging.WARNING, logger="tri_inductor.cache"):
            caplog.clear()
            mod = PyCodeCache.load(src)
        assert mod.f() == 1e-06 and Path(path).read_text() == src
        assert caplog.text.count("does not hold the code Inductor generated") == 1
    caplog.clear()
    PyCodeCache.load(src)  # intact: silent
    assert "does not hold" not in caplog.text


# ============================================================================ strict covers everything compiled


def test_backward_graph_is_audited_at_compile_time(interpreter):
    """AOTAutograd compiles the backward lazily (at the first .backward()); ours asks for it at
    compile time, so strict sees its kernels (here extern mm: the CPU interpreter has no Triton GEMM)."""
    import torch

    from tri_inductor import backend
    from tri_inductor.audit import TritonOnlyViolation

    torch.manual_seed(0)
    lin = torch.nn.Linear(32, 32, bias=False)
    x = torch.randn(8, 32, requires_grad=True)
    before = {id(r) for r in backend.last_audit()}  # by identity: the kept reports are bounded
    with pytest.raises(Exception) as e:
        torch.compile(lin, backend="tri_inductor", options={"strict": True, "patterns": ["rms_norm"]})(x)
    assert isinstance(e.value, TritonOnlyViolation) or isinstance(e.value.__cause__, TritonOnlyViolation) \
        or "TritonOnlyViolation" in str(e.value)
    assert "(backward)" in str(e.value)
    new = [r for r in backend.last_audit() if id(r) not in before]
    bw = [r for r in new if r.graph.endswith("(backward)")]
    assert len(bw) == 1 and {v.op for v in bw[0].violations} == {"aten.mm"}
    # Default mode: reports, runs, and the gradients are right.
    torch._dynamo.reset()
    w = torch.randn(32, requires_grad=True)

    def f(x, w):
        return (torch.tanh(x) * w).sum()

    x2 = torch.randn(8, 32, requires_grad=True)
    before = {id(r) for r in backend.last_audit()}
    torch.compile(f, backend="tri_inductor", options={"strict": True})(x2, w).backward()
    ref_x, ref_w = torch.autograd.grad(f(x2, w), (x2, w))
    assert torch.allclose(x2.grad, ref_x, rtol=1e-5, atol=1e-6) and torch.allclose(w.grad, ref_w, rtol=1e-5, atol=1e-6)
    graphs = [r.graph for r in backend.last_audit() if id(r) not in before]
    assert len(graphs) == 2 and graphs[1].endswith("(backward)"), graphs


def test_strict_fails_on_graph_breaks(caplog):
    """Ops under torch._dynamo.disable run eagerly (ATen): strict fails and names the break;
    default mode warns and runs."""
    import torch

    @torch._dynamo.disable
    def outside(x):
        return torch.sin(x)

    def f(x):
        return outside(x * 2) + 1

    x = torch.randn(8)
    with pytest.raises(Exception) as e:
        torch.compile(f, backend="tri_inductor", options={"strict": True, "codegen_only": True})(x)
    assert "graph break" in str(e.value) and "torch.compiler.disable" in str(e.value)
    torch._dynamo.reset()
    with caplog.at_level(logging.WARNING, logger="tri_inductor.audit"):
        out = torch.compile(f, backend="tri_inductor", options={"codegen_only": True})(x)
    assert torch.allclose(out, torch.sin(x * 2) + 1) and "graph break" in caplog.text
