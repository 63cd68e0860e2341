"""One generic test walks the registry: every rule x every sample, as PyTorch's OpInfo does."""

import pytest
import torch

from gradcheck_kit import manual
from gradcheck_kit.manual import registry
# _seqcheck adds sequence arguments (torch.cat's list) and unused outputs, deferring to _rulecheck
from tests.manual._rulecheck import TORCH_FLOAT64_RTOL
from tests.manual._seqcheck import (check_backward, check_double_backward, check_forward,
                                    check_needs_input_grad, check_saved_matches_recompute)


def _cases(dtype=torch.float64, device="cpu"):
    for rule in manual.rules():
        for sample in rule.samples(device=device, dtype=dtype):
            yield pytest.param(rule, sample, id=f"{rule.name}-{sample.name}")


CASES64 = list(_cases(torch.float64))
CASES32 = list(_cases(torch.float32))


@pytest.mark.parametrize("rule,sample", CASES64)
def test_float64_matches_autograd(rule, sample):
    check_forward(rule, sample.args, sample.kwargs)
    check_backward(rule, sample.args, sample.kwargs)


@pytest.mark.parametrize("rule,sample", CASES32)
def test_float32_matches_autograd(rule, sample):
    check_backward(rule, sample.args, sample.kwargs)


# rules whose backward is differentiable but torch's is not, so there is no reference here;
# each is compared with an equivalent composite in its family test instead
NO_TORCH_DOUBLE_BACKWARD = {
    "hardsigmoid": "derivative for aten::hardsigmoid_backward is not implemented "
                   "(tests/manual/test_activations.py compares with relu6(x + 3) / 6)",
}


@pytest.mark.parametrize("rule,sample", [c for c in CASES64 if c.values[0].differentiable_backward
                                         and c.values[0].name not in NO_TORCH_DOUBLE_BACKWARD])
def test_second_derivative_matches_autograd(rule, sample):
    check_double_backward(rule, sample.args, sample.kwargs)


@pytest.mark.parametrize("rule", manual.rules(), ids=lambda r: r.name)
def test_needs_input_grad_skips_unrequested(rule):
    sample = rule.samples()[0]
    check_needs_input_grad(rule, sample.args, sample.kwargs)


@pytest.mark.parametrize("rule", manual.rules(), ids=lambda r: r.name)
def test_backward_with_saved_forward_results_agrees(rule):
    # every rule: rules without save= get saved={} and must ignore it; rules with save= must
    # give the recomputing backward's answer (first sample, and one per rule keeps this fast)
    sample = rule.samples()[0]
    check_saved_matches_recompute(rule, sample.args, sample.kwargs)
    check_backward(rule, sample.args, sample.kwargs, saved=True)


@pytest.mark.parametrize("rule", manual.rules(), ids=lambda r: r.name)
def test_every_alias_maps_back_to_its_rule(rule):
    assert registry.for_callable(rule.mirrors) is rule
    for alias in rule.aliases:
        assert registry.for_callable(alias) is rule, f"{alias} does not map back to {rule.name}"
    assert len(rule.mirrors_all) == 1 + len(rule.aliases)


@pytest.mark.parametrize("rule", manual.rules(), ids=lambda r: r.name)
def test_rule_metadata(rule):
    assert callable(rule.torch_fn)
    assert rule.samples(), f"{rule.name} has no samples"
    names = [s.name for s in rule.samples()]
    assert len(names) == len(set(names)), f"{rule.name}: duplicate sample names"


@pytest.mark.cuda
@pytest.mark.parametrize("rule", manual.rules(), ids=lambda r: r.name)
def test_cuda_float32_matches_autograd(rule):
    for sample in rule.samples(device="cuda", dtype=torch.float32):
        check_backward(rule, sample.args, sample.kwargs)


@pytest.mark.cuda
@pytest.mark.parametrize("rule", manual.rules(), ids=lambda r: r.name)
def test_cuda_float64_matches_autograd(rule):
    for sample in rule.samples(device="cuda", dtype=torch.float64):
        check_backward(rule, sample.args, sample.kwargs)
        if rule.differentiable_backward and rule.name not in NO_TORCH_DOUBLE_BACKWARD:
            check_double_backward(rule, sample.args, sample.kwargs)


def test_names_sorted_and_unknown_name_suggests():
    names = manual.names()
    assert names == sorted(names)
    with pytest.raises(KeyError, match="did you mean"):
        manual.get(names[0] + "x")


# -- non-finite inputs: every rule of these families matches torch at NaN, +-inf and extremes ------

_AUDITED = ("activations", "elementwise", "losses", "normalization", "linear", "similarity")
_SPECIALS = {torch.float64: (float("nan"), float("inf"), -float("inf"), 1e300, -1e300, 1e-300),
             torch.float32: (float("nan"), float("inf"), -float("inf"), 3e38, -3e38, 1e-38)}
