"""View rules beyond the generic test: method/varargs spellings, planted bugs, bad input."""

import dataclasses

import pytest
import torch

from gradcheck_kit import manual
from gradcheck_kit.errors import InvalidInputError, InvalidParameterError, UnsupportedError
from gradcheck_kit.manual import registry
from tests.manual._seqcheck import check_backward

X = torch.arange(24, dtype=torch.float64).reshape(2, 3, 4)

# (rule, spelled call, the rule's keyword parameters for the same call)
SPELLINGS = [
    ("view", lambda x: x.view(4, 6), dict(size=(4, 6))),
    ("view", lambda x: x.view(-1), dict(size=-1)),
    ("view", lambda x: x.view((2, 12)), dict(size=(2, 12))),
    ("reshape", lambda x: x.reshape((6, 4)), dict(shape=(6, 4))),
    ("reshape", lambda x: x.reshape(3, -1), dict(shape=(3, -1))),
    ("permute", lambda x: x.permute(2, 0, 1), dict(dims=(2, 0, 1))),
    ("expand", lambda x: x[:, :1].expand(5, 2, 3, 4), dict(size=(5, 2, 3, 4))),
    ("transpose", lambda x: x.swapdims(0, 2), dict(dim0=0, dim1=2)),
    ("movedim", lambda x: torch.moveaxis(x, 0, -1), dict(source=0, destination=-1)),
    ("squeeze", lambda x: x[:, :1].squeeze(1), dict(dim=1)),
    ("flatten", lambda x: x.flatten(1), dict(start_dim=1)),
]


