"""The generic checks extended to sequence arguments and unused outputs.

``tests/manual/_rulecheck.py`` checks a rule whose positional arguments are tensors
(one output or a tuple of them).  This module adds what it does not cover and hands
every other call on to ``_rulecheck`` unchanged:

* sequence arguments (``torch.cat(tensors)``): each floating element of the list is its
  own autograd leaf, and the rule's gradient entry must be a tuple with one gradient per
  element (``None`` for elements that are not floating);
* multi-output forwards with several floating outputs (``split``, ``chunk``): the
  backward is also checked with ``grad_output[0] = None``, an output nobody used.
"""

from __future__ import annotations

import torch

from gradcheck_kit.manual.registry import Rule
from tests.manual import _rulecheck
from tests.manual._rulecheck import _close

__all__ = ["check_forward", "check_backward", "check_double_backward", "check_needs_input_grad",
           "check_saved_matches_recompute", "has_sequence"]


def _is_float(t) -> bool:
    return isinstance(t, torch.Tensor) and (t.is_floating_point() or t.is_complex())


def _as_tuple(out) -> tuple:
    return tuple(out) if isinstance(out, (tuple, list)) else (out,)


def has_sequence(rule: Rule, args) -> bool:
    """Does this call pass a list or tuple to a declared sequence argument?"""
    return any(rule.is_sequence_arg(n, a) for n, a in zip(rule.tensor_args, args))


def _call(fn, args, kwargs, seed):
    torch.manual_seed(seed)
    return fn(*args, **kwargs)


def _clone(a, requires_grad=False):
    if isinstance(a, torch.Tensor):
        c = a.detach().clone(memory_format=torch.preserve_format)
        return c.requires_grad_(True) if requires_grad and _is_float(c) else c
    if isinstance(a, (list, tuple)):
        return type(a)(_clone(e, requires_grad) for e in a)
    return a


def _clone_args(rule, args, mask=None):
    return tuple(_clone(a, bool(mask and mask[i])) for i, a in enumerate(args))


def _leaves(rule, args, mask):
    """[(name, tensor)] for every floating tensor that can carry a gradient, flattening sequences."""
    out = []
    for a, name, m in zip(args, rule.tensor_args, mask):
        if not m:
            continue
        if rule.is_sequence_arg(name, a):
            out += [(f"{name}[{j}]", e) for j, e in enumerate(a) if _is_float(e)]
        else:
            out.append((name, a))
    return out


def _flat_grads(rule, args, mask, grads):
    """The rule's gradients in the order of ``_leaves``, checking the tuple structure on the way."""
    out = []
    for a, name, m, g in zip(args, rule.tensor_args, mask, grads):
        if not m:
            assert g is None, f"{rule.name}: gradient for non-differentiable argument {name!r} must be None"
            continue
        if rule.is_sequence_arg(name, a):
            assert isinstance(g, tuple) and len(g) == len(a), \
                f"{rule.name}: gradient for sequence argument {name!r} must be a tuple of {len(a)}, got {g!r:.80}"
            for j, (e, ge) in enumerate(zip(a, g)):
                if _is_float(e):
                    out.append(ge)
                else:
                    assert ge is None, f"{rule.name}: gradient for non-floating element {name}[{j}] must be None"
        else:
            out.append(g)
    return out


def _grad_outputs(outs, gen, drop: int | None = None):
    """One random cotangent per floating output, None for integer outputs and for output ``drop``."""
    gs, k = [], 0
    for o in outs:
        if _is_float(o):
            gs.append(None if k == drop else
                      torch.randn(o.shape, generator=gen, dtype=torch.float64).to(o.dtype).to(o.device))
            k += 1
        else:
            gs.append(None)
    return gs


def _pack(gs, out):
    return tuple(gs) if isinstance(out, (tuple, list)) else gs[0]


def _n_float(outs) -> int:
    return sum(_is_float(o) for o in outs)


