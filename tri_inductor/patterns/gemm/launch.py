"""Launching one GEMM config: which kernel, its grid, split-K workspace, TMA eligibility, 32-bit
offsets, the fused gate_up epilogue. ``ops.py`` decides which config(s) to launch."""
from __future__ import annotations

import torch
import triton

from ... import envs
from .. import _host_tma
from .._launch import launch
from ..activation import _ACTS as _ACT_CODES
from ..activation import _launch_config as _act_launch_config
from ..activation import launch_gated
from .configs import PERSISTENT_KINDS, TMA_KINDS, Cfg, Kind, device_info
from .heuristics import auto_split
from .kernels import mm_gemv_kernel, mm_kernel, mm_tma_kernel, splitk_reduce_kernel

# The activations of the fused gate_up GEMM, by name, as activation.act_mul's codes (whose gelu
# forms are named by F.gelu's ``approximate``); -1: a plain GEMM.
NO_ACT = -1
ACTS = {"silu": _ACT_CODES["silu"], "gelu": _ACT_CODES["none"], "gelu_tanh": _ACT_CODES["tanh"]}

# mm_kernel's 32-bit offsets (IDX32) only for K steps up to this: the decode tiles with K steps
# of 256/512 ran slower in that form than with 64-bit pointer tiles (docs/design/gemm.md).
IDX32_MAX_BLOCK_K = 128
# Above this many rows a fused gate_up on TMA tiles runs as the plain GEMM then the activation
# kernel; at or below it, fused on the pointer kernel (docs/design/gemm.md).
FUSED_TMA_MIN_M = 128


def hint(x) -> int:
    """A concrete int for config choice; a SymInt's size hint, without installing a guard."""
    if isinstance(x, int):
        return x
    try:
        node = x.node
        h = node.hint if node.hint is not None else node.shape_env.size_hint(node.expr)
        return int(h)
    except Exception:  # noqa: BLE001
        return 4096


def precision(dtype) -> str:
    if dtype == torch.float32 and not torch.backends.cuda.matmul.allow_tf32:
        return "ieee"
    return "tf32"


def _int_or_none(x):
    try:
        return int(x)
    except Exception:  # noqa: BLE001  (unbacked / symbolic)
        return None


def tma_ok(a, b, N: int) -> bool:
    """TMA needs a unit inner stride, 16-byte aligned outer strides and base addresses."""
    es = a.element_size()
    if a.stride(1) != 1 or not (b.stride(0) == 1 or b.stride(1) == 1):
        return False
    outer = [a.stride(0), b.stride(1) if b.stride(0) == 1 else b.stride(0), N]
    offsets = [a.storage_offset(), b.storage_offset()]
    vals = [_int_or_none(v) for v in outer + offsets]
    if any(v is None or (v * es) % 16 for v in vals):
        return False
    if type(a) is torch.Tensor and a.is_cuda:  # eager: the real addresses are known
        return a.data_ptr() % 16 == 0 and b.data_ptr() % 16 == 0
    return True  # traced: Inductor's buffers and graph inputs are 16-byte aligned


def offsets_fit_int32(a, b, m_cap: int | None, split: int) -> bool:
    """Whether every element offset mm_kernel forms fits in int32: the last row of a (M, or
    ``m_cap`` when M is symbolic; unknown: no) and of b, each times its strides, and the end
    of the output (or of the [split, rows, N] partials). Symbolic strides answer no."""
    M, K = a.shape
    N = b.shape[1]
    # isinstance, not int(): int() of a SymInt would install a guard (and specialise M). A
    # symbolic M is bounded by m_cap when vLLM runs the graph, but by its size hint when
    # Inductor autotunes the graph at compile time (see _rows): the larger of the two.
    rows = M if isinstance(M, int) else (None if m_cap is None else max(m_cap, hint(M)))
    vals = [v if isinstance(v, int) else None for v in (K, N, a.stride(0), a.stride(1), b.stride(0), b.stride(1))]
    if rows is None or any(v is None for v in vals):
        return False
    k, n, sam, sak, sbk, sbn = vals
    # rows are wrapped (% M), K offsets stop below K; slack for one tile past either end.
    worst = max(rows * sam + (k + 1024) * sak, n * sbn + (k + 1024) * sbk, (rows + 256) * (n + 256) * split)
    return worst < 2**31


def _host_descriptors_ok(a) -> bool:
    """Host-side descriptors can be passed here: ``TRI_INDUCTOR_TMA`` is not 0, an eager call needs
    Triton's ``TensorDescriptor`` and a non-empty a (a descriptor's dimensions are positive); a
    traced one also our tracing hook (``patterns/_host_tma.py``). Else the config's tiles run on the
    pointer kernel."""
    if not envs.tma():
        return False
    if type(a) is torch.Tensor:
        return _host_tma.available() and a.shape[0] > 0
    return _host_tma.traceable()


