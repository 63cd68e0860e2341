"""Issue 9: no false passes in any mode.  Each test plants a bug that must fail and keeps a correct twin that must pass.

The numbers in the comments refer to the issue's list of failures.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from gradcheck_kit import check
from gradcheck_kit import _check_errors as E
from gradcheck_kit.casefile import load_case
from tests import _problems as P

CASES = Path(__file__).resolve().parent.parent / "cases"


def _by(rep, name, reference="finite", order=1):
    hits = [r for r in rep.results if r.name == name and r.order == order and r.reference.startswith(reference)]
    assert hits, str(rep)
    return hits[0]


def _g(seed=0):
    return torch.Generator().manual_seed(seed)


# -- 1. finite differences alone at multi-way ties ------------------------------------------------------

def _addernet(sign=1.0):
    case = load_case(CASES / "unfold_custom_conv.py")
    g = _g(1)
    inputs = {"x": torch.randint(0, 3, (1, 2, 4, 4), generator=g).double(),
              "weight": torch.randint(0, 3, (5, 2, 3, 3), generator=g).double(),
              "bias": torch.randn(5, generator=g, dtype=torch.float64)}

    def manual(**kw):
        out = case.manual(**kw)
        return {**out, "x": sign * out["x"]}
    return case.loss, inputs, manual


def test_fd_alone_fails_a_sign_flipped_addernet_on_integer_ties():
    loss, inputs, bad = _addernet(-1.0)
    rep = check(loss, inputs, bad, reference="fd")
    assert not _by(rep, "x").ok, str(rep)
    _, _, good = _addernet(1.0)
    rep = check(loss, inputs, good, reference="fd")
    assert rep.ok, str(rep)
    x = _by(rep, "x")
    assert x.kinks > 0 and x.rechecked and x.recheck_ok  # counted, and confirmed at a point off the ties


def test_fd_accepts_other_valid_subgradients_at_ties():
    # relu'(0) = 1 instead of torch's 0
    rep = check(P.relu_loss, P.relu_inputs(), lambda x, G: {"x": G * (x >= 0), "G": F.relu(x)}, reference="fd")
    assert rep.ok, str(rep)
    # max-pool: the LAST maximum of a tied window instead of torch's first
    def last_max(x, G):
        n, c, h, w = x.shape
        win = x.view(n, c, h // 2, 2, w // 2, 2).permute(0, 1, 2, 4, 3, 5).reshape(n, c, h // 2, w // 2, 4)
        idx = 3 - win.flip(-1).argmax(-1)  # argmax returns the first; on the reversed window, the last
        onehot = F.one_hot(idx, 4).to(x.dtype) * G[..., None]
        dx = onehot.view(n, c, h // 2, w // 2, 2, 2).permute(0, 1, 2, 4, 3, 5).reshape(n, c, h, w)
        return {"x": dx, "G": F.max_pool2d(x, 2)}
    rep = check(P.pool_loss, P.pool_inputs(), last_max, reference="fd")
    assert rep.ok, str(rep)
    rep = check(P.pool_loss, P.pool_inputs(), last_max, reference="autograd")
    assert not rep.ok  # autograd follows torch's first-maximum convention


# -- 8. the interval rule at a single kink ---------------------------------------------------------------

def test_single_kink_value_outside_the_one_sided_interval_fails():
    x = torch.tensor([-1.0, 0.0, 2.0, 0.0], dtype=torch.float64)
    G = torch.tensor([1.0, 1.0, 1.0, -1.0], dtype=torch.float64)
    ok = check(P.relu_loss, {"x": x, "G": G}, lambda x, G: {"x": G * (x > 0)}, reference="fd", wrt="x")
    assert ok.ok, str(ok)

    def wild(x, G):
        g = G * (x > 0)
        return {"x": torch.where(x == 0, torch.full_like(g, 1000.0), g)}
    rep = check(P.relu_loss, {"x": x, "G": G}, wild, reference="fd", wrt="x")
    r = rep.results[0]
    assert not r.ok and r.kinks == 2 and r.kinks_outside == 2, str(rep)
    assert "several kinks meet" in r.note  # the note says how each kink element was decided


# -- 9. a jump does not inflate the tolerance -----------------------------------------------------------

def _threshold_problem():
    g = _g(2)
    x = torch.randn(30, generator=g, dtype=torch.float64)
    x[::5] = 0.5  # exactly at the threshold: the loss jumps there (value 2 != threshold 0.5)
    G = torch.randn(30, generator=g, dtype=torch.float64)
    loss = lambda x, G: (F.threshold(x, 0.5, 2.0) * G).sum()  # noqa: E731
    return loss, {"x": x, "G": G}


@pytest.mark.parametrize("bug", [None, "sign", "x2", "roll", "mask"])
def test_jump_neither_inflates_atol_nor_hides_bugs(bug):
    loss, inputs = _threshold_problem()

    def manual(x, G):
        g = G * (x > 0.5)  # torch: y = x where x > threshold, else value
        g = {"sign": -g, "x2": 2 * g, "roll": g.roll(1), "mask": G}.get(bug, g)
        return {"x": g}
    r = check(loss, inputs, manual, reference="fd", wrt="x").results[0]
    assert r.atol < 1e-4, r          # was 0.30: jump / 2h set the scale
    assert r.ok == (bug is None), r
    if bug is None:
        assert r.jumps == 6 and r.kinks == 6


# -- 11. order statistics tied on both sides; near-kink crossings in fast mode ---------------------------

@pytest.mark.parametrize("reduce", ["median", "median_dim", "kthvalue"])
def test_order_statistic_ties_pass_fd_with_torch_gradient_and_fail_when_wrong(reduce):
    x = torch.tensor([[3.0, 2.0, 1.0, 2.0, 2.0, 5.0], [0.0, 1.0, 1.0, 1.0, 4.0, 1.0]], dtype=torch.float64)
    f = {"median": lambda x: x.median(), "median_dim": lambda x: x.median(1).values.sum(),
         "kthvalue": lambda x: x.kthvalue(3, 1).values.sum()}[reduce]
    rep = check(f, {"x": x}, reference="fd")  # autograd's gradient checked by finite differences
    assert rep.ok, str(rep)
    xx = x.clone().requires_grad_(True)
    (tg,) = torch.autograd.grad(f(xx), xx)
    bad = check(f, {"x": x}, lambda x: {"x": 2.5 * tg}, reference="fd")
    assert not bad.ok, str(bad)


def test_fast_mode_no_false_alarm_at_near_kinks():
    g = _g(3)
    x = torch.randn(20_000, generator=g, dtype=torch.float64)
    x[[17, 12345]] = torch.tensor([3e-9, -8e-9], dtype=torch.float64)  # crossed inside the step
    G = torch.randn(20_000, generator=g, dtype=torch.float64)
    rep = check(P.relu_loss, {"x": x, "G": G}, P.relu_manual, reference="fd", fd_mode="fast", wrt="x")
    assert rep.ok, str(rep)


# -- 2. second derivatives against finite differences ---------------------------------------------------

def _detached(**kw):
    with torch.no_grad():
        return P.crc_manual(**kw)


@pytest.mark.parametrize("reference", ["autograd", "fd", "both"])
def test_detached_manual_fails_double_backward_in_every_reference(reference):
    inputs = P.crc_inputs()
    rep = check(P.crc_loss, inputs, _detached, reference=reference, double_backward=True)
    order2 = [r for r in rep.results if r.order == 2]
    assert not rep.ok and order2 and not any(r.ok for r in order2)
    assert any("detached" in (r.hint or "") for r in order2)
    if reference == "both":
        assert {r.reference.split(" ")[0] for r in order2} == {"autograd", "finite-difference"}


def test_double_backward_fd_passes_a_differentiable_manual_and_catches_a_wrong_second_derivative():
    inputs = P.dag_inputs()
    rep = check(P.dag_loss, inputs, P.dag_manual, reference="fd", double_backward=True)
    assert rep.ok and any(r.order == 2 for r in rep.results), str(rep)

    def wrong_hvp(**kw):  # right values, wrong derivative: a constant-in-x term that is not x-independent
        out = P.dag_manual(**kw)
        x0 = kw["x0"]
        return {**out, "x0": out["x0"] + 1e-3 * (x0 ** 2 - x0.detach() ** 2)}
    rep = check(P.dag_loss, inputs, wrong_hvp, reference="fd", double_backward=True)
    assert [r.order for r in rep.results if not r.ok] == [2], str(rep)


# -- 3. cotangents -----------------------------------------------------------------------------------------

def _vjp_problem():
    g = _g(4)
    return {"x": torch.randn(6, generator=g, dtype=torch.float64), "w": torch.randn(6, generator=g, dtype=torch.float64)}


def _vjp_loss(x, w):
    return x.flip(0) * w


def _vjp_good(x, w, grad_output):  # y_i = x_{n-1-i} w_i:  dx = (g * w).flip(0),  dw = g * x.flip(0)
    return {"x": (grad_output * w).flip(0), "w": grad_output * x.flip(0)}


def _vjp_bad(x, w, grad_output):  # g * w.flip(0) instead of (g * w).flip(0): identical when g is all ones
    return {"x": grad_output * w.flip(0), "w": grad_output * x.flip(0)}


@pytest.mark.parametrize("reference", ["autograd", "fd"])
def test_flipped_vjp_fails_along_random_cotangents(reference):
    inputs = _vjp_problem()
    good = check(_vjp_loss, inputs, _vjp_good, reference=reference)
    assert good.ok and good.cotangents == 3 and not good.summed, str(good)
    assert {r.cotangent for r in good.results} == {0, 1, 2}
    bad = check(_vjp_loss, inputs, _vjp_bad, reference=reference)
    assert not bad.ok and not _by(bad, "x", "").ok
    assert "cotangent" in bad.notes[0]
    # without grad_output the loss is summed and the report says so: the bug is invisible along ones
    summed = check(_vjp_loss, inputs, lambda x, w: _vjp_bad(x, w, torch.ones(6, dtype=torch.float64)))
    assert summed.ok and summed.summed and "all-ones cotangent" in summed.notes[0]


# -- 4. non-finite values --------------------------------------------------------------------------------

def test_nan_loss_is_an_error_naming_where():
    x = torch.tensor([1.0, -1.0, 2.0], dtype=torch.float64)
    with pytest.raises(E.NonFiniteLossError, match=r"nan at output index \(1,\)"):
        check(lambda x: x.log(), {"x": x}, lambda x: {"x": 1 / x})


def test_nonfinite_manual_fails_naming_where():
    x = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)
    rep = check(lambda x: (x ** 2).sum(), {"x": x}, lambda x: {"x": torch.where(x == 2, x / 0, 2 * x)},
                reference="both")
    assert not rep.ok and all(not r.ok for r in rep.results)
    assert "index (1,)" in rep.results[0].note


# -- 5. a forgotten gradient -------------------------------------------------------------------------------

def test_an_input_manual_omits_fails_with_its_name():
    rep = check(P.dag_loss, P.dag_inputs(), lambda **kw: {k: v for k, v in P.dag_manual(**kw).items() if k != "w2"})
    w2 = _by(rep, "w2", "autograd")
    assert not rep.ok and not w2.ok and "no gradient for 'w2'" in w2.note
    assert check(P.dag_loss, P.dag_inputs(), P.dag_manual).ok


# -- 6 and 10. fast finite differences: power and a stated sensitivity -----------------------------------

def _quad(n, seed=5, offset=0.0):
    g = _g(seed)
    inputs = {"x": torch.randn(n, generator=g, dtype=torch.float64), "A": torch.rand(n, generator=g, dtype=torch.float64)}

    def loss(x, A):
        return (A * x ** 2).sum() + x.sin().sum() + offset

    def manual(x, A, bug=None, at=0):
        gx = 2 * A * x + x.cos()
        if bug == "element":
            gx = gx.clone()
            gx[at] += 0.01 * float(gx.abs().max())
        elif bug == "x1.1":
            gx = 1.1 * gx
        elif bug == "x2":
            gx = 2 * gx
        return {"x": gx}
    return loss, inputs, manual


@pytest.mark.parametrize("n,at,dtype", [(6_000, 4321, torch.float64), (20_000, 19_999, torch.float64),
                                        (20_000, 19_999, torch.float32)])
def test_auto_fd_catches_a_one_percent_single_element_error(n, at, dtype):
    loss, inputs, manual = _quad(n)
    good = check(loss, inputs, manual, reference="fd", wrt="x", dtype=dtype)
    r = good.results[0]
    assert good.ok and r.fd_mode == "fast" and r.sensitivity is not None, str(good)
    assert r.sensitivity <= 0.01 * float(manual(**inputs)["x"].abs().max())  # a pass means something precise
    bad = check(loss, inputs, lambda **kw: manual(**kw, bug="element", at=at), reference="fd", wrt="x",
                dtype=dtype)
    assert not bad.ok and bad.results[0].worst_index == (at,), str(bad)


@pytest.mark.parametrize("bug", ["x1.1", "x2"])
def test_fast_fd_catches_global_errors_under_a_large_loss_offset(bug):
    loss, inputs, manual = _quad(50_000, offset=1e6)
    rep = check(loss, inputs, lambda **kw: manual(**kw, bug=bug), reference="fd", wrt="x", fd_work=2e7)
    assert not rep.ok, str(rep)


# -- 7. reports show everything ---------------------------------------------------------------------------

def test_report_shows_kinks_points_and_decisions_in_print_and_json():
    rep = check(P.crc_loss, P.crc_inputs(integer=True), P.crc_manual, reference="fd")
    x = _by(rep, "x")
    assert x.kinks and x.kinks_inside + x.kinks_hull == x.kinks_inside + x.kinks_hull  # fields exist
    text = str(rep)
    for word in ("kink", "x'", "inside the one-sided interval", "err@worst", "allowed@worst", "atol"):
        assert word in text, word
    d = json.loads(json.dumps(rep.to_dict(), allow_nan=False))
    res = d["results"][0]
    for key in ("kinks", "kinks_inside", "kinks_hull", "kinks_outside", "ties", "jumps", "rechecked", "recheck_ok",
                "fd_mode", "note", "order", "mismatched", "atol", "rtol", "worst_err", "manual_value",
                "reference_value", "sensitivity", "cotangent", "baseline_ratio"):
        assert key in res, key


def test_worst_element_fields_refer_to_one_element():
    rep = check(P.crc_loss, P.crc_inputs(), P.crc_bug("element"))
    x = _by(rep, "x", "autograd")
    assert x.worst_index == (1, 0, 2, 3)
    assert x.worst_err == pytest.approx(abs(x.manual_value - x.reference_value))


# -- 13. baseline-relative tolerance for low precision --------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_baseline_passes_a_kernel_as_accurate_as_autograd_and_fails_a_worse_one(dtype):
    g = _g(6)
    inputs = {"a": torch.randn(16, 32, generator=g), "b": torch.randn(32, 8, generator=g)}
    loss = lambda a, b: (a @ b).tanh().sum()  # noqa: E731

    def manual(a, b, err=0.0):
        t = 1 - (a @ b).tanh() ** 2
        ga = t @ b.T
        return {"a": ga * (1 + err), "b": a.T @ t}
    rep = check(loss, inputs, manual, dtype=dtype, baseline=2.0)
    assert rep.ok, str(rep)
    r = rep.results[0]
    assert r.baseline == 2.0 and r.baseline_error > 0 and r.baseline_ratio is not None
    bad = check(loss, inputs, lambda **kw: manual(**kw, err=0.05), dtype=dtype, baseline=2.0)
    assert not _by(bad, "a", "autograd").ok and _by(bad, "b", "autograd").ok, str(bad)
    with pytest.raises(E.InvalidParameterError):
        check(loss, inputs, manual, baseline=-1)


# -- the mutation audit, lean (benchmarks/audit.py runs every rule and sample) ---------------------------

_AUDIT_RULES = ["relu", "abs", "max_pool2d", "threshold", "softplus", "median", "kthvalue", "smooth_l1_loss",
                "hardtanh", "leaky_relu", "clamp", "conv2d", "cross_entropy", "layer_norm", "amax",
                "unfold_conv2d_custom"]


from benchmarks.audit import _kinky  # noqa: E402


@pytest.mark.parametrize("rule", _AUDIT_RULES)
def test_mutation_audit_lean(rule, monkeypatch):
    from benchmarks import audit
    from gradcheck_kit.manual import registry

    samples = registry.get(rule).samples()
    pick = {samples[0].name} | set([s.name for s in samples if _kinky(s)][:1])
    monkeypatch.setattr(registry.Rule, "samples",
                        lambda self, device="cpu", dtype=torch.float64, _orig=registry.Rule.samples:
                        [s for s in _orig(self, device, dtype) if s.name in pick])
    muts = ("sign", "one_element", "mask_dropped")
    rows = (audit.audit_rule(rule, ("float64",), ("autograd", "fd"), muts)
            + audit.audit_rule(rule, ("float32",), ("autograd",), muts))
    bad = [r for r in rows if r["outcome"] not in ("caught", "pass", "valid_subgradient")]
    assert not bad, bad
    # a mutant finite differences must accept (a valid subgradient at a tie) is still caught by autograd
    for r in rows:
        if r["outcome"] == "valid_subgradient":
            twin = [q for q in rows if q["reference"] == "autograd" and
                    (q["sample"], q["dtype"], q["mutation"]) == (r["sample"], r["dtype"], r["mutation"])]
            assert twin and twin[0]["outcome"] == "caught", r
    assert any(r["outcome"] == "caught" for r in rows) and any(r["outcome"] == "pass" for r in rows)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("rule", _AUDIT_RULES)
def test_no_false_alarm_with_both_and_double_backward(rule, dtype):
    from gradcheck_kit.manual import registry
    from gradcheck_kit.sweep import sample_check

    r = registry.get(rule)
    samples = [s for s in r.samples(dtype=dtype) if all(
        bool(t.isfinite().all()) for t in (*s.args, *s.kwargs.values()) if isinstance(t, torch.Tensor)
        and t.is_floating_point())]
    for sample in [samples[0]] + [s for s in samples if _kinky(s)][:1]:
        rep = sample_check(r, sample, reference="both", double_backward=True, diagnose=False)
        assert rep.ok, f"{sample.name}: {rep}"


# -- below float64: judged relative to torch's own error in that dtype (DeviceRun.own_error) -------------

def _sample(rule, name, dtype):
    from gradcheck_kit.manual import registry

    r = registry.get(rule)
    return r, [s for s in r.samples(dtype=dtype) if s.name == name][0]


def _rule_problem(rule, name, dtype):
    from gradcheck_kit.sweep import _loss_and_manual

    r, s = _sample(rule, name, dtype)
    loss, manual, inputs, wrt = _loss_and_manual(r, s, 0)
    return loss, manual, inputs, wrt


def test_float32_cancellation_is_judged_against_float64_relative_to_torchs_own_error():
    # group_norm's input gradient is a small difference of large terms: torch's own float32 gradient is 5.4e-6
    # from float64 autograd, above the float32 tolerance (1.3e-6); the rule's is 1.8e-6.
    loss, manual, inputs, wrt = _rule_problem("group_norm", "group_norm[2d,G2]", torch.float32)
    rep = check(loss, inputs, manual, wrt=wrt, reference="autograd")
    r = _by(rep, "input", "autograd")
    assert rep.ok and r.reference == "autograd (cpu, float64)" and "torch" not in (r.hint or ""), str(rep)
    assert "re-checked against float64" in r.note and "autograd's own in float32" in r.note
    top = float(r.reference_value and max(abs(r.reference_value), 1e-3))

    def planted(**kw):  # one element off by ~10x torch's own error: beyond atol + 2 x it
        out = dict(manual(**kw))
        g = out["input"].clone()
        g.view(-1)[5] += 6e-5
        return {**out, "input": g}
    bad = check(loss, inputs, planted, wrt=wrt, reference="autograd")
    rb = _by(bad, "input", "autograd")
    assert not rb.ok and "still a mismatch" in rb.note and top > 0, str(bad)


def test_float32_loss_that_depends_on_its_dtype_passes_fd_and_planted_bugs_still_fail():
    # rms_norm(eps=None) uses finfo(dtype).eps: the float64 differences are of a slightly different function
    loss, manual, inputs, wrt = _rule_problem("rms_norm", "rms_norm[small]", torch.float32)
    rep = check(loss, inputs, manual, wrt=wrt, reference="fd", double_backward=True)
    assert rep.ok, str(rep)
    assert "torch's own gradient in that dtype" in _by(rep, "input").note
    assert "torch's own HVP in that dtype" in _by(rep, "input", order=2).note
    for k in (1.1, -1.0):
        bad = check(loss, inputs, lambda **kw: {**manual(**kw), "input": k * manual(**kw)["input"]}, wrt=wrt,
                    reference="fd")
        assert not _by(bad, "input").ok, str(bad)


class _WrongInFloat32(torch.autograd.Function):
    """x ** 2 whose backward is wrong (x1.1) in float32 only: a kernel bug that own_error must not excuse."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x * x

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return g * 2 * x * (1.1 if x.dtype == torch.float32 else 1.0)


