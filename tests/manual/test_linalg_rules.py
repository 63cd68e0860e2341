"""The linalg family (gradcheck_kit/manual/linalg.py) beyond the generic registry test: every
spelling routed by ``use_rules(strict=True)``, torch's subgradient conventions at zeros and ties,
non-finite inputs against torch, and one clear error for bad input."""

import math

import pytest
import torch
import torch.nn.functional as F

from gradcheck_kit import manual
from gradcheck_kit.errors import GradcheckKitError, InvalidInputError, InvalidParameterError, UnsupportedError
from gradcheck_kit.manual import use_rules
from tests.manual._rulecheck import check_backward, check_double_backward

INF, NAN = float("inf"), float("nan")


def _leaves(*shapes, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=gen, dtype=torch.float64).requires_grad_() for s in shapes]


def _spellings():
    """(name, shapes, call, rule): each call written as a model would write it."""
    return [
        ("torch.addmm", [(4,), (3, 2), (2, 4)], lambda i, a, b: torch.addmm(i, a, b, beta=0.5, alpha=2), "addmm"),
        ("Tensor.addmm", [(3, 4), (3, 2), (2, 4)], lambda i, a, b: i.addmm(a, b, alpha=-1), "addmm"),
        ("torch.addmv", [(3,), (3, 2), (2,)], lambda i, a, b: torch.addmv(i, a, b), "addmv"),
        ("Tensor.addmv", [(3,), (3, 2), (2,)], lambda i, a, b: i.addmv(a, b, beta=2), "addmv"),
        ("torch.baddbmm", [(2, 3, 4), (2, 3, 2), (2, 2, 4)], lambda i, a, b: torch.baddbmm(i, a, b), "baddbmm"),
        ("Tensor.baddbmm", [(3, 4), (2, 3, 2), (2, 2, 4)], lambda i, a, b: i.baddbmm(a, b, beta=0.5), "baddbmm"),
        ("torch.addbmm", [(3, 4), (2, 3, 2), (2, 2, 4)], lambda i, a, b: torch.addbmm(i, a, b), "addbmm"),
        ("Tensor.addbmm", [(4,), (2, 3, 2), (2, 2, 4)], lambda i, a, b: i.addbmm(a, b, alpha=3), "addbmm"),
        ("torch.mv", [(3, 2), (2,)], lambda a, b: torch.mv(a, b), "mv"),
        ("Tensor.mv", [(3, 2), (2,)], lambda a, b: a.mv(b), "mv"),
        ("torch.outer", [(3,), (2,)], lambda a, b: torch.outer(a, b), "outer"),
        ("torch.ger", [(3,), (2,)], lambda a, b: torch.ger(a, b), "outer"),
        ("Tensor.outer", [(3,), (2,)], lambda a, b: a.outer(b), "outer"),
        ("Tensor.ger", [(3,), (2,)], lambda a, b: a.ger(b), "outer"),
        ("vector_norm", [(3, 4)], lambda x: torch.linalg.vector_norm(x), "vector_norm"),
        ("vector_norm positional", [(3, 4)], lambda x: torch.linalg.vector_norm(x, 3, 1, True), "vector_norm"),
        ("vector_norm inf", [(3, 4)], lambda x: torch.linalg.vector_norm(x, ord=INF, dim=(0, 1)), "vector_norm"),
        ("linalg.norm", [(3, 4)], lambda x: torch.linalg.norm(x), "linalg_norm"),
        ("linalg.norm positional", [(3, 4)], lambda x: torch.linalg.norm(x, 1, (1, 0)), "linalg_norm"),
        ("linalg.norm ord=2", [(3, 4)], lambda x: torch.linalg.norm(x, 2), "linalg_norm"),
        ("linalg.norm fro", [(2, 3, 4)], lambda x: torch.linalg.norm(x, "fro", dim=(1, 2)), "linalg_norm"),
        ("matrix_norm", [(2, 3, 4)], lambda x: torch.linalg.matrix_norm(x), "matrix_norm"),
        ("matrix_norm positional", [(2, 3, 4)], lambda x: torch.linalg.matrix_norm(x, 1, (0, 2), True),
         "matrix_norm"),
        ("torch.dist", [(3, 4), (4,)], lambda a, b: torch.dist(a, b), "dist"),
        ("Tensor.dist", [(3, 4), (3, 4)], lambda a, b: a.dist(b, 3), "dist"),
        ("F.pairwise_distance", [(3, 4), (4,)], lambda a, b: F.pairwise_distance(a, b, 3.0, 0.0, True),
         "pairwise_distance"),
        ("nn.PairwiseDistance", [(3, 4), (3, 4)], lambda a, b: torch.nn.PairwiseDistance(p=1.0)(a, b),
         "pairwise_distance"),
        ("torch.prod", [(3, 4)], lambda x: torch.prod(x), "prod"),
        ("Tensor.prod dim", [(3, 4)], lambda x: x.prod(1), "prod"),
        ("Tensor.prod keepdim", [(3, 4)], lambda x: x.prod(0, True), "prod"),
        ("torch.prod dim kw", [(3, 4)], lambda x: torch.prod(x, dim=-1, keepdim=False), "prod"),
        ("torch.topk", [(3, 5)], lambda x: torch.topk(x, 2), "topk"),
        ("Tensor.topk positional", [(3, 5)], lambda x: x.topk(2, 0, False, True).values, "topk"),
        ("torch.sort", [(3, 5)], lambda x: torch.sort(x, 0, True), "sort"),
        ("Tensor.sort stable", [(3, 5)], lambda x: x.sort(stable=True, descending=True).values, "sort"),
    ]


