"""check(order=N): a bug that shows only in the third derivative is caught; correct chains pass."""

from __future__ import annotations

import pytest
import torch
from torch.autograd import Function

from gradcheck_kit import check
from gradcheck_kit._check_errors import InvalidParameterError


def _manual(third_order_factor):
    """manual gradient of L = sum sin x: g = cos x through Functions whose backwards are Functions too.

    MyCos' backward is -g sin x via MySin, so dg/dx (order 2) is right; MySin's backward is g cos x
    times ``third_order_factor``, which only d^2 g/dx^2 = -cos x (order 3 of L) sees.
    """
    class MySin(Function):
        @staticmethod
        def forward(ctx, x):
            ctx.save_for_backward(x)
            return x.sin()

        @staticmethod
        def backward(ctx, g):
            x, = ctx.saved_tensors
            return g * x.cos() * third_order_factor

    class MyCos(Function):
        @staticmethod
        def forward(ctx, x):
            ctx.save_for_backward(x)
            return x.cos()

        @staticmethod
        def backward(ctx, g):
            x, = ctx.saved_tensors
            return -g * MySin.apply(x)

    return lambda x: {"x": MyCos.apply(x)}


def loss(x):
    return x.sin().sum()


X = {"x": torch.linspace(-1.5, 2.0, 5, dtype=torch.float64)}


@pytest.mark.parametrize("order", [3, 4])
def test_correct_chain_passes_every_order(order):
    rep = check(loss, X, _manual(1.0), order=order)
    assert rep.ok, str(rep)
    assert {r.order for r in rep.results} == set(range(1, order + 1))


def test_third_order_bug_passes_order_2_and_fails_order_3():
    manual = _manual(1.5)
    assert check(loss, X, manual, double_backward=True).ok
    assert check(loss, X, manual, order=2).ok  # order=2 is double_backward=True
    rep = check(loss, X, manual, order=3)
    assert {(r.order, r.reference) for r in rep.failures} == {(3, "autograd"), (3, "finite-difference")}
    assert all(r.mode == "order" for r in rep.failures)


def test_autograd_alone_up_to_order_4_in_float32():
    x = {"x": torch.tensor([0.3, -0.7, 1.1]), "w": torch.tensor([0.5, 2.0, -1.0])}
    rep = check(lambda x, w: (x.sin() * w).sum() + (x * w).pow(4).sum(), x, order=4)
    assert rep.ok, str(rep)
    assert {r.order for r in rep.results if r.mode == "order"} == {3, 4}


@pytest.mark.parametrize("order", [0, -1, 2.5, True])
def test_order_must_be_a_positive_integer(order):
    with pytest.raises(InvalidParameterError, match="order="):
        check(loss, X, order=order)


def test_manual_that_only_runs_in_its_own_dtype_is_checked_there():
    def manual(x):
        assert x.dtype == torch.float32, "this manual only supports float32"
        return {"x": x.cos()}
    x = {"x": torch.tensor([0.3, -0.7, 1.1])}
    assert check(loss, x, manual, order=3).ok
    rep = check(loss, x, lambda x: {"x": manual(x)["x"] + 0.1 * x ** 3}, order=3)  # d^2/dx^2 off by 0.6x
    assert (3, "autograd") in {(r.order, r.reference) for r in rep.failures}
