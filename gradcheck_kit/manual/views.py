"""View rules: reshape, view, view_as, reshape_as, flatten, unflatten, permute, transpose,
swapaxes, movedim, squeeze, unsqueeze, expand, expand_as, broadcast_to, contiguous, t,
pixel_shuffle, pixel_unshuffle.

Every one of them is a linear map ``y = P x`` where ``P`` is a permutation of the
elements (reshape-like ops: the identity on the row-major element order) or a
broadcast.  The backward is the adjoint ``P^T g``:

* reshape / view / view_as / reshape_as / flatten / unflatten / squeeze / unsqueeze keep the
  row-major order,
  so ``P^T g = g.reshape(x.shape)``;
* permute by ``dims``: ``y[i_dims[0], ..] = x[i_0, ..]`` so ``P^T = permute`` by the
  inverse permutation ``argsort(dims)``; transpose / swapaxes are their own inverse;
  movedim ``(source -> destination)`` is undone by ``movedim(destination -> source)``;
  ``t`` is transpose of the last two (of at most two) dims;
* expand / expand_as / broadcast_to: ``y = B x`` copies ``x`` along broadcast axes, so
  ``dL/dx = B^T g`` sums ``g`` over them (``_shapes.unbroadcast``);
* contiguous changes the memory layout only: ``dL/dx = g``;
* pixel_shuffle with factor ``r`` maps ``(C r^2, H, W) -> (C, H r, W r)`` through the
  index permutation ``y[c, h r + i, w r + j] = x[c r^2 + i r + j, h, w]``; its inverse
  (and adjoint) is pixel_unshuffle with the same ``r``, and vice versa.

Method and varargs spellings: each rule names its torch function and the
``torch.Tensor`` methods computing the same thing (``aliases``).  The rule's parameters
are the keyword names torch uses (``x.view(size=(2, 3))``, ``torch.reshape(x,
shape=(2, -1))``); a shape parameter may be a tuple, a list, a ``torch.Size`` or one
int (``x.view(6)``), so ``x.view(2, 3)`` maps to ``size=(2, 3)``.  None of the
backwards needs the shape parameter itself: the input's shape is all ``P^T`` needs, and
the parameter is used only to check ``grad_output``'s shape.

Symbolic forwards apply the same permutation to a numpy object array.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from gradcheck_kit.errors import InvalidParameterError, UnsupportedError
from gradcheck_kit.manual._sampling import Maker
from gradcheck_kit.manual._shapes import check_grad_shape, meta_output_shape, unbroadcast
from gradcheck_kit.manual.registry import Sample, register

__all__: list[str] = []


def _as_shape(value):
    """``(2, 3)``, ``[2, 3]``, ``torch.Size``, or one int -> a tuple (torch accepts all of them)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return (value,)
    return tuple(value)


def _out_shape(op, fn, input, **params):
    return meta_output_shape(op, fn, input, **params)


def _object_array(a) -> np.ndarray:
    out = np.empty(np.shape(a), dtype=object)
    out[...] = a
    return out


# -- reshape-like: P^T g = g.reshape(x.shape) ---------------------------------------------

def _reshape_like(op, fn, input, grad_output, needs_input_grad, **params):
    check_grad_shape(op, grad_output, _out_shape(op, fn, input, **params))
    if not needs_input_grad[0]:
        return (None,)
    return (grad_output.reshape(input.shape),)


def reshape_samples(device, dtype):
    mk = Maker(device, dtype)
    yield Sample((mk.randn(2, 3, 4),), {"shape": (4, 6)}, "reshape[2d]")
    yield Sample((mk.randn(2, 3, 4),), {"shape": (-1, 2)}, "reshape[-1]")
    yield Sample((mk.randn(2, 3, 4),), {"shape": [24]}, "reshape[list,flat]")
    yield Sample((mk.randn(),), {"shape": (1, 1)}, "reshape[0d->2d]")
    yield Sample((mk.randn(1, 1),), {"shape": ()}, "reshape[->0d]")
    yield Sample((mk.randn(0, 3),), {"shape": (3, 0, 1)}, "reshape[empty]")
    yield Sample((mk.noncontiguous(mk.randn(3, 4)),), {"shape": (2, 6)}, "reshape[noncontig,copy]")
    yield Sample((mk.randn(4, 3).t(),), {"shape": torch.Size([12])}, "reshape[transposed,Size]")


