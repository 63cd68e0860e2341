"""Errors raised by gradcheck-kit.

Every error the kit raises on bad input is a ``GradcheckKitError`` whose message
is one sentence naming the problem.  The subclasses also derive from the builtin
exception a caller would expect (``ValueError``, ``NotImplementedError``,
``TypeError``), so ``except ValueError`` keeps working.
"""


class GradcheckKitError(Exception):
    """Base class of every error gradcheck-kit raises on purpose."""


class InvalidParameterError(GradcheckKitError, ValueError):
    """A parameter of a rule or of ``check`` has a value that is not allowed."""


class UnsupportedError(GradcheckKitError, NotImplementedError):
    """A configuration that is valid for torch but that a rule does not implement."""


class InvalidInputError(GradcheckKitError, TypeError):
    """An input tensor has the wrong type, dtype, shape or device."""
