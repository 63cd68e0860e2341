"""Activations: ``relu``, ``leaky_relu``, ``threshold``, ``hardtanh``, ``elu``, ``gelu``,
``sigmoid``, ``tanh``, ``softplus``, ``silu``, ``mish``, ``hardswish``, ``hardsigmoid``, ``selu``,
``celu``, ``logsigmoid``, ``softsign``, ``hardshrink``, ``softshrink``, ``tanhshrink``, ``relu6``
and ``prelu`` (whose weight is differentiable: dL/dw_c = sum g x 1[x <= 0] over all but dim 1).

Every rule here is elementwise, ``y_i = f(x_i)``, so its backward is
``dL/dx = g * f'(x)``.  At a kink ``f'`` takes torch's own value (stated at each rule),
and the second derivative follows torch's double backward there too: where torch's
double backward uses a different comparison than its backward (``elu`` at 0,
``softplus`` at the threshold) the kink takes a constant branch, so that
``d/dx f'(x) = 0`` there as in torch.

``inplace=True`` is not supported by a backward: after an in-place forward the
tensor passed in holds the output, not the input, so the backward raises
``UnsupportedError`` naming ``inplace`` (the forward itself is torch's).

At NaN and +-inf each rule gives torch's answer wherever that answer does not depend on the
tensor's layout (relu and threshold pass g through at NaN, softplus gives NaN, ...; see
docs/rules.md); the unselected branch of a ``where`` never evaluates something that would turn
the second derivative into NaN (elu's ``exp`` of the negative part only).
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


def _relu_save(input, inplace=False):
    # y = relu(x) is <= 0 exactly where x is (y = 0 there; y = x elsewhere, NaN included), so the
    # backward's mask 1[not x <= 0] read from y is the same: saved["input"] = y stands in for x
    # (manual.functional then keeps y, as autograd's relu does, and not x)
    out = F.relu(input)
    return out, {"input": out}


@register("relu", torch_fn=F.relu, tensor_args=("input",), samples=relu_samples, symbolic=relu_symbolic,
          aliases=(torch.relu, torch.Tensor.relu), save=_relu_save)
def relu_backward(grad_output, input, *, needs_input_grad, inplace=False, saved=None):
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
          symbolic=threshold_symbolic, aliases=(torch.threshold,))
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
    yield Sample((mk.noncontiguous(mk.randn(2, 3)),), {}, "gelu[noncontig]")
    for approx in ("none", "tanh"):
        yield Sample((_with_points(mk, (2, 3), _NONFINITE),), {"approximate": approx}, f"gelu[{approx},nan,inf]")


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
          symbolic=sigmoid_symbolic, aliases=(F.sigmoid, torch.Tensor.sigmoid, torch.special.expit))
def sigmoid_backward(grad_output, input, *, needs_input_grad):
    """dL/dx = g * y (1 - y), y = sigmoid(x)."""
    if not needs_input_grad[0]:
        return (None,)
    y = torch.sigmoid(input)
    return (grad_output * (1.0 - y) * y,)


def tanh_symbolic(input):
    return _sym(sympy.tanh, input)


@register("tanh", torch_fn=torch.tanh, tensor_args=("input",), samples=_smooth_samples("tanh"),
          symbolic=tanh_symbolic, aliases=(F.tanh, torch.Tensor.tanh))
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


# -- smooth and piecewise activations of issue 10 ---------------------------------------
#
# Each is y = f(x) elementwise, so dL/dx = g f'(x) with f' as torch computes it (its
# ``*_backward`` kernel or, for the Python-level ones, autograd through its composite):
#
#   silu        x s(x)                      s (1 + x (1 - s)),  s = sigmoid(x)
#   mish        x tanh(sp(x))               t + x s (1 - t^2),  t = tanh(softplus(x))
#   hardswish   x relu6(x + 3) / 6          0 (x <= -3), x/3 + 1/2 (-3 < x < 3), 1 (x >= 3)
#   hardsigmoid relu6(x + 3) / 6            1/6 on (-3, 3), else 0
#   selu        S (x or A (e^x - 1))        S (x > 0), S A e^x (x <= 0)
#   celu        x or a (e^(x/a) - 1)        1 (x > 0), e^(x/a) (x <= 0)
#   logsigmoid  -softplus(-x)               sigmoid(-x)
#   softsign    x / (1 + |x|)               1/a - sgn(x) x / a^2,  a = 1 + |x| (torch's composite)
#   hardshrink  x where |x| > l             1 outside [-l, l], 0 inside (edges included)
#   softshrink  x -+ l where |x| > l        1 outside [-l, l], 0 inside
#   tanhshrink  x - tanh(x)                 tanh(x)^2
#   relu6       hardtanh(x, 0, 6)           1 on (0, 6), else 0
#
# Where torch's double backward takes a constant branch at a kink (selu and celu at 0) the rule
# does too, so its second derivative there is torch's.  torch has no double backward for
# hardsigmoid at all, so the generic test skips it (tests/manual/test_rules.py) and its
# second derivative is checked against relu6(x + 3) / 6 instead.

_SELU_ALPHA = 1.6732632423543772848170429916717
_SELU_SCALE = 1.0507009873554804934193349852946


def _activation(name, torch_fn, slope, symbolic_fn, sample_fn, doc, *, params=(), aliases=(),
                inplace_arg=False):
    """Register ``y = f(x)`` with ``dL/dx = g * slope(x, **params)``."""

    def backward(grad_output, input, *, needs_input_grad, inplace=False, **kw):
        if inplace_arg:
            _no_inplace(name, inplace)
        unknown = set(kw) - set(params)
        if unknown:
            raise InvalidParameterError(f"{name}: unknown parameter(s) {sorted(unknown)}")
        if not needs_input_grad[0]:
            return (None,)
        return (grad_output * slope(input, **kw),)

    def symbolic(input, inplace=False, **kw):
        return _sym(symbolic_fn(**kw), input)

    backward.__doc__ = doc
    backward.__name__ = f"{name}_backward"
    symbolic.__name__ = f"{name}_symbolic"
    register(name, torch_fn=torch_fn, tensor_args=("input",), samples=sample_fn, symbolic=symbolic,
             aliases=aliases)(backward)


def _act_samples(name, *, kinks=(), away=(0.0,), scale=2.0, nan=True, configs=({},)):
    """3x4 with the kinks exactly, 0-d, non-contiguous, channels-last, and +-inf (and NaN where
    torch's answer does not depend on the tensor's layout), for each parameter config."""
    def at(points, kw):  # kinks may depend on a parameter (shrink's lambd): callables of the config
        return [p(kw) if callable(p) else p for p in points]

    def samples(device, dtype):
        mk = Maker(device, dtype)
        for kw in configs:
            tag = ",".join(f"{k}={v}" for k, v in kw.items())
            pre = f"{name}[{tag}," if tag else f"{name}["
            x = _with_points(mk, (3, 4), at(kinks, kw) + [0.0, 1.0, -1.0], away=tuple(at(away, kw)), scale=scale)
            yield Sample((x,), dict(kw), f"{pre}3x4]")
        yield Sample((mk.randn(()),), dict(configs[-1]), f"{name}[scalar]")
        yield Sample((mk.noncontiguous(mk.away_from(2, 3, points=tuple(at(away, configs[0])))),),
                     dict(configs[0]), f"{name}[noncontig]")
        yield Sample((mk.channels_last(mk.randn(2, 3, 2, 2, scale=scale)),), dict(configs[0]),
                     f"{name}[4d,channels_last]")
        points = _NONFINITE if nan else [math.inf, -math.inf]
        yield Sample((_with_points(mk, (2, 3), points),), dict(configs[0]), f"{name}[{'nan,' if nan else ''}inf]")
    samples.__name__ = f"{name}_samples"
    return samples


def _silu_slope(x):
    s = torch.sigmoid(x)
    return s * (1.0 + x * (1.0 - s))


def _mish_slope(x):
    t = torch.tanh(F.softplus(x))
    return t + x * torch.sigmoid(x) * (1.0 - t * t)


def _hardswish_slope(x):
    # torch: 0 (x <= -3), x/3 + 1/2 (-3 < x < 3), 1 (x >= 3, and NaN); the middle branch is only
    # used on the open interval, where torch's double backward is 1/3
    one = torch.ones((), dtype=x.dtype, device=x.device)
    return torch.where(x <= -3, 0 * one, torch.where(x < 3, x / 3 + 0.5, one))


def _hardsigmoid_slope(x):
    return ((x > -3) & (x < 3)).to(x.dtype) / 6


def _elu_like_slope(x, neg_scale, in_scale, pos_scale):
    """elu-family slope: pos_scale (x > 0, and NaN), neg_scale in_scale e^(in_scale x) (x < 0),
    the constant neg_scale in_scale at 0 (torch's double backward is 0 there)."""
    one = torch.ones((), dtype=x.dtype, device=x.device)
    neg = x < 0
    e = torch.exp(torch.where(neg, x, 0.0) * in_scale)
    return torch.where(x <= 0, torch.where(neg, neg_scale * in_scale * e, one * (neg_scale * in_scale)),
                       one * pos_scale)


def _check_celu_alpha(alpha):
    if alpha == 0:
        raise InvalidParameterError("celu: alpha must not be 0 (it divides x)")
    return alpha


def _softsign_slope(x):
    a = 1.0 + x.abs()
    return 1.0 / a - x.sgn() * (x / (a * a))


def _shrink_slope(x, lambd=0.5):
    if lambd < 0:
        raise InvalidParameterError(f"shrink: lambd must be >= 0, got {lambd!r}")
    return ((x >= -lambd) & (x <= lambd)).logical_not().to(x.dtype)


_activation(
    "silu", F.silu, _silu_slope, lambda: (lambda x: x / (1 + sympy.exp(-x))),
    _act_samples("silu"), "y = x sigmoid(x): dL/dx = g s (1 + x (1 - s)).", inplace_arg=True)
_activation(
    "mish", F.mish, _mish_slope, lambda: (lambda x: x * sympy.tanh(sympy.log(1 + sympy.exp(x)))),
    _act_samples("mish"), "y = x tanh(softplus(x)): dL/dx = g (t + x sigmoid(x) (1 - t^2)).", inplace_arg=True)
_activation(
    "hardswish", F.hardswish, _hardswish_slope,
    lambda: (lambda x: sympy.Piecewise((0, x <= -3), (x * (x + 3) / 6, x < 3), (x, True))),
    _act_samples("hardswish", kinks=[-3.0, 3.0, -4.0, 4.0], away=(-3.0, 3.0), scale=3.0, nan=False),
    "y = x relu6(x + 3) / 6: dL/dx = g (0 if x <= -3, x/3 + 1/2 if x < 3, else 1), as torch at +-3.",
    inplace_arg=True)
_activation(
    "hardsigmoid", F.hardsigmoid, _hardsigmoid_slope,
    lambda: (lambda x: sympy.Piecewise((0, x <= -3), (1, x >= 3), (x / 6 + sympy.Rational(1, 2), True))),
    _act_samples("hardsigmoid", kinks=[-3.0, 3.0, -4.0, 4.0], away=(-3.0, 3.0), scale=3.0),
    "y = relu6(x + 3) / 6: dL/dx = g / 6 on (-3, 3), 0 elsewhere (edges too), as torch.", inplace_arg=True)
_activation(
    "selu", F.selu, lambda x: _elu_like_slope(x, _SELU_ALPHA * _SELU_SCALE, 1.0, _SELU_SCALE),
    lambda: (lambda x: _q(_SELU_SCALE) * sympy.Piecewise((x, x > 0), (_q(_SELU_ALPHA) * (sympy.exp(x) - 1), True))),
    _act_samples("selu", nan=False),
    "y = S x (x > 0), S A (e^x - 1) (x <= 0): dL/dx = g S (x > 0), g S A e^x (x <= 0; S A at 0).",
    aliases=(torch.selu,), inplace_arg=True)
_activation(
    "celu", F.celu, lambda x, alpha=1.0: _elu_like_slope(x, alpha, 1.0 / _check_celu_alpha(alpha), 1.0),
    lambda alpha=1.0: (lambda x: sympy.Piecewise((x, x > 0), (_q(alpha) * (sympy.exp(x / _q(alpha)) - 1), True))),
    _act_samples("celu", nan=False, configs=({}, {"alpha": 0.5}, {"alpha": 2.0})),
    "y = x (x > 0), a (e^(x/a) - 1) (x <= 0): dL/dx = g (x > 0), g e^(x/a) (x <= 0; 1 at 0).",
    params=("alpha",), aliases=(torch.celu,), inplace_arg=True)
_activation(
    "logsigmoid", F.logsigmoid, lambda x: torch.sigmoid(-x), lambda: (lambda x: -sympy.log(1 + sympy.exp(-x))),
    _act_samples("logsigmoid"), "y = log sigmoid(x) = -softplus(-x): dL/dx = g sigmoid(-x).")
_activation(
    "softsign", F.softsign, _softsign_slope, lambda: (lambda x: x / (1 + sympy.Abs(x))),
    _act_samples("softsign"),
    "y = x / (1 + |x|): dL/dx = g (1/a - sgn(x) x / a^2), a = 1 + |x| (NaN at +-inf, as torch's composite).")
_activation(
    "hardshrink", F.hardshrink, _shrink_slope,
    lambda lambd=0.5: (lambda x: sympy.Piecewise((0, (x >= -_q(lambd)) & (x <= _q(lambd))), (x, True))),
    _act_samples("hardshrink", kinks=[lambda kw: kw.get("lambd", 0.5), lambda kw: -kw.get("lambd", 0.5)],
                 away=(lambda kw: kw.get("lambd", 0.5), lambda kw: -kw.get("lambd", 0.5)), nan=False,
                 configs=({}, {"lambd": 1.0})),
    "y = x where |x| > lambd, else 0: dL/dx = g outside [-lambd, lambd], 0 inside and at the edges.",
    params=("lambd",), aliases=(torch.Tensor.hardshrink,))
_activation(
    "softshrink", F.softshrink, _shrink_slope,
    lambda lambd=0.5: (lambda x: sympy.Piecewise((x - _q(lambd), x > _q(lambd)), (x + _q(lambd), x < -_q(lambd)),
                                                 (0, True))),
    _act_samples("softshrink", kinks=[lambda kw: kw.get("lambd", 0.5), lambda kw: -kw.get("lambd", 0.5)],
                 away=(lambda kw: kw.get("lambd", 0.5), lambda kw: -kw.get("lambd", 0.5)), nan=False,
                 configs=({}, {"lambd": 1.0})),
    "y = x - lambd (x > lambd), x + lambd (x < -lambd), else 0: dL/dx = g outside [-lambd, lambd].",
    params=("lambd",))
_activation(
    "tanhshrink", F.tanhshrink, lambda x: torch.tanh(x) ** 2, lambda: (lambda x: x - sympy.tanh(x)),
    _act_samples("tanhshrink"), "y = x - tanh(x): dL/dx = g tanh(x)^2.")
_activation(
    "relu6", F.relu6, lambda x: ((x > 0) & (x < 6)).to(x.dtype),
    lambda: (lambda x: sympy.Piecewise((0, x <= 0), (6, x >= 6), (x, True))),
    _act_samples("relu6", kinks=[6.0, 7.0], away=(0.0, 6.0), scale=4.0, nan=False),
    "y = min(max(x, 0), 6): dL/dx = g on (0, 6), 0 elsewhere and at both edges, as torch.", inplace_arg=True)


# -- prelu ---------------------------------------------------------------------------------

def _prelu_weight_view(weight: torch.Tensor, input: torch.Tensor) -> torch.Tensor:
    """The weight broadcast as torch's prelu does: one element for every entry, else one per
    channel along dim 1 (so an input with fewer than 2 dims takes a 1-element weight only)."""
    c = weight.numel()
    if c == 1:
        return weight.reshape(())
    if input.dim() < 2 or input.shape[1] != c:
        channels = input.shape[1] if input.dim() >= 2 else 1
        raise InvalidParameterError(f"prelu: weight has {c} elements but the input has {channels} channel(s) "
                                    f"(dim 1 of shape {tuple(input.shape)}); use 1 element or one per channel")
    return weight.reshape([1, c] + [1] * (input.dim() - 2))


def prelu_samples(device, dtype):
    mk = Maker(device, dtype)
    # x = 0 stays out of the samples: torch's first derivative takes the w branch there but its
    # double backward the x >= 0 branch (tests/manual/test_activations.py checks x = 0 first order)
    yield Sample((mk.away_from(2, 3, 4), mk.uniform(3, low=-0.5, high=0.5)), {}, "prelu[3d,per_channel]")
    yield Sample((mk.away_from(2, 3), mk.uniform(1, low=0.1, high=0.4)), {}, "prelu[2d,one_weight]")
    yield Sample((mk.channels_last(mk.away_from(2, 3, 2, 2)), mk.randn(3)), {}, "prelu[4d,channels_last]")
    yield Sample((mk.away_from(5), mk.uniform(1, low=0.1, high=0.4)), {}, "prelu[unbatched]")
    yield Sample((mk.randn(()), mk.uniform(1, low=0.1, high=0.4)), {}, "prelu[scalar]")
    yield Sample((mk.noncontiguous(mk.away_from(4, 3)), mk.randn(3)), {}, "prelu[noncontig]")
    yield Sample((_with_points(mk, (2, 3), _NONFINITE), mk.uniform(3, low=0.1, high=0.4)), {}, "prelu[nan,inf]")


def prelu_symbolic(input, weight):
    x = _symbolic.asarray(input)
    w = _symbolic.asarray(weight)
    wv = w.reshape(()) if w.size == 1 else w.reshape([1, w.size] + [1] * (x.ndim - 2))
    return _symbolic.elementwise(lambda e, a: sympy.Piecewise((e, e > 0), (a * e, True)), x, wv)


@register("prelu", torch_fn=F.prelu, tensor_args=("input", "weight"), samples=prelu_samples,
          symbolic=prelu_symbolic, aliases=(torch.Tensor.prelu,))
def prelu_backward(grad_output, input, weight, *, needs_input_grad):
    """y = x (x > 0), w_c x (x <= 0), w along channel dim 1 (or one w for all):
    dL/dx = g (1 if x > 0 else w_c),  dL/dw_c = sum over all but dim 1 of g x 1[x <= 0]
    (x = 0 and NaN take the w branch, as torch)."""
    wv = _prelu_weight_view(weight, input)
    pos = input > 0
    gx = gw = None
    if needs_input_grad[0]:
        gx = grad_output * torch.where(pos, torch.ones((), dtype=input.dtype, device=input.device), wv)
    if needs_input_grad[1]:
        contrib = grad_output * torch.where(pos, 0.0, input)
        if weight.numel() == 1:
            gw = contrib.sum().reshape(weight.shape)
        else:
            dims = (0,) + tuple(range(2, input.dim()))
            gw = contrib.sum(dims).reshape(weight.shape)
    return gx, gw
