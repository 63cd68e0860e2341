"""check(): manual gradients against autograd and finite differences, with a report that finds the bug.

    report = check(loss, {"x": x, "w": w}, manual=my_grads)      # one forward, one backward, one manual call
    report.ok, report.results[0].worst_index, report.results[0].hint
    assert_grads_match(loss, inputs, manual)                     # raises AssertionError like assert_close

How it works, per device:

* the caller's tensors are copied once (cast/moved when ``device``/``dtype`` are given); ``loss`` and
  ``manual`` run on the copies, and a write into any of them (``_version`` counters, then a value
  comparison with the caller's tensor) is a ``GradcheckKitError`` naming the input;
* the subject is ``manual``'s gradients (or, with no ``manual``, autograd's own);
* the references: autograd (in the same dtype on the CPU for float32/float64, else CPU float64 with
  TF32 off) and/or float64 finite differences (``_fd.py``: full, or random projections above
  ``fd_limit``), whose one-sided differences make kinks and ties pass;
* each (input, reference) comparison uses per-dtype tolerances scaled to the gradient's magnitude:
  an element mismatches where ``|manual - ref| > atol + rtol |ref|``;
* a failing input gets a diagnosis (``_hints.py``): factor, sign, flip, mask, border, stride phase,
  shared weight.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Mapping

import torch

from gradcheck_kit import _fd
from gradcheck_kit._check_errors import (FiniteDifferenceTooLargeError, InPlaceModificationError,
                                         InvalidInputError, InvalidParameterError, LossDependencyError,
                                         LossError, ManualGradientError, NonFiniteReferenceError,
                                         UnknownDeviceError)
from gradcheck_kit.errors import GradcheckKitError

__all__ = ["check", "assert_grads_match", "Report", "Result", "tolerances", "GradcheckKitError",
           "DEFAULT_FD_LIMIT", "DEFAULT_FD_WORK"]

#: Full finite differences above this many loss evaluations refuse (``fd_mode="full"``) or switch to
#: random projections (``fd_mode="auto"``).
DEFAULT_FD_LIMIT = 10_000
DEFAULT_FD_WORK = 2e8          # auto mode: full FD while evaluations x input elements stay below this

_REFERENCES = {"autograd": ("autograd",), "finite-difference": ("fd",), "finite_difference": ("fd",),
               "fd": ("fd",), "both": ("autograd", "fd")}
_REF_LABEL = {"autograd": "autograd", "fd": "finite-difference"}
_LOW = (torch.float16, torch.bfloat16)

# (rtol, atol as a fraction of the gradient's largest magnitude) for the dtype under test
_TOL = {
    torch.float64: (1e-7, 1e-9),
    torch.float32: (2e-4, 2e-5),
    torch.float16: (2e-2, 2e-2),
    torch.bfloat16: (8e-2, 8e-2),
}


def tolerances(dtype: torch.dtype, scale: float, *, reference: str = "autograd", order: int = 1) -> tuple[float, float]:
    """Default ``(atol, rtol)`` for gradients of ``dtype`` whose largest magnitude is ``scale``.

    atol = a(dtype) * scale, so a tolerance means the same for gradients of 1e-6 and of 1e6.
    Against finite differences (O(h^2) truncation, O(eps/h) rounding) rtol is at least 1e-5.
    """
    rtol, a = _TOL.get(dtype, _TOL[torch.float32])
    if reference == "fd":
        rtol, a = max(rtol, 1e-5), max(a, 1e-6)
    if order == 2 and dtype != torch.float64:
        rtol, a = rtol * 10, a * 10
    return a * scale, rtol


# -- the report ----------------------------------------------------------------------

@dataclass
class Result:
    """One comparison: one input, one device, one reference (and order 1, or 2 for double backward)."""

    name: str
    device: str
    dtype: str
    shape: tuple
    ok: bool
    max_abs_err: float
    max_rel_err: float
    worst_index: tuple | None
    manual_value: float | None
    reference_value: float | None
    mismatched: int
    numel: int
    atol: float
    rtol: float
    hint: str | None = None
    reference: str = "autograd"       # what the subject was compared with
    subject: str = "manual"           # "manual", or "autograd" when no manual was given
    order: int = 1                    # 2: Hessian-vector products (double_backward=True)
    max_abs_index: tuple | None = None
    max_rel_index: tuple | None = None
    fd_mode: str | None = None        # "full" | "fast" when reference is finite-difference
    fd_evaluations: int | None = None
    projections: int | None = None    # fast mode: ``mismatched`` counts failing projections of these
    kinks: int = 0                    # elements (full) or projections (fast) within a step of a kink
    nondeterminism: float | None = None  # max |run1 - run2| of the subject's backward (CUDA)
    note: str | None = None

    @property
    def label(self) -> str:
        extra = "" if self.order == 1 else " (2nd order)"
        return f"{self.name}{extra}"

    def to_dict(self) -> dict:
        d = asdict(self)
        for k, v in d.items():
            if isinstance(v, float) and not math.isfinite(v):
                d[k] = None  # JSON has no NaN/inf: an infinite relative error (reference 0) becomes null
            elif isinstance(v, tuple):
                d[k] = list(v)
        return d

    def describe(self) -> str:
        return (f"{self.label}: {'ok' if self.ok else 'MISMATCH'} vs {self.reference} "
                f"[{'x'.join(map(str, self.shape)) or 'scalar'}, {self.dtype}, {self.device}]")


@dataclass
class Report:
    """Everything ``check`` found; ``ok`` is True when every result is.

    ``results`` holds one ``Result`` per checked input, device and reference (two per input with
    ``reference="both"``), plus order-2 results (Hessian-vector products) with ``double_backward``.
    ``summed``/``loss_shape`` say whether the loss was non-scalar and summed; ``notes`` are extra
    lines (summation, nondeterminism).
    """

    results: list = field(default_factory=list)
    summed: bool = False              # the loss returned a non-scalar tensor and it was summed
    loss_shape: tuple = ()
    reference: str = "autograd"
    double_backward: bool = False
    seed: int = 0
    notes: list = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.results)

    @property
    def failures(self) -> list:
        return [r for r in self.results if not r.ok]

    def to_dict(self) -> dict:
        return {"ok": self.ok, "summed": self.summed, "loss_shape": list(self.loss_shape),
                "reference": self.reference, "double_backward": self.double_backward, "seed": self.seed,
                "notes": list(self.notes), "results": [r.to_dict() for r in self.results]}

    def __str__(self) -> str:
        head = (f"gradcheck: {'ok' if self.ok else 'FAILED'} - {len(self.results) - len(self.failures)}/"
                f"{len(self.results)} comparisons passed (reference {self.reference})")
        rows = [("input", "device", "dtype", "shape", "reference", "max abs err", "max rel err", "worst index",
                 "verdict")]
        for r in self.results:
            verdict = "ok" if r.ok else f"MISMATCH {r.mismatched}/{r.projections or r.numel}"
            rows.append((r.label, r.device, r.dtype, "x".join(map(str, r.shape)) or "scalar",
                         r.reference + (f" ({r.fd_mode})" if r.fd_mode else ""), _fmt(r.max_abs_err),
                         _fmt(r.max_rel_err), _fmt_index(r.worst_index), verdict))
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
        lines = [head] + ["  " + "  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows]
        for r in self.results:
            if r.hint and not r.ok:
                lines.append(f"  hint ({r.label}): {r.hint}")
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)

    def failure_message(self) -> str:
        """Text that reads like ``torch.testing.assert_close``'s, one block per failing comparison."""
        fails = self.failures
        lines = [f"Manual gradients are not close to the reference for {len(fails)} of {len(self.results)} "
                 f"comparisons!"]
        for r in fails:
            lines += ["", f"Gradient w.r.t. {r.label!r} ({r.device}, {r.dtype}, reference {r.reference}"
                          + (f", {r.fd_mode} finite differences" if r.fd_mode else "") + "):"]
            if r.projections:
                lines.append(f"Mismatched projections: {r.mismatched} / {r.projections} "
                             f"({_pct(r.mismatched, r.projections)}) of an input of {r.numel} elements")
            else:
                lines.append(f"Mismatched elements: {r.mismatched} / {r.numel} ({_pct(r.mismatched, r.numel)})")
            lines.append(f"Greatest absolute difference: {_fmt(r.max_abs_err)} at index "
                         f"{_fmt_index(r.max_abs_index or r.worst_index)} (up to {_fmt(r.atol)} allowed)")
            lines.append(f"Greatest relative difference: {_fmt(r.max_rel_err)} at index "
                         f"{_fmt_index(r.max_rel_index or r.worst_index)} (up to {_fmt(r.rtol)} allowed)")
            if r.worst_index is not None:
                lines.append(f"Worst element {_fmt_index(r.worst_index)}: manual {_fmt(r.manual_value)}, "
                             f"reference {_fmt(r.reference_value)}")
            if r.kinks:
                lines.append(f"{r.kinks} {'projections' if r.projections else 'elements'} sat at a kink "
                             f"(accepted anywhere between the one-sided differences)")
            if r.nondeterminism:
                lines.append(f"Nondeterminism (two runs of the backward differ by): {_fmt(r.nondeterminism)}")
            if r.note:
                lines.append(r.note)
            if r.hint:
                lines.append(f"Hint: {r.hint}")
        lines += [f"Note: {n}" for n in self.notes]
        return "\n".join(lines)


