"""batch_norm and layer_norm: explicit backward formulas.

Both normalise over a set of axes R (M elements each) and then apply an affine map:

    mu = mean_R(x),  var = mean_R((x - mu)^2)   (biased),  r = 1 / sqrt(var + eps)
    xhat = (x - mu) r,  y = w xhat + b

With ``h = dL/dxhat = g w`` the input gradient is the classic

    dL/dx = r (h - mean_R(h) - xhat mean_R(h xhat))

(``mu`` and ``var`` depend on x), and ``dL/dw = sum(g xhat)``, ``dL/db = sum(g)`` over
the axes that ``w`` and ``b`` are broadcast along.  batch_norm in eval mode uses the
running statistics, which are constants: ``dL/dx = g w r``.  All of it is plain torch
ops, so autograd differentiates it again (second derivatives).
"""

from __future__ import annotations

import numpy as np
import sympy
import torch
import torch.nn.functional as F

from gradcheck_kit.errors import InvalidParameterError
from gradcheck_kit.manual import _symbolic
from gradcheck_kit.manual._sampling import Maker
from gradcheck_kit.manual.registry import Sample, register


# ---------------------------------------------------------------------------
# shared pieces
# ---------------------------------------------------------------------------

def _centre(x: torch.Tensor, dims: tuple[int, ...], eps: float):
    """x - mu and r = 1/sqrt(var + eps) over ``dims`` (biased variance, as the forward uses).

    Two passes (mean, then mean of squares of x - mu): stable, and faster on CPU than
    ``torch.var_mean`` over non-trailing dims.
    """
    xc = x - x.mean(dims, keepdim=True)
    return xc, torch.rsqrt((xc * xc).mean(dims, keepdim=True) + eps)


def _normalize(x: torch.Tensor, dims: tuple[int, ...], eps: float):
    """xhat = (x - mu) r and r over ``dims``."""
    xc, r = _centre(x, dims, eps)
    return xc * r, r


def _normalize_backward(h: torch.Tensor, xhat: torch.Tensor, r: torch.Tensor, dims) -> torch.Tensor:
    """dL/dx = r (h - mean(h) - xhat mean(h xhat)) for h = dL/dxhat, means over ``dims``."""
    return r * (h - h.mean(dims, keepdim=True) - xhat * (h * xhat).mean(dims, keepdim=True))


def _sym_normalize(x: np.ndarray, axes: tuple[int, ...], eps) -> np.ndarray:
    # var = mean(x^2) - mean(x)^2: equal in exact arithmetic to mean((x - mu)^2), O(M) terms, not O(M^2)
    m = int(np.prod([x.shape[a] for a in axes]))
    mu = x.sum(axis=axes, keepdims=True) / m
    var = (x * x).sum(axis=axes, keepdims=True) / m - mu * mu
    return (x - mu) / np.vectorize(lambda v: sympy.sqrt(v + eps), otypes=[object])(var)


# ---------------------------------------------------------------------------
# batch_norm
# ---------------------------------------------------------------------------

