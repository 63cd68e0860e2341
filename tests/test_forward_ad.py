"""check(forward_ad=True): a custom Function's jvp against finite differences and against its backward."""

from __future__ import annotations

import pytest
import torch
from torch.autograd import Function

from gradcheck_kit import check
from gradcheck_kit.modes import ModeError


def _sin_function(jvp_factor):
    class Sin(Function):
        """sin with d/dx sin = cos; ``jvp_factor`` != 1 plants a wrong forward-mode rule."""

        @staticmethod
        def forward(x):
            return x.sin()

        @staticmethod
        def setup_context(ctx, inputs, output):
            ctx.save_for_backward(inputs[0])
            ctx.save_for_forward(inputs[0])

        @staticmethod
        def backward(ctx, g):
            x, = ctx.saved_tensors
            return g * x.cos()

        @staticmethod
        def jvp(ctx, t):
            x, = ctx.saved_tensors
            return jvp_factor * t * x.cos()
    return Sin


def _inputs(dtype=torch.float64):
    g = torch.Generator().manual_seed(0)
    return {"x": torch.randn(5, generator=g, dtype=torch.float64).to(dtype),
            "w": torch.randn(5, generator=g, dtype=torch.float64).to(dtype)}


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_correct_jvp_passes(dtype):
    Sin = _sin_function(1.0)
    rep = check(lambda x, w: Sin.apply(x) * w, _inputs(dtype), forward_ad=True)
    assert rep.ok, str(rep)
    fwd = [r for r in rep.results if r.mode == "forward_ad"]
    assert {(r.name, r.reference) for r in fwd} == {(n, ref) for n in "xw"
                                                    for ref in ("finite-difference", "autograd (reverse mode)")}


@pytest.mark.parametrize("factor", [-1.0, 1.01])
def test_wrong_jvp_fails_naming_the_input(factor):
    Sin = _sin_function(factor)
    rep = check(lambda x, w: Sin.apply(x) * w, _inputs(), forward_ad=True)
    assert not rep.ok
    assert {r.name for r in rep.failures} == {"x"}
    assert {r.reference for r in rep.failures} == {"finite-difference", "autograd (reverse mode)"}
    assert all(r.mode == "forward_ad" for r in rep.failures)
    # without forward_ad the same loss passes: the backward is right
    assert check(lambda x, w: Sin.apply(x) * w, _inputs()).ok


def test_forward_ad_across_a_relu_kink_is_not_a_false_alarm():
    x = torch.tensor([0.0, 1.0, -1.0, 0.0], dtype=torch.float64)
    rep = check(lambda x: torch.relu(x) * torch.arange(1.0, 5.0, dtype=torch.float64), {"x": x}, forward_ad=True)
    assert all(r.ok for r in rep.results if r.mode == "forward_ad"), str(rep)


def test_op_without_forward_derivative_is_one_clear_error():
    with pytest.raises(ModeError, match="forward mode with respect to 'x'") as info:
        check(lambda x: torch.ops.aten.segment_reduce(x, "sum", lengths=torch.tensor([3])),
              {"x": torch.randn(3, dtype=torch.float64)}, forward_ad=True)
    msg = str(info.value)
    assert msg.count(". ") == 0 and msg.endswith("."), msg  # one sentence


def _cos_function(jvp_sign):
    class Cos(Function):
        """cos with backward -g sin x; ``jvp_sign`` = +1 plants a jvp of t sin x instead of -t sin x."""

        @staticmethod
        def forward(x):
            return x.cos()

        @staticmethod
        def setup_context(ctx, inputs, output):
            ctx.save_for_backward(inputs[0])
            ctx.save_for_forward(inputs[0])

        @staticmethod
        def backward(ctx, g):
            x, = ctx.saved_tensors
            return -g * x.sin()

        @staticmethod
        def jvp(ctx, t):
            x, = ctx.saved_tensors
            return jvp_sign * t * x.sin()
    return Cos


@pytest.mark.parametrize("bug", [False, True])
def test_forward_over_reverse(bug):
    """gradgradcheck(check_fwd_over_rev=True): manual's gradient cos(x) w differentiated in forward mode."""
    Cos = _cos_function(1.0 if bug else -1.0)
    rep = check(lambda x, w: (x.sin() * w).sum(), _inputs(), lambda x, w: {"x": Cos.apply(x) * w, "w": x.sin()},
                forward_ad=True, order=2)
    fwd2 = {r.name: r for r in rep.results if r.mode == "forward_ad" and r.order == 2}
    assert set(fwd2) == {"x", "w"} and fwd2["w"].ok
    assert fwd2["x"].ok is not bug, str(rep)
    assert all(r.ok for r in rep.results if r.mode is None)  # reverse over reverse never sees the jvp
