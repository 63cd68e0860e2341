"""Reductions and order statistics: ``max``/``min`` (full and along a dim), ``amax``/``amin``,
``maximum``/``minimum``, ``median``, ``kthvalue``, ``logsumexp``, ``cumsum``, ``cumprod``,
``var``/``std`` (and ``var_mean``/``std_mean``), ``clamp``/``clip``.

Notation: ``x`` the input, ``g`` the incoming gradient, ``R`` the reduced dims, ``r(.)``
re-inserts the reduced dims of a result (``keepdim=False``) so it broadcasts against ``x``.

* Selections (max, min, median): ``y = x[a]`` so ``dL/dx = g`` at the selected element(s).
  Full reductions (``x.max()``, ``x.min()``, ``x.median()``) split ``g`` EVENLY among the
  elements equal to the result, as torch does (``evenly_distribute_backward``); if the
  result is NaN the NaNs share it.  ``median(dim)`` and ``kthvalue`` send ``g`` to the index
  torch's kernel returns: which of several tied values it picks is the kernel's choice, so
  the rule asks the same kernel (or takes the saved indices).  Along a dim (``x.max(dim)``) the output is
  ``(values, indices)`` and the whole ``g`` goes to the returned index: the FIRST maximum,
  or the first NaN (torch's CPU/CUDA kernels); the rule finds that index itself
  (``min over {i : x_i == m} of i``), not from torch's indices.
* ``amax``/``amin``: ``dL/dx = r(g) * M / sum_R M`` with ``M = [x == r(y)]``: ties share
  evenly.  A NaN result gives ``M = 0`` and torch's formula ``(g / 0) * 0 = NaN``; so does
  the rule.
* ``maximum(a, b)``: ``dL/da = g [a > b] + g/2 [a == b]``, ``dL/db = g [b > a] + g/2 [a == b]``,
  then undo broadcasting; where either is NaN neither comparison holds and both get ``g``
  (torch's ``where(a == b, g/2, g).masked_fill_(a < b, 0)``).
* ``logsumexp``: ``y = log sum_R exp x``, ``dL/dx = r(g) exp(x - r(y))``.  A row of
  ``-inf`` (``y = -inf``) or a ``+inf`` entry gives ``inf - inf = NaN`` there, as torch.
* ``cumsum``: ``y_j = sum_{i<=j} x_i`` is linear with an upper-triangular adjoint:
  ``dL/dx_i = sum_{j>=i} g_j`` = flip(cumsum(flip(g))).
* ``cumprod``: ``dy_j/dx_k = prod_{i<=j, i!=k} x_i`` for ``j >= k``, written without a
  division so zeros are exact: ``dL/dx_k = E_k sum_{j>=k} g_j P_{kj}`` with the exclusive
  prefix product ``E_k = prod_{i<k} x_i`` and ``P_{kj} = prod_{k<i<=j} x_i`` (the cumprod
  of row ``k`` of a matrix holding ``x_i`` for ``i > k`` and 1 elsewhere); O(n^2) per line.
* ``var`` with ``dof = N - correction`` (``N`` the reduced count): ``dL/dx = (2 / dof)
  r(g) (x - r(mean))``.  torch's edge cases are mirrored: a full reduction with
  ``dof <= 0`` gives ``g * (NaN where x == mean else +inf)``; along dims ``2 / dof`` is used
  as is (``+inf`` at ``dof = 0``, negative for ``correction > N``).
  ``std = sqrt(var)``: ``dL/dx = var'(g / (2 std))`` with ``g / (2 std)`` set to 0 where
  ``std == 0`` (torch: a constant input gets gradient 0, not NaN).
  ``var_mean``/``std_mean`` add the mean's ``r(g_mean) / N``.
* ``clamp(x, lo, hi)`` (also ``clip``, and ``clamp_min(x, lo)``, whose second argument is
  clamp's; ``clamp_max(x, hi)`` is not an alias: its second argument is ``hi``):
  ``dL/dx = g [lo <= x <= hi]`` (the boundary passes the gradient; NaN
  gets 0).  Tensor bounds are differentiable: ``dL/dlo = g [x < lo and lo < hi]``,
  ``dL/dhi = g [x > hi or hi < lo]`` (with one bound: ``g [x < lo]``, ``g [x > hi]``), each
  summed down to the bound's shape.

Every backward is linear in ``g`` with masks and values built from public ops, so second
derivatives flow through the same expressions.
"""

from __future__ import annotations

import functools
import math
from numbers import Number

import numpy as np
import sympy
import torch

from gradcheck_kit.errors import InvalidInputError, InvalidParameterError
from gradcheck_kit.manual import _symbolic
from gradcheck_kit.manual._sampling import Maker
from gradcheck_kit.manual._shapes import unbroadcast
from gradcheck_kit.manual.registry import Sample, register

__all__ = ["expects"]

NAN, INF = float("nan"), float("inf")


# -- helpers ------------------------------------------------------------------------------

def _dims(op: str, dim, ndim: int) -> tuple[int, ...]:
    """``dim`` (None, int, tuple; empty = all) as sorted non-negative axes; a 0-d tensor has none."""
    if dim is None or (isinstance(dim, (tuple, list)) and len(dim) == 0):
        return tuple(range(ndim))
    dims = (dim,) if isinstance(dim, int) else tuple(dim)
    rank = max(ndim, 1)
    out = []
    for d in dims:
        if not isinstance(d, int) or isinstance(d, bool) or not -rank <= d < rank:
            raise InvalidParameterError(f"{op}: dim {d!r} is out of range for a {ndim}-d input")
        out.append(d % rank)
    if len(set(out)) != len(out):
        raise InvalidParameterError(f"{op}: dim {dim!r} names the same dimension twice")
    return tuple(sorted(out)) if ndim else ()


