"""The lecture's DAG with weight sharing (seed 000): w1 is used twice.

    x1 = w1 x0,   x2 = x0 + w2 x1,   x3 = w1 (x1 + x2),   q = ||x3||

Backwards (u = x1 + x2):
    dq/dx3 = x3 / q
    dx1 + dx2 (via u) = w1^T dx3,   dx2 = w1^T dx3
    dx1 = w1^T dx3 + w2^T dx2       (x1 feeds u and x2)
    dw2 = dx2 x1^T
    dw1 = dx3 u^T + dx1 x0^T         (the shared weight: both uses' contributions summed)
    dx0 = dx2 + w1^T dx1
"""
import torch

WRT = ("w1", "w2", "x0")


def inputs(device, dtype):
    kw = dict(device=device, dtype=dtype)
    return {"w1": torch.rand(5, 5, **kw), "w2": torch.rand(5, 5, **kw), "x0": torch.randn(5, **kw)}


def loss(w1, w2, x0):
    x1 = w1 @ x0
    x2 = x0 + w2 @ x1
    x3 = w1 @ (x1 + x2)
    return x3.norm()


def manual(w1, w2, x0):
    x1 = w1 @ x0
    x2 = x0 + w2 @ x1
    u = x1 + x2
    x3 = w1 @ u
    dx3 = x3 / x3.norm()
    du = w1.t() @ dx3
    dx2 = du
    dx1 = du + w2.t() @ dx2
    return {
        "w1": torch.outer(dx3, u) + torch.outer(dx1, x0),
        "w2": torch.outer(dx2, x1),
        "x0": dx2 + w1.t() @ dx1,
    }
