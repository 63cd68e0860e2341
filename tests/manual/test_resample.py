"""interpolate beyond the generic test: the interpolation matrices equal torch's forward, torch's
bicubic same-size gradient, planted bugs, bad input."""

import dataclasses
import itertools

import pytest
import torch
import torch.nn.functional as F

from gradcheck_kit import manual
from gradcheck_kit.errors import InvalidInputError, InvalidParameterError, UnsupportedError
from gradcheck_kit.manual import registry, resample
from tests.manual._seqcheck import check_backward

D = torch.float64


def _torch_matrix(L, dtype, nd, **kw):
    """Column i = torch's forward of the unit vector e_i along the last axis (other axes of length 1...)."""
    cols = []
    for i in range(L):
        x = torch.zeros((1, 1) + (1,) * (nd - 1) + (L,), dtype=dtype)
        x[..., i] = 1.0
        cols.append(F.interpolate(x, **kw).reshape(-1))
    return torch.stack(cols, 1).double()


# (L, mode, nd, params): the last axis's matrix; the other axes have length 1 and size 1
MATRICES = [(L, mode, nd, p) for L in (1, 2, 5) for mode, nd in (("nearest", 1), ("nearest-exact", 2),
            ("linear", 1), ("bicubic", 2), ("area", 1))
            for p in (dict(size=7), dict(size=3), dict(scale_factor=1.7), dict(scale_factor=0.6),
                      dict(scale_factor=2.5, recompute_scale_factor=True))
            if not (p.get("scale_factor", 1) * L < 1 or (mode == "area" and "scale_factor" in p and
                                                         p.get("recompute_scale_factor") is None and False))]
MATRICES += [(4, "nearest", 2, dict(scale_factor=1.2)), (5, "nearest", 2, dict(scale_factor=2.1)),
             (4, "nearest", 3, dict(scale_factor=1.2)), (5, "nearest", 3, dict(scale_factor=2.1)),
             (4, "linear", 1, dict(scale_factor=1.2)), (4, "bicubic", 2, dict(scale_factor=1.2))]
MATRICES += [(5, "linear", 1, dict(size=8, align_corners=True)), (5, "bicubic", 2, dict(size=3, align_corners=True)),
             (4, "linear", 1, dict(size=1, align_corners=True)), (4, "linear", 1, dict(size=1)),
             (4, "nearest", 1, dict(size=8)), (4, "nearest", 1, dict(scale_factor=1.2))]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("L,mode,nd,params", MATRICES, ids=[f"{c[1]}-L{c[0]}-{i}" for i, c in enumerate(MATRICES)])
def test_interpolation_matrix_is_torchs_forward(L, mode, nd, params, dtype):
    kw = dict(params, mode=mode)
    if nd > 1:
        kw = dict(kw, size=(1,) * (nd - 1) + (kw["size"],)) if "size" in kw else \
            dict(kw, scale_factor=(1.0,) * (nd - 1) + (kw["scale_factor"],))
    ref = _torch_matrix(L, dtype, nd, **kw)
    mats = resample._matrices((1, 1) + (1,) * (nd - 1) + (L,), dtype, kw.get("size"), kw.get("scale_factor"), mode,
                              kw.get("align_corners"), kw.get("recompute_scale_factor"), False)
    mine = torch.from_numpy(mats[-1])
    if mode.startswith("nearest"):
        assert torch.equal(mine, ref)                 # which source element: exact
    else:
        torch.testing.assert_close(mine, ref, rtol=0, atol=1e-6 if dtype == torch.float32 else 1e-14)


def test_linear_align_corners_false_spelled_out():
    # L = 2 -> O = 4, scale 1/2: sources max(0.5 (o + 0.5) - 0.5, 0) = 0, 0.25, 0.75, 1.25 (clamped to x[1])
    (A,) = resample._matrices((1, 1, 2), D, 4, None, "linear", False, None, False)
    assert A.tolist() == [[1.0, 0.0], [0.75, 0.25], [0.25, 0.75], [0.0, 1.0]]
    g = torch.tensor([[[1.0, 10.0, 100.0, 1000.0]]], dtype=D)
    (gx,) = manual.get("interpolate").backward(g, torch.zeros(1, 1, 2, dtype=D), size=4, mode="linear")
    assert gx.tolist() == [[[1.0 + 7.5 + 25.0, 2.5 + 75.0 + 1000.0]]]


