"""Main-thread stack sampler for diagnosis runs (cold start: docs/design/cold_start.md).

Not part of the package. A process started with this folder first on ``PYTHONPATH`` and
``TRI_STACK_SAMPLE_DIR`` set writes its main thread's Python stack every 0.2 s, or every
``TRI_STACK_SAMPLE_PERIOD_S`` (frames from vllm, tri_inductor, torch, triton, the benchmarks and
Inductor's output code) to ``<dir>/<pid>.txt``: its command line,
then one line per sample, ``<seconds since start> <epoch> | <innermost frame> < ... < <outer>``;
a busy thread of ours (named ``tri_inductor-*``: tuning, compile-ahead) gets its own line,
``<seconds> <epoch> @<thread name> | ...``.
``benchmarks/stack_report.py`` sums them by what the thread was doing. Without the variable
this file does nothing.
"""
import os
import sys
import threading
import time

_dir = os.environ.get("TRI_STACK_SAMPLE_DIR")
_KEEP = ("/vllm/", "/tri_inductor/", "/torch/", "/triton/", "/benchmarks/", "/inductor/")  # last: output code
PERIOD_S = float(os.environ.get("TRI_STACK_SAMPLE_PERIOD_S") or 0.2)  # finer for steady-state runs


def _frames(frame, limit: int = 25) -> str:
    out = []
    while frame is not None and len(out) < limit:
        code = frame.f_code
        for key in _KEEP:
            i = code.co_filename.rfind(key)
            if i >= 0:
                out.append(f"{code.co_filename[i + 1:]}:{frame.f_lineno}:{code.co_name}")
                break
        frame = frame.f_back
    return " < ".join(out)


def _loop() -> None:
    main = threading.main_thread().ident
    t0 = time.time()
    with open(os.path.join(_dir, f"{os.getpid()}.txt"), "w", buffering=1) as f:
        f.write(" ".join(sys.argv)[:300] + "\n")
        while True:
            time.sleep(PERIOD_S)
            now = time.time()
            frames = sys._current_frames()
            f.write(f"{now - t0:.3f} {now:.3f} | {_frames(frames.get(main))}\n")
            for t in threading.enumerate():
                if t.name.startswith("tri_inductor") and t.ident in frames:
                    f.write(f"{now - t0:.3f} {now:.3f} @{t.name} | {_frames(frames[t.ident])}\n")


if _dir:
    os.makedirs(_dir, exist_ok=True)
    threading.Thread(target=_loop, daemon=True, name="tri_stack_sampler").start()
