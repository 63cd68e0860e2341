"""The seeds' composites: fused loss-and-gradient functions, the per-shape formulations, seed 001's
unfold convolutions, bad input.  (The generic test in test_rules.py covers every composite rule x
sample in float64/float32 and second derivatives.)"""

import pytest
import torch
import torch.nn.functional as F

from gradcheck_kit import manual
from gradcheck_kit.errors import InvalidParameterError, UnsupportedError
from gradcheck_kit.manual import composites as C


def _rand(*shape, seed=0, dtype=torch.float64):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def _autograd(loss_fn, inputs: dict, wrt):
    leaves = {k: v.clone().requires_grad_(k in wrt) for k, v in inputs.items()}
    out = loss_fn(**leaves).sum()
    return dict(zip(wrt, torch.autograd.grad(out, [leaves[n] for n in wrt])))


def _close(got: dict, ref: dict, rtol=1e-9, atol=1e-9):
    assert set(got) == set(ref), f"gradients returned for {sorted(got)}, expected {sorted(ref)}"
    for n in ref:
        torch.testing.assert_close(got[n], ref[n], rtol=rtol, atol=atol * max(1.0, float(ref[n].abs().max())),
                                   msg=lambda m, n=n: f"d/d{n}: {m}")


def seed002_small(c=32, dtype=torch.float64):
    """Seed 002's problem 3 at reduced size (stride 32 kept; C=32 so the per-shape paths run)."""
    return {"x": _rand(2, c, 64, 64, seed=1, dtype=dtype), "w1": _rand(c, c, 3, 3, seed=2, dtype=dtype),
            "w2": _rand(1, c, 3, 3, seed=3, dtype=dtype), "k": _rand(4, 1, 32, 32, seed=4, dtype=dtype),
            "y": _rand(2, 4, 2, 2, seed=5, dtype=dtype)}


ALL = ("x", "w1", "w2", "k", "y")


@pytest.mark.parametrize("fast", [True, False], ids=["fast", "rule-chain"])
@pytest.mark.parametrize("wrt", [("x", "w1", "w2"), ALL, ("w2",), ("k",), ("w1", "y")], ids="-".join)
def test_conv_relu_conv_loss_and_grads_matches_autograd(wrt, fast):
    inp = seed002_small()
    loss, grads = C.conv_relu_conv_loss_and_grads(**inp, wrt=wrt, fast=fast)
    torch.testing.assert_close(loss, C.conv_relu_conv_loss(**inp))
    _close(grads, _autograd(C.conv_relu_conv_loss, inp, wrt))


def test_conv_relu_conv_fast_path_is_differentiable():
    inp = {k: v[:1] if k in ("x", "y") else v for k, v in seed002_small(c=9).items()}
    inp = {k: v.clone().requires_grad_() for k, v in inp.items()}
    _, grads = C.conv_relu_conv_loss_and_grads(**inp, wrt=("x", "w1", "w2"))
    leaves = [inp[n] for n in ("x", "w1", "w2")]
    s = sum((g * _rand(*g.shape, seed=i)).sum() for i, g in enumerate(grads.values()))
    mine = torch.autograd.grad(s, leaves)
    auto = torch.autograd.grad(C.conv_relu_conv_loss(**inp).sum(), leaves, create_graph=True)
    s2 = sum((g * _rand(*g.shape, seed=i)).sum() for i, g in enumerate(auto))
    for m, a in zip(mine, torch.autograd.grad(s2, leaves)):
        torch.testing.assert_close(m, a, rtol=1e-8, atol=1e-8 * max(1.0, float(a.abs().max())))


