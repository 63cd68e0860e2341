"""check(): manual gradients against autograd and finite differences, with a report that finds the bug.

    report = check(loss, {"x": x, "w": w}, manual=my_grads)      # one forward, one backward, one manual call
    report.ok, report.results[0].worst_index, report.results[0].hint
    assert_grads_match(loss, inputs, manual)                     # raises AssertionError like assert_close

``check`` only orchestrates.  Per device (``_device.DeviceRun``):

* the caller's tensors are copied once (cast/moved when ``device``/``dtype`` are given); ``loss`` and
  ``manual`` run on the copies with a reseeded RNG (``_session.py``), and a write into any of them is a
  ``GradcheckKitError`` naming the input;
* the subject is ``manual``'s gradients (or, with no ``manual``, autograd's own);
* each reference (``references/``: autograd, finite differences) compares the subject with its own
  gradients, elementwise with per-dtype tolerances scaled to the gradient's magnitude (``_diff.py``);
* a failing input gets a diagnosis (``_hints.py``); everything lands in one ``Report`` (``report.py``).
"""

from __future__ import annotations

from typing import Callable, Mapping

import torch

from gradcheck_kit import _cotangent, _pytree
from gradcheck_kit import modes as _modes
from gradcheck_kit._check_errors import InvalidParameterError
from gradcheck_kit._device import DeviceRun
from gradcheck_kit._diff import tolerances
from gradcheck_kit._inputs import _parse_devices, _parse_dtype, _validate
from gradcheck_kit.errors import GradcheckKitError
from gradcheck_kit.references import ALIASES, expand
from gradcheck_kit.report import Report, Result

__all__ = ["check", "assert_grads_match", "Report", "Result", "tolerances", "GradcheckKitError",
           "DEFAULT_FD_LIMIT", "DEFAULT_FD_WORK"]

#: Full finite differences above this many loss evaluations refuse (``fd_mode="full"``) or switch to
#: random projections (``fd_mode="auto"``).
DEFAULT_FD_LIMIT = 10_000
DEFAULT_FD_WORK = 2e8          # auto mode: full FD while evaluations x input elements stay below this


