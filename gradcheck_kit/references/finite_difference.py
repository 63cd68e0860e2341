"""The finite-difference reference: float64 differences of the summed loss (``_fd.py``), judged soundly at kinks.

Per input, "full" (element by element) while the work stays within ``fd_limit``/``fd_work``, else
"fast" (blockwise random projections planned for a stated sensitivity).

Kinks never turn a check into a pass by default:

* at x, a kink element must lie in its one-sided interval (the interval rule); a kink or tie element
  outside it passes only inside the hull of the gradients of the pieces met at seeded nearby points
  (a multi-way kink), and the count of each decision is reported;
* when x has any kink, tie or kinked projection, everything is checked again at one seeded nearby
  point x' (every floating input moved by ``_fd.PERTURB`` of its RMS; ``loss`` and ``manual`` both
  run there), where generic inputs sit on no kink: a wrong formula that a kink interval hid at x
  fails at x'.  The result is ok only if both points pass, and it says so.

With ``double_backward``, the subject's Hessian-vector products d/dx <grad, v> are compared with
central differences of the subject's own gradient along v (manual's, or autograd's).

Below float64 the differences are of the float64 loss, a slightly different function when the loss
depends on its dtype (``eps=None`` meaning ``finfo(dtype).eps``) and a far more exact one where the
gradient cancels.  An input that fails is judged again with atol + ``OWN_K`` x torch's own error in
the subject's dtype (``DeviceRun.own_error``: its gradient there against float64 autograd, which a
wrong backward cannot inflate, being wrong in both); the note says so.  Not for an autograd subject.
"""

from __future__ import annotations

import math

import torch

from gradcheck_kit import _fd
from gradcheck_kit._check_errors import FiniteDifferenceTooLargeError, NonFiniteReferenceError
from gradcheck_kit._diff import _OWN, OWN_K, _absmax, _Cmp, _compare, _result
from gradcheck_kit._session import _check_finite, _loss_out
from gradcheck_kit.errors import GradcheckKitError
from gradcheck_kit.report import Result, _fmt

__all__ = ["FiniteDifferenceReference"]

_EPS32 = float(torch.finfo(torch.float32).eps)
_SAMPLES = 48          # nearby points (at most) that decide multi-way kink elements
_MAX_UNDECIDED = 256   # elements decided that way per input; beyond, they fail (and the note says so)


def _contig64(tensors: dict) -> dict:
    return {n: (t.detach().to("cpu", torch.float64 if t.is_floating_point() else t.dtype)
                .clone(memory_format=torch.contiguous_format) if isinstance(t, torch.Tensor) else t)
            for n, t in tensors.items()}


def _floating(tensors: dict) -> tuple:
    return tuple(n for n, t in tensors.items() if isinstance(t, torch.Tensor) and t.is_floating_point())


class _Point:
    """One point of the check: float64 copies for the differences, an evaluator, f there."""

    def __init__(self, run, tensors64: dict, label: str):
        self.tensors, self.label = tensors64, label
        self.ev = _fd.Evaluator(run.loss, tensors64, lambda fn, kw: run.run_fn(fn, kw, "loss"))
        with torch.no_grad():
            out = run.run_fn(run.loss, tensors64, "loss")
        self.f0 = float(_loss_out(out, {}).double())


