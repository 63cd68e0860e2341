"""Tensor algebra of the lecture: ``add``, ``sub``, ``mul``, ``div``, ``pow``, ``exp``, ``log``,
``sin``, ``cos``, ``abs``, ``sqrt``, ``sum``, ``mean``, ``norm``, ``dot``, with their method and
operator spellings (``x.exp()``, ``x + y``, ``x / y``, ``x ** y``) as aliases.

Binary ops broadcast: if ``y = f(broadcast(a), broadcast(b))`` then
``dL/da = unbroadcast(g * df/da, a.shape)`` (``_shapes.unbroadcast`` sums over the
leading axes broadcasting added and over the axes where ``a`` had size 1), and the
result takes ``a``'s dtype (type promotion is undone too).  A positional argument may
be a Python number; its gradient entry is ``None``.

Conventions at kinks, as torch: ``abs'(0) = sign(0) = 0``; ``pow(x, 0)`` has gradient
0 everywhere (also at ``x = 0``); ``d(a^b)/db = 0`` where ``a == 0`` and ``b >= 0``;
``norm`` at the zero vector has gradient 0 for every ``p``; the inf-norm splits the
gradient equally between tied maxima; the nuclear norm (``p="nuc"``) has ``dL/dX = g U V^T``.
``div`` with ``rounding_mode="trunc"|"floor"`` is piecewise constant: gradient 0, as torch.
"""

from __future__ import annotations

import math
from numbers import Number

import numpy as np
import sympy
import torch

from gradcheck_kit.errors import InvalidParameterError, UnsupportedError
from gradcheck_kit.manual import _shapes, _symbolic
from gradcheck_kit.manual._sampling import Maker
from gradcheck_kit.manual.registry import Sample, register

__all__: list[str] = []


# -- helpers ------------------------------------------------------------------------------

def _to(grad: torch.Tensor, like) -> torch.Tensor:
    """Undo broadcasting and type promotion: ``grad`` summed down to ``like``'s shape, in its dtype."""
    return _shapes.unbroadcast(grad, like.shape).to(like.dtype)


def _is_tensor(x) -> bool:
    return isinstance(x, torch.Tensor)


def _q(v):
    return _symbolic.to_rational(v)


def _sym_arg(x):
    """Python numbers become exact sympy numbers; arrays pass through."""
    return _q(x) if isinstance(x, Number) else x


def _sym(fn, *arrays):
    return _symbolic.elementwise(fn, *(_sym_arg(a) for a in arrays))


def _reduce_dims(dim, ndim: int) -> tuple[int, ...]:
    """``dim`` (None, int, tuple, empty = all) as sorted non-negative axes of an ``ndim``-d tensor."""
    if dim is None or (isinstance(dim, (tuple, list)) and len(dim) == 0):
        return tuple(range(ndim))
    dims = (dim,) if isinstance(dim, int) else tuple(dim)
    n = max(ndim, 1)
    for d in dims:
        if not isinstance(d, int) or isinstance(d, bool) or not -n <= d < n:
            raise InvalidParameterError(f"dim must be ints in [{-n}, {n - 1}], got {dim!r}")
    return tuple(sorted({d % n for d in dims})) if ndim else ()


def _restore_reduced(grad: torch.Tensor, ndim: int, dims: tuple[int, ...], keepdim: bool) -> torch.Tensor:
    """Put the reduced axes back as size 1 (what ``keepdim=True`` would have given)."""
    if keepdim or ndim == 0:
        return grad
    for d in dims:
        grad = grad.unsqueeze(d)
    return grad


def _binary_table(mk: Maker, positive_other: bool = False):
    """(input, other, tag): broadcasting of every kind, scalars and Python numbers."""
    def other(*shape):
        if positive_other:
            return mk.away_from(shape, points=(0.0,), margin=0.25)
        return mk.randn(shape)

    yield mk.randn(3, 4), other(3, 4), "3x4,3x4"
    yield mk.randn(2, 3, 4), other(4), "2x3x4,4"
    yield mk.randn(4), other(2, 3, 4), "4,2x3x4"
    yield mk.randn(3, 1), other(1, 4), "3x1,1x4"
    yield mk.randn(2, 1, 4), other(3, 1), "2x1x4,3x1"
    yield mk.randn(3, 4), other(), "3x4,scalar"
    yield mk.randn(()), other(2, 3), "scalar,2x3"
    yield mk.noncontiguous(mk.randn(3, 4)), mk.noncontiguous(other(3, 4)), "noncontig"
    yield mk.randn(3, 4), (2.5 if positive_other else -1.5), "3x4,number"


