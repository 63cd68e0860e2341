"""Attention and tensor contractions: ``scaled_dot_product_attention`` (math path) and ``einsum``.

scaled_dot_product_attention
----------------------------
With ``Q (.., L, E)``, ``K (.., S, E)``, ``V (.., S, Ev)``, scale ``c`` (default ``1/sqrt(E)``)
and an additive bias ``B`` (a float ``attn_mask``; a bool mask as ``0`` where True and
``-inf`` where False; ``is_causal``: ``-inf`` above the top-left-aligned diagonal)::

    S = c Q K^T + B,   P = softmax_rows(S),   O = P V

A row of ``S`` that is all ``-inf`` (every key masked) gives ``P = 0`` there, as torch's
math path (``_safe_softmax``) does, so that row's output and gradients are 0.

Reverse mode, with ``G = dL/dO``:

* ``O = P V`` is bilinear: ``dV = P^T G`` and ``dP = G V^T``.
* softmax along rows: ``dS_ij = P_ij (dP_ij - sum_k dP_ik P_ik)``, i.e.
  ``dS = P * (dP - rowsum(dP * P))``.
* ``S = c Q K^T + B``: ``dQ = c dS K``, ``dK = c dS^T Q``, ``dB = dS`` (a float mask is
  differentiable; its gradient is ``dS`` summed down to the mask's broadcast shape).
* ``enable_gqa``: ``K`` and ``V`` with ``Hkv`` heads serve ``Hq = G Hkv`` query heads by
  ``repeat_interleave(G, dim=-3)``; the adjoint of that repeat sums each group of ``G``.
* Batch dimensions broadcast as in ``matmul``; the gradients are summed back to each
  input's shape.

Only ``dropout_p == 0`` is supported (the math path's dropout draws a mask the backward
cannot see): other values raise ``UnsupportedError``.

einsum
------
``y = einsum(eq, X_1 .. X_n)`` is linear in each operand, so the gradient of operand ``k``
is the contraction of ``g`` with all the other operands, written as one more einsum whose
output subscripts are operand ``k``'s::

    dL/dX_k[s_k] = sum over the other labels of  g[out] prod_{j != k} X_j[s_j]

Three details make that exact for every equation torch accepts:

* a label that appears only in operand ``k`` (summed away, in no other operand and not in
  the output) does not reach the gradient einsum: its gradient is the same for every value
  of it, so the result is expanded (broadcast) along it;
* a label repeated within operand ``k`` (``"ii->i"``: a diagonal) gets the gradient only on
  the diagonal: the gradient over the unique labels is multiplied by identity matrices
  ``delta(i, i')`` (one more einsum), zero elsewhere;
* ``...`` and size-1 dimensions broadcast: every operand is first expanded to the full
  size of each of its labels (``...`` becomes explicit fresh labels, right-aligned), and the
  gradient of the expanded operand is summed back to the original shape.

Implicit output (no ``->``): ``...`` then the labels that appear exactly once, in sorted order
(uppercase before lowercase), as torch.
"""

from __future__ import annotations

import math
import string

import torch
import torch.nn.functional as F

from gradcheck_kit.errors import InvalidInputError, InvalidParameterError, UnsupportedError
from gradcheck_kit.manual._sampling import Maker, describe
from gradcheck_kit.manual._shapes import check_grad_shape, unbroadcast
from gradcheck_kit.manual.registry import Sample, register

__all__ = ["scaled_dot_product_attention", "einsum"]


# -- scaled_dot_product_attention ----------------------------------------------------------

def _sdpa_check(dropout_p, attn_mask, is_causal):
    if dropout_p != 0.0:
        raise UnsupportedError(f"scaled_dot_product_attention: dropout_p={dropout_p!r} is not supported "
                               f"(its mask is drawn inside the kernel); use dropout_p=0.0")
    if attn_mask is not None and is_causal:
        raise InvalidParameterError("scaled_dot_product_attention: give attn_mask or is_causal=True, not both "
                                    "(torch refuses it too)")


def scaled_dot_product_attention(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None,
                                 enable_gqa=False):
    """``F.scaled_dot_product_attention``, refusing ``dropout_p != 0`` with a clear error."""
    _sdpa_check(dropout_p, attn_mask, is_causal)
    return F.scaled_dot_product_attention(query, key, value, attn_mask=attn_mask, dropout_p=dropout_p,
                                          is_causal=is_causal, scale=scale, enable_gqa=enable_gqa)


