"""The lecture's first autograd example (seed 000): a = t.pow(2).sum() + u.log().sum().

    da/dt = 2 t      -> [2, 4, 8]
    da/du = 1 / u    -> [0.1, 0.05]
"""
import torch


def inputs(device, dtype):
    kw = dict(device=device, dtype=dtype)
    return {"t": torch.tensor([1.0, 2.0, 4.0], **kw), "u": torch.tensor([10.0, 20.0], **kw)}


def loss(t, u):
    return t.pow(2).sum() + u.log().sum()


def manual(t, u):
    return {"t": 2 * t, "u": 1 / u}
