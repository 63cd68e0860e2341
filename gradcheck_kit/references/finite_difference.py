"""The finite-difference reference: float64 central differences of the summed loss (``_fd.py``).

Per input, "full" (element by element, with one-sided differences so that kinks are judged by
the interval between them) while the work stays within ``fd_limit``/``fd_work``, else "fast"
(seeded random projections, the worst element located by bisection on failure).  With
``double_backward``, autograd's Hessian-vector products are compared with central differences
of its own gradient.
"""

from __future__ import annotations

import math

import torch

from gradcheck_kit import _fd
from gradcheck_kit._check_errors import FiniteDifferenceTooLargeError, NonFiniteReferenceError
from gradcheck_kit._diff import _compare, _result, _scales
from gradcheck_kit._session import _autograd, _check_finite, _loss_out
from gradcheck_kit.report import Result, _fmt

__all__ = ["FiniteDifferenceReference"]


class FiniteDifferenceReference:
    kind = "fd"

    def compare(self, run, subject) -> list:
        subject_obj = subject
        subject_kind, nondet = subject.kind, subject.nondet
        hv_subject = subject.hvp if subject.kind == "autograd" else None
        subject = subject.grads
        tensors = {n: (t.clone(memory_format=torch.contiguous_format) if isinstance(t, torch.Tensor) else t)
                   for n, t in run.ref64().items()}
        ev = _fd.Evaluator(run.loss, tensors, lambda fn, kw: run.run_fn(fn, kw, "loss"))
        with torch.no_grad():
            out0 = _loss_out(run.run_fn(run.loss, tensors, "loss"), run.info)
        # Cost of one loss evaluation, in input elements: deterministic, unlike a timing.
        per_eval = sum(t.numel() for t in tensors.values() if isinstance(t, torch.Tensor))
        f0 = float(out0.double())
        run.fd_noise = 10 * 2.220446049250313e-16 * abs(f0) / run.fd_eps
        if not math.isfinite(f0):
            raise NonFiniteReferenceError(f"the loss itself is {f0} at the given inputs, so finite differences "
                                          f"cannot be taken.")
        h = run.fd_eps
        gen = torch.Generator().manual_seed(run.seed)
        modes = self._modes(run, per_eval)
        out = []
        pending_full = {}
        for n in run.wrt_names:
            if modes[n] == "full":
                pending_full[n] = _fd.full(ev, n, f0, h)
        # full mode: elementwise, kinks accepted between the one-sided differences
        if pending_full:
            refs = {n: fr.central for n, fr in pending_full.items()}
            for n, r in refs.items():
                _check_finite(r, n, "reference (finite-difference)")
            lohi = {n: (fr.lo, fr.hi, fr.kink) for n, fr in pending_full.items()}
            extra = {}
            for n, fr in pending_full.items():
                k = int(fr.kink.sum())
                notes = []
                if k:
                    m = subject[n].detach().to("cpu", torch.float64)
                    out_lo = m < fr.lo - 1e-9 * fr.lo.abs()
                    out_hi = m > fr.hi + 1e-9 * fr.hi.abs()
                    outside = int((fr.kink & (out_lo | out_hi)).sum())
                    notes.append(f"{k} element(s) within a step of a kink, accepted between the one-sided "
                                 f"differences" + (f" ({outside} outside them: several kinks meet there, e.g. a "
                                                   f"multi-way tie; autograd decides those)" if outside else ""))
                if fr.one_sided:
                    notes.append(f"{fr.one_sided} element(s) at the edge of the loss's domain took one-sided "
                                 f"differences")
                extra[n] = dict(fd_mode="full", fd_evaluations=fr.evaluations, kinks=k,
                                note="; ".join(notes) or None)
            out += run.results(subject_obj, refs, "fd", "finite-difference", tensors, lohi=lohi, extra=extra,
                               names=tuple(n for n in run.wrt_names if n in pending_full))
        # fast mode: random projections, worst element found by bisection on failure
        scales = _scales({n: subject[n] for n in run.wrt_names})
        for n in run.wrt_names:
            if modes[n] != "fast":
                continue
            m = subject[n].detach().to("cpu", torch.float64)
            atol, rtol = run.tol(subject[n].dtype, scales[n], "fd")
            start = ev.count
            projs = _fd.projections(ev, n, f0, h, m, run.fd_projections, gen, atol, rtol)
            unverified = 0
            for p in projs:
                if not (math.isfinite(p.central)):
                    raise NonFiniteReferenceError(f"the finite-difference reference for {n!r} is {p.central} "
                                                  f"along a random direction (the loss overflows near this point).")
                if p.kink:  # check each one-sided difference against the gradient just off the kink
                    errs = []
                    for side, d in ((1.0, p.dp), (-1.0, p.dm)):
                        g = run.subject_at(n, tensors, side * 0.5 * h * p.u)
                        if g is None:
                            break
                        errs.append(abs(float((g * p.u).sum()) - d))
                    if len(errs) == 2:
                        p.shifted_err = max(errs)
                    else:
                        p.shifted_err = 0.0
                        unverified += 1
                p.u = None
            fails = [p for p in projs if p.err > p.tol]
            worst = max(projs, key=lambda p: p.err / max(p.tol, 1e-300))
            res = Result(name=n, device=str(run.dev), dtype=str(subject[n].dtype).replace("torch.", ""),
                         shape=tuple(m.shape), ok=not fails, max_abs_err=worst.err,
                         max_rel_err=(worst.err / abs(worst.central)) if worst.central else
                         (0.0 if worst.err == 0 else math.inf),
                         worst_index=None, manual_value=worst.manual, reference_value=worst.central,
                         mismatched=len(fails), numel=m.numel(), atol=atol, rtol=rtol, reference="finite-difference",
                         subject=subject_kind, fd_mode="fast", projections=len(projs),
                         kinks=sum(p.kink for p in projs), nondeterminism=nondet.get(n),
                         note="fast mode: values are projections u . grad on random unit directions u"
                         + (f"; {sum(p.kink for p in projs)} projection(s) crossed a kink and were checked just off "
                            f"it, one side at a time" if any(p.kink for p in projs) else "")
                         + (f" ({unverified} could not be: the gradient failed off the kink)" if unverified else ""))
            if fails and m.numel() > 1:
                flat, mv, central, width = _fd.localise(ev, n, f0, h, m, gen, atol, rtol)
                res.worst_index = _fd.unravel(flat, m.shape)
                res.manual_value, res.reference_value = mv, central
                res.note = (f"fast mode: {len(fails)} of {len(projs)} random projections u . grad disagree; "
                            f"bisection located the worst element (one-sided spread there {_fmt(width)})")
                if run.diagnose:
                    res.hint = ("located by bisection in fast finite-difference mode; re-run with "
                                "reference='autograd' (or a smaller input with fd_mode='full') for a diagnosis")
            res.fd_evaluations = ev.count - start
            out.append(res)
        if hv_subject is not None:  # autograd's double backward vs finite differences of its gradient
            out += self._hvp_fd(run, hv_subject, tensors)
        return out

    @staticmethod
    def _modes(run, per_eval: int) -> dict:
        """Per input: "full" while within fd_limit evaluations (and, in auto mode, fd_work), else "fast"."""
        modes, budget = {}, run.fd_limit
        work = run.fd_work
        for n in run.wrt_names:
            need = _fd.estimate_evaluations(run.work[n].numel())
            if run.fd_mode == "fast":
                modes[n] = "fast"
            elif run.fd_mode == "full":
                if budget is not None and need > budget:
                    raise FiniteDifferenceTooLargeError(
                        f"full finite differences for {n!r} ({run.work[n].numel()} elements) would need about "
                        f"{need} evaluations of the loss, above fd_limit={run.fd_limit}; use fd_mode='fast' "
                        f"(random projections) or pass fd_limit=None to force it.")
                modes[n] = "full"
                budget = None if budget is None else budget - need
            else:
                fits = (budget is None or need <= budget) and (work is None or need * per_eval <= work)
                modes[n] = "full" if fits else "fast"
                if fits and budget is not None:
                    budget -= need
                if fits and work is not None:
                    work -= need * per_eval
        return modes

    @staticmethod
    def _hvp_fd(run, hv_subject, tensors):
        """Autograd's HVP against central differences of its own gradient along v, in float64."""
        wrt = run.wrt_names
        vs = run.vectors(wrt, run.subject)
        h = run.fd_eps
        base = {n: t for n, t in tensors.items()}

        def grads_at(sign):
            shifted = dict(base)
            for n in wrt:
                shifted[n] = base[n] + sign * h * vs[n]
            g, _ = _autograd(run.run_fn, run.loss, shifted, wrt, {}, allow_unused=run.allow_unused)
            return g

        gp, gm = grads_at(1.0), grads_at(-1.0)
        ref = {n: (gp[n] - gm[n]) / (2 * h) for n in wrt}
        scales = _scales(ref)
        out = []
        for n in wrt:
            atol, rtol = run.tol(run.subject[n].dtype, scales[n], "fd", order=2)
            s = hv_subject if hv_subject is not None else {n: torch.zeros_like(ref[n])}
            cmp = _compare(s[n], ref[n], atol, rtol)
            res = _result(n, run.dev, run.subject[n].dtype, ref[n].shape, cmp, atol, rtol,
                          reference="finite-difference", subject="autograd", order=2, fd_mode="full")
            res.note = "order 2: autograd's double backward vs central differences of its gradient along v"
            out.append(res)
        return out
