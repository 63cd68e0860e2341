"""Modes: checks that run after the references, each in its own module, behind one interface.

A mode is an object with ``name`` and ``run(run, subject, results) -> list[Result]``: it gets
one device's ``DeviceRun``, the ``Subject`` and the references' results so far (which it may
annotate, e.g. with a hint), and returns its own results, labelled with ``Result.mode``.

* ``forward_ad.ForwardAD``: the loss's forward-mode derivatives (``check(forward_ad=True)``);
* ``higher_order.HigherOrder``: orders 3..N of the subject gradient (``check(order=N)``);
* ``batched.Batched``: the backward under ``torch.func.vmap`` over cotangents (``check(batched=True)``);
* ``complex.ConjugateConvention``: complex inputs' results, and a conjugated manual gradient named.

The compiled-vs-eager comparison is a reference (``references/compiled.py``), not a mode.
"""

from __future__ import annotations

from gradcheck_kit._check_errors import InvalidParameterError
from gradcheck_kit.errors import GradcheckKitError

__all__ = ["select", "ModeError", "first_clause"]


def first_clause(exc: BaseException) -> str:
    """``exc``'s message cut to its first line and first sentence, for a one-sentence error."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    text = lines[0] if lines else type(exc).__name__
    return text.split(". ")[0].rstrip(".:;, ")[:300]


class ModeError(GradcheckKitError, RuntimeError):
    """A mode cannot run on this loss (forward AD or vmap unsupported by one of its operations)."""


def select(*, forward_ad: bool = False, order: int | None = None, batched: bool = False,
           complex_names=()) -> list:
    """The modes ``check()`` runs, in order; ``order`` must be None or an int >= 1."""
    if order is not None and (isinstance(order, bool) or not isinstance(order, int) or order < 1):
        raise InvalidParameterError(f"order={order!r} is not an integer >= 1 (1: gradients, 2: Hessian-vector "
                                    f"products as with double_backward=True, N: N-th order directional "
                                    f"derivatives).")
    modes = []
    if forward_ad:
        from gradcheck_kit.modes.forward_ad import ForwardAD
        modes.append(ForwardAD())
    if order is not None and order >= 3:
        from gradcheck_kit.modes.higher_order import HigherOrder
        modes.append(HigherOrder(order))
    if batched:
        from gradcheck_kit.modes.batched import Batched
        modes.append(Batched(forward=forward_ad))
    if complex_names:
        from gradcheck_kit.modes.complex import ConjugateConvention
        modes.append(ConjugateConvention(complex_names))  # last: it labels every result of a complex input
    return modes