def check_forward(rule: Rule, args, kwargs, *, seed: int = 0):
    if not has_sequence(rule, args):
        return _rulecheck.check_forward(rule, args, kwargs, seed=seed)
    mine = _as_tuple(_call(rule.forward, _clone_args(rule, args), kwargs, seed))
    ref = _as_tuple(_call(rule.torch_fn, _clone_args(rule, args), kwargs, seed))
    assert len(mine) == len(ref), f"{rule.name} forward: {len(mine)} outputs, torch gives {len(ref)}"
    for k, (m, r) in enumerate(zip(mine, ref)):
        if _is_float(r):
            _close(m, r, r.dtype, f"{rule.name} forward output {k}")
        else:
            assert isinstance(m, torch.Tensor) and m.dtype == r.dtype and torch.equal(m, r), \
                f"{rule.name} forward output {k} (integer) differs from torch"


def check_backward(rule: Rule, args, kwargs, *, seed: int = 0, saved: bool = False):
    """First derivatives == autograd, for every grad_output pattern (all given; one floating output None)."""
    seq = has_sequence(rule, args)
    result = None if seq else _rulecheck.check_backward(rule, args, kwargs, seed=seed, saved=saved)
    if rule.keyword_tensors:
        assert not seq, f"{rule.name}: sequence arguments with keyword tensors are not checked here"
        return result
    mask = rule.differentiable_mask(args)
    assert any(mask), f"{rule.name}: sample has no differentiable argument"
    n_out = _n_float(_as_tuple(_call(rule.torch_fn, _clone_args(rule, args), kwargs, seed)))
    drops = ([None] if seq else []) + ([0] if n_out > 1 else [])
    for drop in drops:
        ref_args = _clone_args(rule, args, mask)
        out = _call(rule.torch_fn, ref_args, kwargs, seed)
        outs = _as_tuple(out)
        gs = _grad_outputs(outs, torch.Generator().manual_seed(seed), drop)
        leaves = _leaves(rule, ref_args, mask)
        used = [(o, g) for o, g in zip(outs, gs) if g is not None]
        ref = torch.autograd.grad([o for o, _ in used], [t for _, t in leaves], [g for _, g in used],
                                  allow_unused=True)

        before = _clone_args(rule, args)
        my_args = _clone_args(rule, args)
        grad_out = _pack([None if g is None else g.clone() for g in gs], out)
        extra = {"saved": _call(rule.forward_saved, _clone_args(rule, args), kwargs, seed)[1]} if saved else {}
        torch.manual_seed(seed)
        mine = rule.backward(grad_out, *my_args, **extra, **kwargs)
        assert isinstance(mine, tuple) and len(mine) == len(args), \
            f"{rule.name}: backward must return a tuple of {len(args)} entries, got {type(mine).__name__}"
        _assert_untouched(rule, my_args, before)
        for a, b in zip(_as_tuple(grad_out), gs):
            assert (a is None) == (b is None) and (a is None or torch.equal(a, b)), \
                f"{rule.name}: backward modified grad_output in place"
        flat = _flat_grads(rule, args, mask, mine)
        what = "" if drop is None else f" (grad_output[{drop}] None)"
        for m, r, (name, _) in zip(flat, ref, leaves):
            _close(m, r, r.dtype if r is not None else m.dtype, f"{rule.name} d/d{name}{what}")
        result = result or mine
    return result


def _assert_untouched(rule, now, before):
    for a, b, name in zip(now, before, rule.tensor_args):
        for x, y in zip(_as_tuple(a), _as_tuple(b)):
            if isinstance(x, torch.Tensor):
                assert torch.equal(x, y) or (x.is_floating_point() and torch.equal(x.isnan(), y.isnan())
                                             and torch.equal(x.nan_to_num(), y.nan_to_num())), \
                    f"{rule.name}: backward modified its argument {name!r} in place"


def check_needs_input_grad(rule: Rule, args, kwargs):
    """Asking for one argument (or one element of a sequence) gives just that, equal to the full result."""
    if not has_sequence(rule, args):
        return _rulecheck.check_needs_input_grad(rule, args, kwargs)
    mask = rule.differentiable_mask(args)
    out = rule.torch_fn(*_clone_args(rule, args), **kwargs)
    g = _pack([torch.ones_like(o) if _is_float(o) else None for o in _as_tuple(out)], out)
    full = rule.backward(g, *_clone_args(rule, args), **kwargs)
    for i, m in enumerate(mask):
        if not m:
            continue
        name = rule.tensor_args[i]
        if rule.is_sequence_arg(name, args[i]):
            picks = [tuple(j == k for k in range(len(args[i]))) for j, e in enumerate(args[i]) if _is_float(e)]
        else:
            picks = [True]
        for pick in picks:
            needs = tuple(pick if j == i else False for j in range(len(args)))
            part = rule.backward(g, *_clone_args(rule, args), needs_input_grad=needs, **kwargs)
            for j, p in enumerate(part):
                if j != i:
                    assert p is None or (isinstance(p, tuple) and all(e is None for e in p)), \
                        f"{rule.name}: computed d/d{rule.tensor_args[j]} though only d/d{name} was asked for"
            if isinstance(pick, tuple):
                for k, (pe, fe, w) in enumerate(zip(part[i], full[i], pick)):
                    if w:
                        _close(pe, fe, fe.dtype, f"{rule.name} d/d{name}[{k}] (needs_input_grad)")
                    else:
                        assert pe is None, f"{rule.name}: computed d/d{name}[{k}] though it was not asked for"
            else:
                _close(part[i], full[i], full[i].dtype, f"{rule.name} d/d{name} (needs_input_grad)")


