"""tri_inductor's compile/tuning cache: where it lives, what keys it, and a small tuning DB.

Layout (root = ``TRI_INDUCTOR_CACHE_DIR``, else ``$XDG_CACHE_HOME/tri_inductor``, else
``~/.cache/tri_inductor``)::

    <root>/tuning/<key_id>.json   our tuning results (GEMM tile config per (N, K, M bucket), ...)
                                  for one environment key; one file per key, so an upgrade or a
                                  different card simply finds no file (a miss), never a wrong entry
    <root>/inductor/              TORCHINDUCTOR_CACHE_DIR, when the user has not chosen one
    <root>/triton/                TRITON_CACHE_DIR, when the user has not chosen one

Why we take over Inductor's and Triton's cache dirs when unset (:func:`claim_default_dirs`):
Inductor's default is ``/tmp/torchinductor_<user>`` (gone after a reboot, so a restarted server
recompiles everything) and Triton's is ``~/.triton/cache`` (outside anything we can export or
clear).  Under one root, ``tri-inductor cache export/clear`` covers the whole warm start.  A user
value is never overridden.  Under vLLM, vLLM itself points TORCHINDUCTOR_CACHE_DIR into its own
``VLLM_CACHE_ROOT/torch_compile_cache``; export/clear can include that tree too (``--vllm``).

The environment key (:func:`environment_key`): card name + compute capability, torch / CUDA /
triton versions and our :func:`~tri_inductor.fingerprint.package_hash` (the sources that shape
generated code: kernels, patterns, passes, settings, shipped tuned tables; not the CLIs or the
auditor).  :func:`compile_hash` is that key plus :func:`~tri_inductor.fingerprint.codegen_inputs`
(PDL on/off, the GEMM tuning table's content) as one string, for vLLM's ``compute_hash`` and our
passes' ``uuid()``.

The tuning DB's *contents* are deliberately not part of :func:`compile_hash`: a cold compile
stores entries while it runs, and a key that changed under it would make every warm start miss.
Compiled artifacts keep the configs they were compiled with (consistent); a fresh tuning result
reaches a graph at its next cache miss.
"""
from __future__ import annotations

import atexit
import contextlib
import hashlib
import json
import logging
import os
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from . import envs
from .cache_counters import count, counters, reset_counters  # noqa: F401  (cache.counters() etc.)

log = logging.getLogger("tri_inductor.cache")

ENV_DIR = "TRI_INDUCTOR_CACHE_DIR"
ENV_STATS = "TRI_INDUCTOR_CACHE_STATS"  # write counters (JSON) to this file at exit (envs.py)
FORMAT = 1
# Fields of the environment key that must match for an imported cache to be usable.
KEY_FIELDS = ("card", "capability", "torch", "cuda", "triton", "package_hash")
SUBDIRS = ("tuning", "inductor", "triton")


class CacheError(RuntimeError):
    """A cache archive cannot be used here (wrong card/versions, damaged, not ours)."""


# ----------------------------------------------------------------------------- locations


def cache_root() -> Path:
    """The cache folder (not created)."""
    env = envs.cache_dir()
    if env is not None:
        return env
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "tri_inductor"


def tuning_dir() -> Path:
    return cache_root() / "tuning"


def vllm_compile_cache_dir() -> Path:
    """vLLM's compile cache (``$VLLM_CACHE_ROOT/torch_compile_cache``), same default as vLLM."""
    root = os.environ.get("VLLM_CACHE_ROOT")
    if not root:
        xdg = os.environ.get("XDG_CACHE_HOME")
        root = os.path.join(xdg, "vllm") if xdg else os.path.join(Path.home(), ".cache", "vllm")
    return Path(root).expanduser() / "torch_compile_cache"


def _inductor_default_dir() -> str | None:
    try:
        from torch._inductor.runtime.cache_dir_utils import default_cache_dir

        return default_cache_dir()
    except Exception:  # noqa: BLE001
        return None


