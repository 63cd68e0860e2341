"""Indexing rules: ``__getitem__``, select, narrow, index_select, gather, scatter,
scatter_add, cat, stack, split, chunk, unbind, where, embedding, masked_fill.

Selections.  ``__getitem__``, select, narrow, index_select, gather and embedding read
``y[o] = x[s(o)]`` for a source map ``s``: ``y = S x`` with ``S`` a 0/1 matrix whose row
``o`` has its one at ``s(o)``.  The adjoint scatter-adds:

    dL/dx[i] = sum over {o : s(o) = i} of g[o]        (S^T g, an index_add)

so an index repeated in the selection accumulates its gradients.  For ``__getitem__``,
select and narrow the source map is found by applying the same indexing to the tensor
of flat positions ``arange(numel).reshape(x.shape)``: every form torch accepts (ints,
slices with positive steps, None, Ellipsis, boolean masks, integer tensors and lists,
mixed) gives ``s`` exactly as it gives the values.  index_select / gather scatter with
their own index along ``dim`` (``index_add`` / ``scatter_add``).

Writes.  ``scatter(input, dim, index, src)`` is ``y = M_keep x + S^T src`` where
``M_keep`` zeroes the written positions: ``dL/dx = g`` with the written positions
zeroed (``g.scatter(dim, index, 0)``) and ``dL/dsrc = g.gather(dim, index)`` (torch's
convention also for repeated indices, where the element that wins is undefined; the
samples use distinct indices).  ``scatter_add``: ``dL/dx = g``, ``dL/dsrc`` the same
gather.  ``masked_fill(x, mask, v)``: ``dL/dx = g`` off the mask (summed over broadcast
axes), ``dL/dv = sum of g on the mask`` when ``v`` is a tensor.

Joins and splits are each other's adjoints: ``cat`` -> split ``g`` by the input sizes
along ``dim``; ``stack`` -> unbind ``g``; ``split``/``chunk`` -> cat the output
gradients (zeros for an output that got none); ``unbind`` -> stack them.  torch's cat
accepts legacy empty 1-d tensors ``shape (0,)`` of any rank; they get an empty gradient.
Mixed floating dtypes are promoted in the forward; each gradient is cast back to its
input's dtype.

``where(c, x, y)``: ``dL/dx = unbroadcast(where(c, g, 0))``,
``dL/dy = unbroadcast(where(c, 0, g))``; ``c`` has no gradient.

``embedding(idx, W)``: ``dL/dW[r] = sum over {o : idx[o] = r} of g[o, :]``; rows of
``padding_idx`` get no gradient; ``scale_grad_by_freq`` divides each ``g[o]`` by the
number of times ``idx[o]`` occurs in ``idx``.  ``max_norm`` renormalises rows of ``W``
in place, without autograd, before the lookup, so the gradient formula is unchanged
(the rule never modifies ``W``; torch's forward does).  ``sparse=True`` is refused: the
rule gives dense gradients.

Positional order: torch puts ``dim`` before the index tensor (``torch.gather(x, dim,
index)``, ``torch.scatter(x, dim, index, src)``); these rules take torch's positional
order as it is, with ``dim`` and ``index`` declared among the positional arguments and
non-differentiable, so ``x.gather(1, idx)`` binds as torch binds it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from gradcheck_kit.errors import InvalidInputError, InvalidParameterError, UnsupportedError
from gradcheck_kit.manual._sampling import Maker
from gradcheck_kit.manual._shapes import check_grad_shape, unbroadcast
from gradcheck_kit.manual.registry import Sample, register

__all__: list[str] = []


def _flat_positions(input: torch.Tensor) -> torch.Tensor:
    """``arange(numel).reshape(x.shape)``: applying a selection to it gives the source map."""
    return torch.arange(input.numel(), device=input.device).reshape(input.shape)


def _scatter_flat(input: torch.Tensor, src: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """``S^T g``: ``dL/dx[i] = sum of g[o] over {o : src[o] = i}`` (flat positions)."""
    zeros = torch.zeros(input.numel(), dtype=g.dtype, device=g.device)
    return zeros.index_add(0, src.reshape(-1), g.reshape(-1)).reshape(input.shape)


def _selection_backward(op, input, grad_output, needs, select):
    """Backward of ``y = select(x)`` for a pure selection, via the flat source map."""
    try:
        src = select(_flat_positions(input))
    except (IndexError, RuntimeError, TypeError, ValueError) as e:
        raise InvalidParameterError(f"{op}: torch rejects this index for an input of shape "
                                    f"{tuple(input.shape)}: {str(e).strip().splitlines()[0]}") from None
    check_grad_shape(op, grad_output, tuple(src.shape))
    if not needs:
        return None
    return _scatter_flat(input, src, grad_output)


def _dim(op, dim, ndim):
    n = max(ndim, 1)
    if not isinstance(dim, int) or isinstance(dim, bool) or not -n <= dim < n:
        raise InvalidParameterError(f"{op}: dim must be an int in [{-n}, {n - 1}], got {dim!r}")
    return dim % n


# -- __getitem__, select, narrow ------------------------------------------------------------

def getitem_samples(device, dtype):
    mk = Maker(device, dtype)
    x = mk.randn(3, 4, 5)
    yield Sample((x, (slice(None), slice(1, 3))), {}, "getitem[slice]")
    yield Sample((x, (1, slice(None, None, 2), -1)), {}, "getitem[int,step2,neg]")
    yield Sample((x, (Ellipsis, None, 2)), {}, "getitem[ellipsis,None]")
    yield Sample((x, mk.randn(3, 4) > 0), {}, "getitem[boolmask]")
    yield Sample((x, (torch.tensor([0, 2, 0, 0], device=device), slice(None), torch.tensor([1, 1, 4, 1],
                 device=device))), {}, "getitem[tensor,repeated]")
    yield Sample((x, [2, 2, 1]), {}, "getitem[list,repeated]")
    yield Sample((x, (slice(None), torch.tensor([[0, 3], [3, 3]], device=device))), {}, "getitem[2d_index]")
    yield Sample((mk.randn(), ()), {}, "getitem[0d]")
    yield Sample((mk.randn(4), slice(2, 2)), {}, "getitem[empty]")
    yield Sample((mk.noncontiguous(mk.randn(3, 4)), (slice(1, None), 0)), {},
                 "getitem[noncontig]")


@register("__getitem__", torch_fn=torch.Tensor.__getitem__, tensor_args=("input", "index"),
          samples=getitem_samples, nondifferentiable=("index",))
def getitem_backward(grad_output, input, index, *, needs_input_grad):
    """dL/dx = index_add of g at the flat positions x[index] reads (repeats accumulate)."""
    return (_selection_backward("__getitem__", input, grad_output, needs_input_grad[0], lambda t: t[index]), None)


def select_samples(device, dtype):
    mk = Maker(device, dtype)
    yield Sample((mk.randn(3, 4),), {"dim": 1, "index": 2}, "select[dim1]")
    yield Sample((mk.randn(3, 4, 2),), {"dim": -1, "index": -1}, "select[neg]")
    yield Sample((mk.randn(3),), {"dim": 0, "index": 0}, "select[->0d]")


@register("select", torch_fn=torch.select, tensor_args=("input",), samples=select_samples,
          aliases=(torch.Tensor.select,))
def select_backward(grad_output, input, *, needs_input_grad, dim, index):
    """dL/dx = g placed at index ``index`` of dim ``dim``, zeros elsewhere."""
    return (_selection_backward("select", input, grad_output, needs_input_grad[0],
                                lambda t: torch.select(t, dim, index)),)


def narrow_samples(device, dtype):
    mk = Maker(device, dtype)
    yield Sample((mk.randn(3, 6),), {"dim": 1, "start": 1, "length": 3}, "narrow[dim1]")
    yield Sample((mk.randn(4, 2),), {"dim": 0, "start": -2, "length": 2}, "narrow[negstart]")
    yield Sample((mk.randn(4, 2),), {"dim": 0, "start": 1, "length": 0}, "narrow[empty]")


@register("narrow", torch_fn=torch.narrow, tensor_args=("input",), samples=narrow_samples,
          aliases=(torch.Tensor.narrow,))
def narrow_backward(grad_output, input, *, needs_input_grad, dim, start, length):
    """dL/dx = g in the window [start, start + length) of dim ``dim``, zeros elsewhere."""
    return (_selection_backward("narrow", input, grad_output, needs_input_grad[0],
                                lambda t: torch.narrow(t, dim, start, length)),)


# -- index_select, gather, scatter, scatter_add ------------------------------------------

def _check_index(op, index, name="index"):
    if not isinstance(index, torch.Tensor) or index.dtype not in (torch.int64, torch.int32):
        raise InvalidInputError(f"{op}: {name} must be an int64 or int32 tensor, got "
                                f"{getattr(index, 'dtype', type(index).__name__)}")


def index_select_samples(device, dtype):
    mk = Maker(device, dtype)
    yield Sample((mk.randn(4, 3), 0, torch.tensor([3, 0, 3, 3], device=device)), {}, "index_select[repeated]")
    yield Sample((mk.randn(2, 5, 2), -2, torch.tensor([4, 1], device=device)), {}, "index_select[negdim]")
    yield Sample((mk.randn(4), 0, torch.tensor(2, device=device)), {}, "index_select[0d_index]")
    yield Sample((mk.randn(4, 2), 0, torch.tensor([], dtype=torch.int64, device=device)), {}, "index_select[empty]")


@register("index_select", torch_fn=torch.index_select, tensor_args=("input", "dim", "index"),
          samples=index_select_samples, nondifferentiable=("dim", "index"), aliases=(torch.Tensor.index_select,))
def index_select_backward(grad_output, input, dim, index, *, needs_input_grad):
    """dL/dx = zeros.index_add(dim, index, g) (repeated indices accumulate)."""
    op = "index_select"
    _check_index(op, index)
    d = _dim(op, dim, input.dim())
    shape = list(input.shape)
    if input.dim():
        shape[d] = index.numel()
    check_grad_shape(op, grad_output, tuple(shape))
    if not needs_input_grad[0]:
        return (None, None, None)
    zeros = torch.zeros(input.shape, dtype=grad_output.dtype, device=grad_output.device)
    if input.dim() == 0:
        return (zeros + grad_output, None, None)
    return (zeros.index_add(d, index.reshape(-1), grad_output), None, None)


def gather_samples(device, dtype):
    mk = Maker(device, dtype)
    yield Sample((mk.randn(3, 4), 1, torch.tensor([[0, 0, 3], [1, 2, 1], [3, 3, 3]], device=device)), {},
                 "gather[dim1,repeated]")
    yield Sample((mk.randn(3, 4), 0, torch.tensor([[2, 1, 0, 0]], device=device)), {}, "gather[dim0,smaller]")
    yield Sample((mk.randn(2, 3, 2), -2, mk.randint(3, 2, 5, 2)), {}, "gather[negdim,larger]")


@register("gather", torch_fn=torch.gather, tensor_args=("input", "dim", "index"), samples=gather_samples,
          nondifferentiable=("dim", "index"), aliases=(torch.Tensor.gather,))
def gather_backward(grad_output, input, dim, index, *, needs_input_grad, sparse_grad=False):
    """dL/dx = zeros.scatter_add(dim, index, g) (repeated indices accumulate)."""
    op = "gather"
    _check_index(op, index)
    if sparse_grad:
        raise UnsupportedError(f"{op}: sparse_grad=True gives a sparse gradient; the rule gives dense "
                               "gradients only (call with sparse_grad=False)")
    _dim(op, dim, input.dim())
    check_grad_shape(op, grad_output, tuple(index.shape))
    if not needs_input_grad[0]:
        return (None, None, None)
    zeros = torch.zeros(input.shape, dtype=grad_output.dtype, device=grad_output.device)
    return (zeros.scatter_add(dim, index, grad_output), None, None)


def _src_grad(grad_output, src, dim, index):
    """``dL/dsrc = g.gather(dim, index)`` on the index's extent; src elements beyond it are unused (0)."""
    gs = grad_output.gather(dim, index).to(src.dtype)
    if tuple(gs.shape) == tuple(src.shape):
        return gs
    pad = []
    for s, i in zip(reversed(src.shape), reversed(index.shape)):
        pad += [0, s - i]
    return F.pad(gs, pad)


