"""The GEMM package's config choice: the cost model on shapes nobody tuned for, the device it
reads, validation of stored/shipped configs, compile-time tuning (on by default on a GPU,
bounded, cached), and our GEMM inside graphs compiled in the CPU interpreter harness.

Numerics: ||out - ref|| / ||ref|| against float64, bf16 1e-2 (output rounding dominates), fp16 2e-3.
"""
from __future__ import annotations

import logging

import pytest
import torch

from tri_inductor import cache
from tri_inductor import tuning as generic
from tri_inductor.patterns.gemm import configs as C
from tri_inductor.patterns.gemm import heuristics as H
from tri_inductor.patterns.gemm import ops as O
from tri_inductor.patterns.gemm import tuning as T

TOL = {torch.float16: 2e-3, torch.bfloat16: 1e-2}
# Popular models' projections (Qwen2.5-0.5B/7B, Qwen3-4B, Llama-3.2-1B, Phi-3-mini, Gemma-2-2B):
# non-power-of-two N and K, K not a multiple of 256/512/1024.
ODD_NK = [(1152, 896), (896, 4864), (9728, 896), (4608, 3584), (37888, 3584), (3584, 18944),
          (9216, 3072), (3072, 8192), (2304, 9216), (151936, 896)]
ALL_BUCKETS = (*C.BUCKETS, C.TOP_BUCKET)
SMALL_CHIP = C.Device("a 66-SM part", 66, 101376, (8, 6), 6 * 2**20)
AMD = C.Device("an MI300-like part", 304, 65536, (9, 4), 4 * 2**20, vendor="amd")


def _rel(out, ref):
    return ((out.double() - ref).norm() / ref.norm()).item()


@pytest.mark.parametrize("dev", [C.DEFAULT_DEVICE, SMALL_CHIP, AMD], ids=["h100", "small", "amd"])
def test_model_choice_valid_for_every_shape_and_bucket(dev):
    for n, k in ODD_NK:
        for b in ALL_BUCKETS:
            cfg = H.model_config(b, n, k, dev)
            assert C.invalid_reason(cfg, dev) is None, (n, k, b, cfg)
            if not dev.hopper:
                assert cfg.kernel not in C.TMA_KINDS, (dev, cfg)
            # every candidate the tuner would measure is valid there too
            assert all(C.invalid_reason(c, dev) is None for c in T.tuning_candidates(n, k, b, dev))


def test_decode_fills_the_device_sms():
    # The auto split-K factor and the decode choice follow the SM count read from the device:
    # on a chip with half the SMs the same tiles need fewer splits to fill it.
    cfg = C.Cfg(16, 64, 256, 1, 0, 4, 4)
    big = C.Device("x", 132, 232448, (9, 0), 50 * 2**20)
    small = C.Device("y", 33, 232448, (9, 0), 50 * 2**20)
    assert H.auto_split(cfg, 16, 4096, 4096, big) > H.auto_split(cfg, 16, 4096, 4096, small)
    # batch-1 decode of a narrow model: N / BLOCK_N panels alone leave SMs idle, so the choice
    # either narrows the panels or splits K until the programs cover every SM
    for n, k in ((896, 4864), (1152, 896)):
        c = H.model_config(1, n, k, big)
        programs = -(-n // c.block_n) * (max(1, c.split_k) if c.kernel == C.Kind.GEMV else
                                         H.auto_split(c, 1, n, k, big))
        assert programs >= big.sms, (n, k, c)


def test_wave_quantisation_prefers_full_waves():
    # 4096 x 4608 x 3584 on 132 SMs: 128x256 tiles make 576 tiles (4.4 waves), 128x128 make
    # 1152 (8.7 waves): the model must see the emptier last wave of the wide tiles.
    dev = C.DEFAULT_DEVICE
    wide = C.Cfg(128, 256, 64, 8, 1, 8, 3, C.Kind.TMA)
    exact = C.Device("x", 144, 232448, (9, 0), 50 * 2**20)  # 576 tiles = 4 full waves
    assert H.estimate_s(wide, 4096, 4608, 3584, exact) * 144 < H.estimate_s(wide, 4096, 4608, 3584, dev) * 132


