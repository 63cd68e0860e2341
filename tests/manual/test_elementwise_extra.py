"""Conventions of the extra elementwise rules the generic registry walk does not reach: every
spelling through ``use_rules(strict=True)``, and the points where torch's gradient is defined
but finite differences do not exist (logit's clamp ends at 0 and 1, xlogy at x == 0 with
other <= 0, atan2 and hypot at the origin, remainder's and fmod's second argument at exact multiples)."""

import math

import pytest
import torch

from gradcheck_kit import manual
from gradcheck_kit.errors import InvalidParameterError, UnsupportedError
from gradcheck_kit.manual import use_rules


def _t(*values):
    return torch.tensor(values, dtype=torch.float64)


def _gen():
    return torch.Generator().manual_seed(0)


X = torch.rand(3, 4, generator=_gen(), dtype=torch.float64) * 0.8 + 0.1    # in (0.1, 0.9): every domain
Y = torch.rand(4, generator=_gen(), dtype=torch.float64) + 0.5               # positive, broadcasts
W = torch.rand(3, 1, generator=_gen(), dtype=torch.float64)

# (id, rule the call must run through, call)
SPELLINGS = [
    ("-x", "neg", lambda x, y, w: -x),
    ("x.neg", "neg", lambda x, y, w: x.neg()),
    ("torch.negative", "neg", lambda x, y, w: torch.negative(x)),
    ("x.negative", "neg", lambda x, y, w: x.negative()),
    ("x.reciprocal", "reciprocal", lambda x, y, w: x.reciprocal()),
    ("torch.rsqrt", "rsqrt", lambda x, y, w: torch.rsqrt(x)),
    ("x.square", "square", lambda x, y, w: x.square()),
    ("special.log1p", "log1p", lambda x, y, w: torch.special.log1p(x)),
    ("special.expm1", "expm1", lambda x, y, w: torch.special.expm1(x)),
    ("x.log2", "log2", lambda x, y, w: x.log2()),
    ("torch.log10", "log10", lambda x, y, w: torch.log10(x)),
    ("special.exp2", "exp2", lambda x, y, w: torch.special.exp2(x)),
    ("x.tan", "tan", lambda x, y, w: x.tan()),
    ("torch.arctan", "atan", lambda x, y, w: torch.arctan(x)),
    ("x.arcsin", "asin", lambda x, y, w: x.arcsin()),
    ("torch.acos", "acos", lambda x, y, w: torch.acos(x)),
    ("x.sinh", "sinh", lambda x, y, w: x.sinh()),
    ("x.cosh", "cosh", lambda x, y, w: x.cosh()),
    ("torch.arcsinh", "asinh", lambda x, y, w: torch.arcsinh(x)),
    ("x.arctanh", "atanh", lambda x, y, w: x.arctanh()),
    ("x.acosh", "acosh", lambda x, y, w: (x + 1).acosh()),
    ("special.erf", "erf", lambda x, y, w: torch.special.erf(x)),
    ("x.erfc", "erfc", lambda x, y, w: x.erfc()),
    ("logit positional eps", "logit", lambda x, y, w: torch.logit(x, 0.2)),
    ("special.logit", "logit", lambda x, y, w: torch.special.logit(x, eps=0.2)),
    ("x.logit", "logit", lambda x, y, w: x.logit()),
    ("nan_to_num positional", "nan_to_num", lambda x, y, w: torch.nan_to_num(x, 0.5)),
    ("x.nan_to_num", "nan_to_num", lambda x, y, w: x.nan_to_num(posinf=1.0)),
    ("clamp_max number", "clamp_max", lambda x, y, w: torch.clamp_max(x, 0.5)),
    ("x.clamp_max(max=tensor)", "clamp_max", lambda x, y, w: x.clamp_max(max=y - 0.7)),
    ("x.sign", "sign", lambda x, y, w: x.sign() * x),
    ("torch.sgn", "sgn", lambda x, y, w: torch.sgn(x) * x),
    ("x.floor", "floor", lambda x, y, w: (3 * x).floor() + x),
    ("x.ceil", "ceil", lambda x, y, w: (3 * x).ceil() * x),
    ("x.round(decimals=1)", "round", lambda x, y, w: x.round(decimals=1) * x),
    ("torch.fix", "trunc", lambda x, y, w: torch.fix(3 * x) * x),
    ("x.trunc", "trunc", lambda x, y, w: x.trunc() + x),
    ("x.frac", "frac", lambda x, y, w: (3 * x).frac()),
    ("x.arctan2", "atan2", lambda x, y, w: x.arctan2(y)),
    ("torch.hypot", "hypot", lambda x, y, w: torch.hypot(x, y)),
    ("lerp tensor weight", "lerp", lambda x, y, w: torch.lerp(x, y, w)),
    ("x.lerp number weight", "lerp", lambda x, y, w: x.lerp(y, 0.3)),
    ("lerp weight=", "lerp", lambda x, y, w: torch.lerp(x, y, weight=w)),
    ("x.addcmul", "addcmul", lambda x, y, w: x.addcmul(y, w, value=-2)),
    ("addcdiv", "addcdiv", lambda x, y, w: torch.addcdiv(x, w, y, value=0.5)),
    ("x % y", "remainder", lambda x, y, w: (3 * x) % y),
    ("x.remainder(number)", "remainder", lambda x, y, w: x.remainder(0.3)),
    ("torch.fmod", "fmod", lambda x, y, w: torch.fmod(3 * x, y)),
    ("x.erfinv", "erfinv", lambda x, y, w: x.erfinv()),
    ("special.sinc", "sinc", lambda x, y, w: torch.special.sinc(x)),
    ("x.deg2rad", "deg2rad", lambda x, y, w: x.deg2rad()),
    ("torch.rad2deg", "rad2deg", lambda x, y, w: torch.rad2deg(x)),
    ("special.ndtr", "ndtr", lambda x, y, w: torch.special.ndtr(x)),
    ("special.log_ndtr", "log_ndtr", lambda x, y, w: torch.special.log_ndtr(x)),
    ("x.logaddexp", "logaddexp", lambda x, y, w: x.logaddexp(y)),
    ("torch.logaddexp2", "logaddexp2", lambda x, y, w: torch.logaddexp2(x, w)),
    ("x.copysign", "copysign", lambda x, y, w: x.copysign(w - 0.5)),
    ("copysign number", "copysign", lambda x, y, w: torch.copysign(x, -1.0)),
    ("special.xlog1py", "xlog1py", lambda x, y, w: torch.special.xlog1py(x, y)),
    ("x.float_power", "float_power", lambda x, y, w: x.float_power(y)),
    ("float_power number base", "float_power", lambda x, y, w: torch.float_power(2.0, x)),
    ("torch.rsub", "rsub", lambda x, y, w: torch.rsub(x, y, alpha=2)),
    ("x.xlogy", "xlogy", lambda x, y, w: x.xlogy(y)),
    ("special.xlogy number", "xlogy", lambda x, y, w: torch.special.xlogy(2.0, y)),
]


