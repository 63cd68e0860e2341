"""Elementwise ops beyond the generic test: kinks (abs, pow, norm), broadcasting, bad input."""


import numpy as np
import pytest
import sympy
import torch

from gradcheck_kit import manual
from gradcheck_kit.errors import InvalidParameterError, UnsupportedError
from gradcheck_kit.manual import _shapes, _symbolic
from tests.manual._rulecheck import check_backward, check_double_backward

NAMES = ["add", "sub", "mul", "div", "pow", "exp", "log", "sin", "cos", "abs", "sqrt",
         "sum", "mean", "norm", "dot"]
f64 = torch.float64


def t(*vals):
    return torch.tensor(vals, dtype=f64)


def autograd_grads(fn, args, g):
    leaves = [a.clone().requires_grad_(True) if isinstance(a, torch.Tensor) else a for a in args]
    out = fn(*leaves)
    tensors = [a for a in leaves if isinstance(a, torch.Tensor)]
    got = iter(torch.autograd.grad(out, tensors, g, allow_unused=True))
    return [next(got) if isinstance(a, torch.Tensor) else None for a in leaves]


# -- kinks ------------------------------------------------------------------------------------

def test_abs_gradient_at_zero_is_zero():
    x = t(0.0, -0.0, 2.0, -3.0)
    (mine,) = manual.get("abs").backward(torch.ones(4, dtype=f64), x)
    assert mine.tolist() == [0.0, 0.0, 1.0, -1.0]
    assert mine.tolist() == autograd_grads(torch.abs, (x,), torch.ones(4, dtype=f64))[0].tolist()


@pytest.mark.parametrize("base,exponent", [
    (t(0.0, 0.0, 2.0), 0),             # 0 ** 0 = 1: no dependence on the base at all
    (t(0.0, 0.0, 2.0), 0.0),
    (t(0.0, 0.0, 2.0, -1.5), 1),
    (t(0.0, 0.0, 2.0, 3.0), t(0.0, 2.0, 0.0, -1.0)),   # tensor ** tensor at base 0
    (0.0, t(0.0, 1.0, 2.0)),           # number base 0: d/db = 0 for b >= 0
    (2.0, t(0.0, -1.0, 0.5)),
    (t(-2.0, -1.0, 3.0), 3),           # negative base, integer exponent
    (t(-2.0, -1.0, 3.0), -2),
])
def test_pow_conventions(base, exponent):
    rule = manual.get("pow")
    out = torch.pow(base, exponent)
    g = torch.ones_like(out)
    mine = rule.backward(g, base, exponent)
    ref = autograd_grads(torch.pow, (base, exponent), g)
    for m, r in zip(mine, ref):
        if r is None:
            assert m is None or not m.ne(0).any()
            continue
        torch.testing.assert_close(m, r, rtol=1e-14, atol=0, equal_nan=True)


def test_pow_zero_to_the_zero_gradients_are_zero():
    ga, gb = manual.get("pow").backward(t(1.0), t(0.0), t(0.0))
    assert ga.tolist() == [0.0] and gb.tolist() == [0.0]


@pytest.mark.parametrize("p", ["fro", 2, 1, 3, 1.5, 0.5, float("inf"), float("-inf"), 0])
def test_norm_at_zero_vector_is_zero_as_torch(p):
    x = torch.zeros(2, 3, dtype=f64)
    rule = manual.get("norm")
    g = torch.ones(2, dtype=f64)
    (mine,) = rule.backward(g, x, p=p, dim=1)
    (ref,) = autograd_grads(lambda a: torch.norm(a, p=p, dim=1), (x,), g)
    assert mine.tolist() == [[0.0] * 3] * 2
    assert ref is None or ref.tolist() == mine.tolist()


def test_inf_norm_splits_ties_equally():
    x = t(1.0, -1.0, 0.5)
    (mine,) = manual.get("norm").backward(t(1.0)[0], x, p=float("inf"))
    assert mine.tolist() == [0.5, -0.5, 0.0]


# -- broadcasting -----------------------------------------------------------------------------

