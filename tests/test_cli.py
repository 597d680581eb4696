"""graph-audit: files, folders and MODULE:CALLABLE, with its four exit codes."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from tri_inductor.cli import EXIT_BAD_INPUT, EXIT_MODEL_FAILED, EXIT_NON_TRITON, EXIT_OK, graph_audit_main
from tri_inductor.demo import llama_block

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def dumped_output_code(tmp_path_factory):
    """Real output code of the block under both backends (codegen-only), written to files."""
    if torch.cuda.is_available():
        pytest.skip("uses codegen-only mode")
    from tri_inductor.audit.model import audit_model

    folder = tmp_path_factory.mktemp("codes")
    paths = {}
    for backend in ("tri_inductor", "inductor"):
        torch._dynamo.reset()
        block, inputs = llama_block()
        reports, _ = audit_model(block, inputs, backend=backend, device="cpu")
        paths[backend] = folder / backend / "output_code.py"
        paths[backend].parent.mkdir()
        paths[backend].write_text(reports[0].code)
    return paths


def test_file_all_triton_exits_0(dumped_output_code, capsys):
    assert graph_audit_main([str(dumped_output_code["tri_inductor"])]) == EXIT_OK
    out = capsys.readouterr().out
    assert "every kernel is Triton" in out and "our_triton" in out


def test_file_with_cublas_exits_1_and_names_it(dumped_output_code, capsys):
    assert graph_audit_main([str(dumped_output_code["inductor"]), "--json"]) == EXIT_NON_TRITON
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] is False
    bad = [k for g in report["graphs"] for k in g["kernels"] if k["kind"] == "non_triton"]
    assert {"extern_kernels.mm"} <= {k["name"] for k in bad}
    assert all(k["hint"] for k in bad)


def test_debug_folder_is_searched(dumped_output_code, capsys):
    folder = dumped_output_code["inductor"].parent.parent  # holds both backends' files
    assert graph_audit_main([str(folder)]) == EXIT_NON_TRITON
    out = capsys.readouterr().out
    assert "2 graph(s)" in out


@pytest.mark.parametrize("target, message", [
    ("/nonexistent/output_code.py", "no such file"),
    ("not_a_module_xyz:build", "cannot import"),
    ("tri_inductor.demo:no_such_callable", "has no callable"),
])
def test_bad_input_exits_2_with_a_clear_message(target, message, capsys):
    assert graph_audit_main([target]) == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_file_that_is_not_output_code_exits_2(tmp_path, capsys):
    f = tmp_path / "model.py"
    f.write_text("import torch\nprint('hello')\n")
    assert graph_audit_main([str(f)]) == EXIT_BAD_INPUT
    assert "no Inductor output code" in capsys.readouterr().err


def test_module_callable_from_current_directory(tmp_path, monkeypatch, capsys):
    if torch.cuda.is_available():
        pytest.skip("the CPU path is under test here")
    (tmp_path / "my_models.py").write_text(textwrap.dedent("""
        import torch
        import torch.nn.functional as F

        class Attn(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.qkv = torch.nn.Linear(64, 192)
            def forward(self, x):
                q, k, v = self.qkv(x).view(1, -1, 3, 1, 64).unbind(2)
                return F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                                      is_causal=True)

        def build():
            return Attn(), (torch.randn(1, 16, 64),)
    """))
    monkeypatch.chdir(tmp_path)
    assert graph_audit_main(["my_models:build"]) == EXIT_OK  # SDPA in codegen-only mode, all Triton
    assert graph_audit_main(["my_models:build", "--backend", "inductor", "--dtype", "fp16"]) == EXIT_NON_TRITON
    out = capsys.readouterr().out
    assert "extern_kernels" in out


def test_console_script_is_installed(dumped_output_code):
    proc = subprocess.run([sys.executable, "-m", "tri_inductor.cli", str(dumped_output_code["tri_inductor"])],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == EXIT_OK, proc.stderr
    import shutil

    assert shutil.which("graph-audit"), "pip install -e . installs the graph-audit console script"


# ---------------------------------------------------------------------------- exit codes (issue 22)


_MODELS = textwrap.dedent("""
    import torch

    class Lin(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.l = torch.nn.Linear(64, 64, bias=False)
        def forward(self, x):
            return self.l(x)

    class Raises(Lin):
        def forward(self, x):
            raise ValueError("the model is broken")

    @torch._dynamo.disable
    def _eager(x):
        return torch.sin(x)

    class Disabled(Lin):
        @torch._dynamo.disable
        def forward(self, x):
            return self.l(x)

    class Breaks(Lin):
        def forward(self, x):
            return self.l(_eager(self.l(x)))

    def raises():
        return Raises(), (torch.randn(8, 64),)

    def disabled():
        return Disabled(), (torch.randn(8, 64),)

    def breaks():
        return Breaks(), (torch.randn(8, 64),)

    def exits_0():
        raise SystemExit(0)

    def builder_fails():
        raise RuntimeError("cannot build")

    def wrong_type():
        return [1, 2, 3]
""")


@pytest.fixture
def user_models(tmp_path, monkeypatch):
    (tmp_path / "user_models.py").write_text(_MODELS)
    (tmp_path / "broken_import.py").write_text("import torch\nraise ImportError('a dependency is missing')\n")
    (tmp_path / "exits_on_import.py").write_text("raise SystemExit(0)\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    for name in ("user_models", "broken_import", "exits_on_import"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    return tmp_path


@pytest.mark.parametrize("target, code, message", [
    ("user_models:raises", EXIT_MODEL_FAILED, "ValueError: the model is broken"),
    ("user_models:exits_0", EXIT_MODEL_FAILED, "SystemExit: exit status 0"),
    ("user_models:builder_fails", EXIT_MODEL_FAILED, "RuntimeError: cannot build"),
    ("broken_import:build", EXIT_MODEL_FAILED, "ImportError: a dependency is missing"),
    ("exits_on_import:build", EXIT_MODEL_FAILED, "SystemExit"),
    ("user_models:disabled", EXIT_MODEL_FAILED, "no graph was compiled"),
    ("user_models:wrong_type", EXIT_BAD_INPUT, "must return (module, example_inputs)"),
])
def test_model_failures_exit_3_with_a_message(user_models, target, code, message, capsys):
    if torch.cuda.is_available():
        pytest.skip("the CPU path is under test here")
    assert graph_audit_main([target, "--dtype", "fp32"]) == code
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_graph_breaks_are_non_triton(user_models, capsys):
    """Ops between compiled graphs (here under torch._dynamo.disable) run eagerly: exit 1, named."""
    if torch.cuda.is_available():
        pytest.skip("the CPU path is under test here")
    assert graph_audit_main(["user_models:breaks", "--dtype", "fp32", "--json"]) == EXIT_NON_TRITON
    report = json.loads(capsys.readouterr().out)
    breaks = [k for g in report["graphs"] for k in g["kernels"] if k["name"] == "graph break"]
    assert len(breaks) == 1 and "torch.compiler.disable" in breaks[0]["op"] and breaks[0]["hint"]
    assert sum(1 for g in report["graphs"] if g["graph"] != "graph breaks") == 2  # before and after


def test_current_folder_is_appended_to_sys_path_not_first(tmp_path):
    """A stray module in the current folder must not shadow an installed one (here stdlib colorsys)."""
    (tmp_path / "colorsys.py").write_text("open('SHADOWED', 'w').write('ran')\n")
    (tmp_path / "my_probe.py").write_text("import colorsys\ndef build():\n    return 5\n")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    code = ("import sys\nfrom tri_inductor.cli import graph_audit_main\n"
            "rc = graph_audit_main(['my_probe:build'])\n"
            "print('CWD_LAST', sys.path.index(sys.path[-1]) == len(sys.path) - 1 and sys.path[-1] == __import__('os').getcwd())\n"
            "sys.exit(rc)\n")
    proc = subprocess.run([sys.executable, "-P", "-c", code], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == EXIT_BAD_INPUT, proc.stderr[-2000:]  # my_probe was found (appended path) ...
    assert "must return (module, example_inputs)" in proc.stderr and "CWD_LAST True" in proc.stdout
    assert not (tmp_path / "SHADOWED").exists()  # ... and colorsys came from the standard library
