"""Finite differences in float64: the oracle that does not share autograd's assumptions.

``f(x)`` is the summed loss, evaluated under ``no_grad`` on float64 copies.  With a step h,

    d+ = (f(x + h e) - f(x)) / h,   d- = (f(x) - f(x - h e)) / h,   central = (d+ + d-) / 2.

**Full mode** (e = each basis vector, 2n + 1 evaluations, plus 2 per kink element).

* Smooth element (d+ = d- up to h f'' and rounding): the gradient must equal the central difference.
* Kink element (d+ != d-: ReLU/abs at 0, a max-pool tie, a clamp edge, a jump): two more points
  f(x +- 2h) give the *outer* one-sided slopes d++ = (f(x+2h) - f(x+h))/h and d-- likewise.  Of the
  four slopes d--, d-, d+, d++ at most one straddles a jump inside (-2h, 2h): the one farthest from
  the others' median is dropped, and the valid interval is [min, max] of the other three.  For a
  single kink at x this is exactly [left slope, right slope], the subdifferential along e: a value
  outside it is a failure (the interval rule, enforced).  A jump's jump/h never enters it.
* The input's scale (for atol) is taken from the smooth elements' central differences and the
  kink intervals, never from a difference across a jump.
* Exact ties among an input's values (order statistics: max, median, kthvalue, sort) are potential
  multi-way kinks even where d+ = d- (a median tied on both sides has d+ = d- = 0).
* An element at a kink or tie whose value is outside its interval may still be valid where several
  kinks meet (valid subgradients are sums over subsets of the tied terms).  It is decided by the
  hull of the element's central differences at seeded nearby points ``perturb`` draws (each sits on
  one piece next to x; for a single kink they only reproduce the interval's ends, so the interval
  rule still binds there; no padding: a value beyond every sampled piece fails).  The caller also re-checks everything at one such point off the kinks
  (``references/finite_difference.py``), so a bug hidden inside a kink interval is still found.

**Fast mode** (``plan`` + ``projections``): the flat index range is cut into blocks of ``block``
elements; per block, ``k`` seeded Gaussian unit directions u supported on it.  For each, u . m (m the
gradient under test) against the central directional difference.  If every |m_i - g_i| <= tol_i,
then u . (m - g) is a sum of independent-sign terms of variance sum u_i^2 tol_i^2, so the bound is

    |u . m - central| <= Z sqrt(sum_i u_i^2 tol_i^2) + 4 noise / h        (noise counted once)

with Z = 6 (a false alarm below 1e-8 per projection).  A single-element error e at j enters as
u_j e with u_j ~ N(0, 1/block): it is missed by all k projections of its block with probability
erf(T sqrt(block) / (e sqrt 2))^k, so the smallest e caught with probability >= 1 - ALPHA is

    sensitivity = T sqrt(block) / t,   erf(t / sqrt 2)^k = ALPHA.

``plan`` picks the block size and k that reach a target sensitivity (1% of the gradient's largest
magnitude) within an evaluation budget, or the best sensitivity the budget allows, and says which.

A projection whose one-sided differences disagree by more than its bound crossed a kink within the
step (a ReLU input within h |u_j| of 0).  It is judged by the hull of the one-sided slopes at steps
h and h/4 (two more points): the slope at x is an end of the step-h/4 interval unless another kink
lies within h/4, so a correct gradient never fails there.  The caller re-checks at a point off the
kinks as in full mode.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

EPS64 = torch.finfo(torch.float64).eps
Z = 6.0            # standard deviations allowed per projection
ALPHA = 0.01       # sensitivity: a single-element error of that size is missed with probability <= ALPHA
TARGET = 0.01      # fast mode aims at a sensitivity of 1% of the gradient's largest magnitude
PERTURB = 1e-4     # nearby points: each floating input moved by PERTURB x its RMS (Gaussian, seeded)


def estimate_evaluations(numel: int) -> int:
    """Loss evaluations of full central differences over ``numel`` elements (plus f(x))."""
    return 2 * int(numel)


class Evaluator:
    """``f()`` = float64 sum of ``loss(**inputs)``; inputs are float64 copies we may perturb."""

    def __init__(self, loss: Callable, inputs: dict, call: Callable):
        self.loss = loss
        self.inputs = inputs
        self._call = call  # the seeded runner: same RNG per call, in-place detection
        self.count = 0

    def __call__(self) -> float:
        self.count += 1
        with torch.no_grad():
            out = self._call(self.loss, self.inputs)
        return float(out.double().sum()) if isinstance(out, torch.Tensor) else float(out)

    def noise(self, f0: float) -> float:
        """Rounding noise of one difference of f (f's relative error ~ 64 eps); divide by h for a slope."""
        return 64.0 * EPS64 * max(abs(f0), 1.0)


def ties(x: torch.Tensor) -> torch.Tensor:
    """Bool mask: elements whose exact value occurs more than once in ``x`` (potential multi-way kinks)."""
    flat = x.detach().reshape(-1)
    if flat.numel() < 2:
        return torch.zeros(x.shape, dtype=torch.bool)
    _, inv, counts = torch.unique(flat.cpu(), return_inverse=True, return_counts=True)
    return (counts[inv] > 1).view(x.shape)


def perturb(tensors: dict, names, gen: torch.Generator, rel: float = PERTURB) -> dict:
    """A seeded nearby point: each floating tensor in ``names`` moved by rel x its RMS (floor rel) times N(0, 1).

    Generic, so exact ties and exact kinks of x are broken; small, so only pieces adjacent to x are reached.
    """
    out = dict(tensors)
    for n in names:
        t = tensors.get(n)
        if not (isinstance(t, torch.Tensor) and t.is_floating_point() and t.numel()):
            continue
        rms = float(t.detach().double().pow(2).mean().sqrt())
        noise = torch.randn(t.shape, generator=gen, dtype=torch.float64).to(t.device)
        out[n] = (t.detach().double() + rel * max(rms, 1.0 if rms == 0 else rms) * noise).to(t.dtype)
    return out


# -- full mode ------------------------------------------------------------------------------------

@dataclass
class Full:
    central: torch.Tensor   # central differences (meaningless at kinks: see ``ref``)
    lo: torch.Tensor        # valid interval: [d-, d+] (smooth), outer-slope hull (kink)
    hi: torch.Tensor
    kink: torch.Tensor      # bool: the one-sided slopes disagree (a kink or jump within 2h)
    jump: torch.Tensor      # bool: a kink element whose dropped slope was a jump (|f| discontinuous)
    tie: torch.Tensor       # bool: the input's value at this element is tied with another element's
    scale: float            # largest |gradient| seen, jump-robust (smooth centrals, kink intervals)
    evaluations: int
    one_sided: int = 0      # elements at the edge of the loss's domain

    @property
    def ref(self) -> torch.Tensor:
        """The reference value to report: central where smooth, the interval's midpoint at kinks."""
        return torch.where(self.kink, 0.5 * (self.lo + self.hi), self.central)


def _eval_at(ev: Evaluator, flat: torch.Tensor, i: int, value: float):
    orig = float(flat[i])
    flat[i] = value
    try:
        return ev()
    except (RuntimeError, ValueError):
        return None
    finally:
        flat[i] = orig


def full(ev: Evaluator, name: str, f0: float, h: float) -> Full:
    """Element-by-element differences of the summed loss with respect to ``inputs[name]``.

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
        vals = [_eval_at(ev, flat, i, orig + h), _eval_at(ev, flat, i, orig - h)]
        if vals[0] is None and vals[1] is None:
            raise RuntimeError(f"the loss cannot be evaluated a step of {h:g} either side of element {i} of "
                               f"{name!r}")
        if None in vals:
            one_sided += 1
            # a one-sided difference on both sides: the element sits at the domain edge
            good = vals[0] if vals[0] is not None else vals[1]
            vals = [good, 2 * f0 - good] if vals[0] is not None else [2 * f0 - good, good]
        fp[i], fm[i] = vals
    dp = (fp - f0) / h
    dm = (f0 - fm) / h
    central = (fp - fm) / (2 * h)
    slope_noise = 10 * ev.noise(f0) / h
    # smooth elements by a relative test (d+ - d- = h f'' is tiny): their centrals set the scale
    big = torch.maximum(dp.abs(), dm.abs())
    smooth = (dp - dm).abs() <= 1e-4 * big + slope_noise
    scale0 = float(central[smooth].abs().max()) if bool(smooth.any()) else float(big.median()) if n else 0.0
    kink = (dp - dm).abs() > 1e-4 * max(scale0, 1e-12) + slope_noise
    lo = torch.minimum(dp, dm)
    hi = torch.maximum(dp, dm)
    jump = torch.zeros(n, dtype=torch.bool)
    for i in kink.nonzero().flatten().tolist():
        orig = float(flat[i])
        fpp, fmm = _eval_at(ev, flat, i, orig + 2 * h), _eval_at(ev, flat, i, orig - 2 * h)
        slopes = [float(dp[i]), float(dm[i])]
        if fpp is not None:
            slopes.append((fpp - float(fp[i])) / h)
        if fmm is not None:
            slopes.append((float(fm[i]) - fmm) / h)
        if len(slopes) == 4:  # drop the one slope that may straddle a jump
            s = sorted(slopes)
            med = 0.5 * (s[1] + s[2])
            far = max(range(4), key=lambda j: abs(slopes[j] - med))
            rest = [v for j, v in enumerate(slopes) if j != far]
            spread = max(rest) - min(rest)
            jump[i] = abs(slopes[far] - med) > 100 * (spread + max(scale0, 1e-12))
            slopes = rest
        lo[i], hi[i] = min(slopes), max(slopes)
    finite = torch.isfinite(lo) & torch.isfinite(hi)
    parts = [central[~kink].abs(), lo[kink & finite].abs(), hi[kink & finite].abs()]
    scale = max((float(p.max()) for p in parts if p.numel()), default=0.0)
    shape = x.shape
    return Full(central.view(shape), lo.view(shape), hi.view(shape), kink.view(shape), jump.view(shape),
                ties(x), scale, ev.count - start, one_sided)


@dataclass
class Judgement:
    """Per element of one input in full mode: how it was decided."""

    bad: torch.Tensor        # bool: fails
    err: torch.Tensor        # distance from the valid set (|m - central| where smooth)
    allowed: torch.Tensor    # atol + rtol |ref|
    inside: int              # kink/tie elements inside their one-sided interval
    hull: int                # outside it, but inside the hull of nearby pieces' gradients (multi-way kinks)
    outside: int             # kink/tie elements that fail: outside every valid value seen
    undecided: torch.Tensor  # bool: kink/tie elements outside the interval, before ``widen``


def judge(m: torch.Tensor, fr: Full, atol: float, rtol: float) -> Judgement:
    """Smooth elements against the central difference; kink and tie elements against their interval."""
    m = m.detach().to("cpu", torch.float64)
    ref = fr.ref
    allowed = ref.abs() * rtol + atol
    special = fr.kink | fr.tie
    dist = torch.maximum(fr.lo - m, m - fr.hi).clamp_min(0)
    err = torch.where(special, dist, (m - fr.central).abs()).nan_to_num(nan=math.inf)
    bad = err > allowed
    undecided = bad & special
    inside = int((special & ~bad).sum())
    return Judgement(bad & ~special, err, allowed, inside, 0, 0, undecided)


def central_at(ev: Evaluator, name: str, flat_idx: list, h: float) -> torch.Tensor:
    """Central differences at the listed flat elements of ``name``, at ev's current inputs (2 per element)."""
    flat = ev.inputs[name].view(-1)
    out = torch.empty(len(flat_idx), dtype=torch.float64)
    for k, i in enumerate(flat_idx):
        orig = float(flat[i])
        fp, fm = _eval_at(ev, flat, i, orig + h), _eval_at(ev, flat, i, orig - h)
        out[k] = math.nan if fp is None or fm is None else (fp - fm) / (2 * h)
    return out


def decide(j: Judgement, m: torch.Tensor, fr: Full, flat_idx: list, sample: Callable,
           max_samples: int = 48) -> Judgement:
    """Decide kink/tie elements outside their one-sided interval by the gradients of nearby pieces.

    ``sample(s, idx)`` returns the central differences of elements ``idx`` at the s-th seeded nearby
    point.  Each lies on one piece next to x, so the sampled values are the element's gradient on
    those pieces.  If they never leave [lo, hi], only the two pieces of a single kink were seen and the
    interval rule stands.  If they do, several kinks meet: the valid values include sums over subsets
    of the tied terms, and the element passes inside the hull of the interval and the sampled pieces
    (a value no sampled piece reaches fails: rarely sampled extreme pieces may then false-alarm, which
    the note makes visible; autograd, with reference="both", decides torch's own convention).  Sampling stops for an element once it passes, after 8 samples that show
    no second kink (the interval rule stands), or after ``max_samples``.
    """
    m = m.detach().to("cpu", torch.float64).reshape(-1)
    lo0, hi0 = fr.lo.reshape(-1), fr.hi.reshape(-1)
    err, bad = j.err.reshape(-1).clone(), j.bad.reshape(-1).clone()
    allowed = j.allowed.reshape(-1)
    tie = fr.tie.reshape(-1)
    a = {i: float(lo0[i]) for i in flat_idx}
    b = {i: float(hi0[i]) for i in flat_idx}

    def verdict(i):
        return max(a[i] - float(m[i]), float(m[i]) - b[i], 0.0)

    remaining = list(flat_idx)
    for s in range(max_samples):
        if not remaining:
            break
        vals = sample(s, remaining)
        for i, v in zip(remaining, vals.tolist()):
            if math.isfinite(v):
                a[i], b[i] = min(a[i], v), max(b[i], v)
        remaining = [i for i in remaining if verdict(i) > float(allowed[i])
                     and (s < 7 or tie[i] or b[i] - a[i] > float(hi0[i] - lo0[i]) + float(allowed[i]))]
    hull = outside = 0
    for i in flat_idx:
        e = verdict(i)
        err[i] = e
        if e <= float(allowed[i]):
            hull += 1
        else:
            bad[i] = True
            outside += 1
    shape = j.bad.shape
    return Judgement(bad.view(shape), err.view(shape), j.allowed, j.inside, hull, outside,
                     torch.zeros(shape, dtype=torch.bool))


# -- fast mode ------------------------------------------------------------------------------------

def _t_alpha(k: int, alpha: float = ALPHA) -> float:
    """t with P(|N(0,1)| < t)^k = alpha: all k projections of a block miss an error below T sqrt(block) / t."""
    return math.sqrt(2.0) * float(torch.special.erfinv(torch.tensor(alpha ** (1.0 / k), dtype=torch.float64)))


def sensitivity(bound: float, block: int, k: int) -> float:
    """Smallest single-element error caught with probability >= 1 - ALPHA by k projections of ``bound``."""
    return bound * math.sqrt(block) / _t_alpha(k)


@dataclass
class Plan:
    block: int          # elements per block
    k: int              # projections per block
    sensitivity: float  # smallest single-element error caught with probability >= 1 - ALPHA
    evaluations: int    # 2 per projection (kink checks and localisation extra)
    target: float       # the sensitivity aimed at
    reached: bool


def plan(n: int, bound: float, target: float, budget: int, min_projections: int = 8) -> Plan:
    """Block size and projections per block: the cheapest reaching ``target`` within ``budget`` evaluations.

    ``bound`` is the per-projection tolerance T (roughly Z x RMS elementwise tolerance + noise).  If no
    choice reaches ``target`` in budget, the one with the best sensitivity that fits is used.
    """
    best = None
    for k in (2, 4, 8, 16):
        t = _t_alpha(k)
        # largest block with T sqrt(block) / t <= target
        block = int(min(n, max(1.0, (target * t / bound) ** 2))) if bound > 0 else n
        blocks = -(-n // block)
        if blocks * k < min_projections:
            k_eff = -(-min_projections // blocks)
        else:
            k_eff = k
        cost = 2 * blocks * k_eff
        s = sensitivity(bound, block, k_eff)
        cand = Plan(block, k_eff, s, cost, target, s <= target * (1 + 1e-9))
        if cost <= budget and (best is None or (cand.reached, -cand.evaluations) > (best.reached, -best.evaluations)):
            best = cand
    if best is not None and best.reached:
        return best
    # budget-bound: for each k, the smallest block that fits; keep the best sensitivity
    fallback = None
    for k in (2, 4, 8, 16):
        blocks = max(1, min(n, budget // (2 * k)))
        block = -(-n // blocks)
        blocks = -(-n // block)
        cand = Plan(block, k, sensitivity(bound, block, k), 2 * blocks * k, target, False)
        if fallback is None or cand.sensitivity < fallback.sensitivity:
            fallback = cand
    if best is not None and best.sensitivity <= fallback.sensitivity:
        return best
    return fallback


@dataclass
class Projection:
    manual: float    # u . m
    central: float   # (f(x + h u) - f(x - h u)) / 2h
    tol: float       # Z sqrt(sum u_i^2 tol_i^2) + 4 noise / h
    dp: float        # one-sided slopes at step h
    dm: float
    block: tuple     # (start, stop) of the flat range u lives on
    kink: bool = False
    lo: float = 0.0  # kink: hull of the one-sided slopes at steps h and h/4
    hi: float = 0.0

    @property
    def err(self) -> float:
        if self.kink:
            return max(self.lo - self.manual, self.manual - self.hi, 0.0)
        return abs(self.manual - self.central)


def _unit(n: int, gen: torch.Generator, lo: int, hi: int) -> torch.Tensor:
    u = torch.zeros(n, dtype=torch.float64)
    u[lo:hi] = torch.randn(hi - lo, generator=gen, dtype=torch.float64)
    return u / u.norm().clamp_min(1e-300)


def _along(ev: Evaluator, name: str, x: torch.Tensor, d: torch.Tensor) -> float | None:
    ev.inputs[name] = x + d
    try:
        return ev()
    except (RuntimeError, ValueError):
        return None
    finally:
        ev.inputs[name] = x


def project(ev: Evaluator, name: str, f0: float, h: float, m: torch.Tensor, tol_i: torch.Tensor,
            u: torch.Tensor, block: tuple) -> Projection:
    """One projection: u . m against the directional differences, with the kink test and its hull."""
    x = ev.inputs[name]
    uu = u.view(x.shape).to(x.device)
    fp, fm = _along(ev, name, x, h * uu), _along(ev, name, x, -h * uu)
    if fp is None or fm is None:
        raise RuntimeError(f"the loss cannot be evaluated a step of {h:g} along a random direction of {name!r}")
    dp, dm = (fp - f0) / h, (f0 - fm) / h
    noise = ev.noise(f0) / h
    bound = Z * float((u * tol_i.reshape(-1)).norm()) + 4 * noise
    p = Projection(float((m.reshape(-1) * u).sum()), (fp - fm) / (2 * h), bound, dp, dm, block)
    if abs(dp - dm) > bound:  # a kink within the step: judge by the one-sided slopes at h and h/4
        q = h / 4
        fq, fmq = _along(ev, name, x, q * uu), _along(ev, name, x, -q * uu)
        slopes = [dp, dm] + ([(fq - f0) / q] if fq is not None else []) + ([(f0 - fmq) / q] if fmq is not None else [])
        p.kink, p.lo, p.hi = True, min(slopes), max(slopes)
        p.tol = bound + 4 * noise * 4  # the h/4 slopes carry 4x the rounding noise
    return p


def projections(ev: Evaluator, name: str, f0: float, h: float, m: torch.Tensor, tol_i: torch.Tensor,
                pl: Plan, gen: torch.Generator) -> list[Projection]:
    """``pl.k`` seeded Gaussian unit directions per block of ``pl.block`` flat elements."""
    n = m.numel()
    out = []
    for lo in range(0, n, pl.block):
        hi = min(n, lo + pl.block)
        for _ in range(pl.k):
            out.append(project(ev, name, f0, h, m, tol_i, _unit(n, gen, lo, hi), (lo, hi)))
    return out


def localise(ev: Evaluator, name: str, f0: float, h: float, m: torch.Tensor, tol_i: torch.Tensor,
             gen: torch.Generator, lo: int = 0, hi: int | None = None, max_levels: int = 40):
    """Bisect [lo, hi) toward the half whose restricted projection disagrees most (relative to its bound).

    Returns (flat index, manual value, central difference, one-sided spread) there.
    """
    x = ev.inputs[name]
    n = x.numel()
    hi = n if hi is None else hi
    for _ in range(max_levels):
        if hi - lo <= 1:
            break
        mid = (lo + hi) // 2
        best, best_ratio = None, -1.0
        for rng in ((lo, mid), (mid, hi)):
            p = project(ev, name, f0, h, m, tol_i, _unit(n, gen, *rng), rng)
            ratio = p.err / max(p.tol, 1e-300)
            if ratio > best_ratio:
                best, best_ratio = rng, ratio
        lo, hi = best
    flat = x.view(-1)
    orig = float(flat[lo])
    fp, fm = _eval_at(ev, flat, lo, orig + h), _eval_at(ev, flat, lo, orig - h)
    if fp is None or fm is None:
        return lo, float(m.reshape(-1)[lo]), math.nan, math.nan
    central = (fp - fm) / (2 * h)
    width = abs((fp - f0) / h - (f0 - fm) / h)
    return lo, float(m.reshape(-1)[lo]), central, width


def unravel(flat_index: int, shape) -> tuple[int, ...]:
    out = []
    for s in reversed(tuple(shape)):
        out.append(flat_index % s if s else 0)
        flat_index //= max(s, 1)
    return tuple(reversed(out))


__all__ = ["Evaluator", "Full", "Judgement", "Plan", "Projection", "full", "judge", "decide", "central_at",
           "perturb", "ties", "plan", "sensitivity", "projections", "project", "localise",
           "estimate_evaluations", "unravel", "Z", "ALPHA", "TARGET"]