def test_an_autograd_subject_is_never_its_own_yardstick():
    x = torch.randn(5, generator=_g(3))
    rep = check(lambda x: _WrongInFloat32.apply(x).sum(), {"x": x}, dtype=torch.float32, reference="fd")
    assert not rep.ok, str(rep)


def test_order_two_convention_at_exact_ties_is_decided_off_the_ties():
    # torch's pow masks exponent == 0 in dL/dinput, so its double backward there is 0, not 1/x
    loss, manual, inputs, wrt = _rule_problem("pow", "pow[3x4,int_exponents]", torch.float64)
    rep = check(loss, inputs, manual, wrt=wrt, reference="fd", double_backward=True)
    r = _by(rep, "exponent", order=2)
    assert rep.ok and r.rechecked and r.recheck_ok and "exact ties or zeros" in r.note, str(rep)

    def planted(input, exponent):  # right values; d/dexponent of dL/dinput lost wherever |exponent| < 0.5
        e = torch.where(exponent.abs() < 0.5, exponent.detach(), exponent)
        return {"input": e * input ** (exponent - 1), "exponent": input ** exponent * torch.log(input)}
    bad = check(lambda input, exponent: torch.pow(input, exponent).sum(), inputs, planted, wrt=wrt,
                reference="fd", double_backward=True)
    assert [r.label for r in bad.results if not r.ok] == ["exponent (2nd order)"], str(bad)
    assert "does NOT agree" in _by(bad, "exponent", order=2).note


