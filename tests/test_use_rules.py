"""use_rules(): an unmodified model runs on the explicit rules; gradients equal plain autograd's."""

import copy
import threading

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from gradcheck_kit import manual
from gradcheck_kit.errors import GradcheckKitError, MissingRuleError
from gradcheck_kit.manual import use_rules
from gradcheck_kit.manual.functional import rules_manual


def _cnn():
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(inplace=True),
                         nn.MaxPool2d(2), nn.Flatten(), nn.Linear(4 * 3 * 3, 5))


class Block(nn.Module):
    """A ResNet basic block: conv-bn-relu-conv-bn, += identity, relu (in place, as torchvision)."""

    def __init__(self, c):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)
        self.conv2, self.bn2 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += x
        return self.relu(out)


def _mlp():
    return nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Dropout(p=0.0), nn.Linear(8, 3))


def _step(model, x, t, rules):
    x = x.clone().requires_grad_()
    if rules:
        with use_rules(strict=True) as session:
            loss = F.cross_entropy(model(x).flatten(1), t)
            loss.backward()
    else:
        session = None
        loss = F.cross_entropy(model(x).flatten(1), t)
        loss.backward()
    return loss, x.grad, session


@pytest.mark.parametrize("make,shape", [(_cnn, (2, 3, 6, 6)), (lambda: Block(3), (2, 3, 4, 4)), (_mlp, (4, 6))],
                         ids=["cnn", "resnet_block", "mlp_dropout0"])
def test_model_gradients_equal_autograd(make, shape):
    torch.manual_seed(0)
    model = make().double()
    twin = copy.deepcopy(model)
    x = torch.randn(*shape, dtype=torch.float64)
    t = torch.arange(shape[0]) % 3
    loss, gx, session = _step(model, x, t, rules=True)
    loss_ref, gx_ref, _ = _step(twin, x, t, rules=False)
    torch.testing.assert_close(loss, loss_ref)
    torch.testing.assert_close(gx, gx_ref)
    for (name, p), q in zip(model.named_parameters(), twin.parameters()):
        torch.testing.assert_close(p.grad, q.grad, msg=lambda m: f"{name}: {m}")
    for b, c in zip(model.buffers(), twin.buffers()):   # batch-norm running statistics updated alike
        torch.testing.assert_close(b, c)
    assert not session.missing and session.ops[-1] == "cross_entropy"
    assert {"conv2d", "batch_norm", "relu"} <= set(session.ops) or {"linear"} <= set(session.ops)
    assert loss.grad_fn.name() == "_RuleFunctionBackward"


def test_cnn_runs_every_op_through_rules():
    model = _cnn()
    with use_rules() as session:
        F.cross_entropy(model(torch.randn(2, 3, 6, 6)), torch.tensor([0, 1])).backward()
    assert session.ops == ["conv2d", "batch_norm", "relu", "max_pool2d", "flatten", "linear", "cross_entropy"]


def test_planted_wrong_rule_changes_the_gradient(monkeypatch):
    """The rules really compute the gradient: a wrong relu rule gives a wrong gradient under use_rules."""
    rule = manual.get("relu")
    impl = rule.backward_impl
    monkeypatch.setattr(rule, "backward_impl", lambda g, x, **kw: tuple(3 * e for e in impl(g, x, **kw)))
    x = torch.randn(10, dtype=torch.float64, requires_grad=True)
    with use_rules():
        y = F.relu(x).sum()
    (gx,) = torch.autograd.grad(y, x)
    torch.testing.assert_close(gx, 3.0 * (x > 0).double())


def _two_missing(x):
    a = torch.logcumsumexp(x, 0)
    b = torch.special.erfcx(a)
    return b.sum()


