"""Linear algebra and products: ``addmm``, ``addmv``, ``baddbmm``, ``addbmm``, ``mv``,
``outer`` (``ger``), ``linalg.vector_norm``, ``linalg.norm``, ``linalg.matrix_norm``, ``dist``,
``pairwise_distance``, ``prod``, ``topk``, ``sort``.

Notation: ``g`` the incoming gradient, ``b``/``a`` torch's ``beta``/``alpha``.

* The fused products are bilinear in their two factors plus a scaled, broadcast ``input``::

      addmm    Y = b I + a A B            dI = sum_to(b G),  dA = a G B^T,  dB = a A^T G
      addmv    y = b i + a M v            di = sum_to(b g),  dM = a g v^T,  dv = a M^T g
      baddbmm  Y_k = b I_k + a A_k B_k    dA_k = a G_k B_k^T, dB_k = a A_k^T G_k
      addbmm   Y = b I + a sum_k A_k B_k  dA_k = a G B_k^T,  dB_k = a A_k^T G
      mv       y = M v                    dM = g v^T,        dv = M^T g
      outer    Y = u v^T                  du = G v,          dv = G^T u

  ``sum_to`` undoes the broadcast of ``input`` (``_shapes.unbroadcast``).  As torch's
  ``maybe_multiply`` a factor of exactly 1 is not multiplied, and ``b = 0`` still gives
  ``dI = 0 * G`` (torch's forward then ignores ``input``, NaN included).
* ``vector_norm``: ``n = (sum_R |x|^p)^(1/p)``, ``dn/dx = sgn(x) |x|^(p-1) / n^(p-1)``, written
  as torch's ``linalg_vector_norm_backward`` writes it, so the subgradients agree exactly:
  ``p = 0``: 0 (a count); ``p = 1``: ``g sgn(x)``; ``p = 2``: ``g x / n``, 0 where ``n = 0``;
  ``p = +-inf``: ``g sgn(x) M / sum_R M`` with ``M = [|x| == n or |x| is NaN]`` (ties share
  evenly); ``p < 1``: ``sgn(x) |x|^(p-1) [x != 0] g n^(1-p)``; ``1 < p``: ``x |x|^(p-2) g /
  n^(p-1)`` (``sgn(x) |x|^(p-1)`` for ``p < 2``), 0 where ``n = 0``.
* ``linalg.norm`` is ``vector_norm`` (``ord=None`` or one dim or a 1-d input) or a matrix
  norm over two dims: ``'fro'`` = ``vector_norm(2)``; ``'nuc'`` = ``sum sigma``, ``dX = g U V^T``;
  ``ord = +-2`` = ``max/min sigma``, ``dX = U diag(g M / #ties) V^T`` (``M`` the extreme ``sigma``);
  ``ord = +-1`` = ``max/min_j sum_i |x_ij|`` (``+-inf``: rows and columns swapped), so
  ``dX = sgn(X) * (g M / #ties)`` broadcast along the summed dim, ``M`` marking the columns
  (rows) whose sum is the extreme: torch composes ``amax(sum(abs))`` the same way.
* ``linalg.matrix_norm`` is ``linalg.norm``'s matrix case (default ``ord='fro'``, ``dim=(-2, -1)``).
* ``dist(a, b, p)`` = ``||a - b||_p`` over all elements (broadcast): torch's ``norm_backward`` on
  ``a - b`` with its own ``result``, then ``da = sum_to(dd)``, ``db = -sum_to(dd)``.
* ``pairwise_distance(x1, x2, p, eps)`` = ``vector_norm(x1 - x2 + eps, p, dim=-1)`` (torch's
  ``norm``, same backward): ``dx1 = sum_to(dd)``, ``dx2 = -sum_to(dd)``.
* ``prod``: ``dy/dx_k = prod_{i != k} x_i``.  As torch: without any zero in the input,
  ``g y / x``; otherwise the product of the others as exclusive prefix times exclusive
  suffix cumprods (exact with zeros: one zero gives the others' product there and 0
  elsewhere, two or more give 0 everywhere; both stay differentiable).  As torch's full
  reduction, two or more zeros with grad mode off (a first-order backward) give plain zeros,
  which differ from the exclusive products only where the input also holds an inf or NaN.
* ``topk``, ``sort``: ``values = x[idx]``, so ``dx = scatter(0, idx, g)`` along ``dim``; the
  indices are torch's own kernel's (its choice among ties), as ``median`` does.  The
  indices output is an integer tensor (no gradient).

Every backward is built from public differentiable ops, linear in ``g``, so second
derivatives flow through the same expressions.
"""

from __future__ import annotations

import math
from numbers import Number

import numpy as np
import sympy
import torch

from gradcheck_kit.errors import InvalidInputError, InvalidParameterError, UnsupportedError
from gradcheck_kit.manual import _shapes, _symbolic
from gradcheck_kit.manual._sampling import Maker
from gradcheck_kit.manual.elementwise import _nuclear_norm_backward, norm_symbolic
from gradcheck_kit.manual.reductions import _dims, _reduced, _restore, expects
from gradcheck_kit.manual.registry import Sample, named_call, register

__all__: list[str] = []

NAN, INF = float("nan"), float("inf")


# -- helpers ------------------------------------------------------------------------------

def _scaled(t: torch.Tensor, c) -> torch.Tensor:
    """torch's ``maybe_multiply``: ``t * c``, with ``c == 1`` left out."""
    return t if (isinstance(c, Number) and not isinstance(c, bool) and c == 1) else t * c


def _check_scalar(op: str, name: str, c) -> None:
    if isinstance(c, bool) or not isinstance(c, Number):
        raise InvalidParameterError(f"{op}: {name} must be a number, got {c!r}")


def _check_dims(op: str, **tensors) -> None:
    """Each named tensor must have the given number of dims: ``_check_dims(op, mat1=(t, 2))``."""
    for name, (t, n) in tensors.items():
        if not isinstance(t, torch.Tensor):
            raise InvalidInputError(f"{op}: {name} must be a tensor, got {type(t).__name__}")
        if t.dim() != n:
            raise InvalidInputError(f"{op}: {name} must be {n}-d, got shape {tuple(t.shape)}")


def _check_inner(op: str, a_name: str, a_size: int, b_name: str, b_size: int) -> None:
    if a_size != b_size:
        raise InvalidInputError(f"{op}: {a_name} has {a_size} columns but {b_name} has {b_size} rows; "
                                f"they must match")


def _check_broadcast(op: str, input, shape) -> None:
    """``input`` must broadcast to the product's shape (it is summed back to its own shape)."""
    if not isinstance(input, torch.Tensor):
        raise InvalidInputError(f"{op}: input must be a tensor, got {type(input).__name__}")
    try:
        ok = tuple(torch.broadcast_shapes(tuple(input.shape), tuple(shape))) == tuple(shape)
    except RuntimeError:
        ok = False
    if not ok:
        raise InvalidInputError(f"{op}: input of shape {tuple(input.shape)} does not broadcast to the "
                                f"product's shape {tuple(shape)}")


def _input_grad(g, input, beta):
    """d(b I)/dI with I broadcast to g's shape: sum_to(b g, I.shape)."""
    return _shapes.unbroadcast(_scaled(g, beta), input.shape).to(input.dtype)


def _sym_scalar(c):
    return _symbolic.to_rational(c)


