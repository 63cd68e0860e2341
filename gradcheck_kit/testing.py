"""Assertions for test suites, usable without the pytest plugin.

    from gradcheck_kit.testing import assert_grads_match
    assert_grads_match(loss, {"x": x, "w": w}, manual=my_grads, reference="both")

It takes the arguments of ``gradcheck_kit.check`` and raises ``AssertionError`` worded like
``torch.testing.assert_close`` (mismatched elements k / n, greatest differences with their
index, and a hint) when a gradient does not match; otherwise it returns the report.
"""

from gradcheck_kit.compare import assert_grads_match, check

__all__ = ["assert_grads_match", "check"]
