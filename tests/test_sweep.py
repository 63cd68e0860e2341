"""Every rule of the registry passes ``check`` against both references on its samples.

Autograd on every sample; float64 finite differences on every sample too, element by element up
to ``FD_LIMIT`` loss evaluations per sample and by random projections above it (keeps this file
at a few seconds).
"""

from __future__ import annotations

import pytest
import torch

from gradcheck_kit import manual
from gradcheck_kit.errors import GradcheckKitError
from gradcheck_kit.manual.registry import Rule
from gradcheck_kit.sweep import SweepResult, sample_check, sweep

FD_LIMIT = 300


def _describe(res: SweepResult) -> str:
    if res.error:
        return f"{res.rule} {res.sample}: {res.error}"
    bad = [r for r in res.report.results if not r.ok]
    return f"{res.rule} {res.sample}: " + "; ".join(
        f"{r.name} vs {r.reference}: max abs err {r.max_abs_err:.3g} at {r.worst_index} "
        f"(manual {r.manual_value}, reference {r.reference_value}) {r.hint or ''}" for r in bad)


@pytest.mark.parametrize("name", manual.names())
def test_rule_passes_autograd_and_finite_differences(name):
    results = sweep([name], reference="both", fd_limit=FD_LIMIT)
    assert results, f"rule {name!r} has no samples"
    failures = [_describe(r) for r in results if not r.ok]
    assert not failures, "\n".join(failures)
    rounds = manual.get(name).rounds  # a rounding cast: autograd only (finite differences see a staircase)
    for r in results:
        refs = {x.reference for x in r.report.results}
        assert refs == ({"autograd"} if rounds else {"autograd", "finite-difference"}), refs
        assert rounds == any("autograd only" in n for n in r.report.notes)


def test_nonfinite_samples_are_left_out_of_the_sweep():
    names = [r.sample for r in sweep(["relu"])]
    assert "relu[nan,inf]" not in names and "relu[3x4,zeros]" in names
    nan_sample = next(s for s in manual.get("relu").samples() if s.name == "relu[nan,inf]")
    with pytest.raises(GradcheckKitError, match="loss is nan"):  # check() compares finite losses only
        sample_check(manual.get("relu"), nan_sample)


def test_float32_sweep_against_autograd():
    results = sweep(["conv2d", "relu", "max_pool2d", "cross_entropy"], dtype=torch.float32)
    failures = [_describe(r) for r in results if not r.ok]
    assert not failures, "\n".join(failures)
    assert {x.dtype for r in results for x in r.report.results} == {"float32"}


def test_sweep_result_fields_and_progress():
    seen = []
    results = sweep(["relu"], progress=lambda done, total, label: seen.append((done, total, label)))
    assert [s[0] for s in seen] == list(range(1, len(results) + 1))
    assert all(s[1] == len(results) for s in seen) and seen[0][2].startswith("relu[")
    r = results[0]
    assert (r.rule, r.ok, r.error) == ("relu", True, None) and r.report is not None and r.sample
    assert r.to_dict()["report"]["ok"] is True


def test_a_wrong_rule_is_caught_with_its_sample():
    relu = manual.get("relu")

    def wrong_backward(grad_output, input, *, needs_input_grad, inplace=False):
        return (grad_output * (input >= 0),)  # relu'(0) = 1: not torch's convention

    broken = Rule(name="relu_wrong", torch_fn=relu.torch_fn, tensor_args=relu.tensor_args,
                  backward_impl=wrong_backward, sample_fn=relu.sample_fn)
    zero = next(s for s in broken.samples() if bool((s.args[0] == 0).any()))
    rep = sample_check(broken, zero)
    assert not rep.ok
    r = rep.results[0]
    assert float(zero.args[0][r.worst_index]) == 0.0
    assert any(p in r.hint for p in ("mismatch only where the reference gradient is 0", "single element",
                                     "relu'(0)")), r.hint


def test_sweep_checks_keyword_tensor_gradients():
    results = sweep(["mse_loss"], reference="both", fd_limit=FD_LIMIT)
    weighted = [r for r in results if "weight" in r.sample]
    assert weighted and all(r.ok for r in weighted), [_describe(r) for r in weighted if not r.ok]
    for r in weighted:
        assert "weight" in {x.name for x in r.report.results}


def test_sweep_catches_a_wrong_keyword_gradient():
    rule = manual.get("mse_loss")

    def wrong(grad_output, input, target, *, needs_input_grad, needs_keyword_grad, weight=None, **kw):
        out = rule.backward_impl(grad_output, input, target, needs_input_grad=needs_input_grad,
                                 needs_keyword_grad=needs_keyword_grad, weight=weight, **kw)
        if weight is None or not needs_keyword_grad["weight"]:
            return out
        return out[0], out[1], {"weight": out[2]["weight"] * 1.01}

    broken = Rule(name="mse_wrong", torch_fn=rule.torch_fn, tensor_args=rule.tensor_args, backward_impl=wrong,
                  sample_fn=rule.sample_fn, keyword_tensors=("weight",))
    weighted = next(s for s in broken.samples() if "weight" in s.kwargs)
    rep = sample_check(broken, weighted)
    assert not rep.ok and {r.name for r in rep.results if not r.ok} == {"weight"}
    assert sample_check(rule, weighted).ok


def test_sweep_takes_sequence_arguments_element_by_element():
    results = sweep(["cat"], reference="both", fd_limit=FD_LIMIT)
    assert results and all(r.ok for r in results), [_describe(r) for r in results if not r.ok]
    names = {x.name for r in results for x in r.report.results}
    assert {"tensors[0]", "tensors[1]"} <= names


def test_sweep_keeps_the_sample_layout_for_layout_dependent_randomness():
    # dropout draws its mask in memory order: the finite-difference loss must see channels_last too
    results = sweep(["dropout"], reference="both", fd_limit=FD_LIMIT,
                    samples=lambda rule, ss: [s for s in ss if "channels_last" in s.name])
    assert results and all(r.ok for r in results), [_describe(r) for r in results if not r.ok]