def _grads(fn, rules: bool):
    leaves = [t.clone().requires_grad_(True) for t in (X, Y, W)]
    if rules:
        with use_rules(strict=True) as session:
            out = fn(*leaves)
    else:
        session, out = None, fn(*leaves)
    cot = torch.randn(out.shape, generator=_gen(), dtype=out.dtype)
    grads = torch.autograd.grad(out, leaves, cot, allow_unused=True)
    return session, [torch.zeros_like(t) if g is None else g for t, g in zip(leaves, grads)]


@pytest.mark.parametrize("rule_name,fn", [pytest.param(r, f, id=i) for i, r, f in SPELLINGS])
def test_every_spelling_runs_through_its_rule_and_matches_autograd(rule_name, fn):
    session, mine = _grads(fn, rules=True)       # strict: an op without a rule raises MissingRuleError
    assert rule_name in session.ops, f"{rule_name} did not run: {session.ops}"
    _, ref = _grads(fn, rules=False)
    for name, a, b in zip("xyw", mine, ref):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12, msg=lambda m: f"d/d{name}: {m}")


def _vs_torch(name, args, kwargs, wrt=0, create_graph=False):
    """The rule's gradient of argument ``wrt`` and torch's, for one random cotangent."""
    rule = manual.get(name)
    leaves = [a.clone().requires_grad_(i == wrt) if isinstance(a, torch.Tensor) else a for i, a in enumerate(args)]
    out = rule.torch_fn(*leaves, **kwargs)
    g = torch.randn(out.shape, generator=_gen(), dtype=out.dtype)
    (want,) = torch.autograd.grad(out, [leaves[wrt]], g)
    got = rule.backward(g, *args, **kwargs)[wrt]
    return got, want