def _sym_add(input, prod, beta, alpha):
    """Symbolic ``beta * input + alpha * prod`` (numpy broadcasting as torch's)."""
    b, a = _sym_scalar(beta), _sym_scalar(alpha)
    inp = _symbolic.asarray(input)
    return np.asarray(b * np.broadcast_to(inp, prod.shape) + a * prod, dtype=object)


# -- addmm, addmv, baddbmm, addbmm, mv, outer ------------------------------------------------

def addmm_samples(device, dtype):
    mk = Maker(device, dtype)
    yield Sample((mk.randn(3, 4), mk.randn(3, 2), mk.randn(2, 4)), {}, "addmm[3x4]")
    yield Sample((mk.randn(3, 4), mk.randn(3, 2), mk.randn(2, 4)), {"beta": 0.5, "alpha": -2.0},
                 "addmm[beta=0.5,alpha=-2]")
    yield Sample((mk.randn(3, 4), mk.randn(3, 2), mk.randn(2, 4)), {"beta": 2, "alpha": 3}, "addmm[int scalars]")
    yield Sample((mk.randn(3, 4), mk.randn(3, 2), mk.randn(2, 4)), {"beta": 0}, "addmm[beta=0]")
    yield Sample((mk.randn(4), mk.randn(3, 2), mk.randn(2, 4)), {}, "addmm[bias 1d]")
    yield Sample((mk.randn(()), mk.randn(3, 2), mk.randn(2, 4)), {"alpha": 0.5}, "addmm[bias 0-d]")
    yield Sample((mk.randn(3, 1), mk.randn(3, 2), mk.randn(2, 4)), {}, "addmm[bias 3x1]")
    yield Sample((mk.randn(1, 4), mk.randn(3, 2), mk.randn(2, 4)), {"beta": -1.5}, "addmm[bias 1x4]")
    yield Sample((mk.randn(4, 3).T, mk.noncontiguous(mk.randn(3, 2)), mk.randn(4, 2).T), {}, "addmm[noncontig]")
    yield Sample((mk.randn(3, 4), mk.randn(3, 0), mk.randn(0, 4)), {"beta": 2.0}, "addmm[empty inner]")
    yield Sample((mk.randn(4), mk.randn(0, 2), mk.randn(2, 4)), {}, "addmm[empty rows]")


def addmm_symbolic(input, mat1, mat2, *, beta=1, alpha=1):
    return _sym_add(input, _symbolic.matmul(mat1, mat2), beta, alpha)


@register("addmm", torch_fn=torch.addmm, tensor_args=("input", "mat1", "mat2"), samples=addmm_samples,
          symbolic=addmm_symbolic, aliases=(torch.Tensor.addmm,))
def addmm_backward(grad_output, input, mat1, mat2, *, needs_input_grad, beta=1, alpha=1):
    """Y = b I + a A B: dI = sum_to(b G), dA = a G B^T, dB = a A^T G."""
    _check_scalar("addmm", "beta", beta)
    _check_scalar("addmm", "alpha", alpha)
    _check_dims("addmm", mat1=(mat1, 2), mat2=(mat2, 2))
    _check_inner("addmm", "mat1", mat1.shape[1], "mat2", mat2.shape[0])
    shape = (mat1.shape[0], mat2.shape[1])
    _check_broadcast("addmm", input, shape)
    _shapes.check_grad_shape("addmm", grad_output, shape)
    g = grad_output
    gi = _input_grad(g, input, beta) if needs_input_grad[0] else None
    g1 = _scaled(g @ mat2.T, alpha) if needs_input_grad[1] else None
    g2 = _scaled(mat1.T @ g, alpha) if needs_input_grad[2] else None
    return gi, g1, g2


def addmv_samples(device, dtype):
    mk = Maker(device, dtype)
    yield Sample((mk.randn(3), mk.randn(3, 4), mk.randn(4)), {}, "addmv[3x4]")
    yield Sample((mk.randn(3), mk.randn(3, 4), mk.randn(4)), {"beta": -0.5, "alpha": 2.0},
                 "addmv[beta=-0.5,alpha=2]")
    yield Sample((mk.randn(3), mk.randn(3, 4), mk.randn(4)), {"beta": 0}, "addmv[beta=0]")
    yield Sample((mk.randn(()), mk.randn(3, 4), mk.randn(4)), {}, "addmv[bias 0-d]")
    yield Sample((mk.randn(1), mk.randn(3, 4), mk.randn(4)), {"alpha": 3}, "addmv[bias 1]")
    yield Sample((mk.randn(6)[::2], mk.randn(4, 3).T, mk.noncontiguous(mk.randn(4))), {}, "addmv[noncontig]")
    yield Sample((mk.randn(3), mk.randn(3, 0), mk.randn(0)), {"beta": 2.0}, "addmv[empty inner]")


def addmv_symbolic(input, mat, vec, *, beta=1, alpha=1):
    return _sym_add(input, _symbolic.matmul(mat, vec), beta, alpha)


@register("addmv", torch_fn=torch.addmv, tensor_args=("input", "mat", "vec"), samples=addmv_samples,
          symbolic=addmv_symbolic, aliases=(torch.Tensor.addmv,))
def addmv_backward(grad_output, input, mat, vec, *, needs_input_grad, beta=1, alpha=1):
    """y = b i + a M v: di = sum_to(b g), dM = a g v^T, dv = a M^T g."""
    _check_scalar("addmv", "beta", beta)
    _check_scalar("addmv", "alpha", alpha)
    _check_dims("addmv", mat=(mat, 2), vec=(vec, 1))
    _check_inner("addmv", "mat", mat.shape[1], "vec", vec.shape[0])
    shape = (mat.shape[0],)
    _check_broadcast("addmv", input, shape)
    _shapes.check_grad_shape("addmv", grad_output, shape)
    g = grad_output
    gi = _input_grad(g, input, beta) if needs_input_grad[0] else None
    gm = _scaled(g.unsqueeze(1) * vec.unsqueeze(0), alpha) if needs_input_grad[1] else None
    gv = _scaled(mat.T @ g, alpha) if needs_input_grad[2] else None
    return gi, gm, gv


def baddbmm_samples(device, dtype):
    mk = Maker(device, dtype)
    yield Sample((mk.randn(2, 3, 4), mk.randn(2, 3, 2), mk.randn(2, 2, 4)), {}, "baddbmm[2x3x4]")
    yield Sample((mk.randn(2, 3, 4), mk.randn(2, 3, 2), mk.randn(2, 2, 4)), {"beta": 0.5, "alpha": -1.5},
                 "baddbmm[beta=0.5,alpha=-1.5]")
    yield Sample((mk.randn(2, 3, 4), mk.randn(2, 3, 2), mk.randn(2, 2, 4)), {"beta": 0}, "baddbmm[beta=0]")
    yield Sample((mk.randn(3, 4), mk.randn(2, 3, 2), mk.randn(2, 2, 4)), {}, "baddbmm[bias 3x4]")
    yield Sample((mk.randn(1, 1, 4), mk.randn(2, 3, 2), mk.randn(2, 2, 4)), {"alpha": 2}, "baddbmm[bias 1x1x4]")
    yield Sample((mk.randn(()), mk.randn(2, 3, 2), mk.randn(2, 2, 4)), {}, "baddbmm[bias 0-d]")
    yield Sample((mk.randn(2, 4, 3).mT, mk.noncontiguous(mk.randn(2, 3, 2)), mk.randn(2, 4, 2).mT), {},
                 "baddbmm[noncontig]")
    yield Sample((mk.randn(2, 3, 4), mk.randn(2, 3, 0), mk.randn(2, 0, 4)), {"beta": 2.0}, "baddbmm[empty inner]")