def scatter_samples(device, dtype):
    mk = Maker(device, dtype)
    perm = torch.tensor([[2, 0, 3], [1, 3, 0]], device=device)                     # distinct per row
    yield Sample((mk.randn(3, 4), 1, perm, mk.randn(2, 3)), {}, "scatter[src,dim1]")
    yield Sample((mk.randn(3, 4), 0, torch.tensor([[2, 0, 1, 0]], device=device), mk.randn(1, 4)), {},
                 "scatter[src,dim0]")
    yield Sample((mk.randn(3, 4), 1, perm, 1.5), {}, "scatter[value,positional]")
    yield Sample((mk.randn(3, 4), 1, perm), {"value": -2.0}, "scatter[value,keyword]")


@register("scatter", torch_fn=torch.scatter, tensor_args=("input", "dim", "index", "src"), samples=scatter_samples,
          nondifferentiable=("dim", "index"), aliases=(torch.Tensor.scatter,))
def scatter_backward(grad_output, input, dim, index, src=None, *, needs_input_grad, value=None, reduce=None):
    """dL/dx = g.scatter(dim, index, 0) (written positions get nothing); dL/dsrc = g.gather(dim, index)."""
    op = "scatter"
    if reduce is not None:
        raise UnsupportedError(f"{op}: reduce={reduce!r} is not supported; the rule mirrors the plain overwrite")
    _check_index(op, index)
    _dim(op, dim, input.dim())
    check_grad_shape(op, grad_output, tuple(input.shape))
    gx = grad_output.scatter(dim, index, 0.0) if needs_input_grad[0] else None
    # src may be a number (torch.scatter(x, dim, index, 1.5)): then it has no gradient
    gs = _src_grad(grad_output, src, dim, index) if needs_input_grad[3] and isinstance(src, torch.Tensor) else None
    return (gx, None, None, gs)


