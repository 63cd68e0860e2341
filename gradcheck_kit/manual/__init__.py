"""gradcheck_kit.manual: explicit, differentiable backward rules, one per torch function.

    >>> from gradcheck_kit import manual
    >>> rule = manual.get("conv2d")
    >>> gx, gw, gb = rule.backward(g, x, w, b, stride=2, padding=1)

``torch.nn.grad`` drop-ins (``conv2d_input``, ``conv2d_weight``, ...) live in
``manual.conv`` and are re-exported here.

The rule engine (``manual.functional``): every rule as a torch-signature function whose
backward is the rule (``functional.conv2d(x, w, b, stride=2)``, any order differentiable),
and ``use_rules()``, inside which an unmodified model runs on the rules:

    >>> with manual.use_rules(strict=True) as session:
    ...     model(x).sum().backward()
    >>> session.ops, session.missing
"""

from gradcheck_kit.manual.registry import Rule, Sample, get, names, register, rules

__all__ = ["Rule", "Sample", "get", "names", "register", "rules",
           "conv1d_input", "conv2d_input", "conv3d_input",
           "conv1d_weight", "conv2d_weight", "conv3d_weight",
           "use_rules", "no_weight_gradients", "rules_manual"]

_ENGINE = {"use_rules", "no_weight_gradients", "rules_manual", "RuleSession"}

_DROP_INS = {f"conv{d}d_{w}" for d in (1, 2, 3) for w in ("input", "weight")}


def __getattr__(name):
    if name in _DROP_INS:
        from gradcheck_kit.manual import conv

        return getattr(conv, name)
    if name == "functional":
        import importlib

        return importlib.import_module("gradcheck_kit.manual.functional")
    if name in _ENGINE:
        from gradcheck_kit.manual import functional

        return getattr(functional, name)
    raise AttributeError(f"module 'gradcheck_kit.manual' has no attribute {name!r}")
