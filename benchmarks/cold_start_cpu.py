"""Where cold-start compile time goes, on a CPU: vLLM's pieces of a model compiled the way vLLM's
piecewise backend compiles them, with backend ``tri_inductor`` or vLLM's own ``inductor``.

No GPU: codegen-only mode (``tri_inductor.testing.codegen_only.fake_sm90``): real Inductor
lowering and codegen, real Triton -> cubin compiles with triton's bundled ptxas, nothing launched.
The pieces are the three distinct graphs vLLM's split gives a decoder-only model (first: embedding,
norm, qkv, RoPE; middle: o_proj, add+norm, MLP, add+norm, qkv, RoPE; last: o_proj, add+norm, MLP,
final add+norm), in vLLM's native FX forms, with a symbolic token count; ``--layers`` middle
pieces are compiled through vLLM's ``CompilerManager`` (identical pieces stop early there, as in
vLLM). The compile ranges are vLLM's: ``[1, max_num_batched_tokens]``, and for tri_inductor also
the split at the largest CUDA-graph size (``vllm_config.split_range_at_cudagraph_size``).

Every run starts from empty Inductor, Triton and tri_inductor caches (a cold start); ``--warm``
compiles a second time in a new process with the caches the first left.

    python3 benchmarks/cold_start_cpu.py --backend tri_inductor --layers 3 --json /tmp/x.json
    python3 benchmarks/cold_start_cpu.py --backend inductor --layers 3 --profile /tmp/x.prof

Stages timed (seconds, wall): Inductor's lowering/codegen (the rest of ``compile_fx``) and Triton
compiles of Inductor's kernels and of ours (user kernels), by wrapping the functions that do them;
our pattern registration, our pattern pass and Inductor's mutation analysis of our kernels (runs of
Triton's frontend) as the package counts them in every start (``cache.counters()``, which a GPU
start records too).
"""
from __future__ import annotations

import argparse
import collections
import contextlib
import json
import os
import sys
import tempfile
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # this checkout's package
import _meta  # noqa: E402  (benchmarks/, the script's own folder)

QWEN25_7B = dict(hidden=3584, inter=18944, heads=28, kv_heads=4, head_dim=128, eps=1e-6, vocab=152064,
                 qkv_bias=True)
SMALL = dict(hidden=256, inter=512, heads=4, kv_heads=2, head_dim=64, eps=1e-6, vocab=1024, qkv_bias=True)


# ---------------------------------------------------------------- the pieces (vLLM's native forms)

def _rms(x, w, eps):
    import torch

    h = x.to(torch.float32)
    h = h * torch.rsqrt(h.pow(2).mean(dim=-1, keepdim=True) + eps)
    return h.to(torch.bfloat16) * w


def _add_rms(x, residual, w, eps):
    import torch

    s = x.to(torch.float32) + residual.to(torch.float32)
    new_res = s.to(torch.bfloat16)
    h = s * torch.rsqrt(s.pow(2).mean(dim=-1, keepdim=True) + eps)
    return h.to(torch.bfloat16) * w, new_res


def _rope(x, cos, sin, heads, d):
    import torch

    t = x.shape[0]
    x = x.view(t, heads, d)
    x1, x2 = torch.chunk(x, 2, dim=-1)
    c, s = cos.unsqueeze(-2).to(x.dtype), sin.unsqueeze(-2).to(x.dtype)
    return torch.cat((x1 * c - x2 * s, x2 * c + x1 * s), dim=-1).reshape(t, heads * d)


def _qkv_rope(h, positions, cos_sin, w_qkv, b_qkv, m):
    import torch.nn.functional as F

    q_size, kv_size = m["heads"] * m["head_dim"], m["kv_heads"] * m["head_dim"]
    qkv = F.linear(h, w_qkv, b_qkv)
    q, k, v = qkv.split([q_size, kv_size, kv_size], dim=-1)
    cos, sin = cos_sin.index_select(0, positions).chunk(2, dim=-1)
    q = _rope(q, cos, sin, m["heads"], m["head_dim"])
    k = _rope(k, cos, sin, m["kv_heads"], m["head_dim"])
    return q.view(-1, m["heads"], m["head_dim"]), k.view(-1, m["kv_heads"], m["head_dim"]), \
        v.view(-1, m["kv_heads"], m["head_dim"])


def _mlp(h, w_gate_up, w_down, inter):
    import torch.nn.functional as F

    gu = F.linear(h, w_gate_up)
    return F.linear(F.silu(gu[..., :inter]) * gu[..., inter:], w_down)