def scatter_add_samples(device, dtype):
    mk = Maker(device, dtype)
    yield Sample((mk.randn(3, 4), 1, torch.tensor([[0, 0, 3], [1, 0, 0]], device=device), mk.randn(2, 3)), {},
                 "scatter_add[repeated]")
    yield Sample((mk.randn(3, 2), 0, torch.tensor([[2, 2], [2, 0]], device=device), mk.randn(2, 2)), {},
                 "scatter_add[dim0]")


@register("scatter_add", torch_fn=torch.scatter_add, tensor_args=("input", "dim", "index", "src"),
          samples=scatter_add_samples, nondifferentiable=("dim", "index"), aliases=(torch.Tensor.scatter_add,))
def scatter_add_backward(grad_output, input, dim, index, src, *, needs_input_grad):
    """dL/dx = g; dL/dsrc = g.gather(dim, index)."""
    op = "scatter_add"
    _check_index(op, index)
    _dim(op, dim, input.dim())
    check_grad_shape(op, grad_output, tuple(input.shape))
    gx = grad_output.view_as(grad_output) if needs_input_grad[0] else None
    gs = _src_grad(grad_output, src, dim, index) if needs_input_grad[3] else None
    return (gx, None, None, gs)


# -- cat, stack, split, chunk, unbind ---------------------------------------------------------

