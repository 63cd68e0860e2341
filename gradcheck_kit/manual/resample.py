"""Resampling rule: ``interpolate`` (nearest, nearest-exact, linear, bilinear, bicubic,
trilinear, area).

Every mode is linear in the input and separable over the spatial axes: along axis
``a`` (input length ``L``, output length ``O``) output position ``o`` reads a few input
positions ``i_k(o)`` with weights ``w_k(o)``, i.e. a matrix ``A_a[o, i] = sum of w_k(o)
over {k : i_k(o) = i}`` (taps that clamp to the same border position add up), and

    y = (A_1 (x) ... (x) A_n) x       =>     dL/dx = (A_1^T (x) ... (x) A_n^T) g

(per plane of a 2-d input: ``y = A_h x A_w^T`` and ``dL/dx = A_h^T g A_w``), one matmul
per axis.  The backward is linear in ``g`` and constant in ``x``, so the second
derivatives are exact (zero in ``x``; the interpolation itself in ``g``).

Index arithmetic, as torch's CPU kernels (``aten/src/ATen/native/UpSample.h``), with
``s`` the user's scale factor for the axis when it is passed on to the kernel (a
``scale_factor`` without ``recompute_scale_factor``), else none:

* output size: ``size``, or ``floor(L * scale_factor)`` (double precision);
* ``compute_scale = 1 / s`` if ``s`` is given and ``> 0``, else ``L / O``;
* nearest: ``i = min(floor(o * scale), L - 1)`` in float32 arithmetic (whatever the
  dtype); the 2-d (4-d input) forward kernel alone takes the special cases
  ``O == L -> i = o`` and ``O == 2 L -> i = o >> 1`` (the 1-d and 3-d ones do not);
* nearest-exact: ``i = min(floor((o + 0.5) * scale), L - 1)`` in float32;
* linear family (in the input's dtype): ``scale = (L - 1) / (O - 1)`` (0 if ``O == 1``)
  with ``align_corners``, else ``compute_scale``; source ``r = scale * o`` with
  ``align_corners``, else ``max(scale (o + 0.5) - 0.5, 0)``; ``i_0 = min(floor(r), L - 1)``,
  ``lambda = clamp(r - i_0, 0, 1)``, ``i_1 = i_0 + 1`` unless ``i_0 = L - 1``; weights
  ``1 - lambda`` on ``i_0`` and ``lambda`` on ``i_1``.  ``O == L`` copies (the kernel's
  special case, even when a scale factor is given);
* bicubic: the same source without the clamp at 0, ``i_0 = floor(r)``, ``t = r - i_0``,
  taps ``i_0 - 1 .. i_0 + 2`` clamped to ``[0, L - 1]`` with Keys' cubic convolution
  weights (``A = -0.75``): ``W(t + 1), W(t), W(1 - t), W(2 - t)`` where
  ``W(x) = ((A + 2) x - (A + 3)) x^2 + 1`` for ``|x| <= 1`` and
  ``((A x - 5 A) x + 8 A) x - 4 A`` for ``1 < |x| < 2``;
* area: adaptive average pooling, window ``[floor(o L / O), ceil((o + 1) L / O))`` with
  weight ``1 / |window|``.

The rule is the adjoint of torch's FORWARD.  On the CPU (torch 2.13) torch's own backward
disagrees with its forward in two places, where ``torch.autograd.gradcheck`` fails and
the rule follows the forward (checked against central differences in
``tests/manual/test_resample.py``): nearest 1-d / 3-d with a ``scale_factor`` whose output
length is ``L`` or ``2 L`` (the backward takes the 2-d special cases), and bicubic with
a ``scale_factor`` whose output size equals the input size (the backward copies ``g``).

The symbolic forward applies the same matrices (weights as exact rationals of their
float64 values) to a numpy object array.
"""

from __future__ import annotations

import numpy as np
import sympy
import torch
import torch.nn.functional as F

from gradcheck_kit.errors import InvalidInputError, InvalidParameterError, UnsupportedError
from gradcheck_kit.manual._sampling import Maker
from gradcheck_kit.manual._shapes import check_grad_shape
from gradcheck_kit.manual.registry import Sample, register

__all__: list[str] = []

_LINEAR = {"linear": 1, "bilinear": 2, "trilinear": 3}
_MODES = ("nearest", "nearest-exact", "linear", "bilinear", "bicubic", "trilinear", "area")
_CUBIC_A = -0.75


