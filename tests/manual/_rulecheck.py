"""The one generic check every rule passes: manual backward vs torch.autograd.

Used by tests/manual/test_rules.py (every rule x every sample) and by family tests
that add extra samples of their own.

Keyword tensors (``rule.keyword_tensors``, e.g. ``mse_loss(..., weight=w)``) are leaves
exactly as the positional tensors are: autograd differentiates through them and the
rule's ``Grads.keywords`` must agree.  ``torch.manual_seed(seed)`` runs immediately
before every forward and every backward, so a rule that draws from the global
generator (dropout's mask) sees the same draws in both.
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


def keyword_mask(rule: Rule, kwargs) -> dict:
    """``{name: differentiable}`` for each declared keyword tensor the call passes."""
    return {k: isinstance(kwargs.get(k), torch.Tensor) and kwargs[k].is_floating_point()
            and k not in rule.nondifferentiable
            for k in rule.keyword_tensors if kwargs.get(k) is not None}


def clone_kwargs(rule: Rule, kwargs, requires_grad: bool = False) -> dict:
    """A copy of ``kwargs`` whose tensors are fresh clones (differentiable keyword tensors as leaves)."""
    wanted = keyword_mask(rule, kwargs) if requires_grad else {}
    out = {}
    for k, v in kwargs.items():
        if isinstance(v, torch.Tensor):
            v = v.detach().clone(memory_format=torch.preserve_format)
            if wanted.get(k):
                v.requires_grad_(True)
        out[k] = v
    return out


# Rules whose float64 autograd reference is itself less precise than float64, with the reason;
# the rule keeps the exact formula and the comparison with torch is loosened to this rtol.
TORCH_FLOAT64_RTOL = {
    # torch's hardsigmoid_backward multiplies by 1/6 rounded to float32 (1.0f / 6.0f) in every
    # dtype, relative error 3e-8; its forward uses the exact 1/6 (tests/manual/test_activations.py)
    "hardsigmoid": 1e-7,
}


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


def _close(actual, expected, dtype, what, rtol=None):
    if expected is None:
        assert actual is None or not bool(actual.detach().ne(0).any()), f"{what}: manual gives a gradient, autograd none"
        return
    if actual is None:
        expected = expected.detach()
        assert not bool(expected.ne(0).any()), f"{what}: manual returned None but autograd's gradient is nonzero"
        return
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    assert actual.dtype == expected.dtype, f"{what}: dtype {actual.dtype} != {expected.dtype}"
    # NaN in the same places counts as equal: torch defines some gradients as NaN (softplus at NaN)
    tol = tolerances(expected.dtype, _maxabs([expected.nan_to_num(0.0, 0.0, 0.0)]))
    if rtol is not None and expected.dtype == torch.float64:
        tol["rtol"] = max(tol["rtol"], rtol)
    torch.testing.assert_close(actual.detach(), expected.detach(), msg=lambda m: f"{what}: {m}", equal_nan=True,
                               **tol)


def _torch_call(rule: Rule, args, kwargs, seed: int):
    torch.manual_seed(seed)
    return rule.torch_fn(*args, **kwargs)


def check_forward(rule: Rule, args, kwargs, *, seed: int = 0):
    torch.manual_seed(seed)
    mine = rule.forward(*clone_args(args), **clone_kwargs(rule, kwargs))
    ref = _torch_call(rule, clone_args(args), clone_kwargs(rule, kwargs), seed)
    if isinstance(ref, tuple):
        for i, (m, r) in enumerate(zip(mine, ref)):
            _close(m, r, r.dtype, f"{rule.name} forward output {i}")
        return
    _close(mine, ref, ref.dtype, f"{rule.name} forward")


def _cotangent(out, gen):
    """A seeded cotangent for each floating output (None for integer outputs such as indices)."""
    def one(o):
        if not (isinstance(o, torch.Tensor) and o.is_floating_point()):
            return None
        return torch.randn(o.shape, generator=gen, dtype=torch.float64).to(o.dtype).to(o.device)
    return tuple(one(o) for o in out) if isinstance(out, tuple) else one(out)


def _autograd_vjp(out, g, leaves, create_graph=False):
    outs = out if isinstance(out, tuple) else (out,)
    gs = g if isinstance(g, tuple) else (g,)
    pairs = [(o, c) for o, c in zip(outs, gs) if c is not None]
    return torch.autograd.grad([o for o, _ in pairs], leaves, [c for _, c in pairs], allow_unused=True,
                               create_graph=create_graph)


def _clone_g(g):
    return tuple(None if c is None else c.clone() for c in g) if isinstance(g, tuple) else g.clone()


def _same_g(a, b) -> bool:
    if isinstance(a, tuple):
        return all((x is None and y is None) or torch.equal(x, y) for x, y in zip(a, b))
    return torch.equal(a, b)


def check_backward(rule: Rule, args, kwargs, *, seed: int = 0, saved: bool = False):
    """First derivatives: manual backward == autograd.grad, inputs untouched, needs_input_grad honoured.

    Keyword tensors are compared through ``Grads.keywords``.  ``saved=True`` passes the
    forward's ``rule.forward_saved(...)[1]`` to the backward (the answer must not change).
    """
    mask = rule.differentiable_mask(args)
    kmask = keyword_mask(rule, kwargs)
    assert any(mask) or any(kmask.values()), f"{rule.name}: sample has no differentiable argument"
    ref_args = clone_args(args, mask)
    ref_kwargs = clone_kwargs(rule, kwargs, requires_grad=True)
    out = _torch_call(rule, ref_args, ref_kwargs, seed)
    gen = torch.Generator().manual_seed(seed)
    g = _cotangent(out, gen)
    knames = [k for k, m in kmask.items() if m]
    leaves = [a for a, m in zip(ref_args, mask) if m] + [ref_kwargs[k] for k in knames]
    ref = iter(_autograd_vjp(out, g, leaves))
    ref_full = [next(ref) if m else None for m in mask]
    ref_kw = {k: next(ref) for k in knames}

    before = clone_args(args)
    before_kw = clone_kwargs(rule, kwargs)
    my_args = clone_args(args)
    my_kwargs = clone_kwargs(rule, kwargs)
    grad_out = _clone_g(g)
    extra = {}
    if saved:
        torch.manual_seed(seed)
        extra["saved"] = rule.forward_saved(*clone_args(args), **clone_kwargs(rule, kwargs))[1]
    torch.manual_seed(seed)
    mine = rule.backward(grad_out, *my_args, **extra, **my_kwargs)
    assert isinstance(mine, tuple) and len(mine) == len(args), \
        f"{rule.name}: backward must return a tuple of {len(args)} entries, got {type(mine).__name__}"
    for a, b, name in zip(my_args, before, rule.tensor_args):
        if isinstance(a, torch.Tensor):
            assert torch.equal(a, b) or (a.isnan().any() and torch.equal(a.nan_to_num(), b.nan_to_num())), \
                f"{rule.name}: backward modified its argument {name!r} in place"
    for k, v in my_kwargs.items():
        if isinstance(v, torch.Tensor):
            assert torch.equal(v.nan_to_num(), before_kw[k].nan_to_num()), \
                f"{rule.name}: backward modified its keyword argument {k!r} in place"
    assert _same_g(grad_out, g), f"{rule.name}: backward modified grad_output in place"
    dtype = args[0].dtype if isinstance(args[0], torch.Tensor) else torch.float64
    for m, r, name, want in zip(mine, ref_full, rule.tensor_args, mask):
        if not want:
            assert m is None, f"{rule.name}: gradient for non-differentiable argument {name!r} must be None"
            continue
        _close(m, r, dtype, f"{rule.name} d/d{name}", TORCH_FLOAT64_RTOL.get(rule.name))
    for k, want in kmask.items():
        got = mine.keywords.get(k)
        if not want:
            assert got is None, f"{rule.name}: gradient for non-differentiable keyword {k!r} must be None"
            continue
        assert k in mine.keywords, f"{rule.name}: backward gave no entry for keyword tensor {k!r}"
        _close(got, ref_kw[k], dtype, f"{rule.name} d/d{k} (keyword)")
    return mine


def check_needs_input_grad(rule: Rule, args, kwargs):
    """Asking for one gradient returns just that one, equal to the full computation."""
    mask = rule.differentiable_mask(args)
    torch.manual_seed(0)
    out = rule.torch_fn(*clone_args(args), **clone_kwargs(rule, kwargs))
    g = tuple(torch.ones_like(o) if o.is_floating_point() else None for o in out) if isinstance(out, tuple) \
        else torch.ones_like(out)
    torch.manual_seed(0)
    full = rule.backward(g, *clone_args(args), **clone_kwargs(rule, kwargs))
    for i, m in enumerate(mask):
        if not m:
            continue
        needs = tuple(j == i for j in range(len(args)))
        torch.manual_seed(0)
        part = rule.backward(g, *clone_args(args), needs_input_grad=needs, **clone_kwargs(rule, kwargs))
        for j, p in enumerate(part):
            if j != i:
                assert p is None, f"{rule.name}: computed d/d{rule.tensor_args[j]} though only d/d{rule.tensor_args[i]} was asked for"
        _close(part[i], full[i], args[0].dtype, f"{rule.name} d/d{rule.tensor_args[i]} (needs_input_grad)")


def check_double_backward(rule: Rule, args, kwargs, *, seed: int = 1):
    """Second derivatives: d/d(inputs, keyword tensors, g) of <manual grads, v> == the same through autograd."""
    mask = rule.differentiable_mask(args)
    kmask = keyword_mask(rule, kwargs)
    knames = [k for k, m in kmask.items() if m]
    gen = torch.Generator().manual_seed(seed)

    def rand_like(t):
        return torch.randn(t.shape, generator=gen, dtype=torch.float64).to(t.dtype).to(t.device)

    out0 = _torch_call(rule, clone_args(args), clone_kwargs(rule, kwargs), seed)
    g0 = _cotangent(out0, gen)
    vs = [rand_like(a) if m else None for a, m in zip(args, mask)] + [rand_like(kwargs[k]) for k in knames]
    g_list = list(g0) if isinstance(g0, tuple) else [g0]

    def second(grads_fn):
        a = clone_args(args, mask)
        kw = clone_kwargs(rule, kwargs, requires_grad=True)
        gs = [None if c is None else c.clone().requires_grad_(True) for c in g_list]
        g = tuple(gs) if isinstance(g0, tuple) else gs[0]
        grads = grads_fn(g, a, kw)
        leaves = [x for x, m in zip(a, mask) if m] + [kw[k] for k in knames] + [c for c in gs if c is not None]
        s = sum(((gr * v).sum() for gr, v in zip(grads, vs) if gr is not None and v is not None),
                torch.zeros((), dtype=torch.float64, device=leaves[-1].device))
        if not s.requires_grad:
            return [None] * len(leaves)
        return list(torch.autograd.grad(s, leaves, allow_unused=True))

    def auto(g, a, kw):
        leaves = [x for x, m in zip(a, mask) if m] + [kw[k] for k in knames]
        out = _torch_call(rule, a, kw, seed)
        gs = iter(_autograd_vjp(out, g, leaves, create_graph=True))
        return [next(gs) if m else None for m in mask] + [next(gs) for _ in knames]

    def mine(g, a, kw):
        torch.manual_seed(seed)
        grads = rule.backward(g, *a, **kw)
        return list(grads) + [grads.keywords.get(k) for k in knames]

    ref = second(auto)
    got = second(mine)
    names = [n for n, m in zip(rule.tensor_args, mask) if m] + knames + \
        [f"grad_output[{i}]" for i, c in enumerate(g_list) if c is not None]
    for r, m, name in zip(ref, got, names):
        _close(m, r, torch.float64 if r is None else r.dtype, f"{rule.name} second derivative wrt {name}")


def check_saved_matches_recompute(rule: Rule, args, kwargs, *, seed: int = 0):
    """``rule.backward(..., saved=forward_saved(...)[1])`` equals the backward that recomputes."""
    torch.manual_seed(seed)
    out, saved = rule.forward_saved(*clone_args(args), **clone_kwargs(rule, kwargs))
    assert isinstance(saved, dict), f"{rule.name}: forward_saved must return (output, dict)"
    torch.manual_seed(seed)
    ref = rule.forward(*clone_args(args), **clone_kwargs(rule, kwargs))
    for o, r in zip(out if isinstance(out, tuple) else (out,), ref if isinstance(ref, tuple) else (ref,)):
        _close(o, r, r.dtype, f"{rule.name} forward_saved output")
    g = _cotangent(ref, torch.Generator().manual_seed(seed))
    torch.manual_seed(seed)
    plain = rule.backward(_clone_g(g), *clone_args(args), **clone_kwargs(rule, kwargs))
    torch.manual_seed(seed)
    with_saved = rule.backward(_clone_g(g), *clone_args(args), saved=saved, **clone_kwargs(rule, kwargs))
    for name, p, s in zip(rule.tensor_args, plain, with_saved):
        assert (p is None) == (s is None), f"{rule.name}: d/d{name} is None in only one of saved/recomputed"
        if p is not None:
            _close(s, p, p.dtype, f"{rule.name} d/d{name} with saved=")
    for k, p in plain.keywords.items():
        _close(with_saved.keywords.get(k), p, p.dtype if p is not None else torch.float64,
               f"{rule.name} d/d{k} with saved=")


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
