"""The vLLM plugin on a CPU machine: entry point, config adjustments, conflicts, compiler round trip.

vLLM 0.26 imports on CPU with ``current_platform`` = UnspecifiedPlatform.  Building a
``VllmConfig`` needs a device type, so these tests install a minimal CUDA-like platform (after
importing vLLM's compilation modules, whose import-time branches need the real CUDA ops when
the platform says CUDA).  Nothing here needs a GPU: the compile round trip runs in
codegen-only mode (real sm_90 Triton code for a fake H100).
"""
from __future__ import annotations

import ast
import collections
import dataclasses
import logging
import os
import pprint
import subprocess
import sys

import pytest

vllm = pytest.importorskip("vllm", reason="vLLM 0.26 is not installed (pip install --no-deps vllm==0.26.0)")
pytestmark = pytest.mark.vllm

import torch  # noqa: E402

import vllm.compilation.backends  # noqa: E402,F401  (import before the fake platform, see above)
import vllm.compilation.compiler_interface  # noqa: E402,F401
import vllm.model_executor.layers.logits_processor  # noqa: E402,F401
import vllm.platforms  # noqa: E402

from tri_inductor.testing.vllm_platform import cuda_like_platform as _cuda_like  # noqa: E402


@pytest.fixture(scope="module", autouse=True)
def cuda_like_platform():
    saved = vllm.platforms._current_platform
    vllm.platforms._current_platform = _cuda_like()
    yield
    vllm.platforms._current_platform = saved


@pytest.fixture(scope="module")
def plugin():
    """Load general plugins the way vLLM does (entry points), once."""
    import vllm.plugins

    vllm.plugins.plugins_loaded = False
    vllm.plugins.load_general_plugins()
    import tri_inductor.vllm_plugin as p

    return p


@pytest.fixture(scope="module", autouse=True)
def restore_our_logger():
    # The plugin routes the "tri_inductor" logger into vLLM's handlers (propagate off): undo that
    # after this module, or later tests' caplog sees none of our warnings.
    ours = logging.getLogger("tri_inductor")
    saved = (list(ours.handlers), ours.level, ours.propagate)
    yield
    ours.handlers[:] = saved[0]
    ours.setLevel(saved[1])
    ours.propagate = saved[2]


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    # adjust_vllm_config sets VLLM_USE_FLASHINFER_SAMPLER=0 in os.environ: undo after each test.
    monkeypatch.delenv("VLLM_USE_FLASHINFER_SAMPLER", raising=False)
    monkeypatch.delenv("TRI_INDUCTOR_STRICT", raising=False)
    monkeypatch.delenv("VLLM_USE_MEGA_AOT_ARTIFACT", raising=False)
    monkeypatch.delenv("TORCH_DISABLE_NATIVE_JIT", raising=False)
    monkeypatch.delenv("TRI_INDUCTOR_ATTENTION", raising=False)
    monkeypatch.delenv("VLLM_ALLREDUCE_USE_SYMM_MEM", raising=False)


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@pytest.fixture
def tri_log():
    h = _Records()
    logger = logging.getLogger("tri_inductor.vllm")
    logger.addHandler(h)
    import tri_inductor.vllm_plugin as p

    p._logged.clear()  # the plugin logs each change/conflict once per process
    yield h
    logger.removeHandler(h)


def _config(attention_backend: str | None = None, **cc_kwargs):
    from vllm.config import AttentionConfig, CompilationConfig, VllmConfig

    kwargs = {}
    if attention_backend is not None:
        kwargs["attention_config"] = AttentionConfig(backend=attention_backend)
    return VllmConfig(compilation_config=CompilationConfig(**cc_kwargs), **kwargs)


# ---------------------------------------------------------------- loading


def test_entry_point_declared_and_loaded(plugin):
    from importlib.metadata import entry_points

    eps = {ep.name: ep.value for ep in entry_points(group="vllm.general_plugins")}
    assert eps.get("tri_inductor") == "tri_inductor.vllm_plugin:register"
    from vllm.compilation import backends
    from vllm.config import VllmConfig

    assert getattr(backends.make_compiler, "_tri_inductor", False)
    assert getattr(backends.CompilerManager.compile, "_tri_inductor", False)
    assert getattr(VllmConfig.__post_init__, "_tri_inductor", False)
    before = backends.make_compiler
    plugin.register()  # idempotent: no double wrapping
    assert backends.make_compiler is before


def test_register_without_vllm_imports_nothing():
    code = ("import sys, tri_inductor.vllm_plugin as p; p.register(); "
            "assert not [m for m in sys.modules if m.startswith('vllm')]; assert not p._registered")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_hooks_apply_lazily_when_vllm_imports_later():
    # The order in vLLM's engine/worker processes: vllm imported, plugin registered, then the
    # modules we patch are imported (importlib.util.find_spec probes must not consume the hook).
    code = """
import sys, importlib.util, vllm
assert 'vllm.compilation.backends' not in sys.modules
import tri_inductor.vllm_plugin as p
p.register()
importlib.util.find_spec('vllm.compilation.backends')
from vllm.config import VllmConfig, CompilationConfig
import vllm.compilation.backends as B
from vllm.model_executor.layers.logits_processor import LogitsProcessor
assert VllmConfig.__post_init__._tri_inductor and CompilationConfig.__post_init__._tri_inductor
assert B.make_compiler._tri_inductor and B.CompilerManager.compile._tri_inductor
assert LogitsProcessor._apply_head._tri_inductor
"""
    subprocess.run([sys.executable, "-c", code], check=True, timeout=240)


# ---------------------------------------------------------------- config


