"""reference="compiled": compiled against eager, manual against compiled, and the skip line.

aot_eager traces the backward as inductor does and runs it eagerly: fast, no C++ compiler.
"""

from __future__ import annotations

import torch
from torch.autograd import Function

from gradcheck_kit import check
from gradcheck_kit.references.compiled import toolchain_problem

FAST = {"backend": "aot_eager"}


class SinCompiledDiffers(Function):
    """sin, whose backward takes another path under torch.compile: the planted difference."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x.sin()

    @staticmethod
    def backward(ctx, g):
        x, = ctx.saved_tensors
        d = x.cos()
        if torch.compiler.is_compiling():
            d = d * 1.01
        return g * d


X = {"x": torch.tensor([0.1, -0.4, 0.9, 1.3], dtype=torch.float64)}


def test_compiled_backward_that_differs_from_eager_fails():
    rep = check(lambda x: SinCompiledDiffers.apply(x).sum(), X, reference="compiled", compile_options=FAST)
    assert [(r.name, r.mode, r.ok) for r in rep.results] == [("x", "compiled", False)], str(rep)
    assert rep.results[0].reference == "compiled (aot_eager)"
    assert "is_compiling" in rep.results[0].hint
    # eager alone is right: finite differences pass it
    assert check(lambda x: SinCompiledDiffers.apply(x).sum(), X).ok


def test_manual_against_compiled_and_autograd_passes():
    rep = check(lambda x: (x.sin() * x).sum(), X, lambda x: {"x": x.cos() * x + x.sin()},
                reference=["autograd", "compiled"], compile_options=FAST)
    assert rep.ok, str(rep)
    assert [r.reference for r in rep.results] == ["autograd", "compiled (aot_eager)"]


def test_compiler_that_cannot_run_here_is_skipped_with_one_note():
    from torch._inductor.exc import InvalidCxxCompiler

    def no_compiler(gm, example_inputs):
        raise InvalidCxxCompiler()
    rep = check(lambda x: x.sin().sum(), X, reference="compiled", compile_options={"backend": no_compiler})
    assert rep.results == [] and len(rep.notes) == 1
    assert "compiled reference was skipped" in rep.notes[0] and "InvalidCxxCompiler" in rep.notes[0]


def test_toolchain_problems_are_told_apart_from_loss_errors():
    assert toolchain_problem(RuntimeError("Dynamo is not supported on Python 3.99+")) is not None
    assert toolchain_problem(ValueError("shape mismatch in the loss")) is None


def test_double_backward_with_compiled_alone_still_checks_order_2():
    rep = check(lambda x: x.sin().sum(), X, lambda x: {"x": x.cos().detach()}, reference="compiled",
                double_backward=True, compile_options=FAST)
    assert [(r.order, r.ok) for r in rep.results if r.order == 2] == [(2, False)]  # detached: order 2 fails
    assert any("first derivatives only" in n for n in rep.notes)
