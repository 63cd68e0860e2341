"""Losses, softmax and log_softmax: explicit backward formulas.

Every loss is ``reduce(loss_i)`` of a per-element (or per-sample) loss, so every
backward is ``dL/dloss_i`` (the reduction's adjoint, ``_reduction_scale``) times the
local derivative.  Writing ``d = x - t``:

* mse:       dL/dx =  gl * 2 d,                   dL/dt = -dL/dx
* l1:        dL/dx =  gl * sign(d)  (sign(0) = 0, torch's abs convention)
* smooth_l1: dL/dx =  gl * clip(d / beta, -1, 1)  (huber: gl * clip(d, -delta, delta))
* bce:       dL/dx =  gl w (x - t) / (x (1 - x)),  dL/dt = -gl w logit(x)
* bce_with_logits: dL/dx = gl w ((p t + 1 - t) sigmoid(x) - p t),
                   dL/dt = -gl w (p logsigmoid(x) - logsigmoid(-x))
* kl_div:    dL/dx = -gl t,  dL/dt = gl (log t + 1 - x)   (log_target: -gl e^t, gl e^t (t - x + 1))
* cross_entropy = nll_loss(log_softmax(x)), with the soft target
  ``q = (1 - eps) onehot(t) + eps / C`` (or the given probabilities) and class weight
  ``w_c``:  dL/dlogp = -gl w_c q  and  dL/dx = dL/dlogp - softmax(x) sum_c dL/dlogp.

Class-index targets are integer tensors and get no gradient.  Class weights and
``pos_weight`` of ``nll_loss``/``cross_entropy`` (class indices)/``binary_cross_entropy*``
are constants: torch 2.13 refuses ``requires_grad`` on them, so the rules list them as
non-differentiable.  The keyword ``weight=`` of ``mse_loss``, ``l1_loss`` and
``huber_loss`` is differentiable in torch and is a keyword tensor here
(``keyword_tensors=("weight",)``): with ``f`` the per-element loss,
``dL/dw = gl f(d)``, and for mse/l1's ``mean`` (which divides by ``W = sum(w)``)
``dL/dw_i = g (f_i - L) / W``.  ``smooth_l1_loss`` takes no weight in torch 2.13.
The one positional weight torch differentiates (``weight`` of ``cross_entropy`` with
probability targets) is still treated as a constant: the registry's
``nondifferentiable`` is per rule, not per call (see docs/rules.md).
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
from gradcheck_kit.manual.registry import Sample, register

_REDUCTIONS = ("none", "mean", "sum")


# ---------------------------------------------------------------------------
# shared pieces: argument checks, the reduction's adjoint, class targets
# ---------------------------------------------------------------------------

def _check_reduction(op: str, reduction: str, size_average=None, reduce=None) -> None:
    if size_average is not None or reduce is not None:
        raise UnsupportedError(f"{op}: the deprecated size_average/reduce arguments are not supported, "
                               f"pass reduction='none'|'mean'|'sum' instead")
    if reduction not in _REDUCTIONS:
        raise InvalidParameterError(f"{op}: reduction must be 'none', 'mean' or 'sum', got {reduction!r}")


def _reduction_scale(grad_output: torch.Tensor, reduction: str, denom) -> torch.Tensor:
    """dL/dloss_i of ``L = reduce(loss)``: g_i (none), g (sum), g / denom (mean)."""
    return grad_output / denom if reduction == "mean" else grad_output


def _class_dim(input: torch.Tensor) -> int:
    """Classes sit on dim 1, or dim 0 for an unbatched ``(C,)`` input."""
    return 0 if input.dim() == 1 else 1


def _along_classes(v: torch.Tensor, input: torch.Tensor) -> torch.Tensor:
    """A ``(C,)`` vector viewed so that it broadcasts along the class dim of ``input``."""
    shape = [1] * input.dim()
    shape[_class_dim(input)] = -1
    return v.reshape(shape)


def _check_class_weight(op: str, weight, input: torch.Tensor) -> None:
    c = input.shape[_class_dim(input)]
    if weight is not None and tuple(weight.shape) != (c,):
        raise InvalidParameterError(f"{op}: weight must have shape ({c},), one entry per class, "
                                    f"got {tuple(weight.shape)}")


def _valid_targets(op: str, input: torch.Tensor, target: torch.Tensor, ignore_index: int) -> torch.Tensor:
    """Mask of the class-index targets that count (``t != ignore_index``); rejects out-of-range classes."""
    cd = _class_dim(input)
    expected = tuple(input.shape[:cd] + input.shape[cd + 1:])
    if input.dim() == 0:
        raise InvalidParameterError(f"{op}: input must have a class dimension, got a 0-d tensor")
    if target.is_floating_point() or target.is_complex():
        raise InvalidParameterError(f"{op}: target must hold integer class indices of shape {expected}, "
                                    f"or class probabilities of the input's shape {tuple(input.shape)}")
    if tuple(target.shape) != expected:
        raise InvalidParameterError(f"{op}: target must have shape {expected} for input of shape "
                                    f"{tuple(input.shape)}, got {tuple(target.shape)}")
    valid = target != ignore_index
    c = input.shape[cd]
    if bool((valid & ((target < 0) | (target >= c))).any()):
        raise InvalidParameterError(f"{op}: target holds class indices outside [0, {c}) "
                                    f"that are not ignore_index={ignore_index}")
    return valid


def _target_index(target: torch.Tensor, valid: torch.Tensor, input: torch.Tensor) -> torch.Tensor:
    """t_n as a scatter/gather index along the class dim (ignored targets point at class 0)."""
    return torch.where(valid, target, 0).unsqueeze(_class_dim(input))


def _target_weight(weight, target: torch.Tensor, valid: torch.Tensor, dtype) -> torch.Tensor:
    """w_{t_n} per target (1 without weights), 0 where t_n is ignored."""
    if weight is None:
        return valid.to(dtype)
    return torch.where(valid, weight[torch.where(valid, target, 0)], 0).to(dtype)


def _class_target_dlogp(grad_output, input, target, weight, ignore_index, reduction, label_smoothing, op: str):
    """dL/dlogp of ``loss_n = -sum_c w_c q_nc logp_nc`` over non-ignored n, ``q = (1-eps) onehot + eps/C``:

        dL/dlogp_nc = on_target_n onehot(t_n)_c + spread_nc
        on_target_n = -(1 - eps) coef_n w_{t_n},   spread_nc = -coef_n eps/C w_c,   coef_n = dL/dloss_n

    returned as ``(index, on_target, spread or None, row_sum)`` with ``row_sum_n = sum_c dL/dlogp_nc``,
    so that no dense one-hot is built.  This is nll_loss (eps = 0) and cross_entropy's
    class-index loss; ``mean`` divides by the total target weight ``sum_n w_{t_n}`` as torch
    does (also for the smoothing term).  When every target is ignored that total is 0:
    the loss is nan and, as in torch, the gradient is 0 (the mask is a ``where``, so 0/0
    never reaches it).
    """
    valid = _valid_targets(op, input, target, ignore_index)
    _check_class_weight(op, weight, input)
    cd = _class_dim(input)
    w_t = _target_weight(weight, target, valid, input.dtype)
    total = w_t.sum() if reduction == "mean" else 1
    coef = torch.where(valid, _reduction_scale(grad_output, reduction, total), 0)
    on_target = -(1.0 - label_smoothing) * coef * w_t
    spread, row_sum = None, on_target
    if label_smoothing:
        c = input.shape[cd]
        spread = coef.unsqueeze(cd) * (-label_smoothing / c)
        w_sum = c if weight is None else weight.sum()
        row_sum = on_target + coef * (-label_smoothing / c * w_sum)
        if weight is not None:
            spread = spread * _along_classes(weight, input)
    return _target_index(target, valid, input), on_target, spread, row_sum


def _scatter_dlogp(base: torch.Tensor, index, on_target, spread, cd) -> torch.Tensor:
    """base + dL/dlogp, from the pieces of ``_class_target_dlogp`` (``base`` is a fresh tensor)."""
    out = base.scatter_add_(cd, index, on_target.unsqueeze(cd))
    # scatter_add_'s backward keeps only the index and add_'s nothing: in place stays differentiable
    return out if spread is None else out.add_(spread)


def _mul_fresh(t: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """``t * s`` for a tensor ``t`` the caller just created: in place when autograd records no
    graph through it; out of place otherwise, since ops such as softmax save their output
    (writing it in place would break the double backward)."""
    if (torch.is_grad_enabled() and (t.requires_grad or s.requires_grad)) or s.dtype != t.dtype \
            or torch.broadcast_shapes(t.shape, s.shape) != t.shape:
        return t * s
    return t.mul_(s)


def _softmax_dim(input: torch.Tensor, dim) -> int:
    """torch's legacy implicit dim (``dim=None``): 0 for 0-, 1- and 3-d inputs, else 1."""
    if dim is None:
        return 0 if input.dim() in (0, 1, 3) else 1
    return dim


