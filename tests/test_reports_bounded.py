"""``last_audit()`` keeps a bounded history: a process that recompiles does not grow without end."""
from __future__ import annotations

import torch

from tri_inductor import backend
from tri_inductor.audit.collect import on_output_code
from tri_inductor.options import TriInductorOptions


def test_thousand_recompiles_keep_reports_bounded(monkeypatch):
    import torch._inductor.compile_fx as cfx

    code = "# generated\n" + "x = 1\n" * 200  # the audit reads every line: keep it short

    def fake_compile_fx(gm, inputs, config_patches=None):
        on_output_code(code)  # what Inductor's save_output_code hook hands the auditor
        return gm.forward

    monkeypatch.setattr(cfx, "compile_fx", fake_compile_fx)
    gm = torch.fx.symbolic_trace(torch.nn.ReLU())
    opts = TriInductorOptions(patterns=())
    backend._REPORTS.clear()
    for _ in range(1000):
        backend.compile_graph(gm, [torch.randn(4)], opts)
    kept = backend.last_audit()
    assert len(kept) == backend.REPORTS_KEPT
    assert kept[-1].graph != kept[0].graph  # the newest are kept, oldest first
    assert sum(len(r.code or "") for r in kept) <= backend.REPORTS_KEPT * len(code)
