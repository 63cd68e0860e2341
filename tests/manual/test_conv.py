"""Convolution rules and the ``torch.nn.grad`` drop-ins against torch.autograd.

The grid is PyTorch's own for its conv gradient helpers: stride 1..2, padding 0..2,
dilation 1..2, groups 1/2/4, kernel 1/3/4/5, and input sizes whose padded length
does (remainder 0) and does not (remainder 1: the transpose needs output_padding)
divide the stride.  1-d and 2-d run the full grid, 3-d a deterministic subset.
"""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F

from gradcheck_kit import manual
from gradcheck_kit.errors import InvalidParameterError
from gradcheck_kit.manual import conv

CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
INPUT = {1: manual.conv1d_input, 2: manual.conv2d_input, 3: manual.conv3d_input}
WEIGHT = {1: manual.conv1d_weight, 2: manual.conv2d_weight, 3: manual.conv3d_weight}
TOL = dict(rtol=1e-10, atol=1e-10)

pytestmark = pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel")


def _autograd(dims, x, w, g, **params):
    x = x.detach().clone().requires_grad_(True)
    w = w.detach().clone().requires_grad_(True)
    return torch.autograd.grad(CONV[dims](x, w, **params), (x, w), g)


def _length(k, s, p, d, remainder):
    """The smallest input length L >= 3 with (L + 2p - d (k - 1) - 1) mod s == remainder."""
    length = d * (k - 1) + 1 - 2 * p + remainder
    while length < 3:
        length += s
    return length


def _grid():
    return itertools.product((1, 2), (0, 1, 2), (1, 2), (1, 2, 4), (1, 3, 4, 5), (0, 1))


