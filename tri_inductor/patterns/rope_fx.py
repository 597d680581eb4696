"""Interleaved (GPT-J style) RoPE written with strided slices or on (re, im) pairs, and NeoX's
rotation written on the two halves with half-width cos/sin (GPT-OSS), rewritten on the Dynamo graph.

GPT-J in transformers (and code written like it) rotates (even, odd) pairs of the first
``rotary_dim`` dims of each head:

    rotate_every_two(t) = stack((-t[..., 1::2], t[..., ::2]), -1).flatten(-2)
    out = t * cos + rotate_every_two(t) * sin       # cos/sin repeat_interleave'd to full width
    out = cat([out, x[..., rot:]], -1)              # partial rotary: t = x[..., :rot]

After AOT the strided slices and the stack turn into index arithmetic that no traced search form
of the post-grad ``rope`` patterns matched; here, before AOT (as the attention and MoE rewrites
run), the torch-level ops are intact.  Each rotation becomes ``tri_inductor::rope_cos_sin`` (GPT-J
mode, pass-through dims copied); a q and a k rotated by the same cos/sin are one call.

NeoX's ``x * cos + rotate_half(x) * sin`` (full-width cos/sin) is taken here only where the
post-grad pair patterns (``rope.py``) cannot take it: heads in dim 2 (HF ``unsqueeze_dim=2``,
Gemma 4), a rotation without a q/k partner (Gemma 4's layers that reuse another layer's k), and
the rotation the other way (NanoChat's ``rotate_half`` is ``cat((x2, -x1))``: ours with -sin).

Layouts: a head tensor ``[B, S, H, D]`` (GPT-J rotates before moving heads forward) or
``[B, H, S, D]``; cos/sin broadcast over heads only (``[B|1, S, 1, rot]`` / ``[B|1, 1, S, rot]``).
Anything else (other broadcasting, odd widths, a result of another dtype than the input's) is
left as it was: declined, never an error.
"""
from __future__ import annotations

import dataclasses
import operator
from collections.abc import Iterator

import torch
import torch.fx

from .matcher_utils import call_arg as _arg, example_value as _val, is_call as _is

Node = torch.fx.Node


def _last_dim_slice(node) -> tuple[Node, slice] | None:
    """``(t, s)`` when ``node`` is ``t[..., s]`` (every other index ``:`` or an Ellipsis); ``s`` in
    one spelling (``0::2`` as ``::2``, a step of 1 as none)."""
    if not _is(node, (operator.getitem,)) or not isinstance(node.args[1], tuple):
        return None
    *lead, last = node.args[1]
    if not isinstance(last, slice) or not all(i is Ellipsis or i == slice(None) for i in lead):
        return None
    return node.args[0], slice(None if last.start == 0 else last.start, last.stop,
                               None if last.step == 1 else last.step)


def _uncast(node):
    """The tensor behind an fp32 upcast (``t.float()``, ``t.to(torch.float32)``), else ``node``."""
    if _is(node, (), ("float",)) and len(node.args) == 1:
        return node.args[0]
    if _is(node, (), ("to",)) and len(node.args) == 2 and node.args[1] is torch.float32:
        return node.args[0]
    return node


def _rotate_every_two(node) -> Node | None:
    """``t`` when ``node`` is ``flatten(stack((-t_odd, t_even), -1), -2)``, the parts of t as
    ``_pair_part`` reads them (``t[..., 1::2]``, or lucidrains' ``unbind`` of ``(d r) -> d r``)."""
    if not _is(node, (torch.flatten,), methods=("flatten",)) or _arg(node, 1, "start_dim") != -2:
        return None
    st = node.args[0]
    if not _is(st, (torch.stack,)) or _arg(st, 1, "dim") != -1 or len(st.args[0]) != 2:
        return None
    neg, even = st.args[0]
    if not _is(neg, (torch.neg, operator.neg), methods=("neg",)):
        return None
    odd, even = _pair_part(neg.args[0], uncast=False), _pair_part(even, uncast=False)
    if odd is None or even is None or odd[0] is not even[0]:
        return None
    return odd[0] if (odd[1], even[1]) == (1, 0) else None


