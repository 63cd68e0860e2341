"""Finite differences in float64: the oracle that does not share autograd's assumptions.

``f(x)`` is the summed loss, evaluated under ``no_grad`` on float64 copies.  With a step h,

    d+ = (f(x + h e) - f(x)) / h,   d- = (f(x) - f(x - h e)) / h,   central = (d+ + d-) / 2.

Where f is smooth, d+ and d- differ by h f'' (tiny); within h of a kink (ReLU/abs at 0, a
max-pool tie, a hardtanh edge) they are the two one-sided derivatives, and every value of
the subdifferential lies between them.  So a gradient passes where it lies in
[min(d-, d+), max(d-, d+)] up to the tolerance: kinks never fail, and a wrong formula
elsewhere (where d- = d+) is still caught.  Where several kinks meet at one element (a
multi-way max-pool tie over overlapping windows, several ReLU units at exactly 0 fed by the
same input) the valid subgradients are sums over subsets of the tied terms and may leave that
interval: such a kink element is accepted whatever its value (autograd, which follows torch's
tie convention, is the reference for it) and counted.

* ``full``: e = each basis vector, 2n + 1 evaluations.
* ``fast``: e = a few seeded random unit directions u per input, comparing u . grad with
  the one-sided directional derivatives; ``localise`` bisects the flat index range with
  restricted random directions to find the worst element (2 log2 n more projections).
  A random direction moves every element, so it crosses every kink at once and the interval
  argument above no longer holds.  A direction whose one-sided differences disagree is
  therefore checked just off the kink instead: d+ is the derivative of the piece on (0, h],
  i.e. u . grad(x + h/2 u) up to O(h^2), and likewise d- with x - h/2 u (two more gradient
  calls; ``compare`` does them).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

EPS64 = torch.finfo(torch.float64).eps


def estimate_evaluations(numel: int) -> int:
    """Loss evaluations of full central differences over ``numel`` elements (plus f(x))."""
    return 2 * int(numel)


class Evaluator:
    """``f()`` = float64 sum of ``loss(**inputs)``; inputs are float64 copies we may perturb."""

    def __init__(self, loss: Callable, inputs: dict, call: Callable):
        self.loss = loss
        self.inputs = inputs
        self._call = call  # compare._call_loss: seeded RNG, in-place detection
        self.count = 0

    def __call__(self) -> float:
        self.count += 1
        with torch.no_grad():
            out = self._call(self.loss, self.inputs)
        return float(out.double().sum()) if isinstance(out, torch.Tensor) else float(out)

    def noise(self, f0: float) -> float:
        """Rounding noise of one difference quotient (f's relative error ~ 64 eps), per unit step."""
        return 64.0 * EPS64 * max(abs(f0), 1.0)


@dataclass
class Full:
    central: torch.Tensor
    lo: torch.Tensor
    hi: torch.Tensor
    kink: torch.Tensor  # bool: one-sided differences disagree (a kink within the step)
    evaluations: int
    one_sided: int = 0  # elements at the edge of the loss's domain


def full(ev: Evaluator, name: str, f0: float, h: float) -> Full:
    """Element-by-element central differences of the summed loss with respect to ``inputs[name]``.

    At the edge of the loss's domain (a step that makes it raise, e.g. a BCE target of 1 + h) the
    one-sided difference that stays inside is used instead.
    """
    start = ev.count
    x = ev.inputs[name]
    flat = x.view(-1)
    n = flat.numel()
    fp = torch.empty(n, dtype=torch.float64)
    fm = torch.empty(n, dtype=torch.float64)
    one_sided = 0
    for i in range(n):
        orig = float(flat[i])
        vals = []
        for sign in (1.0, -1.0):
            flat[i] = orig + sign * h
            try:
                vals.append(ev())
            except (RuntimeError, ValueError):
                vals.append(None)
        flat[i] = orig
        if vals[0] is None and vals[1] is None:
            raise RuntimeError(f"the loss cannot be evaluated a step of {h:g} either side of element {i} of "
                               f"{name!r}")
        if None in vals:
            one_sided += 1
            # a one-sided difference on both sides: the element sits at the domain edge
            good = vals[0] if vals[0] is not None else vals[1]
            sign = 1.0 if vals[0] is not None else -1.0
            vals = [good, 2 * f0 - good] if sign > 0 else [2 * f0 - good, good]
        fp[i], fm[i] = vals
    dp = (fp - f0) / h
    dm = (f0 - fm) / h
    central = (fp - fm) / (2 * h)
    scale = float(central.abs().max()) if n else 0.0
    kink = (dp - dm).abs() > (1e-4 * max(scale, 1e-12) + 10 * ev.noise(f0) / h)
    shape = x.shape
    return Full(central.view(shape), torch.minimum(dp, dm).view(shape), torch.maximum(dp, dm).view(shape),
                kink.view(shape), ev.count - start, one_sided)


@dataclass
class Projection:
    manual: float    # u . grad_manual
    central: float   # (f(x + h u) - f(x - h u)) / 2h
    lo: float
    hi: float
    tol: float
    kink: bool
    u: torch.Tensor | None = None
    dp: float = 0.0  # one-sided (forward) directional difference
    dm: float = 0.0  # one-sided (backward)
    shifted_err: float | None = None  # kink: max over sides of |u . grad(x +- h/2 u) - d+-|

    @property
    def err(self) -> float:
        if self.shifted_err is not None:
            return self.shifted_err
        return max(self.lo - self.manual, self.manual - self.hi, 0.0)


def _project(ev: Evaluator, name: str, f0: float, h: float, u: torch.Tensor, m: torch.Tensor,
             atol: float, rtol: float) -> Projection:
    x = ev.inputs[name]
    ev.inputs[name] = x + h * u
    fp = ev()
    ev.inputs[name] = x - h * u
    fm = ev()
    ev.inputs[name] = x
    dp, dm = (fp - f0) / h, (f0 - fm) / h
    mu = m * u
    pm = float(mu.sum())
    # Any m within the elementwise tolerance of the gradient passes:  |sum (m - g) u| <= sum tol_i |u_i|.
    noise = ev.noise(f0) / h
    tol = atol * float(u.abs().sum()) + rtol * float(mu.abs().sum()) + 4 * noise
    kink = abs(dp - dm) > 1e-4 * max(float(mu.abs().sum()), 1e-12) + 10 * noise
    return Projection(pm, (fp - fm) / (2 * h), min(dp, dm), max(dp, dm), tol, kink, u, dp, dm)


def _unit(shape, gen: torch.Generator, mask_range=None) -> torch.Tensor:
    u = torch.randn(shape, generator=gen, dtype=torch.float64)
    if mask_range is not None:
        lo, hi = mask_range
        flat = u.view(-1)
        flat[:lo] = 0
        flat[hi:] = 0
    return u / u.norm().clamp_min(1e-300)


def projections(ev: Evaluator, name: str, f0: float, h: float, m: torch.Tensor, k: int,
                gen: torch.Generator, atol: float, rtol: float) -> list[Projection]:
    """``k`` seeded random unit directions u: u . m against the directional difference quotients."""
    x = ev.inputs[name]
    return [_project(ev, name, f0, h, _unit(x.shape, gen).to(x.device), m, atol, rtol) for _ in range(k)]


def localise(ev: Evaluator, name: str, f0: float, h: float, m: torch.Tensor, gen: torch.Generator,
             atol: float, rtol: float, max_levels: int = 40) -> tuple[int, float, float, float]:
    """Bisect the flat range toward the half whose restricted projection disagrees most.

    Returns (flat index, manual value, central difference, one-sided interval width) there.
    """
    x = ev.inputs[name]
    lo, hi = 0, x.numel()
    for _ in range(max_levels):
        if hi - lo <= 1:
            break
        mid = (lo + hi) // 2
        best, best_ratio = None, -1.0
        for rng in ((lo, mid), (mid, hi)):
            p = _project(ev, name, f0, h, _unit(x.shape, gen, rng).to(x.device), m, atol, rtol)
            ratio = p.err / max(p.tol, 1e-300)
            if ratio > best_ratio:
                best, best_ratio = rng, ratio
        lo, hi = best
    flat = x.view(-1)
    orig = float(flat[lo])
    flat[lo] = orig + h
    fp = ev()
    flat[lo] = orig - h
    fm = ev()
    flat[lo] = orig
    central = (fp - fm) / (2 * h)
    width = abs((fp - f0) / h - (f0 - fm) / h)
    return lo, float(m.reshape(-1)[lo]), central, width


def unravel(flat_index: int, shape) -> tuple[int, ...]:
    out = []
    for s in reversed(tuple(shape)):
        out.append(flat_index % s if s else 0)
        flat_index //= max(s, 1)
    return tuple(reversed(out))


__all__ = ["Evaluator", "Full", "Projection", "full", "projections", "localise", "estimate_evaluations",
           "unravel"]
