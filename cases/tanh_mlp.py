"""The lecture's two-layer tanh MLP with a mean-squared-error loss (seed 000).

    h = tanh(w1 x + b1),  y = tanh(w2 h + b2),  L = mean((y - t)^2)

    dL/dy  = 2 (y - t) / 5
    da2    = dL/dy * (1 - y^2)            (tanh' = 1 - tanh^2)
    dw2    = da2 h^T,   db2 = da2
    dh     = w2^T da2
    da1    = dh * (1 - h^2)
    dw1    = da1 x^T,   db1 = da1
"""
import torch

WRT = ("w1", "b1", "w2", "b2")


def inputs(device, dtype):
    # The lecture draws every parameter with torch.rand (all positive): w2 h + b2 then reaches ~10,
    # tanh saturates and the gradients shrink to ~1e-9.  Centred draws keep them O(0.1).
    kw = dict(device=device, dtype=dtype)
    return {
        "w1": torch.rand(20, 10, **kw) - 0.5, "b1": torch.rand(20, **kw) - 0.5,
        "w2": torch.rand(5, 20, **kw) - 0.5, "b2": torch.rand(5, **kw) - 0.5,
        "x": torch.rand(10, **kw), "target": torch.rand(5, **kw),
    }


def loss(w1, b1, w2, b2, x, target):
    h = torch.tanh(w1 @ x + b1)
    y = torch.tanh(w2 @ h + b2)
    return (y - target).pow(2).mean()


def manual(w1, b1, w2, b2, x, target):
    h = torch.tanh(w1 @ x + b1)
    y = torch.tanh(w2 @ h + b2)
    dy = 2 * (y - target) / y.numel()
    da2 = dy * (1 - y * y)
    dh = w2.t() @ da2
    da1 = dh * (1 - h * h)
    return {"w1": torch.outer(da1, x), "b1": da1, "w2": torch.outer(da2, h), "b2": da2}