def reshape_symbolic(input, *, shape):
    return np.reshape(input, _as_shape(shape))


@register("reshape", torch_fn=torch.reshape, tensor_args=("input",), samples=reshape_samples,
          symbolic=reshape_symbolic, aliases=(torch.Tensor.reshape,))
def reshape_backward(grad_output, input, *, needs_input_grad, shape):
    """dL/dx = g.reshape(x.shape): reshape keeps the row-major element order."""
    return _reshape_like("reshape", torch.reshape, input, grad_output, needs_input_grad, shape=_as_shape(shape))


def _view(input, size):
    # torch.Tensor.view with a keyword size, so the rule can mirror x.view(2, 3) as size=(2, 3)
    return input.view(_as_shape(size))


_view.mirrors = torch.Tensor.view


def view_samples(device, dtype):
    mk = Maker(device, dtype)
    yield Sample((mk.randn(2, 3, 4),), {"size": (6, 4)}, "view[2d]")
    yield Sample((mk.randn(2, 3, 4),), {"size": (2, -1)}, "view[-1]")
    yield Sample((mk.randn(2, 3),), {"size": 6}, "view[int]")
    yield Sample((mk.randn(),), {"size": (1,)}, "view[0d]")
    yield Sample((mk.randn(2, 0),), {"size": (0, 5)}, "view[empty]")
    yield Sample((mk.randn(4, 6)[:, 2:4],), {"size": (4, 2, 1)}, "view[strided,compatible]")


def view_symbolic(input, *, size):
    return np.reshape(input, _as_shape(size))


@register("view", torch_fn=_view, tensor_args=("input",), samples=view_samples, symbolic=view_symbolic,
          aliases=())
def view_backward(grad_output, input, *, needs_input_grad, size):
    """dL/dx = g.reshape(x.shape) (a view keeps the row-major element order)."""
    if isinstance(size, torch.dtype):
        raise UnsupportedError("view: x.view(dtype) reinterprets bits and has no gradient rule")
    return _reshape_like("view", _view, input, grad_output, needs_input_grad, size=size)


def flatten_samples(device, dtype):
    mk = Maker(device, dtype)
    yield Sample((mk.randn(2, 3, 4),), {}, "flatten[all]")
    yield Sample((mk.randn(2, 3, 4, 2),), {"start_dim": 1}, "flatten[start1]")
    yield Sample((mk.randn(2, 3, 4, 2),), {"start_dim": 1, "end_dim": -2}, "flatten[1..-2]")
    yield Sample((mk.randn(),), {}, "flatten[0d]")
    yield Sample((mk.randn(2, 0, 3),), {"start_dim": 1}, "flatten[empty]")
    yield Sample((mk.channels_last(mk.randn(2, 3, 2, 2)),), {"start_dim": 1}, "flatten[channels_last]")


def flatten_symbolic(input, *, start_dim=0, end_dim=-1):
    return np.reshape(input, _out_shape("flatten", torch.flatten, input, start_dim=start_dim, end_dim=end_dim))


@register("flatten", torch_fn=torch.flatten, tensor_args=("input",), samples=flatten_samples,
          symbolic=flatten_symbolic, aliases=(torch.Tensor.flatten,))
def flatten_backward(grad_output, input, *, needs_input_grad, start_dim=0, end_dim=-1):
    """dL/dx = g.reshape(x.shape)."""
    return _reshape_like("flatten", torch.flatten, input, grad_output, needs_input_grad,
                         start_dim=start_dim, end_dim=end_dim)


def unflatten_samples(device, dtype):
    mk = Maker(device, dtype)
    yield Sample((mk.randn(2, 12),), {"dim": 1, "sizes": (3, 4)}, "unflatten[dim1]")
    yield Sample((mk.randn(6, 2),), {"dim": -2, "sizes": (-1, 2)}, "unflatten[-1,negdim]")
    yield Sample((mk.randn(0, 4),), {"dim": 1, "sizes": (2, 2)}, "unflatten[empty]")


