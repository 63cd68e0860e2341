"""Activations beyond the generic test: torch's conventions at kinks, spelled out by hand."""

import math

import numpy as np
import pytest
import sympy
import torch
import torch.nn.functional as F

from gradcheck_kit import manual
from gradcheck_kit.errors import InvalidParameterError, UnsupportedError
from gradcheck_kit.manual import _symbolic
from tests.manual._rulecheck import check_backward, check_double_backward

NAMES = ["relu", "leaky_relu", "threshold", "hardtanh", "elu", "gelu", "sigmoid", "tanh", "softplus",
         "silu", "mish", "hardswish", "hardsigmoid", "selu", "celu", "logsigmoid", "softsign", "hardshrink",
         "softshrink", "tanhshrink", "relu6"]


def t(*vals):
    return torch.tensor(vals, dtype=torch.float64)


def grads(name, x, **kw):
    """(manual, autograd) first derivatives of sum(f(x))."""
    rule = manual.get(name)
    (mine,) = rule.backward(torch.ones_like(x), x, **kw)
    xr = x.clone().requires_grad_(True)
    (ref,) = torch.autograd.grad(rule.torch_fn(xr, **kw).sum(), xr)
    return mine, ref


@pytest.mark.parametrize("name,x,kw,expected", [
    ("relu", t(0.0, -0.0, 1.0, -1.0), {}, [0.0, 0.0, 1.0, 0.0]),                  # relu'(0) = 0
    ("leaky_relu", t(0.0, 1.0, -1.0), {"negative_slope": 0.1}, [0.1, 1.0, 0.1]),  # slope at 0
    ("threshold", t(0.5, 0.6, 0.4), {"threshold": 0.5, "value": -1.0}, [0.0, 1.0, 0.0]),
    ("hardtanh", t(-1.0, 1.0, 0.0, -2.0, 2.0), {}, [0.0, 0.0, 1.0, 0.0, 0.0]),    # edges: 0
    ("hardtanh", t(-0.5, 2.0), {"min_val": -0.5, "max_val": 2.0}, [0.0, 0.0]),
    ("elu", t(0.0, 1.0), {"alpha": 0.5}, [0.5, 1.0]),                             # elu'(0) = alpha
    ("softplus", t(10.0, 10.5), {"beta": 2.0, "threshold": 20.0},
     [1.0 / (1.0 + math.exp(-20.0)), 1.0]),                                       # beta x == t: smooth
    ("relu", t(math.nan), {}, [1.0]),                                             # NaN: g passes through
    ("threshold", t(math.nan), {"threshold": 0.5, "value": -1.0}, [1.0]),
    ("elu", t(math.nan), {"alpha": 0.5}, [1.0]),                                  # NaN: the x > 0 branch
    ("hardswish", t(-3.0, 3.0, 0.0), {}, [0.0, 1.0, 0.5]),                        # edges: 0 and 1
    ("relu6", t(0.0, 6.0, 3.0), {}, [0.0, 0.0, 1.0]),
    ("hardshrink", t(0.5, -0.5, 0.6), {}, [0.0, 0.0, 1.0]),                       # |x| == lambd: 0
    ("softshrink", t(1.0, -1.0, -1.1), {"lambd": 1.0}, [0.0, 0.0, 1.0]),
    ("selu", t(0.0,), {}, [1.6732632423543772 * 1.0507009873554805]),             # selu'(0) = scale alpha
    ("celu", t(0.0,), {"alpha": 2.0}, [1.0]),                                     # celu'(0) = 1
])
def test_kink_conventions(name, x, kw, expected):
    mine, ref = grads(name, x, **kw)
    torch.testing.assert_close(mine, t(*expected))
    torch.testing.assert_close(mine, ref, rtol=1e-14, atol=1e-15)


