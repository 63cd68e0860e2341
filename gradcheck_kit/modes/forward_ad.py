"""``check(forward_ad=True)``: the loss's forward-mode derivatives, one input at a time.

For each checked input x_n and k seeded random unit tangents u (other inputs' tangents 0), the
JVP through torch's forward AD (dual numbers, ``torch.autograd.forward_ad``: a custom
``autograd.Function``'s ``jvp`` is what runs) is

    jvp(u) = d/dt L(x_n + t u) |_{t=0} = <grad_n L, u>,

compared with

* finite differences in float64: the one-sided quotients d+ = (L(x + hu) - L(x))/h and
  d- = (L(x) - L(x - hu))/h; the JVP passes within the tolerance of [min, max](d-, d+), so a
  kink crossed by the step is not a false alarm and a smooth point (d- = d+ up to O(h)) is exact;
* reverse mode: <g_n, u> with g the loss's autograd gradient (a custom Function's ``backward``),
  so a ``jvp`` that disagrees with its own ``backward`` is caught even where FD is loose.

A result's values are the k directional derivatives (index = tangent number).  With order >= 2
(``double_backward``) forward over reverse is checked too: J_G v through forward AD against the
reverse-over-reverse Hessian-vector product, G the subject gradient.  The loss is
summed if it is not scalar, as everywhere in ``check``.
"""

from __future__ import annotations

import torch
import torch.autograd.forward_ad as fwAD

from gradcheck_kit import _fd
from gradcheck_kit._diff import _compare, _result
from gradcheck_kit._session import _autograd, _loss_out
from gradcheck_kit.modes import ModeError, first_clause

__all__ = ["ForwardAD"]


def _unit(shape, gen) -> torch.Tensor:
    u = torch.randn(shape, generator=gen, dtype=torch.float64)
    return u / u.norm().clamp_min(1e-300)


