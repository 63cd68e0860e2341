"""Reduction rules beyond the generic test: tie conventions spelled out, torch's edge cases,
bad parameters, and planted bugs the generic check must catch."""

import dataclasses

import pytest
import torch

from gradcheck_kit import manual
from gradcheck_kit.errors import InvalidInputError, InvalidParameterError
from tests.manual._rulecheck import check_backward

NAN, INF = float("nan"), float("inf")


def _t(v):
    return torch.tensor(v, dtype=torch.float64)


def _autograd(fn, x, g=None, **params):
    x = x.clone().requires_grad_(True)
    out = fn(x, **params)
    out = out[0] if isinstance(out, tuple) else out
    (gx,) = torch.autograd.grad(out, x, torch.ones_like(out) if g is None else g)
    return gx


def _mine(name, x, **params):
    rule = manual.get(name)
    out = rule.forward(x, **params)
    g = torch.ones_like(out[0] if isinstance(out, tuple) else out)
    if isinstance(out, tuple):
        g = (g, None)
    (gx,) = rule.backward(g, x, **params)
    return gx


TIES = [
    # full max/min/median: ties share evenly; a NaN result is shared by the NaNs
    ("max", [1.0, 3.0, 3.0, 2.0, 3.0], {}, [0.0, 1 / 3, 1 / 3, 0.0, 1 / 3]),
    ("min", [1.0, 3.0, 1.0, 2.0], {}, [0.5, 0.0, 0.5, 0.0]),
    ("max", [1.0, NAN, 3.0, NAN], {}, [0.0, 0.5, 0.0, 0.5]),
    ("median", [3.0, 1.0, 3.0, 3.0, 2.0], {}, [1 / 3, 0.0, 1 / 3, 1 / 3, 0.0]),
    # along a dim: the whole gradient to the first maximum, or to the first NaN
    ("max", [[1.0, 3.0, 3.0, 2.0]], {"dim": 1}, [[0.0, 1.0, 0.0, 0.0]]),
    ("min", [[2.0, 1.0, 5.0, 1.0]], {"dim": 1, "keepdim": True}, [[0.0, 1.0, 0.0, 0.0]]),
    ("max", [[1.0, NAN, 3.0, NAN]], {"dim": 1}, [[0.0, 1.0, 0.0, 0.0]]),
    ("max", [[-INF, -INF, -INF]], {"dim": 1}, [[1.0, 0.0, 0.0]]),
    # amax/amin: ties share evenly per reduced slice; a NaN result gives NaN everywhere in it
    ("amax", [[1.0, 3.0, 3.0], [2.0, 0.0, 1.0]], {"dim": 1}, [[0.0, 0.5, 0.5], [1.0, 0.0, 0.0]]),
    ("amin", [[1.0, 1.0, 1.0, 1.0]], {}, [[0.25, 0.25, 0.25, 0.25]]),
    ("amax", [[1.0, NAN, 3.0]], {"dim": 1}, [[NAN, NAN, NAN]]),
    # clamp: the boundaries pass the gradient, NaN does not
    ("clamp", [-1.0, -0.5, 0.0, 0.5, 1.0, NAN], {"min": -0.5, "max": 0.5}, [0.0, 1.0, 1.0, 1.0, 0.0, 0.0]),
    # logsumexp: a row of -inf and a +inf entry give NaN (inf - inf), as torch
    ("logsumexp", [[-INF, -INF], [INF, 1.0]], {"dim": 1}, [[NAN, NAN], [NAN, 0.0]]),
    # std of a constant: gradient 0 (torch masks g / (2 std) where std == 0), not NaN
    ("std", [2.0, 2.0, 2.0], {}, [0.0, 0.0, 0.0]),
    ("std", [[1.0, 1.0], [0.0, 2.0]], {"dim": 1}, [[0.0, 0.0], [-0.5 ** 0.5, 0.5 ** 0.5]]),
    # var with dof <= 0, full reduction: +inf where x != mean, NaN where x == mean
    ("var", [1.0, 2.0, 3.0], {"correction": 3}, [INF, NAN, INF]),
    # along a dim torch uses 2 / (N - correction) as is: negative for correction > N, inf at N
    ("var", [[1.0, 3.0]], {"dim": 1, "correction": 3}, [[2.0, -2.0]]),
    ("var", [[1.0, 3.0], [2.0, 2.0]], {"dim": 1, "correction": 2}, [[-INF, INF], [NAN, NAN]]),
    ("var_mean", [[1.0, 3.0]], {"dim": 1, "correction": 3}, [[2.0, -2.0]]),   # the var output
    # cumprod through zeros, exactly: y = [2, 0, 0, 0]
    ("cumprod", [2.0, 0.0, 3.0, 0.0], {"dim": 0}, [1.0, 8.0, 0.0, 0.0]),
]


