"""tri_inductor.compile_ahead: tuning candidates compiled on a background thread before they are
tuned (docs/design/cold_start.md).

What must hold for it to help and never hurt: the meta tensors it compiles with specialise every
kernel exactly as the tuner's real tensors do (else the tuner compiles again); a shape whose
compile has not started is taken back by the tuner (no waiting behind other shapes); vLLM's
linear layers queue the GEMM shapes (and a gate_up its fused form), attention layers the prefill.
Runs in codegen-only mode (fake sm_90): real Triton compiles, nothing launched.
"""
from __future__ import annotations

import collections
import inspect
import threading

import pytest
import torch

from tri_inductor import compile_ahead


@pytest.fixture
def sm90(monkeypatch):
    if torch.cuda.is_available():
        pytest.skip("codegen-only mode is for machines without a GPU")
    from tri_inductor.testing.codegen_only import fake_sm90

    compile_ahead.forget()
    with fake_sm90():
        yield
    compile_ahead.forget()


def _recorded_warmups(monkeypatch):
    """Every compile-only launch as (kernel, args, kwargs), nothing compiled."""
    from triton.runtime.jit import JITFunction

    seen = []
    monkeypatch.setattr(JITFunction, "warmup", lambda self, *a, grid, **kw: seen.append((self, a, kw)))
    return seen


def _specialisation(kernel, args, kwargs):
    from triton.runtime import driver

    binder = kernel.device_caches[driver.active.get_current_device()][4]
    _, spec, options = binder(*args, **kwargs)
    return spec, options


def _as_real(a):
    # an allocated tensor of the same shape, strides and dtype (CPU memory: 16-byte aligned as
    # CUDA allocations are); Triton's binder reads only those and the address
    if isinstance(a, torch.Tensor) and a.device.type == "meta":
        return torch.empty_strided(a.shape, a.stride(), dtype=a.dtype)
    return a


def _check_same_specialisation(jobs, monkeypatch):
    from tri_inductor.patterns._launch import compile_only

    seen = _recorded_warmups(monkeypatch)
    with compile_only():
        for call in jobs.values():
            call()
    assert seen, "no compile-only launch recorded"
    for kernel, args, kwargs in seen:
        assert any(isinstance(a, torch.Tensor) and a.device.type == "meta" for a in args)
        assert _specialisation(kernel, args, kwargs) == _specialisation(kernel, tuple(map(_as_real, args)), kwargs)
    return seen