def _softmax_backward(grad_output, y, dim) -> torch.Tensor:
    """y = softmax(x): dL/dx = y * (g - sum_dim(g * y))."""
    return y * (grad_output - (grad_output * y).sum(dim, keepdim=True))


def _log_softmax_backward(grad_output, logp, dim) -> torch.Tensor:
    """logp = log_softmax(x): dL/dx = g - softmax(x) * sum_dim(g)."""
    return grad_output - _mul_fresh(logp.exp(), grad_output.sum(dim, keepdim=True))


# ---------------------------------------------------------------------------
# symbolic helpers: numpy object arrays of sympy expressions
# ---------------------------------------------------------------------------

def _map(fn, *arrays) -> np.ndarray:
    return np.asarray(np.vectorize(fn, otypes=[object])(*arrays), dtype=object)


def _scalar(expr) -> np.ndarray:
    out = np.empty((), dtype=object)
    out[()] = expr
    return out


def _sym_reduce(loss, reduction: str, denom=None) -> np.ndarray:
    loss = np.asarray(loss, dtype=object)  # 0-d arithmetic gives bare expressions
    if reduction == "none":
        return loss
    total = sympy.Add(*loss.reshape(-1).tolist())
    if reduction == "sum":
        return _scalar(total)
    return _scalar(total / (denom if denom is not None else loss.size))


def _sym_abs(d):
    # |d| with d|d|/dd = sign(d), sign(0) = 0 as torch's abs
    return sympy.Piecewise((d, d > 0), (-d, d < 0), (0, True))


def _sym_log_softmax(x: np.ndarray, dim: int) -> np.ndarray:
    lse = _map(sympy.log, _map(sympy.exp, x).sum(axis=dim, keepdims=True))
    return x - lse


# ---------------------------------------------------------------------------
# elementwise regression losses: mse, l1, smooth_l1, huber
# ---------------------------------------------------------------------------

def _elementwise_loss_backward(grad_output, input, target, needs, dloss_dd, reduction, weight=None,
                               mean_denom=None, needs_weight=False, loss_fn=None, slope_scale=1.0):
    """loss_i = w_i f(d_i), d = x - t (broadcast): dL/dx = unbroadcast(gl w f'(d)), dL/dt = -that.

    With ``needs_weight`` also returns dL/dw (``loss_fn(d) = f(d)``):
    ``sum``/``none``: gl f(d);  ``mean`` over numel: gl f(d) / numel;  ``mean`` over
    ``W = sum(w)`` (``mean_denom``, mse/l1): L = sum(w f) / W so dL/dw_i = g (f_i - L) / W.
    """
    denom = mean_denom if mean_denom is not None else dloss_dd.numel()
    gl = _reduction_scale(grad_output, reduction, denom)
    gd = (gl * slope_scale) * dloss_dd  # the scale on gl first: 2 d would overflow at |d| > max / 2
    if weight is not None:
        gd = gd * weight
    gx = unbroadcast(gd, input.shape) if needs[0] else None
    gt = unbroadcast(-gd, target.shape) if needs[1] else None
    if not needs_weight:
        return gx, gt
    f = loss_fn(input - target)
    if reduction == "mean" and mean_denom is not None:
        f = f - (f * weight).sum() / mean_denom
    return gx, gt, {"weight": gl * f}


def _check_loss_weight(op: str, weight, input) -> None:
    if weight is not None and weight.size() != input.size():
        raise InvalidParameterError(f"{op}: weight must have the input's shape {tuple(input.shape)}, "
                                    f"got {tuple(weight.shape)}")


def _scalar_t(t: torch.Tensor) -> torch.Tensor:
    """A one-element sample tensor as a 0-d tensor."""
    return t.reshape(())