def test_logit_eps_is_zero_outside_and_inclusive_at_the_clamp_ends():
    # torch: gradient g / (x (1 - x)) for eps <= x <= 1 - eps, 0 outside; x = 0 and 1 included (off the
    # generic samples because the second derivative there is 0 / 0 = NaN in torch and in the rule)
    x = _t(0.0, 0.25, 0.5, 0.75, 1.0, -0.5, 1.5, math.nan, math.inf)
    got, want = _vs_torch("logit", (x,), {"eps": 0.25})
    torch.testing.assert_close(got, want, equal_nan=True)
    assert got[0] == 0 and got[4] == 0 and got[1] != 0 and got[3] != 0
    got, want = _vs_torch("logit", (x,), {})                # no eps: inf at 0 and 1, NaN outside [0, 1]
    torch.testing.assert_close(got, want, equal_nan=True)
    assert got[0].isinf() and got[5].isnan()


def test_logit_second_derivative_matches_torch_at_the_clamp_ends():
    x = _t(0.0, 0.25, 0.6, 1.0, -0.5)
    xr = x.clone().requires_grad_(True)
    g = torch.ones(5, dtype=torch.float64)
    (gx,) = torch.autograd.grad(torch.logit(xr, 0.25), xr, g, create_graph=True)
    (want,) = torch.autograd.grad(gx.sum(), xr)
    xr2 = x.clone().requires_grad_(True)
    (mine,) = manual.get("logit").backward(g, xr2, eps=0.25)
    (got,) = torch.autograd.grad(mine.sum(), xr2)
    torch.testing.assert_close(got, want, equal_nan=True)


def test_xlogy_input_gradient_is_zero_where_x_is_zero_and_other_not_positive():
    x, o = _t(0.0, 0.0, 0.0, 0.0, 1.0), _t(-1.0, 0.0, 2.0, math.nan, -1.0)
    got, want = _vs_torch("xlogy", (x, o), {})
    torch.testing.assert_close(got, want, equal_nan=True)
    assert got[0] == 0 and got[1] == 0 and got[4].isnan()
    got, want = _vs_torch("xlogy", (x, -2.0), {})            # a number other
    torch.testing.assert_close(got, want, equal_nan=True)


def test_atan2_gradient_is_zero_at_the_origin_and_where_the_squared_radius_underflows():
    a, b = _t(0.0, 1.0, 0.0, 1e-200), _t(0.0, 2.0, 1e-170, -1e-200)
    for wrt in (0, 1):
        got, want = _vs_torch("atan2", (a, b), {}, wrt=wrt)
        torch.testing.assert_close(got, want, equal_nan=True)
        assert got[0] == 0 and got[2] == 0 and got[3] == 0
    # second derivative: torch's is NaN there (0 times the reciprocal's infinite slope); the rule's too
    ar, br = a.clone().requires_grad_(True), b.clone().requires_grad_(True)
    ga, gb = torch.autograd.grad(torch.atan2(ar, br).sum(), [ar, br], create_graph=True)
    want = torch.autograd.grad((ga + gb).sum(), [ar, br])
    ar2, br2 = a.clone().requires_grad_(True), b.clone().requires_grad_(True)
    ga2, gb2 = manual.get("atan2").backward(torch.ones(4, dtype=torch.float64), ar2, br2)
    got = torch.autograd.grad((ga2 + gb2).sum(), [ar2, br2])
    for x, y in zip(got, want):
        torch.testing.assert_close(x, y, equal_nan=True)


def test_hypot_gradient_is_nan_at_the_origin_as_torch():
    a, b = _t(0.0, 1.0), _t(0.0, 2.0)
    for wrt in (0, 1):
        got, want = _vs_torch("hypot", (a, b), {}, wrt=wrt)
        torch.testing.assert_close(got, want, equal_nan=True)
        assert got[0].isnan()


