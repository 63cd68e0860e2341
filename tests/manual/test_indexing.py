"""Indexing rules and sequence arguments beyond the generic test: accumulation, planted bugs, bad input."""

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from gradcheck_kit import manual
from gradcheck_kit.errors import InvalidInputError, InvalidParameterError, UnsupportedError
from tests.manual._seqcheck import check_backward, check_double_backward, check_needs_input_grad

D = torch.float64


def _planted(name, backward):
    return dataclasses.replace(manual.get(name), backward_impl=backward)


# -- the sequence-argument contract -----------------------------------------------------------

def test_sequence_argument_contract():
    cat = manual.get("cat")
    a, b, i = torch.randn(2, 2, dtype=D), torch.randn(2, 1, dtype=D), torch.ones(2, 1, dtype=torch.int64)
    assert cat.differentiable_mask(([a, b, i],)) == (True,)
    assert cat.differentiable_mask(([i, i],)) == (False,)
    g = torch.arange(8, dtype=D).reshape(2, 4)
    (grads,) = cat.backward(g, [a, b, i], dim=1)
    assert isinstance(grads, tuple) and len(grads) == 3 and grads[2] is None
    assert torch.equal(grads[0], g[:, :2]) and torch.equal(grads[1], g[:, 2:3])
    (part,) = cat.backward(g, [a, b, i], dim=1, needs_input_grad=[(False, True, True)])
    assert part[0] is None and torch.equal(part[1], g[:, 2:3]) and part[2] is None
    (none,) = cat.backward(g, [a, b, i], dim=1, needs_input_grad=[False])
    assert none is None
    with pytest.raises(ValueError, match="3 elements"):
        cat.backward(g, [a, b, i], dim=1, needs_input_grad=[(True, False)])


def test_sequence_rule_returning_the_wrong_structure_is_refused():
    bad = _planted("cat", lambda g, tensors, *, needs_input_grad, dim=0: (g,))
    with pytest.raises(RuntimeError, match="one gradient per element"):
        bad.backward(torch.ones(4, 2, dtype=D), [torch.ones(2, 2, dtype=D)] * 2)


def test_planted_cat_bug_is_caught_and_correct_twin_passes():
    def reversed_pieces(g, tensors, *, needs_input_grad, dim=0):     # pieces taken from the wrong end
        sizes = [t.shape[dim] for t in tensors]
        return (tuple(reversed(torch.split(g.flip(dim), sizes[::-1], dim))),)

    bad = _planted("cat", reversed_pieces)
    x = [torch.randn(2, 3, dtype=D), torch.randn(2, 3, dtype=D)]
    with pytest.raises(AssertionError):
        check_backward(bad, (x,), {"dim": 1})
    check_backward(bad, ([torch.randn(2, 1, dtype=D)],), {"dim": 1})   # one column: flipping is harmless
    check_needs_input_grad(manual.get("cat"), (x,), {"dim": 1})
    check_double_backward(manual.get("cat"), (x,), {"dim": 1})


def test_planted_split_bug_for_unused_output_is_caught():
    def ones_for_missing(g, tensor, *, needs_input_grad, split_size_or_sections, dim=0):
        pieces = torch.split(tensor, split_size_or_sections, dim)
        return (torch.cat([gi if gi is not None else torch.ones_like(p) for gi, p in zip(g, pieces)], dim),)

    bad = _planted("split", ones_for_missing)
    with pytest.raises(AssertionError, match="grad_output\\[0\\] None"):
        check_backward(bad, (torch.randn(4, 2, dtype=D),), {"split_size_or_sections": 2})
    check_backward(bad, (torch.randn(2, 2, dtype=D),), {"split_size_or_sections": 2})   # one output: never None


# -- selections: repeated indices accumulate ---------------------------------------------------

def test_getitem_repeated_indices_accumulate_spelled_out():
    x = torch.zeros(4, dtype=D)
    g = torch.tensor([1.0, 10.0, 100.0, 1000.0], dtype=D)
    (gx, gi) = manual.get("__getitem__").backward(g, x, [2, 0, 2, 2])
    assert gi is None
    assert torch.equal(gx, torch.tensor([10.0, 0.0, 1101.0, 0.0], dtype=D))


def test_planted_getitem_overwrite_bug_is_caught():
    def overwrite(g, input, index, *, needs_input_grad):     # index_put without accumulate: repeats overwrite
        flat = torch.arange(input.numel()).reshape(input.shape)[index].reshape(-1)
        return (torch.zeros(input.numel(), dtype=g.dtype).index_put((flat,), g.reshape(-1)).reshape(input.shape),
                None)

    bad = _planted("__getitem__", overwrite)
    x = torch.randn(5, dtype=D)
    with pytest.raises(AssertionError):
        check_backward(bad, (x, [1, 3, 1]), {})
    check_backward(bad, (x, [1, 3, 0]), {})                  # distinct indices: overwrite == accumulate


