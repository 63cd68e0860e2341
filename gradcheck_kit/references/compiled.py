"""The compiled reference: autograd's gradient of ``torch.compile(loss)``.

``torch.compile`` traces the loss and generates its backward ahead of time (AOTAutograd, then
a backend: inductor by default), so the compiled backward is a different program from eager's:
a custom ``autograd.Function`` can take another path under compile, a decomposition can differ,
a fused kernel can round differently (jax #38096: ``jit(grad(f)) != grad(f)``; pytorch #139933).

* with ``manual``: manual's gradients against the compiled loss's;
* without (``check(loss, inputs, reference="compiled")``): eager autograd against compiled, i.e.
  compiled against eager directly.

Both run in the subject's own dtype and device, with the subject's tolerances.
``check(compile_options={...})`` is passed to ``torch.compile`` (e.g. ``{"backend": "aot_eager"}``,
which traces the backward as inductor does but runs it eagerly: fast, and no C++ compiler).
Where the compiler itself cannot run on this machine (no C++ compiler, no Triton for CUDA,
an unsupported Python) the reference is skipped with one line in ``Report.notes``; any other
failure of the compiled loss is a failed comparison naming the exception.
"""

from __future__ import annotations

import math

import torch

from gradcheck_kit._diff import _Cmp, _result
from gradcheck_kit._session import _autograd, _check_finite
from gradcheck_kit.errors import GradcheckKitError

__all__ = ["CompiledReference", "toolchain_problem"]

# exception class names (anywhere in the cause chain) that mean "the compiler cannot run here"
_TOOLCHAIN = ("InvalidCxxCompiler", "CppCompileError", "TritonMissing", "NoTritonError")
_TOOLCHAIN_TEXT = ("c++ compiler", "cannot find a working triton", "triton is not available",
                   "dynamo is not supported", "torch.compile is not supported", "no working c++ compiler")


def toolchain_problem(exc: BaseException) -> str | None:
    """One line saying why the compiler cannot run here, or None when ``exc`` is about the loss itself."""
    chain, e = [], exc
    while e is not None and all(e is not c for c in chain):  # the exception and its causes, outermost first
        chain.append(e)
        e = getattr(e, "inner_exception", None) or e.__cause__ or e.__context__
    hit = (next((c for c in chain if type(c).__name__ in _TOOLCHAIN), None)
           or next((c for c in reversed(chain) if any(t in str(c).lower() for t in _TOOLCHAIN_TEXT)), None))
    if hit is None:
        return None
    lines = [ln.strip() for ln in str(hit).splitlines() if ln.strip()]
    return f"{type(hit).__name__}: {lines[0] if lines else ''}"[:300]


class CompiledReference:
    kind = "compiled"

    def compare(self, run, subject) -> list:
        opts = dict(run.compile_options or {})
        backend = opts.get("backend", "inductor")
        backend_name = backend if isinstance(backend, str) else getattr(backend, "__name__", "custom")
        label = f"compiled ({backend_name})"
        wrt = run.wrt_names
        try:
            compiled = torch.compile(run.loss, **opts)
            ref, _ = _autograd(run.run_fn, compiled, run.work, wrt, {}, allow_unused=run.allow_unused)
        except GradcheckKitError:
            raise
        except Exception as e:  # noqa: BLE001 - sorted below: the machine's compiler, or the loss under compile
            problem = toolchain_problem(e)
            if problem is not None:
                run.report.notes.append(f"{run.dev}: the compiled reference was skipped: torch.compile (backend "
                                        f"{backend_name!r}) cannot run on this machine ({problem}).")
                return []
            return [self._crashed(run, subject, n, label, e) for n in wrt]
        if run.double_backward:
            note = (f"{run.dev}: the compiled reference checks first derivatives only (torch.compile's "
                    f"AOTAutograd does not support double backward); order 2 is checked by the "
                    f"{'autograd' if 'autograd' in run.refs else 'finite-difference'} reference")
            if note not in run.report.notes:
                run.report.notes.append(note)
        for n in wrt:
            _check_finite(ref[n].detach(), n, "reference (compiled)")
        refs = {n: ref[n].detach() for n in wrt}
        out = run.results(subject, refs, "autograd", label, run.work)
        for r in out:
            r.mode = "compiled"
            if subject.kind == "autograd":
                r.note = "eager autograd (the subject) against autograd of torch.compile(loss)"
                if not r.ok and run.diagnose:
                    r.hint = ("the compiled backward differs from eager's: look for code that branches on "
                              "torch.compiler.is_compiling(), a custom autograd.Function or op whose compiled "
                              "path differs, or a graph break that changes the computation")
        return out

    @staticmethod
    def _crashed(run, subject, name, label, exc):
        g = subject.grads[name]
        cmp = _Cmp(False, math.inf, math.inf, None, None, None, g.numel(), g.numel(), None, None)
        res = _result(name, run.dev, g.dtype, g.shape, cmp, 0.0, 0.0, reference=label, subject=subject.kind,
                      mode="compiled")
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        res.hint = (f"torch.compile(loss) fails where the eager loss runs: {type(exc).__name__}: {first}"[:400])
        return res