@pytest.mark.parametrize("hybrid", [True, False], ids=["hybrid", "dense"])
def test_state_layers_get_vllms_triton_kernels(hybrid):
    # Qwen3-Next / Qwen3.5: vLLM picks the gated delta-net kernels outside custom_ops; Mamba's
    # selective state update has a FlashInfer choice
    from types import SimpleNamespace

    from tri_inductor import vllm_config as V

    def run(extra, env, ssu="TRITON"):
        mc = SimpleNamespace(is_hybrid=hybrid, has_inner_state=hybrid, is_attention_free=False)
        cfg = SimpleNamespace(model_config=mc, additional_config=extra,
                              mamba_config=SimpleNamespace(backend=SimpleNamespace(name=ssu)))
        changes, conflicts = [], []
        V._state_layers(cfg, env, changes.append, conflicts.append)
        for c in changes:
            c.apply()
        return conflicts

    extra, env = {}, {}
    assert run(extra, env) == []
    decode_env = V._gdn_decode_env_known()  # vLLM 0.34 has a CUDA decode kernel; 0.26 none
    if hybrid:
        assert extra == {"gdn_prefill_backend": "triton"}
        assert env == ({"VLLM_GDN_DECODE_KERNEL": "triton"} if decode_env else {})
    else:  # a dense model's config is left as it was
        assert extra == {} and env == {}
        return
    # the user's explicit choice of a non-Triton kernel is kept and named
    extra, env = {"gdn_prefill_backend": "flashinfer"}, {"VLLM_GDN_DECODE_KERNEL": "cuda"}
    conflicts = run(extra, env, ssu="FLASHINFER")
    assert extra == {"gdn_prefill_backend": "flashinfer"} and env == {"VLLM_GDN_DECODE_KERNEL": "cuda"}
    assert [c.setting for c in conflicts] == ["mamba_config.backend", "additional_config['gdn_prefill_backend']"] + (
        ["environment VLLM_GDN_DECODE_KERNEL"] if decode_env else [])


def test_backend_flag_alone_gives_triton_config(plugin, tri_log):
    cfg = _config(backend="tri_inductor")
    cc = cfg.compilation_config
    assert int(cc.mode) == 3  # VLLM_COMPILE: graph splitting, piecewise + full CUDA graphs, cache
    assert cc.backend == "tri_inductor"
    assert "none" in cc.custom_ops and "all" not in cc.custom_ops
    assert cfg.kernel_config.ir_op_priority.rms_norm == ["native"]  # as vLLM's own Inductor path
    assert cfg.kernel_config.ir_op_priority.fused_add_rms_norm == ["native"]
    from tri_inductor.vllm_config import ir_ops

    ops = ir_ops(cfg.kernel_config.ir_op_priority)  # read from vLLM (0.32+: gelu_and_mul_sparse too)
    assert {"rms_norm", "fused_add_rms_norm"} <= set(ops)
    assert all(getattr(cfg.kernel_config.ir_op_priority, op) == ["native"] for op in ops), ops
    # our paged attention by default, where this vLLM has the API it was built on
    from tri_inductor import hooks
    from tri_inductor.vllm_attention_select import unavailable_reason

    ours = unavailable_reason(hooks.signature_problem) is None
    assert cfg.attention_config.backend.name == ("CUSTOM" if ours else "TRITON_ATTN")
    assert os.environ["VLLM_USE_FLASHINFER_SAMPLER"] == "0"
    # vLLM's default, kept (FULL_AND_PIECEWISE; vLLM 0.34 gives a config without a model NONE)
    assert cc.cudagraph_mode == _config(backend="inductor").compilation_config.cudagraph_mode
    from tri_inductor.cache import compile_hash
    from tri_inductor.vllm_config import HASH_KEY, OPTIONS_KEY

    assert cc.inductor_compile_config[HASH_KEY] == compile_hash(avoid_cuda_init=True)
    assert cc.inductor_compile_config[OPTIONS_KEY]["strict"] is False
    assert any("custom_ops" in m for m in tri_log.messages)
    assert any("attention_config.backend" in m for m in tri_log.messages)
    # vLLM re-runs __post_init__ (dataclasses.replace): nothing changes twice
    from tri_inductor.vllm_config import adjust_vllm_config

    again = adjust_vllm_config(cfg, package_hash=compile_hash(avoid_cuda_init=True))
    assert again.changes == [] and again.conflicts == []


def test_compile_range_split_at_cudagraph_size(plugin, tri_log):
    """One compile range for the CUDA-graph sizes, one for eager (prefill) steps; vLLM's own path
    keeps its single range.  (Without a model, vLLM sizes no CUDA graphs: the sizes are set as
    vLLM's _set_cudagraph_sizes would, then __post_init__ re-runs as on dataclasses.replace.)"""
    from tri_inductor.vllm_config import split_range_at_cudagraph_size

    cfg = _config(backend="tri_inductor")
    cc = cfg.compilation_config
    end = cfg.scheduler_config.max_num_batched_tokens
    # (no CUDA graphs without a model: 0, or None on vLLM 0.34)
    assert cc.compile_ranges_endpoints == [end] and not cc.max_cudagraph_capture_size
    assert split_range_at_cudagraph_size(cfg) is None  # no CUDA graphs: nothing to split
    cc.max_cudagraph_capture_size = 512
    change = split_range_at_cudagraph_size(cfg)
    assert change is not None and change.new == [512, end]
    change.apply()
    assert [(r.start, r.end) for r in cc.get_compile_ranges()] == [(1, 512), (513, end)]
    assert split_range_at_cudagraph_size(cfg) is None  # idempotent
    cfg._set_compile_ranges()  # vLLM's own recomputation keeps our endpoint
    assert cc.compile_ranges_endpoints == [512, end]
    cc.max_cudagraph_capture_size = end  # every size captured: one range is enough
    cc.compile_ranges_endpoints = [end]
    assert split_range_at_cudagraph_size(cfg) is None


def test_one_compile_range_on_request(plugin, monkeypatch):
    """TRI_INDUCTOR_COMPILE_RANGES=one keeps vLLM's single range (being measured against the split)."""
    from tri_inductor.vllm_config import split_range_at_cudagraph_size

    cfg = _config(backend="tri_inductor")
    cfg.compilation_config.max_cudagraph_capture_size = 512
    monkeypatch.setenv("TRI_INDUCTOR_COMPILE_RANGES", "one")
    assert split_range_at_cudagraph_size(cfg) is None
    monkeypatch.setenv("TRI_INDUCTOR_COMPILE_RANGES", "split")
    assert split_range_at_cudagraph_size(cfg).new == [512, cfg.scheduler_config.max_num_batched_tokens]