@pytest.mark.parametrize("index", [(Ellipsis, 1), (slice(None), None, [0, 0]), (torch.tensor([True, False, True]),),
                                   (1, slice(None, None, 3))], ids=["ellipsis", "None+list", "bool", "step3"])
def test_getitem_more_index_forms(index):
    check_backward(manual.get("__getitem__"), (torch.randn(3, 4, dtype=D), index), {})


def test_gather_index_select_accumulate():
    x = torch.randn(3, dtype=D)
    (gx, _, _) = manual.get("index_select").backward(torch.ones(4, dtype=D), x, 0, torch.tensor([1, 1, 1, 0]))
    assert torch.equal(gx, torch.tensor([1.0, 3.0, 0.0], dtype=D))
    (gx, _, _) = manual.get("gather").backward(torch.ones(1, 3, dtype=D), x.reshape(1, 3), 1,
                                               torch.tensor([[2, 2, 2]]))
    assert torch.equal(gx, torch.tensor([[0.0, 0.0, 3.0]], dtype=D))


def test_scatter_src_larger_than_index_gets_zero_beyond_it():
    x, src, idx = torch.randn(3, 4, dtype=D), torch.randn(2, 5, dtype=D), torch.tensor([[2, 0, 1, 0]])
    g = torch.randn(3, 4, dtype=D)
    _, _, _, gs = manual.get("scatter").backward(g, x, 0, idx, src)
    s = src[:1, :4].clone().requires_grad_(True)             # the part of src the forward reads
    (ref,) = torch.autograd.grad(torch.scatter(x, 0, idx, s), s, g)
    assert torch.equal(gs[:1, :4], ref) and not gs[1:].any() and not gs[:, 4:].any()


# -- embedding --------------------------------------------------------------------------------

IDX = torch.tensor([[0, 2, 2], [4, 2, 1]])


def test_embedding_scale_grad_by_freq_first_and_second_derivative():
    rule = manual.get("embedding")
    w = torch.randn(5, 3, dtype=D)
    check_backward(rule, (IDX, w), {"scale_grad_by_freq": True, "padding_idx": 1})
    # second derivative: the backward is linear in g, d/dg <dL/dW, v> = v[idx] / count(idx).  torch's own
    # double backward ignores scale_grad_by_freq (embedding_dense_double_backward), so it is checked exactly.
    g = torch.randn(2, 3, 3, dtype=D, requires_grad=True)
    v = torch.randn(5, 3, dtype=D)
    (_, gw) = rule.backward(g, IDX, w, scale_grad_by_freq=True)
    (gg,) = torch.autograd.grad((gw * v).sum(), g)
    count = torch.bincount(IDX.reshape(-1), minlength=5).to(D)
    torch.testing.assert_close(gg, v[IDX] / count[IDX].unsqueeze(-1), rtol=1e-14, atol=1e-14)


@pytest.mark.parametrize("params", [dict(padding_idx=2), dict(padding_idx=-1), dict(max_norm=1.0),
                                    dict(max_norm=1.0, norm_type=1.0, padding_idx=0)],
                         ids=["padding_idx", "neg_padding_idx", "max_norm", "max_norm,l1,padding"])
def test_embedding_padding_and_max_norm_match_autograd(params):
    # torch's conventions, not derivatives of the forward: the padding row gets no gradient although
    # the forward reads it, and max_norm renormalises rows of the weight in place before the lookup
    rule = manual.get("embedding")
    w = torch.randn(5, 3, dtype=D, generator=torch.Generator().manual_seed(0)) * 3
    check_backward(rule, (IDX, w), params)
    check_double_backward(rule, (IDX, w), params)


def test_embedding_empty_indices_and_padding_row():
    rule = manual.get("embedding")
    w = torch.randn(5, 3, dtype=D)
    check_backward(rule, (torch.zeros(0, 2, dtype=torch.int64), w), {})
    (_, gw) = rule.backward(torch.ones(2, 3, 3, dtype=D), IDX, w, padding_idx=2)
    assert not gw[2].any() and torch.equal(gw[4], torch.ones(3, dtype=D))


def test_planted_embedding_padding_bug_is_caught():
    def no_padding(g, input, weight, *, needs_input_grad, padding_idx=None, **_):
        return (None, torch.zeros_like(weight).index_add(0, input.reshape(-1), g.reshape(-1, weight.shape[1])))

    bad = _planted("embedding", no_padding)
    with pytest.raises(AssertionError):
        check_backward(bad, (IDX, torch.randn(5, 3, dtype=D)), {"padding_idx": 2})
    check_backward(bad, (IDX, torch.randn(5, 3, dtype=D)), {"padding_idx": 3})   # row 3 unused: same answer