def _unary(name, torch_fn, symbolic_fn, derivative, doc, sample_fn, aliases=()):
    """Register an elementwise ``y = f(x)`` whose backward is ``g * f'(x)``."""

    def symbolic(input):
        return _sym(symbolic_fn, input)

    def backward(grad_output, input, *, needs_input_grad):
        if not needs_input_grad[0]:
            return (None,)
        return (grad_output * derivative(input),)

    backward.__doc__ = doc
    backward.__name__ = f"{name}_backward"
    symbolic.__name__ = f"{name}_symbolic"
    register(name, torch_fn=torch_fn, tensor_args=("input",), samples=sample_fn, symbolic=symbolic,
             aliases=aliases)(backward)
    return backward


def _unary_samples(name, make):
    def samples(device, dtype):
        mk = Maker(device, dtype)
        yield Sample((make(mk, (3, 4)),), {}, f"{name}[3x4]")
        yield Sample((make(mk, ()),), {}, f"{name}[scalar]")
        yield Sample((mk.noncontiguous(make(mk, (2, 3))),), {}, f"{name}[noncontig]")
    samples.__name__ = f"{name}_samples"
    return samples


# -- add, sub -----------------------------------------------------------------------------

def _add_samples(name):
    def samples(device, dtype):
        mk = Maker(device, dtype)
        for a, b, tag in _binary_table(mk):
            yield Sample((a, b), {}, f"{name}[{tag}]")
        yield Sample((mk.randn(2, 3), mk.randn(3)), {"alpha": 2.0}, f"{name}[alpha=2]")
        yield Sample((mk.randn(3, 1), mk.randn(2, 1, 3)), {"alpha": -0.5}, f"{name}[alpha=-0.5,bcast]")
        yield Sample((mk.randn(3,), 4.0), {"alpha": 3}, f"{name}[alpha=3,number]")
    samples.__name__ = f"{name}_samples"
    return samples


def add_symbolic(input, other, alpha=1):
    a = _q(alpha)
    return _sym(lambda x, y: x + a * y, input, other)


@register("add", torch_fn=torch.add, tensor_args=("input", "other"), samples=_add_samples("add"),
          symbolic=add_symbolic, aliases=(torch.Tensor.add, torch.Tensor.__add__))
def add_backward(grad_output, input, other, *, needs_input_grad, alpha=1):
    """y = x + alpha o: dL/dx = unbroadcast(g), dL/do = unbroadcast(alpha g)."""
    gx = _to(grad_output, input) if needs_input_grad[0] else None
    go = _to(grad_output * alpha, other) if needs_input_grad[1] else None
    return gx, go


def sub_symbolic(input, other, alpha=1):
    a = _q(alpha)
    return _sym(lambda x, y: x - a * y, input, other)


@register("sub", torch_fn=torch.sub, tensor_args=("input", "other"), samples=_add_samples("sub"),
          symbolic=sub_symbolic, aliases=(torch.subtract, torch.Tensor.sub, torch.Tensor.subtract, torch.Tensor.__sub__))
def sub_backward(grad_output, input, other, *, needs_input_grad, alpha=1):
    """y = x - alpha o: dL/dx = unbroadcast(g), dL/do = unbroadcast(-alpha g)."""
    gx = _to(grad_output, input) if needs_input_grad[0] else None
    go = _to(grad_output * (-alpha), other) if needs_input_grad[1] else None
    return gx, go


# -- mul, div -----------------------------------------------------------------------------

def mul_samples(device, dtype):
    mk = Maker(device, dtype)
    for a, b, tag in _binary_table(mk):
        yield Sample((a, b), {}, f"mul[{tag}]")
    x = mk.randn(2, 3)
    yield Sample((x, x), {}, "mul[same_tensor]")


def mul_symbolic(input, other):
    return _sym(lambda x, y: x * y, input, other)


