"""check(batched=True): a Function whose vmap rule is wrong fails; a correct one passes."""

from __future__ import annotations

import pytest
import torch
from torch.autograd import Function

from gradcheck_kit import check
from gradcheck_kit.modes import ModeError


def _center(batch_bug):
    """Center(g) = g - mean(g): linear and self-adjoint, so its backward is Center itself.

    Its ``vmap`` rule must take the mean per batch element; ``batch_bug`` takes it over the
    whole batch (a reduction that forgot the batch dimension).
    """
    class Center(Function):
        @staticmethod
        def forward(g):
            return g - g.mean()

        @staticmethod
        def setup_context(ctx, inputs, output):
            pass

        @staticmethod
        def backward(ctx, g):
            return Center.apply(g)

        @staticmethod
        def jvp(ctx, t):
            return Center.apply(t)

        @staticmethod
        def vmap(info, in_dims, g):
            g = g.movedim(in_dims[0], 0)
            if batch_bug:
                return g - g.mean(), 0
            return g - g.flatten(1).mean(1).view((-1,) + (1,) * (g.dim() - 1)), 0
    return Center


def _inputs():
    g = torch.Generator().manual_seed(0)
    return {"x": torch.randn(2, 3, generator=g, dtype=torch.float64),
            "w": torch.randn(2, 3, generator=g, dtype=torch.float64)}


@pytest.mark.parametrize("bug", [False, True])
def test_loss_backward_under_vmap(bug):
    Center = _center(bug)
    rep = check(lambda x, w: Center.apply(x) * w, _inputs(), batched=True)
    batched = {r.name: r for r in rep.results if r.mode == "batched"}
    assert set(batched) == {"x", "w"} and batched["x"].shape == (3, 2, 3)
    assert batched["w"].ok  # w's gradient does not go through Center's backward
    assert batched["x"].ok is not bug, str(rep)
    assert all(r.ok for r in rep.results if r.mode is None)  # every other check passes either way


@pytest.mark.parametrize("bug", [False, True])
def test_manual_with_grad_output_under_vmap(bug):
    Center = _center(bug)

    def manual(x, w, grad_output=None):
        g = torch.ones_like(x) if grad_output is None else grad_output
        return {"x": Center.apply(g * w), "w": g * Center.apply(x)}
    rep = check(lambda x, w: Center.apply(x) * w, _inputs(), manual, batched=True)
    failed = {r.name for r in rep.failures}
    assert failed == ({"x"} if bug else set()), str(rep)  # Center(x) in w's gradient sees no batch
    assert all(r.subject == "manual (grad_output)" for r in rep.results if r.mode == "batched")


def test_backward_that_cannot_be_vmapped_is_one_clear_error():
    class NoRule(Function):  # old-style Function: functorch cannot vmap it
        @staticmethod
        def forward(ctx, g):
            return 2 * g

        @staticmethod
        def backward(ctx, g):
            return 2 * g

    class Outer(Function):
        @staticmethod
        def forward(ctx, x):
            return x * 3

        @staticmethod
        def backward(ctx, g):
            return NoRule.apply(g) * 1.5

    with pytest.raises(ModeError, match="cannot run under torch.func.vmap") as info:
        check(lambda x: Outer.apply(x), {"x": torch.randn(3, dtype=torch.float64)}, batched=True)
    msg = str(info.value)
    assert msg.count(". ") == 0 and msg.endswith("."), msg  # one sentence


@pytest.mark.parametrize("bug", [False, True])
def test_forward_mode_under_vmap(bug):
    """gradcheck(check_batched_forward_grad=True): Center's jvp is Center of the tangent, batched by its vmap rule."""
    Center = _center(bug)
    rep = check(lambda x, w: Center.apply(x) * w, _inputs(), batched=True, forward_ad=True)
    fwd = {r.name: r for r in rep.results if r.mode == "batched" and r.reference == "per-tangent loop"}
    assert set(fwd) == {"x", "w"} and fwd["w"].ok
    assert fwd["x"].ok is not bug, str(rep)