def _restore(t: torch.Tensor, ndim: int, dims: tuple[int, ...], keepdim: bool) -> torch.Tensor:
    """Re-insert the reduced dims (size 1) so ``t`` broadcasts against the input."""
    if keepdim:
        return t
    for d in dims:
        t = t.unsqueeze(d)
    return t


def _first(g):
    """The gradient of the first output of a multi-output op (``(values, indices)``)."""
    return g[0] if isinstance(g, tuple) else g


def _evenly(g, x, result):
    """``g`` split evenly among the elements equal to ``result`` (the NaNs if it is NaN)."""
    mask = torch.where(result.isnan(), x.isnan(), x == result)
    return mask * (g / mask.sum())


def _arange_along(x: torch.Tensor, dim: int) -> torch.Tensor:
    n = x.shape[dim] if x.dim() else 1
    shape = [1] * max(x.dim(), 1)
    shape[dim] = n
    return torch.arange(n, device=x.device).reshape(shape if x.dim() else ())


def _first_extreme_index(x: torch.Tensor, dim: int, largest: bool) -> torch.Tensor:
    """Index (keepdim) of the first max/min along ``dim``, or of the first NaN if there is one."""
    m = x.amax(dim, keepdim=True) if largest else x.amin(dim, keepdim=True)
    hit = torch.where(m.isnan(), x.isnan(), x == m)
    pos = _arange_along(x, dim)
    n = x.shape[dim] if x.dim() else 1
    return torch.where(hit, pos, n).amin(dim, keepdim=True)


def _reduced(x: torch.Tensor, dims: tuple[int, ...], keepdim: bool) -> tuple[int, ...]:
    """Output shape of reducing ``x`` over ``dims``."""
    return tuple(1 if i in dims else n for i, n in enumerate(x.shape)) if keepdim else \
        tuple(n for i, n in enumerate(x.shape) if i not in dims)


def _broadcast(*xs, **kw) -> tuple[int, ...]:
    """Broadcast shape of the tensors among the arguments (clamp's bounds may be keywords)."""
    shapes = [tuple(x.shape) for x in (*xs, *kw.values()) if isinstance(x, torch.Tensor)]
    try:
        return tuple(torch.broadcast_shapes(*shapes))
    except RuntimeError:
        raise InvalidInputError(f"the tensor shapes {shapes} do not broadcast") from None


def expects(op: str, shape_fn):
    """Decorator: ``grad_output`` must have the output's shape (``shape_fn(*args, **params)``;
    a list of shapes for a multi-output op, ``None`` for an integer output), else one
    ``InvalidInputError``: a wrong shape would otherwise broadcast into a silently wrong answer.
    Shapes are computed in Python; ``_dims`` turns a bad ``dim`` into ``InvalidParameterError``."""
    def deco(backward):
        @functools.wraps(backward)
        def checked(grad_output, *args, needs_input_grad, **params):
            call = {k: v for k, v in params.items() if k not in ("saved", "needs_keyword_grad")}
            try:
                want = shape_fn(*args, **call)
            except InvalidInputError as e:
                raise InvalidInputError(f"{op}: {e}") from None
            multi = isinstance(want, list)
            wants = want if multi else [want]
            gs = list(grad_output) if isinstance(grad_output, (tuple, list)) else [grad_output]
            if multi != isinstance(grad_output, (tuple, list)) or len(gs) != len(wants):
                raise InvalidInputError(f"{op}: grad_output must be {len(wants)} entries (one per output) "
                                        f"for this call, got {type(grad_output).__name__}")
            for i, (g, w) in enumerate(zip(gs, wants)):
                if g is None or w is None:
                    continue
                if not isinstance(g, torch.Tensor):
                    raise InvalidInputError(f"{op}: grad_output must be a tensor, got {type(g).__name__}")
                if tuple(g.shape) != tuple(w):
                    which = f" entry {i}" if multi else ""
                    raise InvalidInputError(f"{op}: grad_output{which} has shape {tuple(g.shape)} but the output "
                                            f"has shape {tuple(w)}")
            return backward(grad_output, *args, needs_input_grad=needs_input_grad, **params)
        return checked
    return deco


def _select_shape(op):
    def shape(input, other=None, dim=None, keepdim=False):
        if isinstance(other, torch.Tensor):
            return _broadcast(input, other)
        dim = other if other is not None else dim
        if dim is None:
            return ()
        return [_reduced(input, _dims(op, dim, input.dim()), keepdim), None]
    return shape


def _median_shape(input, dim=None, keepdim=False):
    return () if dim is None else [_reduced(input, _dims("median", dim, input.dim()), keepdim), None]


def _kthvalue_shape(input, k, dim=-1, keepdim=False):
    return [_reduced(input, _dims("kthvalue", dim, input.dim()), keepdim), None]


def _dims_shape(op, default=()):
    def shape(input, dim=default, keepdim=False, **_):
        return _reduced(input, _dims(op, dim, input.dim()), keepdim)
    return shape


def _same_shape(input, *_, **__):
    return tuple(input.shape)


def _var_shape(op):
    """var/std: ``torch.var(x, True)`` passes ``unbiased`` where ``dim`` stands: no dims then."""
    def shape(input, dim=None, keepdim=False, **_):
        return _reduced(input, _dims(op, None if isinstance(dim, bool) else dim, input.dim()), keepdim)
    return shape


