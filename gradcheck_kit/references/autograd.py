"""The autograd reference: ``torch.autograd.grad`` of the same loss.

It runs in the subject's own dtype on the CPU for float32/float64; for a CUDA subject or a
half-precision one, on float64 CPU copies (TF32 off), so the reference is never the noisier side.
With ``double_backward`` it also gives the Hessian-vector products d/dx <grad, v>.
"""

from __future__ import annotations

import torch

from gradcheck_kit._diff import _LOW, _compare, _result, _scales
from gradcheck_kit._session import _autograd, _check_finite, _no_tf32

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
        out = run.results(subject, refs, self.kind, label, tensors)
        if run.double_backward:
            hv_ref = run.hvp_of(ref, leaves, wrt)
            out += self._hvp_results(run, subject, hv_ref, label)
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
                cmp = _compare(torch.zeros_like(r), r, atol, rtol)
                res = _result(n, run.dev, run.subject[n].dtype, r.shape, cmp, atol, rtol, reference=label,
                              subject=subject.kind, order=2)
                res.ok = False
                res.hint = ("manual's gradients are detached from the autograd graph (no grad_fn), so they cannot "
                            "be differentiated again: avoid .detach(), .data, .item(), numpy and no_grad inside manual")
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
