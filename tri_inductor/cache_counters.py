"""Process-wide counts of what the caches did (tuning DB hits/misses/stores, benchmarks, damaged
files met), for tests, the GPU benchmark and ``TRI_INDUCTOR_CACHE_STATS``. A module of its own so
that everything that counts (the tuning DB, the output-code check) can import it without the cache."""
from __future__ import annotations

import dataclasses
import threading


@dataclasses.dataclass
class Counters:
    """Process-wide counts, for tests and the GPU benchmark."""

    hits: int = 0  # tuning lookups answered from the DB
    misses: int = 0  # tuning lookups with no (usable) entry
    stores: int = 0  # entries written
    benchmarks: int = 0  # candidate configs benchmarked on the GPU (0 on a warm start)
    tuned: int = 0  # shapes tuned (one store each)
    corrupt: int = 0  # damaged cache files met (ignored)
    tune_s: float = 0.0  # seconds spent tuning (benchmarks + their kernel compiles)
    # Where a cold start's time goes beyond Inductor's own work (seconds of wall time on the
    # compiling thread; docs/design/cold_start.md): tune_s per kernel family and the candidates'
    # compiles within it, pattern registration, our pattern pass (registration and tuning
    # excluded), and Inductor's mutation analysis of our kernels (the runs the memo did not answer).
    tune_gemm_s: float = 0.0
    tune_attention_s: float = 0.0
    tune_moe_s: float = 0.0
    tune_compile_s: float = 0.0
    # compile_ahead: seconds its background thread compiled (off the critical path), kernels it
    # compiled, and seconds a tuning waited for it
    ahead_compile_s: float = 0.0
    ahead_kernels: int = 0
    ahead_wait_s: float = 0.0
    register_s: float = 0.0
    pass_s: float = 0.0
    mutation_s: float = 0.0
    mutation_runs: int = 0


COUNTERS = Counters()
_counter_lock = threading.Lock()


def count(field: str, n: float = 1) -> None:
    with _counter_lock:
        setattr(COUNTERS, field, getattr(COUNTERS, field) + n)


def counters() -> dict[str, float]:
    return dataclasses.asdict(COUNTERS)


def reset_counters() -> None:
    global COUNTERS
    with _counter_lock:
        COUNTERS = Counters()