def _check_sequence(op, tensors):
    if not isinstance(tensors, (list, tuple)) or not tensors or \
            not all(isinstance(t, torch.Tensor) for t in tensors):
        raise InvalidInputError(f"{op}: tensors must be a non-empty list or tuple of tensors")


def _cast(g, like):
    return g.to(like.dtype) if like.is_floating_point() or like.is_complex() else None


def cat_samples(device, dtype):
    mk = Maker(device, dtype)
    yield Sample(([mk.randn(2, 3), mk.randn(2, 1), mk.randn(2, 2)],), {"dim": 1}, "cat[dim1]")
    yield Sample(((mk.randn(1, 2), mk.randn(3, 2)),), {}, "cat[tuple,dim0]")
    yield Sample(([mk.randn(2, 2), torch.arange(4, device=device).reshape(2, 2)],), {"dim": -1}, "cat[int_element]")
    yield Sample(([mk.randn(2, 3), mk.randn(0)],), {"dim": 1}, "cat[legacy_empty]")
    yield Sample(([mk.randn(2, 0), mk.randn(2, 2)],), {"dim": 1}, "cat[empty]")
    yield Sample(([mk.randn(3)],), {}, "cat[single]")
    yield Sample(([mk.randn(2, 2), mk.randn(2, 2).to(torch.float64)],), {"dim": 0}, "cat[promote]")


@register("cat", torch_fn=torch.cat, tensor_args=("tensors",), samples=cat_samples, sequence_args=("tensors",),
          aliases=(torch.concat, torch.concatenate))
