"""Symbolic forwards over numpy object arrays of sympy expressions.

A symbolic forward (``rule.symbolic``) receives each tensor argument as a numpy
``dtype=object`` array of sympy expressions with the tensor's shape and returns the
output the same way.  ``gradcheck_kit.derive`` differentiates those expressions
exactly.  This module holds the building blocks that several families share:

* ``conv`` / ``conv_transpose``: ``F.convNd`` / ``F.conv_transposeNd`` exactly
  (stride, int/tuple/``"same"``/``"valid"`` padding, dilation, groups, unbatched).
* ``asarray``, ``symbols``, ``rationals``: building object arrays.
* ``elementwise``, ``broadcast``, ``sum``, ``mean``, ``matmul``: small generic helpers.

Every output element is built as one ``sympy.Add`` of ``sympy.Mul`` terms; nothing
is expanded or simplified, so a convolution of a few hundred elements takes
milliseconds and its expressions stay sparse (each output holds only the symbols of
its receptive field).
"""

from __future__ import annotations

from fractions import Fraction
from typing import Any, Callable, Sequence

import numpy as np
import sympy

from gradcheck_kit.errors import InvalidInputError, InvalidParameterError
from gradcheck_kit.manual import _shapes

__all__ = ["asarray", "symbols", "rationals", "to_rational", "conv", "conv_transpose",
           "elementwise", "broadcast", "sum", "mean", "matmul", "relu_piece"]

_ZERO = sympy.S.Zero


# -- building object arrays ---------------------------------------------------------

def to_rational(value: Any, *, exact: bool = True, rounds_to: Callable | None = None) -> sympy.Basic:
    """One number as an exact sympy number.

    ``exact=True``: the float64 value itself (``0.1 -> 3602879701896397/2**55``), which
    is what a float64 kernel sees.  ``exact=False``: the shortest fraction with a
    denominator up to 10**6 that rounds to the same float64 (``0.1 -> 1/10``), for
    display (``rounds_to``, e.g. ``numpy.float32``, is the dtype whose rounding must give
    ``value`` back; float64 by default).  Integers stay integers; booleans become 0/1.
    """
    if isinstance(value, sympy.Basic):
        return value
    if isinstance(value, (bool, np.bool_)):
        return sympy.Integer(int(value))
    if isinstance(value, (int, np.integer)):
        return sympy.Integer(int(value))
    v = float(value)
    if v != v:
        return sympy.nan
    if v in (float("inf"), float("-inf")):
        return sympy.oo if v > 0 else -sympy.oo
    f = Fraction(v)
    if not exact:
        short = f.limit_denominator(10**6)
        back = float(short) if rounds_to is None else float(rounds_to(float(short)))
        if back == v:
            f = short
    return sympy.Rational(f.numerator, f.denominator)


def asarray(x: Any) -> np.ndarray | None:
    """``x`` (object array, numeric array, tensor, nested list or number) as an object array of sympy numbers/expressions."""
    if x is None:
        return None
    if isinstance(x, np.ndarray) and x.dtype == object:
        if all(isinstance(e, sympy.Basic) for e in x.flat):
            return x
    if hasattr(x, "detach") and hasattr(x, "cpu"):  # a torch tensor, without importing torch
        x = x.detach().cpu()
        x = x.numpy() if not x.is_floating_point() else x.double().numpy()
    a = np.asarray(x, dtype=object)
    out = np.empty(a.shape, dtype=object)
    for idx in np.ndindex(a.shape):
        out[idx] = to_rational(a[idx])
    return out


def symbols(name: str, shape: Sequence[int], **assumptions) -> np.ndarray:
    """Fresh real symbols named ``{name}_{i}_{j}...`` (``input_0_0_2``) in an array of ``shape``."""
    assumptions.setdefault("real", True)
    shape = tuple(int(s) for s in shape)
    out = np.empty(shape, dtype=object)
    for idx in np.ndindex(shape):
        out[idx] = sympy.Symbol("_".join([name, *map(str, idx)]) if idx else name, **assumptions)
    return out


