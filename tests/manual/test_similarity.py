"""cosine_similarity and normalize: torch's eps conventions, spelled out."""

import pytest
import torch
import torch.nn.functional as F

from gradcheck_kit import manual
from gradcheck_kit.errors import InvalidParameterError
from gradcheck_kit.manual.registry import Rule
from tests.manual._rulecheck import check_backward, check_double_backward

f64 = torch.float64


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("scale", [0.0, 1e-10])
def test_cosine_similarity_below_eps_matches_torchs_no_grad_clamp(scale):
    # ||a|| < eps: the value uses eps, the gradient still differentiates ||a|| (torch clamps under no_grad)
    a = torch.randn(3, 4, dtype=f64, generator=_gen(1))
    a[1] *= scale
    b = torch.randn(3, 4, dtype=f64, generator=_gen(2))
    grads = check_backward(manual.get("cosine_similarity"), (a, b), {})
    g1 = torch.ones(3, dtype=f64)
    (ga, _) = manual.get("cosine_similarity").backward(g1, a, b)
    if scale == 0.0:  # y = 0 and vector_norm's gradient at 0 is 0: dL/da = b / (eps ||b||)
        torch.testing.assert_close(ga[1], b[1] / (1e-8 * b[1].norm()))
    assert grads[0].shape == a.shape


def test_cosine_similarity_check_catches_the_clamp_taken_as_differentiable():
    # planted bug: the clamp taken as a differentiable max(||a||, eps) differs where ||a|| < eps
    rule = manual.get("cosine_similarity")

    def clamped(grad_output, x1, x2, *, needs_input_grad, dim=1, eps=1e-8):
        na = x1.norm(dim=dim, keepdim=True).clamp_min(eps)
        nb = x2.norm(dim=dim, keepdim=True).clamp_min(eps)
        y = (x1 * x2).sum(dim, keepdim=True) / (na * nb)
        g = grad_output.unsqueeze(dim)
        da = torch.where(x1.norm(dim=dim, keepdim=True) >= eps, x1 / na ** 2, 0.0)
        return g * (x2 / (na * nb) - y * da), g * (x1 / (na * nb) - y * x2 / nb ** 2)

    wrong = Rule(name="cos_clamped", torch_fn=rule.torch_fn, tensor_args=rule.tensor_args, backward_impl=clamped,
                 sample_fn=rule.sample_fn)
    a, b = torch.randn(3, 4, dtype=f64, generator=_gen(3)), torch.randn(3, 4, dtype=f64, generator=_gen(4))
    check_backward(wrong, (a, b), {})   # same where every norm >= eps
    a[0] *= 1e-10
    with pytest.raises(AssertionError, match="d/dx1"):
        check_backward(wrong, (a, b), {})
    check_backward(rule, (a, b), {})


def test_cosine_similarity_rejects_a_bad_dim():
    with pytest.raises(InvalidParameterError, match="dim"):
        manual.get("cosine_similarity").backward(torch.ones(3), torch.ones(3, 4), torch.ones(3, 4), dim=2)


@pytest.mark.parametrize("p", [1.0, 2.0, 3.0, float("inf")])
def test_normalize_zero_row_and_clamp(p):
    # a zero row: d = eps, x / d = 0; the norm's gradient is cut by clamp_min (||x|| < eps)
    x = torch.randn(3, 4, dtype=f64, generator=_gen(5))
    x[1] = 0.0
    check_backward(manual.get("normalize"), (x,), {"p": p})
    check_double_backward(manual.get("normalize"), (x[[0, 2]],), {"p": p})


def test_normalize_mirrors_F_normalize():
    assert manual.get("normalize").torch_fn is F.normalize
    assert manual.get("cosine_similarity").mirrors_name == "torch.nn.functional.cosine_similarity"


def test_cosine_similarity_of_parallel_rows_has_zero_gradient():
    a = torch.randn(3, 4, dtype=f64, generator=_gen(6))
    ga, gb = check_backward(manual.get("cosine_similarity"), (a, 2.5 * a), {})
    assert float(ga.abs().max()) < 1e-15 and float(gb.abs().max()) < 1e-15