def check(loss: Callable, inputs: Mapping[str, torch.Tensor], manual: Callable | None = None, *, wrt=None,
          reference: str = "autograd", device=None, dtype=None, atol: float | None = None,
          rtol: float | None = None, double_backward: bool = False, seed: int = 0,
          fd_mode: str = "auto", fd_limit: int | None = DEFAULT_FD_LIMIT, fd_eps: float = 1e-6,
          fd_projections: int = 4, fd_work: float | None = DEFAULT_FD_WORK, repeat: int | None = None, diagnose: bool = True,
          allow_unused: bool = False, forward_ad: bool = False, order: int | None = None, batched: bool = False,
          compile_options: dict | None = None, baseline: float | None = None, cotangents: int = 3,
          localize: bool = False) -> Report:
    """Compare ``manual``'s gradients of ``loss`` (or autograd's, with no ``manual``) with a reference.

    ``loss(**inputs)`` returns a tensor (summed if not scalar); ``manual(**inputs)`` returns
    ``{name: gradient}``.  ``reference`` is "autograd", "finite-difference" (alias "fd") or "both";
    with no ``manual`` autograd itself is checked against finite differences.  ``device`` may be
    "cpu", "cuda[:N]" or "all"; ``dtype`` casts copies of the floating inputs.  ``atol``/``rtol``
    override the per-dtype tolerances (atol is then absolute).

    Beyond the contract (keyword-only): ``fd_mode`` "auto" (full central differences up to
    ``fd_limit`` loss evaluations in all and ``fd_work`` element-evaluations, i.e. evaluations
    times the number of input elements, a deterministic proxy for their cost; random projections
    above), "full" (refuses above ``fd_limit``; ``fd_limit=None`` forces it) or "fast"; ``fd_eps``
    the step; ``fd_projections`` the number of random directions; ``repeat`` how often the
    subject's backward runs (default 2 on CUDA, to measure nondeterminism, else 1); ``diagnose=False`` skips the hints; ``allow_unused=True``
    takes an input the loss does not reach (autograd has no path from it) as having gradient 0
    instead of raising.

    gradcheck/check_grads parity (docs/parity.md): ``inputs`` may hold ``nn.Module``s and nested
    dicts/lists/tuples (flat names ``key.<parameter name>``; ``wrt`` takes globs) and complex tensors
    (torch's Wirtinger convention); ``forward_ad=True`` checks the loss's forward-mode derivatives;
    ``order=N`` checks derivatives up to order N (2 is ``double_backward=True``); ``batched=True``
    the backward under ``torch.func.vmap``; ``reference="compiled"`` (or a list such as
    ``["both", "compiled"]``) autograd of ``torch.compile(loss, **compile_options)``.

    Verdicts (docs/verdicts.md): ``baseline=k`` (a dtype below float64) passes the subject where its
    max error against a float64 autograd reference is at most k times autograd's own error in that
    dtype plus a floor of 1e-3 of the gradient's largest magnitude.  Without it, a comparison below
    float64 that fails is judged once more against float64 autograd: ok where ``manual`` is at least as
    accurate as torch's own gradient in that dtype (the note says so).  When ``manual`` has a keyword
    parameter ``grad_output``, a loss is not summed: ``cotangents`` seeded random cotangents are each
    passed as ``grad_output`` and checked as the gradient of <cotangent, loss> (``_cotangent.py``).

    Rule engine (docs/engine.md): ``manual="rules"`` makes the subject the gradient the explicit rules
    compute (the loss run under ``manual.use_rules(strict=True)``); ``localize=True`` also checks every
    recorded node's backward on its own (``report.nodes``; the summary names the first failing node).
    """
    rules_subject = isinstance(manual, str)
    manual = _manual_subject(manual, loss, wrt)
    prepared = _pytree.prepare(loss, inputs, manual, wrt)  # modules, nested containers, complex -> flat names
    loss, inputs, manual, wrt = prepared.loss, prepared.inputs, prepared.manual, prepared.wrt
    if _cotangent.takes_grad_output(manual) and cotangents:
        return _along_cotangents(loss, inputs, manual, cotangents, seed, dict(
            wrt=wrt, reference=reference, device=device, dtype=dtype, atol=atol, rtol=rtol,
            double_backward=double_backward, seed=seed, fd_mode=fd_mode, fd_limit=fd_limit, fd_eps=fd_eps,
            fd_projections=fd_projections, fd_work=fd_work, repeat=repeat, diagnose=diagnose,
            allow_unused=allow_unused, forward_ad=forward_ad, order=order, batched=batched,
            compile_options=compile_options, baseline=baseline))
    if baseline is not None and not (isinstance(baseline, (int, float)) and baseline > 0):
        raise InvalidParameterError(f"baseline={baseline!r} must be a positive number k (the subject may err up "
                                    f"to k times autograd's own error in its dtype), e.g. 2.0.")
    reference = expand(reference)
    modes = _modes.select(forward_ad=forward_ad, order=order, batched=batched, complex_names=prepared.complex_names)
    double_backward = double_backward or (order is not None and order >= 2)
    wrt = _validate(loss, inputs, manual, wrt, reference, ALIASES)
    dtype = _parse_dtype(dtype)
    devices = _parse_devices(device, inputs)
    if fd_mode not in ("auto", "full", "fast"):
        raise InvalidParameterError(f"fd_mode={fd_mode!r} is not one of 'auto', 'full' and 'fast'.")
    refs = ALIASES[reference]
    if manual is None:  # autograd itself is the subject: finite differences are the oracle
        others = tuple(k for k in refs if k not in ("autograd", "fd"))  # "compiled": eager against compiled
        base = ("fd",) + (("autograd",) if "autograd" in refs and reference == "both" else ())
        refs = others if others and len(others) == len(refs) else base + others
    if double_backward and not set(refs) & {"autograd", "fd"}:  # compiled has no double backward: order 2 by these
        refs = refs + (("autograd",) if manual is not None else ("fd",))
    report = Report(reference=reference, double_backward=double_backward, seed=seed)
    opts = dict(loss=loss, inputs=inputs, manual=manual, wrt=wrt, refs=refs, dtype=dtype, atol=atol, rtol=rtol,
                double_backward=double_backward, seed=seed, fd_mode=fd_mode, fd_limit=fd_limit, fd_eps=fd_eps,
                fd_projections=fd_projections, fd_work=fd_work, repeat=repeat, diagnose=diagnose,
                allow_unused=allow_unused, modes=modes, compile_options=compile_options, baseline=baseline)
    for dev in devices:
        DeviceRun(report, dev, **opts).run()
    if rules_subject:
        report.notes.append("the subject is the rule engine's gradient: the loss run under "
                            "gradcheck_kit.manual.use_rules(strict=True), every op through its explicit rule")
    if localize:
        from gradcheck_kit.localize import localize as _localize

        report.nodes = _localize(loss, inputs, seed=seed, wrt=wrt)
    if report.summed:
        report.notes.insert(0, f"the loss returned a tensor of shape {tuple(report.loss_shape)}; it was summed "
                               f"to a scalar before differentiating (only the all-ones cotangent was checked: "
                               f"give manual a grad_output parameter to check other cotangents)")
    return report