def test_strict_raises_naming_every_missing_op_and_call_site():
    x = torch.randn(4, requires_grad=True)
    line = _two_missing.__code__.co_firstlineno
    with pytest.raises(MissingRuleError) as info:
        with use_rules(strict=True):
            _two_missing(x)
    msg = str(info.value)
    assert isinstance(info.value, GradcheckKitError)
    assert f"torch.logcumsumexp at test_use_rules.py:{line + 1}" in msg
    assert f"erfcx at test_use_rules.py:{line + 2}" in msg
    assert msg.startswith("2 differentiable ops") and msg.count("\n") == 0
    assert [m.op for m in info.value.ops][:1] == ["torch.logcumsumexp"]


def test_non_strict_records_and_lets_autograd_differentiate():
    x = torch.randn(4, dtype=torch.float64, requires_grad=True)
    with use_rules(strict=False) as session:
        y = _two_missing(x)
    assert [m.op for m in session.missing][0] == "torch.logcumsumexp" and session.ops == ["sum"]
    (g,) = torch.autograd.grad(y, x)
    x2 = x.detach().requires_grad_()
    (g2,) = torch.autograd.grad(_two_missing(x2), x2)
    torch.testing.assert_close(g, g2)


def test_nondifferentiable_calls_are_not_missing():
    x = torch.randn(3, 4, requires_grad=True)
    with use_rules(strict=True) as session:
        idx = x.argmax(1)
        x.detach().logcumsumexp(0)    # no gradient involved
        with torch.no_grad():
            torch.logcumsumexp(x, 0)
        y = torch.sum(x) * 2
    assert session.ops == ["sum", "mul"] and idx.dtype == torch.int64 and y.requires_grad


def test_nothing_changes_outside_and_nesting():
    x = torch.randn(1, 1, 4, 4, requires_grad=True)
    w = torch.randn(1, 1, 3, 3, requires_grad=True)
    with pytest.raises(MissingRuleError):        # the outer, strict session saw the missing op too
        with use_rules(strict=True) as outer:
            with use_rules(strict=False) as inner:
                a = F.conv2d(x, w)
                b = torch.logcumsumexp(a, 0)
            c = F.relu(b)
            assert a.grad_fn.name() == "_RuleFunctionBackward"
    assert inner.ops == ["conv2d"] and outer.ops == ["conv2d", "relu"]
    assert [m.op for m in inner.missing] == [m.op for m in outer.missing] == ["torch.logcumsumexp"]
    d = F.conv2d(x, w)
    assert "Convolution" in d.grad_fn.name()
    assert torch.overrides._get_current_function_mode() is None
    assert c.requires_grad


def test_other_threads_are_unaffected():
    x = torch.randn(1, 1, 4, 4, requires_grad=True)
    w = torch.randn(1, 1, 3, 3, requires_grad=True)
    inside, ready, done = [], threading.Event(), threading.Event()

    def other():
        ready.wait()
        inside.append(F.conv2d(x, w).grad_fn.name())
        done.set()

    t = threading.Thread(target=other)
    t.start()
    with use_rules() as session:
        ready.set()
        done.wait(10)
        mine = F.conv2d(x, w).grad_fn.name()
    t.join()
    assert mine == "_RuleFunctionBackward" and "Convolution" in inside[0]
    assert session.ops == ["conv2d"]


def test_in_place_arithmetic_runs_through_the_rule():
    x = torch.randn(5, dtype=torch.float64, requires_grad=True)
    y = torch.randn(5, dtype=torch.float64, requires_grad=True)
    with use_rules(strict=True) as session:
        z = x * 1.0
        z += y
        z.mul_(y)
        loss = torch.sum(z)
    assert session.ops == ["mul", "add", "mul", "sum"]
    gx, gy = torch.autograd.grad(loss, (x, y))
    torch.testing.assert_close(gx, y.detach())
    torch.testing.assert_close(gy, x.detach() + 2 * y.detach())