def _neg_of(node) -> Node | None:
    return node.args[0] if _is(node, (torch.neg, operator.neg), methods=("neg",)) and len(node.args) == 1 else None


def _rotate_half(node) -> tuple[Node, bool] | None:
    """``(t, flipped)`` when ``node`` is NeoX's ``rotate_half(t)``, ``cat((-t2, t1), -1)`` with t1, t2
    the halves of t (slices or chunk), or its negation ``cat((t2, -t1), -1)`` (``flipped``:
    NanoChat's, a rotation the other way, which is NeoX's with -sin)."""
    if not (_is(node, (torch.cat, torch.concat)) and node.args and _arg(node, 1, "dim") in (-1, 3)
            and isinstance(node.args[0], (list, tuple)) and len(node.args[0]) == 2):
        return None
    a, b = node.args[0]
    flipped = _neg_of(a) is None
    hi, lo = (a, _neg_of(b)) if flipped else (_neg_of(a), b)  # t's second half first, its first half second
    h_hi, h_lo = (_half(n) if n is not None else None for n in (hi, lo))
    if h_hi is None or h_lo is None or h_hi[0] is not h_lo[0] or (h_hi[1], h_lo[1]) != (1, 0):
        return None
    return h_lo[0], flipped


@dataclasses.dataclass
class Rotation:
    out: Node       # the node whose value is the rotated tensor (the cat, or the add)
    x: Node         # the whole head tensor (rotary dims first)
    cos: Node
    sin: Node
    heads_dim: int  # 1 ([B, H, S, D]) or 2 ([B, S, H, D])
    neox: bool = False  # halves rotated (NeoX), not (even, odd) pairs (GPT-J)
    flipped: bool = False  # rotated the other way (the op gets -sin)
    rotate_half: bool = False  # written as x * cos + rotate_half(x) * sin (full-width cos/sin)


def _rotation(add: Node) -> Rotation | None:
    if not _is(add, (operator.add, torch.add)) or len(add.args) != 2 or add.kwargs:
        return None
    for plain, rot in (add.args, add.args[::-1]):
        if not (_is(plain, (operator.mul, torch.mul)) and _is(rot, (operator.mul, torch.mul))):
            continue
        for r, sin in (rot.args[:2], rot.args[1::-1]):
            # the rotation in fp32 of 16-bit q/k (ERNIE 4.5: ``q.float() * cos + rot(q).float() * sin``)
            t, neox, flipped = _rotate_every_two(_uncast(r)), False, False
            if t is None and (half := _rotate_half(r)) is not None:
                (t, flipped), neox = half, True
            if t is None or len(plain.args) != 2:
                continue
            factors = list(plain.args[:2]) if t in plain.args[:2] else [_uncast(a) for a in plain.args[:2]]
            if t not in factors or (neox and t not in plain.args[:2]):
                continue
            cos = plain.args[1] if factors[0] is t else plain.args[0]
            upcast = _uncast(r) is not r or t not in plain.args[:2]
            found = _describe(add, t, cos, sin, upcast)
            if found is not None and neox:
                found.neox, found.flipped, found.rotate_half = True, flipped, True
            return found
    return None


def _heads_dim(vx: torch.Tensor, vc: torch.Tensor) -> int | None:
    """The head axis of a 4-d x that the 4-d cos/sin broadcast over (1: [B, H, S, D], 2:
    [B, S, H, D]); None for any other broadcast."""
    heads = [h for h in (1, 2) if vc.shape[h] == 1 and vc.shape[3 - h] == vx.shape[3 - h]]
    return heads[0] if heads and vc.shape[0] in (1, vx.shape[0]) else None


