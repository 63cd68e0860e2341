"""Activations: ``relu``, ``leaky_relu``, ``threshold``, ``hardtanh``, ``elu``, ``gelu``,
``sigmoid``, ``tanh``, ``softplus``.

Every rule here is elementwise, ``y_i = f(x_i)``, so its backward is
``dL/dx = g * f'(x)``.  At a kink ``f'`` takes torch's own value (stated at each rule),
and the second derivative follows torch's double backward there too: where torch's
double backward uses a different comparison than its backward (``elu`` at 0,
``softplus`` at the threshold) the kink takes a constant branch, so that
``d/dx f'(x) = 0`` there as in torch.

``inplace=True`` is not supported by a backward: after an in-place forward the
tensor passed in holds the output, not the input, so the backward raises
``UnsupportedError`` naming ``inplace`` (the forward itself is torch's).
"""

from __future__ import annotations

import math

import sympy
import torch
import torch.nn.functional as F

from gradcheck_kit.errors import InvalidParameterError, UnsupportedError
from gradcheck_kit.manual import _symbolic
from gradcheck_kit.manual._sampling import Maker
from gradcheck_kit.manual.registry import Sample, register

__all__: list[str] = []


# -- sample helpers -------------------------------------------------------------------

# NaN, +inf, -inf: planted where torch's gradient there does not depend on memory layout
# (hardtanh's does: its vectorised kernel passes g at NaN, its scalar tail gives 0)
_NONFINITE = [math.nan, math.inf, -math.inf]


def _with_points(mk: Maker, shape, points, *, away=(0.0,), scale: float = 1.0) -> torch.Tensor:
    """randn of ``shape`` (kept off the kinks ``away``) whose first entries are exactly ``points``."""
    n = math.prod(shape)
    body = mk.away_from(n, points=away, scale=scale)
    head = torch.tensor(points, dtype=mk.dtype, device=mk.device)
    return torch.cat([head, body[len(points):]]).reshape(shape)


def _no_inplace(name: str, inplace: bool) -> None:
    if inplace:
        raise UnsupportedError(f"{name}: inplace=True is not supported by the explicit backward "
                               f"(the tensor passed in would hold the output), use inplace=False")


def _sym(fn, x):
    return _symbolic.elementwise(fn, x)


def _q(v):
    """A parameter as an exact sympy number."""
    return _symbolic.to_rational(v)


# -- relu ---------------------------------------------------------------------------------

def relu_samples(device, dtype):
    mk = Maker(device, dtype)
    yield Sample((_with_points(mk, (3, 4), [0.0, 0.0, -0.0, 1.0]),), {}, "relu[3x4,zeros]")
    yield Sample((mk.randn(()),), {}, "relu[scalar]")
    yield Sample((mk.noncontiguous(_with_points(mk, (2, 5), [0.0])),), {}, "relu[noncontig]")
    yield Sample((mk.channels_last(mk.away_from(2, 3, 2, 2)),), {}, "relu[4d,channels_last]")
    yield Sample((_with_points(mk, (2, 3), _NONFINITE),), {}, "relu[nan,inf]")


def relu_symbolic(input, inplace=False):
    return _sym(_symbolic.relu_piece, input)


@register("relu", torch_fn=F.relu, tensor_args=("input",), samples=relu_samples, symbolic=relu_symbolic)
def relu_backward(grad_output, input, *, needs_input_grad, inplace=False):
    """dL/dx = g * 1[not x <= 0]: relu'(0) = 0, and at x = NaN the gradient passes through, as torch."""
    _no_inplace("relu", inplace)
    if not needs_input_grad[0]:
        return (None,)
    return (grad_output * (input <= 0).logical_not().to(grad_output.dtype),)


# -- leaky_relu -----------------------------------------------------------------------

def leaky_relu_samples(device, dtype):
    mk = Maker(device, dtype)
    for slope, tag in ((0.01, "default"), (0.2, "0.2"), (-0.5, "-0.5"), (1.5, "1.5")):
        kw = {} if tag == "default" else {"negative_slope": slope}
        yield Sample((_with_points(mk, (3, 4), [0.0, -1.0, 1.0]),), kw, f"leaky_relu[slope={tag},zeros]")
    yield Sample((mk.randn(()),), {"negative_slope": 0.1}, "leaky_relu[scalar]")
    yield Sample((mk.noncontiguous(mk.randn(2, 3)),), {"negative_slope": 0.3}, "leaky_relu[noncontig]")
    yield Sample((_with_points(mk, (2, 3), _NONFINITE),), {"negative_slope": 0.2}, "leaky_relu[nan,inf]")


