"""Small losses with correct hand-written gradients (plain torch ops), and ways to break them.

Shared by tests/test_compare.py and tests/test_hints.py; independent of the rule library.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _wgrad(inp, g, padding):
    """dL/dW of conv2d(inp, W, padding) with upstream g: a conv of inp with g, batch and channel axes swapped."""
    return F.conv2d(inp.transpose(0, 1), g.transpose(0, 1), padding=padding).transpose(0, 1)


# -- conv -> relu -> conv (seed 002, small) ---------------------------------------------------------

def crc_inputs(dtype=torch.float64, integer=False, seed=0):
    g = _gen(seed)
    if integer:  # exact zeros in the pre-activation: ReLU kinks
        mk = lambda *s: torch.randint(-2, 3, s, generator=g).to(dtype)  # noqa: E731
    else:
        mk = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64).to(dtype)  # noqa: E731
    return {"x": mk(2, 2, 6, 6), "w1": mk(3, 2, 3, 3), "w2": mk(2, 3, 3, 3), "y": mk(2, 2, 6, 6)}


def crc_loss(x, w1, w2, y):
    z = F.relu(F.conv2d(x, w1, padding=1), inplace=True)
    return 0.5 * (F.conv2d(z, w2, padding=1) - y).pow(2).sum()


def crc_manual(x, w1, w2, y, bug=None):
    z1 = F.conv2d(x, w1, padding=1)
    a = F.relu(z1)
    r = F.conv2d(a, w2, padding=1) - y              # dL/dz2 = z2 - y
    dw2 = _wgrad(a, r, 1)
    da = F.conv_transpose2d(r, w2, padding=1)       # dL/da = conv_transpose(g, W2)
    dz1 = da if bug == "mask" else da * (z1 > 0)    # dL/dz1 = dL/da * 1[z1 > 0]
    if bug == "flip":
        dx = F.conv_transpose2d(dz1, w1.flip(2, 3), padding=1)
    elif bug == "padding":                          # padding 2 instead of 1, zero-padded back to size
        dx = F.pad(F.conv_transpose2d(dz1, w1, padding=2), (1, 1, 1, 1))
    else:
        dx = F.conv_transpose2d(dz1, w1, padding=1)
    dw1 = _wgrad(x, dz1, 1)
    if bug == "element":
        dx = dx.clone()
        dx[1, 0, 2, 3] += 1.0
    if bug == "factor2":
        dw2 = 2 * dw2
    if bug == "sign":
        dw1 = -dw1
    return {"x": dx, "w1": dw1, "w2": dw2, "y": -r}  # dL/dy = -(z2 - y)


def crc_bug(bug):
    return lambda **kw: crc_manual(**kw, bug=bug)


# -- the lecture's DAG with a shared weight (seed 000) -----------------------------------------------

def dag_inputs(dtype=torch.float64, seed=0):
    g = _gen(seed)
    mk = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64).to(dtype)  # noqa: E731
    return {"x0": mk(5), "w1": mk(5, 5), "w2": mk(5, 5)}


def dag_loss(x0, w1, w2):
    x1 = w1 @ x0
    x2 = x0 + w2 @ x1
    x3 = w1 @ (x1 + x2)
    return x3.norm()


def dag_manual(x0, w1, w2, bug=None):
    x1 = w1 @ x0
    x2 = x0 + w2 @ x1
    x3 = w1 @ (x1 + x2)
    g3 = x3 / x3.norm()                          # dq/dx3
    g2 = w1.T @ g3                               # dq/dx2
    g1 = w1.T @ g3 + (0 if bug == "x1" else w2.T @ g2)   # x1 feeds x2 and x3: both terms
    dw1 = torch.outer(g3, x1 + x2)               # w1's use in x3 ...
    if bug != "w1":
        dw1 = dw1 + torch.outer(g1, x0)          # ... plus its use in x1 (weight sharing)
    return {"x0": w1.T @ g1 + g2, "w1": dw1, "w2": torch.outer(g2, x1)}


def dag_bug(bug):
    return lambda **kw: dag_manual(**kw, bug=bug)


# -- elementwise kinks -----------------------------------------------------------------------------

def relu_inputs():
    g = _gen(3)
    x = torch.randint(-2, 3, (4, 5), generator=g).double()  # exact zeros
    return {"x": x, "G": torch.randn(4, 5, generator=g, dtype=torch.float64)}


def relu_loss(x, G):
    return (F.relu(x) * G).sum()


def relu_manual(x, G):
    return {"x": G * (x > 0), "G": F.relu(x)}  # relu'(0) = 0, torch's convention


def pool_inputs():
    g = _gen(4)
    x = torch.randint(0, 3, (2, 2, 6, 6), generator=g).double()  # many ties in the 2x2 windows
    return {"x": x, "G": torch.randn(2, 2, 3, 3, generator=g, dtype=torch.float64)}


def pool_loss(x, G):
    return (F.max_pool2d(x, 2) * G).sum()


def pool_manual(x, G):
    # dL/dx: each window's g goes to its argmax (the first maximal element, torch's tie convention)
    _, idx = F.max_pool2d(x, 2, return_indices=True)
    flat = torch.zeros_like(x).flatten(2).scatter_add(2, idx.flatten(2), G.flatten(2))
    return {"x": flat.view_as(x), "G": F.max_pool2d(x, 2)}