@pytest.mark.parametrize("bad", [[128, 128, 64, 8, 1, 0, 3, 1], [96, 128, 64, 8, 1, 4, 3, 0],
                                 [64, 256, 64, 8, 1, 4, 3, 2],  # Triton 3.6's compiler asserts on it
                                 [16, 64, 256, 1, 1000, 4, 4, 0], [1, 8, 1024, 1, 1, 4, 1, 7],
                                 [256, 256, 256, 8, 1, 8, 8, 1], "x", [1, 2], [True] * 7])
def test_invalid_configs_are_refused(bad):
    assert C.parse_cfg(bad) is None


def test_shipped_table_entries_are_valid_and_keyed(tmp_path, monkeypatch, caplog):
    assert C.table_entries(), "the shipped table is empty"
    for (n, k, b), cfg in C.table_entries().items():
        assert b in ALL_BUCKETS and C.invalid_reason(cfg) is None
    # a user table with a bad entry: the entry is left out with a warning, the rest is used
    path = tmp_path / "t.json"
    path.write_text('{"configs": {"64,64,16": [16, 64, 64, 1, 1, 4, 2, 0], "64,64,1": [1, 8, 0, 1, 1, 4, 1, 4]}}')
    monkeypatch.setenv(C.TABLE_ENV, str(path))
    C._load_table.cache_clear()
    with caplog.at_level(logging.WARNING, logger="tri_inductor.gemm"):
        entries = C.table_entries()
    assert list(entries) == [(64, 64, 16)] and "1 entries are not valid" in caplog.text
    digest = C.table_digest()
    path.write_text('{"configs": {}}')
    C._load_table.cache_clear()
    assert C.table_digest() != digest  # the compile key sees a changed table
    monkeypatch.delenv(C.TABLE_ENV)
    C._load_table.cache_clear()


# ----------------------------------------------------------------------------- numerics


@pytest.mark.parametrize("m,n,k", [(1, 896, 4864), (1, 1152, 896), (3, 1152, 896), (5, 760, 1000),
                                   (17, 896, 4864), (70, 520, 896), (300, 1152, 896)])
def test_model_choice_numerics_on_odd_shapes(m, n, k):
    """The cost model's pick for the bucket of M (interpreter, float64 reference), bias included."""
    g = torch.Generator().manual_seed(m * 7 + n)
    a = torch.randn(m, k, generator=g).to(torch.bfloat16)
    w = torch.randn(n, k, generator=g).to(torch.bfloat16)
    bias = torch.randn(n, generator=g).to(torch.bfloat16)
    cfg = T.default_config(n, k, C.bucket_of(m), C.DEFAULT_DEVICE)
    out = O.mm_launch(a, w.t(), bias, cfg)
    assert _rel(out, O.reference_addmm(bias, a, w.t())) < TOL[torch.bfloat16], cfg


@pytest.mark.parametrize("m,n,k", [(1, 1520, 1000), (5, 9728, 896), (17, 2304, 760), (70, 1040, 896)])
def test_fused_model_choice_numerics_on_odd_shapes(m, n, k):
    """The fused gate_up form at its untuned pick (interpreter, float64 reference): odd halves
    (760, 4864, 1152, 520 columns) and K not a multiple of the K step."""
    from tri_inductor.patterns.gemm.launch import ACTS

    g = torch.Generator().manual_seed(m * 5 + n)
    a = torch.randn(m, k, generator=g).to(torch.bfloat16)
    w = (torch.randn(n, k, generator=g) / 4).to(torch.bfloat16)
    cfg = T.default_config(n, k, C.bucket_of(m), C.DEFAULT_DEVICE, fused=True)
    assert H.fused_ok(cfg)
    out = O.mm_launch(a, w.t(), None, cfg, act=ACTS["silu"])
    assert _rel(out, O.reference_mm_act_mul(a, w.t(), "silu")) < TOL[torch.bfloat16], cfg