def _moments_shape(op):
    inner = _var_shape(op)
    return lambda *a, **k: [inner(*a, **k)] * 2


def _var_forward(fn):
    """The forward, also for the bool-in-dim spelling (``dim=True`` read as ``unbiased=True``)."""
    def forward(input, dim=None, **params):
        if isinstance(dim, bool):
            return fn(input, dim, **params)               # torch's var(input, unbiased) overload
        return fn(input, **({} if dim is None else {"dim": dim}), **params)
    forward.__name__ = fn.__name__
    return forward


def _unbiased_in_dim(backward):
    """``torch.var(x, True)``: torch's ``var(input, unbiased)`` overload puts a bool where ``dim`` is."""
    @functools.wraps(backward)
    def wrapper(grad_output, input, *, needs_input_grad, dim=None, unbiased=None, **params):
        if isinstance(dim, bool):
            if unbiased is not None:
                raise InvalidParameterError(f"unbiased given twice ({dim!r} and unbiased={unbiased!r})")
            dim, unbiased = None, dim
        return backward(grad_output, input, needs_input_grad=needs_input_grad, dim=dim, unbiased=unbiased, **params)
    return wrapper


# -- max, min (full and along a dim) ---------------------------------------------------------

def _select_samples(name):
    def samples(device, dtype):
        mk = Maker(device, dtype)
        x = mk.randn(3, 4)
        yield Sample((x,), {}, f"{name}[all]")
        yield Sample((mk.integers(3, 4, low=-1, high=2),), {}, f"{name}[all,ties]")
        yield Sample((mk.randn(()),), {}, f"{name}[scalar]")
        yield Sample((x,), {"dim": 1}, f"{name}[dim=1]")
        yield Sample((x,), {"dim": 0, "keepdim": True}, f"{name}[dim=0,keepdim]")
        yield Sample((mk.integers(2, 3, 5, low=-1, high=2),), {"dim": -1}, f"{name}[dim=-1,ties]")
        yield Sample((mk.noncontiguous(mk.randn(4, 3)),), {"dim": 0}, f"{name}[dim=0,noncontig]")
        yield Sample((mk.randn(()),), {"dim": 0}, f"{name}[scalar,dim=0]")
        nan = torch.tensor([[1.0, NAN, 3.0, NAN], [2.0, 5.0, 5.0, -1.0]], dtype=dtype, device=device)
        yield Sample((nan,), {}, f"{name}[all,nan]")
        yield Sample((nan,), {"dim": 1}, f"{name}[dim=1,nan]")
        inf = torch.tensor([[-INF, -INF, -INF], [INF, 1.0, INF]], dtype=dtype, device=device)
        yield Sample((inf,), {"dim": 1}, f"{name}[dim=1,inf]")
        yield Sample((x, 1), {}, f"{name}[dim positional]")
        yield Sample((x, mk.randn(4)), {}, f"{name}[other tensor,broadcast]")
        yield Sample((mk.randn(0, 3),), {"dim": 1}, f"{name}[empty,dim=1]")
        yield Sample((mk.channels_last(mk.randn(2, 3, 2, 2)),), {"dim": 1}, f"{name}[channels_last,dim=1]")
    samples.__name__ = f"{name}_samples"
    return samples


def _selection_save(fn):
    def save(input, other=None, dim=None, keepdim=False):
        if isinstance(other, torch.Tensor):               # torch.max(a, b): the binary maximum
            return fn(input, other), {}
        dim = other if other is not None else dim         # torch.max(x, 1): dim given positionally
        if dim is None:
            out = fn(input)
            return out, {"result": out}
        out = fn(input, dim, keepdim)
        return out, {"indices": out.indices}
    return save


def _selection_backward(op, reduce_fn, largest):
    def backward(grad_output, input, other=None, *, needs_input_grad, dim=None, keepdim=False, saved=None):
        """Full: g split evenly among the ties.  Along a dim: g to the first extreme (or first NaN).
        With a tensor ``other`` (``torch.max(a, b)``): the binary ``maximum``/``minimum``."""
        if isinstance(other, torch.Tensor):
            return _binary_backward(largest)(grad_output, input, other, needs_input_grad=needs_input_grad)
        if other is not None:
            if dim is not None:
                raise InvalidParameterError(f"{op}: dim given twice ({other!r} and dim={dim!r})")
            dim = other
        if not needs_input_grad[0]:
            return None, None
        g = _first(grad_output)
        if dim is None:                                   # full reduction: ties share evenly
            result = saved["result"] if saved else reduce_fn(input)
            return _evenly(g, input, result), None
        (d,) = _dims(op, dim, input.dim()) or (0,)
        idx = saved["indices"] if saved else _first_extreme_index(input, d, largest)
        idx = _restore(idx, input.dim(), (d,), keepdim or not input.dim() or saved is None)
        g = _restore(g, input.dim(), (d,), keepdim or not input.dim())
        return torch.where(_arange_along(input, d) == idx, g, 0).to(input.dtype), None
    return backward


register("max", torch_fn=torch.max, tensor_args=("input", "other"), samples=_select_samples("max"),
         save=_selection_save(torch.max), aliases=(torch.Tensor.max,))(
    expects("max", _select_shape("max"))(_selection_backward("max", torch.max, True)))
register("min", torch_fn=torch.min, tensor_args=("input", "other"), samples=_select_samples("min"),
         save=_selection_save(torch.min), aliases=(torch.Tensor.min,))(
    expects("min", _select_shape("min"))(_selection_backward("min", torch.min, False)))


