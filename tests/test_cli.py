"""graph-audit: files, folders and MODULE:CALLABLE, with its three exit codes."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
import torch

from tri_inductor.cli import EXIT_BAD_INPUT, EXIT_NON_TRITON, EXIT_OK, graph_audit_main
from tri_inductor.demo import llama_block


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
