"""Diagnosis hints: each planted bug class is named, end to end and on synthetic tensors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from gradcheck_kit import check
from gradcheck_kit._hints import diagnose
from tests import _problems as P


def _hint(rep, name, reference="autograd"):
    hits = [r for r in rep.results if r.name == name and r.reference.startswith(reference) and r.order == 1]
    assert hits and not hits[0].ok, str(rep)
    return hits[0].hint


# -- end to end: planted bugs in correct manual gradients -----------------------------------------------

@pytest.mark.parametrize("reference", ["autograd", "fd"])
@pytest.mark.parametrize("bug,name,words", [
    ("mask", "x", "ReLU mask dropped"),
    ("mask", "w1", "ReLU mask dropped"),
    ("factor2", "w2", "constant factor 2"),
    ("sign", "w1", "sign flip"),
    ("flip", "x", "spatially flipped"),
    ("padding", "x", "border"),
    ("element", "x", "single element differs, at index (1, 0, 2, 3)"),
])
def test_conv_relu_conv_bug_is_named(bug, name, words, reference):
    rep = check(P.crc_loss, P.crc_inputs(), P.crc_bug(bug), reference=reference)
    assert words in _hint(rep, name, "finite" if reference == "fd" else reference)


def test_missing_mask_at_the_relu_itself():
    inputs = {"x": torch.randn(4, 6, dtype=torch.float64), "G": torch.randn(4, 6, dtype=torch.float64)}
    rep = check(P.relu_loss, inputs, lambda x, G: {"x": G.clone()})
    assert "mismatch only where the reference gradient is 0" in _hint(rep, "x")


def test_dropped_shared_weight_term_is_named():
    rep = check(P.dag_loss, P.dag_inputs(), P.dag_bug("w1"))
    h = _hint(rep, "w1")
    assert "use 1 of 2 of 'w1'" in h and "shared weight" in h


def test_dropped_branch_of_a_shared_intermediate_is_named():
    rep = check(P.dag_loss, P.dag_inputs(), P.dag_bug("x1"))
    for name in ("x0", "w1"):
        h = _hint(rep, name)
        assert "of 2 of the result of" in h and "SUM" in h


def test_mean_versus_sum_is_named_with_its_size():
    x = torch.randn(4, 3, dtype=torch.float64)
    y = torch.randn(4, 3, dtype=torch.float64)

    def loss(x, y):
        return ((x - y) ** 2).sum(1).mean()  # mean over the batch of 4

    rep = check(loss, {"x": x, "y": y}, lambda x, y: {"x": 2 * (x - y)}, wrt=("x",))  # forgot the 1/4
    h = _hint(rep, "x")
    assert "constant factor 4" in h and "batch" in h
    rep = check(lambda x, y: ((x - y) ** 2).sum(), {"x": x, "y": y}, lambda x, y: {"x": (x - y) / 6}, wrt=("x",))
    assert "constant factor 1/12" in _hint(rep, "x") and "mean" in _hint(rep, "x")


def test_flipped_weight_gradient_is_named():
    x = torch.randn(2, 2, 6, 6, dtype=torch.float64)
    w = torch.randn(3, 2, 3, 3, dtype=torch.float64)
    G = torch.randn(2, 3, 4, 4, dtype=torch.float64)

    def loss(x, w, G):
        return (F.conv2d(x, w) * G).sum()

    def manual(x, w, G):  # a convolution of x with G where a correlation is needed
        return {"w": F.conv2d(x.transpose(0, 1), G.transpose(0, 1)).transpose(0, 1).flip(2, 3)}
    assert "spatially flipped" in _hint(check(loss, {"x": x, "w": w, "G": G}, manual), "w")


def test_transposed_matrix_gradient_is_named():
    x = torch.randn(4, 4, dtype=torch.float64)
    W = torch.randn(4, 4, dtype=torch.float64)
    rep = check(lambda x, W: (x @ W).sin().sum(), {"x": x, "W": W},
                lambda x, W: {"W": ((x @ W).cos().T @ x)}, wrt=("W",))  # g^T x instead of x^T g
    assert "transposed" in _hint(rep, "W")


def test_missing_output_padding_is_named():
    # (10 + 2 - 3) % 2 = 1: the transpose needs output_padding=1, here replaced by a zero row/column
    x = torch.randn(1, 1, 10, 10, dtype=torch.float64)
    w = torch.randn(1, 1, 3, 3, dtype=torch.float64)
    G = torch.randn(1, 1, 5, 5, dtype=torch.float64)

    def loss(x, w, G):
        return (F.conv2d(x, w, stride=2, padding=1) * G).sum()

    def manual(x, w, G):
        dx = F.conv_transpose2d(G, w, stride=2, padding=1)  # 9x9: the last row and column are lost
        return {"x": F.pad(dx, (0, 1, 0, 1))}
    assert "trailing edge" in _hint(check(loss, {"x": x, "w": w, "G": G}, manual, wrt=("x",)), "x")


# -- synthetic tensors ----------------------------------------------------------------------------------

def _r(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _bad(m, r):
    return (m - r).abs() > 1e-9


def test_synthetic_stride_phase():
    r = _r(2, 3, 8, 8)
    m = r.clone()
    m[..., 1::2, :] += 0.5 * _r(2, 3, 4, 8, seed=1)
    h = diagnose("x", m, r, _bad(m, r))
    assert "1 (mod 2) along dim 2" in h and "stride" in h


def test_synthetic_border_and_trailing_edge():
    r = _r(1, 2, 8, 8)
    m = r.clone()
    m[..., 0, :] = 0
    m[..., -1, :] = 0
    assert "border (width 1)" in diagnose("x", m, r, _bad(m, r))
    m = r.clone()
    m[..., -1] = 0
    assert "trailing edge" in diagnose("x", m, r, _bad(m, r))


def test_synthetic_factors_and_signs():
    r = _r(3, 4)
    assert "sign flip" in diagnose("x", -r, r, None)
    assert "constant factor 3" in diagnose("x", 3 * r, r, None)
    assert "constant factor -1/2 and a sign flip" in diagnose("x", -r / 2, r, None)
    assert "constant factor: manual = 0.7" in diagnose("x", 0.7 * r, r, None)


def test_synthetic_zero_and_nan():
    r = _r(3, 4)
    assert "zero everywhere" in diagnose("x", torch.zeros_like(r), r, None)
    m = r.clone()
    m[1, 2] = float("nan")
    assert "NaN/Inf (first at index (1, 2))" in diagnose("x", m, r, None)


def test_synthetic_channel_swap_of_a_weight_gradient():
    r = _r(4, 4, 3, 3)
    m = r.transpose(0, 1)
    assert "dims 0 and 1 swapped" in diagnose("w", m, r, _bad(m, r))


def test_unrecognised_pattern_says_so():
    r = _r(5, 5)
    m = _r(5, 5, seed=7)
    assert "no recognised pattern" in diagnose("x", m, r, _bad(m, r))


# -- issue 9: the missing classes, and kinks that are a convention ----------------------------------------

@pytest.mark.parametrize("make,words", [
    (lambda r: r.roll(1, 1), "rolled by 1 along dim 1"),
    (lambda r: r.roll(-2, 0), "rolled by -2 along dim 0"),
    (lambda r: r.flip(1), "flipped along dim 1 only"),
    (lambda r: r + 0.25, "constant offset"),
    (lambda r: 1.001 * r, "constant factor: manual = 1.001"),
])
def test_synthetic_new_classes(make, words):
    r = _r(6, 7)
    m = make(r)
    assert words in diagnose("x", m, r, _bad(m, r))


def test_flip_of_one_short_spatial_axis_is_not_called_padding():
    r = _r(2, 3, 2, 5)
    m = r.flip(2)
    assert "flipped along dim 2 only" in diagnose("x", m, r, _bad(m, r))


def test_dropped_leaky_slope_is_named():
    x = torch.randn(5, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    G = torch.randn(5, 6, dtype=torch.float64)
    rep = check(lambda x, G: (F.leaky_relu(x, 0.1) * G).sum(), {"x": x, "G": G},
                lambda x, G: {"x": G * (x > 0)}, wrt="x")
    assert "negative slope dropped" in _hint(rep, "x")


def test_relu_one_at_zero_is_named_a_valid_subgradient_and_worst_index_stays_right():
    inputs = P.relu_inputs()
    rep = check(P.relu_loss, inputs, lambda x, G: {"x": G * (x >= 0)}, wrt="x")
    r = [r for r in rep.results if r.name == "x"][0]
    n0 = int((inputs["x"] == 0).sum())
    assert f"all {n0} mismatches sit on ReLU inputs exactly 0" in r.hint and "valid subgradient" in r.hint
    assert float(inputs["x"][r.worst_index]) == 0.0
    # a real bug at the same places is not excused
    rep = check(P.relu_loss, inputs, lambda x, G: {"x": G * (x > 0) + 3.0 * (x == 0)}, wrt="x")
    assert "valid subgradient" not in _hint(rep, "x")
