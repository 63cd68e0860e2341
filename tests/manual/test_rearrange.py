"""Rearranging rules beyond the generic test: every torch spelling through the rule engine, the
properties (x.T, x.mT, x.H, x.mH), repeat_interleave's binding, dtype casts, bad input."""

import warnings

import pytest
import torch

from gradcheck_kit import manual
from gradcheck_kit.errors import InvalidParameterError, MissingRuleError
from gradcheck_kit.manual import use_rules
from tests.manual._seqcheck import check_backward, check_double_backward, check_forward

_gen = torch.Generator().manual_seed(0)
X = torch.randn(2, 3, 4, dtype=torch.float64, generator=_gen)
M = torch.randn(3, 4, dtype=torch.float64, generator=_gen)
V = torch.randn(3, dtype=torch.float64, generator=_gen)

# (rule the engine must use, torch spelling over x (2x3x4), m (3x4), v (3))
SPELLINGS = [
    ("clone", lambda x, m, v: torch.clone(x)),
    ("clone", lambda x, m, v: x.clone(memory_format=torch.contiguous_format)),
    ("flip", lambda x, m, v: x.flip(0)),
    ("flip", lambda x, m, v: x.flip(0, 2)),
    ("flip", lambda x, m, v: x.flip((1,))),
    ("flip", lambda x, m, v: torch.flip(x, [0])),
    ("flip", lambda x, m, v: x.flip(dims=(-1,))),
    ("fliplr", lambda x, m, v: torch.fliplr(m) + m.fliplr()),
    ("flipud", lambda x, m, v: torch.flipud(v) * 2),
    ("roll", lambda x, m, v: x.roll(1, 0)),
    ("roll", lambda x, m, v: x.roll(2)),
    ("roll", lambda x, m, v: torch.roll(x, (1, -1), (0, 2))),
    ("roll", lambda x, m, v: x.roll(shifts=1, dims=-1)),
    ("rot90", lambda x, m, v: torch.rot90(x, 1, (1, 2))),
    ("rot90", lambda x, m, v: m.rot90(-1)),
    ("repeat", lambda x, m, v: x.repeat(2, 1, 1)),
    ("repeat", lambda x, m, v: x.repeat((2, 1, 1, 2))),
    ("repeat", lambda x, m, v: x.repeat(torch.Size([1, 2, 1]))),
    ("repeat", lambda x, m, v: x.repeat(repeats=(1, 2, 1))),
    ("tile", lambda x, m, v: x.tile(2)),
    ("tile", lambda x, m, v: x.tile(2, 1)),
    ("tile", lambda x, m, v: torch.tile(x, (2, 1, 1, 1))),
    ("repeat_interleave", lambda x, m, v: x.repeat_interleave(2)),
    ("repeat_interleave", lambda x, m, v: torch.repeat_interleave(x, 2)),
    ("repeat_interleave", lambda x, m, v: torch.repeat_interleave(x, 2, 1)),
    ("repeat_interleave", lambda x, m, v: torch.repeat_interleave(x, repeats=2, dim=-1)),
    ("repeat_interleave", lambda x, m, v: x.repeat_interleave(torch.tensor([1, 0, 2]), dim=1)),
    ("T", lambda x, m, v: m.T),
    ("T", lambda x, m, v: v.T * 2),
    ("mT", lambda x, m, v: x.mT),
    ("H", lambda x, m, v: m.H),
    ("mH", lambda x, m, v: x.mH),
    ("adjoint", lambda x, m, v: x.adjoint()),
    ("adjoint", lambda x, m, v: torch.adjoint(m)),
    ("tril", lambda x, m, v: x.tril()),
    ("tril", lambda x, m, v: torch.tril(x, 1)),
    ("triu", lambda x, m, v: x.triu(diagonal=-1)),
    ("diagonal", lambda x, m, v: x.diagonal()),
    ("diagonal", lambda x, m, v: torch.diagonal(x, 1, 1, 2)),
    ("diagonal", lambda x, m, v: x.diagonal(offset=-1, dim1=-1, dim2=0)),
    ("diag", lambda x, m, v: torch.diag(v, diagonal=-1)),
    ("diag", lambda x, m, v: m.diag(1)),
    ("diag_embed", lambda x, m, v: torch.diag_embed(m, 1, 0, 2)),
    ("diag_embed", lambda x, m, v: m.diag_embed()),
    ("trace", lambda x, m, v: m.trace()),
    ("to", lambda x, m, v: x.to(torch.float32)),
    ("to", lambda x, m, v: x.to(dtype=torch.float16)),
    ("to", lambda x, m, v: x.to(torch.ones(1, dtype=torch.float32))),
    ("to", lambda x, m, v: x.to("cpu", torch.float32)),
    ("to", lambda x, m, v: x.to(device="cpu", dtype=torch.bfloat16)),
    ("to", lambda x, m, v: x.to(torch.float32, False, True)),
    ("to", lambda x, m, v: x.to(torch.float64)),
    ("to", lambda x, m, v: x.to("cpu")),
    ("to", lambda x, m, v: m.reshape(1, 1, 3, 4).to(torch.bfloat16, memory_format=torch.channels_last)),
    ("double", lambda x, m, v: x.to(torch.float32).double()),
    ("double", lambda x, m, v: m.double(memory_format=torch.contiguous_format)),
    ("type_as", lambda x, m, v: x.type_as(torch.ones(1, dtype=torch.float32))),
]


