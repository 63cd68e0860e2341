"""functional.<rule> for every rule x sample: forward, first and second derivatives equal autograd's (float64)."""

import pytest
import torch

from gradcheck_kit import manual
from gradcheck_kit.errors import UnsupportedError
from gradcheck_kit.manual import functional as MF
from gradcheck_kit.trace import _binding_signature
from tests.manual._rulecheck import TORCH_FLOAT64_RTOL, _close


def _cases():
    for rule in manual.rules():
        for sample in rule.samples(dtype=torch.float64):
            yield pytest.param(rule, sample, id=f"{rule.name}-{sample.name}")


def _is_float(t):
    return isinstance(t, torch.Tensor) and t.is_floating_point()


def _prepare(rule, sample):
    """(positional args by name, kwargs, leaves): every differentiable tensor a fresh leaf."""
    leaves = []

    def leaf(t, differentiable):
        if not isinstance(t, torch.Tensor):
            return t
        c = t.detach().clone(memory_format=torch.preserve_format)
        if differentiable and _is_float(c):
            c.requires_grad_(True)
            leaves.append(c)
        return c

    named = {}
    for name, a in zip(rule.tensor_args, sample.args):
        diff = name not in rule.nondifferentiable
        named[name] = type(a)(leaf(e, diff) for e in a) if rule.is_sequence_arg(name, a) else leaf(a, diff)
    kwargs = {k: leaf(v, k in rule.keyword_tensors and k not in rule.nondifferentiable)
              for k, v in sample.kwargs.items()}
    return named, kwargs, leaves


def _outs(out):
    return tuple(out) if isinstance(out, (tuple, list)) else (out,)


def _grads(rule, sample, use_functional, order):
    named, kwargs, leaves = _prepare(rule, sample)
    torch.manual_seed(0)
    if use_functional:
        sig = _binding_signature(rule.mirrors, rule)[0]
        if tuple(sig.parameters)[: len(named)] == tuple(named):   # torch's order: positionally
            out = getattr(MF, rule.name)(*named.values(), **kwargs)
        else:                                                     # e.g. layer_norm(input, normalized_shape, ...)
            out = getattr(MF, rule.name)(**named, **kwargs)
    else:
        out = rule.torch_fn(*named.values(), **kwargs)
    outs = [o for o in _outs(out) if _is_float(o) and o.requires_grad]
    gen = torch.Generator().manual_seed(1)
    gs = [torch.randn(o.shape, generator=gen, dtype=o.dtype).requires_grad_(order == 2) for o in outs]
    first = torch.autograd.grad(outs, leaves, gs, create_graph=order == 2, allow_unused=True)
    if order == 1:
        return out, first
    vs = [torch.randn(lf.shape, generator=gen, dtype=lf.dtype) for lf in leaves]
    s = sum(((g * v).sum() for g, v in zip(first, vs) if g is not None and g.requires_grad),
            torch.zeros((), dtype=torch.float64))
    if not s.requires_grad:
        return out, [None] * (len(leaves) + len(gs))
    return out, torch.autograd.grad(s, leaves + gs, allow_unused=True)


@pytest.mark.parametrize("rule,sample", list(_cases()))
def test_functional_matches_autograd(rule, sample):
    if not any(rule.differentiable_mask(sample.args)) and not any(
            _is_float(sample.kwargs.get(k)) for k in rule.keyword_tensors):
        pytest.skip("no differentiable argument")
    mine_out, mine = _grads(rule, sample, True, 1)
    ref_out, ref = _grads(rule, sample, False, 1)
    for m, r in zip(_outs(mine_out), _outs(ref_out)):
        if isinstance(r, torch.Tensor):
            _close(m, r, r.dtype, f"functional.{rule.name} forward")
    rtol = TORCH_FLOAT64_RTOL.get(rule.name)   # where torch's own float64 backward is less precise
    for i, (m, r) in enumerate(zip(mine, ref)):
        _close(m, r, torch.float64, f"functional.{rule.name} first derivative, leaf {i}", rtol=rtol)
    if rule.differentiable_backward:
        try:
            _, ref2 = _grads(rule, sample, False, 2)
        except RuntimeError as e:   # hardsigmoid: torch has no double backward to compare with
            if "not implemented" not in str(e):
                raise
            return
        _, mine2 = _grads(rule, sample, True, 2)
        for i, (m, r) in enumerate(zip(mine2, ref2)):
            _close(m, r, torch.float64, f"functional.{rule.name} second derivative, leaf {i}", rtol=rtol)


def test_every_rule_has_a_function_with_torch_signature():
    for name in manual.names():
        f = getattr(MF, name)
        assert f.__name__ == name and callable(f)
    x, w, b = torch.randn(1, 2, 5, 5), torch.randn(3, 2, 3, 3), torch.randn(3)
    torch.testing.assert_close(MF.conv2d(x, w, b, 2, 1), torch.nn.functional.conv2d(x, w, b, 2, 1))
    with pytest.raises(AttributeError, match="no rule"):
        MF.not_a_rule


