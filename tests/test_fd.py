"""_fd.py: the interval rule's ingredients, jump-robust scale, ties, the fast-mode plan, and seed 002 at reduced size."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from benchmarks.seed002_fd import run as seed002
from gradcheck_kit import _fd


def _ev(loss, **inputs):
    inputs = {k: v.clone() for k, v in inputs.items()}
    return _fd.Evaluator(loss, inputs, lambda fn, kw: fn(**kw))


def test_kink_interval_is_left_and_right_slope():
    x = torch.tensor([0.0, 1.0, -2.0, 0.3e-6], dtype=torch.float64)  # the last one: a kink inside the step
    ev = _ev(lambda x: (F.relu(x) * torch.tensor([2.0, 1, 1, -3], dtype=torch.float64)).sum(), x=x)
    fr = _fd.full(ev, "x", ev(), 1e-6)
    assert fr.kink.tolist() == [True, False, False, True]
    assert fr.lo[0].item() == pytest.approx(0.0, abs=1e-6) and fr.hi[0].item() == pytest.approx(2.0, rel=1e-6)
    # x sits just right of the kink: its slope -3 is an end of the interval (the far slope 0 was dropped)
    assert fr.lo[3].item() == pytest.approx(-3.0, rel=1e-6) and -3.0 < fr.hi[3].item() <= 0.0
    assert fr.scale == pytest.approx(3.0, rel=1e-6)
    # the interval rule: a value outside [lo, hi] fails, one inside passes
    j = _fd.judge(torch.tensor([1.0, 1.0, 0.0, -3.0], dtype=torch.float64), fr, 1e-6, 1e-5)
    assert not j.bad.any() and j.inside == 2
    j = _fd.judge(torch.tensor([1000.0, 1.0, 0.0, -3.0], dtype=torch.float64), fr, 1e-6, 1e-5)
    assert j.undecided.tolist() == [True, False, False, False]


def test_jump_is_dropped_from_interval_and_scale():
    x = torch.tensor([0.5, 0.5 + 0.4e-6, 0.1, 2.0], dtype=torch.float64)
    ev = _ev(lambda x: F.threshold(x, 0.5, 2.0).sum(), x=x)
    fr = _fd.full(ev, "x", ev(), 1e-6)
    assert fr.jump[:2].tolist() == [True, True] and fr.kink[:2].all()
    assert fr.scale == pytest.approx(1.0, rel=1e-6)  # not jump / 2h ~ 1e6
    assert float(fr.hi[:2].max()) < 2 and float(fr.lo[:2].min()) > -1


def test_ties_mark_repeated_values_only():
    x = torch.tensor([[1.0, 2.0, 2.0], [3.0, 1.0, 4.0]])
    assert _fd.ties(x).tolist() == [[True, True, True], [False, True, False]]
    assert not _fd.ties(torch.tensor([5.0])).any()


def test_decide_keeps_the_interval_rule_when_samples_show_one_kink():
    x = torch.tensor([0.0], dtype=torch.float64)
    ev = _ev(lambda x: F.relu(x).sum(), x=x)
    fr = _fd.full(ev, "x", ev(), 1e-6)
    for value, ok in ((1000.0, False), (0.5, True)):
        m = torch.tensor([value], dtype=torch.float64)
        j = _fd.judge(m, fr, 1e-6, 1e-5)
        j = _fd.decide(j, m, fr, j.undecided.nonzero().flatten().tolist(),
                       lambda s, idx: torch.tensor([1.0 if s % 2 else 0.0] * len(idx), dtype=torch.float64))
        assert bool(j.bad.any()) != ok


def test_sensitivity_and_plan():
    # smaller blocks and more projections catch smaller errors
    assert _fd.sensitivity(1.0, 100, 2) < _fd.sensitivity(1.0, 400, 2)
    assert _fd.sensitivity(1.0, 100, 8) < _fd.sensitivity(1.0, 100, 2)
    pl = _fd.plan(20_000, bound=1e-3, target=0.05, budget=10_000)
    assert pl.reached and pl.sensitivity <= 0.05 and pl.evaluations <= 10_000
    assert pl.block * (-(-20_000 // pl.block)) >= 20_000
    tight = _fd.plan(20_000, bound=1e-3, target=1e-6, budget=500)
    assert not tight.reached and tight.evaluations <= 500 and math.isfinite(tight.sensitivity)


def test_projection_bound_counts_noise_once_and_scales_like_l2():
    torch.manual_seed(0)
    n = 10_000
    x = torch.randn(n, dtype=torch.float64)
    ev = _ev(lambda x: (x ** 2).sum() + 1e6, x=x)
    f0 = ev()
    tol_i = torch.full((n,), 1e-5, dtype=torch.float64)
    u = torch.randn(n, dtype=torch.float64)
    u /= u.norm()
    p = _fd.project(ev, "x", f0, 1e-6, 2 * x, tol_i, u, (0, n))
    noise = ev.noise(f0) / 1e-6
    assert p.tol == pytest.approx(_fd.Z * 1e-5 + 4 * noise, rel=1e-9)  # L2: Z x RMS tolerance, not x sum|u_i|
    assert p.err <= p.tol


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_seed002_conv_relu_conv_reduced_catches_x2_and_x1p1(dtype):
    rows = seed002(True, [0], [dtype], (1.1,), fd_work=5e6)
    assert all(r["right"] for r in rows), rows
    assert {r["fd_mode"] for r in rows if r["input"] == "x"} == {"fast"}