def cat_backward(grad_output, tensors, *, needs_input_grad, dim=0):
    """dL/dx_k = g.narrow(dim, offset_k, size_k): the adjoint of a concatenation is a split."""
    op = "cat"
    _check_sequence(op, tensors)
    ref = next((t for t in tensors if not (t.dim() == 1 and t.shape[0] == 0)), tensors[0])
    d = _dim(op, dim, ref.dim())
    legacy = [t.dim() == 1 and t.shape[0] == 0 and ref.dim() != 1 for t in tensors]
    sizes = [0 if lg else t.shape[d] for t, lg in zip(tensors, legacy)]
    shape = list(ref.shape)
    shape[d] = sum(sizes)
    check_grad_shape(op, grad_output, tuple(shape))
    if not needs_input_grad[0]:
        return (None,)
    out, offset = [], 0
    for t, n, lg in zip(tensors, sizes, legacy):
        out.append(_cast(t.new_zeros((0,), dtype=grad_output.dtype) if lg else grad_output.narrow(d, offset, n), t))
        offset += n
    return (tuple(out),)


def stack_samples(device, dtype):
    mk = Maker(device, dtype)
    yield Sample(([mk.randn(2, 3), mk.randn(2, 3), mk.randn(2, 3)],), {}, "stack[dim0]")
    yield Sample(((mk.randn(2, 3), mk.randn(2, 3)),), {"dim": -1}, "stack[tuple,neg]")
    yield Sample(([mk.randn(), mk.randn()],), {"dim": 0}, "stack[0d]")
    yield Sample(([mk.randn(0, 2), mk.randn(0, 2)],), {"dim": 1}, "stack[empty]")


@register("stack", torch_fn=torch.stack, tensor_args=("tensors",), samples=stack_samples,
          sequence_args=("tensors",))
def stack_backward(grad_output, tensors, *, needs_input_grad, dim=0):
    """dL/dx_k = g.select(dim, k): the adjoint of stacking is unbinding."""
    op = "stack"
    _check_sequence(op, tensors)
    d = _dim(op, dim, tensors[0].dim() + 1)
    shape = list(tensors[0].shape)
    shape.insert(d, len(tensors))
    check_grad_shape(op, grad_output, tuple(shape))
    if not needs_input_grad[0]:
        return (None,)
    return (tuple(_cast(gk, t) for gk, t in zip(grad_output.unbind(d), tensors)),)


def _join_grads(op, outputs, grad_output):
    """The output gradients, zeros for the ones that got none, with their shapes checked."""
    gs = tuple(grad_output) if isinstance(grad_output, (tuple, list)) else None
    if gs is None or len(gs) != len(outputs):
        raise InvalidInputError(f"{op}: grad_output must be a tuple with one entry (or None) per output, "
                                f"{len(outputs)} outputs")
    ref = next((g for g in gs if g is not None), None)
    out = []
    for g, o in zip(gs, outputs):
        if g is None:
            g = torch.zeros(o.shape, dtype=ref.dtype if ref is not None else o.dtype, device=o.device)
        check_grad_shape(op, g, tuple(o.shape))
        out.append(g)
    return out


def split_samples(device, dtype):
    mk = Maker(device, dtype)
    yield Sample((mk.randn(5, 2),), {"split_size_or_sections": 2}, "split[int,uneven]")
    yield Sample((mk.randn(2, 6),), {"split_size_or_sections": [1, 3, 2], "dim": 1}, "split[list]")
    yield Sample((mk.randn(2, 3),), {"split_size_or_sections": [3, 0], "dim": -1}, "split[empty_piece]")
    yield Sample((mk.randn(3, 2),), {"split_size_or_sections": 5}, "split[single]")


@register("split", torch_fn=torch.split, tensor_args=("tensor",), samples=split_samples,
          aliases=(torch.Tensor.split,))
def split_backward(grad_output, tensor, *, needs_input_grad, split_size_or_sections, dim=0):
    """dL/dx = cat(g_1, ..., g_k) along dim (zeros for outputs without a gradient)."""
    op = "split"
    _dim(op, dim, tensor.dim())
    try:
        pieces = torch.split(tensor, split_size_or_sections, dim)
    except (RuntimeError, ValueError, TypeError) as e:
        raise InvalidParameterError(f"{op}: torch rejects split_size_or_sections={split_size_or_sections!r} for "
                                    f"shape {tuple(tensor.shape)}: {str(e).splitlines()[0]}") from None
    gs = _join_grads(op, pieces, grad_output)
    if not needs_input_grad[0]:
        return (None,)
    return (torch.cat(gs, dim),)


