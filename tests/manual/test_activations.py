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

NAMES = ["relu", "leaky_relu", "threshold", "hardtanh", "elu", "gelu", "sigmoid", "tanh", "softplus"]


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


@pytest.mark.parametrize("name", ["relu", "leaky_relu", "hardtanh", "elu"])
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
        check_double_backward(rule, s.args, s.kwargs)
