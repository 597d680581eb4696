"""Compile-cache reuse (issue 5), CPU only.

* tuning DB (tri_inductor.cache): hit/miss, key change -> miss, corrupt/truncated file -> warning
  naming it + miss + rewrite, export/import round trip, refused import naming both sides, CLI;
* tuner (tri_inductor.tuning): benchmarks each candidate once, stores the winner, a second
  lookup (same or new process) benchmarks nothing;
* Inductor's caches in codegen-only mode (fake sm_90): cold -> miss, warm in a new process -> hit;
  changed kernel source / our settings / triton version / card -> miss; truncated Inductor cache
  files -> a recompile, not a crash.  Cold and warm run in separate subprocesses where a fresh
  process matters (the child is this file run as a script).
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from tri_inductor import cache_archive

ROOT = Path(__file__).resolve().parents[1]
HERE = Path(__file__).resolve()


# ============================================================================ tuning DB


@pytest.fixture
def cache_env(tmp_path, monkeypatch):
    """A private cache root and vLLM cache root; fresh counters and in-memory DBs."""
    from tri_inductor import cache

    monkeypatch.setenv("TRI_INDUCTOR_CACHE_DIR", str(tmp_path / "tri"))
    monkeypatch.setenv("VLLM_CACHE_ROOT", str(tmp_path / "vllm"))
    cache.forget_loaded()
    cache.reset_counters()
    yield cache
    cache.forget_loaded()
    cache.reset_counters()


def _other_key(cache, **changes):
    key = dict(cache.environment_key())
    key.update(changes)
    return key


def test_store_then_lookup_hits_in_a_new_db(cache_env):
    cache = cache_env
    assert cache.lookup("mm", "N=4096,K=4096,M<=16,bfloat16") is None
    cache.store("mm", "N=4096,K=4096,M<=16,bfloat16", [16, 64, 256, 1, 1, 4, 4], us=12.5)
    cache.forget_loaded()  # as a new process would: read the file again
    assert cache.lookup("mm", "N=4096,K=4096,M<=16,bfloat16") == [16, 64, 256, 1, 1, 4, 4]
    assert cache.counters()["hits"] == 1 and cache.counters()["misses"] == 1
    assert cache.db().path.parent == Path(os.environ["TRI_INDUCTOR_CACHE_DIR"]) / "tuning"


@pytest.mark.parametrize("field,value", [("card", "NVIDIA H200"), ("capability", "10.0"),
                                         ("torch", "2.99.0"), ("triton", "9.9.9"),
                                         ("package_hash", "0" * 64)])
def test_other_environment_misses(cache_env, field, value):
    cache = cache_env
    cache.store("probe", "s", [1])
    other = cache.TuningDB(key=_other_key(cache, **{field: value}))
    assert other.path != cache.db().path
    assert other.lookup("probe", "s") is None
    assert cache.db().lookup("probe", "s") == [1]


def test_changed_kernel_source_misses(cache_env, monkeypatch):
    cache = cache_env
    cache.store("probe", "s", [1])
    import tri_inductor.fingerprint as fp

    monkeypatch.setattr(fp, "package_hash", lambda: "f" * 64)
    cache.forget_loaded()
    assert cache.lookup("probe", "s") is None


@pytest.mark.parametrize("damage", ["truncate", "flip", "garbage", "empty", "foreign_key"])
def test_damaged_tuning_file_is_a_miss_with_a_warning(cache_env, caplog, damage):
    cache = cache_env
    cache.store("probe", "s", [1, 2, 3])
    path = cache.db().path
    raw = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(raw[: len(raw) // 2])
    elif damage == "flip":  # still valid JSON, wrong content: only the checksum sees it
        path.write_bytes(raw.replace(b"3", b"7"))
    elif damage == "garbage":
        path.write_bytes(b"\x00\xff" * 50)
    elif damage == "empty":
        path.write_bytes(b"")
    else:  # a valid file of another environment copied under this name
        other = cache.TuningDB(root=path.parent / "x", key=_other_key(cache, card="Other GPU"))
        other.store("probe", "s", [9])
        shutil.copy(other.path, path)
    cache.forget_loaded()
    with caplog.at_level(logging.WARNING, logger="tri_inductor.cache"):
        assert cache.lookup("probe", "s") is None
    assert str(path) in caplog.text and "ignoring it" in caplog.text
    assert cache.counters()["corrupt"] == 1
    cache.store("probe", "s", [4])  # the damaged file is replaced by a valid one
    cache.forget_loaded()
    assert cache.lookup("probe", "s") == [4]


def test_atomic_store_leaves_no_temp_files(cache_env):
    cache = cache_env
    for i in range(5):
        cache.store("probe", f"s{i}", [i])
    files = sorted(p.name for p in cache.db().path.parent.iterdir())
    assert [f for f in files if f.endswith(".tmp")] == []
    assert len(cache.db().entries()["probe"]) == 5


def test_compile_hash_covers_key_and_settings(cache_env, monkeypatch):
    cache = cache_env
    base = cache.compile_hash("opts-a")
    assert base == cache.compile_hash("opts-a")
    assert base != cache.compile_hash("opts-b")
    import triton

    monkeypatch.setattr(triton, "__version__", "9.9.9")
    assert base != cache.compile_hash("opts-a")


# ============================================================================ export / import


def test_export_clear_import_round_trip(cache_env, tmp_path):
    """Default import: the tuning DB only (compiled artifacts skipped, rebuilt later); with the
    signing key and trust=True: everything (docs/cache.md, 'Trust')."""
    cache = cache_env
    cache.store("probe", "s", [1, 2])
    root = cache.cache_root()
    (root / "inductor" / "fxgraph").mkdir(parents=True)
    (root / "inductor" / "fxgraph" / "entry").write_bytes(b"artifact")
    vdir = cache.vllm_compile_cache_dir() / "abc" / "rank_0_0"
    vdir.mkdir(parents=True)
    (vdir / "model").write_bytes(b"aot")
    key = tmp_path / "key"
    key.write_bytes(b"k" * 32)
    archive = tmp_path / "out" / "cache.tar.gz"
    manifest = cache_archive.export(archive, key_file=key)
    assert set(manifest["files"]) == {f"tuning/{cache.key_id()}.json", "inductor/fxgraph/entry",
                                      "vllm/abc/rank_0_0/model"}
    removed = cache.clear(include_vllm=True)
    assert not (root / "tuning").exists() and not cache.vllm_compile_cache_dir().exists() and removed
    assert cache.lookup("probe", "s") is None
    got = cache_archive.import_(archive)
    assert cache.lookup("probe", "s") == [1, 2]
    assert not (root / "inductor").exists() and not vdir.exists()
    assert got["skipped"] == ["inductor/fxgraph/entry", "vllm/abc/rank_0_0/model"]
    cache_archive.import_(archive, trust=True, key_file=key)
    assert cache.lookup("probe", "s") == [1, 2]
    assert (root / "inductor" / "fxgraph" / "entry").read_bytes() == b"artifact"
    assert (vdir / "model").read_bytes() == b"aot"


@pytest.mark.parametrize("field,value", [("card", "NVIDIA H200"), ("triton", "9.9.9"), ("torch", "2.99.0")])
def test_import_refuses_other_card_or_version(cache_env, tmp_path, monkeypatch, field, value):
    cache = cache_env
    cache.store("probe", "s", [1])
    archive = tmp_path / "c.tar.gz"
    cache_archive.export(archive)
    cache.clear()
    here = dict(cache.environment_key())
    theirs = dict(here, **{field: value})
    monkeypatch.setattr(cache, "environment_key", lambda avoid_cuda_init=False: dict(here))
    # Rewrite the manifest as if the archive came from the other machine.
    _rewrite_manifest(archive, lambda m: m.update(key=theirs))
    with pytest.raises(cache.CacheError) as e:
        cache_archive.import_(archive)
    msg = str(e.value)
    assert "refusing to import" in msg and str(value) in msg and str(here[field]) in msg and field in msg
    assert not (cache.cache_root() / "tuning").exists()  # nothing was written


def _rewrite_manifest(archive: Path, change) -> None:
    import io

    with tarfile.open(archive) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]
    with tarfile.open(archive, "w:gz") as tar:
        for m, data in members:
            if m.name == "manifest.json":
                manifest = json.loads(data)
                change(manifest)
                data = json.dumps(manifest).encode()
                m.size = len(data)
            tar.addfile(m, io.BytesIO(data))


@pytest.mark.parametrize("damage", ["truncate", "tamper", "not_tar"])
def test_import_refuses_damaged_archive(cache_env, tmp_path, damage):
    cache = cache_env
    cache.store("probe", "s", [1])
    archive = tmp_path / "c.tar.gz"
    cache_archive.export(archive)
    cache.clear()
    if damage == "truncate":
        raw = archive.read_bytes()
        archive.write_bytes(raw[: len(raw) * 2 // 3])
    elif damage == "tamper":
        _rewrite_manifest(archive, lambda m: m["files"].update({k: "0" * 64 for k in m["files"]}))
    else:
        archive.write_bytes(b"hello")
    with pytest.raises(cache.CacheError):
        cache_archive.import_(archive)
    assert not (cache.cache_root() / "tuning").exists()


def test_cli(cache_env, tmp_path, capsys):
    from tri_inductor.cache_cli import cache_main
    from tri_inductor.cli import main

    cache = cache_env
    cache.store("probe", "s", [1])
    assert main(["cache", "info"]) == 0
    out = capsys.readouterr().out
    assert str(cache.cache_root()) in out and "probe 1" in out
    assert cache_main(["info", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["key_id"] == cache.key_id()
    archive = tmp_path / "x.tgz"
    assert main(["cache", "export", str(archive)]) == 0
    assert main(["cache", "clear"]) == 0
    assert cache.lookup("probe", "s") is None
    assert main(["cache", "import", str(archive)]) == 0
    assert cache.lookup("probe", "s") == [1]
    capsys.readouterr()
    assert main(["cache", "import", str(tmp_path / "missing.tgz")]) == 2
    assert "no such file" in capsys.readouterr().err
    assert main(["cache", "frobnicate"]) == 2
    assert main(["cache"]) == 2


# ============================================================================ tuner


def test_tuner_benchmarks_once_then_hits(cache_env, monkeypatch, capsys):
    import torch

    from tri_inductor import tuning
    from tri_inductor.patterns.gemm import configs as C
    from tri_inductor.patterns.gemm import tuning as T

    cache = cache_env
    monkeypatch.setattr(tuning, "can_tune", lambda: True)
    default = T.default_config(4096, 4096, 64, C.DEFAULT_DEVICE)
    cands = T.tuning_candidates(4096, 4096, 64, C.DEFAULT_DEVICE)
    assert len(set(cands)) >= 2
    fastest = next(c for c in cands if c != default)
    measured = []

    def measure(c):
        measured.append(c)
        return 0.001 if c == fastest else 0.002

    key = T.shape_key(4096, 4096, 64, torch.bfloat16)
    got = tuning.tune("mm", key, default, cands, measure, C.parse_cfg, list, label="mm test")
    n = len(set([default, *cands]))
    assert got == fastest
    assert cache.counters()["benchmarks"] == n == len(measured)
    err = capsys.readouterr().err
    assert "tuned mm test" in err and f"{n}/{n} candidates" in err  # one progress line per shape
    # the record keeps the fastest few with their times (the cost model's calibration data) and
    # the tuning's seconds count under its kernel family
    rec = cache.db().entries()["mm"][key]
    assert rec["ranking"][0] == [list(fastest), 1.0] and all(us == 2.0 for _, us in rec["ranking"][1:])
    assert len(rec["ranking"]) == min(n, tuning.RANKING_KEPT) and rec["compile_s"] == 0.0
    c = cache.counters()
    assert c["tune_gemm_s"] == c["tune_s"] > 0 and c["tune_attention_s"] == c["tune_moe_s"] == 0.0
    cache.forget_loaded()  # a warm start: new process, same files
    measured.clear()
    again = tuning.tune("mm", key, default, cands, measure, C.parse_cfg, list)
    assert again == fastest and measured == [] and cache.counters()["benchmarks"] == n


def test_tuner_skip_reason_keeps_the_default(cache_env, monkeypatch, capsys):
    from tri_inductor import tuning

    monkeypatch.setattr(tuning, "can_tune", lambda: True)
    got = tuning.tune("mm", "skip-key", "D", ["A", "B"], lambda c: 1.0, lambda r: r, str, label="mm skip",
                      skip_reason=lambda: "needs ~9 GiB")
    assert got == "D" and cache_env.counters()["benchmarks"] == 0 and cache_env.counters()["stores"] == 0
    assert "not tuning mm skip: needs ~9 GiB" in capsys.readouterr().err


def test_gemm_config_without_gpu_uses_the_default_and_stores_nothing(cache_env):
    import torch

    from tri_inductor import tuning
    from tri_inductor.patterns.gemm import configs as C
    from tri_inductor.patterns.gemm import ops as O
    from tri_inductor.patterns.gemm import tuning as T

    cache = cache_env
    assert not tuning.can_tune()
    dev = C.DEFAULT_DEVICE
    cfg = T.config_for(4096, 4096, 64, torch.bfloat16, dev, O.mm_launch)
    assert cfg == T.default_config(4096, 4096, 64, dev)
    assert cache.counters()["benchmarks"] == 0 and cache.counters()["stores"] == 0


def test_stored_gemm_config_is_used_and_invalid_one_is_not(cache_env, monkeypatch):
    import torch

    from tri_inductor import tuning
    from tri_inductor.patterns.gemm import configs as C
    from tri_inductor.patterns.gemm import ops as O
    from tri_inductor.patterns.gemm import tuning as T

    cache = cache_env
    dev = C.DEFAULT_DEVICE
    monkeypatch.setattr(tuning, "can_tune", lambda: False)
    key = T.shape_key(4096, 14336, 16, torch.bfloat16)
    cache.store("mm", key, [16, 128, 128, 1, 0, 4, 3])
    assert T.config_for(4096, 14336, 16, torch.bfloat16, dev, O.mm_launch) == C.Cfg(16, 128, 128, 1, 0, 4, 3)
    cache.store("mm", key, ["x"])
    cache.forget_loaded()
    assert T.config_for(4096, 14336, 16, torch.bfloat16, dev, O.mm_launch) == T.default_config(4096, 14336, 16, dev)


# ============================================================================ Inductor caches, codegen-only


def _child(steps: list[str], inductor_dir: Path, tri_dir: Path, pythonpath: str) -> list[dict]:
    env = dict(os.environ)
    env.update(TORCHINDUCTOR_CACHE_DIR=str(inductor_dir), TRI_INDUCTOR_CACHE_DIR=str(tri_dir),
               TRITON_CACHE_DIR=str(tri_dir / "triton"), TORCHINDUCTOR_COMPILE_THREADS="1")
    env.pop("TORCHINDUCTOR_FORCE_DISABLE_CACHES", None)
    env["PYTHONPATH"] = pythonpath + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run([sys.executable, str(HERE), "source_check", *steps], env=env, capture_output=True,
                          text=True, timeout=300, cwd=pythonpath)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    line = next(l for l in reversed(proc.stdout.splitlines()) if l.startswith("RESULT "))
    runs = json.loads(line[len("RESULT "):])
    assert runs[0]["module_file"].startswith(pythonpath), runs[0]  # the snapshot, not the live tree
    return runs[1:]


@pytest.fixture(scope="module")
def snapshot(tmp_path_factory) -> str:
    """A frozen copy of the package for the children: the package hash (part of every key) must
    not change between cold and warm because someone saved a file in the working tree."""
    dest = tmp_path_factory.mktemp("snapshot")
    shutil.copytree(ROOT / "tri_inductor", dest / "tri_inductor", ignore=shutil.ignore_patterns("__pycache__"))
    return str(dest)


@pytest.fixture(scope="module")
def fx_dirs(tmp_path_factory, snapshot):
    base = tmp_path_factory.mktemp("fxcache")
    return base / "inductor", base / "tri", snapshot


@pytest.fixture(scope="module")
def cold(fx_dirs):
    """First process: the base graph (cold), then our settings / triton version / card changed."""
    runs = _child(["uuid_tracks", "base", "patterns", "triton_version", "card"], *fx_dirs)
    return {r["step"]: r for r in runs}


def test_fx_cache_cold_misses(cold):
    assert cold["base"]["fxgraph_cache_miss"] >= 1 and cold["base"]["fxgraph_cache_hit"] == 0, cold["base"]


def _triton_entries(tri_dir: Path) -> set[str]:
    return {p.name for p in (tri_dir / "triton").iterdir()} if (tri_dir / "triton").is_dir() else set()


def test_fx_cache_warm_hit_in_new_process(cold, fx_dirs):
    before = _triton_entries(fx_dirs[1])
    w = _child(["base"], *fx_dirs)[0]
    assert w["fxgraph_cache_miss"] == 0 and w["fxgraph_cache_bypass"] == 0, w
    assert w["fxgraph_cache_hit"] >= 1 and w["autograd_cache_miss"] == 0, w
    assert w["tri"]["benchmarks"] == 0 and w["tri"]["stores"] == 0
    # every kernel the warm start loads is under the cold start's Triton key (same ptxas in both:
    # hooks.same_ptxas_as_inductor), so it compiles nothing
    assert before and _triton_entries(fx_dirs[1]) == before, sorted(_triton_entries(fx_dirs[1]) - before)


def test_fx_cache_misses_on_changed_settings(cold):
    assert cold["patterns"]["fxgraph_cache_miss"] >= 1, cold["patterns"]


@pytest.mark.parametrize("step", ["triton_version", "card"])
def test_fx_cache_misses_on_other_version_or_card(cold, step):
    # In one process Inductor's own system key is computed once (functools.cache), so only our
    # pass uuid can notice the change: this checks that our key covers versions and card.
    if not cold["uuid_tracks"]["value"]:
        pytest.skip("needs passes.py's uuid() to include tri_inductor.cache.compile_hash(...) "
                    "(docs/cache.md, 'Integration')")
    assert cold[step]["fxgraph_cache_miss"] >= 1, cold[step]


def test_fx_cache_misses_on_changed_kernel_source(cold, fx_dirs, tmp_path):
    ind, tri, snapshot = fx_dirs
    copy = tmp_path / "src"
    shutil.copytree(Path(snapshot) / "tri_inductor", copy / "tri_inductor")
    lin = copy / "tri_inductor" / "patterns" / "gemm" / "kernels.py"
    lin.write_text(lin.read_text() + "\n# an edited kernel file\n")
    r = _child(["base"], ind, tri, str(copy))[0]
    assert r["fxgraph_cache_miss"] >= 1 and r["fxgraph_cache_hit"] == 0, r


def test_truncated_inductor_cache_files_recompile(cold, fx_dirs, tmp_path):
    ind, tri, snapshot = fx_dirs
    damaged_dir = tmp_path / "inductor"
    shutil.copytree(ind, damaged_dir)
    damaged = 0
    for sub in ("fxgraph", "aotautograd"):
        for p in (damaged_dir / sub).rglob("*") if (damaged_dir / sub).exists() else []:
            if p.is_file():
                p.write_bytes(p.read_bytes()[: p.stat().st_size // 3])
                damaged += 1
    assert damaged
    r = _child(["base"], damaged_dir, tri, snapshot)[0]  # no crash: damaged entries are recompiled
    assert r["fxgraph_cache_hit"] == 0 and r["fxgraph_cache_miss"] >= 1, r


def test_damaged_generated_py_is_rewritten_not_imported(cold, fx_dirs, tmp_path):
    """Inductor imports an existing output-code / kernel .py as it is; a truncated one failed every
    compile until `cache clear`. Now it is rewritten from the cache entry's source: a hit, no crash."""
    ind, tri, snapshot = fx_dirs
    damaged_dir = tmp_path / "inductor"
    shutil.copytree(ind, damaged_dir)
    damaged = 0
    for p in damaged_dir.rglob("*.py"):
        text = p.read_text(errors="replace")
        if "def call(" in text or "@triton.jit" in text:
            p.write_text(text[: len(text) // 3])
            damaged += 1
    assert damaged
    r = _child(["base"], damaged_dir, tri, snapshot)[0]
    assert r["fxgraph_cache_hit"] >= 1 and r["fxgraph_cache_miss"] == 0, r
    assert r["tri"]["corrupt"] >= 1, r  # each rewrite is counted (and warned about once)


# ============================================================================ child process


def _child_main(steps: list[str]) -> None:
    import torch
    from torch import nn

    from tri_inductor import cache
    from tri_inductor.testing.codegen_only import H100_PROPS

    class Tiny(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.norm_w = nn.Parameter(torch.ones(256))
            self.up = nn.Linear(256, 512, bias=False)
            self.down = nn.Linear(256, 256, bias=False)

        def forward(self, x):
            h = x.float()
            h = (h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + 1e-6)).to(x.dtype) * self.norm_w
            g, u = self.up(h).chunk(2, dim=-1)
            return x + self.down(torch.nn.functional.silu(g) * u)

    torch.manual_seed(0)
    model = Tiny().to(torch.bfloat16)
    x = torch.randn(16, 256, dtype=torch.bfloat16)
    from torch._dynamo.utils import counters

    out = []
    for step in steps:
        if step == "source_check":
            import tri_inductor

            out.append({"module_file": tri_inductor.__file__})
            continue
        if step == "uuid_tracks":  # does our pass uuid follow the environment key?
            import triton

            from tri_inductor.passes import TriInductorPatternPass

            p, real = TriInductorPatternPass(), triton.__version__
            a = p.uuid()
            triton.__version__ = "9.9.9"
            out.append({"step": step, "value": p.uuid() != a})
            triton.__version__ = real
            continue
        options = {"codegen_only": True}
        if step == "patterns":
            options["patterns"] = ["linear", "rms_norm"]
        elif step == "triton_version":
            import triton

            triton.__version__ = "9.9.9"
        elif step == "card":
            H100_PROPS["name"] = "NVIDIA H200 (codegen-only)"
        torch._dynamo.reset()
        counters.clear()
        before = cache.counters()
        fn = torch.compile(model, backend="tri_inductor", options=options)
        with torch.no_grad():
            fn(x)
        ind, aot = counters["inductor"], counters["aot_autograd"]
        out.append({"step": step, "fxgraph_cache_hit": ind["fxgraph_cache_hit"],
                    "fxgraph_cache_miss": ind["fxgraph_cache_miss"],
                    "fxgraph_cache_bypass": ind["fxgraph_cache_bypass"],
                    "autograd_cache_hit": aot["autograd_cache_hit"],
                    "autograd_cache_miss": aot["autograd_cache_miss"],
                    "tri": {k: v - before[k] for k, v in cache.counters().items()}})
    print("RESULT " + json.dumps(out), flush=True)


if __name__ == "__main__":
    _child_main(sys.argv[1:])