def _describe(add: Node, t: Node, cos, sin, upcast: bool = False) -> Rotation | None:
    if upcast:
        # computed in fp32 and cast back to q's dtype (our kernel rounds once, as this does):
        # the cast is the rotation's output; a partial rotary written so is left alone
        back = list(add.users)
        if len(back) != 1 or not _is(back[0], (), ("to", "type_as")) or _last_dim_slice(t) is not None:
            return None
        vb = _val(back[0])
        if not isinstance(vb, torch.Tensor) or vb.dtype != getattr(_val(t), "dtype", None):
            return None
        add = back[0]
    vt, vc, vs, vo = _val(t), _val(cos), _val(sin), _val(add)
    if not all(isinstance(v, torch.Tensor) for v in (vt, vc, vs, vo)) or vt.dim() != 4:
        return None
    rot = vt.shape[-1]
    if rot % 2 or vc.shape != vs.shape or vc.dim() != 4 or vc.shape[-1] != rot or vo.dtype != vt.dtype:
        return None
    heads = _heads_dim(vt, vc)
    if heads is None:
        return None
    sliced = _last_dim_slice(t)
    users = list(add.users)
    if sliced is not None and sliced[1] == slice(None, rot) and len(users) == 1:
        x = sliced[0]
        cat = users[0]
        if _is(cat, (torch.cat, torch.concat)) and _arg(cat, 1, "dim") in (-1, 3) and len(cat.args[0]) == 2 \
                and cat.args[0][0] is add:
            rest = _last_dim_slice(cat.args[0][1])
            vx = _val(x)
            if rest is not None and rest[0] is x and rest[1] == slice(rot, None) and vx is not None \
                    and _val(cat) is not None and _val(cat).dtype == vx.dtype:
                return Rotation(cat, x, cos, sin, heads)
        return None
    return Rotation(add, t, cos, sin, heads)


# ---------------------------------------------------------------- the same rotation on (re, im) pairs
# torchtune and Meta's Llama code (the latter after complex_pairs.py) rotate each (even, odd) pair:
#   p = x.float().reshape(..., D // 2, 2)
#   out = stack([p0 * c - p1 * s, p1 * c + p0 * s], -1).flatten(3)  [.type_as(x)]
# with c, s [B|1, S, 1, D/2] (one value per pair): GPT-J's rotation with cos/sin repeated per pair.

def _parts(node) -> tuple[Node, int] | None:
    """``(p, i)`` when ``node`` is ``p[..., i]`` (i 0 or 1)."""
    if not _is(node, (operator.getitem,)) or not isinstance(node.args[1], tuple):
        return None
    idx = node.args[1]
    if len(idx) == 2 and idx[0] is Ellipsis and idx[1] in (0, 1):
        return node.args[0], idx[1]
    return None


def _pair_part(node, uncast: bool = True) -> tuple[Node, int] | None:
    """``(x, i)`` when ``node`` holds the even (i 0) or odd (i 1) elements of x's last dim, in any
    of the spellings people use: ``x[..., i::2]``, ``x.reshape(..., -1, 2)[..., i]`` or
    ``x.reshape(..., -1, 2).unbind(-1)[i]`` (x behind an fp32 upcast when ``uncast``)."""
    sliced = _last_dim_slice(node)
    if sliced is not None:
        sl = sliced[1]
        i = {(None, None, 2): 0, (1, None, 2): 1}.get((sl.start, sl.stop, sl.step))
        return None if i is None else ((_uncast(sliced[0]) if uncast else sliced[0]), i)
    part = _parts(node)
    if part is None and _is(node, (operator.getitem,)) and node.args[1] in (0, 1):
        ub = node.args[0]
        vp = _val(ub.args[0]) if _is(ub, (torch.unbind,), ("unbind",)) and ub.args else None
        if isinstance(vp, torch.Tensor) and _arg(ub, 1, "dim", 0) in (-1, vp.dim() - 1):
            part = ub.args[0], node.args[1]
    if part is None:
        return None
    x = _pair_source(part[0], uncast)
    return None if x is None else (x, part[1])


