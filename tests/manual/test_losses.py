"""Losses, softmax, log_softmax: cases beyond the generic registry test."""

import math
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from gradcheck_kit import manual
from gradcheck_kit.errors import InvalidParameterError, UnsupportedError
from tests.manual._rulecheck import check_backward, check_double_backward

f64 = torch.float64
LOSSES = ["mse_loss", "l1_loss", "smooth_l1_loss", "huber_loss", "cross_entropy", "nll_loss",
          "binary_cross_entropy", "binary_cross_entropy_with_logits", "softmax", "log_softmax"]


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def test_every_loss_is_registered_and_mirrors_its_torch_function():
    for name in LOSSES:
        rule = manual.get(name)
        assert rule.torch_fn is getattr(F, name)
        assert rule.symbolic is not None


# -- class targets: ignore_index, weights, label smoothing --------------------------------

@pytest.mark.parametrize("name,kw", [("nll_loss", {}), ("cross_entropy", {}),
                                     ("cross_entropy", {"label_smoothing": 0.2})])
@pytest.mark.parametrize("weighted", [False, True])
def test_all_ignored_mean_is_nan_with_zero_gradient_as_torch(name, kw, weighted):
    rule = manual.get(name)
    x = torch.randn(3, 4, dtype=f64, generator=_gen())
    t = torch.full((3,), -100)
    w = torch.rand(4, dtype=f64, generator=_gen(1)) + 0.5 if weighted else None
    assert torch.isnan(rule.forward(x, t, w, **kw))
    gx = rule.backward(torch.tensor(0.7, dtype=f64), x, t, w, **kw)[0]
    assert torch.equal(gx, torch.zeros_like(x))  # finite zeros: no 0 * inf leaks through
    check_backward(rule, (x, t, w), kw)
    # torch's second derivative wrt grad_output is nll_loss(v, t) = 0/0 = nan; ours too
    g = torch.tensor(0.7, dtype=f64, requires_grad=True)
    v = torch.randn(3, 4, dtype=f64, generator=_gen(2))
    (dg,) = torch.autograd.grad((rule.backward(g, x, t, w, **kw)[0] * v).sum(), [g])
    assert torch.isnan(dg)


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
@pytest.mark.parametrize("ignore_index", [-100, 1])
@pytest.mark.parametrize("label_smoothing", [0.0, 0.05, 1.0])
def test_cross_entropy_smoothing_weights_ignore_grid(reduction, ignore_index, label_smoothing):
    rule = manual.get("cross_entropy")
    x = torch.randn(5, 3, dtype=f64, generator=_gen())
    t = torch.tensor([0, 1, 2, -100, 1])
    w = torch.tensor([0.5, 2.0, 1.25], dtype=f64)
    kw = dict(reduction=reduction, ignore_index=ignore_index, label_smoothing=label_smoothing)
    if ignore_index != -100:
        t = torch.tensor([0, 1, 2, 2, 1])
    check_backward(rule, (x, t, w), kw)
    check_double_backward(rule, (x, t, w), kw)


def test_cross_entropy_class_index_matches_its_definition():
    # (1 - eps) nll(log_softmax) + eps/C * sum_c -w_c logp_c, mean over sum of target weights
    x = torch.randn(4, 3, dtype=f64, generator=_gen(), requires_grad=True)
    t = torch.tensor([2, -100, 0, 1])
    w = torch.tensor([0.5, 2.0, 1.25], dtype=f64)
    eps = 0.3
    logp = torch.log_softmax(x, 1)
    valid = t != -100
    tw = torch.where(valid, w[t.clamp_min(0)], 0)
    nll = -(logp[torch.arange(4), t.clamp_min(0)] * tw).sum()
    smooth = -((logp * w).sum(1) * valid).sum()
    ref = ((1 - eps) * nll + eps / 3 * smooth) / tw.sum()
    (gref,) = torch.autograd.grad(ref, [x])
    rule = manual.get("cross_entropy")
    torch.testing.assert_close(rule.forward(x.detach(), t, w, label_smoothing=eps), ref.detach())
    gx = rule.backward(torch.tensor(1.0, dtype=f64), x.detach(), t, w, label_smoothing=eps)[0]
    torch.testing.assert_close(gx, gref, rtol=1e-12, atol=1e-12)