@pytest.mark.parametrize("reference", ["autograd", "fd"])
def test_float32_recheck_does_not_excuse_an_error_larger_than_torchs_own(reference):
    # batch_norm's input gradient of a summed loss is almost all cancellation: torch's own float32 error is 0.6%
    # of it, so a +1% element is inside 2x that (flash-attention's factor) but not inside 1x
    from benchmarks.audit import mutate

    loss, manual, inputs, wrt = _rule_problem("batch_norm", "batch_norm[train,2d]", torch.float32)
    assert check(loss, inputs, manual, wrt=("input",), reference=reference, allow_unused=True).ok
    bad = check(loss, inputs, lambda **kw: {**manual(**kw), "input": mutate(manual(**kw)["input"], "one_element")},
                wrt=("input",), reference=reference, allow_unused=True)
    assert not bad.ok, str(bad)


def test_float32_recheck_unavailable_leaves_the_first_verdict():
    # a loss that only runs in float32: no float64 yardstick, so a failing float32 comparison stays failing
    def loss(x):
        if x.dtype != torch.float32:
            raise TypeError("float32 only")
        return (x * x).sum()
    x = torch.randn(5, generator=_g(4))
    rep = check(loss, {"x": x}, lambda x: {"x": 2 * x * 1.001}, dtype=torch.float32)
    assert not rep.ok and rep.results[0].reference == "autograd", str(rep)
    assert check(loss, {"x": x}, lambda x: {"x": 2 * x}, dtype=torch.float32).ok


