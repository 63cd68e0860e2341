"""Convolutions: ``conv1d/2d/3d``, ``conv_transpose1d/2d/3d`` and the ``torch.nn.grad`` drop-ins.

Derivation (1-d, one group; N-d repeats it per spatial axis).  With the input
zero-padded by ``(lo, hi)``, kernel size ``K``, stride ``s`` and dilation ``d``::

    y[n, o, j] = b[o] + sum_{c, k} x_pad[n, c, j s + k d] w[o, c, k]

is bilinear in ``(x, w)`` (JAX declares it so), so each gradient is an adjoint::

    dL/dx[n, c, i] = sum_{o, j, k : j s + k d = i + lo} g[n, o, j] w[o, c, k]
                   = conv_transpose(g, w, stride=s, padding=lo, dilation=d)[n, c, i]
        The strided forward never reads the last r = (L + lo + hi - d (K - 1) - 1) mod s
        inputs; the transposed convolution gives them back (gradient 0) through
        output_padding = r  (_shapes.conv_output_padding).  With lo != hi ("same" with
        d (K - 1) odd) the transpose runs with padding min(lo, hi) on an input extended
        by the difference, which is then cropped away.

    dL/dw[o, c, k] = sum_{n, j} x_pad[n, c, k d + j s] g[n, o, j]
                   = conv(x_pad^T, g^T, stride=d, dilation=s)[c, o, k]
        Batch and channel axes swapped: N is contracted as a channel would be, the
        forward stride becomes the dilation of the "kernel" g and the forward dilation
        its stride.  Outputs past K (when the stride leaves a tail) are cropped.

    dL/db[o] = sum_{n, j} g[n, o, j]

Groups: input channel c of group i only meets output channels of group i.  For the
weight gradient the group axis moves from x's channel axis into its batch axis
(``[N, G*Cg] -> [Cg, G*N]``), which becomes the channel axis of the swapped
convolution, and that convolution runs with the same ``groups``.

Cheaper exact formulations of the same weight-gradient sum, picked per shape by
``weight_grad_formulation`` (timings in BENCHMARKS.md):

* ``"pointwise"``: K = 1 and no padding: ``dL/dw[o, c] = sum_{n, j} x[n, c, j s] g[n, o, j]``,
  one matmul (einsum) of the strided input against g.
* ``"patches"``: stride == K, dilation 1, no padding: the windows tile the input, so
  ``x[n, c, j K + k]`` is a reshape ``x[n, c, j, k]`` and
  ``dL/dw[o, c, k] = sum_{n, j} x[n, c, j, k] g[n, o, j]`` is one einsum.
* ``"shifted_gemm"``: stride 1, dilation 1, one group, at most 9 kernel taps: one batched
  GEMM per tap, ``dL/dw[:, :, k] = sum_n g[n] @ x_pad[n, :, k + j]^T``, over flat views of
  the padded input (no im2col copy).  In N-d the input is padded (plus one spare zero row)
  and flattened per channel, g is zero-padded to the padded input's extent in every spatial
  axis but the first and flattened too; tap ``k`` is then the flat offset
  ``sum_i k_i * stride_i`` of the padded layout, and g's zero padding cancels the positions
  where a flat view wraps into the next row.
* ``"swapped_conv"``: everything else.  With one input channel per group (depthwise) the
  batch joins the groups instead of the channels: ``[1, N C, *L] * [N C_out, 1, *out]``
  with ``N C`` groups, summed over N afterwards; no transposes (oneDNN's depthwise kernel).

``conv_transpose(x, w)`` is the adjoint of ``conv(., w)`` with the same stride, padding,
dilation and groups (its weight has the conv layout ``[C_in, C_out/G, K]`` read the
other way round), so::

    dL/dx = conv(g, w)           (cropped to x when output_padding >= stride)
    dL/dw = the conv weight gradient above with input g and grad_output x
    dL/db = sum of g over batch and space
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F

from gradcheck_kit.errors import InvalidParameterError
from gradcheck_kit.manual import _shapes
from gradcheck_kit.manual._sampling import Maker
from gradcheck_kit.manual.registry import Sample, register

__all__ = ["conv1d_input", "conv2d_input", "conv3d_input",
           "conv1d_weight", "conv2d_weight", "conv3d_weight", "weight_grad_formulation"]

_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
_CONV_T = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}


# ---------------------------------------------------------------------------
# Geometry: validated parameters of one convolution x -> y
# ---------------------------------------------------------------------------

@dataclass(frozen=True)
class _Geometry:
    """Stride, (low, high) padding, dilation and groups of the convolution ``x -> y``."""

    kernel: tuple[int, ...]
    stride: tuple[int, ...]
    pads: tuple[tuple[int, int], ...]
    dilation: tuple[int, ...]
    groups: int

    @property
    def dims(self) -> int:
        return len(self.kernel)

    @property
    def symmetric(self) -> bool:
        return all(lo == hi for lo, hi in self.pads)

    def out_size(self, in_spatial: Sequence[int]) -> tuple[int, ...]:
        return tuple(_shapes.conv_output_size(L, k, s, lo, hi, d) for L, k, s, (lo, hi), d
                     in zip(in_spatial, self.kernel, self.stride, self.pads, self.dilation))


def _check_groups(op: str, groups) -> int:
    if not isinstance(groups, int) or isinstance(groups, bool) or groups < 1:
        raise InvalidParameterError(f"{op}: groups must be a positive int, got {groups!r}")
    return groups


def _check_rank(op: str, name: str, shape, ranks: tuple[int, ...], layout: str) -> None:
    if len(shape) not in ranks:
        want = " or ".join(str(r) for r in ranks)
        raise InvalidParameterError(f"{op}: {name} must have {want} dimensions ({layout}), "
                                    f"got shape {tuple(shape)}")


def _parse(op: str, dims: int, kernel, stride, padding, dilation):
    """stride, (low, high) pads and dilation as tuples; errors name the op and the parameter."""
    try:
        stride = _shapes.positive_ntuple(stride, dims, "stride")
        dilation = _shapes.positive_ntuple(dilation, dims, "dilation")
        return stride, _shapes.conv_padding(padding, kernel, stride, dilation), dilation
    except InvalidParameterError as e:
        raise InvalidParameterError(f"{op}: {e}") from None


def _conv_geometry(op: str, dims: int, x_shape, w_shape, stride, padding, dilation, groups) -> _Geometry:
    """Validate a ``convNd(x, w, stride, padding, dilation, groups)`` call the way torch does."""
    sp = "x".join("k" for _ in range(dims))
    _check_rank(op, "weight", w_shape, (dims + 2,), f"C_out, C_in/groups, {sp}")
    _check_rank(op, "input", x_shape, (dims + 1, dims + 2), "[N,] C_in, spatial")
    groups = _check_groups(op, groups)
    kernel = tuple(int(k) for k in w_shape[2:])
    stride, pads, dilation = _parse(op, dims, kernel, stride, padding, dilation)
    c_in, c_out = int(x_shape[-dims - 1]), int(w_shape[0])
    if c_in % groups or c_out % groups:
        raise InvalidParameterError(f"{op}: groups={groups} must divide the input channels ({c_in}) "
                                    f"and the output channels ({c_out})")
    if int(w_shape[1]) * groups != c_in:
        raise InvalidParameterError(f"{op}: weight.shape[1] must be C_in/groups = {c_in // groups}, "
                                    f"got weight of shape {tuple(w_shape)}")
    geo = _Geometry(kernel, stride, pads, dilation, groups)
    if any(o < 1 for o in geo.out_size(x_shape[-dims:])):
        raise InvalidParameterError(f"{op}: input of spatial size {tuple(x_shape[-dims:])} padded by "
                                    f"{pads} is smaller than the dilated kernel {kernel} (dilation {dilation})")
    return geo


def _transpose_geometry(op: str, dims: int, x_shape, w_shape, stride, padding, output_padding,
                        groups, dilation) -> tuple[_Geometry, tuple[int, ...]]:
    """Validate ``conv_transposeNd``; returns the geometry of its adjoint conv (y -> x) and y's size."""
    sp = "x".join("k" for _ in range(dims))
    _check_rank(op, "weight", w_shape, (dims + 2,), f"C_in, C_out/groups, {sp}")
    _check_rank(op, "input", x_shape, (dims + 1, dims + 2), "[N,] C_in, spatial")
    groups = _check_groups(op, groups)
    if isinstance(padding, str):
        raise InvalidParameterError(f"{op}: padding must be an int or a tuple of {dims} ints "
                                    f"(torch has no string padding for transposed convolutions), got {padding!r}")
    kernel = tuple(int(k) for k in w_shape[2:])
    stride, pads, dilation = _parse(op, dims, kernel, stride, padding, dilation)
    try:
        out_pad = _shapes.ntuple(output_padding, dims, "output_padding")
    except InvalidParameterError as e:
        raise InvalidParameterError(f"{op}: {e}") from None
    if any(p < 0 or p >= max(s, d) for p, s, d in zip(out_pad, stride, dilation)):
        raise InvalidParameterError(f"{op}: output_padding must be >= 0 and smaller than stride or dilation, "
                                    f"got output_padding={output_padding!r}, stride={stride}, dilation={dilation}")
    c_in = int(x_shape[-dims - 1])
    if int(w_shape[0]) != c_in:
        raise InvalidParameterError(f"{op}: weight.shape[0] must equal the input channels ({c_in}), "
                                    f"got weight of shape {tuple(w_shape)}")
    if c_in % groups:
        raise InvalidParameterError(f"{op}: groups={groups} must divide the input channels ({c_in})")
    y_size = tuple((L - 1) * s - 2 * p + d * (k - 1) + 1 + op_
                   for L, s, (p, _), d, k, op_ in zip(x_shape[-dims:], stride, pads, dilation, kernel, out_pad))
    if any(v < 1 for v in y_size):
        raise InvalidParameterError(f"{op}: padding={padding!r} leaves an empty output {y_size}")
    return _Geometry(kernel, stride, pads, dilation, groups), y_size


