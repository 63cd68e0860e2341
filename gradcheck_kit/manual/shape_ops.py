"""Shape rules: ``unfold`` (im2col), ``fold`` (col2im) and ``pad``.

unfold / fold are adjoint linear maps.  ``unfold`` gathers, with a 0/1 matrix ``U``:

    cols[n, c k, l] = x_pad[n, c, pos(k, l)],   pos(k, l) = l s + k d - p  (per axis)

so ``<U x, y> = sum_{c,k,l} x[c, pos(k, l)] y[c k, l] = <x, U^T y>`` where
``U^T y`` scatter-adds every column entry back onto its input position (dropping
padding positions): that is exactly ``fold``.  Hence

    unfold backward:  dL/dx    = fold(g, output_size=x.shape[-2:])   (= U^T g)
    fold   backward:  dL/dcols = unfold(g)                           (= (U^T)^T g)

pad is ``y = P x`` with ``P`` a 0/1 selection per padded axis: output position ``j``
reads source ``src(j)`` (or the constant).  ``dL/dx = P^T g``:

* constant: ``P^T`` crops what was added and zero-fills what was cropped, i.e.
  ``pad(g, [-p for p in pad])``;
* reflect / replicate / circular: ``dL/dx[i] = sum over {j : src(j) = i} of g[j]``,
  one ``index_add`` per padded axis (the maps are separable; corners compose).
  ``i = j - lo``; reflect: ``-i`` below 0, ``2 (L - 1) - i`` above ``L - 1`` (edge not
  repeated); replicate: ``clamp(i, 0, L - 1)``; circular: torch first crops the
  negative sides (``[c0, L - c1)``, length ``Lc``) and wraps within that:
  ``src = c0 + (j - max(lo, 0)) mod Lc``.
"""

from __future__ import annotations

import itertools

import numpy as np
import sympy
import torch
import torch.nn.functional as F

from gradcheck_kit.errors import InvalidInputError, InvalidParameterError, UnsupportedError
from gradcheck_kit.manual._sampling import Maker
from gradcheck_kit.manual._shapes import conv_output_size, ntuple
from gradcheck_kit.manual.registry import Sample, register

# -- unfold / fold ------------------------------------------------------------------


def _im2col_params(op, kernel_size, dilation, padding, stride):
    k = ntuple(kernel_size, 2, "kernel_size")
    d = ntuple(dilation, 2, "dilation")
    p = ntuple(padding, 2, "padding")
    s = ntuple(stride, 2, "stride")
    for name, v, low in (("kernel_size", k, 1), ("dilation", d, 1), ("padding", p, 0), ("stride", s, 1)):
        if min(v) < low:
            raise InvalidParameterError(f"{op}: {name} must be {'positive' if low else 'non-negative'}, got {v!r}")
    return k, d, p, s


def _blocks(op, spatial, k, d, p, s) -> tuple[int, int]:
    """Number of sliding blocks per axis: ``floor((L + 2p - d (k - 1) - 1) / s) + 1``."""
    B = tuple(conv_output_size(L, ki, si, pi, pi, di) for L, ki, si, pi, di in zip(spatial, k, s, p, d))
    if min(B) < 1:
        raise InvalidParameterError(f"{op}: spatial size {tuple(spatial)} with padding={p!r} is smaller than the "
                                    f"dilated kernel (kernel_size={k!r}, dilation={d!r})")
    return B


def _block_positions(spatial, k, d, p, s, B):
    """Per axis ``pos[b, j] = b s + j d - p`` as nested lists."""
    return [[[b * s[a] + j * d[a] - p[a] for j in range(k[a])] for b in range(B[a])] for a in range(2)]