def median_samples(device, dtype):
    mk = Maker(device, dtype)
    yield Sample((mk.randn(3, 5),), {}, "median[odd]")
    yield Sample((mk.randn(2, 4),), {}, "median[even,lower]")
    ties = torch.tensor([[3.0, 1.0, 3.0, 3.0, 2.0], [0.0, 2.0, 2.0, 1.0, 2.0]], dtype=dtype, device=device)
    yield Sample((ties,), {}, "median[ties]")
    yield Sample((ties,), {"dim": 1}, "median[dim=1,ties]")
    yield Sample((mk.randn(4, 3),), {"dim": 0, "keepdim": True}, "median[dim=0,keepdim]")
    yield Sample((torch.tensor([1.0, NAN, 2.0, NAN], dtype=dtype, device=device),), {}, "median[nan]")
    yield Sample((mk.randn(()),), {}, "median[scalar]")


def _median_save(input, dim=None, keepdim=False):
    if dim is None:
        out = torch.median(input)
        return out, {"result": out}
    out = torch.median(input, dim, keepdim)
    return out, {"indices": out.indices}


@register("median", torch_fn=torch.median, tensor_args=("input",), samples=median_samples, save=_median_save,
          aliases=(torch.Tensor.median,))
@expects("median", _median_shape)
def median_backward(grad_output, input, *, needs_input_grad, dim=None, keepdim=False, saved=None):
    """Full: g split evenly among the elements equal to the (lower) median.  Along a dim: g to
    the index torch's kernel returns (which of tied values it picks is the kernel's choice, so
    the rule asks the same kernel: ``torch.median(x, dim).indices``, or the saved indices)."""
    if not needs_input_grad[0]:
        return (None,)
    g = _first(grad_output)
    if dim is None:
        result = saved["result"] if saved else torch.median(input)
        return (_evenly(g, input, result),)
    (d,) = _dims("median", dim, input.dim()) or (0,)
    idx = saved["indices"] if saved else torch.median(input, d, keepdim).indices
    idx = _restore(idx, input.dim(), (d,), keepdim or not input.dim())
    g = _restore(g, input.dim(), (d,), keepdim or not input.dim())
    return (torch.where(_arange_along(input, d) == idx, g, 0).to(input.dtype),)


def kthvalue_samples(device, dtype):
    mk = Maker(device, dtype)
    yield Sample((mk.randn(3, 5),), {"k": 2}, "kthvalue[k=2,last dim]")
    yield Sample((mk.randn(4, 3),), {"k": 4, "dim": 0, "keepdim": True}, "kthvalue[k=4,dim=0,keepdim]")
    ties = torch.tensor([[3.0, 1.0, 3.0, 3.0, 2.0], [0.0, 2.0, 2.0, 1.0, 2.0]], dtype=dtype, device=device)
    yield Sample((ties,), {"k": 3, "dim": 1}, "kthvalue[ties]")
    yield Sample((torch.tensor([1.0, NAN, 2.0], dtype=dtype, device=device),), {"k": 3}, "kthvalue[nan]")
    yield Sample((mk.randn(()),), {"k": 1}, "kthvalue[scalar]")


def _kthvalue_save(input, k, dim=-1, keepdim=False):
    out = torch.kthvalue(input, k, dim, keepdim)
    return out, {"indices": out.indices}


@register("kthvalue", torch_fn=torch.kthvalue, tensor_args=("input",), samples=kthvalue_samples,
          save=_kthvalue_save, aliases=(torch.Tensor.kthvalue,))
@expects("kthvalue", _kthvalue_shape)
def kthvalue_backward(grad_output, input, *, needs_input_grad, k, dim=-1, keepdim=False, saved=None):
    """(values, indices): g to the index torch's kernel returns (its choice among tied values)."""
    if not needs_input_grad[0]:
        return (None,)
    g = _first(grad_output)
    (d,) = _dims("kthvalue", dim, input.dim()) or (0,)
    idx = saved["indices"] if saved else torch.kthvalue(input, k, d, keepdim).indices
    idx = _restore(idx, input.dim(), (d,), keepdim or not input.dim())
    g = _restore(g, input.dim(), (d,), keepdim or not input.dim())
    return (torch.where(_arange_along(input, d) == idx, g, 0).to(input.dtype),)


# -- amax, amin ---------------------------------------------------------------------------

def _amax_samples(name):
    def samples(device, dtype):
        mk = Maker(device, dtype)
        x = mk.randn(2, 3, 4)
        yield Sample((x,), {}, f"{name}[all]")
        yield Sample((x,), {"dim": 1}, f"{name}[dim=1]")
        yield Sample((x,), {"dim": (0, 2), "keepdim": True}, f"{name}[dim=(0,2),keepdim]")
        yield Sample((mk.integers(3, 5, low=-1, high=2),), {"dim": 1}, f"{name}[dim=1,ties]")
        yield Sample((mk.integers(3, 5, low=-1, high=2),), {}, f"{name}[all,ties]")
        yield Sample((mk.randn(()),), {}, f"{name}[scalar]")
        yield Sample((mk.noncontiguous(mk.randn(3, 4)),), {"dim": -1}, f"{name}[noncontig]")
        nan = torch.tensor([[1.0, NAN, 3.0], [2.0, 2.0, -1.0]], dtype=dtype, device=device)
        yield Sample((nan,), {"dim": 1}, f"{name}[nan]")
        yield Sample((mk.randn(0, 3),), {"dim": 1}, f"{name}[empty]")
        yield Sample((mk.channels_last(mk.randn(2, 3, 2, 2)),), {"dim": (1, 3)}, f"{name}[channels_last]")
    samples.__name__ = f"{name}_samples"
    return samples