def _regression_samples(op: str, extra):
    def samples(device, dtype):
        mk = Maker(device, dtype)
        for red in _REDUCTIONS:
            yield Sample((mk.randn(3, 4), mk.randn(3, 4)), {"reduction": red}, f"{op}[{red}]")
        yield Sample((mk.randn(2, 3, 2), mk.randn(2, 3, 2)), {}, f"{op}[3d]")
        yield Sample((_scalar_t(mk.randn(1)), _scalar_t(mk.randn(1))), {"reduction": "sum"}, f"{op}[scalar]")
        yield Sample((mk.noncontiguous(mk.randn(3, 4)), mk.randn(3, 4)), {"reduction": "sum"},
                     f"{op}[noncontig]")
        yield from extra(mk)
    return samples


def _mse_extra(mk):
    for red in _REDUCTIONS:
        yield Sample((mk.randn(3, 4), mk.randn(3, 4)), {"reduction": red, "weight": mk.positive(3, 4)},
                     f"mse_loss[weight,{red}]")


def mse_loss_symbolic(input, target, size_average=None, reduce=None, reduction="mean", weight=None):
    weight = _symbolic.asarray(weight)
    d = np.asarray(input, dtype=object) - np.asarray(target, dtype=object)
    loss = d * d if weight is None else d * d * weight
    return _sym_reduce(loss, reduction, None if weight is None else sympy.Add(*weight.reshape(-1).tolist()))


@register("mse_loss", torch_fn=F.mse_loss, tensor_args=("input", "target"),
          samples=_regression_samples("mse_loss", _mse_extra), symbolic=mse_loss_symbolic,
          keyword_tensors=("weight",))
def mse_loss_backward(grad_output, input, target, *, needs_input_grad, needs_keyword_grad, size_average=None,
                      reduce=None, reduction="mean", weight=None):
    """loss_i = w_i (x_i - t_i)^2; mean divides by sum(w) (numel without weight): dL/dx = 2 gl w d,
    dL/dw = gl d^2 (mean: g (d^2 - L) / sum(w))."""
    _check_reduction("mse_loss", reduction, size_average, reduce)
    _check_loss_weight("mse_loss", weight, input)
    d = input - target
    denom = weight.sum() if weight is not None else None
    return _elementwise_loss_backward(grad_output, input, target, needs_input_grad, d, reduction,
                                      weight, denom, needs_keyword_grad["weight"], torch.square, slope_scale=2.0)


def _l1_extra(mk):
    # exact ties x == t: torch's abs convention sign(0) = 0 gives a zero gradient there
    t = mk.integers(3, 4)
    yield Sample((mk.integers(3, 4), t), {"reduction": "none"}, "l1_loss[ties,none]")
    yield Sample((t.clone(), mk.integers(3, 4)), {"reduction": "mean"}, "l1_loss[ties,mean]")
    for red in _REDUCTIONS:
        yield Sample((mk.randn(3, 4), mk.randn(3, 4)), {"reduction": red, "weight": mk.positive(3, 4)},
                     f"l1_loss[weight,{red}]")
    yield Sample((mk.integers(2, 3), mk.integers(2, 3)), {"reduction": "mean", "weight": mk.positive(2, 3)},
                 "l1_loss[weight,ties]")


def l1_loss_symbolic(input, target, size_average=None, reduce=None, reduction="mean", weight=None):
    weight = _symbolic.asarray(weight)
    loss = _map(_sym_abs, np.asarray(input, dtype=object) - np.asarray(target, dtype=object))
    if weight is None:
        return _sym_reduce(loss, reduction)
    return _sym_reduce(loss * weight, reduction, sympy.Add(*weight.reshape(-1).tolist()))


@register("l1_loss", torch_fn=F.l1_loss, tensor_args=("input", "target"),
          samples=_regression_samples("l1_loss", _l1_extra), symbolic=l1_loss_symbolic,
          keyword_tensors=("weight",))
def l1_loss_backward(grad_output, input, target, *, needs_input_grad, needs_keyword_grad, size_average=None,
                     reduce=None, reduction="mean", weight=None):
    """loss_i = w_i |x_i - t_i|: dL/dx = gl w sign(d), sign(0) = 0 (torch's abs convention);
    dL/dw = gl |d| (mean: g (|d| - L) / sum(w))."""
    _check_reduction("l1_loss", reduction, size_average, reduce)
    _check_loss_weight("l1_loss", weight, input)
    d = input - target
    denom = weight.sum() if weight is not None else None
    return _elementwise_loss_backward(grad_output, input, target, needs_input_grad, torch.sign(d),
                                      reduction, weight, denom, needs_keyword_grad["weight"], torch.abs)


def _clipped_slope(d: torch.Tensor, beta: float, scale: float) -> torch.Tensor:
    """Slope of the Huber-type loss: scale * d / beta inside |d| < beta, scale * sign(d) outside.

    At |d| == beta torch takes the outer branch (slope +-scale, curvature 0): the
    double-backward mask is ``|d| < beta``.  beta == 0 is exactly l1 (sign(0) = 0, and
    sign(NaN) = 0 as torch's).  d = NaN gives a NaN slope for beta > 0, as torch.
    """
    if beta == 0:
        return torch.sign(d) * scale
    # d = NaN takes the inner branch (NaN), as torch: its test is |d| < beta
    return torch.where(d.abs() >= beta, torch.sign(d) * scale, d * (scale / beta))


def _kink_extra(op: str, param: str):
    def extra(mk):
        for b in (0.5, 2.0):
            # d = x - t in {0, +-b, +-2b, +-3b} exactly: inside, on the kink |d| == b, outside
            t = mk.integers(3, 4)
            yield Sample((t + b * mk.integers(3, 4), t), {param: b, "reduction": "none"},
                         f"{op}[{param}{b},kink]")
        yield Sample((mk.randn(3, 4), mk.randn(3, 4)), {param: 0.3, "reduction": "sum"},
                     f"{op}[{param}0.3]")
        if op == "smooth_l1_loss":
            t = mk.integers(3, 4)
            yield Sample((mk.integers(3, 4), t), {"beta": 0.0, "reduction": "mean"}, "smooth_l1_loss[beta0,ties]")
        else:
            for red in _REDUCTIONS:
                yield Sample((mk.randn(3, 4), mk.randn(3, 4)), {"reduction": red, "weight": mk.positive(3, 4)},
                             f"huber_loss[weight,{red}]")
    return extra


