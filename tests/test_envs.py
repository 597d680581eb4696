"""TRI_INDUCTOR_* variables: one table (tri_inductor/envs.py), one rule, clear errors."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from tri_inductor import envs
from tri_inductor.options import FAMILIES, OptionsError, TriInductorOptions

ROOT = Path(__file__).resolve().parent.parent


def _garbage(var: envs.Var, tmp_path: Path) -> list[str]:
    """Values each variable must refuse: empty, blank, and a wrong value of its kind."""
    wrong = {
        "bool": ["maybe", "2", "enabled"],
        "families": ["rmsnorm", "rope,,linear", "rope,bogus"],
        "file": [str(tmp_path / "missing.json"), str(tmp_path)],
        "dir": [str(tmp_path / "a_file")],
        "new_file": [str(tmp_path)],
        "seconds": ["soon", "-5", "nan"],
        "count": ["many", "-1", "1.5"],
        "choice": ["bogus", "ours,triton_attn", "TRITON"],
    }[var.kind]
    (tmp_path / "a_file").write_text("x")
    return ["", "   ", *wrong]


@pytest.mark.parametrize("name", sorted(envs.VARS))
def test_every_variable_rejects_garbage_naming_the_accepted_values(name, monkeypatch, tmp_path):
    var = envs.VARS[name]
    for value in _garbage(var, tmp_path):
        monkeypatch.setenv(name, value)
        with pytest.raises(envs.EnvError) as e:
            envs.get(name)
        msg = str(e.value)
        assert name in msg and var.accepted in msg, msg
    monkeypatch.delenv(name)
    assert envs.get(name) == var.default


@pytest.mark.parametrize("name", [n for n, v in envs.VARS.items() if v.kind == "bool"])
def test_one_boolean_rule(name, monkeypatch):
    for raw, want in [("1", True), ("true", True), ("Yes", True), (" ON ", True),
                      ("0", False), ("false", False), ("No", False), ("off", False)]:
        monkeypatch.setenv(name, raw)
        assert envs.get(name) is want, raw


def test_attention_choice(monkeypatch):
    assert envs.attention({}) == "ours"
    assert envs.attention({"TRI_INDUCTOR_ATTENTION": "Ours"}) == "ours"


def test_read_on_each_call_not_at_import(monkeypatch):
    monkeypatch.setenv("TRI_INDUCTOR_PDL", "0")
    assert envs.pdl() is False
    monkeypatch.setenv("TRI_INDUCTOR_PDL", "1")
    assert envs.pdl() is True


def test_empty_patterns_is_an_error_not_every_pattern_off(monkeypatch):
    monkeypatch.setenv("TRI_INDUCTOR_PATTERNS", "")
    with pytest.raises(OptionsError, match="TRI_INDUCTOR_PATTERNS='' is empty; accepted values: all, none"):
        TriInductorOptions.from_mapping({})
    monkeypatch.setenv("TRI_INDUCTOR_PATTERNS", "none")
    assert TriInductorOptions.from_mapping({})[0].families == ()
    monkeypatch.setenv("TRI_INDUCTOR_PATTERNS", "all")
    assert TriInductorOptions.from_mapping({})[0].families == FAMILIES
    monkeypatch.setenv("TRI_INDUCTOR_PATTERNS", "rope, linear")
    assert TriInductorOptions.from_mapping({})[0].families == ("rope", "linear")
    # an option given explicitly wins over the environment
    assert TriInductorOptions.from_mapping({"patterns": ["rms_norm"]})[0].families == ("rms_norm",)


def test_strict_env_is_the_default_on_every_front_end(monkeypatch):
    from tri_inductor.vllm_config import read_options

    monkeypatch.setenv("TRI_INDUCTOR_STRICT", "1")
    assert TriInductorOptions.from_mapping({})[0].strict  # torch.compile's options
    assert read_options({}).strict  # vLLM's inductor_compile_config
    assert not read_options({"tri_inductor": {"strict": False}}).strict  # given: wins
    monkeypatch.setenv("TRI_INDUCTOR_STRICT", "sometimes")
    with pytest.raises(OptionsError, match="accepted values: 1/true/yes/on or 0/false/no/off"):
        TriInductorOptions.from_mapping({})
    with pytest.raises(OptionsError, match="TRI_INDUCTOR_STRICT"):
        read_options({})


def test_audit_means_the_same_on_both_front_ends():
    # One property decides whether reports are logged/enforced: the backend and the vLLM
    # compiler both ask it (strict audits regardless of audit=False).
    assert TriInductorOptions(audit=False).audits is False
    assert TriInductorOptions(audit=False, strict=True).audits is True
    assert TriInductorOptions().audits is True
    src = {f: (ROOT / "tri_inductor" / f).read_text() for f in ("backend.py", "vllm_compiler.py")}
    for name, text in src.items():
        assert "opts.audits" in text or "options.audits" in text, name


def test_consumers_use_the_table(monkeypatch, tmp_path):
    from tri_inductor import cache
    from tri_inductor.patterns import _pdl

    monkeypatch.setenv("TRI_INDUCTOR_PDL", "of")
    with pytest.raises(envs.EnvError, match="TRI_INDUCTOR_PDL"):
        _pdl.pdl_requested()
    monkeypatch.delenv("TRI_INDUCTOR_PDL")
    (tmp_path / "f").write_text("")
    monkeypatch.setenv("TRI_INDUCTOR_CACHE_DIR", str(tmp_path / "f"))
    with pytest.raises(envs.EnvError, match="is a file, not a folder"):
        cache.cache_root()
    monkeypatch.setenv("TRI_INDUCTOR_CACHE_DIR", str(tmp_path / "root"))
    assert cache.cache_root() == tmp_path / "root"
    monkeypatch.setenv("TRI_INDUCTOR_LINEAR_TUNED", str(tmp_path / "nope.json"))
    with pytest.raises(envs.EnvError, match="a path to an existing JSON tuning table"):
        cache.compile_hash("x", avoid_cuda_init=True)


_NAME = re.compile(r"TRI_INDUCTOR_[A-Z_]+[A-Z]")


def test_every_variable_mentioned_anywhere_is_in_the_table():
    seen = set()
    for path in [*(ROOT / "tri_inductor").rglob("*.py"), *(ROOT / "benchmarks").glob("*.py"),
                 ROOT / "README.md", *(ROOT / "docs").rglob("*.md")]:
        seen |= set(_NAME.findall(path.read_text()))
    assert seen - set(envs.VARS) == set(), "add these to tri_inductor/envs.py's VARS"


# The lead's GEMM files still read their variables directly; they switch to envs.tune() /
# envs.linear_tuned() in the patterns/gemm/ rewrite: drop them from this allowance then.
_DIRECT_READS_ALLOWED = {"patterns/linear.py", "tuning.py"}
_DIRECT = re.compile(r"""(environ(\.get)?[\[(]|getenv\()\s*["']TRI_INDUCTOR_""")


def test_nothing_else_reads_the_environment_directly():
    pkg = ROOT / "tri_inductor"
    offenders = [p.relative_to(pkg).as_posix() for p in pkg.rglob("*.py")
                 if _DIRECT.search(p.read_text()) and p.relative_to(pkg).as_posix() not in _DIRECT_READS_ALLOWED]
    assert offenders == []


def test_configuration_doc_is_generated_from_the_table():
    # rerun `python3 -m tri_inductor.envs > docs/configuration.md` after editing envs.VARS
    assert (ROOT / "docs" / "configuration.md").read_text() == envs.markdown_page()