def leaky_relu_symbolic(input, negative_slope=0.01, inplace=False):
    s = _q(negative_slope)
    return _sym(lambda x: sympy.Piecewise((x, x > 0), (s * x, True)), input)


@register("leaky_relu", torch_fn=F.leaky_relu, tensor_args=("input",), samples=leaky_relu_samples,
          symbolic=leaky_relu_symbolic)
def leaky_relu_backward(grad_output, input, *, needs_input_grad, negative_slope=0.01, inplace=False):
    """dL/dx = g * (1 if x > 0 else negative_slope); at x = 0 the slope is negative_slope, as torch."""
    _no_inplace("leaky_relu", inplace)
    if not needs_input_grad[0]:
        return (None,)
    one = torch.ones((), dtype=grad_output.dtype, device=grad_output.device)
    return (grad_output * torch.where(input > 0, one, one * negative_slope),)


# -- threshold ------------------------------------------------------------------------

def threshold_samples(device, dtype):
    mk = Maker(device, dtype)
    for th, val in ((0.5, -1.0), (-1.0, 2.0), (0.0, 0.0)):
        x = _with_points(mk, (3, 4), [th, th, th + 1.0, th - 1.0], away=(th,))
        yield Sample((x,), {"threshold": th, "value": val}, f"threshold[t={th},v={val},at_t]")
    yield Sample((mk.randn(()),), {"threshold": 0.1, "value": 3.0}, "threshold[scalar]")
    yield Sample((_with_points(mk, (2, 3), _NONFINITE),), {"threshold": 0.5, "value": -1.0}, "threshold[nan,inf]")


def threshold_symbolic(input, threshold, value, inplace=False):
    t, v = _q(threshold), _q(value)
    return _sym(lambda x: sympy.Piecewise((x, x > t), (v, True)), input)


@register("threshold", torch_fn=F.threshold, tensor_args=("input",), samples=threshold_samples,
          symbolic=threshold_symbolic)
def threshold_backward(grad_output, input, *, needs_input_grad, threshold, value, inplace=False):
    """y = x if x > threshold else value: dL/dx = g * 1[not x <= threshold] (0 at x == threshold,
    g at x = NaN, as torch)."""
    _no_inplace("threshold", inplace)
    if not needs_input_grad[0]:
        return (None,)
    return (grad_output * (input <= threshold).logical_not().to(grad_output.dtype),)


# -- hardtanh -------------------------------------------------------------------------

def hardtanh_samples(device, dtype):
    mk = Maker(device, dtype)
    for lo, hi in ((-1.0, 1.0), (-0.5, 2.0), (0.0, 6.0)):
        kw = {} if (lo, hi) == (-1.0, 1.0) else {"min_val": lo, "max_val": hi}
        x = _with_points(mk, (3, 4), [lo, hi, lo - 0.5, hi + 0.5, (lo + hi) / 2], away=(lo, hi), scale=2.0)
        yield Sample((x,), kw, f"hardtanh[{lo},{hi},edges]")
    yield Sample((mk.randn(()),), {"min_val": -0.25, "max_val": 0.25}, "hardtanh[scalar]")
    yield Sample((mk.noncontiguous(mk.away_from(2, 3, points=(-1.0, 1.0))),), {}, "hardtanh[noncontig]")


def hardtanh_symbolic(input, min_val=-1.0, max_val=1.0, inplace=False):
    lo, hi = _q(min_val), _q(max_val)
    return _sym(lambda x: sympy.Piecewise((lo, x <= lo), (hi, x >= hi), (x, True)), input)


@register("hardtanh", torch_fn=F.hardtanh, tensor_args=("input",), samples=hardtanh_samples,
          symbolic=hardtanh_symbolic)
def hardtanh_backward(grad_output, input, *, needs_input_grad, min_val=-1.0, max_val=1.0, inplace=False):
    """dL/dx = g * 1[min_val < x < max_val]; 0 at both edges, as torch."""
    _no_inplace("hardtanh", inplace)
    if min_val > max_val:
        raise InvalidParameterError(f"hardtanh: min_val ({min_val}) must not exceed max_val ({max_val})")
    if not needs_input_grad[0]:
        return (None,)
    inside = (input > min_val) & (input < max_val)
    return (grad_output * inside.to(grad_output.dtype),)


