"""The correct twin of padding_bug.py: zero padding, whose adjoint is conv_transpose2d with padding 1.

    y = conv2d(x, w, padding=1),  L = 0.5 ||y||^2,  dL/dx = conv_transpose2d(y, w, padding=1)
"""
import torch
import torch.nn.functional as F

WRT = ("x",)


def inputs(device, dtype):
    return {"x": torch.randn(1, 2, 10, 10, device=device, dtype=dtype),
            "w": torch.randn(3, 2, 3, 3, device=device, dtype=dtype)}


def loss(x, w):
    return 0.5 * F.conv2d(x, w, padding=1).pow(2).sum()


def manual(x, w):
    return {"x": F.conv_transpose2d(F.conv2d(x, w, padding=1), w, padding=1)}