def _same(node):
    """A key equal for nodes that compute the same ``t[..., i]`` or the same cast of one value
    (``c.to(x.dtype)`` written at each use is a node per use)."""
    part = _parts(node) or _pair_part(node, uncast=False)
    if part is not None:
        return ("part", *part)
    if _is(node, (), ("to", "float", "type_as")) and not node.kwargs and all(
            not isinstance(a, torch.fx.Node) for a in node.args[1:]):
        return ("cast", node.target, _same(node.args[0]), *node.args[1:])
    return node


def _mul_pairs(node) -> list[tuple[Node, Node]]:
    if not (_is(node, (operator.mul, torch.mul)) and len(node.args) == 2 and not node.kwargs):
        return []
    a, b = node.args
    return [(a, b), (b, a)]


def _pair_source(p, uncast: bool = True) -> Node | None:
    """x when ``p`` is ``x[.float()].reshape/view(..., -1 or D/2, 2)``."""
    if not (_is(p, (torch.reshape,), ("reshape", "view")) and len(p.args) >= 2):
        return None
    shape = p.args[1] if len(p.args) == 2 and isinstance(p.args[1], (tuple, list)) else p.args[1:]
    if not shape or shape[-1] != 2:  # x.reshape(..., 2) or torch.reshape(x, (..., 2))
        return None
    return _uncast(p.args[0]) if uncast else p.args[0]


def _pair_rotation(stack: Node) -> Rotation | None:
    if not (_is(stack, (torch.stack,)) and len(stack.args) >= 1 and _arg(stack, 1, "dim") == -1
            and isinstance(stack.args[0], (list, tuple)) and len(stack.args[0]) == 2 and len(stack.users) == 1):
        return None
    flat = next(iter(stack.users))
    if not (_is(flat, (torch.flatten,), ("flatten",)) and len(flat.args) >= 2 and flat.args[1] in (3, -2)):
        return None
    out = flat
    if len(flat.users) == 1 and _is(next(iter(flat.users)), (), ("type_as", "to")):
        out = next(iter(flat.users))
    return next((r for x, c, s_ in _rotated_parts(*stack.args[0], _pair_part)
                 if (r := _checked_pair_rotation(stack, out, x, c, s_)) is not None), None)


def _rotated_parts(re: Node, im: Node, part_of) -> Iterator[tuple[Node, Node, Node]]:
    """Each (x, c, s) with ``re = a0 * c - a1 * s`` and ``im = a1 * c + a0 * s`` (factors in any
    order) and a0, a1 parts 0 and 1 of one x (``part_of(node) -> (x, i) | None``): the two parts
    of x rotated by (c, s). The cos/sin may be parts too (torchtune's cache pairs): the caller
    takes the first candidate its shape checks accept."""

    def parts(a0, a1):
        p0, p1 = part_of(a0), part_of(a1)
        return p0 is not None and p1 is not None and p0[0] is p1[0] and (p0[1], p1[1]) == (0, 1)

    if not (_is(re, (operator.sub, torch.sub)) and _is(im, (operator.add, torch.add))
            and len(re.args) == 2 and len(im.args) == 2 and not re.kwargs and not im.kwargs):
        return
    ims = {frozenset(map(_same, m.args)) for m in im.args if _is(m, (operator.mul, torch.mul))}
    # x's parts and the cos/sin play symmetric parts in the formula: x is the one ``parts`` names
    for a0, c in _mul_pairs(re.args[0]):
        for a1, s_ in _mul_pairs(re.args[1]):
            # the same part may be a separate node in each product (Dynamo keeps every indexing)
            if parts(a0, a1) and ims == {frozenset((_same(a0), _same(s_))), frozenset((_same(a1), _same(c)))}:
                yield part_of(a0)[0], c, s_


