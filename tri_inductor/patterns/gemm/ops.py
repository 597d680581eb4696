"""The GEMM ops (``tri_inductor::mm``, ``addmm``, ``mm_act_mul``) and their dispatch over M.

A concrete M launches its bucket's config. A symbolic M (vLLM compiles one graph for every token
count) launches one kernel per distinct bucket config, each with its grid multiplied by a 0/1
gate on M's range (``gate``): exactly one runs, the others are zero-size grids that Triton's
launcher skips and CUDA graphs never capture. No guard on M, no recompile, and decode gets
decode tiles. Under vLLM each compile range is traced inside ``token_range``: only the buckets
of that range are launched. Inductor inlines a user kernel with its constexprs fixed at trace
time and would *benchmark* ``@triton.autotune`` configs at run time, so the choice is made here,
in Python, at trace time (``tuning.config_for``: stored, measured or modelled).
"""
from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator

import torch
from torch.library import triton_op

from ... import cache
from .. import _launch as L
from ..activation import reference_gelu_and_mul, reference_silu_and_mul
from . import eager
from .configs import BUCKETS, Cfg, Kind, bucket_of, device_info, representative_m
from .heuristics import fp32_config
from .launch import ACTS, NO_ACT, hint, launch_cfg, split_for
from .tuning import config_for


_ACT_NAMES = {code: name for name, code in ACTS.items()}


def choose_config(m, n: int, k: int, dtype: torch.dtype, device=None, act: int = NO_ACT,
                  siblings: tuple[int, ...] = ()) -> Cfg:
    """The config of an M (a SymInt's size hint) x N x K GEMM on ``device`` (default: current);
    ``act``: of the fused gate_up form with that activation (tuned as it runs); ``siblings``: the
    other buckets of the dispatch plan (their candidates are compiled along if tuning runs)."""
    b = bucket_of(hint(m))
    if dtype == torch.float32:
        return fp32_config(b)
    if act == NO_ACT:
        return config_for(n, k, b, dtype, device_info(device), mm_launch, siblings=siblings)
    return config_for(n, k, b, dtype, device_info(device),
                      lambda a, w, bias, cfg: mm_launch(a, w, bias, cfg, act=act), _ACT_NAMES[act], siblings)


def compile_ahead(n: int, k: int, dtype: torch.dtype, max_tokens: int, act: str = "", later: bool = False) -> bool:
    """Queue the tuning candidates of an N x K weight's GEMM (``act``: its fused gate_up form)
    for every M bucket up to ``max_tokens`` on the compile-ahead thread (``tri_inductor.compile_ahead``;
    ``later``: behind the shapes the compile tunes); False where that is off or the dtype is not tuned."""
    from ... import compile_ahead as ahead
    from .tuning import ahead_jobs, ahead_key

    if dtype not in (torch.bfloat16, torch.float16) or (act and act not in ACTS):
        return False
    code = ACTS[act] if act else NO_ACT

    def run(a, w, bias, cfg):
        return mm_launch(a, w, bias, cfg, act=code)

    label = f"mm{f'+{act}_and_mul' if act else ''} N={n} K={k} {str(dtype).replace('torch.', '')}"
    return ahead.submit(ahead_key(n, k, dtype, act), lambda: ahead_jobs(n, k, dtype, act, max_tokens, run), later,
                        label)


def eager_warm_sizes(max_m: int) -> list[int]:
    """One M per bucket up to ``max_m``: launching each once compiles every kernel an eager
    caller with M <= max_m can need (M itself is not specialised)."""
    return sorted({min(b, max_m) for b in BUCKETS} | {max_m})


# Eager GPU calls (vLLM's lm_head, every decode step) reuse the choice: the tuning-DB lookup
# behind it costs ~0.1 ms of host time per call. Cleared with the in-memory tuning DBs.
_EAGER_CHOICE: dict[tuple, Cfg] = {}


def forget_eager_choices() -> None:
    _EAGER_CHOICE.clear()