def _sym_huber(d, beta, scale):
    # scale * (d^2 / (2 beta)) inside |d| < beta, scale * (|d| - beta / 2) outside (|d| == beta outside)
    if beta == 0:
        return scale * _sym_abs(d)
    return sympy.Piecewise((scale * d ** 2 / (2 * beta), (d < beta) & (d > -beta)),
                           (scale * (d - beta / 2), d >= beta),
                           (scale * (-d - beta / 2), True))


def smooth_l1_loss_symbolic(input, target, size_average=None, reduce=None, reduction="mean", beta=1.0):
    b = _symbolic.to_rational(beta)
    d = np.asarray(input, dtype=object) - np.asarray(target, dtype=object)
    return _sym_reduce(_map(lambda e: _sym_huber(e, b, 1), d), reduction)


@register("smooth_l1_loss", torch_fn=F.smooth_l1_loss, tensor_args=("input", "target"),
          samples=_regression_samples("smooth_l1_loss", _kink_extra("smooth_l1_loss", "beta")),
          symbolic=smooth_l1_loss_symbolic)
def smooth_l1_loss_backward(grad_output, input, target, *, needs_input_grad, size_average=None, reduce=None,
                            reduction="mean", beta=1.0):
    """loss_i = d^2 / (2 beta) if |d| < beta else |d| - beta/2: dL/dx = gl clip(d / beta, -1, 1)."""
    _check_reduction("smooth_l1_loss", reduction, size_average, reduce)
    if beta < 0:
        raise InvalidParameterError(f"smooth_l1_loss: beta must be >= 0, got {beta!r}")
    slope = _clipped_slope(input - target, beta, 1.0)
    return _elementwise_loss_backward(grad_output, input, target, needs_input_grad, slope, reduction)


def huber_loss_symbolic(input, target, reduction="mean", delta=1.0, weight=None):
    weight = _symbolic.asarray(weight)
    dl = _symbolic.to_rational(delta)
    d = np.asarray(input, dtype=object) - np.asarray(target, dtype=object)
    loss = _map(lambda e: _sym_huber(e, dl, dl), d)
    return _sym_reduce(loss if weight is None else loss * weight, reduction)


@register("huber_loss", torch_fn=F.huber_loss, tensor_args=("input", "target"),
          samples=_regression_samples("huber_loss", _kink_extra("huber_loss", "delta")),
          symbolic=huber_loss_symbolic, keyword_tensors=("weight",))
def huber_loss_backward(grad_output, input, target, *, needs_input_grad, needs_keyword_grad, reduction="mean",
                        delta=1.0, weight=None):
    """loss_i = w_i (d^2/2 if |d| < delta else delta (|d| - delta/2)): dL/dx = gl w clip(d, -delta, delta).

    With a weight torch's mean is ``(w * loss).mean()``: it divides by numel, not by sum(w).
    """
    _check_reduction("huber_loss", reduction)
    if not delta > 0:
        raise InvalidParameterError(f"huber_loss: delta must be > 0, got {delta!r}")
    _check_loss_weight("huber_loss", weight, input)
    # delta * clip(d / delta, -1, 1) == clip(d, -delta, delta)
    slope = _clipped_slope(input - target, delta, delta)

    def huber(d):  # d^2 / 2 inside |d| < delta, delta (|d| - delta / 2) outside (|d| == delta: outside)
        return torch.where(d.abs() < delta, 0.5 * d * d, delta * (d.abs() - 0.5 * delta))

    return _elementwise_loss_backward(grad_output, input, target, needs_input_grad, slope, reduction, weight,
                                      None, needs_keyword_grad["weight"], huber)


# ---------------------------------------------------------------------------
# binary cross entropy
# ---------------------------------------------------------------------------

_BCE_EPS = 1e-12  # torch's guard in binary_cross_entropy_backward: x (1 - x) >= 1e-12


def _bce_samples(device, dtype):
    mk = Maker(device, dtype)
    for red in _REDUCTIONS:
        yield Sample((mk.uniform(3, 4, low=0.05, high=0.95), mk.uniform(3, 4)), {"reduction": red},
                     f"binary_cross_entropy[{red}]")
    for red in ("mean", "none"):
        yield Sample((mk.uniform(3, 4, low=0.05, high=0.95), mk.uniform(3, 4), mk.positive(4)),
                     {"reduction": red}, f"binary_cross_entropy[weight_bcast,{red}]")
    yield Sample((mk.uniform(2, 3, low=0.05, high=0.95), mk.randint(2, 2, 3).to(dtype), mk.positive(2, 3)),
                 {"reduction": "sum"}, "binary_cross_entropy[hard_targets,weight]")
    yield Sample((mk.uniform(2, 2, 3, low=0.05, high=0.95), mk.uniform(2, 2, 3)), {}, "binary_cross_entropy[3d]")
    yield Sample((_scalar_t(mk.uniform(1, low=0.05, high=0.95)), _scalar_t(mk.uniform(1))), {},
                 "binary_cross_entropy[scalar]")


def binary_cross_entropy_symbolic(input, target, weight=None, size_average=None, reduce=None, reduction="mean"):
    # torch clamps each log at -100
    x, t = np.asarray(input, dtype=object), np.asarray(target, dtype=object)
    log = lambda e: sympy.Max(sympy.log(e), -100)  # noqa: E731
    loss = -(t * _map(log, x) + (1 - t) * _map(log, 1 - x))
    if weight is not None:
        loss = loss * weight
    return _sym_reduce(loss, reduction)


@register("binary_cross_entropy", torch_fn=F.binary_cross_entropy, tensor_args=("input", "target", "weight"),
          samples=_bce_samples, symbolic=binary_cross_entropy_symbolic, nondifferentiable=("weight",))