def baddbmm_symbolic(input, batch1, batch2, *, beta=1, alpha=1):
    return _sym_add(input, _symbolic.matmul(batch1, batch2), beta, alpha)


@register("baddbmm", torch_fn=torch.baddbmm, tensor_args=("input", "batch1", "batch2"), samples=baddbmm_samples,
          symbolic=baddbmm_symbolic, aliases=(torch.Tensor.baddbmm,))
def baddbmm_backward(grad_output, input, batch1, batch2, *, needs_input_grad, beta=1, alpha=1):
    """Y_k = b I_k + a A_k B_k: dI = sum_to(b G), dA_k = a G_k B_k^T, dB_k = a A_k^T G_k."""
    _check_scalar("baddbmm", "beta", beta)
    _check_scalar("baddbmm", "alpha", alpha)
    _check_dims("baddbmm", batch1=(batch1, 3), batch2=(batch2, 3))
    if batch1.shape[0] != batch2.shape[0]:
        raise InvalidInputError(f"baddbmm: batch1 and batch2 must hold the same number of matrices, got "
                                f"shapes {tuple(batch1.shape)} and {tuple(batch2.shape)}")
    _check_inner("baddbmm", "batch1", batch1.shape[2], "batch2", batch2.shape[1])
    shape = (batch1.shape[0], batch1.shape[1], batch2.shape[2])
    _check_broadcast("baddbmm", input, shape)
    _shapes.check_grad_shape("baddbmm", grad_output, shape)
    g = grad_output
    gi = _input_grad(g, input, beta) if needs_input_grad[0] else None
    g1 = _scaled(g @ batch2.mT, alpha) if needs_input_grad[1] else None
    g2 = _scaled(batch1.mT @ g, alpha) if needs_input_grad[2] else None
    return gi, g1, g2


def addbmm_samples(device, dtype):
    mk = Maker(device, dtype)
    yield Sample((mk.randn(3, 4), mk.randn(2, 3, 2), mk.randn(2, 2, 4)), {}, "addbmm[3x4]")
    yield Sample((mk.randn(3, 4), mk.randn(2, 3, 2), mk.randn(2, 2, 4)), {"beta": -2.0, "alpha": 0.5},
                 "addbmm[beta=-2,alpha=0.5]")
    yield Sample((mk.randn(3, 4), mk.randn(2, 3, 2), mk.randn(2, 2, 4)), {"beta": 0}, "addbmm[beta=0]")
    yield Sample((mk.randn(4), mk.randn(2, 3, 2), mk.randn(2, 2, 4)), {}, "addbmm[bias 1d]")
    yield Sample((mk.randn(()), mk.randn(3, 3, 2), mk.randn(3, 2, 4)), {"alpha": 2}, "addbmm[bias 0-d]")
    yield Sample((mk.randn(4, 3).T, mk.randn(2, 2, 3).mT, mk.noncontiguous(mk.randn(2, 2, 4))), {},
                 "addbmm[noncontig]")
    yield Sample((mk.randn(3, 4), mk.randn(0, 3, 2), mk.randn(0, 2, 4)), {"beta": 2.0}, "addbmm[empty batch]")


def addbmm_symbolic(input, batch1, batch2, *, beta=1, alpha=1):
    prod = _symbolic.matmul(batch1, batch2)
    summed = _symbolic.sum(prod, 0) if prod.shape[0] else np.full(prod.shape[1:], sympy.S.Zero, dtype=object)
    return _sym_add(input, summed, beta, alpha)


@register("addbmm", torch_fn=torch.addbmm, tensor_args=("input", "batch1", "batch2"), samples=addbmm_samples,
          symbolic=addbmm_symbolic, aliases=(torch.Tensor.addbmm,))
def addbmm_backward(grad_output, input, batch1, batch2, *, needs_input_grad, beta=1, alpha=1):
    """Y = b I + a sum_k A_k B_k: dI = sum_to(b G), dA_k = a G B_k^T, dB_k = a A_k^T G."""
    _check_scalar("addbmm", "beta", beta)
    _check_scalar("addbmm", "alpha", alpha)
    _check_dims("addbmm", batch1=(batch1, 3), batch2=(batch2, 3))
    if batch1.shape[0] != batch2.shape[0]:
        raise InvalidInputError(f"addbmm: batch1 and batch2 must hold the same number of matrices, got "
                                f"shapes {tuple(batch1.shape)} and {tuple(batch2.shape)}")
    _check_inner("addbmm", "batch1", batch1.shape[2], "batch2", batch2.shape[1])
    shape = (batch1.shape[1], batch2.shape[2])
    _check_broadcast("addbmm", input, shape)
    _shapes.check_grad_shape("addbmm", grad_output, shape)
    g = grad_output
    gi = _input_grad(g, input, beta) if needs_input_grad[0] else None
    g1 = _scaled(g @ batch2.mT, alpha) if needs_input_grad[1] else None     # G broadcasts over k
    g2 = _scaled(batch1.mT @ g, alpha) if needs_input_grad[2] else None
    return gi, g1, g2


def mv_samples(device, dtype):
    mk = Maker(device, dtype)
    yield Sample((mk.randn(3, 4), mk.randn(4)), {}, "mv[3x4]")
    yield Sample((mk.randn(1, 1), mk.randn(1)), {}, "mv[1x1]")
    yield Sample((mk.randn(4, 3).T, mk.noncontiguous(mk.randn(4))), {}, "mv[noncontig]")
    yield Sample((mk.randn(3, 0), mk.randn(0)), {}, "mv[empty inner]")


def mv_symbolic(input, vec):
    return np.asarray(_symbolic.matmul(input, vec), dtype=object)


@register("mv", torch_fn=torch.mv, tensor_args=("input", "vec"), samples=mv_samples, symbolic=mv_symbolic,
          aliases=(torch.Tensor.mv,))
def mv_backward(grad_output, input, vec, *, needs_input_grad):
    """y = M v: dM = g v^T, dv = M^T g."""
    _check_dims("mv", input=(input, 2), vec=(vec, 1))
    _check_inner("mv", "input", input.shape[1], "vec", vec.shape[0])
    _shapes.check_grad_shape("mv", grad_output, (input.shape[0],))
    g = grad_output
    gm = g.unsqueeze(1) * vec.unsqueeze(0) if needs_input_grad[0] else None
    gv = input.T @ g if needs_input_grad[1] else None
    return gm, gv


def outer_samples(device, dtype):
    mk = Maker(device, dtype)
    yield Sample((mk.randn(3), mk.randn(4)), {}, "outer[3,4]")
    yield Sample((mk.randn(1), mk.randn(1)), {}, "outer[1,1]")
    yield Sample((mk.randn(6)[::2], mk.noncontiguous(mk.randn(2))), {}, "outer[noncontig]")
    yield Sample((mk.randn(0), mk.randn(3)), {}, "outer[empty]")


def outer_symbolic(input, vec2):
    u, v = _symbolic.asarray(input), _symbolic.asarray(vec2)
    return np.asarray(np.multiply.outer(u, v), dtype=object)


