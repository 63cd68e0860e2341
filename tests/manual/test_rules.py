"""One generic test walks the registry: every rule x every sample, as PyTorch's OpInfo does."""

import pytest
import torch

from gradcheck_kit import manual
from gradcheck_kit.manual import registry
# _seqcheck adds sequence arguments (torch.cat's list) and unused outputs, deferring to _rulecheck
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


@pytest.mark.parametrize("rule,sample", [c for c in CASES64 if c.values[0].differentiable_backward])
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
        if rule.differentiable_backward:
            check_double_backward(rule, sample.args, sample.kwargs)


def test_names_sorted_and_unknown_name_suggests():
    names = manual.names()
    assert names == sorted(names)
    with pytest.raises(KeyError, match="did you mean"):
        manual.get(names[0] + "x")