def rationals(t: Any, *, exact: bool = True) -> np.ndarray:
    """A tensor or array of numbers as exact rationals (see ``to_rational``)."""
    rounds_to = None
    if hasattr(t, "detach") and hasattr(t, "cpu"):
        t = t.detach().cpu()
        if t.is_floating_point():
            rounds_to = {"torch.float32": np.float32, "torch.float16": np.float16}.get(str(t.dtype))
            t = t.double().numpy()
        else:
            t = t.numpy()
    a = np.asarray(t)
    if a.dtype in (np.float32, np.float16):
        rounds_to = a.dtype.type
    out = np.empty(a.shape, dtype=object)
    for idx in np.ndindex(a.shape):
        e = a[idx]
        out[idx] = to_rational(e.item() if hasattr(e, "item") else e, exact=exact, rounds_to=rounds_to)
    return out


# -- convolutions ---------------------------------------------------------------------

def _conv_setup(x, w, dims, stride, dilation, what):
    if dims not in (1, 2, 3):
        raise InvalidParameterError(f"dims must be 1, 2 or 3, got {dims!r}")
    x = asarray(x)
    w = asarray(w)
    if x.ndim not in (dims + 1, dims + 2):
        raise InvalidInputError(f"{what}: input must have {dims + 1} (unbatched) or {dims + 2} "
                                f"dimensions, got shape {x.shape}")
    if w.ndim != dims + 2:
        raise InvalidInputError(f"{what}: weight must have {dims + 2} dimensions, got shape {w.shape}")
    unbatched = x.ndim == dims + 1
    if unbatched:
        x = x[None]
    stride = _shapes.ntuple(stride, dims, "stride")
    dilation = _shapes.ntuple(dilation, dims, "dilation")
    if any(s < 1 for s in stride):
        raise InvalidParameterError(f"stride must be positive, got {stride}")
    if any(d < 1 for d in dilation):
        raise InvalidParameterError(f"dilation must be positive, got {dilation}")
    return x, w, unbatched, stride, dilation


def _check_groups(groups, in_channels, out_channels, what):
    if not isinstance(groups, int) or isinstance(groups, bool) or groups < 1:
        raise InvalidParameterError(f"groups must be a positive int, got {groups!r}")
    if in_channels % groups or out_channels % groups:
        raise InvalidParameterError(f"groups={groups} must divide {what} channels "
                                    f"({in_channels} in, {out_channels} out)")


def _conv_pads(padding, kernel, dilation, stride, dims):
    if isinstance(padding, str):
        if padding == "valid":
            return ((0, 0),) * dims
        if padding == "same":
            if any(s != 1 for s in stride):
                raise InvalidParameterError("padding='same' is not supported for strided convolutions")
            return _shapes.same_padding(kernel, dilation)
        raise InvalidParameterError(f"padding must be an int, a tuple, 'same' or 'valid', got {padding!r}")
    p = _shapes.ntuple(padding, dims, "padding")
    if any(v < 0 for v in p):
        raise InvalidParameterError(f"padding must be non-negative, got {p}")
    return tuple((v, v) for v in p)


def _add(terms: list) -> sympy.Basic:
    if not terms:
        return _ZERO
    if len(terms) == 1:
        return terms[0]
    return sympy.Add(*terms)


_ONE = sympy.S.One


def _mul(a, b):
    """``a * b`` as one ``Mul``; ``None`` for a structural zero (sympy's 0 and 1 are singletons)."""
    if a is _ZERO or b is _ZERO:
        return None
    if a is _ONE:
        return b
    if b is _ONE:
        return a
    return sympy.Mul(a, b)