@pytest.mark.parametrize("fast", [True, False], ids=["fast", "rule-chain"])
def test_conv_strided_loss_and_grads_matches_autograd(fast):
    inp = {k: v for k, v in seed002_small().items() if k != "w1"}
    inp = {"x": inp["x"], "w1": _rand(1, 32, 3, 3, seed=7), "k": inp["k"], "y": inp["y"]}

    def ref(x, w1, k, y):
        return C.strided_conv_loss(F.conv2d(x, w1, padding=1), k, y)

    loss, grads = C.conv_strided_loss_and_grads(**inp, wrt=("x", "w1", "k", "y"), fast=fast)
    torch.testing.assert_close(loss, ref(**inp))
    _close(grads, _autograd(ref, inp, ("x", "w1", "k", "y")))


@pytest.mark.parametrize("fast", [True, False], ids=["tiled", "rule-chain"])
def test_strided_conv_loss_and_grads_matches_autograd(fast):
    inp = {"z": _rand(2, 1, 64, 64), "k": _rand(4, 1, 32, 32, seed=1), "y": _rand(2, 4, 2, 2, seed=2)}
    loss, grads = C.strided_conv_loss_and_grads(**inp, wrt=("z", "k", "y"), fast=fast)
    torch.testing.assert_close(loss, C.strided_conv_loss(**inp))
    _close(grads, _autograd(C.strided_conv_loss, inp, ("z", "k", "y")))


@pytest.mark.parametrize("o,c,k", [(1, 32, 3), (2, 20, 3), (1, 30, 5)])
def test_few_output_channel_formulation(o, c, k):
    """Contract-then-shift forward, input and weight gradients == F.conv2d and autograd."""
    p = (k - 1) // 2
    x, w = _rand(2, c, 7, 6), _rand(o, c, k, k, seed=1)
    g = _rand(2, o, 7, 6, seed=2)
    torch.testing.assert_close(C._few_out_forward(x, w, p), F.conv2d(x, w, padding=p))
    xl, wl = x.clone().requires_grad_(), w.clone().requires_grad_()
    gx, gw = torch.autograd.grad(F.conv2d(xl, wl, padding=p), (xl, wl), g)
    G = C._shifted(g, k, p)
    torch.testing.assert_close(C._few_out_input_grad(G, w), gx)
    torch.testing.assert_close(C._few_out_weight_grad(x, G, w.shape), gw)


@pytest.mark.parametrize("c,o,k,hw", [(3, 4, 3, (5, 7)), (2, 3, 5, (6, 6)), (4, 2, 1, (3, 4)), (2, 2, 3, (1, 1))])
def test_wide_layout_formulation(c, o, k, hw):
    """Implicit-GEMM weight gradient and the wide-layout input gradient == autograd."""
    p = (k - 1) // 2
    x, w = _rand(2, c, *hw), _rand(o, c, k, k, seed=1)
    g = _rand(2, o, *hw, seed=2)
    xl, wl = x.clone().requires_grad_(), w.clone().requires_grad_()
    gx, gw = torch.autograd.grad(F.conv2d(xl, wl, padding=p), (xl, wl), g)
    g_wide = F.pad(g, (p, p))
    torch.testing.assert_close(C._wide_weight_grad(x, g_wide, k, p), gw)
    torch.testing.assert_close(C._wide_input_grad(g_wide, w, p), gx)


def test_conv_relu_conv_full_seed002_size_float32():
    """Seed 002's problem 3 at its full size (x 8x32x128x128), float32, once (about 1 s)."""
    g = torch.Generator().manual_seed(0)
    shapes = {"x": (8, 32, 128, 128), "w1": (32, 32, 3, 3), "w2": (1, 32, 3, 3), "k": (512, 1, 32, 32),
              "y": (8, 512, 4, 4)}
    inp = {n: torch.randn(*s, generator=g) for n, s in shapes.items()}
    wrt = ("x", "w1", "w2")
    _, grads = C.conv_relu_conv_loss_and_grads(**inp, wrt=wrt)
    ref = _autograd(C.conv_relu_conv_loss, inp, wrt)
    for n in wrt:  # float32 sums of ~10^5 terms: relative to the gradient's scale
        err = float((grads[n] - ref[n]).abs().max()) / float(ref[n].abs().max())
        assert err < 1e-4, f"d/d{n}: max error {err:.2e} of max |grad|"