def binary_cross_entropy_backward(grad_output, input, target, weight=None, *, needs_input_grad,
                                  size_average=None, reduce=None, reduction="mean"):
    """loss_i = -w (t log x + (1 - t) log(1 - x)):
    dL/dx = gl w (x - t) / max(x (1 - x), 1e-12),  dL/dt = -gl w logit(x)."""
    _check_reduction("binary_cross_entropy", reduction, size_average, reduce)
    if target.shape != input.shape:
        raise InvalidParameterError(f"binary_cross_entropy: target must have the input's shape "
                                    f"{tuple(input.shape)}, got {tuple(target.shape)}")
    gl = _reduction_scale(grad_output, reduction, input.numel())
    if weight is not None:
        gl = gl * weight
    gx = gt = None
    if needs_input_grad[0]:
        gx = gl * (input - target) / (input * (1 - input)).clamp_min(_BCE_EPS)
    if needs_input_grad[1]:
        gt = -gl * torch.logit(input)
    return gx, gt, None


def _bce_logits_samples(device, dtype):
    mk = Maker(device, dtype)
    for red in _REDUCTIONS:
        yield Sample((mk.randn(3, 4), mk.uniform(3, 4)), {"reduction": red},
                     f"binary_cross_entropy_with_logits[{red}]")
    yield Sample((mk.randn(3, 4), mk.uniform(3, 4), mk.positive(3, 4)), {"reduction": "sum"},
                 "binary_cross_entropy_with_logits[weight]")
    for red in ("mean", "none"):
        yield Sample((mk.randn(3, 4), mk.uniform(3, 4)), {"reduction": red, "pos_weight": mk.positive(4)},
                     f"binary_cross_entropy_with_logits[pos_weight,{red}]")
    yield Sample((mk.randn(2, 3, 2), mk.randint(2, 2, 3, 2).to(dtype), mk.positive(3, 1)),
                 {"pos_weight": mk.positive(3, 1)}, "binary_cross_entropy_with_logits[3d,hard,weight,pos_weight]")
    yield Sample((_scalar_t(mk.randn(1)), _scalar_t(mk.uniform(1))), {}, "binary_cross_entropy_with_logits[scalar]")


def binary_cross_entropy_with_logits_symbolic(input, target, weight=None, size_average=None, reduce=None,
                                              reduction="mean", pos_weight=None):
    # -log sigmoid(x) = log(1 + e^-x), -log(1 - sigmoid(x)) = log(1 + e^x)
    x, t = np.asarray(input, dtype=object), np.asarray(target, dtype=object)
    pw = _symbolic.asarray(pos_weight)
    pos = t if pw is None else pw * t
    loss = pos * _map(lambda e: sympy.log(1 + sympy.exp(-e)), x) + (1 - t) * _map(
        lambda e: sympy.log(1 + sympy.exp(e)), x)
    if weight is not None:
        loss = loss * weight
    return _sym_reduce(np.asarray(loss, dtype=object), reduction)


@register("binary_cross_entropy_with_logits", torch_fn=F.binary_cross_entropy_with_logits,
          tensor_args=("input", "target", "weight"), samples=_bce_logits_samples,
          symbolic=binary_cross_entropy_with_logits_symbolic, nondifferentiable=("weight",))
def binary_cross_entropy_with_logits_backward(grad_output, input, target, weight=None, *, needs_input_grad,
                                              size_average=None, reduce=None, reduction="mean",
                                              pos_weight=None):
    """loss_i = -w (p t log s(x) + (1 - t) log(1 - s(x))), s = sigmoid, p = pos_weight:
    dL/dx = gl w ((p t + 1 - t) s(x) - p t),  dL/dt = -gl w (p logsigmoid(x) - logsigmoid(-x))."""
    op = "binary_cross_entropy_with_logits"
    _check_reduction(op, reduction, size_average, reduce)
    if target.shape != input.shape:
        raise InvalidParameterError(f"{op}: target must have the input's shape {tuple(input.shape)}, "
                                    f"got {tuple(target.shape)}")
    gl = _reduction_scale(grad_output, reduction, input.numel())
    if weight is not None:
        gl = gl * weight
    gx = gt = None
    if needs_input_grad[0]:
        if pos_weight is None:
            gx = gl * (torch.sigmoid(input) - target)
        else:
            pt = pos_weight * target
            gx = gl * ((pt + 1 - target) * torch.sigmoid(input) - pt)
    if needs_input_grad[1]:
        if pos_weight is None:
            gt = -gl * input  # logsigmoid(x) - logsigmoid(-x) = x
        else:
            gt = -gl * (pos_weight * F.logsigmoid(input) - F.logsigmoid(-input))
    if gx is not None and gx.shape != input.shape:  # a pos_weight/weight that broadcast further
        gx = unbroadcast(gx, input.shape)
    if gt is not None and gt.shape != target.shape:
        gt = unbroadcast(gt, target.shape)
    return gx, gt, None


# ---------------------------------------------------------------------------
# softmax, log_softmax
# ---------------------------------------------------------------------------

def _softmax_samples(op: str):
    def samples(device, dtype):
        mk = Maker(device, dtype)
        rows = [((3, 4), 1, "2d,dim1"), ((3, 4), 0, "2d,dim0"), ((2, 3, 4), -1, "3d,dim-1"),
                ((2, 3, 2, 2), 1, "4d,dim1"), ((5,), 0, "unbatched")]
        for shape, dim, name in rows:
            yield Sample((mk.randn(*shape),), {"dim": dim}, f"{op}[{name}]")
        yield Sample((mk.noncontiguous(mk.randn(3, 4)),), {"dim": 1}, f"{op}[noncontig]")
        yield Sample((mk.integers(2, 4),), {"dim": 1}, f"{op}[ties]")
        # dtype= casts the input first; the gradient is cast back (an upcast keeps float32 exact enough)
        yield Sample((mk.randn(3, 4),), {"dim": 1, "dtype": torch.float64}, f"{op}[dtype=float64]")
    return samples


def softmax_symbolic(input, dim=None, _stacklevel=3, dtype=None):
    x = np.asarray(input, dtype=object)
    e = _map(sympy.exp, x)
    return e / e.sum(axis=_softmax_dim(x, dim), keepdims=True)


def _softmax_save(input, dim=None, _stacklevel=3, dtype=None):
    out = F.softmax(input, dim, _stacklevel, dtype)
    return out, {"output": out}


@register("softmax", torch_fn=F.softmax, tensor_args=("input",), samples=_softmax_samples("softmax"),
          symbolic=softmax_symbolic, aliases=(torch.softmax, torch.Tensor.softmax, torch.special.softmax),
          save=_softmax_save)