def _sdpa_shapes(query, key, value, groups, grad_output):
    """Refuse shapes torch refuses, and a grad_output that is not the output's shape."""
    for name, t in (("query", query), ("key", key), ("value", value)):
        if not isinstance(t, torch.Tensor) or t.dim() < 2:
            raise InvalidInputError(f"scaled_dot_product_attention: {name} must be a tensor of at least 2 "
                                    f"dimensions (..., length, features), got {describe(t)}")
    if query.shape[-1] != key.shape[-1] or key.shape[-2] != value.shape[-2]:
        raise InvalidInputError(f"scaled_dot_product_attention: query {tuple(query.shape)}, key {tuple(key.shape)} "
                                f"and value {tuple(value.shape)} do not fit: query and key need the same last "
                                f"dimension, key and value the same length")
    kb, vb = tuple(key.shape[:-2]), tuple(value.shape[:-2])
    if groups > 1:                                        # key/value heads repeated for the query heads
        kb, vb = kb[:-1] + (kb[-1] * groups,), vb[:-1] + (vb[-1] * groups,)
    try:
        batch = tuple(torch.broadcast_shapes(tuple(query.shape[:-2]), kb, vb))
    except RuntimeError:
        raise InvalidInputError(f"scaled_dot_product_attention: the batch dimensions of query {tuple(query.shape)}, "
                                f"key {tuple(key.shape)} and value {tuple(value.shape)} do not broadcast") from None
    check_grad_shape("scaled_dot_product_attention", grad_output, batch + (query.shape[-2], value.shape[-1]))


def _gqa_groups(query, key, value, enable_gqa) -> int:
    """How many query heads share one key/value head (1 without GQA)."""
    if not enable_gqa or query.dim() < 3:
        return 1
    hq, hk, hv = query.shape[-3], key.shape[-3], value.shape[-3]
    if hk != hv or hq % hk:
        raise InvalidInputError(f"scaled_dot_product_attention: with enable_gqa the query heads ({hq}) must be a "
                                f"multiple of the key/value heads ({hk}, {hv})")
    return hq // hk


def _bias(attn_mask, is_causal, L, S, like):
    """The additive bias B: float mask as is, bool mask 0/-inf, causal lower triangle; None if none."""
    if is_causal:
        keep = torch.ones(L, S, dtype=torch.bool, device=like.device).tril()
        return torch.zeros((), dtype=like.dtype, device=like.device).masked_fill(~keep, float("-inf"))
    if attn_mask is None:
        return None
    if attn_mask.dtype == torch.bool:
        return torch.zeros((), dtype=like.dtype, device=like.device).masked_fill(~attn_mask, float("-inf"))
    return attn_mask