# -- seed 001 -------------------------------------------------------------------------------

def test_unfold_conv2d_is_seed001s_convolution():
    torch.manual_seed(123)
    x = torch.rand(1, 2, 4, 4, dtype=torch.float64)
    conv = torch.nn.Conv2d(2, 5, kernel_size=3, padding=1, bias=True).double()
    w, b = conv.weight.detach(), conv.bias.detach()
    torch.testing.assert_close(C.unfold_conv2d(x, w, b, padding=1), conv(x).detach())
    torch.testing.assert_close(C.unfold_conv2d_custom(x, w, b, padding=1, op="mul"), conv(x).detach())


class SmoothOp:
    """A user-given product: f(x, w) = x w + 0.1 (x - w)^2."""

    @staticmethod
    def fn(x, w):
        return x * w + 0.1 * (x - w) ** 2

    @staticmethod
    def dfdx(x, w):
        return w + 0.2 * (x - w)

    @staticmethod
    def dfdw(x, w):
        return x - 0.2 * (x - w)


@pytest.mark.parametrize("op", ["mul", "adder", SmoothOp()], ids=["mul", "adder", "user-object"])
def test_unfold_conv2d_custom_backward_matches_autograd(op):
    x, w, b = _rand(2, 3, 6, 5), _rand(4, 3, 3, 2, seed=1), _rand(4, seed=2)
    kw = dict(stride=(2, 1), padding=1, dilation=1, op=op)
    g = _rand(*C.unfold_conv2d_custom(x, w, b, **kw).shape, seed=3)
    leaves = [t.clone().requires_grad_() for t in (x, w, b)]
    ref = torch.autograd.grad(C.unfold_conv2d_custom(*leaves, **kw), leaves, g)
    got = manual.get("unfold_conv2d_custom").backward(g, x, w, b, **kw)
    for a, r in zip(got, ref):
        torch.testing.assert_close(a, r)


def test_adder_kink_convention_is_torchs():
    """At x == w the adder's -|x - w| takes sign(0) = 0, as torch's abs backward does."""
    x = torch.zeros(1, 1, 2, 2, dtype=torch.float64)
    w = torch.zeros(1, 1, 1, 1, dtype=torch.float64)
    gx, gw = manual.get("unfold_conv2d_custom").backward(torch.ones(1, 1, 2, 2, dtype=torch.float64), x, w)
    assert gx.abs().sum() == 0 and gw.abs().sum() == 0


# -- bad input ------------------------------------------------------------------------------

def test_bad_input_names_the_parameter():
    x, w = _rand(1, 2, 4, 4), _rand(3, 2, 3, 3)
    with pytest.raises(InvalidParameterError, match="op"):
        C.unfold_conv2d_custom(x, w, op="xnor")
    with pytest.raises(InvalidParameterError, match="dfdw"):
        C.unfold_conv2d_custom(x, w, op=type("NoPartials", (), {"fn": staticmethod(lambda a, b: a * b),
                                                                "dfdx": staticmethod(lambda a, b: b)})())
    with pytest.raises(InvalidParameterError, match="input channels"):
        C.unfold_conv2d(x, _rand(3, 1, 3, 3))
    with pytest.raises(UnsupportedError, match="padding"):
        C.unfold_conv2d(x, w, padding="same")
    with pytest.raises(InvalidParameterError, match="batched"):
        manual.get("strided_conv_loss").backward(torch.ones(1), _rand(1, 8, 8), _rand(2, 1, 4, 4), _rand(2, 2, 2))
    with pytest.raises(InvalidParameterError, match="wrt"):
        C.conv_relu_conv_loss_and_grads(**seed002_small(c=2), wrt=("z",))