def unflatten_symbolic(input, *, dim, sizes):
    return np.reshape(input, _out_shape("unflatten", torch.unflatten, input, dim=dim, sizes=sizes))


@register("unflatten", torch_fn=torch.unflatten, tensor_args=("input",), samples=unflatten_samples,
          symbolic=unflatten_symbolic, aliases=(torch.Tensor.unflatten,))
def unflatten_backward(grad_output, input, *, needs_input_grad, dim, sizes):
    """dL/dx = g.reshape(x.shape)."""
    return _reshape_like("unflatten", torch.unflatten, input, grad_output, needs_input_grad, dim=dim, sizes=sizes)


def squeeze_samples(device, dtype):
    mk = Maker(device, dtype)
    yield Sample((mk.randn(2, 1, 3, 1),), {}, "squeeze[all]")
    yield Sample((mk.randn(2, 1, 3, 1),), {"dim": 1}, "squeeze[dim]")
    yield Sample((mk.randn(2, 1, 3, 1),), {"dim": 0}, "squeeze[dim,not1]")
    yield Sample((mk.randn(2, 1, 3, 1),), {"dim": (1, -1)}, "squeeze[dimtuple]")
    yield Sample((mk.randn(),), {}, "squeeze[0d]")
    yield Sample((mk.randn(1, 0, 1),), {}, "squeeze[empty]")


def squeeze_symbolic(input, *, dim=None):
    kw = {} if dim is None else {"dim": dim}
    return np.reshape(input, _out_shape("squeeze", torch.squeeze, input, **kw))


@register("squeeze", torch_fn=torch.squeeze, tensor_args=("input",), samples=squeeze_samples,
          symbolic=squeeze_symbolic, aliases=(torch.Tensor.squeeze,))
def squeeze_backward(grad_output, input, *, needs_input_grad, dim=None):
    """dL/dx = g.reshape(x.shape): squeeze drops size-1 dims only."""
    kw = {} if dim is None else {"dim": dim}
    return _reshape_like("squeeze", torch.squeeze, input, grad_output, needs_input_grad, **kw)


def unsqueeze_samples(device, dtype):
    mk = Maker(device, dtype)
    yield Sample((mk.randn(2, 3),), {"dim": 1}, "unsqueeze[mid]")
    yield Sample((mk.randn(2, 3),), {"dim": -1}, "unsqueeze[-1]")
    yield Sample((mk.randn(),), {"dim": 0}, "unsqueeze[0d]")
    yield Sample((mk.randn(0, 2),), {"dim": 0}, "unsqueeze[empty]")


def unsqueeze_symbolic(input, *, dim):
    return np.reshape(input, _out_shape("unsqueeze", torch.unsqueeze, input, dim=dim))


@register("unsqueeze", torch_fn=torch.unsqueeze, tensor_args=("input",), samples=unsqueeze_samples,
          symbolic=unsqueeze_symbolic, aliases=(torch.Tensor.unsqueeze,))
def unsqueeze_backward(grad_output, input, *, needs_input_grad, dim):
    """dL/dx = g.reshape(x.shape)."""
    return _reshape_like("unsqueeze", torch.unsqueeze, input, grad_output, needs_input_grad, dim=dim)


def _as_other_samples(op):
    def samples(device, dtype):
        mk = Maker(device, dtype)
        yield Sample((mk.randn(2, 6), mk.randn(3, 4)), {}, f"{op}[2d]")
        yield Sample((mk.randn(4), mk.randn(2, 2, 1)), {}, f"{op}[1d->3d]")
        yield Sample((mk.randn(1, 1), torch.zeros((), dtype=torch.int64, device=device)), {}, f"{op}[->0d,int_other]")

    samples.__name__ = f"{op}_samples"
    return samples


def view_as_symbolic(input, other):
    return np.reshape(input, other.shape)


@register("view_as", torch_fn=torch.Tensor.view_as, tensor_args=("input", "other"),
          samples=_as_other_samples("view_as"), symbolic=view_as_symbolic, nondifferentiable=("other",), shape_only=("other",))