@pytest.mark.parametrize("shape,target", [
    ((2, 3, 4), (4,)), ((2, 3, 4), (3, 1)), ((2, 3, 4), (1, 1, 1)), ((2, 3, 4), ()),
    ((3, 4), (3, 4)), ((2, 1, 4), (1, 4)),
])
def test_unbroadcast_is_adjoint_of_broadcast(shape, target):
    # <unbroadcast(g), v> == <g, broadcast(v)> for all v
    gen = torch.Generator().manual_seed(0)
    g = torch.randn(shape, generator=gen, dtype=f64)
    v = torch.randn(target, generator=gen, dtype=f64)
    u = _shapes.unbroadcast(g, target)
    assert tuple(u.shape) == tuple(target)
    torch.testing.assert_close((u * v).sum(), (g * v.expand(shape)).sum())


@pytest.mark.parametrize("name", ["add", "sub", "mul", "div"])
@pytest.mark.parametrize("sa,sb", [((2, 3, 4), (4,)), ((), (2, 3)), ((3, 1), (2, 1, 4)), ((1,), ())])
def test_binary_broadcast_gradient_shapes(name, sa, sb):
    gen = torch.Generator().manual_seed(1)
    a = torch.randn(sa, generator=gen, dtype=f64)
    b = torch.rand(sb, generator=gen, dtype=f64) + 0.5
    rule = manual.get(name)
    out = rule.forward(a, b)
    ga, gb = rule.backward(torch.ones_like(out), a, b)
    assert ga.shape == a.shape and gb.shape == b.shape
    ra, rb = autograd_grads(rule.torch_fn, (a, b), torch.ones_like(out))
    torch.testing.assert_close(ga, ra)
    torch.testing.assert_close(gb, rb)


def test_type_promotion_is_undone():
    a = torch.randn(2, 3, dtype=torch.float32)
    b = torch.randn((), dtype=f64)                        # a 0-d tensor does not promote
    ga, gb = manual.get("mul").backward(torch.ones(2, 3), a, b)
    assert ga.dtype == torch.float32 and gb.dtype == f64 and gb.shape == ()


def test_number_argument_has_no_gradient():
    x = t(1.0, 2.0)
    assert manual.get("add").backward(torch.ones(2, dtype=f64), x, 3.0, alpha=2)[1] is None
    assert manual.get("pow").backward(torch.ones(2, dtype=f64), 2.0, x)[0] is None


# -- reductions -------------------------------------------------------------------------------

@pytest.mark.parametrize("kw", [{}, {"dim": 1}, {"dim": (0, 2), "keepdim": True}, {"dim": -1}, {"dim": []}])
@pytest.mark.parametrize("name", ["sum", "mean"])
def test_reductions_against_autograd(name, kw):
    x = torch.randn(2, 3, 4, dtype=f64, generator=torch.Generator().manual_seed(2))
    check_backward(manual.get(name), (x,), kw)


# -- bad input --------------------------------------------------------------------------------

def test_bad_input_names_the_parameter():
    x = t(1.0, 2.0)
    g = torch.ones(2, dtype=f64)
    with pytest.raises(InvalidParameterError, match="rounding_mode"):
        manual.get("div").backward(g, x, x, rounding_mode="round")
    with pytest.raises(InvalidParameterError, match="nuc"):
        manual.get("norm").backward(t(1.0)[0], x, p="nuc")  # a 1-d input has no matrix norm
    with pytest.raises(InvalidParameterError, match="2-tuple"):
        manual.get("norm").backward(t(1.0)[0], x.view(1, 2), p="nuc", dim=1)
    with pytest.raises(InvalidParameterError, match="p must be"):
        manual.get("norm").backward(t(1.0)[0], x, p="max")
    with pytest.raises(UnsupportedError, match="dtype"):
        manual.get("norm").backward(t(1.0)[0], x, dtype=torch.float32)
    with pytest.raises(InvalidParameterError, match="dim"):
        manual.get("sum").backward(t(1.0)[0], x, dim=3)


# -- symbolic forwards ------------------------------------------------------------------------