def make_pieces(m: dict[str, Any]):
    """(name, fn, example CPU inputs, dynamic input indices) for the three distinct pieces."""
    import torch

    eps = m["eps"]

    def first(ids, positions, embed, norm_w, w_qkv, b_qkv, cos_sin):
        x = torch.nn.functional.embedding(ids, embed)
        q, k, v = _qkv_rope(_rms(x, norm_w, eps), positions, cos_sin, w_qkv, b_qkv, m)
        return q, k, v, x

    def middle(attn, residual, positions, w_o, n1, w_gu, w_down, n2, w_qkv, b_qkv, cos_sin):
        h = torch.nn.functional.linear(attn.view(-1, m["heads"] * m["head_dim"]), w_o)
        h, residual = _add_rms(h, residual, n1, eps)
        h, residual = _add_rms(_mlp(h, w_gu, w_down, m["inter"]), residual, n2, eps)
        q, k, v = _qkv_rope(h, positions, cos_sin, w_qkv, b_qkv, m)
        return q, k, v, residual

    def last(attn, residual, w_o, n1, w_gu, w_down, n2, n_final):
        h = torch.nn.functional.linear(attn.view(-1, m["heads"] * m["head_dim"]), w_o)
        h, residual = _add_rms(h, residual, n1, eps)
        h, residual = _add_rms(_mlp(h, w_gu, w_down, m["inter"]), residual, n2, eps)
        h, _ = _add_rms(h, residual, n_final, eps)
        return h

    T, H, I, D = 16, m["hidden"], m["inter"], m["head_dim"]
    qkv_n = (m["heads"] + 2 * m["kv_heads"]) * D
    bf = dict(dtype=torch.bfloat16)

    def w(*s):
        return torch.empty(*s, **bf)

    ids = torch.zeros(T, dtype=torch.long)
    cos_sin = torch.empty(4096, D, **bf)
    attn = w(T, m["heads"], D)
    pieces = [
        ("first", first, [ids, ids.clone(), w(m["vocab"], H), w(H), w(qkv_n, H), w(qkv_n), cos_sin], (0, 1)),
        ("middle", middle, [attn, w(T, H), ids.clone(), w(H, H), w(H), w(2 * I, H), w(H, I), w(H), w(qkv_n, H),
                            w(qkv_n), cos_sin], (0, 1, 2)),
        ("last", last, [attn, w(T, H), w(H, H), w(H), w(2 * I, H), w(H, I), w(H), w(H)], (0, 1)),
    ]
    return pieces


# ---------------------------------------------------------------- timing probes

class Probes:
    """Wall time and counts of the compile stages, by wrapping the functions that do them."""

    def __init__(self) -> None:
        self.t: collections.Counter[str] = collections.Counter()
        self.n: collections.Counter[str] = collections.Counter()
        self.kernels: collections.Counter[str] = collections.Counter()

    @contextlib.contextmanager
    def install(self):
        from torch._inductor import compile_fx as cfx
        from torch._inductor.runtime.triton_heuristics import CachingAutotuner

        from tri_inductor import hooks

        stack = contextlib.ExitStack()

        def timed(owner, name, label, key=None):
            real = getattr(owner, name)

            def wrapper(*a, **k):
                t0 = time.perf_counter()
                try:
                    return real(*a, **k)
                finally:
                    self.t[label] += time.perf_counter() - t0
                    self.n[label] += 1
                    if key is not None:
                        self.kernels[key(*a, **k)] += 1

            stack.enter_context(hooks.patched(owner, name, wrapper))

        def kernel_class(self_, *a, **k):
            name = self_.fn.__name__ if hasattr(self_.fn, "__name__") else str(self_.fn)
            user = not name.startswith("triton_")
            return f"{'ours' if user else 'inductor'}:{name}"

        # CachingAutotuner.precompile: one call per kernel (its configs compiled to cubins)
        real_pre = CachingAutotuner.precompile

        def precompile(self_, *a, **k):
            label = "triton_compile_" + ("ours" if not self_.fn.__name__.startswith("triton_") else "inductor")
            t0 = time.perf_counter()
            try:
                return real_pre(self_, *a, **k)
            finally:
                self.t[label] += time.perf_counter() - t0
                self.n[label] += 1
                self.kernels[kernel_class(self_)] += 1

        stack.enter_context(hooks.patched(CachingAutotuner, "precompile", precompile))
        timed(cfx, "fx_codegen_and_compile", "inductor_codegen_and_compile")
        timed(cfx, "compile_fx", "compile_fx_total")
        with stack:
            yield self