@register("mul", torch_fn=torch.mul, tensor_args=("input", "other"), samples=mul_samples, symbolic=mul_symbolic,
          aliases=(torch.multiply, torch.Tensor.mul, torch.Tensor.multiply, torch.Tensor.__mul__))
def mul_backward(grad_output, input, other, *, needs_input_grad):
    """y = x o: dL/dx = unbroadcast(g o), dL/do = unbroadcast(g x)."""
    gx = _to(grad_output * other, input) if needs_input_grad[0] else None
    go = _to(grad_output * input, other) if needs_input_grad[1] else None
    return gx, go


def div_samples(device, dtype):
    mk = Maker(device, dtype)
    for a, b, tag in _binary_table(mk, positive_other=True):
        yield Sample((a, b), {}, f"div[{tag}]")
    yield Sample((mk.randn(2, 3), mk.positive(3)), {"rounding_mode": None}, "div[rounding_mode=None]")
    for mode in _ROUNDING_MODES:
        yield Sample((mk.randn(2, 3, scale=3.0), mk.away_from(3, margin=0.25)), {"rounding_mode": mode},
                     f"div[rounding_mode={mode}]")
        yield Sample((mk.randn(3, 4, scale=3.0), 0.7), {"rounding_mode": mode}, f"div[rounding_mode={mode},number]")


_ROUNDING_MODES = ("trunc", "floor")


def div_symbolic(input, other, rounding_mode=None):
    if rounding_mode is not None:
        raise UnsupportedError(f"div: the symbolic forward has no rounding_mode={rounding_mode!r} "
                               f"(piecewise constant, gradient 0)")
    return _sym(lambda x, y: x / y, input, other)


@register("div", torch_fn=torch.div, tensor_args=("input", "other"), samples=div_samples, symbolic=div_symbolic,
          aliases=(torch.divide, torch.true_divide, torch.Tensor.div, torch.Tensor.divide, torch.Tensor.true_divide,
                   torch.Tensor.__truediv__))
def div_backward(grad_output, input, other, *, needs_input_grad, rounding_mode=None):
    """y = x / o: dL/dx = unbroadcast(g / o), dL/do = unbroadcast(-g (x / o) / o).
    rounding_mode "trunc"/"floor": y is piecewise constant, so both gradients are 0, as torch."""
    if rounding_mode is not None:
        if rounding_mode not in _ROUNDING_MODES:
            raise InvalidParameterError(f"div: rounding_mode must be None, 'trunc' or 'floor', got {rounding_mode!r}")
        return (torch.zeros_like(input) if needs_input_grad[0] else None,
                torch.zeros_like(other) if needs_input_grad[1] else None)
    gx = _to(grad_output / other, input) if needs_input_grad[0] else None
    go = _to(-grad_output * (input / other) / other, other) if needs_input_grad[1] else None
    return gx, go


# -- pow ----------------------------------------------------------------------------------

def pow_samples(device, dtype):
    mk = Maker(device, dtype)
    ints = mk.integers(3, 4)                       # exact zeros and negative integers
    # tensor ** number: negative bases with integer exponents, 0 ** 0 = 1 with gradient 0
    yield Sample((ints, 2), {}, "pow[int_base,^2]")
    yield Sample((mk.randn(3, 4), 3), {}, "pow[neg_base,^3]")
    yield Sample((mk.away_from(3, 4, margin=0.3), -1), {}, "pow[neg_base,^-1]")
    yield Sample((mk.away_from(2, 3, margin=0.3), -2.0), {}, "pow[neg_base,^-2.0]")
    yield Sample((ints, 0), {}, "pow[zeros,^0]")
    yield Sample((ints, 0.0), {}, "pow[zeros,^0.0]")
    yield Sample((ints, 1), {}, "pow[zeros,^1]")
    yield Sample((mk.positive(3, 4), 0.5), {}, "pow[pos,^0.5]")
    yield Sample((mk.uniform(3, 4), 2.5), {}, "pow[pos,^2.5]")
    yield Sample((mk.randn(()), 3), {}, "pow[scalar,^3]")
    # tensor ** tensor (positive bases: d/db = a^b log a), broadcast both ways
    yield Sample((mk.positive(3, 4), mk.randn(3, 4)), {}, "pow[3x4,3x4]")
    yield Sample((mk.positive(2, 3, 4), mk.randn(4)), {}, "pow[2x3x4,4]")
    yield Sample((mk.positive(3, 1), mk.randn(2, 1, 4)), {}, "pow[3x1,2x1x4]")
    yield Sample((mk.positive(3, 4), mk.randn(())), {}, "pow[3x4,scalar]")
    yield Sample((mk.positive(3, 4), mk.integers(3, 4)), {}, "pow[3x4,int_exponents]")
    # number ** tensor
    yield Sample((2.0, mk.randn(3, 4)), {}, "pow[2.0,3x4]")
    yield Sample((0.5, mk.randn(())), {}, "pow[0.5,scalar]")
    yield Sample((3, mk.integers(2, 3)), {}, "pow[3,int_exponents]")