def _fmt(v) -> str:
    if v is None:
        return "-"
    v = float(v)
    if not math.isfinite(v):
        return str(v)
    return "0" if v == 0 else (f"{v:.4g}" if 1e-3 <= abs(v) < 1e5 else f"{v:.3e}")


def _fmt_index(idx) -> str:
    if idx is None:
        return "-"
    return "(" + ", ".join(str(i) for i in idx) + ("," if len(idx) == 1 else "") + ")"


def _pct(k: int, n: int) -> str:
    return f"{100.0 * k / n:.1f}%" if n else "-"


def _describe(t) -> str:
    if isinstance(t, torch.Tensor):
        return f"Tensor[{'x'.join(map(str, t.shape)) or 'scalar'}, {str(t.dtype).replace('torch.', '')}, {t.device}]"
    return repr(t)


# -- argument parsing ------------------------------------------------------------------

def _is_float(t) -> bool:
    return isinstance(t, torch.Tensor) and t.is_floating_point()


def _parse_dtype(dtype):
    if dtype is None or isinstance(dtype, torch.dtype):
        if dtype is not None and not dtype.is_floating_point:
            raise InvalidParameterError(f"dtype={dtype} is not a floating-point dtype; use float64, float32, "
                                        f"float16 or bfloat16.")
        return dtype
    if isinstance(dtype, str):
        d = getattr(torch, dtype.replace("torch.", ""), None)
        if isinstance(d, torch.dtype) and d.is_floating_point:
            return d
    raise InvalidParameterError(f"dtype={dtype!r} is not a floating-point dtype; use float64, float32, "
                                f"float16 or bfloat16.")


