"""GPT-J style (interleaved) RoPE written with strided slices, rewritten on the Dynamo graph
(tri_inductor/patterns/rope_fx.py): our RoPE kernel runs, numerics match float64, and forms it does
not cover are left as they were."""
from __future__ import annotations

import pytest
import torch

import tri_inductor
from pattern_harness import dynamo_graph, rel
from tri_inductor.patterns.rope_fx import rewrite_interleaved_rope_in_dynamo_graph

# fp32 against the float64 run of the same module: the kernel rotates in fp32 (a few ulps);
# bf16 rounds q/k/cos/sin and the output (~4e-3 each; the interpreter truncates on store).
TOL = {torch.float32: 1e-6, torch.bfloat16: 2e-2}


def rotate_every_two(x):
    x1 = x[:, :, :, ::2]
    x2 = x[:, :, :, 1::2]
    return torch.stack((-x2, x1), dim=-1).flatten(-2)


def apply(t, sin, cos, heads_dim):
    sin = torch.repeat_interleave(sin.unsqueeze(heads_dim), 2, 3)
    cos = torch.repeat_interleave(cos.unsqueeze(heads_dim), 2, 3)
    return (t * cos) + (rotate_every_two(t) * sin)


class GPTJRope(torch.nn.Module):
    """q/k [B, S, H, D] (GPT-J) or [B, H, S, D]; rotary dims first, the rest passed through."""

    def __init__(self, rot=8, heads_dim=2, table=64):
        super().__init__()
        self.rot, self.heads_dim = rot, heads_dim
        inv = 1.0 / (10000 ** (torch.arange(0, rot, 2).float() / rot))
        ang = torch.outer(torch.arange(table).float(), inv)
        self.register_buffer("embed_positions", torch.cat((ang.sin(), ang.cos()), dim=1))

    def forward(self, q, k, pos):
        sincos = self.embed_positions[pos].to(q.dtype)
        sin, cos = torch.split(sincos, sincos.shape[-1] // 2, dim=-1)
        r = self.rot
        if r == q.shape[-1]:
            return apply(q, sin, cos, self.heads_dim), apply(k, sin, cos, self.heads_dim)
        qr = apply(q[:, :, :, :r], sin, cos, self.heads_dim)
        kr = apply(k[:, :, :, :r], sin, cos, self.heads_dim)
        return torch.cat([qr, q[:, :, :, r:]], dim=-1), torch.cat([kr, k[:, :, :, r:]], dim=-1)


class KAfterQ(GPTJRope):
    """k is computed only after q's rotation is used: the two cannot share one call."""

    def forward(self, q, x, pos):
        sincos = self.embed_positions[pos].to(q.dtype)
        sin, cos = torch.split(sincos, sincos.shape[-1] // 2, dim=-1)
        qr = apply(q, sin, cos, self.heads_dim)
        k = x * qr.sum()  # depends on q's rotation
        return qr, apply(k, sin, cos, self.heads_dim)


def _inputs(heads_dim, D=16, B=2, S=7, Hq=4, Hk=2, dtype=torch.float32):
    g = torch.Generator().manual_seed(0)
    shape = (lambda h: (B, S, h, D)) if heads_dim == 2 else (lambda h: (B, h, S, D))
    return (torch.randn(*shape(Hq), generator=g).to(dtype), torch.randn(*shape(Hk), generator=g).to(dtype),
            torch.randint(0, 60, (B, S), generator=g))


def _compiled(module, args):
    torch._dynamo.reset()
    before = {id(r) for r in tri_inductor.last_audit()}
    out = torch.compile(module, backend="tri_inductor")(*args)
    return out, [r for r in tri_inductor.last_audit() if id(r) not in before]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("heads_dim,rot", [(2, 8), (2, 16), (1, 8)], ids=["gptj-partial", "gptj-full", "bhsd-partial"])
def test_interleaved_rope_runs_our_kernel_and_matches_float64(interpreter, heads_dim, rot, dtype):
    module = GPTJRope(rot=rot, heads_dim=heads_dim)
    args = _inputs(heads_dim, dtype=dtype)
    gm = dynamo_graph(module, *args)
    assert rewrite_interleaved_rope_in_dynamo_graph(gm) == 2
    reports = _one_launch_matching_float64(module, args, dtype)
    assert not [m for r in reports for m in r.near_misses], [r.near_misses for r in reports]


def _one_launch_matching_float64(module, args, dtype):
    """Compile ``module``: q and k rotated by one launch of ours, each within TOL of the module's
    float64 run; returns the audit reports."""
    ref = module.double()(*[a.double() if a.is_floating_point() else a for a in args])
    module.float()
    out, reports = _compiled(module, args)
    assert sum(r.pattern_hits.get("rope", 0) for r in reports) == 1  # q and k in one launch
    for o, r in zip(out, ref):
        assert o.dtype == dtype and o.shape == r.shape and rel(o, r) < TOL[dtype]
    return reports


def _pair_ref(x, module, pos):
    """float64 ground truth: each (even, odd) pair of x rotated by the module's angle at the
    positions of the first sequence."""
    ang = module.ang.double()[pos[0]]
    c, s = ang.cos()[None, :, None], ang.sin()[None, :, None]
    x0, x1 = x.double()[..., ::2], x.double()[..., 1::2]
    return torch.stack([x0 * c - x1 * s, x1 * c + x0 * s], -1).flatten(3)


class PairRope(torch.nn.Module):
    """RoPE on (re, im) pairs: torchtune's form, or Meta Llama's complex form (complex_pairs.py
    turns it into the same pair arithmetic). q/k [B, S, H, D]."""

    def __init__(self, form, D=16, table=64):
        super().__init__()
        self.form = form
        inv = 1.0 / (10000 ** (torch.arange(0, D, 2).float() / D))
        self.register_buffer("ang", torch.outer(torch.arange(table).float(), inv))  # [table, D/2]

    def forward(self, q, k, pos):
        ang = self.ang[pos[0]]  # [S, D/2], positions of the first sequence
        if self.form in ("torchtune", "cache-first"):
            cache = torch.stack([ang.cos(), ang.sin()], -1)

            def one(x):
                xs = torch.reshape(x.float(), (*x.shape[:-1], -1, 2))
                rc = cache.view(-1, xs.size(1), 1, xs.size(3), 2)
                if self.form == "cache-first":  # the cos/sin pairs first: both factors are "parts"
                    out = torch.stack([rc[..., 0] * xs[..., 0] - rc[..., 1] * xs[..., 1],
                                       rc[..., 0] * xs[..., 1] + rc[..., 1] * xs[..., 0]], -1)
                else:
                    out = torch.stack([xs[..., 0] * rc[..., 0] - xs[..., 1] * rc[..., 1],
                                       xs[..., 1] * rc[..., 0] + xs[..., 0] * rc[..., 1]], -1)
                return out.flatten(3).type_as(x)
            return one(q), one(k)
        freqs_cis = torch.polar(torch.ones_like(ang), ang).view(1, ang.shape[0], 1, ang.shape[1])
        q_ = torch.view_as_complex(q.float().reshape(*q.shape[:-1], -1, 2))
        k_ = torch.view_as_complex(k.float().reshape(*k.shape[:-1], -1, 2))
        return (torch.view_as_real(q_ * freqs_cis).flatten(3).type_as(q),
                torch.view_as_real(k_ * freqs_cis).flatten(3).type_as(k))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("form", ["torchtune", "cache-first", "meta-complex"])
def test_pair_rope_runs_our_kernel_and_matches_float64(interpreter, form, dtype):
    module = PairRope(form)
    args = _inputs(2, dtype=dtype)
    ref = [_pair_ref(x, module, args[2]) for x in args[:2]]
    out, reports = _compiled(module, args)
    assert sum(r.pattern_hits.get("rope", 0) for r in reports) >= 1
    for o, r in zip(out, ref):
        assert o.dtype == dtype and o.shape == r.shape and rel(o, r) < TOL[dtype]
    assert not [m for r in reports for m in r.near_misses], [r.near_misses for r in reports]


class PairSpellings(PairRope):
    """(even, odd) pairs spelled as people write them, without a reshape to ``(..., 2)`` and
    ``[..., 0]`` indexing: strided slices joined by ``stack`` (bf16 math or an fp32 upcast), and
    lucidrains' ``unbind`` of ``(d r) -> d r`` (as the pairs' rotation, or as ``rotate_every_two``
    in ``x * cos + rot(x) * sin``). q/k [B, S, H, D]."""

    def forward(self, q, k, pos):
        ang = self.ang[pos[0]]  # [S, D/2]
        c, s = ang.cos()[None, :, None], ang.sin()[None, :, None]

        def one(x):
            if self.form == "slices":
                x0, x1 = x[..., ::2], x[..., 1::2]
                return torch.stack((x0 * c.to(x.dtype) - x1 * s.to(x.dtype), x0 * s.to(x.dtype) + x1 * c.to(x.dtype)),
                                   -1).flatten(-2)
            if self.form == "slices-fp32":
                xf = x.float()
                x0, x1 = xf[..., ::2], xf[..., 1::2]
                return torch.stack((x0 * c - x1 * s, x1 * c + x0 * s), -1).flatten(-2).type_as(x)
            x0, x1 = x.reshape(*x.shape[:-1], -1, 2).unbind(dim=-1)
            if self.form == "unbind":
                return torch.stack((x0 * c.to(x.dtype) - x1 * s.to(x.dtype), x1 * c.to(x.dtype) + x0 * s.to(x.dtype)),
                                   -1).flatten(3)
            rot = torch.stack((-x1, x0), dim=-1).flatten(-2)  # "unbind-rotate"
            cc, ss = (t.repeat_interleave(2, -1).to(x.dtype) for t in (c, s))
            return x * cc + rot * ss
        return one(q), one(k)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("form", ["slices", "slices-fp32", "unbind", "unbind-rotate"])
def test_pair_spellings_run_our_kernel_and_match_float64(interpreter, form, dtype):
    """Every spelling: q and k rotated by one launch of ours, within TOL of float64."""
    module = PairSpellings(form)
    args = _inputs(2, dtype=dtype)
    gm = dynamo_graph(module, *args)
    assert rewrite_interleaved_rope_in_dynamo_graph(gm) == 2
    out, reports = _compiled(module, args)
    assert sum(r.pattern_hits.get("rope", 0) for r in reports) == 1
    for o, x in zip(out, args[:2]):
        r = _pair_ref(x, module, args[2])
        assert o.dtype == dtype and o.shape == r.shape and rel(o, r) < TOL[dtype]


class HalvesRope(torch.nn.Module):
    """GPT-OSS's rotation: the two halves of each head rotated by half-width cos/sin and joined
    with ``cat`` (no ``rotate_half``, no negation): ``chunk`` or slices, [B, S, H, D] or
    [B, H, S, D]."""

    def __init__(self, spelling, heads_dim, D=16, table=64):
        super().__init__()
        self.spelling, self.heads_dim = spelling, heads_dim
        inv = 1.0 / (10000 ** (torch.arange(0, D, 2).float() / D))
        self.register_buffer("ang", torch.outer(torch.arange(table).float(), inv))  # [table, D/2]

    def forward(self, q, k, pos):
        ang = self.ang[pos]  # [B, S, D/2]
        c, s = ang.cos().unsqueeze(self.heads_dim), ang.sin().unsqueeze(self.heads_dim)

        def one(x):
            if self.spelling == "chunk":
                x1, x2 = torch.chunk(x, 2, dim=-1)
            else:
                x1, x2 = x[..., : x.shape[-1] // 2], x[..., x.shape[-1] // 2:]
            return torch.cat((x1 * c.to(x.dtype) - x2 * s.to(x.dtype), x2 * c.to(x.dtype) + x1 * s.to(x.dtype)), -1)
        return one(q), one(k)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("spelling,heads_dim", [("chunk", 1), ("slices", 2)], ids=["gpt-oss-chunk", "slices-bshd"])
def test_rotation_of_halves_runs_our_kernel_and_matches_float64(interpreter, spelling, heads_dim, dtype):
    module = HalvesRope(spelling, heads_dim)
    args = _inputs(heads_dim, dtype=dtype)
    gm = dynamo_graph(module, *args)
    assert rewrite_interleaved_rope_in_dynamo_graph(gm) == 2
    reports = _one_launch_matching_float64(module, args, dtype)
    assert not [m for r in reports for m in r.near_misses], [r.near_misses for r in reports]


def test_k_made_after_qs_rotation_gets_a_call_of_its_own(interpreter):
    module = KAfterQ(rot=16, heads_dim=2)
    q, k, pos = _inputs(2)
    gm = dynamo_graph(module, q, k, pos)
    assert rewrite_interleaved_rope_in_dynamo_graph(gm) == 2
    gm.graph.lint()
    ref = module.double()(q.double(), k.double(), pos)
    module.float()
    out, reports = _compiled(module, (q, k, pos))
    assert sum(r.pattern_hits.get("rope", 0) for r in reports) == 2
    for o, r in zip(out, ref):
        assert rel(o, r) < 1e-5


class OtherRotation(GPTJRope):
    """stack((-even, odd)): a different rotation (the sign on the other element), not RoPE's."""

    def forward(self, q, k, pos):
        sincos = self.embed_positions[pos].to(q.dtype)
        sin, cos = torch.split(sincos, sincos.shape[-1] // 2, dim=-1)
        sin = torch.repeat_interleave(sin.unsqueeze(2), 2, 3)
        cos = torch.repeat_interleave(cos.unsqueeze(2), 2, 3)
        t = q[:, :, :, :8]
        r = torch.stack((-t[:, :, :, ::2], t[:, :, :, 1::2]), dim=-1).flatten(-2)
        return t * cos + r * sin


class PerHeadCos(GPTJRope):
    """cos/sin that differ per head: not a per-position rotation our op takes."""

    def forward(self, q, k, pos):
        sincos = self.embed_positions[pos].to(q.dtype)
        sin, cos = torch.split(sincos, sincos.shape[-1] // 2, dim=-1)
        sin = torch.repeat_interleave(sin.unsqueeze(2), 2, 3) * torch.ones(1, 1, q.shape[2], 1)
        cos = torch.repeat_interleave(cos.unsqueeze(2), 2, 3) * torch.ones(1, 1, q.shape[2], 1)
        t = q[:, :, :, :8]
        return t * cos + rotate_every_two(t) * sin


@pytest.mark.parametrize("module", [OtherRotation(), PerHeadCos()], ids=["other-rotation", "per-head-cos"])
def test_forms_it_does_not_cover_are_left_alone(module):
    args = _inputs(2)
    gm = dynamo_graph(module, *args)
    before = [(n.op, n.target) for n in gm.graph.nodes]
    assert rewrite_interleaved_rope_in_dynamo_graph(gm) == 0
    assert [(n.op, n.target) for n in gm.graph.nodes] == before
    out, _ = _compiled(module, args)
    torch.testing.assert_close(out, module(*args))


class GlmRope(torch.nn.Module):
    """GLM / Helium / ERNIE 4.5 (transformers): ``x[..., 0::2]`` slices, a full-width cos/sin cut
    to half and ``repeat_interleave``d, q/k [B, H, S, D]; ``upcast``: ERNIE's rotation in fp32 of
    16-bit q/k, cast back at the end."""

    def __init__(self, upcast=False, D=16, table=64, float_first=False):
        super().__init__()
        self.upcast, self.float_first = upcast, float_first
        inv = 1.0 / (10000 ** (torch.arange(0, D, 2).float() / D))
        ang = torch.outer(torch.arange(table).float(), inv)
        self.register_buffer("emb", torch.cat((ang, ang), dim=-1))

    @staticmethod
    def rotate_half(x):
        x1 = x[..., 0::2]
        x2 = x[..., 1::2]
        return torch.stack((-x2, x1), dim=-1).flatten(-2)

    def forward(self, q, k, pos):
        emb = self.emb[pos]
        cos, sin = emb.cos().to(q.dtype).unsqueeze(1), emb.sin().to(q.dtype).unsqueeze(1)
        cos = cos[..., : cos.shape[-1] // 2].repeat_interleave(2, dim=-1)
        sin = sin[..., : sin.shape[-1] // 2].repeat_interleave(2, dim=-1)
        if self.float_first:  # Cohere: q/k to fp32 first, the rotation on those, cast back
            qf, kf = q.float(), k.float()
            return (qf * cos + self.rotate_half(qf) * sin).to(q.dtype), (kf * cos + self.rotate_half(kf) * sin).to(k.dtype)
        if self.upcast:
            return ((q.float() * cos) + (self.rotate_half(q).float() * sin)).to(q.dtype), \
                ((k.float() * cos) + (self.rotate_half(k).float() * sin)).to(k.dtype)
        return q * cos + self.rotate_half(q) * sin, k * cos + self.rotate_half(k) * sin


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("form", [{}, {"upcast": True}, {"float_first": True}], ids=["glm", "ernie-upcast", "cohere"])
def test_glm_interleaved_rope_runs_our_kernel_and_matches_float64(interpreter, form, dtype):
    _one_launch_matching_float64(GlmRope(**form), _inputs(1, dtype=dtype), dtype)


class RotateHalfRope(torch.nn.Module):
    """NeoX's ``x * cos + rotate_half(x) * sin`` with full-width cos/sin, in the forms the post-grad
    pair patterns (rope.py) do not take: ``heads-last`` (HF ``unsqueeze_dim=2``, Gemma 4: q/k
    [B, S, H, D]), ``single`` (only q rotated: Gemma 4's layers that reuse another layer's k),
    ``flipped`` (NanoChat's ``rotate_half`` = ``cat((x2, -x1))``, the rotation the other way)."""

    def __init__(self, form, D=16, table=64):
        super().__init__()
        self.form = form
        inv = 1.0 / (10000 ** (torch.arange(0, D, 2).float() / D))
        ang = torch.outer(torch.arange(table).float(), inv)
        self.register_buffer("emb", torch.cat((ang, ang), dim=-1))

    def rotate_half(self, x):
        x1, x2 = x[..., : x.shape[-1] // 2], x[..., x.shape[-1] // 2:]
        return torch.cat((x2, -x1), dim=-1) if self.form == "flipped" else torch.cat((-x2, x1), dim=-1)

    def forward(self, q, k, pos):
        emb = self.emb[pos]
        heads_dim = 2 if self.form == "heads-last" else 1
        cos, sin = emb.cos().to(q.dtype).unsqueeze(heads_dim), emb.sin().to(q.dtype).unsqueeze(heads_dim)
        qr = q * cos + self.rotate_half(q) * sin
        if self.form == "single":
            return qr, k * 2
        return qr, k * cos + self.rotate_half(k) * sin


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("form", ["heads-last", "single", "flipped"])
def test_rotate_half_forms_the_pair_patterns_miss_run_our_kernel_and_match_float64(interpreter, form, dtype):
    module = RotateHalfRope(form)
    args = _inputs(2 if form == "heads-last" else 1, dtype=dtype)
    gm = dynamo_graph(module, *args)
    assert rewrite_interleaved_rope_in_dynamo_graph(gm) == (1 if form == "single" else 2)
    reports = _one_launch_matching_float64(module, args, dtype)
    assert not [m for r in reports for m in r.near_misses], [r.near_misses for r in reports]


def test_rotate_half_pairs_in_bhsd_stay_with_the_post_grad_patterns():
    """The common HF form (q/k pair, [B, H, S, D]) is rope.py's: rope_fx leaves it as it was."""
    module = RotateHalfRope("plain")
    args = _inputs(1)
    gm = dynamo_graph(module, *args)
    before = [(n.op, n.target) for n in gm.graph.nodes]
    assert rewrite_interleaved_rope_in_dynamo_graph(gm) == 0
    assert [(n.op, n.target) for n in gm.graph.nodes] == before
