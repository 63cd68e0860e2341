"""Similarity and normalisation along a dim: ``cosine_similarity``, ``normalize``.

cosine_similarity (torch 2.13's ATen form): a, b broadcast to one shape, then

    na = max(||a||, eps),  nb = max(||b||, eps)   (the clamp runs under no_grad, in place on a clone)
    y  = sum_dim (a / na) (b / nb)

Because the clamp is invisible to autograd, torch differentiates na as ||a|| even where the
value is eps: d na / da = a / ||a|| (0 at a = 0, vector_norm's convention).  Hence

    dL/da = unbroadcast(g (b / (na nb) - y a / (na ||a||)))       (and symmetrically for b)

which is the usual ``g (b_hat - y a_hat) / ||a||`` whenever ||a|| >= eps.  In the clamped region
(||a|| < eps) the rule gives torch's first derivative exactly; its own derivative there differs
from torch's double backward (which would need the clamped value without its gradient, i.e. a
``detach``), so the generic samples stay out of that region.

normalize (``F.normalize``): y = x / d, d = max(||x||_p, eps) along dim (clamp_min, differentiable,
gradient passing where ||x||_p >= eps):

    dL/dx = g / d + dnorm(s),   s = -sum_dim(g x) / d^2 where ||x||_p >= eps, else 0

with ``dnorm`` the p-norm's own backward (``elementwise.norm``: sign(x) |x|^(p-1) / n^(p-1), its
conventions at zeros and ties).
"""

from __future__ import annotations

import numpy as np
import sympy
import torch
import torch.nn.functional as F

from gradcheck_kit.errors import InvalidParameterError, UnsupportedError
from gradcheck_kit.manual import _symbolic
from gradcheck_kit.manual._sampling import Maker
from gradcheck_kit.manual._shapes import unbroadcast
from gradcheck_kit.manual.elementwise import norm_backward
from gradcheck_kit.manual.registry import Sample, register

__all__: list[str] = []


def _dim(dim: int, ndim: int, op: str) -> int:
    n = max(ndim, 1)
    if not isinstance(dim, int) or isinstance(dim, bool) or not -n <= dim < n:
        raise InvalidParameterError(f"{op}: dim must be an int in [{-n}, {n - 1}], got {dim!r}")
    return dim % n


# -- cosine_similarity -------------------------------------------------------------------

def cosine_similarity_samples(device, dtype):
    mk = Maker(device, dtype)
    yield Sample((mk.randn(3, 4), mk.randn(3, 4)), {}, "cosine_similarity[3x4,dim1]")
    yield Sample((mk.randn(3, 4), mk.randn(3, 4)), {"dim": 0}, "cosine_similarity[dim0]")
    yield Sample((mk.randn(2, 3, 4), mk.randn(4)), {"dim": -1}, "cosine_similarity[bcast,dim-1]")
    yield Sample((mk.randn(3, 1), mk.randn(1, 4)), {"dim": 0, "eps": 1e-6}, "cosine_similarity[bcast_both,eps]")
    yield Sample((mk.randn(5), mk.randn(5)), {"dim": 0}, "cosine_similarity[1d]")
    # parallel rows (y = 1, gradient exactly 0) are in tests/manual/test_similarity.py: check() has no
    # scale to set a tolerance by when the whole reference gradient is 0
    yield Sample((mk.noncontiguous(mk.randn(3, 4)), mk.randn(4, 3).T), {}, "cosine_similarity[noncontig]")
    # rows with ||a|| < eps (torch's first derivative there: g b / (eps nb)) are checked first order
    # in tests/manual/test_similarity.py: torch's double backward there is NaN (see the docstring)


def cosine_similarity_symbolic(x1, x2, dim=1, eps=1e-8):
    a, b = np.broadcast_arrays(_symbolic.asarray(x1), _symbolic.asarray(x2))
    d = _dim(dim, a.ndim, "cosine_similarity")
    e = _symbolic.to_rational(eps)
    am, bm = np.moveaxis(a, d, -1), np.moveaxis(b, d, -1)
    out = np.empty(am.shape[:-1], dtype=object)
    for idx in np.ndindex(out.shape):
        ra, rb = list(am[idx]), list(bm[idx])
        na = sympy.Max(sympy.sqrt(sympy.Add(*[v * v for v in ra])), e)
        nb = sympy.Max(sympy.sqrt(sympy.Add(*[v * v for v in rb])), e)
        out[idx] = sympy.Add(*[u * v for u, v in zip(ra, rb)]) / (na * nb)
    return out


@register("cosine_similarity", torch_fn=F.cosine_similarity, tensor_args=("x1", "x2"),
          samples=cosine_similarity_samples, symbolic=cosine_similarity_symbolic)