@pytest.mark.parametrize("split", [2, 3, 8])
@pytest.mark.parametrize("act", [None, "silu", "gelu_tanh"])
def test_gemv_split_k(split, act, poison):
    # K = 1000: not a multiple of the 128 K step, and the last split is short (or empty at 8).
    m, n, k = 2, 96, 1000
    g = torch.Generator().manual_seed(split)
    a = torch.randn(m, k, generator=g).to(torch.float16)
    w = torch.randn(n, k, generator=g).to(torch.float16)
    cfg = C.Cfg(1, 8, 128, 1, split, 4, 1, C.Kind.GEMV)
    if act is None:
        bias = torch.randn(n, generator=g).to(torch.float16)
        out = O.mm_launch(a, w.t(), bias, cfg)
        ref = O.reference_addmm(bias, a, w.t())
    else:
        from tri_inductor.patterns.gemm.launch import ACTS

        out = O.mm_launch(a, w.t(), None, cfg, act=ACTS[act])
        ref = O.reference_mm_act_mul(a, w.t(), act)
    assert not out.isnan().any()
    assert _rel(out, ref) < TOL[torch.float16]


# Configs whose launches write into a buffer sized by the compile range's cap (m_cap): split-K
# partials (pointer and GEMV kernels) and the fused gate_up's intermediate on TMA tiles.
CAPPED = [(C.Cfg(32, 32, 64, 1, 3, 4, 2), None), (C.Cfg(1, 8, 128, 1, 2, 4, 1, C.Kind.GEMV), None),
          (C.Cfg(64, 64, 64, 8, 1, 4, 3, C.Kind.TMA), "silu")]


@pytest.mark.parametrize("cfg,act", CAPPED, ids=["ptr-split3", "gemv-split2", "tma-fused"])
def test_launches_stay_inside_capped_buffers(cfg, act, monkeypatch):
    """Inductor's compile-time autotuning runs a compile range's graph at M's size hint (vLLM:
    8192) with the gates as at that M: a launch sized for the range's cap (here 200 rows) must
    not write M (= 300) rows into it. Every kernel's M argument is checked against the rows of
    the buffer it writes (the Llama-3.2-1B start's illegal address was split-K partials)."""
    import tri_inductor.patterns.activation as A
    from tri_inductor.patterns.gemm import launch as GL

    monkeypatch.setattr(GL, "device_info", lambda device=None: C.DEFAULT_DEVICE)  # Hopper: TMA path
    monkeypatch.setattr(GL, "tma_ok", lambda a, b, n: True)
    launches = []

    def record(kernel, grid, *args, **kwargs):
        launches.append((getattr(kernel, "__name__", str(kernel)), args, kwargs))

    monkeypatch.setattr(GL, "launch", record)
    monkeypatch.setattr(A, "launch", record)  # the fused form's activation kernel
    m, n, k, cap = 300, 64, 256, 200  # cap > 128: the fused form runs on TMA tiles (FUSED_TMA_MIN_M)
    a = torch.randn(m, k, dtype=torch.bfloat16)
    w = torch.randn(2 * n if act else n, k, dtype=torch.bfloat16)
    out = torch.empty(m, n, dtype=torch.bfloat16)
    GL.launch_cfg(a, w.t(), None, out, cfg, gate=1, m_hint=cap, m_cap=cap,
                  act=GL.ACTS[act] if act else GL.NO_ACT)
    checked = 0
    for name, args, _ in launches:
        if name in ("mm_kernel", "mm_gemv_kernel", "mm_tma_kernel"):
            dest, rows = args[2], args[4]
            dest_rows = dest.shape[-2]
            assert rows <= dest_rows, (name, rows, tuple(dest.shape))
            checked += 1
    assert checked, launches


# ----------------------------------------------------------------------------- tuning


@pytest.fixture
def fake_gpu_tuning(monkeypatch, tmp_path):
    """Tuning as on a GPU, with measurement faked: each config's 'time' is the cost model's."""
    monkeypatch.setenv("TRI_INDUCTOR_CACHE_DIR", str(tmp_path))
    cache.forget_loaded()
    cache.reset_counters()
    monkeypatch.setattr(generic, "can_tune", lambda: True)
    monkeypatch.setattr(generic, "_spent_s", 0.0)
    monkeypatch.setattr(generic, "_budget_told", False)
    monkeypatch.setattr(generic, "_failed", set())
    measured = []

    def fake_config_for(n, k, bucket, dtype, dev):
        m = C.bucket_m(bucket)
        cands = T.tuning_candidates(n, k, bucket, dev)

        def measure(c):
            measured.append(c)
            return H.estimate_s(c, m, n, k, dev) * 1e3 * (0.5 if c == cands[-1] else 1.0)

        return generic.tune("mm", T.shape_key(n, k, bucket, dtype), T.default_config(n, k, bucket, dev),
                            cands, measure, C.parse_cfg, list)

    yield fake_config_for, measured
    cache.forget_loaded()


