"""Complex inputs: torch's convention (grad = dL/da + i dL/db = 2 dL/d(conj z)), a conjugation bug named."""

from __future__ import annotations

import pytest
import torch

from gradcheck_kit import GradcheckKitError, check
from gradcheck_kit._check_errors import InvalidInputError, LossError, ManualGradientError
from gradcheck_kit._inputs import _check_differentiable


def _z(n=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, dtype=torch.complex128, generator=g)


C = _z(seed=1)


def loss(z, w):
    """L = Re sum(c z^2) + sum |z w|^2 (real)."""
    return (C * z * z).real.sum() + (z * w).abs().pow(2).sum()


def manual(z, w, bug=None):
    # Re(c z^2): holomorphic f = c z^2 has df/dz = 2cz, and for L = Re f torch's gradient is conj(df/dz).
    # |z w|^2 = (zw) conj(zw): 2 dL/d(conj z) = 2 z |w|^2.
    gz = (2 * C * z).conj() + 2 * z * w.abs() ** 2
    gw = 2 * w * z.abs() ** 2
    if bug == "conj":    # dL/dz-style: the conjugate of torch's convention
        gz = gz.conj()
    elif bug == "half":  # dL/d(conj z) without the factor 2
        gw = gw / 2
    return {"z": gz, "w": gw}


def test_convention_matches_autograd():
    z = _z().requires_grad_()
    (g,) = torch.autograd.grad(z.abs().pow(2).sum(), z)
    assert torch.allclose(g, 2 * z.detach())  # |z|^2 has gradient 2z: twice dL/d(conj z)


@pytest.mark.parametrize("reference", ["autograd", "fd"])
def test_correct_complex_gradient_passes(reference):
    z, w = _z(), _z(seed=2)
    rep = check(loss, {"z": z, "w": w}, manual, reference=reference)
    assert rep.ok, str(rep)
    assert {r.dtype for r in rep.results} == {"complex128"} and rep.results[0].shape == (3, 2)


@pytest.mark.parametrize("reference", ["autograd", "fd"])
def test_conjugation_bug_is_named(reference):
    rep = check(loss, {"z": _z(), "w": _z(seed=2)}, lambda **kw: manual(**kw, bug="conj"), reference=reference)
    assert [r.name for r in rep.failures] == ["z"]
    assert "complex conjugate" in rep.failures[0].hint and "2 dL/d(conj z)" in rep.failures[0].hint


def test_missing_factor_two_is_named():
    rep = check(loss, {"z": _z(), "w": _z(seed=2)}, lambda **kw: manual(**kw, bug="half"))
    assert [r.name for r in rep.failures] == ["w"] and "half of" in rep.failures[0].hint


def test_complex_with_modes():
    rep = check(lambda z: (C * z * z).real.sum(), {"z": _z()}, forward_ad=True, batched=True, order=3)
    assert rep.ok, str(rep)
    assert {r.mode for r in rep.results} == {None, "forward_ad", "batched", "order"}


def test_caller_tensor_untouched_and_clear_errors():
    z = _z()
    before = z.clone()
    check(loss, {"z": z, "w": _z(seed=2)}, manual)
    assert torch.equal(z, before)
    with pytest.raises(LossError, match="complex tensor"):
        check(lambda z: (z * z).sum(), {"z": z})
    with pytest.raises(ManualGradientError, match="is real"):
        check(lambda z: z.abs().sum(), {"z": z}, lambda z: {"z": z.abs()})
    _check_differentiable("z", z)  # complex is differentiable
    with pytest.raises(InvalidInputError, match="an integer tensor"):
        _check_differentiable("n", torch.arange(3))
    with pytest.raises(GradcheckKitError, match="a bool tensor"):
        _check_differentiable("m", torch.ones(2, dtype=torch.bool))


def test_complex_vjp_with_grad_output_keeps_the_convention_check():
    """A non-scalar loss with manual(grad_output=v): each cotangent's check still names a conjugation bug."""
    def vec_loss(z):
        return (C * z * z).real              # y_i = Re(c_i z_i^2)

    def vjp(z, grad_output, conj_bug=False):
        g = grad_output * (2 * C * z).conj()  # dL/dz for L = <v, y>, torch's convention
        return {"z": g.conj() if conj_bug else g}
    assert check(vec_loss, {"z": _z()}, vjp).ok
    rep = check(vec_loss, {"z": _z()}, lambda z, grad_output: vjp(z, grad_output, conj_bug=True))
    assert rep.failures and all(r.dtype == "complex128" for r in rep.results)
    assert all("complex conjugate" in (r.hint or "") for r in rep.failures)