# ---------------------------------------------------------------- driving vLLM's compiler

def _platform():
    import vllm.compilation.backends  # noqa: F401  (before the fake platform: import-time CUDA branches)
    import vllm.compilation.compiler_interface  # noqa: F401
    import vllm.platforms

    from tri_inductor.testing.vllm_platform import cuda_like_platform

    vllm.platforms._current_platform = cuda_like_platform()


def vllm_config(backend: str, max_tokens: int, capture: int):
    import vllm.plugins
    from vllm.config import CompilationConfig, SchedulerConfig, VllmConfig

    vllm.plugins.plugins_loaded = False
    vllm.plugins.load_general_plugins()
    cc: dict[str, Any] = dict(backend=backend)
    if backend == "inductor":
        cc["custom_ops"] = ["none"]
    else:
        cc["inductor_compile_config"] = {"tri_inductor": {"codegen_only": True}}
    cfg = VllmConfig(compilation_config=CompilationConfig(**cc),
                     scheduler_config=SchedulerConfig(max_num_batched_tokens=max_tokens, max_model_len=max_tokens,
                                                      is_encoder_decoder=False))
    cfg.compilation_config.max_cudagraph_capture_size = capture  # what vLLM sizes with a model
    if backend == "tri_inductor":
        from tri_inductor.vllm_config import split_range_at_cudagraph_size

        ch = split_range_at_cudagraph_size(cfg)
        if ch is not None:
            ch.apply()
    return cfg


def compile_model(backend: str, layers: int, shapes: dict[str, Any], max_tokens: int, capture: int,
                  cache_root: str, probes: Probes) -> dict[str, Any]:
    import torch
    from torch._guards import detect_fake_mode
    from vllm.compilation.backends import CompilerManager
    from vllm.compilation.passes.pass_manager import PostGradPassManager
    from vllm.config import set_current_vllm_config

    from tri_inductor import hooks
    from tri_inductor.testing.codegen_only import fake_cuda_inputs, fake_sm90, retarget_to_cuda

    from vllm.compilation.passes.utility import fix_functionalization

    # It names vLLM's CUDA ops (absent on a CPU build); our graphs hold none of them.
    fix_functionalization.FixFunctionalizationPass.__call__ = lambda self, graph: None
    cfg = vllm_config(backend, max_tokens, capture)
    cc = cfg.compilation_config
    ranges = cc.get_compile_ranges()
    kw = {"use_aot_compile": True} if hooks.accepts_keyword(CompilerManager.__init__, "use_aot_compile") else {}
    pieces = make_pieces(shapes)
    # vLLM's order: piece 0, (layers - 1) middle pieces, the last
    order = [pieces[0]] + [pieces[1]] * (layers - 1) + [pieces[2]]
    out: dict[str, Any] = {"ranges": [str(r) for r in ranges], "graphs": len(order), "per_graph": []}
    with set_current_vllm_config(cfg):
        pm = PostGradPassManager()
        pm.configure(cfg)
        manager = CompilerManager(cc, **kw)
        os.makedirs(os.path.join(cache_root, "vllm"), exist_ok=True)
        manager.initialize_cache(os.path.join(cache_root, "vllm"), disable_cache=False, prefix="backbone")
        inductor_cfg = dict(cc.inductor_compile_config, post_grad_custom_post_pass=pm)
        if backend == "inductor":
            inductor_cfg.update({"triton.autotune_at_compile_time": False, "benchmark_combo_kernel": False})
        traced: dict[str, tuple[Any, list[Any], float]] = {}
        for name, fn, ex, dyn in pieces:  # Dynamo on the CPU (outside fake_sm90: it asks the accelerator)
            captured: dict[str, Any] = {}

            def grab(gm, example_inputs, captured=captured):
                captured["gm"], captured["ex"] = gm, example_inputs
                return gm.forward

            torch._dynamo.reset()
            args = [t.clone() if i in dyn else t for i, t in enumerate(ex)]
            for i in dyn:
                torch._dynamo.mark_dynamic(args[i], 0)
            t0 = time.perf_counter()
            torch.compile(fn, backend=grab, fullgraph=True)(*args)
            traced[name] = (captured["gm"], captured["ex"], time.perf_counter() - t0)
        out["dynamo_s"] = {k: round(v[2], 2) for k, v in traced.items()}
        with fake_sm90():
            for gi, (name, *_rest) in enumerate(order):
                gm, ex, _ = traced[name]
                retarget_to_cuda(gm)
                # vLLM's get_fake_args_from_graph: the placeholders' fake values (one shape env)
                fake_args = [n.meta["example_value"] for n in gm.graph.find_nodes(op="placeholder")]
                inputs, _ = fake_cuda_inputs(fake_args, detect_fake_mode(fake_args))
                for rng in ranges:
                    t0 = time.perf_counter()
                    manager.compile(gm, inputs, inductor_cfg, cc, compile_range=rng, graph_index=gi,
                                    num_graphs=len(order))
                    out["per_graph"].append({"piece": name, "index": gi, "range": str(rng),
                                             "s": round(time.perf_counter() - t0, 3)})
    return out