@pytest.mark.parametrize("name,call,params", SPELLINGS, ids=[f"{s[0]}-{i}" for i, s in enumerate(SPELLINGS)])
def test_method_spelling_equals_rule_forward_and_backward(name, call, params):
    rule = manual.get(name)
    x = X[:, :1] if name in ("expand", "squeeze") else X
    ref = call(X)
    assert torch.equal(rule.forward(x, **params), ref)
    g = torch.randn(ref.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    xl = X.clone().requires_grad_(True)
    (auto,) = torch.autograd.grad(call(xl), xl, g)
    (mine,) = rule.backward(g, x, **params)
    sl = (slice(None), slice(0, 1)) if name in ("expand", "squeeze") else (Ellipsis,)
    torch.testing.assert_close(mine, auto[sl], rtol=1e-12, atol=1e-12)


def test_aliases_map_to_rules():
    for fn, name in [(torch.Tensor.view, "view"), (torch.Tensor.reshape, "reshape"), (torch.swapdims, "transpose"),
                     (torch.Tensor.moveaxis, "movedim"), (torch.Tensor.expand, "expand"), (torch.pixel_shuffle,
                     "pixel_shuffle"), (torch.nn.functional.pixel_shuffle, "pixel_shuffle"), (torch.Tensor.t, "t")]:
        assert registry.for_callable(fn) is manual.get(name), fn


def _planted(name, bad_backward):
    rule = manual.get(name)
    return dataclasses.replace(rule, backward_impl=bad_backward)


def test_planted_permute_bug_is_caught_and_correct_twin_passes():
    # the forward permutation instead of its inverse: wrong for a 3-cycle, right for a swap
    def forward_perm(g, input, *, needs_input_grad, dims):
        return (g.permute(dims),)

    bad = _planted("permute", forward_perm)
    x = torch.randn(2, 3, 4, dtype=torch.float64)
    with pytest.raises(AssertionError):
        check_backward(bad, (torch.randn(2, 2, 2, dtype=torch.float64),), {"dims": (2, 0, 1)})
    check_backward(bad, (x,), {"dims": (1, 0, 2)})            # a swap is its own inverse: correct there
    check_backward(manual.get("permute"), (x,), {"dims": (2, 0, 1)})


def test_planted_expand_bug_is_caught():
    def no_sum(g, input, *, needs_input_grad, size):         # takes one copy instead of summing them
        return (g[:, :1].reshape(input.shape) if g.dim() == input.dim() else g[0],)

    bad = _planted("expand", no_sum)
    with pytest.raises(AssertionError):
        check_backward(bad, (torch.randn(3, 1, dtype=torch.float64),), {"size": (3, 4)})
    check_backward(bad, (torch.randn(3, 1, dtype=torch.float64),), {"size": (3, 1)})   # no broadcast: same


def test_planted_pixel_shuffle_bug_is_caught():
    def reshape_only(g, input, *, needs_input_grad, upscale_factor):   # right shape, wrong permutation
        return (g.reshape(input.shape),)

    bad = _planted("pixel_shuffle", reshape_only)
    with pytest.raises(AssertionError):
        check_backward(bad, (torch.randn(1, 4, 2, 2, dtype=torch.float64),), {"upscale_factor": 2})
    check_backward(bad, (torch.randn(1, 4, 2, 2, dtype=torch.float64),), {"upscale_factor": 1})


def test_bad_input_gives_one_clear_error():
    x = torch.randn(2, 3, dtype=torch.float64)
    with pytest.raises(InvalidParameterError, match="reshape: torch rejects"):
        manual.get("reshape").backward(torch.ones(5), x, shape=(5,))
    with pytest.raises(InvalidInputError, match="grad_output has shape"):
        manual.get("reshape").backward(torch.ones(5), x, shape=(-1,))
    with pytest.raises(InvalidParameterError, match="not a permutation"):
        manual.get("permute").backward(torch.ones(3, 2), x, dims=(1, 1))
    with pytest.raises(UnsupportedError, match="dtype"):
        manual.get("view").backward(torch.ones(2, 3), x, size=torch.float32)
    with pytest.raises(InvalidParameterError, match="upscale_factor"):
        manual.get("pixel_shuffle").backward(torch.ones(1, 1, 4, 4), torch.ones(1, 4, 2, 2), upscale_factor=0)


def test_backward_does_not_touch_grad_output_storage_identity():
    g = torch.randn(2, 3, dtype=torch.float64)
    (gx,) = manual.get("contiguous").backward(g, torch.randn(2, 3, dtype=torch.float64))
    assert gx is not g and torch.equal(gx, g)


BIND = [  # (rule, torch callable as called, args): method and varargs spellings as a model writes them
    ("view", torch.Tensor.view, (X, 4, 6)),
    ("view", torch.Tensor.view, (X, -1)),
    ("reshape", torch.Tensor.reshape, (X, (6, 4))),
    ("permute", torch.Tensor.permute, (X, 2, 0, 1)),
    ("expand", torch.Tensor.expand, (X[:, :1], 5, 2, 3, 4)),
    ("transpose", torch.Tensor.transpose, (X, 0, 2)),
    ("flatten", torch.Tensor.flatten, (X, 1)),
    ("unsqueeze", torch.Tensor.unsqueeze, (X, -1)),
    ("pixel_shuffle", torch.nn.functional.pixel_shuffle, (X.reshape(1, 4, 3, 2), 2)),
    ("max_pool2d", torch.nn.functional.max_pool2d, (X.unsqueeze(0), 2, 1, 0, 1, False, True)),
    ("adaptive_max_pool2d", torch.nn.functional.adaptive_max_pool2d, (X.unsqueeze(0), (2, 3), True)),
    ("interpolate", torch.nn.functional.interpolate, (X.unsqueeze(0), None, 1.5, "bilinear", True)),
]


@pytest.mark.parametrize("name,fn,args", BIND, ids=[f"{c[0]}-{i}" for i, c in enumerate(BIND)])
def test_spellings_bind_onto_the_rules(name, fn, args):
    # the rule engine binds a recorded call onto the rule; forward and backward then equal torch's
    from gradcheck_kit import trace

    rule = manual.get(name)
    call = trace.bind(rule, fn, args, {})
    rargs, params = call.build(call.tensors)
    ref = fn(*args)
    got = rule.forward(*rargs, **params)
    for r, m in zip(ref if isinstance(ref, tuple) else (ref,), got if isinstance(got, tuple) else (got,)):
        assert torch.equal(r, m)
    check_backward(rule, rargs, params)