@register("outer", torch_fn=torch.outer, tensor_args=("input", "vec2"), samples=outer_samples,
          symbolic=outer_symbolic, aliases=(torch.Tensor.outer, torch.ger, torch.Tensor.ger))
def outer_backward(grad_output, input, vec2, *, needs_input_grad):
    """Y = u v^T: du = G v, dv = G^T u."""
    _check_dims("outer", input=(input, 1), vec2=(vec2, 1))
    _shapes.check_grad_shape("outer", grad_output, (input.shape[0], vec2.shape[0]))
    g = grad_output
    gu = (g * vec2.unsqueeze(0)).sum(1) if needs_input_grad[0] else None
    gv = (g * input.unsqueeze(1)).sum(0) if needs_input_grad[1] else None
    return gu, gv


# -- linalg.vector_norm, linalg.norm ---------------------------------------------------------

def _order(op: str, ord) -> float:
    if isinstance(ord, bool) or not isinstance(ord, Number):
        raise InvalidParameterError(f"{op}: ord must be a number, got {ord!r}")
    return float(ord)


def _vector_norm_grad(g, x, order: float, dims: tuple[int, ...], keepdim: bool, dtype=None, norm=None):
    """torch's ``linalg_vector_norm_backward``: d/dx of <g, ||x||_order over dims> (see module docstring).
    ``norm`` computes the norm (keepdim) where the forward is not ``vector_norm``."""
    g = _restore(g, x.dim(), dims, keepdim or not x.dim())
    if order == 0.0:                                       # a count of nonzeros: no gradient
        return torch.zeros_like(x)
    if order == 1.0:
        return (x.sgn() * g).to(x.dtype)
    n = torch.linalg.vector_norm(x, order, dim=dims if x.dim() else None, keepdim=True, dtype=dtype) \
        if norm is None else norm(x)
    zero = torch.zeros((), dtype=g.dtype, device=g.device)
    if order == 2.0:
        return (g * torch.where(n == 0, zero, x / n)).to(x.dtype)
    if math.isinf(order):                                  # ties (and NaNs) share g evenly
        ax = x.abs()
        mask = (ax == n) | ax.isnan()
        count = mask.sum(dim=dims, keepdim=True) if x.dim() else mask
        return (x.sgn() * ((g / count) * mask)).to(x.dtype)
    if order < 1.0:
        scaled = x.sgn() * torch.where(x == 0, torch.zeros_like(x), x.abs().pow(order - 1))
        return (scaled * g * n.pow(1 - order)).to(x.dtype)
    scaled = x.sgn() * x.abs().pow(order - 1) if order < 2.0 else x * x.abs().pow(order - 2)
    return (scaled * torch.where(n == 0, zero, g / n.pow(order - 1))).to(x.dtype)


def _check_dtype(op: str, dtype) -> None:
    if dtype is not None and not isinstance(dtype, torch.dtype):
        raise InvalidParameterError(f"{op}: dtype must be a torch.dtype, got {dtype!r}")


def vector_norm_samples(device, dtype):
    mk = Maker(device, dtype)
    x = mk.randn(3, 4)
    x3 = mk.randn(2, 3, 4)
    # exact ties in |x| and zeros (away from a zero row: torch's second derivative is NaN there;
    # tests/manual/test_linalg_rules.py checks zero rows at first order)
    kinks = torch.tensor([[1.0, -1.0, 0.5, 0.0], [0.0, 2.0, -3.0, 3.0], [-2.0, 2.0, 2.0, 1.0]],
                         dtype=mk.dtype, device=mk.device)
    yield Sample((x,), {}, "vector_norm[default]")
    yield Sample((x3,), {"ord": 2, "dim": 1}, "vector_norm[ord=2,dim=1]")
    yield Sample((x3,), {"dim": (0, 2), "keepdim": True}, "vector_norm[dim=(0,2),keepdim]")
    yield Sample((x3,), {"dim": [-1, 0]}, "vector_norm[dim=[-1,0]]")
    yield Sample((x3,), {"dim": ()}, "vector_norm[dim=()]")
    yield Sample((x,), {"ord": 1}, "vector_norm[ord=1]")
    yield Sample((kinks,), {"ord": 1, "dim": 1}, "vector_norm[ord=1,zeros]")
    yield Sample((kinks,), {"ord": INF, "dim": 1, "keepdim": True}, "vector_norm[ord=inf,ties]")
    yield Sample((kinks,), {"ord": INF}, "vector_norm[ord=inf,all,ties]")
    yield Sample((kinks,), {"ord": -INF, "dim": 0}, "vector_norm[ord=-inf,ties]")
    yield Sample((kinks,), {"ord": 0, "dim": 1}, "vector_norm[ord=0]")
    yield Sample((kinks,), {"ord": 3, "dim": 1}, "vector_norm[ord=3,zeros]")
    yield Sample((x,), {"ord": 1.5, "dim": 0}, "vector_norm[ord=1.5]")
    yield Sample((x,), {"ord": 0.5, "dim": 1}, "vector_norm[ord=0.5]")
    yield Sample((x,), {"ord": -1, "dim": 1}, "vector_norm[ord=-1]")
    yield Sample((mk.randn(5),), {"ord": 4}, "vector_norm[1d,ord=4]")
    yield Sample((mk.randn(()),), {}, "vector_norm[0-d]")
    yield Sample((mk.randn(()),), {"ord": INF, "dim": 0, "keepdim": True}, "vector_norm[0-d,ord=inf,dim=0]")
    yield Sample((mk.randn(0, 3),), {"dim": 0}, "vector_norm[empty,dim=0]")
    yield Sample((mk.noncontiguous(mk.randn(3, 4)),), {"ord": 2, "dim": -1}, "vector_norm[noncontig]")
    yield Sample((x,), {"dim": 1, "dtype": torch.float64}, "vector_norm[dtype=float64]")


def vector_norm_symbolic(input, ord=2, dim=None, keepdim=False, *, dtype=None):
    if isinstance(ord, Number) and math.isinf(ord):
        # sympy's Max/Min split a derivative unevenly at a tie of three or more; torch splits evenly
        raise UnsupportedError("vector_norm: ord=+-inf has no symbolic forward with torch's even split at ties")
    return norm_symbolic(input, p=ord, dim=dim, keepdim=keepdim)


@register("vector_norm", torch_fn=torch.linalg.vector_norm, tensor_args=("input",), samples=vector_norm_samples,
          symbolic=vector_norm_symbolic)
@expects("vector_norm", lambda input, ord=2, dim=None, keepdim=False, **_:
         _reduced(input, _dims("vector_norm", dim, input.dim()), keepdim))
def vector_norm_backward(grad_output, input, ord=2, dim=None, keepdim=False, *, needs_input_grad, dtype=None):
    """n = (sum_R |x|^p)^(1/p): dL/dx = g sgn(x) |x|^(p-1) / n^(p-1), torch's subgradients at 0 and ties."""
    order = _order("vector_norm", ord)
    _check_dtype("vector_norm", dtype)
    if not needs_input_grad[0]:
        return (None,)
    dims = _dims("vector_norm", dim, input.dim())
    return (_vector_norm_grad(grad_output, input, order, dims, keepdim, dtype),)