def test_rules_manual_gradients_and_double_backward(monkeypatch):
    def loss(x, w):
        return torch.sum(F.conv2d(torch.tanh(x), w, padding=1) ** 2)

    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 2, 5, 5, generator=g, dtype=torch.float64)
    w = torch.randn(3, 2, 3, 3, generator=g, dtype=torch.float64)
    manual_fn = rules_manual(loss)
    got = manual_fn(x=x, w=w)
    xr, wr = x.clone().requires_grad_(), w.clone().requires_grad_()
    ref = dict(zip("xw", torch.autograd.grad(loss(xr, wr), (xr, wr), create_graph=True)))
    for k in "xw":
        torch.testing.assert_close(got[k], ref[k])
        assert not got[k].requires_grad
    # first-class: inputs that require grad give differentiable gradients
    xd, wd = x.clone().requires_grad_(), w.clone().requires_grad_()
    got2 = manual_fn(x=xd, w=wd)
    hm = torch.autograd.grad((got2["x"] ** 2).sum(), (xd, wd))
    hr = torch.autograd.grad((ref["x"] ** 2).sum(), (xr, wr))
    for a, b in zip(hm, hr):
        torch.testing.assert_close(a, b)
    # planted bug: a wrong tanh rule makes rules_manual disagree
    rule = manual.get("tanh")
    impl = rule.backward_impl
    monkeypatch.setattr(rule, "backward_impl", lambda g, x, **kw: tuple(-e for e in impl(g, x, **kw)))
    bad = manual_fn(x=x, w=w)
    assert not torch.allclose(bad["x"], ref["x"])
    torch.testing.assert_close(bad["w"], ref["w"])


def test_rules_manual_raises_for_missing_rule():
    with pytest.raises(MissingRuleError, match="logcumsumexp"):
        rules_manual(lambda x: torch.logcumsumexp(x, 0).sum())(x=torch.randn(3))


@pytest.mark.cuda
def test_cuda_cnn_gradients_equal_autograd():
    torch.manual_seed(0)
    model = _cnn().double().cuda()
    twin = copy.deepcopy(model)
    x = torch.randn(2, 3, 6, 6, dtype=torch.float64, device="cuda")
    t = torch.tensor([0, 1], device="cuda")
    _, gx, session = _step(model, x, t, rules=True)
    _, gx_ref, _ = _step(twin, x, t, rules=False)
    torch.testing.assert_close(gx, gx_ref)
    for p, q in zip(model.parameters(), twin.parameters()):
        torch.testing.assert_close(p.grad, q.grad)
    assert not session.missing


def _mixed(a, b):
    c = torch.cat([a, b], 1)
    v, _ = torch.max(c, 1)
    mp, idx = F.max_pool2d(c.view(1, 1, 3, 8), 2, return_indices=True)
    s = torch.stack([v, v * 2]).sum() + c[1:, ::2].sum() + c.view(2, -1).permute(1, 0).sum() * 0.5
    return s + (mp * mp).sum() + (c ** 3).mean() + (2 - c).exp().sum() / 10 + c.t().mm(c).sum()


def test_sequences_multi_output_indexing_operators_first_and_second_order():
    g = torch.Generator().manual_seed(0)
    a, b = (torch.randn(3, 4, generator=g, dtype=torch.float64, requires_grad=True) for _ in range(2))
    with use_rules(strict=True) as session:
        y = _mixed(a, b)
    assert {"cat", "max", "stack", "max_pool2d", "pow", "sub", "exp", "mm"} <= set(session.ops)
    ga = torch.autograd.grad(y, (a, b), create_graph=True)
    a2, b2 = a.detach().requires_grad_(), b.detach().requires_grad_()
    gr = torch.autograd.grad(_mixed(a2, b2), (a2, b2), create_graph=True)
    for m, r in zip(ga, gr):
        torch.testing.assert_close(m, r)
    hm = torch.autograd.grad(sum((x ** 2).sum() for x in ga), (a, b))
    hr = torch.autograd.grad(sum((x ** 2).sum() for x in gr), (a2, b2))
    for m, r in zip(hm, hr):
        torch.testing.assert_close(m, r)