def test_probability_target_gets_a_gradient_class_indices_and_weights_do_not():
    rule = manual.get("cross_entropy")
    x = torch.randn(3, 4, dtype=f64, generator=_gen())
    p = torch.softmax(torch.randn(3, 4, dtype=f64, generator=_gen(1)), 1)
    w = torch.rand(4, dtype=f64, generator=_gen(2))
    gx, gp, gw = rule.backward(torch.tensor(1.0, dtype=f64), x, p, w)
    assert gx is not None and gp is not None and gw is None
    gx, gt, gw = rule.backward(torch.tensor(1.0, dtype=f64), x, torch.tensor([0, 1, 3]), w)
    assert gt is None and gw is None
    # only the target asked for: the input's gradient is not computed
    only_t = rule.backward(torch.tensor(1.0, dtype=f64), x, p, w, needs_input_grad=(False, True, False))
    assert only_t[0] is None
    torch.testing.assert_close(only_t[1], gp)


# -- elementwise losses -------------------------------------------------------------------

@pytest.mark.parametrize("name", ["mse_loss", "l1_loss", "smooth_l1_loss", "huber_loss"])
@pytest.mark.parametrize("reduction", ["none", "mean"])
def test_broadcast_target_is_unbroadcast(name, reduction):
    rule = manual.get(name)
    x = torch.randn(3, 4, dtype=f64, generator=_gen())
    t = torch.randn(1, 4, dtype=f64, generator=_gen(1))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # torch warns about the differing target size
        gx, gt = check_backward(rule, (x, t), {"reduction": reduction})
        check_double_backward(rule, (x, t), {"reduction": reduction})
    assert gx.shape == x.shape and gt.shape == t.shape


def test_l1_and_smooth_l1_beta0_give_zero_gradient_at_ties():
    x = torch.tensor([1.0, -2.0, 0.5], dtype=f64)
    for name, kw in [("l1_loss", {}), ("smooth_l1_loss", {"beta": 0.0})]:
        gx, gt = manual.get(name).backward(torch.tensor(1.0, dtype=f64), x, x.clone(), **kw)
        assert torch.equal(gx, torch.zeros_like(x)) and torch.equal(gt, torch.zeros_like(x))


def test_smooth_l1_at_the_kink_takes_the_outer_branch():
    # |d| == beta: slope +-1 and, as torch's double backward, curvature 0
    rule = manual.get("smooth_l1_loss")
    t = torch.zeros(2, dtype=f64)
    x = torch.tensor([0.5, -0.5], dtype=f64, requires_grad=True)
    (gx, _) = rule.backward(torch.tensor(1.0, dtype=f64), x, t, beta=0.5, reduction="sum")
    torch.testing.assert_close(gx.detach(), torch.tensor([1.0, -1.0], dtype=f64))
    (h,) = torch.autograd.grad(gx.sum(), [x])
    assert torch.equal(h, torch.zeros_like(h))


def test_elementwise_weight_means_follow_torch():
    # mse/l1 divide by sum(w); huber divides by numel
    x = torch.randn(3, 4, dtype=f64, generator=_gen())
    t = torch.randn(3, 4, dtype=f64, generator=_gen(1))
    w = torch.rand(3, 4, dtype=f64, generator=_gen(2)) + 0.5
    g = torch.tensor(1.0, dtype=f64)
    d = x - t
    torch.testing.assert_close(manual.get("mse_loss").backward(g, x, t, weight=w)[0], 2 * d * w / w.sum())
    torch.testing.assert_close(manual.get("huber_loss").backward(g, x, t, weight=w)[0],
                               d.clamp(-1, 1) * w / d.numel())


