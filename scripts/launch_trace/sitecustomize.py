"""Find the GPU kernel that faults: every Triton launch is followed by a device sync, and the
first launch whose sync fails is named with its Python call site, then the process exits (7).

    PYTHONPATH=scripts/launch_trace:$PYTHONPATH TORCHINDUCTOR_USE_STATIC_CUDA_LAUNCHER=0 \\
        CUDA_LAUNCH_BLOCKING=1 python3 ...

(Inductor's static launcher skips Triton's launch hooks: turn it off.) No sync while a stream
is capturing a CUDA graph (not allowed there); ``TRACE_NOSYNC=1`` keeps the hooks but syncs
nothing (does the sync or the hooks' other effect matter?). Prints the first 40
launches and every 500th to stderr as ``[TRACE] ok #n name | call site``. Debugging only: a
sync per launch is slow, and the sitecustomize hook runs in every Python process of the tree.
"""
import os
import sys
import traceback

_count = [0]


def _name(metadata):
    try:
        return metadata.get()["name"] if hasattr(metadata, "get") else str(metadata)
    except Exception as e:  # noqa: BLE001
        return repr(e)


def _site():
    frames = [f for f in traceback.extract_stack()[:-2]
              if any(k in f.filename for k in ("tri_inductor", "compile_fx", "vllm"))]
    return " <- ".join(f"{os.path.basename(f.filename)}:{f.lineno}:{f.name}" for f in frames[-6:][::-1])


def _enter(metadata):
    _count[0] += 1


def _exit(metadata):
    import torch

    if os.environ.get("TRACE_NOSYNC") == "1":
        return  # hooks set (our launch fast path is bypassed), no sync: which of the two matters?
    try:
        if torch.cuda.is_current_stream_capturing():
            return  # a sync is not allowed while capturing (the replay's sync reports a fault)
        torch.cuda.synchronize()
    except Exception as e:  # noqa: BLE001
        sys.stderr.write(f"\n[TRACE] FAULT in launch #{_count[0]} {_name(metadata)}: {e!r}\n"
                         f"[TRACE] call site: {_site()}\n")
        sys.stderr.flush()
        os._exit(7)
    if _count[0] <= 40 or _count[0] % 500 == 0:
        sys.stderr.write(f"[TRACE] ok #{_count[0]} {_name(metadata)} | {_site()}\n")


try:
    from triton import knobs

    knobs.runtime.launch_enter_hook = _enter
    knobs.runtime.launch_exit_hook = _exit
except Exception as e:  # noqa: BLE001
    sys.stderr.write(f"[TRACE] not installed: {e!r}\n")
