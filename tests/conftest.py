"""Test harnesses (see CONTRIBUTING.md "Testing without a GPU").

(A) ``codegen_only``: real CUDA Triton code and sm_90 cubins (triton's ptxas) for a fake H100;
    nothing runs. Proves what a compiled graph would launch on the GPU.
(B) ``interpreter``: Inductor writes Triton for CPU tensors and Triton's interpreter runs it,
    our inlined kernels included. Proves numerics.
GPU tests carry ``@pytest.mark.gpu`` and are skipped, with the reason printed, where there is none.
"""
from __future__ import annotations

import atexit
import os
import shutil
import tempfile


def _session_dir(var: str, prefix: str) -> None:
    """Point ``var`` at a fresh folder for this session, removed at exit (a suite run leaves
    ~600 MB of compiled code there: kept, they filled the CI machine's disk). A folder the caller
    set is theirs and stays."""
    if os.environ.get(var):
        return
    path = tempfile.mkdtemp(prefix=prefix)
    os.environ[var] = path
    atexit.register(shutil.rmtree, path, ignore_errors=True)


# A fresh Inductor cache per test session: tests that look at fresh compiles vs cache hits must
# not depend on what an earlier run left behind.
_session_dir("TORCHINDUCTOR_CACHE_DIR", "tri_inductor_test_cache_")
# Our tuning DB and the Triton cache the backend would claim: never the user's ~/.cache in tests.
_session_dir("TRI_INDUCTOR_CACHE_DIR", "tri_inductor_test_tri_")
# Every answer of the mutation-analysis memo checked against the analysis (mutation_memo.py): the
# whole suite's launches of our kernels are what shows its key is enough.
os.environ.setdefault("TRI_INDUCTOR_CHECK_MUTATIONS", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

from tri_inductor.audit.model import audit_model  # noqa: E402
import tri_inductor.testing.interpret  # noqa: E402,F401  (registers the CPU launcher of our kernels)


# Tests that fail on one stack, each with why and the condition: marked xfail(strict=True), so the
# suite stays green while they fail and turns red the day one passes (then drop its entry). Never
# a silent skip. Keys are pytest node ids.
def _torch_at_least(major: int, minor: int) -> bool:
    from tri_inductor.hooks import torch_at_least

    return torch_at_least(major, minor)


KNOWN_FAILURES: dict[str, tuple[bool, str]] = {
}


def pytest_collection_modifyitems(config, items):
    for item in items:
        known = KNOWN_FAILURES.get(item.nodeid)
        if known is not None and known[0]:
            item.add_marker(pytest.mark.xfail(reason=known[1], strict=True))
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (run on the GPU machine: see CONTRIBUTING.md, GPU checks)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


@pytest.fixture(autouse=True)
def _our_logs_reach_caplog(monkeypatch):
    """A test that loads our vLLM plugin in-process routes the "tri_inductor" logger into vLLM's
    log and stops its propagation (vllm_plugin._route_logs_through_vllm); pytest's caplog listens
    at the root, so later tests would see none of our lines."""
    import logging

    monkeypatch.setattr(logging.getLogger("tri_inductor"), "propagate", True)


@pytest.fixture
def codegen_only():
    """Harness (A): ``compile(module, inputs, backend=..., dtype=..., options=...) -> reports``."""
    if torch.cuda.is_available():
        pytest.skip("codegen-only mode is for machines without a GPU")

    def compile_(module, inputs, backend="tri_inductor", dtype=torch.bfloat16, options=None):
        reports, _ = audit_model(module, inputs, backend=backend, dtype=dtype, options=options, device="cpu")
        assert reports, "no graph was compiled"
        return reports

    return compile_


@pytest.fixture
def interpreter():
    """Harness (B): inside, Inductor's Triton for CPU tensors runs in Triton's interpreter."""
    from tri_inductor.testing.interpret import triton_interpreter

    with triton_interpreter():
        yield


@pytest.fixture
def poison(monkeypatch):
    """Our ops allocate outputs with torch.empty / empty_like: NaN-fill those allocations so an
    element the kernel never writes shows up as NaN."""
    for name in ("empty", "empty_like"):
        orig = getattr(torch, name)

        def nan_alloc(*args, _orig=orig, **kwargs):
            t = _orig(*args, **kwargs)
            if t.is_floating_point():
                t.fill_(float("nan"))
            return t

        monkeypatch.setattr(torch, name, nan_alloc)
    assert torch.empty(3).isnan().all() and torch.empty_like(torch.ones(2)).isnan().all()


@pytest.fixture(scope="module")
def vllm_ctx():
    """A current VllmConfig (CPU device), as vLLM's layers expect when they are built or traced."""
    pytest.importorskip("vllm", reason="vLLM 0.26 forms need vllm importable")
    from vllm.config import DeviceConfig, VllmConfig, set_current_vllm_config

    with set_current_vllm_config(VllmConfig(device_config=DeviceConfig(device="cpu"))):
        yield