def _norm_dims(input, ord, dim):
    """linalg.norm's dispatch: ('vector', dims) or ('matrix', (d0, d1)) as torch's ``linalg_norm``."""
    nd = input.dim()
    if dim is not None:
        ds = (dim,) if isinstance(dim, int) else tuple(dim)
        if len(ds) not in (1, 2) and ord is not None:
            raise InvalidParameterError(f"linalg.norm: dim must name 1 or 2 dims when ord is given, got {dim!r}")
    if ord is None:
        return "vector", _dims("linalg.norm", dim, nd)
    if isinstance(ord, str):
        if ord not in ("fro", "nuc"):
            raise InvalidParameterError(f"linalg.norm: ord must be a number, 'fro' or 'nuc', got {ord!r}")
        ds = (-2, -1) if dim is None else ds
        if len(ds) != 2 or nd < 2:
            raise InvalidParameterError(f"linalg.norm: ord={ord!r} is a matrix norm: it needs a 2-tuple dim and "
                                        f"an input of at least 2 dims, got dim={dim!r} and shape {tuple(input.shape)}")
    else:
        _order("linalg.norm", ord)
        if dim is None:
            if nd not in (1, 2):
                raise InvalidParameterError(f"linalg.norm: with ord and no dim the input must be 1-d or 2-d, got "
                                            f"shape {tuple(input.shape)}")
            ds = tuple(range(nd))
        if len(ds) == 1:
            return "vector", _dims("linalg.norm", ds, nd)
    d0, d1 = (_dims("linalg.norm", d, nd)[0] for d in ds)
    if d0 == d1:
        raise InvalidParameterError(f"linalg.norm: the two dims of a matrix norm must differ, got {dim!r}")
    return "matrix", (d0, d1)


def _linalg_norm_shape(input, ord=None, dim=None, keepdim=False, **_):
    _, dims = _norm_dims(input, ord, dim)
    return _reduced(input, tuple(sorted(dims)), keepdim)


def linalg_norm_samples(device, dtype):
    mk = Maker(device, dtype)
    x = mk.randn(3, 4)
    ties = torch.tensor([[1.0, -2.0, 3.0], [3.0, -1.0, 2.0], [0.5, 1.0, 0.5]], dtype=mk.dtype, device=mk.device)
    yield Sample((mk.randn(2, 3, 4),), {}, "linalg_norm[default,3d]")
    yield Sample((x,), {"ord": "fro"}, "linalg_norm[fro]")
    yield Sample((mk.randn(2, 3, 4),), {"ord": "fro", "dim": (2, 0), "keepdim": True}, "linalg_norm[fro,dim=(2,0)]")
    yield Sample((x,), {"ord": "nuc"}, "linalg_norm[nuc]")
    yield Sample((mk.randn(5),), {"ord": 3}, "linalg_norm[1d,ord=3]")
    yield Sample((x,), {"ord": 1, "dim": 1}, "linalg_norm[ord=1,dim=1]")
    yield Sample((x,), {"ord": INF, "dim": (1,)}, "linalg_norm[ord=inf,dim=(1,)]")
    yield Sample((x,), {"dim": (0, 1)}, "linalg_norm[ord=None,dim=(0,1)]")
    yield Sample((x,), {"ord": 1}, "linalg_norm[matrix ord=1]")
    yield Sample((x,), {"ord": -1}, "linalg_norm[matrix ord=-1]")
    yield Sample((x,), {"ord": INF}, "linalg_norm[matrix ord=inf]")
    yield Sample((mk.randn(2, 3, 4),), {"ord": -INF, "dim": (0, 2), "keepdim": True},
                 "linalg_norm[matrix ord=-inf,dim=(0,2),keepdim]")
    yield Sample((x,), {"ord": 2}, "linalg_norm[matrix ord=2]")
    yield Sample((mk.randn(2, 3, 4),), {"ord": -2, "dim": (2, 0), "keepdim": True},
                 "linalg_norm[matrix ord=-2,dim=(2,0),keepdim]")
    yield Sample((ties,), {"ord": INF}, "linalg_norm[matrix ord=inf,ties]")
    yield Sample((ties,), {"ord": 1, "dim": (1, 0)}, "linalg_norm[matrix ord=1,dim=(1,0),ties]")
    yield Sample((mk.randn(()),), {}, "linalg_norm[0-d]")
    yield Sample((mk.randn(0, 3),), {"dim": 1}, "linalg_norm[empty]")
    yield Sample((mk.noncontiguous(mk.randn(3, 4)),), {"ord": "fro"}, "linalg_norm[noncontig]")
    yield Sample((x,), {"dtype": torch.float64}, "linalg_norm[dtype=float64]")


def _spectral_norm_grad(g, x, d0, d1, keepdim, largest):
    """||X||_2 = max sigma (ord=-2: min) over the matrix dims: with X = U S V^T (reduced),
    dL/dX = U diag(g M / #ties) V^T, M marking the extreme singular values (amax's even split)."""
    xm = torch.movedim(x, (d0, d1), (-2, -1))
    u, sv, vh = torch.linalg.svd(xm, full_matrices=False)
    ext = sv.amax(-1, keepdim=True) if largest else sv.amin(-1, keepdim=True)
    mask = sv == ext
    g = torch.movedim(_restore(g, x.dim(), tuple(sorted((d0, d1))), keepdim), (d0, d1), (-2, -1))[..., 0]
    gs = (g / mask.sum(-1, keepdim=True)) * mask                  # d(amax)/d sigma
    return torch.movedim((u * gs.unsqueeze(-2)) @ vh, (-2, -1), (d0, d1))


@register("linalg_norm", torch_fn=torch.linalg.norm, tensor_args=("input",), samples=linalg_norm_samples)
@expects("linalg_norm", _linalg_norm_shape)
def linalg_norm_backward(grad_output, input, ord=None, dim=None, keepdim=False, *, needs_input_grad, dtype=None):
    """Vector: vector_norm's gradient.  Matrix ('fro': vector_norm(2); 'nuc': g U V^T; +-2: g u v^T of the
    extreme singular value; +-1 over columns, +-inf over rows): dX = sgn(X) (g M / #ties) with M the
    extreme column (row) sums."""
    _check_dtype("linalg.norm", dtype)
    kind, dims = _norm_dims(input, ord, dim)
    if not needs_input_grad[0]:
        return (None,)
    x = input
    if kind == "vector":
        return (_vector_norm_grad(grad_output, x, 2.0 if ord is None else float(ord), dims, keepdim, dtype),)
    return (_matrix_norm_grad("linalg.norm", grad_output, x, ord, *dims, keepdim, dtype),)


def _matrix_norm_grad(op, g, x, ord, d0, d1, keepdim, dtype):
    """d/dX of <g, matrix norm of X over (d0, d1)>: 'fro', 'nuc', +-2, +-1, +-inf (module docstring)."""
    both = tuple(sorted((d0, d1)))
    if ord == "fro":
        return _vector_norm_grad(g, x, 2.0, both, keepdim, dtype)
    if isinstance(ord, str) and ord != "nuc" or not isinstance(ord, str) and (
            isinstance(ord, bool) or not isinstance(ord, Number) or abs(float(ord)) not in (1.0, 2.0, INF)):
        raise InvalidParameterError(f"{op}: a matrix norm takes ord 'fro', 'nuc', 2, -2, 1, -1, inf or -inf, "
                                    f"got {ord!r}")
    xc = x if dtype is None else x.to(dtype)
    if ord == "nuc" or abs(float(ord)) == 2.0:
        try:
            if ord == "nuc":
                return _nuclear_norm_backward(g, xc, (d0, d1), keepdim).to(x.dtype)
            return _spectral_norm_grad(g, xc, d0, d1, keepdim, float(ord) > 0).to(x.dtype)
        except torch.linalg.LinAlgError:
            raise InvalidInputError(f"{op}: ord={ord!r} needs an SVD, which does not converge for an "
                                    f"input holding NaN or inf (torch's forward fails there too)") from None
    order = float(ord)
    if math.isinf(order):                                  # the inf norm is the 1 norm of the transpose
        d0, d1 = d1, d0
    s = xc.abs().sum(d0, keepdim=True)                     # column sums |x| over d0
    m = s.amax(d1, keepdim=True) if order > 0 else s.amin(d1, keepdim=True)
    mask = s == m
    g = _restore(g, x.dim(), both, keepdim)
    return (xc.sgn() * ((g / mask.sum(d1, keepdim=True)) * mask)).to(x.dtype)