def test_order_two_fd_sees_float32_arithmetic_inside_a_float64_gradient():
    # a float32 cotangent times a 0-d float64 tensor stays float32 (0-d operands do not promote): the manual
    # gradient is float64-typed but moves by float32 rounding steps at the default step; the check retries with
    # a step that rounding can resolve instead of calling most elements kinks
    g32 = torch.randn(3, 4, generator=_g(8))
    x = torch.randn(3, 4, generator=_g(9))
    b = torch.tensor(0.7)

    def loss(x, b):
        return (torch.atan2(x, b) * g32).sum()

    def manual(x, b, bug=False):
        r = 1 / (x * x + b * b)
        gx = (g32 * b) * r                   # float32 * 0-d: float32, then float64 with r
        if bug:
            gx = (g32 * b.detach()) * r      # d/db of dL/dx lost
        return {"x": gx, "b": (g32 * -x * r).sum()}
    rep = check(loss, {"x": x, "b": b}, manual, reference="fd", double_backward=True)
    assert rep.ok, str(rep)
    assert "rounding steps" in _by(rep, "x", order=2).note
    bad = check(loss, {"x": x, "b": b}, lambda **kw: manual(**kw, bug=True), reference="fd", double_backward=True)
    assert not _by(bad, "b", order=2).ok, str(bad)