def view_as_backward(grad_output, input, other, *, needs_input_grad):
    """dL/dx = g.reshape(x.shape); ``other`` only gives the shape."""
    check_grad_shape("view_as", grad_output, _out_shape("view_as", torch.reshape, input, shape=tuple(other.shape)))
    return (grad_output.reshape(input.shape) if needs_input_grad[0] else None, None)


def reshape_as_symbolic(input, other):
    return np.reshape(input, other.shape)


@register("reshape_as", torch_fn=torch.Tensor.reshape_as, tensor_args=("input", "other"),
          samples=_as_other_samples("reshape_as"), symbolic=reshape_as_symbolic, nondifferentiable=("other",), shape_only=("other",))
def reshape_as_backward(grad_output, input, other, *, needs_input_grad):
    """dL/dx = g.reshape(x.shape); ``other`` only gives the shape."""
    check_grad_shape("reshape_as", grad_output,
                     _out_shape("reshape_as", torch.reshape, input, shape=tuple(other.shape)))
    return (grad_output.reshape(input.shape) if needs_input_grad[0] else None, None)


# -- permutations: P^T = P^{-1} -------------------------------------------------------------

def _norm_dims(op, dims, ndim):
    n = max(ndim, 1)
    try:
        out = tuple(int(d) % n if -n <= int(d) < n else None for d in dims)
    except TypeError:
        raise InvalidParameterError(f"{op}: dims must be a sequence of ints, got {dims!r}") from None
    if None in out or sorted(out) != list(range(ndim)):
        raise InvalidParameterError(f"{op}: dims {tuple(dims)!r} is not a permutation of the {ndim} dims")
    return out


def permute_samples(device, dtype):
    mk = Maker(device, dtype)
    yield Sample((mk.randn(2, 3, 4),), {"dims": (2, 0, 1)}, "permute[3d]")
    yield Sample((mk.randn(2, 3, 4, 5),), {"dims": (0, -1, 1, 2)}, "permute[neg]")
    yield Sample((mk.randn(),), {"dims": ()}, "permute[0d]")
    yield Sample((mk.randn(2, 0, 3),), {"dims": (1, 2, 0)}, "permute[empty]")
    yield Sample((mk.noncontiguous(mk.randn(3, 4)),), {"dims": [1, 0]}, "permute[noncontig,list]")


def permute_symbolic(input, *, dims):
    return np.transpose(input, _norm_dims("permute", _as_shape(dims), input.ndim))


@register("permute", torch_fn=torch.permute, tensor_args=("input",), samples=permute_samples,
          symbolic=permute_symbolic, aliases=(torch.Tensor.permute,))
def permute_backward(grad_output, input, *, needs_input_grad, dims):
    """dL/dx = g.permute(argsort(dims)): the inverse permutation."""
    dims = _norm_dims("permute", _as_shape(dims), input.dim())
    check_grad_shape("permute", grad_output, tuple(input.shape[d] for d in dims))
    if not needs_input_grad[0]:
        return (None,)
    inverse = tuple(int(i) for i in np.argsort(dims))
    return (grad_output.permute(inverse),)


def _swap_symbolic(input, a, b):
    if input.ndim == 0:
        return input
    return np.swapaxes(input, a, b)


def transpose_samples(device, dtype):
    mk = Maker(device, dtype)
    yield Sample((mk.randn(2, 3, 4),), {"dim0": 0, "dim1": 2}, "transpose[0,2]")
    yield Sample((mk.randn(2, 3),), {"dim0": -1, "dim1": -2}, "transpose[neg]")
    yield Sample((mk.randn(3, 3),), {"dim0": 1, "dim1": 1}, "transpose[same]")
    yield Sample((mk.randn(),), {"dim0": 0, "dim1": -1}, "transpose[0d]")
    yield Sample((mk.randn(0, 2),), {"dim0": 0, "dim1": 1}, "transpose[empty]")


def transpose_symbolic(input, *, dim0, dim1):
    return _swap_symbolic(input, dim0, dim1)


@register("transpose", torch_fn=torch.transpose, tensor_args=("input",), samples=transpose_samples,
          symbolic=transpose_symbolic,
          aliases=(torch.Tensor.transpose, torch.swapdims, torch.Tensor.swapdims))