# (rule, argument, value) where the rule knowingly differs from torch, with the reason.  NaN: torch's
# vectorised kernel and its scalar tail disagree (the answer depends on the tensor's length/layout).
_LAYOUT_DEPENDENT_AT_NAN = {"hardtanh", "relu6", "hardshrink", "softshrink", "selu", "celu", "hardswish"}
_KNOWN = {
    # overflowing statistics (var = inf) or an infinite affine weight: torch's fused kernel turns the
    # row/channel into NaN through its own order of operations; the rule gives 0 or +-inf there
    ("layer_norm", "input", "huge"), ("layer_norm", "weight", "inf"), ("layer_norm", "weight", "huge"),
    ("batch_norm", "weight", "inf"), ("batch_norm", "weight", "huge"),
    *((op, arg, kind) for op in ("group_norm", "instance_norm", "rms_norm")
      for arg, kind in (("input", "huge"), ("weight", "inf"), ("weight", "huge"))),
}


def _kind(v):
    if v != v:
        return "nan"
    if abs(v) == float("inf"):
        return "inf"
    return "huge" if abs(v) > 1e30 else "tiny"


def _nonfinite_cases():
    for rule in manual.rules():
        if rule.backward_impl.__module__.rsplit(".", 1)[-1] not in _AUDITED:
            continue
        for dtype, specials in _SPECIALS.items():
            sample = rule.samples(dtype=dtype)[0]
            mask = rule.differentiable_mask(sample.args)
            for i, (a, m) in enumerate(zip(sample.args, mask)):
                if not m or not a.numel():
                    continue
                for v in specials:
                    arg = rule.tensor_args[i]
                    if (rule.name, arg, _kind(v)) in _KNOWN or (v != v and rule.name in _LAYOUT_DEPENDENT_AT_NAN):
                        continue
                    yield pytest.param(rule, sample, i, v, id=f"{rule.name}-{arg}={v:g}-{str(dtype)[6:]}")


@pytest.mark.parametrize("rule,sample,index,value", list(_nonfinite_cases()))
def test_nonfinite_inputs_match_torch(rule, sample, index, value):
    _nonfinite_parity(rule, sample, index, value)


def test_nonfinite_parity_catches_relu_dropping_the_gradient_at_nan():
    # planted bug: the old relu, g * 1[x > 0], gives 0 at NaN where torch passes g through
    relu = manual.get("relu")
    old = registry.Rule(name="relu_old", torch_fn=relu.torch_fn, tensor_args=("input",), sample_fn=relu.sample_fn,
                        backward_impl=lambda g, x, *, needs_input_grad: (g * (x > 0).to(g.dtype),))
    sample = relu.samples()[0]
    _nonfinite_parity(relu, sample, 0, float("inf"))
    _nonfinite_parity(old, sample, 0, float("inf"))      # the twin agrees away from NaN
    _nonfinite_parity(relu, sample, 0, float("nan"))
    with pytest.raises(AssertionError, match="relu_old d/dinput with nan"):
        _nonfinite_parity(old, sample, 0, float("nan"))


def _nonfinite_parity(rule, sample, index, value):
    args = list(sample.args)
    planted = args[index].clone()
    planted.reshape(-1)[0] = value
    args[index] = planted
    mask = rule.differentiable_mask(args)
    leaves = [a.detach().clone().requires_grad_(m) if isinstance(a, torch.Tensor) else a
              for a, m in zip(args, mask)]
    try:
        out = rule.torch_fn(*leaves, **sample.kwargs)
    except RuntimeError:
        pytest.skip("torch rejects this input")  # e.g. binary_cross_entropy outside [0, 1]
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(1), dtype=out.dtype)
    ref = torch.autograd.grad(out, [x for x, m in zip(leaves, mask) if m], g, allow_unused=True)
    mine = [m for m, k in zip(rule.backward(g, *args, **sample.kwargs), mask) if k]
    for name, got, want in zip([n for n, k in zip(rule.tensor_args, mask) if k], mine, ref):
        want = torch.zeros_like(got) if want is None else want
        finite = want[want.isfinite()]
        scale = float(finite.abs().max()) if finite.numel() else 1.0
        tol = dict(rtol=1e-4, atol=1e-5 * scale) if out.dtype == torch.float32 else \
            dict(rtol=TORCH_FLOAT64_RTOL.get(rule.name, 1e-8), atol=1e-10 * scale)
        torch.testing.assert_close(got, want, equal_nan=True, **tol,
                                   msg=lambda m: f"{rule.name} d/d{name} with {value} planted: {m}")


def _omittable(rule, sample):
    """The sample's positional args with trailing None arguments dropped (None if there are none)."""
    args = list(sample.args)
    while args and args[-1] is None:
        args.pop()
    return tuple(args) if len(args) < len(sample.args) else None


_OMIT_CASES = [pytest.param(r, s, id=f"{r.name}-{s.name}") for r in manual.rules() for s in r.samples()
               if _omittable(r, s) is not None]


@pytest.mark.parametrize("rule,sample", _OMIT_CASES)
def test_trailing_none_arguments_may_be_omitted(rule, sample):
    # issue 10: layer_norm(x, normalized_shape=...) and batch_norm(x, rm, rv, training=...) crashed
    # with an IndexError; needs_input_grad is now padded, and every rule must accept the short call
    short = _omittable(rule, sample)
    full = check_backward(rule, sample.args, sample.kwargs)
    part = check_backward(rule, short, sample.kwargs)
    assert len(part) == len(short)
    for a, b in zip(part, full):
        assert (a is None and b is None) or torch.equal(a, b)
