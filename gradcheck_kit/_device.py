"""One device's run of ``check()``: the subject gradients, then each reference, into the report.

``DeviceRun`` holds what every reference needs (the private copies of the inputs, the seeded
runner, the tolerances, the diagnosis) and nothing reference-specific: the references live in
``gradcheck_kit/references/`` and call back into ``results``/``tol``/``subject_at``/``hvp_of``.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from typing import Mapping

import torch

from gradcheck_kit._check_errors import InPlaceModificationError, InvalidInputError
from gradcheck_kit._diff import _absmax, _compare, _result, _scales, tolerances
from gradcheck_kit._inputs import _is_float
from gradcheck_kit._check_errors import NonFiniteLossError
from gradcheck_kit._session import _autograd, _check_manual, _copy, _first_nonfinite, _leaves, _no_tf32, _Runner
from gradcheck_kit.errors import GradcheckKitError
from gradcheck_kit.references import REFERENCES
from gradcheck_kit.report import _fmt

__all__ = ["DeviceRun", "Subject"]


@dataclass
class Subject:
    """The gradients under test: ``manual``'s, or autograd's own when no ``manual`` is given."""

    grads: dict                                   # name -> gradient (detached)
    kind: str                                     # "manual" | "autograd"
    nondet: dict = field(default_factory=dict)    # name -> max |run1 - run2| of repeated backwards
    hvp: dict | None = None                       # name -> d/dx <grads, v> (double_backward), None if detached
    detached: list = field(default_factory=list)  # names whose manual gradient left the graph


class DeviceRun:
    """One device's run of ``check``: the private copies, the subject, then each reference in turn."""

    def __init__(self, report, dev, *, loss, inputs, manual, wrt, refs, dtype, atol, rtol, double_backward,
                 seed, fd_mode, fd_limit, fd_eps, fd_projections, fd_work, repeat, diagnose, allow_unused,
                 modes=(), compile_options=None, baseline=None):
        self.report, self.loss, self.inputs, self.manual = report, loss, inputs, manual
        self.wrt, self.refs, self.dtype, self.user_atol, self.user_rtol = wrt, refs, dtype, atol, rtol
        self.double_backward, self.seed = double_backward, seed
        self.fd_mode, self.fd_limit, self.fd_eps, self.fd_projections = fd_mode, fd_limit, fd_eps, fd_projections
        self.fd_work = fd_work
        self.diagnose, self.allow_unused = diagnose, allow_unused
        self.modes, self.compile_options = modes, compile_options  # modes/; references/compiled.py
        self.baseline = baseline  # check(baseline=k): references/autograd.py
        self.run_fn = _Runner(seed)
        self.fd_noise = 0.0  # set by the finite-difference reference: rounding floor of its tolerance
        self.work = {n: _copy(t, dev, dtype) for n, t in inputs.items()}
        first = next((t for t in self.work.values() if isinstance(t, torch.Tensor)), None)
        self.dev = dev if dev is not None else (first.device if first is not None else torch.device("cpu"))
        self.is_cuda = self.dev.type == "cuda"
        self.repeat = repeat if repeat is not None else (2 if self.is_cuda else 1)
        self.info: dict = {}
        self._ref64 = None
        self._own_error: dict = {}   # order -> {name: torch's own error below float64} (own_error)
        self.autograd64: dict | None = None   # float64 autograd gradients, set with own_error(1)

    # inputs for references computed in float64 on the CPU (CUDA runs, half precision, finite differences)
    def ref64(self) -> dict:
        if self._ref64 is None:
            self._ref64 = {n: (t.detach().to("cpu", torch.float64 if t.is_floating_point() else t.dtype)
                               if isinstance(t, torch.Tensor) else t) for n, t in self.work.items()}
            self._ref64 = {n: (t.clone() if isinstance(t, torch.Tensor) and t.device == self.dev
                               and t.dtype == self.work[n].dtype else t) for n, t in self._ref64.items()}
        return self._ref64


    def run(self):
        rep = self.report
        subject = self._subject()
        results = []
        for key in self.refs:
            results += REFERENCES[key].compare(self, subject)
        self._check_loss_finite()
        results += self._omitted(subject)
        self._note_nonfinite(subject, results)
        for mode in self.modes:  # forward AD, orders above 2, batched, complex labels (gradcheck_kit/modes/)
            results += mode.run(self, subject, results)
        rep.results += results
        rep.summed = rep.summed or bool(self.info.get("summed"))
        if "shape" in self.info:
            rep.loss_shape = self.info["shape"]
        nondet = subject.nondet
        if any(v for v in nondet.values()):
            rep.notes.append(f"{self.dev}: the backward is nondeterministic (two runs differ by up to "
                             f"{_fmt(max(nondet.values()))}); reported as 'nondeterminism', separate from the error")
        # Finally: nothing the user passed was changed.
        self._check_untouched()

    def _check_loss_finite(self):
        """A NaN or inf anywhere in the loss's output is one clear error naming its first index."""
        out = self.info.get("value")
        if out is None:  # no reference ran the loss on these inputs
            with torch.no_grad():
                out = self.run_fn(self.loss, self.work, "loss")
        if isinstance(out, torch.Tensor) and out.is_floating_point():
            hit = _first_nonfinite(out.detach())
            if hit is not None:
                where = f" at output index {hit[0]}" if out.dim() else ""
                raise NonFiniteLossError(f"the loss is {hit[1]}{where} at the given inputs ({self.dev}, "
                                         f"{out.dtype}), so no gradient of it means anything; fix the inputs or the "
                                         f"loss (a log or division at 0, an overflow) before checking gradients.")

    def _omitted(self, subject) -> list:
        """A failing result for each floating input the loss depends on that ``manual`` returned nothing for."""
        if self.manual is None or self.wrt is not None:
            return []
        rest = [n for n, t in self.work.items() if _is_float(t) and n not in self.wrt_names]
        if not rest:
            return []
        leaves = _leaves(self.work, rest)
        with torch.enable_grad():
            y = self.run_fn(self.loss, leaves, "loss")
            if not (isinstance(y, torch.Tensor) and y.requires_grad):
                return []
            gs = torch.autograd.grad(y.sum(), [leaves[n] for n in rest], allow_unused=True)
        grads = dict(zip(rest, gs))
        used = [n for n in rest if grads[n] is not None]
        out = []
        for n in used:
            r = grads[n].detach()
            # a missing gradient is compared as 0 against autograd's
            res = self.results(Subject({n: torch.zeros_like(r)}, subject.kind), {n: r}, "autograd", "autograd",
                               self.work, names=(n,))[0]
            res.ok = False
            res.mismatched = max(res.mismatched, 1)
            res.hint = None
            res.note = (f"manual returned no gradient for {n!r}, a floating-point input the loss depends on (autograd "
                        f"finds a path from it): return its gradient too, or pass wrt=... without it")
            out.append(res)
        return out

    def _note_nonfinite(self, subject, results):
        for n, g in subject.grads.items():
            hit = _first_nonfinite(g.detach()) if g.is_floating_point() else None
            if hit is None:
                continue
            for r in results:
                if r.name == n and r.order == 1:
                    r.ok = False
                    r.note = ((r.note + "; ") if r.note else "") + (
                        f"{subject.kind}'s gradient of {n!r} is {hit[1]} at index {hit[0]} (its first non-finite element)")

    # -- the subject: manual's gradients, or autograd's own when there is no manual --------------------
    def _subject(self) -> Subject:
        work = self.work
        floating = tuple(n for n, t in work.items() if _is_float(t))
        hv_subject = None
        nondet: dict = {}
        if self.manual is not None:
            call_in = _leaves(work, self.wrt or floating) if self.double_backward else work
            with (torch.enable_grad() if self.double_backward else contextlib.nullcontext()):
                res = self.run_fn(self.manual, call_in, "manual")
            wrt = _check_manual(res, self.inputs, work, self.wrt)
            subject = {n: res[n] for n in wrt}
            detached = []
            if self.double_backward:
                hv_subject = self.hvp_of(subject, call_in, wrt)
                detached = [n for n in wrt if not subject[n].requires_grad]
            for _ in range(self.repeat - 1):
                again = self.run_fn(self.manual, work, "manual")
                for n in wrt:
                    g2 = again.get(n) if isinstance(again, Mapping) else None
                    d = _absmax(g2.detach() - subject[n].detach()) if isinstance(g2, torch.Tensor) else math.nan
                    nondet[n] = max(nondet.get(n, 0.0), d)
            subject = {n: g.detach() for n, g in subject.items()}
            kind = "manual"
        else:
            detached = []
            wrt = self.wrt or floating
            if not wrt:
                raise InvalidInputError("inputs hold no floating-point tensor to differentiate.")
            grads, leaves = _autograd(self.run_fn, self.loss, work, wrt, self.info,
                                      create_graph=self.double_backward, allow_unused=self.allow_unused)
            if self.double_backward:
                hv_subject = self.hvp_of(grads, leaves, wrt)
            for _ in range(self.repeat - 1):
                again, _l = _autograd(self.run_fn, self.loss, work, wrt, {}, allow_unused=self.allow_unused)
                for n in wrt:
                    nondet[n] = max(nondet.get(n, 0.0), _absmax(again[n] - grads[n].detach()))
            subject = {n: g.detach() for n, g in grads.items()}
            kind = "autograd"
        self.wrt_names = wrt
        self.subject = subject
        return Subject(grads=subject, kind=kind, nondet=nondet, hvp=hv_subject, detached=detached)

    # -- services the references use ------------------------------------------------------------------
    def results(self, subject, refs, kind, label, ref_tensors, *, lohi=None, extra=None, names=None) -> list:
        """One ``Result`` per input in ``names`` (default: every checked input): subject vs ``refs``."""
        out = []
        scales = _scales(refs)
        for n in (self.wrt_names if names is None else names):
            m, r = subject.grads[n], refs[n]
            atol, rtol = self.tol(m.dtype, scales[n], kind)
            lo, hi, kink = (lohi[n] if lohi and n in lohi else (None, None, None))
            cmp = _compare(m, r, atol, rtol, lo, hi, kink)
            kw = dict(extra[n]) if extra and n in extra else {}
            res = _result(n, self.dev, m.dtype, m.shape, cmp, atol, rtol, reference=label, subject=subject.kind,
                          nondeterminism=subject.nondet.get(n), **kw)
            if not cmp.ok and self.diagnose:
                res.hint = self._hint(n, m, r, cmp, ref_tensors)
            if not cmp.ok:  # kept for report.plot / to_html: where the error sits
                res.tensors = tuple(t.detach().to("cpu", torch.float64) for t in (m, r))
            out.append(res)
        return out

    def tol(self, dtype, scale, kind, order=1, noise_floor=True):
        atol, rtol = tolerances(dtype, scale, reference=kind, order=order)
        if kind == "fd" and noise_floor:  # a central difference cannot resolve less than its rounding noise ~ eps |f| / h
            atol = max(atol, self.fd_noise)
        if self.user_atol is not None:
            atol = float(self.user_atol)
        if self.user_rtol is not None:
            rtol = float(self.user_rtol)
        return atol, rtol

    def _hint(self, name, m, r, cmp, ref_tensors):
        from gradcheck_kit import _hints

        try:
            key = id(ref_tensors)
            if getattr(self, "_ctx_key", None) != key:  # one context (and its counterfactual runs) per reference
                self._ctx_key = key
                self._ctx = _hints.Context(self.loss, ref_tensors, self.wrt_names, self.run_fn, self.info)
            return _hints.diagnose(name, m, r, cmp.bad, self._ctx)
        except GradcheckKitError:
            raise
        except Exception as e:  # a diagnosis must never hide the result
            return f"(no diagnosis: {type(e).__name__}: {e})"

    def subject_at(self, name, tensors, delta):
        """The subject's gradient of ``name`` (float64, CPU) with ``tensors[name] + delta``; None if it fails."""
        shifted = dict(tensors)
        shifted[name] = tensors[name] + delta
        try:
            if self.manual is not None:
                g = self.run_fn(self.manual, shifted, "manual").get(name)
            else:
                g = _autograd(self.run_fn, self.loss, shifted, self.wrt_names, {}, allow_unused=True)[0][name]
        except GradcheckKitError:
            raise
        except Exception:  # noqa: BLE001 - e.g. a manual that only runs in its own dtype
            return None
        return None if g is None else g.detach().to("cpu", torch.float64)

    def subject_grads_at(self, point: dict, float64: bool = False) -> dict:
        """The subject's gradients (CPU float64) of every checked input at ``point`` (a dict like the inputs).

        ``float64``: call it on float64 CPU copies (for differences of the gradient itself), falling back to
        the subject's own dtype and device if ``manual`` cannot run there.
        """
        def call(pt):
            if self.manual is not None:
                res = self.run_fn(self.manual, pt, "manual")
                return {n: res[n] for n in self.wrt_names}
            return _autograd(self.run_fn, self.loss, pt, self.wrt_names, {}, allow_unused=True)[0]

        def cast(pt, dev, to64):
            return {n: (t.detach().to(dev, torch.float64 if to64 else self.work[n].dtype)
                        if isinstance(t, torch.Tensor) and t.is_floating_point() else
                        (t.to(dev) if isinstance(t, torch.Tensor) else t)) for n, t in pt.items()}

        g = None
        if float64:
            try:
                g = call(cast(point, "cpu", True))
                if any(v.dtype != torch.float64 for v in g.values()):
                    g = None
            except GradcheckKitError:
                raise
            except Exception:  # noqa: BLE001 - a manual that only runs in its own dtype
                g = None
        self.last_grads_float64 = g is not None
        if g is None:
            g = call(cast(point, self.dev, False))
        return {n: v.detach().to("cpu", torch.float64) for n, v in g.items()}

    def own_error(self, order: int = 1) -> dict | None:
        """Autograd's own error in the subject's dtype: name -> max |a - a64| (order 2: of its HVPs along v).

        a: torch's gradient of the same loss on the subject's own copies (its dtype and device); a64: on float64
        CPU copies.  It measures what the dtype alone costs torch (rounding, cancellation, and a loss that
        depends on its dtype, such as ``eps=None`` meaning ``finfo(dtype).eps``), never whether torch's backward
        is right: a wrong backward is wrong in both.  None where it does not apply: a float64 subject, the
        subject being autograd itself (it cannot be its own yardstick), or a loss torch cannot differentiate.
        Cached per order.
        """
        if self.manual is None or all(g.dtype == torch.float64 for g in self.subject.values()):
            return None
        cache = self._own_error
        if order not in cache:
            try:
                with _no_tf32():
                    pair = [_autograd(self.run_fn, self.loss, t, self.wrt_names, {}, create_graph=order == 2,
                                      allow_unused=True) for t in (self.work, self.ref64())]
                if order == 2:
                    pair = [(self.hvp_of(g, leaves, self.wrt_names), None) for g, leaves in pair]
                    if any(p is None for p, _ in pair):
                        pair = [({n: torch.zeros_like(g) for n, g in self.subject.items()}, None)] * 2
                (a, _), (a64, _) = pair
                a64 = {n: a64[n].detach().to("cpu", torch.float64) for n in self.wrt_names}
                cache[order] = {n: _absmax(a[n].detach().to("cpu", torch.float64) - a64[n]) for n in self.wrt_names}
                if order == 1:
                    self.autograd64 = a64  # the float64 yardstick, for a re-check against it
            except Exception:  # noqa: BLE001 - no (double) backward, a loss that only runs in its dtype: the
                cache[order] = None  # re-check is then not available and the first verdict stands
        return cache[order]

    def subject_hvp_at(self, point: dict) -> dict | None:
        """The subject's HVPs d/dx <grads, v> (the same v as at x) at ``point``, on the subject's dtype and device."""
        wrt = self.wrt_names
        if self.manual is not None:
            leaves = _leaves(point, wrt)
            with torch.enable_grad():
                res = self.run_fn(self.manual, leaves, "manual")
            grads = {n: res[n] for n in wrt}
        else:
            grads, leaves = _autograd(self.run_fn, self.loss, point, wrt, {}, create_graph=True, allow_unused=True)
        return self.hvp_of(grads, leaves, wrt)

    def vectors(self, wrt, like: dict) -> dict:
        gen = torch.Generator().manual_seed(self.seed + 1)
        return {n: torch.randn(like[n].shape, generator=gen, dtype=torch.float64) for n in wrt}

    def hvp_of(self, grads: dict, leaves: dict, wrt) -> dict | None:
        """d/dinputs <grads, v>: the Hessian-vector products; None where grads left the graph."""
        vs = self.vectors(wrt, grads)
        live = [n for n in wrt if isinstance(grads.get(n), torch.Tensor) and grads[n].requires_grad]
        if not live:
            return None
        with torch.enable_grad():
            s = sum((grads[n] * vs[n].to(grads[n].device, grads[n].dtype)).sum() for n in live)
            hv = torch.autograd.grad(s, [leaves[n] for n in wrt], allow_unused=True)
        return {n: (h.detach() if h is not None else torch.zeros_like(leaves[n]).detach()) for n, h in zip(wrt, hv)}

    # -- the caller's tensors ----------------------------------------------------------------------------
    def _check_untouched(self):
        for n, t in self.inputs.items():
            if not isinstance(t, torch.Tensor):
                continue
            w = self.work[n]
            if w.device != t.device or w.dtype != t.dtype:
                continue  # a cast copy: version counters already guarded it
            same = torch.equal(w, t.detach())
            if not same and t.is_floating_point():
                same = bool(((w == t) | (w.isnan() & t.isnan())).all())
            if not same:
                raise InPlaceModificationError(
                    f"loss or manual changed the values of input {n!r} (through .data or another alias); they "
                    f"must leave their inputs unchanged.")