# -- elu --------------------------------------------------------------------------------

def elu_samples(device, dtype):
    mk = Maker(device, dtype)
    for alpha in (1.0, 0.5, 2.0):
        kw = {} if alpha == 1.0 else {"alpha": alpha}
        yield Sample((_with_points(mk, (3, 4), [0.0, -3.0, 2.0]),), kw, f"elu[alpha={alpha},zeros]")
    yield Sample((mk.randn(()),), {"alpha": 0.7}, "elu[scalar]")
    yield Sample((mk.noncontiguous(mk.randn(2, 3)),), {}, "elu[noncontig]")
    yield Sample((_with_points(mk, (2, 3), _NONFINITE),), {"alpha": 0.5}, "elu[nan,inf]")


def elu_symbolic(input, alpha=1.0, inplace=False):
    a = _q(alpha)
    return _sym(lambda x: sympy.Piecewise((x, x > 0), (a * (sympy.exp(x) - 1), True)), input)


@register("elu", torch_fn=F.elu, tensor_args=("input",), samples=elu_samples, symbolic=elu_symbolic)
def elu_backward(grad_output, input, *, needs_input_grad, alpha=1.0, inplace=False):
    """elu'(x) = 1 (x > 0), alpha e^x (x <= 0): at 0 the slope is alpha as in torch,
    while torch's second derivative there is 0, hence the constant branch at x == 0.
    At x = NaN torch takes the x > 0 branch (its test is x <= 0): slope 1."""
    _no_inplace("elu", inplace)
    if not needs_input_grad[0]:
        return (None,)
    one = torch.ones((), dtype=grad_output.dtype, device=grad_output.device)
    neg = input < 0
    # exp of the negative part only: exp(+inf) or exp(NaN) on the unselected branch would make
    # the second derivative NaN there, where torch's is 0
    e = torch.exp(torch.where(neg, input, 0.0))
    slope = torch.where(input <= 0, torch.where(neg, alpha * e, one * alpha), one)
    return (grad_output * slope,)


# -- gelu -------------------------------------------------------------------------------

_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
_GELU_C = 0.044715


def gelu_samples(device, dtype):
    mk = Maker(device, dtype)
    for approx in ("none", "tanh"):
        kw = {} if approx == "none" else {"approximate": approx}
        yield Sample((_with_points(mk, (3, 4), [0.0, -3.0, 3.0], scale=2.0),), kw, f"gelu[{approx}]")
        yield Sample((mk.randn(()),), {"approximate": approx}, f"gelu[{approx},scalar]")
        yield Sample((_with_points(mk, (2, 3), _NONFINITE),), {"approximate": approx}, f"gelu[{approx},nan,inf]")
    yield Sample((mk.noncontiguous(mk.randn(2, 3)),), {}, "gelu[noncontig]")


def gelu_symbolic(input, approximate="none"):
    if approximate == "tanh":
        k, c = sympy.sqrt(2 / sympy.pi), _q(_GELU_C)
        return _sym(lambda x: x / 2 * (1 + sympy.tanh(k * (x + c * x ** 3))), input)
    if approximate != "none":
        raise InvalidParameterError(f"gelu: approximate must be 'none' or 'tanh', got {approximate!r}")
    return _sym(lambda x: x / 2 * (1 + sympy.erf(x / sympy.sqrt(2))), input)


@register("gelu", torch_fn=F.gelu, tensor_args=("input",), samples=gelu_samples, symbolic=gelu_symbolic)
def gelu_backward(grad_output, input, *, needs_input_grad, approximate="none"):
    """gelu = x Phi(x): gelu' = Phi(x) + x phi(x);
    tanh form 0.5 x (1 + tanh u), u = sqrt(2/pi)(x + c x^3): gelu' = 0.5 (1 + t) + 0.5 x (1 - t^2) u'."""
    if approximate not in ("none", "tanh"):
        raise InvalidParameterError(f"gelu: approximate must be 'none' or 'tanh', got {approximate!r}")
    if not needs_input_grad[0]:
        return (None,)
    x = input
    if approximate == "none":
        cdf = 0.5 * (1.0 + torch.erf(x * (1.0 / math.sqrt(2.0))))
        pdf = torch.exp(-0.5 * x * x) * (1.0 / math.sqrt(2.0 * math.pi))
        return (grad_output * (cdf + x * pdf),)
    t = torch.tanh(_SQRT_2_OVER_PI * (x + _GELU_C * x * x * x))
    du = _SQRT_2_OVER_PI * (1.0 + 3.0 * _GELU_C * x * x)
    return (grad_output * (0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * du),)