def pow_symbolic(input, exponent):
    return _sym(lambda a, b: a ** b, input, exponent)


def _zero_like(grad_output):
    return torch.zeros((), dtype=grad_output.dtype, device=grad_output.device)


@register("pow", torch_fn=torch.pow, tensor_args=("input", "exponent"), samples=pow_samples,
          symbolic=pow_symbolic, aliases=(torch.Tensor.pow, torch.Tensor.__pow__))
def pow_backward(grad_output, input, exponent, *, needs_input_grad):
    """y = a^b: dL/da = g b a^(b-1) (0 where b == 0, also at a == 0: 0^0 = 1 is constant),
    dL/db = g a^b log a (0 where a == 0 and b >= 0), as torch."""
    g = grad_output
    ga = gb = None
    if needs_input_grad[0]:
        if not _is_tensor(exponent):
            # number exponent: 0 -> no dependence on a at all
            ga = torch.zeros_like(input) if exponent == 0 else g * (exponent * input.pow(exponent - 1))
        else:
            ga = torch.where(exponent == 0, _zero_like(g), g * (exponent * input.pow(exponent - 1)))
            ga = _to(ga, input)
    if needs_input_grad[1]:
        result = torch.pow(input, exponent)
        if _is_tensor(input):
            at_zero = (input == 0) & (exponent >= 0)
            gb = g * torch.where(at_zero, _zero_like(g), result * torch.log(input))
        elif input == 0:
            gb = g * torch.where(exponent >= 0, _zero_like(g), result * -math.inf)
        else:
            gb = g * (result * (math.log(input) if input > 0 else math.nan))
        gb = _to(gb, exponent)
    return ga, gb


# -- exp, log, sin, cos, abs, sqrt --------------------------------------------------------

_unary("exp", torch.exp, sympy.exp, torch.exp, "dL/dx = g e^x.",
       _unary_samples("exp", lambda mk, s: mk.randn(s)), aliases=(torch.Tensor.exp,))
_unary("log", torch.log, sympy.log, lambda x: 1.0 / x, "dL/dx = g / x.",
       _unary_samples("log", lambda mk, s: mk.positive(s, low=0.2, high=3.0)), aliases=(torch.Tensor.log,))
_unary("sin", torch.sin, sympy.sin, torch.cos, "dL/dx = g cos x.",
       _unary_samples("sin", lambda mk, s: mk.randn(s, scale=2.0)), aliases=(torch.Tensor.sin,))
_unary("cos", torch.cos, sympy.cos, lambda x: -torch.sin(x), "dL/dx = -g sin x.",
       _unary_samples("cos", lambda mk, s: mk.randn(s, scale=2.0)), aliases=(torch.Tensor.cos,))
_unary("abs", torch.abs, sympy.Abs, torch.sgn, "dL/dx = g sign(x), sign(0) = 0 as torch.",
       _unary_samples("abs", lambda mk, s: mk.integers(*s) if s else mk.randn(s)),
       aliases=(torch.absolute, torch.Tensor.abs, torch.Tensor.absolute))
_unary("sqrt", torch.sqrt, sympy.sqrt, lambda x: 0.5 / torch.sqrt(x), "dL/dx = g / (2 sqrt(x)).",
       _unary_samples("sqrt", lambda mk, s: mk.positive(s, low=0.2, high=3.0)), aliases=(torch.Tensor.sqrt,))


# -- sum, mean ----------------------------------------------------------------------------