def transpose_backward(grad_output, input, *, needs_input_grad, dim0, dim1):
    """dL/dx = g.transpose(dim0, dim1): a transposition is its own inverse."""
    check_grad_shape("transpose", grad_output, _out_shape("transpose", torch.transpose, input, dim0=dim0, dim1=dim1))
    if not needs_input_grad[0]:
        return (None,)
    return (grad_output.transpose(dim0, dim1),)


def swapaxes_samples(device, dtype):
    mk = Maker(device, dtype)
    yield Sample((mk.randn(2, 3, 4),), {"axis0": 2, "axis1": 1}, "swapaxes[2,1]")
    yield Sample((mk.noncontiguous(mk.randn(2, 3)),), {"axis0": 0, "axis1": -1}, "swapaxes[noncontig]")


def swapaxes_symbolic(input, *, axis0, axis1):
    return _swap_symbolic(input, axis0, axis1)


@register("swapaxes", torch_fn=torch.swapaxes, tensor_args=("input",), samples=swapaxes_samples,
          symbolic=swapaxes_symbolic, aliases=(torch.Tensor.swapaxes,))
def swapaxes_backward(grad_output, input, *, needs_input_grad, axis0, axis1):
    """dL/dx = g.swapaxes(axis0, axis1)."""
    check_grad_shape("swapaxes", grad_output, _out_shape("swapaxes", torch.swapaxes, input, axis0=axis0, axis1=axis1))
    if not needs_input_grad[0]:
        return (None,)
    return (grad_output.swapaxes(axis0, axis1),)


def movedim_samples(device, dtype):
    mk = Maker(device, dtype)
    yield Sample((mk.randn(2, 3, 4),), {"source": 0, "destination": -1}, "movedim[int]")
    yield Sample((mk.randn(2, 3, 4, 5),), {"source": (0, 1), "destination": (3, 0)}, "movedim[tuple]")
    yield Sample((mk.channels_last(mk.randn(1, 3, 2, 2)),), {"source": 1, "destination": 3},
                 "movedim[channels_last]")


def movedim_symbolic(input, *, source, destination):
    return np.moveaxis(input, source, destination)


@register("movedim", torch_fn=torch.movedim, tensor_args=("input",), samples=movedim_samples,
          symbolic=movedim_symbolic,
          aliases=(torch.Tensor.movedim, torch.moveaxis, torch.Tensor.moveaxis))
def movedim_backward(grad_output, input, *, needs_input_grad, source, destination):
    """dL/dx = g.movedim(destination, source): the inverse move."""
    check_grad_shape("movedim", grad_output,
                     _out_shape("movedim", torch.movedim, input, source=source, destination=destination))
    if not needs_input_grad[0]:
        return (None,)
    return (grad_output.movedim(destination, source),)


def t_samples(device, dtype):
    mk = Maker(device, dtype)
    yield Sample((mk.randn(2, 3),), {}, "t[2d]")
    yield Sample((mk.randn(4),), {}, "t[1d]")
    yield Sample((mk.randn(),), {}, "t[0d]")


def t_symbolic(input):
    return input.T


@register("t", torch_fn=torch.t, tensor_args=("input",), samples=t_samples, symbolic=t_symbolic,
          aliases=(torch.Tensor.t,))
def t_backward(grad_output, input, *, needs_input_grad):
    """dL/dx = g.t()."""
    check_grad_shape("t", grad_output, _out_shape("t", torch.t, input))
    if not needs_input_grad[0]:
        return (None,)
    return (grad_output.t(),)


# -- broadcasts: B^T g sums over the broadcast axes ------------------------------------------

def _broadcast_backward(op, fn, input, grad_output, needs_input_grad, *args, **params):
    check_grad_shape(op, grad_output, meta_output_shape(op, fn, input, *args, **params))
    if not needs_input_grad[0]:
        return None
    return unbroadcast(grad_output, input.shape)


def _expand(input, size):
    # torch.Tensor.expand with a keyword size (x.expand(2, 3) is size=(2, 3))
    return input.expand(_as_shape(size))


_expand.mirrors = torch.Tensor.expand


