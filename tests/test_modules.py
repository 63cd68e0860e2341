"""check() with nn.Modules and nested inputs: flat names, manual under those names, wrt globs."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from gradcheck_kit import GradcheckKitError, check
from gradcheck_kit._pytree import flatten


def _net():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()
    net[0].bias.requires_grad_(False)  # frozen: a constant, not checked
    return net


def _batch():
    g = torch.Generator().manual_seed(1)
    return {"x": torch.randn(5, 3, generator=g, dtype=torch.float64),
            "targets": [torch.randn(5, 2, generator=g, dtype=torch.float64), 0.5]}


def loss(net, batch):
    y, scale = batch["targets"]
    return scale * ((net(batch["x"]) - y) ** 2).sum()


def manual(net, batch, bug=None):
    """Two-layer MLP by hand: z = x W1^T + b1, h = tanh z, out = h W2^T + b2, L = s |out - y|^2."""
    l1, l2 = net[0], net[2]
    x, (y, s) = batch["x"], batch["targets"]
    h = torch.tanh(x @ l1.weight.T + l1.bias)
    r = 2 * s * (h @ l2.weight.T + l2.bias - y)   # dL/dout
    gz = (r @ l2.weight) * (1 - h ** 2)            # dL/dz = (dL/dout W2) * tanh'(z)
    grads = {"net.0.weight": gz.T @ x, "net.2.weight": r.T @ h, "net.2.bias": r.sum(0),
             "batch.x": gz @ l1.weight, "batch.targets.0": -r}
    if bug == "w2":
        grads["net.2.weight"] = grads["net.2.weight"] * 1.05   # one parameter's gradient off by 5%
    return grads


def test_flat_names_follow_named_parameters_and_skip_frozen_and_constants():
    flat, _, modules = flatten({"net": _net(), "batch": _batch()})
    assert list(flat) == ["net.0.weight", "net.2.weight", "net.2.bias", "batch.x", "batch.targets.0"]
    assert len(modules) == 1


@pytest.mark.parametrize("reference", ["autograd", "fd"])
def test_module_manual_gradients_pass(reference):
    net, batch = _net(), _batch()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    rep = check(loss, {"net": net, "batch": batch}, manual, reference=reference)
    assert rep.ok, str(rep)
    assert {r.name for r in rep.results} == {"net.0.weight", "net.2.weight", "net.2.bias", "batch.x",
                                             "batch.targets.0"}
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())  # the caller's module untouched
    assert all(p.grad is None for p in net.parameters())


def test_module_with_one_wrong_parameter_gradient_fails_naming_it():
    rep = check(loss, {"net": _net(), "batch": _batch()}, lambda **kw: manual(**kw, bug="w2"))
    assert [r.name for r in rep.failures] == ["net.2.weight"]
    assert "1.05" in (rep.failures[0].hint or "")


def test_wrt_accepts_globs_and_structure_keys():
    rep = check(loss, {"net": _net(), "batch": _batch()}, lambda **kw: manual(**kw, bug="w2"), wrt="net.*.weight")
    assert {r.name for r in rep.results} == {"net.0.weight", "net.2.weight"} and not rep.ok
    rep = check(loss, {"net": _net(), "batch": _batch()}, manual, wrt=["batch"])
    assert {r.name for r in rep.results} == {"batch.x", "batch.targets.0"} and rep.ok
    with pytest.raises(GradcheckKitError, match="matches no input"):
        check(loss, {"net": _net(), "batch": _batch()}, manual, wrt="net.*.gamma")


def test_autograd_of_a_module_with_batchnorm_buffers_and_float32():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 4, bias=False), nn.BatchNorm1d(4), nn.ReLU(), nn.Linear(4, 1))  # a bias before BN
    # has gradient exactly 0, which float32 autograd rounds to ~1e-7: not what this test is about
    x = torch.randn(6, 3)
    stats = net[1].running_mean.clone()
    rep = check(lambda net, x: net(x).pow(2).sum(), {"net": net, "x": x}, reference="fd", fd_mode="full")
    assert rep.ok, str(rep)
    assert "net.1.weight" in {r.name for r in rep.results}
    assert torch.equal(net[1].running_mean, stats)  # running statistics updated on a private copy only


def test_tied_parameters_are_one_input():
    lin = nn.Linear(3, 3, bias=False).double()
    net = nn.ModuleDict({"a": lin, "b": lin})
    x = torch.randn(2, 3, dtype=torch.float64)

    def tied_loss(net, x):
        return net["b"](net["a"](x)).sum()
    rep = check(tied_loss, {"net": net, "x": x}, reference="fd")
    assert rep.ok, str(rep)
    assert {r.name for r in rep.results} == {"net.a.weight", "x"}


@pytest.mark.parametrize("bug", [False, True])
def test_module_vjp_with_grad_output(bug):
    """Non-scalar module output with manual(grad_output=G): out = x W^T + b, dL/dW = G^T x, dL/db = sum G."""
    lin = nn.Linear(3, 2).double()
    x = _batch()["x"]

    def manual(lin, x, grad_output):
        gw = grad_output.T @ x
        return {"lin.weight": gw.flip(0) if bug else gw, "lin.bias": grad_output.sum(0), "x": grad_output @ lin.weight}
    rep = check(lambda lin, x: lin(x), {"lin": lin, "x": x}, manual)
    assert {r.name for r in rep.failures} == ({"lin.weight"} if bug else set()), str(rep)
    assert {r.cotangent for r in rep.results} == {0, 1, 2}