def softmax_backward(grad_output, input, *, needs_input_grad, dim=None, _stacklevel=3, dtype=None, saved=None):
    """y = softmax(x): dL/dx = y (g - sum_dim(g y))."""
    dim = _softmax_dim(input, dim)
    x = input if dtype is None else input.to(dtype)
    y = saved["output"] if saved else torch.softmax(x, dim)  # the forward's y, when saved
    return (_softmax_backward(grad_output, y, dim).to(input.dtype),)


def log_softmax_symbolic(input, dim=None, _stacklevel=3, dtype=None):
    x = np.asarray(input, dtype=object)
    return _sym_log_softmax(x, _softmax_dim(x, dim))


def _log_softmax_save(input, dim=None, _stacklevel=3, dtype=None):
    out = F.log_softmax(input, dim, _stacklevel, dtype)
    return out, {"output": out}


@register("log_softmax", torch_fn=F.log_softmax, tensor_args=("input",), samples=_softmax_samples("log_softmax"),
          symbolic=log_softmax_symbolic,
          aliases=(torch.log_softmax, torch.Tensor.log_softmax, torch.special.log_softmax), save=_log_softmax_save)
def log_softmax_backward(grad_output, input, *, needs_input_grad, dim=None, _stacklevel=3, dtype=None,
                         saved=None):
    """y = log_softmax(x): dL/dx = g - softmax(x) sum_dim(g)."""
    dim = _softmax_dim(input, dim)
    x = input if dtype is None else input.to(dtype)
    y = saved["output"] if saved else torch.log_softmax(x, dim)  # the forward's y, when saved
    return (_log_softmax_backward(grad_output, y, dim).to(input.dtype),)


# ---------------------------------------------------------------------------
# nll_loss, cross_entropy
# ---------------------------------------------------------------------------

def _with_ignored(mk: Maker, c: int, *shape, ignore_index: int = -100, every: int = 3) -> torch.Tensor:
    """Class indices in [0, c) with every ``every``-th entry set to ``ignore_index``."""
    t = mk.randint(c, *shape).reshape(-1)
    t[::every] = ignore_index
    return t.reshape(shape)


def _nll_samples(device, dtype):
    mk = Maker(device, dtype)
    for red in _REDUCTIONS:
        yield Sample((mk.randn(4, 3), mk.randint(3, 4)), {"reduction": red}, f"nll_loss[{red}]")
    for red in _REDUCTIONS:
        yield Sample((mk.randn(4, 3), _with_ignored(mk, 3, 4), mk.positive(3)), {"reduction": red},
                     f"nll_loss[weight,ignore_hit,{red}]")
    # ignore_index a real class: hit (targets equal it) and not hit
    yield Sample((mk.randn(4, 3), torch.tensor([0, 2, 0, 1], device=device)), {"ignore_index": 0},
                 "nll_loss[ignore0_hit]")
    yield Sample((mk.randn(4, 3), torch.tensor([1, 2, 2, 1], device=device), mk.positive(3)),
                 {"ignore_index": 0}, "nll_loss[weight,ignore0_miss]")
    yield Sample((mk.randn(2, 3, 2, 2), _with_ignored(mk, 3, 2, 2, 2), mk.positive(3)), {},
                 "nll_loss[4d,weight,ignore_hit]")
    yield Sample((mk.randn(2, 3, 4), mk.randint(3, 2, 4)), {"reduction": "none"}, "nll_loss[3d,none]")
    yield Sample((mk.randn(3), torch.tensor(1, device=device)), {}, "nll_loss[unbatched]")
    yield Sample((mk.randn(3), torch.tensor(2, device=device), mk.positive(3)), {"reduction": "none"},
                 "nll_loss[unbatched,weight,none]")
    yield Sample((mk.randn(3, 3), torch.full((3,), -100, device=device)), {"reduction": "sum"},
                 "nll_loss[all_ignored,sum]")


def _sym_class_loss(logp, target, weight, ignore_index, reduction, label_smoothing):
    """sum over non-ignored n of -sum_c w_c q_nc logp_nc; mean divides by sum_n w_{t_n}."""
    target = np.asarray(_symbolic.asarray(target))
    weight = _symbolic.asarray(weight)
    cd = 0 if logp.ndim == 1 else 1
    c = logp.shape[cd]
    lp = np.moveaxis(logp, cd, -1)  # (..., C)
    eps = _symbolic.to_rational(label_smoothing)
    w = [sympy.Integer(1)] * c if weight is None else list(weight.reshape(-1))
    loss = np.empty(target.shape, dtype=object)
    total = sympy.Integer(0)
    for idx in np.ndindex(*target.shape):
        t = int(target[idx])
        if t == ignore_index:
            loss[idx] = sympy.Integer(0)
            continue
        row = lp[idx]
        term = -(1 - eps) * w[t] * row[t]
        if label_smoothing:
            term = term - eps / c * sympy.Add(*[w[k] * row[k] for k in range(c)])
        loss[idx] = term
        total += w[t]
    if reduction == "mean":
        return _scalar(sympy.Add(*loss.reshape(-1).tolist()) / total)
    return _sym_reduce(loss, reduction)


def nll_loss_symbolic(input, target, weight=None, size_average=None, ignore_index=-100, reduce=None,
                      reduction="mean"):
    return _sym_class_loss(np.asarray(input, dtype=object), target, weight, ignore_index, reduction, 0.0)


@register("nll_loss", torch_fn=F.nll_loss, tensor_args=("input", "target", "weight"), samples=_nll_samples,
          symbolic=nll_loss_symbolic, nondifferentiable=("weight",))
def nll_loss_backward(grad_output, input, target, weight=None, *, needs_input_grad, size_average=None,
                      ignore_index=-100, reduce=None, reduction="mean"):
    """loss_n = -w_{t_n} x[n, t_n] (0 if t_n == ignore_index): dL/dx = -gl w_t onehot(t);
    mean divides by sum_n w_{t_n} over non-ignored n."""
    _check_reduction("nll_loss", reduction, size_average, reduce)
    gx = None
    if needs_input_grad[0]:
        index, on_target, spread, _ = _class_target_dlogp(grad_output, input, target, weight, ignore_index,
                                                           reduction, 0.0, "nll_loss")
        gx = _scatter_dlogp(torch.zeros_like(input), index, on_target, spread, _class_dim(input))
    return gx, None, None