# -- softmax ------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["softmax", "log_softmax"])
@pytest.mark.parametrize("shape", [(4,), (2, 3), (2, 3, 2), (2, 3, 2, 2)])
def test_softmax_implicit_dim_follows_torch(name, shape):
    rule = manual.get(name)
    x = torch.randn(*shape, dtype=f64, generator=_gen())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # torch: "Implicit dimension choice ... deprecated"
        check_backward(rule, (x,), {})


def test_softmax_dtype_casts_input_and_gradient_back():
    x = torch.randn(2, 3, dtype=torch.float32, generator=_gen())
    (gx,) = manual.get("softmax").backward(torch.ones(2, 3, dtype=f64), x, dim=1, dtype=f64)
    assert gx.dtype == torch.float32


# -- bad input: one sentence naming the parameter ----------------------------------------

def _ce_args():
    return torch.randn(3, 4, dtype=f64, generator=_gen()), torch.tensor([0, 1, 3])


@pytest.mark.parametrize("call,err,match", [
    (lambda: manual.get("mse_loss").backward(torch.ones(()), torch.ones(2), torch.ones(2), size_average=True),
     UnsupportedError, "size_average"),
    (lambda: manual.get("nll_loss").backward(torch.ones(()), *_ce_args(), reduce=False),
     UnsupportedError, "reduce"),
    (lambda: manual.get("l1_loss").backward(torch.ones(()), torch.ones(2), torch.ones(2), reduction="avg"),
     InvalidParameterError, "reduction"),
    (lambda: manual.get("cross_entropy").backward(torch.ones((), dtype=f64), _ce_args()[0], torch.tensor([0, 4, 1])),
     InvalidParameterError, "target"),
    (lambda: manual.get("cross_entropy").backward(torch.ones((), dtype=f64), *_ce_args(), label_smoothing=1.5),
     InvalidParameterError, "label_smoothing"),
    (lambda: manual.get("cross_entropy").backward(torch.ones((), dtype=f64), _ce_args()[0],
                                                  torch.full((3, 4), 0.25, dtype=f64), ignore_index=1),
     InvalidParameterError, "ignore_index"),
    (lambda: manual.get("cross_entropy").backward(torch.ones((), dtype=f64), *_ce_args(), torch.ones(3, dtype=f64)),
     InvalidParameterError, "weight"),
    (lambda: manual.get("nll_loss").backward(torch.ones((), dtype=f64), _ce_args()[0], torch.tensor([0, 1])),
     InvalidParameterError, "target must have shape"),
    (lambda: manual.get("huber_loss").backward(torch.ones(()), torch.ones(2), torch.ones(2), delta=0.0),
     InvalidParameterError, "delta"),
    (lambda: manual.get("smooth_l1_loss").backward(torch.ones(()), torch.ones(2), torch.ones(2), beta=-1.0),
     InvalidParameterError, "beta"),
    (lambda: manual.get("mse_loss").backward(torch.ones(()), torch.ones(2), torch.ones(2), weight=torch.ones(3)),
     InvalidParameterError, "weight"),
    (lambda: manual.get("binary_cross_entropy").backward(torch.ones(()), torch.full((2,), 0.5), torch.ones(1, 2)),
     InvalidParameterError, "target"),
])
def test_bad_input_names_the_parameter(call, err, match):
    with pytest.raises(err, match=match):
        call()


# -- symbolic forward: exact Jacobian against the backward --------------------------------

