"""Seed 002, problem 3 (the default case): conv -> relu -> conv -> strided sum-of-squares loss.

    h = conv2d(x, w1, padding=1);  a = relu(h);  z = conv2d(a, w2, padding=1)
    L[n] = 0.5 * || conv2d(z, k, stride=32)[n] - y[n] ||^2        (summed over n by the kit)

Explicit gradients, backwards through the chain (rule library, gradcheck_kit.manual):

    r  = conv2d(z, k, stride=32) - y            dL/dr = r
    dz, -      = conv2d backward of r at (z, k), stride 32
    da, dw2    = conv2d backward of dz at (a, w2), padding 1
    dh         = da * 1[h > 0]                  (relu'(0) = 0, torch's convention)
    dx, dw1    = conv2d backward of dh at (x, w1), padding 1

``conv_relu_conv_loss_and_grads`` runs that chain in one pass, reusing the forward's
intermediates.  Every step is a public, differentiable torch op, so the gradients can
be differentiated again (as the seed asks: "totally explicit and themselves differentiable").
"""
import torch
import torch.nn.functional as F

from gradcheck_kit.manual.composites import conv_relu_conv_loss_and_grads

WRT = ("x", "w1", "w2")

FULL = dict(n=8, c=32, hw=128, kout=512, stride=32)      # the seed's sizes
SMALL = dict(n=2, c=4, hw=64, kout=8, stride=32)          # same structure, for quick tests


def inputs(device, dtype, small=False):
    s = SMALL if small else FULL
    n, c, hw, ko, st = s["n"], s["c"], s["hw"], s["kout"], s["stride"]
    kw = dict(device=device, dtype=dtype)
    return {
        "x": torch.randn(n, c, hw, hw, **kw),
        "w1": torch.randn(c, c, 3, 3, **kw),
        "w2": torch.randn(1, c, 3, 3, **kw),
        "k": torch.randn(ko, 1, st, st, **kw),
        "y": torch.randn(n, ko, hw // st, hw // st, **kw),
    }


def loss(x, w1, w2, k, y):
    z = F.conv2d(x, w1, padding=1)
    z = F.relu(z)
    z = F.conv2d(z, w2, padding=1)
    return 0.5 * (F.conv2d(z, k, stride=32) - y).pow(2).sum(dim=[1, 2, 3])


def manual(x, w1, w2, k, y):
    _, grads = conv_relu_conv_loss_and_grads(x, w1, w2, k, y, padding=1, stride=32, wrt=WRT)
    return grads
