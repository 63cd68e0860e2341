"""A planted padding bug: the forward pads by replicating the border, the backward assumes zero padding.

    y = conv2d(pad(x, 1, mode="replicate"), w),  L = 0.5 ||y||^2,  g = dL/dy = y
    correct: dL/dx = pad^T(conv_transpose2d(g, w)), where pad^T adds each replicated border
             row/column back onto the edge element it copies
    planted: dL/dx = conv_transpose2d(g, w, padding=1), the adjoint of zero padding, which
             drops those contributions: wrong on the border ring only, right inside it
"""
import torch
import torch.nn.functional as F

WRT = ("x",)


def inputs(device, dtype):
    return {"x": torch.randn(1, 2, 10, 10, device=device, dtype=dtype),
            "w": torch.randn(3, 2, 3, 3, device=device, dtype=dtype)}


def loss(x, w):
    return 0.5 * F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), w).pow(2).sum()


def manual(x, w):
    g = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), w)
    return {"x": F.conv_transpose2d(g, w, padding=1)}
