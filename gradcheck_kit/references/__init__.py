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
from gradcheck_kit.references.finite_difference import FiniteDifferenceReference

__all__ = ["REFERENCES", "ALIASES", "AutogradReference", "FiniteDifferenceReference"]

#: key -> reference
REFERENCES = {"autograd": AutogradReference(), "fd": FiniteDifferenceReference()}

#: what ``check(reference=...)`` accepts -> the reference keys it runs, in order
ALIASES = {"autograd": ("autograd",), "finite-difference": ("fd",), "finite_difference": ("fd",),
           "fd": ("fd",), "both": ("autograd", "fd")}