def _first(out):
    return out[0] if isinstance(out, tuple) else out


@pytest.mark.parametrize("name,shapes,call,rule", _spellings(), ids=[s[0] for s in _spellings()])
def test_use_rules_strict_routes_every_spelling(name, shapes, call, rule):
    leaves = _leaves(*shapes)
    with use_rules(strict=True) as session:
        y = _first(call(*leaves))
    assert session.ops == [rule] and not session.missing
    assert y.grad_fn.name() == "_RuleFunctionBackward"
    ref = _first(call(*leaves))
    torch.testing.assert_close(y, ref)
    g = torch.randn(y.shape, generator=torch.Generator().manual_seed(3), dtype=y.dtype)
    mine = torch.autograd.grad(y, leaves, g, create_graph=True)
    want = torch.autograd.grad(ref, leaves, g, create_graph=True)
    for m, w in zip(mine, want):
        torch.testing.assert_close(m, w, rtol=1e-10, atol=1e-12)
    # second order through the rule's backward
    v = [torch.randn(l.shape, generator=torch.Generator().manual_seed(4), dtype=l.dtype) for l in leaves]
    s_m = sum((m * vi).sum() for m, vi in zip(mine, v))
    s_w = sum((w * vi).sum() for w, vi in zip(want, v))
    if s_w.requires_grad:
        for a, b in zip(torch.autograd.grad(s_m, leaves, allow_unused=True),
                        torch.autograd.grad(s_w, leaves, allow_unused=True)):
            if b is None:
                assert a is None or not a.ne(0).any()
            else:
                torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


# -- subgradient conventions -------------------------------------------------------------------

def _grad(rule, x, g=None, **kw):
    out = manual.get(rule).forward(x, **kw)
    out = _first(out)
    g = torch.ones_like(out) if g is None else g
    go = (g, None) if isinstance(manual.get(rule).forward(x, **kw), tuple) else g
    (got,) = manual.get(rule).backward(go, x, **kw)
    xl = x.clone().requires_grad_()
    (want,) = torch.autograd.grad(_first(manual.get(rule).torch_fn(xl, **kw)), xl, g, allow_unused=True)
    want = torch.zeros_like(x) if want is None else want      # vector_norm(ord=0): no graph
    return got, want


def test_vector_norm_at_zero_gives_zero_like_torch():
    x = torch.tensor([[0.0, 0.0, 0.0], [3.0, 0.0, -4.0]], dtype=torch.float64)
    for ord_ in (2, 3, 1.5, 1, 0.5, -1, 0, INF, -INF):
        got, want = _grad("vector_norm", x, ord=ord_, dim=1)
        torch.testing.assert_close(got, want, equal_nan=True, msg=f"ord={ord_}")
    got, _ = _grad("vector_norm", x, ord=2, dim=1)
    assert torch.equal(got[0], torch.zeros(3, dtype=torch.float64))
    torch.testing.assert_close(got[1], torch.tensor([0.6, 0.0, -0.8], dtype=torch.float64))


def test_vector_norm_inf_ties_split_evenly_as_torch():
    x = torch.tensor([[2.0, -2.0, 1.0, 2.0]], dtype=torch.float64)
    got, want = _grad("vector_norm", x, ord=INF, dim=1)
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(got, torch.tensor([[1 / 3, -1 / 3, 0.0, 1 / 3]], dtype=torch.float64))
    got, want = _grad("vector_norm", x, ord=-INF)          # the single smallest |x| takes all
    torch.testing.assert_close(got, want)
    assert got[0, 2] == 1 and got.abs().sum() == 1


