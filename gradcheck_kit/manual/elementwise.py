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

More elementwise functions, with their ``torch.Tensor``, ``torch.special`` and ``arc*`` spellings
(``-x`` is ``Tensor.neg``, ``x % y`` is ``remainder``): ``neg``, ``reciprocal``, ``rsqrt``, ``square``,
``log1p``, ``expm1``, ``log2``, ``log10``, ``exp2``, ``tan``, ``atan``, ``asin``, ``acos``, ``sinh``,
``cosh``, ``asinh``, ``atanh``, ``acosh``, ``erf``, ``erfc``, ``erfinv``, ``sinc``, ``deg2rad``,
``rad2deg``, ``ndtr``, ``log_ndtr``, ``logit``, ``nan_to_num``, ``clamp_max``; ``atan2``, ``hypot``,
``lerp``, ``addcmul``, ``addcdiv``, ``fmod``, ``remainder``, ``xlogy``, ``xlog1py``, ``logaddexp``,
``logaddexp2``, ``copysign``, ``float_power``, ``rsub``.  Their derivatives are written in torch's
order of operations, so NaN, inf and overflow give torch's values.
Conventions, as torch: ``logit(x, eps)`` has ``g / (x (1 - x))`` on ``[eps, 1 - eps]`` (ends included)
and 0 outside (NaN outside ``[0, 1]`` without ``eps``); ``nan_to_num`` passes ``g`` where ``x`` is
finite, 0 where it replaces; ``clamp_max``'s tie ``x == max`` goes to ``x``; ``atan2``'s gradient is 0
where ``a^2 + b^2`` is 0 (``hypot``'s is 0 / 0 = NaN there); ``fmod``/``remainder`` give ``-g q`` to
the divisor with ``q`` the rounded quotient, also at the jumps; ``xlogy``'s ``dL/dx`` is 0 where
``x == 0`` and ``other <= 0`` (``xlog1py``'s where ``other <= -1``); ``sinc'(0) = 0``; ``copysign``
gives ``b`` no gradient and ``a`` 0 at ``a == 0``.  ``sign``, ``sgn``, ``floor``, ``ceil``, ``round``
and ``trunc`` are piecewise constant (gradient 0 everywhere, jumps included); ``frac`` passes ``g``
everywhere.
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
    """Register an elementwise ``y = f(x)`` whose backward is ``g * f'(x)`` (``symbolic_fn`` None: no
    symbolic forward)."""

    def symbolic(input):
        return _sym(symbolic_fn, input)

    def backward(grad_output, input, *, needs_input_grad):
        if not needs_input_grad[0]:
            return (None,)
        return (grad_output * derivative(input),)

    backward.__doc__ = doc
    backward.__name__ = f"{name}_backward"
    symbolic.__name__ = f"{name}_symbolic"
    register(name, torch_fn=torch_fn, tensor_args=("input",), samples=sample_fn,
             symbolic=symbolic if symbolic_fn is not None else None, aliases=aliases)(backward)
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


# -- more unary functions -----------------------------------------------------------------
# Each derivative is written as torch's derivatives.yaml writes it (same order of operations),
# so NaN, +-inf, overflow and underflow give torch's values too.

_LN2 = math.log(2.0)
_LN10 = math.log(10.0)
_TWO_OVER_SQRT_PI = 2.0 / math.sqrt(math.pi)


def _aliases(*fns):
    """Distinct callables only (``Tensor.__neg__`` is ``Tensor.neg``; ``torch.special.*`` are not)."""
    out = []
    for f in fns:
        if f is not None and all(f is not o for o in out):
            out.append(f)
    return tuple(out)


def _spellings(name, *extra):
    """``torch.<name>``'s aliases: ``torch.Tensor.<name>`` plus the extra names in torch and
    ``torch.Tensor`` and ``torch.special``."""
    fns = [getattr(torch.Tensor, name, None)]
    for n in extra:
        fns += [getattr(torch, n, None), getattr(torch.Tensor, n, None), getattr(torch.special, n, None)]
    fns.append(getattr(torch.special, name, None))
    return _aliases(*(f for f in fns if f is not getattr(torch, name)))


def _edge_samples(name, make, edges=()):
    """``_unary_samples`` plus one 1-d sample of exact edge values (kinks, domain ends)."""
    base = _unary_samples(name, make)

    def samples(device, dtype):
        yield from base(device, dtype)
        if edges:
            yield Sample((torch.tensor(edges, dtype=dtype, device=device),), {}, f"{name}[edges]")
        yield Sample((Maker(device, dtype).randn(0, 3),), {}, f"{name}[empty]")
    samples.__name__ = f"{name}_samples"
    return samples


def _domain(low, high):
    return lambda mk, s: mk.uniform(s, low=low, high=high)


_unary("neg", torch.neg, lambda x: -x, lambda x: torch.full_like(x, -1.0), "y = -x: dL/dx = -g.",
       _edge_samples("neg", lambda mk, s: mk.randn(s), edges=(0.0, -0.0, 1.0)),
       aliases=_spellings("neg", "negative"))  # Tensor.__neg__ is Tensor.neg
_unary("reciprocal", torch.reciprocal, lambda x: 1 / x, lambda x: -(torch.reciprocal(x) * torch.reciprocal(x)),
       "y = 1/x: dL/dx = -g y^2.",
       _edge_samples("reciprocal", lambda mk, s: mk.away_from(s, margin=0.3)), aliases=_spellings("reciprocal"))
_unary("rsqrt", torch.rsqrt, lambda x: 1 / sympy.sqrt(x), lambda x: -0.5 * torch.rsqrt(x).pow(3),
       "y = x^(-1/2): dL/dx = -g y^3 / 2.",
       _edge_samples("rsqrt", _domain(0.2, 3.0)), aliases=_spellings("rsqrt"))
_unary("square", torch.square, lambda x: x ** 2, lambda x: 2 * x, "y = x^2: dL/dx = 2 g x.",
       _edge_samples("square", lambda mk, s: mk.randn(s), edges=(0.0, -1.0, 2.0)), aliases=_spellings("square"))
_unary("log1p", torch.log1p, lambda x: sympy.log(1 + x), lambda x: 1.0 / (x + 1),
       "y = log(1 + x): dL/dx = g / (1 + x).",
       _edge_samples("log1p", _domain(-0.8, 3.0), edges=(0.0, 1e-12)), aliases=_spellings("log1p"))
_unary("expm1", torch.expm1, lambda x: sympy.exp(x) - 1, lambda x: torch.expm1(x) + 1,
       "y = e^x - 1: dL/dx = g (y + 1).",
       _edge_samples("expm1", lambda mk, s: mk.randn(s), edges=(0.0, 1e-12)), aliases=_spellings("expm1"))
_unary("log2", torch.log2, lambda x: sympy.log(x, 2), lambda x: 1.0 / (x * _LN2), "y = log2 x: dL/dx = g / (x ln 2).",
       _edge_samples("log2", _domain(0.2, 3.0)), aliases=_spellings("log2"))
_unary("log10", torch.log10, lambda x: sympy.log(x, 10), lambda x: 1.0 / (x * _LN10),
       "y = log10 x: dL/dx = g / (x ln 10).",
       _edge_samples("log10", _domain(0.2, 3.0)), aliases=_spellings("log10"))
_unary("exp2", torch.exp2, lambda x: 2 ** x, lambda x: torch.exp2(x) * _LN2, "y = 2^x: dL/dx = g y ln 2.",
       _edge_samples("exp2", lambda mk, s: mk.randn(s)), aliases=_spellings("exp2"))
_unary("tan", torch.tan, sympy.tan, lambda x: 1 + torch.tan(x).pow(2), "y = tan x: dL/dx = g (1 + y^2).",
       _edge_samples("tan", _domain(-1.3, 1.3), edges=(0.0,)), aliases=_spellings("tan"))
_unary("atan", torch.atan, sympy.atan, lambda x: 1.0 / (x * x + 1), "y = atan x: dL/dx = g / (1 + x^2).",
       _edge_samples("atan", lambda mk, s: mk.randn(s, scale=2.0), edges=(0.0,)),
       aliases=_spellings("atan", "arctan"))
_unary("asin", torch.asin, sympy.asin, lambda x: (-x * x + 1).rsqrt(), "y = asin x: dL/dx = g / sqrt(1 - x^2).",
       _edge_samples("asin", _domain(-0.9, 0.9), edges=(0.0,)), aliases=_spellings("asin", "arcsin"))
_unary("acos", torch.acos, sympy.acos, lambda x: -((-x * x + 1).rsqrt()), "y = acos x: dL/dx = -g / sqrt(1 - x^2).",
       _edge_samples("acos", _domain(-0.9, 0.9), edges=(0.0,)), aliases=_spellings("acos", "arccos"))
_unary("sinh", torch.sinh, sympy.sinh, torch.cosh, "y = sinh x: dL/dx = g cosh x.",
       _edge_samples("sinh", lambda mk, s: mk.randn(s, scale=2.0)), aliases=_spellings("sinh"))
_unary("cosh", torch.cosh, sympy.cosh, torch.sinh, "y = cosh x: dL/dx = g sinh x.",
       _edge_samples("cosh", lambda mk, s: mk.randn(s, scale=2.0), edges=(0.0,)), aliases=_spellings("cosh"))
_unary("asinh", torch.asinh, sympy.asinh, lambda x: (x.pow(2) + 1).rsqrt(), "y = asinh x: dL/dx = g / sqrt(x^2 + 1).",
       _edge_samples("asinh", lambda mk, s: mk.randn(s, scale=2.0), edges=(0.0,)),
       aliases=_spellings("asinh", "arcsinh"))
_unary("atanh", torch.atanh, sympy.atanh, lambda x: 1 / (1 - x.pow(2)), "y = atanh x: dL/dx = g / (1 - x^2).",
       _edge_samples("atanh", _domain(-0.9, 0.9), edges=(0.0,)), aliases=_spellings("atanh", "arctanh"))
_unary("acosh", torch.acosh, sympy.acosh, lambda x: (x.pow(2) - 1).rsqrt(), "y = acosh x: dL/dx = g / sqrt(x^2 - 1).",
       _edge_samples("acosh", _domain(1.2, 4.0)), aliases=_spellings("acosh", "arccosh"))
_unary("erf", torch.erf, sympy.erf, lambda x: _TWO_OVER_SQRT_PI * torch.exp(-x.pow(2)),
       "y = erf x: dL/dx = g (2 / sqrt(pi)) e^(-x^2).",
       _edge_samples("erf", lambda mk, s: mk.randn(s), edges=(0.0,)), aliases=_spellings("erf"))
_unary("erfc", torch.erfc, sympy.erfc, lambda x: -_TWO_OVER_SQRT_PI * torch.exp(-x.pow(2)),
       "y = erfc x: dL/dx = -g (2 / sqrt(pi)) e^(-x^2).",
       _edge_samples("erfc", lambda mk, s: mk.randn(s), edges=(0.0,)), aliases=_spellings("erfc"))


# -- logit, nan_to_num, clamp_max ---------------------------------------------------------

def logit_samples(device, dtype):
    mk = Maker(device, dtype)
    p = mk.uniform(3, 4, low=0.05, high=0.95)
    yield Sample((p,), {}, "logit[3x4]")
    yield Sample((p,), {"eps": None}, "logit[eps=None]")
    yield Sample((p,), {"eps": 1e-6}, "logit[eps=1e-6]")
    yield Sample((p,), {"eps": 0.3}, "logit[eps=0.3,clamped]")
    yield Sample((mk.uniform((), low=0.1, high=0.9),), {}, "logit[scalar]")
    yield Sample((mk.noncontiguous(mk.uniform(2, 3, low=0.1, high=0.9)),), {"eps": 0.05}, "logit[noncontig,eps]")
    # the clamp's ends are inside (gradient g / (x (1 - x)) at x == eps and x == 1 - eps), as torch;
    # beyond them the gradient is 0 (with eps).  x = 0 and 1 stay out: torch's second derivative
    # there is NaN (0 / 0 through the masked branch), not the 0 finite differences see;
    # tests/manual/test_elementwise_extra.py checks them first order
    edges = torch.tensor([0.1, 0.25, 0.5, 0.75, 0.9, -0.5, 1.5], dtype=dtype, device=device)
    yield Sample((edges,), {"eps": 0.25}, "logit[eps=0.25,edges]")
    yield Sample((edges[1:4],), {}, "logit[quarters]")
    yield Sample((mk.uniform(0, 3),), {}, "logit[empty]")


def logit_symbolic(input, eps=None):
    if eps is None:
        return _sym(lambda x: sympy.log(x / (1 - x)), input)
    lo, hi = _q(eps), 1 - _q(eps)
    return _sym(lambda x: sympy.Piecewise((sympy.log(lo / (1 - lo)), x < lo), (sympy.log(hi / (1 - hi)), x > hi),
                                          (sympy.log(x / (1 - x)), True)), input)


@register("logit", torch_fn=torch.logit, tensor_args=("input",), samples=logit_samples, symbolic=logit_symbolic,
          aliases=_spellings("logit"))
def logit_backward(grad_output, input, *, needs_input_grad, eps=None):
    """y = log(z / (1 - z)), z = clamp(x, eps, 1 - eps): dL/dx = g / (x (1 - x)) for eps <= x <= 1 - eps
    (both ends included), 0 outside; without eps NaN outside [0, 1] (log of a negative), as torch."""
    if eps is not None and (isinstance(eps, bool) or not isinstance(eps, Number)):
        raise InvalidParameterError(f"logit: eps must be a number or None, got {eps!r}")
    if not needs_input_grad[0]:
        return (None,)
    x, g = input, grad_output
    inside = g / (x * (1 - x))
    if eps is None:
        return (torch.where((x < 0) | (x > 1), _zero_like(g) + math.nan, inside),)
    return (torch.where((x < eps) | (x > 1 - eps), _zero_like(g), inside),)


def nan_to_num_samples(device, dtype):
    mk = Maker(device, dtype)
    x = mk.randn(3, 4)
    yield Sample((x,), {}, "nan_to_num[finite]")
    special = torch.tensor([[math.nan, 1.0, math.inf], [-math.inf, -2.0, 0.0]], dtype=dtype, device=device)
    yield Sample((special,), {}, "nan_to_num[nan,inf]")
    yield Sample((special,), {"nan": 0.5}, "nan_to_num[nan=0.5]")
    yield Sample((special,), {"nan": 1.0, "posinf": 2.0, "neginf": -3.0}, "nan_to_num[all keywords]")
    yield Sample((special,), {"nan": None, "posinf": 9.0}, "nan_to_num[nan=None,posinf=9]")
    yield Sample((mk.noncontiguous(special),), {"neginf": -1.0}, "nan_to_num[noncontig]")
    yield Sample((mk.randn(()),), {}, "nan_to_num[scalar]")


@register("nan_to_num", torch_fn=torch.nan_to_num, tensor_args=("input",), samples=nan_to_num_samples,
          aliases=_spellings("nan_to_num"))
def nan_to_num_backward(grad_output, input, *, needs_input_grad, nan=0.0, posinf=None, neginf=None):
    """y = x where x is finite, a constant where it is NaN or +-inf: dL/dx = g 1[isfinite(x)]."""
    if not needs_input_grad[0]:
        return (None,)
    return (grad_output * input.isfinite(),)


def clamp_max_samples(device, dtype):
    mk = Maker(device, dtype)
    x = mk.randn(3, 4)
    yield Sample((x, 0.2), {}, "clamp_max[number]")
    yield Sample((x,), {"max": -0.3}, "clamp_max[max=number]")
    yield Sample((x, mk.randn(4)), {}, "clamp_max[tensor,broadcast]")
    yield Sample((x,), {"max": mk.randn(3, 1)}, "clamp_max[keyword tensor]")
    yield Sample((mk.randn(4), mk.randn(2, 1, 4)), {}, "clamp_max[tensor,broadcast up]")
    ties = torch.tensor([-1.0, 0.0, 0.5, 1.0, math.inf, -math.inf, math.nan], dtype=dtype, device=device)
    yield Sample((ties, 0.5), {}, "clamp_max[ties,nan,inf]")
    yield Sample((ties[:4], torch.tensor([0.0, 0.0, 0.5, 2.0], dtype=dtype, device=device)), {},
                 "clamp_max[tensor ties]")
    yield Sample((mk.randn(()), mk.randn(())), {}, "clamp_max[scalar]")
    yield Sample((mk.noncontiguous(x), mk.noncontiguous(mk.randn(3, 4))), {}, "clamp_max[noncontig]")


def clamp_max_symbolic(input, max):
    return _sym(lambda x, h: sympy.Piecewise((h, x > h), (x, True)), input, max)


@register("clamp_max", torch_fn=torch.clamp_max, tensor_args=("input", "max"), samples=clamp_max_samples,
          keyword_tensors=("max",), symbolic=clamp_max_symbolic, aliases=_spellings("clamp_max"))
def clamp_max_backward(grad_output, input, max, *, needs_input_grad, needs_keyword_grad=None):
    """y = min(x, hi): dL/dx = g 1[x <= hi] (the tie goes to x), dL/dhi = g 1[x > hi], as torch
    (both 0 where x or hi is NaN)."""
    if not isinstance(max, (torch.Tensor, Number)) or isinstance(max, bool):
        raise InvalidParameterError(f"clamp_max: max must be a number or a tensor, got {type(max).__name__}")
    g, x, hi = grad_output, input, max
    zero = _zero_like(g)
    gx = ghi = None
    if needs_input_grad[0]:
        gx = _to(torch.where(x <= hi, g, zero), x)
    if (needs_input_grad[1] or (needs_keyword_grad or {}).get("max", False)) and _is_tensor(hi):
        ghi = _to(torch.where(x > hi, g, zero), hi)
    return gx, ghi, {"max": ghi}


# -- piecewise constant: sign, sgn, floor, ceil, round, trunc; and frac ---------------------
# torch defines their gradient as 0 everywhere (also at the jumps); frac(x) = x - trunc(x) has g.

def _steps_samples(name, halves=False, **kwargs):
    def samples(device, dtype):
        mk = Maker(device, dtype)
        yield Sample((mk.randn(3, 4, scale=3.0),), dict(kwargs), f"{name}[3x4]")
        yield Sample((mk.randn((), scale=3.0),), dict(kwargs), f"{name}[scalar]")
        yield Sample((mk.noncontiguous(mk.randn(2, 3, scale=3.0)),), dict(kwargs), f"{name}[noncontig]")
        jumps = mk.integers(2, 4) + (0.5 if halves else 0.0)
        yield Sample((jumps,), dict(kwargs), f"{name}[at jumps]")
        yield Sample((mk.randn(0, 2),), dict(kwargs), f"{name}[empty]")
    samples.__name__ = f"{name}_samples"
    return samples


def _register_step(name, torch_fn, doc, samples, aliases):
    def backward(grad_output, input, *, needs_input_grad, **params):
        if not needs_input_grad[0]:
            return (None,)
        return (torch.zeros_like(grad_output),)

    backward.__doc__ = doc
    backward.__name__ = f"{name}_backward"
    register(name, torch_fn=torch_fn, tensor_args=("input",), samples=samples, aliases=aliases)(backward)


_register_step("sign", torch.sign, "y = sign(x), piecewise constant: dL/dx = 0 (also at 0), as torch.",
               _steps_samples("sign"), _spellings("sign"))
_register_step("sgn", torch.sgn, "y = sgn(x) (sign for real x): dL/dx = 0 for real x, as torch.",
               _steps_samples("sgn"), _spellings("sgn"))
_register_step("floor", torch.floor, "y = floor(x), piecewise constant: dL/dx = 0 (also at integers), as torch.",
               _steps_samples("floor"), _spellings("floor"))
_register_step("ceil", torch.ceil, "y = ceil(x), piecewise constant: dL/dx = 0 (also at integers), as torch.",
               _steps_samples("ceil"), _spellings("ceil"))
_register_step("trunc", torch.trunc, "y = trunc(x), piecewise constant: dL/dx = 0 (also at integers), as torch.",
               _steps_samples("trunc"), _spellings("trunc", "fix"))


def round_samples(device, dtype):
    yield from _steps_samples("round", halves=True)(device, dtype)
    mk = Maker(device, dtype)
    yield Sample((mk.randn(3, 4, scale=3.0),), {"decimals": 0}, "round[decimals=0]")
    yield Sample((mk.randn(3, 4, scale=3.0),), {"decimals": 2}, "round[decimals=2]")
    yield Sample((mk.randn(3, 4, scale=30.0),), {"decimals": -1}, "round[decimals=-1]")


_register_step("round", torch.round,
               "y = round(x, decimals) (half to even), piecewise constant: dL/dx = 0 (also at the ties), as torch.",
               round_samples, _spellings("round"))

_unary("frac", torch.frac, None, lambda x: torch.ones_like(x),
       "y = x - trunc(x): dL/dx = g everywhere, the jumps at integers included, as torch.",
       _edge_samples("frac", lambda mk, s: mk.randn(s, scale=3.0), edges=(0.0, 1.0, -1.0, 2.5)),
       aliases=_spellings("frac"))


# -- binary: atan2, hypot, lerp, addcmul, addcdiv, fmod, remainder, xlogy --------------------

def _tensor_pairs(name, positive_other=False, numbers=True):
    """``_binary_table`` as samples (without the Python-number sample where torch takes none)."""
    def samples(device, dtype):
        mk = Maker(device, dtype)
        for a, b, tag in _binary_table(mk, positive_other=positive_other):
            if numbers or _is_tensor(b):
                yield Sample((a, b), {}, f"{name}[{tag}]")
        yield Sample((mk.randn(0, 3), mk.randn(3)), {}, f"{name}[empty]")
    samples.__name__ = f"{name}_samples"
    return samples


def atan2_samples(device, dtype):
    # |other| >= 0.5: the curvature grows as 1 / (a^2 + b^2), too sharp for float32 finite differences
    yield from _tensor_pairs("atan2", positive_other=True, numbers=False)(device, dtype)
    # on the axes (not the origin, where y jumps and torch's gradient is 0 by convention, nor on the cut y = 0, x < 0)
    y = torch.tensor([0.0, 1.0, -1.0, 2.0], dtype=dtype, device=device)
    x = torch.tensor([1.0, 0.0, 0.0, -1.0], dtype=dtype, device=device)
    yield Sample((y, x), {}, "atan2[axes]")


def atan2_symbolic(input, other):
    return _sym(sympy.atan2, input, other)


@register("atan2", torch_fn=torch.atan2, tensor_args=("input", "other"), samples=atan2_samples,
          symbolic=atan2_symbolic, aliases=_spellings("atan2", "arctan2"))
def atan2_backward(grad_output, input, other, *, needs_input_grad):
    """y = atan2(a, b): with r = 1 / (a^2 + b^2), dL/da = g b r, dL/db = -g a r; r = 0 where a^2 + b^2 == 0
    (the origin, or an underflow), so both gradients are 0 there, as torch."""
    g, a, b = grad_output, input, other
    denom = a * a + b * b
    recip = torch.where(denom == 0, _zero_like(denom), denom.reciprocal())
    ga = _to(g * b * recip, a) if needs_input_grad[0] else None
    gb = _to(g * -a * recip, b) if needs_input_grad[1] else None
    return ga, gb


def hypot_samples(device, dtype):
    yield from _tensor_pairs("hypot", numbers=False)(device, dtype)
    a = torch.tensor([0.0, 3.0, -2.0], dtype=dtype, device=device)
    b = torch.tensor([1.0, 0.0, 0.0], dtype=dtype, device=device)
    yield Sample((a, b), {}, "hypot[axes]")


def hypot_symbolic(input, other):
    return _sym(lambda a, b: sympy.sqrt(a ** 2 + b ** 2), input, other)


@register("hypot", torch_fn=torch.hypot, tensor_args=("input", "other"), samples=hypot_samples,
          symbolic=hypot_symbolic, aliases=_spellings("hypot"))
def hypot_backward(grad_output, input, other, *, needs_input_grad):
    """y = sqrt(a^2 + b^2): dL/da = g a / y, dL/db = g b / y (0 / 0 = NaN at the origin, as torch)."""
    g, a, b = grad_output, input, other
    result = torch.hypot(a, b)
    ga = _to(g * a / result, a) if needs_input_grad[0] else None
    gb = _to(g * b / result, b) if needs_input_grad[1] else None
    return ga, gb


def lerp_samples(device, dtype):
    mk = Maker(device, dtype)
    x, e = mk.randn(3, 4), mk.randn(3, 4)
    yield Sample((x, e, 0.3), {}, "lerp[number]")
    yield Sample((x, e, 0.7), {}, "lerp[number>0.5]")
    yield Sample((x, e), {"weight": -1.5}, "lerp[weight=number]")
    yield Sample((x, e, mk.uniform(3, 4)), {}, "lerp[tensor]")
    yield Sample((x, e), {"weight": mk.randn(3, 4)}, "lerp[weight=tensor]")
    yield Sample((mk.randn(4), mk.randn(3, 4), mk.uniform(3, 1)), {}, "lerp[broadcast]")
    yield Sample((mk.randn(2, 1, 4), mk.randn(3, 1), mk.uniform(4)), {}, "lerp[broadcast all]")
    yield Sample((mk.randn(2, 3), mk.randn(()), mk.uniform(())), {}, "lerp[scalar end,weight]")
    yield Sample((mk.randn(()), mk.randn(()), 0.25), {}, "lerp[scalar]")
    yield Sample((mk.noncontiguous(x), mk.noncontiguous(e), mk.noncontiguous(mk.uniform(3, 4))), {},
                 "lerp[noncontig]")
    yield Sample((x, e, torch.tensor([0.0, 0.5, 1.0, 2.0], dtype=dtype, device=device)), {}, "lerp[w=0,0.5,1,2]")


def lerp_symbolic(input, end, weight):
    return _sym(lambda a, b, w: a + w * (b - a), input, end, weight)


@register("lerp", torch_fn=torch.lerp, tensor_args=("input", "end", "weight"), samples=lerp_samples,
          keyword_tensors=("weight",), symbolic=lerp_symbolic, aliases=_spellings("lerp"))
def lerp_backward(grad_output, input, end, weight, *, needs_input_grad, needs_keyword_grad=None):
    """y = a + w (b - a): dL/da = g (1 - w), dL/db = g w, dL/dw = g (b - a), each unbroadcast."""
    if not _is_tensor(weight) and (isinstance(weight, bool) or not isinstance(weight, Number)):
        raise InvalidParameterError(f"lerp: weight must be a number or a tensor, got {type(weight).__name__}")
    g, a, b, w = grad_output, input, end, weight
    ga = _to(g * (1 - w), a) if needs_input_grad[0] else None
    gb = _to(g * w, b) if needs_input_grad[1] else None
    want_w = needs_input_grad[2] or (needs_keyword_grad or {}).get("weight", False)
    gw = _to(g * (b - a), w) if want_w and _is_tensor(w) else None
    return ga, gb, gw, {"weight": gw}


def _addc_samples(name, positive_t2=False):
    def samples(device, dtype):
        mk = Maker(device, dtype)

        def t2(*shape):
            return mk.away_from(*shape, margin=0.3) if positive_t2 else mk.randn(*shape)
        yield Sample((mk.randn(3, 4), mk.randn(3, 4), t2(3, 4)), {}, f"{name}[3x4]")
        yield Sample((mk.randn(3, 4), mk.randn(3, 4), t2(3, 4)), {"value": 0.5}, f"{name}[value=0.5]")
        yield Sample((mk.randn(3, 4), mk.randn(3, 4), t2(3, 4)), {"value": -2}, f"{name}[value=-2]")
        yield Sample((mk.randn(4), mk.randn(3, 1), t2(4)), {"value": 1.5}, f"{name}[broadcast]")
        yield Sample((mk.randn(2, 1, 4), mk.randn(()), t2(3, 1)), {}, f"{name}[broadcast all]")
        yield Sample((mk.randn(()), mk.randn(()), t2(())), {}, f"{name}[scalar]")
        yield Sample((mk.noncontiguous(mk.randn(2, 3)), mk.noncontiguous(mk.randn(2, 3)),
                      mk.noncontiguous(t2(2, 3))), {}, f"{name}[noncontig]")
        yield Sample((mk.randn(0, 3), mk.randn(3), t2(3)), {}, f"{name}[empty]")
    samples.__name__ = f"{name}_samples"
    return samples


def _value(name, value):
    if isinstance(value, bool) or not isinstance(value, Number):
        raise InvalidParameterError(f"{name}: value must be a number, got {value!r}")
    return value


def addcmul_symbolic(input, tensor1, tensor2, value=1):
    v = _q(value)
    return _sym(lambda a, b, c: a + v * b * c, input, tensor1, tensor2)


@register("addcmul", torch_fn=torch.addcmul, tensor_args=("input", "tensor1", "tensor2"),
          samples=_addc_samples("addcmul"), symbolic=addcmul_symbolic, aliases=_spellings("addcmul"))
def addcmul_backward(grad_output, input, tensor1, tensor2, *, needs_input_grad, value=1):
    """y = a + v t1 t2: dL/da = g, dL/dt1 = g v t2, dL/dt2 = g v t1, each unbroadcast."""
    v, g = _value("addcmul", value), grad_output
    ga = _to(g, input) if needs_input_grad[0] else None
    g1 = _to(g * (tensor2 * v), tensor1) if needs_input_grad[1] else None
    g2 = _to(g * (tensor1 * v), tensor2) if needs_input_grad[2] else None
    return ga, g1, g2


def addcdiv_symbolic(input, tensor1, tensor2, value=1):
    v = _q(value)
    return _sym(lambda a, b, c: a + v * b / c, input, tensor1, tensor2)


@register("addcdiv", torch_fn=torch.addcdiv, tensor_args=("input", "tensor1", "tensor2"),
          samples=_addc_samples("addcdiv", positive_t2=True), symbolic=addcdiv_symbolic,
          aliases=_spellings("addcdiv"))
def addcdiv_backward(grad_output, input, tensor1, tensor2, *, needs_input_grad, value=1):
    """y = a + v t1 / t2: dL/da = g, dL/dt1 = g v / t2, dL/dt2 = -g v t1 / t2^2, each unbroadcast."""
    v, g = _value("addcdiv", value), grad_output
    ga = _to(g, input) if needs_input_grad[0] else None
    g1 = _to(g * (v / tensor2), tensor1) if needs_input_grad[1] else None
    g2 = _to(-g * (v * tensor1 / (tensor2 * tensor2)), tensor2) if needs_input_grad[2] else None
    return ga, g1, g2


def _mod_samples(name):
    def samples(device, dtype):
        mk = Maker(device, dtype)
        for a, b, tag in _binary_table(mk, positive_other=True):
            yield Sample((a * 3, b), {}, f"{name}[{tag}]")
        yield Sample((mk.randn(3, 4, scale=5.0), mk.away_from(4, margin=0.3, scale=2.0)), {}, f"{name}[wide,bcast]")
        yield Sample((mk.randn(3, 4, scale=3.0), -1.25), {}, f"{name}[negative number]")
        yield Sample((mk.randn(0, 3), mk.positive(3)), {}, f"{name}[empty]")
    samples.__name__ = f"{name}_samples"
    return samples


def _mod_backward(name, rounding_mode):
    def backward(grad_output, input, other, *, needs_input_grad):
        g = grad_output
        if not _is_tensor(input) and needs_input_grad[1]:
            raise UnsupportedError(f"{name}: the gradient with respect to 'other' when 'input' is a number is "
                                   f"not defined by torch either; pass input as a tensor")
        ga = _to(g, input) if needs_input_grad[0] else None
        gb = _to(-g * input.div(other, rounding_mode=rounding_mode), other) if needs_input_grad[1] else None
        return ga, gb
    return backward


fmod_backward = _mod_backward("fmod", "trunc")
fmod_backward.__doc__ = "y = a - trunc(a / b) b: dL/da = g, dL/db = -g trunc(a / b) (piecewise; as torch at the jumps)."
fmod_backward.__name__ = "fmod_backward"
register("fmod", torch_fn=torch.fmod, tensor_args=("input", "other"), samples=_mod_samples("fmod"),
         aliases=_spellings("fmod"))(fmod_backward)

remainder_backward = _mod_backward("remainder", "floor")
remainder_backward.__doc__ = ("y = a - floor(a / b) b: dL/da = g, dL/db = -g floor(a / b) (piecewise; as torch at "
                              "the jumps).")
remainder_backward.__name__ = "remainder_backward"
register("remainder", torch_fn=torch.remainder, tensor_args=("input", "other"), samples=_mod_samples("remainder"),
         aliases=_spellings("remainder") + (torch.Tensor.__mod__,))(remainder_backward)


def xlogy_samples(device, dtype):
    mk = Maker(device, dtype)
    for a, b, tag in _binary_table(mk, positive_other=True):
        yield Sample((a, b.abs() + 0.5 if _is_tensor(b) else abs(b)), {}, f"xlogy[{tag}]")
    # x == 0 with other > 0: y = 0, dL/dx = g log(other).  (x == 0 with other <= 0, where torch
    # sets dL/dx = 0 but the loss is NaN nearby, is checked against torch in test_elementwise_extra.py)
    zeros = torch.tensor([0.0, 0.0, 1.5, -2.0], dtype=dtype, device=device)
    yield Sample((zeros, torch.tensor([2.0, 0.5, 3.0, 0.75], dtype=dtype, device=device)), {}, "xlogy[x=0]")
    yield Sample((2.5, mk.positive(3, 4)), {}, "xlogy[number,3x4]")
    yield Sample((mk.randn(0, 3), mk.positive(3)), {}, "xlogy[empty]")


def xlogy_symbolic(input, other):
    # x log(y): at x == 0 (y > 0) it is 0 already, and its x-derivative log(y) is torch's there
    return _sym(lambda x, y: x * sympy.log(y), input, other)


@register("xlogy", torch_fn=torch.xlogy, tensor_args=("input", "other"), samples=xlogy_samples,
          symbolic=xlogy_symbolic, aliases=_spellings("xlogy"))
def xlogy_backward(grad_output, input, other, *, needs_input_grad):
    """y = x log(o) (0 where x == 0): dL/dx = g log(o) (0 where g == 0 and o is not NaN, and 0 where
    x == 0 and o <= 0), dL/do = g x / o, as torch.  A number input or other has no gradient entry."""
    g, x = grad_output, input
    o = other if _is_tensor(other) else torch.as_tensor(other, dtype=g.dtype, device=g.device)
    gx = go = None
    if needs_input_grad[0]:
        zero = _zero_like(g)
        # xlogy(g, o) = g log(o), 0 where g == 0 (unless o is NaN); its own derivative in g is
        # xlogy(., o) again, so the second derivative stays 0 (not 0 * NaN) where o < 0
        gx = _to(torch.where((x == 0) & (o <= 0), zero, torch.xlogy(g, o)), x)
    if needs_input_grad[1]:
        go = _to(g * x / other, other)
    return gx, go


# -- erfinv, sinc, deg2rad, rad2deg, ndtr, log_ndtr ---------------------------------------

_SQRT_PI = math.sqrt(math.pi)
_INV_SQRT_2PI = 1.0 / math.sqrt(2 * math.pi)


_unary("erfinv", torch.erfinv, sympy.erfinv, lambda x: 0.5 * _SQRT_PI * torch.exp(torch.erfinv(x).pow(2)),
       "y = erfinv x: dL/dx = g (sqrt(pi) / 2) e^(y^2).",
       _edge_samples("erfinv", _domain(-0.9, 0.9), edges=(0.0,)), aliases=_spellings("erfinv"))


def _sinc_derivative(x):
    """sinc'(x) = (pi x cos(pi x) - sin(pi x)) / (pi x^2), 0 at x == 0 (torch's where)."""
    x_pi = x * math.pi
    sq_pi = x * x * math.pi
    return torch.where(sq_pi == 0.0, _zero_like(x), (x_pi * x_pi.cos() - x_pi.sin()) / sq_pi)


def _sinc_symbolic(x):
    return sympy.sin(sympy.pi * x) / (sympy.pi * x)


# x == 0 (where torch's second derivative is 0 / 0 = NaN) is checked first order in test_elementwise_extra.py
_unary("sinc", torch.sinc, _sinc_symbolic, _sinc_derivative,
       "y = sin(pi x) / (pi x): dL/dx = g (pi x cos(pi x) - sin(pi x)) / (pi x^2), 0 at x == 0 as torch.",
       _edge_samples("sinc", lambda mk, s: mk.away_from(s, margin=0.1, scale=2.0), edges=(1.0, -2.0, 0.5)),
       aliases=_spellings("sinc"))
_unary("deg2rad", torch.deg2rad, lambda x: x * sympy.pi / 180, lambda x: torch.full_like(x, math.pi / 180),
       "y = x pi / 180: dL/dx = g pi / 180.",
       _edge_samples("deg2rad", lambda mk, s: mk.randn(s, scale=90.0)), aliases=_spellings("deg2rad"))
_unary("rad2deg", torch.rad2deg, lambda x: x * 180 / sympy.pi, lambda x: torch.full_like(x, 180 / math.pi),
       "y = x 180 / pi: dL/dx = g 180 / pi.",
       _edge_samples("rad2deg", lambda mk, s: mk.randn(s)), aliases=_spellings("rad2deg"))
_unary("ndtr", torch.special.ndtr, lambda x: (1 + sympy.erf(x / sympy.sqrt(2))) / 2,
       lambda x: torch.exp(-0.5 * x.pow(2)) * _INV_SQRT_2PI,
       "y = Phi(x), the standard normal CDF: dL/dx = g e^(-x^2 / 2) / sqrt(2 pi).",
       _edge_samples("ndtr", lambda mk, s: mk.randn(s, scale=2.0), edges=(0.0, -10.0)))


def _log_ndtr_derivative(x):
    """d log Phi(x) / dx = phi(x) / Phi(x) = e^(-(y + x^2 / 2)) / sqrt(2 pi), y = log Phi(x): no overflow
    for very negative x (Phi underflows, the exponent does not)."""
    return _INV_SQRT_2PI * (torch.special.log_ndtr(x) + x.pow(2) / 2).neg().exp()


_unary("log_ndtr", torch.special.log_ndtr, lambda x: sympy.log((1 + sympy.erf(x / sympy.sqrt(2))) / 2),
       _log_ndtr_derivative, "y = log Phi(x): dL/dx = g e^(-(y + x^2 / 2)) / sqrt(2 pi).",
       _edge_samples("log_ndtr", lambda mk, s: mk.randn(s, scale=3.0), edges=(0.0, -6.0, 6.0)))
# (the far tail, x = -30, where Phi underflows, is compared with torch in test_elementwise_extra.py)


# -- logaddexp, logaddexp2, copysign, xlog1py, float_power, rsub ---------------------------

def _logaddexp_backward(name, base_pow):
    def backward(grad_output, input, other, *, needs_input_grad):
        g, a, b = grad_output, input, other
        ga = _to(g / (1 + base_pow(b - a)), a) if needs_input_grad[0] else None
        gb = _to(g / (1 + base_pow(a - b)), b) if needs_input_grad[1] else None
        return ga, gb
    backward.__name__ = f"{name}_backward"
    return backward


def logaddexp_samples(device, dtype):
    yield from _tensor_pairs("logaddexp", numbers=False)(device, dtype)
    big = torch.tensor([30.0, -30.0, 0.0, 700.0], dtype=dtype, device=device) if dtype == torch.float64 else \
        torch.tensor([30.0, -30.0, 0.0, 80.0], dtype=dtype, device=device)
    other = torch.tensor([-30.0, 30.0, 0.0, 1.0], dtype=dtype, device=device)
    yield Sample((big, other), {}, "logaddexp[far apart,equal]")


logaddexp_backward = _logaddexp_backward("logaddexp", torch.exp)
logaddexp_backward.__doc__ = ("y = log(e^a + e^b): dL/da = g / (1 + e^(b - a)) (the softmax weight of a), "
                              "dL/db = g / (1 + e^(a - b)).")
register("logaddexp", torch_fn=torch.logaddexp, tensor_args=("input", "other"), samples=logaddexp_samples,
         symbolic=lambda input, other: _sym(lambda a, b: sympy.log(sympy.exp(a) + sympy.exp(b)), input, other),
         aliases=_spellings("logaddexp"))(logaddexp_backward)

logaddexp2_backward = _logaddexp_backward("logaddexp2", lambda d: torch.pow(2, d))
logaddexp2_backward.__doc__ = "y = log2(2^a + 2^b): dL/da = g / (1 + 2^(b - a)), dL/db = g / (1 + 2^(a - b))."
register("logaddexp2", torch_fn=torch.logaddexp2, tensor_args=("input", "other"),
         samples=_tensor_pairs("logaddexp2", numbers=False),
         symbolic=lambda input, other: _sym(lambda a, b: sympy.log(2 ** a + 2 ** b, 2), input, other),
         aliases=_spellings("logaddexp2"))(logaddexp2_backward)


def copysign_samples(device, dtype):
    yield from _tensor_pairs("copysign", numbers=True)(device, dtype)
    x = torch.tensor([0.0, -0.0, 1.5, -2.0, 3.0], dtype=dtype, device=device)
    yield Sample((x, torch.tensor([1.0, -1.0, -0.0, 0.0, -1.0], dtype=dtype, device=device)), {}, "copysign[zeros]")


@register("copysign", torch_fn=torch.copysign, tensor_args=("input", "other"), samples=copysign_samples,
          aliases=_spellings("copysign"))
def copysign_backward(grad_output, input, other, *, needs_input_grad):
    """y = |a| sign(b) (the sign bit of b, -0.0 included): dL/da = g y / a (+-1), 0 where a == 0; dL/db = 0
    (piecewise constant in b), as torch."""
    g, a = grad_output, input
    ga = gb = None
    if needs_input_grad[0]:
        result = torch.copysign(a, other)
        ratio = torch.where(a == 0, _zero_like(g), result / a)
        ga = _to(g * ratio, a)
    if needs_input_grad[1]:
        gb = torch.zeros_like(other)
    return ga, gb


def xlog1py_samples(device, dtype):
    mk = Maker(device, dtype)
    for a, b, tag in _binary_table(mk, positive_other=True):
        yield Sample((a, b.abs() - 0.5 if _is_tensor(b) else abs(b)), {}, f"xlog1py[{tag}]")
    yield Sample((2.5, mk.positive(3, 4)), {}, "xlog1py[number,3x4]")


@register("xlog1py", torch_fn=torch.special.xlog1py, tensor_args=("input", "other"), samples=xlog1py_samples,
          symbolic=lambda input, other: _sym(lambda x, y: x * sympy.log(1 + y), input, other))
def xlog1py_backward(grad_output, input, other, *, needs_input_grad):
    """y = x log(1 + o) (0 where x == 0): dL/dx = g log(1 + o) (0 where g == 0 unless o is NaN, 0 where
    x == 0 and o <= -1), dL/do = g x / (o + 1), as torch."""
    g, x = grad_output, input
    o = other if _is_tensor(other) else torch.as_tensor(other, dtype=g.dtype, device=g.device)
    gx = go = None
    if needs_input_grad[0]:
        gx = _to(torch.where((x == 0) & (o <= -1), _zero_like(g), torch.special.xlog1py(g, o)), x)
    if needs_input_grad[1]:
        go = _to(g * x / (other + 1), other)
    return gx, go


def float_power_samples(device, dtype):
    mk = Maker(device, dtype)
    yield Sample((mk.randn(3, 4), 2), {}, "float_power[^2]")
    yield Sample((mk.positive(3, 4), 0.5), {}, "float_power[pos,^0.5]")
    yield Sample((mk.integers(3, 4), 0), {}, "float_power[zeros,^0]")
    yield Sample((mk.positive(3, 4), mk.randn(4)), {}, "float_power[3x4,4]")
    yield Sample((mk.positive(()), mk.randn(2, 3)), {}, "float_power[scalar,2x3]")
    yield Sample((2.0, mk.randn(3, 4)), {}, "float_power[2.0,3x4]")
    yield Sample((mk.noncontiguous(mk.positive(2, 3)), 3), {}, "float_power[noncontig]")


def float_power_symbolic(input, exponent):
    return _sym(lambda a, b: a ** b, input, exponent)


@register("float_power", torch_fn=torch.float_power, tensor_args=("input", "exponent"), samples=float_power_samples,
          symbolic=float_power_symbolic, aliases=_spellings("float_power"))
def float_power_backward(grad_output, input, exponent, *, needs_input_grad):
    """y = pow(a, b) computed in float64: pow's gradients (see ``pow``) of the float64 values, cast back to
    each argument's dtype."""
    a = input.double() if _is_tensor(input) else input
    b = exponent.double() if _is_tensor(exponent) else exponent
    ga, gb = pow_backward(grad_output, a, b, needs_input_grad=needs_input_grad)
    return (ga.to(input.dtype) if ga is not None else None, gb.to(exponent.dtype) if gb is not None else None)


def rsub_samples(device, dtype):
    mk = Maker(device, dtype)
    for a, b, tag in _binary_table(mk):
        yield Sample((a, b), {}, f"rsub[{tag}]")
    yield Sample((mk.randn(2, 3), mk.randn(3)), {"alpha": 2.0}, "rsub[alpha=2]")


@register("rsub", torch_fn=torch.rsub, tensor_args=("input", "other"), samples=rsub_samples,
          symbolic=lambda input, other, alpha=1: _sym(lambda x, y: y - _q(alpha) * x, input, other))
def rsub_backward(grad_output, input, other, *, needs_input_grad, alpha=1):
    """y = o - alpha x: dL/dx = unbroadcast(-alpha g), dL/do = unbroadcast(g)."""
    gx = _to(grad_output * (-alpha), input) if needs_input_grad[0] else None
    go = _to(grad_output, other) if needs_input_grad[1] else None
    return gx, go