def _ungroup(grad, groups):
    """Adjoint of ``repeat_interleave(groups, dim=-3)``: sum each run of ``groups`` heads."""
    if groups == 1:
        return grad
    *lead, h, s, e = grad.shape
    return grad.reshape(*lead, h // groups, groups, s, e).sum(-3)


def sdpa_samples(device, dtype):
    mk = Maker(device, dtype)
    # first a small one: tests that take one sample per rule (finite differences) stay cheap
    yield Sample((mk.randn(1, 2, 3, 4), mk.randn(1, 2, 5, 4), mk.randn(1, 2, 5, 3)), {}, "sdpa[small]")
    q, k, v = mk.randn(2, 3, 4, 5), mk.randn(2, 3, 6, 5), mk.randn(2, 3, 6, 7)
    yield Sample((q, k, v), {}, "sdpa[plain]")
    yield Sample((q, k, v), {"scale": 0.3}, "sdpa[scale]")
    yield Sample((q, k, v, mk.randn(4, 6)), {}, "sdpa[float mask,broadcast]")
    yield Sample((q, k, v), {"attn_mask": mk.randn(2, 1, 4, 6)}, "sdpa[keyword float mask]")
    bm = torch.rand(3, 4, 6, generator=torch.Generator().manual_seed(1)) > 0.3
    bm[:, :, 0] = True
    yield Sample((q, k, v, bm.to(device)), {}, "sdpa[bool mask]")
    full = torch.ones(4, 6, dtype=torch.bool, device=device)
    full[1] = False
    yield Sample((q, k, v, full), {}, "sdpa[bool mask,row fully masked]")
    fm = torch.zeros(4, 6, dtype=dtype, device=device)
    fm[2] = float("-inf")
    fm[0, 3] = float("-inf")
    yield Sample((q, k, v, fm), {}, "sdpa[float mask,-inf]")
    yield Sample((q, k, v), {"is_causal": True}, "sdpa[causal,L<S]")
    # value's head dim differs from query's in these samples: torch then takes its math path, whose
    # double backward exists (its CPU flash kernel, chosen when they are equal, has none; the
    # flash path is checked in tests/manual/test_attention.py)
    yield Sample((mk.randn(1, 2, 5, 3), mk.randn(1, 2, 5, 3), mk.randn(1, 2, 5, 4)), {"is_causal": True},
                 "sdpa[causal,square]")
    yield Sample((mk.randn(4, 5), mk.randn(6, 5), mk.randn(6, 2)), {}, "sdpa[unbatched]")
    yield Sample((mk.randn(2, 4, 3, 5), mk.randn(2, 2, 6, 5), mk.randn(2, 2, 6, 3)), {"enable_gqa": True},
                 "sdpa[gqa]")
    yield Sample((mk.randn(2, 4, 3, 5), mk.randn(2, 2, 6, 5), mk.randn(2, 2, 6, 3), mk.randn(4, 3, 6)),
                 {"enable_gqa": True, "scale": 0.5}, "sdpa[gqa,float mask,scale]")
    yield Sample((mk.randn(4, 3, 5), mk.randn(2, 6, 5), mk.randn(2, 6, 3)), {"enable_gqa": True, "is_causal": True},
                 "sdpa[gqa,unbatched heads,causal]")
    yield Sample((mk.randn(2, 3, 4, 5), mk.randn(3, 6, 5), mk.randn(3, 6, 7)), {}, "sdpa[batch broadcast]")
    yield Sample((mk.noncontiguous(mk.randn(2, 4, 5)), mk.randn(2, 6, 5).transpose(0, 1).contiguous().transpose(0, 1),
                  mk.randn(2, 6, 3)), {"dropout_p": 0.0}, "sdpa[noncontig,dropout_p=0]")


@register("scaled_dot_product_attention", torch_fn=F.scaled_dot_product_attention,
          tensor_args=("query", "key", "value", "attn_mask"), forward=scaled_dot_product_attention,
          samples=sdpa_samples, keyword_tensors=("attn_mask",))
def sdpa_backward(grad_output, query, key, value, attn_mask=None, *, needs_input_grad, needs_keyword_grad=None,
                  dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
    """dV = P^T G; dP = G V^T; dS = P * (dP - rowsum(dP * P)); dQ = c dS K; dK = c dS^T Q; dB = dS."""
    _sdpa_check(dropout_p, attn_mask, is_causal)
    want_q, want_k, want_v = needs_input_grad[:3]
    want_m = (needs_input_grad[3] or (needs_keyword_grad or {}).get("attn_mask", False)) \
        and attn_mask is not None and attn_mask.is_floating_point()
    groups = _gqa_groups(query, key, value, enable_gqa)
    _sdpa_shapes(query, key, value, groups, grad_output)
    K = key.repeat_interleave(groups, dim=-3) if groups > 1 else key
    V = value.repeat_interleave(groups, dim=-3) if groups > 1 else value
    c = 1.0 / math.sqrt(query.shape[-1]) if scale is None else scale
    L, S_len = query.shape[-2], K.shape[-2]
    S = c * (query @ K.transpose(-2, -1))
    B = _bias(attn_mask, is_causal, L, S_len, S)
    if B is not None:
        S = S + B
    # P = softmax(S), and 0 on rows that are all -inf (masked out), without NaN anywhere
    dead = (S == float("-inf")).all(-1, keepdim=True)
    P = torch.where(dead, 0, torch.softmax(torch.where(dead, 0, S), dim=-1))
    G = grad_output
    gq = gk = gv = gm = None
    if want_v:
        gv = unbroadcast(_ungroup(P.transpose(-2, -1) @ G, groups), value.shape)
    if want_q or want_k or want_m:
        dP = G @ V.transpose(-2, -1)
        dS = P * (dP - (dP * P).sum(-1, keepdim=True))
        if want_q:
            gq = unbroadcast(c * (dS @ K), query.shape)
        if want_k:
            gk = unbroadcast(_ungroup(c * (dS.transpose(-2, -1) @ query), groups), key.shape)
        if want_m:
            gm = unbroadcast(dS, attn_mask.shape).to(attn_mask.dtype)
    return gq, gk, gv, gm, {"attn_mask": gm}


# -- einsum --------------------------------------------------------------------------------

def einsum(operands, *, equation):
    """``torch.einsum(equation, *operands)`` with the operands first, as every rule takes its tensors.

    Both of torch's spellings, ``einsum(eq, a, b)`` and ``einsum(eq, [a, b])``, are this call;
    the sublist form becomes an equation through ``einsum.call_as_rule``.
    """
    if not isinstance(equation, str):
        raise UnsupportedError("einsum: equation must be a string; turn the sublist form into one with "
                               "call_as_rule")
    return torch.einsum(equation, *operands)


einsum.mirrors = torch.einsum


def _sublist_equation(args) -> tuple[str, tuple]:
    """torch's sublist form ``einsum(a, [0, 1], b, [1, 2], [0, 2])`` as ``("ab,bc->ac", (a, b))``;
    ``Ellipsis`` in a sublist is ``...``; label ``n`` is ``(A..Z a..z)[n]``, torch's own mapping (so the
    implicit output's order, uppercase first, is torch's too)."""
    ops, specs = args[0::2], args[1::2]
    out = None
    if len(args) % 2:                                     # a trailing output sublist
        ops, out = args[:-1][0::2], args[-1]
        specs = args[:-1][1::2]

    def spec(sub):
        parts = []
        for lab in sub:
            if lab is Ellipsis:
                parts.append("...")
            elif isinstance(lab, int) and not isinstance(lab, bool) and 0 <= lab < 52:
                parts.append((string.ascii_uppercase + string.ascii_lowercase)[lab])
            else:
                raise InvalidParameterError(f"einsum: sublist labels must be integers in [0, 52) or Ellipsis, "
                                            f"got {lab!r}")
        return "".join(parts)

    if not all(isinstance(t, torch.Tensor) for t in ops) or not all(isinstance(x, (list, tuple)) for x in specs):
        raise InvalidParameterError("einsum: the sublist form alternates operands and lists of labels")
    eq = ",".join(spec(x) for x in specs) + ("" if out is None else "->" + spec(out))
    return eq, tuple(ops)


def _einsum_call(*args, **kwargs):
    """torch's call as the rule's ``((a, b),), {"equation": eq}``: ``einsum(eq, a, b)``,
    ``einsum(eq, [a, b])`` or the sublist form ``einsum(a, [0, 1], b, [1, 2], [0, 2])``.

    ``torch.einsum(*args)`` has no named parameters to bind a call against; a tracer can
    use this (``rule.torch_fn.call_as_rule``) to map the call onto the rule's arguments.
    """
    if kwargs or not args:
        raise InvalidParameterError("einsum: expected einsum(equation, *operands), einsum(equation, [operands]) "
                                    "or the sublist form")
    if isinstance(args[0], torch.Tensor):
        equation, operands = _sublist_equation(args)
        return (operands,), {"equation": equation}
    equation, rest = args[0], args[1:]
    operands = tuple(rest[0]) if len(rest) == 1 and isinstance(rest[0], (list, tuple)) else tuple(rest)
    return (operands,), {"equation": equation}


einsum.call_as_rule = _einsum_call

_ELL = "."


def _tokens(spec: str, where: str) -> list[str]:
    """``"i...j"`` -> ``["i", ".", "j"]``: labels, with one ``"."`` standing for the ellipsis."""
    out, i = [], 0
    while i < len(spec):
        if spec.startswith("...", i):
            out.append(_ELL)
            i += 3
        elif spec[i] in string.ascii_letters:
            out.append(spec[i])
            i += 1
        else:
            raise InvalidParameterError(f"einsum: invalid subscript {spec[i]!r} in {where!r}")
    if out.count(_ELL) > 1:
        raise InvalidParameterError(f"einsum: more than one ellipsis in {where!r}")
    return out


def _parse(equation: str, shapes):
    """(input label lists, output label list, {label: size}) with ``...`` made explicit."""
    eq = equation.replace(" ", "")
    lhs, arrow, rhs = eq.partition("->")
    specs = [_tokens(s, s) for s in lhs.split(",")]
    if len(specs) != len(shapes):
        raise InvalidParameterError(f"einsum: {equation!r} has {len(specs)} operand subscripts but "
                                    f"{len(shapes)} operands were given")
    used = set(eq)
    fresh = [c for c in string.ascii_letters if c not in used]
    n_ell = [len(sh) - (len(sp) - 1) if _ELL in sp else 0 for sp, sh in zip(specs, shapes)]
    width = max(n_ell, default=0)
    if width > len(fresh):
        raise UnsupportedError(f"einsum: {equation!r} needs more labels than the 52 letters torch allows")
    ell_labels, fresh = fresh[:width], fresh[width:]
    full = []
    for sp, sh, k in zip(specs, shapes, n_ell):
        labels = []
        for t in sp:
            labels.extend(ell_labels[width - k:] if t == _ELL else [t])
        if len(labels) != len(sh):
            raise InvalidInputError(f"einsum: subscripts {''.join(sp)!r} do not fit an operand of shape {tuple(sh)}")
        full.append(labels)
    if arrow:
        out = []
        for t in _tokens(rhs, rhs):
            out.extend(ell_labels if t == _ELL else [t])
    else:
        counts = {}
        for sp in specs:
            for t in sp:
                if t != _ELL:
                    counts[t] = counts.get(t, 0) + 1
        out = list(ell_labels) + sorted(t for t, n in counts.items() if n == 1)
    sizes: dict[str, int] = {}
    for labels, sh in zip(full, shapes):
        for lab, n in zip(labels, sh):                     # sizes broadcast: 1 gives way (also to 0)
            have = sizes.get(lab, 1)
            if have not in (1, n) and n != 1:
                raise InvalidInputError(f"einsum: label {lab!r} has sizes {have} and {n} in {equation!r}")
            sizes[lab] = n if have == 1 else have
    return full, out, sizes, fresh


def _expand_full(x, labels, sizes, width_lead):
    """``x`` with any missing leading ellipsis dims added and every dim expanded to its label's size."""
    x = x.reshape((1,) * width_lead + tuple(x.shape))
    return x.expand(tuple(sizes[lab] for lab in labels))


def _operand_grad(k, g, ops_full, labels, out, sizes, fresh):
    """dL/dX_k of the expanded operands: one einsum, then broadcast labels only X_k has, then diagonals."""
    mine = labels[k]
    unique = list(dict.fromkeys(mine))
    elsewhere = set(out).union(*(set(lb) for j, lb in enumerate(labels) if j != k))
    reach = [lab for lab in unique if lab in elsewhere]
    specs = ["".join(out)] + ["".join(lb) for j, lb in enumerate(labels) if j != k]
    G = torch.einsum(",".join(specs) + "->" + "".join(reach), g, *[o for j, o in enumerate(ops_full) if j != k])
    lonely = [lab for lab in unique if lab not in elsewhere]                  # summed only in X_k: broadcast
    if lonely:
        G = G.reshape(tuple(G.shape) + (1,) * len(lonely))
        order = reach + lonely
        G = G.permute([order.index(lab) for lab in unique]).expand(tuple(sizes[lab] for lab in unique))
    if len(unique) == len(mine):
        return G
    # repeated labels: G over the unique labels times delta(l, l') for every repeat
    spec, eyes, eye_specs = [], [], []
    seen = set()
    pool = iter(fresh)
    for lab in mine:
        if lab in seen:
            try:
                new = next(pool)
            except StopIteration:
                raise UnsupportedError("einsum: too many repeated labels to express the diagonal's gradient") from None
            spec.append(new)
            eyes.append(torch.eye(sizes[lab], dtype=G.dtype, device=G.device))
            eye_specs.append(lab + new)
        else:
            seen.add(lab)
            spec.append(lab)
    return torch.einsum(",".join(["".join(unique)] + eye_specs) + "->" + "".join(spec), G, *eyes)


def einsum_samples(device, dtype):
    mk = Maker(device, dtype)
    a, b = mk.randn(3, 4), mk.randn(4, 5)
    yield Sample(([a, b],), {"equation": "ij,jk->ik"}, "einsum[matmul]")
    yield Sample(((a, b),), {"equation": "ij,jk"}, "einsum[implicit,tuple]")
    yield Sample(([mk.randn(2, 3, 4), mk.randn(2, 4, 5)],), {"equation": "bij,bjk->bik"}, "einsum[bmm]")
    yield Sample(([a],), {"equation": "ij->ji"}, "einsum[transpose]")
    yield Sample(([a],), {"equation": "ij->"}, "einsum[sum all]")
    yield Sample(([a],), {"equation": "ij->j"}, "einsum[sum rows]")
    sq = mk.randn(4, 4)
    yield Sample(([sq],), {"equation": "ii->i"}, "einsum[diagonal]")
    yield Sample(([sq],), {"equation": "ii"}, "einsum[trace,implicit]")
    yield Sample(([mk.randn(3, 2, 3), mk.randn(2)],), {"equation": "iji,j->ij"}, "einsum[diagonal,two operands]")
    yield Sample(([mk.randn(3), mk.randn(4)],), {"equation": "i,j->ij"}, "einsum[outer]")
    yield Sample(([mk.randn(3), mk.randn(3)],), {"equation": "i,i->"}, "einsum[dot]")
    yield Sample(([mk.randn(2, 3, 4, 5), mk.randn(5, 6)],), {"equation": "...k,kl->...l"}, "einsum[ellipsis]")
    yield Sample(([mk.randn(2, 1, 3, 4), mk.randn(5, 4, 6)],), {"equation": "...ij,...jk->...ik"},
                 "einsum[ellipsis broadcast]")
    yield Sample(([mk.randn(3, 1), mk.randn(3, 4)],), {"equation": "ij,ij->ij"}, "einsum[size-1 broadcast]")
    yield Sample(([mk.randn(2, 3, 4), mk.randn(4, 5)],), {"equation": "iAj,jB"}, "einsum[implicit,uppercase]")
    yield Sample(([mk.randn(2, 3), mk.randn(3, 4), mk.randn(4, 2)],), {"equation": "ij,jk,ki->"},
                 "einsum[three operands,trace]")
    yield Sample(([mk.randn(3, 4), mk.randn(5)],), {"equation": "ij,k->i"}, "einsum[label only in one operand]")
    yield Sample(([mk.noncontiguous(mk.randn(3, 4)), mk.randn(4)],), {"equation": "i j , j -> i"},
                 "einsum[spaces,noncontig]")
    yield Sample(([mk.randn(2, 3, 3)],), {"equation": "...ii->...i"}, "einsum[ellipsis,diagonal]")
    yield Sample(([mk.randn(3, 0), mk.randn(0, 2)],), {"equation": "ij,jk->ik"}, "einsum[empty contraction]")
    yield Sample(([mk.randn(2, 3), mk.randn(3, 4), mk.randn(4, 2)],), {"equation": "ab,bc,cd->ad"},
                 "einsum[chain]")


@register("einsum", torch_fn=einsum, tensor_args=("operands",), sequence_args=("operands",),
          samples=einsum_samples)
def einsum_backward(grad_output, operands, *, needs_input_grad, equation):
    """dL/dX_k = einsum(out, s_j (j != k) -> s_k)(g, X_j ...), expanded, diagonal-embedded, unbroadcast."""
    if not isinstance(equation, str):
        raise UnsupportedError("einsum: only the equation-string form is supported, not the sublist form")
    ops = list(operands)
    for i, o in enumerate(ops):
        if not isinstance(o, torch.Tensor):
            raise InvalidInputError(f"einsum: operand {i} must be a tensor, got {type(o).__name__}")
    labels, out, sizes, fresh = _parse(equation, [tuple(o.shape) for o in ops])
    check_grad_shape("einsum", grad_output, tuple(sizes[lab] for lab in out))
    if not needs_input_grad[0]:
        return ([None] * len(ops),)
    ops_full = [_expand_full(o, lb, sizes, len(lb) - o.dim()) for o, lb in zip(ops, labels)]
    grads = []
    for k, o in enumerate(ops):
        if not (isinstance(o, torch.Tensor) and o.is_floating_point()):
            grads.append(None)
            continue
        gk = _operand_grad(k, grad_output, ops_full, labels, out, sizes, fresh)
        grads.append(unbroadcast(gk, o.shape).to(o.dtype).contiguous())     # einsum may return permuted views
    return (grads,)