def _matrix_dims(op, input, dim):
    if isinstance(dim, int) or len(dim) != 2:
        raise InvalidParameterError(f"{op}: dim must name two dims, got {dim!r}")
    if input.dim() < 2:
        raise InvalidInputError(f"{op}: the input must have at least 2 dims, got shape {tuple(input.shape)}")
    d0, d1 = (_dims(op, d, input.dim())[0] for d in dim)
    if d0 == d1:
        raise InvalidParameterError(f"{op}: the two dims of a matrix norm must differ, got {dim!r}")
    return d0, d1


def matrix_norm_samples(device, dtype):
    mk = Maker(device, dtype)
    x = mk.randn(3, 4)
    ties = torch.tensor([[1.0, -2.0, 3.0], [3.0, -1.0, 2.0], [0.5, 1.0, 0.5]], dtype=mk.dtype, device=mk.device)
    yield Sample((x,), {}, "matrix_norm[fro]")
    yield Sample((mk.randn(2, 3, 4),), {"ord": "nuc"}, "matrix_norm[nuc,batched]")
    yield Sample((mk.randn(2, 3, 4),), {"ord": 2, "dim": (0, 2), "keepdim": True}, "matrix_norm[ord=2,dim=(0,2)]")
    yield Sample((x,), {"ord": -2}, "matrix_norm[ord=-2]")
    yield Sample((ties,), {"ord": 1}, "matrix_norm[ord=1,ties]")
    yield Sample((mk.randn(2, 3, 4),), {"ord": -INF, "keepdim": True}, "matrix_norm[ord=-inf,keepdim]")
    yield Sample((mk.randn(0, 3, 4),), {}, "matrix_norm[empty batch]")
    yield Sample((mk.noncontiguous(mk.randn(3, 4)),), {"ord": INF}, "matrix_norm[ord=inf,noncontig]")
    yield Sample((x,), {"dtype": torch.float64}, "matrix_norm[dtype=float64]")


def _matrix_norm_shape(input, ord="fro", dim=(-2, -1), keepdim=False, **_):
    return _reduced(input, tuple(sorted(_matrix_dims("matrix_norm", input, dim))), keepdim)


@register("matrix_norm", torch_fn=torch.linalg.matrix_norm, tensor_args=("input",), samples=matrix_norm_samples)
@expects("matrix_norm", _matrix_norm_shape)
def matrix_norm_backward(grad_output, input, ord="fro", dim=(-2, -1), keepdim=False, *, needs_input_grad,
                         dtype=None):
    """linalg.norm's matrix gradients ('fro', 'nuc', +-2, +-1, +-inf) over the two dims ``dim``."""
    _check_dtype("matrix_norm", dtype)
    d0, d1 = _matrix_dims("matrix_norm", input, dim)
    if not needs_input_grad[0]:
        return (None,)
    return (_matrix_norm_grad("matrix_norm", grad_output, input, ord, d0, d1, keepdim, dtype),)


# -- dist ---------------------------------------------------------------------------------

def dist_samples(device, dtype):
    mk = Maker(device, dtype)
    yield Sample((mk.randn(3, 4), mk.randn(3, 4)), {}, "dist[3x4]")
    yield Sample((mk.randn(3, 4), mk.randn(4)), {"p": 1}, "dist[p=1,bcast]")
    yield Sample((mk.randn(2, 1, 3), mk.randn(4, 1)), {"p": 3.0}, "dist[p=3,bcast both]")
    yield Sample((mk.randn(3, 4), mk.randn(3, 4)), {"p": INF}, "dist[p=inf]")
    yield Sample((mk.randn(3, 4), mk.randn(3, 4)), {"p": 0.5}, "dist[p=0.5]")
    yield Sample((mk.randn(()), mk.randn(3)), {}, "dist[0-d]")
    yield Sample((mk.randn(0, 3), mk.randn(3)), {}, "dist[empty]")
    yield Sample((mk.noncontiguous(mk.randn(3, 4)), mk.randn(4, 3).T), {"p": 2}, "dist[noncontig]")


def dist_symbolic(input, other, p=2):
    a, b = _symbolic.asarray(input), _symbolic.asarray(other)
    return norm_symbolic(np.asarray(a - b, dtype=object), p=p)


@register("dist", torch_fn=torch.dist, tensor_args=("input", "other"), samples=dist_samples, symbolic=dist_symbolic,
          aliases=(torch.Tensor.dist,))
@expects("dist", lambda input, other, p=2: _pairwise_shape(input, other) and ())   # 0-d once they broadcast
def dist_backward(grad_output, input, other, p=2, *, needs_input_grad):
    """y = ||a - b||_p over all elements: dL/da = sum_to(dd), dL/db = -sum_to(dd), dd torch's norm_backward."""
    order = _order("dist", p)
    if not (needs_input_grad[0] or needs_input_grad[1]):
        return None, None
    d = input - other
    gd = _vector_norm_grad(grad_output, d, order, tuple(range(d.dim())), False,
                           norm=lambda t: torch.dist(input, other, order).reshape((1,) * t.dim()))
    ga = _shapes.unbroadcast(gd, input.shape).to(input.dtype) if needs_input_grad[0] else None
    gb = _shapes.unbroadcast(-gd, other.shape).to(other.dtype) if needs_input_grad[1] else None
    return ga, gb


# -- pairwise_distance --------------------------------------------------------------------

def pairwise_distance_samples(device, dtype):
    mk = Maker(device, dtype)
    yield Sample((mk.randn(3, 4), mk.randn(3, 4)), {}, "pairwise_distance[3x4]")
    yield Sample((mk.randn(3, 4), mk.randn(4)), {"keepdim": True}, "pairwise_distance[bcast,keepdim]")
    yield Sample((mk.randn(4), mk.randn(2, 3, 4)), {"p": 1.0}, "pairwise_distance[p=1,bcast 3d]")
    yield Sample((mk.randn(3, 4), mk.randn(3, 4)), {"p": INF}, "pairwise_distance[p=inf]")
    yield Sample((mk.randn(3, 4), mk.randn(3, 4)), {"p": 3, "eps": 0.0}, "pairwise_distance[p=3,eps=0]")
    yield Sample((mk.randn(3, 4), mk.randn(3, 4)), {"p": 1.5, "eps": 1e-3}, "pairwise_distance[p=1.5,eps]")
    yield Sample((mk.randn(3, 4), mk.randn(3, 4)), {"p": 0.5}, "pairwise_distance[p=0.5]")
    yield Sample((mk.randn(4), mk.randn(4)), {}, "pairwise_distance[1d]")
    yield Sample((mk.randn(()), mk.randn(())), {}, "pairwise_distance[0-d]")
    yield Sample((mk.randn(0, 4), mk.randn(0, 4)), {}, "pairwise_distance[empty]")
    yield Sample((mk.noncontiguous(mk.randn(3, 4)), mk.randn(4, 3).T), {}, "pairwise_distance[noncontig]")


