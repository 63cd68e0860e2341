"""unfold / fold / pad beyond the generic test: adjointness, edge rules, nn.ConvNd padding modes."""

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from gradcheck_kit import manual
from gradcheck_kit.errors import InvalidInputError, InvalidParameterError, UnsupportedError
from tests.manual._rulecheck import check_symbolic_forward, check_backward, check_double_backward

UNFOLD_CONFIGS = [
    ((2, 3, 5, 6), dict(kernel_size=2)),
    ((1, 2, 7, 5), dict(kernel_size=(3, 2), dilation=(1, 2), padding=(1, 2), stride=(2, 1))),
    ((1, 1, 6, 6), dict(kernel_size=2, stride=3)),  # positions no window covers
    ((3, 4, 4), dict(kernel_size=3, padding=1)),  # unbatched
]


@pytest.mark.parametrize("shape,params", UNFOLD_CONFIGS, ids=[str(i) for i in range(len(UNFOLD_CONFIGS))])
def test_unfold_fold_adjoint(shape, params):
    """<unfold(x), y> == <x, fold(y)>, and each rule's backward is the other op."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=gen, dtype=torch.float64)
    cols = F.unfold(x, **params)
    y = torch.randn(cols.shape, generator=gen, dtype=torch.float64)
    folded = F.fold(y, output_size=shape[-2:], **params)
    torch.testing.assert_close((cols * y).sum(), (x * folded).sum(), rtol=1e-13, atol=1e-13)

    (gx,) = manual.get("unfold").backward(y, x, **params)
    assert torch.equal(gx, folded)
    (gy,) = manual.get("fold").backward(x, y, output_size=shape[-2:], **params)
    assert torch.equal(gy, cols)


# -- pad: hand-made edge rules ------------------------------------------------------------

PAD_EDGES = [
    # reflect (3, 3) on [0,1,2,3] -> [3,2,1,0,1,2,3,2,1,0]: the edge is not repeated
    ("reflect", 4, (3, 3), [2, 3, 3, 2]),
    # replicate (2, 1) -> [0,0,0,1,2,3,3]
    ("replicate", 4, (2, 1), [3, 1, 1, 2]),
    # circular with pad == size: (3, 3) on [a,b,c] -> [a,b,c,a,b,c,a,b,c]
    ("circular", 3, (3, 3), [3, 3, 3]),
    # circular with a negative side wraps within the cropped input: (2, -1) -> [1,2,0,1,2]
    ("circular", 4, (2, -1), [1, 2, 2, 0]),
    # reflect with a negative side: (-1, 2) -> [1,2,3,2,1]
    ("reflect", 4, (-1, 2), [0, 2, 2, 1]),
    # constant: crop and zero-pad
    ("constant", 4, (-1, 2), [0, 1, 1, 1]),
]


@pytest.mark.parametrize("mode,L,pad,counts", PAD_EDGES, ids=[f"{m}{p}" for m, _, p, _ in PAD_EDGES])
def test_pad_edge_rules_count_each_source(mode, L, pad, counts):
    """With g = ones, dL/dx[i] counts the output positions that copy x[i]."""
    x = torch.arange(float(L), dtype=torch.float64).reshape(1, 1, L)
    y = F.pad(x, pad, mode=mode)
    (gx,) = manual.get("pad").backward(torch.ones_like(y), x, pad=pad, mode=mode)
    assert gx.reshape(-1).tolist() == counts
    xr = x.clone().requires_grad_(True)
    (ref,) = torch.autograd.grad(F.pad(xr, pad, mode=mode), xr, torch.ones_like(y))
    assert torch.equal(gx, ref)


# -- pad vs nn.ConvNd(padding_mode=...) ---------------------------------------------


@pytest.mark.parametrize("nd", [1, 2, 3])
@pytest.mark.parametrize("padding_mode", ["zeros", "reflect", "replicate", "circular"])
def test_pad_rule_reproduces_conv_padding_mode_gradients(nd, padding_mode):
    """nn.ConvNd(padding_mode=m) = conv(pad(x, m), padding=0): dL/dx = pad^T(conv_transpose(g, W))."""
    torch.manual_seed(0)
    conv_cls = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}[nd]
    conv_t = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}[nd]
    padding = (1, 2, 1)[:nd]
    conv = conv_cls(2, 3, 3, padding=padding, padding_mode=padding_mode, bias=False).double()
    x = torch.randn((1, 2) + (4, 5, 3)[:nd], dtype=torch.float64, requires_grad=True)
    out = conv(x)
    g = torch.randn_like(out)
    (ref,) = torch.autograd.grad(out, x, g)

    pad = tuple(p for p in reversed(padding) for _ in range(2))  # torch's _reversed_padding_repeated_twice
    mode = "constant" if padding_mode == "zeros" else padding_mode
    g_padded = conv_t(g, conv.weight.detach())  # dL/d pad(x) for a stride-1, unpadded convolution
    (mine,) = manual.get("pad").backward(g_padded, x.detach(), pad=pad, mode=mode)
    torch.testing.assert_close(mine, ref, rtol=1e-12, atol=1e-12)


def test_symbolic_forwards_match_torch_on_small_samples():
    for name in ("unfold", "fold", "pad"):
        check_symbolic_forward(manual.get(name), max_numel=60)


# -- bad input ----------------------------------------------------------------------

BAD = [
    ("pad", (1, 1, 4), (1, 1, 10), dict(pad=(4, 2), mode="reflect"), InvalidParameterError, "reflect"),
    ("pad", (1, 1, 4), (1, 1, 6), dict(pad=(1, 1), mode="wrap"), InvalidParameterError, "mode"),
    ("pad", (1, 1, 4), (1, 1, 6), dict(pad=(1, 1), mode="reflect", value=2.0), InvalidParameterError, "value"),
    ("pad", (1, 1, 4), (1, 1, 5), dict(pad=(1,)), InvalidParameterError, "pad"),
    # torch reads memory it has not written when circular padding exceeds the cropped size
    ("pad", (1, 1, 4), (1, 1, 3), dict(pad=(2, -3), mode="circular"), UnsupportedError, "circular"),
    ("pad", (4,), (6,), dict(pad=(1, 1), mode="replicate"), UnsupportedError, "replicate"),
    ("pad", (1, 1, 4), (1, 1, 7), dict(pad=(1, 1)), InvalidInputError, "grad_output"),
    ("unfold", (1, 1, 1, 4, 4), (1, 4, 9), dict(kernel_size=2), InvalidInputError, "input"),
    ("unfold", (1, 1, 4, 4), (1, 4, 9), dict(kernel_size=2, stride=0), InvalidParameterError, "stride"),
    ("unfold", (1, 1, 2, 2), (1, 9, 1), dict(kernel_size=3), InvalidParameterError, "kernel"),
    ("fold", (1, 8, 8), (1, 2, 4, 4), dict(output_size=4, kernel_size=2), InvalidParameterError, "blocks"),
    ("fold", (1, 7, 9), (1, 2, 4, 4), dict(output_size=4, kernel_size=2), InvalidParameterError, "divisible"),
]


@pytest.mark.parametrize("name,xs,gs,params,err,word", BAD, ids=[f"{c[0]}-{c[5]}-{i}" for i, c in enumerate(BAD)])
def test_bad_input_names_the_parameter(name, xs, gs, params, err, word):
    with pytest.raises(err, match=word):
        manual.get(name).backward(torch.ones(gs, dtype=torch.float64), torch.zeros(xs, dtype=torch.float64), **params)


# -- CUDA ---------------------------------------------------------------------------


@pytest.mark.cuda
@pytest.mark.parametrize("name", ["unfold", "fold", "pad"])
def test_cuda_matches_autograd(name):
    rule = manual.get(name)
    for s in rule.samples(device="cuda", dtype=torch.float64):
        check_backward(rule, s.args, s.kwargs)
        check_double_backward(rule, s.args, s.kwargs)