def _reduction_samples(name):
    def samples(device, dtype):
        mk = Maker(device, dtype)
        x = mk.randn(2, 3, 4)
        yield Sample((x,), {}, f"{name}[all]")
        yield Sample((x,), {"dim": None}, f"{name}[dim=None]")
        yield Sample((x,), {"dim": 1}, f"{name}[dim=1]")
        yield Sample((x,), {"dim": -1, "keepdim": True}, f"{name}[dim=-1,keepdim]")
        yield Sample((x,), {"dim": (0, 2)}, f"{name}[dim=(0,2)]")
        yield Sample((x,), {"dim": (2, -3), "keepdim": True}, f"{name}[dim=(2,-3),keepdim]")
        yield Sample((mk.randn(()),), {}, f"{name}[scalar]")
        yield Sample((mk.randn(()),), {"dim": 0, "keepdim": True}, f"{name}[scalar,dim=0]")
        yield Sample((mk.noncontiguous(mk.randn(3, 4)),), {"dim": 0}, f"{name}[noncontig]")
        yield Sample((mk.randn(2, 3),), {"dim": 1, "dtype": torch.float64}, f"{name}[dtype=float64]")
    samples.__name__ = f"{name}_samples"
    return samples


def _sym_dim(dim):
    return None if isinstance(dim, (tuple, list)) and len(dim) == 0 else dim


def sum_symbolic(input, dim=None, keepdim=False, dtype=None):
    if np.ndim(input) == 0:
        return np.array(input, dtype=object)
    return _symbolic.sum(input, _sym_dim(dim), keepdim)


@register("sum", torch_fn=torch.sum, tensor_args=("input",), samples=_reduction_samples("sum"),
          symbolic=sum_symbolic, aliases=(torch.Tensor.sum,))
def sum_backward(grad_output, input, *, needs_input_grad, dim=None, keepdim=False, dtype=None):
    """y = sum_dims x: dL/dx = g broadcast back over the reduced dims."""
    if not needs_input_grad[0]:
        return (None,)
    dims = _reduce_dims(dim, input.dim())
    g = _restore_reduced(grad_output, input.dim(), dims, keepdim)
    return (g.expand(input.shape).to(input.dtype),)


def mean_symbolic(input, dim=None, keepdim=False, dtype=None):
    if np.ndim(input) == 0:
        return np.array(input, dtype=object)
    return _symbolic.mean(input, _sym_dim(dim), keepdim)


@register("mean", torch_fn=torch.mean, tensor_args=("input",), samples=_reduction_samples("mean"),
          symbolic=mean_symbolic, aliases=(torch.Tensor.mean,))
def mean_backward(grad_output, input, *, needs_input_grad, dim=None, keepdim=False, dtype=None):
    """y = sum_dims x / n: dL/dx = g / n broadcast back over the reduced dims."""
    if not needs_input_grad[0]:
        return (None,)
    dims = _reduce_dims(dim, input.dim())
    count = math.prod(input.shape[d] for d in dims)
    g = _restore_reduced(grad_output, input.dim(), dims, keepdim)
    return ((g / count).expand(input.shape).to(input.dtype),)


# -- norm ---------------------------------------------------------------------------------

def _norm_order(p, dim) -> float:
    """torch.norm's ``p`` as the order of the vector norm it computes."""
    if p is None:
        return 2.0
    if isinstance(p, str):
        if p == "fro":
            if dim is not None and not isinstance(dim, int) and len(dim) > 2:
                raise InvalidParameterError(f"norm: p='fro' takes at most 2 dims, got dim={dim!r}")
            return 2.0
        if p == "nuc":
            raise UnsupportedError("norm: p='nuc' (the nuclear norm) has no symbolic forward")
        raise InvalidParameterError(f"norm: p must be a number, 'fro' or 'nuc', got {p!r}")
    if isinstance(p, bool) or not isinstance(p, Number):
        raise InvalidParameterError(f"norm: p must be a number, 'fro' or 'nuc', got {p!r}")
    return float(p)