def test_compile_range_reaches_gemm_dispatch(plugin, monkeypatch):
    """Our compiler traces a piece inside the compile range vLLM passes: the GEMM dispatch plan
    sees it (and nothing leaks out after the compile)."""
    from vllm.compilation.compiler_interface import InductorStandaloneAdaptor
    from vllm.config import set_current_vllm_config
    from vllm.config.utils import Range

    from tri_inductor.patterns.gemm import ops as L
    from tri_inductor.vllm_compiler import TriInductorCompiler

    seen = []

    def fake_compile(self, graph, example_inputs, compiler_config, compile_range, key=None):
        seen.append((L._TOKEN_RANGE.get(), len(L.dispatch_plan(4096, 4096, torch.bfloat16))))
        return (lambda *a: a), ("key", "path")

    monkeypatch.setattr(InductorStandaloneAdaptor, "compile", fake_compile)
    cfg = _config(backend="tri_inductor")
    gm, ex = _piece()
    with set_current_vllm_config(cfg):
        compiler = TriInductorCompiler()
        for rng in (Range(start=1, end=512), Range(start=513, end=8192)):
            compiler.compile(gm, ex, dict(cfg.compilation_config.inductor_compile_config), rng, key="k")
    full = len(L.dispatch_plan(4096, 4096, torch.bfloat16))
    assert [r for r, _ in seen] == [(1, 512), (513, 8192)] and L._TOKEN_RANGE.get() is None
    assert all(n < full for _, n in seen), (seen, full)


def test_without_plugin_effects_vllm_traps_are_real(plugin):
    # What vLLM itself does for a non-"inductor" backend name (the reason the plugin exists),
    # checked on vLLM's own backend "eager" so that our hook stays out of it.
    cfg = _config(backend="eager")
    assert "all" in cfg.compilation_config.custom_ops
    assert cfg.kernel_config.ir_op_priority.rms_norm[0] == "vllm_c"
    # and vLLM's own inductor path is left untouched by the plugin
    ind = _config(backend="inductor")
    assert ind.attention_config.backend is None
    assert "tri_inductor" not in ind.compilation_config.inductor_compile_config


def test_mega_aot_artifact_on_unless_user_chose(plugin):
    """Warm starts load pieces from vLLM's mega AOT artifact: set for our backend, never over a
    user's choice, never for vLLM's own backend."""
    import os

    from tri_inductor.vllm_config import MEGA_AOT_ENV, adjust_vllm_config

    _config(backend="tri_inductor")
    assert os.environ[MEGA_AOT_ENV] == "1"
    env = {MEGA_AOT_ENV: "0"}
    adjust_vllm_config(_config(backend="tri_inductor"), environ=env)
    assert env[MEGA_AOT_ENV] == "0"
    env = {"VLLM_DISABLE_COMPILE_CACHE": "1"}
    adjust_vllm_config(_config(backend="tri_inductor"), environ=env)
    assert MEGA_AOT_ENV not in env
    os.environ.pop(MEGA_AOT_ENV)
    _config(backend="inductor")
    assert MEGA_AOT_ENV not in os.environ


def test_explicit_mode_vllm_compile_accepted(plugin):
    cfg = _config(backend="tri_inductor", mode=3)
    assert int(cfg.compilation_config.mode) == 3
    with pytest.raises(Exception, match="Invalid backend"):
        _config(backend="not_a_backend", mode=3)  # vLLM's check still applies to others


@pytest.mark.parametrize("how", ["default", "env"])
def test_attention_default_gives_ours(plugin, monkeypatch, how):
    """By default (or TRI_INDUCTOR_ATTENTION=ours): our paged attention in vLLM's CUSTOM slot
    (TRITON_ATTN's kernel for what it declines)."""
    from tri_inductor import hooks
    from tri_inductor.vllm_attention_select import unavailable_reason

    if how == "env":
        monkeypatch.setenv("TRI_INDUCTOR_ATTENTION", "ours")
    cfg = _config(backend="tri_inductor")
    if unavailable_reason(hooks.signature_problem) is not None:  # (vLLM 0.34: see the next test)
        assert cfg.attention_config.backend.name == "TRITON_ATTN"
        return
    assert cfg.attention_config.backend.name == "CUSTOM"
    assert cfg.attention_config.backend.get_path() == "tri_inductor.vllm_attention.TriPagedAttentionBackend"


def test_attention_opt_out_gives_triton_attn(plugin, tri_log, monkeypatch):
    monkeypatch.setenv("TRI_INDUCTOR_ATTENTION", "triton_attn")
    cfg = _config(backend="tri_inductor")
    assert cfg.attention_config.backend.name == "TRITON_ATTN"
    assert any("TRI_INDUCTOR_ATTENTION=triton_attn" in m for m in tri_log.messages)


def test_attention_env_garbage_is_a_config_error(plugin, monkeypatch):
    from tri_inductor.vllm_config import TriInductorConfigError

    monkeypatch.setenv("TRI_INDUCTOR_ATTENTION", "flash")
    with pytest.raises(TriInductorConfigError, match="TRI_INDUCTOR_ATTENTION='flash'"):
        _config(backend="tri_inductor")


def test_our_attention_backend_resolves_and_reuses_triton_attn(plugin, monkeypatch):
    """Where this vLLM has the TRITON_ATTN API our backend was built on (hooks.TABLE: its impl, and
    a KV-cache layout we read, declared by TRITON_ATTN up to 0.33 or built for every layer by
    0.34), the CUSTOM slot resolves to ours and reuses TRITON_ATTN's parts; where it does not,
    TRI_INDUCTOR_ATTENTION=ours falls back to TRITON_ATTN and says why."""
    from vllm.v1.attention.backends.registry import AttentionBackendEnum
    from vllm.v1.attention.backends.triton_attn import TritonAttentionBackend, TritonAttentionImpl

    from tri_inductor import hooks
    from tri_inductor.vllm_attention_select import unavailable_reason

    why = unavailable_reason(hooks.signature_problem)
    if why is not None:
        monkeypatch.setenv("TRI_INDUCTOR_ATTENTION", "ours")
        assert _config(backend="tri_inductor").attention_config.backend.name == "TRITON_ATTN"
        assert "get_kv_cache_shape" in why or "CUSTOM" in why, why
        return
    cls = AttentionBackendEnum.CUSTOM.get_class()
    assert issubclass(cls, TritonAttentionBackend) and cls.get_name() == "CUSTOM"
    assert AttentionBackendEnum[cls.get_name()] is AttentionBackendEnum.CUSTOM  # vLLM's layer lookup
    assert issubclass(cls.get_impl_cls(), TritonAttentionImpl)
    # vLLM's metadata and CUDA-graph support; ours only tunes the prefill tiles when it is built
    assert issubclass(cls.get_builder_cls(), TritonAttentionBackend.get_builder_cls())
    assert cls.get_builder_cls()._cudagraph_support == TritonAttentionBackend.get_builder_cls()._cudagraph_support
    if hasattr(TritonAttentionBackend, "get_kv_cache_shape"):  # up to vLLM 0.33: the same layout, inherited
        assert cls.get_kv_cache_shape(10, 16, 8, 128) == TritonAttentionBackend.get_kv_cache_shape(10, 16, 8, 128)
    else:  # vLLM 0.34: every layer's cache is the logical (blocks, KV heads, block size, content) view
        from vllm.v1.kv_cache_interface import compute_layer_kv_cache_shape_bytes  # noqa: F401