@pytest.mark.parametrize("name,sample", [
    ("mse_loss", "mse_loss[weight,mean]"), ("l1_loss", "l1_loss[ties,none]"),
    ("smooth_l1_loss", "smooth_l1_loss[beta0.5,kink]"), ("huber_loss", "huber_loss[delta0.5,kink]"),
    ("binary_cross_entropy", "binary_cross_entropy[hard_targets,weight]"),
    ("binary_cross_entropy_with_logits", "binary_cross_entropy_with_logits[3d,hard,weight,pos_weight]"),
    ("softmax", "softmax[unbatched]"), ("log_softmax", "log_softmax[2d,dim0]"),
    ("nll_loss", "nll_loss[weight,ignore_hit,mean]"),
    ("cross_entropy", "cross_entropy[idx,weight,ignore_hit,ls,mean]"),
    ("cross_entropy", "cross_entropy[prob,unbatched,ls]"),
])
def test_symbolic_forward_agrees_exactly(name, sample):
    derive = pytest.importorskip("gradcheck_kit.derive")
    (res,) = derive.verify(name, sample)
    assert res.ok and not res.skipped, str(res)


def test_symbolic_forward_of_a_scalar_loss_is_0d():
    import sympy

    x = np.array([sympy.Symbol("x0"), sympy.Symbol("x1")], dtype=object)
    out = manual.get("mse_loss").symbolic(x, np.array([sympy.Integer(1), sympy.Integer(2)], dtype=object))
    assert isinstance(out, np.ndarray) and out.shape == ()


# -- CUDA ---------------------------------------------------------------------------------

@pytest.mark.cuda
@pytest.mark.parametrize("name", LOSSES)
def test_cuda_losses_match_autograd(name):
    rule = manual.get(name)
    for dtype in (torch.float32, f64):
        for s in rule.samples(device="cuda", dtype=dtype):
            check_backward(rule, s.args, s.kwargs)
            if dtype == f64:
                check_double_backward(rule, s.args, s.kwargs)


def test_cross_entropy_in_place_fast_path_equals_the_recorded_path():
    # with no graph recorded, the rule scales softmax(x) in place; recorded, out of place (softmax
    # saves its output): same values, inputs untouched
    rule = manual.get("cross_entropy")
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(5, 4, dtype=torch.float64, generator=gen)
    t = torch.tensor([0, 3, -100, 1, 2])
    x0 = x.clone()
    for kw in ({}, {"label_smoothing": 0.2, "reduction": "sum"}):
        g = torch.tensor(0.7, dtype=torch.float64)
        fast = rule.backward(g, x, t, **kw)[0]
        xr = x.clone().requires_grad_()
        recorded = rule.backward(g.clone().requires_grad_(), xr, t, **kw)[0]
        assert recorded.requires_grad
        torch.testing.assert_close(fast, recorded.detach(), rtol=0, atol=1e-15)
    assert torch.equal(x, x0)


# -- keyword tensors: weight= of mse/l1/huber is differentiable ----------------------------

@pytest.mark.parametrize("name", ["mse_loss", "l1_loss", "huber_loss"])
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_keyword_weight_gradient_matches_autograd(name, reduction):
    rule = manual.get(name)
    assert rule.keyword_tensors == ("weight",)
    g = _gen(5)
    x, t, w = (torch.randn(3, 4, dtype=f64, generator=g) for _ in range(3))
    kw = {"reduction": reduction, "weight": w.abs() + 0.5}
    grads = check_backward(rule, (x, t), kw)
    assert grads.keywords["weight"] is not None
    check_double_backward(rule, (x, t), kw)
    assert set(rule.all_grads(torch.ones(()) if reduction != "none" else torch.ones(3, 4, dtype=f64),
                              x, t, **kw)) == {"input", "target", "weight"}