def test_planted_wrong_rule_is_seen_through_functional(monkeypatch):
    """A wrong rule backward gives a wrong functional gradient (the Function really uses the rule)."""
    rule = manual.get("relu")
    impl = rule.backward_impl

    def wrong(grad_output, input, **kw):
        (g,) = impl(grad_output, input, **kw)
        return (2 * g,)

    x = torch.randn(5, dtype=torch.float64, requires_grad=True)
    monkeypatch.setattr(rule, "backward_impl", wrong)
    (gx,) = torch.autograd.grad(MF.relu(x).sum(), x)
    torch.testing.assert_close(gx, 2.0 * (x > 0).double())


def test_third_derivative_and_no_weight_gradients():
    x = torch.randn(1, 1, 5, 5, dtype=torch.float64, requires_grad=True)
    w = torch.randn(1, 1, 3, 3, dtype=torch.float64, requires_grad=True)

    def third(conv):
        y = torch.tanh(conv(x, w, padding=1)).sum()
        (g,) = torch.autograd.grad(y, x, create_graph=True)
        (h,) = torch.autograd.grad(g.sum(), x, create_graph=True)
        return torch.autograd.grad((h * h).sum(), (x, w))

    for m, r in zip(third(MF.conv2d), third(torch.nn.functional.conv2d)):
        torch.testing.assert_close(m, r)
    y = MF.conv2d(x, w, padding=1)
    with MF.no_weight_gradients():
        gx, gw = torch.autograd.grad(y.sum(), (x, w), allow_unused=True)
    assert gw is None and gx is not None
    gx2, gw2 = torch.autograd.grad(MF.conv2d(x, w, padding=1).sum(), (x, w))
    torch.testing.assert_close(gx, gx2)
    assert gw2 is not None


def test_undifferentiated_argument_requiring_grad_refuses():
    """batch_norm's rule does not differentiate running_mean; autograd would in eval mode: refuse."""
    x = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    rm, rv = torch.zeros(4, dtype=torch.float64, requires_grad=True), torch.ones(4, dtype=torch.float64)
    with pytest.raises(UnsupportedError, match="running_mean"):
        MF.batch_norm(x, rm, rv)
    MF.batch_norm(x, rm.detach(), rv)   # the correct twin: nothing undifferentiated requires grad


def _stands_in(rule) -> bool:
    s = rule.samples(dtype=torch.float64)[0]
    return set(rule.forward_saved(*s.args, **s.kwargs)[1]) & set(rule.tensor_args) != set()


def _saved_cases():
    for rule in manual.rules():
        if rule.save_impl is None or not _stands_in(rule):
            continue
        for sample in rule.samples(dtype=torch.float64):
            yield pytest.param(rule, sample, id=f"{rule.name}-{sample.name}")


@pytest.mark.parametrize("rule,sample", list(_saved_cases()))
def test_saved_stand_ins_give_the_same_backward(rule, sample):
    """A saved entry named like a tensor argument (relu: {"input": y}) replaces that argument in
    functional's backward: the rule's backward must be the same at the stand-in."""
    torch.manual_seed(0)
    out, saved = rule.forward_saved(*sample.args, **sample.kwargs)
    subs = {i: saved[n] for i, n in enumerate(rule.tensor_args[: len(sample.args)])
            if isinstance(saved.get(n), torch.Tensor)}
    if not subs:
        pytest.skip("no stand-in saved")
    o = out[0] if isinstance(out, tuple) else out
    g = torch.randn(o.shape, generator=torch.Generator().manual_seed(1), dtype=o.dtype)
    g = (g,) + (None,) * (len(out) - 1) if isinstance(out, tuple) else g
    args = list(sample.args)
    stood = [subs.get(i, a) for i, a in enumerate(args)]
    torch.manual_seed(0)
    ref = rule.backward(g, *args, **sample.kwargs)
    torch.manual_seed(0)
    got = rule.backward(g, *stood, **sample.kwargs)
    for m, r in zip(got, ref):
        _close(m, r, torch.float64, f"{rule.name}: backward at the saved stand-in")


def test_planted_false_stand_in_is_caught(monkeypatch):
    """The correct twin above passes for relu; a stand-in that is not equivalent (tanh's output for
    its input) must be caught by the same comparison."""
    rule = manual.get("tanh")
    monkeypatch.setattr(rule, "save_impl", lambda input: (torch.tanh(input), {"input": torch.tanh(input)}))
    sample = rule.samples(dtype=torch.float64)[0]
    with pytest.raises(AssertionError, match="stand-in"):
        test_saved_stand_ins_give_the_same_backward(rule, sample)


def test_in_place_relu_keeps_no_copy_and_differentiates_twice():
    x = torch.randn(6, dtype=torch.float64, requires_grad=True)
    h = x * 1.5
    y = MF.relu(h, inplace=True)
    assert y is h and y.grad_fn.name() == "_RuleFunctionBackward"
    (gx,) = torch.autograd.grad((y ** 2).sum(), x, create_graph=True)
    (hx,) = torch.autograd.grad(gx.sum(), x)
    mask = (x.detach() > 0).double()
    torch.testing.assert_close(gx, 2 * 1.5 * 1.5 * x.detach() * mask)
    torch.testing.assert_close(hx, 2 * 1.5 * 1.5 * mask)