def test_pairwise_distance_0d_overflows_as_torch_norm():
    # torch computes a 0-d distance as sqrt(d^2): inf for d = 1e300, and then a gradient d / inf = 0
    a, b = torch.tensor(1e300, dtype=torch.float64), torch.tensor(0.5, dtype=torch.float64)
    check_backward(manual.get("pairwise_distance"), (a, b), {})


def test_pairwise_distance_of_equal_points_gives_zero_like_torch():
    rule = manual.get("pairwise_distance")
    x = torch.tensor([[1.0, 2.0], [3.0, -1.0]], dtype=torch.float64)
    y = torch.tensor([[1.0, 2.0], [0.0, 3.0]], dtype=torch.float64)
    for p in (2.0, 3.0, 1.0, INF, 0.5):
        check_backward(rule, (x, y), {"p": p, "eps": 0.0})
    g1, g2 = rule.backward(torch.ones(2, dtype=torch.float64), x, y, eps=0.0)
    assert torch.equal(g1[0], torch.zeros(2, dtype=torch.float64)) and torch.equal(g2, -g1)


def test_prod_with_zeros_matches_torch_first_and_second_order():
    one = torch.tensor([2.0, 0.0, -1.5, 3.0], dtype=torch.float64)
    got, want = _grad("prod", one)
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(got, torch.tensor([0.0, -9.0, 0.0, 0.0], dtype=torch.float64))
    two = torch.tensor([[2.0, 0.0, 0.0], [1.0, 0.0, 4.0]], dtype=torch.float64)
    for kw in ({}, {"dim": 1}, {"dim": 0, "keepdim": True}):
        got, want = _grad("prod", two, **kw)
        torch.testing.assert_close(got, want)
        check_double_backward(manual.get("prod"), (two,), kw)
    assert torch.equal(_grad("prod", two)[0], torch.zeros_like(two))
    # two zeros and an inf: torch's full reduction gives 0 at first order (grad mode off) but the
    # exclusive products (NaN where inf * 0) when differentiating further; the rule does the same
    inf = torch.tensor([INF, 0.0, 2.0, 0.0], dtype=torch.float64)
    xl = inf.clone().requires_grad_()
    (first,) = torch.autograd.grad(xl.prod(), xl)
    (graph,) = torch.autograd.grad(xl.prod(), xl, create_graph=True)
    rule = manual.get("prod")
    with torch.no_grad():
        torch.testing.assert_close(rule.backward(torch.tensor(1.0, dtype=torch.float64), inf)[0], first)
    torch.testing.assert_close(rule.backward(torch.tensor(1.0, dtype=torch.float64), inf)[0], graph.detach(),
                               equal_nan=True)
    assert graph.isnan().any()


def test_topk_and_sort_ties_follow_torch_kernel():
    x = torch.tensor([[1.0, 3.0, 3.0, 3.0, 0.0, 3.0]], dtype=torch.float64)
    g = torch.tensor([[10.0, 20.0]], dtype=torch.float64)
    for kw in ({"k": 2}, {"k": 2, "sorted": False}, {"k": 2, "largest": False}):
        got, want = _grad("topk", x, g, **kw)
        torch.testing.assert_close(got, want)
    g6 = torch.arange(6, dtype=torch.float64).reshape(1, 6)
    for kw in ({}, {"stable": True}, {"descending": True, "stable": True}, {"descending": True}):
        got, want = _grad("sort", x, g6, **kw)
        torch.testing.assert_close(got, want)


# -- non-finite inputs against torch --------------------------------------------------------------

_NONFINITE_RULES = ("addmm", "addmv", "baddbmm", "addbmm", "mv", "outer", "vector_norm", "linalg_norm",
                    "matrix_norm", "dist", "pairwise_distance", "prod", "topk", "sort")


def _nonfinite_cases():
    for name in _NONFINITE_RULES:
        rule = manual.get(name)
        for sample in rule.samples():
            for v in (NAN, INF, -INF, 1e300):
                yield pytest.param(rule, sample, v, id=f"{sample.name}-{v:g}")


