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
    """One comparison: one input, one device, one reference (and order 1, or 2 for double backward).

    Fields (stable names; ``to_dict()`` gives them all, NaN/inf as null, tuples as lists):

    * ``name``, ``device``, ``dtype``, ``shape``, ``numel``: what was compared.
    * ``ok``: the verdict.  ``reference``: what the subject was compared with ("autograd",
      "autograd (cpu, float64)", "finite-difference"); ``subject``: "manual" or "autograd".
    * ``order``: 1, or 2 for Hessian-vector products d/dx <grad, v> (``double_backward=True``).
    * ``cotangent``: for a non-scalar loss with a ``manual(..., grad_output=...)``, which seeded random
      cotangent (0, 1, ...) was passed as ``grad_output``; None when the loss was summed or scalar.
    * ``worst_index``: the element with the largest error relative to its allowance; ``manual_value``,
      ``reference_value`` and ``worst_err`` (|manual - reference| there, or the distance from the valid
      interval at a kink) all refer to that one element.  ``max_abs_err``/``max_abs_index`` and
      ``max_rel_err``/``max_rel_index`` are the largest absolute / relative errors, each with its own index.
    * ``mismatched``: failing elements (of ``numel``) or failing projections (of ``projections``).
    * ``atol``, ``rtol``: an element fails where its error exceeds ``atol + rtol |reference|``.
    * finite differences: ``fd_mode`` ("full" | "fast"), ``fd_evaluations``; ``kinks`` (elements, or
      projections in fast mode, within a step of a kink), decided as ``kinks_inside`` (inside the
      one-sided interval), ``kinks_hull`` (outside it but inside the hull of nearby pieces' gradients:
      several kinks meet), ``kinks_outside`` (failed); ``ties`` (elements tied in value with another:
      potential multi-way kinks), ``jumps`` (kinks where the loss itself jumps); ``point`` ("x", or
      "x'" when the failure was found at the seeded nearby point); ``rechecked`` / ``recheck_ok``:
      whether the check ran again at x' off the kinks, and its verdict there.
    * fast mode: ``projections``, ``block`` (elements per block), ``sensitivity`` (the smallest
      single-element error caught with probability >= 99%: a smaller one may have been missed).
    * ``baseline``: k of ``check(baseline=k)``; then ``baseline_error`` is autograd's own max error in
      the subject's dtype against the float64 reference, ``max_abs_err`` the subject's, and
      ``baseline_ratio`` their ratio (the subject passes where it is <= k, plus a floor in ``atol``).
    * ``nondeterminism``: max |run1 - run2| of the subject's backward; ``note``: how the verdict was
      reached (kinks, points, fast mode); ``hint``: a guess at the bug when it fails.
    """

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
    worst_err: float | None = None    # the error at worst_index (same element as manual/reference_value)
    cotangent: int | None = None      # which seeded cotangent was passed as grad_output
    kinks_inside: int = 0             # kink/tie elements inside their one-sided interval
    kinks_hull: int = 0               # ... outside it, inside the hull of nearby pieces' gradients
    kinks_outside: int = 0            # ... outside every valid value seen (failures)
    ties: int = 0                     # elements whose value is tied with another element's
    jumps: int = 0                    # kink elements where the loss jumps
    point: str | None = None          # "x" or "x'" (finite differences)
    rechecked: bool = False           # checked again at a seeded nearby point off the kinks
    recheck_ok: bool | None = None
    sensitivity: float | None = None  # fast mode: smallest single-element error caught (99%)
    block: int | None = None          # fast mode: elements per block of projections
    baseline: float | None = None     # check(baseline=k): k
    baseline_error: float | None = None  # autograd's own error in this dtype vs float64
    baseline_ratio: float | None = None  # max_abs_err / baseline_error
    # A failing comparison keeps (subject, reference) as float64 CPU tensors for report.plot/to_html;
    # not a report field: left out of to_dict(), repr and equality.
    tensors: tuple | None = field(default=None, repr=False, compare=False)

    def __post_init__(self):
        if self.worst_err is None and self.manual_value is not None and self.reference_value is not None:
            self.worst_err = abs(self.manual_value - self.reference_value)

    @property
    def label(self) -> str:
        extra = "" if self.order == 1 else " (2nd order)" if self.order == 2 else f" (order {self.order})"
        return f"{self.name}{extra}" + (f" [{self.mode}]" if self.mode else "")

    def to_dict(self) -> dict:
        keep, self.tensors = self.tensors, None   # asdict would deep-copy the tensors
        try:
            d = asdict(self)
        finally:
            self.tensors = keep
        del d["tensors"]
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
    cotangents: int = 0               # seeded cotangents passed as grad_output (0: the loss was summed)
    nodes: list = field(default_factory=list)  # localize=True: one localize.NodeResult per node, forward order

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.results) and self.first_failing_node is None

    @property
    def first_failing_node(self):
        """With ``localize=True``: the first node (forward order) whose own backward is wrong, else None."""
        return next((n for n in self.nodes if n.ok is False), None)

    @property
    def failures(self) -> list:
        return [r for r in self.results if not r.ok]

    def plot(self, directory, tensors=None) -> list:
        """A PNG heatmap per failing input in ``directory`` (``gradcheck_kit.plot.plot_report``)."""
        from gradcheck_kit.plot import plot_report

        return plot_report(self, directory, tensors)

    def to_html(self, path, **options):
        """This report as one self-contained HTML page (``gradcheck_kit.html.to_html``)."""
        from gradcheck_kit.html import to_html

        return to_html(self, path, **options)

    def to_dict(self) -> dict:
        return {"ok": self.ok, "summed": self.summed, "loss_shape": list(self.loss_shape),
                "reference": self.reference, "double_backward": self.double_backward, "seed": self.seed,
                "cotangents": self.cotangents,
                "notes": list(self.notes), "results": [r.to_dict() for r in self.results],
                "nodes": [n.to_dict() for n in self.nodes]}

    def __str__(self) -> str:
        head = (f"gradcheck: {'ok' if self.ok else 'FAILED'} - {len(self.results) - len(self.failures)}/"
                f"{len(self.results)} comparisons passed (reference {self.reference})")
        # manual, reference and err@worst all refer to the worst element; max abs err has its own index
        rows = [("input", "ord", "device", "dtype", "shape", "reference", "verdict", "worst index", "manual",
                 "reference value", "err@worst", "allowed@worst", "max abs err (at)")]
        for r in self.results:
            verdict = "ok" if r.ok else f"MISMATCH {r.mismatched}/{r.projections or r.numel}"
            allowed = (r.atol + r.rtol * abs(r.reference_value)) if r.reference_value is not None else None
            rows.append((_label(r), str(r.order), r.device, r.dtype, "x".join(map(str, r.shape)) or "scalar",
                         r.reference + (f" ({r.fd_mode})" if r.fd_mode else ""), verdict,
                         _fmt_index(r.worst_index), _fmt(r.manual_value), _fmt(r.reference_value),
                         _fmt(r.worst_err), _fmt(allowed),
                         f"{_fmt(r.max_abs_err)} {_fmt_index(r.max_abs_index)}" if r.max_abs_index is not None
                         else (f"{_fmt(r.max_abs_err)} (projection)" if r.projections else _fmt(r.max_abs_err))))
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
        lines = [head] + ["  " + "  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows]
        for r in self.results:
            for d in _details(r):
                lines.append(f"  {_label(r)} [{r.reference}]: {d}")
        lines += [f"  note: {n}" for n in self.notes]
        lines += _node_lines(self)
        return "\n".join(lines)

    def failure_message(self) -> str:
        """Text that reads like ``torch.testing.assert_close``'s, one block per failing comparison."""
        fails = self.failures
        lines = [f"Manual gradients are not close to the reference for {len(fails)} of {len(self.results)} "
                 f"comparisons!"]
        for r in fails:
            lines += ["", f"Gradient w.r.t. {_label(r)!r} ({r.device}, {r.dtype}, reference {r.reference}"
                          + (f", {r.fd_mode} finite differences" if r.fd_mode else "") + "):"]
            if r.projections:
                lines.append(f"Mismatched projections: {r.mismatched} / {r.projections} "
                             f"({_pct(r.mismatched, r.projections)}) of an input of {r.numel} elements")
            else:
                lines.append(f"Mismatched elements: {r.mismatched} / {r.numel} ({_pct(r.mismatched, r.numel)})")
            if r.projections:  # fast mode: the largest errors are of projections u . grad, not of elements
                lines.append(f"Greatest projection difference |u . manual - u . reference|: {_fmt(r.max_abs_err)} "
                             f"(relative {_fmt(r.max_rel_err)}); elementwise atol {_fmt(r.atol)}, rtol {_fmt(r.rtol)}")
            else:
                lines.append(f"Greatest absolute difference: {_fmt(r.max_abs_err)} at index "
                             f"{_fmt_index(r.max_abs_index or r.worst_index)} (up to {_fmt(r.atol)} allowed)")
                lines.append(f"Greatest relative difference: {_fmt(r.max_rel_err)} at index "
                             f"{_fmt_index(r.max_rel_index or r.worst_index)} (up to {_fmt(r.rtol)} allowed)")
            if r.worst_index is not None or r.manual_value is not None:
                lines.append(f"Worst element {_fmt_index(r.worst_index)}: manual {_fmt(r.manual_value)}, "
                             f"reference {_fmt(r.reference_value)}, error {_fmt(r.worst_err)}")
            for d in _details(r)[1:]:
                lines.append(d[0].upper() + d[1:])
        lines += [f"Note: {n}" for n in self.notes]
        bad = self.first_failing_node
        if bad is not None:
            lines += ["", f"Localisation: the first node whose own backward is wrong is [{bad.index}] {bad.op} at "
                          f"{bad.where} (max abs err {_fmt(bad.max_abs_err)} vs {bad.reference}"
                          + (f"; {bad.hint}" if bad.hint else "") + ")"]
        return "\n".join(lines)


def _label(r) -> str:
    return r.label + (f" [cotangent {r.cotangent}]" if r.cotangent is not None else "")


def _details(r) -> list:
    """The lines under the table for one result: tolerances, kinks, fast mode, baseline, note, hint."""
    out = [f"tolerance atol {_fmt(r.atol)}, rtol {_fmt(r.rtol)}; max rel err {_fmt(r.max_rel_err)} at "
           f"{_fmt_index(r.max_rel_index)}"]
    if r.fd_mode:
        fd = f"finite differences {r.fd_mode}, {r.fd_evaluations} evaluations"
        if r.kinks or r.ties:
            fd += (f"; {r.kinks} kink {'projection' if r.projections else 'element'}(s), {r.ties} tied element(s), "
                   f"{r.jumps} jump(s): {r.kinks_inside} inside the one-sided interval, {r.kinks_hull} in the hull "
                   f"of nearby pieces, {r.kinks_outside} outside")
        if r.rechecked:
            fd += f"; re-checked at a seeded nearby point x': {'ok' if r.recheck_ok else 'MISMATCH'}"
        if r.point == "x'":
            fd += "; the values above are at x'"
        if r.projections:
            fd += (f"; {r.projections} projections on blocks of {r.block}; sensitivity {_fmt(r.sensitivity)} "
                   f"(a smaller single-element error may pass)")
        out.append(fd)
    if r.baseline is not None:
        out.append(f"baseline k={r.baseline:g}: manual's error {_fmt(r.max_abs_err)}, autograd's own error in "
                   f"{r.dtype} {_fmt(r.baseline_error)}, ratio {_fmt(r.baseline_ratio)}")
    if r.nondeterminism:
        out.append(f"nondeterminism {_fmt(r.nondeterminism)}")
    if r.note:
        out.append(f"note: {r.note}")
    if r.hint and not r.ok:
        out.append(f"hint: {r.hint}")
    return out


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


def _node_lines(report) -> list:
    """The localisation table (``localize=True``) and the first failing node, in forward order."""
    if not report.nodes:
        return []
    lines = [f"  nodes ({len(report.nodes)}, forward order):"]
    for n in report.nodes:
        lines.append(f"    {n}")
    bad = report.first_failing_node
    lines.append(f"  first failing node: [{bad.index}] {bad.op} at {bad.where}" if bad is not None
                 else "  every checked node's backward agrees with its reference")
    return lines
