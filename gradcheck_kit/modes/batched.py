"""``check(batched=True)``: the backward under ``torch.func.vmap`` over a batch of cotangents.

With B seeded random cotangents c_1..c_B of the loss's output shape (not summed), the VJP

    vjp(c) = (dL/dx)^T c

computed once under ``vmap`` over the stacked cotangents must equal the B separate calls,
elementwise:  vmap(vjp)(stack(c)) == stack(vjp(c_b) for b).  What runs:

* when ``manual`` takes a ``grad_output`` keyword: ``manual(**inputs, grad_output=c)``;
* otherwise the loss's own backward: ``torch.autograd.grad(y, inputs, c)`` on one recorded graph.

This is ``gradcheck(check_batched_grad=True)`` with functorch's ``vmap``: unlike the legacy
batching of ``autograd.grad(is_grads_batched=True)``, it runs a custom ``autograd.Function``'s
``vmap`` staticmethod (or ``generate_vmap_rule``) for Functions called inside the backward, so a
wrong batching rule is caught.  A result's first index is the cotangent number.

With ``forward_ad=True`` too (gradcheck's ``check_batched_forward_grad``), per input x_n the JVPs
``torch.func.jvp(loss, x_n; t)`` along B seeded tangents under ``vmap`` must equal the B separate
calls (the loss's output is not summed; the first index is the tangent number).
"""

from __future__ import annotations

import inspect

import torch

from gradcheck_kit._diff import _compare, _result, _scales
from gradcheck_kit._session import _leaves
from gradcheck_kit.errors import GradcheckKitError
from gradcheck_kit.modes import ModeError, first_clause

__all__ = ["Batched", "takes_grad_output"]


def takes_grad_output(fn) -> bool:
    try:
        return "grad_output" in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False


class Batched:
    name = "batched"

    def __init__(self, size: int = 3, forward: bool = False):
        self.size = size
        self.forward = forward  # also forward mode: JVPs under vmap over tangents (with forward_ad=True)

    def run(self, run, subject, results) -> list:
        wrt = run.wrt_names
        work = run.work
        with torch.no_grad():
            y0 = run.run_fn(run.loss, work, "loss")
        if not isinstance(y0, torch.Tensor):
            return []  # the references already raised on this
        gen = torch.Generator().manual_seed(run.seed + 104729)
        cts = torch.randn((self.size,) + tuple(y0.shape), generator=gen, dtype=torch.float64).to(y0.device, y0.dtype)
        # manual(..., grad_output=c): check() runs one cotangent at a time through a wrapper (_cotangent.py)
        vjp_manual = getattr(run.manual, "grad_output_manual", None) or run.manual
        if vjp_manual is not None and takes_grad_output(vjp_manual):
            who = "manual (grad_output)"

            def vjp(c):
                res = vjp_manual(**work, grad_output=c)
                return tuple(res[n] for n in wrt)
        else:
            who = "autograd (the loss's backward)"
            leaves = _leaves(work, wrt)
            with torch.enable_grad():
                y = run.run_fn(run.loss, leaves, "loss")

            def vjp(c):
                return torch.autograd.grad(y, [leaves[n] for n in wrt], c, retain_graph=True, allow_unused=True,
                                           materialize_grads=True)
        try:
            with run.run_fn.seeded(work):
                batched = torch.func.vmap(vjp, randomness="same")(cts)
        except GradcheckKitError:
            raise
        except Exception as e:  # noqa: BLE001 - e.g. a Function without a vmap rule, .item() in a backward
            raise ModeError(f"batched=True: the backward ({who}) cannot run under torch.func.vmap over "
                            f"cotangents: {type(e).__name__}: {first_clause(e)}.") from None
        loop = []
        for c in cts:
            with run.run_fn.seeded(work):
                loop.append(vjp(c))
        refs = {n: torch.stack([lp[i].detach() for lp in loop]) for i, n in enumerate(wrt)}
        got = {n: batched[i].detach() for i, n in enumerate(wrt)}
        scales = _scales(refs)
        out = []
        for n in wrt:
            atol, rtol = run.tol(got[n].dtype, scales[n], "autograd")
            cmp = _compare(got[n], refs[n], atol, rtol)
            res = _result(n, run.dev, got[n].dtype, refs[n].shape, cmp, atol, rtol,
                          reference="per-cotangent loop", subject=who, mode="batched")
            res.note = (f"batched: the VJP under torch.func.vmap over {self.size} seeded cotangents of shape "
                        f"{tuple(y0.shape)} against one call per cotangent (first index = cotangent)"
                        + ("; manual takes no grad_output, so the loss's backward was batched, not manual"
                           if run.manual is not None and who.startswith("autograd") else ""))
            if not cmp.ok and run.diagnose:
                res.hint = (f"the backward of {n!r} gives other results under vmap than one cotangent at a time: "
                            f"check the vmap staticmethod of a custom autograd.Function called in the backward "
                            f"(a reduction over the batch dimension, or a batch dimension not moved), or state "
                            f"shared between calls")
            out.append(res)
        if self.forward:
            out += self._forward(run)
        return out

    def _forward(self, run) -> list:
        """vmap over B seeded tangents t of jvp(loss, x_n; t) against one call per tangent, per input."""
        work, out = run.work, []
        gen = torch.Generator().manual_seed(run.seed + 15485863)
        for n in run.wrt_names:
            x = work[n]
            ts = torch.randn((self.size,) + tuple(x.shape), generator=gen, dtype=torch.float64).to(x.device, x.dtype)

            def jvp(t, n=n):
                return torch.func.jvp(lambda xn: run.loss(**{**work, n: xn}), (work[n],), (t,))[1]
            try:
                with run.run_fn.seeded(work):
                    got = torch.func.vmap(jvp, randomness="same")(ts).detach()
            except GradcheckKitError:
                raise
            except Exception as e:  # noqa: BLE001 - e.g. a Function without setup_context or vmap rule
                raise ModeError(f"batched=True with forward_ad=True: the forward mode with respect to {n!r} cannot "
                                f"run under torch.func.vmap over tangents: {type(e).__name__}: "
                                f"{first_clause(e)}.") from None
            loop = []
            for t in ts:
                with run.run_fn.seeded(work):
                    loop.append(jvp(t).detach())
            ref = torch.stack(loop)
            atol, rtol = run.tol(got.dtype, _scales({n: ref})[n], "autograd")
            cmp = _compare(got, ref, atol, rtol)
            res = _result(n, run.dev, got.dtype, ref.shape, cmp, atol, rtol, reference="per-tangent loop",
                          subject="forward AD", mode="batched")
            res.note = (f"batched forward: JVPs of the loss along {self.size} seeded tangents of {n!r} under "
                        f"torch.func.vmap against one call per tangent (first index = tangent)")
            if not cmp.ok and run.diagnose:
                res.hint = (f"forward mode with respect to {n!r} gives other results under vmap than one tangent at "
                            f"a time: check the vmap staticmethod of a custom autograd.Function (or of one its jvp "
                            f"calls)")
            out.append(res)
        return out