def test_tuning_is_on_by_default_but_needs_a_gpu(monkeypatch):
    monkeypatch.delenv(generic.TUNE_ENV, raising=False)
    assert generic.can_tune() is torch.cuda.is_available()  # False here: no GPU, nothing tuned
    monkeypatch.setenv(generic.TUNE_ENV, "0")
    assert generic.can_tune() is False


def test_tuning_measures_stores_and_warm_start_measures_nothing(fake_gpu_tuning):
    config_for, measured = fake_gpu_tuning
    dev = C.DEFAULT_DEVICE
    first = config_for(4608, 3584, 16, torch.bfloat16, dev)
    cands = T.tuning_candidates(4608, 3584, 16, dev)
    assert first == cands[-1]  # the fastest measured, not the model's first guess
    assert len(measured) >= min(len(cands), T.CANDIDATES)
    n = len(measured)
    cache.forget_loaded()  # a new process: the DB is read from disk
    assert config_for(4608, 3584, 16, torch.bfloat16, dev) == first
    assert len(measured) == n  # warm start: no benchmark


def test_fused_gate_up_is_tuned_as_it_runs(monkeypatch, interpreter):
    """The gate_up form (mm_act_mul) gets its own tuning entry, measured with the fused kernel:
    its programs cover half their tile's columns in gate and half in up, so plain-GEMM timings
    rank its tiles wrongly (docs/design/gemm.md). The launcher handed to the tuner computes
    act(a @ gate) * (a @ up), checked here against float64 in the interpreter."""
    from tri_inductor.patterns.gemm.launch import ACTS, NO_ACT

    seen = []

    def spy(n, k, bucket, dtype, dev, launcher, variant="", siblings=()):
        seen.append((n, k, bucket, variant, launcher))
        return C.Cfg(16, 64, 64, 1, 1, 4, 2)

    monkeypatch.setattr(O, "config_for", spy)
    O.choose_config(16, 384, 96, torch.bfloat16)
    O.choose_config(16, 384, 96, torch.bfloat16, act=ACTS["silu"])
    assert [s[3] for s in seen] == ["", "silu"]
    assert T.shape_key(384, 96, 16, torch.bfloat16, "silu") != T.shape_key(384, 96, 16, torch.bfloat16)
    g = torch.Generator().manual_seed(0)
    a = torch.randn(16, 96, generator=g).to(torch.bfloat16)
    w = (torch.randn(96, 384, generator=g) / 8).to(torch.bfloat16)
    cfg = C.Cfg(16, 64, 32, 1, 1, 4, 2)
    fused, plain = seen[1][4](a, w, None, cfg), seen[0][4](a, w, None, cfg)
    assert fused.shape == (16, 192) and plain.shape == (16, 384)
    assert _rel(fused, O.reference_mm_act_mul(a, w, "silu")) < TOL[torch.bfloat16]
    assert _rel(plain, O.reference_mm(a, w)) < TOL[torch.bfloat16]
    assert O.eager_config(16, 384, 96, torch.bfloat16, act=ACTS["silu"]) is not None and seen[-1][3] == "silu"
    assert NO_ACT not in O._ACT_NAMES


@pytest.mark.parametrize("n,k", [(28672, 4096), (37888, 3584), (18944, 896), (9728, 2560)])
def test_fused_gate_up_space_has_no_narrow_halves(n, k):
    """The fused form's default and tuning candidates: no pointer tile whose gate/up halves are
    under 32 columns (slower fused than plain: docs/design/gemm.md), on every bucket; the
    plain GEMM's space keeps them."""
    dev = C.DEFAULT_DEVICE
    for b in ALL_BUCKETS:
        for c in [T.default_config(n, k, b, dev, fused=True), *T.tuning_candidates(n, k, b, dev, fused=True)]:
            assert H.fused_ok(c), (b, c)
    assert any(not H.fused_ok(c) for c in T.tuning_candidates(n, k, 16, dev))