def _parse_devices(device, inputs) -> list:
    """A list of ``torch.device`` (``None``: leave the inputs where they are)."""
    if device is None:
        return [None]
    if isinstance(device, (list, tuple)):
        return [d for dev in device for d in _parse_devices(dev, inputs)]
    if device == "all":
        return [torch.device("cpu")] + [torch.device("cuda", i) for i in range(torch.cuda.device_count())]
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise UnknownDeviceError(f"unknown device {device!r}: use 'cpu', 'cuda', 'cuda:N' or 'all'.") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise UnknownDeviceError(f"device {device!r} is not available: torch.cuda.is_available() is False "
                                     f"(use device='cpu', or 'all' for CPU plus every visible GPU).")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise UnknownDeviceError(f"device {device!r} does not exist: only {torch.cuda.device_count()} "
                                     f"CUDA device(s) are visible.")
        return [dev]
    if dev.type != "cpu":
        raise UnknownDeviceError(f"unknown device {device!r}: use 'cpu', 'cuda', 'cuda:N' or 'all'.")
    return [dev]


def _validate(loss, inputs, manual, wrt, reference):
    if not callable(loss):
        raise InvalidInputError(f"loss must be a callable taking the inputs as keyword arguments, got "
                                f"{type(loss).__name__}.")
    if manual is not None and not callable(manual):
        raise InvalidInputError(f"manual must be a callable returning a dict of gradients, got "
                                f"{type(manual).__name__}.")
    if not isinstance(inputs, Mapping) or not inputs:
        raise InvalidInputError("inputs must be a non-empty dict mapping names to tensors, got "
                                f"{type(inputs).__name__}.")
    for k in inputs:
        if not isinstance(k, str):
            raise InvalidInputError(f"input names must be strings, got {k!r}.")
    if reference not in _REFERENCES:
        raise InvalidParameterError(f"reference={reference!r} is not one of 'autograd', 'finite-difference' "
                                    f"(or 'fd') and 'both'.")
    if wrt is not None:
        if isinstance(wrt, str):
            wrt = (wrt,)
        wrt = tuple(wrt)
        for n in wrt:
            if n not in inputs:
                raise InvalidParameterError(f"wrt names {n!r}, which is not an input (inputs: "
                                            f"{', '.join(inputs)}).")
            _check_differentiable(n, inputs[n])
    return wrt


def _check_differentiable(name, t):
    if not isinstance(t, torch.Tensor):
        raise InvalidInputError(f"input {name!r} in wrt is a {type(t).__name__}, not a tensor; only "
                                f"floating-point tensors have gradients.")
    if not t.is_floating_point():
        raise InvalidInputError(f"input {name!r} in wrt is an integer/bool tensor ({t.dtype}); only "
                                f"floating-point tensors have gradients (leave it out of wrt).")


# -- running the user's functions -------------------------------------------------------

@contextlib.contextmanager
def _no_tf32():
    """References on CUDA are computed in full float32 (TF32 off), then restored."""
    if not torch.cuda.is_available():
        yield
        return
    old = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


class _Runner:
    """Calls ``loss``/``manual`` with a seeded RNG (the caller's RNG state is restored afterwards),
    detecting in-place writes into the inputs."""

    def __init__(self, seed: int):
        self.seed = seed

    @contextlib.contextmanager
    def seeded(self, kwargs: dict):
        cuda = sorted({t.device.index or 0 for t in kwargs.values()
                       if isinstance(t, torch.Tensor) and t.device.type == "cuda"})
        cpu_state = torch.default_generator.get_state()
        cuda_states = [torch.cuda.get_rng_state(i) for i in cuda]
        torch.default_generator.manual_seed(self.seed)
        for i in cuda:
            with torch.cuda.device(i):
                torch.cuda.manual_seed(self.seed)
        try:
            yield
        finally:
            torch.default_generator.set_state(cpu_state)
            for i, st in zip(cuda, cuda_states):
                torch.cuda.set_rng_state(st, i)

    def __call__(self, fn, kwargs: dict, who: str):
        before = {n: t._version for n, t in kwargs.items() if isinstance(t, torch.Tensor)}
        try:
            with self.seeded(kwargs):
                out = fn(**kwargs)
        except RuntimeError as e:
            msg = str(e)
            if "in-place operation" in msg and ("leaf Variable" in msg or "view of a leaf" in msg):
                name = self._culprit(fn, kwargs)
                raise InPlaceModificationError(
                    f"{who} writes into its input {name!r} in place; it must leave its inputs unchanged "
                    f"(work on a copy, e.g. {name}.clone(), or use the out-of-place op).") from None
            raise
        for n, v in before.items():
            if kwargs[n]._version != v:
                raise InPlaceModificationError(
                    f"{who} writes into its input {n!r} in place; it must leave its inputs unchanged "
                    f"(work on a copy, e.g. {n}.clone(), or use the out-of-place op).")
        return out

    def _culprit(self, fn, kwargs) -> str:
        probe = {n: (t.detach().clone() if isinstance(t, torch.Tensor) else t) for n, t in kwargs.items()}
        before = {n: t._version for n, t in probe.items() if isinstance(t, torch.Tensor)}
        try:
            with torch.no_grad(), self.seeded(probe):
                fn(**probe)
        except Exception:
            pass
        for n, v in before.items():
            if probe[n]._version != v:
                return n
        return next((n for n, t in kwargs.items() if isinstance(t, torch.Tensor) and t.requires_grad), "?")