def chunk_samples(device, dtype):
    mk = Maker(device, dtype)
    yield Sample((mk.randn(6, 2),), {"chunks": 3}, "chunk[even]")
    yield Sample((mk.randn(2, 5),), {"chunks": 2, "dim": 1}, "chunk[uneven]")
    yield Sample((mk.randn(2, 5),), {"chunks": 4, "dim": -1}, "chunk[fewer_than_asked]")


@register("chunk", torch_fn=torch.chunk, tensor_args=("input",), samples=chunk_samples,
          aliases=(torch.Tensor.chunk,))
def chunk_backward(grad_output, input, *, needs_input_grad, chunks, dim=0):
    """dL/dx = cat(g_1, ..., g_k) along dim (zeros for outputs without a gradient)."""
    op = "chunk"
    _dim(op, dim, input.dim())
    if not isinstance(chunks, int) or isinstance(chunks, bool) or chunks < 1:
        raise InvalidParameterError(f"{op}: chunks must be a positive int, got {chunks!r}")
    gs = _join_grads(op, torch.chunk(input, chunks, dim), grad_output)
    if not needs_input_grad[0]:
        return (None,)
    return (torch.cat(gs, dim),)


def unbind_samples(device, dtype):
    mk = Maker(device, dtype)
    yield Sample((mk.randn(3, 2),), {}, "unbind[dim0]")
    yield Sample((mk.randn(2, 3, 2),), {"dim": -2}, "unbind[neg]")
    yield Sample((mk.randn(2),), {"dim": 0}, "unbind[->0d]")


@register("unbind", torch_fn=torch.unbind, tensor_args=("input",), samples=unbind_samples,
          aliases=(torch.Tensor.unbind,))
def unbind_backward(grad_output, input, *, needs_input_grad, dim=0):
    """dL/dx = stack(g_1, ..., g_k) along dim (zeros for outputs without a gradient)."""
    op = "unbind"
    d = _dim(op, dim, input.dim())
    gs = _join_grads(op, torch.unbind(input, d), grad_output)
    if not needs_input_grad[0]:
        return (None,)
    return (torch.stack(gs, d),)


# -- where, masked_fill ------------------------------------------------------------------------

def where_samples(device, dtype):
    mk = Maker(device, dtype)
    yield Sample((mk.randn(3, 4) > 0, mk.randn(3, 4), mk.randn(3, 4)), {}, "where[same]")
    yield Sample((mk.randn(3, 1) > 0, mk.randn(1, 4), mk.randn(3, 4)), {}, "where[broadcast]")
    yield Sample((mk.randn(2, 3) > 0, mk.randn(2, 3), 0.0), {}, "where[scalar_other]")
    yield Sample((mk.randn(2, 3) > 0, 1.5, mk.randn(3)), {}, "where[scalar_input]")
    yield Sample((mk.randn(2, 2) > 0, mk.randn(2, 2) * float("nan"), mk.randn(2, 2)), {}, "where[nan_branch]")
    yield Sample((mk.randn() > 0, mk.randn(), mk.randn()), {}, "where[0d]")


@register("where", torch_fn=torch.where, tensor_args=("condition", "input", "other"), samples=where_samples,
          nondifferentiable=("condition",))
def where_backward(grad_output, condition, input, other, *, needs_input_grad):
    """dL/dx = unbroadcast(where(c, g, 0)), dL/dy = unbroadcast(where(c, 0, g))."""
    op = "where"
    if not isinstance(condition, torch.Tensor) or condition.dtype != torch.bool:
        raise InvalidInputError(f"{op}: condition must be a bool tensor, got "
                                f"{getattr(condition, 'dtype', type(condition).__name__)}")
    shapes = [tuple(t.shape) for t in (condition, input, other) if isinstance(t, torch.Tensor)]
    check_grad_shape(op, grad_output, tuple(torch.broadcast_shapes(*shapes)))
    zero = torch.zeros((), dtype=grad_output.dtype, device=grad_output.device)
    gx = gy = None
    if needs_input_grad[1]:
        gx = unbroadcast(torch.where(condition, grad_output, zero), input.shape).to(input.dtype)
    if needs_input_grad[2]:
        gy = unbroadcast(torch.where(condition, zero, grad_output), other.shape).to(other.dtype)
    return (None, gx, gy)