@pytest.mark.parametrize("name,mode", [("fmod", "trunc"), ("remainder", "floor")])
def test_mod_other_gradient_is_minus_the_rounded_quotient(name, mode):
    a, b = _t(-3.5, 3.5, 4.0, -6.0, -0.2), _t(2.0, -2.0, 2.0, 3.0, 3.0)   # 4 / 2 and -6 / 3: on the jumps
    got, want = _vs_torch(name, (a, b), {}, wrt=1)
    torch.testing.assert_close(got, want)
    g = torch.randn(5, generator=_gen(), dtype=torch.float64)
    torch.testing.assert_close(manual.get(name).backward(g, a, b)[1], -g * torch.div(a, b, rounding_mode=mode))


def test_remainder_of_a_number_by_a_tensor_says_torch_has_no_gradient():
    b = _t(2.0, 3.0)
    with pytest.raises(RuntimeError):                         # torch: derivative not implemented
        torch.remainder(5.0, b.clone().requires_grad_(True)).sum().backward()
    with pytest.raises(UnsupportedError, match="number"):
        manual.get("remainder").backward(torch.ones(2, dtype=torch.float64), 5.0, b)


def test_bad_parameters_raise_one_clear_error():
    x = _t(0.2, 0.5)
    g = torch.ones(2, dtype=torch.float64)
    with pytest.raises(InvalidParameterError, match="eps"):
        manual.get("logit").backward(g, x, eps="small")
    with pytest.raises(InvalidParameterError, match="weight"):
        manual.get("lerp").backward(g, x, x, "half")
    with pytest.raises(InvalidParameterError, match="value"):
        manual.get("addcmul").backward(g, x, x, x, value=None)
    with pytest.raises(InvalidParameterError, match="max"):
        manual.get("clamp_max").backward(g, x, "1")


def test_inputs_are_not_modified():
    x, o = X.clone(), Y.clone()
    for name, args in [("lerp", (x, o, W)), ("addcdiv", (x, W, o)), ("xlogy", (x, o)), ("nan_to_num", (x,))]:
        manual.get(name).backward(torch.ones(3, 4, dtype=torch.float64), *args)
    assert torch.equal(x, X) and torch.equal(o, Y)


def test_sinc_gradient_is_zero_at_zero_as_torch():
    x = _t(0.0, -0.0, 1.0, 1e-200)
    got, want = _vs_torch("sinc", (x,), {})
    torch.testing.assert_close(got, want)
    assert got[0] == 0 and got[1] == 0


def test_log_ndtr_far_tail_stays_finite_as_torch():
    # phi(x) / Phi(x) ~ -x: both underflow at x = -40, the rule's e^(-(y + x^2 / 2)) does not
    x = _t(-40.0, -30.0, -12.0, 10.0, 40.0)
    got, want = _vs_torch("log_ndtr", (x,), {})
    torch.testing.assert_close(got, want, rtol=1e-8, atol=0)
    assert bool(got.isfinite().all())


def test_copysign_gradient_is_zero_at_zero_and_for_the_sign_source():
    a, b = _t(0.0, -0.0, 1.5, -2.0), _t(-1.0, 1.0, -0.0, 3.0)
    for wrt in (0, 1):
        got, want = _vs_torch("copysign", (a, b), {}, wrt=wrt)
        torch.testing.assert_close(got, want)
    g = torch.ones(4, dtype=torch.float64)
    ga, gb = manual.get("copysign").backward(g, a, b)
    assert ga.tolist() == [0.0, 0.0, -1.0, -1.0] and not bool(gb.ne(0).any())


def test_float_power_gradient_comes_back_in_the_input_dtype():
    x = torch.rand(3, generator=_gen()) + 0.5                  # float32; the output is float64
    xr = x.clone().requires_grad_(True)
    out = torch.float_power(xr, 2.5)
    (want,) = torch.autograd.grad(out.sum(), xr)
    got, none = manual.get("float_power").backward(torch.ones(3, dtype=torch.float64), x, 2.5)
    assert none is None                                        # a number exponent has no gradient
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, want)