def norm_samples(device, dtype):
    mk = Maker(device, dtype)
    x = mk.randn(3, 4)
    # rows with exact zeros, a zero row and a tie in |x|.  torch's second derivative is NaN
    # at a zero row except for p = 1 and inf, and at a zero entry for p < 2 (p != 1), so
    # those samples stay off them (tests/manual/test_elementwise.py checks them first order).
    kinks = torch.tensor([[0.0, 0.0, 0.0, 0.0], [1.0, -1.0, 0.5, 0.0], [0.0, 2.0, -3.0, 1.0]],
                         dtype=mk.dtype, device=mk.device)
    yield Sample((x,), {}, "norm[fro]")
    yield Sample((x,), {"p": "fro", "dim": (0, 1)}, "norm[fro,dim=(0,1)]")
    yield Sample((mk.randn(2, 3, 4),), {"p": "fro", "dim": 1, "keepdim": True}, "norm[fro,dim=1,keepdim]")
    yield Sample((x,), {"p": 2, "dim": 1}, "norm[p=2,dim=1]")
    yield Sample((mk.randn(2, 3, 4),), {"p": 2.0, "dim": (0, 2)}, "norm[p=2,dim=(0,2)]")
    yield Sample((kinks,), {"p": 1, "dim": 1}, "norm[p=1,zeros]")
    yield Sample((x,), {"p": 1}, "norm[p=1]")
    yield Sample((kinks,), {"p": float("inf"), "dim": 1, "keepdim": True}, "norm[p=inf,ties,zeros]")
    yield Sample((x,), {"p": float("inf")}, "norm[p=inf]")
    yield Sample((x,), {"p": float("-inf"), "dim": 0}, "norm[p=-inf]")
    yield Sample((kinks[1:],), {"p": 3, "dim": 1}, "norm[p=3,zeros]")
    yield Sample((x,), {"p": 1.5, "dim": 0}, "norm[p=1.5]")
    yield Sample((x,), {"p": 0.5, "dim": 1}, "norm[p=0.5]")
    yield Sample((kinks,), {"p": 0, "dim": 1}, "norm[p=0]")
    yield Sample((mk.randn(4),), {"p": 4}, "norm[1d,p=4]")
    yield Sample((mk.noncontiguous(mk.randn(3, 4)),), {"p": 2, "dim": -1}, "norm[noncontig]")
    yield Sample((x,), {"p": "nuc"}, "norm[nuc]")
    yield Sample((mk.randn(2, 3, 4),), {"p": "nuc", "dim": (2, 1), "keepdim": True}, "norm[nuc,dim=(2,1),keepdim]")
    yield Sample((mk.randn(4, 2, 3),), {"p": "nuc", "dim": (0, 2)}, "norm[nuc,dim=(0,2)]")


def norm_symbolic(input, p="fro", dim=None, keepdim=False, out=None, dtype=None):
    order = _norm_order(p, dim)
    a = _symbolic.asarray(input)
    dims = _reduce_dims(dim, a.ndim)
    moved = np.moveaxis(a, dims, tuple(range(a.ndim - len(dims), a.ndim)))
    kept = moved.shape[: a.ndim - len(dims)]
    res = np.empty(kept, dtype=object)
    for idx in np.ndindex(kept):
        es = list(np.asarray(moved[idx], dtype=object).flat)
        if order == 2:
            v = sympy.sqrt(sympy.Add(*[e ** 2 for e in es]))
        elif math.isinf(order):
            v = (sympy.Max if order > 0 else sympy.Min)(*[sympy.Abs(e) for e in es])
        elif order == 0:
            v = sympy.Add(*[sympy.Piecewise((0, sympy.Eq(e, 0)), (1, True)) for e in es])
        elif order == 1:
            v = sympy.Add(*[sympy.Abs(e) for e in es])
        else:
            q = _q(order)
            v = sympy.Add(*[sympy.Abs(e) ** q for e in es]) ** (1 / q)
        res[idx] = v
    if keepdim:
        for d in dims:
            res = np.expand_dims(res, d)
    return res


@register("norm", torch_fn=torch.norm, tensor_args=("input",), samples=norm_samples, symbolic=norm_symbolic,
          aliases=(torch.Tensor.norm,))
