"""Tensor parallelism on the CPU: per-rank GEMM shapes (vs vLLM's real layers), their configs
(sm_90 codegen, interpreter numerics vs float64), a TP=2 piece of vLLM's real layers compiled
codegen-only with its all-reduces audited as communication, and the rank in the audit summary.

TP without GPUs: torch.distributed's "fake" backend gives one process rank 0 of a world of 2 or 4
(collectives return their input unchanged); vLLM's groups are built on it (:func:`fake_tp`).
Numerics: ||out - ref|| / ||ref|| against float64, bf16 1e-2 (output rounding dominates).
"""
from __future__ import annotations

import contextlib
import sys
from pathlib import Path

import pytest
import torch

from tri_inductor.tp_shapes import hf_gemm_shapes, kv_heads_per_rank, per_rank_gemm_shapes

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from models import MODELS  # noqa: E402

TOL_BF16 = 1e-2
# Llama-3-70B's config.json (meta-llama/Meta-Llama-3-70B): the shapes that matter here.
LLAMA_3_70B = dict(architectures=["LlamaForCausalLM"], hidden_size=8192, intermediate_size=28672,
                   num_attention_heads=64, num_key_value_heads=8, head_dim=128, vocab_size=128256)
TP_MODELS = {"llama-3-70b": LLAMA_3_70B, "qwen3-32b": MODELS["qwen3-32b"]}
CASES = [(m, tp) for m in TP_MODELS for tp in (2, 4)]


def _rel(out, ref):
    return ((out.double() - ref).norm() / ref.norm()).item()


# ----------------------------------------------------------------------------- pure arithmetic


def test_tp1_is_the_unsliced_model_and_bad_sizes_are_refused():
    cfg = MODELS["llama-3-8b"]
    h, i, d = cfg["hidden_size"], cfg["intermediate_size"], cfg["head_dim"]
    one = hf_gemm_shapes(cfg, 1)
    assert one["qkv"] == ((cfg["num_attention_heads"] + 2 * cfg["num_key_value_heads"]) * d, h)
    assert one["gate_up"] == (2 * i, h) and one["down"] == (h, i)
    two = hf_gemm_shapes(cfg, 2)
    assert two["o"][0] == one["o"][0] and two["o"][1] * 2 == one["o"][1]  # row-parallel: K sliced
    assert two["gate_up"][0] * 2 == one["gate_up"][0] and two["gate_up"][1] == h  # column: N sliced
    assert kv_heads_per_rank(8, 16) == 1  # more ranks than kv heads: one replicated head each
    with pytest.raises(ValueError, match="num_attention_heads"):
        per_rank_gemm_shapes(4096, 14336, 32, 8, 128, 128256, tp=3)
    with pytest.raises(ValueError, match="num_key_value_heads"):
        kv_heads_per_rank(8, 12)


# ----------------------------------------------------------------------------- vLLM, fake world


@contextlib.contextmanager
def fake_tp(tp: int):
    """vLLM's world/TP/PP groups for rank 0 of ``tp`` ranks, in this process, on the fake backend.

    vLLM's ``initialize_model_parallel`` cannot be used as is: it pairs every group with a gloo
    group (gloo cannot run on the fake store) and a shared-memory broadcaster that waits for the
    other ranks.  The groups are built with vLLM's own ``init_model_parallel_group`` instead, each
    torch group on the fake backend, without the broadcaster."""
    vllm = pytest.importorskip("vllm", reason="vLLM 0.26 is needed for its parallel layers")  # noqa: F841
    import torch.distributed as dist
    from torch.testing._internal.distributed.fake_pg import FakeStore
    from vllm.config import CompilationConfig, DeviceConfig, VllmConfig, set_current_vllm_config
    from vllm.distributed import parallel_state as ps

    if dist.is_initialized():
        pytest.fail("a process group is already initialised in this test process")
    real_new_group = dist.new_group

    def new_group(ranks=None, backend=None, **kwargs):
        return real_new_group(ranks, backend="fake", **kwargs)

    cfg = VllmConfig(device_config=DeviceConfig(device="cpu"), compilation_config=CompilationConfig(custom_ops=["none"]))
    dist.init_process_group("fake", store=FakeStore(), rank=0, world_size=tp)
    dist.new_group = new_group
    import vllm.ir

    try:
        # enable_torch_wrap(False): what a worker of a tri_inductor engine runs with (vLLM wraps IR
        # ops in custom ops only for its own "inductor" backend): the IR ops trace to their native form.
        with set_current_vllm_config(cfg), vllm.ir.enable_torch_wrap(False):
            ps.init_distributed_environment(world_size=tp, rank=0, local_rank=0, backend="fake")
            ps._TP = ps.init_model_parallel_group([list(range(tp))], 0, "fake", use_message_queue_broadcaster=False,
                                                  group_name="tp")
            ps._PP = ps.init_model_parallel_group([[r] for r in range(tp)], 0, "fake", group_name="pp")
            ps._TP.use_custom_op_call = True  # as on CUDA: torch.ops.vllm.all_reduce in the graph
            comm = ps._TP.device_communicator

            def all_reduce(x: torch.Tensor) -> torch.Tensor:
                # Out of place, as vLLM's NCCL all-reduce (pynccl) is; the base communicator reduces
                # in place and returns its input, which the custom op's contract forbids.
                out = x.clone()
                dist.all_reduce(out, group=comm.device_group)
                return out

            comm.all_reduce = all_reduce
            yield cfg
    finally:
        dist.new_group = real_new_group
        for name in ("_TP", "_PP"):
            g = getattr(ps, name)
            if g is not None:
                g.destroy()
                setattr(ps, name, None)
        ps.destroy_distributed_environment()


