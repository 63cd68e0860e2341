"""Seed 002, problem 2: a 3x3 convolution, then the strided sum-of-squares loss.

    z = conv2d(x, w1, padding=1)                   (w1: 1x32x3x3)
    L[n] = 0.5 * || conv2d(z, k, stride=32)[n] - y[n] ||^2

    r = conv2d(z, k, stride=32) - y,  dL/dr = r
    dz      = conv2d backward of r at (z, k), stride 32        = conv_transpose2d(r, k, stride=32)
    dx, dw1 = conv2d backward of dz at (x, w1), padding 1      (conv_transpose; x^T * dz^T)

both through the conv2d rule of the library, in one pass that reuses z and r
(``gradcheck_kit.manual.composites.conv_strided_loss_and_grads``).
"""
import torch
import torch.nn.functional as F

from gradcheck_kit.manual.composites import conv_strided_loss_and_grads

WRT = ("x", "w1")


def inputs(device, dtype, small=False):
    n, c, ko, hw = (2, 4, 8, 64) if small else (8, 32, 512, 128)
    kw = dict(device=device, dtype=dtype)
    return {
        "x": torch.randn(n, c, hw, hw, **kw),
        "w1": torch.randn(1, c, 3, 3, **kw),
        "k": torch.randn(ko, 1, 32, 32, **kw),
        "y": torch.randn(n, ko, hw // 32, hw // 32, **kw),
    }


def loss(x, w1, k, y):
    z = F.conv2d(x, w1, padding=1)
    return 0.5 * (F.conv2d(z, k, stride=32) - y).pow(2).sum(dim=[1, 2, 3])


def manual(x, w1, k, y):
    _, grads = conv_strided_loss_and_grads(x, w1, k, y, padding=1, stride=32, wrt=WRT)
    return grads