_SPELLINGS = {
    "softmax_dtype_positional": lambda x: torch.softmax(x, 1, torch.float64),   # dtype third, not _stacklevel
    "method_softmax": lambda x: x.softmax(1, dtype=torch.float64),
    "sum_keepdim_positional": lambda x: x.sum(1, True),
    "view_ints": lambda x: x.view(2, -1),
    "view_one_int": lambda x: x.view(-1),
    "permute_ints": lambda x: x.permute(1, 0),
    "reshape_one_int": lambda x: x.reshape(-1),
    "reshape_tuple": lambda x: x.reshape((2, 6)),
    "max_dim": lambda x: torch.max(x, 1)[0],
}


@pytest.mark.parametrize("name", list(_SPELLINGS))
def test_call_spellings_bind_like_torch(name):
    """Positional arguments mean what torch means by them, whatever the spelling."""
    fn = _SPELLINGS[name]
    x = torch.randn(3, 4, requires_grad=True)
    with use_rules(strict=True):
        y = fn(x)
    xr = x.detach().requires_grad_()
    ref = fn(xr)
    assert y.dtype == ref.dtype and y.shape == ref.shape
    torch.testing.assert_close(y, ref)
    torch.testing.assert_close(torch.autograd.grad(y.sum(), x)[0], torch.autograd.grad(ref.sum(), xr)[0])


# torch's return types: a model written against torch (``x.max(1).values``) runs unchanged
_RETURNS = {
    "max_method": lambda x: x.max(1),
    "max_function_keepdim": lambda x: torch.max(x, 1, keepdim=True),
    "min_method": lambda x: x.min(dim=0),
    "median_dim": lambda x: torch.median(x, 1),
    "kthvalue": lambda x: x.kthvalue(2, 1),
    "var_mean": lambda x: torch.var_mean(x, 1),
    "std_mean": lambda x: torch.std_mean(x, 0),
    "split": lambda x: torch.split(x, 2, 1),
    "chunk_method": lambda x: x.chunk(2, 1),
    "unbind": lambda x: x.unbind(0),
    "max_pool_indices": lambda x: F.max_pool2d(x.view(1, 1, 3, 4), 2, return_indices=True),
}


@pytest.mark.parametrize("name", list(_RETURNS))
def test_multi_output_calls_return_torch_types(name):
    fn = _RETURNS[name]
    x = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    with use_rules(strict=True) as session:
        got = fn(x)
    assert session.ops, "the call did not run through a rule"
    xr = x.detach().requires_grad_()
    ref = fn(xr)
    assert type(got) is type(ref), (type(got), type(ref))
    if hasattr(ref, "_fields") or hasattr(ref, "n_fields"):
        fields = [f for f in dir(ref) if f in ("values", "indices")]
        assert fields and all(torch.equal(getattr(got, f), getattr(ref, f)) for f in fields)
    gm, gr = (torch.autograd.grad(sum((k + 1) * o.sum() for k, o in enumerate(out) if o.is_floating_point()), v)[0]
              for out, v in ((got, x), (ref, xr)))
    torch.testing.assert_close(gm, gr)


def test_values_attribute_of_max_in_an_unmodified_model():
    x = torch.randn(2, 5, dtype=torch.float64, requires_grad=True)
    with use_rules(strict=True) as session:
        y = (x.max(1).values + x.min(1).values).sum()
    assert session.ops == ["max", "min", "add", "sum"]
    xr = x.detach().requires_grad_()
    torch.testing.assert_close(torch.autograd.grad(y, x)[0],
                               torch.autograd.grad((xr.max(1).values + xr.min(1).values).sum(), xr)[0])


_EINSUM = {
    "operands": lambda a, b: torch.einsum("ij,jk", a, b),
    "list": lambda a, b: torch.einsum("ij,jk", [a, b]),
    "sublist": lambda a, b: torch.einsum(a, [0, 1], b, [1, 2], [2, 0]),
}


