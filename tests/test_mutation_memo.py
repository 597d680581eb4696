"""tri_inductor.mutation_memo: Inductor's mutation analysis of our kernels, remembered.

A remembered answer must be the one the analysis computes for the same call: checked against
the unwrapped ``identify_mutated_tensors`` on our GEMM, split-K reduction and norm kernels, over
the arguments that change between launches (constexprs, runtime ints of another N/K, dtypes).
Runs under codegen-only mode (fake sm_90): the analysis runs Triton's frontend for a target.
"""
from __future__ import annotations

import pytest
import torch

from tri_inductor import audit, hooks, mutation_memo
from tri_inductor.patterns.gemm.kernels import mm_kernel, splitk_reduce_kernel


@pytest.fixture
def analysis():
    """(memoized, real) identify_mutated_tensors, inside a fake sm_90 with fake tensors."""
    if torch.cuda.is_available():
        pytest.skip("codegen-only mode is for machines without a GPU")
    from torch._higher_order_ops import triton_kernel_wrap as tkw
    from torch._subclasses.fake_tensor import FakeTensorMode

    from tri_inductor.testing.codegen_only import fake_sm90

    if not callable(getattr(tkw, "identify_mutated_tensors", None)):
        pytest.skip(f"torch {torch.__version__} has no identify_mutated_tensors (its analysis is "
                    "identify_accessed_tensors there): the memo is not installed (hooks.TABLE)")
    audit.install_hooks()
    memo = tkw.identify_mutated_tensors
    assert getattr(memo, hooks.MARK, False), "audit.install_hooks did not install the memo"
    real = memo.__wrapped__
    mutation_memo.forget()
    with fake_sm90(), FakeTensorMode() as mode:
        yield memo, real, mode
    mutation_memo.forget()


def _mm_args(n: int, k: int, dtype=torch.bfloat16, **const):
    a = torch.empty(16, k, dtype=dtype, device="cuda")
    b = torch.empty(k, n, dtype=dtype, device="cuda")
    c = torch.empty(16, n, dtype=dtype, device="cuda")
    kw = dict(A=a, B=b, C=c, bias=b, M=16, N=n, K=k, stride_am=k, stride_ak=1, stride_bk=n, stride_bn=1,
              stride_cs=0, stride_cm=n, stride_cn=1, HAS_BIAS=False, ACT=-1, SPLIT_K=1, EVEN_K=True,
              PRECISION="tf32", IDX32=True, BLOCK_M=64, BLOCK_N=64, BLOCK_K=64, GROUP_M=8)
    kw.update(const)
    return {name: kw[name] for name in mm_kernel.arg_names if name in kw}


def test_memo_returns_what_the_analysis_computes(analysis):
    memo, real, _ = analysis
    variants = [_mm_args(3584, 3584), _mm_args(512, 18944), _mm_args(3584, 3584, HAS_BIAS=True),
                _mm_args(3584, 3584, SPLIT_K=4, EVEN_K=False), _mm_args(3584, 3584, ACT=0),
                _mm_args(3584, 3584, dtype=torch.float16), _mm_args(17, 3584)]
    for kw in variants:
        missing = [p for p in mm_kernel.arg_names if p not in kw]
        assert not missing, missing
        expected = real(mm_kernel, dict(kw), {})
        assert memo(mm_kernel, dict(kw), {}) == expected  # first call: computed (and kept)
        assert memo(mm_kernel, dict(kw), {}) == expected  # second call: the kept answer
        assert "C" in expected and "A" not in expected and "B" not in expected, expected


def test_memo_shares_entries_across_runtime_ints(analysis, monkeypatch):
    """One entry per kernel and constexprs: other N, K (multiples of 16 or not) share it, checked
    against the analysis on every hit (TRI_INDUCTOR_CHECK_MUTATIONS, as the whole suite runs)."""
    from tri_inductor import cache

    monkeypatch.setenv("TRI_INDUCTOR_CHECK_MUTATIONS", "1")
    memo, real, _ = analysis
    before, counted = dict(mutation_memo.stats), cache.counters()
    memo(mm_kernel, _mm_args(3584, 3584), {})
    memo(mm_kernel, _mm_args(4096, 14336), {})  # same tile constexprs, N/K both multiples of 16
    memo(mm_kernel, _mm_args(17, 3584), {})  # N not a multiple of 16: another specialisation, same stores
    assert mutation_memo.stats["misses"] - before["misses"] == 1
    assert mutation_memo.stats["hits"] - before["hits"] == 2
    memo(mm_kernel, _mm_args(3584, 3584, BLOCK_N=128), {})  # another constexpr: analysed again
    assert mutation_memo.stats["misses"] - before["misses"] == 2
    # the runs of Triton's frontend for a miss are what a cold start pays: counted, with their time
    # (the checks' runs are not: they are the check's cost, not the compile's)
    now = cache.counters()
    assert now["mutation_runs"] - counted["mutation_runs"] == 2 and now["mutation_s"] > counted["mutation_s"]


def test_a_wrong_memo_answer_is_caught_by_the_check(analysis, monkeypatch):
    memo, real, _ = analysis
    kw = _mm_args(3584, 3584)
    assert memo(mm_kernel, dict(kw), {}) == ["C"]
    key = next(iter(mutation_memo._MEMO))
    mutation_memo._MEMO[key] = ["A", "C"]  # what a store behind a runtime int's value would do
    monkeypatch.setenv("TRI_INDUCTOR_CHECK_MUTATIONS", "0")
    assert memo(mm_kernel, dict(kw), {}) == ["A", "C"]  # unchecked: the memo is believed
    monkeypatch.setenv("TRI_INDUCTOR_CHECK_MUTATIONS", "1")
    with pytest.raises(mutation_memo.MemoMismatch, match="mm_kernel"):
        memo(mm_kernel, dict(kw), {})


def test_reduction_kernel_and_symbolic_sizes(analysis):
    memo, real, mode = analysis
    from torch.fx.experimental.symbolic_shapes import ShapeEnv

    ws = torch.empty(4, 16, 256, dtype=torch.float32, device="cuda")
    out = torch.empty(16, 256, dtype=torch.bfloat16, device="cuda")
    env = ShapeEnv()
    sym = env.create_unbacked_symint()
    for total in (16 * 256, sym):
        kw = dict(WS=ws, C=out, bias=out, numel=total, N=256, stride_cm=256, HAS_BIAS=False, SPLIT_K=4,
                  ACT=-1, BLOCK=1024)
        assert memo(splitk_reduce_kernel, dict(kw), {}) == real(splitk_reduce_kernel, dict(kw), {}) == ["C"]


def test_other_kernels_are_not_memoized(analysis):
    memo, real, _ = analysis
    import triton
    import triton.language as tl

    @triton.jit
    def not_ours(x_ptr, y_ptr, n, BLOCK: tl.constexpr):
        i = tl.arange(0, BLOCK)
        tl.store(y_ptr + i, tl.load(x_ptr + i), mask=i < n)

    x = torch.empty(64, device="cuda")
    before = dict(mutation_memo.stats)
    kw = dict(x_ptr=x, y_ptr=x.clone(), n=64, BLOCK=64)
    assert memo(not_ours, dict(kw), {}) == real(not_ours, dict(kw), {}) == ["y_ptr"]
    assert mutation_memo.stats == before
