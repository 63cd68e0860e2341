"""Pooling rules: ``max_pool{1,2,3}d``, ``avg_pool{1,2,3}d``, ``adaptive_max_pool{1,2}d``,
``adaptive_avg_pool{1,2,3}d``.

Geometry along one spatial axis (input length ``L``, kernel ``k``, stride ``s``,
padding ``p``, dilation ``d``): window ``o`` reads the input positions
``pos(o, j) = o s + j d - p`` for ``j = 0 .. k-1``; positions outside ``[0, L)`` are
padding.  All the pooling operators are separable over the spatial axes.

* max pool: ``y[o] = x[a(o)]`` with ``a(o)`` the selected position of window ``o``, so
  ``dL/dx[i] = sum over {o : a(o) = i} of g[o]`` (a scatter-add; overlapping windows
  that select the same element accumulate).  Selection follows torch's CPU and CUDA
  kernels: scan the window in row-major order (d, then h, then w) and keep ``val`` if
  ``val > maxval or isnan(val)``, starting from the first in-bounds element.  Hence:
  the FIRST maximum wins a tie, the LAST NaN wins if the window holds NaNs, and a
  window of ``-inf`` selects its first in-bounds element.  (One torch quirk is not
  mirrored: its CPU channels_last_3d kernel drops the depth offset for all-``-inf``
  windows in the channels past the last full vector; the rule follows the contiguous
  kernel there.)  A window lying wholly in the padding (possible with dilation) is
  refused: torch indexes out of bounds there.
  Speed: ``_max_pool_selection_fast`` finds the same element with a separable, channels-last
  first-maximum (a few vector ops per axis) whenever no window holds a NaN or only ``-inf``
  (detected from the window maxima); otherwise the full scan ``_max_pool_selection`` runs.
  With ``return_indices=True`` the forward returns ``(values, indices)`` and ``grad_output``
  is ``(g, None)``: the indices are integers and get no gradient; the rule's selection is
  tested to equal torch's indices (ties, NaN, ``-inf``).
  torch's own ``return_indices`` are NOT used: the rule stays an independent check of the
  kernel under test, and the backward never sees the forward's results, so recomputing the
  selection (the cost of about one more forward on CPU) is the price of that independence.
* average pool: ``y = (A_1 (x) A_2 (x) A_3) x / div`` with ``A_a[o, i] = 1[i in window o]``
  a 0/1 matrix per axis, so ``dL/dx = (A_1^T (x) A_2^T (x) A_3^T) (g / div)``: the
  adjoint, one matmul per axis.  torch's divisor: ``divisor_override`` if given, else
  with ``count_include_pad`` the window length clipped to the padded extent
  ``[-p, L + p)`` (ceil_mode windows that run past it are NOT counted in full), else
  the number of in-bounds elements.
* adaptive average pool: window ``o`` is ``[floor(o L / O), ceil((o + 1) L / O))`` and
  the divisor its length; backward is the same adjoint.
* adaptive max pool: the same windows, and torch's max-pool selection within each
  (``val > maxval or isnan(val)`` scanning row-major from the window's first element,
  which is kept when the window is all ``-inf``): first maximum, last NaN.  The windows
  differ in length, so the scan runs over the longest window's offsets with the
  offsets past a window's end masked out; ``dL/dx`` is the same scatter-add.

Symbolic forwards: max pool is a ``sympy.Piecewise`` encoding the first-maximum
convention (not ``sympy.Max``, whose derivative at a tie is not torch's); averages are
``Add(window) / divisor`` with the same divisor rule.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
import sympy
import torch
import torch.nn.functional as F

from gradcheck_kit.errors import InvalidInputError, InvalidParameterError, UnsupportedError
from gradcheck_kit.manual._sampling import Maker
from gradcheck_kit.manual._shapes import ntuple
from gradcheck_kit.manual.registry import Sample, register

__all__ = ["pool_output_size"]


# -- geometry -------------------------------------------------------------------------


@dataclass(frozen=True)
class _Axis:
    """One spatial axis of a pooling window: input length L, output length O."""

    L: int
    O: int
    k: int
    s: int
    p: int
    d: int = 1

    def windows(self) -> list[list[int]]:
        """In-bounds input positions of every window, in scan order."""
        return [[o * self.s + j * self.d - self.p for j in range(self.k)
                 if 0 <= o * self.s + j * self.d - self.p < self.L] for o in range(self.O)]


def pool_output_size(L: int, k: int, s: int, p: int, d: int, ceil_mode: bool) -> int:
    """torch's ``pooling_output_shape``.

    ``O = floor((L + 2p - d (k - 1) - 1 + (s - 1 if ceil_mode)) / s) + 1``; with
    ``ceil_mode`` the last window must start inside the input or its left padding:
    if ``(O - 1) s >= L + p`` it is dropped.
    """
    O = (L + 2 * p - d * (k - 1) - 1 + (s - 1 if ceil_mode else 0)) // s + 1
    if ceil_mode and (O - 1) * s >= L + p:
        O -= 1
    return O


def _spatial(op: str, nd: int, input) -> tuple[bool, tuple[int, ...]]:
    """(batched?, spatial shape); ``input`` is ``(N, C, *S)`` or ``(C, *S)``."""
    dim = len(input.shape)  # a tensor or a numpy object array (symbolic forward)
    if dim not in (nd + 1, nd + 2):
        raise InvalidInputError(f"{op}: input must have {nd + 1} (unbatched) or {nd + 2} (batched) "
                                f"dimensions, got shape {tuple(input.shape)}")
    return dim == nd + 2, tuple(input.shape[-nd:])


def _pool_axes(op: str, nd: int, input, kernel_size, stride, padding, dilation, ceil_mode) -> tuple[_Axis, ...]:
    _, S = _spatial(op, nd, input)
    k = ntuple(kernel_size, nd, "kernel_size")
    s = k if stride is None or (not isinstance(stride, int) and len(stride) == 0) else ntuple(stride, nd, "stride")
    p = ntuple(padding, nd, "padding")
    d = ntuple(dilation, nd, "dilation")
    if min(k) <= 0:
        raise InvalidParameterError(f"{op}: kernel_size must be positive, got {kernel_size!r}")
    if min(s) <= 0:
        raise InvalidParameterError(f"{op}: stride must be positive, got {stride!r}")
    if min(d) <= 0:
        raise InvalidParameterError(f"{op}: dilation must be positive, got {dilation!r}")
    if min(p) < 0 or any(pi > ki // 2 for pi, ki in zip(p, k)):
        raise InvalidParameterError(f"{op}: padding must be between 0 and half the kernel size, "
                                    f"got padding={padding!r} for kernel_size={kernel_size!r}")
    axes = tuple(_Axis(L, pool_output_size(L, ki, si, pi, di, bool(ceil_mode)), ki, si, pi, di)
                 for L, ki, si, pi, di in zip(S, k, s, p, d))
    if any(a.O < 1 for a in axes):
        raise InvalidParameterError(f"{op}: input of spatial size {S} is too small for kernel_size={kernel_size!r}, "
                                    f"padding={padding!r}, dilation={dilation!r} (output size would be "
                                    f"{tuple(a.O for a in axes)})")
    return axes


def _check_grad(op: str, grad_output, shape) -> None:
    if tuple(grad_output.shape) != tuple(shape):
        raise InvalidInputError(f"{op}: grad_output has shape {tuple(grad_output.shape)} but the output "
                                f"has shape {tuple(shape)}")


# -- max pooling --------------------------------------------------------------------


#: Route max-pool backwards through ``_max_pool_selection_fast`` when it applies (no NaN,
#: no all ``-inf`` window).  Set to False to force the general scan (tests compare both).
MAX_POOL_FAST_PATH = True


def _max_pool_selection_fast(x: torch.Tensor, axes: tuple[_Axis, ...]) -> torch.Tensor | None:
    """``_max_pool_selection`` for windows whose maximum is > -inf and not NaN; else None.

    Separable first-maximum, one axis at a time from the innermost (w) outwards, on a
    channels-last ``-inf``-padded copy (C innermost: every op is a contiguous vector op):
    for axis ``a`` with slices ``v_j`` (offset ``j``) and ``M = max_j v_j``, the first
    maximum is ``j* = n_0 (1 + n_1 (1 + ... n_{k-2}))`` with ``n_j = [v_j != M]``, and a
    local index ``L`` of an inner axis is carried from the chosen slice:
    ``L_{j*} = L_0 + n_0 (L_1 - L_0 + n_1 (L_2 - L_1 + ...))`` (uint8, exact mod 256).
    Row-major first maximum == lexicographic first over (j_1 .. j_nd) == this recursion.
    The rule is exact only without NaN (torch takes the LAST NaN) and without all ``-inf``
    windows (torch takes the first in-bounds element, the padding here is ``-inf`` too):
    both make ``sum(M)`` NaN or ``-inf``, and then None sends the caller to the full scan.
    """
    nd = len(axes)
    if max(ax.k for ax in axes) > 255:                                       # uint8 local indices
        return None
    N, C = x.shape[:2]
    xl = x.movedim(1, -1)                                                    # (N, S_1 .. S_nd, C): a view
    pads = [(ax.p, max(0, (ax.O - 1) * ax.s + (ax.k - 1) * ax.d + 1 - ax.L - ax.p)) for ax in axes]
    if any(lo or hi for lo, hi in pads):
        buf = x.new_empty((N, *[ax.L + lo + hi for ax, (lo, hi) in zip(axes, pads)], C))
        for dim, (ax, (lo, hi)) in enumerate(zip(axes, pads), start=1):     # -inf borders, x inside
            buf.narrow(dim, 0, lo).fill_(float("-inf"))
            buf.narrow(dim, lo + ax.L, hi).fill_(float("-inf"))
        buf[(slice(None), *[slice(lo, lo + ax.L) for ax, (lo, _) in zip(axes, pads)])] = xl
        xl = buf
    else:
        xl = xl.contiguous()                                                 # free for channels_last input

    def sl(t, dim, j, ax):
        v = t.narrow(dim, j * ax.d, (ax.O - 1) * ax.s + 1)
        return v[(slice(None),) * dim + (slice(None, None, ax.s),)] if ax.s > 1 else v

    V, locs = xl, []                                                         # locs: inner axes first
    for a in reversed(range(nd)):
        ax, dim = axes[a], a + 1
        vs = [sl(V, dim, j, ax) for j in range(ax.k)]
        M = vs[0]
        for v in vs[1:]:
            M = torch.maximum(M, v)                                          # NaN propagates
        ns = [(v != M).view(torch.uint8) for v in vs[:-1]]                   # 1: not the maximum
        new = []
        for L in locs:
            Ls = [sl(L, dim, j, ax) for j in range(ax.k)]
            acc = None
            for j in reversed(range(ax.k - 1)):
                diff = Ls[j + 1] - Ls[j]
                acc = ns[j] * (diff if acc is None else diff + acc)
            new.append(Ls[0] if acc is None else Ls[0] + acc)
        acc = None
        for n in reversed(ns):
            acc = n if acc is None else n * (acc + 1)
        new.append(torch.zeros(M.shape, dtype=torch.uint8, device=x.device) if acc is None else acc)
        V, locs = M, new
    if not bool(V.sum() > float("-inf")):                                    # a NaN or an all -inf window
        return None
    # flat = sum_a (o_a s_a - p_a + j_a d_a) * stride_a, stride_a = prod_{b > a} L_b
    strides = [int(np.prod([b.L for b in axes[a + 1:]], dtype=np.int64)) for a in range(nd)]
    # computed channels-last in int32 (vector ops), one final int64 pass back to (N, C, O...)
    idt = torch.int32 if int(np.prod([ax.L for ax in axes], dtype=np.int64)) < 2 ** 31 else torch.int64
    base = torch.zeros((), dtype=idt, device=x.device)
    for a, ax in enumerate(axes):
        pos = torch.arange(ax.O, device=x.device, dtype=idt) * ax.s - ax.p
        base = base + (pos * strides[a]).reshape((-1,) + (1,) * (nd - a))   # (O_1 .. O_nd, 1)
    flat = torch.add(base, locs[-1], alpha=axes[0].d * strides[0])           # a fresh tensor: in place is safe
    for a, j in zip(reversed(range(1, nd)), locs[:-1]):
        flat.add_(j, alpha=axes[a].d * strides[a])
    return flat.movedim(-1, 1).to(torch.int64, memory_format=torch.contiguous_format)


def _max_pool_selection(x: torch.Tensor, axes: tuple[_Axis, ...]) -> torch.Tensor:
    """Flat spatial index of the element each window selects, shape ``(N, C, O_1 ... O_nd)``.

    For each kernel offset ``j = (j_1 .. j_nd)`` the elements ``x[pos(o, j)]`` of all
    windows form one strided slice of the ``-inf``-padded input.  With ``m`` the
    window maximum (NaN propagating), torch's rule picks the smallest ``j`` (row-major)
    with ``x_j == m`` among in-bounds positions, or the largest ``j`` with ``x_j`` NaN.
    """
    nd = len(axes)
    # -inf padding: p before each axis, and enough after for the last (ceil_mode) window.
    pads = []
    for ax in reversed(axes):
        need = (ax.O - 1) * ax.s + (ax.k - 1) * ax.d + 1
        pads += [ax.p, max(0, need - ax.L - ax.p)]
    xp = F.pad(x, pads, value=float("-inf"))
    offsets = list(itertools.product(*[range(ax.k) for ax in axes]))         # row-major scan order

    def window_slice(j):
        return xp[(..., *[slice(ja * ax.d, ja * ax.d + (ax.O - 1) * ax.s + 1, ax.s) for ja, ax in zip(j, axes)])]

    def flat_index(j):
        """Flat input index of pos(o, j) for every o, and whether it is in bounds: (O_1 .. O_nd) each."""
        flat = torch.zeros((), dtype=torch.int64, device=x.device)
        ok = torch.ones((), dtype=torch.bool, device=x.device)
        for a, (ja, ax) in enumerate(zip(j, axes)):
            pos = (torch.arange(ax.O, device=x.device) * ax.s + ja * ax.d - ax.p).reshape((-1,) + (1,) * (nd - 1 - a))
            stride = int(np.prod([b.L for b in axes[a + 1:]], dtype=np.int64))
            flat = flat + pos * stride
            ok = ok & (pos >= 0) & (pos < ax.L)
        return flat, ok

    m = window_slice(offsets[0])
    for j in offsets[1:]:
        m = torch.maximum(m, window_slice(j))                                # NaN propagates
    sel = torch.zeros(m.shape, dtype=torch.int64, device=x.device)
    for j in reversed(offsets):                                              # the last write is the first max
        flat, ok = flat_index(j)
        sel = torch.where((window_slice(j) == m) & ok, flat, sel)
    nan = torch.isnan(m)
    if bool(nan.any()):
        last_nan = sel
        for j in offsets:                                                    # the last write is the last NaN
            flat, _ = flat_index(j)
            last_nan = torch.where(torch.isnan(window_slice(j)), flat, last_nan)
        sel = torch.where(nan, last_nan, sel)
    return sel


def _values_grad(op, grad_output, return_indices):
    """The cotangent of the values: with ``return_indices`` the forward returns ``(values, indices)``
    and ``grad_output`` is ``(g, None)`` (``None`` for g too when the values were unused)."""
    if not return_indices:
        return grad_output
    if not isinstance(grad_output, (tuple, list)) or len(grad_output) != 2 or grad_output[1] is not None:
        raise InvalidInputError(f"{op}: with return_indices=True grad_output must be a pair (g, None): the "
                                "values' gradient and None for the integer indices")
    return grad_output[0]


def _scatter_selected(x, g, idx, S, batched):
    """``dL/dx[i] = sum over {o : a(o) = i} of g[o]`` for flat spatial selections ``idx`` (N, C, O...)."""
    N, C = x.shape[:2]
    # scatter_add_ into fresh zeros: linear in g; in place on a tensor of our own saves the copy
    # that the out-of-place scatter_add makes
    zeros = torch.zeros(N, C, int(np.prod(S, dtype=np.int64)), dtype=g.dtype, device=g.device)
    gx = zeros.scatter_add_(2, idx.reshape(N, C, -1), g.reshape(N, C, -1)).reshape(x.shape)
    return gx if batched else gx.squeeze(0)


def _max_pool_backward(op, nd, grad_output, input, needs_input_grad, kernel_size, stride, padding,
                       dilation, ceil_mode, return_indices, indices=None):
    grad_output = _values_grad(op, grad_output, return_indices)
    axes = _max_pool_axes(op, nd, input, kernel_size, stride, padding, dilation, ceil_mode)
    batched, S = _spatial(op, nd, input)
    out_shape = input.shape[: input.dim() - nd] + tuple(a.O for a in axes)
    if grad_output is None:                                                  # values unused: no gradient
        return (torch.zeros_like(input) if needs_input_grad[0] else None,)
    _check_grad(op, grad_output, out_shape)
    if not needs_input_grad[0]:
        return (None,)
    x = input if batched else input.unsqueeze(0)
    g = grad_output if batched else grad_output.unsqueeze(0)
    if indices is not None:  # the forward's selection (register(save=...)): flat positions per plane
        idx = indices if batched else indices.unsqueeze(0)
    else:
        idx = _max_pool_selection_fast(x, axes) if MAX_POOL_FAST_PATH else None
        if idx is None:
            idx = _max_pool_selection(x, axes)
    # dL/dx[i] = sum_{o : a(o) = i} g[o]
    return (_scatter_selected(x, g, idx, S, batched),)


def _max_pool_axes(op, nd, input, kernel_size, stride, padding, dilation, ceil_mode):
    axes = _pool_axes(op, nd, input, kernel_size, stride, padding, dilation, ceil_mode)
    for ax in axes:
        if any(not w for w in ax.windows()):
            # torch's kernel then selects an out-of-bounds index (and its backward writes there).
            raise UnsupportedError(f"{op}: with dilation={dilation!r} and padding={padding!r} a window of the "
                                   f"input of spatial size {tuple(a.L for a in axes)} lies entirely in the padding")
    return axes


def _first_max(elems: list):
    """The first maximum of ``elems`` as a Piecewise (torch's tie convention).

    ``Piecewise((e_j, e_j >= e_i for all i > j), ...)``: the first branch whose element
    is >= every later one is the first maximum (earlier maxima would have matched).
    """
    if len(elems) == 1:
        return elems[0]
    pieces = [(e, sympy.And(*[e >= f for f in elems[j + 1:]])) for j, e in enumerate(elems[:-1])]
    return sympy.Piecewise(*pieces, (elems[-1], True))


def _symbolic_pool(input, axes, reduce):
    """Apply ``reduce(list of elements, per-axis windows)`` to every window of ``input``."""
    nd = len(axes)
    lead = input.shape[: input.ndim - nd]
    wins = [ax.windows() for ax in axes]
    out = np.empty(lead + tuple(len(w) for w in wins), dtype=object)
    for b in np.ndindex(*lead):
        for o in itertools.product(*[range(len(w)) for w in wins]):
            ws = [wins[a][o[a]] for a in range(nd)]
            elems = [input[b + i] for i in itertools.product(*ws)]
            out[b + o] = reduce(elems, o)
    return out


def _make_max_pool(nd: int, torch_fn, samples):
    op = f"max_pool{nd}d"

    def symbolic(input, *, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False,
                 return_indices=False):
        # Max with torch's tie convention (first maximum in scan order) as a Piecewise.
        if return_indices:
            raise UnsupportedError(f"{op}: the symbolic forward gives the values only (return_indices=False)")
        axes = _max_pool_axes(op, nd, input, kernel_size, stride, padding, dilation, ceil_mode)
        return _symbolic_pool(input, axes, lambda elems, o: _first_max(elems))

    def save(input, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False, return_indices=False):
        # torch's forward with its indices (flat positions in each input plane, the same first-maximum
        # convention): saved["indices"] spares the backward the search for each window's maximum
        out, idx = torch_fn(input, kernel_size, stride, padding, dilation, ceil_mode, return_indices=True)
        return ((out, idx) if return_indices else out), {"indices": idx}

    @register(op, torch_fn=torch_fn, tensor_args=("input",), samples=samples, symbolic=symbolic, save=save)
    def backward(grad_output, input, *, needs_input_grad, kernel_size, stride=None, padding=0, dilation=1,
                 ceil_mode=False, return_indices=False, saved=None):
        # dL/dx = scatter_add of g onto the first maximum (last NaN) of each window
        return _max_pool_backward(op, nd, grad_output, input, needs_input_grad, kernel_size, stride,
                                  padding, dilation, ceil_mode, return_indices,
                                  indices=(saved or {}).get("indices"))

    backward.__name__ = backward.__qualname__ = f"{op}_backward"
    backward.__doc__ = (f"dL/dx[i] = sum of g[o] over the windows o of {op} that select x[i] "
                        "(first maximum in scan order; last NaN).")
    return backward, symbolic


# -- average pooling --------------------------------------------------------------


def _adjoint_sum(h: torch.Tensor, mats: list[torch.Tensor]) -> torch.Tensor:
    """``(A_1^T (x) ... (x) A_n^T) h`` over the last ``n`` axes of ``h``; ``A_a`` is ``(O_a, L_a)``."""
    nd = len(mats)
    for a, A in enumerate(mats):
        dim = h.dim() - nd + a
        h = torch.movedim(torch.movedim(h, dim, -1) @ A.to(h.dtype), -1, dim)
    return h


def _outer(vectors: list[torch.Tensor]) -> torch.Tensor:
    """Outer product of 1-d tensors: ``out[o_1, ..., o_n] = prod_a v_a[o_a]``."""
    out = vectors[0]
    for v in vectors[1:]:
        out = out.unsqueeze(-1) * v
    return out


def _avg_windows(axes: tuple[_Axis, ...], count_include_pad: bool, device) -> tuple[list, torch.Tensor]:
    """Per-axis membership matrices ``A_a[o, i]`` and the divisor tensor (without override)."""
    mats, counts = [], []
    for ax in axes:
        start = torch.arange(ax.O, device=device) * ax.s - ax.p                      # may be < 0
        end = torch.clamp(start + ax.k, max=ax.L + ax.p)                             # padded extent
        i = torch.arange(ax.L, device=device)
        mats.append(((i[None, :] >= start[:, None]) & (i[None, :] < end[:, None])).to(torch.int64))
        if count_include_pad:
            counts.append(end - start)
        else:
            counts.append(torch.clamp(end, max=ax.L) - torch.clamp(start, min=0))
    return mats, _outer(counts)


def _avg_pool_params(op, nd, input, kernel_size, stride, padding, ceil_mode, divisor_override):
    axes = _pool_axes(op, nd, input, kernel_size, stride, padding, 1, ceil_mode)
    if divisor_override is not None and (not isinstance(divisor_override, int) or divisor_override == 0):
        raise InvalidParameterError(f"{op}: divisor_override must be a nonzero int or None, got {divisor_override!r}")
    return axes


def _avg_pool_backward(op, nd, grad_output, input, needs_input_grad, kernel_size, stride, padding,
                       ceil_mode, count_include_pad, divisor_override):
    axes = _avg_pool_params(op, nd, input, kernel_size, stride, padding, ceil_mode, divisor_override)
    _check_grad(op, grad_output, input.shape[: input.dim() - nd] + tuple(a.O for a in axes))
    if not needs_input_grad[0]:
        return (None,)
    mats, div = _avg_windows(axes, count_include_pad, grad_output.device)
    if divisor_override is not None:
        div = divisor_override
    else:
        div = div.to(grad_output.dtype)
    # y = (A_1 (x) ... (x) A_n) x / div   =>   dL/dx = (A_1^T (x) ... (x) A_n^T)(g / div)
    return (_adjoint_sum(grad_output / div, mats),)


def _avg_symbolic(op, nd, input, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override):
    axes = _avg_pool_params(op, nd, input, kernel_size, stride, padding, ceil_mode, divisor_override)
    _, div = _avg_windows(axes, count_include_pad, "cpu")
    div = div.tolist()

    def mean(elems, o):
        d = divisor_override if divisor_override is not None else _index(div, o)
        return sympy.Add(*elems) / sympy.Integer(d)

    return _symbolic_pool(input, axes, mean)


def _index(nested, o):
    for i in o:
        nested = nested[i]
    return nested


def _make_avg_pool(nd: int, torch_fn, samples):
    op = f"avg_pool{nd}d"
    doc = (f"dL/dx = A^T (g / div): the adjoint of the 0/1 window sums of {op}, with torch's "
           "divisor (divisor_override, or the window clipped to the padded extent, or its in-bounds count).")

    if nd == 1:  # F.avg_pool1d has no divisor_override
        def symbolic(input, *, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True):
            return _avg_symbolic(op, nd, input, kernel_size, stride, padding, ceil_mode, count_include_pad, None)

        def backward(grad_output, input, *, needs_input_grad, kernel_size, stride=None, padding=0,
                     ceil_mode=False, count_include_pad=True):
            return _avg_pool_backward(op, nd, grad_output, input, needs_input_grad, kernel_size, stride,
                                      padding, ceil_mode, count_include_pad, None)
    else:
        def symbolic(input, *, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True,
                     divisor_override=None):
            return _avg_symbolic(op, nd, input, kernel_size, stride, padding, ceil_mode, count_include_pad,
                                 divisor_override)

        def backward(grad_output, input, *, needs_input_grad, kernel_size, stride=None, padding=0,
                     ceil_mode=False, count_include_pad=True, divisor_override=None):
            return _avg_pool_backward(op, nd, grad_output, input, needs_input_grad, kernel_size, stride,
                                      padding, ceil_mode, count_include_pad, divisor_override)

    backward.__name__ = backward.__qualname__ = f"{op}_backward"
    backward.__doc__ = doc
    register(op, torch_fn=torch_fn, tensor_args=("input",), samples=samples, symbolic=symbolic)(backward)
    return backward, symbolic


# -- adaptive average pooling ---------------------------------------------------------


def _adaptive_axes(op: str, nd: int, input, output_size) -> tuple[tuple[int, int], ...]:
    """(L, O) per axis; ``None`` entries of ``output_size`` keep the input size."""
    _, S = _spatial(op, nd, input)
    if output_size is None or isinstance(output_size, int):
        outs = (output_size,) * nd
    else:
        outs = tuple(output_size)
        if len(outs) == 1:
            outs = outs * nd
    if len(outs) != nd or not all(o is None or (isinstance(o, int) and o >= 0) for o in outs):
        raise InvalidParameterError(f"{op}: output_size must be an int or a tuple of {nd} ints or None, "
                                    f"got {output_size!r}")
    if min(S) < 1:
        raise InvalidInputError(f"{op}: input must have nonzero spatial sizes, got shape {tuple(input.shape)}")
    return tuple((L, L if o is None else o) for L, o in zip(S, outs))


def _adaptive_bounds(L: int, O: int) -> list[tuple[int, int]]:
    """Window ``o`` covers ``[floor(o L / O), ceil((o + 1) L / O))``."""
    return [((o * L) // O, -((-(o + 1) * L) // O)) for o in range(O)]


def adaptive_avg_pool2d_symbolic(input, *, output_size):
    op = "adaptive_avg_pool2d"
    dims = _adaptive_axes(op, 2, input, output_size)
    bounds = [_adaptive_bounds(L, O) for L, O in dims]
    lead = input.shape[:-2]
    out = np.empty(lead + tuple(O for _, O in dims), dtype=object)
    for b in np.ndindex(*lead):
        for oh, ow in itertools.product(range(dims[0][1]), range(dims[1][1])):
            (h0, h1), (w0, w1) = bounds[0][oh], bounds[1][ow]
            elems = [input[b + (i, j)] for i in range(h0, h1) for j in range(w0, w1)]
            out[b + (oh, ow)] = sympy.Add(*elems) / sympy.Integer((h1 - h0) * (w1 - w0))
    return out


def adaptive_avg_pool2d_samples(device, dtype):
    mk = Maker(device, dtype)
    yield Sample((mk.randn(2, 3, 6, 8),), {"output_size": (3, 4)}, "adaptive_avg_pool2d[divisible]")
    yield Sample((mk.randn(1, 2, 5, 7),), {"output_size": (3, 4)}, "adaptive_avg_pool2d[overlap]")
    yield Sample((mk.randn(2, 5, 7),), {"output_size": 3}, "adaptive_avg_pool2d[unbatched,int]")
    yield Sample((mk.randn(1, 2, 5, 4),), {"output_size": (None, 3)}, "adaptive_avg_pool2d[None]")
    yield Sample((mk.randn(1, 2, 3, 2),), {"output_size": (5, 4)}, "adaptive_avg_pool2d[upsample]")
    yield Sample((mk.channels_last(mk.randn(1, 3, 5, 5)),), {"output_size": 2}, "adaptive_avg_pool2d[channels_last]")
    yield Sample((mk.noncontiguous(mk.randn(1, 2, 4, 6)),), {"output_size": (1, 4)},
                 "adaptive_avg_pool2d[noncontig]")


@register("adaptive_avg_pool2d", torch_fn=F.adaptive_avg_pool2d, tensor_args=("input",),
          samples=adaptive_avg_pool2d_samples, symbolic=adaptive_avg_pool2d_symbolic)
def adaptive_avg_pool2d_backward(grad_output, input, *, needs_input_grad, output_size):
    """dL/dx = (A_h^T (x) A_w^T)(g / |window|), windows [floor(oL/O), ceil((o+1)L/O))."""
    op = "adaptive_avg_pool2d"
    dims = _adaptive_axes(op, 2, input, output_size)
    _check_grad(op, grad_output, input.shape[:-2] + tuple(O for _, O in dims))
    if not needs_input_grad[0]:
        return (None,)
    mats, sizes = [], []
    for L, O in dims:
        b = torch.tensor(_adaptive_bounds(L, O), dtype=torch.int64, device=grad_output.device).reshape(O, 2)
        i = torch.arange(L, device=grad_output.device)
        mats.append(((i[None, :] >= b[:, :1]) & (i[None, :] < b[:, 1:])).to(torch.int64))
        sizes.append(b[:, 1] - b[:, 0])
    div = _outer(sizes).to(grad_output.dtype)
    return (_adjoint_sum(grad_output / div, mats),)


# -- samples ------------------------------------------------------------------------

# (input shape, params, tag, kind); kind: "randn", "ties" (small integers: exact
# ties, routed to the first maximum), "cl" (channels_last), "nc" (non-contiguous).
_MAX_TABLE = {
    1: [
        ((2, 3, 8), dict(kernel_size=2), "k2", "randn"),
        ((1, 2, 9), dict(kernel_size=3, stride=1, padding=1), "k3,s1,p1,ties", "ties"),
        ((1, 2, 6), dict(kernel_size=3, stride=2, padding=1, ceil_mode=True), "k3,s2,p1,ceil,partial", "ties"),
        ((1, 2, 9), dict(kernel_size=3, stride=2, padding=1, dilation=2), "k3,s2,p1,d2", "randn"),
        ((3, 7), dict(kernel_size=2, stride=1, ceil_mode=True), "unbatched,s1", "ties"),
        ((1, 2, 8), dict(kernel_size=4, stride=3, padding=2, dilation=1), "k4,s3,p2", "nc"),
        ((1, 2, 7), dict(kernel_size=3, stride=2, padding=1, return_indices=True), "k3,s2,p1,indices,ties", "ties"),
        ((1, 2, 8), dict(kernel_size=3, stride=2, return_indices=True), "indices,nan,-inf", "nan"),
        ((1, 2, 8), dict(kernel_size=2, stride=1), "s1,nan,-inf", "nan"),
    ],
    2: [
        ((2, 2, 4, 4), dict(kernel_size=2), "k2", "randn"),
        ((1, 2, 5, 5), dict(kernel_size=3, stride=1, padding=1), "k3,s1,p1,ties", "ties"),
        ((1, 2, 6, 7), dict(kernel_size=3, stride=2, padding=1, ceil_mode=True), "k3,s2,p1,ceil,partial", "ties"),
        ((1, 2, 7, 6), dict(kernel_size=2, stride=1, padding=1, dilation=2), "k2,s1,p1,d2", "ties"),
        ((1, 2, 5, 8), dict(kernel_size=(2, 3), stride=(1, 2), padding=(1, 0), dilation=(1, 2)),
         "k2x3,s1x2,p1x0,d1x2", "randn"),
        ((2, 5, 6), dict(kernel_size=3, stride=2, ceil_mode=True), "unbatched,ceil", "ties"),
        ((1, 3, 5, 5), dict(kernel_size=2, stride=1), "channels_last,ties", "cl"),
        ((1, 2, 6, 5), dict(kernel_size=3, stride=2, padding=1), "noncontig", "nc"),
        ((1, 2, 5, 5), dict(kernel_size=3, stride=1, padding=1, return_indices=True), "k3,s1,p1,indices", "randn"),
        ((2, 5, 6), dict(kernel_size=2, return_indices=True), "unbatched,indices,nan,-inf", "nan"),
    ],
    3: [
        ((1, 2, 4, 4, 4), dict(kernel_size=2), "k2", "randn"),
        ((1, 1, 3, 4, 4), dict(kernel_size=2, stride=1, return_indices=True), "indices,ties", "ties"),
        ((1, 1, 3, 4, 3), dict(kernel_size=3, stride=(1, 2, 1), padding=1), "k3,s1x2x1,p1,ties", "ties"),
        ((1, 1, 5, 5, 4), dict(kernel_size=(2, 3, 2), stride=2, padding=(1, 1, 0), ceil_mode=True),
         "k2x3x2,s2,ceil,partial", "ties"),
        ((1, 1, 5, 4, 5), dict(kernel_size=2, stride=1, dilation=(2, 1, 2)), "d2x1x2", "randn"),
        ((2, 3, 4, 4), dict(kernel_size=2, stride=1), "unbatched", "ties"),
        ((1, 2, 3, 4, 4), dict(kernel_size=2, stride=1), "channels_last,ties", "cl"),
    ],
}

# (input shape, params, tag, kind)
_AVG_TABLE = {
    1: [
        ((2, 3, 8), dict(kernel_size=2), "k2", "randn"),
        ((1, 2, 6), dict(kernel_size=3, stride=2, padding=1, ceil_mode=True), "k3,s2,p1,ceil", "randn"),
        ((1, 2, 6), dict(kernel_size=3, stride=2, padding=1, ceil_mode=True, count_include_pad=False),
         "k3,s2,p1,ceil,exclude_pad", "randn"),
        ((1, 2, 6), dict(kernel_size=3, stride=2, ceil_mode=True), "k3,s2,ceil,past_end", "randn"),
        ((3, 7), dict(kernel_size=3, stride=1, padding=1, count_include_pad=False), "unbatched,exclude_pad", "randn"),
        ((1, 2, 9), dict(kernel_size=4, stride=3, padding=2), "k4,s3,p2", "nc"),
    ],
    2: [
        ((2, 2, 4, 4), dict(kernel_size=2), "k2", "randn"),
        ((1, 2, 5, 5), dict(kernel_size=3, stride=1, padding=1), "k3,s1,p1", "randn"),
        ((1, 2, 5, 5), dict(kernel_size=3, stride=1, padding=1, count_include_pad=False),
         "k3,s1,p1,exclude_pad", "randn"),
        ((1, 2, 6, 7), dict(kernel_size=3, stride=2, padding=1, ceil_mode=True), "k3,s2,p1,ceil,partial", "randn"),
        ((1, 2, 6, 7), dict(kernel_size=3, stride=2, padding=1, ceil_mode=True, count_include_pad=False),
         "k3,s2,p1,ceil,exclude_pad", "randn"),
        ((1, 2, 6, 6), dict(kernel_size=3, stride=2, ceil_mode=True), "k3,s2,ceil,past_end", "randn"),
        ((1, 2, 5, 6), dict(kernel_size=(2, 3), stride=(1, 2), padding=(1, 1), divisor_override=5),
         "k2x3,s1x2,p1,div5", "randn"),
        ((2, 5, 6), dict(kernel_size=2, stride=2, ceil_mode=True, divisor_override=3), "unbatched,ceil,div3", "randn"),
        ((1, 3, 5, 5), dict(kernel_size=2, stride=1), "channels_last", "cl"),
        ((1, 2, 6, 5), dict(kernel_size=3, stride=2, padding=1, count_include_pad=False), "noncontig", "nc"),
    ],
    3: [
        ((1, 2, 4, 4, 4), dict(kernel_size=2), "k2", "randn"),
        ((1, 1, 5, 5, 4), dict(kernel_size=3, stride=2, padding=1, ceil_mode=True), "k3,s2,p1,ceil", "randn"),
        ((1, 1, 5, 5, 4), dict(kernel_size=3, stride=2, padding=1, ceil_mode=True, count_include_pad=False),
         "k3,s2,p1,ceil,exclude_pad", "randn"),
        ((1, 1, 4, 5, 4), dict(kernel_size=(2, 3, 2), stride=(1, 2, 1), padding=(1, 1, 0), divisor_override=7),
         "k2x3x2,p1x1x0,div7", "randn"),
        ((2, 3, 4, 4), dict(kernel_size=2, stride=1), "unbatched", "randn"),
        ((1, 2, 3, 4, 4), dict(kernel_size=2, stride=1), "channels_last", "cl"),
    ],
}


def _make_input(mk: Maker, shape, kind):
    if kind == "ties":
        return mk.integers(*shape, low=-2, high=3)
    if kind == "nan":  # ties, two NaNs in one window (the last is taken) and a -inf run
        t = mk.integers(*shape, low=-2, high=3).reshape(-1)
        t[1] = t[2] = float("nan")
        t[-3:] = float("-inf")
        return t.reshape(shape)
    if kind == "cl":
        return mk.channels_last(mk.integers(*shape, low=-2, high=3))
    if kind == "nc":
        return mk.noncontiguous(mk.randn(*shape))
    return mk.randn(*shape)


def _table_samples(op, table):
    def samples(device, dtype):
        mk = Maker(device, dtype)
        for shape, params, tag, kind in table:
            yield Sample((_make_input(mk, shape, kind),), dict(params), f"{op}[{tag}]")

    samples.__name__ = f"{op}_samples"
    return samples


max_pool1d_backward, max_pool1d_symbolic = _make_max_pool(1, F.max_pool1d, _table_samples("max_pool1d", _MAX_TABLE[1]))
max_pool2d_backward, max_pool2d_symbolic = _make_max_pool(2, F.max_pool2d, _table_samples("max_pool2d", _MAX_TABLE[2]))
max_pool3d_backward, max_pool3d_symbolic = _make_max_pool(3, F.max_pool3d, _table_samples("max_pool3d", _MAX_TABLE[3]))
avg_pool1d_backward, avg_pool1d_symbolic = _make_avg_pool(1, F.avg_pool1d, _table_samples("avg_pool1d", _AVG_TABLE[1]))
avg_pool2d_backward, avg_pool2d_symbolic = _make_avg_pool(2, F.avg_pool2d, _table_samples("avg_pool2d", _AVG_TABLE[2]))
avg_pool3d_backward, avg_pool3d_symbolic = _make_avg_pool(3, F.avg_pool3d, _table_samples("avg_pool3d", _AVG_TABLE[3]))


# -- adaptive pools (1d, 3d average; 1d, 2d max) ------------------------------------------------


def _adaptive_mats(dims, device):
    """Per axis the window membership ``A[o, i] = 1[start(o) <= i < end(o)]`` and the window lengths."""
    mats, sizes = [], []
    for L, O in dims:
        b = torch.tensor(_adaptive_bounds(L, O), dtype=torch.int64, device=device).reshape(O, 2)
        i = torch.arange(L, device=device)
        mats.append(((i[None, :] >= b[:, :1]) & (i[None, :] < b[:, 1:])).to(torch.int64))
        sizes.append(b[:, 1] - b[:, 0])
    return mats, sizes


def _adaptive_windows(op, nd, input, output_size):
    """(empty output array, [(output index, window elements in scan order)]) of an adaptive pool."""
    dims = _adaptive_axes(op, nd, input, output_size)
    bounds = [_adaptive_bounds(L, O) for L, O in dims]
    lead = input.shape[: input.ndim - nd]
    out = np.empty(lead + tuple(O for _, O in dims), dtype=object)
    windows = []
    for b in np.ndindex(*lead):
        for o in itertools.product(*[range(O) for _, O in dims]):
            ranges = [range(*bounds[a][o[a]]) for a in range(nd)]
            windows.append((b + o, [input[b + i] for i in itertools.product(*ranges)]))
    return out, windows


def _adaptive_avg_symbolic(op, nd, input, output_size):
    out, windows = _adaptive_windows(op, nd, input, output_size)
    for idx, elems in windows:
        out[idx] = sympy.Add(*elems) / sympy.Integer(len(elems))
    return out


def _make_adaptive_avg_pool(nd: int, torch_fn, samples):
    op = f"adaptive_avg_pool{nd}d"

    def symbolic(input, *, output_size):
        return _adaptive_avg_symbolic(op, nd, input, output_size)

    def backward(grad_output, input, *, needs_input_grad, output_size):
        dims = _adaptive_axes(op, nd, input, output_size)
        _check_grad(op, grad_output, input.shape[: input.dim() - nd] + tuple(O for _, O in dims))
        if not needs_input_grad[0]:
            return (None,)
        mats, sizes = _adaptive_mats(dims, grad_output.device)
        # y = (A_1 (x) .. (x) A_n) x / |window|   =>   dL/dx = (A_1^T (x) .. (x) A_n^T)(g / |window|)
        return (_adjoint_sum(grad_output / _outer(sizes).to(grad_output.dtype), mats),)

    backward.__name__ = backward.__qualname__ = f"{op}_backward"
    backward.__doc__ = "dL/dx = (A_1^T (x) .. (x) A_n^T)(g / |window|), windows [floor(oL/O), ceil((o+1)L/O))."
    register(op, torch_fn=torch_fn, tensor_args=("input",), samples=samples, symbolic=symbolic)(backward)
    return backward, symbolic


def _adaptive_max_selection(x: torch.Tensor, dims) -> torch.Tensor:
    """Flat spatial index torch's adaptive max pool selects per window, shape ``(N, C, O_1 .. O_nd)``.

    Window ``o`` along each axis covers ``[start(o), end(o))``; offsets ``j`` run over the
    longest window, and ``pos = start + j`` counts only while ``pos < end``.  As in
    ``_max_pool_selection``: the smallest in-window ``j`` (row-major) equal to the window
    maximum, or the largest with a NaN; an all ``-inf`` window keeps its first element.
    """
    nd = len(dims)
    bounds = [torch.tensor(_adaptive_bounds(L, O), dtype=torch.int64, device=x.device).reshape(O, 2)
              for L, O in dims]
    K = [int((b[:, 1] - b[:, 0]).max()) for b in bounds]
    strides = [int(np.prod([L for L, _ in dims[a + 1:]], dtype=np.int64)) for a in range(nd)]

    def at(j):
        """Values, flat index and in-window mask of offset j for every window: (N, C, O...) / (O...)."""
        pos, ok, flat = [], torch.ones((), dtype=torch.bool, device=x.device), 0
        for a, (ja, b) in enumerate(zip(j, bounds)):
            p = b[:, 0] + ja
            shape = (-1,) + (1,) * (nd - 1 - a)
            ok = ok & (p < b[:, 1]).reshape(shape)
            p = torch.clamp(p, max=dims[a][0] - 1)
            pos.append(p.reshape(shape))
            flat = flat + p.reshape(shape) * strides[a]
        return x[(..., *pos)], flat, ok

    offsets = list(itertools.product(*[range(k) for k in K]))
    neg_inf = torch.full((), float("-inf"), dtype=x.dtype, device=x.device)
    m = None
    for j in offsets:
        v, _, ok = at(j)
        v = torch.where(ok, v, neg_inf)
        m = v if m is None else torch.maximum(m, v)                          # NaN propagates
    _, first, _ = at((0,) * nd)
    sel = first.expand(m.shape)                                              # all -inf: the first element
    for j in reversed(offsets):                                              # the last write is the first max
        v, flat, ok = at(j)
        sel = torch.where((v == m) & ok, flat, sel)
    nan = torch.isnan(m)
    if bool(nan.any()):
        last_nan = sel
        for j in offsets:                                                    # the last write is the last NaN
            v, flat, ok = at(j)
            last_nan = torch.where(torch.isnan(v) & ok, flat, last_nan)
        sel = torch.where(nan, last_nan, sel)
    return sel


def _adaptive_max_symbolic(op, nd, input, output_size, return_indices):
    if return_indices:
        raise UnsupportedError(f"{op}: the symbolic forward gives the values only (return_indices=False)")
    out, windows = _adaptive_windows(op, nd, input, output_size)
    for idx, elems in windows:
        out[idx] = _first_max(elems)
    return out


def _make_adaptive_max_pool(nd: int, torch_fn, samples):
    op = f"adaptive_max_pool{nd}d"

    def symbolic(input, *, output_size, return_indices=False):
        # max with torch's tie convention (first maximum in scan order) as a Piecewise
        return _adaptive_max_symbolic(op, nd, input, output_size, return_indices)

    def backward(grad_output, input, *, needs_input_grad, output_size, return_indices=False):
        grad_output = _values_grad(op, grad_output, return_indices)
        dims = _adaptive_axes(op, nd, input, output_size)
        if any(O < 1 for _, O in dims):
            raise InvalidParameterError(f"{op}: output_size must be positive, got {output_size!r}")
        if grad_output is None:                                              # values unused: no gradient
            return (torch.zeros_like(input) if needs_input_grad[0] else None,)
        _check_grad(op, grad_output, input.shape[: input.dim() - nd] + tuple(O for _, O in dims))
        if not needs_input_grad[0]:
            return (None,)
        batched, S = _spatial(op, nd, input)
        x = input if batched else input.unsqueeze(0)
        g = grad_output if batched else grad_output.unsqueeze(0)
        # dL/dx[i] = sum of g[o] over the windows o that select x[i]
        return (_scatter_selected(x, g, _adaptive_max_selection(x, dims), S, batched),)

    backward.__name__ = backward.__qualname__ = f"{op}_backward"
    backward.__doc__ = (f"dL/dx[i] = sum of g[o] over the windows o of {op} that select x[i] "
                        "(first maximum in scan order; last NaN).")
    register(op, torch_fn=torch_fn, tensor_args=("input",), samples=samples, symbolic=symbolic)(backward)
    return backward, symbolic


# (input shape, params, tag, kind)
_ADAPTIVE_AVG_TABLE = {
    1: [
        ((2, 3, 8), dict(output_size=4), "divisible", "randn"),
        ((1, 2, 7), dict(output_size=3), "overlap", "randn"),
        ((3, 5), dict(output_size=(2,)), "unbatched,tuple", "randn"),
        ((1, 2, 3), dict(output_size=5), "upsample", "randn"),
        ((1, 2, 6), dict(output_size=6), "identity,noncontig", "nc"),
    ],
    3: [
        ((1, 2, 4, 4, 4), dict(output_size=2), "divisible", "randn"),
        ((1, 1, 5, 3, 4), dict(output_size=(2, 3, None)), "overlap,None", "randn"),
        ((2, 3, 5, 4), dict(output_size=(3, 1, 2)), "unbatched", "randn"),
        ((1, 2, 3, 4, 4), dict(output_size=(2, 3, 3)), "channels_last", "cl"),
    ],
}

_ADAPTIVE_MAX_TABLE = {
    1: [
        ((2, 3, 8), dict(output_size=4), "divisible", "randn"),
        ((1, 2, 7), dict(output_size=3), "overlap,ties", "ties"),
        ((1, 2, 7), dict(output_size=3, return_indices=True), "indices,ties", "ties"),
        ((1, 2, 9), dict(output_size=4, return_indices=True), "indices,nan,-inf", "nan"),
        ((3, 5), dict(output_size=(2,)), "unbatched,tuple", "ties"),
        ((1, 2, 3), dict(output_size=5), "upsample", "randn"),
    ],
    2: [
        ((2, 2, 6, 8), dict(output_size=(3, 4)), "divisible", "randn"),
        ((1, 2, 5, 7), dict(output_size=(3, 4)), "overlap,ties", "ties"),
        ((1, 2, 5, 7), dict(output_size=(3, 4), return_indices=True), "indices,ties", "ties"),
        ((1, 2, 5, 6), dict(output_size=(2, None), return_indices=True), "indices,nan,-inf,None", "nan"),
        ((2, 5, 5), dict(output_size=2), "unbatched,int", "ties"),
        ((1, 3, 5, 5), dict(output_size=2), "channels_last,ties", "cl"),
        ((1, 2, 4, 6), dict(output_size=(1, 4)), "noncontig", "nc"),
    ],
}

adaptive_avg_pool1d_backward, adaptive_avg_pool1d_symbolic = _make_adaptive_avg_pool(
    1, F.adaptive_avg_pool1d, _table_samples("adaptive_avg_pool1d", _ADAPTIVE_AVG_TABLE[1]))
adaptive_avg_pool3d_backward, adaptive_avg_pool3d_symbolic = _make_adaptive_avg_pool(
    3, F.adaptive_avg_pool3d, _table_samples("adaptive_avg_pool3d", _ADAPTIVE_AVG_TABLE[3]))
adaptive_max_pool1d_backward, adaptive_max_pool1d_symbolic = _make_adaptive_max_pool(
    1, F.adaptive_max_pool1d, _table_samples("adaptive_max_pool1d", _ADAPTIVE_MAX_TABLE[1]))
adaptive_max_pool2d_backward, adaptive_max_pool2d_symbolic = _make_adaptive_max_pool(
    2, F.adaptive_max_pool2d, _table_samples("adaptive_max_pool2d", _ADAPTIVE_MAX_TABLE[2]))
