"""Pooling rules beyond the generic test: tie convention, ceil_mode divisors, bad input."""

import dataclasses

import numpy as np
import pytest
import sympy
import torch
import torch.nn.functional as F

from gradcheck_kit import manual
from gradcheck_kit.errors import InvalidInputError, InvalidParameterError, UnsupportedError
from tests.manual._rulecheck import check_symbolic_forward, check_backward, check_double_backward

INF, NAN = float("inf"), float("nan")


def _autograd(fn, x, g, **params):
    x = x.clone().requires_grad_(True)
    (gx,) = torch.autograd.grad(fn(x, **params), x, g)
    return gx


def _both(name, x, **params):
    """(manual, autograd) gradients of sum(pool(x))."""
    rule = manual.get(name)
    g = torch.ones_like(rule.forward(x, **params))
    (mine,) = rule.backward(g, x, **params)
    return mine, _autograd(rule.torch_fn, x, g, **params)


# -- max pool: ties, NaN, -inf, overlap ---------------------------------------------

MAX_TIES = [
    # 1-d windows (2,2) (2,1) (1,2): the first maximum of each window takes its gradient
    ("max_pool1d", [[[2.0, 2.0, 1.0, 2.0]]], dict(kernel_size=2, stride=1), [[[1.0, 1.0, 0.0, 1.0]]]),
    # all equal: every 2x2 window routes to its top-left element (row-major scan)
    ("max_pool2d", [[[[3.0, 3.0], [3.0, 3.0]]]], dict(kernel_size=2), [[[[1.0, 0.0], [0.0, 0.0]]]]),
    # tie between (0,1) and (1,0): (0,1) comes first in row-major order
    ("max_pool2d", [[[[0.0, 5.0], [5.0, 1.0]]]], dict(kernel_size=2), [[[[0.0, 1.0], [0.0, 0.0]]]]),
    # 3-d: depth is the outermost scan axis
    ("max_pool3d", [[[[[0.0, 0.0], [0.0, 4.0]], [[4.0, 0.0], [0.0, 0.0]]]]], dict(kernel_size=2),
     [[[[[0.0, 0.0], [0.0, 1.0]], [[0.0, 0.0], [0.0, 0.0]]]]]),
    # NaN wins over numbers, and the LAST NaN of the window is taken (torch: val > max or isnan(val))
    ("max_pool1d", [[[1.0, NAN, 3.0, NAN, 2.0]]], dict(kernel_size=5), [[[0.0, 0.0, 0.0, 1.0, 0.0]]]),
    # a window of -inf (and padding) takes its first in-bounds element
    ("max_pool1d", [[[-INF, -INF, -INF, -INF]]], dict(kernel_size=3, stride=2, padding=1), [[[1.0, 1.0, 0.0, 0.0]]]),
]


@pytest.mark.parametrize("name,x,params,expected", MAX_TIES, ids=[f"{c[0]}-{i}" for i, c in enumerate(MAX_TIES)])
def test_max_pool_tie_convention_spelled_out(name, x, params, expected):
    x = torch.tensor(x, dtype=torch.float64)
    mine, ref = _both(name, x, **params)
    expected = torch.tensor(expected, dtype=torch.float64)
    assert torch.equal(ref, expected), "torch changed its tie convention"
    assert torch.equal(mine, expected)


def test_max_pool_overlapping_windows_accumulate():
    x = torch.zeros(1, 1, 4, 4, dtype=torch.float64)
    x[0, 0, 1, 2] = 1.0  # the unique maximum lies in 3 x 3 = 9 windows of k3,s1,p1
    mine, ref = _both("max_pool2d", x, kernel_size=3, stride=1, padding=1)
    assert mine[0, 0, 1, 2] == 9.0
    torch.testing.assert_close(mine, ref, rtol=0, atol=0)