@pytest.mark.parametrize("planted", [False, True], ids=["rule", "planted_wrong_rule"])
@pytest.mark.parametrize("name", list(_EINSUM))
def test_einsum_spellings_run_through_the_rule(name, planted, monkeypatch):
    """Every torch spelling of einsum binds onto the rule (its ``call_as_rule``); the gradient is the
    rule's: equal to autograd's, and a planted wrong einsum rule shows in it."""
    if planted:
        rule = manual.get("einsum")
        impl = rule.backward_impl
        monkeypatch.setattr(rule, "backward_impl",
                            lambda g, ops, **kw: ((tuple(-e if e is not None else e for e in impl(g, ops, **kw)[0]),)))
    fn = _EINSUM[name]
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(2, 3, generator=g, dtype=torch.float64), torch.randn(3, 4, generator=g, dtype=torch.float64)
    a1, b1 = a.clone().requires_grad_(), b.clone().requires_grad_()
    with use_rules(strict=True) as session:
        y = fn(a1, b1)
    assert session.ops == ["einsum"]
    w = torch.randn(y.shape, generator=g, dtype=torch.float64)
    got = torch.autograd.grad(y, (a1, b1), w)
    a2, b2 = a.clone().requires_grad_(), b.clone().requires_grad_()
    ref = torch.autograd.grad(fn(a2, b2), (a2, b2), w)
    torch.testing.assert_close(y.detach(), fn(a, b))
    for m, r in zip(got, ref):
        torch.testing.assert_close(-m if planted else m, r)


def test_rules_free_an_intermediate_as_soon_as_torch_would():
    """No reference cycle holds the forward's activations until the garbage collector runs (a recursive
    closure in RuleCall.build did: seed 002's peak memory was 1.5x autograd's)."""
    import gc
    import weakref

    x = torch.randn(2, 3, 8, 8, requires_grad=True)
    w = torch.randn(4, 3, 3, 3, requires_grad=True)
    gc.disable()
    try:
        with use_rules(strict=True):
            z = F.conv2d(x, w, padding=1)
            dead = weakref.ref(z)
            a = F.relu(z)   # relu keeps its output, not its input
            del z
            assert dead() is None
            torch.autograd.grad(a.sum(), [x, w])
    finally:
        gc.enable()


def test_shape_only_arguments_requiring_grad_are_accepted_others_refused():
    """``bias.expand_as(out)`` with ``out`` requiring grad: torch reads ``out`` for its shape only, so the
    rule runs (no MissingRuleError) and the gradients equal torch's; a nondifferentiable argument that torch
    does differentiate (cross_entropy's weight with probability targets) is still refused by name."""
    b = torch.randn(3, 1, requires_grad=True)
    out = torch.randn(2, 3, 4, requires_grad=True)

    def f():
        return (b.expand_as(out) * out).sum() + out.view_as(out).pow(2).sum() + b.reshape_as(out[0, :, :1]).sum()
    ref = torch.autograd.grad(f(), [b, out])
    with use_rules(strict=True) as session:
        y = f()
    assert {"expand_as", "view_as", "reshape_as"} <= set(session.ops)
    for g, r in zip(torch.autograd.grad(y, [b, out]), ref):
        torch.testing.assert_close(g, r)

    w = torch.rand(3, requires_grad=True)
    x = torch.randn(4, 3, requires_grad=True)
    with pytest.raises(MissingRuleError, match="weight"):
        with use_rules(strict=True):
            F.cross_entropy(x, torch.softmax(torch.randn(4, 3), 1), weight=w)


def test_a_call_the_binder_cannot_read_is_reported_not_raised(monkeypatch):
    """A binding failure other than BindError (a kit bug, an odd overload) never crashes the user's model:
    torch runs the call, and strict mode names it with the reason."""
    from gradcheck_kit import trace

    def broken(*args, **kwargs):
        raise TypeError("an overload the binder does not know")
    monkeypatch.setattr(trace, "_bind_with", broken)
    x = torch.randn(3, requires_grad=True)
    with use_rules(strict=False) as session:
        y = torch.sin(x).sum()
    torch.testing.assert_close(torch.autograd.grad(y, x)[0], torch.cos(x.detach()))
    assert session.missing and "could not be bound" in session.missing[0].reason
    with pytest.raises(MissingRuleError, match="could not be bound"):
        with use_rules(strict=True):
            torch.sin(x)