def _copy(t, device, dtype):
    """A private copy; floating tensors cast to ``dtype``; memory format kept."""
    if not isinstance(t, torch.Tensor):
        return t
    target_dtype = dtype if (dtype is not None and t.is_floating_point()) else t.dtype
    target_device = device if device is not None else t.device
    out = t.detach().to(device=target_device, dtype=target_dtype)
    if out.data_ptr() == t.data_ptr() and out.numel():  # .to() returned the caller's storage
        out = out.clone(memory_format=torch.preserve_format)
    return out


def _leaves(tensors: dict, names) -> dict:
    return {n: (t.detach().requires_grad_(True) if n in names else t) for n, t in tensors.items()}


def _loss_out(out, summed_info: dict):
    if not isinstance(out, torch.Tensor):
        raise LossError(f"loss must return a torch.Tensor, got {type(out).__name__}.")
    summed_info["shape"] = tuple(out.shape)
    summed_info["summed"] = out.dim() > 0
    return out.sum() if out.dim() > 0 else out


def _autograd(run, loss, tensors: dict, wrt, info: dict, *, create_graph: bool = False, allow_unused=False):
    """(grads dict, leaves dict): ``autograd.grad`` of the summed loss."""
    leaves = _leaves(tensors, wrt)
    with torch.enable_grad():
        out = _loss_out(run(loss, leaves, "loss"), info)
        if not out.requires_grad:
            raise LossDependencyError(f"the loss does not depend on any of {', '.join(map(repr, wrt))}: its "
                                      f"result has no grad_fn (was it computed under no_grad, detached, or from "
                                      f"other tensors?).")
        grads = torch.autograd.grad(out, [leaves[n] for n in wrt], allow_unused=True, create_graph=create_graph)
    grads = list(grads)
    for i, (n, g) in enumerate(zip(wrt, grads)):
        if g is None and allow_unused:
            grads[i] = torch.zeros_like(leaves[n])
        elif g is None:
            raise LossDependencyError(f"the loss does not depend on input {n!r}: autograd finds no path from it to "
                                      f"the loss (remove it from wrt, or check that the loss uses it).")
    return dict(zip(wrt, grads)), leaves


def _check_manual(res, inputs: dict, work: dict, wrt):
    if not isinstance(res, Mapping):
        raise ManualGradientError(f"manual must return a dict mapping input names to gradients, got "
                                  f"{type(res).__name__}.")
    for n in res:
        if n not in inputs:
            raise ManualGradientError(f"manual returned a gradient for {n!r}, which is not one of the inputs "
                                      f"({', '.join(inputs)}).")
    names = tuple(n for n in res if res[n] is not None) if wrt is None else wrt
    if not names:
        raise ManualGradientError("manual returned no gradients (an empty dict, or only None).")
    for n in names:
        g = res.get(n)
        if g is None:
            raise ManualGradientError(f"manual returned no gradient for {n!r}, which wrt asks for.")
        _check_differentiable(n, work[n])
        if not isinstance(g, torch.Tensor):
            raise ManualGradientError(f"manual's gradient for {n!r} is a {type(g).__name__}, not a tensor.")
        t = work[n]
        if tuple(g.shape) != tuple(t.shape):
            raise ManualGradientError(f"manual's gradient for {n!r} has shape {tuple(g.shape)} but {n!r} has shape "
                                      f"{tuple(t.shape)}.")
        if g.dtype != t.dtype:
            raise ManualGradientError(f"manual's gradient for {n!r} has dtype {g.dtype} but {n!r} is {t.dtype}.")
        if g.device != t.device:
            raise ManualGradientError(f"manual's gradient for {n!r} is on {g.device} but {n!r} is on {t.device}.")
    return names


def _first_nonfinite(t: torch.Tensor):
    bad = ~torch.isfinite(t)
    if not bool(bad.any()):
        return None
    flat = int(bad.reshape(-1).nonzero()[0])
    return _fd.unravel(flat, t.shape), float(t.reshape(-1)[flat])


def _check_finite(t: torch.Tensor, name: str, what: str):
    hit = _first_nonfinite(t)
    if hit is not None:
        idx, v = hit
        raise NonFiniteReferenceError(f"the {what} gradient of {name!r} is {v} at index {idx}, so nothing can be "
                                      f"compared there (the loss is not differentiable or overflows at this point).")


