"""Elementwise comparison of a subject gradient with a reference, and the default tolerances.

An element mismatches where ``|m - r| > atol + rtol |r|``; with one-sided finite differences
``[lo, hi]`` it mismatches where ``m`` is farther than that from the interval.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from gradcheck_kit import _fd
from gradcheck_kit.report import Result


_LOW = (torch.float16, torch.bfloat16)

# Below float64, a comparison that fails is judged again against float64 autograd: the subject passes where its
# error there is within the tolerance plus OWN_K x torch's own error in the same dtype (DeviceRun.own_error).
OWN_K = 1.0
_OWN = "" if OWN_K == 1 else f"{OWN_K:g} x "  # how notes write 'OWN_K x'

# (rtol, atol as a fraction of the gradient's largest magnitude) for the dtype under test
_TOL = {
    torch.float64: (1e-7, 1e-9),
    torch.float32: (2e-4, 2e-5),
    torch.float16: (2e-2, 2e-2),
    torch.bfloat16: (8e-2, 8e-2),
}


def tolerances(dtype: torch.dtype, scale: float, *, reference: str = "autograd", order: int = 1) -> tuple[float, float]:
    """Default ``(atol, rtol)`` for gradients of ``dtype`` whose largest magnitude is ``scale``.

    atol = a(dtype) * scale, so a tolerance means the same for gradients of 1e-6 and of 1e6.
    Against finite differences (O(h^2) truncation, O(eps/h) rounding) rtol is at least 1e-5.
    """
    rtol, a = _TOL.get(dtype, _TOL[torch.float32])
    if reference == "fd":
        rtol, a = max(rtol, 1e-5), max(a, 1e-6)
    if order == 2 and dtype != torch.float64:
        rtol, a = rtol * 10, a * 10
    return a * scale, rtol


@dataclass
class _Cmp:
    ok: bool
    max_abs_err: float
    max_rel_err: float
    worst_index: tuple | None
    manual_value: float | None
    reference_value: float | None
    mismatched: int
    numel: int
    max_abs_index: tuple | None
    max_rel_index: tuple | None
    bad: Any = None       # bool mask (kept for the diagnosis)
    ratio: float = 0.0    # worst error / allowed


def _compare(m: torch.Tensor, r: torch.Tensor, atol: float, rtol: float, lo=None, hi=None, kink=None) -> _Cmp:
    """Elementwise: |m - r| (or m's distance to [lo, hi]) against atol + rtol |r|; ``kink`` elements pass."""
    m = m.detach()
    if m.device != r.device or m.dtype != r.dtype:
        m = m.to(device=r.device, dtype=torch.float64)
        r = r.to(torch.float64)
        if lo is not None:
            lo, hi = lo.to(r.device, torch.float64), hi.to(r.device, torch.float64)
    n = r.numel()
    if n == 0:
        return _Cmp(True, 0.0, 0.0, None, None, None, 0, 0, None, None)
    if lo is None:
        diff = (m - r).abs()
    else:
        diff = torch.maximum(lo - m, m - hi).clamp_min(0)
        if kink is not None:
            diff = diff.masked_fill(kink.to(diff.device), 0)
    if bool(diff.isnan().any()):
        diff = diff.nan_to_num(nan=math.inf)
    ra = r.abs()
    allowed = ra.mul(rtol).add_(atol)
    bad = diff > allowed
    mismatched = int(bad.sum())
    fd = diff.reshape(-1)
    ia = int(fd.argmax())
    max_abs = float(fd[ia])
    with torch.no_grad():
        rel = diff / ra
        rel = torch.where(diff == 0, torch.zeros((), dtype=rel.dtype, device=rel.device), rel)
    fr = rel.reshape(-1)
    ir = int(fr.nan_to_num(nan=math.inf).argmax())
    max_rel = float(fr[ir])
    viol = (diff / allowed.clamp_min(torch.finfo(allowed.dtype).tiny)).reshape(-1)
    iw = int(viol.nan_to_num(nan=math.inf).argmax())
    ratio = float(viol[iw])
    shape = r.shape
    return _Cmp(mismatched == 0, max_abs, max_rel, _fd.unravel(iw, shape), float(m.reshape(-1)[iw]),
                float(r.reshape(-1)[iw]), mismatched, n, _fd.unravel(ia, shape), _fd.unravel(ir, shape),
                bad if mismatched else None, ratio)


def _result(name, dev, dtype, shape, cmp: _Cmp, atol, rtol, **kw) -> Result:
    return Result(name=name, device=str(dev), dtype=str(dtype).replace("torch.", ""), shape=tuple(shape),
                  ok=cmp.ok, max_abs_err=cmp.max_abs_err, max_rel_err=cmp.max_rel_err,
                  worst_index=cmp.worst_index, manual_value=cmp.manual_value, reference_value=cmp.reference_value,
                  mismatched=cmp.mismatched, numel=cmp.numel, atol=float(atol), rtol=float(rtol),
                  max_abs_index=cmp.max_abs_index, max_rel_index=cmp.max_rel_index, **kw)


def _absmax(t) -> float:
    return float(t.detach().abs().max()) if t is not None and t.numel() else 0.0


def _scales(refs: dict) -> dict:
    """Per-input magnitude for the tolerances: max |ref|, floored at 1% of the largest input's."""
    mags = {n: _absmax(r) for n, r in refs.items()}
    top = max(mags.values(), default=0.0)
    return {n: max(v, 1e-2 * top, 1e-30) for n, v in mags.items()}