def test_max_pool_second_derivative_wrt_grad_output_is_the_routing():
    x = torch.tensor([[[1.0, 4.0, 4.0, 0.0, 2.0]]], dtype=torch.float64)
    g = torch.tensor([[[1.0, 10.0, 100.0]]], dtype=torch.float64, requires_grad=True)
    (gx,) = manual.get("max_pool1d").backward(g, x, kernel_size=3, stride=1)
    # windows x[0:3] = [1,4,4] and x[1:4] = [4,4,0] route to index 1 (first max), x[2:5] = [4,0,2] to index 2
    assert gx.tolist() == [[[0.0, 11.0, 100.0, 0.0, 0.0]]]
    (d,) = torch.autograd.grad(gx[0, 0, 1], g)
    assert d.tolist() == [[[1.0, 1.0, 0.0]]]


def test_max_pool_symbolic_is_piecewise_first_max():
    x = sympy.symbols("a b c")
    arr = np.array(x, dtype=object).reshape(1, 1, 3)
    (y,) = manual.get("max_pool1d").symbolic(arr, kernel_size=3).reshape(-1)
    assert isinstance(y, sympy.Piecewise)
    at_tie = {x[0]: 2, x[1]: 2, x[2]: 1}
    assert [sympy.diff(y, v).subs(at_tie) for v in x] == [1, 0, 0]
    assert y.subs({x[0]: 1, x[1]: 2, x[2]: 2}) == 2


def test_symbolic_forwards_match_torch_on_small_samples():
    # the symbolic forwards give values only, and sympy cannot compare NaN: those samples are left out
    for name in ("max_pool1d", "max_pool2d", "avg_pool1d", "avg_pool2d", "avg_pool3d", "adaptive_avg_pool1d",
                 "adaptive_avg_pool2d", "adaptive_avg_pool3d", "adaptive_max_pool1d", "adaptive_max_pool2d"):
        rule = manual.get(name)
        kept = [s for s in rule.samples() if not s.kwargs.get("return_indices") and bool(s.args[0].isfinite().all())]
        check_symbolic_forward(dataclasses.replace(rule, sample_fn=lambda device, dtype, kept=kept: kept),
                               max_numel=40)


# -- return_indices and adaptive max pool: the rule's selection IS torch's indices ----------

def _selection(name, x, params):
    from gradcheck_kit.manual import pooling as P

    nd = int(name[-2])
    batched = x.dim() == nd + 2
    xb = x if batched else x.unsqueeze(0)
    if name.startswith("adaptive"):
        sel = P._adaptive_max_selection(xb, P._adaptive_axes(name, nd, x, params["output_size"]))
    else:
        axes = P._max_pool_axes(name, nd, x, params["kernel_size"], params.get("stride"), params.get("padding", 0),
                                params.get("dilation", 1), params.get("ceil_mode", False))
        sel = P._max_pool_selection(xb, axes)
    return sel if batched else sel.squeeze(0)


@pytest.mark.parametrize("name", ["max_pool1d", "max_pool2d", "max_pool3d", "adaptive_max_pool1d",
                                  "adaptive_max_pool2d"])
def test_selection_equals_torch_indices_on_every_sample(name):
    rule = manual.get(name)
    for s in rule.samples():
        params = {k: v for k, v in s.kwargs.items() if k != "return_indices"}
        _, ref = rule.torch_fn(s.args[0], return_indices=True, **params)
        assert torch.equal(_selection(name, s.args[0], params), ref), s.name


ADAPTIVE_TIES = [
    # L = 5, O = 2: windows [0,3) and [2,5) share x[2]; ties go to the first maximum of each window
    ([[[2.0, 1.0, 2.0, 2.0, 0.0]]], [[[1.0, 0.0, 1.0, 0.0, 0.0]]]),
    # NaN: the last NaN of each window (x[2] for both); all -inf: the window's first element
    ([[[NAN, 1.0, NAN, -INF, -INF]]], [[[0.0, 0.0, 2.0, 0.0, 0.0]]]),
    ([[[-INF, -INF, -INF, 3.0, 3.0]]], [[[1.0, 0.0, 0.0, 1.0, 0.0]]]),
]


@pytest.mark.parametrize("x,expected", ADAPTIVE_TIES, ids=["ties", "nan", "-inf"])
def test_adaptive_max_pool_tie_convention_spelled_out(x, expected):
    x = torch.tensor(x, dtype=torch.float64)
    mine, ref = _both("adaptive_max_pool1d", x, output_size=2)
    expected = torch.tensor(expected, dtype=torch.float64)
    assert torch.equal(ref, expected), "torch changed its tie convention"
    assert torch.equal(mine, expected)