def claim_default_dirs() -> dict[str, str]:
    """Point TORCHINDUCTOR_CACHE_DIR / TRITON_CACHE_DIR under our root where the user left them
    unset.  Returns what was set.  Call before the first compile of the process.

    Inductor's ``cache_dir()`` writes its /tmp default into the environment the first time it is
    asked, so a value equal to that default counts as "not chosen by the user"."""
    from .cache_heal import install_output_code_check

    install_output_code_check()  # a damaged generated .py is rewritten, not imported
    root = cache_root()
    claimed: dict[str, str] = {}
    if _would_claim("TORCHINDUCTOR_CACHE_DIR"):
        path = str(root / "inductor")
        _make_folder(Path(path))
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = claimed["TORCHINDUCTOR_CACHE_DIR"] = path
    if _would_claim("TRITON_CACHE_DIR"):
        path = str(root / "triton")
        _make_folder(Path(path))
        os.environ["TRITON_CACHE_DIR"] = claimed["TRITON_CACHE_DIR"] = path
    return claimed


def _would_claim(var: str) -> bool:
    """Is ``var`` unset by the user (so our folder is the one in use)?"""
    value = os.environ.get(var)
    if var == "TORCHINDUCTOR_CACHE_DIR":
        return value is None or value == _inductor_default_dir()
    return value is None


def _make_folder(path: Path) -> None:
    """``mkdir -p``; a file (or dangling link) where our folder belongs is removed, with a warning,
    rather than failing every compile with FileExistsError."""
    if (path.exists() or path.is_symlink()) and not path.is_dir():
        log.warning("tri_inductor cache: %s is a file, not a folder; removing it", path)
        path.unlink()
    path.mkdir(parents=True, exist_ok=True)


# ----------------------------------------------------------------------------- the key


def _nvml_card() -> tuple[str, str] | None:
    """Card of the first visible GPU from NVML: no CUDA context (safe before vLLM forks)."""
    try:
        try:
            import pynvml  # type: ignore[import-not-found]
        except ImportError:
            from vllm.third_party import pynvml  # type: ignore[import-not-found,no-redef]  (vLLM's copy)

        pynvml.nvmlInit()
        visible = os.environ.get("CUDA_VISIBLE_DEVICES", "0").split(",")[0].strip() or "0"
        index = int(visible) if visible.isdigit() else 0
        h = pynvml.nvmlDeviceGetHandleByIndex(index)
        name = pynvml.nvmlDeviceGetName(h)
        major, minor = pynvml.nvmlDeviceGetCudaComputeCapability(h)
        return (name.decode() if isinstance(name, bytes) else str(name)), f"{major}.{minor}"
    except Exception:  # noqa: BLE001
        return None


def card(avoid_cuda_init: bool = False) -> tuple[str, str]:
    """(name, "major.minor") of the current GPU; ("none", "0.0") without one.

    Under ``codegen_only.fake_sm90`` torch reports the fake H100 (a name of its own, so
    codegen-only results never mix with a real card's).  ``avoid_cuda_init``: never create a
    CUDA context here (vLLM's front-end process, before it forks): NVML first (same answer in
    every process), then torch only if CUDA is already up, else "unknown"."""
    import torch

    if avoid_cuda_init:
        found = _nvml_card()
        if found is not None:
            return found
    try:
        if torch.cuda.is_initialized() or (not avoid_cuda_init and torch.cuda.is_available()):
            idx = torch.cuda.current_device()
            p = torch.cuda.get_device_properties(idx)
            return str(p.name), f"{p.major}.{p.minor}"
    except Exception:  # noqa: BLE001
        pass
    return ("unknown", "0.0") if avoid_cuda_init else ("none", "0.0")


def environment_key(avoid_cuda_init: bool = False) -> dict[str, str]:
    """What a cached compile or tuning result depends on, besides its own shape key."""
    import torch
    import triton

    from .fingerprint import package_hash

    name, cap = card(avoid_cuda_init)
    return {"card": name, "capability": cap, "torch": str(torch.__version__),
            "cuda": str(torch.version.cuda), "triton": str(triton.__version__),
            "package_hash": package_hash()}


def key_id(key: Mapping[str, str] | None = None) -> str:
    key = environment_key() if key is None else key
    return hashlib.sha256(json.dumps({k: key[k] for k in KEY_FIELDS}, sort_keys=True).encode()).hexdigest()[:16]