def _amax_backward(op, fn):
    def backward(grad_output, input, *, needs_input_grad, dim=(), keepdim=False):
        if not needs_input_grad[0]:
            return (None,)
        dims = _dims(op, dim, input.dim())
        y = _restore(fn(input, dim=dims, keepdim=True), input.dim(), dims, True)
        g = _restore(grad_output, input.dim(), dims, keepdim)
        mask = input == y                                  # ties share: g / count on each
        return ((g / mask.sum(dims, keepdim=True)) * mask,)
    return backward


register("amax", torch_fn=torch.amax, tensor_args=("input",), samples=_amax_samples("amax"),
         aliases=(torch.Tensor.amax,))(
    expects("amax", _dims_shape("amax"))(_amax_backward("amax", torch.amax)))
register("amin", torch_fn=torch.amin, tensor_args=("input",), samples=_amax_samples("amin"),
         aliases=(torch.Tensor.amin,))(
    expects("amin", _dims_shape("amin"))(_amax_backward("amin", torch.amin)))


# -- maximum, minimum ---------------------------------------------------------------------

def _binary_samples(name):
    def samples(device, dtype):
        mk = Maker(device, dtype)
        yield Sample((mk.randn(3, 4), mk.randn(3, 4)), {}, f"{name}[same]")
        yield Sample((mk.randn(2, 3, 4), mk.randn(3, 1)), {}, f"{name}[broadcast]")
        yield Sample((mk.randn(()), mk.randn(2, 3)), {}, f"{name}[scalar,broadcast]")
        yield Sample((mk.integers(4, 5, low=-1, high=2), mk.integers(4, 5, low=-1, high=2)), {}, f"{name}[ties]")
        a = torch.tensor([1.0, NAN, 2.0, NAN, INF], dtype=dtype, device=device)
        b = torch.tensor([NAN, 1.0, 2.0, NAN, INF], dtype=dtype, device=device)
        yield Sample((a, b), {}, f"{name}[nan,inf]")
        yield Sample((mk.randn(0, 3), mk.randn(3)), {}, f"{name}[empty]")
    samples.__name__ = f"{name}_samples"
    return samples


def _binary_backward(largest):
    def backward(grad_output, input, other, *, needs_input_grad):
        g = grad_output
        half = torch.where(input == other, g / 2, g)           # ties: half each; NaN: all to both
        gi = go = None
        if needs_input_grad[0]:
            lose = input < other if largest else input > other
            gi = unbroadcast(torch.where(lose, 0, half), input.shape).to(input.dtype)
        if needs_input_grad[1]:
            lose = other < input if largest else other > input
            go = unbroadcast(torch.where(lose, 0, half), other.shape).to(other.dtype)
        return gi, go
    return backward


def maximum_symbolic(input, other):
    """max(a, b) = (a + b + |a - b|) / 2: at a tie sympy's sign(0) = 0 gives torch's 1/2 each."""
    return _symbolic.elementwise(lambda a, b: (a + b + sympy.Abs(a - b)) / 2, input, other)


def minimum_symbolic(input, other):
    """min(a, b) = (a + b - |a - b|) / 2."""
    return _symbolic.elementwise(lambda a, b: (a + b - sympy.Abs(a - b)) / 2, input, other)


register("maximum", torch_fn=torch.maximum, tensor_args=("input", "other"), samples=_binary_samples("maximum"),
         symbolic=maximum_symbolic, aliases=(torch.Tensor.maximum,))(
    expects("maximum", _broadcast)(_binary_backward(True)))
register("minimum", torch_fn=torch.minimum, tensor_args=("input", "other"), samples=_binary_samples("minimum"),
         symbolic=minimum_symbolic, aliases=(torch.Tensor.minimum,))(
    expects("minimum", _broadcast)(_binary_backward(False)))


# -- logsumexp ----------------------------------------------------------------------------

def logsumexp_samples(device, dtype):
    mk = Maker(device, dtype)
    x = mk.randn(2, 3, 4)
    yield Sample((x,), {"dim": 1}, "logsumexp[dim=1]")
    yield Sample((x,), {"dim": (0, 2), "keepdim": True}, "logsumexp[dim=(0,2),keepdim]")
    yield Sample((x,), {"dim": -1}, "logsumexp[dim=-1]")
    yield Sample((mk.randn(3, 4, scale=30.0),), {"dim": 1}, "logsumexp[large]")
    yield Sample((mk.randn(()),), {"dim": 0}, "logsumexp[scalar]")
    yield Sample((mk.noncontiguous(mk.randn(3, 4)),), {"dim": 0}, "logsumexp[noncontig]")
    inf = torch.tensor([[-INF, -INF, -INF], [-INF, 1.0, 2.0], [INF, 1.0, 0.0]], dtype=dtype, device=device)
    yield Sample((inf,), {"dim": 1}, "logsumexp[inf rows]")
    yield Sample((mk.randn(0, 3),), {"dim": 1}, "logsumexp[empty]")


@register("logsumexp", torch_fn=torch.logsumexp, tensor_args=("input",), samples=logsumexp_samples,
          aliases=(torch.Tensor.logsumexp, torch.special.logsumexp))
