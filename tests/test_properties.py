"""Property tests: configurations drawn by ``gradcheck_kit.strategies``, manual backward == autograd.

One test per rule family (conv, conv_transpose, pooling, activations, elementwise
broadcasting, linear/matmul, losses, normalization, unfold/fold/pad), in float64, with
the generic checks of tests/manual/_rulecheck.py.  Examples are derandomized (the same
draws on every run) and few, so the file stays cheap; raise ``GRADCHECK_PROPERTY_EXAMPLES``
to search harder locally.
"""

import os
import warnings

import pytest
import torch
from hypothesis import HealthCheck, given, settings

from gradcheck_kit import manual
from gradcheck_kit import strategies as S
from tests.manual._rulecheck import check_backward, check_double_backward, check_forward

SCALE = float(os.environ.get("GRADCHECK_PROPERTY_EXAMPLES", "1"))


def props(n: int):
    return settings(max_examples=max(1, int(n * SCALE)), deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])


def rule_or_skip(name: str):
    if name not in manual.names():
        pytest.skip(f"rule {name!r} is not registered")
    return manual.get(name)


def agree(cfg, double_backward=False):
    """forward == torch's, manual backward == autograd (float64); optionally second derivatives."""
    rule = manual.get(cfg.rule)
    args, kwargs = cfg.make(dtype=torch.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # padding="same" with even kernels may copy the input
        check_forward(rule, args, kwargs)
        check_backward(rule, args, kwargs)
        if double_backward:
            check_double_backward(rule, args, kwargs)


def holds(strategy, n: int, double_backward: bool = False):
    """``agree`` on ``n`` derandomized draws of ``strategy``."""

    @props(n)
    @given(strategy)
    def prop(cfg):
        agree(cfg, double_backward)

    prop()


# -- convolution -------------------------------------------------------------------------

@pytest.mark.parametrize("dim", [1, 2, 3])
def test_conv(dim):
    rule_or_skip(f"conv{dim}d")
    holds(S.conv_configs(dim), 15)


@pytest.mark.parametrize("dim", [1, 2, 3])
def test_conv_transpose(dim):
    rule_or_skip(f"conv_transpose{dim}d")
    holds(S.conv_configs(dim, transposed=True), 15)


@pytest.mark.parametrize("transposed", [False, True], ids=["conv2d", "conv_transpose2d"])
def test_conv_second_derivatives(transposed):
    rule_or_skip("conv_transpose2d" if transposed else "conv2d")

    holds(S.conv_configs(2, transposed=transposed), 6, double_backward=True)


@pytest.mark.parametrize("dim", [1, 2, 3])
def test_conv_drop_ins_match_autograd(dim):
    """``manual.conv{d}d_input`` / ``conv{d}d_weight`` (torch.nn.grad signatures) on drawn configs."""
    if f"conv{dim}d" not in manual.names():
        pytest.skip(f"conv{dim}d is not registered")
    drop_input = getattr(manual, f"conv{dim}d_input")
    drop_weight = getattr(manual, f"conv{dim}d_weight")

    @props(10)
    @given(S.conv_configs(dim))
    def run(cfg):
        (x, w, b), kw = cfg.make()
        x.requires_grad_(True)
        w.requires_grad_(True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out = getattr(torch.nn.functional, cfg.rule)(x, w, b, **kw)
        g = torch.randn(out.shape, generator=torch.Generator().manual_seed(1), dtype=out.dtype)
        gx, gw = torch.autograd.grad(out, (x, w), g)
        tol = dict(rtol=1e-9, atol=1e-10 * max(1.0, float(gx.abs().max()), float(gw.abs().max())))
        torch.testing.assert_close(drop_input(x.shape, w.detach(), g, **kw), gx, **tol)
        torch.testing.assert_close(drop_weight(x.detach(), w.shape, g, **kw), gw, **tol)

    run()


# -- pooling -------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["max", "avg"])
@pytest.mark.parametrize("dim", [1, 2, 3])
def test_pool(dim, kind):
    rule_or_skip(f"{kind}_pool{dim}d")
    holds(S.pool_configs(dim, kind), 15)


# -- activations -------------------------------------------------------------------------

@pytest.mark.parametrize("rule", S.ACTIVATIONS)
def test_activation(rule):
    rule_or_skip(rule)
    holds(S.activation_calls(rule), 8)


# -- elementwise and broadcasting ---------------------------------------------------------

ELEMENTWISE = list(S.ELEMENTWISE_BINARY) + list(S.ELEMENTWISE_UNARY) + list(S.REDUCTIONS) + ["dot"]


@pytest.mark.parametrize("rule", ELEMENTWISE)
def test_elementwise(rule):
    rule_or_skip(rule)
    holds(S.elementwise_calls(rule), 8)


# -- linear algebra ------------------------------------------------------------------------

@pytest.mark.parametrize("rule", ["linear", "matmul", "mm", "bmm"])
def test_linear(rule):
    rule_or_skip(rule)
    holds(S.linear_calls(rule), 10)


# -- losses ----------------------------------------------------------------------------------

@pytest.mark.parametrize("rule", S.LOSSES)
def test_loss(rule):
    rule_or_skip(rule)
    holds(S.loss_calls(rule), 10)


# -- normalization ---------------------------------------------------------------------------

@pytest.mark.parametrize("rule", ["batch_norm", "layer_norm"])
def test_normalization(rule):
    rule_or_skip(rule)
    holds(S.norm_calls(rule), 10)


# -- shape ops -------------------------------------------------------------------------------

@pytest.mark.parametrize("rule,strategy", [("unfold", S.unfold_calls()), ("fold", S.fold_calls()),
                                           ("pad", S.pad_calls())], ids=["unfold", "fold", "pad"])
def test_shape_op(rule, strategy):
    rule_or_skip(rule)
    holds(strategy, 12)
