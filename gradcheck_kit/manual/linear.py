"""Linear maps: ``linear``, ``matmul``, ``mm``, ``bmm``.

All four are bilinear, so each gradient is the other factor transposed (lecture 4.4,
batch form, rows of ``x`` are samples)::

    y = x W^T + b        dL/dx = g W,   dL/dW = g^T x (summed over batch dims),   dL/db = sum g
    Y = A B              dL/dA = G B^T,  dL/dB = A^T G

``matmul`` promotes 1-d operands to matrices (``a -> [1, n]``, ``b -> [n, 1]``) and
broadcasts batch dims; its backward promotes ``g`` the same way and undoes the batch
broadcast with ``_shapes.unbroadcast``.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from gradcheck_kit.errors import InvalidInputError
from gradcheck_kit.manual import _shapes, _symbolic
from gradcheck_kit.manual._sampling import Maker
from gradcheck_kit.manual.registry import Sample, register

__all__: list[str] = []


# -- linear -------------------------------------------------------------------------------

def linear_samples(device, dtype):
    mk = Maker(device, dtype)
    yield Sample((mk.randn(4, 3), mk.randn(5, 3), mk.randn(5)), {}, "linear[2d]")
    yield Sample((mk.randn(4, 3), mk.randn(5, 3), None), {}, "linear[2d,nobias]")
    yield Sample((mk.randn(3), mk.randn(5, 3), mk.randn(5)), {}, "linear[1d]")
    yield Sample((mk.randn(2, 3, 4), mk.randn(5, 4), mk.randn(5)), {}, "linear[3d]")
    yield Sample((mk.randn(2, 1, 3, 4), mk.randn(2, 4), None), {}, "linear[4d,nobias]")
    yield Sample((mk.randn(4, 3), mk.randn(2, 3), mk.randn(())), {}, "linear[bias=scalar]")
    yield Sample((mk.randn(2, 3), mk.randn(4, 3), mk.randn(2, 4)), {}, "linear[bias=2x4]")
    yield Sample((mk.randn(3), mk.randn(3), mk.randn(())), {}, "linear[1d_weight]")
    yield Sample((mk.noncontiguous(mk.randn(4, 3)), mk.randn(3, 5).T, mk.randn(10)[::2]), {},
                 "linear[noncontig]")


def linear_symbolic(input, weight, bias=None):
    x, w = _symbolic.asarray(input), _symbolic.asarray(weight)
    y = _symbolic.matmul(x, w.T if w.ndim == 2 else w)
    if bias is not None:
        y = y + _symbolic.asarray(bias)
    return np.asarray(y, dtype=object)


@register("linear", torch_fn=F.linear, tensor_args=("input", "weight", "bias"), samples=linear_samples,
          symbolic=linear_symbolic)
def linear_backward(grad_output, input, weight, bias=None, *, needs_input_grad):
    """y = x W^T + b: dL/dx = g W, dL/dW = g^T x summed over batch dims, dL/db = unbroadcast(g)."""
    g = grad_output
    gx = gw = gb = None
    if weight.dim() == 2:
        n_out, n_in = weight.shape
        if needs_input_grad[0]:
            gx = g @ weight                                       # [..., out] @ [out, in]
        if needs_input_grad[1]:
            gw = g.reshape(-1, n_out).T @ input.reshape(-1, n_in)  # [out, B] @ [B, in]
    elif weight.dim() == 1:                                       # y = x . w (output drops the last dim)
        g1 = g.unsqueeze(-1)
        if needs_input_grad[0]:
            gx = g1 * weight
        if needs_input_grad[1]:
            gw = (g1 * input).reshape(-1, weight.shape[0]).sum(0)
    else:
        raise InvalidInputError(f"linear: weight must be 1-d or 2-d, got shape {tuple(weight.shape)}")
    if bias is not None and needs_input_grad[2]:
        gb = _shapes.unbroadcast(g, bias.shape)
    return gx, gw, gb


# -- matmul, mm, bmm ----------------------------------------------------------------------

def _matmul_grads(g, a, b, needs):
    """Y = A B with 1-d promotion and batch broadcasting: dL/dA = G B^T, dL/dB = A^T G."""
    if a.dim() == 0 or b.dim() == 0:
        raise InvalidInputError("matmul: both arguments must be at least 1-d, got a 0-d tensor")
    a2 = a.unsqueeze(0) if a.dim() == 1 else a                    # [n] -> [1, n]
    b2 = b.unsqueeze(-1) if b.dim() == 1 else b                   # [n] -> [n, 1]
    g2 = g.unsqueeze(-1) if b.dim() == 1 else g                   # restore the dropped m axis,
    g2 = g2.unsqueeze(-2) if a.dim() == 1 else g2                 # then the dropped n axis
    ga = gb = None
    if needs[0]:
        ga = _shapes.unbroadcast(g2 @ b2.mT, a2.shape).reshape(a.shape)
    if needs[1]:
        gb = _shapes.unbroadcast(a2.mT @ g2, b2.shape).reshape(b.shape)
    return ga, gb


def matmul_samples(device, dtype):
    mk = Maker(device, dtype)
    table = [
        ((4,), (4,), "1d@1d"),
        ((3, 4), (4,), "2d@1d"),
        ((4,), (4, 5), "1d@2d"),
        ((3, 4), (4, 5), "2d@2d"),
        ((2, 3, 4), (4,), "3d@1d"),
        ((4,), (2, 4, 5), "1d@3d"),
        ((2, 3, 4), (4, 5), "3d@2d"),
        ((3, 4), (2, 4, 5), "2d@3d"),
        ((2, 3, 4), (2, 4, 5), "3d@3d"),
        ((2, 1, 3, 4), (5, 4, 2), "bcast_batch"),
        ((1, 3, 4), (2, 4, 5), "bcast_size1"),
        ((2, 1, 2, 3), (1, 3, 3, 2), "bcast_both"),
    ]
    for sa, sb, tag in table:
        yield Sample((mk.randn(sa), mk.randn(sb)), {}, f"matmul[{tag}]")
    yield Sample((mk.randn(4, 3).T, mk.noncontiguous(mk.randn(4, 2))), {}, "matmul[noncontig]")


def _matmul_symbolic(input, other):
    return np.asarray(_symbolic.matmul(input, other), dtype=object)


@register("matmul", torch_fn=torch.matmul, tensor_args=("input", "other"), samples=matmul_samples,
          symbolic=_matmul_symbolic, aliases=(torch.Tensor.matmul, torch.Tensor.__matmul__))
def matmul_backward(grad_output, input, other, *, needs_input_grad):
    """Y = A B: dL/dA = unbroadcast(G B^T), dL/dB = unbroadcast(A^T G); 1-d operands promoted as torch."""
    return _matmul_grads(grad_output, input, other, needs_input_grad)


def mm_samples(device, dtype):
    mk = Maker(device, dtype)
    yield Sample((mk.randn(3, 4), mk.randn(4, 5)), {}, "mm[3x4,4x5]")
    yield Sample((mk.randn(1, 4), mk.randn(4, 1)), {}, "mm[1x4,4x1]")
    yield Sample((mk.randn(4, 3).T, mk.noncontiguous(mk.randn(4, 2))), {}, "mm[noncontig]")


def mm_symbolic(input, mat2):
    return _matmul_symbolic(input, mat2)


@register("mm", torch_fn=torch.mm, tensor_args=("input", "mat2"), samples=mm_samples, symbolic=mm_symbolic,
          aliases=(torch.Tensor.mm,))
def mm_backward(grad_output, input, mat2, *, needs_input_grad):
    """Y = A B: dL/dA = G B^T, dL/dB = A^T G."""
    if input.dim() != 2 or mat2.dim() != 2:
        raise InvalidInputError(f"mm: input and mat2 must be 2-d, got shapes {tuple(input.shape)} "
                                f"and {tuple(mat2.shape)}")
    ga = grad_output @ mat2.T if needs_input_grad[0] else None
    gb = input.T @ grad_output if needs_input_grad[1] else None
    return ga, gb


def bmm_samples(device, dtype):
    mk = Maker(device, dtype)
    yield Sample((mk.randn(2, 3, 4), mk.randn(2, 4, 5)), {}, "bmm[2x3x4,2x4x5]")
    yield Sample((mk.randn(1, 1, 4), mk.randn(1, 4, 1)), {}, "bmm[1x1x4,1x4x1]")
    yield Sample((mk.randn(2, 4, 3).mT, mk.noncontiguous(mk.randn(2, 4, 2))), {}, "bmm[noncontig]")


def bmm_symbolic(input, mat2):
    return _matmul_symbolic(input, mat2)


@register("bmm", torch_fn=torch.bmm, tensor_args=("input", "mat2"), samples=bmm_samples, symbolic=bmm_symbolic,
          aliases=(torch.Tensor.bmm,))
def bmm_backward(grad_output, input, mat2, *, needs_input_grad):
    """Y_b = A_b B_b: dL/dA_b = G_b B_b^T, dL/dB_b = A_b^T G_b."""
    if input.dim() != 3 or mat2.dim() != 3:
        raise InvalidInputError(f"bmm: input and mat2 must be 3-d, got shapes {tuple(input.shape)} "
                                f"and {tuple(mat2.shape)}")
    ga = grad_output @ mat2.mT if needs_input_grad[0] else None
    gb = input.mT @ grad_output if needs_input_grad[1] else None
    return ga, gb