def test_vllm_own_backends_untouched_by_our_attention(plugin):
    cfg = _config(backend="inductor")
    assert cfg.attention_config.backend is None  # vLLM picks (FLASH_ATTN on CUDA): we do nothing
    cfg = _config("TRITON_ATTN", backend="inductor")
    from vllm.v1.attention.backends.triton_attn import TritonAttentionBackend

    assert cfg.attention_config.backend.get_class() is TritonAttentionBackend


def test_user_triton_attention_backend_kept(plugin, tri_log):
    cfg = _config("TRITON_ATTN_DIFFKV", backend="tri_inductor")
    assert cfg.attention_config.backend.name == "TRITON_ATTN_DIFFKV"
    assert not any("conflicts" in m for m in tri_log.messages)


def test_conflict_warns_and_keeps_user_setting(plugin, tri_log):
    cfg = _config("FLASH_ATTN", backend="tri_inductor")
    assert cfg.attention_config.backend.name == "FLASH_ATTN"  # explicit user choice wins
    warning = [m for m in tri_log.messages if "attention_backend='FLASH_ATTN' conflicts" in m]
    assert warning and "Fix: use one of ['TRITON_ATTN'" in warning[0]


def test_custom_ops_all_conflict(plugin, tri_log):
    cfg = _config(backend="tri_inductor", custom_ops=["all"])
    assert "all" in cfg.compilation_config.custom_ops
    assert any("compilation_config.custom_ops=['all'] conflicts" in m for m in tri_log.messages)


@pytest.mark.parametrize("how", ["option", "env"])
def test_strict_mode_raises(plugin, monkeypatch, how):
    from tri_inductor.vllm_config import TriInductorConfigError

    icc = {}
    if how == "option":
        icc = {"tri_inductor": {"strict": True}}
    else:
        monkeypatch.setenv("TRI_INDUCTOR_STRICT", "1")
    with pytest.raises(TriInductorConfigError) as e:
        _config("FLASH_ATTN", backend="tri_inductor", inductor_compile_config=icc)
    msg = str(e.value)
    assert "attention_backend='FLASH_ATTN'" in msg and "Fix:" in msg and "TRITON_ATTN" in msg
    # strict and clean: fine
    cfg = _config(backend="tri_inductor", inductor_compile_config=dict(icc))
    assert cfg.attention_config.backend.name in ("CUSTOM", "TRITON_ATTN")  # Triton backends, no conflict


def test_strict_sampler_env_conflict(plugin, monkeypatch):
    from tri_inductor.vllm_config import TriInductorConfigError

    monkeypatch.setenv("VLLM_USE_FLASHINFER_SAMPLER", "1")
    with pytest.raises(TriInductorConfigError, match="VLLM_USE_FLASHINFER_SAMPLER='1'.*unset"):
        _config(backend="tri_inductor", inductor_compile_config={"tri_inductor": {"strict": True}})


def test_unknown_option_is_an_error(plugin):
    from tri_inductor.vllm_config import TriInductorConfigError

    with pytest.raises(TriInductorConfigError, match="unknown tri_inductor option"):
        _config(backend="tri_inductor", inductor_compile_config={"tri_inductor": {"stric": True}})


# ---------------------------------------------------------------- compiler


def test_make_compiler_gives_ours(plugin):
    from vllm.config import set_current_vllm_config

    from tri_inductor.vllm_compiler import TriInductorCompiler, compiler_key

    cfg = _config(backend="tri_inductor")
    with set_current_vllm_config(cfg):
        compiler = _manager(cfg.compilation_config).compiler
    assert isinstance(compiler, TriInductorCompiler) and compiler.name == "tri_inductor"
    assert isinstance(TriInductorCompiler(), TriInductorCompiler)  # no-argument construction
    h1 = compiler_key(compiler, cfg)
    assert h1 == compiler_key(compiler, cfg)
    strict = _config(backend="tri_inductor", inductor_compile_config={"tri_inductor": {"gemm": "templates"}})
    assert compiler_key(compiler, strict) != h1
    assert _config_key(strict.compilation_config) != _config_key(cfg.compilation_config)


def _config_key(compilation_config) -> str:
    """vLLM's cache key of a CompilationConfig (0.34: compile_factors)."""
    if hasattr(compilation_config, "compile_factors"):
        return repr(compilation_config.compile_factors())
    return compilation_config.compute_hash()


def _manager(compilation_config):
    """A CompilerManager as vLLM builds one (0.33+ passes the keyword-only use_aot_compile)."""
    from vllm.compilation.backends import CompilerManager

    from tri_inductor import hooks

    if hooks.accepts_keyword(CompilerManager.__init__, "use_aot_compile"):
        return CompilerManager(compilation_config, use_aot_compile=True)  # vLLM's default
    return CompilerManager(compilation_config)


def _piece():
    from torch.fx.experimental.proxy_tensor import make_fx

    def piece(x, w, w2):  # an RMSNorm -> linear -> SiLU piece, as aten (call_function only)
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + 1e-6)
        return torch.nn.functional.silu((h.to(x.dtype) * w) @ w2.t())

    ex = [torch.randn(8, 64, dtype=torch.bfloat16), torch.randn(64, dtype=torch.bfloat16),
          torch.randn(128, 64, dtype=torch.bfloat16)]
    return make_fx(piece)(*ex), ex