def _check_grad_output(op: str, g: torch.Tensor, shape: tuple[int, ...]) -> None:
    if tuple(g.shape) != tuple(shape):
        raise InvalidParameterError(f"{op}: grad_output must have the output's shape {tuple(shape)}, "
                                    f"got {tuple(g.shape)}")


# ---------------------------------------------------------------------------
# The three adjoints, batched ([N, C, *spatial]) tensors
# ---------------------------------------------------------------------------

def _crop(t: torch.Tensor, starts: Sequence[int], sizes: Sequence[int]) -> torch.Tensor:
    """``t[:, :, a0:a0+n0, a1:a1+n1, ...]`` (differentiable narrow per spatial axis)."""
    for i, (a, n) in enumerate(zip(starts, sizes)):
        if a != 0 or n != t.shape[2 + i]:
            t = t.narrow(2 + i, a, n)
    return t


def _input_grad(geo: _Geometry, g: torch.Tensor, weight: torch.Tensor, in_spatial: Sequence[int]) -> torch.Tensor:
    """dL/dx = conv_transpose(g, w, stride, padding, output_padding, groups, dilation).

    Padding (lo, hi) runs as min(lo, hi) on an input extended by (lo - min, hi - min),
    cropped afterwards; output_padding = the tail the strided forward skipped.
    """
    pad = tuple(min(lo, hi) for lo, hi in geo.pads)
    ext = tuple((lo - p, hi - p) for (lo, hi), p in zip(geo.pads, pad))
    full = tuple(L + a + b for L, (a, b) in zip(in_spatial, ext))
    out_pad = tuple(_shapes.conv_output_padding(L, o, k, s, p, p, d) for L, o, k, s, p, d
                    in zip(full, g.shape[2:], geo.kernel, geo.stride, pad, geo.dilation))
    if geo.dims == 2 and weight.device.type == "cpu":
        # oneDNN's transposed convolution reorders an NCHW weight on every call; read channels-last it runs
        # the NHWC kernel with no reorder (seed 002's 1 -> 32 channel gradient: 16.8 -> 2.3 ms, emit.py)
        weight = weight.contiguous(memory_format=torch.channels_last)
    gx = _CONV_T[geo.dims](g, weight, None, geo.stride, pad, out_pad, geo.groups, geo.dilation)
    return _crop(gx, tuple(a for a, _ in ext), tuple(in_spatial))