class FiniteDifferenceReference:
    kind = "fd"

    def compare(self, run, subject) -> list:
        tensors = _contig64(run.ref64())
        with torch.no_grad():
            out0 = _loss_out(run.run_fn(run.loss, tensors, "loss"), run.info)
        f0 = float(out0.double())
        if not math.isfinite(f0):
            raise NonFiniteReferenceError(f"the loss itself is {f0} at the given inputs, so finite differences "
                                          f"cannot be taken.")
        run.fd_noise = 10 * _fd.EPS64 * abs(f0) / run.fd_eps
        per_eval = sum(t.numel() for t in tensors.values() if isinstance(t, torch.Tensor))
        modes = self._modes(run, per_eval)
        gen = torch.Generator().manual_seed(run.seed)
        x = _Point(run, tensors, "x")
        # at x, kink/tie elements outside their interval are not sampled yet: the re-check at x' comes first
        first = self._at_point(run, subject.grads, x, modes, gen, per_eval, decide_multiway=False)
        results = [r for r, _ in first]
        if any(flag and (r.ok or getattr(r, "deferred", False)) for r, flag in first):  # kinks or ties at x: check off the kinks too
            results = self._recheck(run, subject, first, modes, per_eval, x)
        for r in results:
            r.subject, r.nondeterminism = subject.kind, subject.nondet.get(r.name)
        if run.double_backward:
            results += self._hvp_fd(run, subject, tensors)
        return results

    # -- one point --------------------------------------------------------------------------------------
    def _at_point(self, run, grads, pt, modes, gen, per_eval, *, decide_multiway) -> list:
        """[(Result, needs a re-check off the kinks)] for every checked input at ``pt``."""
        out = []
        h = run.fd_eps
        fulls = {n: _fd.full(pt.ev, n, pt.f0, h) for n in run.wrt_names if modes[n] == "full"}
        for n, fr in fulls.items():
            _check_finite(fr.ref, n, "reference (finite-difference)")
        mags = [fr.scale for fr in fulls.values()] + [float(grads[n].detach().abs().max()) if grads[n].numel()
                                                      else 0.0 for n in run.wrt_names if modes[n] == "fast"]
        top = max(mags, default=0.0)
        pt.fulls, pt.top = fulls, top
        for n in run.wrt_names:
            if modes[n] == "full":
                out.append(self._full_result(run, grads[n], fulls[n], n, pt, top, decide_multiway))
            else:
                out.append(self._fast_result(run, grads[n], n, pt, top, gen, per_eval, pt.label == "x"))
        return out

    def _full_result(self, run, m, fr, n, pt, top, decide_multiway):
        scale = max(fr.scale, 1e-2 * top, 1e-30)
        atol, rtol = run.tol(run.subject[n].dtype, scale, "fd")
        j, own_note = _fd.judge(m, fr, atol, rtol), None
        own = run.own_error() if bool(j.bad.any()) else None
        if own is not None:  # below float64 (module docstring: torch's own error)
            j2 = _fd.judge(m, fr, atol + OWN_K * own[n], rtol)
            if not bool(j2.bad.any()):
                own_note = (f"in {str(m.dtype).replace('torch.', '')}, {int(j.bad.sum())} element(s) differ from the "
                            f"float64 differences by more than atol {_fmt(atol)}, but torch's own gradient in that "
                            f"dtype is {_fmt(own[n])} from float64 autograd; allowed atol + {_OWN}that")
                j, atol = j2, atol + OWN_K * own[n]
        undecided = j.undecided.reshape(-1).nonzero().flatten().tolist()
        skipped_smooth = bool(j.bad.any())  # already failing on smooth elements
        capped = by_autograd = 0
        skipped = 0
        if undecided and decide_multiway and bool(j.bad.any()):
            # already failing on smooth elements: the verdict stands; the kink elements stay undecided (failing)
            skipped = len(undecided)
            j.bad = j.bad | j.undecided
        elif undecided and decide_multiway:
            rest = undecided[_MAX_UNDECIDED:]
            capped, undecided = len(rest), undecided[:_MAX_UNDECIDED]
            def sample(s, idx):
                g = torch.Generator().manual_seed(run.seed * 7919 + 101 + s)
                near = _contig64(_fd.perturb(pt.tensors, _floating(pt.tensors), g))
                ev = _fd.Evaluator(run.loss, near, lambda fn, kw: run.run_fn(fn, kw, "loss"))
                return _fd.central_at(ev, n, idx, run.fd_eps)

            j = _fd.decide(j, m, fr, undecided, sample, _SAMPLES)
            bad = j.bad.reshape(-1)
            for i in rest:  # beyond the sampling cap: fail rather than pass unexamined
                bad[i] = True
            if "autograd" in run.refs and j.outside:
                by_autograd = self._autograd_decides(run, n, m, undecided, bad)
        elif undecided:  # not sampled (yet): failing unless the re-check at x' passes and sampling accepts them
            j.outside = len(undecided)
            j.bad = j.bad | j.undecided
        ref = fr.ref
        cmp = _cmp(m, ref, j.err, j.allowed, j.bad)
        worst_err = float(j.err.reshape(-1)[_flat(cmp.worst_index, ref.shape)]) if cmp.worst_index else None
        k, nt = int(fr.kink.sum()), int((fr.tie & ~fr.kink).sum())
        res = _result(n, run.dev, run.subject[n].dtype, m.shape, cmp, atol, rtol, reference="finite-difference",
                      fd_mode="full", fd_evaluations=fr.evaluations, kinks=k)
        res.ties, res.jumps = int(fr.tie.sum()), int(fr.jump.sum())
        res.kinks_inside, res.kinks_hull = j.inside, j.hull + by_autograd
        res.kinks_outside = j.outside - by_autograd + capped + skipped
        res.point, res.worst_err = pt.label, worst_err
        res.deferred = bool(undecided) and not decide_multiway and not skipped_smooth
        notes = []
        if k or nt:
            notes.append(f"at {pt.label}: {k} kink element(s)" + (f" ({res.jumps} at a jump)" if res.jumps else "")
                         + (f", {nt} other tied element(s)" if nt else "")
                         + f": {j.inside} inside their one-sided interval, {j.hull} outside it but inside the hull "
                           f"of nearby pieces' gradients (several kinks meet), {j.outside + capped + skipped} outside both"
                         + (f" ({capped} not sampled, counted as failing)" if capped else "")
                         + (f"; {by_autograd} beyond every sampled piece equal autograd's value there (torch's tie "
                            f"convention; reference='both'), so accepted" if by_autograd else "")
                         + (f"; {skipped} outside their interval were not sampled further (the input already "
                            f"fails elsewhere)" if skipped else ""))
        if fr.one_sided:
            notes.append(f"{fr.one_sided} element(s) at the edge of the loss's domain took one-sided differences")
        if own_note:
            notes.append(own_note)
        res.note = "; ".join(notes) or None
        if not cmp.ok and run.diagnose:
            res.hint = run._hint(n, m, ref, cmp, pt.tensors)
        return res, bool(k or fr.tie.any())

    @staticmethod
    def _autograd_decides(run, n, m, idx, bad) -> int:
        """With reference="both": a multi-way kink element beyond every sampled piece passes if it equals
        autograd's value (torch's tie convention: often the extreme piece, all tied terms off, that random
        nearby points almost never reach).  Returns how many were accepted so."""
        if getattr(run, "_fd_autograd", None) is None:
            from gradcheck_kit._session import _autograd
            run._fd_autograd = _autograd(run.run_fn, run.loss, run.work, run.wrt_names, {},
                                         allow_unused=True)[0]
        a = run._fd_autograd[n].detach().to("cpu", torch.float64).reshape(-1)
        mm = m.detach().to("cpu", torch.float64).reshape(-1)
        atol, rtol = run.tol(run.subject[n].dtype, max(float(a.abs().max()) if a.numel() else 0.0, 1e-30),
                             "autograd")
        k = 0
        for i in idx:
            if bool(bad[i]) and abs(float(mm[i]) - float(a[i])) <= atol + rtol * abs(float(a[i])):
                bad[i] = False
                k += 1
        return k

    def _fast_result(self, run, m_t, n, pt, top, gen, per_eval, first_point):
        m = m_t.detach().to("cpu", torch.float64)
        h = run.fd_eps
        scale = max(float(m.abs().max()) if m.numel() else 0.0, 1e-2 * top, 1e-30)
        atol, rtol = run.tol(run.subject[n].dtype, scale, "fd", noise_floor=False)
        tol_i = m.abs() * rtol + atol
        noise = pt.ev.noise(pt.f0) / h
        bound = _fd.Z * float(tol_i.pow(2).mean().sqrt()) + 4 * noise
        budget = self._fast_budget(run, per_eval)
        pl = _fd.plan(m.numel(), bound, _fd.TARGET * scale, budget, min_projections=run.fd_projections)
        start = pt.ev.count
        projs = _fd.projections(pt.ev, n, pt.f0, h, m, tol_i, pl, gen)
        for p in projs:
            if not math.isfinite(p.central):
                raise NonFiniteReferenceError(f"the finite-difference reference for {n!r} is {p.central} along a "
                                              f"random direction (the loss overflows near this point).")
        # At x, a projection across several exact kinks can leave its one-sided slopes while correct (the
        # tie convention picks a subset of the tied terms): undecided, the re-check at x' decides.
        undecided = [p for p in projs if p.kink and p.err > p.tol] if first_point else []
        fails = [p for p in projs if p.err > p.tol and not (first_point and p.kink)]
        worst = max(projs, key=lambda p: p.err / max(p.tol, 1e-300) * (0 if (first_point and p.kink) else 1))
        kinks = sum(p.kink for p in projs)
        res = Result(name=n, device=str(run.dev), dtype=str(run.subject[n].dtype).replace("torch.", ""), shape=tuple(m.shape),
                     ok=not fails, max_abs_err=worst.err,
                     max_rel_err=(worst.err / abs(worst.central)) if worst.central else
                     (0.0 if worst.err == 0 else math.inf),
                     worst_index=None, manual_value=worst.manual, reference_value=worst.central,
                     mismatched=len(fails), numel=m.numel(), atol=atol, rtol=rtol, reference="finite-difference",
                     fd_mode="fast", projections=len(projs), kinks=kinks)
        res.sensitivity, res.block, res.point = pl.sensitivity, pl.block, pt.label
        res.kinks_inside = kinks - len(undecided) - sum(p.kink and p.err > p.tol for p in projs if not first_point)
        res.kinks_hull, res.kinks_outside = 0, kinks - res.kinks_inside - len(undecided)
        res.worst_err = worst.err
        res.note = (f"at {pt.label}: fast mode, {pl.k} projection(s) u . grad on each of {-(-m.numel() // pl.block)} "
                    f"block(s) of {pl.block} elements, each within {_fd.Z:g} sigma of its elementwise tolerance; a "
                    f"single-element error above {_fmt(pl.sensitivity)} is caught with probability >= "
                    f"{1 - _fd.ALPHA:.0%}" + ("" if pl.reached else f" (the target {_fmt(pl.target)}, 1% of the largest "
                                                                     f"magnitude, needs more than the budget of "
                                                                     f"{budget} evaluations)")
                    + (f"; {kinks} projection(s) crossed a kink within the step and were judged by the hull of "
                       f"their one-sided slopes at steps h and h/4" if kinks else "")
                    + (f"; {len(undecided)} of them lie outside those slopes (several exact kinks at once): "
                       f"decided by the re-check at x'" if undecided else ""))
        if fails and m.numel() > 1:
            wb = max(fails, key=lambda p: p.err / max(p.tol, 1e-300)).block
            flat, mv, central, width = _fd.localise(pt.ev, n, pt.f0, h, m, tol_i, gen, *wb)
            res.worst_index = _fd.unravel(flat, m.shape)
            res.manual_value, res.reference_value = mv, central
            res.worst_err = abs(mv - central) if math.isfinite(central) else math.inf
            res.note += (f"; {len(fails)} of {len(projs)} projections disagree; bisection within block "
                         f"[{wb[0]}, {wb[1]}) located the worst element (one-sided spread there {_fmt(width)})")
            if run.diagnose:
                res.hint = ("located by bisection in fast finite-difference mode; re-run with reference='autograd' "
                            "(or a smaller input with fd_mode='full') for a diagnosis")
        res.fd_evaluations = pt.ev.count - start
        return res, bool(kinks) or bool(_fd.ties(m_t).any())

    # -- the nearby point -------------------------------------------------------------------------------
    def _recheck(self, run, subject, first, modes, per_eval, x) -> list:
        """Everything again at a seeded nearby point x'; each input's result is ok only if both points are.

        Kink/tie elements left undecided at x (outside their interval) are sampled only if x' passes: a
        wrong formula fails at x' at the cost of one more set of differences, without sampling.
        """
        def sampled(r):  # decide the undecided elements at x by the gradients of nearby pieces
            if not getattr(r, "deferred", False):
                return r
            n = r.name
            r2 = self._full_result(run, subject.grads[n], x.fulls[n], n, x, x.top, True)[0]
            r2.fd_evaluations = x.ev.count  # every evaluation at x so far, sampling included
            return r2

        g = torch.Generator().manual_seed(run.seed * 7919 + 7)
        near_work = _fd.perturb(run.work, _floating(run.work), g)
        try:
            grads = run.subject_grads_at(near_work)
        except GradcheckKitError:
            raise
        except Exception as e:  # noqa: BLE001 - the subject itself fails near x: that is a failure
            out = []
            for r, flag in first:
                if flag:
                    r.ok, r.rechecked, r.recheck_ok = False, True, False
                    r.note = ((r.note + "; ") if r.note else "") + (
                        f"the {subject.kind} gradient could not be computed at a seeded nearby point x' "
                        f"({type(e).__name__}: {e}), so the values at the kinks cannot be confirmed")
                out.append(r)
            return out
        try:
            pt = _Point(run, _contig64(near_work), "x'")
            if not math.isfinite(pt.f0):
                raise ValueError(f"the loss is {pt.f0} there")
        except Exception as e:  # noqa: BLE001 - a domain edge: say so, decide at x alone
            out = []
            for r, flag in first:
                r = sampled(r)
                if flag:
                    r.note = ((r.note + "; ") if r.note else "") + (
                        f"the re-check at a nearby point off the kinks could not run ({type(e).__name__}: {e}), so "
                        f"values inside a kink interval are unconfirmed")
                out.append(r)
            return out
        second = self._at_point(run, grads, pt, modes, torch.Generator().manual_seed(run.seed + 13), per_eval,
                                decide_multiway=False)
        out = []
        for (r1, _), (r2, _) in zip(first, second):
            if r2.ok:
                r1 = sampled(r1)
            r1.rechecked = True
            r1.recheck_ok = r2.ok
            both = f"x: {'ok' if r1.ok else 'MISMATCH'}; x' (seeded nearby point off the kinks): " \
                   f"{'ok' if r2.ok else 'MISMATCH'}"
            if not r2.ok and (r1.ok or getattr(r1, "deferred", False)):
                # the failure at x' is the evidence (at x only kink values were in doubt): report its worst element
                r2.rechecked, r2.recheck_ok = True, False
                r2.note = both + ((" | " + r2.note) if r2.note else "") + ((" | " + r1.note) if r1.note else "")
                r2.kinks, r2.kinks_inside, r2.kinks_hull, r2.kinks_outside = (r1.kinks, r1.kinks_inside,
                                                                             r1.kinks_hull, r1.kinks_outside)
                r2.ties, r2.jumps = r1.ties, r1.jumps
                r2.fd_evaluations = (r1.fd_evaluations or 0) + (r2.fd_evaluations or 0)
                out.append(r2)
                continue
            r1.note = both + ((" | " + r1.note) if r1.note else "")
            r1.fd_evaluations = (r1.fd_evaluations or 0) + (r2.fd_evaluations or 0)
            out.append(r1)
        return out

    # -- budgets ------------------------------------------------------------------------------------
    @staticmethod
    def _fast_budget(run, per_eval: int) -> int:
        """Evaluations fast mode may spend per input: fd_limit, and fd_work / (elements per evaluation)."""
        b = run.fd_limit if run.fd_limit is not None else 10 ** 9
        if run.fd_work is not None:
            b = min(b, int(run.fd_work // max(per_eval, 1)))
        return max(b, 4 * run.fd_projections)

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

    # -- second derivatives -----------------------------------------------------------------------------
    def _hvp_fd(self, run, subject, tensors):
        """Order 2 at x; where x has exact ties or zeros and only such elements fail, again at a nearby point x'.

        A double backward may follow a convention at such a point that is not the derivative of the gradient
        around it (torch's pow masks ``exponent == 0`` in its gradient, whose derivative in the exponent is
        then 0, not 1/x).  Those elements pass only if every element passes at x', a seeded point off the ties
        (the same kind of point as the first-order re-check); the note says so.
        """
        out, masks = self._hvp_at(run, subject.hvp, subject, tensors)
        bad = [r for r in out if not r.ok]
        special = {n: _fd.ties(tensors[n]) | (tensors[n] == 0) for n in run.wrt_names}
        if not bad or any(masks[r.name] is None or bool((masks[r.name] & ~special[r.name]).any()) for r in bad):
            return out
        g = torch.Generator().manual_seed(run.seed * 7919 + 7)
        near = _fd.perturb(run.work, _floating(run.work), g)
        try:
            hvp = run.subject_hvp_at(near)
            again, _ = self._hvp_at(run, hvp, subject, _contig64(near))
        except GradcheckKitError:
            raise
        except Exception as e:  # noqa: BLE001 - cannot confirm: the failures at x stand
            for r in bad:
                r.note += f"; the re-check at a nearby point x' could not run ({type(e).__name__}: {e})"
            return out
        ok2 = all(r.ok for r in again)
        for r, r2 in zip(out, again):
            r.rechecked, r.recheck_ok = True, r2.ok
            if not r.ok:
                r.note += (f"; at x, {r.mismatched} element(s) at exact ties or zeros of {r.name!r} differ (a "
                           f"convention of the double backward there); at x' (seeded nearby point off the ties) "
                           f"every input {'agrees' if ok2 else 'does NOT agree'}")
                if ok2:
                    r.ok, r.hint = True, None
        return out

    @staticmethod
    def _hvp_at(run, hvp, subject, tensors):
        """([Result], {name: bool mask of failing elements or None}): the subject's HVP d/dx <grad, v> against
        central differences of the subject's own gradient along v.

        For a gradient g = grad f, d/dt g(x + t v) = H v = d/dx <g, v> (H symmetric); the reference is the
        Richardson combination of the central differences at steps h and h/2.  Where g itself jumps along
        v (a kink of f: relu at 0) the two differ by a factor 2 and there is no second derivative: such
        elements are not compared (counted in ``kinks``).  A manual gradient with no graph
        (detached, or built from non-differentiable ops) has no HVP: it fails where the differences of
        its gradient are not 0, and passes with a note where they are (relu: H v = 0 off the kinks).
        """
        wrt = run.wrt_names
        vs = run.vectors(wrt, run.subject)

        def at(sign, h):
            pt = {**tensors, **{n: tensors[n] + sign * h * vs[n] for n in wrt}} if sign else tensors
            return {n: g.double().cpu() for n, g in run.subject_grads_at(pt, float64=True).items()}

        def differences(h, eps, g0, gp):
            """(reference, kink mask, g at x - h v) per input from central differences at steps h and h/2."""
            gm, gp2, gm2 = at(-1.0, h), at(0.5, h), at(-0.5, h)
            ref, kink = {}, {}
            for n in wrt:
                c1 = (gp[n] - gm[n]) / (2 * h)           # O(h^2)
                c2 = (gp2[n] - gm2[n]) / h               # step h/2: O(h^2 / 4)
                ref[n] = (4 * c2 - c1) / 3               # Richardson: O(h^4)
                top_g = float(g0[n].abs().max()) if g0[n].numel() else 0.0
                noise = 1e3 * eps * max(top_g, 1e-30) / h
                # a jump J of the gradient within the step gives c1 = J / 2h but c2 = J / h: they differ by a
                # factor 2; smooth gradients give c1 = c2 up to O(h^2)
                dp, dm = (gp[n] - g0[n]) / h, (g0[n] - gm[n]) / h
                jump = (c1 - c2).abs() > 0.2 * torch.maximum(c1.abs(), c2.abs()) + noise
                scale0 = float(ref[n][~jump].abs().max()) if bool((~jump).any()) else 0.0
                a2, r2 = run.tol(run.subject[n].dtype, max(scale0, 1e-30), "fd", order=2, noise_floor=False)
                # or a kink of the gradient at x (relu units exactly at 0): its one-sided slopes disagree by more
                # than the comparison could tolerate, so no single second derivative exists there
                kink[n] = jump
                if eps == _fd.EPS64:  # with a large step (low-precision manual) d+ - d- = h g'' is no kink test
                    kink[n] = jump | ((dp - dm).abs() > a2 + r2 * torch.maximum(dp.abs(), dm.abs()) + noise)
            return ref, kink, gm

        h, eps, retried = run.fd_eps, _fd.EPS64, False
        g0 = at(0.0, h)
        gp = at(1.0, h) if run.last_grads_float64 else None
        # float64 in name only: at a generic float64 point, every value exactly a float32 (computed in float32
        # inside manual, then cast) -- unless the gradient does not move at all
        if gp is not None and any(torch.equal(gp[n], gp[n].float().double()) and not torch.equal(gp[n], g0[n])
                                  for n in wrt):
            gp = None
        if gp is not None:
            ref, kink, gm = differences(h, eps, g0, gp)
            # float32 arithmetic inside a float64 result (a 0-d float64 operand does not promote a float32
            # tensor): the gradient moves by rounding steps, and most elements look like jumps at step h.
            # Real kinks crossed within a step of 1e-6 are rare: take it as low precision
            # and the flagged elements moved by no more than float32 rounding of the gradient (a real kink jumps
            # by a unit's contribution; strong curvature, as rms_norm's near 0, moves by h H v)
            total = sum(k.numel() for k in kink.values())
            flagged = sum(int(k.sum()) for k in kink.values())
            tiny = all(bool(((gp[n] - g0[n]).abs()[kink[n]] <= 64 * _EPS32 * _absmax(g0[n])).all()
                            and ((g0[n] - gm[n]).abs()[kink[n]] <= 64 * _EPS32 * _absmax(g0[n])).all())
                       for n in wrt)
            retried = flagged >= 2 and flagged > total / 4 and tiny
            if retried:
                gp = None
        if gp is None:  # manual runs only in low precision: a step its rounding can resolve
            eps = max(float(torch.finfo(run.subject[wrt[0]].dtype).eps), float(torch.finfo(torch.float32).eps))
            h = 3e-3
            g0, gp = at(0.0, h), at(1.0, h)
            ref, kink, _ = differences(h, eps, g0, gp)
        mags = {n: float(ref[n][~kink[n]].abs().max()) if bool((~kink[n]).any()) else 0.0 for n in wrt}
        top = max(mags.values(), default=0.0)
        out, masks = [], {}
        for n in wrt:
            r = torch.where(kink[n], torch.zeros_like(ref[n]), ref[n])
            _check_finite(r, n, "reference (finite differences of the subject's gradient)")
            scale = max(mags[n], 1e-2 * top, 1e-30)
            atol, rtol = run.tol(run.subject[n].dtype, scale, "fd", order=2, noise_floor=False)
            floor = (100 if eps == _fd.EPS64 else 1000) * eps  # a gradient only computable in low precision
            atol = max(atol, floor * float(g0[n].abs().max()) / h if g0[n].numel() else 0.0)
            # the subject's own HVP carries its dtype's rounding of gradient-sized terms
            sub_eps = float(torch.finfo(run.subject[n].dtype).eps)
            atol = max(atol, 10 * sub_eps * float(g0[n].abs().max()) if g0[n].numel() else 0.0)
            s = hvp[n].detach().to("cpu", torch.float64) if hvp is not None else torch.zeros_like(r)
            s = torch.where(kink[n], torch.zeros_like(s), s)
            cmp = _compare(s, r, atol, rtol)
            own = run.own_error(order=2) if not cmp.ok and hvp is not None else None
            own_note = None
            if own is not None and _compare(s, r, atol + OWN_K * own[n], rtol).ok:
                own_note = (f"in {str(run.subject[n].dtype).replace('torch.', '')}, off by up to {_fmt(cmp.max_abs_err)}"
                            f" (atol {_fmt(atol)}), but torch's own HVP in that dtype is {_fmt(own[n])} from float64 "
                            f"autograd's; allowed atol + {_OWN}that")
                atol += OWN_K * own[n]
                cmp = _compare(s, r, atol, rtol)
            res = _result(n, run.dev, run.subject[n].dtype, ref[n].shape, cmp, atol, rtol,
                          reference="finite-difference", subject=subject.kind, order=2, fd_mode="full")
            res.kinks, masks[n] = int(kink[n].sum()), cmp.bad
            note = ("order 2: d/d(input) <gradient, v> (double backward) vs central differences of the subject's own "
                    "gradient along a seeded random v")
            if res.kinks:
                note += f"; {res.kinks} element(s) where the gradient itself jumps along v were not compared"
            if hvp is None:
                if cmp.ok:
                    note += ("; the gradient has no autograd graph, and its differences along v are 0 too, so that "
                             "is consistent")
                else:
                    res.hint = ("manual's gradients are detached from the autograd graph (no grad_fn), so they cannot "
                                "be differentiated again: avoid .detach(), .data, .item(), numpy and no_grad inside "
                                "manual")
            elif not cmp.ok and run.diagnose:
                res.hint = (f"d/dx <grad, v> of {subject.kind}'s gradient (its double backward) differs from the "
                            f"change of that same gradient along v: the gradient is not differentiated "
                            f"consistently" + (f"; the gradient of {', '.join(map(repr, subject.detached))} is "
                                               f"detached" if subject.detached else ""))
            res.note = note + (f"; {own_note}" if own_note else "")
            res.fd_evaluations = 5
            if h != run.fd_eps:
                res.note += (f"; manual ran only in {str(run.subject[n].dtype).replace('torch.', '')}, so the step "
                             f"was {h:g} and the tolerance holds its rounding ({_fmt(atol)})" if not retried else
                             f"; at step {run.fd_eps:g} most of the gradient moved by rounding steps (float32 "
                             f"arithmetic inside manual), so the step was {h:g} and the tolerance holds that "
                             f"rounding ({_fmt(atol)})")
            out.append(res)
        return out, masks


def _flat(index, shape) -> int:
    f = 0
    for i, s in zip(index, shape):
        f = f * s + i
    return f


def _cmp(m, ref, err, allowed, bad) -> _Cmp:
    """A comparison record from a judged error: worst = largest err / allowed; max abs err and its index."""
    m = m.detach().to("cpu", torch.float64)
    n = ref.numel()
    if n == 0:
        return _Cmp(True, 0.0, 0.0, None, None, None, 0, 0, None, None)
    fe = err.reshape(-1)
    ia = int(fe.argmax())
    ra = ref.abs().reshape(-1)
    rel = torch.where(fe == 0, torch.zeros_like(fe), fe / ra)
    ir = int(rel.nan_to_num(nan=math.inf).argmax())
    viol = (fe / allowed.reshape(-1).clamp_min(1e-300))
    iw = int(viol.nan_to_num(nan=math.inf).argmax())
    mismatched = int(bad.sum())
    return _Cmp(mismatched == 0, float(fe[ia]), float(rel[ir]), _fd.unravel(iw, ref.shape),
                float(m.reshape(-1)[iw]), float(ref.reshape(-1)[iw]), mismatched, n, _fd.unravel(ia, ref.shape),
                _fd.unravel(ir, ref.shape), bad if mismatched else None, float(viol[iw]))