def test_compile_load_round_trip_codegen_only(plugin, tmp_path, monkeypatch):
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.fx.experimental.symbolic_shapes import ShapeEnv
    from vllm.config import set_current_vllm_config
    from vllm.config.utils import Range

    from tri_inductor.testing.codegen_only import fake_cuda_inputs, fake_sm90
    from tri_inductor.vllm_compiler import run_audit

    # The per-piece handle path (vLLM's cache file -> our load), i.e. without the mega AOT artifact.
    monkeypatch.setenv("VLLM_USE_MEGA_AOT_ARTIFACT", "0")
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    # patterns=[]: this checks the compiler plumbing, not the pattern families (tested elsewhere)
    cfg = _config(backend="tri_inductor",
                  inductor_compile_config={"tri_inductor": {"codegen_only": True, "patterns": []}})
    gm, ex = _piece()
    before = sum(run_audit().graphs.values())
    with set_current_vllm_config(cfg):
        compiler = _manager(cfg.compilation_config).compiler
        compiler.initialize_cache(str(tmp_path / "vllm"))
        (tmp_path / "vllm").mkdir(exist_ok=True)
        rng = Range(start=8, end=8)
        with fake_sm90():
            inputs, _ = fake_cuda_inputs(ex, FakeTensorMode(shape_env=ShapeEnv(), allow_non_fake_inputs=True))
            config = dict(cfg.compilation_config.inductor_compile_config)
            fn, handle = compiler.compile(gm, inputs, config, rng, key="artifact_compile_range_8_8_subgraph_0")
            assert callable(fn)
            # vllm_compile_cache.py: pprint out, ast.literal_eval in
            assert ast.literal_eval(pprint.pformat(handle)) == handle
            assert all(isinstance(h, str) for h in handle) and os.path.exists(handle[1])
            loaded = compiler.load(handle, gm, inputs, 0, rng)
            assert callable(loaded)
    audit = run_audit()
    assert sum(audit.graphs.values()) >= before + 2  # the compile and the load were both audited
    assert "audit summary" in audit.summary()
    # our keys never reach Inductor; the Triton-only settings do
    from tri_inductor.vllm_compiler import inductor_config

    _, ind = inductor_config(cfg.compilation_config.inductor_compile_config)
    assert "tri_inductor" not in ind and "tri_inductor_package_hash" not in ind
    assert ind["max_autotune_gemm_backends"] == "TRITON"
    assert ind["post_grad_custom_post_pass"] is not None


def _layer_piece():
    from torch.fx.experimental.proxy_tensor import make_fx

    def add_norm(x, residual, norm_w):  # vLLM's native fused_add_rms_norm (IR op body)
        s = x.to(torch.float32) + residual.to(torch.float32)
        new_res = s.to(torch.bfloat16)
        h = s * torch.rsqrt(s.pow(2).mean(dim=-1, keepdim=True) + 1e-5)
        return h.to(torch.bfloat16) * torch.ops.aten.alias(norm_w), new_res  # vLLM passes weight.data

    def piece(a, w_o, residual, norm_w, w_up, w_down, norm_w2):
        # vLLM's piece between two attentions: o_proj, add+norm, MLP, add+norm (its new residual
        # read back as fp32: a round trip Inductor folds away before our pass), next projection.
        h, res = add_norm(a @ w_o.t(), residual, norm_w)
        h, res = add_norm(h @ w_up.t() @ w_down.t(), res, norm_w2)
        return h @ w_o.t(), res

    bf = dict(dtype=torch.bfloat16)
    ex = [torch.randn(8, 64, **bf), torch.randn(64, 64, **bf), torch.randn(8, 64, **bf), torch.randn(64, **bf),
          torch.randn(128, 64, **bf), torch.randn(64, 128, **bf), torch.randn(64, **bf)]
    return make_fx(piece)(*ex), ex