@expects("logsumexp", _dims_shape("logsumexp"))
def logsumexp_backward(grad_output, input, *, needs_input_grad, dim, keepdim=False):
    """y = log sum_R exp x: dL/dx = r(g) exp(x - r(y))."""
    if not needs_input_grad[0]:
        return (None,)
    dims = _dims("logsumexp", dim, input.dim())
    y = torch.logsumexp(input, dims, keepdim=True) if input.dim() else input
    return (_restore(grad_output, input.dim(), dims, keepdim) * (input - y).exp(),)


# -- cumsum, cumprod ----------------------------------------------------------------------

def _cum_samples(name):
    def samples(device, dtype):
        mk = Maker(device, dtype)
        x = mk.randn(3, 5)
        yield Sample((x,), {"dim": 1}, f"{name}[dim=1]")
        yield Sample((x,), {"dim": 0}, f"{name}[dim=0]")
        yield Sample((mk.randn(2, 3, 4),), {"dim": -2}, f"{name}[3d,dim=-2]")
        yield Sample((mk.randn(()),), {"dim": 0}, f"{name}[scalar]")
        yield Sample((mk.noncontiguous(mk.randn(3, 4)),), {"dim": 1}, f"{name}[noncontig]")
        yield Sample((x,), {"dim": 1, "dtype": torch.float64}, f"{name}[dtype=float64]")
        yield Sample((mk.randn(0, 3),), {"dim": 1}, f"{name}[empty]")
        yield Sample((mk.channels_last(mk.randn(2, 3, 2, 2)),), {"dim": 1}, f"{name}[channels_last]")
        if name == "cumprod":
            z = torch.tensor([[2.0, 0.0, 3.0, -1.5], [0.0, 0.0, 2.0, 1.0], [1.5, -2.0, 0.5, 0.0]],
                             dtype=dtype, device=device)
            yield Sample((z,), {"dim": 1}, "cumprod[zeros]")
    samples.__name__ = f"{name}_samples"
    return samples


def _one_dim(op, dim, x) -> int:
    (d,) = _dims(op, dim, x.dim()) or (0,)
    return d


def cumsum_symbolic(input, dim, dtype=None):
    """y[.., j, ..] = Add(x[.., :j + 1, ..]) along ``dim``."""
    x = _symbolic.asarray(input)
    if x.ndim == 0:
        return x
    moved = np.moveaxis(x, dim % x.ndim, -1)
    out = np.empty(moved.shape, dtype=object)
    for idx in np.ndindex(moved.shape[:-1]):
        row = moved[idx]
        for j in range(row.shape[0]):
            out[idx + (j,)] = sympy.Add(*row[: j + 1])
    return np.moveaxis(out, -1, dim % x.ndim)


@register("cumsum", torch_fn=torch.cumsum, tensor_args=("input",), samples=_cum_samples("cumsum"),
          symbolic=cumsum_symbolic, aliases=(torch.Tensor.cumsum,))
@expects("cumsum", _same_shape)
def cumsum_backward(grad_output, input, *, needs_input_grad, dim, dtype=None):
    """y_j = sum_{i<=j} x_i: dL/dx_i = sum_{j>=i} g_j, a reversed cumsum."""
    if not needs_input_grad[0]:
        return (None,)
    if not input.dim():
        return (grad_output.to(input.dtype),)
    d = _one_dim("cumsum", dim, input)
    return (grad_output.flip(d).cumsum(d).flip(d).to(input.dtype),)


@register("cumprod", torch_fn=torch.cumprod, tensor_args=("input",), samples=_cum_samples("cumprod"),
          aliases=(torch.Tensor.cumprod,))
@expects("cumprod", _same_shape)
def cumprod_backward(grad_output, input, *, needs_input_grad, dim, dtype=None):
    """dL/dx_k = E_k sum_{j>=k} g_j P_kj, E_k = prod_{i<k} x_i, P_kj = prod_{k<i<=j} x_i (no division)."""
    if not needs_input_grad[0]:
        return (None,)
    if not input.dim():
        return (grad_output.to(input.dtype),)
    d = _one_dim("cumprod", dim, input)
    x = input.to(grad_output.dtype).movedim(d, -1)             # (..., n)
    g = grad_output.movedim(d, -1)
    n = x.shape[-1]
    ones = torch.ones_like(x[..., :1])
    excl = torch.cat([ones, x[..., :-1]], dim=-1).cumprod(-1)  # E_k
    k = torch.arange(n, device=x.device)
    after = k.unsqueeze(0) > k.unsqueeze(1)                    # [k, i]: i > k
    rows = torch.where(after, x.unsqueeze(-2), 1)              # (..., k, i)
    P = rows.cumprod(-1) * (k.unsqueeze(0) >= k.unsqueeze(1))  # P_kj for j >= k, else 0
    grad = excl * (P * g.unsqueeze(-2)).sum(-1)
    return (grad.movedim(-1, d).to(input.dtype).contiguous(),)           # dense, row-major as autograd gives


# -- var, std -----------------------------------------------------------------------------

def _correction(op, unbiased, correction) -> float:
    if unbiased is not None and correction is not None:
        raise InvalidParameterError(f"{op}: give either unbiased= or correction=, not both")
    if correction is not None:
        return float(correction)
    return 0.0 if unbiased is False else 1.0


