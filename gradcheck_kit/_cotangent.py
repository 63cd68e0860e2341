"""Cotangents: checking a vector-Jacobian product along several seeded directions, not just the all-ones one.

For a non-scalar loss y = loss(x), summing y checks only v = 1: a VJP bug that is invisible along
v = 1 (``g * w.flip(0)`` for ``(g * w).flip(0)``, which agree when g is constant) passes.  When
``manual`` takes a keyword parameter named ``grad_output``, ``check`` instead draws ``count`` seeded
cotangents v_c ~ N(0, 1) of y's shape (a torch.Generator seeded with ``seed + 1000 + c``) and, for
each, checks ``manual(**inputs, grad_output=v_c)`` as the gradient of the scalar <v_c, y>: against
autograd's VJP and against finite differences of <v_c, loss(x)>.  Every result carries its
``cotangent`` index.  (A scalar loss gets scalar cotangents, which also catches a ``manual`` that
ignores ``grad_output``.)
"""

from __future__ import annotations

import inspect
from typing import Callable

import torch

__all__ = ["takes_grad_output", "cotangents", "along"]


def takes_grad_output(manual: Callable | None) -> bool:
    """True when ``manual`` has a parameter named ``grad_output`` that can be passed by keyword."""
    if manual is None:
        return False
    try:
        p = inspect.signature(manual).parameters.get("grad_output")
    except (TypeError, ValueError):
        return False
    return p is not None and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)


def cotangents(shape, seed: int, count: int) -> list:
    """``count`` seeded standard-normal float64 cotangents of ``shape``."""
    return [torch.randn(tuple(shape), generator=torch.Generator().manual_seed(seed + 1000 + c), dtype=torch.float64)
            for c in range(count)]


def _like(kwargs: dict):
    for t in kwargs.values():
        if isinstance(t, torch.Tensor) and t.is_floating_point():
            return t
    return None


def along(loss: Callable, manual: Callable, v: torch.Tensor) -> tuple[Callable, Callable]:
    """(loss_v, manual_v): loss_v = <v, loss(x)> (a scalar); manual_v = manual(x, grad_output=v)."""

    def loss_v(**kwargs):
        y = loss(**kwargs)
        if not isinstance(y, torch.Tensor):
            return y  # check() names the problem
        return (y * v.to(device=y.device, dtype=y.dtype)).sum()

    def manual_v(**kwargs):
        t = _like(kwargs)
        g = v if t is None else v.to(device=t.device, dtype=t.dtype)
        return manual(**kwargs, grad_output=g)

    manual_v.grad_output_manual = manual  # modes/batched.py vmaps manual over cotangents itself
    return loss_v, manual_v