def _check_drop_ins(dims, s, p, d, groups, k, r, *, device="cpu", batch=2, channels=4):
    """Drop-ins vs autograd at one grid point; returns a failure description or None."""
    if r >= s:
        return None
    gen = torch.Generator().manual_seed(dims * 1000 + s * 100 + p * 10 + d + k)
    lengths = [_length(k, s, p, d, (r + i) % s) for i in range(dims)]  # mixed remainders
    x = torch.randn(batch, channels, *lengths, generator=gen, dtype=torch.float64).to(device)
    w = torch.randn(channels, channels // groups, *(k,) * dims, generator=gen, dtype=torch.float64).to(device)
    params = dict(stride=s, padding=p, dilation=d, groups=groups)
    g = torch.randn(CONV[dims](x, w, **params).shape, generator=gen, dtype=torch.float64).to(device)
    gx_ref, gw_ref = _autograd(dims, x, w, g, **params)
    gx = INPUT[dims](x.shape, w, g, **params)
    gw = WEIGHT[dims](x, w.shape, g, **params)
    where = f"conv{dims}d stride={s} padding={p} dilation={d} groups={groups} kernel={k} input={tuple(x.shape)}"
    for name, got, ref in (("input", gx, gx_ref), ("weight", gw, gw_ref)):
        if got.shape != ref.shape or not torch.allclose(got, ref, **TOL):
            return f"{where}: d/d{name} differs"
    return None


@pytest.mark.parametrize("dims", [1, 2])
def test_drop_ins_full_grid(dims):
    failures = [f for cfg in _grid() if (f := _check_drop_ins(dims, *cfg)) is not None]
    assert not failures, f"{len(failures)} grid points differ from autograd:\n" + "\n".join(failures[:20])


def test_drop_ins_3d_grid_subset():
    # every 7th point of the grid (deterministic), at least one per groups/kernel value
    points = [cfg for i, cfg in enumerate(_grid()) if i % 7 == 0]
    assert {c[3] for c in points} == {1, 2, 4} and {c[4] for c in points} == {1, 3, 4, 5}
    failures = [f for cfg in points if (f := _check_drop_ins(3, *cfg, batch=1)) is not None]
    assert not failures, "\n".join(failures)


# -- where torch.nn.grad failed historically ----------------------------------

def _regression(dims, x_shape, w_shape, **params):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(*x_shape, generator=gen, dtype=torch.float64)
    w = torch.randn(*w_shape, generator=gen, dtype=torch.float64)
    g = torch.randn(CONV[dims](x, w, **params).shape, generator=gen, dtype=torch.float64)
    gx_ref, gw_ref = _autograd(dims, x, w, g, **params)
    torch.testing.assert_close(INPUT[dims](x.shape, w, g, **params), gx_ref, **TOL)
    torch.testing.assert_close(WEIGHT[dims](x, w.shape, g, **params), gw_ref, **TOL)


def test_groups_regression_pytorch_51430():
    _regression(2, (2, 4, 6, 6), (6, 2, 3, 3), groups=2, padding=1)
    _regression(1, (3, 8, 9), (8, 2, 3), groups=4, stride=2)
    _regression(2, (2, 4, 5, 5), (8, 1, 3, 3), groups=4)  # depthwise, channel multiplier 2


def test_dilation_regression_pytorch_13008():
    _regression(2, (2, 3, 9, 9), (4, 3, 3, 3), dilation=2)
    _regression(2, (1, 2, 10, 9), (2, 2, 3, 2), dilation=(2, 3), padding=(2, 1), stride=2)
    _regression(3, (1, 2, 5, 6, 5), (2, 2, 2, 2, 2), dilation=2)


def test_output_padding_regression_pytorch_86356():
    # (L + 2p - d (k - 1) - 1) mod s != 0: the transpose must give back the skipped tail
    _regression(2, (1, 2, 6, 6), (3, 2, 3, 3), stride=2, padding=1)
    _regression(1, (2, 2, 12), (2, 2, 4), stride=3, padding=1)
    _regression(3, (1, 1, 4, 5, 6), (2, 1, 3, 3, 3), stride=2, padding=1)


@pytest.mark.parametrize("kernel,dilation", [((2, 4), 1), ((4, 2), (1, 3)), ((3, 2), 2), ((2, 2), 3)])
def test_same_padding_even_kernels(kernel, dilation):
    _regression(2, (2, 2, 6, 7), (3, 2, *kernel), padding="same", dilation=dilation)
    _regression(1, (2, 2, 7), (3, 2, kernel[0]), padding="same", dilation=dilation if isinstance(dilation, int) else 3)


def test_valid_padding_and_unbatched_drop_ins():
    _regression(2, (2, 2, 6, 7), (3, 2, 3, 2), padding="valid", stride=2)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(2, 7, 6, generator=gen, dtype=torch.float64)
    w = torch.randn(4, 2, 3, 3, generator=gen, dtype=torch.float64)
    g = torch.randn(F.conv2d(x, w, stride=2, padding=1).shape, generator=gen, dtype=torch.float64)
    gx_ref, gw_ref = _autograd(2, x, w, g, stride=2, padding=1)
    torch.testing.assert_close(manual.conv2d_input(list(x.shape), w, g, stride=2, padding=1), gx_ref, **TOL)
    torch.testing.assert_close(manual.conv2d_weight(x, w.shape, g, stride=2, padding=1), gw_ref, **TOL)


# -- formulations of the weight gradient ----------------------------------------

@pytest.mark.parametrize("family", ["conv", "conv_transpose"])
def test_samples_exercise_every_weight_grad_formulation(family):
    """Every formulation _weight_grad can pick is covered by each dimension's samples."""
    for dims in (1, 2, 3):
        seen = set()
        for s in manual.get(f"{family}{dims}d").samples():
            x, w, _ = s.args
            kw = dict(s.kwargs)
            if family == "conv":
                geo = conv._conv_geometry("t", dims, x.shape, w.shape, kw.get("stride", 1),
                                          kw.get("padding", 0), kw.get("dilation", 1), kw.get("groups", 1))
            else:
                geo, _ = conv._transpose_geometry("t", dims, x.shape, w.shape, kw.get("stride", 1),
                                                  kw.get("padding", 0), kw.get("output_padding", 0),
                                                  kw.get("groups", 1), kw.get("dilation", 1))
            seen.add(conv.weight_grad_formulation(geo))
        assert seen == set(conv._WEIGHT_GRAD), f"{family}{dims}d samples cover only {seen}"


# -- bad input ------------------------------------------------------------------

def _xwg(x_shape=(1, 4, 6, 6), w_shape=(4, 4, 3, 3)):
    x = torch.randn(*x_shape, dtype=torch.float64)
    w = torch.randn(*w_shape, dtype=torch.float64)
    return x, w, torch.randn(F.conv2d(x, w).shape, dtype=torch.float64)


@pytest.mark.parametrize("kwargs,match", [
    (dict(padding="full"), r"padding must be an int, a tuple of 2 ints, 'same' or 'valid'"),
    (dict(padding="same", stride=2), r"padding='same' needs stride 1"),
    (dict(padding=(1, 2, 3)), r"padding must be an int or a tuple of 2 ints"),
    (dict(padding=-1), r"padding must be non-negative"),
    (dict(stride=0), r"stride must be positive"),
    (dict(dilation=(1, 0)), r"dilation must be positive"),
    (dict(groups=3), r"groups=3 must divide the input channels \(4\)"),
    (dict(groups=0), r"groups must be a positive int"),
])
def test_drop_in_errors_name_the_parameter(kwargs, match):
    x, w, g = _xwg()
    with pytest.raises(InvalidParameterError, match=match):
        manual.conv2d_input(x.shape, w, g, **kwargs)
    with pytest.raises(InvalidParameterError, match=match):
        manual.conv2d_weight(x, w.shape, g, **kwargs)


def test_shape_errors_name_the_argument():
    x, w, g = _xwg()
    with pytest.raises(InvalidParameterError, match=r"conv2d_input: weight must have 4 dimensions"):
        manual.conv2d_input(x.shape, w[0], g)
    with pytest.raises(InvalidParameterError, match=r"conv2d_weight: weight.shape\[1\] must be C_in/groups = 2"):
        manual.conv2d_weight(x, w.shape, g, groups=2)
    with pytest.raises(InvalidParameterError, match=r"conv2d_input: grad_output must have the output's shape"):
        manual.conv2d_input((1, 4, 7, 7), w, g)
    with pytest.raises(InvalidParameterError, match=r"conv2d_input: input must have 3 or 4 dimensions"):
        manual.conv2d_input((4, 6), w, g)
    with pytest.raises(InvalidParameterError, match=r"smaller than the dilated kernel"):
        manual.conv2d_input((1, 4, 2, 2), w, g)


def test_rule_errors_name_the_parameter():
    x, w, g = _xwg()
    rule = manual.get("conv2d")
    with pytest.raises(InvalidParameterError, match="padding"):
        rule.backward(g, x, w, None, padding="full")
    with pytest.raises(InvalidParameterError, match="weight must have 4 dimensions"):
        rule.backward(g, x, w[None], None)
    with pytest.raises(InvalidParameterError, match="groups=3"):
        rule.backward(g, x, w, None, groups=3)
    t = manual.get("conv_transpose2d")
    y = F.conv_transpose2d(x, w, stride=2)
    with pytest.raises(InvalidParameterError, match="output_padding"):
        t.backward(y, x, w, None, stride=2, output_padding=2)
    with pytest.raises(InvalidParameterError, match="padding must be an int"):
        t.backward(y, x, w, None, padding="same")


# -- CUDA -----------------------------------------------------------------------

@pytest.mark.cuda
@pytest.mark.parametrize("dims", [1, 2, 3])
def test_cuda_drop_ins_grid_subset(dims):
    points = [cfg for i, cfg in enumerate(_grid()) if i % 5 == 0]
    failures = [f for cfg in points if (f := _check_drop_ins(dims, *cfg, device="cuda", batch=1)) is not None]
    assert not failures, "\n".join(failures)


def test_drop_in_signatures_match_torch_nn_grad():
    import inspect

    for dims in (1, 2, 3):
        for kind, ours in (("input", INPUT[dims]), ("weight", WEIGHT[dims])):
            theirs = getattr(torch.nn.grad, f"conv{dims}d_{kind}")
            assert str(inspect.signature(ours)) == str(inspect.signature(theirs))


def test_drop_ins_are_differentiable():
    """Second derivatives flow through the drop-ins (they share the rules' explicit code)."""
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(1, 2, 5, generator=gen, dtype=torch.float64, requires_grad=True)
    w = torch.randn(2, 1, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    g = torch.randn(1, 2, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    params = dict(stride=2, padding=1, dilation=1, groups=2)
    assert torch.autograd.gradcheck(lambda w, g: manual.conv1d_input(x.shape, w, g, **params), (w, g))
    assert torch.autograd.gradcheck(lambda x, g: manual.conv1d_weight(x, w.shape, g, **params), (x, g))


@pytest.mark.parametrize("name,x_shape,w_shape,params", [
    ("conv2d", (0, 2, 5, 5), (3, 2, 3, 3), dict(padding=1)),
    ("conv2d", (0, 2, 4, 4), (3, 2, 2, 2), dict(stride=2)),
    ("conv_transpose1d", (0, 2, 3), (2, 3, 3), dict(stride=2)),
])
def test_empty_batch(name, x_shape, w_shape, params):
    rule = manual.get(name)
    x = torch.randn(*x_shape, dtype=torch.float64, requires_grad=True)
    w = torch.randn(*w_shape, dtype=torch.float64, requires_grad=True)
    y = rule.torch_fn(x, w, **params)
    g = torch.randn_like(y)
    for got, ref in zip(rule.backward(g, x.detach(), w.detach(), **params), torch.autograd.grad(y, (x, w), g)):
        torch.testing.assert_close(got, ref)
