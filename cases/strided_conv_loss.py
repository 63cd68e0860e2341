"""Seed 002, problem 1: L[n] = 0.5 * || conv2d(x, k, stride=32)[n] - y[n] ||^2.

    r = conv2d(x, k, stride=32) - y,  dL/dr = r
    dL/dx = conv_transpose2d(r, k, stride=32)      (the seed's x_grad_manual, carried back to x)
    dL/dk = the conv2d weight gradient of r at x   (windows tile x: one einsum over patches)

both through the conv2d rule of the library (gradcheck_kit.manual).
"""
import torch
import torch.nn.functional as F

from gradcheck_kit import manual as rules

WRT = ("x", "k")


def inputs(device, dtype, small=False):
    n, ko, hw = (2, 16, 64) if small else (8, 512, 128)
    kw = dict(device=device, dtype=dtype)
    return {
        "x": torch.randn(n, 1, hw, hw, **kw),
        "k": torch.randn(ko, 1, 32, 32, **kw),
        "y": torch.randn(n, ko, hw // 32, hw // 32, **kw),
    }


def loss(x, k, y):
    return 0.5 * (F.conv2d(x, k, stride=32) - y).pow(2).sum(dim=[1, 2, 3])


def manual(x, k, y):
    r = F.conv2d(x, k, stride=32) - y
    gx, gk, _ = rules.get("conv2d").backward(r, x, k, None, needs_input_grad=(True, True, False), stride=32)
    return {"x": gx, "k": gk}