def masked_fill_samples(device, dtype):
    mk = Maker(device, dtype)
    yield Sample((mk.randn(3, 4), mk.randn(3, 4) > 0, 2.0), {}, "masked_fill[number]")
    yield Sample((mk.randn(3, 4), mk.randn(4) > 0, mk.randn()), {}, "masked_fill[tensor_value,broadcast_mask]")
    yield Sample((mk.randn(3, 1), mk.randn(3, 4) > 0, mk.randn()), {}, "masked_fill[broadcast_input]")


@register("masked_fill", torch_fn=torch.masked_fill, tensor_args=("input", "mask", "value"),
          samples=masked_fill_samples, nondifferentiable=("mask",), aliases=(torch.Tensor.masked_fill,))
def masked_fill_backward(grad_output, input, mask, value, *, needs_input_grad):
    """dL/dx = unbroadcast(g off the mask); dL/dv = sum of g on the mask."""
    op = "masked_fill"
    if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
        raise InvalidInputError(f"{op}: mask must be a bool tensor, got {getattr(mask, 'dtype', type(mask).__name__)}")
    check_grad_shape(op, grad_output, tuple(torch.broadcast_shapes(input.shape, mask.shape)))
    zero = torch.zeros((), dtype=grad_output.dtype, device=grad_output.device)
    gx = unbroadcast(torch.where(mask, zero, grad_output), input.shape) if needs_input_grad[0] else None
    gv = None
    if needs_input_grad[2]:
        gv = torch.where(mask, grad_output, zero).sum().reshape(value.shape).to(value.dtype)
    return (gx, None, gv)


# -- embedding ------------------------------------------------------------------------------

def embedding_samples(device, dtype):
    mk = Maker(device, dtype)
    idx = torch.tensor([[0, 2, 2], [4, 2, 1]], device=device)
    yield Sample((idx, mk.randn(5, 3)), {}, "embedding[repeated]")
    yield Sample((torch.tensor(3, device=device), mk.randn(5, 2)), {}, "embedding[0d_index]")
    yield Sample((idx, mk.randn(5, 3)), {"padding_idx": 3}, "embedding[unused_padding_idx]")
    # checked in tests/manual/test_indexing.py instead: padding_idx on a used row (a convention that
    # finite differences of the forward cannot see), max_norm (torch's forward renormalises the weight
    # in place), scale_grad_by_freq (torch's own double backward ignores it) and empty indices (torch's
    # double backward fails on them)


@register("embedding", torch_fn=F.embedding, tensor_args=("input", "weight"), samples=embedding_samples,
          nondifferentiable=("input",))
def embedding_backward(grad_output, input, weight, *, needs_input_grad, padding_idx=None, max_norm=None,
                       norm_type=2.0, scale_grad_by_freq=False, sparse=False):
    """dL/dW[r] = sum of g[o] over {o : idx[o] = r} (not for padding_idx; / count with scale_grad_by_freq)."""
    op = "embedding"
    _check_index(op, input, "input")
    if sparse:
        raise UnsupportedError(f"{op}: sparse=True gives a sparse gradient; the rule gives dense gradients "
                               "only (call with sparse=False)")
    if weight.dim() != 2:
        raise InvalidInputError(f"{op}: weight must be 2-d (num_embeddings, dim), got shape {tuple(weight.shape)}")
    num, D = weight.shape
    check_grad_shape(op, grad_output, tuple(input.shape) + (D,))
    if padding_idx is not None:
        if not -num <= padding_idx < num:
            raise InvalidParameterError(f"{op}: padding_idx must be within [{-num}, {num - 1}], got {padding_idx}")
        padding_idx %= num
    if not needs_input_grad[1]:
        return (None, None)
    idx = input.reshape(-1)
    g = grad_output.reshape(-1, D)
    if padding_idx is not None:
        g = torch.where((idx != padding_idx).unsqueeze(1), g, torch.zeros((), dtype=g.dtype, device=g.device))
    if scale_grad_by_freq:
        counts = torch.bincount(idx, minlength=num).to(g.dtype)
        g = g / counts[idx].unsqueeze(1)
    zeros = torch.zeros(weight.shape, dtype=grad_output.dtype, device=grad_output.device)
    return (None, zeros.index_add(0, idx, g))