def unfold_samples(device, dtype):
    mk = Maker(device, dtype)
    yield Sample((mk.randn(2, 2, 4, 5),), {"kernel_size": 2}, "unfold[k2]")
    yield Sample((mk.randn(1, 2, 5, 5),), {"kernel_size": 3, "padding": 1}, "unfold[k3,p1]")
    yield Sample((mk.randn(1, 3, 7, 6),), {"kernel_size": (2, 3), "dilation": (2, 1), "padding": (1, 0),
                                           "stride": (2, 1)}, "unfold[k2x3,d2x1,p1x0,s2x1]")
    yield Sample((mk.randn(1, 2, 6, 7),), {"kernel_size": 2, "stride": 3}, "unfold[s3,uncovered]")
    yield Sample((mk.randn(2, 5, 4),), {"kernel_size": 2, "stride": (1, 2), "padding": 1}, "unfold[unbatched]")
    yield Sample((mk.channels_last(mk.randn(1, 3, 4, 4)),), {"kernel_size": 3, "padding": 1},
                 "unfold[channels_last]")
    yield Sample((mk.noncontiguous(mk.randn(1, 2, 5, 4)),), {"kernel_size": 2, "dilation": 2},
                 "unfold[noncontig,d2]")


def unfold_symbolic(input, *, kernel_size, dilation=1, padding=0, stride=1):
    op = "unfold"
    _check_unfold_input(op, input)
    k, d, p, s = _im2col_params(op, kernel_size, dilation, padding, stride)
    H, W = input.shape[-2:]
    B = _blocks(op, (H, W), k, d, p, s)
    pos = _block_positions((H, W), k, d, p, s, B)
    lead, C = input.shape[:-3], input.shape[-3]
    out = np.empty(lead + (C * k[0] * k[1], B[0] * B[1]), dtype=object)
    zero = sympy.Integer(0)
    for n in np.ndindex(*lead):
        for c, kh, kw, bh, bw in itertools.product(range(C), range(k[0]), range(k[1]), range(B[0]), range(B[1])):
            i, j = pos[0][bh][kh], pos[1][bw][kw]
            out[n + ((c * k[0] + kh) * k[1] + kw, bh * B[1] + bw)] = \
                input[n + (c, i, j)] if 0 <= i < H and 0 <= j < W else zero
    return out


def _check_unfold_input(op, input):
    if len(input.shape) not in (3, 4):
        raise InvalidInputError(f"{op}: input must be 3-d (C, H, W) or 4-d (N, C, H, W), got shape {tuple(input.shape)}")


@register("unfold", torch_fn=F.unfold, tensor_args=("input",), samples=unfold_samples, symbolic=unfold_symbolic)
def unfold_backward(grad_output, input, *, needs_input_grad, kernel_size, dilation=1, padding=0, stride=1):
    """dL/dx = U^T g = fold(g, output_size=x.shape[-2:]): scatter-add of each column entry."""
    _check_unfold_input("unfold", input)
    k, d, p, s = _im2col_params("unfold", kernel_size, dilation, padding, stride)
    B = _blocks("unfold", input.shape[-2:], k, d, p, s)
    C = input.shape[-3]
    expect = tuple(input.shape[:-3]) + (C * k[0] * k[1], B[0] * B[1])
    if tuple(grad_output.shape) != expect:
        raise InvalidInputError(f"unfold: grad_output has shape {tuple(grad_output.shape)}, expected {expect}")
    if not needs_input_grad[0]:
        return (None,)
    return (F.fold(grad_output, output_size=tuple(input.shape[-2:]), kernel_size=k, dilation=d, padding=p,
                   stride=s),)


def _fold_geometry(op, input, output_size, kernel_size, dilation, padding, stride):
    if len(input.shape) not in (2, 3):
        raise InvalidInputError(f"{op}: input must be 2-d (C*prod(kernel_size), L) or 3-d (N, C*prod(kernel_size), L), "
                                f"got shape {tuple(input.shape)}")
    out = ntuple(output_size, 2, "output_size")
    k, d, p, s = _im2col_params(op, kernel_size, dilation, padding, stride)
    B = _blocks(op, out, k, d, p, s)
    CK, L = input.shape[-2:]
    if CK % (k[0] * k[1]) != 0:
        raise InvalidParameterError(f"{op}: input.shape[-2] = {CK} is not divisible by prod(kernel_size) = {k[0] * k[1]}")
    if L != B[0] * B[1]:
        raise InvalidParameterError(f"{op}: input.shape[-1] = {L} but output_size={out!r} with these parameters "
                                    f"gives {B[0]} x {B[1]} = {B[0] * B[1]} blocks")
    return out, k, d, p, s, B


