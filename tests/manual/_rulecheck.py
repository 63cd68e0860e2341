"""The one generic check every rule passes: manual backward vs torch.autograd.

Used by tests/manual/test_rules.py (every rule x every sample) and by family tests
that add extra samples of their own.
"""

from __future__ import annotations

import torch

from gradcheck_kit.manual.registry import Rule


def clone_args(args, requires_grad_mask=None):
    out = []
    for i, a in enumerate(args):
        if isinstance(a, torch.Tensor):
            c = a.detach().clone(memory_format=torch.preserve_format)
            if requires_grad_mask is not None and requires_grad_mask[i]:
                c.requires_grad_(True)
            out.append(c)
        else:
            out.append(a)
    return tuple(out)


def tolerances(dtype: torch.dtype, scale: float) -> dict:
    scale = max(1.0, scale)
    if dtype == torch.float64:
        return dict(rtol=1e-9, atol=1e-10 * scale)
    if dtype == torch.float32:
        return dict(rtol=2e-4, atol=2e-5 * scale)
    return dict(rtol=2e-2, atol=2e-2 * scale)


def _maxabs(ts) -> float:
    vals = [float(t.detach().abs().max()) for t in ts if t is not None and t.numel()]
    return max(vals, default=0.0)


def _close(actual, expected, dtype, what):
    if expected is None:
        assert actual is None or not bool(actual.detach().ne(0).any()), f"{what}: manual gives a gradient, autograd none"
        return
    if actual is None:
        expected = expected.detach()
        assert not bool(expected.ne(0).any()), f"{what}: manual returned None but autograd's gradient is nonzero"
        return
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    assert actual.dtype == expected.dtype, f"{what}: dtype {actual.dtype} != {expected.dtype}"
    torch.testing.assert_close(actual.detach(), expected.detach(), msg=lambda m: f"{what}: {m}",
                               **tolerances(expected.dtype, _maxabs([expected])))


def check_forward(rule: Rule, args, kwargs):
    a1 = clone_args(args)
    a2 = clone_args(args)
    mine = rule.forward(*a1, **kwargs)
    ref = rule.torch_fn(*a2, **kwargs)
    _close(mine, ref, ref.dtype, f"{rule.name} forward")


def check_backward(rule: Rule, args, kwargs, *, seed: int = 0):
    """First derivatives: manual backward == autograd.grad, inputs untouched, needs_input_grad honoured."""
    mask = rule.differentiable_mask(args)
    assert any(mask), f"{rule.name}: sample has no differentiable argument"
    ref_args = clone_args(args, mask)
    out = rule.torch_fn(*ref_args, **kwargs)
    gen = torch.Generator().manual_seed(seed)
    g = torch.randn(out.shape, generator=gen, dtype=torch.float64).to(out.dtype).to(out.device)
    leaves = [a for a, m in zip(ref_args, mask) if m]
    ref = torch.autograd.grad(out, leaves, g, allow_unused=True)
    ref_full = iter(ref)
    ref_full = [next(ref_full) if m else None for m in mask]

    before = clone_args(args)
    my_args = clone_args(args)
    grad_out = g.clone()
    mine = rule.backward(grad_out, *my_args, **kwargs)
    assert isinstance(mine, tuple) and len(mine) == len(args), \
        f"{rule.name}: backward must return a tuple of {len(args)} entries, got {type(mine).__name__}"
    for a, b, name in zip(my_args, before, rule.tensor_args):
        if isinstance(a, torch.Tensor):
            assert torch.equal(a, b), f"{rule.name}: backward modified its argument {name!r} in place"
    assert torch.equal(grad_out, g), f"{rule.name}: backward modified grad_output in place"
    for m, r, name, want in zip(mine, ref_full, rule.tensor_args, mask):
        if not want:
            assert m is None, f"{rule.name}: gradient for non-differentiable argument {name!r} must be None"
            continue
        _close(m, r, g.dtype, f"{rule.name} d/d{name}")
    return mine


def check_needs_input_grad(rule: Rule, args, kwargs):
    """Asking for one gradient returns just that one, equal to the full computation."""
    mask = rule.differentiable_mask(args)
    g = torch.ones_like(rule.torch_fn(*clone_args(args), **kwargs))
    full = rule.backward(g, *clone_args(args), **kwargs)
    for i, m in enumerate(mask):
        if not m:
            continue
        needs = tuple(j == i for j in range(len(args)))
        part = rule.backward(g, *clone_args(args), needs_input_grad=needs, **kwargs)
        for j, p in enumerate(part):
            if j != i:
                assert p is None, f"{rule.name}: computed d/d{rule.tensor_args[j]} though only d/d{rule.tensor_args[i]} was asked for"
        _close(part[i], full[i], g.dtype, f"{rule.name} d/d{rule.tensor_args[i]} (needs_input_grad)")


def check_double_backward(rule: Rule, args, kwargs, *, seed: int = 1):
    """Second derivatives: d/d(inputs, g) of <manual grads, v> == the same through autograd."""
    mask = rule.differentiable_mask(args)
    gen = torch.Generator().manual_seed(seed)

    def rand_like(t):
        return torch.randn(t.shape, generator=gen, dtype=torch.float64).to(t.dtype).to(t.device)

    out0 = rule.torch_fn(*clone_args(args), **kwargs)
    g0 = rand_like(out0)
    vs = [rand_like(a) if m else None for a, m in zip(args, mask)]

    def second(grads_fn):
        a = clone_args(args, mask)
        g = g0.clone().requires_grad_(True)
        grads = grads_fn(g, a)
        leaves = [x for x, m in zip(a, mask) if m] + [g]
        s = sum(((gr * v).sum() for gr, v in zip(grads, vs) if gr is not None and v is not None),
                torch.zeros((), dtype=g.dtype, device=g.device))
        if not s.requires_grad:
            return [None] * len(leaves)
        return list(torch.autograd.grad(s, leaves, allow_unused=True))

    def auto(g, a):
        leaves = [x for x, m in zip(a, mask) if m]
        out = rule.torch_fn(*a, **kwargs)
        gs = iter(torch.autograd.grad(out, leaves, g, create_graph=True, allow_unused=True))
        return [next(gs) if m else None for m in mask]

    def mine(g, a):
        return list(rule.backward(g, *a, **kwargs))

    ref = second(auto)
    got = second(mine)
    names = [n for n, m in zip(rule.tensor_args, mask) if m] + ["grad_output"]
    for r, m, name in zip(ref, got, names):
        _close(m, r, g0.dtype, f"{rule.name} second derivative wrt {name}")


def check_symbolic_forward(rule: Rule, max_numel: int):
    """The rule's sympy forward, evaluated at the sample's values, equals torch's forward
    (samples whose first argument has more than ``max_numel`` elements are skipped)."""
    import numpy as np
    import sympy

    for s in rule.samples():
        x = s.args[0]
        if x.numel() > max_numel:
            continue
        syms = sympy.symbols(f"x0:{x.numel()}")
        out = rule.symbolic(np.array(syms, dtype=object).reshape(tuple(x.shape)), **s.kwargs)
        ref = rule.forward(x, **s.kwargs)
        vals = {v: sympy.Float(t, 30) for v, t in zip(syms, x.reshape(-1).tolist())}
        got = np.array([float(sympy.sympify(e).xreplace(vals)) for e in out.reshape(-1)]).reshape(out.shape)
        assert got.shape == tuple(ref.shape), s.name
        np.testing.assert_allclose(got, ref.numpy(), rtol=1e-12, atol=1e-12, err_msg=s.name)