def gemv_ok(a, b) -> bool:
    return a.stride(1) == 1 and b.stride(0) == 1  # row of a and columns of b (rows of w) contiguous


def _rows(M, m_cap: int | None):
    """Rows a launch computes into a buffer sized by ``m_cap``: min(M, m_cap). The gate keeps M
    <= m_cap whenever vLLM runs the graph, but Inductor's compile-time autotuning
    (``triton.autotune_at_compile_time``, on under vLLM's standalone compile) runs a compile
    range's kernels at M's size hint (8192, vLLM's dummy run) with every gate as at that M: the
    kernels must then stay inside the buffer, not write M rows into an m_cap-row one (the
    Llama-3.2-1B start's illegal address: split-K partials of the 1-128 token range)."""
    return M if m_cap is None else torch.sym_min(M, m_cap)


def tma_blocks(cfg: Cfg, kmajor: bool) -> dict[str, list[int]]:
    """``mm_tma_kernel``'s descriptors' block shapes: a [M, K], b as w [N, K] (``kmajor``) or
    [K, N], C [M, N]."""
    bm, bn, bk = cfg.block_m, cfg.block_n, cfg.block_k
    return {"a_desc": [bm, bk], "b_desc": [bn, bk] if kmajor else [bk, bn], "c_desc": [bm, bn]}


def tma_constexprs(cfg: Cfg, kmajor: bool, has_bias: bool, sms: int) -> dict:
    return dict(HAS_BIAS=has_bias, B_KMAJOR=kmajor, PERSISTENT=cfg.kernel in PERSISTENT_KINDS, NUM_SMS=sms,
                WARP_SPECIALIZE=cfg.kernel == Kind.TMA_WS, BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n,
                BLOCK_K=cfg.block_k, GROUP_M=cfg.group_m)


def split_for(cfg: Cfg, m_hint: int, n: int, k: int, device=None) -> int:
    return auto_split(cfg, m_hint, n, k, device_info(device))