def norm_backward(grad_output, input, *, needs_input_grad, p="fro", dim=None, keepdim=False, out=None,
                  dtype=None):
    """n = (sum |x|^p)^(1/p) over dims: dL/dx = g sign(x) |x|^(p-1) / n^(p-1), 0 where n == 0.
    p = 1: g sign(x);  p = 2: g x / n;  p = +-inf: g sign(x) 1[|x| == n] / #ties;  p = 0: 0."""
    if out is not None:
        raise UnsupportedError("norm: out= is not supported by the explicit backward")
    if dtype is not None:
        raise UnsupportedError("norm: dtype= is not supported by the explicit backward, cast the input instead")
    if p == "nuc":
        return (_nuclear_norm_backward(grad_output, input, dim, keepdim) if needs_input_grad[0] else None,)
    order = _norm_order(p, dim)
    if not needs_input_grad[0]:
        return (None,)
    x = input
    dims = _reduce_dims(dim, x.dim())
    g = _restore_reduced(grad_output, x.dim(), dims, keepdim)
    zero = _zero_like(g)
    if order == 0.0:      # a count of nonzeros: piecewise constant, torch gives no gradient
        return (torch.zeros_like(x),)
    if order == 1.0:
        return (x.sgn() * g,)
    n = torch.linalg.vector_norm(x, order, dim=dims if x.dim() else None, keepdim=True)
    if order == 2.0:
        return (g * torch.where(n == 0, zero, x / n),)
    if math.isinf(order):
        ax = x.abs()
        mask = ((ax == n) | ax.isnan()).to(g.dtype)
        count = mask.sum(dim=dims, keepdim=True) if x.dim() else mask
        return (x.sgn() * ((g / count) * mask),)
    if order < 1.0:
        scaled = x.sgn() * torch.where(x == 0, zero, x.abs().pow(order - 1))
        return (scaled * g * n.pow(1 - order),)
    scaled = x.sgn() * x.abs().pow(order - 1) if order < 2.0 else x * x.abs().pow(order - 2)
    return (scaled * torch.where(n == 0, zero, g / n.pow(order - 1)),)


def _nuclear_norm_backward(grad_output, x, dim, keepdim):
    """||X||_* = sum of singular values over the matrix dims (d0, d1): with X = U S V^T (reduced),
    dL/dX = g U V^T, the derivative of sum(S) (unique where X has full rank)."""
    if dim is None:
        if x.dim() != 2:
            raise InvalidParameterError(f"norm: p='nuc' needs a 2-d input or a 2-tuple dim, got shape "
                                        f"{tuple(x.shape)}")
        dim = (0, 1)
    if isinstance(dim, int) or len(dim) != 2:
        raise InvalidParameterError(f"norm: p='nuc' needs dim to be a 2-tuple, got {dim!r}")
    d0, d1 = (d % x.dim() for d in dim)
    if d0 == d1:
        raise InvalidParameterError(f"norm: p='nuc' needs two different dims, got {dim!r}")
    xm = torch.movedim(x, (d0, d1), (-2, -1))
    u, _, vh = torch.linalg.svd(xm, full_matrices=False)
    g = _restore_reduced(grad_output, x.dim(), tuple(sorted((d0, d1))), keepdim)
    g = torch.movedim(g, (d0, d1), (-2, -1))
    return torch.movedim(g * (u @ vh), (-2, -1), (d0, d1))


# -- dot ----------------------------------------------------------------------------------

def dot_samples(device, dtype):
    mk = Maker(device, dtype)
    yield Sample((mk.randn(5), mk.randn(5)), {}, "dot[5]")
    yield Sample((mk.randn(1), mk.randn(1)), {}, "dot[1]")
    yield Sample((mk.noncontiguous(mk.randn(4)), mk.randn(8)[::2]), {}, "dot[noncontig]")


def dot_symbolic(input, other):
    a, b = _symbolic.asarray(input), _symbolic.asarray(other)
    return np.array(sympy.Add(*[x * y for x, y in zip(a.flat, b.flat)]), dtype=object)


@register("dot", torch_fn=torch.dot, tensor_args=("input", "other"), samples=dot_samples, symbolic=dot_symbolic,
          aliases=(torch.Tensor.dot,))
def dot_backward(grad_output, input, other, *, needs_input_grad):
    """y = sum_i x_i o_i: dL/dx = g o, dL/do = g x."""
    gx = grad_output * other if needs_input_grad[0] else None
    go = grad_output * input if needs_input_grad[1] else None
    return gx, go