def pairwise_distance_symbolic(x1, x2, p=2.0, eps=1e-6, keepdim=False):
    a, b = _symbolic.asarray(x1), _symbolic.asarray(x2)
    d = np.asarray(a - b + _symbolic.to_rational(eps), dtype=object)
    return norm_symbolic(d, p=p, dim=-1 if d.ndim else None, keepdim=keepdim and d.ndim > 0)


def _pairwise_shape(x1, x2, p=2.0, eps=1e-6, keepdim=False):
    try:
        shape = tuple(torch.broadcast_shapes(tuple(x1.shape), tuple(x2.shape)))
    except RuntimeError:
        raise InvalidInputError(f"x1 of shape {tuple(x1.shape)} and x2 of shape {tuple(x2.shape)} "
                                f"do not broadcast") from None
    if not shape:
        return ()
    return shape[:-1] + ((1,) if keepdim else ())


@register("pairwise_distance", torch_fn=torch.pairwise_distance, tensor_args=("x1", "x2"),
          samples=pairwise_distance_samples, symbolic=pairwise_distance_symbolic)
@expects("pairwise_distance", _pairwise_shape)
def pairwise_distance_backward(grad_output, x1, x2, p=2.0, eps=1e-6, keepdim=False, *, needs_input_grad):
    """y = ||d||_p over the last dim, d = x1 - x2 + eps: dL/dd is vector_norm's gradient (torch's
    ``norm_backward``), dL/dx1 = sum_to(dL/dd), dL/dx2 = -sum_to(dL/dd)."""
    order = _order("pairwise_distance", p)
    _check_scalar("pairwise_distance", "eps", eps)
    if not (needs_input_grad[0] or needs_input_grad[1]):
        return None, None
    d = x1 - x2 + eps
    # torch's forward is torch.norm(d, p, -1): the same op here (a 0-d d gives sqrt(d^2), inf for huge d)
    gd = _vector_norm_grad(grad_output, d, order, _dims("pairwise_distance", -1, d.dim()), keepdim,
                           norm=lambda t: torch.norm(t, order, -1, keepdim=True))
    g1 = _shapes.unbroadcast(gd, x1.shape).to(x1.dtype) if needs_input_grad[0] else None
    g2 = _shapes.unbroadcast(-gd, x2.shape).to(x2.dtype) if needs_input_grad[1] else None
    return g1, g2


# -- prod ---------------------------------------------------------------------------------

def _exclusive_products(x: torch.Tensor, d: int) -> torch.Tensor:
    """prod_{i != k} x_i along ``d``: exclusive prefix cumprod times exclusive suffix cumprod
    (torch's ``prod_safe_zeros_backward``; exact and differentiable with zeros)."""
    n = x.shape[d]
    if n == 0:
        return x
    ones = torch.ones_like(x.narrow(d, 0, 1))
    before = torch.cat([ones, x.narrow(d, 0, n - 1)], d).cumprod(d)
    after = torch.cat([ones, x.narrow(d, 1, n - 1).flip(d)], d).cumprod(d).flip(d)
    return before * after


def prod_samples(device, dtype):
    mk = Maker(device, dtype)
    x = mk.uniform(3, 4, low=0.5, high=1.5) * torch.tensor([1.0, -1.0, 1.0, 1.0], dtype=dtype, device=device)

    def t(rows):
        return torch.tensor(rows, dtype=dtype, device=device)
    yield Sample((x,), {}, "prod[all]")
    yield Sample((x,), {"dim": 1}, "prod[dim=1]")
    yield Sample((x,), {"dim": 0, "keepdim": True}, "prod[dim=0,keepdim]")
    yield Sample((mk.randn(2, 3, 2),), {"dim": -2}, "prod[3d,dim=-2]")
    yield Sample((t([[2.0, 0.0, -1.5], [1.0, 3.0, 0.5]]),), {}, "prod[all,one zero]")
    yield Sample((t([[2.0, 0.0, -1.5], [1.0, 0.0, 0.5]]),), {}, "prod[all,two zeros]")
    yield Sample((t([[2.0, 0.0, -1.5, 0.5], [0.0, 0.0, 2.0, 1.5], [1.5, -2.0, 0.5, 3.0]]),), {"dim": 1},
                 "prod[dim=1,zeros]")
    yield Sample((t([[0.0, 0.0, 0.0], [1.0, 2.0, 0.0]]),), {"dim": 0, "keepdim": True}, "prod[dim=0,zeros]")
    yield Sample((mk.randn(()),), {}, "prod[0-d]")
    yield Sample((mk.randn(()),), {"dim": 0, "keepdim": True}, "prod[0-d,dim=0]")
    yield Sample((mk.randn(0, 3),), {"dim": 1}, "prod[empty,dim=1]")
    yield Sample((mk.randn(0, 3),), {}, "prod[empty,all]")
    yield Sample((mk.noncontiguous(mk.randn(3, 4)),), {"dim": 1}, "prod[noncontig]")
    yield Sample((x,), {"dim": 1, "dtype": torch.float64}, "prod[dtype=float64]")
    yield Sample((x,), {"dtype": torch.float64}, "prod[all,dtype=float64]")


def prod_symbolic(input, dim=None, keepdim=False, *, dtype=None):
    a = _symbolic.asarray(input)
    if a.ndim == 0:
        return np.array(a, dtype=object)
    if dim is None:
        return np.array(sympy.Mul(*a.flat), dtype=object)
    d = dim % a.ndim
    moved = np.moveaxis(a, d, -1)
    out = np.empty(moved.shape[:-1], dtype=object)
    for idx in np.ndindex(out.shape):
        out[idx] = sympy.Mul(*moved[idx])                  # Mul() of nothing is 1
    return np.expand_dims(out, d) if keepdim else out


def _prod_shape(input, dim=None, keepdim=False, **_):
    if dim is not None and (isinstance(dim, bool) or not isinstance(dim, int)):
        raise InvalidParameterError(f"prod: dim must be one int, got {dim!r}")
    return () if dim is None else _reduced(input, _dims("prod", dim, input.dim()), keepdim)


def _prod(input, dim=None, keepdim=False, *, dtype=None):
    # torch.prod's two overloads, (input, *, dtype) and (input, dim, keepdim=False, *, dtype), as one
    if dim is None:
        return torch.prod(input, dtype=dtype)
    return torch.prod(input, dim, keepdim, dtype=dtype)


_prod.mirrors = torch.prod


def _prod_call(*args, **kwargs):
    """torch's call as the rule's ``(input,), {"dim": d, "keepdim": k, "dtype": t}``.

    torch's documented Python signature of ``prod`` is ``(input, dtype=None)`` (its overloads merged),
    which would bind ``x.prod(1)`` as ``dtype=1``; naming ``dim`` makes a tracer bind it by name.
    """
    given = named_call("prod", ("input", "dim", "keepdim"), args, kwargs, ("dtype", "out"))
    if "input" not in given:
        raise InvalidParameterError("prod: the input tensor is missing")
    return (given.pop("input"),), given


_prod.call_as_rule = _prod_call


