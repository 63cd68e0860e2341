"""Errors raised by ``check`` (``compare.py``) on bad input: one sentence each.

Each also derives from the builtin a caller would catch (``ValueError``, ``TypeError``,
``RuntimeError``), as the classes of ``errors.py`` do.
"""

from gradcheck_kit.errors import GradcheckKitError, InvalidInputError, InvalidParameterError

__all__ = ["InvalidInputError", "InvalidParameterError", "UnknownDeviceError", "ManualGradientError",
           "LossError", "LossDependencyError", "NonFiniteReferenceError", "InPlaceModificationError",
           "FiniteDifferenceTooLargeError", "NonFiniteLossError"]


class UnknownDeviceError(GradcheckKitError, ValueError):
    """``device`` names no device this process can run on."""


class ManualGradientError(GradcheckKitError, ValueError):
    """``manual`` returned a missing or extra name, or a gradient of the wrong shape, dtype or device."""


class LossError(GradcheckKitError, TypeError):
    """``loss`` did not return a tensor."""


class LossDependencyError(GradcheckKitError, ValueError):
    """``loss`` does not depend (differentiably) on an input it is checked against."""


class NonFiniteReferenceError(GradcheckKitError, ValueError):
    """The reference gradient holds NaN or Inf, so nothing can be compared there."""


class InPlaceModificationError(GradcheckKitError, RuntimeError):
    """``loss`` or ``manual`` wrote into one of its inputs in place."""


class FiniteDifferenceTooLargeError(GradcheckKitError, ValueError):
    """Full finite differences would need more loss evaluations than ``fd_limit`` allows."""


class NonFiniteLossError(GradcheckKitError, ValueError):
    """The loss itself is NaN or inf at the given inputs (named at its first non-finite element)."""
