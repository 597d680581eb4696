"""Triton compiles in worker processes: the compile-ahead batches off this process's GIL.

Triton's frontend (Python AST -> TTIR) holds the GIL, so compile threads in vLLM's process slow
its main thread (on the H200 at 2600037, with 653 tuning candidates compiling ahead: Dynamo 5.3 s
vs vLLM's 2.9 s, our pattern registration 8.6 s vs 3.1 s on a 2-core CPU with nothing beside it).
Here a batch's launches are first run in this process with Triton's ``jit_cache_hook`` catching
each compile before it starts (binding and specialisation only: cheap); what it catches is
Triton's own specialization record (the JSON ``JITFunction.preload`` takes) and is compiled by
worker processes, each ``python -m tri_inductor.compile_workers``, into Triton's disk cache.
This process's first launch of such a kernel is then a cache hit (same source, specialisation,
options, target, ptxas and cache-invalidating environment: the same key).

The workers are given the target (never a GPU: nothing in them touches a device), this
process's Triton cache folder and ptxas, and plain JSON; they import the kernel by module and
name, so only kernels importable that way are sent (the rest compile here, as before). A kernel
a worker fails to compile is compiled here when it is first used (and fails there the usual way).
"""
from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import os
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any

log = logging.getLogger("tri_inductor.compile_workers")

Spec = tuple[str, str, str]  # module, qualified name, Triton's specialization data (JSON)
# (a capture records None for a kernel a worker could not import by name)

_REPLY = "tri_inductor-compiled "  # a reply line's prefix (whatever else a worker prints is skipped)
_CAPTURE: contextvars.ContextVar[list[Spec] | None] = contextvars.ContextVar("tri_inductor_capture",
                                                                               default=None)
_hook_lock = threading.Lock()


def _capture_hook(previous: Callable[..., Any] | None) -> Callable[..., Any]:
    def hook(*, key, repr, fn, compile, is_manual_warmup, already_compiled, **kw):
        caught = _CAPTURE.get()
        if caught is not None:  # not compiled now: by a worker, or (None) by the in-process batch
            module = fn.module if isinstance(fn.module, str) else getattr(fn.module, "__name__", "")
            caught.append((module, fn.name, compile["specialization_data"])
                          if _importable(module, fn.name, fn.jit_function) else None)
            return True
        if previous is not None:
            return previous(key=key, repr=repr, fn=fn, compile=compile, is_manual_warmup=is_manual_warmup,
                            already_compiled=already_compiled, **kw)
        return None

    hook.tri_inductor_capture = True
    return hook


def _importable(module: str, name: str, jit_function: Any) -> bool:
    """The worker finds this very kernel as ``module``'s attribute path ``name``."""
    obj = sys.modules.get(module)
    for part in name.split("."):
        obj = getattr(obj, part, None)
    while obj is not None and obj is not jit_function and hasattr(obj, "fn"):  # Autotuner / Heuristics
        obj = obj.fn
    return obj is jit_function


def _install_hook() -> None:
    from triton import knobs

    with _hook_lock:
        current = knobs.runtime.jit_cache_hook
        if getattr(current, "tri_inductor_capture", False):
            return
        knobs.runtime.jit_cache_hook = _capture_hook(current)


@contextlib.contextmanager
def capturing() -> Iterator[list[Spec]]:
    """Within it (this context only), Triton compiles are not run but recorded as specs."""
    _install_hook()
    caught: list[Spec] = []
    tok = _CAPTURE.set(caught)
    try:
        yield caught
    finally:
        _CAPTURE.reset(tok)


