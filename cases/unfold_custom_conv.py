"""Seed 001: a convolution as unfold + "matmul" + view, with the product replaced.

The inner product sum_k x_k w_k becomes sum_k f(x_k, w_k) with f(x, w) = -|x - w|
(an adder network).  The loss is written with ordinary ops (unfold and broadcasting);
the explicit gradient comes from the rule ``unfold_conv2d_custom`` of the library:

    dL/dcols[n, k, l] = sum_o g[n, o, l] * (-sign(cols - W[o, k]))    -> dL/dx = fold(dL/dcols)
    dL/dW[o, k]       = sum_{n, l} g[n, o, l] * sign(cols - W[o, k])
    dL/db[o]          = sum_{n, l} g[n, o, l]

At x == w, |.| has a kink; the rule uses sign(0) = 0 as torch does.
"""
import torch
import torch.nn.functional as F

from gradcheck_kit import manual as rules


def inputs(device, dtype):
    kw = dict(device=device, dtype=dtype)
    return {"x": torch.rand(1, 2, 4, 4, **kw), "weight": torch.randn(5, 2, 3, 3, **kw),
            "bias": torch.randn(5, **kw)}


def loss(x, weight, bias):
    cols = F.unfold(x, kernel_size=3, padding=1)                   # [1, 18, 16]
    w = weight.view(5, -1)                                          # [5, 18]
    res = -(cols[:, None, :, :] - w[None, :, :, None]).abs().sum(dim=2)
    res = res.view(1, 5, 4, 4) + bias.view(5, 1, 1)                 # bias broadcast as [C, 1, 1]
    return (res * torch.linspace(-1, 1, res.numel(), dtype=res.dtype, device=res.device).view_as(res)).sum()


def manual(x, weight, bias):
    g = torch.linspace(-1, 1, 5 * 16, dtype=x.dtype, device=x.device).view(1, 5, 4, 4)
    gx, gw, gb = rules.get("unfold_conv2d_custom").backward(g, x, weight, bias, padding=1, op="adder")
    return {"x": gx, "weight": gw, "bias": gb}