def fold_samples(device, dtype):
    mk = Maker(device, dtype)
    # (input shape, params, tag); input.shape[-1] = number of blocks of output_size.
    table = [
        ((2, 2 * 4, 12), dict(output_size=(4, 5), kernel_size=2), "k2,overlap"),
        ((1, 2 * 9, 25), dict(output_size=5, kernel_size=3, padding=1), "k3,p1"),
        ((1, 3 * 6, 4 * 4), dict(output_size=(7, 6), kernel_size=(2, 3), dilation=(2, 1), padding=(1, 0),
                                 stride=(2, 1)), "k2x3,d2x1,p1x0,s2x1"),
        ((1, 2 * 4, 4), dict(output_size=(6, 7), kernel_size=2, stride=3), "s3,uncovered"),
        ((2 * 4, 9), dict(output_size=(5, 4), kernel_size=2, stride=(2, 1), padding=(1, 0)), "unbatched"),
    ]
    for shape, params, tag in table:
        yield Sample((mk.randn(*shape),), params, f"fold[{tag}]")
    yield Sample((mk.noncontiguous(mk.randn(1, 2 * 4, 9)),), dict(output_size=4, kernel_size=2),
                 "fold[noncontig]")


def fold_symbolic(input, *, output_size, kernel_size, dilation=1, padding=0, stride=1):
    out_hw, k, d, p, s, B = _fold_geometry("fold", input, output_size, kernel_size, dilation, padding, stride)
    pos = _block_positions(out_hw, k, d, p, s, B)
    lead = input.shape[:-2]
    C = input.shape[-2] // (k[0] * k[1])
    H, W = out_hw
    out = np.empty(lead + (C, H, W), dtype=object)
    out[...] = sympy.Integer(0)
    for n in np.ndindex(*lead):
        for c, kh, kw, bh, bw in itertools.product(range(C), range(k[0]), range(k[1]), range(B[0]), range(B[1])):
            i, j = pos[0][bh][kh], pos[1][bw][kw]
            if 0 <= i < H and 0 <= j < W:
                out[n + (c, i, j)] = out[n + (c, i, j)] + input[n + ((c * k[0] + kh) * k[1] + kw, bh * B[1] + bw)]
    return out


@register("fold", torch_fn=F.fold, tensor_args=("input",), samples=fold_samples, symbolic=fold_symbolic)
def fold_backward(grad_output, input, *, needs_input_grad, output_size, kernel_size, dilation=1, padding=0,
                  stride=1):
    """dL/dcols = (U^T)^T g = unfold(g): fold scatter-adds, so its adjoint gathers."""
    out_hw, k, d, p, s, _ = _fold_geometry("fold", input, output_size, kernel_size, dilation, padding, stride)
    C = input.shape[-2] // (k[0] * k[1])
    expect = tuple(input.shape[:-2]) + (C,) + out_hw
    if tuple(grad_output.shape) != expect:
        raise InvalidInputError(f"fold: grad_output has shape {tuple(grad_output.shape)}, expected {expect}")
    if not needs_input_grad[0]:
        return (None,)
    return (F.unfold(grad_output, kernel_size=k, dilation=d, padding=p, stride=s),)


# -- pad ------------------------------------------------------------------------------

_PAD_MODES = ("constant", "reflect", "replicate", "circular")