def _vllm_layers(cfg: dict, on_meta: bool = True):
    """vLLM's parallel layers of one decoder layer + lm_head for ``cfg`` (inside :func:`fake_tp`)."""
    from vllm.model_executor.layers.linear import MergedColumnParallelLinear, QKVParallelLinear, RowParallelLinear
    from vllm.model_executor.layers.vocab_parallel_embedding import ParallelLMHead

    h, i, heads = cfg["hidden_size"], cfg["intermediate_size"], cfg["num_attention_heads"]
    d = cfg.get("head_dim") or h // heads
    with torch.device("meta") if on_meta else contextlib.nullcontext():
        return {"qkv": QKVParallelLinear(h, d, heads, cfg["num_key_value_heads"], bias=False),
                "o": RowParallelLinear(heads * d, h, bias=False),
                "gate_up": MergedColumnParallelLinear(h, [i, i], bias=False),
                "down": RowParallelLinear(i, h, bias=False),
                "lm_head": ParallelLMHead(cfg["vocab_size"], h)}


@pytest.mark.vllm
@pytest.mark.parametrize("model,tp", CASES)
def test_per_rank_shapes_match_vllms_layers(model, tp):
    """Every per-rank (N, K) is the weight shape vLLM's own parallel layers give rank 0."""
    cfg = TP_MODELS[model]
    with fake_tp(tp):
        layers = _vllm_layers(cfg)
        from vllm.distributed import get_tensor_model_parallel_world_size

        assert get_tensor_model_parallel_world_size() == tp
        got = {name: tuple(layer.weight.shape) for name, layer in layers.items()}
    assert got == hf_gemm_shapes(cfg, tp)


def _distinct_shapes(tp: int) -> list[tuple[str, int, int]]:
    seen = {}
    for model in TP_MODELS:
        for name, nk in hf_gemm_shapes(TP_MODELS[model], tp).items():
            seen.setdefault(nk, f"{model}:{name}")
    return [(what, n, k) for (n, k), what in seen.items()]


# ----------------------------------------------------------------------------- GEMM configs


@pytest.mark.parametrize("tp", [2, 4])
@pytest.mark.parametrize("m", [1, 8])
def test_per_rank_gemm_configs_match_float64_in_interpreter(tp, m):
    """The config our GEMM picks for each per-rank (N, K) at decode M (the cost model / shipped
    table: no tuning on CPU), run by Triton's interpreter over the full K on two of its N tiles
    (each tile's arithmetic depends on K and the config, not on N; the interpreter runs programs
    one by one, so the whole N would take minutes).  The split-K factor is resolved for the full
    shape, as the launch would."""
    from tri_inductor.patterns.gemm import configs as C
    from tri_inductor.patterns.gemm import heuristics as H
    from tri_inductor.patterns.gemm import ops as O

    g = torch.Generator().manual_seed(tp * 100 + m)
    for what, n, k in _distinct_shapes(tp):
        cfg = O.choose_config(m, n, k, torch.bfloat16)
        assert C.invalid_reason(cfg, C.DEFAULT_DEVICE) is None, (what, cfg)
        if cfg.kernel != C.Kind.GEMV:
            cfg = cfg._replace(split_k=H.auto_split(cfg, m, n, k, C.DEFAULT_DEVICE))
        n_sub = min(n, 2 * cfg.block_n)
        a = torch.randn(m, k, generator=g).to(torch.bfloat16)
        w = torch.randn(n_sub, k, generator=g).to(torch.bfloat16)
        out = O.mm_launch(a, w.t(), None, cfg)
        assert _rel(out, O.reference_mm(a, w.t())) < TOL_BF16, (what, n, k, cfg)