# ---------------------------------------------------------------- the rotation on halves, cos/sin per pair
# GPT-OSS (and code written like OpenAI's reference) rotates the two halves with half-width cos/sin:
#   x1, x2 = torch.chunk(x, 2, dim=-1)            (or x[..., :D/2], x[..., D/2:])
#   out = cat((x1 * c - x2 * s, x2 * c + x1 * s), -1)
# NeoX's rotation (rotate_half) with cos = cat((c, c), -1), sin = cat((s, s), -1).

def _half(node) -> tuple[Node, int] | None:
    """``(x, i)`` when ``node`` is half ``i`` of x's last dim (``chunk(x, 2, -1)[i]`` or a slice)."""
    if _is(node, (operator.getitem,)) and node.args[1] in (0, 1):
        ch = node.args[0]
        if _is(ch, (torch.chunk,), ("chunk",)) and _arg(ch, 1, "chunks") == 2 and _arg(ch, 2, "dim", 0) in (-1, 3):
            return ch.args[0], node.args[1]
        return None
    sliced = _last_dim_slice(node)
    vx = _val(sliced[0]) if sliced is not None else None
    if vx is None or sliced[1].step is not None:
        return None
    half = vx.shape[-1] // 2
    if sliced[1] == slice(None, half):
        return sliced[0], 0
    return (sliced[0], 1) if sliced[1] in (slice(half, None), slice(half, vx.shape[-1])) else None


def _half_rotation(cat: Node) -> Rotation | None:
    if not (_is(cat, (torch.cat, torch.concat)) and cat.args and _arg(cat, 1, "dim") in (-1, 3)
            and isinstance(cat.args[0], (list, tuple)) and len(cat.args[0]) == 2):
        return None
    return next((r for x, c, s_ in _rotated_parts(*cat.args[0], _half)
                 if (r := _checked_pair_rotation(cat, cat, x, c, s_, neox=True)) is not None), None)


def _checked_pair_rotation(anchor: Node, out: Node, x, c, s_, neox: bool = False) -> Rotation | None:
    """The rotation of x [4-d] by half-width c, s (one value per pair: of (even, odd) elements,
    GPT-J, or of the two halves, ``neox``), widened to our op's full-width cos/sin."""
    vx, vc, vs, vo = _val(x), _val(c), _val(s_), _val(out)
    if not all(isinstance(v, torch.Tensor) for v in (vx, vc, vs, vo)) or vx.dim() != 4 or vo.dtype != vx.dtype:
        return None
    if vc.shape != vs.shape or vc.dim() != 4 or 2 * vc.shape[-1] != vx.shape[-1] or tuple(vo.shape) != tuple(vx.shape):
        return None
    heads = _heads_dim(vx, vc)
    if heads is None:
        return None
    g = anchor.graph
    full = []
    for t in (c, s_):  # per element: GPT-J's layout repeats each value, NeoX's repeats the halves
        with g.inserting_before(anchor):
            r = g.call_function(torch.cat, ([t, t], -1)) if neox else g.call_method("repeat_interleave", (t, 2, -1))
        with _val(t).fake_mode:
            r.meta["example_value"] = torch.cat([_val(t)] * 2, -1) if neox else _val(t).repeat_interleave(2, -1)
        full.append(r)
    return Rotation(out, x, full[0], full[1], heads, neox=neox)


def _root(node):
    """The cos/sin source behind the broadcasting steps (repeat_interleave, indexing with None,
    unsqueeze, casts, the halves' widening): rotations of q and k built from one source are paired."""
    while True:
        if _is(node, (torch.repeat_interleave, operator.getitem), methods=("repeat_interleave", "unsqueeze")) \
                or _same(node) != node:  # a cast written at each use
            node = node.args[0]
        elif _is(node, (torch.cat,)) and len(node.args[0]) == 2 and node.args[0][0] is node.args[0][1]:
            node = node.args[0][0]  # the halves' cos/sin made full width (_half_rotation)
        else:
            return node