# Tried for swapped_conv's shapes on the 2-core CPU (N=8, C=64, 56x56, 3x3, stride 1/2,
# groups 1/64; min of 9 runs) and measured slower, so not used: the stride phases stacked
# into the batch of a stride-1 swapped conv (polyphase), channels_last operands, one matmul
# per kernel tap, Tensor.unfold windows + einsum.
def weight_grad_formulation(geo: _Geometry) -> str:
    """Which exact formulation ``_weight_grad`` uses: pointwise, patches, shifted_gemm or swapped_conv."""
    unpadded = all(lo == 0 and hi == 0 for lo, hi in geo.pads)
    if unpadded and all(k == 1 for k in geo.kernel):
        return "pointwise"
    if unpadded and geo.stride == geo.kernel and all(d == 1 or k == 1 for d, k in zip(geo.dilation, geo.kernel)):
        return "patches"
    if (geo.groups == 1 and all(s == 1 for s in geo.stride) and all(d == 1 for d in geo.dilation)
            and math.prod(geo.kernel) <= 9):  # more taps: one GEMM each loses to swapped_conv (conv3d 3x3x3)
        return "shifted_gemm"
    return "swapped_conv"


def _weight_grad(geo: _Geometry, x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """dL/dw[o, c, k] = sum_{n, j} x_pad[n, c, k d + j s] g[n, o, j]  ->  [C_out, C_in/G, *K]."""
    if x.shape[0] == 0:  # an empty sum (torch's conv would see zero channels in the swapped form)
        return g.new_zeros((g.shape[1], x.shape[1] // geo.groups, *geo.kernel))
    return _WEIGHT_GRAD[weight_grad_formulation(geo)](geo, x, g)


_OUT, _TAP = "pqr", "uvw"  # einsum letters: output position j, kernel tap k per spatial axis


def _weight_grad_pointwise(geo: _Geometry, x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """K = 1, no padding: dL/dw[o, c] = sum_{n, j} x[n, c, j s] g[n, o, j]  (a matmul)."""
    n, c_in = x.shape[:2]
    out = g.shape[2:]
    grp, c_out = geo.groups, g.shape[1]
    xs = x[(slice(None), slice(None), *(slice(0, (o - 1) * s + 1, s) for o, s in zip(out, geo.stride)))]
    xs = xs.reshape(n, grp, c_in // grp, math.prod(out))
    gs = g.reshape(n, grp, c_out // grp, math.prod(out))
    gw = torch.einsum("ngcp,ngop->goc", xs, gs)
    return gw.reshape(c_out, c_in // grp, *geo.kernel)


def _weight_grad_patches(geo: _Geometry, x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """stride == K, dilation 1, no padding: x[n, c, j K + k] = x[n, c, j, k];
    dL/dw[o, c, k] = sum_{n, j} x[n, c, j, k] g[n, o, j]  (one einsum)."""
    n, c_in = x.shape[:2]
    out = tuple(g.shape[2:])
    dims, grp, c_out = geo.dims, geo.groups, g.shape[1]
    xs = _crop(x, (0,) * dims, tuple(o * k for o, k in zip(out, geo.kernel)))
    xs = xs.reshape(n, grp, c_in // grp, *(v for ok in zip(out, geo.kernel) for v in ok))
    gs = g.reshape(n, grp, c_out // grp, *out)
    x_sub = "ngc" + "".join(p + u for p, u in zip(_OUT[:dims], _TAP[:dims]))
    spec = f"{x_sub},ngo{_OUT[:dims]}->goc{_TAP[:dims]}"
    return torch.einsum(spec, xs, gs).reshape(c_out, c_in // grp, *geo.kernel)


def _weight_grad_shifted_gemm(geo: _Geometry, x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Stride 1, dilation 1, one group: dL/dw[:, :, k] = sum_n g[n] @ x_pad[n, :, k + j]^T, one
    batched GEMM per tap over flat views of the padded x (see the module doc)."""
    n, c = x.shape[:2]
    o = g.shape[1]
    pads = [list(p) for p in geo.pads]
    pads[0][1] += 1                       # one spare zero row: the last tap's flat view stays in bounds
    xp = F.pad(x, tuple(v for lo_hi in reversed(pads) for v in lo_hi))
    padded, out = xp.shape[2:], g.shape[2:]
    # g zero-padded to x_pad's extent in every spatial axis but the first: cancels the wrap-around
    gp = F.pad(g, tuple(v for i in reversed(range(1, geo.dims)) for v in (0, padded[i] - out[i])))
    span = out[0] * math.prod(padded[1:])
    gf, xf = gp.reshape(n, o, span), xp.reshape(n, c, -1)
    strides = [math.prod(padded[i + 1:]) for i in range(geo.dims)]
    taps = []
    for tap in itertools.product(*(range(k) for k in geo.kernel)):
        off = sum(t * s for t, s in zip(tap, strides))
        taps.append(torch.bmm(gf, xf[:, :, off:off + span].transpose(1, 2)).sum(0))    # [C_out, C_in]
    return torch.stack(taps, dim=-1).view(o, c, *geo.kernel)


def _weight_grad_swapped_conv(geo: _Geometry, x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """dL/dw = conv(x_pad^T, g^T, stride=dilation, dilation=stride, groups)^T, cropped to K.

    x [N, G*Cg, *L] -> [Cg, G*N, *L] (group axis into the batch, batch into channels),
    g [N, C_out, *out] -> [C_out, N, *out]; the result [Cg, C_out, *K'] has K' >= K.
    """
    n, c_in = x.shape[:2]
    spatial = tuple(x.shape[2:])
    grp = geo.groups
    if grp > 1 and c_in == grp:
        # one input channel per group: batch and channels together are the N C groups,
        # [1, N C, *L] * [N C_out, 1, *out] -> [1, N C_out, *K'], summed over N (no transposes)
        return _weight_grad_batch_groups(geo, x, g)
    xs = x.reshape(n, grp, c_in // grp, *spatial).transpose(0, 2).reshape(c_in // grp, grp * n, *spatial)
    if geo.symmetric:
        pad = tuple(lo for lo, _ in geo.pads)
    else:  # asymmetric ("same" with odd d (K - 1)): pad explicitly
        xs = F.pad(xs, tuple(v for lo_hi in reversed(geo.pads) for v in lo_hi))
        pad = (0,) * geo.dims
    gw = _CONV[geo.dims](xs, g.transpose(0, 1), None, geo.dilation, pad, geo.stride, grp)
    return _crop(gw, (0,) * geo.dims, geo.kernel).transpose(0, 1)


_WEIGHT_GRAD = {"pointwise": _weight_grad_pointwise, "patches": _weight_grad_patches,
                "shifted_gemm": _weight_grad_shifted_gemm, "swapped_conv": _weight_grad_swapped_conv}


def _weight_grad_batch_groups(geo: _Geometry, x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Depthwise (C_in == groups, multiplier m = C_out / C_in): dL/dw[o, 0, k] =
    sum_n conv(x[n, o // m], g[n, o]) with stride <-> dilation, as one grouped convolution."""
    n, c_in = x.shape[:2]
    c_out = g.shape[1]
    xs = x.reshape(1, n * c_in, *x.shape[2:])
    if geo.symmetric:
        pad = tuple(lo for lo, _ in geo.pads)
    else:
        xs = F.pad(xs, tuple(v for lo_hi in reversed(geo.pads) for v in lo_hi))
        pad = (0,) * geo.dims
    gs = g.reshape(n * c_out, 1, *g.shape[2:])
    gw = _CONV[geo.dims](xs, gs, None, geo.dilation, pad, geo.stride, n * c_in)    # [1, N C_out, *K']
    gw = gw.reshape(n, c_out, 1, *gw.shape[2:]).sum(0)
    return _crop(gw, (0,) * geo.dims, geo.kernel)


def _bias_grad(g: torch.Tensor) -> torch.Tensor:
    """dL/db[o] = sum_{n, j} g[n, o, j]."""
    return g.sum(dim=(0, *range(2, g.dim())))


def _batched(t: torch.Tensor, batched: bool) -> torch.Tensor:
    return t if batched else t.unsqueeze(0)


def _unbatched(t: torch.Tensor | None, batched: bool) -> torch.Tensor | None:
    return t if t is None or batched else t.squeeze(0)


def _needs(needs_input_grad, n: int = 3) -> tuple[bool, ...]:
    return tuple(needs_input_grad) + (False,) * (n - len(needs_input_grad))


# ---------------------------------------------------------------------------
# Rules
# ---------------------------------------------------------------------------

def _symbolic(fn_name: str, dims: int):
    """Lazy handle on the sympy forward in ``manual._symbolic`` (written with derive)."""

    def sym(*arrays, **params):
        from gradcheck_kit.manual import _symbolic as symbolic_module

        return getattr(symbolic_module, fn_name)(*arrays, dims=dims, **params)

    sym.__name__ = f"{fn_name}{dims}d_symbolic"
    return sym


def _conv_backward(dims, grad_output, input, weight, bias=None, *, needs_input_grad,
                   stride=1, padding=0, dilation=1, groups=1):
    op = f"conv{dims}d"
    geo = _conv_geometry(op, dims, input.shape, weight.shape, stride, padding, dilation, groups)
    batched = input.dim() == dims + 2
    x, g = _batched(input, batched), _batched(grad_output, batched)
    _check_grad_output(op, g, (x.shape[0], weight.shape[0], *geo.out_size(x.shape[2:])))
    need_x, need_w, need_b = _needs(needs_input_grad)
    gx = _unbatched(_input_grad(geo, g, weight, x.shape[2:]), batched) if need_x else None
    gw = _weight_grad(geo, x, g) if need_w else None
    gb = _bias_grad(g) if need_b and bias is not None else None
    return gx, gw, gb


def _conv_transpose_backward(dims, grad_output, input, weight, bias=None, *, needs_input_grad,
                             stride=1, padding=0, output_padding=0, groups=1, dilation=1):
    op = f"conv_transpose{dims}d"
    geo, y_size = _transpose_geometry(op, dims, input.shape, weight.shape, stride, padding,
                                      output_padding, groups, dilation)
    batched = input.dim() == dims + 2
    x, g = _batched(input, batched), _batched(grad_output, batched)
    _check_grad_output(op, g, (x.shape[0], weight.shape[1] * geo.groups, *y_size))
    need_x, need_w, need_b = _needs(needs_input_grad)
    gx = gw = gb = None
    if need_x:  # dL/dx = conv(g, w), cropped when output_padding >= stride made it longer
        gx = _CONV[dims](g, weight, None, geo.stride, tuple(lo for lo, _ in geo.pads), geo.dilation, geo.groups)
        gx = _unbatched(_crop(gx, (0,) * dims, tuple(x.shape[2:])), batched)
    if need_w:  # dL/dw = conv weight gradient with input g and grad_output x
        gw = _weight_grad(geo, g, x)
    if need_b and bias is not None:
        gb = _bias_grad(g)
    return gx, gw, gb


def _make_conv_rule(dims: int):
    torch_fn = _CONV[dims]

    def backward(grad_output, input, weight, bias=None, *, needs_input_grad,
                 stride=1, padding=0, dilation=1, groups=1):
        return _conv_backward(dims, grad_output, input, weight, bias, needs_input_grad=needs_input_grad,
                              stride=stride, padding=padding, dilation=dilation, groups=groups)

    backward.__name__ = f"conv{dims}d_backward"
    backward.__doc__ = (f"dL/dx = conv_transpose{dims}d(g, w, output_padding), dL/dw = conv{dims}d of x^T "
                        f"with g^T as kernel (stride <-> dilation), dL/db = sum g.")
    register(f"conv{dims}d", torch_fn=torch_fn, tensor_args=("input", "weight", "bias"),
             samples=_conv_samples(dims, _CONV_TABLES[dims]),
             symbolic=_symbolic("conv", dims))(backward)
    return backward


def _make_conv_transpose_rule(dims: int):
    torch_fn = _CONV_T[dims]

    def backward(grad_output, input, weight, bias=None, *, needs_input_grad,
                 stride=1, padding=0, output_padding=0, groups=1, dilation=1):
        return _conv_transpose_backward(dims, grad_output, input, weight, bias,
                                        needs_input_grad=needs_input_grad, stride=stride, padding=padding,
                                        output_padding=output_padding, groups=groups, dilation=dilation)

    backward.__name__ = f"conv_transpose{dims}d_backward"
    backward.__doc__ = (f"dL/dx = conv{dims}d(g, w), dL/dw = the conv{dims}d weight gradient with the roles "
                        f"of x and g exchanged, dL/db = sum g.")
    register(f"conv_transpose{dims}d", torch_fn=torch_fn, tensor_args=("input", "weight", "bias"),
             samples=_conv_transpose_samples(dims, _CONV_T_TABLES[dims]),
             symbolic=_symbolic("conv_transpose", dims))(backward)
    return backward


# ---------------------------------------------------------------------------
# torch.nn.grad drop-ins (same signatures; share the rules' code)
# ---------------------------------------------------------------------------

def _conv_input(dims, input_size, weight, grad_output, stride, padding, dilation, groups):
    op = f"conv{dims}d_input"
    input_size = tuple(int(s) for s in input_size)
    geo = _conv_geometry(op, dims, input_size, weight.shape, stride, padding, dilation, groups)
    batched = len(input_size) == dims + 2
    g = _batched(grad_output, batched)
    n = input_size[0] if batched else 1
    _check_grad_output(op, g, (n, weight.shape[0], *geo.out_size(input_size[-dims:])))
    return _unbatched(_input_grad(geo, g, weight, input_size[-dims:]), batched)


def _conv_weight(dims, input, weight_size, grad_output, stride, padding, dilation, groups):
    op = f"conv{dims}d_weight"
    weight_size = tuple(int(s) for s in weight_size)
    geo = _conv_geometry(op, dims, input.shape, weight_size, stride, padding, dilation, groups)
    batched = input.dim() == dims + 2
    x, g = _batched(input, batched), _batched(grad_output, batched)
    _check_grad_output(op, g, (x.shape[0], weight_size[0], *geo.out_size(x.shape[2:])))
    return _weight_grad(geo, x, g)


def conv1d_input(input_size, weight, grad_output, stride=1, padding=0, dilation=1, groups=1):
    """Gradient of ``conv1d`` wrt its input, as ``torch.nn.grad.conv1d_input``."""
    return _conv_input(1, input_size, weight, grad_output, stride, padding, dilation, groups)


def conv2d_input(input_size, weight, grad_output, stride=1, padding=0, dilation=1, groups=1):
    """Gradient of ``conv2d`` wrt its input, as ``torch.nn.grad.conv2d_input``."""
    return _conv_input(2, input_size, weight, grad_output, stride, padding, dilation, groups)


def conv3d_input(input_size, weight, grad_output, stride=1, padding=0, dilation=1, groups=1):
    """Gradient of ``conv3d`` wrt its input, as ``torch.nn.grad.conv3d_input``."""
    return _conv_input(3, input_size, weight, grad_output, stride, padding, dilation, groups)


def conv1d_weight(input, weight_size, grad_output, stride=1, padding=0, dilation=1, groups=1):
    """Gradient of ``conv1d`` wrt its weight, as ``torch.nn.grad.conv1d_weight``."""
    return _conv_weight(1, input, weight_size, grad_output, stride, padding, dilation, groups)


def conv2d_weight(input, weight_size, grad_output, stride=1, padding=0, dilation=1, groups=1):
    """Gradient of ``conv2d`` wrt its weight, as ``torch.nn.grad.conv2d_weight``."""
    return _conv_weight(2, input, weight_size, grad_output, stride, padding, dilation, groups)


def conv3d_weight(input, weight_size, grad_output, stride=1, padding=0, dilation=1, groups=1):
    """Gradient of ``conv3d`` wrt its weight, as ``torch.nn.grad.conv3d_weight``."""
    return _conv_weight(3, input, weight_size, grad_output, stride, padding, dilation, groups)


# ---------------------------------------------------------------------------
# Samples: (name, input shape, weight shape, bias, params, layout)
#   layout: None | "nc" (non-contiguous input) | "cl" (channels_last input and weight)
#   "op<r>" in a name: the strided forward skips r trailing inputs (output padding r).
# ---------------------------------------------------------------------------

_CONV_TABLES = {
    1: [
        ("s1,p0", (2, 2, 7), (3, 2, 3), True, {}, None),
        ("s2,p1,op1", (2, 2, 8), (3, 2, 3), True, dict(stride=2, padding=1), None),
        ("s2,p1,op0", (2, 2, 7), (3, 2, 3), False, dict(stride=2, padding=1), None),
        ("s3,p2,k4,op2", (1, 2, 11), (2, 2, 4), True, dict(stride=3, padding=2), None),
        ("s3,p(1,),op2", (2, 1, 9), (2, 1, 3), True, dict(stride=(3,), padding=(1,)), None),
        ("k5,s2,p2", (2, 2, 9), (2, 2, 5), True, dict(stride=2, padding=2), None),
        ("same,odd", (2, 2, 6), (3, 2, 3), True, dict(padding="same"), None),
        ("same,even", (2, 2, 6), (3, 2, 4), True, dict(padding="same"), None),
        ("same,even,d3", (2, 1, 7), (2, 1, 2), False, dict(padding="same", dilation=3), None),
        ("same,odd,d2", (1, 2, 7), (2, 2, 3), True, dict(padding="same", dilation=2), None),
        ("valid", (2, 2, 6), (2, 2, 4), True, dict(padding="valid"), None),
        ("d2,p2", (2, 2, 8), (3, 2, 3), True, dict(dilation=2, padding=2), None),
        ("s2,p1,d2,g2,odd", (2, 4, 10), (4, 2, 3), True, dict(stride=2, padding=1, dilation=2, groups=2), None),
        ("depthwise,m2", (2, 3, 7), (6, 1, 3), True, dict(groups=3, padding=1), None),
        ("unbatched,s2,p1", (2, 7), (3, 2, 3), True, dict(stride=2, padding=1), None),
        ("noncontig", (2, 2, 7), (3, 2, 3), True, dict(padding=1), "nc"),
        ("patch,k3s3", (2, 2, 9), (3, 2, 3), True, dict(stride=3), None),
        ("patch,k2s2,op1,g2", (2, 4, 7), (4, 2, 2), False, dict(stride=2, groups=2), None),
        ("k1", (2, 3, 5), (4, 3, 1), True, {}, None),
        ("k1,s2,op1,g3", (2, 3, 6), (3, 1, 1), True, dict(stride=2, groups=3), None),
    ],
    2: [
        ("s1,p0", (2, 2, 5, 6), (3, 2, 3, 3), True, {}, None),
        ("s2,p1,op1", (2, 2, 6, 6), (3, 2, 3, 3), True, dict(stride=2, padding=1), None),
        ("s2,p1,op0", (1, 2, 5, 7), (2, 2, 3, 3), False, dict(stride=2, padding=1), None),
        ("s(2,1),p(1,0)", (2, 2, 6, 5), (2, 2, 3, 2), True, dict(stride=(2, 1), padding=(1, 0)), None),
        ("k4,s2,p2,op1", (1, 2, 7, 6), (2, 2, 4, 4), True, dict(stride=2, padding=2), None),
        ("same,odd", (2, 2, 5, 5), (2, 2, 3, 3), True, dict(padding="same"), None),
        ("same,even", (1, 2, 5, 6), (3, 2, 2, 4), True, dict(padding="same"), None),
        ("same,even,d(1,3)", (1, 2, 5, 7), (2, 2, 4, 2), False, dict(padding="same", dilation=(1, 3)), None),
        ("same,odd,d2", (1, 2, 6, 6), (2, 2, 3, 3), True, dict(padding="same", dilation=2), None),
        ("valid", (2, 2, 5, 6), (2, 2, 2, 3), True, dict(padding="valid"), None),
        ("d2,p2", (1, 2, 7, 7), (2, 2, 3, 3), True, dict(dilation=2, padding=2), None),
        ("s2,p1,d2,g2,odd", (2, 4, 8, 7), (4, 2, 3, 3), True, dict(stride=2, padding=1, dilation=2, groups=2), None),
        ("depthwise,m2", (1, 3, 5, 5), (6, 1, 3, 3), True, dict(groups=3, padding=1), None),
        ("g2,nobias", (2, 4, 5, 5), (2, 2, 3, 3), False, dict(groups=2), None),
        ("unbatched,s2,p1", (2, 6, 5), (3, 2, 3, 3), True, dict(stride=2, padding=1), None),
        ("noncontig,s2", (2, 2, 6, 5), (3, 2, 3, 3), True, dict(stride=2, padding=1), "nc"),
        ("channels_last,s2", (2, 3, 6, 6), (4, 3, 3, 3), True, dict(stride=2, padding=1), "cl"),
        ("channels_last,depthwise", (1, 2, 5, 5), (4, 1, 3, 3), True, dict(groups=2, padding=1), "cl"),
        ("patch,k2s2", (2, 2, 6, 4), (3, 2, 2, 2), True, dict(stride=2), None),
        ("patch,k(3,2),op", (1, 2, 7, 5), (2, 2, 3, 2), False, dict(stride=(3, 2)), None),
        ("patch,k2s2,g2,cl", (1, 4, 4, 4), (2, 2, 2, 2), True, dict(stride=2, groups=2), "cl"),
        ("k1", (2, 3, 4, 4), (4, 3, 1, 1), True, {}, None),
        ("k1,s2,op1", (2, 3, 5, 4), (2, 3, 1, 1), False, dict(stride=2), None),
    ],
    3: [
        ("s1,p0", (1, 2, 3, 4, 4), (2, 2, 2, 2, 2), True, {}, None),
        ("s2,p1,op1", (1, 2, 4, 4, 3), (2, 2, 3, 3, 3), True, dict(stride=2, padding=1), None),
        ("s(1,2,2),p(0,1,1)", (1, 1, 3, 4, 5), (2, 1, 2, 3, 3), False, dict(stride=(1, 2, 2), padding=(0, 1, 1)), None),
        ("same,even", (1, 1, 3, 4, 4), (2, 1, 2, 2, 3), True, dict(padding="same"), None),
        ("valid,d2", (1, 2, 5, 5, 4), (1, 2, 2, 2, 2), True, dict(padding="valid", dilation=2), None),
        ("s2,p1,d2,g2,odd", (1, 4, 5, 4, 4), (2, 2, 2, 2, 2), True, dict(stride=2, padding=1, dilation=2, groups=2), None),
        ("depthwise,m2", (1, 2, 3, 3, 3), (4, 1, 2, 2, 2), True, dict(groups=2, padding=1), None),
        ("unbatched", (2, 3, 3, 4), (2, 2, 2, 2, 2), True, dict(padding=(1, 0, 1)), None),
        ("noncontig", (1, 2, 3, 3, 4), (2, 2, 2, 2, 2), True, {}, "nc"),
        ("channels_last_3d,s2", (2, 2, 4, 4, 4), (2, 2, 2, 2, 2), True, dict(stride=2, padding=1), "cl"),
        ("patch,k2s2,op1", (2, 2, 4, 5, 4), (2, 2, 2, 2, 2), True, dict(stride=2), None),
        ("k1,s2", (2, 2, 3, 3, 3), (3, 2, 1, 1, 1), True, dict(stride=2), None),
    ],
}

_CONV_T_TABLES = {
    1: [
        ("s1", (2, 2, 5), (2, 3, 3), True, {}, None),
        ("s2,p1,op1", (2, 2, 4), (2, 3, 3), True, dict(stride=2, padding=1, output_padding=1), None),
        ("s3,p2,op2", (1, 2, 4), (2, 2, 4), False, dict(stride=3, padding=2, output_padding=2), None),
        ("d2,op1>s", (2, 2, 4), (2, 2, 3), True, dict(dilation=2, output_padding=1), None),
        ("s2,d3,op2,g2", (2, 4, 3), (4, 1, 2), True, dict(stride=2, dilation=3, output_padding=2, groups=2), None),
        ("depthwise,m2", (2, 3, 4), (3, 2, 3), True, dict(groups=3, padding=1), None),
        ("unbatched,s2", (2, 4), (2, 3, 3), True, dict(stride=2, padding=(1,)), None),
        ("noncontig", (2, 2, 4), (2, 3, 3), True, dict(stride=2), "nc"),
        ("patch,k2s2,op1", (2, 2, 3), (2, 3, 2), True, dict(stride=2, output_padding=1), None),
        ("k1,s2", (2, 3, 4), (3, 2, 1), True, dict(stride=2), None),
    ],
    2: [
        ("s1", (2, 2, 3, 4), (2, 3, 3, 3), True, {}, None),
        ("s2,p1,op1", (1, 2, 3, 4), (2, 2, 3, 3), True, dict(stride=2, padding=1, output_padding=1), None),
        ("s(2,3),p(1,0),op(1,2)", (1, 2, 3, 3), (2, 2, 3, 4), False,
         dict(stride=(2, 3), padding=(1, 0), output_padding=(1, 2)), None),
        ("d2,op1>s", (1, 2, 3, 3), (2, 2, 2, 3), True, dict(dilation=2, output_padding=1), None),
        ("s2,p1,d2,g2", (2, 4, 3, 3), (4, 1, 3, 3), True, dict(stride=2, padding=1, dilation=2, groups=2), None),
        ("depthwise,m2", (1, 2, 3, 4), (2, 2, 3, 3), True, dict(groups=2, padding=1), None),
        ("unbatched", (2, 3, 3), (2, 2, 2, 2), True, dict(stride=2), None),
        ("noncontig", (1, 2, 3, 4), (2, 2, 3, 3), True, dict(stride=2, padding=1), "nc"),
        ("channels_last", (2, 2, 3, 3), (2, 3, 3, 3), True, dict(stride=2, padding=1, output_padding=1), "cl"),
        ("patch,k2s2", (2, 2, 3, 3), (2, 2, 2, 2), True, dict(stride=2), None),
        ("k1", (2, 3, 3, 3), (3, 2, 1, 1), False, {}, None),
    ],
    3: [
        ("s1", (1, 2, 2, 3, 3), (2, 2, 2, 2, 2), True, {}, None),
        ("s2,p1,op1", (1, 2, 2, 2, 3), (2, 2, 3, 3, 3), True, dict(stride=2, padding=1, output_padding=1), None),
        ("s2,d2,g2", (1, 4, 2, 2, 2), (4, 1, 2, 2, 2), False, dict(stride=2, dilation=2, groups=2), None),
        ("unbatched", (2, 2, 2, 3), (2, 2, 2, 2, 2), True, dict(stride=2, output_padding=(0, 1, 1)), None),
        ("channels_last_3d", (1, 2, 2, 3, 2), (2, 2, 2, 2, 2), True, dict(stride=2, padding=1), "cl"),
        ("patch,k2s2", (1, 2, 2, 2, 2), (2, 2, 2, 2, 2), True, dict(stride=2), None),
        ("k1,s2,op1", (1, 2, 2, 2, 2), (2, 2, 1, 1, 1), False, dict(stride=2, output_padding=1), None),
    ],
}


def _layout(mk: Maker, t: torch.Tensor, layout: str | None) -> torch.Tensor:
    if layout == "nc":
        return mk.noncontiguous(t)
    if layout == "cl" and t.dim() in (4, 5):
        return mk.channels_last(t)
    return t


def _conv_samples(dims: int, table):
    def samples(device, dtype):
        mk = Maker(device, dtype)
        for name, x_shape, w_shape, bias, params, layout in table:
            x = _layout(mk, mk.randn(*x_shape), layout)
            w = mk.randn(*w_shape, scale=0.5)
            if layout == "cl":
                w = _layout(mk, w, layout)
            b = mk.randn(w_shape[0]) if bias else None
            yield Sample((x, w, b), dict(params), f"conv{dims}d[{name}]")

    samples.__name__ = f"conv{dims}d_samples"
    return samples


def _conv_transpose_samples(dims: int, table):
    def samples(device, dtype):
        mk = Maker(device, dtype)
        for name, x_shape, w_shape, bias, params, layout in table:
            x = _layout(mk, mk.randn(*x_shape), layout)
            w = mk.randn(*w_shape, scale=0.5)
            if layout == "cl":
                w = _layout(mk, w, layout)
            b = mk.randn(w_shape[1] * params.get("groups", 1)) if bias else None
            yield Sample((x, w, b), dict(params), f"conv_transpose{dims}d[{name}]")

    samples.__name__ = f"conv_transpose{dims}d_samples"
    return samples


conv1d_backward = _make_conv_rule(1)
conv2d_backward = _make_conv_rule(2)
conv3d_backward = _make_conv_rule(3)
conv_transpose1d_backward = _make_conv_transpose_rule(1)
conv_transpose2d_backward = _make_conv_transpose_rule(2)
conv_transpose3d_backward = _make_conv_transpose_rule(3)
