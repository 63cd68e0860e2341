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


class MissingRuleError(GradcheckKitError, NotImplementedError):
    """A differentiable op ran under ``use_rules(strict=True)`` with no rule to differentiate it."""

    def __init__(self, message: str, ops=()):
        super().__init__(message)
        self.ops = list(ops)

    @classmethod
    def from_ops(cls, ops) -> "MissingRuleError":
        """One sentence naming every missing op (each op and call site once) and what to do."""
        seen = list(dict.fromkeys(str(o) for o in ops))
        listed = ", ".join(seen)
        n = len(seen)
        return cls(f"{n} differentiable op{'s' if n != 1 else ''} ran under use_rules(strict=True) with no rule: "
                   f"{listed}; register a rule for {'them' if n != 1 else 'it'} (manual.register) or use "
                   f"use_rules(strict=False) to let autograd differentiate {'them' if n != 1 else 'it'}.", ops)


class EmitError(GradcheckKitError):
    """``gradcheck_kit.emit`` could not return verified backward source (see the two subclasses)."""


class EmitUnsupportedError(EmitError, NotImplementedError):
    """The loss uses an op emit has no template for (the message names the op and its call site)."""


class EmitVerificationError(EmitError, AssertionError):
    """The emitted module's gradients disagree with autograd's (first or second order)."""