@pytest.mark.parametrize("name,call", SPELLINGS, ids=[f"{s[0]}-{i}" for i, s in enumerate(SPELLINGS)])
def test_spelling_runs_through_the_rule_with_autograds_gradient(name, call):
    leaves = [t.clone().requires_grad_() for t in (X, M, V)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # x.T on 1-d: torch's own deprecation warning
        ref = call(*leaves)
        g = torch.randn(ref.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1)).to(ref.dtype)
        want = torch.autograd.grad(ref, leaves, g, allow_unused=True)
        mine = [t.clone().requires_grad_() for t in (X, M, V)]
        with use_rules(strict=True) as session:
            out = call(*mine)
    assert name in session.ops, f"{name} not used: {session.ops}"
    assert out.dtype == ref.dtype and torch.equal(out.detach(), ref.detach())
    got = torch.autograd.grad(out, mine, g, allow_unused=True)
    for a, b in zip(got, want):
        assert (a is None) == (b is None)
        if a is not None:
            assert a.dtype == b.dtype
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)   # sums may be ordered differently


def test_real_model_pieces_run_strict():
    # a causal attention head in mixed precision: w.T, a tril mask, casts, repeat and roll
    torch.manual_seed(0)
    w = torch.randn(4, 4, dtype=torch.float64, requires_grad=True)
    x = torch.randn(2, 3, 4, dtype=torch.float64, requires_grad=True)

    def head(x, w):
        q = (x @ w.T).to(torch.float32)
        s = (q @ q.mT).tril().double()
        return (s.flip(-1).roll(1, -1).repeat(1, 2, 1) * x.sum(-1, keepdim=True).repeat_interleave(2, 1)).sum()

    want = torch.autograd.grad(head(x, w), (x, w))
    with use_rules(strict=True) as session:
        loss = head(x, w)
    got = torch.autograd.grad(loss, (x, w))
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b)
    assert {"T", "to", "mT", "tril", "double", "flip", "roll", "repeat", "repeat_interleave"} <= set(session.ops)


def test_to_another_device_is_left_to_autograd():
    x = torch.randn(3, dtype=torch.float64, requires_grad=True)
    with pytest.raises(MissingRuleError, match="device"):
        with use_rules(strict=True):
            x.to("meta", torch.float32)
    with use_rules(strict=False) as session:
        x.to(device="meta")
    assert "to" not in session.ops and len(session.missing) == 1


def test_cast_of_a_real_tensor_to_complex_keeps_the_real_part_of_the_gradient():
    x = torch.randn(3, dtype=torch.float64, requires_grad=True)
    g = torch.randn(3, dtype=torch.complex128)
    (want,) = torch.autograd.grad(x.to(torch.complex128), x, g)
    (got,) = manual.get("to").backward(g, x.detach(), dtype=torch.complex128)
    assert got.dtype == torch.float64 and torch.equal(got, want)


def test_cast_to_an_integer_dtype_passes_no_gradient():
    x = torch.randn(3, dtype=torch.float64, requires_grad=True)
    assert manual.get("to").backward(None, x.detach(), dtype=torch.int64) == (None,)
    with use_rules(strict=True):
        y = x * x.to(torch.int64)
    (got,) = torch.autograd.grad(y.sum(), x)
    assert torch.equal(got, x.detach().to(torch.int64).to(torch.float64))


# Narrowing casts: the registry's samples cast exactly (finite differences cannot judge rounding),
# so the rounding ones are compared with autograd here: forward, backward and second order.
_gen32 = torch.Generator().manual_seed(2)


def _r(*shape, dtype=torch.float64):
    return torch.randn(shape, dtype=torch.float64, generator=_gen32).to(dtype)