# -- geometry -------------------------------------------------------------------------------

def _geometry(input_shape, size, scale_factor, mode, align_corners, recompute_scale_factor, antialias):
    """(output sizes, per-axis scale passed to the kernel or None, align_corners) with torch's checks."""
    op = "interpolate"
    dim = len(input_shape)
    if dim not in (3, 4, 5):
        raise InvalidInputError(f"{op}: input must be 3-d, 4-d or 5-d (N, C, *spatial), got shape "
                                f"{tuple(input_shape)}")
    nd = dim - 2
    if mode not in _MODES:
        raise InvalidParameterError(f"{op}: mode must be one of {', '.join(_MODES)}, got {mode!r}")
    if mode in ("nearest", "nearest-exact", "area") and align_corners is not None:
        raise InvalidParameterError(f"{op}: align_corners can only be set with the linear, bilinear, bicubic "
                                    f"or trilinear modes, not with mode={mode!r}")
    if mode in _LINEAR and _LINEAR[mode] != nd:
        raise InvalidParameterError(f"{op}: mode={mode!r} needs a {_LINEAR[mode] + 2}-d input, got "
                                    f"{dim}-d (use {[k for k, v in _LINEAR.items() if v == nd][0]!r})")
    if mode == "bicubic" and nd != 2:
        raise InvalidParameterError(f"{op}: mode='bicubic' needs a 4-d input, got {dim}-d")
    if antialias:
        raise UnsupportedError(f"{op}: antialias=True is not supported; the rule mirrors antialias=False")
    if (size is None) == (scale_factor is None):
        raise InvalidParameterError(f"{op}: give exactly one of size and scale_factor")
    if size is not None and recompute_scale_factor:
        raise InvalidParameterError(f"{op}: recompute_scale_factor is not meaningful with an explicit size")
    spatial = tuple(input_shape[2:])
    if size is not None:
        sizes = tuple(size) if isinstance(size, (list, tuple, torch.Size)) else (size,) * nd
        if len(sizes) != nd or not all(isinstance(s, int) and not isinstance(s, bool) for s in sizes):
            raise InvalidParameterError(f"{op}: size must be an int or a tuple of {nd} ints, got {size!r}")
        scales = (None,) * nd
    else:
        factors = tuple(scale_factor) if isinstance(scale_factor, (list, tuple)) else (scale_factor,) * nd
        if len(factors) != nd or not all(isinstance(f, (int, float)) and not isinstance(f, bool) for f in factors):
            raise InvalidParameterError(f"{op}: scale_factor must be a number or a tuple of {nd} numbers, "
                                        f"got {scale_factor!r}")
        sizes = tuple(int(L * float(f)) for L, f in zip(spatial, factors))          # floor(L * s), double
        recompute = recompute_scale_factor or mode == "area"
        scales = (None,) * nd if recompute else tuple(float(f) for f in factors)
    if min(spatial) < 1 or min(sizes) < 1:
        raise InvalidParameterError(f"{op}: input and output spatial sizes must be positive, got input "
                                    f"{spatial} and output {sizes}")
    return sizes, scales, bool(align_corners)


def _compute_scale(L, O, s, dt):
    """``1 / s`` if the kernel gets a positive scale factor, else ``L / O``; in dtype ``dt``."""
    return dt(1.0 / s) if s is not None and s > 0 else dt(L) / dt(O)


