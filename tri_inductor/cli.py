"""Command line: ``graph-audit`` (prove a compiled graph is Triton-only) and ``tri-inductor``."""
from __future__ import annotations

import argparse
import importlib
import os
import sys
from pathlib import Path

# 0: every kernel Triton; 1: non-Triton kernels (or graph breaks) found; 2: bad input (missing
# target, not output code, not MODULE:CALLABLE, wrong return type); 3: the model or its compile
# failed, or nothing was compiled (an audit of nothing proves nothing, so it is never 0).
EXIT_OK, EXIT_NON_TRITON, EXIT_BAD_INPUT, EXIT_MODEL_FAILED = 0, 1, 2, 3
_DTYPES = {"bf16": "bfloat16", "bfloat16": "bfloat16", "fp16": "float16", "float16": "float16",
           "half": "float16", "fp32": "float32", "float32": "float32", "float": "float32"}


class BadInput(Exception):
    """The target is missing, or is not something graph-audit can read."""


class ModelFailed(Exception):
    """MODULE:CALLABLE could not be imported, built, compiled or run, or compiled no graph."""


def _is_output_code(text: str) -> bool:
    from .audit.artifact_data import is_output_code

    return is_output_code(text)


def _reports_from_files(target: Path):
    from .audit import audit_output_code
    from .patterns import our_kernel_names

    if target.is_file() and target.name.startswith("artifact_"):
        return _reports_from_artifacts(target)  # a pickle: read as bytes, never as a module
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
    if not found and target.is_dir():
        reports = _reports_from_artifacts(target)
        found = len(reports)
    if not found:
        what = "file" if target.is_file() else "folder"
        raise BadInput(f"{target}: this {what} holds no Inductor output code (expected a wrapper module with "
                       "'async_compile' and 'def call(', a TORCH_COMPILE_DEBUG folder or a vLLM "
                       "torch_compile_cache folder)")
    return reports


def _reports_from_artifacts(folder: Path):
    """vLLM's compile cache keeps Inductor artifacts as pickles.  Loading one runs whatever its
    author put in it, so they are read as bytes (:mod:`tri_inductor.audit.artifact_data`): the
    output code each holds is cut out of the raw data and audited; nothing is unpickled."""
    from .audit import audit_output_code
    from .audit.artifact_data import output_code_in_artifact
    from .patterns import our_kernel_names

    if folder.is_file():  # one artifact file
        artifacts, folder = [folder], folder.parent
    else:
        artifacts = sorted(p for p in folder.rglob("artifact_*") if p.is_file() or p.is_dir())
    reports, unreadable = [], []
    for art in artifacts:
        try:
            codes = output_code_in_artifact(art)
        except OSError as e:
            raise BadInput(f"cannot read {art}: {e.strerror}") from None
        if not codes:
            unreadable.append(art)
        for i, code in enumerate(codes):
            name = str(art.relative_to(folder)) + (f"[{i}]" if len(codes) > 1 else "")
            reports.append(audit_output_code(code, graph=name, origin="file", our_kernels=our_kernel_names()))
    if unreadable:
        raise BadInput(f"{len(unreadable)} artifact(s) hold no output code readable as data (e.g. "
                       f"{unreadable[0]}); graph-audit never unpickles a file it is given (loading a pickle "
                       "can run code). Audit the model itself (MODULE:CALLABLE) or a TORCH_COMPILE_DEBUG "
                       "folder instead")
    return reports


def _codegen_context():
    import contextlib

    import torch

    if torch.cuda.is_available():
        return contextlib.nullcontext()
    from .testing.codegen_only import fake_sm90

    return fake_sm90()


def _load_model(spec: str):
    mod_name, _, attr = spec.partition(":")
    if not mod_name or not attr:
        raise BadInput(f"{spec!r}: expected MODULE:CALLABLE (e.g. tri_inductor.demo:llama_block)")
    # Appended, never first: a stray file in the current folder must not shadow an installed package.
    if os.getcwd() not in sys.path:
        sys.path.append(os.getcwd())
    try:
        module = importlib.import_module(mod_name)
    except ModuleNotFoundError as e:
        if e.name and (mod_name == e.name or mod_name.startswith(e.name + ".")):
            raise BadInput(f"cannot import {mod_name!r} (from PYTHONPATH or the current directory): {e}") from None
        raise ModelFailed(f"importing {mod_name!r} failed: {_describe(e)}") from None
    except BaseException as e:  # noqa: BLE001  (SystemExit, SyntaxError, ... from the user's module)
        _reraise_interrupt(e)
        raise ModelFailed(f"importing {mod_name!r} failed: {_describe(e)}") from None
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise BadInput(f"{mod_name} has no callable {attr!r}")
    try:
        built = fn()
    except BaseException as e:  # noqa: BLE001  (SystemExit(0) from the callable is a failure, not "all Triton")
        _reraise_interrupt(e)
        raise ModelFailed(f"{spec}() failed: {_describe(e)}") from None
    if not (isinstance(built, tuple) and len(built) == 2):
        raise BadInput(f"{spec} must return (module, example_inputs), got {type(built).__name__}")
    model, inputs = built
    if not callable(model):
        raise BadInput(f"{spec} must return (module, example_inputs); its first item is a "
                       f"{type(model).__name__}, not callable")
    return model, list(inputs) if isinstance(inputs, (list, tuple)) else [inputs]


def _reraise_interrupt(e: BaseException) -> None:
    if isinstance(e, KeyboardInterrupt):
        raise e


def _describe(e: BaseException, lines: int = 12) -> str:
    """The exception as a message: its type and first lines (Inductor errors run long), no traceback."""
    text = str(e).strip()
    if isinstance(e, SystemExit):
        text = f"exit status {e.code!r}"
    cut = text.splitlines()
    if len(cut) > lines:
        text = "\n".join(cut[:lines]) + f"\n  ... ({len(cut) - lines} more lines)"
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def graph_audit_main(argv: list[str] | None = None, prog: str = "graph-audit") -> int:
    p = argparse.ArgumentParser(
        prog=prog,
        description="Prove every kernel of a compiled graph is Triton, or name each one that is not. "
                    "TARGET: an Inductor output-code file, a TORCH_COMPILE_DEBUG folder, a vLLM "
                    "torch_compile_cache folder, or MODULE:CALLABLE returning (module, example_inputs) "
                    "built on CPU in float32, compiled here (on the GPU if there is one, else codegen-only "
                    "for a fake sm_90).",
        epilog="exit status: 0 every kernel is Triton, 1 some are not (or the model has graph breaks), "
               "2 bad input, 3 the model or its compile failed, or no graph was compiled")
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
    except ModelFailed as e:
        print(f"graph-audit: error: {e}", file=sys.stderr)
        return EXIT_MODEL_FAILED
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
        try:
            reports, _ = audit_model(model, inputs, backend=args.backend, dtype=getattr(torch, dtype_name))
        except BaseException as e:  # noqa: BLE001  (the user's forward, or the compile, failed)
            _reraise_interrupt(e)
            raise ModelFailed(f"compiling or running {args.target} failed: {_describe(e)}") from None
        if not reports:
            raise ModelFailed(f"{args.target}: no graph was compiled (the forward ran outside "
                              "torch.compile, e.g. under torch._dynamo.disable), so nothing was audited")
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
