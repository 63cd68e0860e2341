"""check() wired to the rule engine: manual="rules" as the subject, localize=True naming the wrong node."""

import pytest
import torch
import torch.nn.functional as F

from gradcheck_kit import GradcheckKitError, check


class _Relu(torch.autograd.Function):
    """A custom ReLU with a correct backward."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x.clamp_min(0)

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return g * (x > 0)


class _BadRelu(_Relu):
    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return -g * (x > 0)


def _net(act):
    """conv -> act -> conv; ``act`` a torch function or a Function class (applied inside the loss)."""
    def loss(x, w):
        h = F.conv2d(x, w, padding=1)
        a = act.apply(h) if isinstance(act, type) else act(h)
        return F.conv2d(a, w, padding=1).pow(2).sum()
    return loss


def _inputs():
    g = torch.Generator().manual_seed(0)
    return {"x": torch.randn(1, 2, 5, 5, generator=g, dtype=torch.float64),
            "w": torch.randn(2, 2, 3, 3, generator=g, dtype=torch.float64)}


def test_localize_names_the_custom_function_with_the_wrong_backward():
    rep = check(_net(_BadRelu), _inputs(), localize=True)
    bad = rep.first_failing_node
    assert not rep.ok and bad is not None
    assert bad.op == "_BadRelu" and "test_check_engine.py" in bad.where
    assert [n.ok for n in rep.nodes[:bad.index]] == [True] * bad.index  # everything before it agrees
    assert "first failing node" in str(rep) and "_BadRelu" in rep.failure_message()
    assert rep.to_dict()["nodes"][bad.index]["ok"] is False


def test_localize_passes_every_node_of_a_correct_custom_function():
    rep = check(_net(_Relu), _inputs(), localize=True)
    assert rep.ok, str(rep)
    assert rep.first_failing_node is None
    assert any(n.op == "_Relu" and n.ok for n in rep.nodes)


def test_rules_subject_agrees_with_autograd_first_and_second_order():
    rep = check(_net(F.relu), _inputs(), manual="rules", reference="both", double_backward=True)
    assert rep.ok, str(rep)
    assert any("rule engine" in n for n in rep.notes)


def test_rules_subject_with_an_op_without_rule_is_an_error_naming_it():
    def loss(x, w):
        return torch.special.erfcx(F.conv2d(x, w, padding=1)).sum()
    with pytest.raises(GradcheckKitError, match="erfcx"):
        check(loss, _inputs(), manual="rules")


def test_unknown_manual_string_is_one_clear_error():
    with pytest.raises(GradcheckKitError, match="'rules'"):
        check(_net(F.relu), _inputs(), manual="rule")


# -- a loss that autograd cannot differentiate twice (torch has no double backward for hardsigmoid) --

def _hardsigmoid_case():
    from gradcheck_kit import manual

    rule = manual.get("hardsigmoid")
    x = torch.linspace(-4, 4, 13, dtype=torch.float64) + 0.01
    loss = lambda x: (F.hardsigmoid(x) * x).sum()  # noqa: E731

    def grads(x, bug=1.0):
        hs = rule.forward(x)
        (d,) = rule.backward(x, x)   # d/dx hardsigmoid(x) * x  =  x h'(x) + h(x)
        return {"x": d + bug * hs}
    return loss, {"x": x}, grads


def test_no_double_backward_in_torch_checks_second_order_against_fd_and_says_so():
    loss, inputs, grads = _hardsigmoid_case()
    rep = check(loss, inputs, grads, reference="both", double_backward=True)
    assert rep.ok, str(rep)
    assert any(r.order == 2 and r.reference == "finite-difference" for r in rep.results)
    assert any("cannot differentiate this loss twice" in n for n in rep.notes)
    wrong = check(loss, inputs, lambda x: grads(x, bug=0.0), reference="both", double_backward=True)
    assert not wrong.ok  # the planted bug (a dropped term) still fails


def test_no_double_backward_in_torch_with_autograd_alone_is_one_clear_error():
    loss, inputs, grads = _hardsigmoid_case()
    with pytest.raises(GradcheckKitError, match="cannot differentiate this loss twice.*reference='fd'"):
        check(loss, inputs, grads, double_backward=True)
