"""Hints name the pattern that would take the op; `tri-inductor audit --help` names itself."""
from __future__ import annotations

import pytest

from tri_inductor.audit.hints import hint_for


def test_bmm_hint_names_attention_first():
    h = hint_for("bmm")
    assert "`attention` pattern" in h and h.index("attention") < h.index("`linear`")
    assert "`linear` pattern" in hint_for("mm") and "attention" not in hint_for("mm")


def test_sdpa_hint_no_longer_says_masks_are_refused():
    assert "with or without attn_mask" in hint_for("_scaled_dot_product_efficient_attention")


def test_umbrella_audit_help_prog(capsys):
    from tri_inductor.cli import graph_audit_main, main

    with pytest.raises(SystemExit):
        main(["audit", "--help"])
    assert capsys.readouterr().out.startswith("usage: tri-inductor audit")
    with pytest.raises(SystemExit):
        graph_audit_main(["--help"])
    assert capsys.readouterr().out.startswith("usage: graph-audit")