def conv(input, weight, bias=None, *, dims: int, stride=1, padding=0, dilation=1, groups=1) -> np.ndarray:
    """``F.conv{dims}d`` over object arrays: cross-correlation, as torch (and the lecture) define it.

    ``y[n, o, p] = b[o] + sum_{c, k} x[n, g(o) Cg + c, p s + k d - pad_lo] w[o, c, k]``
    with ``g(o) = o // (O / groups)``; padded positions contribute nothing.
    """
    x, w, unbatched, stride, dilation = _conv_setup(input, weight, dims, stride, dilation, f"conv{dims}d")
    N, C = x.shape[:2]
    O, Cg = w.shape[:2]
    kernel = w.shape[2:]
    _check_groups(groups, C, O, f"conv{dims}d")
    if Cg * groups != C:
        raise InvalidInputError(f"conv{dims}d: weight expects {Cg * groups} input channels "
                                f"(groups={groups}), input has {C}")
    pads = _conv_pads(padding, kernel, dilation, stride, dims)
    spatial = x.shape[2:]
    out_sizes = tuple(_shapes.conv_output_size(L, k, s, lo, hi, d)
                      for L, k, s, (lo, hi), d in zip(spatial, kernel, stride, pads, dilation))
    if any(o < 1 for o in out_sizes):
        raise InvalidInputError(f"conv{dims}d: input {spatial} is too small for kernel {kernel} "
                                f"(dilation {dilation}, padding {pads})")
    b = asarray(bias)
    if b is not None and b.shape != (O,):
        raise InvalidInputError(f"conv{dims}d: bias must have shape ({O},), got {b.shape}")
    Og = O // groups
    kidx_all = list(np.ndindex(*kernel))
    out = np.empty((N, O) + out_sizes, dtype=object)
    for pos in np.ndindex(*out_sizes):
        # per kernel offset: the input position it reads, or None where it reads padding
        reads = []
        for k in kidx_all:
            ip = tuple(pos[a] * stride[a] + k[a] * dilation[a] - pads[a][0] for a in range(dims))
            if all(0 <= ip[a] < spatial[a] for a in range(dims)):
                reads.append((k, ip))
        for n in range(N):
            for o in range(O):
                c0 = (o // Og) * Cg
                terms = []
                for c in range(Cg):
                    xc = x[n, c0 + c]
                    wc = w[o, c]
                    for k, ip in reads:
                        t = _mul(xc[ip], wc[k])
                        if t is not None:
                            terms.append(t)
                if b is not None:
                    terms.append(b[o])
                out[(n, o) + pos] = _add(terms)
    return out[0] if unbatched else out


def conv_transpose(input, weight, bias=None, *, dims: int, stride=1, padding=0, output_padding=0,
                   groups=1, dilation=1) -> np.ndarray:
    """``F.conv_transpose{dims}d`` over object arrays: the adjoint of ``conv`` as a scatter.

    Weight is ``(C_in, C_out / groups, *k)``; input position ``i`` and kernel offset
    ``k`` write ``x[n, c, i] w[c, o, k]`` to output position ``i s + k d - pad``;
    the output has ``(L - 1) s - 2 pad + d (k - 1) + output_padding + 1`` positions.
    """
    x, w, unbatched, stride, dilation = _conv_setup(input, weight, dims, stride, dilation,
                                                    f"conv_transpose{dims}d")
    if isinstance(padding, str):
        raise InvalidParameterError(f"padding must be an int or a tuple for conv_transpose{dims}d, got {padding!r}")
    pad = _shapes.ntuple(padding, dims, "padding")
    opad = _shapes.ntuple(output_padding, dims, "output_padding")
    if any(v < 0 for v in pad) or any(v < 0 for v in opad):
        raise InvalidParameterError(f"padding and output_padding must be non-negative, got {pad} and {opad}")
    if any(op >= max(s, d) for op, s, d in zip(opad, stride, dilation)):
        raise InvalidParameterError(f"output_padding {opad} must be smaller than stride {stride} or dilation {dilation}")
    N, C = x.shape[:2]
    Cw, Og = w.shape[:2]
    kernel = w.shape[2:]
    if Cw != C:
        raise InvalidInputError(f"conv_transpose{dims}d: weight expects {Cw} input channels, input has {C}")
    O = Og * groups
    _check_groups(groups, C, O, f"conv_transpose{dims}d")
    spatial = x.shape[2:]
    out_sizes = tuple((L - 1) * s - 2 * p + d * (k - 1) + op + 1
                      for L, s, p, d, k, op in zip(spatial, stride, pad, dilation, kernel, opad))
    if any(o < 1 for o in out_sizes):
        raise InvalidInputError(f"conv_transpose{dims}d: output size {out_sizes} would be empty")
    b = asarray(bias)
    if b is not None and b.shape != (O,):
        raise InvalidInputError(f"conv_transpose{dims}d: bias must have shape ({O},), got {b.shape}")
    Cg = C // groups
    terms = np.empty((N, O) + out_sizes, dtype=object)
    for idx in np.ndindex(terms.shape):
        terms[idx] = []
    kidx_all = list(np.ndindex(*kernel))
    for ip in np.ndindex(*spatial):
        writes = []
        for k in kidx_all:
            op_ = tuple(ip[a] * stride[a] + k[a] * dilation[a] - pad[a] for a in range(dims))
            if all(0 <= op_[a] < out_sizes[a] for a in range(dims)):
                writes.append((k, op_))
        for n in range(N):
            for c in range(C):
                xv = x[(n, c) + ip]
                o0 = (c // Cg) * Og
                for oo in range(Og):
                    wc = w[c, oo]
                    for k, op_ in writes:
                        t = _mul(xv, wc[k])
                        if t is not None:
                            terms[(n, o0 + oo) + op_].append(t)
    out = np.empty(terms.shape, dtype=object)
    for idx in np.ndindex(terms.shape):
        ts = terms[idx]
        if b is not None:
            ts.append(b[idx[1]])
        out[idx] = _add(ts)
    return out[0] if unbatched else out


# -- small generic helpers ------------------------------------------------------------

def elementwise(fn: Callable, *arrays) -> np.ndarray:
    """``fn`` applied element by element, numpy broadcasting the arrays (numbers allowed)."""
    arrs = [asarray(a) if not isinstance(a, (int, float)) else a for a in arrays]
    vec = np.frompyfunc(fn, len(arrs), 1)
    out = vec(*arrs)
    return out if isinstance(out, np.ndarray) else np.array(out, dtype=object)


def broadcast(a, shape) -> np.ndarray:
    return np.broadcast_to(asarray(a), tuple(shape))


def sum(a, dim=None, keepdim: bool = False) -> np.ndarray:  # noqa: A001 - mirrors torch.sum
    """``torch.sum`` over an object array; each result is one ``Add`` (no expand)."""
    a = asarray(a)
    if dim is None:
        return np.array(_add([e for e in a.flat if e != 0]), dtype=object)
    dims = (dim,) if isinstance(dim, int) else tuple(dim)
    dims = tuple(d % a.ndim for d in dims)
    moved = np.moveaxis(a, dims, tuple(range(a.ndim - len(dims), a.ndim)))
    keep = moved.shape[: a.ndim - len(dims)]
    out = np.empty(keep, dtype=object)
    for idx in np.ndindex(keep):
        out[idx] = _add([e for e in moved[idx].flat if e != 0])
    if keepdim:
        for d in sorted(dims):
            out = np.expand_dims(out, d)
    return out


def mean(a, dim=None, keepdim: bool = False) -> np.ndarray:
    a = asarray(a)
    s = sum(a, dim, keepdim)
    count = a.size if dim is None else int(np.prod([a.shape[d] for d in ((dim,) if isinstance(dim, int) else dim)]))
    return elementwise(lambda e: e / count, s) if count else s


def matmul(a, b) -> np.ndarray:
    """``torch.matmul`` over object arrays (1-d, 2-d and broadcast batches), sums as single ``Add``s."""
    a = asarray(a)
    b = asarray(b)
    va, vb = a.ndim == 1, b.ndim == 1
    if va:
        a = a[None, :]
    if vb:
        b = b[:, None]
    if a.shape[-1] != b.shape[-2]:
        raise InvalidInputError(f"matmul: shapes {a.shape} and {b.shape} do not align")
    batch = np.broadcast_shapes(a.shape[:-2], b.shape[:-2])
    a = np.broadcast_to(a, batch + a.shape[-2:])
    b = np.broadcast_to(b, batch + b.shape[-2:])
    m, k, n = a.shape[-2], a.shape[-1], b.shape[-1]
    out = np.empty(batch + (m, n), dtype=object)
    for bi in np.ndindex(batch):
        A, B = a[bi], b[bi]
        for i in range(m):
            for j in range(n):
                terms = [t for t in (_mul(A[i, r], B[r, j]) for r in range(k)) if t is not None]
                out[bi + (i, j)] = _add(terms)
    if va:
        out = out[..., 0, :]
    if vb:
        out = out[..., 0]
    return out


def relu_piece(x) -> sympy.Basic:
    """``max(x, 0)`` as ``Piecewise((x, x > 0), (0, True))``: derivative 0 at the kink, torch's relu'(0) = 0."""
    return sympy.Piecewise((x, x > 0), (_ZERO, True))