def test_planted_where_bug_is_caught():
    def both_get_g(g, condition, input, other, *, needs_input_grad):
        return (None, g.sum(0, keepdim=True) if input.shape[0] == 1 else g, g)

    bad = _planted("where", both_get_g)
    c = torch.tensor([[True, False], [False, True]])
    with pytest.raises(AssertionError):
        check_backward(bad, (c, torch.randn(2, 2, dtype=D), torch.randn(2, 2, dtype=D)), {})
    check_backward(manual.get("where"), (c, torch.randn(1, 2, dtype=D), torch.randn(2, 2, dtype=D)), {})


# -- bad input ----------------------------------------------------------------------------------

def test_bad_input_gives_one_clear_error():
    x = torch.randn(3, 4, dtype=D)
    with pytest.raises(InvalidParameterError, match="__getitem__: torch rejects"):
        manual.get("__getitem__").backward(torch.ones(2), x, (0, 0, 0))
    with pytest.raises(InvalidInputError, match="grad_output has shape"):
        manual.get("__getitem__").backward(torch.ones(5, dtype=D), x, 0)
    with pytest.raises(InvalidParameterError, match="step"):             # torch has no negative steps
        manual.get("__getitem__").backward(torch.ones(3, 4, dtype=D), x, slice(None, None, -1))
    with pytest.raises(InvalidInputError, match="int64 or int32"):
        manual.get("gather").backward(torch.ones(3, 4, dtype=D), x, 1, torch.zeros(3, 4))
    with pytest.raises(UnsupportedError, match="sparse=True"):
        manual.get("embedding").backward(torch.ones(2, 3, 4, dtype=D), IDX, x, sparse=True)
    with pytest.raises(UnsupportedError, match="reduce"):
        manual.get("scatter").backward(x, x, 0, torch.zeros(1, 1, dtype=torch.int64), x, reduce="add")
    with pytest.raises(InvalidInputError, match="one entry"):
        manual.get("split").backward(torch.ones(3, 4, dtype=D), x, split_size_or_sections=2)
    with pytest.raises(InvalidInputError, match="non-empty list"):
        manual.get("cat").backward(torch.ones(1), [])
    with pytest.raises(InvalidParameterError, match="dim must be"):
        manual.get("stack").backward(torch.ones(2, 3, 4, dtype=D), [x, x], dim=5)


X = torch.randn(3, 4, dtype=D, generator=torch.Generator().manual_seed(0))
I2 = torch.tensor([[0, 3], [2, 2], [1, 0]])
SPELLINGS = [  # (rule, torch callable as called, args, kwargs): torch's positional order, dim before index
    ("gather", torch.gather, (X, 1, I2), {}),
    ("gather", torch.Tensor.gather, (X, 1, I2), {}),
    ("gather", torch.gather, (X,), {"dim": 1, "index": I2}),
    ("index_select", torch.Tensor.index_select, (X, 1, I2[0]), {}),
    ("scatter", torch.Tensor.scatter, (X, 1, I2[:, :1], 2.5), {}),
    ("scatter", torch.scatter, (X, 1, I2[:, :1], X[:, :1] * 3), {}),
    ("scatter_add", torch.scatter_add, (X, 1, I2, X[:, :2] * 1.0), {}),
    ("select", torch.Tensor.select, (X, 1, 2), {}),
    ("narrow", torch.narrow, (X, 1, 1, 2), {}),
    ("__getitem__", torch.Tensor.__getitem__, (X, (slice(None), I2[0])), {}),
    ("cat", torch.cat, ([X, X * 2], 1), {}),
    ("where", torch.where, (X > 0, X, 0.0), {}),
    ("split", torch.Tensor.split, (X, [1, 3], 1), {}),
]


@pytest.mark.parametrize("name,fn,args,kwargs", SPELLINGS, ids=[f"{c[0]}-{i}" for i, c in enumerate(SPELLINGS)])
def test_torch_spellings_bind_onto_the_rules(name, fn, args, kwargs):
    # the rule engine binds a recorded call onto the rule; forward and backward then equal torch's
    from gradcheck_kit import trace

    rule = manual.get(name)
    call = trace.bind(rule, fn, args, kwargs)
    rargs, params = call.build(call.tensors)
    ref = fn(*args, **kwargs)
    got = rule.forward(*rargs, **params)
    for r, m in zip(ref if isinstance(ref, tuple) else (ref,), got if isinstance(got, tuple) else (got,)):
        assert torch.equal(r, m)
    check_backward(rule, rargs, params)
