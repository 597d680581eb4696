"""tri_inductor.hooks: the table of every hook into torch/Triton/vLLM matches what is installed.

The signature test is the tripwire for upgrades: a hooked target whose parameters differ from
the ones the table records fails here, before a hook silently binds the wrong argument.
"""
from __future__ import annotations

import importlib
import logging
import pathlib
import subprocess
import sys

import pytest

from tri_inductor import hooks

PACKAGE = pathlib.Path(hooks.__file__).parent


def _target_package(target: str) -> str:
    return target.split(":")[0].split(".")[0]


@pytest.mark.parametrize("hook", hooks.TABLE, ids=[h.target for h in hooks.TABLE])
def test_hooked_target_has_the_recorded_signature(hook: hooks.Hook) -> None:
    package = _target_package(hook.target)
    if package == "vllm":
        pytest.importorskip("vllm", reason="vLLM is not installed: its hooks are not checked")
    version = hooks.installed_version(package)
    try:
        obj = hooks.resolve(hook.target)
    except (ImportError, AttributeError) as e:
        since_pkg, _, since = hook.since.partition(" ")
        until_pkg, _, until = hook.until.partition(" ")
        before = bool(hook.since) and hooks._minor(hooks.installed_version(since_pkg)) < hooks._minor(since)
        after = bool(hook.until) and hooks._minor(hooks.installed_version(until_pkg)) >= hooks._minor(until)
        assert before or after, f"{hook.target} is missing on {package} {version}: {e}"
        return
    if hook.signatures:
        got = hooks.signature_of(obj)
        assert got in hook.signatures, (
            f"{hook.target} on {package} {version} takes ({got}); tri_inductor.hooks.TABLE records "
            f"{hook.signatures}: check the hook, then record the new signature")


def test_table_is_complete_and_described() -> None:
    targets = [h.target for h in hooks.TABLE]
    assert len(targets) == len(set(targets))
    for h in hooks.TABLE:
        assert h.why and h.without and h.tested and h.scope in ("process", "harness"), h


def test_monkey_patches_live_only_in_hooks() -> None:
    """Every patch of a third-party attribute goes through hooks (wrap_once / patched)."""
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        if path.name in ("hooks.py", "vllm_moe.py"):  # vllm_moe.py: its op table moves into hooks.py next (issue 20)
            continue
        text = path.read_text()
        for needle in ("mock.patch", "sys.meta_path", "functools.wraps(real", "update_wrapper("):
            if needle in text:
                offenders.append(f"{path.relative_to(PACKAGE)}: {needle}")
    assert not offenders, offenders


def test_wrap_once_is_idempotent_keeps_metadata_and_descriptor_kind() -> None:
    class Target:
        def method(self, a, b=2):
            """doc"""
            return a + b

        @classmethod
        def cm(cls, x):
            return (cls, x)

        @staticmethod
        def sm(x):
            return x * 2

    calls = []

    def make(real):
        def wrapper(*args, **kwargs):
            calls.append(hooks.arguments(real, *args, **kwargs))
            return real(*args, **kwargs)
        return wrapper

    assert hooks.wrap_once(Target, "method", make)
    first = Target.method
    assert not hooks.wrap_once(Target, "method", make) and Target.method is first  # no double wrap
    assert first.__doc__ == "doc" and first.__name__ == "method" and getattr(first, hooks.MARK)
    assert hooks.wrap_once(Target, "cm", make) and hooks.wrap_once(Target, "sm", make)
    t = Target()
    assert t.method(1) == 3 and calls[-1]["b"] == 2  # default filled in, bound by name
    assert t.cm(5) == (Target, 5) and Target.cm(5) == (Target, 5)
    assert t.sm(4) == 8 and Target.sm(4) == 8
    assert hooks.signature_of(Target.method) == "self, a, b"


def test_arguments_bind_by_name_not_position() -> None:
    def compile(self, graph, example_inputs, additional_inductor_config, compilation_config,  # noqa: A001
                compile_range, graph_index=0, num_graphs=1, is_encoder=False):
        pass

    by_pos = hooks.arguments(compile, "mgr", "g", [], {}, None, "r", 2, 3)
    by_kw = hooks.arguments(compile, "mgr", "g", [], {}, None, "r", num_graphs=3, graph_index=2)
    assert by_pos["graph_index"] == by_kw["graph_index"] == 2
    assert by_pos["num_graphs"] == by_kw["num_graphs"] == 3 and by_pos["is_encoder"] is False
    with pytest.raises(TypeError):
        hooks.arguments(compile, "mgr", unknown=1)


