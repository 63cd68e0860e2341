"""``check(order=N)``, N >= 3: derivatives of the subject gradient up to order N.

With seeded random directions v_1, ..., v_{N-1} (v_1 is ``double_backward``'s v), the chain

    h_1 = g (the subject gradient),   h_k = d/dx <h_{k-1}, v_{k-1}>   (k = 2..N)

is built by differentiating the subject's own graph again (reverse over reverse, so ``manual``
must be written in differentiable ops).  For a true gradient, h_{k-1} = grad phi_{k-1} with
phi_{k-1} = <h_{k-2}, v_{k-2}>, so d/dx <h_{k-1}, v> = Hess(phi_{k-1}) v is symmetric in x and
equals the directional derivative of h_{k-1} along v.  Order 2 (Hessian-vector products) is
``double_backward``'s, unchanged; this mode adds, for k = 3..N:

* against autograd (when the subject is ``manual``): h_k of manual against h_k of the loss's
  autograd gradient (``create_graph=True`` all the way);
* against finite differences of the order below: h_k against
  (h_{k-1}(x + e v_{k-1}) - h_{k-1}(x - e v_{k-1})) / 2e, each side a full chain of order k-1
  (error O(e^2) + O(eps |h_{k-1}| / e); e = 10 fd_eps).

Everything runs in float64 on the CPU copies (the subject's own copies when they are float64 on
the CPU, or when ``manual`` cannot run in float64), so orders above 2 are about formulas, not
rounding.
"""

from __future__ import annotations

import torch

from gradcheck_kit._diff import _compare, _result, _scales
from gradcheck_kit._session import _loss_out
from gradcheck_kit.errors import GradcheckKitError

__all__ = ["HigherOrder"]


class HigherOrder:
    name = "order"

    def __init__(self, order: int):
        self.order = order

    def directions(self, run, like: dict) -> list:
        """v_1 (``run.vectors``, as double_backward uses), then v_2, ... from seeds seed + 2, ..."""
        wrt = run.wrt_names
        vs = [run.vectors(wrt, like)]
        for k in range(2, self.order):
            gen = torch.Generator().manual_seed(run.seed + k)
            vs.append({n: torch.randn(like[n].shape, generator=gen, dtype=torch.float64) for n in wrt})
        return vs

    @staticmethod
    def chain(run, grad_fn, tensors: dict, vs: list, k: int) -> list:
        """[h_1, ..., h_k] (detached) at ``tensors``; h_1 = grad_fn(leaves) with its graph."""
        wrt = run.wrt_names
        leaves = {n: (t.detach().requires_grad_(True) if n in wrt else t) for n, t in tensors.items()}
        out = []
        with torch.enable_grad():
            h = grad_fn(leaves)
            out.append({n: h[n].detach() for n in wrt})
            for j in range(k - 1):
                live = [n for n in wrt if isinstance(h[n], torch.Tensor) and h[n].requires_grad]
                if not live:  # constant (or detached) derivative: the next one is 0
                    h = {n: torch.zeros_like(leaves[n]) for n in wrt}
                else:
                    s = sum((h[n] * vs[j][n].to(h[n].device, h[n].dtype)).sum() for n in live)
                    d = torch.autograd.grad(s, [leaves[n] for n in wrt], allow_unused=True, create_graph=True)
                    h = {n: (g if g is not None else torch.zeros_like(leaves[n])) for n, g in zip(wrt, d)}
                out.append({n: h[n].detach() for n in wrt})
        return out

    def run(self, run, subject, results) -> list:
        wrt = run.wrt_names
        N = self.order
        on_cpu64 = not run.is_cuda and all(run.work[n].dtype == torch.float64 for n in wrt)
        tensors = run.work if on_cpu64 else run.ref64()
        vs = self.directions(run, tensors)

        def autograd_fn(leaves):
            out = _loss_out(run.run_fn(run.loss, leaves, "loss"), {})
            g = torch.autograd.grad(out, [leaves[n] for n in wrt], allow_unused=True, create_graph=True)
            return {n: (x if x is not None else torch.zeros_like(leaves[n])) for n, x in zip(wrt, g)}

        def manual_fn(leaves):
            res = run.run_fn(run.manual, leaves, "manual")
            return {n: res[n] for n in wrt}

        subject_fn = manual_fn if subject.kind == "manual" else autograd_fn
        try:
            mine = self.chain(run, subject_fn, tensors, vs, N)
        except GradcheckKitError:
            raise
        except Exception:  # noqa: BLE001 - a manual that only runs in its own dtype/device: stay there
            if tensors is run.work:
                raise
            tensors = run.work
            vs = self.directions(run, tensors)
            mine = self.chain(run, subject_fn, tensors, vs, N)
        out = []
        if subject.kind == "manual":
            ref = self.chain(run, autograd_fn, tensors, vs, N)
            for k in range(3, N + 1):
                out += self._compare(run, subject, mine[k - 1], ref[k - 1], k, "autograd",
                                     f"order {k}: d/dx <h_{k - 1}, v_{k - 1}> of manual's gradient against the same "
                                     f"chain on autograd's gradient (seeded random v)")
        dtype = next(tensors[n].dtype for n in wrt)
        # float64: step 10 fd_eps; a lower dtype (the fallback): ~ eps^(1/3), where truncation O(e^2)
        # meets rounding O(eps/e)
        e = 10 * run.fd_eps if dtype == torch.float64 else max(10 * run.fd_eps, torch.finfo(dtype).eps ** (1 / 3))
        for k in range(3, N + 1):
            v = vs[k - 2]
            plus = {n: (t + e * v[n].to(t.device, t.dtype) if n in wrt else t) for n, t in tensors.items()}
            minus = {n: (t - e * v[n].to(t.device, t.dtype) if n in wrt else t) for n, t in tensors.items()}
            hp = self.chain(run, subject_fn, plus, vs, k - 1)[-1]
            hm = self.chain(run, subject_fn, minus, vs, k - 1)[-1]
            fd = {n: (hp[n] - hm[n]) / (2 * e) for n in wrt}
            out += self._compare(run, subject, mine[k - 1], fd, k, "fd",
                                 f"order {k}: d/dx <h_{k - 1}, v_{k - 1}> against central differences of the "
                                 f"order-{k - 1} derivative h_{k - 1} along v_{k - 1} (step {e:g})")
        return out

    @staticmethod
    def _compare(run, subject, mine: dict, ref: dict, k: int, kind: str, note: str) -> list:
        out = []
        scales = _scales(ref)
        for n in run.wrt_names:
            m, r = mine[n], ref[n]
            atol, rtol = run.tol(m.dtype, scales[n], kind, order=2)
            cmp = _compare(m, r, atol, rtol)
            res = _result(n, run.dev, run.subject[n].dtype, r.shape, cmp, atol, rtol,
                          reference="autograd" if kind == "autograd" else "finite-difference",
                          subject=subject.kind, order=k, mode="order")
            res.note = note
            if not cmp.ok and run.diagnose:
                res.hint = (f"the order-{k} derivative of the {subject.kind} gradient of {n!r} is wrong while the "
                            f"lower orders are checked separately: look at the derivative of a backward formula "
                            f"(a custom Function's backward, itself differentiated), or a gradient that leaves the "
                            f"graph (.detach(), no_grad) and so differentiates to 0")
            out.append(res)
        return out