def _var_backward(op, g, x, dim, unbiased, correction, keepdim):
    """dL/dx = (2 / dof) r(g) (x - r(mean)), with torch's dof <= 0 conventions."""
    c = _correction(op, unbiased, correction)
    full = dim is None or x.dim() == 0
    if full:
        dof = x.numel() - c
        if dof <= 0:
            return g * torch.where(x == x.mean(), NAN, INF).to(x.dtype)
        return (2.0 / dof) * g * (x - x.mean())
    dims = _dims(op, dim, x.dim())
    g = _restore(g, x.dim(), dims, keepdim or x.dim() <= 1)
    count = math.prod(x.shape[i] for i in dims) if dims else 1
    dof = count - c
    scale = 2.0 / dof if dof != 0 else INF
    return scale * g * (x - x.mean(dims, keepdim=True))


def _std_scale(op, g, x, dim, unbiased, correction, keepdim):
    """g / (2 std), and 0 where std == 0 (torch's masked_fill)."""
    kw = {"dim": dim} if dim is not None else {}
    c = _correction(op, unbiased, correction)
    s = torch.std(x, **kw, correction=c, keepdim=keepdim)
    return torch.where(s == 0, 0, g / (2 * s))


def _varstd_samples(name):
    def samples(device, dtype):
        mk = Maker(device, dtype)
        x = mk.randn(3, 4, 2)
        yield Sample((x,), {}, f"{name}[all]")
        yield Sample((x,), {"dim": 1}, f"{name}[dim=1]")
        yield Sample((x,), {"dim": (0, 2), "keepdim": True}, f"{name}[dim=(0,2),keepdim]")
        yield Sample((x,), {"dim": -1, "correction": 0}, f"{name}[correction=0]")
        yield Sample((x,), {"dim": 1, "correction": 2.5}, f"{name}[correction=2.5]")
        yield Sample((x,), {"dim": 0, "unbiased": False}, f"{name}[unbiased=False]")
        yield Sample((x,), {"unbiased": True}, f"{name}[all,unbiased=True]")
        yield Sample((mk.noncontiguous(mk.randn(4, 3)),), {"dim": 0}, f"{name}[noncontig]")
        yield Sample((mk.randn(5),), {"dim": 0, "keepdim": True}, f"{name}[1d,keepdim]")
        yield Sample((mk.randn(0, 3),), {"dim": 1}, f"{name}[empty]")
        yield Sample((mk.channels_last(mk.randn(2, 3, 2, 2)),), {"dim": 1}, f"{name}[channels_last]")
        # dof <= 0 (infinite or negative scale) is checked in tests/manual/test_reductions.py: its
        # gradients are not finite, which check() and the sweep rightly refuse to compare
    samples.__name__ = f"{name}_samples"
    return samples


@register("var", torch_fn=torch.var, tensor_args=("input",), samples=_varstd_samples("var"),
          forward=_var_forward(torch.var),
          aliases=(torch.Tensor.var,))
@expects("var", _var_shape("var"))
@_unbiased_in_dim
def var_backward(grad_output, input, *, needs_input_grad, dim=None, unbiased=None, correction=None, keepdim=False):
    """y = sum_R (x - mean)^2 / dof: dL/dx = (2 / dof) r(g) (x - r(mean))."""
    if not needs_input_grad[0]:
        return (None,)
    return (_var_backward("var", grad_output, input, dim, unbiased, correction, keepdim),)


@register("std", torch_fn=torch.std, tensor_args=("input",), samples=_varstd_samples("std"),
          forward=_var_forward(torch.std),
          aliases=(torch.Tensor.std,))
@expects("std", _var_shape("std"))
@_unbiased_in_dim
def std_backward(grad_output, input, *, needs_input_grad, dim=None, unbiased=None, correction=None, keepdim=False):
    """y = sqrt(var): dL/dx = var'(g / (2 y)), with g / (2 y) := 0 where y == 0."""
    if not needs_input_grad[0]:
        return (None,)
    gv = _std_scale("std", grad_output, input, dim, unbiased, correction, keepdim)
    return (_var_backward("std", gv, input, dim, unbiased, correction, keepdim),)


def _mean_part(g, x, dim, keepdim):
    """The mean output's gradient: r(g) / N broadcast over the reduced dims."""
    if dim is None or x.dim() == 0:
        return (g / max(x.numel(), 1)).expand(x.shape)
    dims = _dims("mean", dim, x.dim())
    count = math.prod(x.shape[i] for i in dims) if dims else 1
    return (_restore(g, x.dim(), dims, keepdim or x.dim() <= 1) / count).expand(x.shape)


def _moments_backward(op, is_std):
    def backward(grad_output, input, *, needs_input_grad, dim=None, unbiased=None, correction=None, keepdim=False):
        if not needs_input_grad[0]:
            return (None,)
        g_spread, g_mean = grad_output
        total = None
        if g_spread is not None:
            gv = _std_scale(op, g_spread, input, dim, unbiased, correction, keepdim) if is_std else g_spread
            total = _var_backward(op, gv, input, dim, unbiased, correction, keepdim)
        if g_mean is not None:
            m = _mean_part(g_mean, input, dim, keepdim)
            total = m if total is None else total + m
        return (torch.zeros_like(input) if total is None else total,)
    return backward


register("var_mean", torch_fn=torch.var_mean, tensor_args=("input",), samples=_varstd_samples("var_mean"),
         forward=_var_forward(torch.var_mean))(
    expects("var_mean", _moments_shape("var_mean"))(_unbiased_in_dim(_moments_backward("var_mean", False))))
register("std_mean", torch_fn=torch.std_mean, tensor_args=("input",), samples=_varstd_samples("std_mean"),
         forward=_var_forward(torch.std_mean))(
    expects("std_mean", _moments_shape("std_mean"))(_unbiased_in_dim(_moments_backward("std_mean", True))))


