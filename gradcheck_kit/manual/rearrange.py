"""Rearranging rules: clone, flip, fliplr, flipud, roll, rot90, repeat, tile, repeat_interleave,
the transpose properties (``x.T``, ``x.mT``, ``x.H``, ``x.mH``, ``adjoint``), tril, triu, diagonal,
diag, diag_embed, trace, and the dtype casts ``to``, ``double``, ``type_as``.

Every one is linear, ``y = A x``, so the backward is the adjoint ``dL/dx = A^T g``:

* clone, and a cast to another floating dtype, are the identity: ``A^T g = g`` (a cast's
  gradient is cast back to the input's dtype, as torch's ``_to_copy_backward`` does);
* a permutation of the elements has ``A^T = A^{-1}``: flip by ``dims`` is its own inverse
  (fliplr, flipud too), roll by ``s`` is undone by roll by ``-s``, rot90 by ``k`` by rot90
  by ``-k`` in the same plane, and the transposes ``T``, ``mT``, ``H``, ``mH``, ``adjoint``
  are their own inverses (for complex inputs ``H``/``mH`` conjugate: the adjoint of
  ``conj`` is ``conj``);
* a copy ``y[t, i] = x[i]`` (repeat, tile: tiles ``t`` along each dim; repeat_interleave:
  ``y[j] = x[seg(j)]``) has ``A^T g`` summing ``g`` over the copies: over the tile axes
  after ``g.reshape(r_0, s_0, r_1, s_1, ...)``, and over each segment for repeat_interleave
  (``g.reshape(n, r).sum(1)`` for an int ``r``, ``index_add`` for per-element repeats);
* a mask ``y = M * x`` (tril, triu) is self-adjoint: ``A^T g = M * g``;
* an extraction ``y = x[diag]`` (diagonal, diag of a matrix, trace = sum of the diagonal)
  has ``A^T g`` scattering ``g`` back onto the diagonal of zeros (``diagonal_scatter``; for
  trace ``g * eye``); the embedding diag_embed / diag of a vector is the transpose of
  that: ``A^T g = g.diagonal(offset, dim1, dim2)``.

Symbolic forwards apply the same maps to numpy object arrays.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from gradcheck_kit.errors import InvalidParameterError, UnsupportedError
from gradcheck_kit.manual._sampling import Maker
from gradcheck_kit.manual._shapes import check_grad_shape, meta_output_shape
from gradcheck_kit.manual.registry import Sample, named_call, register

__all__: list[str] = []


def _ints(op, name, value) -> tuple[int, ...]:
    """One int, or a sequence of ints (tuple, list, ``torch.Size``) -> a tuple of ints."""
    if isinstance(value, int) and not isinstance(value, bool):
        return (value,)
    try:
        out = tuple(value)
    except TypeError:
        raise InvalidParameterError(f"{op}: {name} must be an int or a sequence of ints, got {value!r}") from None
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in out):
        raise InvalidParameterError(f"{op}: {name} must be an int or a sequence of ints, got {value!r}")
    return out


def _object_array(a) -> np.ndarray:
    out = np.empty(np.shape(a), dtype=object)
    out[...] = a
    return out


def _wants(op, grad_output, shape, needs_input_grad) -> bool:
    check_grad_shape(op, grad_output, shape)
    return bool(needs_input_grad[0])


# -- clone: A = I ----------------------------------------------------------------------------

def clone_samples(device, dtype):
    mk = Maker(device, dtype)
    yield Sample((mk.randn(2, 3),), {}, "clone[2d]")
    yield Sample((mk.randn(),), {}, "clone[0d]")
    yield Sample((mk.randn(0, 3),), {}, "clone[empty]")
    yield Sample((mk.noncontiguous(mk.randn(3, 4)),), {}, "clone[noncontig]")
    yield Sample((mk.channels_last(mk.randn(2, 3, 2, 2)),), {"memory_format": torch.preserve_format},
                 "clone[channels_last,preserve]")
    yield Sample((mk.randn(2, 3, 2, 2),), {"memory_format": torch.channels_last}, "clone[to_channels_last]")
    yield Sample((mk.channels_last(mk.randn(1, 2, 2, 3)),), {"memory_format": torch.contiguous_format},
                 "clone[channels_last->contiguous]")


def clone_symbolic(input, *, memory_format=torch.preserve_format):
    return _object_array(input)


@register("clone", torch_fn=torch.clone, tensor_args=("input",), samples=clone_samples, symbolic=clone_symbolic,
          aliases=(torch.Tensor.clone,))
def clone_backward(grad_output, input, *, needs_input_grad, memory_format=torch.preserve_format):
    """dL/dx = g: a copy is the identity map (the memory format changes the layout only)."""
    if not _wants("clone", grad_output, tuple(input.shape), needs_input_grad):
        return (None,)
    return (grad_output.view_as(grad_output),)


# -- flips: A^T = A^{-1} = A -------------------------------------------------------------------

def flip_samples(device, dtype):
    mk = Maker(device, dtype)
    yield Sample((mk.randn(2, 3, 4),), {"dims": (0, 2)}, "flip[0,2]")
    yield Sample((mk.randn(2, 3),), {"dims": [-1]}, "flip[neg,list]")
    yield Sample((mk.randn(2, 3),), {"dims": ()}, "flip[nodims]")
    yield Sample((mk.randn(),), {"dims": (0,)}, "flip[0d]")
    yield Sample((mk.randn(0, 3),), {"dims": (0, 1)}, "flip[empty]")
    yield Sample((mk.noncontiguous(mk.randn(3, 4)),), {"dims": (1,)}, "flip[noncontig]")
    yield Sample((mk.channels_last(mk.randn(2, 3, 2, 2)),), {"dims": (1, 3)}, "flip[channels_last]")


def flip_symbolic(input, *, dims):
    dims = _ints("flip", "dims", dims)
    if input.ndim == 0 or not dims:
        return _object_array(input)
    return _object_array(np.flip(input, dims))


@register("flip", torch_fn=torch.flip, tensor_args=("input",), samples=flip_samples, symbolic=flip_symbolic,
          aliases=(torch.Tensor.flip,))
def flip_backward(grad_output, input, *, needs_input_grad, dims):
    """dL/dx = g.flip(dims): a flip is its own inverse and a permutation, so its own adjoint."""
    dims = _ints("flip", "dims", dims)
    if not _wants("flip", grad_output, meta_output_shape("flip", torch.flip, input, dims), needs_input_grad):
        return (None,)
    return (grad_output.flip(dims),)


def fliplr_samples(device, dtype):
    mk = Maker(device, dtype)
    yield Sample((mk.randn(2, 3),), {}, "fliplr[2d]")
    yield Sample((mk.randn(2, 3, 4),), {}, "fliplr[3d]")
    yield Sample((mk.randn(0, 2),), {}, "fliplr[empty]")
    yield Sample((mk.noncontiguous(mk.randn(3, 4)),), {}, "fliplr[noncontig]")


def fliplr_symbolic(input):
    meta_output_shape("fliplr", torch.fliplr, input)
    return _object_array(np.flip(input, 1))


@register("fliplr", torch_fn=torch.fliplr, tensor_args=("input",), samples=fliplr_samples,
          symbolic=fliplr_symbolic, aliases=(torch.Tensor.fliplr,))
def fliplr_backward(grad_output, input, *, needs_input_grad):
    """dL/dx = fliplr(g) (dim 1 reversed twice is the identity)."""
    if not _wants("fliplr", grad_output, meta_output_shape("fliplr", torch.fliplr, input), needs_input_grad):
        return (None,)
    return (grad_output.fliplr(),)


def flipud_samples(device, dtype):
    mk = Maker(device, dtype)
    yield Sample((mk.randn(3),), {}, "flipud[1d]")
    yield Sample((mk.randn(2, 3, 4),), {}, "flipud[3d]")
    yield Sample((mk.randn(2, 0),), {}, "flipud[empty]")


def flipud_symbolic(input):
    meta_output_shape("flipud", torch.flipud, input)
    return _object_array(np.flip(input, 0))


@register("flipud", torch_fn=torch.flipud, tensor_args=("input",), samples=flipud_samples,
          symbolic=flipud_symbolic, aliases=(torch.Tensor.flipud,))
def flipud_backward(grad_output, input, *, needs_input_grad):
    """dL/dx = flipud(g) (dim 0 reversed twice is the identity)."""
    if not _wants("flipud", grad_output, meta_output_shape("flipud", torch.flipud, input), needs_input_grad):
        return (None,)
    return (grad_output.flipud(),)


# -- roll: A^T = roll by -shifts ------------------------------------------------------------------

def _roll_params(input, shifts, dims):
    shifts = _ints("roll", "shifts", shifts)
    dims = () if dims is None else _ints("roll", "dims", dims)
    meta_output_shape("roll", torch.roll, input, shifts, dims)
    return shifts, dims


def roll_samples(device, dtype):
    mk = Maker(device, dtype)
    yield Sample((mk.randn(3, 4),), {"shifts": 1, "dims": 0}, "roll[int]")
    yield Sample((mk.randn(2, 3, 4),), {"shifts": (1, -5), "dims": (2, -3)}, "roll[tuple,neg]")
    yield Sample((mk.randn(3, 4),), {"shifts": 5}, "roll[flat]")
    yield Sample((mk.randn(3, 4),), {"shifts": [-2], "dims": None}, "roll[flat,list,None]")
    yield Sample((mk.randn(),), {"shifts": 1}, "roll[0d]")
    yield Sample((mk.randn(0, 3),), {"shifts": 2, "dims": 1}, "roll[empty]")
    yield Sample((mk.noncontiguous(mk.randn(3, 4)),), {"shifts": 3, "dims": -1}, "roll[noncontig]")
    yield Sample((mk.channels_last(mk.randn(1, 3, 2, 2)),), {"shifts": (1, 1), "dims": (1, 2)},
                 "roll[channels_last]")


def roll_symbolic(input, *, shifts, dims=None):
    shifts, dims = _roll_params(input, shifts, dims)
    if input.ndim == 0:
        return _object_array(input)
    return _object_array(np.roll(input, shifts, dims or None))


@register("roll", torch_fn=torch.roll, tensor_args=("input",), samples=roll_samples, symbolic=roll_symbolic,
          aliases=(torch.Tensor.roll,))
def roll_backward(grad_output, input, *, needs_input_grad, shifts, dims=None):
    """dL/dx = g.roll(-shifts, dims): y[i + s] = x[i] so x's gradient at i is g[i + s]
    (dims None: the same on the flattened tensor)."""
    shifts, dims = _roll_params(input, shifts, dims)
    if not _wants("roll", grad_output, tuple(input.shape), needs_input_grad):
        return (None,)
    back = tuple(-s for s in shifts)
    if not dims:
        return (grad_output.flatten().roll(back).reshape(input.shape),)
    return (grad_output.roll(back, dims),)


def rot90_samples(device, dtype):
    mk = Maker(device, dtype)
    yield Sample((mk.randn(2, 3),), {}, "rot90[default]")
    yield Sample((mk.randn(2, 3, 4),), {"k": 3, "dims": (2, 0)}, "rot90[k3,2,0]")
    yield Sample((mk.randn(2, 3),), {"k": -1, "dims": [-1, -2]}, "rot90[k-1,neg,list]")
    yield Sample((mk.randn(2, 3),), {"k": 2}, "rot90[k2]")
    yield Sample((mk.randn(2, 3),), {"k": 4}, "rot90[k4]")
    yield Sample((mk.randn(0, 3),), {"k": 1}, "rot90[empty]")
    yield Sample((mk.channels_last(mk.randn(1, 2, 3, 2)),), {"k": 1, "dims": (2, 3)}, "rot90[channels_last]")


def rot90_symbolic(input, *, k=1, dims=(0, 1)):
    meta_output_shape("rot90", torch.rot90, input, k, dims)
    return _object_array(np.rot90(input, k, tuple(dims)))


@register("rot90", torch_fn=torch.rot90, tensor_args=("input",), samples=rot90_samples, symbolic=rot90_symbolic,
          aliases=(torch.Tensor.rot90,))
def rot90_backward(grad_output, input, *, needs_input_grad, k=1, dims=(0, 1)):
    """dL/dx = rot90(g, -k, dims): the inverse rotation in the same plane."""
    dims = _ints("rot90", "dims", dims)
    if not _wants("rot90", grad_output, meta_output_shape("rot90", torch.rot90, input, k, dims), needs_input_grad):
        return (None,)
    return (torch.rot90(grad_output, -k, dims),)


# -- copies: A^T sums over the copies ----------------------------------------------------------

def _sum_tiles(grad_output, shape, reps):
    """Adjoint of tiling ``shape`` by ``reps`` (``len(reps) >= len(shape)``): the output dim ``j``
    holds ``reps[j]`` tiles of size ``s_j``, so reshape it to ``(reps[j], s_j)`` and sum the tile axes."""
    lead = len(reps) - len(shape)
    sizes = (1,) * lead + tuple(shape)
    split = []
    for r, s in zip(reps, sizes):
        split += [r, s]
    g = grad_output.reshape(split)
    g = g.sum(dim=tuple(range(0, 2 * len(reps), 2)))
    return g.reshape(shape)


def _repeat(input, repeats):
    # torch.Tensor.repeat with a keyword ``repeats`` (x.repeat(2, 1) is repeats=(2, 1))
    return input.repeat(_ints("repeat", "repeats", repeats))


_repeat.mirrors = torch.Tensor.repeat


def repeat_samples(device, dtype):
    mk = Maker(device, dtype)
    yield Sample((mk.randn(2, 3),), {"repeats": (2, 3)}, "repeat[2d]")
    yield Sample((mk.randn(2, 3),), {"repeats": [2, 1, 2]}, "repeat[newdim,list]")
    yield Sample((mk.randn(3),), {"repeats": torch.Size([2, 1])}, "repeat[Size]")
    yield Sample((mk.randn(),), {"repeats": (3,)}, "repeat[0d]")
    yield Sample((mk.randn(),), {"repeats": ()}, "repeat[0d,noreps]")
    yield Sample((mk.randn(2, 3),), {"repeats": (0, 2)}, "repeat[zero]")
    yield Sample((mk.randn(0, 3),), {"repeats": (2, 2)}, "repeat[empty]")
    yield Sample((mk.noncontiguous(mk.randn(2, 3)),), {"repeats": (1, 2)}, "repeat[noncontig]")
    yield Sample((mk.channels_last(mk.randn(1, 2, 2, 2)),), {"repeats": (2, 1, 1, 2)}, "repeat[channels_last]")


def repeat_symbolic(input, *, repeats):
    reps = _ints("repeat", "repeats", repeats)
    meta_output_shape("repeat", _repeat, input, reps)
    return _object_array(np.tile(input, reps)) if reps else _object_array(input)


@register("repeat", torch_fn=_repeat, tensor_args=("input",), samples=repeat_samples, symbolic=repeat_symbolic)
def repeat_backward(grad_output, input, *, needs_input_grad, repeats):
    """dL/dx = sum of g over the tiles: y[t_0 s_0 + i_0, ...] = x[i_0, ...] for each tile t."""
    reps = _ints("repeat", "repeats", repeats)
    if not _wants("repeat", grad_output, meta_output_shape("repeat", _repeat, input, reps), needs_input_grad):
        return (None,)
    return (_sum_tiles(grad_output, tuple(input.shape), reps),)


def tile_samples(device, dtype):
    mk = Maker(device, dtype)
    yield Sample((mk.randn(2, 3),), {"dims": (2, 3)}, "tile[2d]")
    yield Sample((mk.randn(2, 3, 2),), {"dims": (2,)}, "tile[fewer]")
    yield Sample((mk.randn(3),), {"dims": [2, 1, 2]}, "tile[more,list]")
    yield Sample((mk.randn(),), {"dims": ()}, "tile[0d]")
    yield Sample((mk.randn(0, 2),), {"dims": (3, 1)}, "tile[empty]")
    yield Sample((mk.noncontiguous(mk.randn(2, 3)),), {"dims": (2, 2)}, "tile[noncontig]")


def _tile_reps(input, dims):
    dims = _ints("tile", "dims", dims)
    meta_output_shape("tile", torch.tile, input, dims)
    return (1,) * (input.ndim - len(dims)) + dims


def tile_symbolic(input, *, dims):
    reps = _tile_reps(input, dims)
    return _object_array(np.tile(input, reps)) if reps else _object_array(input)


@register("tile", torch_fn=torch.tile, tensor_args=("input",), samples=tile_samples, symbolic=tile_symbolic,
          aliases=(torch.Tensor.tile,))
def tile_backward(grad_output, input, *, needs_input_grad, dims):
    """dL/dx = sum of g over the tiles (tile is repeat with ``dims`` padded by leading ones)."""
    reps = _tile_reps(input, dims)
    if not _wants("tile", grad_output, meta_output_shape("tile", torch.tile, input, reps), needs_input_grad):
        return (None,)
    return (_sum_tiles(grad_output, tuple(input.shape), reps),)


def _interleave_params(input, repeats, dim):
    """``(repeats as an int or a 1-d int64 tensor, dim or None, n)``: n is the length of the repeated axis."""
    n = math.prod(input.shape) if dim is None else None
    if dim is not None:
        if input.ndim == 0:   # torch rejects any dim for a 0-d input
            raise InvalidParameterError("repeat_interleave: a 0-d input takes no dim (leave dim None)")
        if not isinstance(dim, int) or isinstance(dim, bool) or not -input.ndim <= dim < input.ndim:
            raise InvalidParameterError(f"repeat_interleave: dim {dim!r} is out of range for an input with "
                                        f"{input.ndim} dims")
        dim = dim % input.ndim
        n = input.shape[dim]
    if isinstance(repeats, torch.Tensor):
        if repeats.is_floating_point() or repeats.is_complex() or repeats.dim() > 1:
            raise InvalidParameterError("repeat_interleave: repeats must be an int or a 0-d or 1-d integer tensor")
        repeats = repeats.reshape(-1)
        if repeats.numel() not in (1, n):
            raise InvalidParameterError(f"repeat_interleave: repeats has {repeats.numel()} elements for an axis "
                                        f"of {n}")
        if bool((repeats < 0).any()):
            raise InvalidParameterError("repeat_interleave: repeats must be non-negative")
        if repeats.numel() == 1 and n != 1:
            repeats = int(repeats.item())
    elif not isinstance(repeats, int) or isinstance(repeats, bool) or repeats < 0:
        raise InvalidParameterError(f"repeat_interleave: repeats must be a non-negative int or an integer tensor, "
                                    f"got {repeats!r}")
    return repeats, dim, n


def _repeat_interleave(input, repeats=None, dim=None, *, output_size=None):
    # torch.repeat_interleave, carrying call_as_rule for the tracer
    kw = {} if output_size is None else {"output_size": output_size}
    if repeats is None:
        return torch.repeat_interleave(input, **kw)   # the one-tensor form: input holds the repeats
    return torch.repeat_interleave(input, repeats, dim, **kw)


_repeat_interleave.mirrors = torch.repeat_interleave
def _repeat_interleave_call(*args, **kwargs):
    """torch's call as the rule's ``(input,), {"repeats": r, "dim": d, ...}``.

    torch's documented Python signature of ``repeat_interleave`` is ``(input, dim=None)`` (its
    overloads merged), which would bind ``x.repeat_interleave(2)`` as ``dim=2``; passing
    ``repeats`` by keyword makes a tracer bind it by name.  The one-tensor form
    ``repeat_interleave(repeats)`` (integer indices, no gradient) is refused and bound as it is.
    """
    given = named_call("repeat_interleave", ("input", "repeats", "dim"), args, kwargs, ("output_size",))
    if given.get("repeats") is None or "input" not in given:
        raise InvalidParameterError("repeat_interleave: the one-tensor form repeat_interleave(repeats) has no rule")
    return (given.pop("input"),), given


_repeat_interleave.call_as_rule = _repeat_interleave_call


def repeat_interleave_samples(device, dtype):
    mk = Maker(device, dtype)
    idx = lambda *v: torch.tensor(v, dtype=torch.int64, device=device)  # noqa: E731
    yield Sample((mk.randn(2, 3), 2), {"dim": 1}, "repeat_interleave[int,dim1]")
    yield Sample((mk.randn(2, 3), 3), {}, "repeat_interleave[int,flat]")
    yield Sample((mk.randn(2, 3), 2), {"dim": -2, "output_size": 4}, "repeat_interleave[int,neg,output_size]")
    yield Sample((mk.randn(3, 2), idx(1, 0, 3)), {"dim": 0}, "repeat_interleave[tensor,dim0]")
    yield Sample((mk.randn(2, 2), idx(2, 1, 0, 1)), {}, "repeat_interleave[tensor,flat]")
    yield Sample((mk.randn(2, 3), idx(2)), {"dim": 1}, "repeat_interleave[tensor1]")
    yield Sample((mk.randn(), 3), {}, "repeat_interleave[0d]")
    yield Sample((mk.randn(0, 2), 2), {"dim": 0}, "repeat_interleave[empty]")
    yield Sample((mk.noncontiguous(mk.randn(2, 3)), 2), {"dim": 1}, "repeat_interleave[noncontig]")


def repeat_interleave_symbolic(input, repeats, *, dim=None, output_size=None):
    if isinstance(repeats, np.ndarray):   # derive passes integer tensors as arrays
        repeats = torch.as_tensor(repeats.astype(np.int64))
    reps, dim, _ = _interleave_params(input, repeats, dim)
    if isinstance(reps, torch.Tensor):
        reps = reps.tolist()
    if dim is None:
        return _object_array(np.repeat(input.reshape(-1), reps))
    return _object_array(np.repeat(input, reps, axis=dim))


@register("repeat_interleave", torch_fn=_repeat_interleave, tensor_args=("input", "repeats"),
          samples=repeat_interleave_samples, symbolic=repeat_interleave_symbolic, nondifferentiable=("repeats",),
          aliases=(torch.Tensor.repeat_interleave,))
def repeat_interleave_backward(grad_output, input, repeats, *, needs_input_grad, dim=None, output_size=None):
    """dL/dx_i = sum of g over the segment of copies of x_i (a segment sum): ``g.reshape(.., n, r, ..)
    .sum`` for an int ``r``, ``index_add`` of g at ``repeat_interleave(arange(n), repeats)`` otherwise;
    ``dim`` None works on the flattened input."""
    reps, d, n = _interleave_params(input, repeats, dim)
    if isinstance(reps, torch.Tensor):
        total = int(reps.sum()) if reps.numel() == n else int(reps.reshape(-1)[0]) * n
    else:
        total = reps * n
    shape = (total,) if d is None else tuple(input.shape[:d]) + (total,) + tuple(input.shape[d + 1:])
    if output_size is not None and output_size != total:
        raise InvalidParameterError(f"repeat_interleave: output_size {output_size} but the repeats give {total}")
    if not _wants("repeat_interleave", grad_output, shape, needs_input_grad):
        return (None, None)
    g = grad_output if d is not None else grad_output.reshape(-1)
    axis = 0 if d is None else d
    if isinstance(reps, int):
        lead = tuple(g.shape[:axis])
        gx = g.reshape(lead + (n, reps) + tuple(g.shape[axis + 1:])).sum(axis + 1)
    else:
        segment = torch.repeat_interleave(torch.arange(n, device=g.device), reps.to(g.device))
        zeros = g.new_zeros(tuple(g.shape[:axis]) + (n,) + tuple(g.shape[axis + 1:]))
        gx = zeros.index_add(axis, segment, g)
    return (gx.reshape(input.shape), None)


# -- transposes: T, mT, H, mH, adjoint are their own adjoints ------------------------------------

def _property_rule(name, getter, apply, check, doc):
    """Register a rule for the property ``x.<name>``; torch's TorchFunctionMode sees the getter
    ``torch.Tensor.<name>.__get__`` (the rule's ``mirrors``)."""

    def forward(input):
        return getattr(input, name)   # the property itself, so the rule's forward is torch's

    forward.__name__ = forward.__qualname__ = name
    forward.mirrors = getter

    def samples(device, dtype):
        mk = Maker(device, dtype)
        yield Sample((mk.randn(2, 3),), {}, f"{name}[2d]")
        yield Sample((mk.noncontiguous(mk.randn(3, 2)),), {}, f"{name}[noncontig]")
        yield Sample((mk.randn(0, 2),), {}, f"{name}[empty]")
        if name == "T":
            yield Sample((mk.randn(3),), {}, f"{name}[1d]")
            yield Sample((mk.randn(),), {}, f"{name}[0d]")
        elif name in ("mT", "mH"):
            yield Sample((mk.randn(2, 3, 4),), {}, f"{name}[batched]")

    samples.__name__ = f"{name}_samples"

    def symbolic(input):
        check(input)
        return _object_array(np.swapaxes(input, -1, -2) if name not in ("T", "H") else input.T)

    def backward(grad_output, input, *, needs_input_grad):
        check(input)
        shape = tuple(input.shape)
        out = shape[::-1] if name in ("T", "H") else shape[:-2] + shape[-2:][::-1]
        if not _wants(name, grad_output, out, needs_input_grad):
            return (None,)
        return (apply(grad_output),)

    backward.__doc__ = doc
    backward.__name__ = f"{name}_backward"
    return forward, samples, symbolic, backward


def _any_dims(input):
    """x.T reverses every dim (torch deprecates, but computes, x.T on more than 2 dims)."""


def _matrix_or_scalar(input):
    if input.ndim not in (0, 2):
        raise InvalidParameterError(f"H: x.H needs a matrix (2 dims), got {input.ndim} dims; use x.mH for batches")


def _matrices(op):
    def check(input):
        if input.ndim < 2:
            raise InvalidParameterError(f"{op}: needs a tensor of at least 2 dims, got {input.ndim}")
    return check


def _reverse_dims(x):
    return x.permute(tuple(range(x.ndim - 1, -1, -1)))


for _name, _getter, _apply, _check, _doc in (
        ("T", torch.Tensor.T.__get__, _reverse_dims, _any_dims,
         "dL/dx = g.T: reversing the dims is its own inverse."),
        ("H", torch.Tensor.H.__get__, lambda x: _reverse_dims(x).conj(), _matrix_or_scalar,
         "dL/dx = g.H (conj(x)^T; the adjoint of conj is conj)."),
        ("mT", torch.Tensor.mT.__get__, lambda x: x.transpose(-2, -1), _matrices("mT"),
         "dL/dx = g.mT: swapping the last two dims is its own inverse."),
        ("mH", torch.Tensor.mH.__get__, lambda x: x.transpose(-2, -1).conj(), _matrices("mH"),
         "dL/dx = g.mH (the adjoint of conj is conj)."),
):
    _fwd, _smp, _sym, _bwd = _property_rule(_name, _getter, _apply, _check, _doc)
    register(_name, torch_fn=_fwd, tensor_args=("input",), samples=_smp, symbolic=_sym)(_bwd)


def adjoint_samples(device, dtype):
    mk = Maker(device, dtype)
    yield Sample((mk.randn(2, 3),), {}, "adjoint[2d]")
    yield Sample((mk.randn(2, 3, 4),), {}, "adjoint[batched]")
    yield Sample((mk.randn(0, 2),), {}, "adjoint[empty]")


def adjoint_symbolic(input):
    _matrices("adjoint")(input)
    return _object_array(np.swapaxes(input, -1, -2))


@register("adjoint", torch_fn=torch.adjoint, tensor_args=("input",), samples=adjoint_samples,
          symbolic=adjoint_symbolic, aliases=(torch.Tensor.adjoint,))
def adjoint_backward(grad_output, input, *, needs_input_grad):
    """dL/dx = adjoint(g) (= g.mH; the adjoint of conj is conj)."""
    _matrices("adjoint")(input)
    shape = tuple(input.shape)
    if not _wants("adjoint", grad_output, shape[:-2] + shape[-2:][::-1], needs_input_grad):
        return (None,)
    return (grad_output.adjoint(),)


# -- masks: A^T = A ------------------------------------------------------------------------------

def _triangle_samples(op):
    def samples(device, dtype):
        mk = Maker(device, dtype)
        yield Sample((mk.randn(3, 4),), {}, f"{op}[default]")
        yield Sample((mk.randn(2, 3, 4),), {"diagonal": 1}, f"{op}[batched,+1]")
        yield Sample((mk.randn(4, 3),), {"diagonal": -2}, f"{op}[-2]")
        yield Sample((mk.randn(3, 3),), {"diagonal": 5}, f"{op}[beyond]")
        yield Sample((mk.randn(0, 3),), {}, f"{op}[empty]")
        yield Sample((mk.noncontiguous(mk.randn(3, 4)),), {"diagonal": -1}, f"{op}[noncontig]")
        yield Sample((mk.channels_last(mk.randn(1, 2, 3, 3)),), {}, f"{op}[channels_last]")

    samples.__name__ = f"{op}_samples"
    return samples


def _triangle_symbolic(op, keep):
    def symbolic(input, *, diagonal=0):
        meta_output_shape(op, getattr(torch, op), input, diagonal)
        r, c = input.shape[-2:]
        mask = keep(np.arange(c)[None, :] - np.arange(r)[:, None], diagonal)
        return _object_array(np.where(mask, input, 0))

    symbolic.__name__ = f"{op}_symbolic"
    return symbolic


@register("tril", torch_fn=torch.tril, tensor_args=("input",), samples=_triangle_samples("tril"),
          symbolic=_triangle_symbolic("tril", lambda d, k: d <= k), aliases=(torch.Tensor.tril,))
def tril_backward(grad_output, input, *, needs_input_grad, diagonal=0):
    """dL/dx = tril(g, diagonal): the same mask (j - i <= diagonal)."""
    if not _wants("tril", grad_output, meta_output_shape("tril", torch.tril, input, diagonal), needs_input_grad):
        return (None,)
    return (grad_output.tril(diagonal),)


@register("triu", torch_fn=torch.triu, tensor_args=("input",), samples=_triangle_samples("triu"),
          symbolic=_triangle_symbolic("triu", lambda d, k: d >= k), aliases=(torch.Tensor.triu,))
def triu_backward(grad_output, input, *, needs_input_grad, diagonal=0):
    """dL/dx = triu(g, diagonal): the same mask (j - i >= diagonal)."""
    if not _wants("triu", grad_output, meta_output_shape("triu", torch.triu, input, diagonal), needs_input_grad):
        return (None,)
    return (grad_output.triu(diagonal),)


# -- diagonals: extraction and embedding are each other's adjoints -------------------------------

def diagonal_samples(device, dtype):
    mk = Maker(device, dtype)
    yield Sample((mk.randn(3, 4),), {}, "diagonal[default]")
    yield Sample((mk.randn(3, 4),), {"offset": 1}, "diagonal[+1]")
    yield Sample((mk.randn(2, 3, 4),), {"offset": -1, "dim1": -1, "dim2": 0}, "diagonal[-1,dims]")
    yield Sample((mk.randn(2, 3),), {"offset": 5}, "diagonal[beyond]")
    yield Sample((mk.randn(0, 3),), {}, "diagonal[empty]")
    yield Sample((mk.noncontiguous(mk.randn(3, 4)),), {"offset": -2}, "diagonal[noncontig]")
    yield Sample((mk.channels_last(mk.randn(2, 3, 3, 2)),), {"dim1": 1, "dim2": 2}, "diagonal[channels_last]")


def _np_diagonal(input, offset, dim1, dim2):
    return _object_array(np.diagonal(input, offset, dim1, dim2))


def diagonal_symbolic(input, *, offset=0, dim1=0, dim2=1):
    meta_output_shape("diagonal", torch.diagonal, input, offset, dim1, dim2)
    return _np_diagonal(input, offset, dim1, dim2)


@register("diagonal", torch_fn=torch.diagonal, tensor_args=("input",), samples=diagonal_samples,
          symbolic=diagonal_symbolic, aliases=(torch.Tensor.diagonal,))
def diagonal_backward(grad_output, input, *, needs_input_grad, offset=0, dim1=0, dim2=1):
    """dL/dx = zeros with g scattered onto the same diagonal (diagonal_scatter)."""
    shape = meta_output_shape("diagonal", torch.diagonal, input, offset, dim1, dim2)
    if not _wants("diagonal", grad_output, shape, needs_input_grad):
        return (None,)
    zeros = grad_output.new_zeros(input.shape)
    return (torch.diagonal_scatter(zeros, grad_output, offset, dim1, dim2),)


def diag_samples(device, dtype):
    mk = Maker(device, dtype)
    yield Sample((mk.randn(3),), {}, "diag[1d->2d]")
    yield Sample((mk.randn(3),), {"diagonal": -2}, "diag[1d,-2]")
    yield Sample((mk.randn(3, 4),), {}, "diag[2d->1d]")
    yield Sample((mk.randn(3, 4),), {"diagonal": 2}, "diag[2d,+2]")
    yield Sample((mk.randn(3, 4),), {"diagonal": -4}, "diag[2d,beyond]")
    yield Sample((mk.randn(0),), {"diagonal": 1}, "diag[empty]")
    yield Sample((mk.noncontiguous(mk.randn(3, 3)),), {"diagonal": -1}, "diag[noncontig]")


def diag_symbolic(input, *, diagonal=0):
    meta_output_shape("diag", torch.diag, input, diagonal)
    if input.ndim == 2:
        return _object_array(np.diagonal(input, diagonal))
    n = input.shape[0] + abs(diagonal)
    out = np.zeros((n, n), dtype=object)
    for i, v in enumerate(input):
        out[i + max(-diagonal, 0), i + max(diagonal, 0)] = v
    return out


@register("diag", torch_fn=torch.diag, tensor_args=("input",), samples=diag_samples, symbolic=diag_symbolic,
          aliases=(torch.Tensor.diag,))
def diag_backward(grad_output, input, *, needs_input_grad, diagonal=0):
    """Vector -> matrix: dL/dx = diag(g, diagonal) (the extraction is the embedding's adjoint);
    matrix -> vector: dL/dx = zeros with g scattered onto that diagonal."""
    if not _wants("diag", grad_output, meta_output_shape("diag", torch.diag, input, diagonal), needs_input_grad):
        return (None,)
    if input.ndim == 1:
        return (torch.diagonal(grad_output, diagonal),)
    return (torch.diagonal_scatter(grad_output.new_zeros(input.shape), grad_output, diagonal),)


def diag_embed_samples(device, dtype):
    mk = Maker(device, dtype)
    yield Sample((mk.randn(2, 3),), {}, "diag_embed[default]")
    yield Sample((mk.randn(3),), {"offset": 1}, "diag_embed[1d,+1]")
    yield Sample((mk.randn(2, 3),), {"offset": -1, "dim1": 0, "dim2": 2}, "diag_embed[-1,dims]")
    yield Sample((mk.randn(2, 3),), {"dim1": -1, "dim2": -3}, "diag_embed[neg,swapped]")
    yield Sample((mk.randn(2, 0),), {}, "diag_embed[empty]")
    yield Sample((mk.noncontiguous(mk.randn(2, 3)),), {"offset": 2}, "diag_embed[noncontig]")


def diag_embed_symbolic(input, *, offset=0, dim1=-2, dim2=-1):
    shape = meta_output_shape("diag_embed", torch.diag_embed, input, offset, dim1, dim2)
    n = input.shape[-1] + abs(offset)
    # build with the two new dims last, then move them to dim1, dim2
    out = np.zeros(tuple(input.shape[:-1]) + (n, n), dtype=object)
    for i in range(input.shape[-1]):
        out[..., i + max(-offset, 0), i + max(offset, 0)] = input[..., i]
    nd = len(shape)
    d1, d2 = dim1 % nd, dim2 % nd
    return _object_array(np.moveaxis(out, (-2, -1), (d1, d2)))


@register("diag_embed", torch_fn=torch.diag_embed, tensor_args=("input",), samples=diag_embed_samples,
          symbolic=diag_embed_symbolic, aliases=(torch.Tensor.diag_embed,))
def diag_embed_backward(grad_output, input, *, needs_input_grad, offset=0, dim1=-2, dim2=-1):
    """dL/dx = g.diagonal(offset, dim1, dim2): the extraction is the embedding's adjoint."""
    shape = meta_output_shape("diag_embed", torch.diag_embed, input, offset, dim1, dim2)
    if not _wants("diag_embed", grad_output, shape, needs_input_grad):
        return (None,)
    return (torch.diagonal(grad_output, offset, dim1, dim2),)


def trace_samples(device, dtype):
    mk = Maker(device, dtype)
    yield Sample((mk.randn(3, 3),), {}, "trace[square]")
    yield Sample((mk.randn(2, 4),), {}, "trace[wide]")
    yield Sample((mk.randn(0, 2),), {}, "trace[empty]")
    yield Sample((mk.noncontiguous(mk.randn(3, 2)),), {}, "trace[noncontig,tall]")


def trace_symbolic(input):
    meta_output_shape("trace", torch.trace, input)
    return _object_array(np.sum(np.diagonal(input)) if min(input.shape) else 0)


@register("trace", torch_fn=torch.trace, tensor_args=("input",), samples=trace_samples, symbolic=trace_symbolic,
          aliases=(torch.Tensor.trace,))
def trace_backward(grad_output, input, *, needs_input_grad):
    """dL/dx = g * I (the n x m identity): trace sums the main diagonal."""
    meta_output_shape("trace", torch.trace, input)
    if not _wants("trace", grad_output, (), needs_input_grad):
        return (None,)
    eye = torch.eye(*input.shape, dtype=grad_output.dtype, device=grad_output.device)
    return (grad_output * eye,)


# -- dtype casts: A = I, the gradient cast back --------------------------------------------------

def _cast_back(grad_output, input):
    """dL/dx = g in x's dtype (and device); a complex g for a real x keeps its real part, as torch's
    ``_to_copy_backward`` does; None for a cast to an integer dtype (no gradient flows)."""
    if grad_output is None:
        return None
    if grad_output.is_complex() and not input.is_complex():
        grad_output = grad_output.real
    out = grad_output.to(device=input.device, dtype=input.dtype)
    return out.view_as(out) if out is grad_output else out


# The registry's samples cast exactly (to float64): every sample of every rule must also pass finite
# differences, which run in float64, where a narrowing cast (to float32, float16, bfloat16) is a
# staircase whose difference quotients are rounding noise, not the identity torch's gradient
# stands for.  Narrowing casts are compared with autograd in tests/manual/test_rearrange.py.

def _exact_cast(op, target):
    """The symbolic forward of a cast is the identity where the cast is exact (to float64)."""
    if target != torch.float64:
        raise UnsupportedError(f"{op}: a cast to {target} rounds; it has no exact symbolic forward")


def double_samples(device, dtype):
    mk = Maker(device, dtype)
    yield Sample((mk.randn(2, 3),), {}, "double[2d]")
    yield Sample((mk.randn(),), {}, "double[0d]")
    yield Sample((mk.randn(0, 3),), {}, "double[empty]")
    yield Sample((mk.noncontiguous(mk.randn(3, 4)),), {}, "double[noncontig]")
    yield Sample((mk.channels_last(mk.randn(1, 2, 2, 3)),), {}, "double[channels_last]")
    yield Sample((mk.randn(2, 2, 1, 2),), {"memory_format": torch.channels_last}, "double[memory_format]")


def double_symbolic(input, *, memory_format=torch.preserve_format):
    return _object_array(input)


@register("double", torch_fn=torch.Tensor.double, tensor_args=("input",), samples=double_samples,
          symbolic=double_symbolic)
def double_backward(grad_output, input, *, needs_input_grad, memory_format=torch.preserve_format):
    """dL/dx = g cast back to x's dtype: x.double() is the identity in float64."""
    check_grad_shape("double", grad_output, tuple(input.shape))
    return (_cast_back(grad_output, input) if needs_input_grad[0] else None,)


def _narrowing_samples(op):
    def samples(device, dtype):
        mk = Maker(device, dtype)
        yield Sample((mk.randn(2, 3),), {}, f"{op}[2d]")
        yield Sample((mk.randn(),), {}, f"{op}[0d]")
        yield Sample((mk.randn(0, 3),), {}, f"{op}[empty]")
        yield Sample((mk.noncontiguous(mk.randn(3, 4)),), {}, f"{op}[noncontig]")
        yield Sample((mk.randn(2, 2, 1, 2),), {"memory_format": torch.channels_last}, f"{op}[memory_format]")
    samples.__name__ = f"{op}_samples"
    return samples


def _make_narrowing_cast(op, target):
    """``x.float()``, ``x.half()``, ``x.bfloat16()``: rounding casts, checked against autograd only
    (``rounds=True``: float64 finite differences see a staircase); dL/dx = g cast back to x's dtype."""
    def backward(grad_output, input, *, needs_input_grad, memory_format=torch.preserve_format):
        check_grad_shape(op, grad_output, tuple(input.shape))
        return (_cast_back(grad_output, input) if needs_input_grad[0] else None,)
    backward.__name__ = f"{op}_backward"
    backward.__doc__ = (f"dL/dx = g cast back to x's dtype: x.{op}() rounds to {target}, and torch takes the "
                        f"rounding's derivative as 1 (its gradient is the identity, cast back).")
    return register(op, torch_fn=getattr(torch.Tensor, op), tensor_args=("input",), samples=_narrowing_samples(op),
                    rounds=True)(backward)


float_backward = _make_narrowing_cast("float", torch.float32)
half_backward = _make_narrowing_cast("half", torch.float16)
bfloat16_backward = _make_narrowing_cast("bfloat16", torch.bfloat16)


def type_as_samples(device, dtype):
    mk = Maker(device, dtype)
    f64 = torch.zeros(1, dtype=torch.float64, device=device)
    yield Sample((mk.randn(2, 3), f64), {}, "type_as[float64]")
    yield Sample((mk.randn(), torch.zeros(2, 3, dtype=torch.float64, device=device)), {}, "type_as[0d]")
    yield Sample((mk.randn(0, 2), f64), {}, "type_as[empty]")
    yield Sample((mk.noncontiguous(mk.randn(3, 4)), f64), {}, "type_as[noncontig]")


def type_as_symbolic(input, other):
    _exact_cast("type_as", other.dtype)
    return _object_array(input)


@register("type_as", torch_fn=torch.Tensor.type_as, tensor_args=("input", "other"), samples=type_as_samples,
          symbolic=type_as_symbolic, nondifferentiable=("other",), shape_only=("other",))
def type_as_backward(grad_output, input, other, *, needs_input_grad):
    """dL/dx = g cast back to x's dtype and device; ``other`` only gives the target type."""
    check_grad_shape("type_as", grad_output, tuple(input.shape))
    return (_cast_back(grad_output, input) if needs_input_grad[0] else None, None)


def _to(input, dtype, non_blocking=False, copy=False, *, memory_format=torch.preserve_format):
    # torch.Tensor.to in its dtype form; call_as_rule maps the other spellings onto it
    return input.to(dtype, non_blocking=non_blocking, copy=copy, memory_format=memory_format)


_to.mirrors = torch.Tensor.to
_TO_OPTIONS = ("non_blocking", "copy")


def _same_device(input, device) -> bool:
    d = torch.device(device)
    return d.type == input.device.type and (d.index is None or d.index == input.device.index)


def _to_call(*args, **kwargs):
    """torch's ``x.to(...)`` as the rule's ``(x,), {"dtype": dtype, ...}`` when it is a pure dtype cast:
    ``x.to(dtype)``, ``x.to(other)``, ``x.to(device, dtype)``, ``x.to(dtype=...)``, ``x.to(device=...,
    dtype=...)`` with the device (if any) the input's own (``x.to(x.device)`` is a cast to x's own
    dtype).  A move to another device, or a call naming
    no dtype, keeps a ``device`` entry, which the rule does not take, so a tracer leaves it to autograd."""
    if not args or not isinstance(args[0], torch.Tensor):
        raise InvalidParameterError("to: expected x.to(...) with the tensor first")
    input, rest, kw = args[0], list(args[1:]), dict(kwargs)
    for k in ("self", "input"):
        if k in kw:
            raise InvalidParameterError(f"to: unexpected keyword {k!r}")
    dtype, device = kw.pop("dtype", None), kw.pop("device", None)
    if rest and isinstance(rest[0], torch.Tensor):
        other = rest.pop(0)
        dtype, device = other.dtype, other.device
    elif rest and isinstance(rest[0], torch.dtype):
        dtype = rest.pop(0)
    elif rest and isinstance(rest[0], (str, torch.device, int)) and not isinstance(rest[0], bool):
        device = rest.pop(0)
        if rest and isinstance(rest[0], torch.dtype):
            dtype = rest.pop(0)
    if len(rest) > len(_TO_OPTIONS):
        raise InvalidParameterError("to: too many positional arguments")
    for name, value in zip(_TO_OPTIONS, rest):
        if name in kw:
            raise InvalidParameterError(f"to: got multiple values for {name!r}")
        kw[name] = value
    if device is not None and not _same_device(input, device):
        kw["device"] = device          # not a pure dtype cast
    else:
        kw["dtype"] = input.dtype if dtype is None else dtype   # x.to(its own device): the identity
    return (input,), kw


_to.call_as_rule = _to_call


def to_samples(device, dtype):
    mk = Maker(device, dtype)
    f64 = torch.float64   # exact casts only (see above): float64 -> float64, float32 -> float64
    yield Sample((mk.randn(2, 3),), {"dtype": f64}, "to[float64]")
    yield Sample((mk.randn(2, 3),), {"dtype": f64, "copy": True}, "to[copy]")
    yield Sample((mk.randn(2, 3),), {"dtype": f64, "non_blocking": True}, "to[non_blocking]")
    yield Sample((mk.randn(),), {"dtype": f64}, "to[0d]")
    yield Sample((mk.randn(0, 2),), {"dtype": f64}, "to[empty]")
    yield Sample((mk.noncontiguous(mk.randn(3, 4)),), {"dtype": f64}, "to[noncontig]")
    yield Sample((mk.channels_last(mk.randn(1, 2, 2, 3)),), {"dtype": f64}, "to[channels_last]")
    yield Sample((mk.randn(1, 2, 2, 3),), {"dtype": f64, "memory_format": torch.channels_last},
                 "to[memory_format]")


def to_symbolic(input, *, dtype, non_blocking=False, copy=False, memory_format=torch.preserve_format):
    _exact_cast("to", dtype)
    return _object_array(input)


@register("to", torch_fn=_to, tensor_args=("input",), samples=to_samples, symbolic=to_symbolic)
def to_backward(grad_output, input, *, needs_input_grad, dtype, non_blocking=False, copy=False,
                memory_format=torch.preserve_format):
    """dL/dx = g cast back to x's dtype (a cast to an integer dtype passes no gradient; a real x
    keeps the real part of a complex g)."""
    if not isinstance(dtype, torch.dtype):
        raise InvalidParameterError(f"to: the rule mirrors dtype casts, x.to(dtype); got {dtype!r}")
    if grad_output is not None:
        check_grad_shape("to", grad_output, tuple(input.shape))
    return (_cast_back(grad_output, input) if needs_input_grad[0] else None,)
