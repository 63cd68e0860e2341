"""Dropout rules beyond the generic test: torch's mask reproduced bit for bit, the saved mask,
the re-draw contract, identity cases that draw nothing, in-place calls, bad input."""

import pytest
import torch
import torch.nn.functional as F

from gradcheck_kit import manual
from gradcheck_kit.manual import dropout as dropout_module
from gradcheck_kit.errors import InvalidInputError, InvalidParameterError
from gradcheck_kit.manual._sampling import Maker

VARIANTS = [
    ("dropout", (2, 3, 4, 5)),
    ("dropout1d", (2, 3, 4)),
    ("dropout1d", (3, 4)),               # unbatched (C, L)
    ("dropout2d", (2, 3, 4, 5)),
    ("dropout2d", (2, 3, 4)),            # torch reads 3-d as (N, C, L)
    ("dropout3d", (2, 3, 2, 2, 2)),
    ("dropout3d", (3, 2, 2, 2)),         # unbatched (C, D, H, W)
    ("alpha_dropout", (4, 5)),
    ("feature_alpha_dropout", (2, 3, 4, 5)),
]
IDS = [f"{n}-{'x'.join(map(str, s))}" for n, s in VARIANTS]


def _torch(name, x, seed, **params):
    torch.manual_seed(seed)
    return manual.get(name).torch_fn(x, **params)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("name,shape", VARIANTS, ids=IDS)
def test_forward_is_torchs_draw_bit_for_bit(name, shape, dtype):
    x = Maker(dtype=dtype).randn(*shape)
    if x.dim() == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    rule = manual.get(name)
    torch.manual_seed(5)
    mine = rule.forward(x, p=0.4, training=True)
    assert torch.equal(mine, _torch(name, x, 5, p=0.4, training=True))
    torch.manual_seed(6)                                  # another seed, another mask: the check can fail
    assert not torch.equal(rule.forward(x, p=0.4, training=True), mine)


@pytest.mark.parametrize("name,shape", VARIANTS, ids=IDS)
def test_saved_mask_ignores_the_generator_and_redraw_needs_the_seed(name, shape):
    x = Maker().randn(*shape)
    rule = manual.get(name)
    xr = x.clone().requires_grad_(True)
    torch.manual_seed(3)
    out = rule.torch_fn(xr, p=0.5, training=True)
    g = torch.randn(out.shape, dtype=torch.float64)
    (ref,) = torch.autograd.grad(out, xr, g)

    torch.manual_seed(3)
    _, saved = rule.forward_saved(x, p=0.5, training=True)
    torch.manual_seed(1234)                               # the saved mask does not care
    (with_saved,) = rule.backward(g, x, p=0.5, training=True, saved=saved)
    assert torch.equal(with_saved, ref)

    torch.manual_seed(3)                                  # re-drawn in the forward's generator state
    (redrawn,) = rule.backward(g, x, p=0.5, training=True)
    assert torch.equal(redrawn, ref)
    torch.manual_seed(4)                                  # the documented contract: another state, another mask
    (wrong,) = rule.backward(g, x, p=0.5, training=True)
    assert not torch.equal(wrong, ref)


@pytest.mark.parametrize("params", [{"p": 0.0, "training": True}, {"p": 0.5, "training": False}],
                         ids=["p=0", "eval"])
@pytest.mark.parametrize("name", ["dropout", "dropout2d", "alpha_dropout"])
def test_identity_cases_draw_nothing(name, params):
    x = Maker().randn(2, 3, 4)
    rule = manual.get(name)
    state = torch.get_rng_state()
    out, saved = rule.forward_saved(x, **params)
    (gx,) = rule.backward(torch.ones_like(x), x, **params)
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(out, x) and out is not x and saved == {}
    assert torch.equal(gx, torch.ones_like(x))


def test_p_one_zeroes_without_drawing():
    x = Maker().randn(3, 4)
    state = torch.get_rng_state()
    out = manual.get("dropout").forward(x, p=1.0)
    (gx,) = manual.get("dropout").backward(torch.ones_like(x), x, p=1.0)
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(out, torch.zeros_like(x)) and torch.equal(gx, torch.zeros_like(x))


def test_inplace_call_gives_torchs_values_and_leaves_the_input_alone():
    x = Maker().randn(3, 4)
    before = x.clone()
    torch.manual_seed(9)
    mine = manual.get("dropout").forward(x, p=0.3, inplace=True)
    ref = _torch("dropout", x.clone(), 9, p=0.3, inplace=True)
    assert torch.equal(mine, ref) and torch.equal(x, before)


def test_bad_input_raises_one_clear_error():
    x = Maker().randn(3, 4)
    with pytest.raises(InvalidParameterError, match="between 0 and 1"):
        manual.get("dropout").forward(x, p=1.5)
    with pytest.raises(InvalidParameterError, match="between 0 and 1"):
        manual.get("dropout").backward(torch.ones_like(x), x, p=-0.1)
    with pytest.raises(InvalidInputError, match="dropout1d"):
        manual.get("dropout1d").forward(Maker().randn(2, 3, 4, 5), p=0.5)
    with pytest.raises(InvalidInputError, match=r"dropout: grad_output has shape \(4,\) but the output has shape"):
        manual.get("dropout").backward(torch.ones(4, dtype=torch.float64), x, p=0.5)   # would broadcast
    with pytest.raises(InvalidInputError, match="at least 2 dimensions"):
        manual.get("feature_alpha_dropout").forward(Maker().randn(5), p=0.5, training=True)


def test_mask_keeps_about_one_minus_p_and_rescales():
    x = torch.ones(200, 50, dtype=torch.float64)
    torch.manual_seed(0)
    y = manual.get("dropout").forward(x, p=0.3)
    kept = y != 0
    assert abs(kept.double().mean().item() - 0.7) < 0.02
    torch.testing.assert_close(y[kept], torch.full_like(y[kept], 1 / 0.7))
    assert torch.equal(F.dropout(x, 0.3, training=False), x)


def test_fused_kernel_path_mirrors_native_dropout(monkeypatch):
    """The path taken on CUDA, exercised on the CPU: torch.native_dropout's mask and scale."""
    x = Maker().randn(4, 5)
    monkeypatch.setattr(dropout_module, "FUSED_DEVICES", frozenset({"cpu"}))
    calls = []
    real = torch.native_dropout

    def spy(*args):
        calls.append(args[1:])
        return real(*args)

    monkeypatch.setattr(torch, "native_dropout", spy)
    rule = manual.get("dropout")
    torch.manual_seed(2)
    mine, saved = rule.forward_saved(x, p=0.3)
    xr = x.clone().requires_grad_(True)
    torch.manual_seed(2)
    ref, _ = torch.native_dropout(xr, 0.3, True)
    assert torch.equal(mine, ref)
    g = torch.randn(4, 5, dtype=torch.float64)
    (gref,) = torch.autograd.grad(ref, xr, g)
    assert torch.equal(rule.backward(g, x, p=0.3, saved=saved)[0], gref)
    torch.manual_seed(2)
    assert torch.equal(rule.backward(g, x, p=0.3)[0], gref)
    assert calls == [(0.3, True)] * 3                     # forward_saved, torch's own call, the re-draw
    torch.manual_seed(2)                                  # channel dropout never takes the fused kernel
    assert torch.equal(manual.get("dropout2d").forward(x.reshape(2, 2, 5), p=0.3),
                       _torch("dropout2d", x.reshape(2, 2, 5), 2, p=0.3))