# -- comparing ------------------------------------------------------------------------------

@dataclass
class _Cmp:
    ok: bool
    max_abs_err: float
    max_rel_err: float
    worst_index: tuple | None
    manual_value: float | None
    reference_value: float | None
    mismatched: int
    numel: int
    max_abs_index: tuple | None
    max_rel_index: tuple | None
    bad: Any = None       # bool mask (kept for the diagnosis)
    ratio: float = 0.0    # worst error / allowed


def _compare(m: torch.Tensor, r: torch.Tensor, atol: float, rtol: float, lo=None, hi=None, kink=None) -> _Cmp:
    """Elementwise: |m - r| (or m's distance to [lo, hi]) against atol + rtol |r|; ``kink`` elements pass."""
    m = m.detach()
    if m.device != r.device or m.dtype != r.dtype:
        m = m.to(device=r.device, dtype=torch.float64)
        r = r.to(torch.float64)
        if lo is not None:
            lo, hi = lo.to(r.device, torch.float64), hi.to(r.device, torch.float64)
    n = r.numel()
    if n == 0:
        return _Cmp(True, 0.0, 0.0, None, None, None, 0, 0, None, None)
    if lo is None:
        diff = (m - r).abs()
    else:
        diff = torch.maximum(lo - m, m - hi).clamp_min(0)
        if kink is not None:
            diff = diff.masked_fill(kink.to(diff.device), 0)
    if bool(diff.isnan().any()):
        diff = diff.nan_to_num(nan=math.inf)
    ra = r.abs()
    allowed = ra.mul(rtol).add_(atol)
    bad = diff > allowed
    mismatched = int(bad.sum())
    fd = diff.reshape(-1)
    ia = int(fd.argmax())
    max_abs = float(fd[ia])
    with torch.no_grad():
        rel = diff / ra
        rel = torch.where(diff == 0, torch.zeros((), dtype=rel.dtype, device=rel.device), rel)
    fr = rel.reshape(-1)
    ir = int(fr.nan_to_num(nan=math.inf).argmax())
    max_rel = float(fr[ir])
    viol = (diff / allowed.clamp_min(torch.finfo(allowed.dtype).tiny)).reshape(-1)
    iw = int(viol.nan_to_num(nan=math.inf).argmax())
    ratio = float(viol[iw])
    shape = r.shape
    return _Cmp(mismatched == 0, max_abs, max_rel, _fd.unravel(iw, shape), float(m.reshape(-1)[iw]),
                float(r.reshape(-1)[iw]), mismatched, n, _fd.unravel(ia, shape), _fd.unravel(ir, shape),
                bad if mismatched else None, ratio)


def _result(name, dev, dtype, shape, cmp: _Cmp, atol, rtol, **kw) -> Result:
    return Result(name=name, device=str(dev), dtype=str(dtype).replace("torch.", ""), shape=tuple(shape),
                  ok=cmp.ok, max_abs_err=cmp.max_abs_err, max_rel_err=cmp.max_rel_err,
                  worst_index=cmp.worst_index, manual_value=cmp.manual_value, reference_value=cmp.reference_value,
                  mismatched=cmp.mismatched, numel=cmp.numel, atol=float(atol), rtol=float(rtol),
                  max_abs_index=cmp.max_abs_index, max_rel_index=cmp.max_rel_index, **kw)


def _absmax(t) -> float:
    return float(t.detach().abs().max()) if t is not None and t.numel() else 0.0


def _scales(refs: dict) -> dict:
    """Per-input magnitude for the tolerances: max |ref|, floored at 1% of the largest input's."""
    mags = {n: _absmax(r) for n, r in refs.items()}
    top = max(mags.values(), default=0.0)
    return {n: max(v, 1e-2 * top, 1e-30) for n, v in mags.items()}


# -- the engine ----------------------------------------------------------------------------------