def expand_samples(device, dtype):
    mk = Maker(device, dtype)
    yield Sample((mk.randn(3, 1),), {"size": (3, 4)}, "expand[2d]")
    yield Sample((mk.randn(1, 3),), {"size": (2, 4, -1)}, "expand[new,-1]")
    yield Sample((mk.randn(),), {"size": (2, 3)}, "expand[0d]")
    yield Sample((mk.randn(1, 2),), {"size": (0, 2)}, "expand[empty]")


def expand_symbolic(input, *, size):
    return _object_array(np.broadcast_to(input, _out_shape("expand", _expand, input, size=size)))


@register("expand", torch_fn=_expand, tensor_args=("input",), samples=expand_samples, symbolic=expand_symbolic)
def expand_backward(grad_output, input, *, needs_input_grad, size):
    """dL/dx = sum of g over the expanded axes (unbroadcast)."""
    return (_broadcast_backward("expand", _expand, input, grad_output, needs_input_grad, size=size),)


def expand_as_samples(device, dtype):
    mk = Maker(device, dtype)
    yield Sample((mk.randn(3, 1), mk.randn(2, 3, 4)), {}, "expand_as[3d]")
    yield Sample((mk.randn(), mk.randn(2, 2)), {}, "expand_as[0d]")


def expand_as_symbolic(input, other):
    return _object_array(np.broadcast_to(input, other.shape))


@register("expand_as", torch_fn=torch.Tensor.expand_as, tensor_args=("input", "other"),
          samples=expand_as_samples, symbolic=expand_as_symbolic, nondifferentiable=("other",), shape_only=("other",))
def expand_as_backward(grad_output, input, other, *, needs_input_grad):
    """dL/dx = sum of g over the broadcast axes; ``other`` only gives the shape."""
    check_grad_shape("expand_as", grad_output, tuple(other.shape))
    gx = unbroadcast(grad_output, input.shape) if needs_input_grad[0] else None
    return (gx, None)


def broadcast_to_samples(device, dtype):
    mk = Maker(device, dtype)
    yield Sample((mk.randn(3, 1),), {"size": (2, 3, 4)}, "broadcast_to[3d]")
    yield Sample((mk.randn(4),), {"size": [3, -1]}, "broadcast_to[-1,list]")
    yield Sample((mk.noncontiguous(mk.randn(1, 3)),), {"size": (2, 3)}, "broadcast_to[noncontig]")


def broadcast_to_symbolic(input, *, size):
    return _object_array(np.broadcast_to(input, _out_shape("broadcast_to", torch.broadcast_to, input, size=size)))


@register("broadcast_to", torch_fn=torch.broadcast_to, tensor_args=("input",), samples=broadcast_to_samples,
          symbolic=broadcast_to_symbolic, aliases=(torch.Tensor.broadcast_to,))
def broadcast_to_backward(grad_output, input, *, needs_input_grad, size):
    """dL/dx = sum of g over the broadcast axes (unbroadcast)."""
    return (_broadcast_backward("broadcast_to", torch.broadcast_to, input, grad_output, needs_input_grad,
                                size=size),)


# -- layout only -----------------------------------------------------------------------------

def contiguous_samples(device, dtype):
    mk = Maker(device, dtype)
    yield Sample((mk.noncontiguous(mk.randn(2, 3)),), {}, "contiguous[noncontig]")
    yield Sample((mk.randn(2, 3, 2, 2),), {"memory_format": torch.channels_last}, "contiguous[channels_last]")
    yield Sample((mk.randn(),), {}, "contiguous[0d]")


def contiguous_symbolic(input, *, memory_format=torch.contiguous_format):
    return input


@register("contiguous", torch_fn=torch.Tensor.contiguous, tensor_args=("input",), samples=contiguous_samples,
          symbolic=contiguous_symbolic)
def contiguous_backward(grad_output, input, *, needs_input_grad, memory_format=torch.contiguous_format):
    """dL/dx = g: only the memory layout changes."""
    check_grad_shape("contiguous", grad_output, tuple(input.shape))
    if not needs_input_grad[0]:
        return (None,)
    return (grad_output.view_as(grad_output),)


