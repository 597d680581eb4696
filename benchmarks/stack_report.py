"""Where a process's main thread spent its time, from ``benchmarks/stack_sampler`` samples.

    python3 benchmarks/stack_report.py SAMPLES.txt [OTHER.txt ...] [--top 8]

One column per file (seconds = samples x the file's sampling period, read from its timestamps:
0.2 s unless ``TRI_STACK_SAMPLE_PERIOD_S`` said otherwise); a row counts the samples whose stack contains
that frame (rows overlap: the compile contains our pass). Then, per file, the most frequent
innermost frames. ``--thread tri_inductor-tune``: our tuning thread's samples instead. ``e2e_vllm.py --sample-stacks DIR`` writes one file per process.
"""
from __future__ import annotations

import argparse
import collections
import statistics
from pathlib import Path

PERIOD_S = 0.2  # the sampler's default; a file's own period is read from its timestamps
# (row, a substring of a frame "path:line:function"); the first rows contain the later ones
ROWS = (
    ("Dynamo and all under it (the compile)", "torch/_dynamo/"),
    ("Inductor fx_codegen_and_compile", ":fx_codegen_and_compile"),
    ("Inductor compile-time autotune block", ":generate_and_run_autotune_block"),
    ("Triton compile on this thread", "triton/compiler/compiler.py"),
    ("our pass", "tri_inductor/passes.py"),
    ("our pattern registration", ":_registered_patterns"),
    ("Inductor's mutation analysis of user kernels", ":identify_mutated_tensors"),
    ("our tuning (measuring)", "tri_inductor/tuning.py"),
    ("our paged attention warm-up", "tri_inductor/vllm_attention.py"),
    ("vLLM model inspection subprocess", ":_run_in_subprocess"),
    ("vLLM profile run", ":profile_run"),
    ("vLLM CUDA-graph capture", ":capture_model"),
    ("vLLM sampler Triton compile", ":apply_top_k_top_p_triton"),
    ("vLLM load_model", ":load_model"),
)


def read(path: Path, thread: str | None = None, within: str | None = None
         ) -> tuple[str, list[tuple[float, list[str]]]]:
    """(command line, [(seconds, frames innermost first)]) of the main thread, or of the threads
    whose name starts with ``thread``; ``within``: only samples with a frame containing it."""
    lines = path.read_text().splitlines()
    samples = []
    for line in lines[1:]:
        head, _, stack = line.partition(" | ")
        fields = head.split()
        name = fields[2][1:] if len(fields) > 2 and fields[2].startswith("@") else None
        if (name is None) != (thread is None) or (thread is not None and not name.startswith(thread)):
            continue
        try:
            t = float(fields[0])
        except (IndexError, ValueError):
            continue
        frames = [f for f in stack.split(" < ") if f]
        if within is None or any(within in f for f in frames):
            samples.append((t, frames))
    return (lines[0] if lines else ""), samples


def period_s(path: Path, thread: str | None = None) -> float:
    """The file's sampling period: the median gap between its samples (the sampler's default
    where there are too few to tell)."""
    times = [t for t, _ in read(path, thread)[1]]
    gaps = [b - a for a, b in zip(times, times[1:]) if b > a]
    return statistics.median(gaps) if gaps else PERIOD_S


def table(files: list[Path], thread: str | None = None, within: str | None = None) -> str:
    data = [(read(f, thread, within)[1], period_s(f, thread)) for f in files]
    out = ["| | " + " | ".join(f.stem for f in files) + " |", "|---|" + "---|" * len(files)]
    out.append("| sampled (s) | " + " | ".join(f"{len(s) * dt:.1f}" for s, dt in data) + " |")
    for label, key in ROWS:
        secs = [sum(1 for _, st in s if any(key in fr for fr in st)) * dt for s, dt in data]
        out.append(f"| {label} | " + " | ".join(f"{v:.1f}" for v in secs) + " |")
    return "\n".join(out)


def top_frames(path: Path, n: int, thread: str | None = None, within: str | None = None, depth: int = 4) -> str:
    argv, samples = read(path, thread, within)
    counts = collections.Counter(" < ".join(st[:depth]) for _, st in samples if st)
    dt = period_s(path, thread)
    lines = [f"{path.name}: {argv[:120]}"]
    lines += [f"  {c * dt:6.1f} s  {stack[:300]}" for stack, c in counts.most_common(n)]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("files", nargs="+", type=Path)
    p.add_argument("--top", type=int, default=8, help="innermost stacks listed per file")
    p.add_argument("--thread", default=None,
                   help="our threads whose name starts with this (e.g. tri_inductor-tune) instead of the main thread")
    p.add_argument("--within", default=None,
                   help="only samples with a frame containing this (e.g. execute_model: the serving steps)")
    p.add_argument("--depth", type=int, default=4, help="innermost frames that name a stack in the top list")
    args = p.parse_args(argv)
    print(table(args.files, args.thread, args.within))
    for f in args.files:
        print()
        print(top_frames(f, args.top, args.thread, args.within, args.depth))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