def launch_cfg(a, b, bias, out, cfg: Cfg, gate=1, m_hint: int | None = None, m_cap: int | None = None,
               act: int = NO_ACT, rows=None):
    """Launch one config into ``out``; ``gate`` (0/1, maybe symbolic) multiplies the grid, so a
    gated-off launch is a zero-size grid: Triton's launcher skips it and a CUDA graph captures
    nothing for it.  ``m_cap``: M never exceeds it while the gate is on (sizes the split-K
    workspace).  ``act`` >= 0: the fused gate_up form (``mm_act_mul``); ``cfg`` is the config of
    the plain GEMM over all of b's columns, each program then covers half its columns in gate and
    half in up (the same tile area, operand bytes and shared memory).  ``rows``: only a's first
    rows (a ``narrow`` of a symbolic M would put a guard on it)."""
    M, K = a.shape
    if rows is not None:
        M = rows
    N = b.shape[1]
    n, k = int(N), int(K)
    fused = act != NO_ACT
    n_out = n // 2 if fused else n  # the kernels' N: C's width
    N_out = N // 2 if fused else N
    dev = device_info(a.device)
    m_hint = m_hint if m_hint is not None else hint(M)
    # Unused when HAS_BIAS is False. Not ``a``: Inductor lowers each argument separately and a
    # computed ``a`` passed twice would be written twice (see settings.realize_triton_kernel_inputs).
    bias_arg = bias if bias is not None else b
    if cfg.kernel == Kind.GEMV and gemv_ok(a, b):
        split = max(1, cfg.split_k)
        if split > 1:
            # fp32 partials of the plain GEMV over all of b's columns, then one reduction kernel
            # (sum + bias, or the gate_up activation, + cast)
            rows = _rows(M, m_cap)
            ws = torch.empty((split, rows, N), dtype=torch.float32, device=a.device)
            launch(mm_gemv_kernel, (triton.cdiv(n, cfg.block_n) * gate, split), a, b, ws, bias_arg, rows, N, K,
                   a.stride(0), b.stride(1), ws.stride(0), ws.stride(1), HAS_BIAS=False,
                   EVEN_K=(k % cfg.block_k == 0), ACT=NO_ACT, SPLIT_K=split, BLOCK_N=cfg.block_n,
                   BLOCK_K=cfg.block_k, num_warps=cfg.num_warps, num_stages=cfg.num_stages)
            _reduce(ws, out, bias, bias_arg, rows, N_out, split, act, gate)
            return
        block_n = max(1, cfg.block_n // 2) if fused else cfg.block_n
        launch(mm_gemv_kernel, (triton.cdiv(n_out, block_n) * gate, 1), a, b, out, bias_arg, M, N_out, K,
               a.stride(0), b.stride(1), 0, out.stride(0), HAS_BIAS=bias is not None,
               EVEN_K=(k % cfg.block_k == 0), ACT=act, SPLIT_K=1, BLOCK_N=block_n, BLOCK_K=cfg.block_k,
               num_warps=cfg.num_warps, num_stages=cfg.num_stages)
        return
    if cfg.kernel == Kind.GEMV:  # strided operands: the pointer kernel with the narrowest MMA tile
        cfg = Cfg(16, max(cfg.block_n, 16), max(cfg.block_k, 16), 1, 1, cfg.num_warps, cfg.num_stages)
    # tl.dot needs N >= 16: a fused tile of 16 + 16 columns at least
    block_n = max(16, cfg.block_n // 2) if fused else cfg.block_n
    tiles = triton.cdiv(M, cfg.block_m) * triton.cdiv(n_out, block_n)
    tma_kernel = cfg.kernel in TMA_KINDS
    if fused and tma_kernel and m_hint <= FUSED_TMA_MIN_M:
        # decode sizes keep the fused epilogue: the same tiles on the pointer kernel (the TMA form
        # would write [M, 2N] and launch the activation kernel after it)
        cfg = cfg._replace(kernel=Kind.PTR, num_stages=min(cfg.num_stages, 4))
        tma_kernel = False
        tiles = triton.cdiv(M, cfg.block_m) * triton.cdiv(n_out, block_n)
    if fused and tma_kernel:
        # Prefill tiles: the plain GEMM, then the activation kernel (fused, the persistent
        # kernels lost to the pair: docs/design/gemm.md).
        rows = _rows(M, m_cap)
        h = torch.empty((rows, N), dtype=a.dtype, device=a.device)
        launch_cfg(a, b, None, h, cfg, gate, m_hint, m_cap, rows=None if m_cap is None else rows)
        launch_gated(h, out, act, *_act_launch_config(n_out, a.element_size()), gate=gate)
        return
    # An output wider than a (fp32 router logits) takes the pointer kernel: the TMA epilogue stages
    # a BLOCK_M x BLOCK_N tile of C in shared memory, and the TMA tiles were sized for a 2-byte C.
    if (tma_kernel and a.dtype != torch.float32 and out.dtype == a.dtype and dev.hopper and tma_ok(a, b, n)
            and _host_descriptors_ok(a)):
        kmajor = b.stride(0) == 1
        blocks = tma_blocks(cfg, kmajor)
        persistent = cfg.kernel in PERSISTENT_KINDS
        grid = torch.sym_min(dev.sms, tiles) if persistent else tiles
        desc = _host_tma.launch_descriptor
        launch(mm_tma_kernel, (grid * gate,), desc(a, blocks["a_desc"]), desc(b.t() if kmajor else b, blocks["b_desc"]),
               desc(out, blocks["c_desc"]), bias_arg, M, N, K,
               **tma_constexprs(cfg, kmajor, bias is not None, dev.sms),
               num_warps=cfg.num_warps, num_stages=cfg.num_stages)
        return
    split = auto_split(cfg, m_hint, n, k, dev)
    common = dict(HAS_BIAS=bias is not None, SPLIT_K=split, EVEN_K=(k % cfg.block_k == 0),
                  PRECISION=precision(a.dtype),
                  IDX32=cfg.block_k <= IDX32_MAX_BLOCK_K and offsets_fit_int32(a, b, m_cap, split),
                  BLOCK_M=cfg.block_m, BLOCK_K=cfg.block_k, GROUP_M=cfg.group_m, num_warps=cfg.num_warps,
                  num_stages=min(cfg.num_stages, 3) if tma_kernel else cfg.num_stages)  # TMA smem budget differs
    if split == 1:
        launch(mm_kernel, (tiles * gate, 1), a, b, out, bias_arg, M, N_out, K,
               a.stride(0), a.stride(1), b.stride(0), b.stride(1), 0, out.stride(0), out.stride(1),
               ACT=act, BLOCK_N=block_n, **common)
        return
    # Split-K: fp32 partials [SPLIT_K, rows, N] of the plain GEMM (all of b's columns), then one
    # reduction kernel (sum + bias, or the gate_up activation, + cast).
    rows = _rows(M, m_cap)
    ws = torch.empty((split, rows, N), dtype=torch.float32, device=a.device)
    grid = (triton.cdiv(rows, cfg.block_m) * triton.cdiv(n, cfg.block_n) * gate, split)
    launch(mm_kernel, grid, a, b, ws, bias_arg, rows, N, K,
           a.stride(0), a.stride(1), b.stride(0), b.stride(1), ws.stride(0), ws.stride(1), ws.stride(2),
           ACT=NO_ACT, BLOCK_N=cfg.block_n, **common)
    _reduce(ws, out, bias, bias_arg, rows, N_out, split, act, gate)


def _reduce(ws, out, bias, bias_arg, rows, n_out, split: int, act: int, gate) -> None:
    launch(splitk_reduce_kernel, (triton.cdiv(rows * n_out, 1024) * gate,), ws, out, bias_arg, rows * n_out,
           n_out, out.stride(0), HAS_BIAS=bias is not None, SPLIT_K=split, ACT=act, BLOCK=1024, num_warps=4)