@pytest.mark.parametrize("name,x,params,expected", TIES, ids=[f"{c[0]}-{i}" for i, c in enumerate(TIES)])
def test_convention_spelled_out(name, x, params, expected):
    import warnings

    x, expected = _t(x), _t(expected)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")                  # var's "degrees of freedom <= 0"
        ref = _autograd(manual.get(name).torch_fn, x, **params)
        mine = _mine(name, x, **params)
    torch.testing.assert_close(ref, expected, equal_nan=True, msg="torch changed its convention")
    torch.testing.assert_close(mine, expected, equal_nan=True, rtol=0, atol=1e-15)


def test_maximum_ties_split_half_and_nan_gives_both():
    a, b = _t([1.0, 2.0, NAN]), _t([1.0, 3.0, 1.0])
    rule = manual.get("maximum")
    ga, gb = rule.backward(torch.ones(3, dtype=torch.float64), a, b)
    assert ga.tolist()[:2] == [0.5, 0.0] and ga[2] == 1.0
    assert gb.tolist() == [0.5, 1.0, 1.0]


def test_max_along_dim_takes_its_own_index_not_torchs():
    """With saved indices the rule routes to them; recomputed it finds the same first maximum."""
    x = _t([[4.0, 1.0, 4.0], [0.0, 7.0, 7.0]])
    rule = manual.get("max")
    out, saved = rule.forward_saved(x, dim=1)
    assert out.indices.tolist() == [0, 1]
    g = (torch.ones(2, dtype=torch.float64), None)
    fake = {"indices": torch.tensor([2, 2])}             # a different (wrong) index is obeyed
    assert rule.backward(g, x, dim=1, saved=fake)[0].tolist() == [[0.0, 0.0, 1.0], [0.0, 0.0, 1.0]]
    assert rule.backward(g, x, dim=1)[0].tolist() == [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]


def test_clamp_tensor_bounds_and_keyword_tensors():
    x = _t([0.0, 2.0, -2.0, 0.5])
    lo, hi = _t([0.0, 0.0, 0.0, 1.0]), _t([1.0, 1.0, 1.0, 0.0])     # last: lo > hi, result = hi
    rule = manual.get("clamp")
    grads = rule.all_grads(torch.ones(4, dtype=torch.float64), x, min=lo, max=hi)
    xs, los, his = (t.clone().requires_grad_(True) for t in (x, lo, hi))
    ref = torch.autograd.grad(torch.clamp(xs, min=los, max=his).sum(), (xs, los, his))
    for name, r in zip(("input", "min", "max"), ref):
        torch.testing.assert_close(grads[name], r, rtol=0, atol=0)
    assert grads["max"].tolist() == [0.0, 1.0, 0.0, 1.0]


def test_bad_calls_raise_one_clear_error():
    x = _t([[1.0, 2.0]])
    with pytest.raises(InvalidParameterError, match="clamp: at least one of min and max"):
        manual.get("clamp").backward(torch.ones(1, 2, dtype=torch.float64), x)
    with pytest.raises(InvalidParameterError, match="amax: dim 3 is out of range"):
        manual.get("amax").backward(torch.ones(1, dtype=torch.float64), x, dim=3)
    with pytest.raises(InvalidParameterError, match="var: give either unbiased= or correction="):
        manual.get("var").backward(torch.ones((), dtype=torch.float64), x, unbiased=True, correction=1)
    # a grad_output of the wrong shape would broadcast silently: refused
    with pytest.raises(InvalidInputError, match=r"amax: grad_output has shape \(3,\) but the output has shape \(1,\)"):
        manual.get("amax").backward(torch.ones(3, dtype=torch.float64), x, dim=1)
    with pytest.raises(InvalidInputError, match="max: grad_output entry 0 has shape"):
        manual.get("max").backward((torch.ones(3, dtype=torch.float64), None), x, dim=1)
    with pytest.raises(InvalidInputError, match="clamp: grad_output has shape"):
        manual.get("clamp").backward(torch.ones(1, dtype=torch.float64), x, min=0.0)


# -- planted bugs: the generic check catches each, and passes the correct twin ------------

def _planted(name, wrong):
    return dataclasses.replace(manual.get(name), backward_impl=wrong)


def test_planted_no_split_at_ties_is_caught():
    def no_split(grad_output, input, *, needs_input_grad, dim=(), keepdim=False):
        y = input.amax(dim, keepdim=True)                 # every tied element gets the whole g
        return ((input == y) * (grad_output if keepdim else grad_output.unsqueeze(dim)),)

    ties = _t([[1.0, 3.0, 3.0], [2.0, 0.0, 1.0]])
    distinct = _t([[1.0, 3.0, 2.0], [2.0, 0.0, 1.0]])
    check_backward(manual.get("amax"), (ties,), {"dim": 1})                 # correct twin
    check_backward(_planted("amax", no_split), (distinct,), {"dim": 1})     # right without ties
    with pytest.raises(AssertionError):
        check_backward(_planted("amax", no_split), (ties,), {"dim": 1})