@pytest.mark.parametrize("name,args,kw", [
    ("add", (t(1.0, 2.0), t(0.5)), {"alpha": 2}),
    ("div", (t(1.0, 2.0), 4.0), {}),
    ("pow", (2.0, t(1.0, 3.0)), {}),
    ("abs", (t(-1.5, 0.0),), {}),
    ("sum", (torch.arange(6, dtype=f64).view(2, 3),), {"dim": 0, "keepdim": True}),
    ("mean", (torch.arange(6, dtype=f64).view(2, 3),), {"dim": 1}),
    ("norm", (t(3.0, -4.0),), {}),
    ("norm", (t(3.0, -4.0, 1.0),), {"p": float("inf")}),
    ("norm", (t(3.0, -4.0, 1.0),), {"p": 3}),
    ("dot", (t(1.0, 2.0), t(3.0, 4.0)), {}),
])
def test_symbolic_forward_matches_torch(name, args, kw):
    rule = manual.get(name)
    arrs = [_symbolic.rationals(a) if isinstance(a, torch.Tensor) else a for a in args]
    out = rule.symbolic(*arrs, **kw)
    ref = rule.forward(*args, **kw)
    assert isinstance(out, np.ndarray) and out.shape == tuple(ref.shape)
    np.testing.assert_allclose(np.array([float(sympy.N(e)) for e in out.flat]).reshape(out.shape),
                               ref.numpy(), rtol=1e-12)


def test_symbolic_abs_derivative_at_zero_is_torchs():
    x = sympy.Symbol("x", real=True)
    out = manual.get("abs").symbolic(np.array([x], dtype=object))
    assert sympy.diff(out[0], x).subs(x, 0) == 0


@pytest.mark.cuda
@pytest.mark.parametrize("name", NAMES)
def test_cuda_float64(name):
    rule = manual.get(name)
    for s in rule.samples(device="cuda", dtype=f64):
        check_backward(rule, s.args, s.kwargs)
        check_double_backward(rule, s.args, s.kwargs)


# -- issue 10: valid calls that used to be rejected -------------------------------------------------

@pytest.mark.parametrize("mode", ["trunc", "floor"])
def test_div_with_rounding_mode_has_zero_gradient_as_torch(mode):
    gen = torch.Generator().manual_seed(4)
    x, o = torch.randn(3, 4, dtype=f64, generator=gen) * 3, torch.randn(4, dtype=f64, generator=gen)
    gx, go = check_backward(manual.get("div"), (x, o), {"rounding_mode": mode})
    assert not gx.any() and not go.any() and go.shape == o.shape


@pytest.mark.parametrize("kw", [{}, {"dim": (1, 2)}, {"dim": (2, 0), "keepdim": True}])
def test_nuclear_norm_matches_autograd(kw):
    x = torch.randn(3, 4, dtype=f64, generator=torch.Generator().manual_seed(5))
    if kw:
        x = torch.randn(2, 3, 4, dtype=f64, generator=torch.Generator().manual_seed(6))
    rule = manual.get("norm")
    check_backward(rule, (x,), {"p": "nuc", **kw})
    check_double_backward(rule, (x,), {"p": "nuc", **kw})


def test_method_spellings_map_onto_the_rules():
    from gradcheck_kit.manual import registry

    for fn, name in [(torch.Tensor.exp, "exp"), (torch.Tensor.__add__, "add"), (torch.Tensor.__mul__, "mul"),
                     (torch.Tensor.__sub__, "sub"), (torch.Tensor.__truediv__, "div"), (torch.Tensor.__pow__, "pow"),
                     (torch.Tensor.__matmul__, "matmul"), (torch.Tensor.sum, "sum"), (torch.Tensor.abs, "abs"),
                     (torch.relu, "relu"), (torch.Tensor.sigmoid, "sigmoid"), (torch.softmax, "softmax")]:
        assert registry.for_callable(fn) is manual.get(name), fn
    # reflected operators take their arguments the other way round: never aliases
    assert registry.for_callable(torch.Tensor.__rsub__) is None
    assert registry.for_callable(torch.Tensor.__rtruediv__) is None