def _memo_stats() -> dict[str, int] | None:
    try:
        from tri_inductor import mutation_memo
    except ImportError:  # an older checkout (before the memo)
        return None
    return dict(mutation_memo.stats)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backend", choices=["tri_inductor", "inductor"], default="tri_inductor")
    p.add_argument("--layers", type=int, default=3, help="decoder layers (middle pieces = layers - 1)")
    p.add_argument("--shape", choices=["qwen2.5-7b", "small"], default="qwen2.5-7b")
    p.add_argument("--max-tokens", type=int, default=8192, help="max_num_batched_tokens")
    p.add_argument("--capture", type=int, default=128, help="largest CUDA-graph capture size")
    p.add_argument("--cache-dir", help="cache root (default: a fresh temporary folder: a cold start)")
    p.add_argument("--profile", help="write a cProfile of the compiles here")
    p.add_argument("--json", help="write the result here")
    p.add_argument("--no-mutation-memo", action="store_true",
                   help="A/B: every mutation analysis of our kernels runs Triton's frontend (as before the memo)")
    args = p.parse_args(argv)

    root = args.cache_dir or tempfile.mkdtemp(prefix="tri_cold_")
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = os.path.join(root, "inductor")
    os.environ["TRITON_CACHE_DIR"] = os.path.join(root, "triton")
    os.environ["TRI_INDUCTOR_CACHE_DIR"] = os.path.join(root, "tri_inductor")
    os.environ["VLLM_CACHE_ROOT"] = os.path.join(root, "vllm_root")
    warm = bool(args.cache_dir) and os.path.isdir(os.path.join(root, "triton"))

    t_import = time.perf_counter()
    import torch  # noqa: F401

    _platform()
    import tri_inductor.vllm_compiler  # noqa: F401
    import_s = time.perf_counter() - t_import

    if args.no_mutation_memo:
        from tri_inductor import mutation_memo

        mutation_memo._key = lambda *a, **k: None  # the hook then calls Inductor's analysis every time
    shapes = QWEN25_7B if args.shape == "qwen2.5-7b" else SMALL
    probes = Probes()
    prof = None
    if args.profile:
        import cProfile

        prof = cProfile.Profile()
    from tri_inductor import cache

    counted = cache.counters()
    t0 = time.perf_counter()
    with probes.install():
        if prof:
            prof.enable()
        res = compile_model(args.backend, args.layers, shapes, args.max_tokens, args.capture, root, probes)
        if prof:
            prof.disable()
    total = time.perf_counter() - t0
    if prof:
        prof.dump_stats(args.profile)
    # our own stages, as the package counts them in every start (cache_counters)
    ours = {k: v - counted[k] for k, v in cache.counters().items()}
    probes.t.update(our_pattern_registration=ours["register_s"], our_pattern_pass=ours["pass_s"],
                    mutation_analysis_ttir=ours["mutation_s"])
    probes.n.update(mutation_analysis_ttir=ours["mutation_runs"])
    res.update({
        "backend": args.backend, "shape": args.shape, "mutation_memo_on": not args.no_mutation_memo, "layers": args.layers, "warm_caches": warm,
        "import_s": round(import_s, 2), "compile_total_s": round(total, 2),
        "stages_s": {k: round(v, 2) for k, v in sorted(probes.t.items())},
        "stage_calls": dict(sorted(probes.n.items())),
        "kernels_compiled": dict(sorted(probes.kernels.items())),
        "mutation_memo": _memo_stats(),
        "tri_counters": ours,
        "versions": {"torch": torch.__version__, "triton": __import__("triton").__version__,
                     "vllm": __import__("vllm").__version__},
        "commit": _meta.git_info()["commit"],
        "cpus": os.cpu_count(),
    })
    text = json.dumps(res, indent=1)
    print(text)
    if args.json:
        with open(args.json, "w") as f:
            f.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