def cosine_similarity_backward(grad_output, x1, x2, *, needs_input_grad, dim=1, eps=1e-8):
    """y = sum_dim a b / (na nb), na = max(||a||, eps) (clamped without gradient, as torch):
    dL/da = g (b / (na nb) - y a / (na ||a||)), 0 for the second term where ||a|| = 0."""
    shape = torch.broadcast_shapes(x1.shape, x2.shape)
    if len(shape) == 0:
        raise InvalidParameterError("cosine_similarity: inputs must have at least one dim, got 0-d tensors")
    d = _dim(dim, len(shape), "cosine_similarity")
    a, b = x1.expand(shape), x2.expand(shape)
    g = grad_output.unsqueeze(d)
    ra = torch.linalg.vector_norm(a, dim=d, keepdim=True)
    rb = torch.linalg.vector_norm(b, dim=d, keepdim=True)
    na, nb = ra.clamp_min(eps), rb.clamp_min(eps)
    y = ((a / na) * (b / nb)).sum(d, keepdim=True)
    zero = torch.zeros((), dtype=a.dtype, device=a.device)

    def one(u, v, nu, nv, ru):
        # g (v / (nu nv) - y u / (nu ||u||)); vector_norm's backward is 0 at u = 0
        return g * (v / (nu * nv) - y * torch.where(ru == 0, zero, u / (nu * torch.where(ru == 0, 1.0, ru))))

    ga = unbroadcast(one(a, b, na, nb, ra), x1.shape) if needs_input_grad[0] else None
    gb = unbroadcast(one(b, a, nb, na, rb), x2.shape) if needs_input_grad[1] else None
    return ga, gb


# -- normalize -----------------------------------------------------------------------------

def normalize_samples(device, dtype):
    mk = Maker(device, dtype)
    # uniform, not randn: the sweep's seeded cotangent is randn from the same seed, and g parallel
    # to x would make the whole gradient 0
    yield Sample((mk.uniform(3, 4, low=-2.0, high=2.0),), {}, "normalize[default]")
    yield Sample((mk.randn(3, 4),), {"dim": 0}, "normalize[dim0]")
    yield Sample((mk.randn(2, 3, 4),), {"p": 1.0, "dim": -1}, "normalize[p1]")
    yield Sample((mk.randn(2, 3, 4),), {"p": 3.0, "dim": 1}, "normalize[p3]")
    yield Sample((mk.randn(3, 4),), {"p": float("inf"), "dim": 1}, "normalize[pinf]")
    yield Sample((mk.randn(5),), {"dim": 0}, "normalize[1d]")
    yield Sample((mk.randn(3, 4, scale=1e-7),), {"eps": 1e-3}, "normalize[clamped]")
    yield Sample((mk.noncontiguous(mk.randn(3, 4)),), {"p": 2}, "normalize[noncontig]")
    yield Sample((mk.channels_last(mk.randn(2, 3, 2, 2)),), {}, "normalize[channels_last]")


def normalize_symbolic(input, p=2.0, dim=1, eps=1e-12, out=None):
    x = _symbolic.asarray(input)
    d = _dim(dim, x.ndim, "normalize")
    e = _symbolic.to_rational(eps)
    if p != 2:
        raise UnsupportedError(f"normalize: the symbolic forward covers p=2 only, got p={p!r}")
    n = np.vectorize(lambda v: sympy.Max(sympy.sqrt(v), e), otypes=[object])(
        np.asarray(_symbolic.sum(_symbolic.elementwise(lambda v: v * v, x), d, keepdim=True), dtype=object))
    return np.asarray(x / n, dtype=object)


@register("normalize", torch_fn=F.normalize, tensor_args=("input",), samples=normalize_samples,
          symbolic=normalize_symbolic)
def normalize_backward(grad_output, input, *, needs_input_grad, p=2.0, dim=1, eps=1e-12, out=None):
    """y = x / max(||x||_p, eps) along dim: dL/dx = g / d + dnorm(-sum_dim(g x) / d^2), the second
    term only where ||x||_p >= eps (clamp_min passes its gradient there)."""
    if out is not None:
        raise UnsupportedError("normalize: out= is not supported by the explicit backward")
    if not needs_input_grad[0]:
        return (None,)
    d = _dim(dim, input.dim(), "normalize") if input.dim() else dim
    n = torch.linalg.vector_norm(input, p, dim=d if input.dim() else None, keepdim=True)
    den = n.clamp_min(eps)
    s = torch.where(n >= eps, -(grad_output * input).sum(d if input.dim() else (), keepdim=True) / (den * den), 0.0)
    (gn,) = norm_backward(s, input, needs_input_grad=(True,), p=p, dim=d if input.dim() else None, keepdim=True)
    return (grad_output / den + gn,)