def test_planted_last_max_bug_is_caught_and_correct_twin_passes():
    from gradcheck_kit.manual import pooling as P

    def last_max(grad_output, input, *, needs_input_grad, output_size, return_indices=False):
        # the same scatter-add, but the mirrored input makes the scan pick the LAST maximum
        (gx,) = manual.get("adaptive_max_pool1d").backward(grad_output.flip(-1), input.flip(-1),
                                                           output_size=output_size, return_indices=return_indices)
        return (gx.flip(-1),)

    bad = dataclasses.replace(manual.get("adaptive_max_pool1d"), backward_impl=last_max)
    with pytest.raises(AssertionError):
        check_backward(bad, (torch.tensor([[[2.0, 1.0, 2.0, 0.0]]], dtype=torch.float64),), {"output_size": 1})
    # without ties the mirrored scan finds the same element
    check_backward(bad, (torch.tensor([[[0.0, 3.0, 1.0, 2.0]]], dtype=torch.float64),), {"output_size": 1})
    assert P._adaptive_bounds(4, 2) == [(0, 2), (2, 4)]


def test_return_indices_grad_output_pairs():
    x = torch.randn(1, 2, 4, 4, dtype=torch.float64)
    rule = manual.get("max_pool2d")
    g = torch.randn(1, 2, 2, 2, dtype=torch.float64)
    (with_pair,) = rule.backward((g, None), x, kernel_size=2, return_indices=True)
    (plain,) = rule.backward(g, x, kernel_size=2)
    assert torch.equal(with_pair, plain)
    (unused,) = rule.backward((None, None), x, kernel_size=2, return_indices=True)
    assert torch.equal(unused, torch.zeros_like(x))


# -- max pool: the fast separable selection against the general scan and torch's indices ------

# (shape, params, fill): fill "ties" = integers in [-2, 2], "+inf" / "-inf" replace the 2s / -2s
FAST = [
    ((2, 3, 9), dict(kernel_size=3, stride=2, padding=1, ceil_mode=True), "ties"),
    ((2, 2, 7, 6), dict(kernel_size=3, stride=2, padding=1), "ties"),
    ((1, 2, 7, 6), dict(kernel_size=(2, 3), stride=1, padding=(1, 0), dilation=(2, 1)), "ties"),
    ((1, 3, 6, 6), dict(kernel_size=2), "+inf"),
    ((1, 3, 6, 6), dict(kernel_size=3, stride=1, padding=1), "-inf"),
    ((1, 2, 4, 5, 4), dict(kernel_size=(2, 3, 2), stride=(1, 2, 1), padding=1, ceil_mode=True), "ties"),
]


@pytest.mark.parametrize("shape,params,fill", FAST, ids=[f"{len(c[0]) - 2}d-{c[2]}-{i}" for i, c in enumerate(FAST)])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "noncontig"])
def test_max_pool_fast_selection_is_the_general_scan(shape, params, fill, layout):
    from gradcheck_kit.manual import pooling as P

    nd = len(shape) - 2
    x = torch.randint(-2, 3, shape, generator=torch.Generator().manual_seed(0)).double()
    if fill in ("+inf", "-inf"):
        x[x == (2 if fill == "+inf" else -2)] = float(fill)
    if layout == "channels_last" and nd == 2:
        x = x.contiguous(memory_format=torch.channels_last)
    elif layout == "noncontig":
        x = x.transpose(0, 1).contiguous().transpose(0, 1)
    axes = P._max_pool_axes("t", nd, x, params["kernel_size"], params.get("stride"), params.get("padding", 0),
                            params.get("dilation", 1), params.get("ceil_mode", False))
    fast = P._max_pool_selection_fast(x, axes)
    _, ref = getattr(F, f"max_pool{nd}d")(x, return_indices=True, **params)
    assert fast is not None
    assert torch.equal(fast, ref)
    assert torch.equal(P._max_pool_selection(x, axes), ref)