NARROWING = [
    ("to", (_r(2, 3),), {"dtype": torch.float32}),
    ("to", (_r(2, 3),), {"dtype": torch.float16, "non_blocking": True}),
    ("to", (_r(2, 3),), {"dtype": torch.bfloat16, "copy": True}),
    ("to", (_r(2, 3, dtype=torch.float32),), {"dtype": torch.bfloat16}),
    ("to", (_r(2, 3, dtype=torch.float32),), {"dtype": torch.float32}),
    ("to", (_r(),), {"dtype": torch.float32}),
    ("to", (_r(0, 3),), {"dtype": torch.float16}),
    ("to", (_r(3, 4)[:, ::2],), {"dtype": torch.float32}),
    ("to", (_r(1, 2, 2, 3).contiguous(memory_format=torch.channels_last),), {"dtype": torch.float32}),
    ("to", (_r(1, 2, 2, 3),), {"dtype": torch.float16, "memory_format": torch.channels_last}),
    ("type_as", (_r(2, 3), torch.zeros(1, dtype=torch.float32)), {}),
    ("type_as", (_r(), torch.zeros(2, dtype=torch.bfloat16)), {}),
    ("type_as", (_r(2, 3, dtype=torch.float32), torch.zeros(1, dtype=torch.float16)), {}),
]


@pytest.mark.parametrize("name,args,params", NARROWING, ids=[f"{n[0]}-{i}" for i, n in enumerate(NARROWING)])
def test_narrowing_cast_matches_autograd(name, args, params):
    rule = manual.get(name)
    check_forward(rule, args, params)
    grads = check_backward(rule, args, params)
    assert grads[0].dtype == args[0].dtype
    if args[0].dtype == torch.float64:
        check_double_backward(rule, args, params)


# planted bugs the generic comparison must catch: each wrong adjoint differs from autograd's
WRONG = [
    ("roll", (X,), {"shifts": 1, "dims": 2}, lambda g, x, **p: (g.roll(1, 2),)),          # +shift, not -shift
    ("rot90", (M,), {"k": 1}, lambda g, x, **p: (torch.rot90(g, 1, (1, 0)).flip(0),)),     # wrong inverse
    ("repeat", (M,), {"repeats": (2, 1)}, lambda g, x, **p: (g[:3],)),                     # first tile only
    ("repeat_interleave", (M, 2), {"dim": 1}, lambda g, x, r, **p: (g[:, ::2], None)),     # first copy only
    ("tril", (M,), {"diagonal": 1}, lambda g, x, **p: (g.tril(),)),                        # mask ignores diagonal=
    ("diag_embed", (M,), {"offset": 1}, lambda g, x, **p: (torch.diagonal(g, 0, -2, -1)[..., :4],)),
]


@pytest.mark.parametrize("name,args,params,wrong", WRONG, ids=[w[0] for w in WRONG])
def test_planted_wrong_adjoint_is_caught(name, args, params, wrong):
    import dataclasses

    rule = manual.get(name)
    check_backward(rule, args, params)
    bad = dataclasses.replace(rule, name=f"{name}_wrong",
                              backward_impl=lambda g, *a, needs_input_grad, **p: wrong(g, *a, **p))
    with pytest.raises(AssertionError):
        check_backward(bad, args, params)


BAD = [
    ("roll", (M,), {"shifts": (1, 2), "dims": 0}, "roll"),
    ("roll", (M,), {"shifts": 1.5, "dims": 0}, "shifts"),
    ("flip", (M,), {"dims": (5,)}, "flip"),
    ("repeat", (M,), {"repeats": (2,)}, "repeat"),
    ("repeat_interleave", (M, -1), {"dim": 0}, "non-negative"),
    ("repeat_interleave", (M, torch.tensor([1, 2])), {"dim": 1}, "2 elements"),
    ("repeat_interleave", (M, 2), {"dim": 2}, "out of range"),
    ("repeat_interleave", (M, 2), {"dim": 0, "output_size": 5}, "output_size"),
    ("diag", (X,), {}, "diag"),
    ("trace", (X,), {}, "trace"),
    ("tril", (V,), {}, "tril"),
    ("diagonal", (M,), {"dim1": 0, "dim2": 0}, "diagonal"),
    ("H", (X,), {}, "x.mH"),
    ("mT", (V,), {}, "at least 2"),
    ("to", (M,), {"dtype": "cuda"}, "dtype casts"),
]


@pytest.mark.parametrize("name,args,params,match", BAD, ids=[f"{b[0]}-{i}" for i, b in enumerate(BAD)])
def test_bad_input_is_one_clear_error(name, args, params, match):
    rule = manual.get(name)
    g = torch.ones(1, dtype=torch.float64)
    with pytest.raises(InvalidParameterError, match=match):
        rule.backward(g, *args, **params)


def test_repeat_interleave_of_a_0d_input_takes_no_dim_as_in_torch():
    x = torch.tensor(3.0, dtype=torch.float64)
    with pytest.raises(IndexError):
        torch.repeat_interleave(x, 2, dim=0)
    with pytest.raises(InvalidParameterError, match="0-d"):
        manual.get("repeat_interleave").backward(torch.ones(2, dtype=torch.float64), x, 2, dim=0)