def _ce_samples(device, dtype):
    mk = Maker(device, dtype)
    # class-index targets: (input shape, target, weight?, params, name)
    for red in _REDUCTIONS:
        yield Sample((mk.randn(4, 3), mk.randint(3, 4)), {"reduction": red}, f"cross_entropy[idx,{red}]")
        yield Sample((mk.randn(4, 3), _with_ignored(mk, 3, 4), mk.positive(3)),
                     {"reduction": red, "label_smoothing": 0.2}, f"cross_entropy[idx,weight,ignore_hit,ls,{red}]")
    yield Sample((mk.randn(4, 3), mk.randint(3, 4), mk.positive(3)), {}, "cross_entropy[idx,weight]")
    yield Sample((mk.randn(4, 3), _with_ignored(mk, 3, 4)), {}, "cross_entropy[idx,ignore_hit]")
    yield Sample((mk.randn(4, 3), torch.tensor([2, 1, 2, 0], device=device), mk.positive(3)),
                 {"ignore_index": 2, "label_smoothing": 0.1}, "cross_entropy[idx,weight,ignore2_hit,ls]")
    yield Sample((mk.randn(4, 3), torch.tensor([0, 1, 0, 0], device=device)),
                 {"ignore_index": 2, "reduction": "sum"}, "cross_entropy[idx,ignore2_miss]")
    yield Sample((mk.randn(4, 3), mk.randint(3, 4)), {"label_smoothing": 0.1}, "cross_entropy[idx,ls]")
    yield Sample((mk.randn(2, 3, 4), mk.randint(3, 2, 4)), {"reduction": "none"}, "cross_entropy[idx,3d,none]")
    yield Sample((mk.randn(2, 3, 2, 2), _with_ignored(mk, 3, 2, 2, 2), mk.positive(3)),
                 {"label_smoothing": 0.3}, "cross_entropy[idx,4d,weight,ignore_hit,ls]")
    yield Sample((mk.randn(2, 3, 2, 2), mk.randint(3, 2, 2, 2)), {"reduction": "sum"},
                 "cross_entropy[idx,4d,sum]")
    yield Sample((mk.randn(3), torch.tensor(1, device=device)), {}, "cross_entropy[idx,unbatched]")
    yield Sample((mk.randn(3), torch.tensor(0, device=device), mk.positive(3)),
                 {"label_smoothing": 0.2, "reduction": "none"}, "cross_entropy[idx,unbatched,weight,ls,none]")
    yield Sample((mk.noncontiguous(mk.randn(4, 3)), mk.randint(3, 4)), {}, "cross_entropy[idx,noncontig]")
    yield Sample((mk.randn(3, 3), torch.full((3,), -100, device=device)), {"label_smoothing": 0.1,
                 "reduction": "sum"}, "cross_entropy[idx,all_ignored,ls,sum]")
    # probability targets (the target's shape is the input's): target differentiable
    for red in _REDUCTIONS:
        yield Sample((mk.randn(4, 3), mk.probs(4, 3)), {"reduction": red}, f"cross_entropy[prob,{red}]")
        yield Sample((mk.randn(4, 3), mk.probs(4, 3), mk.positive(3)), {"reduction": red, "label_smoothing": 0.2},
                     f"cross_entropy[prob,weight,ls,{red}]")
    yield Sample((mk.randn(2, 3, 2, 2), mk.probs(2, 3, 2, 2), mk.positive(3)), {}, "cross_entropy[prob,4d,weight]")
    yield Sample((mk.randn(3), mk.probs(3, dim=0)), {"label_smoothing": 0.1}, "cross_entropy[prob,unbatched,ls]")
    yield Sample((mk.randn(4, 3), mk.uniform(4, 3)), {"reduction": "sum"}, "cross_entropy[prob,unnormalised]")


