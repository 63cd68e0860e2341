"""linear / matmul / mm / bmm beyond the generic test: the lecture's batch form, every matmul shape case."""

import numpy as np
import pytest
import sympy
import torch

from gradcheck_kit import manual
from gradcheck_kit.errors import InvalidInputError
from gradcheck_kit.manual import _symbolic
from tests.manual._rulecheck import check_backward, check_double_backward

f64 = torch.float64


def rnd(*shape, seed=0):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=f64)


def test_linear_batch_form_of_the_lecture():
    # dL/dx = g W, dL/dW = g^T x, dL/db = sum_n g_n
    x, w, b, g = rnd(4, 3, seed=1), rnd(5, 3, seed=2), rnd(5, seed=3), rnd(4, 5, seed=4)
    gx, gw, gb = manual.get("linear").backward(g, x, w, b)
    torch.testing.assert_close(gx, g @ w)
    torch.testing.assert_close(gw, g.T @ x)
    torch.testing.assert_close(gb, g.sum(0))


def test_linear_nd_sums_weight_gradient_over_batch_dims():
    x, w, g = rnd(2, 3, 4, seed=1), rnd(5, 4, seed=2), rnd(2, 3, 5, seed=3)
    _, gw, gb = manual.get("linear").backward(g, x, w, None)
    torch.testing.assert_close(gw, torch.einsum("bno,bni->oi", g, x))
    assert gb is None


MATMUL_CASES = [
    ((4,), (4,)), ((3, 4), (4,)), ((4,), (4, 5)), ((3, 4), (4, 5)),
    ((2, 3, 4), (4,)), ((4,), (2, 4, 5)), ((2, 3, 4), (4, 5)), ((3, 4), (2, 4, 5)),
    ((2, 1, 3, 4), (5, 4, 2)), ((1, 3, 4), (2, 4, 5)), ((2, 1, 2, 3), (1, 3, 3, 2)),
    ((1,), (1,)), ((1, 4), (3, 1, 4, 1)),
]


@pytest.mark.parametrize("sa,sb", MATMUL_CASES, ids=lambda s: "x".join(map(str, s)) or "scalar")
def test_matmul_shape_cases(sa, sb):
    a, b = rnd(*sa, seed=1), rnd(*sb, seed=2)
    rule = manual.get("matmul")
    out = torch.matmul(a, b)
    ga, gb = rule.backward(torch.ones_like(out), a, b)
    assert ga.shape == a.shape and gb.shape == b.shape
    check_backward(rule, (a, b), {})


def test_matmul_broadcast_batch_is_summed():
    a, b = rnd(3, 4, seed=1), rnd(2, 4, 5, seed=2)           # a is shared by both batch entries
    g = rnd(2, 3, 5, seed=3)
    ga, _ = manual.get("matmul").backward(g, a, b)
    torch.testing.assert_close(ga, (g @ b.mT).sum(0))


def test_bad_input_is_named():
    with pytest.raises(InvalidInputError, match="0-d"):
        manual.get("matmul").backward(rnd(3), torch.tensor(2.0, dtype=f64), rnd(3))
    with pytest.raises(InvalidInputError, match="2-d"):
        manual.get("mm").backward(rnd(2, 2), rnd(2, 2, 2), rnd(2, 2))
    with pytest.raises(InvalidInputError, match="3-d"):
        manual.get("bmm").backward(rnd(2, 2), rnd(2, 2), rnd(2, 2))
    with pytest.raises(InvalidInputError, match="weight"):
        manual.get("linear").backward(rnd(2), rnd(2), rnd(1, 2, 2))


def test_needs_input_grad_skips_weight():
    x, w, b = rnd(4, 3), rnd(5, 3), rnd(5)
    gx, gw, gb = manual.get("linear").backward(rnd(4, 5), x, w, b, needs_input_grad=(True, False, True))
    assert gx is not None and gw is None and gb is not None


def test_symbolic_linear_jacobian_is_the_weight():
    # y = x W^T + b, so dy/dx = W exactly
    w = torch.tensor([[3.0, 2.0], [1.0, -1.0], [0.5, 4.0]], dtype=f64)
    xs = _symbolic.symbols("x", (2,))
    y = manual.get("linear").symbolic(xs, _symbolic.rationals(w), _symbolic.rationals(torch.ones(3)))
    jac = sympy.Matrix([[sympy.diff(e, s) for s in xs] for e in y.flat])
    assert jac == sympy.Matrix(_symbolic.rationals(w).tolist())


@pytest.mark.parametrize("name,sa,sb", [("matmul", (2, 3, 4), (4,)), ("mm", (2, 3), (3, 2)),
                                         ("bmm", (2, 1, 3), (2, 3, 2))])
def test_symbolic_matches_forward(name, sa, sb):
    a, b = rnd(*sa, seed=1), rnd(*sb, seed=2)
    rule = manual.get(name)
    out = rule.symbolic(_symbolic.rationals(a), _symbolic.rationals(b))
    np.testing.assert_allclose(np.array([float(e) for e in out.flat]).reshape(out.shape),
                               rule.forward(a, b).numpy(), rtol=1e-12)


@pytest.mark.cuda
@pytest.mark.parametrize("name", ["linear", "matmul", "mm", "bmm"])
def test_cuda_float64(name):
    rule = manual.get(name)
    for s in rule.samples(device="cuda", dtype=f64):
        check_backward(rule, s.args, s.kwargs)
        check_double_backward(rule, s.args, s.kwargs)