class ForwardAD:
    name = "forward_ad"

    def __init__(self, tangents: int = 2):
        self.tangents = tangents

    def jvp(self, run, name: str, u: torch.Tensor) -> float:
        """d/dt loss(x_name + t u) at t = 0, through forward AD, in the subject's dtype and device."""
        x = run.work[name]
        with fwAD.dual_level():
            kwargs = dict(run.work)
            kwargs[name] = fwAD.make_dual(x, u.to(x.device, x.dtype))
            try:
                out = _loss_out(run.run_fn(run.loss, kwargs, "loss"), {})
            except (NotImplementedError, RuntimeError) as e:
                if _no_forward_formula(e):
                    raise ModeError(f"forward_ad=True: the loss cannot run in forward mode with respect to "
                                    f"{name!r}: {first_clause(e)}.") from None
                raise
            tangent = fwAD.unpack_dual(out).tangent
        return 0.0 if tangent is None else float(tangent.double())

    def run(self, run, subject, results) -> list:
        wrt = run.wrt_names
        gen = torch.Generator().manual_seed(run.seed + 7919)
        if subject.kind == "autograd":
            reverse = subject.grads
        else:
            reverse = {n: g.detach() for n, g in
                       _autograd(run.run_fn, run.loss, run.work, wrt, {}, allow_unused=True)[0].items()}
        tensors = {n: (t.clone(memory_format=torch.contiguous_format) if isinstance(t, torch.Tensor) else t)
                   for n, t in run.ref64().items()}
        ev = _fd.Evaluator(run.loss, tensors, lambda fn, kw: run.run_fn(fn, kw, "loss"))
        f0 = ev()
        h = run.fd_eps
        noise = 4 * ev.noise(f0) / h  # rounding of one difference quotient
        out = []
        for n in wrt:
            x = tensors[n]
            us = [_unit(x.shape, gen) for _ in range(self.tangents)]
            jv, dlo, dhi, rev, mag = [], [], [], [], []
            for u in us:
                jv.append(self.jvp(run, n, u))
                tensors[n] = x + h * u
                fp = ev()
                tensors[n] = x - h * u
                fm = ev()
                tensors[n] = x
                dp, dm = (fp - f0) / h, (f0 - fm) / h
                dlo.append(min(dp, dm))
                dhi.append(max(dp, dm))
                g = reverse[n].to("cpu", torch.float64)
                rev.append(float((g * u).sum()))
                mag.append(float((g * u).abs().sum()))  # sum |g_i u_i|: the scale of <g, u>
            dtype = run.work[n].dtype
            scale = max(max(mag), 1e-30)
            m = torch.tensor(jv, dtype=torch.float64)
            lo, hi = torch.tensor(dlo, dtype=torch.float64), torch.tensor(dhi, dtype=torch.float64)
            atol, rtol = run.tol(dtype, scale, "fd")
            atol += noise
            cmp = _compare(m, (lo + hi) / 2, atol, rtol, lo, hi)
            res = _result(n, run.dev, dtype, m.shape, cmp, atol, rtol, reference="finite-difference",
                          subject="forward AD", mode="forward_ad")
            res.note = (f"forward mode: JVPs d/dt loss({n} + t u) along {len(us)} seeded unit tangents u (index = "
                        f"tangent) against float64 one-sided differences")
            if not cmp.ok and run.diagnose:
                res.hint = (f"the forward-mode derivative with respect to {n!r} is wrong: check the jvp (forward AD "
                            f"formula) of the custom autograd.Function or op that {n!r} flows through")
            out.append(res)
            r = torch.tensor(rev, dtype=torch.float64)
            atol, rtol = run.tol(dtype, scale, "autograd")
            cmp = _compare(m, r, atol, rtol)
            res = _result(n, run.dev, dtype, m.shape, cmp, atol, rtol, reference="autograd (reverse mode)",
                          subject="forward AD", mode="forward_ad")
            res.note = f"forward mode: JVPs along {len(us)} seeded unit tangents u against <autograd gradient, u>"
            if not cmp.ok and run.diagnose:
                res.hint = (f"forward and reverse mode disagree for {n!r}: a custom Function's jvp and backward are "
                            f"inconsistent (the finite-difference row says which is right)")
            out.append(res)
        if run.double_backward and subject.hvp is not None:
            out += self._forward_over_reverse(run, subject)
        return out

    def _forward_over_reverse(self, run, subject) -> list:
        """Order 2 (gradgradcheck's check_fwd_over_rev): the JVP of the gradient function G along v,
        J_G v, through forward AD, against the Hessian-vector product d/dx <G, v> = J_G^T v of the
        reverse-over-reverse check (the same seeded v); J_G is a Hessian, so the two agree."""
        wrt = run.wrt_names
        vs = run.vectors(wrt, run.subject)
        with fwAD.dual_level():
            duals = {n: fwAD.make_dual(run.work[n].detach().requires_grad_(subject.kind == "autograd"),
                                       vs[n].to(run.work[n].device, run.work[n].dtype)) for n in wrt}
            kwargs = {**run.work, **duals}
            try:
                if subject.kind == "manual":
                    res = run.run_fn(run.manual, kwargs, "manual")
                    grads = [res[n] for n in wrt]
                else:
                    with torch.enable_grad():
                        y = _loss_out(run.run_fn(run.loss, kwargs, "loss"), {})
                        grads = torch.autograd.grad(y, [duals[n] for n in wrt], create_graph=True,
                                                    allow_unused=True, materialize_grads=True)
            except (NotImplementedError, RuntimeError) as e:
                if _no_forward_formula(e):
                    raise ModeError(f"forward_ad=True with order 2: the {subject.kind} gradient cannot run in "
                                    f"forward mode: {first_clause(e)}.") from None
                raise
            tangents = {n: fwAD.unpack_dual(g).tangent for n, g in zip(wrt, grads)}
        ref = {n: subject.hvp[n].detach() for n in wrt}
        out = []
        for n in wrt:
            t = tangents[n]
            m = torch.zeros_like(ref[n]) if t is None else t.detach()
            atol, rtol = run.tol(ref[n].dtype, max(float(ref[n].abs().max()) if ref[n].numel() else 0.0, 1e-30),
                                 "autograd", order=2)
            cmp = _compare(m, ref[n], atol, rtol)
            res = _result(n, run.dev, ref[n].dtype, ref[n].shape, cmp, atol, rtol,
                          reference="reverse over reverse", subject=f"{subject.kind} (forward over reverse)",
                          order=2, mode="forward_ad")
            res.note = ("forward over reverse: the JVP of the gradient along the seeded v of double_backward, "
                        "against d/dx <gradient, v>")
            if not cmp.ok and run.diagnose:
                res.hint = (f"forward-over-reverse and reverse-over-reverse second derivatives of {n!r} disagree: "
                            f"a jvp of a custom Function used in the backward (or in manual) is wrong, or "
                            f"the gradient's Jacobian is not symmetric (manual is not the gradient of a loss)")
            out.append(res)
        return out


def _no_forward_formula(e: Exception) -> bool:
    """torch's error for an op (or custom Function) that has no forward-mode derivative."""
    text = str(e)
    return "forward AD" in text or "forward-mode" in text or "jvp" in text