def _taps(mode, L, O, s, align_corners, dt, nd):
    """(indices, weights), each ``(O, K)``: output ``o`` = sum_k weights[o, k] * x[indices[o, k]]."""
    o = np.arange(O)
    if mode in ("nearest", "nearest-exact"):
        f32 = np.float32
        scale = _compute_scale(L, O, s, f32)
        if mode == "nearest" and nd == 2 and O == L:                         # the 2-d kernel's special cases
            idx = o
        elif mode == "nearest" and nd == 2 and O == 2 * L:
            idx = o >> 1
        else:
            src = o.astype(f32) + f32(0.5) if mode == "nearest-exact" else o.astype(f32)
            idx = np.minimum(np.floor(src * scale).astype(np.int64), L - 1)
        return idx[:, None], np.ones((O, 1))
    if mode == "area":
        start = (o * L) // O
        end = -((-(o + 1) * L) // O)
        K = int((end - start).max())
        idx = np.minimum(start[:, None] + np.arange(K)[None, :], L - 1)
        inside = start[:, None] + np.arange(K)[None, :] < end[:, None]
        return idx, np.where(inside, 1.0 / (end - start)[:, None], 0.0)
    cubic = mode == "bicubic"
    if not cubic and O == L:                                                 # the linear kernels copy
        return o[:, None], np.ones((O, 1))
    if align_corners:
        scale = dt(L - 1) / dt(O - 1) if O > 1 else dt(0)
        real = scale * o.astype(dt)
    else:
        scale = _compute_scale(L, O, s, dt)
        real = scale * (o.astype(dt) + dt(0.5)) - dt(0.5)
        if not cubic:
            real = np.maximum(real, dt(0))
    i0 = np.minimum(np.floor(real).astype(np.int64), L - 1)
    lam = np.clip(real - i0.astype(dt), dt(0), dt(1))
    if not cubic:
        i1 = i0 + (i0 < L - 1)
        return np.stack([i0, i1], 1), np.stack([dt(1) - lam, lam], 1).astype(np.float64)
    A = dt(_CUBIC_A)

    def near(x):   # |x| <= 1
        return ((A + dt(2)) * x - (A + dt(3))) * x * x + dt(1)

    def far(x):    # 1 < |x| < 2
        return ((A * x - dt(5) * A) * x + dt(8) * A) * x - dt(4) * A

    w = np.stack([far(lam + dt(1)), near(lam), near(dt(1) - lam), far(dt(2) - lam)], 1)
    idx = np.clip(i0[:, None] - 1 + np.arange(4)[None, :], 0, L - 1)
    return idx, w.astype(np.float64)


def _opmath(dtype) -> type:
    """The dtype torch's CPU kernels compute source indices and weights in."""
    return np.float64 if dtype == torch.float64 else np.float32


def _matrices(input_shape, dtype, size, scale_factor, mode, align_corners, recompute_scale_factor, antialias):
    """Per spatial axis the interpolation matrix ``A_a`` as ``(O_a, L_a)`` float64 numpy arrays."""
    sizes, scales, ac = _geometry(input_shape, size, scale_factor, mode, align_corners, recompute_scale_factor,
                                  antialias)
    dt = _opmath(dtype)
    mats = []
    for L, O, s in zip(input_shape[2:], sizes, scales):
        idx, w = _taps(mode, L, O, s, ac, dt, len(sizes))
        A = np.zeros((O, L))
        np.add.at(A, (np.repeat(np.arange(O), idx.shape[1]), idx.reshape(-1)), w.reshape(-1))
        mats.append(A)
    return mats


# -- the rule -------------------------------------------------------------------------------

def interpolate_symbolic(input, *, size=None, scale_factor=None, mode="nearest", align_corners=None,
                         recompute_scale_factor=None, antialias=False):
    mats = _matrices(input.shape, torch.float64, size, scale_factor, mode, align_corners, recompute_scale_factor,
                     antialias)
    y = input
    for a, A in enumerate(mats):
        ax = y.ndim - len(mats) + a
        Ao = np.vectorize(lambda v: sympy.Rational(float(v)), otypes=[object])(A)
        y = np.moveaxis(np.tensordot(Ao, np.moveaxis(y, ax, 0), axes=1), 0, ax)
    return y


def interpolate_samples(device, dtype):
    mk = Maker(device, dtype)
    table = [
        ((1, 2, 5), dict(size=10), "nearest,1d,x2"),
        ((1, 2, 4, 5), dict(scale_factor=1.5), "nearest,x1.5"),
        ((2, 1, 5, 7), dict(size=(3, 4)), "nearest,down"),
        ((1, 2, 4, 5), dict(scale_factor=2.3, recompute_scale_factor=True), "nearest,x2.3,recompute"),
        ((1, 1, 4, 5), dict(scale_factor=1.2), "nearest,x1.2,same_size"),
        ((1, 1, 3, 2), dict(scale_factor=(2.1, 1.6)), "nearest,x2.1,double_size"),
        ((1, 1, 2, 3, 2), dict(scale_factor=(2, 1.5, 3)), "nearest,3d"),
        ((1, 2, 3, 4), dict(size=(5, 7), mode="nearest-exact"), "nearest-exact,up"),
        ((1, 2, 7), dict(size=3, mode="nearest-exact"), "nearest-exact,1d,down"),
        ((1, 2, 4), dict(scale_factor=2, mode="linear", align_corners=True), "linear,align_corners,x2"),
        ((1, 2, 7), dict(size=3, mode="linear"), "linear,down"),
        ((1, 2, 5), dict(scale_factor=1.7, mode="linear"), "linear,x1.7"),
        ((1, 2, 5), dict(size=1, mode="linear", align_corners=True), "linear,align_corners,to1"),
        ((2, 2, 3, 4), dict(scale_factor=2, mode="bilinear"), "bilinear,x2"),
        ((1, 2, 5, 4), dict(size=(3, 7), mode="bilinear", align_corners=True), "bilinear,align_corners,size"),
        ((1, 1, 5, 6), dict(scale_factor=(0.6, 1.5), mode="bilinear"), "bilinear,x0.6x1.5"),
        ((1, 1, 4, 5), dict(scale_factor=1.7, mode="bilinear", recompute_scale_factor=True),
         "bilinear,x1.7,recompute"),
        ((1, 1, 4, 5), dict(scale_factor=1.2, mode="bilinear"), "bilinear,x1.2,same_size"),
        ((2, 3, 4, 4), dict(scale_factor=2, mode="bilinear"), "bilinear,channels_last"),
        ((1, 2, 3, 4), dict(size=(6, 5), mode="bilinear"), "bilinear,noncontig"),
        ((1, 2, 4, 5), dict(scale_factor=2, mode="bicubic"), "bicubic,x2"),
        ((1, 1, 4, 5), dict(size=(7, 3), mode="bicubic", align_corners=True), "bicubic,align_corners"),
        ((1, 1, 6, 7), dict(scale_factor=0.6, mode="bicubic"), "bicubic,down"),
        ((1, 1, 3, 3, 2), dict(scale_factor=2, mode="trilinear"), "trilinear,x2"),
        ((1, 1, 3, 2, 4), dict(size=(4, 3, 2), mode="trilinear", align_corners=True), "trilinear,align_corners"),
        ((1, 2, 5, 7), dict(size=(3, 4), mode="area"), "area,down"),
        ((1, 2, 7), dict(scale_factor=0.5, mode="area"), "area,1d,x0.5"),
        ((1, 1, 3, 4, 5), dict(size=(2, 4, 3), mode="area"), "area,3d"),
    ]
    for shape, params, tag in table:
        x = mk.randn(*shape)
        if "channels_last" in tag:
            x = mk.channels_last(x)
        elif "noncontig" in tag:
            x = mk.noncontiguous(x)
        yield Sample((x,), params, f"interpolate[{tag}]")


@register("interpolate", torch_fn=F.interpolate, tensor_args=("input",), samples=interpolate_samples,
          symbolic=interpolate_symbolic, aliases=(F.upsample,))
def interpolate_backward(grad_output, input, *, needs_input_grad, size=None, scale_factor=None, mode="nearest",
                         align_corners=None, recompute_scale_factor=None, antialias=False):
    """dL/dx = (A_1^T (x) ... (x) A_n^T) g with A_a the per-axis interpolation matrix."""
    mats = _matrices(input.shape, input.dtype, size, scale_factor, mode, align_corners, recompute_scale_factor,
                     antialias)
    check_grad_shape("interpolate", grad_output, tuple(input.shape[:2]) + tuple(A.shape[0] for A in mats))
    if not needs_input_grad[0]:
        return (None,)
    h = grad_output
    nd = len(mats)
    for a, A in enumerate(mats):
        dim = h.dim() - nd + a
        At = torch.as_tensor(A, dtype=h.dtype, device=h.device)              # (O_a, L_a)
        h = torch.movedim(torch.movedim(h, dim, -1) @ At, -1, dim)            # contract O_a: A_a^T along axis a
    return (h,)


def output_size(input_shape, *, size=None, scale_factor=None, mode="nearest", align_corners=None,
                recompute_scale_factor=None, antialias=False) -> tuple[int, ...]:
    """The spatial output size ``interpolate`` produces (``floor(L * scale_factor)`` or ``size``)."""
    sizes, _, _ = _geometry(tuple(input_shape), size, scale_factor, mode, align_corners, recompute_scale_factor,
                            antialias)
    return sizes