def rewrite_interleaved_rope_in_dynamo_graph(gm: torch.fx.GraphModule) -> int:
    """Replace each GPT-J style rotation by our RoPE op; returns how many rotations were replaced."""
    from . import rope  # noqa: F401  (registers tri_inductor::rope_cos_sin)

    found = [r for n in list(gm.graph.nodes)
             if (r := _rotation(n) or _pair_rotation(n) or _half_rotation(n)) is not None]
    groups: dict[tuple, list[Rotation]] = {}
    for r in found:
        vx = _val(r.x)
        key = (_root(r.cos), _root(r.sin), r.heads_dim, r.neox, r.flipped, vx.shape[0], vx.shape[3 - r.heads_dim],
               vx.dtype, tuple(_val(r.cos).shape))
        groups.setdefault(key, []).append(r)
    for key, rs in list(groups.items()):
        # q/k pairs of NeoX's rotate_half in [B, H, S, D] are the post-grad patterns' (rope.py); here
        # only what those do not take: heads in dim 2, the flipped rotation, a rotation without a pair
        if all(r.rotate_half and not r.flipped and r.heads_dim == 1 for r in rs) and len(rs) % 2 == 0:
            del groups[key]
            found = [r for r in found if r not in rs]
    g = gm.graph
    order = {n: i for i, n in enumerate(g.nodes)}
    batches = []
    for rs in groups.values():
        while rs:
            pair, rs = rs[:2], rs[2:]
            # the pair shares one cos/sin (same source, same broadcast): the earlier-made copies
            cos = min((r.cos for r in pair), key=order.__getitem__)
            sin = min((r.sin for r in pair), key=order.__getitem__)
            for r in pair:
                r.cos, r.sin = cos, sin
            inputs = max(order[n] for n in (cos, sin, *(r.x for r in pair)))
            if len(pair) == 2 and inputs > min(order[r.out] for r in pair):
                batches += [[r] for r in pair]  # k made after q's rotation is used: one call each
            else:
                batches.append(pair)
    for pair in batches:
        _replace(g, pair, min((r.out for r in pair), key=order.__getitem__))
    if found:
        _erase_dead(g, [n for r in found for n in (r.out,)])
        gm.recompile()
    return len(found)


def _replace(g: torch.fx.Graph, pair: list[Rotation], anchor: Node) -> None:
    def emit(target, args):
        with g.inserting_before(anchor):
            return g.call_function(target, args)

    def bhsd(r):  # the op's layout: [B, H, S, D] (views)
        return emit(torch.transpose, (r.x, 1, 2)) if r.heads_dim == 2 else r.x

    first = pair[0]
    q = bhsd(first)
    k = bhsd(pair[1]) if len(pair) == 2 else emit(operator.getitem, (q, (slice(None), slice(0, 0))))
    cos = emit(torch.squeeze, (first.cos, first.heads_dim))
    sin = emit(torch.squeeze, (first.sin, first.heads_dim))
    if first.flipped:
        sin = emit(torch.neg, (sin,))
    res = emit(torch.ops.tri_inductor.rope_cos_sin.default, (q, k, cos, sin, first.neox))
    for i, r in enumerate(pair):
        out = emit(operator.getitem, (res, i))
        if r.heads_dim == 2:
            out = emit(torch.transpose, (out, 1, 2))
        out.meta.update(r.out.meta)
        r.out.replace_all_uses_with(out)


def _erase_dead(g: torch.fx.Graph, roots: list[Node]) -> None:
    """Erase the replaced rotations and what only they used (nothing else in the graph)."""
    todo = list(roots)
    while todo:
        n = todo.pop()
        if getattr(n, "_erased", False) or n.users or n.op not in ("call_function", "call_method"):
            continue
        ins = list(n.all_input_nodes)
        g.erase_node(n)
        todo += ins