def check(loss: Callable, inputs: Mapping[str, torch.Tensor], manual: Callable | None = None, *, wrt=None,
          reference: str = "autograd", device=None, dtype=None, atol: float | None = None,
          rtol: float | None = None, double_backward: bool = False, seed: int = 0,
          fd_mode: str = "auto", fd_limit: int | None = DEFAULT_FD_LIMIT, fd_eps: float = 1e-6,
          fd_projections: int = 4, fd_work: float | None = DEFAULT_FD_WORK, repeat: int | None = None, diagnose: bool = True,
          allow_unused: bool = False) -> Report:
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
    """
    wrt = _validate(loss, inputs, manual, wrt, reference)
    dtype = _parse_dtype(dtype)
    devices = _parse_devices(device, inputs)
    if fd_mode not in ("auto", "full", "fast"):
        raise InvalidParameterError(f"fd_mode={fd_mode!r} is not one of 'auto', 'full' and 'fast'.")
    refs = _REFERENCES[reference]
    if manual is None:  # autograd itself is the subject: finite differences are the oracle
        refs = ("fd",) + (("autograd",) if "autograd" in refs and reference == "both" else ())
    report = Report(reference=reference, double_backward=double_backward, seed=seed)
    opts = dict(loss=loss, inputs=inputs, manual=manual, wrt=wrt, refs=refs, dtype=dtype, atol=atol, rtol=rtol,
                double_backward=double_backward, seed=seed, fd_mode=fd_mode, fd_limit=fd_limit, fd_eps=fd_eps,
                fd_projections=fd_projections, fd_work=fd_work, repeat=repeat, diagnose=diagnose,
                allow_unused=allow_unused)
    for dev in devices:
        _Device(report, dev, **opts).run()
    if report.summed:
        report.notes.insert(0, f"the loss returned a tensor of shape {tuple(report.loss_shape)}; it was summed "
                               f"to a scalar before differentiating")
    return report


def assert_grads_match(loss: Callable, inputs: Mapping[str, torch.Tensor], manual: Callable | None = None,
                       **options) -> Report:
    """``check(...)``, raising ``AssertionError`` (worded like ``torch.testing.assert_close``) on a mismatch."""
    report = check(loss, inputs, manual, **options)
    if not report.ok:
        raise AssertionError(report.failure_message())
    return report


class _Device:
    """One device's run of ``check``."""

    def __init__(self, report: Report, dev, *, loss, inputs, manual, wrt, refs, dtype, atol, rtol, double_backward,
                 seed, fd_mode, fd_limit, fd_eps, fd_projections, fd_work, repeat, diagnose, allow_unused):
        self.report, self.loss, self.inputs, self.manual = report, loss, inputs, manual
        self.wrt, self.refs, self.dtype, self.user_atol, self.user_rtol = wrt, refs, dtype, atol, rtol
        self.double_backward, self.seed = double_backward, seed
        self.fd_mode, self.fd_limit, self.fd_eps, self.fd_projections = fd_mode, fd_limit, fd_eps, fd_projections
        self.fd_work = fd_work
        self.diagnose, self.allow_unused = diagnose, allow_unused
        self.run_fn = _Runner(seed)
        self.work = {n: _copy(t, dev, dtype) for n, t in inputs.items()}
        first = next((t for t in self.work.values() if isinstance(t, torch.Tensor)), None)
        self.dev = dev if dev is not None else (first.device if first is not None else torch.device("cpu"))
        self.is_cuda = self.dev.type == "cuda"
        self.repeat = repeat if repeat is not None else (2 if self.is_cuda else 1)
        self.info: dict = {}
        self._ref64 = None

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
        work = self.work
        floating = tuple(n for n, t in work.items() if _is_float(t))
        hv_subject = None
        nondet: dict = {}
        # -- the subject ---------------------------------------------------------------------------------
        if self.manual is not None:
            call_in = _leaves(work, self.wrt or floating) if self.double_backward else work
            with (torch.enable_grad() if self.double_backward else contextlib.nullcontext()):
                res = self.run_fn(self.manual, call_in, "manual")
            wrt = _check_manual(res, self.inputs, work, self.wrt)
            subject = {n: res[n] for n in wrt}
            if self.double_backward:
                hv_subject = self._manual_hvp(subject, call_in, wrt)
            for _ in range(self.repeat - 1):
                again = self.run_fn(self.manual, work, "manual")
                for n in wrt:
                    g2 = again.get(n) if isinstance(again, Mapping) else None
                    d = _absmax(g2.detach() - subject[n].detach()) if isinstance(g2, torch.Tensor) else math.nan
                    nondet[n] = max(nondet.get(n, 0.0), d)
            subject = {n: g.detach() for n, g in subject.items()}
            subject_kind = "manual"
        else:
            wrt = self.wrt or floating
            if not wrt:
                raise InvalidInputError("inputs hold no floating-point tensor to differentiate.")
            grads, leaves = _autograd(self.run_fn, self.loss, work, wrt, self.info,
                                      create_graph=self.double_backward, allow_unused=self.allow_unused)
            if self.double_backward:
                hv_subject = self._hvp_of(grads, leaves, wrt)
            for _ in range(self.repeat - 1):
                again, _l = _autograd(self.run_fn, self.loss, work, wrt, {}, allow_unused=self.allow_unused)
                for n in wrt:
                    nondet[n] = max(nondet.get(n, 0.0), _absmax(again[n] - grads[n].detach()))
            subject = {n: g.detach() for n, g in grads.items()}
            subject_kind = "autograd"
        self.wrt_names = wrt
        self.subject = subject

        # -- references ----------------------------------------------------------------------------------
        results = []
        for kind in self.refs:
            if kind == "autograd":
                results += self._vs_autograd(subject, subject_kind, nondet, hv_subject)
            else:
                hv = hv_subject if subject_kind == "autograd" else None
                results += self._vs_fd(subject, subject_kind, nondet, hv)
        rep.results += results
        rep.summed = rep.summed or bool(self.info.get("summed"))
        if "shape" in self.info:
            rep.loss_shape = self.info["shape"]
        if any(v for v in nondet.values()):
            rep.notes.append(f"{self.dev}: the backward is nondeterministic (two runs differ by up to "
                             f"{_fmt(max(nondet.values()))}); reported as 'nondeterminism', separate from the error")
        # Finally: nothing the user passed was changed.
        self._check_untouched()

    # -- references ----------------------------------------------------------------------------------------
    def _ref_inputs(self):
        """Where autograd's reference runs: the subject's own copies (CPU float32/64) or CPU float64."""
        dt = next(iter(self.subject.values())).dtype
        if self.is_cuda or dt in _LOW:
            return self.ref64(), "autograd (cpu, float64)"
        return self.work, "autograd"

    def _vs_autograd(self, subject, subject_kind, nondet, hv_subject):
        tensors, label = self._ref_inputs()
        wrt = self.wrt_names
        if subject_kind == "autograd" and tensors is self.work:
            return []  # autograd against itself on the same device and dtype says nothing
        with _no_tf32():
            ref, leaves = _autograd(self.run_fn, self.loss, tensors, wrt, self.info,
                                    create_graph=self.double_backward, allow_unused=self.allow_unused)
        for n in wrt:
            _check_finite(ref[n].detach(), n, "reference (autograd)")
        refs = {n: ref[n].detach() for n in wrt}
        out = self._results(subject, refs, "autograd", label, subject_kind, nondet, tensors)
        if self.double_backward:
            hv_ref = self._hvp_of(ref, leaves, wrt)
            out += self._hvp_results(hv_subject, hv_ref, label, subject_kind)
        return out

    def _results(self, subject, refs, kind, label, subject_kind, nondet, ref_tensors, *, lohi=None, extra=None):
        out = []
        scales = _scales(refs)
        for n in self.wrt_names:
            m, r = subject[n], refs[n]
            atol, rtol = self._tol(m.dtype, scales[n], kind)
            lo, hi, kink = (lohi[n] if lohi and n in lohi else (None, None, None))
            cmp = _compare(m, r, atol, rtol, lo, hi, kink)
            kw = dict(extra[n]) if extra and n in extra else {}
            res = _result(n, self.dev, m.dtype, m.shape, cmp, atol, rtol, reference=label, subject=subject_kind,
                          nondeterminism=nondet.get(n), **kw)
            if not cmp.ok and self.diagnose:
                res.hint = self._hint(n, m, r, cmp, ref_tensors)
            out.append(res)
        return out

    def _tol(self, dtype, scale, kind, order=1):
        atol, rtol = tolerances(dtype, scale, reference=kind, order=order)
        if kind == "fd":  # a central difference cannot resolve less than its rounding noise ~ eps |f| / h
            atol = max(atol, getattr(self, "_fd_noise", 0.0))
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

    # -- finite differences --------------------------------------------------------------------------------
    def _vs_fd(self, subject, subject_kind, nondet, hv_subject):
        tensors = {n: (t.clone(memory_format=torch.contiguous_format) if isinstance(t, torch.Tensor) else t)
                   for n, t in self.ref64().items()}
        ev = _fd.Evaluator(self.loss, tensors, lambda fn, kw: self.run_fn(fn, kw, "loss"))
        with torch.no_grad():
            out0 = _loss_out(self.run_fn(self.loss, tensors, "loss"), self.info)
        # Cost of one loss evaluation, in input elements: deterministic, unlike a timing.
        per_eval = sum(t.numel() for t in tensors.values() if isinstance(t, torch.Tensor))
        f0 = float(out0.double())
        self._fd_noise = 10 * 2.220446049250313e-16 * abs(f0) / self.fd_eps
        if not math.isfinite(f0):
            raise NonFiniteReferenceError(f"the loss itself is {f0} at the given inputs, so finite differences "
                                          f"cannot be taken.")
        h = self.fd_eps
        gen = torch.Generator().manual_seed(self.seed)
        modes = self._fd_modes(per_eval)
        out = []
        pending_full = {}
        for n in self.wrt_names:
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
            keep = self.wrt_names
            self.wrt_names = tuple(n for n in keep if n in pending_full)
            try:
                out += self._results(subject, refs, "fd", "finite-difference", subject_kind, nondet, tensors,
                                     lohi=lohi, extra=extra)
            finally:
                self.wrt_names = keep
        # fast mode: random projections, worst element found by bisection on failure
        scales = _scales({n: subject[n] for n in self.wrt_names})
        for n in self.wrt_names:
            if modes[n] != "fast":
                continue
            m = subject[n].detach().to("cpu", torch.float64)
            atol, rtol = self._tol(subject[n].dtype, scales[n], "fd")
            start = ev.count
            projs = _fd.projections(ev, n, f0, h, m, self.fd_projections, gen, atol, rtol)
            unverified = 0
            for p in projs:
                if not (math.isfinite(p.central)):
                    raise NonFiniteReferenceError(f"the finite-difference reference for {n!r} is {p.central} "
                                                  f"along a random direction (the loss overflows near this point).")
                if p.kink:  # check each one-sided difference against the gradient just off the kink
                    errs = []
                    for side, d in ((1.0, p.dp), (-1.0, p.dm)):
                        g = self._subject_at(n, tensors, side * 0.5 * h * p.u)
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
            res = Result(name=n, device=str(self.dev), dtype=str(subject[n].dtype).replace("torch.", ""),
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
                if self.diagnose:
                    res.hint = ("located by bisection in fast finite-difference mode; re-run with "
                                "reference='autograd' (or a smaller input with fd_mode='full') for a diagnosis")
            res.fd_evaluations = ev.count - start
            out.append(res)
        if hv_subject is not None:  # autograd's double backward vs finite differences of its gradient
            out += self._hvp_fd(hv_subject, tensors)
        return out

    def _subject_at(self, name, tensors, delta):
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

    def _fd_modes(self, per_eval: int) -> dict:
        """Per input: "full" while within fd_limit evaluations (and, in auto mode, fd_work), else "fast"."""
        modes, budget = {}, self.fd_limit
        work = self.fd_work
        for n in self.wrt_names:
            need = _fd.estimate_evaluations(self.work[n].numel())
            if self.fd_mode == "fast":
                modes[n] = "fast"
            elif self.fd_mode == "full":
                if budget is not None and need > budget:
                    raise FiniteDifferenceTooLargeError(
                        f"full finite differences for {n!r} ({self.work[n].numel()} elements) would need about "
                        f"{need} evaluations of the loss, above fd_limit={self.fd_limit}; use fd_mode='fast' "
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

    # -- second derivatives ----------------------------------------------------------------------------
    def _vectors(self, wrt, like: dict) -> dict:
        gen = torch.Generator().manual_seed(self.seed + 1)
        return {n: torch.randn(like[n].shape, generator=gen, dtype=torch.float64) for n in wrt}

    def _hvp_of(self, grads: dict, leaves: dict, wrt) -> dict | None:
        """d/dinputs <grads, v>: the Hessian-vector products; None where grads left the graph."""
        vs = self._vectors(wrt, grads)
        live = [n for n in wrt if isinstance(grads.get(n), torch.Tensor) and grads[n].requires_grad]
        if not live:
            return None
        with torch.enable_grad():
            s = sum((grads[n] * vs[n].to(grads[n].device, grads[n].dtype)).sum() for n in live)
            hv = torch.autograd.grad(s, [leaves[n] for n in wrt], allow_unused=True)
        return {n: (h.detach() if h is not None else torch.zeros_like(leaves[n]).detach()) for n, h in zip(wrt, hv)}

    def _manual_hvp(self, subject, leaves, wrt):
        hv = self._hvp_of(subject, leaves, wrt)
        self._detached = [n for n in wrt if not subject[n].requires_grad]
        return hv

    def _hvp_results(self, hv_subject, hv_ref, label, subject_kind):
        wrt = self.wrt_names
        out = []
        if hv_ref is None:
            hv_ref = {n: torch.zeros_like(self.subject[n], dtype=torch.float64, device="cpu") for n in wrt}
        scales = _scales(hv_ref)
        detached = getattr(self, "_detached", [])
        for n in wrt:
            r = hv_ref[n]
            atol, rtol = self._tol(self.subject[n].dtype, scales[n], "autograd", order=2)
            if hv_subject is None:
                cmp = _compare(torch.zeros_like(r), r, atol, rtol)
                res = _result(n, self.dev, self.subject[n].dtype, r.shape, cmp, atol, rtol, reference=label,
                              subject=subject_kind, order=2)
                res.ok = False
                res.hint = ("manual's gradients are detached from the autograd graph (no grad_fn), so they cannot "
                            "be differentiated again: avoid .detach(), .data, .item(), numpy and no_grad inside manual")
            else:
                cmp = _compare(hv_subject[n], r, atol, rtol)
                res = _result(n, self.dev, self.subject[n].dtype, r.shape, cmp, atol, rtol, reference=label,
                              subject=subject_kind, order=2)
                if not cmp.ok and self.diagnose:
                    res.hint = ("Hessian-vector products of manual's gradients differ from autograd's double "
                                "backward" + (f"; manual's gradient of {', '.join(map(repr, detached))} is detached "
                                              f"from the graph" if detached else ""))
            res.note = "order 2: d/d(input) <gradients, v> for a seeded random v"
            out.append(res)
        return out

    def _hvp_fd(self, hv_subject, tensors):
        """Autograd's HVP against central differences of its own gradient along v, in float64."""
        wrt = self.wrt_names
        vs = self._vectors(wrt, self.subject)
        h = self.fd_eps
        base = {n: t for n, t in tensors.items()}

        def grads_at(sign):
            shifted = dict(base)
            for n in wrt:
                shifted[n] = base[n] + sign * h * vs[n]
            g, _ = _autograd(self.run_fn, self.loss, shifted, wrt, {}, allow_unused=self.allow_unused)
            return g

        gp, gm = grads_at(1.0), grads_at(-1.0)
        ref = {n: (gp[n] - gm[n]) / (2 * h) for n in wrt}
        scales = _scales(ref)
        out = []
        for n in wrt:
            atol, rtol = self._tol(self.subject[n].dtype, scales[n], "fd", order=2)
            s = hv_subject if hv_subject is not None else {n: torch.zeros_like(ref[n])}
            cmp = _compare(s[n], ref[n], atol, rtol)
            res = _result(n, self.dev, self.subject[n].dtype, ref[n].shape, cmp, atol, rtol,
                          reference="finite-difference", subject="autograd", order=2, fd_mode="full")
            res.note = "order 2: autograd's double backward vs central differences of its gradient along v"
            out.append(res)
        return out

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