def check_double_backward(rule: Rule, args, kwargs, *, seed: int = 1):
    """d/d(inputs, grad_outputs) of <manual grads, v> == the same through autograd."""
    if not has_sequence(rule, args):
        return _rulecheck.check_double_backward(rule, args, kwargs, seed=seed)
    mask = rule.differentiable_mask(args)
    gen = torch.Generator().manual_seed(seed)
    out0 = _call(rule.torch_fn, _clone_args(rule, args), kwargs, seed)
    g0 = _grad_outputs(_as_tuple(out0), gen)
    vs = [torch.randn(t.shape, generator=gen, dtype=torch.float64).to(t.dtype).to(t.device)
          for _, t in _leaves(rule, args, mask)]

    def second(grads_fn):
        a = _clone_args(rule, args, mask)
        gs = [None if g is None else g.clone().requires_grad_(True) for g in g0]
        leaves = [t for _, t in _leaves(rule, a, mask)]
        flat = grads_fn(gs, a, leaves)
        s = sum(((gr * v).sum() for gr, v in zip(flat, vs) if gr is not None),
                torch.zeros((), dtype=torch.float64))
        wrt = leaves + [g for g in gs if g is not None]
        if not s.requires_grad:
            return [None] * len(wrt)
        return list(torch.autograd.grad(s, wrt, allow_unused=True))

    def auto(gs, a, leaves):
        outs = _as_tuple(_call(rule.torch_fn, a, kwargs, seed))
        used = [(o, g) for o, g in zip(outs, gs) if g is not None]
        return list(torch.autograd.grad([o for o, _ in used], leaves, [g for _, g in used],
                                        create_graph=True, allow_unused=True))

    def mine(gs, a, leaves):
        torch.manual_seed(seed)
        return _flat_grads(rule, args, mask, rule.backward(_pack(gs, out0), *a, **kwargs))

    ref = second(auto)
    got = second(mine)
    names = [n for n, _ in _leaves(rule, args, mask)] + [f"grad_output[{k}]" for k, g in enumerate(g0) if g is not None]
    for r, m, name in zip(ref, got, names):
        _close(m, r, r.dtype if r is not None else torch.float64, f"{rule.name} second derivative wrt {name}")


def check_saved_matches_recompute(rule: Rule, args, kwargs, *, seed: int = 0):
    """``backward(..., saved=forward_saved(...)[1])`` equals the backward that recomputes."""
    if not has_sequence(rule, args):
        return _rulecheck.check_saved_matches_recompute(rule, args, kwargs, seed=seed)
    mask = rule.differentiable_mask(args)
    out, saved = _call(rule.forward_saved, _clone_args(rule, args), kwargs, seed)
    assert isinstance(saved, dict), f"{rule.name}: forward_saved must return (output, dict)"
    gs = _pack(_grad_outputs(_as_tuple(out), torch.Generator().manual_seed(seed)), out)
    torch.manual_seed(seed)
    plain = _flat_grads(rule, args, mask, rule.backward(gs, *_clone_args(rule, args), **kwargs))
    torch.manual_seed(seed)
    with_saved = _flat_grads(rule, args, mask, rule.backward(gs, *_clone_args(rule, args), saved=saved, **kwargs))
    for (name, _), p, s in zip(_leaves(rule, args, mask), plain, with_saved):
        _close(s, p, p.dtype if p is not None else torch.float64, f"{rule.name} d/d{name} with saved=")
