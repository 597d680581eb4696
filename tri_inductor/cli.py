"""Command line: ``graph-audit`` (prove a compiled graph is Triton-only) and ``tri-inductor``."""
from __future__ import annotations

import argparse
import importlib
import os
import sys
from pathlib import Path

EXIT_OK, EXIT_NON_TRITON, EXIT_BAD_INPUT = 0, 1, 2
_DTYPES = {"bf16": "bfloat16", "bfloat16": "bfloat16", "fp16": "float16", "float16": "float16",
           "half": "float16", "fp32": "float32", "float32": "float32", "float": "float32"}


class BadInput(Exception):
    """The target is missing, or is not something graph-audit can read."""


def _is_output_code(text: str) -> bool:
    return "async_compile" in text and ("def call(" in text or "def partition_" in text)


def _reports_from_files(target: Path):
    from .audit import audit_output_code
    from .patterns import our_kernel_names

    if target.is_file():
        files = [target]
    else:
        files = sorted(p for p in target.rglob("*.py") if p.is_file())
    reports, found = [], 0
    for f in files:
        try:
            text = f.read_text(errors="replace")
        except OSError as e:
            raise BadInput(f"cannot read {f}: {e.strerror}") from None
        if not _is_output_code(text):
            continue
        found += 1
        name = str(f.relative_to(target)) if target.is_dir() else f.name
        reports.append(audit_output_code(text, graph=name, origin="file", our_kernels=our_kernel_names()))
    if target.is_dir() and not found:
        reports = _reports_from_artifacts(target)
        found = len(reports)
    if not found:
        what = "file" if target.is_file() else "folder"
        raise BadInput(f"{target}: this {what} holds no Inductor output code (expected a wrapper module with "
                       "'async_compile' and 'def call(', a TORCH_COMPILE_DEBUG folder or a vLLM "
                       "torch_compile_cache folder)")
    return reports


def _reports_from_artifacts(folder: Path):
    """vLLM's compile cache stores Inductor artifacts in binary form: load each one (a cache hit
    hands its output code to the auditor) without running anything."""
    import torch

    from .audit import collect_reports

    artifacts = [p for p in folder.rglob("artifact_*") if p.is_file() or p.is_dir()]
    if not artifacts:
        return []
    reports = []
    for art in sorted(artifacts):
        fmt = "unpacked" if art.is_dir() else "binary"
        with collect_reports() as got:
            try:
                ctx = _codegen_context()
                with ctx:
                    torch._inductor.CompiledArtifact.load(path=str(art), format=fmt)
            except Exception as e:  # a foreign or damaged artifact: say which, go on
                print(f"graph-audit: could not load {art} ({type(e).__name__}: {e})", file=sys.stderr)
        for r in got:
            r.graph, r.origin = str(art.relative_to(folder)), "file"
        reports.extend(got)
    return reports


def _codegen_context():
    import contextlib

    import torch

    if torch.cuda.is_available():
        return contextlib.nullcontext()
    from .codegen_only import fake_sm90

    return fake_sm90()


def _load_model(spec: str):
    mod_name, _, attr = spec.partition(":")
    if not mod_name or not attr:
        raise BadInput(f"{spec!r}: expected MODULE:CALLABLE (e.g. tri_inductor.demo:llama_block)")
    sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(mod_name)
    except ImportError as e:
        raise BadInput(f"cannot import {mod_name!r} (from the current directory or PYTHONPATH): {e}") from None
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise BadInput(f"{mod_name} has no callable {attr!r}")
    built = fn()
    if not (isinstance(built, tuple) and len(built) == 2):
        raise BadInput(f"{spec} must return (module, example_inputs), got {type(built).__name__}")
    model, inputs = built
    return model, list(inputs) if isinstance(inputs, (list, tuple)) else [inputs]


def graph_audit_main(argv: list[str] | None = None, prog: str = "graph-audit") -> int:
    p = argparse.ArgumentParser(
        prog=prog,
        description="Prove every kernel of a compiled graph is Triton, or name each one that is not. "
                    "TARGET: an Inductor output-code file, a TORCH_COMPILE_DEBUG folder, a vLLM "
                    "torch_compile_cache folder, or MODULE:CALLABLE returning (module, example_inputs) "
                    "built on CPU in float32, compiled here (on the GPU if there is one, else codegen-only "
                    "for a fake sm_90).",
        epilog="exit status: 0 every kernel is Triton, 1 some are not, 2 bad input")
    p.add_argument("target")
    p.add_argument("--json", action="store_true", help="machine-readable report")
    p.add_argument("--dtype", default="bf16", help="floating dtype for MODULE:CALLABLE (bf16, fp16, fp32)")
    p.add_argument("--backend", default="tri_inductor", choices=["tri_inductor", "inductor"],
                   help="compile MODULE:CALLABLE with this backend (inductor: the stock one, for comparison)")
    args = p.parse_args(argv)
    try:
        reports = _run(args)
    except BadInput as e:
        print(f"graph-audit: error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    from .audit import format_reports, reports_to_json

    print(reports_to_json(reports) if args.json else format_reports(reports))
    return EXIT_OK if all(r.ok for r in reports) else EXIT_NON_TRITON


def _run(args):
    target = Path(args.target)
    if target.exists():
        return _reports_from_files(target)
    if ":" in args.target and not args.target.endswith((".py", "/")):
        import torch

        from .audit.model import audit_model

        dtype_name = _DTYPES.get(args.dtype.lower())
        if dtype_name is None:
            raise BadInput(f"--dtype {args.dtype!r}: use one of bf16, fp16, fp32")
        model, inputs = _load_model(args.target)
        reports, _ = audit_model(model, inputs, backend=args.backend, dtype=getattr(torch, dtype_name))
        return reports
    raise BadInput(f"{args.target}: no such file or folder (and not MODULE:CALLABLE)")


def main(argv: list[str] | None = None) -> int:
    """``tri-inductor`` umbrella command: ``audit`` (= graph-audit), ``cache`` (see tri_inductor.cache)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: tri-inductor {audit,cache} ...\n  audit TARGET   same as graph-audit\n"
              "  cache {info,clear,export,import}   manage the compile/tuning cache")
        return EXIT_OK if argv else EXIT_BAD_INPUT
    cmd, rest = argv[0], argv[1:]
    if cmd == "audit":
        return graph_audit_main(rest, prog="tri-inductor audit")
    if cmd == "cache":
        from .cache_cli import cache_main

        return cache_main(rest)
    print(f"tri-inductor: unknown command {cmd!r}", file=sys.stderr)
    return EXIT_BAD_INPUT


if __name__ == "__main__":
    sys.exit(graph_audit_main())