def test_candidates_are_built_only_when_tuning_runs(fake_gpu_tuning, monkeypatch):
    """The tuning space (hundreds of modelled configs) is built for a miss that is tuned now, not
    for a stored hit nor where tuning cannot run (every trace of a projection asks per bucket)."""
    built = []

    def space():
        built.append(1)
        return [C.Cfg(16, 64, 64, 1, 1, 4, 3)]

    key, default = T.shape_key(2048, 2048, 16, torch.bfloat16), C.Cfg(16, 64, 128, 1, 1, 4, 3)
    monkeypatch.setattr(generic, "can_tune", lambda: False)
    assert generic.tune("mm", key, default, space, lambda c: 1.0, C.parse_cfg, list) == default and not built
    cache.store("mm", key, list(default))
    monkeypatch.setattr(generic, "can_tune", lambda: True)
    assert generic.tune("mm", key, C.Cfg(32, 64, 64, 1, 1, 4, 3), space, lambda c: 1.0, C.parse_cfg, list) == default
    assert not built
    got = generic.tune("mm", T.shape_key(2048, 2048, 32, torch.bfloat16), default, space,
                       lambda c: 0.5 if c == C.Cfg(16, 64, 64, 1, 1, 4, 3) else 1.0, C.parse_cfg, list)
    assert built == [1] and got == C.Cfg(16, 64, 64, 1, 1, 4, 3)


def test_tuning_budget_bounds_the_start(fake_gpu_tuning, monkeypatch, capsys, caplog):
    config_for, measured = fake_gpu_tuning
    monkeypatch.setenv(generic.BUDGET_ENV, "0")
    dev = C.DEFAULT_DEVICE
    with caplog.at_level(logging.INFO, logger="tri_inductor"):
        got = config_for(896, 896, 64, torch.bfloat16, dev)
    assert got == T.default_config(896, 896, 64, dev) and not measured
    # a progress line: on stderr, or in the log where a handler listens (vLLM's, once loaded)
    assert "tuning budget spent" in capsys.readouterr().err + caplog.text
    assert cache.lookup("mm", T.shape_key(896, 896, 64, torch.bfloat16)) is None  # a later start tunes it
    monkeypatch.setenv(generic.BUDGET_ENV, "soon")
    with pytest.raises(ValueError, match="seconds"):
        generic.budget_s()


def test_stored_invalid_config_is_not_used(fake_gpu_tuning, caplog):
    config_for, measured = fake_gpu_tuning
    key = T.shape_key(1152, 896, 32, torch.bfloat16)
    cache.store("mm", key, [32, 64, 64, 1, 1000, 0, 3, 0])  # split_k 1000, num_warps 0
    with caplog.at_level(logging.WARNING, logger="tri_inductor.tuning"):
        got = config_for(1152, 896, 32, torch.bfloat16, C.DEFAULT_DEVICE)
    assert C.invalid_reason(got) is None and measured and "not valid" in caplog.text


def test_device_fault_while_tuning_names_the_candidate(fake_gpu_tuning, monkeypatch):
    """A candidate that faults on the device (the CUDA context is lost) is not 'rejected' like a
    config the device refuses: the start fails at once, naming it."""
    dev = C.DEFAULT_DEVICE
    cands = T.tuning_candidates(2048, 2048, 128, dev)
    bad = cands[1]

    def measure(c):
        if c == bad:
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        if c == cands[0]:
            raise RuntimeError("out of resource: shared memory")  # refused: just rejected
        return 1.0

    with pytest.raises(RuntimeError, match="faulted on the device") as info:
        generic.tune("mm", T.shape_key(2048, 2048, 128, torch.bfloat16), T.default_config(2048, 2048, 128, dev),
                     cands, measure, C.parse_cfg, list)
    assert str(bad) in str(info.value) and "TRI_INDUCTOR_TUNE=0" in str(info.value)
    assert generic.device_fault(RuntimeError("CUDA error: misaligned address"))
    assert not generic.device_fault(RuntimeError("out of resource: shared memory, Required: 300000"))


