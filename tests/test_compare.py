"""check(): references, tolerances, kinks, bad input, in-place detection, the report."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

from gradcheck_kit import GradcheckKitError, assert_grads_match, check
from gradcheck_kit import _check_errors as E
from gradcheck_kit.compare import Report, tolerances
from tests import _problems as P


def _by(report, name, reference=None, order=1):
    hits = [r for r in report.results if r.name == name and r.order == order
            and (reference is None or r.reference.startswith(reference))]
    assert hits, f"no result for {name} ({reference}) in {report}"
    return hits[0]


# -- correct gradients pass ------------------------------------------------------------------------------

@pytest.mark.parametrize("reference", ["autograd", "finite-difference", "fd", "both"])
def test_correct_conv_relu_conv_passes(reference):
    rep = check(P.crc_loss, P.crc_inputs(), P.crc_manual, reference=reference)
    assert rep.ok, str(rep)
    assert {r.name for r in rep.results} == {"x", "w1", "w2", "y"}
    if reference != "autograd":
        assert all(r.fd_mode == "full" for r in rep.results if r.reference == "finite-difference")


def test_correct_passes_in_float32_and_dtype_cast():
    rep = check(P.crc_loss, P.crc_inputs(), P.crc_manual, dtype=torch.float32)
    assert rep.ok, str(rep)
    assert {r.dtype for r in rep.results} == {"float32"}
    rep = check(P.crc_loss, P.crc_inputs(torch.float32), P.crc_manual, reference="both")
    assert rep.ok, str(rep)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_against_float64_reference(dtype):
    rep = check(P.relu_loss, P.relu_inputs(), P.relu_manual, dtype=dtype)
    assert rep.ok, str(rep)
    assert rep.results[0].reference == "autograd (cpu, float64)"


def test_relu_zeros_pass_finite_differences_and_are_counted():
    inputs = P.relu_inputs()
    rep = check(P.relu_loss, inputs, P.relu_manual, reference="fd")
    assert rep.ok, str(rep)
    r = rep.results[0]
    assert r.kinks == int((inputs["x"] == 0).sum()) > 0
    assert r.fd_mode == "full"


def test_max_pool_ties_pass_finite_differences():
    rep = check(P.pool_loss, P.pool_inputs(), P.pool_manual, reference="both")
    assert rep.ok, str(rep)
    assert _by(rep, "x", "finite").kinks > 0


def test_conv_relu_conv_at_exact_relu_zeros_passes_both():
    inputs = P.crc_inputs(integer=True)
    assert bool((F.conv2d(inputs["x"], inputs["w1"], padding=1) == 0).any())
    rep = check(P.crc_loss, inputs, P.crc_manual, reference="both")
    assert rep.ok, str(rep)


def test_wrong_formula_still_caught_next_to_kinks():
    def manual(x, G):
        g = G * (x > 0)
        return {"x": g + (x == 1) * 0.5}  # wrong where x = 1, far from the kink at 0
    rep = check(P.relu_loss, P.relu_inputs(), manual, reference="fd")
    r = rep.results[0]
    assert not r.ok and r.kinks > 0
    assert P.relu_inputs()["x"][r.worst_index] == 1


# -- planted bugs are caught, with input and index -------------------------------------------------------------

@pytest.mark.parametrize("reference", ["autograd", "fd"])
def test_one_wrong_element_is_located(reference):
    rep = check(P.crc_loss, P.crc_inputs(), P.crc_bug("element"), reference=reference)
    assert not rep.ok
    x = _by(rep, "x")
    assert not x.ok and x.mismatched == 1 and x.worst_index == (1, 0, 2, 3)
    assert x.manual_value - x.reference_value == pytest.approx(1.0, abs=1e-4)
    assert _by(rep, "w1").ok and _by(rep, "w2").ok
    assert "single element" in x.hint


@pytest.mark.parametrize("bug,name", [("mask", "x"), ("factor2", "w2"), ("flip", "x"), ("padding", "x"),
                                      ("sign", "w1")])
def test_planted_bugs_are_caught(bug, name):
    rep = check(P.crc_loss, P.crc_inputs(), P.crc_bug(bug))
    assert not rep.ok
    assert not _by(rep, name).ok


def test_dropped_shared_weight_term_is_caught():
    rep = check(P.dag_loss, P.dag_inputs(), P.dag_bug("w1"), reference="both")
    assert not rep.ok
    assert not _by(rep, "w1", "autograd").ok and not _by(rep, "w1", "finite").ok
    assert _by(rep, "x0").ok and _by(rep, "w2").ok
    assert check(P.dag_loss, P.dag_inputs(), P.dag_manual, reference="both").ok


def test_fast_mode_catches_and_localises():
    rep = check(P.crc_loss, P.crc_inputs(), P.crc_bug("element"), reference="fd", fd_mode="fast")
    x = _by(rep, "x")
    assert x.fd_mode == "fast" and x.projections >= 4 and not x.ok
    assert x.worst_index == (1, 0, 2, 3)
    assert x.manual_value - x.reference_value == pytest.approx(1.0, abs=1e-4)
    assert _by(rep, "w1").ok and _by(rep, "w2").ok
    assert check(P.crc_loss, P.crc_inputs(), P.crc_manual, reference="fd", fd_mode="fast").ok


def test_auto_mode_switches_to_fast_above_the_limit():
    rep = check(P.crc_loss, P.crc_inputs(), P.crc_manual, reference="fd", fd_limit=200)
    modes = {r.name: r.fd_mode for r in rep.results}
    assert modes["x"] == "fast" and modes["w1"] == "full"
    assert rep.ok


def test_full_mode_refuses_above_the_limit_with_the_count():
    with pytest.raises(E.FiniteDifferenceTooLargeError, match=r"about 288 evaluations"):
        check(P.crc_loss, P.crc_inputs(), P.crc_manual, reference="fd", fd_mode="full", fd_limit=100)
    rep = check(P.crc_loss, P.crc_inputs(), P.crc_manual, reference="fd", fd_mode="full", fd_limit=None)
    assert rep.ok


# -- no manual: autograd itself against finite differences -----------------------------------------------

class _Cube(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x ** 3

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return g * 3 * x ** 2


class _BadCube(_Cube):
    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return g * 2 * x ** 2


def test_custom_function_checked_against_finite_differences():
    x = torch.randn(3, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    rep = check(lambda x: _Cube.apply(x), {"x": x})
    assert rep.ok and rep.results[0].subject == "autograd" and rep.results[0].reference == "finite-difference"
    rep = check(lambda x: _BadCube.apply(x), {"x": x})
    assert not rep.ok
    assert "constant factor" in rep.results[0].hint


# -- second derivatives -----------------------------------------------------------------------------------

def test_double_backward_agrees_for_a_differentiable_manual():
    rep = check(P.crc_loss, P.crc_inputs(), P.crc_manual, double_backward=True)
    assert rep.ok, str(rep)
    assert {r.order for r in rep.results} == {1, 2}
    assert len([r for r in rep.results if r.order == 2]) == 4


def test_double_backward_reports_a_detached_manual():
    def detached(**kw):
        return {k: v.detach() for k, v in P.crc_manual(**kw).items()}
    rep = check(P.crc_loss, P.crc_inputs(), detached, double_backward=True)
    assert not rep.ok
    first = [r for r in rep.results if r.order == 1]
    second = [r for r in rep.results if r.order == 2]
    assert all(r.ok for r in first)
    assert second and all(not r.ok and "detached" in r.hint for r in second)


def test_double_backward_catches_a_wrong_second_derivative():
    x = torch.randn(6, dtype=torch.float64, generator=torch.Generator().manual_seed(1))

    def manual(x):  # right value, wrong dependence on x: d/dx of it is not 6x
        return {"x": 3 * x.detach() ** 2 + 0 * x}
    rep = check(lambda x: (x ** 3).sum(), {"x": x}, manual, double_backward=True)
    assert _by(rep, "x").ok and not _by(rep, "x", order=2).ok


def test_double_backward_without_manual_uses_finite_differences_of_autograd():
    x = torch.randn(6, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    rep = check(lambda x: (x.sin() * x).sum(), {"x": x}, double_backward=True)
    assert rep.ok and any(r.order == 2 for r in rep.results)


# -- speed: one forward, one backward, one manual call -----------------------------------------------------------

def test_autograd_reference_calls_loss_and_manual_once():
    calls = {"loss": 0, "manual": 0}

    def loss(**kw):
        calls["loss"] += 1
        return P.crc_loss(**kw)

    def manual(**kw):
        calls["manual"] += 1
        return P.crc_manual(**kw)
    assert check(loss, P.crc_inputs(), manual).ok
    assert calls == {"loss": 1, "manual": 1}


# -- the caller's tensors -----------------------------------------------------------------------------

def test_caller_tensors_are_not_modified():
    inputs = P.crc_inputs()
    before = {k: v.clone() for k, v in inputs.items()}
    check(P.crc_loss, inputs, P.crc_bug("element"), reference="both", double_backward=True)
    for k, v in inputs.items():
        assert torch.equal(v, before[k]) and v.grad is None and not v.requires_grad


@pytest.mark.parametrize("target", ["x", "y"])
def test_in_place_write_by_loss_is_named(target):
    def loss(x, w1, w2, y):
        {"x": x, "y": y}[target].mul_(2)
        return P.crc_loss(x, w1, w2, y)
    inputs = P.crc_inputs()
    before = inputs[target].clone()
    with pytest.raises(E.InPlaceModificationError, match=rf"loss writes into its input '{target}' in place"):
        check(loss, inputs, P.crc_manual)
    assert torch.equal(inputs[target], before)


def test_in_place_write_by_manual_is_named():
    def manual(x, w1, w2, y):
        out = P.crc_manual(x, w1, w2, y)
        w1.zero_()
        return out
    with pytest.raises(E.InPlaceModificationError, match=r"manual writes into its input 'w1'"):
        check(P.crc_loss, P.crc_inputs(), manual)


def test_in_place_write_through_data_is_caught():
    def manual(x, w1, w2, y):
        out = P.crc_manual(x, w1, w2, y)
        y.data.add_(1)
        return out
    with pytest.raises(E.InPlaceModificationError, match=r"'y'"):
        check(P.crc_loss, P.crc_inputs(), manual)


# -- bad input: one clear sentence each ------------------------------------------------------------------------

def _drop_idx(fn):
    return None if fn is None else (lambda idx=None, **kw: fn(**kw))


@pytest.mark.parametrize("kwargs,err,pattern", [
    (dict(wrt=("x", "idx")), E.InvalidInputError, r"'idx' in wrt is an integer"),
    (dict(wrt=("x", "nope")), E.InvalidParameterError, r"'nope', which is not an input"),
    (dict(manual=lambda **kw: {"x": P.crc_manual(**kw)["x"]}, wrt=("x", "w1")), E.ManualGradientError,
     r"no gradient for 'w1'"),
    (dict(manual=lambda **kw: {**P.crc_manual(**kw), "z": torch.zeros(1)}), E.ManualGradientError,
     r"'z', which is not one of the inputs"),
    (dict(manual=lambda **kw: {"x": torch.zeros(2, 2, 6, 5, dtype=torch.float64)}), E.ManualGradientError,
     r"shape \(2, 2, 6, 5\) but 'x' has shape \(2, 2, 6, 6\)"),
    (dict(manual=lambda **kw: {"x": P.crc_manual(**kw)["x"].float()}), E.ManualGradientError,
     r"dtype torch.float32 but 'x' is torch.float64"),
    (dict(manual=lambda **kw: {"x": torch.empty(2, 2, 6, 6, dtype=torch.float64, device="meta")}),
     E.ManualGradientError, r"gradient for 'x' is on meta but 'x' is on cpu"),
    (dict(manual=lambda **kw: [1, 2]), E.ManualGradientError, r"must return a dict"),
    (dict(loss=lambda **kw: 3.0), E.LossError, r"loss must return a torch.Tensor, got float"),
    (dict(loss=lambda **kw: torch.tensor(1.0)), E.LossDependencyError, r"does not depend on any of"),
    (dict(loss=lambda x, **kw: (x * 2).sum(), manual=None, wrt=("x", "w1")), E.LossDependencyError,
     r"does not depend on input 'w1'"),
    (dict(device="tpu"), E.UnknownDeviceError, r"unknown device 'tpu'"),
    (dict(reference="symbolic"), E.InvalidParameterError, r"reference='symbolic'"),
    (dict(dtype=torch.int64), E.InvalidParameterError, r"not a floating-point dtype"),
])
def test_bad_input_raises_one_clear_sentence(kwargs, err, pattern):
    kwargs = dict(kwargs)
    loss = _drop_idx(kwargs.pop("loss", P.crc_loss))
    manual = _drop_idx(kwargs.pop("manual", P.crc_manual))
    inputs = dict(P.crc_inputs(), idx=torch.arange(3))
    with pytest.raises(err, match=pattern) as info:
        check(loss, inputs, manual, **kwargs)
    assert isinstance(info.value, GradcheckKitError)
    msg = str(info.value)
    assert msg.count(". ") == 0 and msg.endswith("."), msg  # one sentence


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU message")
def test_cuda_without_gpu_is_an_unknown_device():
    with pytest.raises(E.UnknownDeviceError, match="not available"):
        check(P.relu_loss, P.relu_inputs(), P.relu_manual, device="cuda")


def test_nan_in_reference_reports_the_index():
    x = torch.tensor([[1.0, 4.0], [0.0, 9.0]], dtype=torch.float64)
    with pytest.raises(E.NonFiniteReferenceError, match=r"'x' is inf at index \(1, 0\)"):
        check(lambda x: x.sqrt().sum(), {"x": x}, lambda x: {"x": 0.5 / x.sqrt()})


def test_errors_are_builtin_subclasses_too():
    with pytest.raises(ValueError):
        check(P.relu_loss, P.relu_inputs(), P.relu_manual, device="tpu")
    with pytest.raises(TypeError):
        check(P.relu_loss, dict(P.relu_inputs(), n=torch.arange(2)), P.relu_manual, wrt=("n",))


# -- the report ----------------------------------------------------------------------------------------

def test_report_fields_and_json_round_trip():
    rep = check(P.crc_loss, P.crc_inputs(), P.crc_bug("element"), reference="both")
    assert isinstance(rep, Report) and rep.ok is False
    x = _by(rep, "x", "autograd")
    assert (x.name, x.device, x.dtype, x.shape, x.numel) == ("x", "cpu", "float64", (2, 2, 6, 6), 144)
    for key in ("ok", "max_abs_err", "max_rel_err", "worst_index", "manual_value", "reference_value",
                "mismatched", "numel", "atol", "rtol", "hint"):
        assert hasattr(x, key)
    d = rep.to_dict()
    text = json.dumps(d, allow_nan=False)
    assert json.loads(text) == d
    assert d["ok"] is False and d["results"][0]["worst_index"] == [1, 0, 2, 3]
    s = str(rep)
    assert "MISMATCH" in s and "(1, 0, 2, 3)" in s and "x [autograd]: hint:" in s


def test_infinite_relative_error_is_null_in_json():
    x = torch.tensor([1.0, -1.0], dtype=torch.float64)
    rep = check(lambda x: F.relu(x).sum(), {"x": x}, lambda x: {"x": torch.ones_like(x)})
    assert math.isinf(rep.results[0].max_rel_err)
    assert json.loads(json.dumps(rep.to_dict(), allow_nan=False))["results"][0]["max_rel_err"] is None


def test_non_scalar_loss_is_summed_and_said_so():
    inputs = {"x": torch.randn(3, 4, dtype=torch.float64)}
    rep = check(lambda x: x * x, inputs, lambda x: {"x": 2 * x})
    assert rep.ok and rep.summed and rep.loss_shape == (3, 4)
    assert "summed" in str(rep)
    assert not check(lambda x: (x * x).sum(), inputs, lambda x: {"x": 2 * x}).summed


def test_assert_grads_match_reads_like_assert_close():
    assert assert_grads_match(P.crc_loss, P.crc_inputs(), P.crc_manual).ok
    with pytest.raises(AssertionError) as info:
        assert_grads_match(P.crc_loss, P.crc_inputs(), P.crc_bug("element"))
    msg = str(info.value)
    assert "Mismatched elements: 1 / 144 (0.7%)" in msg
    assert "Greatest absolute difference:" in msg and "at index (1, 0, 2, 3)" in msg
    assert "Greatest relative difference:" in msg and "Hint:" in msg and "'x'" in msg
    from gradcheck_kit.testing import assert_grads_match as again
    assert again is assert_grads_match


def test_user_tolerances_override():
    def manual(**kw):
        out = P.crc_manual(**kw)
        return {k: v * (1 + 1e-5) for k, v in out.items()}
    assert not check(P.crc_loss, P.crc_inputs(), manual).ok
    rep = check(P.crc_loss, P.crc_inputs(), manual, rtol=1e-4, atol=0)
    assert rep.ok and all(r.rtol == 1e-4 and r.atol == 0 for r in rep.results)


def test_tolerances_scale_with_magnitude():
    a1, r1 = tolerances(torch.float32, 1.0)
    a2, r2 = tolerances(torch.float32, 1e6)
    assert a2 == pytest.approx(a1 * 1e6) and r1 == r2
    assert tolerances(torch.float64, 1.0)[1] < tolerances(torch.float32, 1.0)[1] < tolerances(torch.float16, 1.0)[1]
    big = {k: v * 1e3 for k, v in P.crc_inputs().items()}
    assert check(P.crc_loss, big, P.crc_manual, dtype=torch.float32).ok


def test_device_all_without_gpu_runs_cpu():
    rep = check(P.relu_loss, P.relu_inputs(), P.relu_manual, device="all")
    assert rep.ok and {r.device for r in rep.results} == {"cpu"} | (
        {f"cuda:{i}" for i in range(torch.cuda.device_count())})


def test_caller_rng_state_is_untouched_and_loss_is_seeded():
    state = torch.get_rng_state()
    x = {"x": torch.randn(8, dtype=torch.float64)}

    def loss(x):  # a dropout-like loss: the same mask on every call, so finite differences work
        return (x * (torch.rand(8, dtype=torch.float64) > 0.5)).sum()
    rep = check(loss, x, reference="fd")
    assert rep.ok
    torch.set_rng_state(state)


# -- CUDA ------------------------------------------------------------------------------------------

@pytest.mark.cuda
def test_cuda_result_against_cpu_float64_reference_with_nondeterminism():
    rep = check(P.crc_loss, P.crc_inputs(), P.crc_manual, device="cuda", dtype=torch.float32)
    assert rep.ok, str(rep)
    for r in rep.results:
        assert r.device.startswith("cuda") and r.reference == "autograd (cpu, float64)"
        assert r.nondeterminism is not None
    tf32 = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    check(P.crc_loss, P.crc_inputs(), P.crc_manual, device="cuda")
    assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == tf32


@pytest.mark.cuda
def test_cuda_catches_a_planted_bug_and_device_all():
    rep = check(P.crc_loss, P.crc_inputs(), P.crc_bug("element"), device="all")
    fails = [r for r in rep.results if not r.ok]
    assert {r.device for r in fails} >= {"cpu", "cuda:0"}
    assert all(r.worst_index == (1, 0, 2, 3) for r in fails)


@pytest.mark.cuda
def test_cuda_nondeterministic_backward_is_reported_separately():
    x = torch.randn(4096, dtype=torch.float32)
    idx = torch.randint(0, 8, (4096,))

    def loss(x, idx):
        return torch.zeros(8, device=x.device, dtype=x.dtype).index_add(0, idx, x * x).pow(2).sum()
    rep = check(loss, {"x": x, "idx": idx}, device="cuda", reference="both", fd_mode="fast")
    assert all(r.nondeterminism is not None for r in rep.results)


def test_fast_mode_at_relu_zeros_checks_just_off_the_kinks():
    inputs = P.crc_inputs(integer=True)
    rep = check(P.crc_loss, inputs, P.crc_manual, reference="fd", fd_mode="fast")
    assert rep.ok, str(rep)
    assert any(r.kinks for r in rep.results)
    assert "x' (seeded nearby point off the kinks): ok" in next(r.note for r in rep.results if r.kinks)
    bad = check(P.crc_loss, inputs, P.crc_bug("mask"), reference="fd", fd_mode="fast")
    assert not next(r for r in bad.results if r.name == "x").ok


def test_repeated_backward_reports_nondeterminism_separately():
    calls = []

    def manual(x, G):
        calls.append(1)
        g = G * (x > 0)
        return {"x": g + (1e-13 if len(calls) > 1 else 0.0)}  # the second run differs slightly
    rep = check(P.relu_loss, P.relu_inputs(), manual, repeat=2, wrt="x")
    r = rep.results[0]
    assert rep.ok and len(calls) == 2
    assert r.nondeterminism == pytest.approx(1e-13, rel=1e-3) and r.max_abs_err == 0
    assert any("nondeterministic" in n for n in rep.notes)


def test_fd_tolerance_has_a_rounding_noise_floor_for_tiny_gradients():
    # Saturated tanh (the lecture's all-positive inputs): gradients ~1e-9 while the loss is ~1.
    # A central difference cannot resolve below eps |f| / h ~ 1e-10, so a correct gradient passes
    # against finite differences, and a wrong one (sign flipped) is still caught.
    g = torch.Generator().manual_seed(0)
    w = torch.rand(20, 10, generator=g, dtype=torch.float64) * 4
    x = torch.rand(10, generator=g, dtype=torch.float64) * 4

    def loss(w, x):
        return torch.tanh(w @ x).sum()

    def manual(w, x):
        d = 1 - torch.tanh(w @ x) ** 2
        return {"w": torch.outer(d, x), "x": w.t() @ d}

    assert check(loss, {"w": w, "x": x}, manual, reference="fd").ok
    x_big = torch.rand(10, generator=g, dtype=torch.float64) * 0.1
    bad = lambda w, x: {k: -v for k, v in manual(w, x).items()}  # noqa: E731
    assert not check(loss, {"w": w, "x": x_big}, bad, reference="fd").ok