# -- sigmoid, tanh --------------------------------------------------------------------

def _smooth_samples(name):
    def samples(device, dtype):
        mk = Maker(device, dtype)
        yield Sample((_with_points(mk, (3, 4), [0.0, 5.0, -5.0], scale=2.0),), {}, f"{name}[3x4]")
        yield Sample((mk.randn(()),), {}, f"{name}[scalar]")
        yield Sample((mk.noncontiguous(mk.randn(2, 3)),), {}, f"{name}[noncontig]")
        yield Sample((_with_points(mk, (2, 3), _NONFINITE),), {}, f"{name}[nan,inf]")
    samples.__name__ = f"{name}_samples"
    return samples


def sigmoid_symbolic(input):
    return _sym(lambda x: 1 / (1 + sympy.exp(-x)), input)


@register("sigmoid", torch_fn=torch.sigmoid, tensor_args=("input",), samples=_smooth_samples("sigmoid"),
          symbolic=sigmoid_symbolic)
def sigmoid_backward(grad_output, input, *, needs_input_grad):
    """dL/dx = g * y (1 - y), y = sigmoid(x)."""
    if not needs_input_grad[0]:
        return (None,)
    y = torch.sigmoid(input)
    return (grad_output * (1.0 - y) * y,)


def tanh_symbolic(input):
    return _sym(sympy.tanh, input)


@register("tanh", torch_fn=torch.tanh, tensor_args=("input",), samples=_smooth_samples("tanh"),
          symbolic=tanh_symbolic)
def tanh_backward(grad_output, input, *, needs_input_grad):
    """dL/dx = g * (1 - y^2), y = tanh(x)."""
    if not needs_input_grad[0]:
        return (None,)
    y = torch.tanh(input)
    return (grad_output * (1.0 - y * y),)


# -- softplus ---------------------------------------------------------------------------

def softplus_samples(device, dtype):
    mk = Maker(device, dtype)
    yield Sample((mk.randn(3, 4, scale=3.0),), {}, "softplus[default]")
    # beta x == threshold exactly: torch stays on the smooth branch there (x = 10, 6)
    for beta, th in ((2.0, 20.0), (0.5, 3.0), (1.0, 1.0)):
        edge = th / beta
        x = _with_points(mk, (3, 4), [edge, edge + 1.0, edge - 1.0, 2 * edge + 3.0], away=(edge,), scale=3.0)
        yield Sample((x,), {"beta": beta, "threshold": th}, f"softplus[b={beta},t={th},at_t]")
    yield Sample((mk.randn(()),), {"beta": 3.0}, "softplus[scalar]")
    yield Sample((mk.noncontiguous(mk.randn(2, 3)),), {"beta": 0.7, "threshold": 1.5}, "softplus[noncontig]")
    yield Sample((_with_points(mk, (2, 3), _NONFINITE),), {}, "softplus[nan,inf]")


def softplus_symbolic(input, beta=1.0, threshold=20.0):
    b, t = _q(beta), _q(threshold)
    return _sym(lambda x: sympy.Piecewise((x, b * x > t), (sympy.log(1 + sympy.exp(b * x)) / b, True)), input)


@register("softplus", torch_fn=F.softplus, tensor_args=("input",), samples=softplus_samples,
          symbolic=softplus_symbolic)
def softplus_backward(grad_output, input, *, needs_input_grad, beta=1.0, threshold=20.0):
    """y = x if beta x > threshold else log(1 + e^(beta x)) / beta:
    dL/dx = g * (1 if beta x > threshold else sigmoid(beta x)).  At beta x == threshold torch
    uses the smooth slope but a zero second derivative: the constant sigmoid(threshold) there.
    At x = NaN the slope is NaN (the smooth branch), as torch."""
    if not needs_input_grad[0]:
        return (None,)
    bx = input * beta
    one = torch.ones((), dtype=grad_output.dtype, device=grad_output.device)
    at_edge = torch.sigmoid(one * threshold)
    slope = torch.where(bx > threshold, one, torch.where(bx == threshold, at_edge, torch.sigmoid(bx)))
    return (grad_output * slope,)