def _pad_pairs(input_shape, pad, mode, value) -> list[tuple[int, int, int]]:
    """``(dim, lo, hi)`` for every padded dim; ``pad`` lists the last dim first."""
    if mode not in _PAD_MODES:
        raise InvalidParameterError(f"pad: mode must be one of {_PAD_MODES}, got {mode!r}")
    pad = tuple(pad)
    if len(pad) % 2 or not all(isinstance(v, int) and not isinstance(v, bool) for v in pad):
        raise InvalidParameterError(f"pad: pad must be a tuple of an even number of ints, got {pad!r}")
    ndim = len(input_shape)
    if len(pad) > 2 * ndim:
        raise InvalidParameterError(f"pad: pad has {len(pad)} entries, more than twice the input's {ndim} dimensions")
    pairs = [(ndim - 1 - i, pad[2 * i], pad[2 * i + 1]) for i in range(len(pad) // 2)]
    if mode != "constant":
        n = len(pairs)
        if n not in (1, 2, 3) or ndim not in (n + 1, n + 2):
            raise UnsupportedError(f"pad: mode={mode!r} pads the last 1, 2 or 3 dimensions of an input with one or two "
                                   f"more dimensions; got pad of length {len(pad)} for input shape {tuple(input_shape)}")
        if value not in (None, 0, 0.0):
            raise InvalidParameterError(f"pad: value={value!r} is only allowed with mode='constant', not {mode!r}")
    for dim, lo, hi in pairs:
        L = input_shape[dim]
        if L + lo + hi < (0 if mode == "constant" else 1):
            raise InvalidParameterError(f"pad: pad {(lo, hi)} leaves dimension {dim} of size {L} with "
                                        f"{L + lo + hi} elements")
        if mode == "constant" and L - max(-lo, 0) - max(-hi, 0) < 0:
            raise InvalidParameterError(f"pad: negative pad {(lo, hi)} crops more than the size {L} of dimension {dim}")
        if mode == "reflect" and (lo >= L or hi >= L):
            raise InvalidParameterError(f"pad: reflect padding {(lo, hi)} must be smaller than the size {L} of "
                                        f"dimension {dim}")
        if mode == "circular":
            Lc = L - max(-lo, 0) - max(-hi, 0)
            if Lc < 1 or lo > Lc or hi > Lc:
                # torch reads memory it has not written yet in that case.
                raise UnsupportedError(f"pad: circular padding {(lo, hi)} wraps more than once around dimension {dim} "
                                       f"(size {L}, {Lc} after cropping)")
    return pairs


def _pad_source(mode: str, L: int, lo: int, hi: int) -> np.ndarray:
    """``src[j]``: the input position that output position ``j`` copies (non-constant modes)."""
    j = np.arange(L + lo + hi)
    i = j - lo
    if mode == "reflect":
        i = np.where(i < 0, -i, i)
        return np.where(i > L - 1, 2 * (L - 1) - i, i)
    if mode == "replicate":
        return np.clip(i, 0, L - 1)
    c0 = max(-lo, 0)
    Lc = L - c0 - max(-hi, 0)
    return c0 + np.mod(j - max(lo, 0), Lc)


def pad_samples(device, dtype):
    mk = Maker(device, dtype)
    # (input shape, params, tag, kind)
    table = [
        ((2, 3, 4), dict(pad=(1, 2)), "constant,1d", "randn"),
        ((1, 2, 3, 4), dict(pad=(1, 0, 2, 1), value=0.5), "constant,2d,value", "randn"),
        ((2, 3, 4), dict(pad=(-1, 2, 1, -2)), "constant,negative", "randn"),
        ((1, 2, 3), dict(pad=(1, 1, 0, 1, 1, 0)), "constant,all_dims", "randn"),
        ((2, 2, 5), dict(pad=(4, 3), mode="reflect"), "reflect,1d,edge", "randn"),
        ((1, 2, 3, 4), dict(pad=(3, 1, 2, 2), mode="reflect"), "reflect,2d", "randn"),
        ((2, 3, 4, 3), dict(pad=(1, 2, 2, 0, 1, 1), mode="reflect"), "reflect,3d,unbatched", "randn"),
        ((1, 2, 5), dict(pad=(-2, 3), mode="reflect"), "reflect,negative", "randn"),
        ((1, 2, 3), dict(pad=(3, 2), mode="replicate"), "replicate,1d", "randn"),
        ((2, 3, 4), dict(pad=(2, 1, 0, 3), mode="replicate"), "replicate,2d,unbatched", "randn"),
        ((1, 1, 2, 3, 2), dict(pad=(1, 2, 2, 0, 1, 1), mode="replicate"), "replicate,3d", "randn"),
        ((1, 2, 4, 4), dict(pad=(-1, 2, 1, -1), mode="replicate"), "replicate,negative", "randn"),
        ((1, 2, 3), dict(pad=(3, 3), mode="circular"), "circular,1d,pad=size", "randn"),
        ((1, 2, 3, 4), dict(pad=(4, 2, 1, 3), mode="circular"), "circular,2d,pad=size", "randn"),
        ((1, 2, 2, 3, 2), dict(pad=(1, 2, 1, 0, 2, 1), mode="circular"), "circular,3d", "randn"),
        ((2, 5), dict(pad=(-1, 3), mode="circular"), "circular,negative,unbatched", "randn"),
        ((1, 3, 4, 4), dict(pad=(1, 2, 2, 1), mode="reflect"), "reflect,channels_last", "cl"),
        ((1, 2, 4, 3), dict(pad=(2, 1, 1, 2), mode="circular"), "circular,noncontig", "nc"),
        ((1, 2, 3, 4), dict(pad=(1, 1, 2, 0), value=-1.0), "constant,noncontig", "nc"),
    ]
    for shape, params, tag, kind in table:
        x = mk.randn(*shape)
        if kind == "cl":
            x = mk.channels_last(x)
        elif kind == "nc":
            x = mk.noncontiguous(x)
        yield Sample((x,), params, f"pad[{tag}]")


def pad_symbolic(input, *, pad, mode="constant", value=None):
    pairs = _pad_pairs(input.shape, pad, mode, value)
    out = input
    if mode == "constant":
        fill = sympy.sympify(0 if value is None else value)
        for dim, lo, hi in pairs:
            L = out.shape[dim]
            shape = list(out.shape)
            shape[dim] = L + lo + hi
            new = np.empty(shape, dtype=object)
            new[...] = fill
            dst = [slice(None)] * out.ndim
            src = [slice(None)] * out.ndim
            kept = L - max(-lo, 0) - max(-hi, 0)
            dst[dim] = slice(max(lo, 0), max(lo, 0) + kept)
            src[dim] = slice(max(-lo, 0), max(-lo, 0) + kept)
            new[tuple(dst)] = out[tuple(src)]
            out = new
        return out
    for dim, lo, hi in pairs:
        out = np.take(out, _pad_source(mode, out.shape[dim], lo, hi), axis=dim)
    return out


@register("pad", torch_fn=F.pad, tensor_args=("input",), samples=pad_samples, symbolic=pad_symbolic)
def pad_backward(grad_output, input, *, needs_input_grad, pad, mode="constant", value=None):
    """dL/dx = P^T g: constant -> pad(g, -pad); otherwise index_add of g onto each source position."""
    pairs = _pad_pairs(tuple(input.shape), pad, mode, value)
    expect = list(input.shape)
    for dim, lo, hi in pairs:
        expect[dim] += lo + hi
    if tuple(grad_output.shape) != tuple(expect):
        raise InvalidInputError(f"pad: grad_output has shape {tuple(grad_output.shape)}, expected {tuple(expect)}")
    if not needs_input_grad[0]:
        return (None,)
    if mode == "constant":
        # P^T: crop the added margins, zero-fill the cropped ones.
        return (F.pad(grad_output, tuple(-v for v in pad)),)
    g = grad_output
    for dim, lo, hi in pairs:
        L = input.shape[dim]
        src = torch.as_tensor(_pad_source(mode, L, lo, hi), dtype=torch.int64, device=g.device)
        shape = list(g.shape)
        shape[dim] = L
        # dL/dx[i] += g[j] for every j with src(j) = i
        g = torch.index_add(torch.zeros(shape, dtype=g.dtype, device=g.device), dim, src, g)
    return (g,)