@register("prod", torch_fn=_prod, tensor_args=("input",), samples=prod_samples, symbolic=prod_symbolic,
          aliases=(torch.Tensor.prod,))
@expects("prod", _prod_shape)
def prod_backward(grad_output, input, dim=None, keepdim=False, *, needs_input_grad, dtype=None):
    """y = prod x: dL/dx_k = g prod_{i != k} x_i; g y / x when no element of x is 0 (as torch), else
    the exclusive products (one zero: the others' product there, 0 elsewhere; two: 0)."""
    _check_dtype("prod", dtype)
    if not needs_input_grad[0]:
        return (None,)
    x = input
    if x.dim() == 0:
        return (grad_output.to(x.dtype),)
    if dim is None:
        g, xc, d = grad_output, x.reshape(-1), 0
        y = torch.prod(xc, 0, keepdim=True, dtype=dtype)
    else:
        (d,) = _dims("prod", dim, x.dim())
        g, xc = _restore(grad_output, x.dim(), (d,), keepdim), x
        y = torch.prod(xc, d, keepdim=True, dtype=dtype)
    zeros = int((x == 0).sum())
    if zeros > 1 and dim is None and not torch.is_grad_enabled():
        # torch's full reduction, first order only (grad mode off): two zeros make every product of
        # the others 0, also where an inf or NaN would make the exclusive products NaN
        grad = torch.zeros_like(g * y).expand(xc.shape)
    elif zeros:
        xp = xc if dtype is None else xc.to(dtype)
        grad = g * _exclusive_products(xp, d)
    else:
        grad = g * (y / xc)
    return (grad.reshape(x.shape).to(x.dtype),)


# -- topk, sort ---------------------------------------------------------------------------

def _scatter_back(g, x, idx, d):
    """values = x[idx] along d: dL/dx = zeros with g scattered to idx (idx unique per line)."""
    if x.dim() == 0:
        return g.to(x.dtype)
    return torch.zeros_like(x, dtype=g.dtype).scatter(d, idx, g).to(x.dtype)


def _topk_shape(input, k, dim=-1, largest=True, sorted=True):
    (d,) = _dims("topk", dim, input.dim()) or (0,)
    shape = list(input.shape) or []
    if input.dim():
        if isinstance(k, bool) or not isinstance(k, int) or not 0 <= k <= input.shape[d]:
            raise InvalidParameterError(f"topk: k must be an int in [0, {input.shape[d]}], got {k!r}")
        shape[d] = k
    return [tuple(shape), None]


def topk_samples(device, dtype):
    mk = Maker(device, dtype)
    x = mk.randn(3, 5)
    ties = torch.tensor([[3.0, 1.0, 3.0, 3.0, 2.0], [0.0, 2.0, 2.0, 1.0, 2.0]], dtype=dtype, device=device)
    yield Sample((x,), {"k": 2}, "topk[k=2]")
    yield Sample((x,), {"k": 3, "dim": 0, "largest": False}, "topk[k=3,dim=0,smallest]")
    yield Sample((x,), {"k": 4, "dim": 1, "largest": True, "sorted": False}, "topk[unsorted]")
    yield Sample((ties,), {"k": 2, "dim": -1}, "topk[ties]")
    yield Sample((ties,), {"k": 3, "largest": False, "sorted": False}, "topk[ties,smallest,unsorted]")
    yield Sample((x,), {"k": 0}, "topk[k=0]")
    yield Sample((mk.randn(()),), {"k": 1}, "topk[0-d]")
    yield Sample((mk.randn(2, 0),), {"k": 0}, "topk[empty]")
    yield Sample((mk.noncontiguous(mk.randn(3, 4)),), {"k": 2, "dim": 1}, "topk[noncontig]")
    yield Sample((mk.channels_last(mk.randn(2, 3, 2, 2)),), {"k": 2, "dim": 1}, "topk[channels_last]")


def _topk_save(input, k, dim=-1, largest=True, sorted=True):
    """The forward and its indices (integers, no history): the backward then scatters without a second topk."""
    out = torch.topk(input, k, dim, largest, sorted)
    return out, {"indices": out.indices}


@register("topk", torch_fn=torch.topk, tensor_args=("input",), samples=topk_samples, aliases=(torch.Tensor.topk,),
          save=_topk_save)
@expects("topk", _topk_shape)
def topk_backward(grad_output, input, k, dim=-1, largest=True, sorted=True, *, needs_input_grad, saved=None):
    """values = x[idx] (idx from torch's topk kernel, its choice among ties): dL/dx = scatter(idx, g)."""
    if not needs_input_grad[0]:
        return (None,)
    (d,) = _dims("topk", dim, input.dim()) or (0,)
    idx = saved["indices"] if saved and "indices" in saved else torch.topk(input, k, d, largest, sorted).indices
    return (_scatter_back(grad_output[0], input, idx, d) if grad_output[0] is not None else None,)


def sort_samples(device, dtype):
    mk = Maker(device, dtype)
    x = mk.randn(3, 5)
    ties = torch.tensor([[3.0, 1.0, 3.0, 3.0, 2.0], [0.0, 2.0, 2.0, 1.0, 2.0]], dtype=dtype, device=device)
    yield Sample((x,), {}, "sort[default]")
    yield Sample((x,), {"dim": 0, "descending": True}, "sort[dim=0,descending]")
    yield Sample((ties,), {"stable": True}, "sort[ties,stable]")
    yield Sample((ties,), {"stable": True, "descending": True, "dim": 1}, "sort[ties,stable,descending]")
    yield Sample((ties,), {"descending": True}, "sort[ties,descending]")
    yield Sample((mk.randn(()),), {}, "sort[0-d]")
    yield Sample((mk.randn(2, 0),), {}, "sort[empty]")
    yield Sample((mk.noncontiguous(mk.randn(3, 4)),), {"dim": 1}, "sort[noncontig]")
    nan = torch.tensor([[1.0, NAN, -2.0, 0.5]], dtype=dtype, device=device)
    yield Sample((nan,), {"descending": True}, "sort[nan]")


def _sort_shape(input, dim=-1, descending=False, stable=None):
    _dims("sort", dim, input.dim())
    return [tuple(input.shape), None]


def _sort_forward(input, dim=-1, descending=False, stable=None):
    """torch.sort with ``stable`` passed only when given (``sort(x, dim, descending)`` has no stable)."""
    if stable is None:
        return torch.sort(input, dim, descending)
    return torch.sort(input, dim=dim, descending=descending, stable=stable)


def _sort_save(input, dim=-1, descending=False, stable=None):
    out = _sort_forward(input, dim, descending, stable)
    return out, {"indices": out.indices}


@register("sort", torch_fn=torch.sort, tensor_args=("input",), samples=sort_samples, aliases=(torch.Tensor.sort,),
          save=_sort_save)
@expects("sort", _sort_shape)
def sort_backward(grad_output, input, dim=-1, descending=False, stable=None, *, needs_input_grad, saved=None):
    """values = x[idx] (idx from torch's sort kernel, ties as it orders them): dL/dx = scatter(idx, g)."""
    if not needs_input_grad[0] or grad_output[0] is None:
        return (None,)
    (d,) = _dims("sort", dim, input.dim()) or (0,)
    idx = saved["indices"] if saved and "indices" in saved else _sort_forward(input, d, descending, stable).indices
    return (_scatter_back(grad_output[0], input, idx, d),)