def test_gemm_jobs_specialise_as_real_tensors_do(sm90, monkeypatch):
    """Every bucket's candidates (plain and fused gate_up, split-K and TMA kernels among them) on
    meta tensors bind to the specialisation of allocated tensors of the same shapes."""
    from tri_inductor.patterns.gemm import tuning as T
    from tri_inductor.patterns.gemm.ops import ACTS, mm_launch

    monkeypatch.setattr(T, "_COMPILED_AHEAD", set())
    jobs = T.ahead_jobs(3584, 4608 // 2, torch.bfloat16, "", 8192, mm_launch)
    assert {b for b, _ in jobs} == {1, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096}  # every bucket, once
    assert T.ahead_jobs(3584, 2304, torch.bfloat16, "", 8192, mm_launch) == {}  # already taken
    kernels = {k.fn.__name__ for k, _, _ in _check_same_specialisation(jobs, monkeypatch)}
    assert {"mm_kernel", "mm_gemv_kernel", "mm_tma_kernel"} <= kernels

    def fused(a, w, bias, cfg):
        return mm_launch(a, w, bias, cfg, act=ACTS["silu"])

    jobs = T.ahead_jobs(2 * 1536, 1024, torch.bfloat16, "silu", 64, fused)
    assert {b for b, _ in jobs} == {1, 16, 32, 64}  # the buckets up to max_num_batched_tokens
    _check_same_specialisation(jobs, monkeypatch)


def test_the_tuners_batch_then_holds_only_its_own_bucket(monkeypatch):
    """After a shape's candidates were compiled ahead, its tuning's first batch does not compile
    the sibling buckets' again (they are marked), only its own candidates (found compiled)."""
    from tri_inductor.patterns.gemm import configs as C
    from tri_inductor.patterns.gemm import tuning as T
    from tri_inductor.patterns.gemm.ops import mm_launch

    monkeypatch.setattr(T, "_COMPILED_AHEAD", set())
    n, k, dt, dev = 4096, 14336, torch.bfloat16, C.DEFAULT_DEVICE
    assert T.ahead_jobs(n, k, dt, "", 8192, mm_launch)
    own = [T.default_config(n, k, 256, dev)]
    jobs = T.compile_jobs(n, k, 256, (256, 512, 1024, 2048, C.TOP_BUCKET), dt, dev, "", own)
    assert list(jobs) == [(256, own[0])]


def test_attention_jobs_specialise_as_the_tuners_inputs(sm90, monkeypatch):
    from tri_inductor.patterns.paged_attention import ops
    from tri_inductor.patterns.paged_attention import tuning as PT

    jobs = PT.ahead_jobs(7, 128, 16, torch.bfloat16, ops._tuning_run)
    assert set(jobs) == set(PT._all_buckets_configs(7, 128, PT.device_info(), 2))
    seen = _check_same_specialisation(jobs, monkeypatch)
    # the tuner's input, allocated, has the meta input's shapes and strides
    real, meta = PT._inputs(7, 128, 16, torch.bfloat16, 16, "cpu"), PT._inputs(7, 128, 16, torch.bfloat16, 16, "meta")
    for name in ("q", "k", "v", "cu", "sl", "table"):
        assert (real[name].shape, real[name].stride(), real[name].dtype) == \
               (meta[name].shape, meta[name].stride(), meta[name].dtype)
    assert {k.fn.__name__ for k, _, _ in seen} == {"paged_attn_prefill_kernel"}


def test_a_compiled_shape_compiles_nothing_again(sm90, monkeypatch):
    """The background thread's compiles land in Triton's kernel cache: the same calls again (the
    tuner's batch) compile nothing."""
    from triton.runtime.jit import JITFunction

    from tri_inductor.patterns.gemm import tuning as T
    from tri_inductor.patterns.gemm.ops import mm_launch
    from tri_inductor.tuning import compile_batch

    monkeypatch.setattr(T, "_COMPILED_AHEAD", set())
    jobs = T.ahead_jobs(256, 128, torch.bfloat16, "", 1, mm_launch)  # bucket M=1 only: a dozen kernels
    compiles = []
    real = JITFunction._do_compile

    def counted(self, *a, **kw):
        compiles.append(self.fn.__name__)
        return real(self, *a, **kw)

    monkeypatch.setattr(JITFunction, "_do_compile", counted)
    assert compile_batch(jobs, workers=2) == {}
    first = len(compiles)
    assert first >= 1
    assert compile_batch(jobs, workers=2) == {} and len(compiles) == first


def test_queue_order_and_the_tuner_takes_back_what_has_not_started(monkeypatch):
    monkeypatch.setattr(compile_ahead, "enabled", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "set_device", lambda d: None)
    compile_ahead.forget()
    gate, ran = threading.Event(), []

    def job(name, block=False):
        def jobs():
            if block:
                gate.wait(10)
            ran.append(name)
            return {}
        return jobs

    assert compile_ahead.submit("a", job("a", block=True))
    while "a" not in compile_ahead._running:
        threading.Event().wait(0.01)
    assert compile_ahead.submit("head", job("head"), later=True)  # behind what comes without `later`
    assert compile_ahead.submit("b", job("b")) and compile_ahead.submit("c", job("c"))
    assert compile_ahead.submit("b", job("again"))  # a key is queued once per process
    assert compile_ahead.pending() == 4
    compile_ahead.wait("b")  # not started: taken back, the tuner compiles it itself
    gate.set()
    compile_ahead.wait("a")  # running: waited for
    while compile_ahead.pending():
        threading.Event().wait(0.01)
    assert ran == ["a", "c", "head"]
    assert compile_ahead.submit("d", job("d"))  # after the worker left: a new one takes it
    while compile_ahead.pending():
        threading.Event().wait(0.01)
    assert ran[-1] == "d"
    compile_ahead.forget()


def test_a_compiled_batch_says_so(monkeypatch, capsys, caplog):
    """One progress line per shape compiled ahead (nothing for a shape whose buckets are all
    stored: a warm start); its kernels and seconds are counted."""
    from tri_inductor import cache

    monkeypatch.setattr(compile_ahead, "enabled", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "set_device", lambda d: None)
    compile_ahead.forget()
    caplog.set_level("INFO", logger="tri_inductor")
    before = cache.counters()
    compile_ahead.submit("warm", dict, label="stored shape")
    compile_ahead.submit("k", lambda: {"a": lambda: None, "b": lambda: None}, label="mm N=8 K=8 bfloat16")
    while compile_ahead.pending():
        threading.Event().wait(0.01)
    said = capsys.readouterr().err + caplog.text  # stderr, or the log where vLLM routes ours
    assert "compiled mm N=8 K=8 bfloat16 ahead: 2 tuning candidates" in said and "stored shape" not in said
    assert cache.counters()["ahead_kernels"] - before["ahead_kernels"] == 2
    compile_ahead.forget()


def test_off_without_tuning_or_when_asked(monkeypatch):
    from tri_inductor import tuning

    monkeypatch.setattr(tuning, "can_tune", lambda: True)
    monkeypatch.setenv("TRI_INDUCTOR_COMPILE_AHEAD", "0")
    assert not compile_ahead.enabled()
    monkeypatch.delenv("TRI_INDUCTOR_COMPILE_AHEAD")
    assert compile_ahead.enabled()
    monkeypatch.setattr(tuning, "can_tune", lambda: False)
    assert not compile_ahead.enabled() and not compile_ahead.submit("x", dict)


def test_vllm_linear_layers_queue_their_gemm_forms(monkeypatch):
    """A merged column linear of two equal halves is queued as the fused gate_up GEMM with the
    model's activation; other linears as the plain GEMM; vLLM's weight is created as before."""
    import vllm.model_executor.layers.linear as vllm_linear
    from vllm.model_executor.layers.linear import UnquantizedLinearMethod

    from tri_inductor import vllm_compile_ahead as V
    from tri_inductor import vllm_moe
    from tri_inductor.patterns.gemm import ops

    queued = []
    monkeypatch.setattr(ops, "compile_ahead", lambda n, k, dtype, tokens, act="", later=False:
                        queued.append((n, k, dtype, tokens, act) + (("later",) if later else ())))
    monkeypatch.setattr(V, "_config", lambda: (8192, 256, "silu"))
    # (vLLM's parameter class reads the tensor-parallel group, which needs a distributed setup)
    monkeypatch.setattr(vllm_linear, "ModelWeightParameter",
                        lambda data, **kw: torch.nn.Parameter(data, requires_grad=False))
    # vLLM's own method (an earlier test may have let the plugin wrap it already)
    create = V.create_weights(inspect.unwrap(UnquantizedLinearMethod.create_weights))
    method = UnquantizedLinearMethod()
    monkeypatch.setattr(vllm_moe, "_ACTIVE", False)
    layer = torch.nn.Module()
    create(method, layer, 128, [256, 256], 128, 512, torch.bfloat16, weight_loader=None)
    assert queued == [] and layer.weight.shape == (512, 128)  # not a tri_inductor process: nothing queued
    monkeypatch.setattr(vllm_moe, "_ACTIVE", True)
    for sizes in ([256, 256], [384, 64, 64]):
        layer = torch.nn.Module()
        create(method, layer, 128, sizes, 128, sum(sizes), torch.bfloat16, weight_loader=None)
        assert layer.weight.shape == (sum(sizes), 128)
    assert queued == [(512, 128, torch.bfloat16, 8192, "silu"), (512, 128, torch.bfloat16, 8192, "")]
    # the vocabulary embedding's weight: the lm_head GEMM, one row per sequence
    from vllm.model_executor.layers.vocab_parallel_embedding import UnquantizedEmbeddingMethod

    embed = V.create_weights(inspect.unwrap(UnquantizedEmbeddingMethod.create_weights), head=True)
    layer = torch.nn.Module()
    embed(UnquantizedEmbeddingMethod(), layer, 128, [1024], 128, 1024, torch.bfloat16)
    assert layer.weight.shape == (1024, 128) and queued[-1] == (1024, 128, torch.bfloat16, 256, "", "later")
    assert V.gemm_form([256, 256], "gelu_pytorch_tanh") == "gelu_tanh"
    assert V.gemm_form([256, 256], "relu2") == "" and V.gemm_form([256, 128], "silu") == ""


def test_vllm_attention_layers_queue_their_prefill(monkeypatch):
    import types

    from tri_inductor import vllm_compile_ahead as V
    from tri_inductor import vllm_config
    from tri_inductor.patterns import paged_attention

    queued = []
    monkeypatch.setattr(paged_attention, "compile_prefill_ahead", lambda *a: queued.append(a) or True)
    cfg = types.SimpleNamespace(cache_config=types.SimpleNamespace(block_size=16),
                                model_config=types.SimpleNamespace(dtype=torch.bfloat16))
    monkeypatch.setattr(vllm_config, "options_being_built", lambda: (cfg, None))
    assert not V.queue_attention(28, 4, 128) and queued == []  # a config that is not ours: nothing
    monkeypatch.setattr(vllm_config, "options_being_built", lambda: (cfg, object()))
    assert V.queue_attention(28, 4, 128)
    assert queued == [(7, 128, 16, torch.bfloat16)]
    assert not V.queue_attention(28, 3, 128)  # not a GQA grouping ours runs


def _forget_compiled_gemm_kernels(monkeypatch):
    import collections
    import sys

    from triton.runtime.jit import JITFunction

    for name, mod in list(sys.modules.items()):
        if name.startswith("tri_inductor.patterns.gemm"):
            for k in vars(mod).values():
                if isinstance(k, JITFunction):
                    monkeypatch.setattr(k, "device_caches", collections.defaultdict(k.create_binder))


def test_worker_processes_compile_into_the_cache_this_process_then_hits(sm90, monkeypatch, tmp_path):
    """The compile-ahead batch off this process's GIL: each call's compile is caught here (no
    frontend run), compiled by a worker process into Triton's cache, and the same calls here then
    load from it (no frontend run either): the keys agree."""
    from triton import knobs
    from triton.compiler.compiler import ASTSource

    from tri_inductor import compile_workers as W
    from tri_inductor.patterns.gemm import tuning as T
    from tri_inductor.patterns.gemm.ops import mm_launch
    from tri_inductor.tuning import compile_batch

    monkeypatch.setattr(knobs.cache, "dir", str(tmp_path / "triton"))
    monkeypatch.setattr(T, "_COMPILED_AHEAD", set())
    monkeypatch.setattr(W, "_pool", W.Pool(2))
    _forget_compiled_gemm_kernels(monkeypatch)  # other tests' in-memory compiles of the same specialisation
    jobs = dict(list(T.ahead_jobs(384, 160, torch.bfloat16, "", 1, mm_launch).items())[:4])
    frontends = []
    real = ASTSource.make_ir
    monkeypatch.setattr(ASTSource, "make_ir", lambda self, *a, **kw: frontends.append(self.fn) or real(self, *a, **kw))
    try:
        assert W.compile_calls(jobs, lambda fns: compile_batch(fns, workers=2)) == {}
        assert frontends == []  # nothing compiled here
        assert len(list((tmp_path / "triton").iterdir())) >= 1  # the workers' cubins
        assert compile_batch(jobs, workers=2) == {}
        assert frontends == []  # every kernel a cache hit
    finally:
        W._pool.close()


def test_a_kernel_not_importable_by_name_is_compiled_here(sm90, monkeypatch, tmp_path):
    import triton
    import triton.language as tl
    from triton import knobs

    from tri_inductor import compile_workers as W
    from tri_inductor.patterns._launch import launch
    from tri_inductor.tuning import compile_batch

    @triton.jit
    def local_kernel(x_ptr, n, BLOCK: tl.constexpr):
        i = tl.arange(0, BLOCK)
        tl.store(x_ptr + i, tl.load(x_ptr + i, mask=i < n), mask=i < n)

    monkeypatch.setattr(knobs.cache, "dir", str(tmp_path / "triton"))
    x = torch.empty(64, device="meta", dtype=torch.float32)
    jobs = {"local": lambda: launch(local_kernel, (1,), x, 64, BLOCK=64)}
    here = []
    assert W.compile_calls(jobs, lambda fns: here.extend(fns) or compile_batch(fns, workers=1)) == {}
    assert here == ["local"]  # not sent to a worker (which could not import it)


def test_a_worker_failure_is_reported_for_its_candidate(sm90, monkeypatch, tmp_path):
    """A worker that cannot compile (here: it cannot import the kernel's module) fails that
    candidate in the batch's result (the tuner then compiles it itself); nothing hangs."""
    from triton import knobs

    from tri_inductor import compile_workers as W
    from tri_inductor.patterns.gemm import tuning as T
    from tri_inductor.patterns.gemm.ops import mm_launch

    monkeypatch.setattr(knobs.cache, "dir", str(tmp_path / "triton"))
    monkeypatch.setattr(T, "_COMPILED_AHEAD", set())
    monkeypatch.setattr(W, "_pool", W.Pool(1))
    _forget_compiled_gemm_kernels(monkeypatch)
    real = W.Pool.compile
    monkeypatch.setattr(W.Pool, "compile", lambda self, specs, ctx: real(
        self, [("no_such_module_here", name, data) for _, name, data in specs], ctx))
    jobs = dict(list(T.ahead_jobs(400, 176, torch.bfloat16, "", 1, mm_launch).items())[:2])
    try:
        failed = W.compile_calls(jobs, lambda fns: {})
        assert set(failed) == set(jobs) and "No module named" in str(next(iter(failed.values())))
    finally:
        W._pool.close()


def test_a_spurious_systemerror_is_compiled_again_alone():
    """CPython < 3.11.8 can raise SystemError('AST constructor recursion depth mismatch') when two
    threads parse at once (Triton parses kernel sources): such a candidate is compiled again on the
    calling thread; any other error, or a SystemError that comes back, stays its failure."""
    from tri_inductor.tuning import compile_batch

    calls, threads = collections.Counter(), {}

    def flaky(name, fails):
        def f():
            calls[name] += 1
            threads.setdefault(name, []).append(threading.current_thread())
            if calls[name] <= fails:
                raise SystemError("AST constructor recursion depth mismatch (before=60, after=187)")
        return f

    def broken():
        calls["broken"] += 1
        raise ValueError("no such config")

    failed = compile_batch({"once": flaky("once", 1), "always": flaky("always", 9), "ok": flaky("ok", 0),
                            "broken": broken}, workers=2)
    assert set(failed) == {"always", "broken"}
    assert isinstance(failed["always"], SystemError) and isinstance(failed["broken"], ValueError)
    assert calls == {"once": 2, "always": 2, "ok": 1, "broken": 1}
    assert threads["once"][1] is threading.current_thread()
