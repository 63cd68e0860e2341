"""Attention and einsum beyond the generic test: torch's flash path, masked rows, refused
configurations, random einsum equations, and planted bugs the generic check must catch."""

import dataclasses
import random

import pytest
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from gradcheck_kit import manual
from gradcheck_kit.errors import InvalidInputError, InvalidParameterError, UnsupportedError
from gradcheck_kit.manual._sampling import Maker
from tests.manual._rulecheck import check_backward, check_double_backward
from tests.manual._seqcheck import check_backward as seq_check_backward

SDPA = "scaled_dot_product_attention"


def _qkv(mk, *lead, L=4, S=4, E=5, Ev=5):
    return mk.randn(*lead, L, E), mk.randn(*lead, S, E), mk.randn(*lead, S, Ev)


FLASH = [  # value head dim == query head dim: torch's CPU flash kernel runs
    ((2, 3), {}, "plain"),
    ((2, 3), {"is_causal": True}, "causal"),
    ((1, 2), {"scale": 0.7}, "scale"),
]


@pytest.mark.parametrize("lead,params,name", FLASH, ids=[c[2] for c in FLASH])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_sdpa_matches_torchs_flash_kernel(lead, params, name, dtype):
    q, k, v = _qkv(Maker(dtype=dtype), *lead)
    out = F.scaled_dot_product_attention(*(t.clone().requires_grad_(True) for t in (q, k, v)), **params)
    assert "Flash" in out.grad_fn.name(), "torch no longer takes its flash path here"
    check_backward(manual.get(SDPA), (q, k, v), params)


@pytest.mark.parametrize("lead,params,name", FLASH, ids=[c[2] for c in FLASH])
def test_sdpa_second_derivative_against_the_math_kernel(lead, params, name):
    """The flash kernel has no double backward; torch's math kernel computes the same function."""
    q, k, v = _qkv(Maker(), *lead)
    with sdpa_kernel(SDPBackend.MATH):
        check_double_backward(manual.get(SDPA), (q, k, v), params)


def test_sdpa_fully_masked_rows_are_zero_without_nan_in_double_backward():
    mk = Maker()
    q, k, v = _qkv(mk, 1, 2, L=3, S=4, Ev=2)
    mask = torch.ones(3, 4, dtype=torch.bool)
    mask[1] = False
    rule = manual.get(SDPA)
    leaves = [t.clone().requires_grad_(True) for t in (q, k, v)]
    g = torch.randn(1, 2, 3, 2, dtype=torch.float64, requires_grad=True)
    gq, gk, gv, _ = rule.backward(g, *leaves, mask)
    assert torch.equal(gq[:, :, 1], torch.zeros_like(gq[:, :, 1]))
    second = torch.autograd.grad((gq.sum() + gk.sum() + gv.sum()), leaves + [g])
    assert all(torch.isfinite(s).all() for s in second)


def test_sdpa_refused_configurations():
    q, k, v = _qkv(Maker(), 1, 1, Ev=2)
    rule = manual.get(SDPA)
    g = torch.ones(1, 1, 4, 2, dtype=torch.float64)
    with pytest.raises(UnsupportedError, match="dropout_p"):
        rule.forward(q, k, v, dropout_p=0.1)
    with pytest.raises(UnsupportedError, match="dropout_p"):
        rule.backward(g, q, k, v, dropout_p=0.1)
    with pytest.raises(InvalidParameterError, match="not both"):
        rule.backward(g, q, k, v, torch.zeros(4, 4, dtype=torch.float64), is_causal=True)


def test_bad_shapes_raise_one_clear_error():
    q, k, v = _qkv(Maker(), 2, 1, Ev=3)
    rule = manual.get(SDPA)
    with pytest.raises(InvalidInputError, match=r"grad_output has shape \(2, 1, 4, 5\) but the output has shape "
                                                r"\(2, 1, 4, 3\)"):
        rule.backward(torch.ones(2, 1, 4, 5, dtype=torch.float64), q, k, v)
    with pytest.raises(InvalidInputError, match="do not fit"):
        rule.backward(torch.ones(2, 1, 4, 3, dtype=torch.float64), q, k[..., :3], v)
    with pytest.raises(InvalidInputError, match="at least 2 dimensions"):
        rule.backward(torch.ones(3, dtype=torch.float64), q[0, 0, 0], k, v)
    es = manual.get("einsum")
    a, b = Maker().randn(3, 4), Maker().randn(4, 2)
    with pytest.raises(InvalidInputError, match=r"einsum: grad_output has shape \(2, 3\)"):
        es.backward(torch.ones(2, 3, dtype=torch.float64), [a, b], equation="ij,jk->ik")
    with pytest.raises(InvalidInputError, match="label 'j' has sizes 4 and 3"):
        es.backward(torch.ones(3, 2, dtype=torch.float64), [a, b[:3]], equation="ij,jk->ik")
    with pytest.raises(InvalidParameterError, match="2 operand subscripts but 1 operands"):
        es.backward(torch.ones(3, 2, dtype=torch.float64), [a], equation="ij,jk->ik")


