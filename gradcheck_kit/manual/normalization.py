"""batch_norm, layer_norm, group_norm, instance_norm, rms_norm: explicit backward formulas.

Both normalise over a set of axes R (M elements each) and then apply an affine map:

    mu = mean_R(x),  var = mean_R((x - mu)^2)   (biased),  r = 1 / sqrt(var + eps)
    xhat = (x - mu) r,  y = w xhat + b

With ``h = dL/dxhat = g w`` the input gradient is the classic

    dL/dx = r (h - mean_R(h) - xhat mean_R(h xhat))

(``mu`` and ``var`` depend on x), and ``dL/dw = sum(g xhat)``, ``dL/db = sum(g)`` over
the axes that ``w`` and ``b`` are broadcast along.  batch_norm in eval mode uses the
running statistics, which are constants: ``dL/dx = g w r``.  All of it is plain torch
ops, so autograd differentiates it again (second derivatives).

Accuracy and speed: the rules receive x, not the forward's statistics, so they recompute
them, always in the centred two-pass form (``mu`` corrected by ``mean(x - mu0)``, then
``var = mean((x - mu)^2)``): in float32 a one-pass ``E[x^2] - mu^2`` loses bits to
cancellation whenever the mean is a few standard deviations from 0, and gave 20-30x
torch's own float32 error (tests/manual/test_accuracy.py measures every rule).  dL/dx is
one per-channel (per-row) affine map of (g, x - mu), never materialising xhat, g w or
their products.
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

def _sym_normalize(x: np.ndarray, axes: tuple[int, ...], eps) -> np.ndarray:
    # var = mean(x^2) - mean(x)^2: equal in exact arithmetic to mean((x - mu)^2), O(M) terms, not O(M^2)
    m = int(np.prod([x.shape[a] for a in axes]))
    if x.size == 0:  # an empty batch: nothing to normalise
        return x.copy()
    mu = x.sum(axis=axes, keepdims=True) / m
    var = (x * x).sum(axis=axes, keepdims=True) / m - mu * mu
    return (x - mu) / np.vectorize(lambda v: sympy.sqrt(v + eps), otypes=[object])(var)


def _channel_affine(t: torch.Tensor, a: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """``a t + c`` with ``(1, C, 1, ...)`` coefficients along dim 1, in one fused pass.

    F.batch_norm in eval mode with running mean 0, running var 1 and eps 0 is exactly this
    affine map, ``(t - 0) / sqrt(1 + 0) * a + c`` (a plain differentiable function of t, a, c),
    and runs ~1.5x faster on CPU than ``t * a + c`` or ``addcmul(c, a, t)`` with broadcast ``c``.
    While autograd records (someone differentiates this backward again) the plain ``addcmul``
    is used, so that second derivatives of the batch_norm rule never go through batch_norm's
    own autograd formula: the rule stays an independent check.
    """
    if t.numel() == 0 or torch.is_grad_enabled() and (t.requires_grad or a.requires_grad or c.requires_grad):
        return torch.addcmul(c, a, t)
    zero = torch.zeros(t.shape[1], dtype=t.dtype, device=t.device)
    return F.batch_norm(t, zero, torch.ones_like(zero), a.reshape(-1), c.reshape(-1), False, 0.0, 0.0)


def _centred(x: torch.Tensor, dims, m: int):
    """``(x - mu, mu)`` over ``dims`` with a centred two-pass mean: ``mu0 = sum(x) / m``, then
    ``mu = mu0 + sum(x - mu0) / m``.  The correction recovers the rounding error of the first
    sum (float32 with a mean of a few sigma: the one-pass E[x^2] - mu^2 lost up to 6 bits and
    gave 30x torch's error on dL/dw).  Equal to the plain mean in exact arithmetic, so autograd
    differentiates it as the mean."""
    mu = x.sum(dims, keepdim=True) / m
    xc = x - mu
    corr = xc.sum(dims, keepdim=True) / m
    return xc - corr, mu + corr


def _batch_stats(x: torch.Tensor, dims: tuple[int, ...], m: int, eps: float):
    """Per-channel statistics over ``dims`` as ``(x - mu, r)``, ``r = 1 / sqrt(var + eps)``,
    ``var = mean((x - mu)^2)`` (biased, as the forward), from the centred two-pass form."""
    xc, _ = _centred(x, dims, m)
    return xc, torch.rsqrt(xc.square().sum(dims, keepdim=True) / m + eps)


def _row_stats(x2: torch.Tensor, d: int, eps: float):
    """``_batch_stats`` for the rows of a ``(rows, d)`` matrix: ``(x - mu, r)`` with ``(rows, 1)`` r."""
    return _batch_stats(x2, (1,), d, eps)


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
    yield Sample((mk.randn(0, c, 2), mk.randn(c), mk.positive(c), mk.positive(c), mk.randn(c)),
                 {"training": True}, "batch_norm[train,empty_batch]")


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


def _batch_norm_save(input, running_mean, running_var, weight=None, bias=None, training=False, momentum=0.1,
                     eps=1e-05):
    """The forward and, in training, the batch mean and 1 / sqrt(var + eps) it normalised with
    (``saved["mean"]``, ``saved["invstd"]``), as torch's kernel returns them; the backward then
    skips recomputing the statistics."""
    c = input.shape[1] if input.dim() >= 2 else 0
    # while autograd records (a caller differentiating the backward again) nothing is saved: torch's
    # statistics carry no history, the recomputed ones do
    recording = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (input, weight, bias))
    if not training or recording or c == 0 or input.numel() // c <= 1 or not hasattr(torch, "native_batch_norm"):
        return F.batch_norm(input, running_mean, running_var, weight, bias, training, momentum, eps), {}
    out, mean, invstd = torch.native_batch_norm(input, weight, bias, running_mean, running_var, True, momentum, eps)
    return out, {"mean": mean, "invstd": invstd}


@register("batch_norm", torch_fn=F.batch_norm,
          tensor_args=("input", "running_mean", "running_var", "weight", "bias"),
          samples=_batch_norm_samples, symbolic=batch_norm_symbolic,
          nondifferentiable=("running_mean", "running_var"), save=_batch_norm_save)
def batch_norm_backward(grad_output, input, running_mean, running_var, weight=None, bias=None, *,
                        needs_input_grad, training=False, momentum=0.1, eps=1e-05, saved=None):
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

    m = input.numel() // c if c else 0
    if m == 0:  # an empty batch: torch returns an empty output, dL/dw = dL/db = 0 (sums over nothing)
        empty_sum = grad_output.sum(dims)
        return (torch.zeros_like(input) if needs_input_grad[0] else None, None, None,
                (empty_sum * 0).reshape(weight.shape) if needs_input_grad[3] else None,
                empty_sum.reshape(bias.shape) if needs_input_grad[4] else None)
    if m == 1:
        raise InvalidParameterError(f"batch_norm: training needs more than 1 value per channel, "
                                    f"got input of shape {tuple(input.shape)}")
    # w is constant over R, so the means of h = g w in the general formula factor through the two
    # per-channel sums that are also dL/db and dL/dw:  sum_g = sum_R g,  sum_gxc = sum_R g (x - mu),
    #   dL/dx = k g + A (x - mu) - k sum_g / M,   k = r w,   A = -k r^2 sum_gxc / M,
    #   dL/dw = r sum_gxc,  dL/db = sum_g.
    # Per element that is one affine map of (g, x - mu) with per-channel coefficients
    # (_channel_affine, then addcmul_), without materialising xhat or its products.
    sum_g = grad_output.sum(dims, keepdim=True) if (needs_input_grad[0] or needs_input_grad[4]) else None
    if saved and "mean" in saved:  # the forward's statistics: x - mu and r without recomputing them
        xc = input - _channel_view(saved["mean"].to(input.dtype), input)
        r = _channel_view(saved["invstd"].to(input.dtype), input)
    else:
        xc, r = _batch_stats(input, dims, m, eps)
    sum_gxc = None
    if needs_input_grad[0] or needs_input_grad[3]:
        sum_gxc = (grad_output * xc).sum(dims, keepdim=True)
    if needs_input_grad[0]:
        k = r if weight is None else r * _channel_view(weight, input)
        a = -k * r * r * sum_gxc / m
        c0 = -k * sum_g / m
        # _channel_affine's output is fresh and its backward does not save it: adding k g in place
        # keeps the result differentiable
        gx = _channel_affine(xc, a, c0).addcmul_(k, grad_output)
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
    if not (needs_input_grad[0] or needs_input_grad[1] or needs_input_grad[2]):
        return None, None, None
    d = 1
    for s in ns:
        d *= s
    # rows i (the leading dims, flattened) times the normalised block j (flattened, d entries):
    # with mu_i, r_i the row statistics, w_j the weight (1 if None),
    #   dL/dx_ij = r_i (w_j g_ij - S_i / d - (x_ij - mu_i) r_i^2 T_i / d),
    #   S_i = sum_j w_j g_ij,  T_i = sum_j w_j g_ij (x_ij - mu_i),
    #   dL/dw_j = sum_i r_i g_ij (x_ij - mu_i),  dL/db_j = sum_i g_ij.
    # The row and column sums are matrix-vector products with g and with p = g (x - mu), so
    # neither xhat nor h xhat is materialised.
    x2 = input.reshape(-1, d)
    g2 = grad_output.reshape(-1, d)
    w1 = weight.reshape(d) if weight is not None else None
    gx = gw = gb = None
    if needs_input_grad[0] or needs_input_grad[1]:
        xc, r = _row_stats(x2, d, eps)  # x - mu (centred two-pass), (rows, 1) r
        p = g2 * xc
        if needs_input_grad[0]:
            s_i = (g2.sum(1, keepdim=True) if w1 is None else (g2 @ w1).unsqueeze(1))
            t_i = (p.sum(1, keepdim=True) if w1 is None else (p @ w1).unsqueeze(1))
            # dL/dx = r w g + a (x - mu) - r S / d,  a = -r^3 T / d, one affine map of (g, x - mu) per row
            a = -r * r * r * t_i / d
            c0 = -r * s_i / d
            # rows as the channels of a (1, rows, d) tensor: _channel_affine scales and shifts per row
            gh = g2 if w1 is None else g2 * w1
            gx = _channel_affine(gh.unsqueeze(0), r, c0).addcmul_(a.unsqueeze(0), xc.unsqueeze(0))
            gx = gx.reshape(input.shape)
        if needs_input_grad[1]:
            gw = (r.reshape(-1) @ p).reshape(weight.shape)  # dL/dw_j = sum_i r_i g_ij (x_ij - mu_i)
    if needs_input_grad[2]:
        gb = g2.sum(0).reshape(bias.shape)
    return gx, gw, gb


# ---------------------------------------------------------------------------
# group_norm, instance_norm, rms_norm
# ---------------------------------------------------------------------------
#
# group_norm and instance_norm normalise rows of x (a row = one sample's group of channels,
# or one sample's channel) and then apply a per-channel affine map, so with h = g w_c:
#
#     dL/dx = r (h - mean_row(h) - xhat mean_row(h xhat)),   dL/dw_c = sum g xhat,   dL/db_c = sum g
#
# the sums over every axis but the channel.  rms_norm has no centring:
#
#     y = x r w,  r = 1 / sqrt(mean_R(x^2) + eps):  dL/dx = r h - x r^3 mean_R(h x),  dL/dw = sum g x r
#
# All statistics are centred two-pass (``_centred``), as for batch_norm and layer_norm.

def _rows_input_grad(h2: torch.Tensor, xc2: torch.Tensor, r: torch.Tensor, d: int) -> torch.Tensor:
    """dL/dx of xhat = (x - mu) r over the rows of ``(rows, d)`` matrices, given h = dL/dxhat."""
    return r * (h2 - h2.sum(1, keepdim=True) / d - xc2 * (r * r) * ((h2 * xc2).sum(1, keepdim=True) / d))


def _grouped_backward(grad_output, input, weight, bias, rows: int, eps: float, needs_x, needs_w, needs_b):
    """Normalisation over ``rows`` groups of the flattened input (group_norm; instance_norm, rows = N C),
    then a per-channel affine map: (dL/dx, dL/dweight, dL/dbias), each None where not needed."""
    d = input.numel() // max(rows, 1)
    xc2, r = _row_stats(input.reshape(rows, d), d, eps)
    gx = gw = gb = None
    if needs_x:
        h = grad_output if weight is None else grad_output * _channel_view(weight, input)
        gx = _rows_input_grad(h.reshape(rows, d), xc2, r, d).reshape(input.shape)
    if needs_w or needs_b:
        gw, gb = _affine_grads(grad_output, (xc2 * r).reshape(input.shape), weight, bias, needs_w, needs_b)
    return gx, gw, gb


def _affine_grads(grad_output, xhat, weight, bias, needs_w, needs_b):
    """dL/dw_c = sum g xhat, dL/db_c = sum g over every dim but 1."""
    dims = (0,) + tuple(range(2, grad_output.dim()))
    gw = (grad_output * xhat).sum(dims).reshape(weight.shape) if needs_w else None
    gb = grad_output.sum(dims).reshape(bias.shape) if needs_b else None
    return gw, gb


def _check_channel_vector(op, name, v, c):
    if v is not None and v.numel() != c:
        raise InvalidParameterError(f"{op}: {name} must have {c} entries (one per channel), got shape {tuple(v.shape)}")


def group_norm(input, weight=None, bias=None, *, num_groups, eps=1e-05):
    """``F.group_norm(input, num_groups, weight, bias, eps)`` with its tensors first (see ``layer_norm``)."""
    return F.group_norm(input, num_groups, weight, bias, eps)


group_norm.mirrors = F.group_norm


def _group_norm_samples(device, dtype):
    mk = Maker(device, dtype)
    rows = [((2, 6, 3), 3, "3d,G3"), ((2, 6, 3), 1, "3d,G1"), ((2, 4, 2, 2), 4, "4d,G=C"), ((3, 4), 2, "2d,G2")]
    for shape, g, name in rows:
        c = shape[1]
        yield Sample((mk.randn(*shape), mk.positive(c), mk.randn(c)), {"num_groups": g}, f"group_norm[{name}]")
    yield Sample((mk.randn(2, 4, 3), None, None), {"num_groups": 2}, "group_norm[no_affine]")
    yield Sample((mk.randn(2, 4, 3), mk.positive(4), None), {"num_groups": 2, "eps": 1e-3},
                 "group_norm[weight_only,eps1e-3]")
    yield Sample((mk.channels_last(mk.randn(2, 4, 2, 3)), mk.positive(4), mk.randn(4)), {"num_groups": 2},
                 "group_norm[channels_last]")
    yield Sample((mk.noncontiguous(mk.randn(2, 4, 3)), mk.positive(4), mk.randn(4)), {"num_groups": 4},
                 "group_norm[noncontig]")
    yield Sample((mk.randn(2, 4, 3, scale=0.1) + 7.5, mk.positive(4), mk.randn(4)), {"num_groups": 2},
                 "group_norm[offset]")


def group_norm_symbolic(input, weight=None, bias=None, *, num_groups, eps=1e-05):
    x = np.asarray(input, dtype=object)
    n, c = x.shape[:2]
    xg = x.reshape((n, num_groups, -1))
    y = _sym_normalize(xg, (2,), _symbolic.to_rational(eps)).reshape(x.shape)
    view = [1, -1] + [1] * (x.ndim - 2)
    if weight is not None:
        y = y * np.asarray(weight, dtype=object).reshape(view)
    if bias is not None:
        y = y + np.asarray(bias, dtype=object).reshape(view)
    return np.asarray(y, dtype=object)


@register("group_norm", torch_fn=group_norm, tensor_args=("input", "weight", "bias"), samples=_group_norm_samples,
          symbolic=group_norm_symbolic)
def group_norm_backward(grad_output, input, weight=None, bias=None, *, needs_input_grad, num_groups, eps=1e-05):
    """Rows = (sample, group) of C / G channels x spatial: dL/dx = r (h - mean(h) - xhat mean(h xhat)),
    h = g w_c; dL/dw_c = sum g xhat, dL/db_c = sum g over (N, *spatial)."""
    if input.dim() < 2:
        raise InvalidParameterError(f"group_norm: input must be (N, C, *), got shape {tuple(input.shape)}")
    n, c = input.shape[:2]
    if not isinstance(num_groups, int) or num_groups < 1 or c % num_groups:
        raise InvalidParameterError(f"group_norm: num_groups={num_groups!r} must be a positive divisor of the "
                                    f"{c} channels")
    for name, v in (("weight", weight), ("bias", bias)):
        _check_channel_vector("group_norm", name, v, c)
    if not any(needs_input_grad[:3]):
        return None, None, None
    return _grouped_backward(grad_output, input, weight, bias, n * num_groups, eps,
                             needs_input_grad[0], needs_input_grad[1], needs_input_grad[2])


def _instance_norm_samples(device, dtype):
    mk = Maker(device, dtype)
    c = 3
    yield Sample((mk.randn(2, c, 4), None, None, mk.positive(c), mk.randn(c)), {}, "instance_norm[3d]")
    yield Sample((mk.randn(2, c, 2, 3), None, None, None, None), {}, "instance_norm[4d,no_affine]")
    yield Sample((mk.randn(2, c, 4), mk.randn(c), mk.positive(c), mk.positive(c), mk.randn(c)), {"momentum": 0.5},
                 "instance_norm[running_stats,input_stats]")
    yield Sample((mk.randn(2, c, 4), mk.randn(c), mk.positive(c), mk.positive(c), mk.randn(c)),
                 {"use_input_stats": False}, "instance_norm[running_stats,use_running]")
    yield Sample((mk.randn(2, c, 2, 2), mk.randn(c), mk.positive(c), None, None),
                 {"use_input_stats": False, "eps": 1e-3}, "instance_norm[use_running,no_affine]")
    yield Sample((mk.channels_last(mk.randn(2, c, 2, 3)), None, None, mk.positive(c), None), {"eps": 1e-3},
                 "instance_norm[channels_last,weight_only]")
    yield Sample((mk.noncontiguous(mk.randn(2, c, 4)), None, None, mk.positive(c), mk.randn(c)), {},
                 "instance_norm[noncontig]")


def instance_norm_symbolic(input, running_mean=None, running_var=None, weight=None, bias=None,
                           use_input_stats=True, momentum=0.1, eps=1e-05):
    x = np.asarray(input, dtype=object)
    view = [1, -1] + [1] * (x.ndim - 2)
    e = _symbolic.to_rational(eps)
    if use_input_stats:
        y = _sym_normalize(x, tuple(range(2, x.ndim)), e)
    else:
        rm = np.asarray(running_mean, dtype=object).reshape(view)
        rv = np.asarray(running_var, dtype=object).reshape(view)
        y = (x - rm) / np.vectorize(lambda v: sympy.sqrt(v + e), otypes=[object])(rv)
    if weight is not None:
        y = y * np.asarray(weight, dtype=object).reshape(view)
    if bias is not None:
        y = y + np.asarray(bias, dtype=object).reshape(view)
    return np.asarray(y, dtype=object)


@register("instance_norm", torch_fn=F.instance_norm,
          tensor_args=("input", "running_mean", "running_var", "weight", "bias"),
          samples=_instance_norm_samples, symbolic=instance_norm_symbolic,
          nondifferentiable=("running_mean", "running_var"))
def instance_norm_backward(grad_output, input, running_mean=None, running_var=None, weight=None, bias=None, *,
                           needs_input_grad, use_input_stats=True, momentum=0.1, eps=1e-05):
    """use_input_stats: rows = (sample, channel) over the spatial dims, as group_norm with G = C;
    else the running statistics are constants: dL/dx = g w / sqrt(running_var + eps).
    The running statistics are read, never written (torch's forward updates its own)."""
    if input.dim() < 3:
        raise InvalidParameterError(f"instance_norm: input must be (N, C, *spatial) with at least one spatial "
                                    f"dim, got shape {tuple(input.shape)}")
    n, c = input.shape[:2]
    for name, v in (("running_mean", running_mean), ("running_var", running_var), ("weight", weight),
                    ("bias", bias)):
        _check_channel_vector("instance_norm", name, v, c)
    if not use_input_stats:
        if running_mean is None or running_var is None:
            raise InvalidParameterError("instance_norm: running_mean and running_var are required when "
                                        "use_input_stats=False")
        r = torch.rsqrt(_channel_view(running_var, input) + eps)
        gx = None
        if needs_input_grad[0]:
            gx = grad_output * (r if weight is None else r * _channel_view(weight, input))
        xhat = (input - _channel_view(running_mean, input)) * r
        gw, gb = _affine_grads(grad_output, xhat, weight, bias, needs_input_grad[3], needs_input_grad[4])
        return gx, None, None, gw, gb
    gx, gw, gb = _grouped_backward(grad_output, input, weight, bias, n * c, eps,
                                   needs_input_grad[0], needs_input_grad[3], needs_input_grad[4])
    return gx, None, None, gw, gb


def rms_norm(input, weight=None, *, normalized_shape, eps=None):
    """``F.rms_norm(input, normalized_shape, weight, eps)`` with its tensors first (see ``layer_norm``)."""
    return F.rms_norm(input, normalized_shape, weight, eps)


rms_norm.mirrors = F.rms_norm


def _rms_norm_samples(device, dtype):
    mk = Maker(device, dtype)
    rows = [((3, 4), (4,), "2d,last"), ((2, 3, 4), (3, 4), "3d,last2"), ((5,), (5,), "unbatched")]
    for shape, ns, name in rows:
        yield Sample((mk.randn(*shape), mk.positive(*ns)), {"normalized_shape": ns}, f"rms_norm[{name}]")
    yield Sample((mk.randn(3, 4), None), {"normalized_shape": [4]}, "rms_norm[list_shape,no_weight]")
    yield Sample((mk.randn(2, 4), mk.positive(4)), {"normalized_shape": (4,), "eps": 1e-3}, "rms_norm[eps1e-3]")
    yield Sample((mk.randn(2, 4),), {"normalized_shape": (4,), "eps": None}, "rms_norm[eps=None]")
    yield Sample((mk.noncontiguous(mk.randn(3, 4)), mk.randn(4)), {"normalized_shape": (4,)}, "rms_norm[noncontig]")
    yield Sample((mk.randn(2, 4, scale=0.01), mk.positive(4)), {"normalized_shape": (4,)}, "rms_norm[small]")


def _rms_eps(eps, dtype):
    """torch's default: the input dtype's machine epsilon."""
    return torch.finfo(dtype).eps if eps is None else eps


def rms_norm_symbolic(input, weight=None, *, normalized_shape, eps=None):
    x = np.asarray(input, dtype=object)
    k = len(_norm_shape(normalized_shape))
    axes = tuple(range(x.ndim - k, x.ndim))
    m = int(np.prod([x.shape[a] for a in axes]))
    # eps None: float64's machine epsilon (the symbolic forward is exact, as float64 is)
    e = _symbolic.to_rational(_rms_eps(eps, torch.float64))
    ms = (x * x).sum(axis=axes, keepdims=True) / m
    y = x / np.vectorize(lambda v: sympy.sqrt(v + e), otypes=[object])(ms)
    if weight is not None:
        y = y * np.asarray(weight, dtype=object)
    return np.asarray(y, dtype=object)


@register("rms_norm", torch_fn=rms_norm, tensor_args=("input", "weight"), samples=_rms_norm_samples,
          symbolic=rms_norm_symbolic)
def rms_norm_backward(grad_output, input, weight=None, *, needs_input_grad, normalized_shape, eps=None):
    """y = x r w over the trailing normalized_shape dims R, r = 1 / sqrt(mean_R(x^2) + eps)
    (eps None: the dtype's machine epsilon): dL/dx = r h - x r^3 mean_R(h x), h = g w;
    dL/dw = sum over the leading dims of g x r."""
    ns = _norm_shape(normalized_shape)
    k = len(ns)
    if k == 0 or input.dim() < k or tuple(input.shape[input.dim() - k:]) != ns:
        raise InvalidParameterError(f"rms_norm: normalized_shape {ns} must be non-empty and match the "
                                    f"trailing dims of input of shape {tuple(input.shape)}")
    if weight is not None and tuple(weight.shape) != ns:
        raise InvalidParameterError(f"rms_norm: weight must have shape normalized_shape={ns}, got {tuple(weight.shape)}")
    if not (needs_input_grad[0] or needs_input_grad[1]):
        return None, None
    d = 1
    for s in ns:
        d *= s
    x2 = input.reshape(-1, d)
    g2 = grad_output.reshape(-1, d)
    r = torch.rsqrt(x2.square().sum(1, keepdim=True) / d + _rms_eps(eps, input.dtype))
    gx = gw = None
    if needs_input_grad[0]:
        h2 = g2 if weight is None else g2 * weight.reshape(d)
        gx = (r * h2 - x2 * (r * r * r) * ((h2 * x2).sum(1, keepdim=True) / d)).reshape(input.shape)
    if needs_input_grad[1]:
        gw = (g2 * x2 * r).sum(0).reshape(weight.shape)
    return gx, gw