@pytest.mark.parametrize("rule,sample,value", list(_nonfinite_cases()))
def test_nonfinite_inputs_match_torch(rule, sample, value):
    mask = rule.differentiable_mask(sample.args)
    for i, m in enumerate(mask):
        if not m or not sample.args[i].numel():
            continue
        args = [a.clone() if isinstance(a, torch.Tensor) else a for a in sample.args]
        args[i].reshape(-1)[0] = value
        leaves = [a.clone().requires_grad_(k) if isinstance(a, torch.Tensor) else a for a, k in zip(args, mask)]
        try:
            out = _first(rule.torch_fn(*leaves, **sample.kwargs))
        except RuntimeError:            # torch rejects it (an SVD of NaN); so does the rule, clearly
            with pytest.raises(InvalidInputError, match="does not converge"):
                shape = _first(rule.torch_fn(*sample.args, **sample.kwargs)).shape
                rule.backward(torch.ones(shape, dtype=torch.float64), *args, **sample.kwargs)
            continue
        g = torch.randn(out.shape, generator=torch.Generator().manual_seed(1), dtype=out.dtype)
        ref = torch.autograd.grad(out, [l for l, k in zip(leaves, mask) if k], g, allow_unused=True)
        full = rule.forward(*args, **sample.kwargs)
        go = (g, None) if isinstance(full, tuple) else g
        with torch.no_grad():     # a first-order backward, as autograd.grad runs torch's above
            mine = [m_ for m_, k in zip(rule.backward(go, *args, **sample.kwargs), mask) if k]
        for got, want in zip(mine, ref):
            want = torch.zeros_like(got) if want is None else want
            finite = want[want.isfinite()]
            scale = float(finite.abs().max()) if finite.numel() else 1.0
            torch.testing.assert_close(got, want, equal_nan=True, rtol=1e-8, atol=1e-10 * scale,
                                       msg=lambda m: f"{rule.name} arg {i} with {value}: {m}")


# -- errors ---------------------------------------------------------------------------------------

def _raises(kind, rule, g, *args, **kw):
    with pytest.raises(kind) as info:
        manual.get(rule).backward(g, *args, **kw)
    assert isinstance(info.value, GradcheckKitError) and "\n" not in str(info.value)
    return str(info.value)


def test_bad_inputs_raise_one_clear_error():
    a, b = torch.randn(3, 2, dtype=torch.float64), torch.randn(3, 4, dtype=torch.float64)
    assert "mat1 has 2 columns but mat2 has 3 rows" in _raises(InvalidInputError, "addmm", torch.ones(3, 4), b, a, a)
    assert "does not broadcast" in _raises(InvalidInputError, "addmm", torch.ones(3, 4), torch.ones(5),
                                           a, torch.ones(2, 4))
    assert "grad_output has shape" in _raises(InvalidInputError, "addmm", torch.ones(4, 3), b, a, torch.ones(2, 4))
    assert "beta must be a number" in _raises(InvalidParameterError, "addmm", torch.ones(3, 4), b, a,
                                              torch.ones(2, 4), beta="x")
    assert "must be 1-d" in _raises(InvalidInputError, "outer", torch.ones(3, 4), b, torch.ones(4))
    assert "same number of matrices" in _raises(InvalidInputError, "baddbmm", torch.ones(2, 3, 4),
                                                torch.ones(2, 3, 4), torch.ones(2, 3, 2), torch.ones(3, 2, 4))
    assert "ord must be a number" in _raises(InvalidParameterError, "vector_norm", torch.ones(()), b, ord="fro")
    assert "dim must name two dims" in _raises(InvalidParameterError, "matrix_norm", torch.ones(3), b, dim=0)
    assert "at least 2 dims" in _raises(InvalidInputError, "matrix_norm", torch.ones(()), torch.ones(3))
    assert "do not broadcast" in _raises(InvalidInputError, "dist", torch.ones(()), b, torch.ones(3))
    assert "matrix norm takes ord" in _raises(InvalidParameterError, "linalg_norm", torch.ones(()), b, ord=3)
    assert "no symbolic forward" in str(pytest.raises(UnsupportedError, manual.get("vector_norm").symbolic,
                                                      b.numpy().astype(object), ord=INF).value)
    assert "1-d or 2-d" in _raises(InvalidParameterError, "linalg_norm", torch.ones(()), torch.ones(2, 3, 4), ord=1)
    assert "dim must be one int" in _raises(InvalidParameterError, "prod", torch.ones(3), b, dim=(0,))
    assert "k must be an int" in _raises(InvalidParameterError, "topk", (torch.ones(3, 9), None), b, k=9)
    assert "out of range" in _raises(InvalidParameterError, "sort", (torch.ones(3, 4), None), b, dim=2)


def test_generic_checks_on_extra_samples():
    # a zero row for ord = 2 and a full-reduction inf norm of a 0-d, first order
    z = torch.tensor([[0.0, 0.0], [1.0, -2.0]], dtype=torch.float64)
    check_backward(manual.get("vector_norm"), (z,), {"dim": 1})
    check_backward(manual.get("linalg_norm"), (z,), {"ord": INF})
    assert not math.isnan(float(manual.get("vector_norm").backward(torch.ones(2, dtype=torch.float64), z,
                                                                   dim=1)[0].sum()))