def test_planted_last_max_along_dim_is_caught():
    def last_max(grad_output, input, *, needs_input_grad, dim=None, keepdim=False, saved=None):
        g = grad_output[0].unsqueeze(dim)
        flipped = input.flip(dim)
        idx = input.shape[dim] - 1 - torch.max(flipped, dim, keepdim=True).indices
        pos = torch.arange(input.shape[dim]).reshape([-1 if d == dim else 1 for d in range(input.dim())])
        return (torch.where(pos == idx, g, 0),)

    x = _t([[1.0, 3.0, 3.0, 2.0], [5.0, 1.0, 0.0, 2.0]])
    check_backward(manual.get("max"), (x,), {"dim": 1})
    with pytest.raises(AssertionError):
        check_backward(_planted("max", last_max), (x,), {"dim": 1})


def test_planted_cumprod_by_division_is_caught_at_zeros():
    def divide(grad_output, input, *, needs_input_grad, dim, dtype=None):
        y = input.cumprod(dim)                            # dL/dx_k = sum_{j>=k} g_j y_j / x_k: 0/0 at zeros
        return ((grad_output * y).flip(dim).cumsum(dim).flip(dim) / input,)

    smooth = _t([[2.0, 0.5, 3.0], [1.5, -2.0, 0.7]])
    zeros = _t([[2.0, 0.0, 3.0], [0.0, 0.0, 1.0]])
    check_backward(_planted("cumprod", divide), (smooth,), {"dim": 1})   # right away from zeros
    check_backward(manual.get("cumprod"), (zeros,), {"dim": 1})
    with pytest.raises(AssertionError):
        check_backward(_planted("cumprod", divide), (zeros,), {"dim": 1})


def test_var_with_empty_dim_list_gives_the_true_gradient():
    """torch.var(x, dim=[]) reduces every dim, but torch 2.13's backward then divides by a
    count of 1 - correction (inf gradients); the rule gives the gradient of what was computed."""
    x = _t([[1.0, 2.0], [4.0, 8.0]])
    for name in ("var", "std"):
        (mine,) = manual.get(name).backward(torch.ones((), dtype=torch.float64), x, dim=[])
        torch.testing.assert_close(mine, _autograd(manual.get(name).torch_fn, x), rtol=1e-12, atol=1e-12)


REDUCTION_RULES = ["max", "min", "median", "kthvalue", "amax", "amin", "maximum", "minimum", "logsumexp", "cumsum",
                   "cumprod", "var", "std", "clamp"]


@pytest.mark.parametrize("name", REDUCTION_RULES)
def test_every_alias_computes_what_the_rule_mirrors(name):
    """torch.clip, Tensor.max, torch.special.logsumexp, ...: same call, same result as torch_fn."""
    rule = manual.get(name)
    for sample in rule.samples()[:4]:
        if any(isinstance(v, torch.Tensor) for v in sample.kwargs.values()) and name == "clamp":
            continue                                      # clamp_min takes no max=
        ref = rule.torch_fn(*sample.args, **sample.kwargs)
        for alias in rule.aliases:
            if alias in (torch.clamp_min, torch.Tensor.clamp_min) and (
                    len(sample.args) > 2 or "max" in sample.kwargs or (len(sample.args) < 2 and "min" not in
                                                                       sample.kwargs)):
                continue                                  # clamp_min(x, min) only
            got = alias(*sample.args, **sample.kwargs)
            for r, g in zip(ref if isinstance(ref, tuple) else (ref,), got if isinstance(got, tuple) else (got,)):
                torch.testing.assert_close(g, r, rtol=0, atol=0, equal_nan=True, msg=f"{alias} on {sample.name}")


@pytest.mark.parametrize("name", ["var", "std", "var_mean", "std_mean"])
@pytest.mark.parametrize("unbiased", [True, False])
def test_unbiased_overload_bound_as_dim(name, unbiased):
    """torch.var(x, False) is the var(input, unbiased) overload; a binder that follows the rule's
    signature passes the bool as dim=, and the rule reads it as unbiased."""
    x = _t([[1.0, 2.0, 4.0], [0.5, -1.0, 3.0]])
    rule = manual.get(name)
    ref = _autograd(lambda t: rule.torch_fn(t, unbiased), x)
    out = rule.torch_fn(x, unbiased)
    g = (torch.ones_like(out[0]), None) if isinstance(out, tuple) else torch.ones_like(out)
    (mine,) = rule.backward(g, x, dim=unbiased)
    torch.testing.assert_close(mine, ref, rtol=1e-12, atol=1e-12)
    mine_out = rule.forward(x, dim=unbiased)
    for m, r in zip(mine_out if isinstance(out, tuple) else (mine_out,), out if isinstance(out, tuple) else (out,)):
        torch.testing.assert_close(m, r, rtol=0, atol=0)