@pytest.mark.parametrize("bad", ["nan", "all -inf window"])
def test_max_pool_fast_selection_declines_nan_and_all_minus_inf(bad):
    from gradcheck_kit.manual import pooling as P

    x = torch.randn(1, 2, 4, 4, dtype=torch.float64)
    if bad == "nan":
        x[0, 1, 2, 3] = NAN
    else:
        x[0, 0, :2, :2] = -INF
    axes = P._max_pool_axes("t", 2, x, 2, None, 0, 1, False)
    assert P._max_pool_selection_fast(x, axes) is None       # the caller falls back to the full scan
    mine, ref = _both("max_pool2d", x, kernel_size=2)
    assert torch.equal(mine, ref)


def test_max_pool_general_scan_alone_matches_autograd(monkeypatch):
    from gradcheck_kit.manual import pooling as P

    monkeypatch.setattr(P, "MAX_POOL_FAST_PATH", False)
    for name in ("max_pool1d", "max_pool2d", "max_pool3d"):
        rule = manual.get(name)
        for s in rule.samples():
            check_backward(rule, s.args, s.kwargs)


# -- average pool: ceil_mode divisors ---------------------------------------------------

# 1-d, input of length 6, g = ones: dL/dx[i] = sum over the windows w containing i of 1 / div(w)
AVG_EDGES = [
    # k3 s2 ceil, no padding: windows [0,3) [2,5) [4,6)+1 past the end; the last divides by 2
    ("ceil,p0", dict(kernel_size=3, stride=2, ceil_mode=True),
     [1 / 3, 1 / 3, 2 / 3, 1 / 3, 1 / 3 + 1 / 2, 1 / 2]),
    # k3 s2 p1 ceil: windows [-1,2) [1,4) [3,6) [5,8); the last holds x[5], one pad, one past the padded
    # extent: count_include_pad divides by 2 (pad counted, overflow not), exclusion by 1
    ("ceil,p1,include", dict(kernel_size=3, stride=2, padding=1, ceil_mode=True),
     [1 / 3, 2 / 3, 1 / 3, 2 / 3, 1 / 3, 1 / 3 + 1 / 2]),
    ("ceil,p1,exclude", dict(kernel_size=3, stride=2, padding=1, ceil_mode=True, count_include_pad=False),
     [1 / 2, 1 / 2 + 1 / 3, 1 / 3, 2 / 3, 1 / 3, 1 / 3 + 1]),
    # divisor_override replaces every divisor (avg_pool2d: avg_pool1d has no such parameter)
    ("override", dict(kernel_size=(1, 3), stride=(1, 2), padding=(0, 1), ceil_mode=True, divisor_override=2),
     [1 / 2, 2 / 2, 1 / 2, 2 / 2, 1 / 2, 2 / 2]),
]


@pytest.mark.parametrize("tag,params,expected", AVG_EDGES, ids=[c[0] for c in AVG_EDGES])
def test_avg_pool_ceil_mode_divisor_edge_cases(tag, params, expected):
    name = "avg_pool2d" if "divisor_override" in params else "avg_pool1d"
    x = torch.randn(1, 1, 6, dtype=torch.float64)
    if name == "avg_pool2d":
        x = x.unsqueeze(2)
    mine, ref = _both(name, x, **params)
    expected = torch.tensor(expected, dtype=torch.float64).reshape(x.shape)
    torch.testing.assert_close(ref, expected, rtol=1e-14, atol=1e-14)
    torch.testing.assert_close(mine, expected, rtol=1e-14, atol=1e-14)


def test_adaptive_avg_pool2d_non_divisible_windows():
    # L = 5, O = 3: windows [0,2) [1,4) [3,5) -> weights 1/2, 1/2+1/3, 1/3, 1/3+1/2, 1/2
    x = torch.randn(1, 1, 1, 5, dtype=torch.float64)
    mine, ref = _both("adaptive_avg_pool2d", x, output_size=(1, 3))
    expected = torch.tensor([1 / 2, 1 / 2 + 1 / 3, 1 / 3, 1 / 3 + 1 / 2, 1 / 2], dtype=torch.float64)
    torch.testing.assert_close(ref.reshape(-1), expected)
    torch.testing.assert_close(mine.reshape(-1), expected)