def _channel_view(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """A ``(C,)`` vector viewed to broadcast along dim 1 of ``x``."""
    return v.reshape([1, -1] + [1] * (x.dim() - 2))


def _batch_norm_samples(device, dtype):
    mk = Maker(device, dtype)
    rows = [((4, 3), "2d"), ((2, 2, 3), "3d"), ((2, 3, 2, 2), "4d"), ((2, 2, 2, 1, 2), "5d")]
    for shape, name in rows:
        c = shape[1]
        for training in (True, False):
            mode = "train" if training else "eval"
            yield Sample((mk.randn(*shape), mk.randn(c, scale=0.3), mk.positive(c), mk.positive(c), mk.randn(c)),
                         {"training": training}, f"batch_norm[{mode},{name}]")
    c = 3
    yield Sample((mk.randn(4, c, 2), None, None, mk.positive(c), mk.randn(c)), {"training": True, "eps": 1e-3},
                 "batch_norm[train,no_running_stats,eps1e-3]")
    yield Sample((mk.randn(2, c, 2, 2), mk.randn(c), mk.positive(c), None, None), {"training": True, "momentum": 0.5},
                 "batch_norm[train,no_affine,momentum]")
    yield Sample((mk.randn(3, c), mk.randn(c), mk.positive(c), None, None), {}, "batch_norm[eval,no_affine]")
    yield Sample((mk.randn(3, c), mk.randn(c), mk.positive(c), mk.positive(c), None), {"training": True},
                 "batch_norm[train,weight_only]")
    # bias without weight: first derivatives only, in tests/manual/test_normalization.py, because
    # torch's own double backward fails there ("Expected a proper Tensor but got None").
    yield Sample((mk.channels_last(mk.randn(2, c, 2, 2)), mk.randn(c), mk.positive(c), mk.positive(c), mk.randn(c)),
                 {"training": True}, "batch_norm[train,channels_last]")
    yield Sample((mk.noncontiguous(mk.randn(2, c, 4)), mk.randn(c), mk.positive(c), mk.positive(c), mk.randn(c)),
                 {"training": True}, "batch_norm[train,noncontig]")


def batch_norm_symbolic(input, running_mean, running_var, weight=None, bias=None, training=False, momentum=0.1,
                        eps=1e-05):
    x = np.asarray(input, dtype=object)
    eps = _symbolic.to_rational(eps)
    view = [1, -1] + [1] * (x.ndim - 2)
    if training:
        y = _sym_normalize(x, (0,) + tuple(range(2, x.ndim)), eps)
    else:
        rm = np.asarray(running_mean, dtype=object).reshape(view)
        rv = np.asarray(running_var, dtype=object).reshape(view)
        y = (x - rm) / np.vectorize(lambda v: sympy.sqrt(v + eps), otypes=[object])(rv)
    if weight is not None:
        y = y * np.asarray(weight, dtype=object).reshape(view)
    if bias is not None:
        y = y + np.asarray(bias, dtype=object).reshape(view)
    return np.asarray(y, dtype=object)


@register("batch_norm", torch_fn=F.batch_norm,
          tensor_args=("input", "running_mean", "running_var", "weight", "bias"),
          samples=_batch_norm_samples, symbolic=batch_norm_symbolic,
          nondifferentiable=("running_mean", "running_var"))
def batch_norm_backward(grad_output, input, running_mean, running_var, weight=None, bias=None, *,
                        needs_input_grad, training=False, momentum=0.1, eps=1e-05):
    """Training: batch statistics over (N, *spatial) per channel, dL/dx = r (h - mean(h) - xhat mean(h xhat));
    eval: running statistics (constants), dL/dx = g w / sqrt(running_var + eps).
    dL/dw = sum(g xhat), dL/db = sum(g) over (N, *spatial).  The running statistics are read, never
    written: torch's forward updates them in training mode, the backward does not."""
    if input.dim() < 2:
        raise InvalidParameterError(f"batch_norm: input must be (N, C, *) with at least 2 dims, "
                                    f"got shape {tuple(input.shape)}")
    c = input.shape[1]
    for name, v in (("running_mean", running_mean), ("running_var", running_var), ("weight", weight),
                    ("bias", bias)):
        if v is not None and v.numel() != c:
            raise InvalidParameterError(f"batch_norm: {name} must have {c} entries (one per channel), "
                                        f"got shape {tuple(v.shape)}")
    dims = (0,) + tuple(range(2, input.dim()))
    gx = gw = gb = None
    if not training:
        if running_mean is None or running_var is None:
            raise InvalidParameterError("batch_norm: running_mean and running_var are required when training=False")
        r = torch.rsqrt(_channel_view(running_var, input) + eps)
        if needs_input_grad[0]:  # dL/dx = g w r
            gx = grad_output * (r if weight is None else r * _channel_view(weight, input))
        if needs_input_grad[3]:  # dL/dw = sum(g (x - running_mean) r)
            gw = ((grad_output * (input - _channel_view(running_mean, input))).sum(dims, keepdim=True)
                  * r).reshape(weight.shape)
        if needs_input_grad[4]:
            gb = grad_output.sum(dims).reshape(bias.shape)
        return gx, None, None, gw, gb

    m = input.numel() // c
    if m <= 1:
        raise InvalidParameterError(f"batch_norm: training needs more than 1 value per channel, "
                                    f"got input of shape {tuple(input.shape)}")
    # w is constant over R, so the means of h = g w in the general formula factor through the two
    # per-channel sums that are also dL/db and dL/dw:  sum_g = sum_R g,  sum_gxc = sum_R g (x - mu),
    #   dL/dx = r w (g - sum_g / M - (x - mu) r^2 sum_gxc / M),  dL/dw = r sum_gxc,  dL/db = sum_g.
    xc, r = _centre(input, dims, eps)
    sum_g = grad_output.sum(dims, keepdim=True) if (needs_input_grad[0] or needs_input_grad[4]) else None
    sum_gxc = (grad_output * xc).sum(dims, keepdim=True) if (needs_input_grad[0] or needs_input_grad[3]) else None
    if needs_input_grad[0]:
        k = r if weight is None else r * _channel_view(weight, input)
        gx = k * grad_output - (xc * (k * r * r * sum_gxc / m) + k * sum_g / m)
    if needs_input_grad[3]:
        gw = (r * sum_gxc).reshape(weight.shape)
    if needs_input_grad[4]:
        gb = sum_g.reshape(bias.shape)
    return gx, None, None, gw, gb


# ---------------------------------------------------------------------------
# layer_norm
# ---------------------------------------------------------------------------

def layer_norm(input, weight=None, bias=None, *, normalized_shape, eps=1e-05):
    """``torch.nn.functional.layer_norm`` with its tensors first, as every rule takes them.

    ``F.layer_norm(input, normalized_shape, weight, bias, eps)`` puts ``normalized_shape``
    between the tensors, so ``F.layer_norm(x, w, b, normalized_shape=s)`` is not a valid
    call; this thin wrapper is the rule's ``torch_fn`` (``rule.torch_fn.mirrors`` is the
    torch function) and computes exactly ``F.layer_norm(input, normalized_shape, weight, bias, eps)``.
    """
    return F.layer_norm(input, normalized_shape, weight, bias, eps)


layer_norm.mirrors = F.layer_norm


def _norm_shape(normalized_shape) -> tuple[int, ...]:
    if isinstance(normalized_shape, int):
        return (normalized_shape,)
    return tuple(int(s) for s in normalized_shape)


def _layer_norm_samples(device, dtype):
    mk = Maker(device, dtype)
    rows = [((3, 4), (4,), "2d,last"), ((2, 3, 4), (4,), "3d,last"), ((2, 3, 4), (3, 4), "3d,last2"),
            ((2, 2, 3), (2, 2, 3), "3d,all"), ((5,), (5,), "unbatched")]
    for shape, ns, name in rows:
        yield Sample((mk.randn(*shape), mk.positive(*ns), mk.randn(*ns)), {"normalized_shape": ns},
                     f"layer_norm[{name}]")
    yield Sample((mk.randn(3, 4), None, None), {"normalized_shape": [4]}, "layer_norm[list_shape,no_affine]")
    yield Sample((mk.randn(3, 4), mk.positive(4), None), {"normalized_shape": [4], "eps": 1e-3},
                 "layer_norm[weight_only,eps1e-3]")
    # bias without weight: see batch_norm (torch's double backward fails), tested in test_normalization.py
    yield Sample((mk.noncontiguous(mk.randn(3, 4)), mk.positive(4), mk.randn(4)), {"normalized_shape": (4,)},
                 "layer_norm[noncontig]")


def layer_norm_symbolic(input, weight=None, bias=None, *, normalized_shape, eps=1e-05):
    x = np.asarray(input, dtype=object)
    k = len(_norm_shape(normalized_shape))
    y = _sym_normalize(x, tuple(range(x.ndim - k, x.ndim)), _symbolic.to_rational(eps))
    if weight is not None:
        y = y * np.asarray(weight, dtype=object)
    if bias is not None:
        y = y + np.asarray(bias, dtype=object)
    return np.asarray(y, dtype=object)


@register("layer_norm", torch_fn=layer_norm, tensor_args=("input", "weight", "bias"),
          samples=_layer_norm_samples, symbolic=layer_norm_symbolic)
def layer_norm_backward(grad_output, input, weight=None, bias=None, *, needs_input_grad, normalized_shape,
                        eps=1e-05):
    """Statistics over the trailing ``normalized_shape`` dims R: dL/dx = r (h - mean_R(h) - xhat mean_R(h xhat)),
    h = g w; dL/dw = sum(g xhat), dL/db = sum(g) over the leading dims."""
    ns = _norm_shape(normalized_shape)
    k = len(ns)
    if k == 0 or input.dim() < k or tuple(input.shape[input.dim() - k:]) != ns:
        raise InvalidParameterError(f"layer_norm: normalized_shape {ns} must be non-empty and match the "
                                    f"trailing dims of input of shape {tuple(input.shape)}")
    for name, v in (("weight", weight), ("bias", bias)):
        if v is not None and tuple(v.shape) != ns:
            raise InvalidParameterError(f"layer_norm: {name} must have shape normalized_shape={ns}, "
                                        f"got {tuple(v.shape)}")
    dims = tuple(range(input.dim() - k, input.dim()))
    lead = tuple(range(input.dim() - k))
    gx = gw = gb = None
    if needs_input_grad[0] or needs_input_grad[1]:
        xhat, r = _normalize(input, dims, eps)
    if needs_input_grad[0]:
        h = grad_output if weight is None else grad_output * weight
        gx = _normalize_backward(h, xhat, r, dims)
    if needs_input_grad[1]:
        gw = (grad_output * xhat).sum(lead) if lead else grad_output * xhat
    if needs_input_grad[2]:
        gb = grad_output.sum(lead) if lead else grad_output.clone()
    return gx, gw, gb