def _manual_subject(manual, loss, wrt):
    """``manual="rules"``: the gradient the rule engine computes (``manual.functional.rules_manual``)."""
    if not isinstance(manual, str):
        return manual
    if manual != "rules":
        raise InvalidParameterError(f"manual={manual!r} is not a callable or 'rules' (the rule engine's "
                                    f"gradients).")
    from gradcheck_kit.manual.functional import rules_manual

    wrt = (wrt,) if isinstance(wrt, str) else wrt
    return rules_manual(loss, wrt)


def _along_cotangents(loss, inputs, manual, count, seed, options) -> Report:
    """One ``check`` per seeded cotangent v (``manual(..., grad_output=v)`` against d<v, loss>/dx), merged."""
    from gradcheck_kit._session import _Runner

    probe = {n: (t.detach().clone() if isinstance(t, torch.Tensor) else t) for n, t in inputs.items()}
    with torch.no_grad():
        y = _Runner(seed)(loss, probe, "loss")
    if not isinstance(y, torch.Tensor):
        from gradcheck_kit._check_errors import LossError
        raise LossError(f"loss must return a torch.Tensor, got {type(y).__name__}.")
    merged = None
    for c, v in enumerate(_cotangent.cotangents(y.shape, seed, count)):
        loss_v, manual_v = _cotangent.along(loss, manual, v)
        rep = check(loss_v, inputs, manual_v, cotangents=0, **options)
        for r in rep.results:
            r.cotangent = c
        if merged is None:
            merged = rep
        else:
            merged.results += rep.results
            merged.notes += [n for n in rep.notes if n not in merged.notes]
    merged.loss_shape, merged.summed = tuple(y.shape), False
    merged.cotangents = count
    merged.notes.insert(0, f"manual takes grad_output: checked as the vector-Jacobian product along {count} seeded "
                           f"random cotangent(s) of the loss's shape {tuple(y.shape)} (standard normal, seeds "
                           f"{seed + 1000}..{seed + 999 + count}), each against d<cotangent, loss>/dx")
    return merged


def assert_grads_match(loss: Callable, inputs: Mapping[str, torch.Tensor], manual: Callable | None = None,
                       **options) -> Report:
    """``check(...)``, raising ``AssertionError`` (worded like ``torch.testing.assert_close``) on a mismatch."""
    report = check(loss, inputs, manual, **options)
    if not report.ok:
        raise AssertionError(report.failure_message())
    return report
