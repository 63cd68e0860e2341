"""The autograd reference: ``torch.autograd.grad`` of the same loss.

It runs in the subject's own dtype on the CPU for float32/float64; for a CUDA subject or a
half-precision one, on float64 CPU copies (TF32 off), so the reference is never the noisier side.
With ``double_backward`` it also gives the Hessian-vector products d/dx <grad, v>.
"""

from __future__ import annotations

import math

import torch

from gradcheck_kit._diff import _LOW, _OWN, OWN_K, _compare, _result, _scales
from gradcheck_kit._session import _autograd, _check_finite, _no_tf32
from gradcheck_kit.errors import UnsupportedError

__all__ = ["AutogradReference"]


class AutogradReference:
    kind = "autograd"

    def compare(self, run, subject) -> list:
        tensors, label = self._inputs(run)
        wrt = run.wrt_names
        if subject.kind == "autograd" and tensors is run.work:
            return []  # autograd against itself on the same device and dtype says nothing
        with _no_tf32():
            ref, leaves = _autograd(run.run_fn, run.loss, tensors, wrt, run.info,
                                    create_graph=run.double_backward, allow_unused=run.allow_unused)
        for n in wrt:
            _check_finite(ref[n].detach(), n, "reference (autograd)")
        refs = {n: ref[n].detach() for n in wrt}
        if getattr(run, "baseline", None) is not None and next(iter(run.subject.values())).dtype != torch.float64:
            out = self._baseline(run, subject, refs, float(run.baseline))
        else:
            out = run.results(subject, refs, self.kind, label, tensors)
            out = [r if r.ok else self._recheck64(run, subject, r) for r in out]
            if getattr(run, "baseline", None) is not None:
                for r in out:
                    r.note = "baseline applies below float64; the default float64 tolerances were used"
        if run.double_backward:
            try:
                hv_ref = run.hvp_of(ref, leaves, wrt)
            except RuntimeError as e:  # torch has no double backward for an op of the loss
                if "not implemented" not in str(e):
                    raise
                why = str(e).strip().splitlines()[0]
                if "fd" not in run.refs:
                    raise UnsupportedError(f"autograd cannot differentiate this loss twice ({why}); check second "
                                           f"derivatives against finite differences: reference='fd' or 'both'.") \
                        from None
                run.report.notes.append(f"autograd cannot differentiate this loss twice ({why}): second "
                                        f"derivatives were checked against finite differences only")
                return out
            out += self._hvp_results(run, subject, hv_ref, label)
        return out

    @staticmethod
    def _recheck64(run, subject, res):
        """A failed comparison below float64, judged again against float64 autograd, relative to torch's own error.

        In float32 (or half) both sides round; where the gradient is a small difference of large terms (a norm's
        input gradient) torch's own float32 gradient can be farther from the float64 one than the float32
        tolerance.  The subject m then passes if |m - a64| <= atol + OWN_K max|a - a64| + rtol |a64| everywhere,
        a = torch's gradient in the subject's dtype: it is at most OWN_K times as wrong as torch is there.  The
        note gives both errors either way.
        """
        own = run.own_error()
        a64 = run.autograd64
        n = res.name
        if own is None or a64 is None or res.order != 1 or n not in own:
            return res
        m = subject.grads[n]
        atol = res.atol + OWN_K * own[n]
        cmp = _compare(m, a64[n], atol, res.rtol)
        err = float((m.detach().to("cpu", torch.float64) - a64[n]).abs().max()) if m.numel() else 0.0
        dt = str(m.dtype).replace("torch.", "")
        why = (f"{subject.kind}'s max error vs float64 autograd is {err:.3g}, autograd's own in {dt} {own[n]:.3g}; "
               f"allowed atol + {_OWN}that = {atol:.3g}")
        if not cmp.ok:
            res.note = ((res.note + "; ") if res.note else "") + why + ": still a mismatch"
            return res
        out = _result(n, run.dev, m.dtype, m.shape, cmp, atol, res.rtol, reference="autograd (cpu, float64)",
                      subject=subject.kind, nondeterminism=subject.nondet.get(n))
        out.note = (f"in {dt}, {subject.kind} differs from autograd's {dt} gradient by {res.max_abs_err:.3g} (allowed "
                    f"{res.atol:.3g} + rtol); re-checked against float64: " + why + ": ok (the " + dt +
                    " comparison could not resolve it)")
        return out

    @staticmethod
    def _baseline(run, subject, refs64, k) -> list:
        """The subject passes where max|m - r64| <= k max|a - r64| + 1e-3 max|r64|, with a = autograd in its dtype.

        r64: autograd on float64 CPU copies; a: autograd on the subject's own copies (dtype and device).
        Kernel test suites judge low precision this way (relative to the native implementation's own error).
        """
        wrt = run.wrt_names
        tensors64 = run.ref64()
        if refs64 is None or any(r.dtype != torch.float64 for r in refs64.values()):
            with _no_tf32():
                r64, _ = _autograd(run.run_fn, run.loss, tensors64, wrt, {}, allow_unused=run.allow_unused)
            refs64 = {n: r64[n].detach() for n in wrt}
        own, _ = _autograd(run.run_fn, run.loss, run.work, wrt, {}, allow_unused=run.allow_unused)
        scales = _scales(refs64)
        out = []
        for n in wrt:
            r = refs64[n].to("cpu", torch.float64)
            m = subject.grads[n].detach().to("cpu", torch.float64)
            a = own[n].detach().to("cpu", torch.float64)
            err_a = float((a - r).abs().max()) if r.numel() else 0.0
            err_m = float((m - r).abs().max()) if r.numel() else 0.0
            atol = k * err_a + 1e-3 * scales[n]
            cmp = _compare(m, r, atol, 0.0)
            res = _result(n, run.dev, subject.grads[n].dtype, r.shape, cmp, atol, 0.0,
                          reference="autograd (cpu, float64)", subject=subject.kind,
                          nondeterminism=subject.nondet.get(n))
            res.baseline, res.baseline_error = k, err_a
            res.baseline_ratio = err_m / err_a if err_a else (0.0 if err_m == 0 else math.inf)
            res.note = (f"baseline: {subject.kind}'s max error vs float64 {err_m:.3g} <= {k:g} x autograd's own error "
                        f"in {str(subject.grads[n].dtype).replace('torch.', '')} ({err_a:.3g}) + 1e-3 x {scales[n]:.3g}"
                        f" ? {'yes' if cmp.ok else 'no'}")
            if not cmp.ok and run.diagnose:
                res.hint = run._hint(n, subject.grads[n], r, cmp, tensors64)
            out.append(res)
        return out

    @staticmethod
    def _inputs(run):
        """Where the reference runs: the subject's own copies (CPU float32/64), else CPU float64."""
        dt = next(iter(run.subject.values())).dtype
        if run.is_cuda or dt in _LOW:
            return run.ref64(), "autograd (cpu, float64)"
        return run.work, "autograd"

    @staticmethod
    def _hvp_results(run, subject, hv_ref, label):
        wrt = run.wrt_names
        hv_subject = subject.hvp
        out = []
        if hv_ref is None:
            hv_ref = {n: torch.zeros_like(run.subject[n], dtype=torch.float64, device="cpu") for n in wrt}
        scales = _scales(hv_ref)
        for n in wrt:
            r = hv_ref[n]
            atol, rtol = run.tol(run.subject[n].dtype, scales[n], "autograd", order=2)
            if hv_subject is None:
                # no graph: consistent only where autograd's own second derivative is 0 too (relu, max-pool)
                cmp = _compare(torch.zeros_like(r), r, atol, rtol)
                res = _result(n, run.dev, run.subject[n].dtype, r.shape, cmp, atol, rtol, reference=label,
                              subject=subject.kind, order=2)
                if not cmp.ok:
                    res.hint = ("manual's gradients are detached from the autograd graph (no grad_fn), so they "
                                "cannot be differentiated again: avoid .detach(), .data, .item(), numpy and no_grad "
                                "inside manual")
            else:
                cmp = _compare(hv_subject[n], r, atol, rtol)
                res = _result(n, run.dev, run.subject[n].dtype, r.shape, cmp, atol, rtol, reference=label,
                              subject=subject.kind, order=2)
                if not cmp.ok and run.diagnose:
                    detached = subject.detached
                    res.hint = ("Hessian-vector products of manual's gradients differ from autograd's double "
                                "backward" + (f"; manual's gradient of {', '.join(map(repr, detached))} is detached "
                                              f"from the graph" if detached else ""))
            res.note = "order 2: d/d(input) <gradients, v> for a seeded random v"
            out.append(res)
        return out