def _drop_rowsum(grad_output, query, key, value, attn_mask=None, **kw):
    """Planted bug: softmax's backward without the ``- rowsum(dP * P)`` term."""
    c = query.shape[-1] ** -0.5
    P = torch.softmax(c * query @ key.transpose(-2, -1), -1)
    dS = P * (grad_output @ value.transpose(-2, -1))
    return c * dS @ key, c * dS.transpose(-2, -1) @ query, P.transpose(-2, -1) @ grad_output, None, {}


def test_planted_sdpa_bug_is_caught():
    q, k, v = _qkv(Maker(), 2, 1, Ev=3)
    check_backward(manual.get(SDPA), (q, k, v), {})
    bad = dataclasses.replace(manual.get(SDPA), backward_impl=_drop_rowsum)
    with pytest.raises(AssertionError, match="d/dquery"):
        check_backward(bad, (q, k, v), {})


# -- einsum -------------------------------------------------------------------------------

def test_einsum_both_torch_spellings_are_one_call():
    mk = Maker()
    a, b = mk.randn(3, 4), mk.randn(4, 2)
    rule = manual.get("einsum")
    assert rule.mirrors is torch.einsum
    ref = torch.einsum("ij,jk", a, b)
    assert torch.equal(rule.forward([a, b], equation="ij,jk"), ref)
    assert torch.equal(torch.einsum("ij,jk", [a, b]), ref)
    with pytest.raises(UnsupportedError, match="sublist"):
        rule.forward([a, b], equation=[0, 1])
    for call in (("ij,jk", a, b), ("ij,jk", [a, b]), ("ij,jk", (a, b)), (a, [0, 1], b, [1, 2], [0, 2])):
        args, kwargs = rule.torch_fn.call_as_rule(*call)
        assert torch.equal(rule.forward(*args, **kwargs), ref)
    x = Maker().randn(2, 3, 3)                             # sublists with Ellipsis, implicit output
    args, kwargs = rule.torch_fn.call_as_rule(x, [Ellipsis, 0, 0])
    assert kwargs["equation"] == "...AA" and torch.equal(rule.forward(*args, **kwargs), torch.einsum(x, [..., 0, 0]))
    y, z = Maker().randn(2, 3), Maker().randn(3, 4)       # labels from both halves: implicit order as torch's
    args, kwargs = rule.torch_fn.call_as_rule(y, [30, 1], z, [1, 0])
    assert torch.equal(rule.forward(*args, **kwargs), torch.einsum(y, [30, 1], z, [1, 0]))
    with pytest.raises(InvalidParameterError, match="sublist labels"):
        rule.torch_fn.call_as_rule(a, [0, "j"], b, [1, 2])


def _random_equation(rng: random.Random):
    """A random einsum over 1-3 operands: shared, lonely and repeated labels, maybe '...', maybe implicit."""
    labels = "abcde"
    sizes = {c: rng.randint(1, 3) for c in labels}
    ops = []
    for _ in range(rng.randint(1, 3)):
        spec = [rng.choice(labels) for _ in range(rng.randint(1, 3))]
        ops.append(spec)
    used = sorted({c for s in ops for c in s})
    ellipsis = rng.random() < 0.3
    out = rng.sample(used, rng.randint(0, len(used)))
    lhs = ",".join(("..." if ellipsis else "") + "".join(s) for s in ops)
    eq = lhs if rng.random() < 0.25 else lhs + "->" + ("..." if ellipsis else "") + "".join(out)
    ell_shape = (2,) if ellipsis else ()
    shapes = [ell_shape + tuple(sizes[c] for c in s) for s in ops]
    return eq, shapes


@pytest.mark.parametrize("seed", range(12))
def test_einsum_random_equations(seed):
    rng = random.Random(seed)
    mk = Maker(seed=seed)
    for _ in range(4):
        eq, shapes = _random_equation(rng)
        ops = [mk.randn(*s) for s in shapes]
        try:
            torch.einsum(eq, *ops)
        except RuntimeError:
            continue                                     # torch refuses it (e.g. '->' naming a label twice)
        seq_check_backward(manual.get("einsum"), (ops,), {"equation": eq})


def _no_diagonal(grad_output, operands, *, needs_input_grad, equation):
    """Planted bug: the gradient of 'ii->i' spread over every row instead of the diagonal."""
    (x,) = operands
    return ([grad_output.unsqueeze(0).expand_as(x)],)


def test_planted_einsum_diagonal_bug_is_caught():
    x = Maker().randn(3, 3)
    seq_check_backward(manual.get("einsum"), ([x],), {"equation": "ii->i"})
    bad = dataclasses.replace(manual.get("einsum"), backward_impl=_no_diagonal)
    with pytest.raises(AssertionError):
        seq_check_backward(bad, ([x],), {"equation": "ii->i"})