@pytest.mark.parametrize("which", ["norm_linear_silu", "layer"])
def test_patterns_run_inside_vllm_pass_manager_codegen_only(plugin, tmp_path, monkeypatch, which):
    """A piece compiled as VllmBackend does it (vLLM's configured PostGradPassManager in the
    config, vLLM's pass context) with all our pattern families: every kernel is Triton, and the
    norm (plain, or vLLM's fused residual add + norm after a projection) is ours."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.fx.experimental.symbolic_shapes import ShapeEnv
    from vllm.compilation.passes.pass_manager import PostGradPassManager
    from vllm.compilation.passes.utility import fix_functionalization
    from vllm.config import set_current_vllm_config
    from vllm.config.utils import Range

    from tri_inductor import audit
    from tri_inductor.testing.codegen_only import fake_cuda_inputs, fake_sm90
    from tri_inductor.vllm_compiler import TriInductorVllmPass

    monkeypatch.setattr(fix_functionalization.FixFunctionalizationPass, "__call__", lambda self, graph: None)
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    cfg = _config(backend="tri_inductor", inductor_compile_config={"tri_inductor": {"codegen_only": True}})
    gm, ex = _piece() if which == "norm_linear_silu" else _layer_piece()
    (tmp_path / "vllm").mkdir(exist_ok=True)
    with set_current_vllm_config(cfg):
        pm = PostGradPassManager()
        pm.configure(cfg)
        manager = _manager(cfg.compilation_config)
        manager.compiler.initialize_cache(str(tmp_path / "vllm"))
        rng = Range(start=8, end=8)
        with fake_sm90(), manager.compile_context(rng), audit.collect_reports() as reports:
            inputs, _ = fake_cuda_inputs(ex, FakeTensorMode(shape_env=ShapeEnv(), allow_non_fake_inputs=True))
            config = dict(cfg.compilation_config.inductor_compile_config, post_grad_custom_post_pass=pm)
            _, handle = manager.compiler.compile(gm, inputs, config, rng, key="artifact_compile_range_8_8_subgraph_0")
    assert ast.literal_eval(pprint.pformat(handle)) == handle
    assert isinstance(pm.passes[-1], TriInductorVllmPass)
    assert reports and all(r.ok for r in reports), audit.format_reports(reports)
    hits = collections.Counter()
    for r in reports:
        hits.update(r.pattern_hits)
    assert hits["rms_norm"] == (1 if which == "norm_linear_silu" else 2) and hits["linear"] >= 1, hits


def test_pattern_pass_joins_vllm_pass_manager(plugin):
    from vllm.compilation.passes.pass_manager import PostGradPassManager
    from vllm.config import set_current_vllm_config

    from tri_inductor.vllm_compiler import TriInductorVllmPass, inductor_config

    cfg = _config(backend="tri_inductor", inductor_compile_config={"tri_inductor": {"patterns": []}})
    with set_current_vllm_config(cfg):
        pm = PostGradPassManager()
        pm.configure(cfg)
    n = len(pm.passes)
    given = dict(cfg.compilation_config.inductor_compile_config, post_grad_custom_post_pass=pm)
    _, ind = inductor_config(given)
    _, ind = inductor_config(given)  # every piece: added once
    assert ind["post_grad_custom_post_pass"] is pm  # vLLM's manager kept, not replaced
    assert len(pm.passes) == n + 1 and isinstance(pm.passes[-1], TriInductorVllmPass)


# ---------------------------------------------------------------- logits


def test_lm_head_routed_only_for_our_backend(plugin):
    from vllm.config import set_current_vllm_config
    from vllm.model_executor.layers.logits_processor import LogitsProcessor

    assert getattr(LogitsProcessor._apply_head, "_tri_inductor", False)
    with set_current_vllm_config(_config(backend="tri_inductor")):
        ours = LogitsProcessor(64)
    with set_current_vllm_config(_config(backend="inductor")):
        theirs = LogitsProcessor(64)
    assert ours._tri_inductor_head is True and theirs._tri_inductor_head is False


@pytest.mark.parametrize("method", ["embedding", "linear"])
def test_lm_head_numerics_on_triton_interpreter(plugin, method):
    """Both unquantized heads: vLLM's embedding method, and (vLLM 0.33+: an unquantized lm_head
    in a quantized model) its linear method."""
    from tri_inductor.patterns.gemm import ops  # noqa: F401  (registers tri_inductor::mm)
    from vllm.config import set_current_vllm_config
    from vllm.model_executor.layers.linear import UnquantizedLinearMethod
    from vllm.model_executor.layers.logits_processor import LogitsProcessor
    from vllm.model_executor.layers.vocab_parallel_embedding import UnquantizedEmbeddingMethod

    from tri_inductor.vllm_logits import triton_lm_head

    with set_current_vllm_config(_config(backend="tri_inductor")):
        proc = LogitsProcessor(96)

    class Head(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.weight = torch.nn.Parameter(torch.randn(96, 32) / 8)
            self.quant_method = UnquantizedEmbeddingMethod() if method == "embedding" else UnquantizedLinearMethod()

    head = Head()
    x = torch.randn(5, 32)
    proc.head_dtype = None
    got = triton_lm_head(proc, head, x, None)
    assert got is not None and got.shape == (5, 96)
    torch.testing.assert_close(got, x @ head.weight.t(), atol=1e-3, rtol=1e-3)


def test_lm_head_warm_up_covers_every_batch_bucket(plugin):
    """The first lm_head call (vLLM's start-up dummy run) launches one GEMM per M bucket up to
    max_num_seqs, so no batch size compiles a kernel mid-serving."""
    from vllm.config import set_current_vllm_config
    from vllm.model_executor.layers.logits_processor import LogitsProcessor

    from tri_inductor.patterns.gemm import configs as L
    from tri_inductor.vllm_logits import _MAX_ROWS, warm_up

    cfg = _config(backend="tri_inductor")
    with set_current_vllm_config(cfg):
        proc = LogitsProcessor(96)
    max_rows = getattr(proc, _MAX_ROWS)
    assert max_rows == cfg.scheduler_config.max_num_seqs > 1

    seen = []
    warm_up(lambda a: seen.append(a.shape[0]), torch.zeros(3, 32), max_rows)
    assert {L.bucket_of(m) for m in seen} == {L.bucket_of(m) for m in range(1, max_rows + 1)}
    assert max(seen) == max_rows


# ---------------------------------------------------------------- vLLM's backend, end to end (CPU)


@pytest.fixture
def vllm_cpu_env(tmp_path, monkeypatch):
    """What VllmBackend needs on a CPU machine: caches under tmp_path, no _C fix-up pass."""
    from vllm.compilation.passes.utility import fix_functionalization

    # vLLM's last post-grad pass looks up torch.ops._C.* (vLLM's CUDA extension, absent here).
    monkeypatch.setattr(fix_functionalization.FixFunctionalizationPass, "__call__", lambda self, graph: None)
    monkeypatch.setenv("VLLM_CACHE_ROOT", str(tmp_path / "vllm_cache"))
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    import vllm.envs

    monkeypatch.setattr(vllm.envs, "VLLM_CACHE_ROOT", str(tmp_path / "vllm_cache"), raising=False)


def _norm_linear_silu(x, w, w2):
    h = x.float()
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + 1e-6)
    return torch.nn.functional.silu((h.to(x.dtype) * w) @ w2.t())


def _run_vllm_backend(backend_name: str, inductor_compile_config: dict, *args: torch.Tensor):
    """``_norm_linear_silu`` through a fresh VllmBackend (dynamic batch, no CUDA graphs): (backend, out)."""
    from vllm.compilation.backends import VllmBackend
    from vllm.config import CUDAGraphMode, set_current_vllm_config

    cfg = _config(backend=backend_name, inductor_compile_config=inductor_compile_config)
    cfg.compilation_config.cudagraph_mode = CUDAGraphMode.NONE
    if cfg.compilation_config.compile_sizes is None:  # vLLM 0.34, a config without a model
        cfg.compilation_config.compile_sizes = []
    torch._dynamo.reset()
    x = args[0].clone()
    torch._dynamo.mark_dynamic(x, 0)
    with set_current_vllm_config(cfg):
        backend = VllmBackend(cfg)
        out = torch.compile(_norm_linear_silu, backend=backend, fullgraph=True)(x, *args[1:])
    return backend, out


def test_vllm_backend_end_to_end_on_cpu(plugin, vllm_cpu_env, monkeypatch):
    """VllmBackend (graph split, PiecewiseBackend, CompilerManager, cache) with our compiler, on
    CPU tensors: cold compile, then a warm start that loads the piece through our ``load``.
    (On CPU Inductor writes C++ kernels: the audit reports them; this checks the plumbing.)"""
    # The per-piece handle path (vLLM's cache file -> our load), i.e. without the mega AOT artifact.
    monkeypatch.setenv("VLLM_USE_MEGA_AOT_ARTIFACT", "0")
    from vllm.compilation.counter import compilation_counter

    from tri_inductor.vllm_compiler import TriInductorVllmPass

    args = torch.randn(8, 64), torch.randn(64), torch.randn(128, 64)
    expected = _norm_linear_silu(*args)
    icc = {"tri_inductor": {"patterns": []}, "combo_kernels": False, "benchmark_combo_kernel": False}
    loaded = compilation_counter.num_compiled_artifacts_loaded
    backend, out = _run_vllm_backend("tri_inductor", icc, *args)
    torch.testing.assert_close(out, expected)
    passes = backend.inductor_config["post_grad_custom_post_pass"].passes
    assert sum(isinstance(p, TriInductorVllmPass) for p in passes) == 1
    assert type(backend.compiler_manager.compiler).__name__ == "TriInductorCompiler"
    _, out = _run_vllm_backend("tri_inductor", icc, *args)  # warm: vllm_compile_cache.py -> our load
    torch.testing.assert_close(out, expected)
    assert compilation_counter.num_compiled_artifacts_loaded > loaded
    torch._dynamo.reset()


@pytest.mark.parametrize("name,value", [("TRI_INDUCTOR_STRICT", "sometimes"), ("TRI_INDUCTOR_PDL", ""),
                                        ("TRI_INDUCTOR_PATTERNS", "rmsnorm")])
def test_garbage_env_is_our_config_error_and_never_breaks_vllms_backend(plugin, monkeypatch, name, value):
    from tri_inductor.vllm_config import TriInductorConfigError

    monkeypatch.setenv(name, value)
    with pytest.raises(TriInductorConfigError, match=f"{name}=.*accepted values: "):
        _config(backend="tri_inductor")
    _config(backend="inductor")  # vLLM's own backend never reads our variables
def test_vllm_own_inductor_backend_unaffected_on_cpu(plugin, vllm_cpu_env):
    """With tri_inductor installed and its hooks in place, vLLM's own ``inductor`` backend compiles
    and runs as without us (VllmBackend, graph split, its own compiler and passes, cold then warm):
    a plugin loaded into every vLLM process must never break vLLM."""
    from vllm.compilation import backends as vllm_backends
    from vllm.compilation.compiler_interface import InductorStandaloneAdaptor

    from tri_inductor import hooks
    from tri_inductor.vllm_compiler import TriInductorCompiler, TriInductorVllmPass

    assert getattr(vllm_backends.make_compiler, hooks.MARK, False)  # our hooks are installed
    args = torch.randn(8, 64), torch.randn(64), torch.randn(128, 64)
    expected = _norm_linear_silu(*(a.double() for a in args))
    for _ in ("cold", "warm"):
        icc = {"combo_kernels": False, "benchmark_combo_kernel": False}
        backend, out = _run_vllm_backend("inductor", icc, *args)
        assert "tri_inductor" not in backend.compilation_config.inductor_compile_config  # config untouched
        torch.testing.assert_close(out.double(), expected, atol=1e-4, rtol=1e-4)
        compiler = backend.compiler_manager.compiler
        assert type(compiler) is InductorStandaloneAdaptor and not isinstance(compiler, TriInductorCompiler)
        passes = getattr(backend.inductor_config.get("post_grad_custom_post_pass"), "passes", [])
        assert not any(isinstance(p, TriInductorVllmPass) for p in passes)
    torch._dynamo.reset()


# ---------------------------------------------------------------- versions, warm-start audit


def test_untested_versions_warn_and_strict_refuses_only_our_backend(plugin, monkeypatch, tri_log):
    from tri_inductor import hooks
    from tri_inductor.vllm_config import TriInductorConfigError

    monkeypatch.setattr(hooks, "installed_version",
                        lambda p: {"torch": "2.99.0", "triton": "3.6.0", "vllm": "0.26.0"}.get(p))
    assert plugin.check_versions() == ["torch 2.99.0 (tested: 2.11 to 2.14)"]
    plugin.check_versions()  # one warning per process
    warned = [m for m in tri_log.messages if "not been tested" in m]
    assert len(warned) == 1 and "torch 2.99.0" in warned[0] and "vLLM 0.26-0.34" in warned[0]
    try:
        assert _config(backend="tri_inductor").compilation_config.backend == "tri_inductor"  # default: runs
        with pytest.raises(TriInductorConfigError, match="torch 2.99.0"):
            _config(backend="tri_inductor", inductor_compile_config={"tri_inductor": {"strict": True}})
        assert _config(backend="inductor").compilation_config.backend == "inductor"  # vLLM's own: untouched
    finally:
        plugin.untested.clear()


def test_warm_start_loads_outside_our_compiler_are_audited(plugin):
    """vLLM >= 0.27 rebuilds warm starts from its AOT artifact without calling our load(): the
    output code it loads (PyCodeCache) is audited once a model of ours has been built."""
    from torch._inductor.codecache import PyCodeCache
    from vllm.config import set_current_vllm_config
    from vllm.model_executor.layers.logits_processor import LogitsProcessor

    from tri_inductor.audit import collect
    from tri_inductor.vllm_compiler import run_audit

    code = "extern_kernels = None\ndef call(args):\n    buf0 = extern_kernels.mm(args[0], args[1])\n    return (buf0,)\n"
    try:
        collect.audit_loads_outside_collectors(None)  # as in a process with no model of ours
        before = run_audit().graphs["warm-load"]
        PyCodeCache.load(code + "# not ours\n")
        assert run_audit().graphs["warm-load"] == before
        with set_current_vllm_config(_config(backend="tri_inductor")):
            LogitsProcessor(64)  # a model of ours being built arms the warm-start audit
        non_triton = sum(run_audit().non_triton.values())
        PyCodeCache.load(code)
        PyCodeCache.load(code)  # the same module again (cached): one report
        assert run_audit().graphs["warm-load"] == before + 1
        assert sum(run_audit().non_triton.values()) == non_triton + 1  # extern_kernels.mm named
    finally:
        collect.audit_loads_outside_collectors(None)


def test_torch_native_cutedsl_kernels_switched_off_for_our_backend(plugin, monkeypatch, tri_log):
    """torch >= 2.13: TORCH_DISABLE_NATIVE_JIT=1 for the engine/worker processes vLLM starts next;
    an explicit 0 is kept and named (strict: refused). torch < 2.13 has no such kernels."""
    from tri_inductor import hooks
    from tri_inductor.vllm_config import TriInductorConfigError

    _config(backend="inductor")
    assert "TORCH_DISABLE_NATIVE_JIT" not in os.environ  # vLLM's own backend: untouched
    _config(backend="tri_inductor")
    if not hooks.torch_at_least(2, 13):
        assert "TORCH_DISABLE_NATIVE_JIT" not in os.environ
        return
    assert os.environ["TORCH_DISABLE_NATIVE_JIT"] == "1"
    monkeypatch.setenv("TORCH_DISABLE_NATIVE_JIT", "0")
    _config(backend="tri_inductor")
    assert os.environ["TORCH_DISABLE_NATIVE_JIT"] == "0"
    assert any("TORCH_DISABLE_NATIVE_JIT='0' conflicts" in m for m in tri_log.messages)
    with pytest.raises(TriInductorConfigError, match="TORCH_DISABLE_NATIVE_JIT"):
        _config(backend="tri_inductor", inductor_compile_config={"tri_inductor": {"strict": True}})


def test_combo_kernels_not_benchmarked(plugin):
    """vLLM's GPU default (combo kernels, benchmarked at compile time) becomes combo kernels
    without the benchmark for our backend only (synthetic inputs faulted on Llama-3.2-1B); a user's
    other choice is kept."""
    from vllm.config import CompilationConfig, VllmConfig

    from tri_inductor.vllm_config import adjust_vllm_config

    cfg = _config(backend="tri_inductor")
    icc = cfg.compilation_config.inductor_compile_config
    icc.update(combo_kernels=True, benchmark_combo_kernel=True)  # as CompilationConfig sets on a GPU
    adjust_vllm_config(cfg)
    assert icc["combo_kernels"] is True and icc["benchmark_combo_kernel"] is False
    icc.update(combo_kernels=False, benchmark_combo_kernel=True)  # a user's choice
    adjust_vllm_config(cfg)
    assert icc["combo_kernels"] is False and icc["benchmark_combo_kernel"] is True
    ind = VllmConfig(compilation_config=CompilationConfig(
        backend="inductor", inductor_compile_config={"combo_kernels": True, "benchmark_combo_kernel": True}))
    assert ind.compilation_config.inductor_compile_config["benchmark_combo_kernel"] is True


def test_compile_time_autotuning_off_with_a_warm_up_before_each_capture(plugin):
    """Inductor's compile-time autotuning (on under standalone_compile) compiles every kernel of a
    piece serially on vLLM's main thread: off for our backend, with one eager warm-up before each
    CUDA-graph capture (Inductor's multi-config kernels pick at their first run); a user's value
    of either is kept, and vLLM's own backend is not touched."""
    from vllm.config import CompilationConfig, VllmConfig

    from tri_inductor.vllm_config import adjust_vllm_config

    cfg = _config(backend="tri_inductor")
    icc, cc = cfg.compilation_config.inductor_compile_config, cfg.compilation_config
    icc.pop("triton.autotune_at_compile_time", None)
    cc.cudagraph_num_of_warmups = 0
    adjust_vllm_config(cfg)
    assert icc["triton.autotune_at_compile_time"] is False and cc.cudagraph_num_of_warmups == 1
    icc["triton.autotune_at_compile_time"] = True  # a user's choice
    cc.cudagraph_num_of_warmups = 0
    adjust_vllm_config(cfg)
    assert icc["triton.autotune_at_compile_time"] is True and cc.cudagraph_num_of_warmups == 0
    ind = VllmConfig(compilation_config=CompilationConfig(backend="inductor"))
    assert "triton.autotune_at_compile_time" not in ind.compilation_config.inductor_compile_config
# ---------------------------------------------------------------- tensor parallelism


def test_tensor_parallel_comms_on_nccl_for_our_backend_only(plugin, monkeypatch, tri_log):
    """TP > 1: vLLM's custom all-reduce (a CUDA extension kernel), torch's symmetric-memory
    all-reduce and FlashInfer's fused all-reduce + RMSNorm are turned off for our backend, so the
    all-reduces go to NCCL; vLLM's own backend and TP = 1 are not touched."""
    import os

    from vllm.config import CompilationConfig, ParallelConfig, PassConfig, VllmConfig

    from tri_inductor.vllm_config import TriInductorConfigError, adjust_vllm_config

    def config(backend, tp, **pass_kwargs):
        return VllmConfig(parallel_config=ParallelConfig(tensor_parallel_size=tp),
                          compilation_config=CompilationConfig(backend=backend, pass_config=PassConfig(**pass_kwargs)))

    config("inductor", 2)
    config("tri_inductor", 1)
    assert "VLLM_ALLREDUCE_USE_SYMM_MEM" not in os.environ  # neither vLLM's backend nor TP = 1
    ours = config("tri_inductor", 2)
    assert ours.parallel_config.disable_custom_all_reduce is True
    assert os.environ["VLLM_ALLREDUCE_USE_SYMM_MEM"] == "0"
    pc = ours.compilation_config.pass_config
    async_tp = "fuse_gemm_comms" in {f.name for f in dataclasses.fields(pc)}  # vLLM 0.34 has no such pass
    assert pc.fuse_allreduce_rms is False and (not async_tp or pc.fuse_gemm_comms is False)
    # On CPU vLLM turns its custom all-reduce off itself (no CUDA platform at its import); on CUDA
    # it stays on: from there, our adjustment turns it off (pydantic's assignment would re-validate).
    object.__setattr__(ours.parallel_config, "disable_custom_all_reduce", False)
    adj = adjust_vllm_config(ours)
    assert [c.setting for c in adj.changes] == ["parallel_config.disable_custom_all_reduce"]
    assert ours.parallel_config.disable_custom_all_reduce is True
    # an explicit fused all-reduce + norm is kept, with a conflict naming it (strict: an error).
    # (Through VllmConfig vLLM would import its fusion pass, which needs its CUDA extension.)
    object.__setattr__(pc, "fuse_allreduce_rms", True)
    adj = adjust_vllm_config(ours)
    assert pc.fuse_allreduce_rms is True and adj.changes == []
    assert [c.setting for c in adj.conflicts] == ["compilation_config.pass_config.fuse_allreduce_rms"]
    monkeypatch.setenv("TRI_INDUCTOR_STRICT", "1")
    if async_tp:
        with pytest.raises(TriInductorConfigError, match="fuse_gemm_comms"):
            config("tri_inductor", 2, fuse_gemm_comms=True)
    else:  # a vLLM without async TP: nothing to turn off, nothing to refuse
        with pytest.raises(TriInductorConfigError, match="fuse_allreduce_rms"):
            config("tri_inductor", 2, fuse_allreduce_rms=True)