def test_random_configurations_forward_equals_torch():
    # 150 seeded configurations (mode, 1-3 spatial dims, size or scale factor, align_corners,
    # recompute_scale_factor, float32/float64): the rule's matrices applied to x give torch's forward
    import random
    import warnings

    rng = random.Random(0)
    checked = 0
    while checked < 150:
        mode = rng.choice(["nearest", "nearest-exact", "linear", "bilinear", "bicubic", "trilinear", "area"])
        nd = {"linear": 1, "bilinear": 2, "bicubic": 2, "trilinear": 3}.get(mode, rng.choice([1, 2, 3]))
        shape = (1, 2) + tuple(rng.randint(1, 7) for _ in range(nd))
        kw = dict(mode=mode)
        if mode not in ("nearest", "nearest-exact", "area") and rng.random() < 0.5:
            kw["align_corners"] = rng.random() < 0.5
        if rng.random() < 0.4:
            kw["size"] = tuple(rng.randint(1, 11) for _ in range(nd))
        else:
            kw["scale_factor"] = tuple(rng.choice([0.6, 0.75, 1.1, 1.2, 1.5, 1.7, 2, 2.1, 2.5, 1 / 3]) for _ in range(nd))
            kw["recompute_scale_factor"] = rng.random() < 0.3 or None
        dtype = rng.choice([torch.float32, torch.float64])
        x = torch.randn(shape, dtype=dtype, generator=torch.Generator().manual_seed(checked))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                ref = F.interpolate(x, **kw)
            except (RuntimeError, ValueError):
                continue
        if ref.numel() == 0:
            continue
        mats = resample._matrices(x.shape, dtype, kw.get("size"), kw.get("scale_factor"), mode,
                                  kw.get("align_corners"), kw.get("recompute_scale_factor"), False)
        y = x.double()
        for a, A in enumerate(mats):
            y = torch.movedim(torch.movedim(y, 2 + a, -1) @ torch.from_numpy(A).T, -1, 2 + a)
        tol = 1e-12 if dtype == torch.float64 else 1e-5
        torch.testing.assert_close(y, ref.double(), rtol=tol, atol=tol, msg=lambda m: f"{shape} {kw}: {m}")
        checked += 1


def _central_differences(x, g, kw):
    fd = torch.zeros_like(x)
    for i in itertools.product(*map(range, x.shape)):
        e = torch.zeros_like(x)
        e[i] = 1e-6
        fd[i] = ((F.interpolate(x + e, **kw) - F.interpolate(x - e, **kw)) * g).sum() / 2e-6
    return fd


# torch's CPU backward disagrees with its own forward here (torch.autograd.gradcheck fails): the
# nearest 1-d/3-d backward takes the 2-d kernel's O == L and O == 2L special cases, which the 1-d/3-d
# forward does not; the bicubic backward copies g when the output size equals the input size, while
# the forward samples at 1/scale_factor spacing.  The rule is the adjoint of the forward.
TORCH_BACKWARD_DIFFERS = [
    ((1, 1, 4), dict(scale_factor=1.2, mode="nearest")),
    ((1, 1, 5), dict(scale_factor=2.1, mode="nearest")),
    ((1, 1, 2, 2, 3), dict(scale_factor=(1.0, 1.6, 1.1), mode="nearest")),
    ((1, 1, 4, 5), dict(scale_factor=1.1, mode="bicubic")),
]


@pytest.mark.parametrize("shape,kw", TORCH_BACKWARD_DIFFERS, ids=[c[1]["mode"] + str(i)
                                                                  for i, c in enumerate(TORCH_BACKWARD_DIFFERS)])
def test_rule_is_the_adjoint_of_torchs_forward_where_torchs_backward_is_not(shape, kw):
    x = torch.randn(shape, dtype=D, generator=torch.Generator().manual_seed(0))
    g = torch.randn(F.interpolate(x, **kw).shape, dtype=D, generator=torch.Generator().manual_seed(1))
    (mine,) = manual.get("interpolate").backward(g, x, **kw)
    torch.testing.assert_close(mine, _central_differences(x, g, kw), rtol=1e-7, atol=1e-8)