@pytest.mark.parametrize("name,x,kw", [
    ("elu", t(0.0, -1.0, 1.0), {"alpha": 0.5}),                   # torch: elu''(0) = 0 though elu'(0) = alpha
    ("softplus", t(10.0, 9.0, 11.0), {"beta": 2.0, "threshold": 20.0}),  # softplus'' = 0 at beta x == t
    ("relu", t(0.0, 2.0), {}),
    ("hardtanh", t(-1.0, 1.0, 0.3), {}),
])
def test_second_derivative_at_kinks(name, x, kw):
    check_double_backward(manual.get(name), (x,), kw)


@pytest.mark.parametrize("name", ["relu", "leaky_relu", "hardtanh", "elu", "silu", "mish", "hardswish",
                                  "hardsigmoid", "selu", "celu", "relu6"])
def test_inplace_is_rejected_by_name(name):
    x = t(1.0, -1.0)
    with pytest.raises(UnsupportedError, match="inplace"):
        manual.get(name).backward(torch.ones(2, dtype=torch.float64), x, inplace=True)


def test_threshold_inplace_rejected():
    with pytest.raises(UnsupportedError, match="inplace"):
        manual.get("threshold").backward(t(1.0), t(1.0), threshold=0.0, value=0.0, inplace=True)


def test_bad_parameters_are_named():
    with pytest.raises(InvalidParameterError, match="approximate"):
        manual.get("gelu").backward(t(1.0), t(1.0), approximate="erf")
    with pytest.raises(InvalidParameterError, match="min_val"):
        manual.get("hardtanh").backward(t(1.0), t(1.0), min_val=2.0, max_val=1.0)


def test_rules_mirror_torch_functions():
    assert manual.get("relu").torch_fn is F.relu
    assert manual.get("sigmoid").torch_fn is torch.sigmoid
    assert manual.get("tanh").torch_fn is torch.tanh
    for name in NAMES:
        rule = manual.get(name)
        assert rule.has_symbolic, name
        assert rule.tensor_args == ("input",)


def _sym_eval(name, x, **kw):
    """symbolic forward at rationals and its exact derivative there, as floats."""
    rule = manual.get(name)
    syms = _symbolic.symbols("x", x.shape)
    out = rule.symbolic(syms, **kw)
    assert out.shape == tuple(x.shape)
    subs = dict(zip(syms.flat, _symbolic.rationals(x).flat))
    val = [float(e.subs(subs)) for e in out.flat]
    der = [float(sympy.diff(e, s).subs(subs)) for e, s in zip(out.flat, syms.flat)]
    return np.array(val), np.array(der)


@pytest.mark.parametrize("name,x,kw", [
    ("relu", t(0.0, 1.5, -2.0), {}),
    ("leaky_relu", t(0.0, 1.5, -2.0), {"negative_slope": 0.25}),
    ("threshold", t(0.5, 1.5, -2.0), {"threshold": 0.5, "value": 3.0}),
    ("hardtanh", t(-1.0, 1.0, 0.25, 3.0), {}),
    ("elu", t(0.5, -2.0), {"alpha": 2.0}),
    ("gelu", t(0.5, -1.0), {"approximate": "tanh"}),
    ("gelu", t(0.5, -1.0), {}),
    ("softplus", t(0.5, -1.0, 11.0), {"beta": 2.0, "threshold": 20.0}),
    ("sigmoid", t(0.5, -1.0), {}),
    ("silu", t(0.5, -1.0), {}),
    ("mish", t(0.5, -1.0), {}),
    ("hardswish", t(-3.0, 3.0, 0.5, -4.0), {}),
    ("selu", t(0.0, -1.0, 2.0), {}),
    ("celu", t(0.0, -1.0, 2.0), {"alpha": 0.5}),
    ("logsigmoid", t(0.5, -1.0), {}),
    ("softsign", t(0.0, -1.0, 2.0), {}),
    ("hardshrink", t(0.5, -0.75, 0.25), {}),
    ("softshrink", t(1.0, -1.5, 0.25), {"lambd": 1.0}),
    ("tanhshrink", t(0.5, -1.0), {}),
    ("relu6", t(0.0, 6.0, 3.0, 7.0), {}),
])
def test_symbolic_forward_and_its_derivative_match(name, x, kw):
    val, der = _sym_eval(name, x, **kw)
    rule = manual.get(name)
    np.testing.assert_allclose(val, rule.forward(x, **kw).numpy(), rtol=1e-12, atol=1e-12)
    (mine,) = rule.backward(torch.ones_like(x), x, **kw)
    np.testing.assert_allclose(der, mine.numpy(), rtol=1e-12, atol=1e-12)