def compile_hash(extra: str = "", *, avoid_cuda_init: bool = False) -> str:
    """One hex string over the environment key + ``extra`` (our options/settings repr).

    For vLLM's ``CompilerInterface.compute_hash``, ``inductor_compile_config`` (the AOT cache is
    keyed without the compiler hash) and our passes' ``uuid()`` (Inductor's FX/AOTAutograd keys)."""
    from .fingerprint import codegen_inputs  # PDL, the tuning table: read now, not at import

    key = environment_key(avoid_cuda_init)
    blob = json.dumps({"key": {k: key[k] for k in KEY_FIELDS}, "extra": extra, "inputs": codegen_inputs()},
                      sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def describe_key(key: Mapping[str, Any]) -> str:
    return (f"card {key.get('card')!r} (sm {key.get('capability')}), torch {key.get('torch')} "
            f"(CUDA {key.get('cuda')}), triton {key.get('triton')}, tri_inductor source "
            f"{str(key.get('package_hash'))[:12]}")


# ----------------------------------------------------------------------------- counters / progress


def progress(message: str) -> None:
    """A progress line during cold compilation/tuning: our logger if someone listens at INFO
    (vLLM routes it into its log), else stderr, so a slow cold start is never silent."""
    logger = logging.getLogger("tri_inductor")
    if logger.isEnabledFor(logging.INFO) and logger.hasHandlers() and any(
            h.level <= logging.INFO for h in _handlers(logger)):
        log.info("%s", message)
    else:
        print(f"[tri_inductor] {message}", file=sys.stderr, flush=True)


def _handlers(logger: logging.Logger) -> Iterator[logging.Handler]:
    c: logging.Logger | None = logger
    while c is not None:
        yield from c.handlers
        c = c.parent if c.propagate else None


def _write_stats_at_exit() -> None:
    try:
        path = envs.cache_stats()
    except envs.EnvError as e:
        log.warning("tri_inductor cache: %s; no stats written", e)
        return
    if path is None:
        return
    try:
        data: dict[str, Any] = {"tri_inductor": counters()}
        with contextlib.suppress(Exception):
            from torch._dynamo.utils import counters as dc

            data["inductor"] = dict(dc["inductor"])
            data["aot_autograd"] = dict(dc["aot_autograd"])
        _atomic_write(Path(path), json.dumps(data, indent=1).encode())
    except Exception:  # noqa: BLE001  (never fail an exiting process over stats)
        pass


# Registered always, the variable read at exit: nothing is read from the environment at import.
atexit.register(_write_stats_at_exit)


# ----------------------------------------------------------------------------- files


def _atomic_write(path: Path, data: bytes) -> None:
    """Write to a temp file in the same folder, fsync, rename: readers see old or new, never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """Exclusive lock across processes (tensor-parallel ranks tune and store concurrently)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+b") as f:
        try:
            import fcntl

            fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        except (ImportError, OSError):  # no flock (Windows, some network FS): best effort
            pass
        try:
            yield
        finally:
            with contextlib.suppress(Exception):
                import fcntl

                fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def _checksum(body: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _encode(key: Mapping[str, str], entries: Mapping[str, Any]) -> bytes:
    body = {"format": FORMAT, "key": dict(key), "entries": entries}
    return json.dumps({**body, "sha256": _checksum(body)}, indent=1, sort_keys=True).encode()


def _decode(path: Path, key: Mapping[str, str]) -> dict[str, dict[str, Any]]:
    """Entries of a tuning file; {} (with a warning naming the file) if it is damaged or foreign."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return {}
    except OSError as e:
        _warn_bad(path, f"cannot be read ({e.strerror})")
        return {}
    try:
        doc = json.loads(raw)
        body = {"format": doc["format"], "key": doc["key"], "entries": doc["entries"]}
        ok = doc.get("sha256") == _checksum(body)
    except RecursionError:  # nested thousands deep: corrupt or hostile, never a crash at start-up
        _warn_bad(path, "is nested too deeply to be a tuning file (corrupt)")
        return {}
    except (ValueError, KeyError, TypeError):
        _warn_bad(path, f"is not a complete tuning file (truncated or corrupt, {len(raw)} bytes)")
        return {}
    if not ok:
        _warn_bad(path, "fails its checksum (corrupt or edited)")
        return {}
    if (body["format"] != FORMAT or not isinstance(body["key"], dict)
            or {k: body["key"].get(k) for k in KEY_FIELDS} != {k: key[k] for k in KEY_FIELDS}):
        # Same file name, other key: a hash collision or a hand-copied file. Never use it.
        _warn_bad(path, f"belongs to another environment ({describe_key(body['key'])})")
        return {}
    entries = body["entries"]
    if not isinstance(entries, dict):
        _warn_bad(path, "has a malformed entry table")
        return {}
    return _valid_entries(path, entries)


# kernel name -> check(config) returning why a stored config is unusable, or None.  The GEMM
# package registers one (num_warps a power of two, block sizes, split_k bounds ...): an entry
# that fails it is dropped with a warning, as a miss, before anything compiles with it.
_VALIDATORS: dict[str, Any] = {}


def register_validator(kernel: str, check) -> None:
    """``check(config) -> str | None``: why ``config`` (as stored for ``kernel``) must not be used."""
    _VALIDATORS[kernel] = check


def _valid_entries(path: Path, entries: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """The entries of a tuning file that are well-formed: ``{kernel: {shape_key: {"config": ...}}}``
    with the kernel's validator (if any) accepting the config.  The rest are dropped, with one
    warning naming the first."""
    good: dict[str, dict[str, Any]] = {}
    dropped: list[str] = []
    for kernel, table in entries.items():
        if not isinstance(table, dict):
            dropped.append(f"{kernel}: not a table")
            continue
        check = _VALIDATORS.get(kernel)
        for shape_key, rec in table.items():
            why = None
            if not isinstance(rec, dict) or "config" not in rec:
                why = "no config"
            elif check is not None:
                try:
                    why = check(rec["config"])
                except Exception as e:  # noqa: BLE001  (a malformed config is bad data, not a crash)
                    why = f"{type(e).__name__}: {e}"
            if why:
                dropped.append(f"{kernel}[{shape_key}]: {why}")
            else:
                good.setdefault(kernel, {})[shape_key] = rec
    if dropped:
        _warn_bad(path, f"has {len(dropped)} unusable entr{'y' if len(dropped) == 1 else 'ies'} "
                        f"(e.g. {dropped[0]}); using the others")
    return good


_warned: set[tuple[str, int, int]] = set()


def _warn_bad(path: Path, why: str) -> None:
    try:
        st = path.stat()
        ident = (str(path), st.st_size, st.st_mtime_ns)
    except OSError:
        ident = (str(path), -1, -1)
    if ident in _warned:  # the same damaged file, met again (lookup, then store): say it once
        return
    _warned.add(ident)
    count("corrupt")
    log.warning("tri_inductor cache: %s %s; ignoring it (its entries will be re-tuned and the file "
                "rewritten)", path, why)


# ----------------------------------------------------------------------------- the tuning DB


class TuningDB:
    """Tuning results for one environment key: ``{kernel: {shape_key: record}}`` in one file.

    ``lookup`` is served from memory after the first read; ``store`` re-reads the file under a
    lock, merges and rewrites it atomically (other processes may have added entries)."""

    def __init__(self, root: Path | None = None, key: Mapping[str, str] | None = None) -> None:
        self.key = dict(environment_key() if key is None else key)
        self.path = (root or tuning_dir()) / f"{key_id(self.key)}.json"
        self._entries: dict[str, dict[str, Any]] | None = None
        self._lock = threading.Lock()

    def _load(self) -> dict[str, dict[str, Any]]:
        if self._entries is None:
            self._entries = _decode(self.path, self.key)
        return self._entries

    def lookup(self, kernel: str, shape_key: str) -> Any | None:
        with self._lock:
            rec = self._load().get(kernel, {}).get(shape_key)
        if isinstance(rec, dict) and "config" in rec:
            count("hits")
            return rec["config"]
        count("misses")
        return None

    def store(self, kernel: str, shape_key: str, config: Any, **info: Any) -> None:
        """Persist ``config`` (JSON-able) for (kernel, shape_key); ``info``: timings etc."""
        record = {"config": config, "stored_at": round(time.time()), **info}
        json.dumps(record)  # fail here, not after the lock, on a non-JSON value
        with self._lock, _file_lock(self.path.with_suffix(".lock")):
            on_disk = _decode(self.path, self.key) if self.path.exists() else {}
            on_disk.setdefault(kernel, {})[shape_key] = record
            _atomic_write(self.path, _encode(self.key, on_disk))
            self._entries = on_disk
        count("stores")

    def entries(self) -> dict[str, dict[str, Any]]:
        with self._lock:
            return json.loads(json.dumps(self._load()))


_DBS: dict[tuple[str, str], TuningDB] = {}
_DBS_LOCK = threading.Lock()


def db() -> TuningDB:
    """The DB for the current root and environment (codegen-only mode has its own card)."""
    key = environment_key()
    ident = (str(tuning_dir()), key_id(key))
    with _DBS_LOCK:
        if ident not in _DBS:
            _DBS[ident] = TuningDB(key=key)
        return _DBS[ident]


def lookup(kernel: str, shape_key: str) -> Any | None:
    """The stored config for ``kernel`` at ``shape_key`` in this environment, or None (a miss)."""
    return db().lookup(kernel, shape_key)


def store(kernel: str, shape_key: str, config: Any, **info: Any) -> None:
    db().store(kernel, shape_key, config, **info)


_FORGET_HOOKS: list[Callable[[], None]] = []


def on_forget(hook: Callable[[], None]) -> None:
    """Call ``hook`` whenever loaded tuning results are dropped (:func:`forget_loaded`): a module
    that memoises choices made from the DB registers its ``clear`` here."""
    if hook not in _FORGET_HOOKS:
        _FORGET_HOOKS.append(hook)


def forget_loaded() -> None:
    """Drop in-memory DBs (after clear/import, or in tests) and what was memoised from them."""
    with _DBS_LOCK:
        _DBS.clear()
    for hook in list(_FORGET_HOOKS):
        hook()


# ----------------------------------------------------------------------------- info / clear


def _size(path: Path) -> tuple[int, int]:
    files = total = 0
    if path.is_dir():
        for p in path.rglob("*"):
            if p.is_file():
                files += 1
                with contextlib.suppress(OSError):
                    total += p.stat().st_size
    return files, total


def info() -> dict[str, Any]:
    """What is cached where, for ``tri-inductor cache info``."""
    root = cache_root()
    key = environment_key()
    current = key_id(key)
    tuning = []
    tdir = root / "tuning"
    for p in sorted(tdir.glob("*.json")) if tdir.is_dir() else []:
        entry: dict[str, Any] = {"file": str(p), "current": p.stem == current}
        try:
            doc = json.loads(p.read_bytes())
            entry["key"] = doc.get("key")
            entry["entries"] = {str(k): len(v) for k, v in doc.get("entries", {}).items()}
        except (OSError, ValueError, RecursionError, AttributeError, TypeError):
            entry["damaged"] = True
        tuning.append(entry)
    dirs = {}
    for name in ("inductor", "triton"):
        files, size = _size(root / name)
        var = "TORCHINDUCTOR_CACHE_DIR" if name == "inductor" else "TRITON_CACHE_DIR"
        value = os.environ.get(var)
        # Ours when the variable points at it, or when it is unset (or Inductor's own /tmp default,
        # which Inductor writes into the environment itself): then a compile claims ours.
        in_use = _would_claim(var) or (bool(value) and os.path.realpath(value) == os.path.realpath(root / name))
        dirs[name] = {"path": str(root / name), "files": files, "bytes": size, "in_use": in_use}
    vdir = vllm_compile_cache_dir()
    vfiles, vsize = _size(vdir)
    return {"root": str(root), "key": key, "key_id": current, "tuning": tuning, "dirs": dirs,
            "env": {v: os.environ.get(v) for v in ("TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR", ENV_DIR)},
            "vllm": {"path": str(vdir), "files": vfiles, "bytes": vsize}}


def clear(include_vllm: bool = False) -> list[str]:
    """Delete our sub-folders (never the root itself: it may be a folder the user shares);
    ``include_vllm``: vLLM's torch_compile_cache too.  Whatever is there goes, a folder, a file
    or a link.  Returns one line per path saying what was removed; raises OSError naming a path
    that could not be removed."""
    root = cache_root()
    targets = [root / name for name in SUBDIRS] + ([vllm_compile_cache_dir()] if include_vllm else [])
    removed = []
    for p in targets:
        if p.is_symlink() or (p.exists() and not p.is_dir()):
            kind = "link" if p.is_symlink() else "file"
            p.unlink()
            removed.append(f"{p} (a {kind}, not a folder)")
        elif p.is_dir():
            files, size = _size(p)
            shutil.rmtree(p)
            removed.append(f"{p} ({files} files, {size} bytes)")
    forget_loaded()
    return removed
