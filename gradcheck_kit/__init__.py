"""gradcheck-kit: explicit, hand-written gradients in PyTorch, and the proof that they are right.

Public API (imported lazily, so ``gradcheck-kit --help`` never imports torch):

* ``check``, ``assert_grads_match``, ``Report``: the comparison engine (``compare.py``)
* ``GradcheckKitError``: base of every error the kit raises on bad input
* ``manual``: the registry of explicit backward rules
* ``derive``: exact symbolic Jacobians with sympy
"""

from gradcheck_kit._version import __version__
from gradcheck_kit.errors import GradcheckKitError

__all__ = ["__version__", "GradcheckKitError", "check", "assert_grads_match", "Report",
           "manual", "derive"]

_LAZY = {
    "check": ("gradcheck_kit.compare", "check"),
    "assert_grads_match": ("gradcheck_kit.compare", "assert_grads_match"),
    "Report": ("gradcheck_kit.compare", "Report"),
    "manual": ("gradcheck_kit.manual", None),
    "derive": ("gradcheck_kit.derive", None),
}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        mod = importlib.import_module(module)
        return mod if attr is None else getattr(mod, attr)
    raise AttributeError(f"module 'gradcheck_kit' has no attribute {name!r}")
