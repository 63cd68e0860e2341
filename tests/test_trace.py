"""The op recording: nodes in forward order, mapped onto rules, with call sites and custom Functions."""

import threading

import torch
import torch.nn.functional as F

from gradcheck_kit.trace import Ref, record, recording


class Double(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x * 2

    @staticmethod
    def backward(ctx, g):
        return g * 2


def conv_relu_conv(x, w1, w2):
    z1 = F.conv2d(x, w1, padding=1)
    a1 = F.relu(z1)
    z2 = F.conv2d(a1, w2, None, 2, 1)
    return torch.sum(z2 * z2)


def _inputs():
    g = torch.Generator().manual_seed(0)
    return dict(x=torch.randn(1, 2, 6, 6, generator=g), w1=torch.randn(3, 2, 3, 3, generator=g),
                w2=torch.randn(2, 3, 3, 3, generator=g))


def test_conv_relu_conv_graph():
    inputs = _inputs()
    before = {k: v.clone() for k, v in inputs.items()}
    tr = record(conv_relu_conv, inputs)
    assert [n.op for n in tr.nodes] == ["conv2d", "relu", "conv2d", "mul", "sum"]
    c1, r, c2, m, s = tr.nodes
    assert [n.index for n in tr.nodes] == list(range(5))
    # values flow: inputs -> conv -> relu -> conv
    assert c1.rule_args == (Ref(tr.inputs["x"]), Ref(tr.inputs["w1"]))
    assert c1.rule_kwargs == {"padding": 1}
    assert r.rule_args == (Ref(c1.outputs[0]),)
    # positional stride/padding normalised to the rule's keywords; None bias kept as data
    assert c2.rule_args == (Ref(r.outputs[0]), Ref(tr.inputs["w2"]), None)
    assert c2.rule_kwargs == {"stride": 2, "padding": 1}
    assert c2.args[2:] == (None, 2, 1)
    assert c2.out_shapes == ((1, 2, 3, 3),) and c2.out_dtypes == (torch.float32,)
    assert tr.values[c2.outputs[0]].producer == 2
    assert tr.values[tr.inputs["x"]].kind == "input"
    # call sites and the user's variable names
    assert c1.site.where == f"test_trace.py:{conv_relu_conv.__code__.co_firstlineno + 1}"
    assert [n.site.assigned for n in tr.nodes[:3]] == ["z1", "a1", "z2"]
    assert c1.site.function == "conv_relu_conv" and "F.conv2d" in c1.site.code
    assert all(n.differentiable for n in tr.nodes)
    assert tr.outputs == (s.outputs[0],)
    assert torch.equal(tr.result, conv_relu_conv(**inputs))
    assert torch.equal(tr.tensor(c1.outputs[0]), F.conv2d(inputs["x"], inputs["w1"], padding=1))
    for k in inputs:  # the caller's tensors are untouched
        assert torch.equal(inputs[k], before[k]) and not inputs[k].requires_grad
    assert "conv2d" in str(tr) and "z2 =" in str(tr)
    assert tr.uses(tr.inputs["w1"]) == [c1] and tr.uses(c2.outputs[0]) == [m]


def test_custom_function_is_one_node_with_children():
    def loss(x):
        y = Double.apply(x)
        return y.exp().sum()

    tr = record(loss, {"x": torch.randn(3)})
    assert tr.nodes[0].function is Double and tr.nodes[0].op == "Double"
    assert [c.op for c in tr.nodes[0].children] == ["mul"]
    assert tr.nodes[0].differentiable and tr.nodes[0].rule is None
    assert tr.nodes[1].args[0] == Ref(tr.nodes[0].outputs[0])


def test_nondifferentiable_and_missing_ops():
    def loss(x):
        idx = x.argmax()
        return torch.logcumsumexp(x, 0).view(-1)[idx] * 3

    tr = record(loss, {"x": torch.randn(2, 3)})
    argmax, lae = tr.nodes[:2]
    assert argmax.op == "Tensor.argmax" and not argmax.differentiable
    assert lae.op == "torch.logcumsumexp" and lae.rule is None and lae.differentiable
    assert lae in tr.missing and argmax not in tr.missing
    assert tr.nodes[-1].args[1] == 3


def test_inplace_op_gets_a_new_value_and_keeps_the_old():
    def loss(x):
        y = x * 1.0
        y.add_(1.0)
        return y

    x = torch.randn(4)
    tr = record(loss, {"x": x}, wrt=())
    mul, add = tr.nodes
    assert add.args[0] == Ref(mul.outputs[0])
    assert add.outputs[0] != mul.outputs[0]
    torch.testing.assert_close(tr.tensor(mul.outputs[0]), x)           # value before the write
    torch.testing.assert_close(tr.tensor(add.outputs[0]), x + 1.0)


def test_recording_is_per_thread():
    seen = []

    def other():
        seen.append(torch.Tensor.__torch_function__ is not None and torch.overrides._get_current_function_mode())

    with recording() as rec:
        torch.exp(torch.ones(2))
        t = threading.Thread(target=other)
        t.start()
        t.join()
    assert seen == [None]
    assert [n.op for n in rec.trace.nodes] == ["torch.ones", "exp"]
    assert torch.autograd.Function.apply.__func__.__name__ != "_patched_apply"


def test_recording_under_use_rules_keeps_the_rules_saved_results():
    from gradcheck_kit.manual import use_rules

    x = torch.randn(4, 5, requires_grad=True)
    with use_rules(strict=True), recording() as rec:
        y = F.dropout(F.relu(x), p=0.5, training=True)
    relu, drop = rec.trace.nodes
    assert relu.via == drop.via == "rules" and drop.rule.name == "dropout"
    assert set(drop.saved) == {"mask"} and torch.equal(y, F.relu(x).detach() * drop.saved["mask"])


# -- a Function's apply bound before the recording (never sees the class-level patch) --------------

_DOUBLE = Double.apply


class Outer(torch.autograd.Function):
    """Calls the bound Double inside its forward: Double is its child."""

    @staticmethod
    def forward(ctx, x):
        return _DOUBLE(x) + 1

    @staticmethod
    def backward(ctx, g):
        return g * 2


class Fails(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        x.exp()
        raise ValueError("planted")

    @staticmethod
    def backward(ctx, g):
        return g


def test_bound_apply_is_one_node_with_its_site_and_children():
    def loss(x, act):
        y = act(x)
        return y.exp().sum()

    tr = record(loss, {"x": torch.randn(3), "act": _DOUBLE})
    assert [n.op for n in tr.nodes] == ["Double", "exp", "sum"]
    d = tr.nodes[0]
    assert d.function is Double and [c.op for c in d.children] == ["mul"] and d.differentiable
    assert d.args == (Ref(tr.inputs["x"]),)
    assert d.site.where == f"test_trace.py:{loss.__code__.co_firstlineno + 1}" and d.site.assigned == "y"
    assert tr.nodes[1].args[0] == Ref(d.outputs[0]) and tr.values[d.outputs[0]].producer == 0
    # through the patched attribute and bound, nested: each Function once, no duplicates
    tr2 = record(lambda x: Outer.apply(x).sum() + Double.apply(x).sum(), {"x": torch.randn(3)})
    assert [n.op for n in tr2.nodes] == ["Outer", "sum", "Double", "sum", "add"]
    assert [c.op for c in tr2.nodes[0].children] == ["Double", "add"]
    assert [c.op for c in tr2.nodes[0].children[0].children] == ["mul"]


def test_bound_apply_that_raises_leaves_the_recording_consistent():
    fails = Fails.apply

    def loss(x, f):
        try:
            f(x)
        except ValueError:
            pass
        return _DOUBLE(x).sum()

    for f in (fails, Fails.apply):   # bound before the recording, and through the patched attribute
        tr = record(loss, {"x": torch.randn(3), "f": f})
        assert [n.op for n in tr.nodes] == ["Double", "sum"]


def test_profile_hook_is_per_thread_chained_and_restored():
    import sys

    seen, other = [], []

    def mine(frame, event, arg):
        if event == "call" and frame.f_code.co_name == "forward":
            seen.append(frame.f_code.co_qualname)

    def in_thread():
        other.append(sys.getprofile())
        other.append(_DOUBLE(torch.ones(2, requires_grad=True)).requires_grad)

    sys.setprofile(mine)
    try:
        with recording() as rec:
            y = _DOUBLE(torch.ones(2, requires_grad=True))
            t = threading.Thread(target=in_thread)
            t.start()
            t.join()
        assert sys.getprofile() is mine       # the user's profiler is back
    finally:
        sys.setprofile(None)
    assert "Double.forward" in seen          # and it kept seeing calls during the recording
    assert [n.op for n in rec.trace.nodes] == ["torch.ones", "Double"] and y.requires_grad
    assert other == [None, True]              # the other thread: no hook, nothing recorded
    assert sys.getprofile() is None
    with recording():                         # after a recording: no hook left behind
        pass
    assert sys.getprofile() is None


def test_profiler_written_in_c_is_left_alone():
    import cProfile
    import sys

    prof = cProfile.Profile()
    prof.enable()
    try:
        with recording() as rec:
            Double.apply(torch.ones(2, requires_grad=True))
        assert sys.getprofile() is prof
    finally:
        prof.disable()
    assert [n.op for n in rec.trace.nodes] == ["torch.ones", "Double"]   # the patch still sees apply
    assert any("forward" in str(k) for k in prof.getstats())