cache.on_forget(forget_eager_choices)


def eager_config(m: int, n: int, k: int, dtype: torch.dtype, device=None, act: int = NO_ACT) -> Cfg:
    key = (bucket_of(m), n, k, dtype, getattr(device, "index", None), act)
    cfg = _EAGER_CHOICE.get(key)
    if cfg is None:
        cfg = _EAGER_CHOICE[key] = choose_config(m, n, k, dtype, device, act)
    return cfg


def gate(M, lo: int, hi: int | None):
    """1 when ``lo < M <= hi`` else 0 (M >= 1), as arithmetic: with a symbolic M this becomes a
    guard-free sympy expression (``Min``/``FloorDiv``) that Inductor evaluates per launch."""
    g = 1
    if hi is not None:
        g = g * (1 - torch.sym_min(1, (M - 1) // hi))
    if lo:
        g = g * torch.sym_min(1, (M - 1) // lo)
    return g


# The token range [start, end] the graph being compiled serves (vLLM compiles a piece once per
# compile range); None: any M >= 1.
_TOKEN_RANGE: contextvars.ContextVar[tuple[int, int] | None] = contextvars.ContextVar(
    "tri_inductor_token_range", default=None)


@contextlib.contextmanager
def token_range(start: int, end: int) -> Iterator[None]:
    """GEMMs traced inside see M only in ``[start, end]``: the dispatch plan keeps the buckets of
    that range (vLLM's prefill range then launches 1-2 kernels per projection, not every bucket's)."""
    tok = _TOKEN_RANGE.set((int(start), int(end)))
    try:
        yield
    finally:
        _TOKEN_RANGE.reset(tok)


def _kernel_identity(cfg: Cfg, m: int, n: int, k: int, device) -> tuple:
    split = split_for(cfg, m, n, k, device) if cfg.kernel in (Kind.PTR, Kind.GEMV) else 0
    return (cfg.block_m, cfg.block_n, cfg.block_k, cfg.group_m, cfg.kernel, split)


def _same_kernel_as_before(plan, cfg: Cfg, m: int, n: int, k: int, device) -> Cfg:
    # Inductor (torch 2.11) keys inlined user kernels by their arguments and constexprs, not by
    # num_warps / num_stages: a bucket whose config differs from an earlier one's only there
    # would run with the earlier launch options anyway, so take the earlier config outright.
    ident = _kernel_identity(cfg, m, n, k, device)
    for lo, hi, c in plan:
        if c != cfg and _kernel_identity(c, representative_m(hi), n, k, device) == ident:
            return c
    return cfg


def dispatch_plan(n: int, k: int, dtype: torch.dtype, device=None,
                  act: int = NO_ACT) -> list[tuple[int, int | None, Cfg]]:
    """``[(lo, hi, cfg)]`` (M in (lo, hi], hi None: no upper bound): the config of every M bucket
    that meets the current token range, consecutive equal configs merged; the first entry's lo
    and the last's hi are dropped where the range already implies them (no gate to evaluate)."""
    rng = _TOKEN_RANGE.get()
    met, lo = [], 0
    for hi in (*BUCKETS, None):
        if rng is None or not ((hi is not None and hi < rng[0]) or lo >= rng[1]):
            met.append(hi)  # else the bucket (lo, hi] holds no M of the range
        lo = hi if hi is not None else lo
    siblings = tuple(bucket_of(representative_m(hi)) for hi in met)
    plan: list[tuple[int, int | None, Cfg]] = []
    lo = 0
    for hi in met:  # consecutive buckets: each one's lo is the previous one's hi
        cfg = _same_kernel_as_before(plan, choose_config(representative_m(hi), n, k, dtype, device, act, siblings),
                                     representative_m(hi), n, k, device)
        if plan and plan[-1][2] == cfg:
            plan[-1] = (plan[-1][0], hi, cfg)
        else:
            plan.append((0 if not plan else lo, hi, cfg))
        lo = hi if hi is not None else lo
    if rng is not None:
        lo0, hi0, c0 = plan[-1]
        if hi0 is not None and hi0 >= rng[1]:
            plan[-1] = (lo0, None, c0)
    return plan


def mm_launch(a, b, bias, cfg: Cfg | None = None, dispatch: bool | None = None, act: int = NO_ACT,
              out_dtype: torch.dtype | None = None):
    """C = a @ b (+ bias), or with ``act`` the fused gate_up form act(a @ b_gate) * (a @ b_up).
    ``out_dtype``: C's dtype (default a's; fp32: router logits), the fp32 accumulator cast once
    by the kernel's store.
    A concrete M gets its bucket's config; a symbolic M (vLLM's one graph
    for 1..max_num_batched_tokens tokens) gets every bucket's kernel, each gated to its M range
    at run time (a size hint would freeze one bucket's tiles for every M: decode on prefill tiles
    runs at a fraction of the bandwidth).  A given ``cfg`` is launched alone; ``dispatch=True``
    forces the gated form for a concrete M (tests)."""
    M, K = a.shape
    N = b.shape[1]
    n, k = int(N), int(K)  # weight dims: static in LLM graphs
    out = torch.empty((M, N // 2 if act != NO_ACT else N), dtype=out_dtype or a.dtype, device=a.device)
    if dispatch is None:
        dispatch = not isinstance(M, int)
    if cfg is not None or not dispatch:
        if cfg is None:
            if type(a) is torch.Tensor and a.is_cuda and isinstance(M, int):
                cfg = eager_config(M, n, k, a.dtype, a.device, act)
                if L.plain_gpu_call((a, b, bias)):
                    # eager (vLLM's lm_head, every step): from a recorded plan after the first call
                    eager.run(a, b, bias, out, cfg, act)
                    return out
            else:
                cfg = choose_config(M, n, k, a.dtype, a.device, act)
        launch_cfg(a, b, bias, out, cfg, act=act)
        return out
    rng = _TOKEN_RANGE.get()
    for lo, hi, c in dispatch_plan(n, k, a.dtype, a.device, act):
        cap = hi if rng is None else min(hi or rng[1], rng[1])
        m_hint = representative_m(hi) if hi is not None or rng is None else min(representative_m(None), rng[1])
        launch_cfg(a, b, bias, out, c, gate=gate(M, lo, hi), m_hint=m_hint, m_cap=cap, act=act)
    return out


@triton_op("tri_inductor::mm", mutates_args={})
def mm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return mm_launch(a, b, None)


@triton_op("tri_inductor::addmm", mutates_args={})
def addmm(bias: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return mm_launch(a, b, bias)


@triton_op("tri_inductor::mm_act_mul", mutates_args={})
def mm_act_mul(a: torch.Tensor, b: torch.Tensor, act: str) -> torch.Tensor:
    """``act(a @ b[:, :n]) * (a @ b[:, n:])`` with n = b.shape[1] // 2, in one GEMM: an MLP's
    merged gate_up projection and its gated activation (``act``: silu, gelu or gelu_tanh). Each
    program accumulates a gate tile and the up tile n columns further on from the same A tiles
    and writes only the product, so the [M, 2n] gate_up output is never written or read back."""
    torch._check(act in ACTS, lambda: f"mm_act_mul: act={act!r}; use one of {sorted(ACTS)}")
    torch._check(b.shape[1] % 2 == 0, lambda: f"mm_act_mul: b has {b.shape[1]} columns; gate and "
                 "up need an even count (the two halves side by side)")
    return mm_launch(a, b, None, act=ACTS[act])


def reference_mm_act_mul(a, b, act: str):
    y = a.double() @ b.double()
    if act == "silu":
        return reference_silu_and_mul(y)
    return reference_gelu_and_mul(y, "tanh" if act == "gelu_tanh" else "none")


def reference_mm(a, b):
    return a.double() @ b.double()


def reference_addmm(bias, a, b):
    return bias.double() + a.double() @ b.double()
