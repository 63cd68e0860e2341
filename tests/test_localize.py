"""localize(): the node whose backward is wrong, with its name and call site; correct twins all pass."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from gradcheck_kit import manual
from gradcheck_kit.localize import NodeResult, localize


class Scale(torch.autograd.Function):
    """y = x * s (s broadcast over channels): dL/dx = g s, dL/ds = sum over broadcast axes of g x."""

    @staticmethod
    def forward(ctx, x, s):
        ctx.save_for_backward(x, s)
        return x * s

    @staticmethod
    def backward(ctx, g):
        x, s = ctx.saved_tensors
        return g * s, (g * x).sum(dim=(0, 2, 3), keepdim=True)


class ScaleWrong(Scale):
    """Planted bug: the gradient with respect to x forgets the factor s."""

    @staticmethod
    def backward(ctx, g):
        x, s = ctx.saved_tensors
        return g, (g * x).sum(dim=(0, 2, 3), keepdim=True)


class NumpySin(torch.autograd.Function):
    """A forward torch cannot see inside (numpy): the reference is finite differences."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return torch.from_numpy(np.sin(x.detach().cpu().numpy())).to(x)

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return g * torch.cos(x)


class NumpySinWrong(NumpySin):
    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return g * torch.sin(x)


def _net(fn):
    def loss(x, w1, s, w2):
        z1 = F.conv2d(x, w1, padding=1)
        a1 = F.relu(z1)
        b1 = fn.apply(a1, s)
        z2 = F.conv2d(b1, w2, stride=2)
        return torch.sum(z2)
    return loss


def _inputs(dtype=torch.float32):
    g = torch.Generator().manual_seed(0)
    r = lambda *s: torch.randn(*s, generator=g).to(dtype)  # noqa: E731
    return dict(x=r(2, 2, 6, 6), w1=r(3, 2, 3, 3), s=r(1, 3, 1, 1), w2=r(2, 3, 3, 3))


def test_wrong_custom_function_is_the_failing_node():
    res = localize(_net(ScaleWrong), _inputs())
    assert [r.op for r in res] == ["conv2d", "relu", "ScaleWrong", "conv2d", "sum"]
    bad = [r for r in res if r.ok is False]
    assert len(bad) == 1 and bad[0].index == 2 and bad[0].op == "ScaleWrong"
    line = _net.__code__.co_firstlineno + 4
    assert bad[0].where == f"test_localize.py:{line}"
    assert bad[0].reference == "rules" and bad[0].input == "x"
    assert "x" in bad[0].hint and bad[0].worst_index is not None and bad[0].max_abs_err > 1e-2
    assert all(r.ok for r in res if r.index != 2)
    d = bad[0].to_dict()
    assert d["op"] == "ScaleWrong" and d["ok"] is False and isinstance(d["worst_index"], list)


def test_correct_custom_function_every_node_passes():
    res = localize(_net(Scale), _inputs())
    assert [r.ok for r in res] == [True] * 5, [str(r) for r in res]
    assert res[2].reference == "rules" and res[2].max_abs_err < 1e-4


def _sin_net(fn):
    def loss(x, w):
        return torch.sum(F.conv2d(fn.apply(x), w))
    return loss


def test_function_without_rules_uses_finite_differences():
    inputs = dict(x=torch.randn(1, 1, 4, 4), w=torch.randn(2, 1, 3, 3))
    good = localize(_sin_net(NumpySin), inputs)
    assert good[0].op == "NumpySin" and good[0].ok is True and good[0].reference == "finite-difference"
    bad = localize(_sin_net(NumpySinWrong), inputs)
    assert bad[0].ok is False and bad[1].ok is True and "x" == bad[0].input


def test_finite_differences_by_random_directions_above_the_limit():
    inputs = dict(x=torch.randn(1, 1, 6, 6, dtype=torch.float64), w=torch.randn(2, 1, 3, 3, dtype=torch.float64))
    good = localize(_sin_net(NumpySin), inputs, fd_limit=10)
    bad = localize(_sin_net(NumpySinWrong), inputs, fd_limit=10)
    assert good[0].ok is True and good[0].reference.startswith("finite-difference (random")
    assert bad[0].ok is False


def test_wrong_rule_is_the_failing_node(monkeypatch):
    rule = manual.get("relu")
    impl = rule.backward_impl
    monkeypatch.setattr(rule, "backward_impl", lambda g, x, **kw: tuple(0.5 * e for e in impl(g, x, **kw)))
    res = localize(_net(Scale), _inputs(torch.float64))
    assert [r.ok for r in res] == [True, False, True, True, True]
    assert res[1].reference == "autograd" and "0.5 times" in res[1].hint


def test_ops_without_rules_are_listed_not_checked():
    res = localize(lambda x: torch.logcumsumexp(x, 0).sum(), {"x": torch.randn(3)})
    assert res[0].ok is None and res[0].op == "torch.logcumsumexp" and "not checked" in res[0].hint
    assert isinstance(res[1], NodeResult) and res[1].ok is True


def test_caller_tensors_untouched_and_batch_norm_buffers():
    rm, rv = torch.zeros(3), torch.ones(3)
    x = torch.randn(4, 3)

    def loss(x):
        return torch.sum(F.batch_norm(x, rm, rv, training=True) ** 2)

    before = x.clone()
    res = localize(loss, {"x": x})
    assert all(r.ok for r in res if r.ok is not None)
    assert torch.equal(x, before)
    # the loss ran once (the recording: running_mean = 0.9 * 0 + 0.1 * mean); checking the
    # batch_norm node again ran on copies, else the buffer would have moved twice
    torch.testing.assert_close(rm, 0.1 * x.mean(0))


@pytest.mark.parametrize("fn", [Scale, ScaleWrong])
def test_seeded_and_reproducible(fn):
    a = [r.to_dict() for r in localize(_net(fn), _inputs(), seed=3)]
    b = [r.to_dict() for r in localize(_net(fn), _inputs(), seed=3)]
    assert a == b


# A Function's apply taken before the recording began (``act = MyRelu.apply`` at import time, or
# passed into a closure) never reaches the class-level patch; it must still be a checked node.
from tests.test_check_engine import _BadRelu, _Relu  # noqa: E402
from tests.test_check_engine import _inputs as _conv_inputs  # noqa: E402

_BAD_RELU = _BadRelu.apply
_RELU = _Relu.apply


def _bound_net(act):
    def loss(x, w):
        h = F.conv2d(x, w, padding=1)
        a = act(h)
        return F.conv2d(a, w, padding=1).pow(2).sum()
    return loss


def test_bound_apply_of_a_wrong_function_is_the_failing_node():
    from gradcheck_kit import check

    rep = check(_bound_net(_BAD_RELU), _conv_inputs(), localize=True)
    bad = rep.first_failing_node
    assert not rep.ok and bad is not None and bad.op == "_BadRelu"
    assert bad.where == f"test_localize.py:{_bound_net.__code__.co_firstlineno + 3}"
    assert [n.op for n in rep.nodes] == ["conv2d", "_BadRelu", "conv2d", "pow", "sum"]


def test_bound_apply_of_a_correct_function_passes():
    from gradcheck_kit import check

    rep = check(_bound_net(_RELU), _conv_inputs(), localize=True)
    assert rep.ok, str(rep)
    assert [(n.op, n.ok) for n in rep.nodes] == [("conv2d", True), ("_Relu", True), ("conv2d", True),
                                                 ("pow", True), ("sum", True)]