@pytest.mark.parametrize("model,tp", CASES)
def test_per_rank_gemms_compile_for_sm90(codegen_only, model, tp):
    """One rank's five projections (static decode M) compiled by the backend for a fake sm_90:
    each is our Triton GEMM, with the config chosen for its per-rank shape, and ptxas builds it."""
    shapes = hf_gemm_shapes(TP_MODELS[model], tp)

    class Projections(torch.nn.Module):
        def forward(self, x_h, x_o, x_down, *ws):  # qkv, o, gate_up, down, lm_head weights
            qkv, o, gate_up, down, head = ws
            f = torch.nn.functional.linear
            return f(x_h, qkv), f(x_o, o), f(x_h, gate_up), f(x_down, down), f(x_h, head)

    m = 8
    ws = [torch.empty(n, k, dtype=torch.bfloat16).zero_() for n, k in shapes.values()]
    xs = [torch.zeros(m, shapes["qkv"][1], dtype=torch.bfloat16), torch.zeros(m, shapes["o"][1], dtype=torch.bfloat16),
          torch.zeros(m, shapes["down"][1], dtype=torch.bfloat16)]
    reports = codegen_only(Projections(), [*xs, *ws])
    kernels = [k for r in reports for k in r.kernels]
    assert all(r.ok for r in reports), [r.format_table() for r in reports]
    assert sum(k.family == "linear" for k in kernels) >= 5, [(k.kind, k.name) for k in kernels]


# ----------------------------------------------------------------------------- a TP=2 piece


SMALL = dict(hidden_size=256, intermediate_size=512, num_attention_heads=4, num_key_value_heads=2, head_dim=64,
             vocab_size=1000)


def _tp_piece():
    """vLLM's piece between two attentions, from its real layers: o_proj (row-parallel) ->
    all-reduce -> fused add + RMSNorm -> LlamaMLP (column-parallel gate_up, SiLU-and-mul,
    row-parallel down -> all-reduce) -> fused add + RMSNorm -> qkv_proj (column-parallel)."""
    from vllm.model_executor.layers.layernorm import RMSNorm
    from vllm.model_executor.models.llama import LlamaMLP

    layers = _vllm_layers(SMALL, on_meta=False)
    h = SMALL["hidden_size"]

    class Piece(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.o_proj, self.qkv_proj = layers["o"], layers["qkv"]
            self.post_attention_layernorm, self.next_input_layernorm = RMSNorm(h, eps=1e-5), RMSNorm(h, eps=1e-5)
            self.mlp = LlamaMLP(h, SMALL["intermediate_size"], "silu")

        def forward(self, attn_out, residual):
            x, _ = self.o_proj(attn_out)
            x, residual = self.post_attention_layernorm(x, residual)
            x = self.mlp(x)
            x, residual = self.next_input_layernorm(x, residual)
            qkv, _ = self.qkv_proj(x)
            return qkv, residual

    piece = Piece()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in piece.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * (0.05 if p.dim() > 1 else 1.0) + (1.0 if p.dim() == 1 else 0))
    return piece, [torch.randn(8, layers["o"].input_size_per_partition, generator=g), torch.randn(8, h, generator=g)]


@pytest.mark.vllm
def test_tp2_piece_of_vllms_layers_compiles_triton_only_with_communication(codegen_only):
    with fake_tp(2):
        piece, inputs = _tp_piece()
        shapes = hf_gemm_shapes(SMALL, 2)
        assert tuple(piece.mlp.gate_up_proj.weight.shape) == shapes["gate_up"]
        assert tuple(piece.mlp.down_proj.weight.shape) == shapes["down"]
        reports = codegen_only(piece, inputs)
    kernels = [k for r in reports for k in r.kernels]
    comm = [k for k in kernels if k.kind == "communication"]
    assert all(r.ok for r in reports), [r.format_table() for r in reports]
    # the two row-parallel all-reduces (o_proj, down_proj): vLLM's collective op, not compute
    assert [k.op for k in comm] == ["vllm.all_reduce", "vllm.all_reduce"], [(k.kind, k.name) for k in kernels]
    families = [k.family for k in kernels if k.kind == "our_triton"]
    assert families.count("rms_norm") == 2 and families.count("linear") >= 3, families
    assert not [k for k in kernels if k.kind not in ("our_triton", "communication")], \
        [(k.kind, k.name) for k in kernels]


@pytest.mark.vllm
def test_tp2_piece_numerics_in_interpreter(interpreter):
    """The same piece compiled for CPU tensors and run by Triton's interpreter matches the eager
    piece in float64 on this rank (the fake all-reduce returns its input, in both)."""
    with fake_tp(2):
        piece, inputs = _tp_piece()
        ref = [t.double() for t in piece.double()(*[x.double() for x in inputs])]
        piece = piece.to(torch.bfloat16)
        compiled = torch.compile(piece, backend="tri_inductor")
        with torch.no_grad():
            out = compiled(*[x.to(torch.bfloat16) for x in inputs])
    for o, r in zip(out, ref):
        assert _rel(o, r) < TOL_BF16


@pytest.mark.vllm
def test_rank_in_audit_summary():
    pytest.importorskip("vllm.compilation.compiler_interface")
    from tri_inductor import audit
    from tri_inductor.vllm_compiler import RunAudit, rank_label

    assert rank_label() is None  # no parallel groups: one GPU, no rank
    with fake_tp(2):
        assert rank_label() == "tp 0/2"
        run = RunAudit()
        run.add([audit.GraphReport(graph="g", kernels=[])])
    assert run.rank == "tp 0/2" and "audit summary (tp 0/2)" in run.summary()
    assert run.to_dict()["rank"] == "tp 0/2"
