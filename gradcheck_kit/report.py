"""The report of a check: one ``Result`` per comparison, gathered in a ``Report``.

One object feeds everything a person reads: ``print(report)`` (a table), ``report.to_dict()``
(the CLI's ``--json``), ``report.failure_message()`` (the pytest/``assert_grads_match``
message) and the CLI's rich table.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import torch

__all__ = ["Result", "Report"]

# -- the report ----------------------------------------------------------------------

@dataclass
class Result:
    """One comparison: one input, one device, one reference (and order 1, or 2 for double backward)."""

    name: str
    device: str
    dtype: str
    shape: tuple
    ok: bool
    max_abs_err: float
    max_rel_err: float
    worst_index: tuple | None
    manual_value: float | None
    reference_value: float | None
    mismatched: int
    numel: int
    atol: float
    rtol: float
    hint: str | None = None
    reference: str = "autograd"       # what the subject was compared with
    subject: str = "manual"           # "manual", or "autograd" when no manual was given
    order: int = 1                    # 2: Hessian-vector products (double_backward=True); N: order=N
    mode: str | None = None           # "forward_ad", "order", "batched", "compiled" (modes/, references/compiled.py)
    max_abs_index: tuple | None = None
    max_rel_index: tuple | None = None
    fd_mode: str | None = None        # "full" | "fast" when reference is finite-difference
    fd_evaluations: int | None = None
    projections: int | None = None    # fast mode: ``mismatched`` counts failing projections of these
    kinks: int = 0                    # elements (full) or projections (fast) within a step of a kink
    nondeterminism: float | None = None  # max |run1 - run2| of the subject's backward (CUDA)
    note: str | None = None

    @property
    def label(self) -> str:
        extra = "" if self.order == 1 else " (2nd order)" if self.order == 2 else f" (order {self.order})"
        return f"{self.name}{extra}" + (f" [{self.mode}]" if self.mode else "")

    def to_dict(self) -> dict:
        d = asdict(self)
        for k, v in d.items():
            if isinstance(v, float) and not math.isfinite(v):
                d[k] = None  # JSON has no NaN/inf: an infinite relative error (reference 0) becomes null
            elif isinstance(v, tuple):
                d[k] = list(v)
        return d

    def describe(self) -> str:
        return (f"{self.label}: {'ok' if self.ok else 'MISMATCH'} vs {self.reference} "
                f"[{'x'.join(map(str, self.shape)) or 'scalar'}, {self.dtype}, {self.device}]")


@dataclass
class Report:
    """Everything ``check`` found; ``ok`` is True when every result is.

    ``results`` holds one ``Result`` per checked input, device and reference (two per input with
    ``reference="both"``), plus order-2 results (Hessian-vector products) with ``double_backward``.
    ``summed``/``loss_shape`` say whether the loss was non-scalar and summed; ``notes`` are extra
    lines (summation, nondeterminism).
    """

    results: list = field(default_factory=list)
    summed: bool = False              # the loss returned a non-scalar tensor and it was summed
    loss_shape: tuple = ()
    reference: str = "autograd"
    double_backward: bool = False
    seed: int = 0
    notes: list = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.results)

    @property
    def failures(self) -> list:
        return [r for r in self.results if not r.ok]

    def to_dict(self) -> dict:
        return {"ok": self.ok, "summed": self.summed, "loss_shape": list(self.loss_shape),
                "reference": self.reference, "double_backward": self.double_backward, "seed": self.seed,
                "notes": list(self.notes), "results": [r.to_dict() for r in self.results]}

    def __str__(self) -> str:
        head = (f"gradcheck: {'ok' if self.ok else 'FAILED'} - {len(self.results) - len(self.failures)}/"
                f"{len(self.results)} comparisons passed (reference {self.reference})")
        rows = [("input", "device", "dtype", "shape", "reference", "max abs err", "max rel err", "worst index",
                 "verdict")]
        for r in self.results:
            verdict = "ok" if r.ok else f"MISMATCH {r.mismatched}/{r.projections or r.numel}"
            rows.append((r.label, r.device, r.dtype, "x".join(map(str, r.shape)) or "scalar",
                         r.reference + (f" ({r.fd_mode})" if r.fd_mode else ""), _fmt(r.max_abs_err),
                         _fmt(r.max_rel_err), _fmt_index(r.worst_index), verdict))
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
        lines = [head] + ["  " + "  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows]
        for r in self.results:
            if r.hint and not r.ok:
                lines.append(f"  hint ({r.label}): {r.hint}")
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)

    def failure_message(self) -> str:
        """Text that reads like ``torch.testing.assert_close``'s, one block per failing comparison."""
        fails = self.failures
        lines = [f"Manual gradients are not close to the reference for {len(fails)} of {len(self.results)} "
                 f"comparisons!"]
        for r in fails:
            lines += ["", f"Gradient w.r.t. {r.label!r} ({r.device}, {r.dtype}, reference {r.reference}"
                          + (f", {r.fd_mode} finite differences" if r.fd_mode else "") + "):"]
            if r.projections:
                lines.append(f"Mismatched projections: {r.mismatched} / {r.projections} "
                             f"({_pct(r.mismatched, r.projections)}) of an input of {r.numel} elements")
            else:
                lines.append(f"Mismatched elements: {r.mismatched} / {r.numel} ({_pct(r.mismatched, r.numel)})")
            lines.append(f"Greatest absolute difference: {_fmt(r.max_abs_err)} at index "
                         f"{_fmt_index(r.max_abs_index or r.worst_index)} (up to {_fmt(r.atol)} allowed)")
            lines.append(f"Greatest relative difference: {_fmt(r.max_rel_err)} at index "
                         f"{_fmt_index(r.max_rel_index or r.worst_index)} (up to {_fmt(r.rtol)} allowed)")
            if r.worst_index is not None:
                lines.append(f"Worst element {_fmt_index(r.worst_index)}: manual {_fmt(r.manual_value)}, "
                             f"reference {_fmt(r.reference_value)}")
            if r.kinks:
                lines.append(f"{r.kinks} {'projections' if r.projections else 'elements'} sat at a kink "
                             f"(accepted anywhere between the one-sided differences)")
            if r.nondeterminism:
                lines.append(f"Nondeterminism (two runs of the backward differ by): {_fmt(r.nondeterminism)}")
            if r.note:
                lines.append(r.note)
            if r.hint:
                lines.append(f"Hint: {r.hint}")
        lines += [f"Note: {n}" for n in self.notes]
        return "\n".join(lines)


def _fmt(v) -> str:
    if v is None:
        return "-"
    v = float(v)
    if not math.isfinite(v):
        return str(v)
    return "0" if v == 0 else (f"{v:.4g}" if 1e-3 <= abs(v) < 1e5 else f"{v:.3e}")


def _fmt_index(idx) -> str:
    if idx is None:
        return "-"
    return "(" + ", ".join(str(i) for i in idx) + ("," if len(idx) == 1 else "") + ")"


def _pct(k: int, n: int) -> str:
    return f"{100.0 * k / n:.1f}%" if n else "-"


def _describe(t) -> str:
    if isinstance(t, torch.Tensor):
        return f"Tensor[{'x'.join(map(str, t.shape)) or 'scalar'}, {str(t.dtype).replace('torch.', '')}, {t.device}]"
    return repr(t)