def test_first_compile_batch_takes_the_sibling_buckets_once(fake_gpu_tuning, monkeypatch):
    """The first bucket tuned in a dispatch plan compiles the untuned sibling buckets' candidates
    in the same side-by-side batch (each at its bucket's M); a sibling tuned later compiles only
    its own (already built), and a stored sibling is not compiled at all."""
    monkeypatch.setattr(T, "_COMPILED_AHEAD", set())
    dev, n, k, dt = C.DEFAULT_DEVICE, 4096, 14336, torch.bfloat16
    siblings = (256, 512, 1024, 2048, C.TOP_BUCKET)
    config_for, _ = fake_gpu_tuning
    config_for(n, k, 2048, dt, dev)  # stored: nothing of it is compiled ahead
    own = [T.default_config(n, k, 256, dev), *T.tuning_candidates(n, k, 256, dev)]
    jobs = T.compile_jobs(n, k, 256, siblings, dt, dev, "", own)
    assert {b for b, _ in jobs} == {256, 512, 1024, C.TOP_BUCKET}
    for (b, c), m in jobs.items():
        assert m == C.bucket_m(b)
        assert b != 256 or c in own
    assert {c for b, c in jobs if b == 512} == {T.default_config(n, k, 512, dev), *T.tuning_candidates(n, k, 512, dev)}
    again = T.compile_jobs(n, k, 512, siblings, dt, dev, "", ["own"])
    assert list(again) == [(512, "own")]  # its space was compiled with the first batch
    fused = T.compile_jobs(n, k, 256, siblings, dt, dev, "silu", [])
    assert {b for b, _ in fused} == {512, 1024, 2048, C.TOP_BUCKET}  # the fused form is another kernel


def test_compile_failures_are_not_compiled_again(monkeypatch):
    """Candidates whose side-by-side compile failed are rejected from that result (a compiler
    crash recovered in-process is not repeated on the tuning thread)."""
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *a, **k: None)
    ok, bad = C.Cfg(64, 64, 64, 8, 1, 4, 3), C.Cfg(64, 256, 64, 8, 1, 4, 3, C.Kind.TMA_WS)
    calls = []

    def compile_fn(cfg):
        def f():
            calls.append(cfg)
            if cfg == bad:
                raise RuntimeError("PassManager::run failed")
        return f

    failed = generic.compile_side_by_side({c: compile_fn(c) for c in (ok, bad)})
    assert set(failed) == {bad} and isinstance(failed[bad], RuntimeError) and sorted(calls) == sorted([ok, bad])


# ----------------------------------------------------------------- inside compiled graphs


def test_linear_pattern_runs_our_gemm_in_the_interpreter(interpreter):
    """torch.compile(backend="tri_inductor") on CPU tensors under the interpreter harness: the
    linear pattern takes the GEMMs (odd sizes, bias, a 1-token and a 2-D case) and our kernels run
    inside the compiled graph; the output matches float64."""
    from tri_inductor import last_audit

    torch.manual_seed(0)
    lin1 = torch.nn.Linear(200, 136, bias=True).to(torch.bfloat16)
    lin2 = torch.nn.Linear(136, 72, bias=False).to(torch.bfloat16)

    def f(x):
        return lin2(torch.relu(lin1(x)))

    for rows in (1, 13):
        torch._dynamo.reset()
        x = torch.randn(rows, 200).to(torch.bfloat16)
        with torch.no_grad():
            out = torch.compile(f, backend="tri_inductor")(x)
        h = torch.relu(x.double() @ lin1.weight.double().t() + lin1.bias.double()).to(torch.bfloat16).double()
        ref = h @ lin2.weight.double().t()
        assert _rel(out, ref) < TOL[torch.bfloat16]
        report = last_audit()[-1]  # this compile's graph
        # hits count our kernel launches by family: each GEMM is one, or two with split-K
        assert report.pattern_hits.get("linear", 0) >= 2, report.pattern_hits
        assert {k.kind for k in report.kernels} <= {"our_triton", "inductor_triton"}, report.kernels
        assert {k.name for k in report.kernels if k.kind == "our_triton"} & {"mm_kernel", "mm_gemv_kernel", "mm_tma_kernel"}