def test_bicubic_same_size_with_scale_factor_is_the_adjoint_of_torchs_forward():
    # 4x5 * 1.1 -> 4x5: the forward matrix applied to x is torch's forward (not a copy)
    x = torch.randn(1, 1, 4, 5, dtype=D, generator=torch.Generator().manual_seed(0))
    g = torch.randn(1, 1, 4, 5, dtype=D, generator=torch.Generator().manual_seed(1))
    kw = dict(scale_factor=1.1, mode="bicubic")
    assert not torch.allclose(F.interpolate(x, **kw), x)
    (mine,) = manual.get("interpolate").backward(g, x, **kw)
    fd = torch.zeros_like(x)
    for i in itertools.product(*map(range, x.shape)):
        e = torch.zeros_like(x)
        e[i] = 1e-6
        fd[i] = ((F.interpolate(x + e, **kw) - F.interpolate(x - e, **kw)) * g).sum() / 2e-6
    torch.testing.assert_close(mine, fd, rtol=1e-7, atol=1e-8)


def _planted(backward):
    return dataclasses.replace(manual.get("interpolate"), backward_impl=backward)


def test_planted_align_corners_bug_is_caught_and_correct_twin_passes():
    right = manual.get("interpolate").backward_impl

    def ignores_align_corners(g, input, *, needs_input_grad, align_corners=None, **kw):
        return right(g, input, needs_input_grad=needs_input_grad, **kw)

    bad = _planted(ignores_align_corners)
    x = torch.randn(1, 2, 5, dtype=D)
    with pytest.raises(AssertionError):
        check_backward(bad, (x,), dict(size=8, mode="linear", align_corners=True))
    check_backward(manual.get("interpolate"), (x,), dict(size=8, mode="linear", align_corners=True))
    check_backward(bad, (x,), dict(size=5, mode="linear", align_corners=True))   # same size copies either way


def test_planted_unclamped_bicubic_border_bug_is_caught():
    right = manual.get("interpolate").backward_impl

    def drops_border_taps(g, input, *, needs_input_grad, **kw):
        (gx,) = right(g, input, needs_input_grad=needs_input_grad, **kw)
        return (gx * torch.tensor([0.9, 1, 1, 1, 1], dtype=gx.dtype),)    # loses part of x[0]'s clamped taps

    x = torch.randn(1, 1, 3, 5, dtype=D)
    with pytest.raises(AssertionError):
        check_backward(_planted(drops_border_taps), (x,), dict(scale_factor=2, mode="bicubic"))
    check_backward(manual.get("interpolate"), (x,), dict(scale_factor=2, mode="bicubic"))


def test_upsample_alias_maps_to_interpolate():
    assert registry.for_callable(F.upsample) is manual.get("interpolate")


BAD = [
    ((1, 1, 4), dict(size=8, mode="bilinear"), InvalidParameterError, "4-d input"),
    ((1, 1, 4, 4, 4), dict(size=8, mode="bicubic"), InvalidParameterError, "bicubic"),
    ((1, 1, 4), dict(size=8, scale_factor=2), InvalidParameterError, "exactly one"),
    ((1, 1, 4), dict(mode="nearest"), InvalidParameterError, "exactly one"),
    ((1, 1, 4), dict(size=8, align_corners=True), InvalidParameterError, "align_corners"),
    ((1, 1, 4, 4), dict(size=8, mode="bilinear", antialias=True), UnsupportedError, "antialias"),
    ((1, 1, 4), dict(size=8, recompute_scale_factor=True), InvalidParameterError, "recompute_scale_factor"),
    ((1, 1, 4), dict(size=(2, 2)), InvalidParameterError, "size"),
    ((1, 1, 4), dict(scale_factor=0.1), InvalidParameterError, "positive"),
    ((1, 4), dict(size=8), InvalidInputError, "3-d, 4-d or 5-d"),
    ((1, 1, 4), dict(size=8, mode="cubic"), InvalidParameterError, "mode"),
]


@pytest.mark.parametrize("shape,params,err,word", BAD, ids=[f"{c[3]}-{i}" for i, c in enumerate(BAD)])
def test_bad_input_gives_one_clear_error(shape, params, err, word):
    with pytest.raises(err, match=word):
        manual.get("interpolate").backward(torch.ones(1), torch.zeros(shape, dtype=D), **params)


def test_wrong_grad_output_shape():
    with pytest.raises(InvalidInputError, match="grad_output has shape"):
        manual.get("interpolate").backward(torch.ones(1, 1, 7, dtype=D), torch.zeros(1, 1, 4, dtype=D), size=8)