def test_untested_versions_named_with_the_range() -> None:
    tested = {"torch": "2.11.0", "triton": "3.8.0", "vllm": "0.34.0"}
    assert hooks.untested_versions(tested) == []
    problems = hooks.untested_versions({**tested, "torch": "2.15.0+cu130", "vllm": "0.25.1"})
    assert problems == ["torch 2.15.0+cu130 (tested: 2.11 to 2.14)", "vllm 0.25.1 (tested: 0.26 to 0.34)"]
    message = hooks.version_message(problems)
    assert "torch 2.15.0+cu130" in message and "vLLM 0.26-0.34" in message and "own backends" in message


def test_nothing_hooked_at_import_compile_hooks_when_a_compile_starts() -> None:
    code = """
import tri_inductor, tri_inductor.audit, tri_inductor.patterns, tri_inductor.patterns._launch, tri_inductor.testing.interpret
from torch._inductor.graph import GraphLowering
from torch._inductor.runtime.triton_heuristics import TritonCompileResult
assert not getattr(GraphLowering.codegen, "_tri_inductor", False), "hooked at import"
assert not getattr(TritonCompileResult.make_launcher, "_tri_inductor", False), "hooked at import"
tri_inductor.audit.install_hooks()
tri_inductor.audit.install_hooks()
assert GraphLowering.codegen._tri_inductor and TritonCompileResult.make_launcher._tri_inductor
assert GraphLowering.save_output_code._tri_inductor
assert not getattr(GraphLowering.codegen.__wrapped__, "_tri_inductor", False)  # wrapped once
"""
    subprocess.run([sys.executable, "-c", code], check=True, timeout=300)


def test_output_code_hook_chains_again_after_replacement() -> None:
    """run_and_get_code (and others) replace GraphLowering.save_output_code: we chain after them."""
    from torch._inductor.graph import GraphLowering

    from tri_inductor import audit

    seen = []
    audit.install_hooks()
    saved = GraphLowering.save_output_code
    try:
        GraphLowering.save_output_code = seen.append  # someone else's hook replaces ours
        with audit.collect_reports() as reports:
            GraphLowering.save_output_code("def call(args):\n    pass\n")
        assert seen == ["def call(args):\n    pass\n"] and len(reports) == 1
    finally:
        GraphLowering.save_output_code = saved


def test_log_forwarder_holds_records_until_vllm_logging_is_up() -> None:
    """vLLM >= 0.32 configures its logging after plugins load: nothing logged before is lost."""
    from tri_inductor.vllm_plugin import ToVllmLog

    vllm_logger = logging.getLogger("vllm")
    saved = vllm_logger.handlers[:]
    vllm_logger.handlers.clear()
    got: list[str] = []

    class Sink(logging.Handler):
        def emit(self, record):
            got.append(record.getMessage())

    ours = logging.getLogger("tri_inductor.test_forwarder")
    forwarder = ToVllmLog()
    ours.addHandler(forwarder)
    ours.propagate = False
    ours.setLevel(logging.INFO)
    try:
        ours.info("before vLLM's logging")
        assert got == [] and len(forwarder.held) == 1
        vllm_logger.addHandler(Sink())
        ours.info("after")
        assert got == ["before vLLM's logging", "after"] and forwarder.held == []
    finally:
        ours.removeHandler(forwarder)
        vllm_logger.handlers[:] = saved


def test_torch_version_helpers_agree_with_torch() -> None:
    import torch

    major, minor = (int(p) for p in torch.__version__.split(".")[:2])
    assert hooks.torch_at_least(major, minor) and not hooks.torch_at_least(major, minor + 1)
    assert hooks.installed_version("torch") == torch.__version__
    assert hooks.installed_version("surely_not_a_package_name_x") is None
    importlib.import_module("tri_inductor.hooks")


def test_a_hook_whose_target_is_gone_never_fails_the_import(tmp_path, monkeypatch, caplog) -> None:
    """A vLLM release that renamed a class we hook must still import (vLLM's own backends keep
    working): that hook is left out, with a warning naming it; the other hooks of the module
    are installed."""
    (tmp_path / "tri_hook_target_mod.py").write_text("class Kept:\n    def f(self):\n        return 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    installed = []

    def gone(module):
        hooks.wrap_once(module.RenamedAway, "f", lambda real: real)

    def kept(module):
        installed.append(hooks.wrap_once(module.Kept, "f", lambda real: (lambda self: real(self) + 1)))

    hooks.when_imported("tri_hook_target_mod", gone)
    hooks.when_imported("tri_hook_target_mod", kept)
    try:
        with caplog.at_level(logging.WARNING, logger="tri_inductor"):
            mod = importlib.import_module("tri_hook_target_mod")
        assert installed == [True] and mod.Kept().f() == 2
        assert "hook gone on tri_hook_target_mod not installed" in caplog.text and "RenamedAway" in caplog.text
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="tri_inductor"):
            hooks.when_imported("tri_hook_target_mod", gone)  # already imported: installed now, same rule
        assert "not installed" in caplog.text
    finally:
        sys.modules.pop("tri_hook_target_mod", None)