# -- clamp --------------------------------------------------------------------------------

def clamp_samples(device, dtype):
    mk = Maker(device, dtype)
    x = mk.randn(3, 4)
    yield Sample((x, -0.5, 0.5), {}, "clamp[numbers]")
    yield Sample((x,), {"min": -0.3}, "clamp[min=number]")
    yield Sample((x,), {"max": 0.2}, "clamp[max=number]")
    yield Sample((x, None, 0.2), {}, "clamp[None,max]")
    edges = torch.tensor([-1.0, -0.5, 0.0, 0.5, 1.0, NAN, INF, -INF], dtype=dtype, device=device)
    yield Sample((edges, -0.5, 0.5), {}, "clamp[boundaries,nan,inf]")
    lo, hi = mk.randn(3, 4, scale=0.5) - 0.5, mk.randn(4, scale=0.5) + 0.5
    yield Sample((x, lo, hi), {}, "clamp[tensors,broadcast]")
    yield Sample((x, lo), {}, "clamp[tensor min]")
    yield Sample((x, None, hi), {}, "clamp[tensor max]")
    yield Sample((x,), {"min": lo, "max": hi}, "clamp[keyword tensors]")
    yield Sample((x,), {"max": hi}, "clamp[keyword max]")
    # ties with the bounds, and lo > hi (torch: result = hi, gradient to hi)
    xt = torch.tensor([[0.0, 1.0, 2.0, -1.0], [3.0, 0.5, 2.0, 1.0]], dtype=dtype, device=device)
    lot = torch.tensor([[0.0, 0.0, 3.0, 0.0], [0.0, 1.0, 1.0, 1.0]], dtype=dtype, device=device)
    hit = torch.tensor([[1.0, 1.0, 1.0, 1.0], [2.0, 0.0, 2.0, 1.0]], dtype=dtype, device=device)
    yield Sample((xt, lot, hit), {}, "clamp[tensor ties,lo>hi]")
    yield Sample((mk.randn(()), 0.1, 0.2), {}, "clamp[scalar]")
    yield Sample((mk.noncontiguous(mk.randn(3, 4)), -0.2, None), {}, "clamp[noncontig]")
    yield Sample((mk.randn(0, 4), lo[:1], 0.5 + mk.randn(4).abs()), {}, "clamp[empty]")
    yield Sample((mk.channels_last(mk.randn(2, 3, 2, 2)), -0.4, 0.6), {}, "clamp[channels_last]")


def clamp_symbolic(input, min=None, max=None):
    """min(max(x, lo), hi) as a Piecewise whose x branch holds at the bounds (torch passes the
    gradient at x == lo and x == hi); hi wins when lo > hi, as torch."""
    lo = None if min is None else _symbolic.asarray(min) if not isinstance(min, (int, float)) else min
    hi = None if max is None else _symbolic.asarray(max) if not isinstance(max, (int, float)) else max
    if lo is None:
        return _symbolic.elementwise(lambda x, h: sympy.Piecewise((h, x > h), (x, True)), input, hi)
    if hi is None:
        return _symbolic.elementwise(lambda x, lw: sympy.Piecewise((lw, x < lw), (x, True)), input, lo)
    return _symbolic.elementwise(
        lambda x, lw, h: sympy.Piecewise((h, sympy.Or(h < lw, x > h)), (lw, x < lw), (x, True)), input, lo, hi)


def _bound(b):
    return b if isinstance(b, torch.Tensor) else None


@register("clamp", torch_fn=torch.clamp, tensor_args=("input", "min", "max"), samples=clamp_samples,
          keyword_tensors=("min", "max"), symbolic=clamp_symbolic,
          aliases=(torch.clip, torch.Tensor.clamp, torch.Tensor.clip, torch.clamp_min, torch.Tensor.clamp_min))
@expects("clamp", _broadcast)
def clamp_backward(grad_output, input, min=None, max=None, *, needs_input_grad, needs_keyword_grad=None):
    """dL/dx = g [lo <= x <= hi]; dL/dlo = g [x < lo, lo < hi]; dL/dhi = g [x > hi or hi < lo]."""
    if min is None and max is None:
        raise InvalidParameterError("clamp: at least one of min and max must be given")
    for name, b in (("min", min), ("max", max)):
        if b is not None and not isinstance(b, (torch.Tensor, Number)):
            raise InvalidParameterError(f"clamp: {name} must be a number or a tensor, got {type(b).__name__}")
    g, x = grad_output, input
    lo, hi = min, max
    kw = needs_keyword_grad or {}
    want_lo = needs_input_grad[1] or kw.get("min", False)
    want_hi = needs_input_grad[2] or kw.get("max", False)
    gx = glo = ghi = None
    if needs_input_grad[0]:
        keep = torch.ones_like(x, dtype=torch.bool)
        if lo is not None:
            keep = keep & (x >= lo)
        if hi is not None:
            keep = keep & (x <= hi)
        gx = unbroadcast(torch.where(keep, g, 0), x.shape).to(x.dtype)
    if want_lo and _bound(lo) is not None:
        take = (x < lo) & (lo < hi) if hi is not None else x < lo
        glo = unbroadcast(torch.where(take, g, 0), lo.shape).to(lo.dtype)
    if want_hi and _bound(hi) is not None:
        take = (x > hi) | (hi < lo) if lo is not None else x > hi
        ghi = unbroadcast(torch.where(take, g, 0), hi.shape).to(hi.dtype)
    return gx, glo, ghi, {"min": glo, "max": ghi}
