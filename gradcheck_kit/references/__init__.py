"""References: what a subject gradient is compared with, one module each, behind one interface.

A reference is an object with

* ``kind``: its short key (``"autograd"``, ``"fd"``), used in tolerances and ``Result.reference``;
* ``compare(run, subject) -> list[Result]``: compare ``subject`` (a ``Subject``: the gradients
  under test, their kind, and their Hessian-vector products when ``double_backward``) with this
  reference on one device's ``run`` (a ``gradcheck_kit._device.DeviceRun``: the private copies
  of the inputs, the seeded runner, tolerances, diagnosis).

``check(reference=...)`` names references through ``ALIASES``; adding a reference is one module
plus one entry in ``REFERENCES``.
"""

from __future__ import annotations

from gradcheck_kit.references.autograd import AutogradReference
from gradcheck_kit.references.compiled import CompiledReference
from gradcheck_kit.references.finite_difference import FiniteDifferenceReference

__all__ = ["REFERENCES", "ALIASES", "AutogradReference", "FiniteDifferenceReference", "CompiledReference",
           "expand"]

#: key -> reference
REFERENCES = {"autograd": AutogradReference(), "fd": FiniteDifferenceReference(), "compiled": CompiledReference()}

#: what ``check(reference=...)`` accepts -> the reference keys it runs, in order
ALIASES = {"autograd": ("autograd",), "finite-difference": ("fd",), "finite_difference": ("fd",),
           "fd": ("fd",), "both": ("autograd", "fd"), "compiled": ("compiled",)}


def expand(reference):
    """A list of names, or names joined by "+", as one alias: ``["both", "compiled"]`` -> "both+compiled"
    running autograd, fd and compiled; anything else is returned as given (``_validate`` judges it)."""
    if isinstance(reference, (list, tuple)):
        reference = "+".join(map(str, reference))
    if isinstance(reference, str) and "+" in reference and reference not in ALIASES:
        parts = reference.split("+")
        if all(p in ALIASES for p in parts):
            keys: list = []
            for p in parts:
                keys += [k for k in ALIASES[p] if k not in keys]
            ALIASES[reference] = tuple(keys)
    return reference