@pytest.mark.cuda
@pytest.mark.parametrize("name", NAMES)
def test_cuda_float64(name):
    rule = manual.get(name)
    for s in rule.samples(device="cuda", dtype=torch.float64):
        check_backward(rule, s.args, s.kwargs)
        if name != "hardsigmoid":  # torch has no double backward for it (see test_rules.py)
            check_double_backward(rule, s.args, s.kwargs)


# -- prelu and hardsigmoid: torch quirks, spelled out -------------------------------------------

def test_prelu_at_zero_takes_the_weight_branch_first_order():
    # first order: x = 0 and NaN use w (torch's `input > 0 ? g : w g`); torch's double backward
    # switches to `x >= 0` there, which no function of (g, x, w) can reproduce, so the generic
    # samples stay off x = 0 and this checks the first derivative only
    x, w = t(0.0, -0.0, 1.0, -2.0, math.nan), t(0.25)
    check_backward(manual.get("prelu"), (x, w), {})
    gx, gw = manual.get("prelu").backward(torch.ones(5, dtype=torch.float64), x, w)
    assert gx[:2].tolist() == [0.25, 0.25] and math.isnan(float(gw))


@pytest.mark.parametrize("shape,wshape", [((2, 3, 4), (3,)), ((2, 3), (1,)), ((5,), (1,)), ((), (1,)),
                                          ((2, 3, 2, 2), (3,))])
def test_prelu_broadcasts_the_weight_over_dim_1(shape, wshape):
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(shape, dtype=torch.float64, generator=gen)
    w = torch.rand(wshape, dtype=torch.float64, generator=gen)
    grads = check_backward(manual.get("prelu"), (x, w), {})
    assert grads[1].shape == w.shape


def test_prelu_rejects_a_weight_that_does_not_fit_the_channels():
    with pytest.raises(InvalidParameterError, match="prelu: weight has 3 elements"):
        manual.get("prelu").backward(torch.ones(3, dtype=torch.float64), t(1.0, 2.0, 3.0), t(0.1, 0.2, 0.3))


def test_hardsigmoid_second_derivative_against_its_composite():
    # torch has no double backward for hardsigmoid; relu6(x + 3) / 6 is the same function
    # (hardtanh's edges give 0 at x = -3, 3 exactly as hardsigmoid's backward does)
    from gradcheck_kit.manual.registry import Rule

    rule = manual.get("hardsigmoid")
    composite = Rule(name="hardsigmoid_composite", torch_fn=lambda x: F.relu6(x + 3) / 6, tensor_args=("input",),
                     backward_impl=rule.backward_impl, sample_fn=rule.sample_fn)
    for s in rule.samples():
        if bool(s.args[0].isfinite().all()):
            check_double_backward(composite, s.args, s.kwargs)
    check_backward(composite, (t(-3.0, 3.0, 0.0, -2.5),), {})


def test_torch_hardsigmoid_float64_backward_uses_a_float32_one_sixth():
    # why tests/manual/_rulecheck.TORCH_FLOAT64_RTOL loosens hardsigmoid to 1e-7: the rule keeps 1/6
    x = t(0.5).requires_grad_()
    (ref,) = torch.autograd.grad(F.hardsigmoid(x), x)
    assert float(ref) == float(torch.tensor(1.0 / 6.0, dtype=torch.float32))
    (mine,) = manual.get("hardsigmoid").backward(t(1.0), t(0.5))
    assert float(mine) == 1.0 / 6.0