# -- bad input ----------------------------------------------------------------------


def _g(*shape):
    return torch.ones(*shape, dtype=torch.float64)


BAD = [
    ("max_pool2d", (1, 1, 4, 4), (1, 1, 2, 2), dict(kernel_size=2, return_indices=True), InvalidInputError,
     "pair"),
    ("adaptive_max_pool2d", (1, 1, 4, 4), (1, 1, 2, 2), dict(output_size=(2, 2), return_indices=True),
     InvalidInputError, "pair"),
    ("adaptive_max_pool1d", (1, 1, 4), (1, 1, 2), dict(output_size=0), InvalidParameterError, "output_size"),
    ("adaptive_avg_pool3d", (2, 2), (1, 1), dict(output_size=1), InvalidInputError, "input"),
    ("max_pool2d", (1, 1, 4, 4), (1, 1, 2, 2), dict(kernel_size=2, padding=2), InvalidParameterError, "padding"),
    ("max_pool1d", (1, 1, 4), (1, 1, 2), dict(kernel_size=2, stride=0), InvalidParameterError, "stride"),
    ("max_pool1d", (1, 1, 4), (1, 1, 2), dict(kernel_size=2, dilation=0), InvalidParameterError, "dilation"),
    # windows lying entirely in the padding: torch indexes out of bounds there
    ("max_pool1d", (1, 1, 1), (1, 1, 1), dict(kernel_size=2, padding=1, dilation=2), UnsupportedError, "dilation"),
    ("max_pool2d", (1, 4, 4), (1, 2, 2), dict(kernel_size=(2, 2, 2)), InvalidParameterError, "kernel_size"),
    ("max_pool3d", (4, 4), (2, 2), dict(kernel_size=2), InvalidInputError, "input"),
    ("max_pool2d", (1, 1, 4, 4), (1, 1, 3, 3), dict(kernel_size=2), InvalidInputError, "grad_output"),
    ("avg_pool2d", (1, 1, 4, 4), (1, 1, 2, 2), dict(kernel_size=2, divisor_override=0), InvalidParameterError,
     "divisor_override"),
    ("avg_pool3d", (1, 1, 2, 2, 2), (1, 1, 1, 1, 1), dict(kernel_size=3), InvalidParameterError, "kernel_size"),
    ("adaptive_avg_pool2d", (1, 1, 4, 4), (1, 1, 2, 2), dict(output_size=(2, -1)), InvalidParameterError,
     "output_size"),
]


@pytest.mark.parametrize("name,xs,gs,params,err,word", BAD, ids=[f"{c[0]}-{c[5]}-{i}" for i, c in enumerate(BAD)])
def test_bad_input_names_the_parameter(name, xs, gs, params, err, word):
    with pytest.raises(err, match=word):
        manual.get(name).backward(_g(*gs), torch.zeros(*xs, dtype=torch.float64), **params)


def test_needs_input_grad_false_computes_nothing():
    x = torch.randn(1, 1, 4, 4, dtype=torch.float64)
    for name in ("max_pool2d", "avg_pool2d"):
        assert manual.get(name).backward(_g(1, 1, 2, 2), x, needs_input_grad=(False,), kernel_size=2) == (None,)


# -- CUDA ---------------------------------------------------------------------------


@pytest.mark.cuda
@pytest.mark.parametrize("name", ["max_pool1d", "max_pool2d", "max_pool3d", "avg_pool1d", "avg_pool2d",
                                  "avg_pool3d", "adaptive_avg_pool1d", "adaptive_avg_pool2d", "adaptive_avg_pool3d",
                                  "adaptive_max_pool1d", "adaptive_max_pool2d"])
def test_cuda_matches_autograd_including_ties(name):
    rule = manual.get(name)
    for s in rule.samples(device="cuda", dtype=torch.float64):
        check_backward(rule, s.args, s.kwargs)
        check_double_backward(rule, s.args, s.kwargs)
    for x, params, _ in [(torch.tensor(c[1]), c[2], c[3]) for c in MAX_TIES if c[0] == name]:
        mine, ref = _both(name, x.cuda().double(), **params)
        assert torch.equal(mine, ref)