def procs() -> int:
    """Worker processes for a batch (``TRI_INDUCTOR_COMPILE_PROCS``; 0: compile in threads here)."""
    from . import envs

    n = envs.compile_procs()
    return max(1, min(8, (os.cpu_count() or 4) // 2)) if n is None else n


def usable() -> bool:
    """Workers can compile for the current target: NVIDIA's backend (the one the worker's target
    driver is checked against), workers not turned off."""
    if procs() <= 0:
        return False
    try:
        from triton.runtime import driver

        return driver.active.get_current_target().backend == "cuda"
    except Exception:  # noqa: BLE001
        return False


class Pool:
    """``n`` worker processes, started on first use, each served by one thread here."""

    def __init__(self, n: int):
        self.n = n
        self._procs: list[subprocess.Popen] = []
        self._lock = threading.Lock()

    def _start(self) -> None:
        for _ in range(self.n - len(self._procs)):
            self._procs.append(subprocess.Popen(
                [sys.executable, "-m", "tri_inductor.compile_workers"], stdin=subprocess.PIPE,
                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, bufsize=1))

    def compile(self, specs: list[Spec], context: dict[str, Any]) -> list[str | None]:
        """Each spec's error (None: compiled into the cache), in order."""
        from concurrent.futures import ThreadPoolExecutor

        with self._lock:
            self._procs = [p for p in self._procs if p.poll() is None]
            self._start()
            procs_ = list(self._procs)
        results: list[str | None] = [None] * len(specs)
        todo = list(enumerate(specs))
        todo_lock = threading.Lock()

        def serve(proc: subprocess.Popen) -> None:
            while True:
                with todo_lock:
                    if not todo:
                        return
                    i, spec = todo.pop(0)
                try:
                    proc.stdin.write(json.dumps({"spec": spec, **context}) + "\n")
                    proc.stdin.flush()
                    reply = proc.stdout.readline()
                    while reply and not reply.startswith(_REPLY):  # something else printed there
                        reply = proc.stdout.readline()
                    results[i] = json.loads(reply[len(_REPLY):]).get("error") if reply else "worker exited"
                except (OSError, ValueError) as e:
                    results[i] = f"worker failed: {e!r}"
                if results[i] and results[i].startswith("worker"):
                    return  # this worker is gone: the rest go to the others

        with ThreadPoolExecutor(max_workers=len(procs_), thread_name_prefix="tri_inductor-procs") as ex:
            list(ex.map(serve, procs_))
        with todo_lock:  # every worker died: what is left is not compiled
            for i, _ in todo:
                results[i] = "no worker left"
        return results

    def close(self) -> None:
        with self._lock:
            for p in self._procs:
                with contextlib.suppress(Exception):
                    p.stdin.close()
                    p.terminate()
            self._procs = []


_pool: Pool | None = None
_pool_lock = threading.Lock()


def pool() -> Pool:
    global _pool
    with _pool_lock:
        if _pool is None:
            import atexit

            _pool = Pool(procs())
            atexit.register(_pool.close)
        return _pool


def close_pool() -> None:
    with _pool_lock:
        if _pool is not None:
            _pool.close()


def context() -> dict[str, Any]:
    """What a worker needs to produce this process's cache key: target, cache folder, ptxas."""
    from triton import knobs
    from triton.runtime import driver

    t = driver.active.get_current_target()
    ptxas = None
    with contextlib.suppress(Exception):
        ptxas = knobs.nvidia.ptxas.path
    from triton._C.libtriton import get_cache_invalidating_env_vars
    from triton.compiler.compiler import make_backend

    # The backend's part of the key as this process computes it: Triton caches the ptxas version
    # it read first (an lru_cache), which a later knob or TRITON_PTXAS_PATH change does not update.
    return {"target": [t.backend, t.arch, t.warp_size], "cache_dir": knobs.cache.dir, "ptxas": ptxas,
            "env": dict(get_cache_invalidating_env_vars()), "backend_hash": make_backend(t).hash()}


def compile_calls(fns: dict[Any, Callable[[], Any]], threads: Callable[[dict], dict]) -> dict[Any, Exception]:
    """Compile the kernels of ``fns``' compile-only calls: each call is run here with its compile
    caught, the caught specs go to the workers; a call whose kernel was not caught (not
    importable by name, or it failed before compiling) is compiled by ``threads`` (the in-process
    batch). Returns ``{candidate: error}`` as ``threads`` does, a worker's failure included (the
    candidate's kernel is then compiled, and judged, here at its first use)."""
    from .patterns._launch import compile_only

    caught_by: dict[Any, list[Spec]] = {}
    rest: dict[Any, Callable[[], Any]] = {}
    for cand, f in fns.items():
        try:
            with capturing() as caught, compile_only():
                f()
        except Exception:  # noqa: BLE001  (compiled here instead, where its error is reported)
            rest[cand] = f
            continue
        if None in caught:
            rest[cand] = f
        else:
            caught_by[cand] = caught
    failed: dict[Any, Exception] = {}
    specs = list(dict.fromkeys(sp for caught in caught_by.values() for sp in caught))
    if specs:
        error_of = dict(zip(specs, pool().compile(specs, context())))
        for cand, caught in caught_by.items():
            errors = [error_of[sp] for sp in caught if error_of[sp]]
            if errors:
                failed[cand] = RuntimeError(f"compile worker: {errors[0]}")
        if failed:
            log.debug("tri_inductor: %d of %d candidates failed in compile workers (first: %s)", len(failed),
                      len(caught_by), next(iter(failed.values())))
    if rest:
        failed.update(threads(rest))
    return failed


# ---------------------------------------------------------------- the worker process

class _TargetDriver:
    """Triton's active driver in a worker: the parent's target, device 0, nothing launched."""

    def __init__(self, backend: str, arch: Any, warp_size: int):
        from triton.backends.compiler import GPUTarget

        self.target = GPUTarget(backend, arch, warp_size)
        self.backend = backend

    def is_active(self) -> bool:
        return True

    def get_current_target(self):
        return self.target

    def get_current_device(self) -> int:
        return 0

    def set_current_device(self, device: int) -> None:
        pass

    def get_current_stream(self, device: int | None = None) -> int:
        return 0

    def get_device_interface(self):
        import torch

        return torch.cuda

    def get_active_torch_device(self):
        import torch

        return torch.device("cuda", 0)


def _resolve(module: str, name: str):
    import importlib

    obj = importlib.import_module(module)
    for part in name.split("."):
        obj = getattr(obj, part)
    while not hasattr(obj, "preload") and hasattr(obj, "fn"):
        obj = obj.fn
    return obj


def _sync_env(env: dict[str, str]) -> None:
    """The parent's cache-invalidating environment (part of Triton's cache key), exactly."""
    from triton._C.libtriton import get_cache_invalidating_env_vars

    for k in get_cache_invalidating_env_vars():
        if k not in env:
            os.environ.pop(k, None)
    os.environ.update(env)


def _pin_backend_hash(value: str) -> None:
    """The parent's backend hash for every backend of this worker's target (same key)."""
    from triton.compiler.compiler import make_backend
    from triton.runtime import driver

    cls = type(make_backend(driver.active.get_current_target()))
    cls.hash = lambda self, _v=value: _v


def serve(stdin=None, stdout=None) -> None:
    """The worker's loop: one JSON request per line in, one reply per line out."""
    from triton import knobs
    from triton.runtime import driver

    stdin = stdin or sys.stdin
    stdout = stdout or sys.stdout
    active: tuple | None = None
    for line in stdin:
        error = None
        try:
            req = json.loads(line)
            target = tuple(req["target"])
            if target != active:
                driver.set_active(_TargetDriver(*target))
                active = target
            if req.get("backend_hash"):
                _pin_backend_hash(req["backend_hash"])
            _sync_env(req.get("env") or {})
            if req.get("cache_dir"):
                knobs.cache.dir = req["cache_dir"]
            if req.get("ptxas"):
                knobs.nvidia.ptxas = req["ptxas"]
            module, name, data = req["spec"]
            _resolve(module, name).preload(data)
        except Exception as e:  # noqa: BLE001  (reported; the parent compiles it at first use)
            error = f"{type(e).__name__}: {e}"[:500]
        stdout.write(_REPLY + json.dumps({"error": error}) + "\n")
        stdout.flush()


if __name__ == "__main__":
    replies = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)  # anything the compiles print goes to stderr, not into the replies
    sys.stdout = sys.stderr
    serve(stdout=replies)