def cross_entropy_symbolic(input, target, weight=None, size_average=None, ignore_index=-100, reduce=None,
                           reduction="mean", label_smoothing=0.0):
    x = np.asarray(input, dtype=object)
    cd = 0 if x.ndim == 1 else 1
    logp = _sym_log_softmax(x, cd)
    target = _symbolic.asarray(target)
    if np.asarray(target).shape != x.shape:
        return _sym_class_loss(logp, target, weight, ignore_index, reduction, label_smoothing)
    # probability targets: loss_n = -sum_c w_c q_nc logp_nc, q = (1 - eps) t + eps / C; mean divides by numel / C
    c = x.shape[cd]
    eps = _symbolic.to_rational(label_smoothing)
    q = np.asarray(target, dtype=object) * (1 - eps) + eps / c if label_smoothing else np.asarray(target, dtype=object)
    if weight is not None:
        shape = [1] * x.ndim
        shape[cd] = c
        q = q * np.asarray(_symbolic.asarray(weight), dtype=object).reshape(shape)
    loss = -(logp * q).sum(axis=cd)
    return _sym_reduce(np.asarray(loss, dtype=object), reduction, sympy.Integer(x.size // c))


@register("cross_entropy", torch_fn=F.cross_entropy, tensor_args=("input", "target", "weight"),
          samples=_ce_samples, symbolic=cross_entropy_symbolic, nondifferentiable=("weight",))
def cross_entropy_backward(grad_output, input, target, weight=None, *, needs_input_grad, size_average=None,
                           ignore_index=-100, reduce=None, reduction="mean", label_smoothing=0.0):
    """loss_n = -sum_c w_c q_nc log_softmax(x)_nc, q = (1 - eps) onehot(t) + eps/C (or the given
    probabilities t, smoothed the same way):
    dL/dx = dlogp - softmax(x) sum_c dlogp with dlogp = -gl w q;  dL/dt (probabilities) = -gl w (1 - eps) logp.
    Class indices: mean divides by sum_n w_{t_n} over non-ignored n; probabilities: by numel / C."""
    op = "cross_entropy"
    _check_reduction(op, reduction, size_average, reduce)
    if not 0.0 <= label_smoothing <= 1.0:
        raise InvalidParameterError(f"{op}: label_smoothing must be in [0, 1], got {label_smoothing!r}")
    if input.dim() == 0:
        raise InvalidParameterError(f"{op}: input must have a class dimension, got a 0-d tensor")
    cd = _class_dim(input)
    if target.shape != input.shape:  # class indices: nll_loss(log_softmax(x)) plus smoothing
        gx = None
        if needs_input_grad[0]:
            # _log_softmax_backward(dlogp) = dlogp - softmax(x) sum_c dlogp, with the class sum known
            index, on_target, spread, row_sum = _class_target_dlogp(grad_output, input, target, weight,
                                                                    ignore_index, reduction, label_smoothing, op)
            gx = _scatter_dlogp(_mul_fresh(torch.softmax(input, cd), -row_sum.unsqueeze(cd)), index, on_target,
                                spread, cd)
        return gx, None, None

    if not target.is_floating_point():
        raise InvalidParameterError(f"{op}: a target of the input's shape holds class probabilities and must "
                                    f"be floating point, got {target.dtype}")
    if ignore_index >= 0:
        raise InvalidParameterError(f"{op}: ignore_index={ignore_index} is not supported with probability "
                                    f"targets (torch rejects it); leave it negative")
    _check_class_weight(op, weight, input)
    c = input.shape[cd]
    gl = _reduction_scale(grad_output, reduction, input.numel() // c)
    if reduction == "none":
        gl = gl.unsqueeze(cd)
    wv = _along_classes(weight, input) if weight is not None else None
    logp = torch.log_softmax(input, cd)
    gx = gt = None
    if needs_input_grad[0]:
        q = target * (1.0 - label_smoothing) + label_smoothing / c if label_smoothing else target
        dlogp = -gl * (q if wv is None else q * wv)
        gx = _log_softmax_backward(dlogp, logp, cd)
    if needs_input_grad[1]:
        gt = -gl * logp * (1.0 - label_smoothing)
        if wv is not None:
            gt = gt * wv
    return gx, gt, None


# ---------------------------------------------------------------------------
# kl_div
# ---------------------------------------------------------------------------
#
# (torch.kl_div is not an alias: it takes the reduction as an integer enum, F.kl_div as a string.)
# torch's composite: loss = xlogy(t, t) - t x  (log_target=False),  exp(t) (t - x)  (log_target=True),
# reduced by none / sum / mean (numel of the broadcast loss) / batchmean (sum / input.size(0)).
#
#   log_target=False:  dL/dx = -gl t,        dL/dt = gl (log t + 1 - x)   (NaN at t = 0, as torch's
#                                            xlogy, whose d/dt carries t / t there)
#   log_target=True:   dL/dx = -gl e^t,      dL/dt = gl e^t (t - x + 1)

_KL_REDUCTIONS = ("none", "mean", "sum", "batchmean")


def _kl_samples(device, dtype):
    mk = Maker(device, dtype)
    for red in _KL_REDUCTIONS:
        yield Sample((torch.log_softmax(mk.randn(3, 4), 1), mk.probs(3, 4)), {"reduction": red}, f"kl_div[{red}]")
        yield Sample((torch.log_softmax(mk.randn(3, 4), 1), torch.log_softmax(mk.randn(3, 4), 1)),
                     {"reduction": red, "log_target": True}, f"kl_div[log_target,{red}]")
    yield Sample((mk.randn(2, 3, 2), mk.uniform(2, 3, 2, low=0.1, high=1.0)), {}, "kl_div[3d,default]")
    yield Sample((mk.randn(3, 4), mk.uniform(4, low=0.1, high=1.0)), {"reduction": "sum"}, "kl_div[bcast_target]")
    yield Sample((mk.randn(4), mk.randn(3, 4)), {"reduction": "batchmean", "log_target": True},
                 "kl_div[bcast_input,log_target]")
    yield Sample((mk.randn(()), mk.uniform((), low=0.1, high=1.0)), {"reduction": "batchmean"}, "kl_div[scalar]")
    yield Sample((mk.noncontiguous(mk.randn(3, 4)), mk.randn(3, 4)), {"log_target": True, "reduction": "batchmean"},
                 "kl_div[noncontig,log_target]")


def kl_div_symbolic(input, target, size_average=None, reduce=None, reduction="mean", log_target=False):
    x, t = np.asarray(input, dtype=object), np.asarray(target, dtype=object)
    if log_target:
        loss = _map(sympy.exp, t) * (t - x)
    else:
        loss = _map(lambda e: e * sympy.log(e), t) - t * x
    loss = np.asarray(loss, dtype=object)
    if reduction == "batchmean":
        return _sym_reduce(loss, "mean", sympy.Integer(x.shape[0]) if x.ndim else sympy.Integer(1)) \
            if x.ndim else _sym_reduce(loss, "sum")
    return _sym_reduce(loss, reduction)


@register("kl_div", torch_fn=F.kl_div, tensor_args=("input", "target"), samples=_kl_samples,
          symbolic=kl_div_symbolic)
def kl_div_backward(grad_output, input, target, *, needs_input_grad, size_average=None, reduce=None,
                    reduction="mean", log_target=False):
    """loss = t (log t - x) (or e^t (t - x) with log_target): dL/dx = -gl t (-gl e^t),
    dL/dt = gl (log t + 1 - x) (gl e^t (t - x + 1)); batchmean divides the sum by input.size(0)."""
    if size_average is not None or reduce is not None:
        raise UnsupportedError("kl_div: the deprecated size_average/reduce arguments are not supported, "
                               "pass reduction= instead")
    if reduction not in _KL_REDUCTIONS:
        raise InvalidParameterError(f"kl_div: reduction must be one of {_KL_REDUCTIONS}, got {reduction!r}")
    shape = torch.broadcast_shapes(input.shape, target.shape)
    if reduction == "mean":
        gl = grad_output / max(1, shape.numel())
    elif reduction == "batchmean" and input.dim() != 0:
        gl = grad_output / input.shape[0]
    else:
        gl = grad_output
    gx = gt = None
    if log_target:
        et = torch.exp(target)
        if needs_input_grad[0]:
            gx = unbroadcast((-gl * et).expand(shape), input.shape)
        if needs_input_grad[1]:
            gt = unbroadcast((gl * et * (target - input + 1.0)).expand(shape), target.shape)
        return gx, gt
    if needs_input_grad[0]:
        gx = unbroadcast((-gl * target).expand(shape), input.shape)
    if needs_input_grad[1]:
        # d xlogy(t, t)/dt = xlogy(t != 0, t) + t / t: log t + 1 for t > 0, NaN at t = 0 (torch's)
        dt = torch.xlogy((target != 0).to(target.dtype), target) + target / target - input
        gt = unbroadcast((gl * dt).expand(shape), target.shape)
    return gx, gt