# -- pixel shuffle ---------------------------------------------------------------------------

def _factor(op, name, r):
    if not isinstance(r, int) or isinstance(r, bool) or r < 1:
        raise InvalidParameterError(f"{op}: {name} must be a positive int, got {r!r}")
    return r


def _shuffle_np(x, r):
    """``(*, C r^2, H, W) -> (*, C, H r, W r)``: y[c, h r + i, w r + j] = x[c r^2 + i r + j, h, w]."""
    *lead, C, H, W = x.shape
    c = C // (r * r)
    y = x.reshape(*lead, c, r, r, H, W)
    n = len(lead)
    y = y.transpose(*range(n), n, n + 3, n + 1, n + 4, n + 2)
    return y.reshape(*lead, c, H * r, W * r)


def _unshuffle_np(x, r):
    """The inverse: ``(*, C, H r, W r) -> (*, C r^2, H, W)``."""
    *lead, c, Hr, Wr = x.shape
    H, W = Hr // r, Wr // r
    y = x.reshape(*lead, c, H, r, W, r)
    n = len(lead)
    y = y.transpose(*range(n), n, n + 2, n + 4, n + 1, n + 3)
    return y.reshape(*lead, c * r * r, H, W)


def pixel_shuffle_samples(device, dtype):
    mk = Maker(device, dtype)
    yield Sample((mk.randn(2, 8, 2, 3),), {"upscale_factor": 2}, "pixel_shuffle[r2]")
    yield Sample((mk.randn(9, 2, 2),), {"upscale_factor": 3}, "pixel_shuffle[r3,unbatched]")
    yield Sample((mk.randn(2, 1, 4, 2, 2),), {"upscale_factor": 2}, "pixel_shuffle[5d]")
    yield Sample((mk.randn(1, 4, 2, 2),), {"upscale_factor": 1}, "pixel_shuffle[r1]")


def pixel_shuffle_symbolic(input, *, upscale_factor):
    meta_output_shape("pixel_shuffle", torch.pixel_shuffle, input, upscale_factor)
    return _shuffle_np(input, upscale_factor)


@register("pixel_shuffle", torch_fn=torch.pixel_shuffle, tensor_args=("input",), samples=pixel_shuffle_samples,
          symbolic=pixel_shuffle_symbolic)
def pixel_shuffle_backward(grad_output, input, *, needs_input_grad, upscale_factor):
    """dL/dx = pixel_unshuffle(g, r): the inverse permutation."""
    r = _factor("pixel_shuffle", "upscale_factor", upscale_factor)
    check_grad_shape("pixel_shuffle", grad_output, meta_output_shape("pixel_shuffle", torch.pixel_shuffle, input, r))
    if not needs_input_grad[0]:
        return (None,)
    return (F.pixel_unshuffle(grad_output, r),)


def pixel_unshuffle_samples(device, dtype):
    mk = Maker(device, dtype)
    yield Sample((mk.randn(2, 2, 4, 6),), {"downscale_factor": 2}, "pixel_unshuffle[r2]")
    yield Sample((mk.randn(1, 3, 6),), {"downscale_factor": 3}, "pixel_unshuffle[r3,unbatched]")


def pixel_unshuffle_symbolic(input, *, downscale_factor):
    meta_output_shape("pixel_unshuffle", torch.pixel_unshuffle, input, downscale_factor)
    return _unshuffle_np(input, downscale_factor)


@register("pixel_unshuffle", torch_fn=torch.pixel_unshuffle, tensor_args=("input",),
          samples=pixel_unshuffle_samples, symbolic=pixel_unshuffle_symbolic)
def pixel_unshuffle_backward(grad_output, input, *, needs_input_grad, downscale_factor):
    """dL/dx = pixel_shuffle(g, r): the inverse permutation."""
    r = _factor("pixel_unshuffle", "downscale_factor", downscale_factor)
    check_grad_shape("pixel_unshuffle", grad_output,
                     meta_output_shape("pixel_unshuffle", torch.pixel_unshuffle, input, r))
    if not needs_input_grad[0]:
        return (None,)
    return (F.pixel_shuffle(grad_output, r),)
