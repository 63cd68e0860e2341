"""Complex inputs: checked as their (real, imaginary) pairs, in torch's Wirtinger convention.

For a real loss L of z = a + ib, torch's gradient (docs: "Autograd for Complex Numbers") is

    grad_z L = dL/da + i dL/db = 2 dL/d(conj z),

the conjugate Wirtinger derivative times 2, i.e. the direction of steepest ascent (|z|^2 has
gradient 2z).  So with ``view_as_real``, grad_z L is exactly the real gradient of L with respect
to the pair (a, b):

    view_as_real(grad_z L) = (dL/da, dL/db) = grad_(a,b) L.

``as_real`` therefore hands ``check()`` each complex input as its real view ``[..., 2]`` (``loss``
and ``manual`` still receive complex tensors, through ``view_as_complex``) and ``manual``'s complex
gradient as ``view_as_real`` of it.  Every reference then works unchanged: autograd (whose
``view_as_complex`` backward is ``view_as_real`` of the gradient), real central differences in a
and b (the complex finite difference ``(L(z + h) - L(z - h))/2h + i (L(z + ih) - L(z - ih))/2h``),
forward mode, higher orders and batching.  In a result, the last index is 0 for the real part and
1 for the imaginary part.

The usual mistakes are the other conventions: 2 dL/dz = conj(torch's), dL/dz = conj(torch's) / 2
and dL/d(conj z) = torch's / 2.  ``ConjugateConvention`` names the one that matches when manual's
gradient fails.
"""

from __future__ import annotations

import inspect
from typing import Mapping

import torch

from gradcheck_kit._check_errors import LossError, ManualGradientError

__all__ = ["as_real", "ConjugateConvention", "CONVENTION"]

CONVENTION = ("torch's convention: for a real loss L of z = a + ib the gradient is dL/da + i dL/db "
              "= 2 dL/d(conj z), the conjugate Wirtinger derivative times 2")


def _complex_view(t: torch.Tensor) -> torch.Tensor:
    if t.stride(-1) != 1 or any(s % 2 for s in t.stride()[:-1]):
        t = t.contiguous()
    return torch.view_as_complex(t)


def _signature(fn):
    try:
        return inspect.signature(fn)
    except (TypeError, ValueError):
        return None


def as_real(loss, inputs: dict, manual, names: tuple):
    """(loss, inputs, manual) with the complex inputs ``names`` as real views [..., 2]."""
    real_inputs = {n: (torch.view_as_real(t.detach().resolve_conj()) if n in names else t)
                   for n, t in inputs.items()}
    for n in names:  # tagged, so that a check() on these flat inputs (one per cotangent) still knows them
        real_inputs[n]._gradcheck_kit_complex = True

    def to_complex(kw):
        return {k: (_complex_view(v) if k in names and isinstance(v, torch.Tensor) else v) for k, v in kw.items()}

    def real_loss(**kw):
        out = loss(**to_complex(kw))
        if isinstance(out, torch.Tensor) and out.is_complex():
            raise LossError(f"loss returned a complex tensor ({out.dtype}); a gradient is defined for a real loss "
                            f"only ({CONVENTION}): check out.real and out.imag separately, or a real function "
                            f"of them such as out.abs().pow(2).")
        return out

    real_loss.__signature__ = _signature(loss)
    real_loss.__name__ = getattr(loss, "__name__", "loss")
    if manual is None:
        return real_loss, real_inputs, None

    def real_manual(**kw):
        cx = to_complex(kw)
        res = manual(**cx)
        if not isinstance(res, Mapping):
            return res  # _check_manual says what is wrong
        out = dict(res)
        for n in names:
            g = out.get(n)
            if not isinstance(g, torch.Tensor):
                continue
            z = cx[n]
            if not g.is_complex():
                raise ManualGradientError(f"manual's gradient for {n!r} is real ({g.dtype}) but {n!r} is complex "
                                          f"({z.dtype}); return the complex gradient in {CONVENTION}.")
            if g.shape != z.shape or g.dtype != z.dtype or g.device != z.device:
                raise ManualGradientError(f"manual's gradient for {n!r} is a {g.dtype} tensor of shape "
                                          f"{tuple(g.shape)} on {g.device}, but {n!r} is {z.dtype} of shape "
                                          f"{tuple(z.shape)} on {z.device}.")
            out[n] = torch.view_as_real(g.resolve_conj())
        return out

    real_manual.__signature__ = _signature(manual)  # keeps grad_output visible (cotangents, batched)
    real_manual.__name__ = getattr(manual, "__name__", "manual")
    return real_loss, real_inputs, real_manual


def _conj(v: torch.Tensor) -> torch.Tensor:
    """conj in the real view: (a, b) -> (a, -b)."""
    return v * torch.tensor([1.0, -1.0], dtype=v.dtype, device=v.device)


class ConjugateConvention:
    """After the references: label complex inputs' results, and name a conjugated manual gradient."""

    name = "complex"

    def __init__(self, names):
        self.names = tuple(names)

    def run(self, run, subject, results) -> list:
        for r in results:
            if r.name not in self.names:
                continue
            real_dtype = r.dtype
            r.dtype = {"float64": "complex128", "float32": "complex64", "float16": "complex32"}.get(real_dtype,
                                                                                                 real_dtype)
            tail = "complex input: compared as (real, imag) pairs" + (
                ", last index 0 = real, 1 = imaginary part" if r.mode in (None, "order", "compiled") else "")
            r.note = f"{r.note}; {tail}" if r.note else tail
        if subject.kind != "manual":
            return []
        failing = {r.name for r in results if not r.ok and r.name in self.names and r.order == 1}
        if not failing:
            return []
        from gradcheck_kit._session import _autograd

        ref, _ = _autograd(run.run_fn, run.loss, run.work, run.wrt_names, {}, allow_unused=True)
        for n in failing:
            m, g = subject.grads[n], ref[n].detach()
            scale = float(g.abs().max()) if g.numel() else 0.0
            atol, rtol = run.tol(m.dtype, max(scale, 1e-30), "autograd")
            if bool(((_conj(m) - g).abs() <= atol + rtol * g.abs()).all()):
                what = "the complex conjugate of"
            elif bool(((2 * _conj(m) - g).abs() <= atol + rtol * g.abs()).all()):
                what = "half the complex conjugate of (dL/dz rather than 2 dL/d(conj z))"
            elif bool(((2 * m - g).abs() <= atol + rtol * g.abs()).all()):
                what = "half of (dL/d(conj z) rather than 2 dL/d(conj z))"
            else:
                continue
            hint = (f"manual's gradient of {n!r} is {what} torch's: {CONVENTION}; return "
                    f"{'its conjugate' if 'conjugate' in what else 'twice it'}")
            for r in results:
                if r.name == n and not r.ok:
                    r.hint = hint
        return []