def test_keyword_weight_check_catches_a_wrong_weight_gradient():
    # planted bug: mse's mean divides by sum(w), so dL/dw_i = g (d_i^2 - L) / W; dropping -L is wrong
    from gradcheck_kit.manual.registry import Rule

    rule = manual.get("mse_loss")

    def wrong(grad_output, input, target, *, needs_input_grad, needs_keyword_grad, weight=None, **kw):
        gx, gt, kws = rule.backward_impl(grad_output, input, target, needs_input_grad=needs_input_grad,
                                         needs_keyword_grad=needs_keyword_grad, weight=weight, **kw)
        return gx, gt, {"weight": grad_output * (input - target) ** 2 / weight.sum()}

    broken = Rule(name="mse_wrong", torch_fn=rule.torch_fn, tensor_args=rule.tensor_args, backward_impl=wrong,
                  sample_fn=rule.sample_fn, keyword_tensors=("weight",))
    g = _gen(6)
    x, t = torch.randn(3, 4, dtype=f64, generator=g), torch.randn(3, 4, dtype=f64, generator=g)
    w = torch.rand(3, 4, dtype=f64, generator=g) + 0.5
    check_backward(rule, (x, t), {"weight": w})                      # the correct twin passes
    with pytest.raises(AssertionError, match="d/dweight"):
        check_backward(broken, (x, t), {"weight": w})


def test_class_weights_stay_constants_as_torch_refuses_their_gradient():
    x = torch.randn(4, 3, dtype=f64, requires_grad=True)
    w = torch.rand(3, dtype=f64, requires_grad=True)
    with pytest.raises(RuntimeError, match="not differentiable with respect to argument 'weight'"):
        F.nll_loss(x, torch.tensor([0, 1, 2, 0]), w)
    for name in ("nll_loss", "cross_entropy", "binary_cross_entropy", "binary_cross_entropy_with_logits"):
        assert "weight" in manual.get(name).nondifferentiable


# -- non-finite and extreme inputs (issue 10) -------------------------------------------------

@pytest.mark.parametrize("name,kw", [("huber_loss", {}), ("smooth_l1_loss", {}), ("smooth_l1_loss", {"beta": 0.0}),
                                     ("l1_loss", {}), ("mse_loss", {})])
def test_nan_difference_matches_torch(name, kw):
    # huber/smooth_l1 (beta > 0): NaN slope at d = NaN; l1 and smooth_l1(beta=0): sign(NaN) = 0, as torch
    x = torch.tensor([float("nan"), 0.5, -2.0], dtype=f64)
    check_backward(manual.get(name), (x, torch.zeros(3, dtype=f64)), {"reduction": "none", **kw})


def test_mse_float32_near_the_largest_float_does_not_overflow():
    # 2 d overflows float32 at d = 3e38; torch scales g first (2 g / n) and so does the rule now
    x = torch.tensor([3e38, 1.0, -3e38, 2.0])
    check_backward(manual.get("mse_loss"), (x, torch.zeros(4)), {})
    (gx, _) = manual.get("mse_loss").backward(torch.tensor(1.0), x, torch.zeros(4))
    assert bool(gx.isfinite().all())


# -- kl_div ---------------------------------------------------------------------------------------

def test_kl_div_target_gradient_is_nan_at_a_zero_target_as_torch():
    x = torch.randn(2, 3, dtype=f64, generator=_gen(7))
    t = torch.tensor([[0.0, 0.5, 0.5], [0.2, 0.3, 0.5]], dtype=f64)
    grads = check_backward(manual.get("kl_div"), (x, t), {"reduction": "sum"})
    assert math.isnan(float(grads[1][0, 0])) and bool(grads[1][1].isfinite().all())


@pytest.mark.parametrize("reduction,denom", [("batchmean", 2), ("mean", 6), ("sum", 1)])
def test_kl_div_reductions_divide_as_torch(reduction, denom):
    x = torch.randn(2, 3, dtype=f64, generator=_gen(8))
    t = torch.rand(2, 3, dtype=f64, generator=_gen(9)) + 0.1
    (gx, _) = manual.get("kl_div").backward(torch.tensor(1.0, dtype=f64), x, t, reduction=reduction)
    torch.testing.assert_close(gx, -t / denom)


def test_kl_div_rejects_an_unknown_reduction():
    with pytest.raises(InvalidParameterError, match="batchmean"):
        manual.get("kl_div").backward(torch.tensor(1.0), torch.zeros(2), torch.ones(2), reduction="avg")
